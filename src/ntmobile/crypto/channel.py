"""Sealing and opening of signalling messages and data capsules (AES-256-GCM), replay windows."""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ntmobile.wire import (
    MAX_SIGNAL_SIZE,
    SIGNAL_HEADER_SIZE,
    VERSION,
    CodecError,
    Message,
    SignalHeader,
    decode_body,
    encode_body,
    pack_capsule_header,
    parse_capsule_header,
)
from ntmobile.wire.frame import CAPSULE_HEADER_SIZE

from .keys import KeyPair

_NONCE = struct.Struct("!4xQ")
_MAX_SEQ = (1 << 64) - 1


class AuthError(Exception):
    """A datagram failed authentication, or was a replay."""


class ReplayWindow:
    """Sliding window over 64-bit counters (RFC 6479 style, bitmap in a Python int).

    ``floor`` and everything below it count as already seen, so a fresh window accepts 1, 2, ...
    and a window restored from a persisted ``floor`` refuses every older counter.
    """

    __slots__ = ("size", "top", "bits", "_mask")

    def __init__(self, size: int = 4096, floor: int = 0) -> None:
        self.size = size
        self.top = floor
        self.bits = (1 << size) - 1
        self._mask = (1 << size) - 1

    def check(self, seq: int) -> bool:
        if seq > self.top:
            return True
        d = self.top - seq
        return d < self.size and not (self.bits >> d) & 1

    def update(self, seq: int) -> None:
        if seq > self.top:
            shift = seq - self.top
            self.bits = ((self.bits << shift) | 1) & self._mask if shift < self.size else 1
            self.top = seq
        else:
            self.bits |= 1 << (self.top - seq)


class Channel:
    """One authenticated, encrypted signalling channel between two parties.

    ``sender`` is the 8-byte key identifier written into every header we send; the receiver uses
    it to find the matching keys.
    """

    __slots__ = ("_send", "_recv", "sender", "next_seq", "window", "keys")

    def __init__(self, keys: KeyPair, sender: bytes, *, seq_start: int = 1, recv_floor: int = 0) -> None:
        self.keys = keys
        self._send = AESGCM(keys.send)
        self._recv = AESGCM(keys.recv)
        self.sender = sender
        self.next_seq = seq_start
        self.window = ReplayWindow(floor=recv_floor)

    def seal(self, msg: Message, *, txid: int, status: int = 0, flags: int = 0) -> bytes:
        seq = self.next_seq
        if seq > _MAX_SEQ:
            raise CodecError("send counter exhausted; re-key")
        self.next_seq = seq + 1
        header = SignalHeader(VERSION, msg.TYPE, flags, status, self.sender, txid, seq).pack()
        sealed = self._send.encrypt(_NONCE.pack(seq), encode_body(msg), header)
        out = header + sealed
        if len(out) > MAX_SIGNAL_SIZE:
            raise CodecError(f"signalling message of {len(out)} bytes exceeds {MAX_SIGNAL_SIZE}")
        return out

    def open(self, header: SignalHeader, data: bytes) -> Message:
        """Authenticate, check for replay, and decode. AuthError or CodecError on failure."""
        if not self.window.check(header.seq):
            raise AuthError("replayed or too old")
        try:
            body = self._recv.decrypt(_NONCE.pack(header.seq), data[SIGNAL_HEADER_SIZE:], data[:SIGNAL_HEADER_SIZE])
        except InvalidTag:
            raise AuthError("authentication failed") from None
        self.window.update(header.seq)
        return decode_body(header.type, body)


class CapsuleSealer:
    """Seals inner packets into data capsules of one path direction."""

    __slots__ = ("_aead", "path_id", "flags", "counter")

    def __init__(self, key: bytes, path_id: bytes, flags: int) -> None:
        self._aead = AESGCM(key)
        self.path_id = path_id
        self.flags = flags
        self.counter = 0

    def seal(self, payload: bytes, extra_flags: int = 0) -> bytes:
        self.counter += 1
        header = pack_capsule_header(self.flags | extra_flags, self.path_id, self.counter)
        return header + self._aead.encrypt(_NONCE.pack(self.counter), payload, header)


class CapsuleOpener:
    """Opens data capsules of one path direction, with replay protection."""

    __slots__ = ("_aead", "window")

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self.window = ReplayWindow()

    def open(self, data: bytes) -> bytes:
        """Return the inner payload. CodecError for a malformed capsule, AuthError for a bad or
        replayed one."""
        hdr = parse_capsule_header(data)
        if not self.window.check(hdr.counter):
            raise AuthError("replayed capsule")
        try:
            payload = self._aead.decrypt(
                _NONCE.pack(hdr.counter), data[CAPSULE_HEADER_SIZE:], data[:CAPSULE_HEADER_SIZE]
            )
        except InvalidTag:
            raise AuthError("capsule authentication failed") from None
        self.window.update(hdr.counter)
        return payload
