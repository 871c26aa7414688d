"""Internet checksum (RFC 1071) for the data plane.

The ones' complement sum of 16-bit big-endian words equals the value of the whole buffer, read as one
big-endian integer, modulo 0xFFFF (because 2**16 == 1 mod 0xFFFF). CPython converts a buffer to an
int and reduces it in C, so one `int.from_bytes` plus one `%` replaces a Python loop over words.
Measured on this machine (CPython 3.11, 2 vCPU EPYC): about 2.9 µs per 1400 B and 130 µs per 64 KB
(of which ~37 µs is the conversion and ~70 µs the one-digit long division), against 10 µs / 410 µs
for `sum(array('H'))` with byte swapping (see docs/dataplane.md).

Sums are kept "reduced": an int in [0, 0xFFFE] where 0 stands for both ones' complement zeros. Sums
of parts (pseudo-header, headers, payload) can be added and reduced again with `% 0xFFFF`.
"""

from __future__ import annotations

Buffer = bytes | bytearray | memoryview

_M = 0xFFFF


def ones_sum(data: Buffer, start: int = 0) -> int:
    """Reduced ones' complement sum of `data` (odd lengths padded with a zero byte) plus `start`."""
    v = int.from_bytes(data, "big")
    if len(data) & 1:
        v <<= 8
    return (v + start) % _M


def checksum(data: Buffer, start: int = 0) -> int:
    """The internet checksum of `data` with `start` (a reduced partial sum, e.g. a pseudo-header)."""
    v = int.from_bytes(data, "big")
    if len(data) & 1:
        v <<= 8
    total = v + start
    if total == 0:
        return 0xFFFF  # all-zero input: the folded sum is +0, its complement is 0xFFFF
    s = total % _M
    # s == 0 means the folded sum is 0xFFFF (negative zero): its complement is 0.
    return _M - s if s else 0


def verify(data: Buffer, start: int = 0) -> bool:
    """True when `data` (which includes its checksum field) plus `start` sums to ones' complement zero."""
    v = int.from_bytes(data, "big")
    if len(data) & 1:
        v <<= 8
    total = v + start
    return total != 0 and total % _M == 0


def pseudo_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Reduced sum of the IPv4 (4-byte addresses) or IPv6 (16-byte addresses) pseudo-header."""
    return (int.from_bytes(src, "big") + int.from_bytes(dst, "big") + proto + length) % _M
