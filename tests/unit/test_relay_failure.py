"""An RS-N relay dies (in memory, real cores): the node notices within one path keepalive interval
plus 3 s, closes the path, and asking again gets a new path (new Path ID and key: no sealer ever
starts again under a key it used, docs/security.md §3) with the same GN VIP, on the other relay;
when no other relay is left the DC rebuilds it on the relay once it returns."""

from __future__ import annotations

from typing import Any

from ntmobile.core.node import PathClosed, PathReady
from ntmobile.core.registry import ClientRecord
from ntmobile.core.rs import DcLink, ProbeRequest, RsConfig, RsCore
from ntmobile.wire import PathMode, Role

from .harness import TEST_NETS, seeded_bytes
from .test_rsn_sequence import World

RS2_EP = ("192.0.2.21", 7411)


def add_rs2(world: Any) -> RsCore:
    """Enrol, start and register a second relay, rs2, in an in-memory world with one DC and rs1."""
    rec = ClientRecord(b"\x03" * 8, "rs2", Role.RELAY, b"\x33" * 32)
    world.store.add_client(rec)
    link = DcLink(world.dc.config.dc_id, world.net.hosts["dc"].addr, rec.psk)
    rs2 = RsCore(RsConfig("rs2", rec.client_id, [link], local_endpoints=[RS2_EP], rsn_allow=TEST_NETS), world.net.now,
                 seq_base=10**15,
                 random_bytes=seeded_bytes(42))
    world.net.add("rs2", rs2, RS2_EP)
    rs2.register(world.net.now)
    world.net.run_until(lambda: len(world.dc.relays()) == 2)
    return rs2


class TwoRelays(World):
    def __init__(self) -> None:
        super().__init__()
        self.rs2 = add_rs2(self)

    def resolve_as_gn(self) -> None:
        for ev in list(self.net.hosts["rs2"].events):
            if isinstance(ev, ProbeRequest):
                self.net.hosts["rs2"].events.remove(ev)
                self.rs2.probe_result(ev.token, 2, 500, self.net.now)  # farther: rs1 is chosen first
        super().resolve_as_gn()


def test_dead_relay_is_noticed_and_the_path_moves_to_another_relay() -> None:
    w = TwoRelays()
    first = w.setup_path().path
    assert first.rs_name == "rs1" and first.mode is PathMode.RS_N
    keepalive = 15.0  # the DC's keepalive: mn is behind a NAT
    dead_at = w.net.now
    w.net.drop = lambda src, dst, data: "rs" in (src, dst)  # rs1 is gone
    w.net.run_until(lambda: bool(w.net.events_of("mn", PathClosed)), max_time=60)
    closed = w.net.events_of("mn", PathClosed)[0]
    assert closed.path_id == first.path_id and "relay" in closed.reason
    assert w.net.now - dead_at <= keepalive + 3.0  # the documented bound
    assert w.mn.stats["relay_lost"] == 1 and w.mn.paths() == []
    # The next packet to the GN VIP makes the node's runtime ask again (here: by name).
    second = w.setup_path().path
    assert second.rs_name == "rs2" and second.endpoint == RS2_EP
    assert (second.peer_vip4, second.peer_vip6) == (first.peer_vip4, first.peer_vip6)
    assert second.path_id != first.path_id and second.data_keys != first.data_keys  # new counters, new keys
    assert [e.path_id for e in w.rs2.entries()] == [second.path_id]


def test_path_is_rebuilt_on_the_only_relay_when_it_returns() -> None:
    w = World()
    first = w.setup_path().path
    w.net.drop = lambda src, dst, data: "rs" in (src, dst)
    w.net.run_until(lambda: bool(w.net.events_of("mn", PathClosed)), max_time=60)
    # The relay comes back (a restart: empty relay table, registers again).
    w.net.drop = None
    rs = w.rs.__class__(w.rs.config, w.net.now, seq_base=10**16, random_bytes=seeded_bytes(9))
    w.rs = rs
    w.net.hosts["rs"].core = rs
    rs.register(w.net.now)
    w.net.run_until(lambda: rs.stats["registrations"] == 1 and bool(w.dc.relays()), max_time=30)
    again = w.setup_path().path
    assert again.rs_name == "rs1" and again.peer_vip4 == first.peer_vip4 and again.data_keys != first.data_keys
    assert [e.path_id for e in rs.entries()] == [again.path_id]
    assert len(w.net.events_of("mn", PathReady)) == 2
