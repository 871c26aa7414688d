"""Crypto: key schedule, sealed signalling channels, data capsules and replay windows.

docs/security.md names these tests in its "attack -> defence -> test" table.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import astuple

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from ntmobile import wire
from ntmobile.crypto import (
    AuthError,
    CapsuleOpener,
    CapsuleSealer,
    Channel,
    Ephemeral,
    KeyPair,
    ReplayWindow,
    hkdf,
    long_term_keys,
    path_keys,
    peer_dc_keys,
    relay_leg_keys,
    session_keys,
)
from ntmobile.wire import CapsuleFlags, CodecError, MessageType, SignalFlags

FUZZ = settings(max_examples=300, deadline=None)

PSK = bytes(range(32))
NODE_ID = b"node-id1"
DC_ID = b"dc-id-01"
PATH_ID = b"path-id1"
PATH_KEY = bytes(range(32, 64))
RELAY_KEY = bytes(range(64, 96))
KEYS = KeyPair(b"\x11" * 32, b"\x22" * 32)
MSG = wire.DirectionRequest(fqdn="peer.example.jp", peer_vip4="10.0.0.9", capabilities=3)


def pair(keys: KeyPair = KEYS) -> tuple[Channel, Channel]:
    return Channel(keys, b"sender-A"), Channel(keys.swapped(), b"sender-B")


def deliver(rx: Channel, data: bytes) -> wire.Message:
    return rx.open(wire.parse_signal_header(data), data)


def seeded(seed: int) -> Ephemeral:
    return Ephemeral(lambda n: bytes([seed]) * n)


# ------------------------------------------------------------------------------------------------
# Signalling channel
# ------------------------------------------------------------------------------------------------


def test_channel_seal_open_both_ways() -> None:
    a, b = pair()
    assert deliver(b, a.seal(MSG, txid=1)) == MSG
    reply = wire.TunnelResponse(capabilities=1, observed=("198.51.100.7", 40000))
    assert deliver(a, b.seal(reply, txid=1)) == reply
    assert (a.next_seq, b.next_seq) == (2, 2)


def test_channel_header_is_associated_data_and_nonce_is_zero_padded_seq() -> None:
    a = Channel(KEYS, b"sender-A", seq_start=0x0102030405060708)
    data = a.seal(MSG, txid=9, status=0, flags=SignalFlags.LONG_TERM)
    header, sealed = data[:24], data[24:]
    nonce = bytes(4) + (0x0102030405060708).to_bytes(8, "big")
    assert AESGCM(KEYS.send).decrypt(nonce, sealed, header) == wire.encode_body(MSG)
    assert len(data) == 24 + len(wire.encode_body(MSG)) + 16


def test_channel_rejects_replay() -> None:
    a, b = pair()
    data = a.seal(MSG, txid=1)
    deliver(b, data)
    with pytest.raises(AuthError, match="replay"):
        deliver(b, data)


def test_channel_retransmission_is_resealed_with_fresh_seq() -> None:
    a, b = pair()
    first, second = a.seal(MSG, txid=77), a.seal(MSG, txid=77)
    h1, h2 = wire.parse_signal_header(first), wire.parse_signal_header(second)
    assert (h1.txid, h2.txid) == (77, 77)
    assert h2.seq == h1.seq + 1
    assert first[24:] != second[24:]
    assert deliver(b, second) == deliver(b, first) == MSG  # both copies authenticate once each


def test_channel_accepts_out_of_order_within_window_once() -> None:
    a, b = pair()
    sent = [a.seal(MSG, txid=i) for i in range(1, 11)]
    for data in reversed(sent):
        assert deliver(b, data) == MSG
    for data in sent:
        with pytest.raises(AuthError):
            deliver(b, data)


@pytest.mark.parametrize("offset", range(2, 24))
def test_channel_rejects_flipped_header_bit(offset: int) -> None:
    a, b = pair()
    data = a.seal(MSG, txid=0x10203040, flags=SignalFlags.LONG_TERM)
    for bit in range(8):
        bad = bytearray(data)
        bad[offset] ^= 1 << bit
        try:
            hdr = wire.parse_signal_header(bytes(bad))
        except CodecError:
            assert offset == 1  # only a type flip can make the header unparsable
            continue
        with pytest.raises(AuthError):
            b.open(hdr, bytes(bad))
    assert deliver(b, data) == MSG  # failed attempts did not burn the sequence number


def test_channel_rejects_flipped_version_or_type() -> None:
    a, b = pair()
    data = a.seal(MSG, txid=1)
    for offset, bit in itertools.product((0, 1), range(8)):
        bad = bytearray(data)
        bad[offset] ^= 1 << bit
        with pytest.raises((CodecError, AuthError)):
            deliver(b, bytes(bad))


def test_channel_rejects_flipped_body_bit() -> None:
    a, b = pair()
    data = a.seal(MSG, txid=1)
    for offset in range(24, len(data)):
        for bit in range(8):
            bad = bytearray(data)
            bad[offset] ^= 1 << bit
            with pytest.raises(AuthError):
                deliver(b, bytes(bad))
    assert deliver(b, data) == MSG


def test_channel_rejects_truncation_and_extension() -> None:
    a, b = pair()
    data = a.seal(MSG, txid=1)
    for bad in (data[:-1], data[:40], data + b"\x00"):
        with pytest.raises(AuthError):
            deliver(b, bad)


def test_channel_rejects_wrong_key() -> None:
    a, _ = pair()
    data = a.seal(MSG, txid=1)
    # the receive key must be the sender's send key; a different or one-bit-off key does not open it
    for keys in (KeyPair(b"\x11" * 32, b"\x33" * 32), KeyPair(b"\x22" * 32, b"\x10" + b"\x11" * 31)):
        with pytest.raises(AuthError):
            deliver(Channel(keys, b"x" * 8), data)


def test_channel_rejects_reflection_to_sender() -> None:
    # each key seals one direction only: a message reflected back to its sender does not open
    a, _ = pair()
    with pytest.raises(AuthError):
        deliver(a, a.seal(MSG, txid=1))


def test_channel_recv_floor_rejects_older_sequence_numbers() -> None:
    # long-term channels: the sender starts at its wall-clock microseconds, the DC restores the
    # last sequence number it accepted as the floor; nothing at or below it is accepted again
    old_sender = Channel(KEYS, NODE_ID, seq_start=1_700_000_000_000_000)
    recorded = [old_sender.seal(MSG, txid=i) for i in range(3)]
    last = wire.parse_signal_header(recorded[-1]).seq
    dc = Channel(KEYS.swapped(), DC_ID, recv_floor=last)
    for data in recorded:
        with pytest.raises(AuthError, match="replay"):
            deliver(dc, data)
    restarted = Channel(KEYS, NODE_ID, seq_start=1_700_000_005_000_000)
    assert deliver(dc, restarted.seal(MSG, txid=5)) == MSG


def test_channel_counter_exhaustion() -> None:
    a = Channel(KEYS, b"sender-A", seq_start=2**64 - 1)
    data = a.seal(MSG, txid=1)
    assert wire.parse_signal_header(data).seq == 2**64 - 1
    with pytest.raises(CodecError, match="exhausted"):
        a.seal(MSG, txid=2)


def _registration(name_len: int, n_endpoints: int) -> wire.RegistrationRequest:
    eps = tuple((f"2001:db8::{i + 1:x}", 7412) for i in range(n_endpoints))
    return wire.RegistrationRequest(role=1, name="n" * name_len, ephemeral=bytes(32), versions=(1, 1),
                                    local_endpoints=eps)


def test_max_signal_size_enforced_on_seal() -> None:
    budget = wire.MAX_SIGNAL_SIZE - wire.SIGNAL_HEADER_SIZE - 16
    base = len(wire.encode_body(_registration(0, 0)))
    n_eps, name_len = divmod(budget - base, 22)  # an IPv6 endpoint attribute is 3 + 19 bytes
    exact = _registration(name_len, n_eps)
    assert len(wire.encode_body(exact)) == budget
    a, b = pair()
    data = a.seal(exact, txid=1)
    assert len(data) == wire.MAX_SIGNAL_SIZE
    assert deliver(b, data) == exact
    with pytest.raises(CodecError, match="exceeds"):
        a.seal(_registration(name_len + 1, n_eps), txid=2)


# ------------------------------------------------------------------------------------------------
# Replay window
# ------------------------------------------------------------------------------------------------


def accept(w: ReplayWindow, seq: int) -> bool:
    if not w.check(seq):
        return False
    w.update(seq)
    return True


def test_window_in_order() -> None:
    w = ReplayWindow()
    assert not w.check(0)  # the floor counts as seen
    assert all(accept(w, s) for s in range(1, 5000))
    assert not any(accept(w, s) for s in (4999, 4000, 904))


def test_window_out_of_order_accepted_once() -> None:
    w = ReplayWindow()
    assert accept(w, 100)
    assert accept(w, 50)
    assert not accept(w, 50)
    assert accept(w, 99)
    assert accept(w, 101)
    assert not accept(w, 99)


def test_window_too_old_rejected_at_exact_edge() -> None:
    w = ReplayWindow()
    assert accept(w, 10_000)
    assert w.check(10_000 - 4095)  # the oldest counter the 4096-entry window still tracks
    assert not w.check(10_000 - 4096)
    assert not w.check(1)


def test_window_huge_jumps() -> None:
    w = ReplayWindow()
    assert accept(w, 3)
    assert accept(w, 2**63)
    assert accept(w, 2**63 - 1)  # unseen, inside the window
    assert not w.check(3)
    assert not w.check(2**63 - 4096)
    assert accept(w, 2**64 - 1)
    assert not accept(w, 2**64 - 1)
    assert accept(w, 2**64 - 2)


def test_window_jump_of_exactly_its_size() -> None:
    w = ReplayWindow(size=64)
    for s in range(1, 11):
        accept(w, s)
    assert accept(w, 10 + 64)
    assert all(w.check(s) for s in range(11, 10 + 64))
    assert not w.check(10)


def test_window_floor_refuses_everything_below() -> None:
    w = ReplayWindow(floor=1_000_000)
    assert not any(w.check(s) for s in (1_000_000, 999_999, 1_000_000 - 4095, 1))
    assert accept(w, 1_000_001)
    assert not w.check(999_999)


@FUZZ
@given(st.integers(0, 2**20), st.lists(st.integers(0, 2**20 + 300), max_size=200))
def test_window_matches_a_model(floor: int, seqs: list[int]) -> None:
    size = 128
    w = ReplayWindow(size=size, floor=floor)
    seen: set[int] = set()
    top = floor
    for s in seqs:
        expected = s > floor and s not in seen and s > top - size
        assert accept(w, s) is expected, (s, top)
        if expected:
            seen.add(s)
            top = max(top, s)


# ------------------------------------------------------------------------------------------------
# Data capsules
# ------------------------------------------------------------------------------------------------


def capsule_ends() -> tuple[CapsuleSealer, CapsuleOpener, CapsuleSealer, CapsuleOpener]:
    pk = path_keys(PATH_KEY, PATH_ID)
    _, ini = pk.for_initiator()
    _, res = pk.for_responder()
    return (CapsuleSealer(ini.send, PATH_ID, 0), CapsuleOpener(res.recv),
            CapsuleSealer(res.send, PATH_ID, CapsuleFlags.FROM_RESPONDER), CapsuleOpener(ini.recv))


def test_capsule_round_trip_both_directions() -> None:
    i_seal, r_open, r_seal, i_open = capsule_ends()
    packet = bytes.fromhex("4500001c00000000401100000a0000010a000002") + b"payload!"
    c1 = i_seal.seal(packet)
    assert wire.parse_capsule_header(c1) == wire.CapsuleHeader(0, PATH_ID, 1)
    assert len(c1) == len(packet) + wire.CAPSULE_OVERHEAD
    assert r_open.open(c1) == packet
    c2 = r_seal.seal(packet, CapsuleFlags.GSO)
    assert wire.parse_capsule_header(c2) == wire.CapsuleHeader(CapsuleFlags.FROM_RESPONDER | CapsuleFlags.GSO,
                                                               PATH_ID, 1)
    assert i_open.open(c2) == packet
    assert i_open.open(r_seal.seal(b"")) == b""


def test_capsule_nonce_and_associated_data() -> None:
    key = b"\x44" * 32
    capsule = CapsuleSealer(key, PATH_ID, 0).seal(b"inner")
    nonce = bytes(4) + (1).to_bytes(8, "big")
    assert AESGCM(key).decrypt(nonce, capsule[20:], capsule[:20]) == b"inner"


def test_capsule_replay_rejected() -> None:
    i_seal, r_open, _, _ = capsule_ends()
    caps = [i_seal.seal(bytes([n])) for n in range(5)]
    for c in (caps[4], caps[0], caps[2]):
        r_open.open(c)
    for c in (caps[4], caps[0], caps[2]):
        with pytest.raises(AuthError, match="replay"):
            r_open.open(c)
    assert r_open.open(caps[1]) == b"\x01"


def test_capsule_tamper_rejected() -> None:
    i_seal, r_open, _, _ = capsule_ends()
    capsule = i_seal.seal(b"some inner packet")
    for offset, bit in itertools.product(range(len(capsule)), range(8)):
        bad = bytearray(capsule)
        bad[offset] ^= 1 << bit
        # version/type flips are not a capsule any more; every other flip fails authentication
        expected = CodecError if offset < 2 else AuthError
        with pytest.raises(expected):
            r_open.open(bytes(bad))
    assert r_open.open(capsule) == b"some inner packet"


def test_capsule_wrong_direction_or_path_rejected() -> None:
    i_seal, r_open, _, i_open = capsule_ends()
    c = i_seal.seal(b"x")
    with pytest.raises(AuthError):
        i_open.open(c)  # a reflected capsule: the initiator's receive key is the other direction
    other = path_keys(PATH_KEY, b"other-id").for_responder()[1]
    with pytest.raises(AuthError):
        CapsuleOpener(other.recv).open(c)


def test_capsule_too_short_is_codec_error() -> None:
    _, r_open, _, _ = capsule_ends()
    with pytest.raises(CodecError):
        r_open.open(bytes(35))


@FUZZ
@given(st.binary(max_size=80), st.integers(0, 200), st.integers(0, 7))
def test_fuzz_capsule_open_raises_only_codec_or_auth_error(payload: bytes, pos: int, bit: int) -> None:
    i_seal, r_open, _, _ = capsule_ends()
    capsule = bytearray(i_seal.seal(payload))
    capsule[pos % len(capsule)] ^= 1 << bit
    try:
        r_open.open(bytes(capsule))
    except (CodecError, AuthError):
        return
    pytest.fail("a tampered capsule opened")


@FUZZ
@given(st.binary(max_size=120), st.integers(0, 300), st.integers(0, 255))
def test_fuzz_signal_open_raises_only_codec_or_auth_error(tail: bytes, pos: int, val: int) -> None:
    a, b = pair()
    data = bytearray(a.seal(MSG, txid=3) + tail)
    data[pos % len(data)] ^= val or 1
    try:
        deliver(b, bytes(data))
    except (CodecError, AuthError):
        return
    pytest.fail("a tampered datagram opened")


# ------------------------------------------------------------------------------------------------
# Key schedule
# ------------------------------------------------------------------------------------------------


def test_session_keys_agree_from_ephemeral_exchange() -> None:
    client, server = Ephemeral(), Ephemeral()
    c_keys = session_keys(PSK, client.exchange(server.public), NODE_ID, client.public, server.public)
    s_keys = session_keys(PSK, server.exchange(client.public), NODE_ID, client.public, server.public)
    assert c_keys == s_keys
    a, b = Channel(c_keys, NODE_ID), Channel(s_keys.swapped(), DC_ID)
    assert deliver(b, a.seal(MSG, txid=1)) == MSG
    assert deliver(a, b.seal(MSG, txid=1)) == MSG
    assert c_keys.send != c_keys.recv


def test_session_keys_need_the_enrolment_secret_and_bind_the_transcript() -> None:
    client, server = seeded(1), seeded(2)
    shared = client.exchange(server.public)
    ref = session_keys(PSK, shared, NODE_ID, client.public, server.public)
    variants = [
        session_keys(b"\x00" * 32, shared, NODE_ID, client.public, server.public),  # wrong enrolment secret
        session_keys(PSK, shared, b"other-id", client.public, server.public),
        session_keys(PSK, shared, NODE_ID, server.public, client.public),
        session_keys(PSK, seeded(3).exchange(server.public), NODE_ID, client.public, server.public),
    ]
    for v in variants:
        assert {v.send, v.recv}.isdisjoint({ref.send, ref.recv})


def test_ephemeral_is_injectable_and_rejects_degenerate_peers() -> None:
    assert seeded(7).public == seeded(7).public != seeded(8).public
    assert len(seeded(7).public) == 32
    with pytest.raises(ValueError):
        seeded(7).exchange(bytes(32))  # small-order point: all-zero shared secret


def test_labels_are_the_documented_ones() -> None:
    lt = long_term_keys(PSK, NODE_ID)
    assert lt.send == hkdf(PSK, salt=NODE_ID, info=b"ntm1 long-term up")
    assert lt.recv == hkdf(PSK, salt=NODE_ID, info=b"ntm1 long-term down")
    pk = path_keys(PATH_KEY, PATH_ID)
    assert pk.data_i2r == hkdf(PATH_KEY, salt=PATH_ID, info=b"ntm1 data i2r")
    assert pk.data_r2i == hkdf(PATH_KEY, salt=PATH_ID, info=b"ntm1 data r2i")
    assert pk.sig_i2r == hkdf(PATH_KEY, salt=PATH_ID, info=b"ntm1 tsig i2r")
    assert pk.sig_r2i == hkdf(PATH_KEY, salt=PATH_ID, info=b"ntm1 tsig r2i")
    leg = relay_leg_keys(RELAY_KEY, PATH_ID, responder_leg=True)
    assert leg.send == hkdf(RELAY_KEY, salt=PATH_ID, info=b"ntm1 relay up r")
    assert leg.recv == hkdf(RELAY_KEY, salt=PATH_ID, info=b"ntm1 relay down r")
    dc = peer_dc_keys(PSK, DC_ID, b"dc-id-02")
    assert dc.send == hkdf(PSK, salt=b"", info=b"ntm1 dc-dc " + DC_ID + b"dc-id-02")
    shared = b"\x05" * 32
    s = session_keys(PSK, shared, NODE_ID, b"c" * 32, b"s" * 32)
    assert s.send == hkdf(shared, salt=PSK, info=b"ntm1 session up" + NODE_ID + b"c" * 32 + b"s" * 32)


def test_no_two_directions_or_labels_share_a_key() -> None:
    # even with one secret everywhere, every label/role/direction yields its own key
    secret = PSK
    pk = path_keys(secret, PATH_ID)
    keys = [
        *astuple(long_term_keys(secret, NODE_ID)),
        *astuple(long_term_keys(secret, b"other-id")),
        pk.data_i2r, pk.data_r2i, pk.sig_i2r, pk.sig_r2i,
        *astuple(path_keys(secret, b"other-id")),
        *astuple(relay_leg_keys(secret, PATH_ID, responder_leg=False)),
        *astuple(relay_leg_keys(secret, PATH_ID, responder_leg=True)),
        *astuple(peer_dc_keys(secret, DC_ID, b"dc-id-02")),
        *astuple(session_keys(secret, secret, PATH_ID, bytes(32), bytes(32))),
    ]
    assert all(len(k) == 32 for k in keys)
    assert len(set(keys)) == len(keys)


def test_path_keys_pair_initiator_with_responder() -> None:
    pk = path_keys(PATH_KEY, PATH_ID)
    i_sig, i_data = pk.for_initiator()
    r_sig, r_data = pk.for_responder()
    assert (i_sig.send, i_sig.recv) == (r_sig.recv, r_sig.send)
    assert (i_data.send, i_data.recv) == (r_data.recv, r_data.send)
    assert len({i_sig.send, i_sig.recv, i_data.send, i_data.recv}) == 4
    a, b = Channel(i_sig, PATH_ID), Channel(r_sig, PATH_ID)
    tr = wire.TunnelRequest(capabilities=1, vip4="10.1.0.1")
    assert deliver(b, a.seal(tr, txid=1)) == tr
    data = b.seal(wire.TunnelResponse(), txid=1, flags=SignalFlags.FROM_RESPONDER)
    assert wire.parse_signal_header(data).type is MessageType.TUNNEL_RESPONSE
    assert deliver(a, data) == wire.TunnelResponse()


def test_relay_leg_keys_per_leg_and_never_the_path_keys() -> None:
    ini = relay_leg_keys(RELAY_KEY, PATH_ID, responder_leg=False)
    res = relay_leg_keys(RELAY_KEY, PATH_ID, responder_leg=True)
    assert len({ini.send, ini.recv, res.send, res.recv}) == 4
    # the RS-S side of each leg uses the swapped pair; a message of one leg does not open on the other
    node_i, rs_i = Channel(ini, PATH_ID), Channel(ini.swapped(), PATH_ID)
    rs_r = Channel(res.swapped(), PATH_ID)
    data = node_i.seal(wire.TunnelRequest(), txid=1)
    with pytest.raises(AuthError):
        deliver(rs_r, data)
    assert deliver(rs_i, data) == wire.TunnelRequest()
    # the relay key alone opens no end-to-end data: the path keys derive from a different secret
    pk = path_keys(PATH_KEY, PATH_ID)
    capsule = CapsuleSealer(pk.data_i2r, PATH_ID, 0).seal(b"secret")
    for k in (ini.send, ini.recv, res.send, res.recv):
        with pytest.raises(AuthError):
            CapsuleOpener(k).open(capsule)


def test_peer_dc_keys_pair_up_across_dcs() -> None:
    mine = peer_dc_keys(PSK, DC_ID, b"dc-id-02")
    theirs = peer_dc_keys(PSK, b"dc-id-02", DC_ID)
    assert mine == theirs.swapped()
    assert mine.send != mine.recv


def test_long_term_keys_client_and_dc_views() -> None:
    client = long_term_keys(PSK, NODE_ID)
    node, dc = Channel(client, NODE_ID), Channel(client.swapped(), DC_ID)
    assert deliver(dc, node.seal(MSG, txid=1, flags=SignalFlags.LONG_TERM)) == MSG
    assert long_term_keys(PSK, b"other-id") != client
    assert long_term_keys(b"\x01" * 32, NODE_ID) != client


def test_hkdf_output_length_and_determinism() -> None:
    assert hkdf(PSK, salt=b"s", info=b"i") == hkdf(PSK, salt=b"s", info=b"i")
    assert len(hkdf(PSK, salt=b"s", info=b"i", length=64)) == 64
    assert struct.calcsize("!4xQ") == 12


def test_hkdf_matches_rfc5869_test_case_1_and_the_cryptography_implementation() -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    from ntmobile.crypto.keys import hkdf

    ikm = bytes.fromhex("0b" * 22)
    salt = bytes.fromhex("000102030405060708090a0b0c")
    info = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9")
    okm = bytes.fromhex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")
    assert hkdf(ikm, salt=salt, info=info, length=42) == okm
    for salt in (b"", b"s" * 8, b"x" * 80):
        for length in (16, 32, 64, 100):
            ref = HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=b"ntm1 test").derive(b"k" * 32)
            assert hkdf(b"k" * 32, salt=salt, info=b"ntm1 test", length=length) == ref


@given(st.binary(max_size=200), st.binary(max_size=300))
@settings(max_examples=500)
def test_hmac_sha256_matches_the_standard_library(key: bytes, msg: bytes) -> None:
    import hmac

    from ntmobile.crypto.keys import hmac_sha256

    assert hmac_sha256(key, msg) == hmac.digest(key, msg, "sha256")
