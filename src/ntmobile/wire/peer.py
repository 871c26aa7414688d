"""Peer Hello framing: the one DC-to-DC message that travels in clear.

Layout: the 24-byte signalling header (type PEER_HELLO, sender = the DC ID, status 0, seq 0; flags
FROM_RESPONDER on a hello sent in reply to a hello, which is never answered) followed by the
*plaintext* attribute body of ``PeerHello`` (no AEAD tag). Everything in it is public: the DC's ID,
one of its domains and its static X25519 public key. The receiver trusts it only after checking the
key against its configured peers or the marker TXT of that domain (docs/security.md).
"""

from __future__ import annotations

from .constants import VERSION, MessageType
from .errors import CodecError
from .frame import SIGNAL_HEADER_SIZE, SignalHeader, parse_signal_header
from .messages import PeerHello, decode_body, encode_body


def pack_peer_hello(sender: bytes, txid: int, hello: PeerHello, *, flags: int = 0) -> bytes:
    if len(sender) != 8:
        raise CodecError("a DC ID is 8 bytes")
    if not 0 <= txid < 1 << 32:
        raise CodecError("txid out of range")
    header = SignalHeader(VERSION, MessageType.PEER_HELLO, flags & 0xFF, 0, sender, txid, 0).pack()
    return header + encode_body(hello)


def parse_peer_hello(data: bytes) -> tuple[SignalHeader, PeerHello]:
    """Parse a Peer Hello datagram. Raises CodecError only."""
    header = parse_signal_header(data)
    if header.type is not MessageType.PEER_HELLO:
        raise CodecError("not a Peer Hello")
    msg = decode_body(MessageType.PEER_HELLO, data[SIGNAL_HEADER_SIZE:])
    if not isinstance(msg, PeerHello):  # pragma: no cover - decode_body returns the schema's class
        raise CodecError("not a Peer Hello body")
    return header, msg
