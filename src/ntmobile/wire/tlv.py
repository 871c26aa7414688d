"""Attribute (TLV) encoding of signalling bodies.

Each attribute is ``type (u8) | length (u16, big-endian) | value``. Types below 0x80 are critical:
a receiver that does not know one rejects the message. Types 0x80 and above are optional and an
unknown one is skipped, which is how later minor versions add fields.
"""

from __future__ import annotations

import ipaddress
import re
import struct
import sys
from collections.abc import Callable, Iterator
from enum import IntEnum

from .errors import CodecError

Endpoint = tuple[str, int]

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_TL = struct.Struct("!BH")
_8H = struct.Struct("!8H")


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
    INSTANCE = 0x2B
    PUNCH_ENDPOINT = 0x2C
    PUNCH_DELAY = 0x2D
    NO_PUNCH = 0x2E
    RECV_FLOOR = 0x2F
    RELAY_ONLY = 0x30
    STANDBY_PATH_ID = 0x31
    STANDBY_KEY = 0x32
    STANDBY_RS_ENDPOINT = 0x33
    STANDBY_RS_NAME = 0x34
    STANDBY = 0x35


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


def _enc_u8(v: object) -> bytes:
    return bytes((_int(v, 0xFF),))


def _enc_u16(v: object) -> bytes:
    return _U16.pack(_int(v, 0xFFFF))


def _enc_u32(v: object) -> bytes:
    return _U32.pack(_int(v, 0xFFFFFFFF))


def _enc_u64(v: object) -> bytes:
    return _U64.pack(_int(v, 0xFFFFFFFFFFFFFFFF))


def _enc_id8(v: object) -> bytes:
    return _fixed(v, 8)


def _enc_key32(v: object) -> bytes:
    return _fixed(v, 32)


def _enc_str(v: object) -> bytes:
    if not isinstance(v, str):
        raise CodecError("expected a string")
    raw = v.encode("utf-8")
    if len(raw) > MAX_STR:
        raise CodecError("string longer than 255 bytes")
    return raw


def _enc_ip4(v: object) -> bytes:
    return _pack4(_str(v))


def _enc_ip6(v: object) -> bytes:
    return _pack6(_str(v))


def _enc_endpoint(v: object) -> bytes:
    if not (isinstance(v, tuple) and len(v) == 2):
        raise CodecError("endpoint must be (address, port)")
    host = _str(v[0])
    port = _int(v[1], 0xFFFF)
    if ":" in host:
        return b"\x06" + _U16.pack(port) + _pack6(host)
    return b"\x04" + _U16.pack(port) + _pack4(host)


def _enc_versions(v: object) -> bytes:
    if not (isinstance(v, tuple) and len(v) == 2):
        raise CodecError("versions must be (min, max)")
    lo, hi = _int(v[0], 0xFF), _int(v[1], 0xFF)
    if lo > hi:
        raise CodecError("versions: min > max")
    return bytes((lo, hi))


def _dec_u8(raw: bytes) -> object:
    if len(raw) != 1:
        raise CodecError("wrong length for a U8 attribute")
    return raw[0]


def _dec_uint(st: struct.Struct, kind: str) -> Callable[[bytes], object]:
    """Decoder of a big-endian unsigned integer attribute of exactly ``st.size`` bytes."""
    size, unpack, err = st.size, st.unpack, f"wrong length for a {kind} attribute"

    def dec(raw: bytes) -> object:
        if len(raw) != size:
            raise CodecError(err)
        return unpack(raw)[0]

    return dec


_dec_u16 = _dec_uint(_U16, "U16")
_dec_u32 = _dec_uint(_U32, "U32")
_dec_u64 = _dec_uint(_U64, "U64")


def _dec_id8(raw: bytes) -> object:
    if len(raw) != 8:
        raise CodecError("wrong length for a ID8 attribute")
    return bytes(raw)


def _dec_key32(raw: bytes) -> object:
    if len(raw) != 32:
        raise CodecError("wrong length for a KEY32 attribute")
    return bytes(raw)


def _dec_str(raw: bytes) -> object:
    if len(raw) > MAX_STR:
        raise CodecError("string longer than 255 bytes")
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise CodecError("string is not UTF-8") from None


def _dec_ip4(raw: bytes) -> object:
    if len(raw) != 4:
        raise CodecError("wrong length for a IP4 attribute")
    return _addr_text(bytes(raw))


def _dec_ip6(raw: bytes) -> object:
    if len(raw) != 16:
        raise CodecError("wrong length for a IP6 attribute")
    return _addr_text(bytes(raw))


def _dec_endpoint(raw: bytes) -> object:
    n = len(raw)
    if n not in (7, 19):
        raise CodecError("wrong length for a ENDPOINT attribute")
    fam = raw[0]
    if (fam == 4 and n == 7) or (fam == 6 and n == 19):
        return (_addr_text(bytes(raw[3:])), _U16.unpack_from(raw, 1)[0])
    raise CodecError("endpoint family does not match its length")


