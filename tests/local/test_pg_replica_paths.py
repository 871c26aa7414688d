"""Path records shared by DC replicas on one PostgreSQL registry (issue 17): a replica re-directs a
path another replica directed (after a failover, after a restart), two replicas re-directing one
path at once are serialised by the path's lease, and rows go with their paths. A real server, as in
test_pg_replicas.py."""

from __future__ import annotations

import threading

import pytest

from ntmobile.core.dc import DcConfig, DcCore
from ntmobile.core.node import NodeCore
from ntmobile.core.registry import PathRow
from ntmobile.core.timing import PATH_ROW_TTL
from ntmobile.runtime.pgstore import PgStore
from ntmobile.wire import PathMode, PathRole
from tests.local import test_pg_replicas as pg
from tests.local.test_pg_replicas import (
    REP_A,
    REP_B,
    REP_CLOCK,
    TEST_NETS,
    Nat,
    NatNet,
    ProbeSocket,
    _ReplicaWorld,
    replica_path,
    seeded_bytes,
)
from tests.unit.test_dc_peering import World as PeerWorld

pytestmark = pg.pytestmark
#: The real server and two replicas' stores (test_pg_replicas.py's fixtures).
server = pg.server
stores = pg.stores

NAME_A, NAME_B = f"{REP_A[0]}:{REP_A[1]}", f"{REP_B[0]}:{REP_B[1]}"


def _kill(w: _ReplicaWorld, host: str) -> None:
    """``kill -9`` of a replica: it answers nothing from now on (its sockets are gone)."""
    for name in (host, host + "-probe", host + "-filter"):
        del w.net.hosts[name]


def _failed_over(w: _ReplicaWorld, to: tuple[str, int]) -> None:
    w.net.run_until(lambda: all(n.registered and n.config.dc_endpoint == to for n in (w.mn, w.cn)), max_time=60)
    w.net.run_for(3)  # the new replica's probes classify the nodes' NATs again


def _move(w: _ReplicaWorld, mover: str, mode: PathMode) -> tuple[str, int]:
    """``mover`` changes networks (a new address; RS_S: into another symmetric NAT)."""
    node: NodeCore = getattr(w, mover)
    new = ("192.0.2.61", 7412) if mover == "mn" else ("192.0.2.71", 7412)
    w.net.nat_of.pop(mover, None)
    if mode is PathMode.RS_S:
        new = ("10.3.0.10", 7412) if mover == "mn" else ("10.4.0.10", 7412)
        w.net.nat_of[mover] = Nat("symmetric", "192.0.2.102" if mover == "mn" else "192.0.2.103", new[0][:-2])
    w.net.hosts[mover].addr = new
    node.addresses_changed((new,), w.net.now)
    return new


def _redirected(w: _ReplicaWorld, node: NodeCore, asked: int) -> None:
    w.net.run_until(lambda: node.stats["redirects_requested"] > asked and not node._redirects, max_time=15)


