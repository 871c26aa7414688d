"""Attribute (TLV) encoding of signalling bodies.

Each attribute is ``type (u8) | length (u16, big-endian) | value``. Types below 0x80 are critical:
a receiver that does not know one rejects the message. Types 0x80 and above are optional and an
unknown one is skipped, which is how later minor versions add fields.
"""

from __future__ import annotations

import ipaddress
import struct
import sys
from collections.abc import Iterator
from enum import IntEnum

from .errors import CodecError

Endpoint = tuple[str, int]

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_TL = struct.Struct("!BH")


class Attr(IntEnum):
    NAME = 0x01
    VERSIONS = 0x02
    EPHEMERAL = 0x03
    LOCAL_ENDPOINT = 0x04
    OBSERVED_ENDPOINT = 0x05
    VIP4 = 0x06
    VIP6 = 0x07
    KEEPALIVE = 0x08
    NAT = 0x09
    FQDN = 0x0A
    PATH_ID = 0x0B
    RS_TYPE = 0x0C
    PATH_KEY = 0x0D
    RELAY_KEY = 0x0E
    PATH_ROLE = 0x0F
    PEER_VIP4 = 0x10
    PEER_VIP6 = 0x11
    PEER_ENDPOINT = 0x12
    RS_ENDPOINT = 0x13
    GN_ADDR4 = 0x14
    GN_ADDR6 = 0x15
    MODE = 0x16
    REASON = 0x17
    CAPABILITIES = 0x18
    TIMESTAMP = 0x19
    LOAD = 0x1A
    IDLE_TIMEOUT = 0x1B
    ROLE = 0x1C
    VERSION = 0x1D
    PEER_NAME = 0x1E
    NODE_VIP4 = 0x1F
    NODE_VIP6 = 0x20
    ANSWERS = 0x21
    NODE_ENDPOINT = 0x22
    RESPONDER_ENDPOINT = 0x23
    PEER_NAT = 0x24
    PEER_LOCAL_ENDPOINT = 0x25
    RS_NAME = 0x26
    RTT_US = 0x27
    HOPS = 0x28
    DC_KEY = 0x29
    PROBE_ENDPOINT = 0x2A


class Kind(IntEnum):
    U8 = 1
    U16 = 2
    U32 = 3
    U64 = 4
    ID8 = 5
    KEY32 = 6
    STR = 7
    IP4 = 8
    IP6 = 9
    ENDPOINT = 10
    VERSIONS = 11


MAX_STR = 255


def encode_value(kind: Kind, value: object) -> bytes:
    try:
        if kind is Kind.U8:
            return bytes((_int(value, 0xFF),))
        if kind is Kind.U16:
            return _U16.pack(_int(value, 0xFFFF))
        if kind is Kind.U32:
            return _U32.pack(_int(value, 0xFFFFFFFF))
        if kind is Kind.U64:
            return _U64.pack(_int(value, 0xFFFFFFFFFFFFFFFF))
        if kind is Kind.ID8:
            return _fixed(value, 8)
        if kind is Kind.KEY32:
            return _fixed(value, 32)
        if kind is Kind.STR:
            if not isinstance(value, str):
                raise CodecError("expected a string")
            raw = value.encode("utf-8")
            if len(raw) > MAX_STR:
                raise CodecError("string longer than 255 bytes")
            return raw
        if kind is Kind.IP4:
            return ipaddress.IPv4Address(_str(value)).packed
        if kind is Kind.IP6:
            return ipaddress.IPv6Address(_str(value)).packed
        if kind is Kind.ENDPOINT:
            if not (isinstance(value, tuple) and len(value) == 2):
                raise CodecError("endpoint must be (address, port)")
            addr = ipaddress.ip_address(_str(value[0]))
            port = _int(value[1], 0xFFFF)
            return bytes((addr.version,)) + _U16.pack(port) + addr.packed
        if kind is Kind.VERSIONS:
            if not (isinstance(value, tuple) and len(value) == 2):
                raise CodecError("versions must be (min, max)")
            lo, hi = _int(value[0], 0xFF), _int(value[1], 0xFF)
            if lo > hi:
                raise CodecError("versions: min > max")
            return bytes((lo, hi))
    except ValueError as exc:  # ipaddress errors
        if isinstance(exc, CodecError):
            raise
        raise CodecError(f"bad value {value!r}: {exc}") from None
    raise CodecError(f"unknown kind {kind}")


def decode_value(kind: Kind, raw: bytes) -> object:
    n = len(raw)
    if kind is Kind.U8:
        _need(n == 1, kind)
        return raw[0]
    if kind is Kind.U16:
        _need(n == 2, kind)
        return _U16.unpack(raw)[0]
    if kind is Kind.U32:
        _need(n == 4, kind)
        return _U32.unpack(raw)[0]
    if kind is Kind.U64:
        _need(n == 8, kind)
        return _U64.unpack(raw)[0]
    if kind is Kind.ID8:
        _need(n == 8, kind)
        return bytes(raw)
    if kind is Kind.KEY32:
        _need(n == 32, kind)
        return bytes(raw)
    if kind is Kind.STR:
        if n > MAX_STR:
            raise CodecError("string longer than 255 bytes")
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise CodecError("string is not UTF-8") from None
    if kind is Kind.IP4:
        _need(n == 4, kind)
        return _addr_text(bytes(raw))
    if kind is Kind.IP6:
        _need(n == 16, kind)
        return _addr_text(bytes(raw))
    if kind is Kind.ENDPOINT:
        _need(n in (7, 19), kind)
        fam = raw[0]
        port = _U16.unpack_from(raw, 1)[0]
        if (fam == 4 and n == 7) or (fam == 6 and n == 19):
            return (_addr_text(bytes(raw[3:])), port)
        raise CodecError("endpoint family does not match its length")
    if kind is Kind.VERSIONS:
        _need(n == 2, kind)
        if raw[0] > raw[1]:
            raise CodecError("versions: min > max")
        return (raw[0], raw[1])
    raise CodecError(f"unknown kind {kind}")


def iter_attrs(body: bytes) -> Iterator[tuple[int, bytes]]:
    """Yield ``(type, value)`` for each attribute; CodecError on truncation."""
    off = 0
    end = len(body)
    while off < end:
        if end - off < 3:
            raise CodecError("truncated attribute header")
        atype, alen = _TL.unpack_from(body, off)
        off += 3
        if alen > end - off:
            raise CodecError(f"attribute 0x{atype:02x} runs past the body")
        yield atype, body[off : off + alen]
        off += alen


def pack_attr(atype: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise CodecError("attribute too long")
    return _TL.pack(atype, len(value)) + value


def _addr_text(packed: bytes) -> str:
    """Text form of a packed IPv4/IPv6 address, interned: relays and DCs hold many copies of the
    same few addresses (VIPs, general nodes), so they share one string each."""
    ip = ipaddress.IPv4Address(packed) if len(packed) == 4 else ipaddress.IPv6Address(packed)
    return sys.intern(str(ip))


def _need(ok: bool, kind: Kind) -> None:
    if not ok:
        raise CodecError(f"wrong length for a {kind.name} attribute")


def _int(value: object, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CodecError(f"expected an integer, got {value!r}")
    if not 0 <= value <= limit:
        raise CodecError(f"integer {value} out of range")
    return value


def _fixed(value: object, size: int) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != size:
        raise CodecError(f"expected {size} bytes")
    return bytes(value)


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise CodecError(f"expected an address string, got {value!r}")
    return value
