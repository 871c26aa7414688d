"""Joining with a token: the token's text form, the Join Request and the Join Response (docs/protocol.md, "Joining").

Token (what ``ntm dc enroll NAME --token`` prints, ``ntm node join`` takes): ``ntmj1.`` followed by
the unpadded base64url of::

    0  version     u8     1
    1  token_id    8 B
    9  secret      32 B   the join secret (only its holder can join)
    41 expires     u32    Unix time (s) after which the DC refuses the token
    45 dc_id       8 B
    53 port        u16    the DC's signalling port
    55 addr_len    u8,    then the DC's address (ASCII)
       domain_len  u8,    then the DC's domain (ASCII)

Join Request (node -> DC signalling port, JOIN_REQUEST_PADDED = 256 bytes)::

    0  version u8 (1)   1 type u8 (0x21)   2 token_id 8 B   10 ephemeral 32 B (X25519)
    42 mac 16 B: HMAC-SHA256(join MAC key, bytes 0..41), first 16 bytes
    58 zero padding to 256 bytes: the DC's answer (at most 4 times its request, as every reply to input
       whose source address nobody verified) then fits even the longest names

Join Response (DC -> node)::

    0  version u8   1 type u8 (0x22)   2 token_id 8 B   10 status u8
    status OK:  11 ephemeral 32 B (the DC's X25519)
                43 AES-256-GCM(join answer key, nonce 0, credentials) || tag, associated data bytes 0..42
    otherwise: nothing more (TOKEN_EXPIRED, TOKEN_USED)

Credentials (the sealed plaintext)::

    client_id 8 B   psk 32 B   dc_id 8 B   port u16   then addr, domain, name: each u8 length + ASCII
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass

from .constants import ID_SIZE, KEY_SIZE, VERSION, MessageType
from .errors import CodecError

TOKEN_PREFIX = "ntmj1."
MAC_SIZE = 16
JOIN_REQUEST_SIZE = 2 + ID_SIZE + 32 + MAC_SIZE  # 58: what the DC reads
JOIN_REQUEST_PADDED = 256  # what the node sends
_HEAD = struct.Struct("!BB8s")


@dataclass(frozen=True, slots=True)
class JoinToken:
    token_id: bytes
    secret: bytes
    expires: int
    dc_id: bytes
    dc_address: str
    dc_port: int
    domain: str
    #: The DC's other replicas, "address:port" each (issue 17): an optional trailing list.
    replicas: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class JoinCredentials:
    client_id: bytes
    psk: bytes
    dc_id: bytes
    dc_address: str
    dc_port: int
    domain: str
    name: str
    #: The DC's other replicas, "address:port" each (an optional trailing list, as in the token).
    replicas: tuple[str, ...] = ()


def _strs(*values: str) -> bytes:
    out = b""
    for v in values:
        b = v.encode("ascii")
        if len(b) > 255:
            raise CodecError("text field longer than 255 bytes")
        out += bytes([len(b)]) + b
    return out


def _replicas(items: tuple[str, ...]) -> bytes:
    """The optional trailing replica list: a count byte and as many text fields (nothing when empty)."""
    if not items:
        return b""
    if len(items) > 255:
        raise CodecError("too many replicas")
    return bytes([len(items)]) + _strs(*items)


def _take_replicas(data: bytes, off: int) -> tuple[tuple[str, ...], int]:
    if off >= len(data):
        return (), off
    items, off = _take_strs(data, off + 1, data[off])
    return tuple(items), off


def _take_strs(data: bytes, off: int, n: int) -> tuple[list[str], int]:
    out = []
    for _ in range(n):
        if off >= len(data) or off + 1 + data[off] > len(data):
            raise CodecError("truncated text field")
        ln = data[off]
        try:
            out.append(data[off + 1:off + 1 + ln].decode("ascii"))
        except UnicodeDecodeError:
            raise CodecError("text field is not ASCII") from None
        off += 1 + ln
    return out, off


def format_token(t: JoinToken) -> str:
    raw = (struct.pack("!B8s32sI8sH", 1, t.token_id, t.secret, t.expires, t.dc_id, t.dc_port)
           + _strs(t.dc_address, t.domain) + _replicas(t.replicas))
    return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def parse_token(text: str) -> JoinToken:
    """CodecError (one line) for anything that is not a well-formed token."""
    text = text.strip()
    if not text.startswith(TOKEN_PREFIX):
        raise CodecError(f"not a join token (it starts with {TOKEN_PREFIX!r})")
    body = text[len(TOKEN_PREFIX):]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise CodecError("join token: not base64url") from None
    if len(raw) < 55 or raw[0] != 1:
        raise CodecError("join token: truncated or of another version")
    _v, token_id, secret, expires, dc_id, port = struct.unpack_from("!B8s32sI8sH", raw)
    (addr, domain), off = _take_strs(raw, 55, 2)
    replicas, off = _take_replicas(raw, off)
    if off != len(raw):
        raise CodecError("join token: trailing bytes")
    return JoinToken(token_id, secret, expires, dc_id, addr, port, domain, replicas)


def pack_join_request(token_id: bytes, ephemeral: bytes, mac: bytes) -> bytes:
    body = _HEAD.pack(VERSION, MessageType.JOIN_REQUEST, token_id) + ephemeral + mac
    return body + bytes(JOIN_REQUEST_PADDED - len(body))


def join_request_signed_part(token_id: bytes, ephemeral: bytes) -> bytes:
    return _HEAD.pack(VERSION, MessageType.JOIN_REQUEST, token_id) + ephemeral


def parse_join_request(data: bytes) -> tuple[bytes, bytes, bytes]:
    """(token_id, ephemeral, mac). CodecError if malformed."""
    if not JOIN_REQUEST_SIZE <= len(data) <= JOIN_REQUEST_PADDED:
        raise CodecError("join request: wrong size")
    version, mtype, token_id = _HEAD.unpack_from(data)
    if version != VERSION or mtype != MessageType.JOIN_REQUEST:
        raise CodecError("join request: wrong version or type")
    return token_id, data[10:42], data[42:58]


def join_response_head(token_id: bytes, status: int, ephemeral: bytes = b"") -> bytes:
    return _HEAD.pack(VERSION, MessageType.JOIN_RESPONSE, token_id) + bytes([status]) + ephemeral


def parse_join_response(data: bytes) -> tuple[bytes, int, bytes, bytes]:
    """(token_id, status, DC ephemeral, sealed credentials); the last two empty unless status is OK."""
    if len(data) < 11:
        raise CodecError("join response: truncated")
    version, mtype, token_id = _HEAD.unpack_from(data)
    if version != VERSION or mtype != MessageType.JOIN_RESPONSE:
        raise CodecError("join response: wrong version or type")
    status = data[10]
    if status != 0:
        return token_id, status, b"", b""
    if len(data) < 43 + 16:
        raise CodecError("join response: truncated")
    return token_id, status, data[11:43], data[43:]


def pack_credentials(c: JoinCredentials) -> bytes:
    if len(c.client_id) != ID_SIZE or len(c.psk) != KEY_SIZE or len(c.dc_id) != ID_SIZE:
        raise CodecError("credentials: bad field size")
    return (c.client_id + c.psk + c.dc_id + struct.pack("!H", c.dc_port) + _strs(c.dc_address, c.domain, c.name)
            + _replicas(c.replicas))


def parse_credentials(data: bytes) -> JoinCredentials:
    if len(data) < 50:
        raise CodecError("credentials: truncated")
    (port,) = struct.unpack_from("!H", data, 48)
    (addr, domain, name), off = _take_strs(data, 50, 3)
    replicas, off = _take_replicas(data, off)
    if off != len(data):
        raise CodecError("credentials: trailing bytes")
    return JoinCredentials(data[:8], data[8:40], data[40:48], addr, port, domain, name, replicas)
