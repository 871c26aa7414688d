"""The DC's registration path as a busy DC runs it: group commit (a failed commit turns the batch's
registrations into STORAGE_ERROR answers), responses rebuilt for retransmitted requests, the bounded
long-term channel cache (an evicted channel is rebuilt from the registry and still refuses replays),
and the DC ephemeral's one-second lifetime."""

from __future__ import annotations

import pytest

from ntmobile.core.dc import DcConfig, DcCore
from ntmobile.core.dc import sessions as dcsessions
from ntmobile.core.node import NodeConfig, NodeCore, RegistrationFailed
from ntmobile.core.registry import ClientRecord, MemoryStore, Pools
from ntmobile.core.timing import EPHEMERAL_LIFETIME
from ntmobile.wire import MessageType, Role, Status, parse_signal_header

from .harness import seeded_bytes

DC_ID = bytes.fromhex("dc000000000000bb")
DC_EP = ("192.0.2.10", 7410)
POOLS = Pools("100.64.1.0/24", "fd00:6e74:1::/64", "100.127.0.0/16", "fd00:6e74:ff::/64")


def make(n: int) -> tuple[DcCore, MemoryStore, list[NodeCore]]:
    store = MemoryStore(POOLS)
    nodes = []
    for i in range(n):
        rec = ClientRecord(bytes([1, i]) + b"\0" * 6, f"n{i}.a.example", Role.NODE, bytes([i + 1]) * 32)
        store.add_client(rec)
        nodes.append(NodeCore(NodeConfig(rec.name, rec.client_id, rec.psk, DC_ID, DC_EP), 0.0, seq_base=10**12,
                              random_bytes=seeded_bytes(100 + i)))
    dc = DcCore(DcConfig("a.example", DC_ID), store, 0.0, seq_base=10**15, random_bytes=seeded_bytes(7))
    return dc, store, nodes


def ep(i: int) -> tuple[str, int]:
    return (f"10.0.0.{i + 1}", 7412)


def request(node: NodeCore, i: int, now: float) -> bytes:
    node.register((ep(i),), now)
    [dg] = node.datagrams_to_send()
    return dg.data


def test_failed_group_commit_answers_the_batch_with_storage_error_and_keeps_no_session() -> None:
    dc, _store, nodes = make(3)
    dc.begin_batch()
    for i, node in enumerate(nodes):
        dc.receive_datagram(request(node, i, 1.0), ep(i), 1.0)
    dc.end_batch("disk I/O error", 1.0)
    out = dc.datagrams_to_send()
    assert len(out) == 3
    for i, node in enumerate(nodes):
        [dg] = [d for d in out if d.addr == ep(i)]
        assert parse_signal_header(dg.data).status == Status.STORAGE_ERROR
        node.receive_datagram(dg.data, DC_EP, 1.0)
        evs = []
        while (ev := node.next_event()) is not None:
            evs.append(ev)
        [failed] = [e for e in evs if isinstance(e, RegistrationFailed)]
        assert failed.status is Status.STORAGE_ERROR and "disk I/O error" in failed.reason
        assert not node.registered
    assert dc.sessions() == []
    assert dc.stats["registrations"] == 0 and dc.stats["registrations_rejected"] == 3


def test_registrations_that_lost_the_floor_race_are_undone_without_an_answer() -> None:
    """The store's commit reports clients whose replay floor another replica raised first: their
    registrations are undone (no answer, counted), a session they replaced is put back, and the rest
    of the batch is answered as usual."""
    dc, _store, nodes = make(3)
    dc.receive_datagram(request(nodes[2], 2, 0.5), ep(2), 0.5)  # n2 registered before the batch
    [first] = dc.datagrams_to_send()
    nodes[2].receive_datagram(first.data, DC_EP, 0.5)
    before = dc.session(nodes[2].config.node_id)
    assert before is not None
    dc.begin_batch()
    for i, node in enumerate(nodes):
        dc.receive_datagram(request(node, i, 1.0), ep(i), 1.0)
    lost = {nodes[1].config.node_id, nodes[2].config.node_id}
    dc.end_batch(None, 1.0, lost)
    out = dc.datagrams_to_send()
    assert [d.addr for d in out] == [ep(0)]
    assert dc.stats["registration_lost_race"] == 2 and dc.stats["registrations"] == 2
    assert dc.session(nodes[1].config.node_id) is None
    assert dc.session(nodes[2].config.node_id) is before


def test_committed_batch_registers_everyone() -> None:
    dc, _store, nodes = make(3)
    dc.begin_batch()
    for i, node in enumerate(nodes):
        dc.receive_datagram(request(node, i, 1.0), ep(i), 1.0)
    dc.end_batch(None, 1.0)
    for dg in dc.datagrams_to_send():
        i = int(dg.addr[0].rsplit(".", 1)[1]) - 1
        nodes[i].receive_datagram(dg.data, DC_EP, 1.0)
    assert all(n.registered for n in nodes)
    assert len(dc.sessions()) == 3