@pytest.mark.parametrize(("mover", "mn_nat", "cn_nat", "mode"), [
    ("mn", "none", "none", PathMode.DIRECT),
    ("cn", "none", "none", PathMode.DIRECT),
    ("mn", "symmetric", "symmetric", PathMode.RS_S),  # rs1 (at dcb) relays; dca directed it through dcb
])
def test_a_path_is_redirected_by_the_replica_its_nodes_failed_over_to(
        stores: tuple[PgStore, PgStore], mover: str, mn_nat: str, cn_nat: str, mode: PathMode) -> None:
    """mn and cn at dca, which directs their path; dca is killed; both re-register at dcb (same VIPs,
    the tunnel untouched); one moves: dcb, which never saw the path, re-directs it from the shared
    registry (same Path ID, key and roles), the other node is told the new address, data flows."""
    a, b = stores
    w, pid = replica_path(a, b, mn_nat, cn_nat, mode, cn_at=REP_A, failover=True)
    row = a.load_path(pid)
    assert row is not None and (row.end_a, row.end_b) == ("cn.a.example", "mn.a.example")
    assert row.inst_a == w.cn.instance and row.inst_b == w.mn.instance and row.mode == int(mode)
    _kill(w, "dca")
    _failed_over(w, REP_B)
    assert pid not in w.dcb.paths  # dcb knows the path from the registry only
    PeerWorld.exchange_data(w, pid)  # type: ignore[arg-type]  # (established tunnels untouched)
    node = getattr(w, mover)
    other = w.cn if mover == "mn" else w.mn
    roles = {h: n._paths[pid].role for h, n in (("mn", w.mn), ("cn", w.cn))}
    relay_key_before = other._paths[pid].rd.relay_key
    other_host = "cn" if mover == "mn" else "mn"
    hops: list[tuple[str, str]] = []
    w.net.drop = lambda src, dst, _data: hops.append((src, dst)) is None and False
    asked, redirected = node.stats["redirects_requested"], w.dcb.stats["paths_redirected"]
    new = _move(w, mover, mode)
    _redirected(w, node, asked)
    assert node.stats["redirect_refused"] == 0 and node.stats["redirect_timeouts"] == 0, dict(w.dcb.stats)
    assert w.dcb.stats["paths_redirected"] == redirected + 1 and w.dcb.stats["path_claims"] >= 1
    assert ("dcb", other_host) in hops  # the other node got its Route Direction from dcb
    info = node.path_info(pid)
    assert info is not None and info.mode is mode and info.role is roles[mover]  # roles (key directions) kept
    told = other._paths[pid].rd
    assert told.path_key == node._paths[pid].rd.path_key == row.path_key  # the same path key
    if mode is PathMode.DIRECT:
        assert told.peer_endpoints == (new,)  # the mover's new address
    else:  # a fresh relay key at both nodes (never the one the relay's leg counters ran under)
        assert told.rs_name == "rs1" and told.relay_key not in (None, relay_key_before)
        assert node._paths[pid].rd.relay_key == told.relay_key
    after = b.load_path(pid)
    assert after is not None and after.version > row.version and after.path_key == row.path_key
    PeerWorld.exchange_data(w, pid)  # type: ignore[arg-type]


def test_a_path_between_replicas_is_redirected_after_the_asking_side_failed_over(
        stores: tuple[PgStore, PgStore]) -> None:
    """mn at dca, cn at dcb: dcb's own record of the path (from the Peer Query it answered) names only
    cn as a key holder; after mn failed over to dcb and cn moves, dcb must know mn still holds the
    key (the row dca wrote), or it would drop the path (PATH_GONE)."""
    a, b = stores
    w, pid = replica_path(a, b, "none", "none", PathMode.DIRECT, failover=True)
    row = a.load_path(pid)
    assert row is not None and row.inst_a == w.cn.instance and row.inst_b == w.mn.instance  # both replicas wrote
    _kill(w, "dca")
    _failed_over(w, REP_B)
    asked = w.cn.stats["redirects_requested"]
    _move(w, "cn", PathMode.DIRECT)
    _redirected(w, w.cn, asked)
    assert w.cn.stats["redirect_refused"] == 0 and w.dcb.stats["paths_dropped_peer_restarted"] == 0
    PeerWorld.exchange_data(w, pid)  # type: ignore[arg-type]


def test_a_restarted_replica_redirects_its_paths_and_takes_its_dead_lease_back(
        stores: tuple[PgStore, PgStore]) -> None:
    """dca directs mn-cn, then dies in the middle of a re-direction (its lease taken, nothing else
    written) and starts again under the same name, with nothing in memory: the nodes re-register
    with it, and the next re-direction runs at once (the lease was its own) from the registry."""
    a, b = stores
    w, pid = replica_path(a, b, "none", "none", PathMode.DIRECT, cn_at=REP_A, failover=True)
    won, _row = a.claim_path(pid, NAME_A, 10.0)  # dca's re-direction in flight ...
    assert won
    old = w.dca  # ... and dca killed: a new process, a new connection, the same replica name
    fresh = PgStore(a.dsn, a.pools)
    fresh.holder = NAME_A
    dca = DcCore(old.config, fresh, w.net.now, seq_base=REP_CLOCK + int(w.net.now * 1e6),
                 counter=fresh.counter_floor(block=1024), random_bytes=seeded_bytes(300))
    try:
        assert isinstance(w.net, NatNet)
        w.net.hosts["dca"].core = dca
        for name, sockets in (("dca-probe", w.net.probe_of), ("dca-filter", w.net.filter_of)):
            sockets["dca"] = ps = ProbeSocket(dca)
            w.net.hosts[name].core = ps
        w.net.run_until(lambda: dca.session(w.mn_rec.client_id) is not None
                        and dca.session(w.cn_rec.client_id) is not None, max_time=60)
        assert not dca.paths
        asked = w.mn.stats["redirects_requested"]
        new = _move(w, "mn", PathMode.DIRECT)
        _redirected(w, w.mn, asked)
        assert w.mn.stats["redirect_refused"] == 0 and dca.stats["redirects_waiting_replica"] == 0
        assert w.cn._paths[pid].rd.peer_endpoints == (new,)
        PeerWorld.exchange_data(w, pid)  # type: ignore[arg-type]
    finally:
        fresh.close()


