"""A nonce ledger for the in-memory harness: every AES-GCM seal made by any core (signalling channels,
data capsules, GSO capsules) is recorded as (key, nonce), across every core, restart and re-key of a
test. ``reused`` lists the pairs sealed more than once: under GCM two of them leak the XOR of the
plaintexts and the GHASH key (docs/security.md §3)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ntmobile.crypto import channel


@dataclass
class NonceLedger:
    seen: dict[tuple[bytes, bytes], int] = field(default_factory=dict)
    reused: list[tuple[bytes, bytes]] = field(default_factory=list)

    def record(self, key: bytes, nonce: bytes) -> None:
        k = (key, bytes(nonce))
        n = self.seen.get(k, 0)
        if n:
            self.reused.append(k)
        self.seen[k] = n + 1

    @property
    def seals(self) -> int:
        return sum(self.seen.values())


class _RecordingAesGcm:
    """AESGCM with every encryption written to the ledger first."""

    __slots__ = ("_key", "_real", "_ledger")

    def __init__(self, key: bytes, ledger: NonceLedger) -> None:
        self._key = bytes(key)
        self._real = AESGCM(key)
        self._ledger = ledger

    def encrypt(self, nonce: bytes, data: Any, aad: Any) -> bytes:
        self._ledger.record(self._key, nonce)
        return self._real.encrypt(nonce, data, aad)

    def encrypt_into(self, nonce: bytes, data: Any, aad: Any, buf: Any) -> int:
        self._ledger.record(self._key, nonce)
        return self._real.encrypt_into(nonce, data, aad, buf)

    def decrypt(self, nonce: bytes, data: Any, aad: Any) -> bytes:
        return self._real.decrypt(nonce, data, aad)

    def decrypt_into(self, nonce: bytes, data: Any, aad: Any, buf: Any) -> int:
        return self._real.decrypt_into(nonce, data, aad, buf)


@contextmanager
def nonce_ledger() -> Iterator[NonceLedger]:
    """Record every seal made while the context is open (AEAD contexts made before it are dropped)."""
    ledger = NonceLedger()
    mp = pytest.MonkeyPatch()
    for aead in list(channel._live):
        aead._ctx = None
    channel._live.clear()
    mp.setattr(channel, "AESGCM", lambda key: _RecordingAesGcm(key, ledger))
    try:
        yield ledger
    finally:
        mp.undo()
        for aead in list(channel._live):
            aead._ctx = None
        channel._live.clear()
