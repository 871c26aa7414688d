"""An RS-S relay dies (in memory, real cores; docs/protocol.md §10 "Relay failure"): the path between
two NTM nodes behind different NATs is moved to another relay with the same Path ID, path key, roles
and capsule counters; both nodes are told; the relay key is fresh. Detected by the nodes (a path
keepalive unanswered: one keepalive interval plus 3 s) or by the DC (3 x relay_keepalive of silence,
checked every relay_keepalive); with no relay alive the path is rebuilt once one is back."""

from __future__ import annotations

import dataclasses

from ntmobile.core.dc import DcConfig, DcCore
from ntmobile.core.node import NodeCore
from ntmobile.core.registry import ClientRecord
from ntmobile.core.rs import DcLink, RsConfig, RsCore
from ntmobile.crypto import relay_leg_keys
from ntmobile.wire import MessageType, PathMode, Role, RsType, SignalHeader, Status

from .harness import seeded_bytes
from .test_handover import DC_EP, DC_ID, NAT_A, NAT_B, World, _direct_roundtrip
from .test_relay_failure import RS2_EP, add_rs2

KEEPALIVE = 15.0  # the DC's keepalive: both nodes are behind a NAT


class TwoRelays(World):
    """World (one DC, rs1) plus rs2; mn behind NAT A and cn behind NAT B talk through an RS-S."""

    def __init__(self, *, keepalive: int = 15) -> None:
        super().__init__()
        if keepalive != 15:
            self.dc = DcCore(DcConfig("a.example", DC_ID, keepalive=keepalive), self.store, self.net.now,
                             seq_base=10**15, random_bytes=seeded_bytes(77))
            self.net.hosts["dc"].core = self.dc
            self.rs.register(self.net.now)
        # The path must stay relayed (no NAT traversal) for its relay's death to matter.
        self.dc.config = dataclasses.replace(self.dc.config, traversal=False)
        self.rs2 = add_rs2(self)

    def rss_path(self) -> bytes:
        self.node("mn", NAT_A)
        self.node("cn", NAT_B)
        pid = self.path("mn", "cn.a.example").path.path_id
        self.net.run_until(lambda: established(self.nodes["cn"], pid))
        return pid

    def on_relay(self, pid: bytes, name: str) -> bool:
        infos = [n.path_info(pid) for n in self.nodes.values()]
        return all(i is not None and i.mode is PathMode.RS_S and i.rs_name == name for i in infos)


def established(core: NodeCore, pid: bytes) -> bool:
    p = core._paths.get(pid)
    return p is not None and p.established


def kill(w: World, host: str) -> None:
    w.net.drop = lambda src, dst, data: host in (src, dst)


def test_nodes_notice_the_dead_relay_and_the_dc_moves_the_path_keeping_id_keys_and_counters() -> None:
    w = TwoRelays()
    pid = w.rss_path()
    mn, cn = w.nodes["mn"], w.nodes["cn"]
    assert w.on_relay(pid, "rs1")
    _direct_roundtrip(w, pid, b"through rs1")
    before = {n: (core.path_info(pid), core.path_info(pid).sealer.counter)  # type: ignore[union-attr]
              for n, core in w.nodes.items()}
    dead_at = w.net.now
    kill(w, "rs")
    w.net.run_until(lambda: w.on_relay(pid, "rs2"), max_time=60)
    moved_after = w.net.now - dead_at
    # The documented bound: one path keepalive interval + min(3 s, interval / 2), then the move itself
    # (the DC's Relay Direction to the dead relay times out after 0.8 s, then rs2 accepts).
    assert moved_after <= KEEPALIVE + 3.0 + 1.5, moved_after
    assert mn.stats["rss_relay_lost"] + cn.stats["rss_relay_lost"] >= 1
    w.net.run_until(lambda: not mn._pending and not cn._pending and not w.dc.redirects.running, max_time=10)
    _direct_roundtrip(w, pid, b"through rs2")
    for n, core in w.nodes.items():
        info, counter = before[n]
        now = core.path_info(pid)
        assert now is not None and info is not None
        assert (now.path_id, now.role, now.data_keys, now.peer_vip4) == (info.path_id, info.role, info.data_keys,
                                                                         info.peer_vip4)
        assert now.sealer is info.sealer and now.sealer.counter > counter  # the same counters carry on
        assert now.endpoint == RS2_EP
        assert core.stats["drop_data_auth"] == 0
    entry = w.rs2.entry(pid)
    assert entry is not None and entry.packets_i2r >= 1 and entry.packets_r2i >= 1
    # rs2 got a relay key rs1 never had (its leg channels start at 1 again).
    assert entry.direction.relay_key != w.rs.entry(pid).direction.relay_key  # type: ignore[union-attr]
    assert w.dc.paths[pid].rs == "rs2" and w.dc.paths[pid].path_key == mn._paths[pid].rd.path_key


