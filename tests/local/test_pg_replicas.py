"""DC replicas on one PostgreSQL database (issue 17): a real server (Debian's postgresql), two store
instances driven at once from threads, invariants checked afterwards; the database stopped and
started again under them."""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ntmobile.core.dc import DcConfig, DcCore
from ntmobile.core.node import NodeConfig, NodeCore
from ntmobile.core.registry import ClientRecord, JoinRecord, Pools, StoreError
from ntmobile.lab.postgres import PostgresServer, pg_bindir
from ntmobile.runtime.pgstore import PgStore
from ntmobile.wire import Role, Status, parse_signal_header
from tests.unit.harness import seeded_bytes

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
        cur.execute("TRUNCATE clients, gn_vips, settings, joins, counters")
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
    b.end_batch()
    rec = a.get_client(cid)
    assert rec is not None and rec.last_seq == 20


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
