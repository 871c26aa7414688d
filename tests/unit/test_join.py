"""Joining with a token (wire/join.py, core/join.py): single use, expiring, nothing for strangers."""

from __future__ import annotations

import os

import pytest

from ntmobile.core.join import JoinDesk, JoinDeskConfig
from ntmobile.core.registry import JoinRecord, MemoryStore, Pools
from ntmobile.crypto import Ephemeral
from ntmobile.crypto.join import join_mac
from ntmobile.runtime.join import JoinError, _answer, credentials_of
from ntmobile.wire import CodecError, Status
from ntmobile.wire.join import (
    JoinToken,
    format_token,
    join_request_signed_part,
    pack_join_request,
    parse_join_response,
    parse_token,
)

DC_ID = b"\xdc" * 8
NOW = 1_800_000_000


def setup(expires: int = NOW + 3600) -> tuple[JoinDesk, MemoryStore, JoinToken]:
    store = MemoryStore(Pools("100.64.1.0/24", "fd00:6e74:1::/64", None, None))
    token = JoinToken(os.urandom(8), os.urandom(32), expires, DC_ID, "192.0.2.10", 7410, "a.example")
    store.add_join(JoinRecord(token.token_id, token.secret, "new.a.example", expires))
    desk = JoinDesk(JoinDeskConfig(DC_ID, "192.0.2.10", 7410, "a.example"), store, os.urandom)
    return desk, store, token


def request(token: JoinToken, secret: bytes | None = None) -> tuple[Ephemeral, bytes]:
    eph = Ephemeral()
    mac = join_mac(secret or token.secret, token.token_id, join_request_signed_part(token.token_id, eph.public))
    return eph, pack_join_request(token.token_id, eph.public, mac)


def test_the_token_survives_its_text_form_and_bad_text_is_one_clear_error() -> None:
    _desk, _store, token = setup()
    assert parse_token(format_token(token)) == token
    assert len(format_token(token)) < 120  # one line to paste
    for bad in ("hello", "ntmj1.!!!", "ntmj1." + "A" * 10, format_token(token) + "AAAA"):
        with pytest.raises(CodecError):
            parse_token(bad)


def test_a_join_enrols_the_node_once_and_its_retransmission_gets_the_same_answer() -> None:
    desk, store, token = setup()
    eph, req = request(token)
    answer = desk.receive(req, NOW)
    assert answer is not None
    creds = _answer(token, eph, answer)
    assert creds is not None and creds.name == "new.a.example" and creds.dc_id == DC_ID
    rec = store.get_client(creds.client_id)
    assert rec is not None and rec.psk == creds.psk and rec.vip4 and rec.vip6
    assert desk.receive(req, NOW + 1) == answer  # stored bytes: no second seal under the answer key
    # Anyone else with the token, later: refused.
    _eph2, req2 = request(token)
    refused = desk.receive(req2, NOW + 2)
    assert refused is not None and parse_join_response(refused)[1] == Status.TOKEN_USED
    assert len(refused) < len(req2)
    with pytest.raises(JoinError, match="used already"):
        _answer(token, _eph2, refused)
    assert len(store._clients) == 1


def test_an_expired_token_enrols_nobody() -> None:
    desk, store, token = setup(expires=NOW - 1)
    _eph, req = request(token)
    answer = desk.receive(req, NOW)
    assert answer is not None and parse_join_response(answer)[1] == Status.TOKEN_EXPIRED
    assert store._clients == {}


def test_strangers_get_nothing_and_allocate_nothing() -> None:
    desk, store, token = setup()
    _eph, wrong_mac = request(token, secret=os.urandom(32))
    stranger = JoinToken(os.urandom(8), os.urandom(32), NOW + 60, DC_ID, "192.0.2.10", 7410, "a.example")
    _eph, unknown = request(stranger)
    for data in (wrong_mac, unknown, b"\x01\x21" + b"\x00" * 20, os.urandom(58), bytes(2000)):
        assert desk.receive(data, NOW) is None
    assert store._clients == {} and store.get_join(token.token_id).used_by is None  # type: ignore[union-attr]
    assert desk.stats["join_refused_auth"] == 2 and desk.stats["joins"] == 0


def test_a_forged_answer_is_ignored_by_the_joining_node() -> None:
    desk, _store, token = setup()
    eph, req = request(token)
    answer = desk.receive(req, NOW)
    assert answer is not None
    forged = answer[:-1] + bytes([answer[-1] ^ 1])
    assert _answer(token, eph, forged) is None
    other = Ephemeral()  # an answer for another join attempt of the same token
    assert _answer(token, other, answer) is None


def test_tokens_and_credentials_carry_the_dc_replicas() -> None:
    replicas = ("192.0.2.11:7410", "[2001:db8::11]:7499")
    store = MemoryStore(Pools("100.64.1.0/24", "fd00:6e74:1::/64", None, None))
    token = JoinToken(os.urandom(8), os.urandom(32), NOW + 60, DC_ID, "192.0.2.10", 7410, "a.example", replicas)
    assert parse_token(format_token(token)) == token
    with pytest.raises(CodecError):
        parse_token(format_token(token) + "AAAA")
    store.add_join(JoinRecord(token.token_id, token.secret, "new.a.example", NOW + 60))
    desk = JoinDesk(JoinDeskConfig(DC_ID, "192.0.2.10", 7410, "a.example", replicas), store, os.urandom)
    eph, req = request(token)
    answer = desk.receive(req, NOW)
    assert answer is not None
    creds = _answer(token, eph, answer)
    assert creds is not None and creds.replicas == replicas
    assert credentials_of(creds).dc_replicas == list(replicas)