def test_dc_notices_the_silent_relay_and_moves_the_path_itself() -> None:
    """Nodes that keepalive rarely (here 60 s) do not notice first: the DC marks rs1 dead after
    3 x relay_keepalive (15 s) of silence, at its next sweep (every relay_keepalive, 5 s), and moves the
    path: both nodes get a Route Direction (acknowledged) for the same path, through rs2."""
    w = TwoRelays(keepalive=60)
    pid = w.rss_path()
    _direct_roundtrip(w, pid, b"through rs1")
    dead_at = w.net.now
    kill(w, "rs")
    w.net.run_until(lambda: w.on_relay(pid, "rs2"), max_time=60)
    assert w.net.now - dead_at <= 3 * 5 + 5 + 1.0
    assert w.dc.stats["path_moves"] == 1 and w.dc.stats["paths_moved"] == 1
    assert w.nodes["mn"].stats["rss_relay_lost"] == w.nodes["cn"].stats["rss_relay_lost"] == 0
    w.net.run_until(lambda: not w.nodes["mn"]._pending and not w.nodes["cn"]._pending, max_time=10)
    _direct_roundtrip(w, pid, b"through rs2")


def test_with_no_relay_left_the_path_is_rebuilt_when_the_relay_returns() -> None:
    w = World()
    mn, cn = w.node("mn", NAT_A), w.node("cn", NAT_B)
    pid = w.path("mn", "cn.a.example").path.path_id
    w.net.run_until(lambda: established(cn, pid))
    _direct_roundtrip(w, pid, b"before")
    first_key = w.rs.entry(pid).direction.relay_key  # type: ignore[union-attr]
    kill(w, "rs")
    w.net.run_until(lambda: w.dc.stats["directions_failed"] + w.dc.stats["path_moves_failed"] >= 1, max_time=60)
    assert pid in w.dc.redirects.waiting_relay and mn.path_info(pid) is not None  # the path is kept meanwhile
    # The relay restarts: empty relay table, registers again.
    w.net.drop = None
    rs = RsCore(w.rs.config, w.net.now, seq_base=10**16, random_bytes=seeded_bytes(9))
    w.rs = rs
    w.net.hosts["rs"].core = rs
    rs.register(w.net.now)
    back = w.net.now
    w.net.run_until(lambda: rs.entry(pid) is not None and not mn._pending and not cn._pending
                    and not w.dc.redirects.running, max_time=30)
    assert w.net.now - back <= 5 + 2.0  # registration, then the DC's next sweep (every relay_keepalive)
    assert rs.entry(pid).direction.relay_key != first_key  # type: ignore[union-attr]
    _direct_roundtrip(w, pid, b"rebuilt")
    assert mn.path_info(pid).rs_name == cn.path_info(pid).rs_name == "rs1"  # type: ignore[union-attr]


def test_both_nodes_asking_at_once_are_served_one_after_the_other() -> None:
    """Both nodes notice and ask; the DC runs one re-direction of the path at a time, so both end on
    the same relay with the same relay key."""
    w = TwoRelays()
    pid = w.rss_path()
    mn, cn = w.nodes["mn"], w.nodes["cn"]
    kill(w, "rs")
    mn._redirect_path(mn._paths[pid], w.net.now)
    cn._redirect_path(cn._paths[pid], w.net.now)
    w.net.run_until(lambda: w.on_relay(pid, "rs2") and not mn._redirects and not cn._redirects
                    and not w.dc.redirects.running and not w.dc.redirects.queue, max_time=20)
    assert w.dc.stats["redirects_queued"] == 1
    key = w.rs2.entry(pid).direction.relay_key  # type: ignore[union-attr]
    assert mn._paths[pid].rd.relay_key == cn._paths[pid].rd.relay_key == key
    w.net.run_until(lambda: not mn._pending and not cn._pending, max_time=10)
    _direct_roundtrip(w, pid, b"one relay key")


