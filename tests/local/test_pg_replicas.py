"""DC replicas on one PostgreSQL database (issue 17): a real server (Debian's postgresql), two store
instances driven at once from threads, invariants checked afterwards; the database stopped and
started again under them."""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ntmobile.core.dc import DcConfig, DcCore, DirectionDecision
from ntmobile.core.node import NodeConfig, NodeCore, PathFailed, PathReady
from ntmobile.core.registry import ClientRecord, JoinRecord, Pools, StoreError
from ntmobile.core.rs import DcLink, RsConfig
from ntmobile.lab.postgres import PostgresServer, pg_bindir
from ntmobile.runtime.pgstore import PgStore
from ntmobile.wire import PathMode, Role, Status, parse_signal_header
from tests.unit.harness import TEST_NETS, Nat, NatNet, ProbeSocket, World, seeded_bytes
from tests.unit.test_dc_peering import World as PeerWorld

POOLS = Pools("100.64.1.0/24", "fd00:6e74:1::/64", "100.127.0.0/16", "fd00:6e74:ff::/64")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="starts PostgreSQL as its user (root)"),
    pytest.mark.skipif(pg_bindir() is None and os.geteuid() != 0, reason="PostgreSQL not installed"),
]


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    base = Path(tempfile.mkdtemp(prefix="ntm-pg-"))
    srv = PostgresServer(base / "pg", port=55432 + os.getpid() % 1000)
    srv.start()
    try:
        yield srv
    finally:
        srv.remove()
        base.rmdir()


@pytest.fixture
def stores(server: PostgresServer) -> Iterator[tuple[PgStore, PgStore]]:
    a = PgStore(server.dsn(), POOLS)
    with a._tx() as cur:  # a fresh registry for every test
        cur.execute("TRUNCATE clients, gn_vips, settings, joins, counters, paths")
    b = PgStore(server.dsn(), POOLS)
    yield a, b
    a.close()
    b.close()


def _race(fns: list[Callable[[], None]]) -> list[BaseException]:
    go = threading.Barrier(len(fns))
    errors: list[BaseException] = []

    def run(fn: Callable[[], None]) -> None:
        go.wait()
        try:
            fn()
        except BaseException as exc:  # collected for the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f,)) for f in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return errors


def test_concurrent_enrolments_on_two_replicas_get_distinct_vips(stores: tuple[PgStore, PgStore]) -> None:
    a, b = stores

    def enrol(store: PgStore, side: int) -> Callable[[], None]:
        def go() -> None:
            for i in range(40):
                cid = bytes([side]) + i.to_bytes(7, "big")
                store.add_client(ClientRecord(cid, f"n{side}-{i}.a.example", Role.NODE, bytes(32)))
                store.assign_vips(cid)
        return go

    assert _race([enrol(a, 1), enrol(b, 2)]) == []
    recs = a.clients()
    assert len(recs) == 80
    assert len({r.vip4 for r in recs}) == 80 and None not in {r.vip4 for r in recs}
    assert len({r.vip6 for r in recs}) == 80
    # assigning again keeps what the other replica gave
    for r in recs:
        assert b.assign_vips(r.client_id) == (r.vip4, r.vip6)


def test_a_join_token_redeemed_at_two_replicas_at_once_enrols_once(stores: tuple[PgStore, PgStore]) -> None:
    a, b = stores
    for k in range(10):
        tok = bytes([k]) * 8
        a.add_join(JoinRecord(tok, bytes(32), f"j{k}.a.example", 2**40))
        answers: list[bytes] = []

        def redeem(store: PgStore, side: int, tok: bytes = tok, k: int = k,
                   answers: list[bytes] = answers) -> Callable[[], None]:
            def go() -> None:
                rec = ClientRecord(bytes([k, side]) * 4, f"j{k}.a.example", Role.NODE, bytes(32))
                answers.append(store.redeem_join(tok, bytes([side]) * 32, rec, lambda c: c.client_id))
            return go

        errors = _race([redeem(a, 1), redeem(b, 2)])
        assert len(answers) == 1 and len(errors) == 1 and isinstance(errors[0], StoreError)
        j = b.get_join(tok)
        assert j is not None and j.answer == answers[0]
    assert a.count() == 10
    assert len({r.vip4 for r in a.clients()}) == 10