def _dec_versions(raw: bytes) -> object:
    if len(raw) != 2:
        raise CodecError("wrong length for a VERSIONS attribute")
    if raw[0] > raw[1]:
        raise CodecError("versions: min > max")
    return (raw[0], raw[1])


#: Per kind: value -> bytes (CodecError or ValueError on a bad value) and bytes -> value (CodecError).
ENCODERS: dict[Kind, Callable[[object], bytes]] = {
    Kind.U8: _enc_u8, Kind.U16: _enc_u16, Kind.U32: _enc_u32, Kind.U64: _enc_u64, Kind.ID8: _enc_id8,
    Kind.KEY32: _enc_key32, Kind.STR: _enc_str, Kind.IP4: _enc_ip4, Kind.IP6: _enc_ip6,
    Kind.ENDPOINT: _enc_endpoint, Kind.VERSIONS: _enc_versions,
}
DECODERS: dict[Kind, Callable[[bytes], object]] = {
    Kind.U8: _dec_u8, Kind.U16: _dec_u16, Kind.U32: _dec_u32, Kind.U64: _dec_u64, Kind.ID8: _dec_id8,
    Kind.KEY32: _dec_key32, Kind.STR: _dec_str, Kind.IP4: _dec_ip4, Kind.IP6: _dec_ip6,
    Kind.ENDPOINT: _dec_endpoint, Kind.VERSIONS: _dec_versions,
}


def encode_value(kind: Kind, value: object) -> bytes:
    enc = ENCODERS.get(kind)
    if enc is None:
        raise CodecError(f"unknown kind {kind}")
    try:
        return enc(value)
    except CodecError:
        raise
    except ValueError as exc:  # address errors
        raise CodecError(f"bad value {value!r}: {exc}") from None


def decode_value(kind: Kind, raw: bytes) -> object:
    dec = DECODERS.get(kind)
    if dec is None:
        raise CodecError(f"unknown kind {kind}")
    return dec(raw)


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


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_DOTTED_QUAD = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}", re.ASCII)


def _pack4(text: str) -> bytes:
    """Packed IPv4 address: a strict dotted quad (what ``ipaddress`` accepts, a few times faster:
    addresses are in most signalling messages). ValueError otherwise."""
    if _DOTTED_QUAD.fullmatch(text) is None:
        raise ValueError(f"{text!r} is not an IPv4 address")
    return bytes(map(int, text.split(".")))


_HEX = frozenset("0123456789abcdefABCDEF")


def _pack6(text: str) -> bytes:
    """Packed IPv6 address. Plain hex forms are parsed here (a few times faster than ``ipaddress``);
    anything else (embedded IPv4, scope IDs) and every error goes to ``ipaddress``, so exactly its
    forms are accepted."""
    if 2 <= len(text) <= 39 and "." not in text and "%" not in text:
        head, sep, tail = text.partition("::")
        if "::" not in tail:
            left = head.split(":") if head else []
            right = tail.split(":") if tail else []
            n = len(left) + len(right)
            if (n == 8 and not sep) or (sep and n <= 7):
                groups = []
                for g in left:
                    if not (0 < len(g) <= 4 and _HEX.issuperset(g)):
                        break
                    groups.append(int(g, 16))
                else:
                    mid = [0] * (8 - n)
                    for g in right:
                        if not (0 < len(g) <= 4 and _HEX.issuperset(g)):
                            break
                        mid.append(int(g, 16))
                    else:
                        return _8H.pack(*groups, *mid)
    return ipaddress.IPv6Address(text).packed


def _text6(packed: bytes) -> str:
    """IPv6 text exactly as ``str(ipaddress.IPv6Address(packed))`` writes it (lower-case hex, the
    longest run of two or more zero groups, the first of equal runs, as "::"), without its cost."""
    groups = _8H.unpack(packed)
    best_at, best_len, at, run = -1, 1, -1, 0
    for i, g in enumerate(groups):
        if g == 0:
            if run == 0:
                at = i
            run += 1
            if run > best_len:
                best_at, best_len = at, run
        else:
            run = 0
    if best_at < 0:
        return ":".join([f"{g:x}" for g in groups])
    head = ":".join([f"{g:x}" for g in groups[:best_at]])
    tail = ":".join([f"{g:x}" for g in groups[best_at + best_len:]])
    return head + "::" + tail


def _addr_text(packed: bytes) -> str:
    """Text form of a packed IPv4/IPv6 address, interned: relays and DCs hold many copies of the
    same few addresses (VIPs, general nodes), so they share one string each."""
    if len(packed) == 4:
        return sys.intern(f"{packed[0]}.{packed[1]}.{packed[2]}.{packed[3]}")
    return sys.intern(_text6(packed))


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