def test_retransmitted_request_gets_the_same_session_again() -> None:
    dc, _store, [node] = make(1)
    first = request(node, 0, 1.0)
    dc.receive_datagram(first, ep(0), 1.0)
    lost = dc.datagrams_to_send()  # the response is lost
    assert len(lost) == 1
    session = dc.clients.by_id[node.config.node_id]
    node.handle_timer(2.0)  # the node retransmits (same txid and ephemeral, resealed)
    [dg_again] = node.datagrams_to_send()
    again = dg_again.data
    assert parse_signal_header(again).txid == parse_signal_header(first).txid
    dc.receive_datagram(again, ep(0), 2.0)
    [resp] = dc.datagrams_to_send()
    assert dc.stats["registration_retransmits"] == 1 and dc.stats["registrations"] == 1
    assert dc.clients.by_id[node.config.node_id] is session
    node.receive_datagram(resp.data, DC_EP, 2.0)
    assert node.registered
    # The session keys agree: a session message from the node is accepted.
    node.request_path("x.a.example", 2.0)
    for dg in node.datagrams_to_send():
        dc.receive_datagram(dg.data, ep(0), 2.0)
    assert dc.stats["drop_auth"] == 0


def test_evicted_long_term_channel_is_rebuilt_and_still_refuses_a_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dcsessions, "LONG_TERM_CACHE", 2)
    dc, store, nodes = make(4)
    captured = request(nodes[0], 0, 1.0)
    dc.receive_datagram(captured, ep(0), 1.0)
    for i in (1, 2, 3):  # push node 0's long-term channel out of the cache
        dc.receive_datagram(request(nodes[i], i, 1.0), ep(i), 1.0)
    assert not dc.clients.long_term_cached(nodes[0].config.node_id)
    dc.datagrams_to_send()
    dc.receive_datagram(captured, ("203.0.113.9", 4444), 2.0)  # replayed from elsewhere
    assert dc.stats["drop_replay"] == 1
    assert dc.datagrams_to_send() == []
    assert dc.clients.by_id[nodes[0].config.node_id].endpoint == ep(0)
    rec = store.get_client(nodes[0].config.node_id)
    assert rec is not None and rec.last_seq == parse_signal_header(captured).seq


def test_dc_ephemeral_lives_at_most_one_second() -> None:
    dc, _store, nodes = make(3)
    dc.receive_datagram(request(nodes[0], 0, 1.0), ep(0), 1.0)
    dc.receive_datagram(request(nodes[1], 1, 1.5), ep(1), 1.5)
    dc.receive_datagram(request(nodes[2], 2, 1.0 + EPHEMERAL_LIFETIME + 0.01), ep(2), 2.01)
    s = [dc.clients.by_id[n.config.node_id] for n in nodes]
    assert s[0].dc_eph == s[1].dc_eph
    assert s[2].dc_eph != s[0].dc_eph
    assert len({x.channel.keys.send for x in s}) == 3  # every session has its own keys
    assert all(parse_signal_header(d.data).type is MessageType.REGISTRATION_RESPONSE for d in dc.datagrams_to_send())


def test_a_relay_whose_registration_is_undone_brings_no_standby_leg_up() -> None:
    """A relay's registration in a batch brings its RS-N pair's standby legs up only once the batch
    is committed: not when the commit fails, nor when another replica won the floor."""
    from .test_rsn_sequence import DC_EP as WORLD_DC_EP
    from .test_rsn_sequence import RS_EP, World

    w = World()
    ups: list[str] = []
    w.dc.standbys.relay_up = lambda name, now: ups.append(name)  # type: ignore[method-assign]
    rs_id = w.rs_rec.client_id
    for outcome in ("failed", "committed", "lost"):
        now = w.net.now + 1.0
        w.rs.register(now)
        [req] = [d for d in w.rs.datagrams_to_send()
                 if parse_signal_header(d.data).type is MessageType.REGISTRATION_REQUEST]
        w.dc.begin_batch()
        w.dc.receive_datagram(req.data, RS_EP, now)
        assert ups == ([] if outcome != "lost" else ["rs1"])
        if outcome == "lost":
            w.dc.end_batch(None, now, {rs_id})
        else:
            w.dc.end_batch("disk I/O error" if outcome == "failed" else None, now)
        for dg in w.dc.datagrams_to_send():
            if dg.addr == RS_EP:
                w.rs.receive_datagram(dg.data, WORLD_DC_EP, now)
        assert ups == ([] if outcome == "failed" else ["rs1"]), outcome