def test_gn_vip_races_for_one_node_on_two_replicas(stores: tuple[PgStore, PgStore]) -> None:
    a, b = stores
    node = b"\x07" * 8
    a.add_client(ClientRecord(node, "m.a.example", Role.NODE, bytes(32)))
    gns = [f"198.51.100.{i}" for i in range(1, 31)] + [f"2001:db8::{i:x}" for i in range(1, 11)]
    got: dict[str, set[str]] = {g: set() for g in gns}

    def ask(store: PgStore, order: list[str]) -> Callable[[], None]:
        def go() -> None:
            for g in order:
                got[g].add(store.gn_vip(node, g))
        return go

    assert _race([ask(a, gns), ask(b, list(reversed(gns))), ask(a, gns[::2]), ask(b, gns[1::2])]) == []
    assert all(len(v) == 1 for v in got.values())  # one mapping per GN address, whoever asked
    vips = [next(iter(v)) for v in got.values()]
    assert len(set(vips)) == len(vips)  # never the same GN VIP for two GN addresses


def test_gn_vip_mappings_known_here_cost_no_round_trip_and_stay_right_across_replicas(
        stores: tuple[PgStore, PgStore]) -> None:
    """A replica remembers the GN VIP mappings it read or made (they never change): the same one
    again costs no round trip, a new one for a known node one INSERT; a mapping the other replica made
    meanwhile (unknown here) makes that INSERT insert nothing, and the fallback still gives a VIP of
    its own; both replicas agree on every mapping."""
    a, b = stores
    node = b"\x0e" * 8
    a.add_client(ClientRecord(node, "g.a.example", Role.NODE, bytes(32)))
    t0 = a.round_trips
    v1 = a.gn_vip(node, "198.51.100.1")
    assert a.round_trips == t0 + 2  # node not known here: read its mappings, insert
    assert a.gn_vip(node, "198.51.100.1") == v1 and a.round_trips == t0 + 2
    v2 = a.gn_vip(node, "198.51.100.2")
    assert a.round_trips == t0 + 3 and v2 != v1
    v3 = b.gn_vip(node, "198.51.100.3")  # made at the other replica: a's cache does not know it
    v4 = a.gn_vip(node, "198.51.100.4")  # a's first try takes v3's VIP, inserts nothing, then reads
    assert len({v1, v2, v3, v4}) == 4
    assert [b.gn_vip(node, f"198.51.100.{i}") for i in (1, 2, 3, 4)] == [v1, v2, v3, v4]
    assert a.gn_vip(node, "198.51.100.3") == v3
    assert a.gn_vip(node, "2001:db8::5").startswith("fd00:6e74:ff::")


def test_replay_floor_one_winner_and_never_lowered(stores: tuple[PgStore, PgStore]) -> None:
    a, b = stores
    cid = b"\x09" * 8
    a.add_client(ClientRecord(cid, "r.a.example", Role.NODE, bytes(32)))
    for seq in range(1, 21):
        errors = _race([lambda s=seq: a.set_last_seq(cid, s), lambda s=seq: b.set_last_seq(cid, s)])
        assert len(errors) == 1 and isinstance(errors[0], StoreError)  # the same registration twice: once
    # a batch from a replica that saw an older floor does not lower it
    b.begin_batch()
    b.set_last_seq(cid, 5)
    assert b.end_batch() == {cid}  # lost: nothing written, the registration would be undone
    rec = a.get_client(cid)
    assert rec is not None and rec.last_seq == 20


def test_a_batchs_floors_are_written_exactly_whatever_their_size_and_order(stores: tuple[PgStore, PgStore]) -> None:
    """The batch's floors travel packed (8-byte sequence number, 8-byte ID): large values, many
    clients in any order, and one that is not enrolled (lost) come back exactly."""
    a, b = stores
    ids = [bytes([0x30, i]) + bytes(6) for i in range(40)]
    for i, cid in enumerate(ids):
        a.add_client(ClientRecord(cid, f"f{i}.a.example", Role.NODE, bytes(32)))
    seqs = {cid: (1 << 62) + 977 * i + (1 << 40) for i, cid in enumerate(ids)}
    b.begin_batch()
    for cid in reversed(ids):
        b.set_last_seq(cid, seqs[cid])
    b.set_last_seq(b"\x31" * 8, 5)
    assert b.end_batch() == {b"\x31" * 8}
    for cid in ids:
        rec = a.get_client(cid)
        assert rec is not None and rec.last_seq == seqs[cid]


