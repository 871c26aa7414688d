"""Errors are told apart by their class, never by their text: a replay raises crypto.ReplayError (an
AuthError), a forgery a plain AuthError, and the cores count each by its type."""

from __future__ import annotations

import pathlib
import re

import pytest

from ntmobile import wire
from ntmobile.core.common import CoreBase
from ntmobile.crypto import AuthError, CapsuleOpener, CapsuleSealer, Channel, KeyPair, ReplayError, path_keys
from ntmobile.wire import Message, SignalHeader

SRC = pathlib.Path(__file__).resolve().parents[2] / "src" / "ntmobile"
KEYS = KeyPair(b"\x11" * 32, b"\x22" * 32)
MSG = wire.DirectionRequest(fqdn="peer.example.jp", peer_vip4="10.0.0.9", capabilities=3)


def test_a_replayed_signalling_message_raises_replay_error_and_a_forged_one_auth_error() -> None:
    a, b = Channel(KEYS, b"sender-A"), Channel(KEYS.swapped(), b"sender-B")
    data = a.seal(MSG, txid=1)
    b.open(wire.parse_signal_header(data), data)
    with pytest.raises(ReplayError):
        b.open(wire.parse_signal_header(data), data)
    forged = bytearray(a.seal(MSG, txid=2))
    forged[-1] ^= 1
    with pytest.raises(AuthError) as info:
        b.open(wire.parse_signal_header(bytes(forged)), bytes(forged))
    assert not isinstance(info.value, ReplayError)
    assert issubclass(ReplayError, AuthError)


def test_a_replayed_capsule_raises_replay_error_and_a_forged_one_auth_error() -> None:
    pk = path_keys(bytes(range(32)), b"path-id1")
    _, ini = pk.for_initiator()
    _, res = pk.for_responder()
    seal, opener = CapsuleSealer(ini.send, b"path-id1", 0), CapsuleOpener(res.recv)
    capsule = seal.seal(b"inner")
    assert opener.open(capsule) == b"inner"
    with pytest.raises(ReplayError):
        opener.open(capsule)
    forged = bytearray(seal.seal(b"inner"))
    forged[-1] ^= 1
    with pytest.raises(AuthError) as info:
        opener.open(bytes(forged))
    assert not isinstance(info.value, ReplayError)


class _Raising:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def open(self, header: SignalHeader, data: bytes) -> Message:
        raise self.exc


@pytest.mark.parametrize(("exc", "counter"), [
    (ReplayError("counter seen"), "drop_replay"),
    (AuthError("tag mismatch (not a replay)"), "drop_auth"),
])
def test_a_core_counts_a_drop_by_the_errors_class_not_its_text(exc: Exception, counter: str) -> None:
    core = CoreBase()
    header = wire.parse_signal_header(Channel(KEYS, b"sender-A").seal(MSG, txid=1))
    assert core._open(_Raising(exc), header, b"") is None  # type: ignore[arg-type]
    assert dict(core.stats) == {counter: 1}


def test_no_code_classifies_an_exception_by_its_text() -> None:
    pattern = re.compile(r"""["'][^"']*["']\s+(not\s+)?in\s+str\(\s*(exc|e|err|error)\s*\)""")
    offenders = [f"{p.relative_to(SRC)}:{n}" for p in SRC.rglob("*.py")
                 for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