@pytest.mark.parametrize(("mn_nat", "cn_nat", "mode"), [
    ("none", "none", PathMode.DIRECT),
    ("symmetric", "symmetric", PathMode.RS_S),
])
def test_two_replicas_redirecting_one_path_at_once_take_turns(stores: tuple[PgStore, PgStore], mn_nat: str,
                                                              cn_nat: str, mode: PathMode) -> None:
    """mn (at dca) and cn (at dcb) move at the same moment and both ask their replica to re-direct
    their path: one replica wins the lease, the other waits for it and then decides again on the
    state the first left; both end with the same path (mode, relay key), and data flows."""
    a, b = stores
    w, pid = replica_path(a, b, mn_nat, cn_nat, mode)
    w.net.run_for(1.0)
    asked = (w.mn.stats["redirects_requested"], w.cn.stats["redirects_requested"])
    _move(w, "mn", mode)
    _move(w, "cn", mode)
    w.net.run_until(lambda: w.mn.stats["redirects_requested"] > asked[0] and w.cn.stats["redirects_requested"]
                    > asked[1] and not w.mn._redirects and not w.cn._redirects, max_time=20)
    w.net.run_for(2.0)
    waited = w.dca.stats["redirects_waiting_replica"] + w.dcb.stats["redirects_waiting_replica"]
    assert waited >= 1, (dict(w.dca.stats), dict(w.dcb.stats))
    from ntmobile.core.dc import DirectionDecision
    assert w.mn.stats["redirect_refused"] == 0 and w.cn.stats["redirect_refused"] == 0, [
        (h, d.status, d.evidence) for h in ("dca", "dcb") for d in w.net.events_of(h, DirectionDecision)]
    rd_mn, rd_cn = w.mn._paths[pid].rd, w.cn._paths[pid].rd
    assert rd_mn.mode == rd_cn.mode == mode and rd_mn.path_key == rd_cn.path_key
    assert rd_mn.relay_key == rd_cn.relay_key  # never one relay key at one node and another at the other
    if mode is PathMode.RS_S:
        entry = w.rs.entry(pid)
        assert entry is not None
    row = a.load_path(pid)
    assert row is not None and row.mode == int(mode)
    with a._tx() as cur:
        cur.execute("SELECT lease_owner FROM paths WHERE path_id = %s", (pid,))
        got = cur.fetchone()
    assert got is not None and got[0] is None  # every lease given back
    PeerWorld.exchange_data(w, pid)  # type: ignore[arg-type]


def _row(pid: bytes, key: bytes = b"\x42" * 32) -> PathRow:
    return PathRow(pid, "a.a.example", "b.a.example", int(PathRole.INITIATOR), b"\x01" * 8, None,
                   int(PathMode.DIRECT), None, key, True, 1)