def test_relay_rekeys_an_rss_entry_for_its_dc_and_never_takes_a_retired_key() -> None:
    w = TwoRelays()
    pid = w.rss_path()
    e = w.rs.entry(pid)
    assert e is not None and e.direction.relay_key is not None
    old_key, legs = e.direction.relay_key, (e.initiator.endpoint, e.responder_endpoint)
    session = w.rs.dc_session(DC_ID)
    assert session is not None
    new = dataclasses.replace(e.direction, relay_key=b"\x77" * 32)
    w.rs._on_relay_direction(w.rs._dcs[DC_ID], session, _hdr(7), new, DC_EP, w.net.now)
    assert w.rs.stats["relay_direction_rekeyed"] == 1 and e.direction.relay_key == b"\x77" * 32
    assert (e.initiator.endpoint, e.responder_endpoint) == legs  # relaying goes on
    assert e.initiator.channel.keys == relay_leg_keys(b"\x77" * 32, pid, responder_leg=False).swapped()
    back = dataclasses.replace(new, relay_key=old_key)
    w.rs._on_relay_direction(w.rs._dcs[DC_ID], session, _hdr(8), back, DC_EP, w.net.now)
    assert w.rs.stats["relay_direction_retired_key"] == 1 and e.direction.relay_key == b"\x77" * 32
    assert new.rs_type == RsType.S


def _hdr(txid: int) -> SignalHeader:
    return SignalHeader(1, MessageType.RELAY_DIRECTION, 0, Status.OK, DC_ID, txid, 1)


def test_across_two_dcs_the_nodes_notice_and_the_path_moves_to_another_relay() -> None:
    """mn (DC a.example) and cn (DC b.example) behind cone NATs talk through an RS-S of the answering
    DC. It dies: both nodes' keepalives go unanswered, each asks its DC, whose Peer Query (same Path ID
    and path key, fresh relay key) makes the answering DC pick a live relay. Same Path ID and counters."""
    from ntmobile.core.node import PathReady

    from .test_dc_peering import DCA_EP, DCA_ID, DCB_EP, DCB_ID, SEQ_BASE
    from .test_dc_peering import World as PeeringWorld

    pw = PeeringWorld("cone", "cone", traversal=False)  # the path must stay relayed
    rec = ClientRecord(b"\x05" * 8, "rs2", Role.RELAY, b"\x55" * 32)
    pw.store_a.add_client(rec)
    pw.store_b.add_client(ClientRecord(rec.client_id, "rs2", Role.RELAY, b"\x66" * 32))
    rs2 = RsCore(RsConfig("rs2", rec.client_id, [DcLink(DCA_ID, DCA_EP, rec.psk), DcLink(DCB_ID, DCB_EP, b"\x66" * 32)],
                          local_endpoints=[RS2_EP]), pw.net.now, seq_base=SEQ_BASE, random_bytes=seeded_bytes(8))
    pw.net.add("rs2", rs2, RS2_EP)
    rs2.register(pw.net.now)
    pw.net.run_until(lambda: len(pw.dca.relays()) == 2 and len(pw.dcb.relays()) == 2)
    ready = pw.connect(pw.mn, "mn", "cn.b.example")
    assert isinstance(ready, PathReady) and ready.path.mode is PathMode.RS_S and ready.path.rs_name == "rs1"
    pid = ready.path.path_id
    pw.exchange_data(pid)
    dead_at = pw.net.now
    pw.net.drop = lambda src, dst, data: "rs" in (src, dst)  # rs1

    def on_rs2() -> bool:
        infos = [pw.mn.path_info(pid), pw.cn.path_info(pid)]
        return all(i is not None and i.mode is PathMode.RS_S and i.rs_name == "rs2" for i in infos)

    pw.net.run_until(on_rs2, max_time=60)
    assert pw.net.now - dead_at <= KEEPALIVE + 3.0 + 1.5
    pw.net.run_until(lambda: not pw.mn._pending and not pw.cn._pending, max_time=10)
    pw.exchange_data(pid)
    assert pw.mn.path_info(pid).sealer is ready.path.sealer  # type: ignore[union-attr]
    assert pw.mn.stats["drop_data_auth"] == pw.cn.stats["drop_data_auth"] == 0
