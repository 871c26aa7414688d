"""UDP socket helpers for the tunnel hot path: GSO send (UDP_SEGMENT) and GRO receive (UDP_GRO).

Python has no constants for these (nor sendmmsg/recvmmsg); the raw values are used with the stdlib
`sendmsg`/`recvmsg_into`. One `send_gso()` call hands the kernel up to 64 KB that it cuts into
`segment_size` datagrams (the last one may be shorter); one `recv_gro()` returns several coalesced
datagrams of the same size from the same sender, plus that size.

Fallback rules: `send_gso()` raises `GsoUnsupported` when the kernel answers EIO (the egress device
cannot checksum-offload, the signal Tailscale also uses) or the option is unknown; the caller then
switches that socket to `send_segments()` (one `sendto` per datagram). `enable_gro()` returning False
just means every `recv_gro()` reports one datagram (segment size None).
"""

from __future__ import annotations

import errno
import functools
import socket
import sys
from collections.abc import Iterator
from typing import Any

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)

GSO_MAX_BYTES = 65507
"""Largest UDP payload of one send (IPv4: 65535 - 20 - 8); the GSO total must not exceed it."""
GSO_MAX_SEGMENTS = 64
"""UDP_MAX_SEGMENTS on older kernels (newer ones allow 128); kept as the portable limit."""
GRO_ANCBUFSIZE = socket.CMSG_SPACE(4)
RECV_BUF_SIZE = 65535
"""A receive buffer this large holds any coalesced GRO batch."""

Addr = Any  # (host, port) for AF_INET, (host, port, flow, scope) for AF_INET6

_INT_BYTES = sys.byteorder
#: A plain int: ``int & socket.MSG_TRUNC`` (an IntFlag) would run enum's Python-level operator on
#: every receive.
_MSG_TRUNC = int(socket.MSG_TRUNC)


class GsoUnsupported(OSError):
    """The kernel refused a UDP GSO send (EIO/EINVAL/ENOPROTOOPT): fall back to per-datagram sends."""


def enable_gro(sock: socket.socket) -> bool:
    """Turn UDP_GRO on; False when the kernel does not support it."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        return True
    except OSError:
        return False


def set_buffers(sock: socket.socket, nbytes: int) -> tuple[int, int]:
    """Set send and receive buffers to `nbytes`, past the sysctl caps when privileged (…BUFFORCE).

    Returns the (sndbuf, rcvbuf) the kernel reports (it doubles the requested value for overhead).
    """
    for force, normal in ((SO_SNDBUFFORCE, socket.SO_SNDBUF), (SO_RCVBUFFORCE, socket.SO_RCVBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, nbytes)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, normal, nbytes)
    return (sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))


@functools.lru_cache(maxsize=32)
def gso_cmsg(segment_size: int) -> tuple[tuple[int, int, bytes], ...]:
    """The ancillary data for one GSO send (cached per segment size: no allocation per send)."""
    return ((SOL_UDP, UDP_SEGMENT, segment_size.to_bytes(2, _INT_BYTES)),)


def send_gso(sock: socket.socket, data: bytes | bytearray | memoryview, segment_size: int,
             addr: Addr | None = None) -> int:
    """Send `data` as consecutive datagrams of `segment_size` bytes with one sendmsg.

    `addr` may be None on a connected socket. Raises ValueError past the 64 KB / segment-count
    limits and GsoUnsupported when the kernel cannot do GSO on this path.
    """
    n = len(data)
    if n > GSO_MAX_BYTES:
        raise ValueError(f"GSO send of {n} bytes exceeds {GSO_MAX_BYTES}")
    if segment_size <= 0 or -(-n // segment_size) > GSO_MAX_SEGMENTS:
        raise ValueError(f"GSO send of {n} bytes in {segment_size}-byte segments: too many segments")
    anc = gso_cmsg(segment_size) if n > segment_size else ()
    try:
        if addr is None:
            return sock.sendmsg((data,), anc)
        return sock.sendmsg((data,), anc, 0, addr)
    except OSError as e:
        if e.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT) and anc:
            raise GsoUnsupported(e.errno, f"UDP GSO send failed: {e.strerror}") from e
        raise


def send_segments(sock: socket.socket, data: bytes | bytearray | memoryview, segment_size: int,
                  addr: Addr | None = None) -> int:
    """The fallback for `send_gso`: the same datagrams, one sendto each. Returns bytes sent."""
    mv = memoryview(data)
    sent = 0
    for off in range(0, len(mv), segment_size):
        chunk = mv[off:off + segment_size]
        sent += sock.send(chunk) if addr is None else sock.sendto(chunk, addr)
    return sent


def recv_gro(sock: socket.socket, buf: bytearray | memoryview,
             ancbufsize: int = GRO_ANCBUFSIZE) -> tuple[int, Addr, int | None]:
    """Receive into `buf`: (bytes, sender, segment size or None when not coalesced).

    With GRO on, the bytes are consecutive datagrams of `segment size` (the last may be shorter).
    Python's recvmsg_into cannot take a preallocated control buffer; `ancbufsize` sizes it
    (GRO_ANCBUFSIZE fits the one 4-byte cmsg). Raises BlockingIOError on a non-blocking socket
    with nothing queued, and ValueError when the batch did not fit `buf` (MSG_TRUNC).
    """
    n, anc, flags, addr = sock.recvmsg_into((buf,), ancbufsize)
    if flags & _MSG_TRUNC:
        raise ValueError(f"datagram larger than the {len(buf)}-byte buffer was truncated")
    seg: int | None = None
    for level, kind, data in anc:
        if level == SOL_UDP and kind == UDP_GRO:
            seg = int.from_bytes(data[:4], _INT_BYTES)
    return n, addr, seg


def split(buf: bytearray | memoryview, n: int, segment_size: int | None) -> Iterator[memoryview]:
    """Views of the individual datagrams of a `recv_gro()` result (no copies)."""
    mv = memoryview(buf)[:n]
    if not segment_size or segment_size >= n:
        yield mv
        return
    for off in range(0, n, segment_size):
        yield mv[off:off + segment_size]