def test_path_ids_are_checked_against_the_clients_in_one_query_and_never_a_clients_id(
        stores: tuple[PgStore, PgStore]) -> None:
    """On PostgreSQL the DC checks PATH_ID_POOL candidate Path IDs in one query (not a round trip per
    path); a candidate that is an enrolled client's ID or the DC ID is never used."""
    from ntmobile.core.dc import paths as dcpaths

    a, _b = stores
    client = b"\x5a" * 8
    a.add_client(ClientRecord(client, "c.a.example", Role.NODE, bytes(32)))
    dc = _replica(a, 10**15)
    draws = iter([client, dc.config.dc_id] + [bytes([0x70, i]) + bytes(6) for i in range(200)])
    dc._rand = lambda n: next(draws)  # type: ignore[method-assign]
    t0 = a.round_trips
    got = [dc.path_table.new_path_id() for _ in range(dcpaths.PATH_ID_POOL - 2)]
    assert a.round_trips == t0 + 1
    assert client not in got and dc.config.dc_id not in got and len(set(got)) == len(got)
    nxt = dc.path_table.new_path_id()  # the pool is used up: one more query
    assert a.round_trips == t0 + 2 and nxt not in got


def test_the_records_kept_for_a_database_outage_are_bounded(stores: tuple[PgStore, PgStore],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from ntmobile.runtime import pgstore

    a, b = stores
    monkeypatch.setattr(pgstore, "RECORD_CACHE", 12)
    ids = [bytes([0x40, i]) + bytes(6) for i in range(10)]
    for i, cid in enumerate(ids):
        a.add_client(ClientRecord(cid, f"k{i}.a.example", Role.NODE, bytes(32)))
    for cid in ids:
        assert b.get_client(cid) is not None
    assert len(b._cache) == 12  # 2 keys (ID, name) per record read: the last 6 records
    assert ("id", ids[-1]) in b._cache and ("id", ids[0]) not in b._cache


def test_send_counter_blocks_are_disjoint_across_replicas_and_restarts(stores: tuple[PgStore, PgStore]) -> None:
    a, b = stores
    fa, fb = a.counter_floor(block=64), b.counter_floor(block=64)
    seen: list[int] = []
    lock = threading.Lock()

    def take(f: object) -> Callable[[], None]:
        def go() -> None:
            vals = [f.take() for _ in range(500)]  # type: ignore[attr-defined]
            with lock:
                seen.extend(vals)
        return go

    assert _race([take(fa), take(fb)]) == []
    # a replica "killed" (its floor dropped without a word) and restarted starts above everything
    fa2 = a.counter_floor(block=64)
    first = fa2.take()
    assert len(set(seen)) == 1000 and first > max(seen)


def test_a_replica_moves_its_counter_above_a_clients_floor_from_the_other(stores: tuple[PgStore, PgStore]) -> None:
    """A client that accepted B's counters registers at A, whose block is lower (RECV_FLOOR): A takes
    a fresh block, above every block ever given, so above the client's floor."""
    a, b = stores
    fa = a.counter_floor(block=64)
    fb = b.counter_floor(block=64)
    low = fa.take()
    floor = fb.take()  # B's block is above A's
    assert floor > low
    assert fa.advance_past(floor)
    nxt = fa.take()
    assert nxt > floor
    assert fa.advance_past(nxt - 1) and fa.take() == nxt + 1  # already above: no new block
    assert not fa.advance_past(nxt + 10**12)  # beyond every block: one fresh block, and refused


def test_database_down_gives_store_errors_and_service_resumes(server: PostgresServer,
                                                               stores: tuple[PgStore, PgStore]) -> None:
    a, b = stores
    cid = b"\x0a" * 8
    a.add_client(ClientRecord(cid, "d.a.example", Role.NODE, bytes(32)))
    a.assign_vips(cid)
    server.stop()
    try:
        for store in (a, b):
            with pytest.raises(StoreError):
                store.get_client(b"\x0b" * 8)  # never read: nothing to answer with
            with pytest.raises(StoreError):
                store.set_last_seq(cid, 7)
            with pytest.raises(StoreError):
                store.begin_batch()
                store.set_last_seq(cid, 7)
                store.end_batch()
        # a client this replica read before is still known (the DC seals its STORAGE_ERROR with it)
        known = a.get_client(cid)
        assert known is not None and known.vip4 is not None
    finally:
        server.start()
    rec = b.get_client(cid)  # reconnects
    assert rec is not None and rec.vip4 is not None
    a.set_last_seq(cid, 8)
    rec = b.get_client(cid)
    assert rec is not None and rec.last_seq == 8


# -- two DC cores (replicas) on the shared registry ---------------------------------------------------

DC_A = ("192.0.2.10", 7410)
DC_B = ("192.0.2.11", 7410)
NODE_EP = ("10.0.0.1", 7412)


def _replica(store: PgStore, seq_base: int) -> DcCore:
    dc_id, secret = store.identity()  # shared: the first replica made it, the other reads it
    return DcCore(DcConfig("a.example", dc_id, secret=secret), store, 0.0, seq_base=seq_base,
                  counter=store.counter_floor(block=1024))


def _node(rec: ClientRecord, dc_id: bytes, dc_ep: tuple[str, int], seed: int) -> NodeCore:
    return NodeCore(NodeConfig(rec.name, rec.client_id, rec.psk, dc_id, dc_ep), 0.0, seq_base=10**12 + seed * 10**9,
                    random_bytes=seeded_bytes(seed))


def _register(dc: DcCore, node: NodeCore, dc_ep: tuple[str, int], now: float) -> tuple[Status | None, bytes]:
    node.register((NODE_EP,), now)
    [req] = node.datagrams_to_send()
    dc.receive_datagram(req.data, NODE_EP, now)
    out = dc.datagrams_to_send()
    for dg in out:
        node.receive_datagram(dg.data, dc_ep, now)
    status = parse_signal_header(out[0].data).status if out else None
    return status, req.data


def test_two_dc_cores_share_identity_vips_and_replay_floors(stores: tuple[PgStore, PgStore],
                                                             server: PostgresServer) -> None:
    a, b = stores
    rec = ClientRecord(b"\x0c" * 8, "mn.a.example", Role.NODE, b"\x11" * 32)
    a.add_client(rec)
    dca, dcb = _replica(a, 10**15), _replica(b, 2 * 10**15)
    assert dca.config.dc_id == dcb.config.dc_id and dca.config.secret == dcb.config.secret
    node = _node(rec, dca.config.dc_id, DC_A, 1)
    status, captured = _register(dca, node, DC_A, 1.0)
    assert node.registered and status == Status.OK
    vips = (node.registration.vip4, node.registration.vip6)
    assert vips[0] is not None
    # the same registration replayed at the other replica is refused (the floor is shared)
    dcb.receive_datagram(captured, ("203.0.113.9", 4444), 2.0)
    assert dcb.stats["drop_replay"] == 1 and dcb.datagrams_to_send() == []
    # replica A is gone: the node registers at B (its credentials are the same) and keeps its VIPs
    node_b = _node(rec, dcb.config.dc_id, DC_B, 2)
    status, _ = _register(dcb, node_b, DC_B, 3.0)
    assert node_b.registered and (node_b.registration.vip4, node_b.registration.vip6) == vips
    # the database down: the replica answers STORAGE_ERROR (it knows the client from before)
    server.stop()
    try:
        node_c = _node(rec, dcb.config.dc_id, DC_B, 3)
        status, _ = _register(dcb, node_c, DC_B, 4.0)
        assert status == Status.STORAGE_ERROR and not node_c.registered
    finally:
        server.start()
    node_d = _node(rec, dcb.config.dc_id, DC_B, 4)
    status, _ = _register(dcb, node_d, DC_B, 5.0)
    assert status == Status.OK and node_d.registered and (node_d.registration.vip4, node_d.registration.vip6) == vips


def test_a_registration_replayed_at_two_replicas_in_the_same_instant_is_accepted_once(
        stores: tuple[PgStore, PgStore]) -> None:
    """A captured Registration Request sent to both replicas so that each reads the floor before the
    other commits (each in its batch, as the DC daemon runs them): both cores accept it, and the
    batch commit lets exactly one through; the other replica undoes it (no answer, no session, the
    holder is the winner) and counts it."""
    a, b = stores
    rec = ClientRecord(b"\x0d" * 8, "race.a.example", Role.NODE, b"\x12" * 32)
    a.add_client(rec)
    a.holder, b.holder = "192.0.2.10:7410", "192.0.2.12:7410"
    dca, dcb = _replica(a, 10**15), _replica(b, 2 * 10**15)
    node = _node(rec, dca.config.dc_id, DC_A, 5)
    node.register((NODE_EP,), 1.0)
    [req] = node.datagrams_to_send()
    attacker = ("203.0.113.9", 4444)
    for dc, store, src in ((dca, a, NODE_EP), (dcb, b, attacker)):
        store.begin_batch()
        dc.begin_batch()
        store.prefetch([req.data])
        dc.receive_datagram(req.data, src, 1.0)
        assert dc.stats["registrations"] == 1  # each accepted it on the floor it read
    lost_a = a.end_batch()
    dca.end_batch(None, 1.0, lost_a)
    lost_b = b.end_batch()
    dcb.end_batch(None, 1.0, lost_b)
    assert lost_a == set() and lost_b == {rec.client_id}
    out_a, out_b = dca.datagrams_to_send(), dcb.datagrams_to_send()
    assert [d.addr for d in out_a] == [NODE_EP] and out_b == []
    assert [s["name"] for s in dca.sessions()] == ["race.a.example"] and dcb.sessions() == []
    assert dcb.stats["registrations"] == 0 and dcb.stats["registration_lost_race"] == 1
    assert a.holder_of(rec.client_id) == "192.0.2.10:7410"
    node.receive_datagram(out_a[0].data, DC_A, 1.0)
    assert node.registered
    # the order reversed (the replay's replica commits first): the node's own replica undoes it
    node2 = _node(rec, dca.config.dc_id, DC_A, 6)
    node2.register((NODE_EP,), 2.0)
    [req2] = node2.datagrams_to_send()
    for dc, store, src in ((dca, a, NODE_EP), (dcb, b, attacker)):
        store.begin_batch()
        dc.begin_batch()
        store.prefetch([req2.data])
        dc.receive_datagram(req2.data, src, 2.0)
    lost_b = b.end_batch()
    dcb.end_batch(None, 2.0, lost_b)
    lost_a = a.end_batch()
    dca.end_batch(None, 2.0, lost_a)
    assert lost_b == set() and lost_a == {rec.client_id}
    assert dca.datagrams_to_send() == [] and dca.stats["registration_lost_race"] == 1
    # dca's session from the first registration is the one it keeps (the undone one replaced it)
    kept = dca.session(rec.client_id)
    assert kept is not None and kept.endpoint == NODE_EP and kept.reg_tag != 0
    assert a.holder_of(rec.client_id) == "192.0.2.12:7410"


# -- directions between nodes registered at different replicas ----------------------------------

REP_A, REP_B = ("192.0.2.10", 7410), ("192.0.2.12", 7410)
REPLICAS = ("192.0.2.10:7410", "192.0.2.12:7410")
REP_RS = ("192.0.2.20", 7411)
#: One wall clock for both replicas (Peer Query timestamps are checked against it).
REP_CLOCK = 1_800_000_000_000_000


class _ReplicaWorld(World):
    """Replicas dca (192.0.2.10) and dcb (192.0.2.12) of a.example on one PostgreSQL registry, with
    probe sockets; mn registered at dca, cn at dcb, relay rs1 at dcb only."""

    def __init__(self, a: PgStore, b: PgStore, mn_nat: str, cn_nat: str, *, replicas: tuple[str, ...] = REPLICAS,
                 relay: bool = True, cn_at: tuple[str, int] = REP_B, failover: bool = False) -> None:
        """``cn_at``: the replica cn registers with; ``failover``: both nodes' credentials list the
        other replica (NodeConfig.dc_replicas), so they move there when theirs stops answering."""
        super().__init__(nat=True, seq_base=REP_CLOCK)
        self.mn_rec = ClientRecord(b"\x01" * 8, "mn.a.example", Role.NODE, b"\x11" * 32)
        self.cn_rec = ClientRecord(b"\x03" * 8, "cn.a.example", Role.NODE, b"\x33" * 32)
        self.rs_rec = ClientRecord(b"\x02" * 8, "rs1", Role.RELAY, b"\x22" * 32)
        for rec in (self.mn_rec, self.cn_rec, self.rs_rec):
            a.add_client(rec)
        dc_id, secret = a.identity()
        for host, ep, store, seed in (("dca", REP_A, a, 100), ("dcb", REP_B, b, 200)):
            store.holder = f"{ep[0]}:{ep[1]}"
            cfg = DcConfig("a.example", dc_id, secret=secret, probe=((ep[0], 7413),), address=ep[0], port=ep[1],
                           replicas=replicas, rsn_allow=TEST_NETS)
            dc = DcCore(cfg, store, self.net.now, seq_base=REP_CLOCK, counter=store.counter_floor(block=1024),
                        random_bytes=seeded_bytes(seed))
            self._add_dc_core(host, dc, ep)
        if relay:
            link = DcLink(dc_id, REP_B, self.rs_rec.psk)
            self.add_relay("rs", RsConfig("rs1", self.rs_rec.client_id, [link], local_endpoints=[REP_RS],
                                          rsn_allow=TEST_NETS), REP_RS, seed=3).register(self.net.now)
        for host, rec, ep, kind, lan, pub, seed in (("mn", self.mn_rec, REP_A, mn_nat, "10.1.0.", "192.0.2.100", 4),
                                                    ("cn", self.cn_rec, cn_at, cn_nat, "10.2.0.", "192.0.2.101", 5)):
            addr = ("192.0.2.60" if host == "mn" else "192.0.2.70", 7412) if kind == "none" else (lan + "10", 7412)
            nat = None if kind == "none" else Nat(kind, pub, lan)
            others = tuple(r for r in (REP_A, REP_B) if r != ep) if failover else ()
            node = self.add_node(host, NodeConfig(rec.name, rec.client_id, rec.psk, dc_id, ep, dc_replicas=others),
                                 addr, nat=nat, seed=seed)
            node.register((addr,), self.net.now)
        self.net.run_until(lambda: self.mn.registered and self.cn.registered
                           and (bool(self.dcb.relays()) or not relay))
        self.net.run_for(3)  # the probes classify both nodes' NATs

    def _add_dc_core(self, host: str, dc: DcCore, ep: tuple[str, int]) -> None:
        probe = dc.config.probe[0]
        assert isinstance(self.net, NatNet)
        ps, fs = ProbeSocket(dc), ProbeSocket(dc)
        self.net.add(host + "-probe", ps, probe)
        self.net.probe_of[host] = ps
        self.net.add(host + "-filter", fs, (probe[0], probe[1] + 1))
        self.net.filter_of[host] = fs
        self.net.add(host, dc, ep)


@pytest.mark.parametrize(("mn_nat", "cn_nat", "mode"), [
    ("none", "cone", PathMode.DIRECT),      # an NTM-peer route, no relay
    ("cone", "cone", PathMode.RS_S),        # relayed by rs1, registered at the other replica only
])
def test_nodes_on_different_replicas_are_directed_by_a_peer_query(stores: tuple[PgStore, PgStore], mn_nat: str,
                                                                  cn_nat: str, mode: PathMode) -> None:
    a, b = stores
    w = _ReplicaWorld(a, b, mn_nat, cn_nat)
    assert a.holder_of(w.cn_rec.client_id) == "192.0.2.12:7410"
    assert w.dca.session(w.cn_rec.client_id) is None  # dca holds no session for cn: it must not direct it
    hops: list[tuple[str, str]] = []
    w.net.drop = lambda src, dst, _data: hops.append((src, dst)) is None and False
    ready = w.connect(w.mn, "mn", "cn.a.example")
    assert isinstance(ready, PathReady), ready
    assert ready.path.mode is mode and ready.path.peer_name == "cn.a.example"
    assert ready.path.peer_vip4 == a.get_client(w.cn_rec.client_id).vip4  # type: ignore[union-attr]
    assert w.dca.stats["replica_queries_sent"] == 1 and w.dcb.stats["peer_queries"] == 1
    # cn was told by its own replica, and only by it
    cn_path = w.cn.path_info(ready.path.path_id)
    assert cn_path is not None and cn_path.role is not ready.path.role
    assert ("dca", "dcb") in hops and ("dcb", "cn") in hops
    assert ("dca", "cn") not in hops, "a replica sent to a node it holds no session for"
    if mode is PathMode.RS_S:
        assert ready.path.rs_name == "rs1"
    PeerWorld.exchange_data(w, ready.path.path_id)  # type: ignore[arg-type]  # (needs mn, cn, net only)
    # the other way round: cn (at dcb) asks for mn (at dca)
    back = w.connect(w.cn, "cn", "mn.a.example")
    assert isinstance(back, PathReady) and back.path.peer_name == "mn.a.example"


def test_a_replica_refuses_a_query_for_a_node_it_holds_no_session_for(stores: tuple[PgStore, PgStore]) -> None:
    a, b = stores
    w = _ReplicaWorld(a, b, "none", "none", relay=False)
    w.dcb.clients.remove(w.dcb.session(w.cn_rec.client_id))  # dcb lost cn's session (the registry still names dcb)
    failed = w.connect(w.mn, "mn", "cn.a.example")
    assert isinstance(failed, PathFailed) and failed.status is Status.PEER_UNREACHABLE
    assert w.dcb.stats["peer_queries_refused"] == 1


def test_a_holder_that_is_no_configured_replica_is_not_asked(stores: tuple[PgStore, PgStore]) -> None:
    a, b = stores
    w = _ReplicaWorld(a, b, "none", "none", relay=False, replicas=REPLICAS)
    with a._tx() as cur:
        cur.execute("UPDATE clients SET holder = '198.51.100.9:7410' WHERE client_id = %s", (w.cn_rec.client_id,))
    hops: list[tuple[str, str]] = []
    w.net.drop = lambda src, dst, _data: hops.append((src, dst)) is None and False
    failed = w.connect(w.mn, "mn", "cn.a.example")
    assert isinstance(failed, PathFailed) and failed.status is Status.PEER_UNREACHABLE
    assert w.dca.stats["replica_queries_sent"] == 0 and ("dca", "dcb") not in hops


def test_an_rs_n_path_through_a_relay_registered_at_the_other_replica(stores: tuple[PgStore, PgStore]) -> None:
    a, b = stores
    w = _ReplicaWorld(a, b, "cone", "none")
    assert not w.dca.relays() and w.dcb.relays()  # rs1 is registered at dcb only
    hops: list[tuple[str, str]] = []
    w.net.drop = lambda src, dst, _data: hops.append((src, dst)) is None and False
    ready = w.path("mn", "www.gn.example")
    assert ready.path.mode is PathMode.RS_N and ready.path.rs_name == "rs1" and ready.path.endpoint == REP_RS
    entry = w.rs.entry(ready.path.path_id)
    assert entry is not None  # the relay holds the path dca directed, given to it by dcb
    assert ("dca", "dcb") in hops and ("dcb", "rs") in hops and ("dca", "rs") not in hops
    assert w.dcb.stats["replica_relay_directions"] == 1
    # the path is recorded at dca (the node's replica) under the real relay's name
    rec = w.dca.paths[ready.path.path_id]
    assert rec.rs == "rs1" and rec.initiator == "mn.a.example"


def test_no_relay_at_any_replica_fails_with_relay_failed(stores: tuple[PgStore, PgStore]) -> None:
    a, b = stores
    w = _ReplicaWorld(a, b, "cone", "none", relay=False)
    rid = w.mn.request_path("www.gn.example", w.net.now)

    def failed() -> bool:
        w.answer_requests()
        return any(rid in e.request_ids for e in w.net.events_of("mn", PathFailed))

    w.net.run_until(failed, max_time=20)
    [f] = [e for e in w.net.events_of("mn", PathFailed) if rid in e.request_ids]
    assert f.status is Status.RELAY_FAILED


def test_prefetch_looks_up_a_batchs_registering_clients_in_one_round_trip(
        stores: tuple[PgStore, PgStore]) -> None:
    """The DC on PostgreSQL hands each read batch to PgStore.prefetch (one SELECT for the senders of
    its long-term datagrams); get_client then answers them with no round trip, the batch's own replay
    floors still apply, and the look-ahead ends with the batch."""
    from ntmobile.wire import VERSION, MessageType, SignalFlags
    from ntmobile.wire.frame import SIGNAL_HEADER

    a, b = stores
    ids = [bytes([9, i]) * 4 for i in range(5)]
    for i, cid in enumerate(ids):
        a.add_client(ClientRecord(cid, f"p{i}.a.example", Role.NODE, bytes(32)))

    def dgram(cid: bytes, flags: int = SignalFlags.LONG_TERM) -> bytes:
        return SIGNAL_HEADER.pack(VERSION, MessageType.REGISTRATION_REQUEST, flags, 0, cid, 1, 7) + bytes(32)

    unknown = b"\xee" * 8
    b.begin_batch()
    before = b.round_trips
    b.prefetch([dgram(c) for c in ids] + [dgram(unknown), dgram(b"\x01" * 8, flags=0), b"\x00"])
    assert b.round_trips == before + 1
    got = [b.get_client(c) for c in ids]
    assert [r.name if r else None for r in got] == [f"p{i}.a.example" for i in range(5)]
    assert b.get_client(unknown) is None  # known absent: no round trip either
    b.set_last_seq(ids[0], 50)
    rec = b.get_client(ids[0])
    assert rec is not None and rec.last_seq == 50  # the batch's floor over the prefetched row
    assert b.round_trips == before + 1
    b.end_batch()
    assert b._ahead == {}
    rec = a.get_client(ids[0])
    assert rec is not None and rec.last_seq == 50


def replica_path(a: PgStore, b: PgStore, mn_nat: str, cn_nat: str, mode: PathMode,
                 **kw: Any) -> tuple[_ReplicaWorld, bytes]:
    """A _ReplicaWorld (``kw``: its options) whose mn has a path of ``mode`` to cn, data exchanged
    on it both ways: the world and the Path ID."""
    w = _ReplicaWorld(a, b, mn_nat, cn_nat, **kw)
    ready = w.connect(w.mn, "mn", "cn.a.example")
    assert isinstance(ready, PathReady) and ready.path.mode is mode
    PeerWorld.exchange_data(w, ready.path.path_id)  # type: ignore[arg-type]
    return w, ready.path.path_id


@pytest.mark.parametrize(("mover", "mn_nat", "cn_nat", "mode"), [
    ("mn", "none", "none", PathMode.DIRECT),   # the asking side moves: dca re-directs through dcb
    ("cn", "none", "none", PathMode.DIRECT),   # the answering side moves: dcb re-directs through dca
    ("cn", "none", "cone", PathMode.DIRECT),   # cn behind a NAT moves to a global address
    ("mn", "symmetric", "symmetric", PathMode.RS_S),  # relayed by rs1 (at dcb only); mn moves NATs
])
def test_a_path_between_replicas_is_redirected_after_a_move(stores: tuple[PgStore, PgStore], mover: str,
                                                            mn_nat: str, cn_nat: str, mode: PathMode) -> None:
    """mn (at dca) and cn (at dcb) share a path; one of them moves: its replica re-directs the path
    through the other replica (a Peer Query with the path's ID and key), same Path ID, data flows."""
    w, pid = replica_path(*stores, mn_nat, cn_nat, mode)
    node, dc = (w.mn, w.dca) if mover == "mn" else (w.cn, w.dcb)
    queries = w.dca.stats["replica_queries_sent"] + w.dcb.stats["replica_queries_sent"]
    failed = dc.stats["redirects_failed"]
    hops: list[tuple[str, str]] = []
    w.net.drop = lambda src, dst, _data: hops.append((src, dst)) is None and False
    w.net.run_for(1.0)  # (a Peer Query is known by its path and timestamp: the move comes later)
    new = ("192.0.2.61", 7412) if mover == "mn" else ("192.0.2.71", 7412)
    w.net.nat_of.pop(mover, None)
    if mode is PathMode.RS_S:  # into another symmetric NAT
        new = ("10.3.0.10", 7412)
        w.net.nat_of[mover] = Nat("symmetric", "192.0.2.102", "10.3.0.")
    w.net.hosts[mover].addr = new
    node.addresses_changed((new,), w.net.now)

    asked = node.stats["redirects_requested"]
    w.net.run_until(lambda: node.stats["redirects_requested"] > asked and not node._redirects, max_time=15)
    decisions = w.net.events_of("dca" if mover == "mn" else "dcb", DirectionDecision)
    assert node.stats["redirect_refused"] == 0 and node.stats["redirect_timeouts"] == 0, (
        decisions[-1], dict(w.dcb.stats))
    assert w.dca.stats["replica_queries_sent"] + w.dcb.stats["replica_queries_sent"] == queries + 1
    assert dc.stats["redirects_failed"] == failed
    assert ("dca", "cn") not in hops and ("dcb", "mn") not in hops, "a replica sent to a node it does not hold"
    info = w.mn.path_info(pid)
    assert info is not None and info.mode is mode
    PeerWorld.exchange_data(w, pid)  # type: ignore[arg-type]