def test_the_lease_has_one_winner_under_a_race(stores: tuple[PgStore, PgStore]) -> None:
    """Two replicas' connections claim the same paths at the same moment, 50 times: exactly one wins
    each; a lease runs out (REDIRECT_STALE) and is then free again; the owner may re-take its own."""
    a, b = stores
    pids = [bytes([7, i]) * 4 for i in range(50)]
    for pid in pids:
        a.save_path(_row(pid), NAME_A)
    wins: dict[bytes, list[str]] = {pid: [] for pid in pids}
    lock = threading.Lock()
    go = threading.Barrier(2)

    def claim(store: PgStore, owner: str) -> None:
        go.wait()
        for pid in pids:
            won, row = store.claim_path(pid, owner, 30.0)
            assert row is not None
            if won:
                with lock:
                    wins[pid].append(owner)

    threads = [threading.Thread(target=claim, args=(s, n)) for s, n in ((a, NAME_A), (b, NAME_B))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(len(v) == 1 for v in wins.values()), wins
    pid = pids[0]
    winner = wins[pid][0]
    loser, loser_name = (b, NAME_B) if winner == NAME_A else (a, NAME_A)
    assert loser.claim_path(pid, loser_name, 30.0)[0] is False
    assert (a if winner == NAME_A else b).claim_path(pid, winner, 30.0)[0] is True  # its own (restarted)
    # a write of the path by the winner (its re-direction done) gives the lease back
    (a if winner == NAME_A else b).save_path(_row(pid), winner)
    assert loser.claim_path(pid, loser_name, 0.0)[0] is True
    assert (a if winner == NAME_A else b).claim_path(pid, winner, 0.0)[0] is True  # (expired at once)
    assert a.claim_path(b"\xee" * 8, NAME_A, 1.0) == (False, None)


def test_rows_merge_instances_keep_other_paths_and_are_deleted_and_expired(stores: tuple[PgStore, PgStore]) -> None:
    a, b = stores
    pid = b"\x05" * 8
    a.save_path(_row(pid), NAME_A)
    other = _row(pid)
    other.inst_a, other.inst_b = None, b"\x02" * 8  # the other replica knows the other end
    b.save_path(other, NAME_B)
    got = a.load_path(pid)
    assert got is not None and (got.inst_a, got.inst_b) == (b"\x01" * 8, b"\x02" * 8)
    b.save_path(_row(pid, key=b"\x43" * 32), NAME_B)  # another path's ID collision: never overwritten
    got2 = a.load_path(pid)
    assert got2 is not None and got2.path_key == b"\x42" * 32 and got2.version == got.version
    a.drop_path(pid)
    assert b.load_path(pid) is None
    a.save_path(_row(b"\x06" * 8), NAME_A)
    with a._tx() as cur:
        cur.execute("UPDATE paths SET updated = now() - make_interval(secs => %s)", (PATH_ROW_TTL + 60,))
    a.save_path(_row(b"\x08" * 8), NAME_A)
    assert b.expire_paths(PATH_ROW_TTL) == 1
    assert a.load_path(b"\x06" * 8) is None and a.load_path(b"\x08" * 8) is not None


def test_a_dead_relays_paths_are_moved_by_the_replica_holding_the_relay(stores: tuple[PgStore, PgStore]) -> None:
    """mn and cn at dca, relayed by rs1 through dcb (dca has no relay): dca's kill moves the nodes to
    dcb; when rs1 then dies, dcb moves the path it never directed (the registry's rows through rs1)."""
    from ntmobile.core.rs import DcLink, RsConfig

    a, b = stores
    w, pid = replica_path(a, b, "symmetric", "symmetric", PathMode.RS_S, cn_at=REP_A, failover=True)
    assert w.mn._paths[pid].rd.rs_name == "rs1"
    # a second relay at dcb, so the path has somewhere to go
    from ntmobile.core.registry import ClientRecord
    from ntmobile.wire import Role
    rs2_rec = ClientRecord(b"\x04" * 8, "rs2", Role.RELAY, b"\x44" * 32)
    a.add_client(rs2_rec)
    rs2 = w.add_relay("rs2", RsConfig("rs2", rs2_rec.client_id, [DcLink(w.dcb.config.dc_id, REP_B, rs2_rec.psk)],
                                      local_endpoints=[("192.0.2.21", 7411)], rsn_allow=TEST_NETS),
                      ("192.0.2.21", 7411), seed=9)
    rs2.register(w.net.now)
    _kill(w, "dca")
    _failed_over(w, REP_B)
    assert pid not in w.dcb.paths
    del w.net.hosts["rs"]  # rs1 dies
    # dcb's sweep finds rs1 silent (RELAY_DEAD_AFTER keepalives): here at once, before the nodes'
    # own liveness checks notice it and ask themselves
    w.dcb.redirects.move_paths_off("rs1", w.net.now)
    assert w.dcb.stats["path_moves"] == 1
    w.net.run_until(lambda: w.dcb.stats["paths_moved"] >= 1, max_time=10)
    w.net.run_for(3)
    assert w.mn._paths[pid].rd.rs_name == "rs2" and w.cn._paths[pid].rd.rs_name == "rs2"
    row = b.load_path(pid)
    assert row is not None and row.rs == "rs2"
    PeerWorld.exchange_data(w, pid)  # type: ignore[arg-type]


def test_the_replica_config_is_what_the_lease_names(stores: tuple[PgStore, PgStore]) -> None:
    a, _b = stores
    dc_id, secret = a.identity()
    core = DcCore(DcConfig("a.example", dc_id, secret=secret, address=REP_A[0], port=REP_A[1]), a, 0.0,
                  seq_base=REP_CLOCK, counter=a.counter_floor(block=64))
    assert core.path_table.shared is a and core.path_table.owner == NAME_A
