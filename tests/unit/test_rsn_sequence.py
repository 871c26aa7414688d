"""The paper's whole RS-N set-up sequence (Fig. 2), in memory, with the real node, DC and RS cores:
registration → Direction Request → (DNS discovery) → Relay Direction → Direction Response →
Route Direction → Tunnel Request/Response → data capsules both ways; with loss, replays and forgeries."""

from __future__ import annotations

import pytest

from ntmobile.core.dc import DirectionDecision, ResolveRequest
from ntmobile.core.discovery import DiscoveryResult, Outcome
from ntmobile.core.node import PathClosed, PathFailed, PathReady
from ntmobile.core.registry import ClientRecord
from ntmobile.core.rs import RelayAdded
from ntmobile.crypto import CapsuleSealer, Channel, KeyPair
from ntmobile.wire import CapsuleFlags, MessageType, PathMode, Role, RouteDirection, Status

from . import harness
from .harness import ipv4_udp

DC_ID = bytes.fromhex("dc000000000000aa")
DC_EP, RS_EP = harness.WORLD_DC_EP, harness.WORLD_RS_EP
MN_PRIV = ("10.1.0.10", 7412)
MN_PUB = ("192.0.2.100", 40001)
GN, POOLS = harness.WORLD_GN, harness.WORLD_POOLS


class World(harness.World):
    """The one-DC world (harness.World) with its node ``mn`` behind a NAT mapping."""

    def __init__(self, loss: float = 0.0, seed: int = 1) -> None:
        super().__init__(dc_id=DC_ID, loss=loss, seed=seed)
        self.mn_rec = ClientRecord(b"\x01" * 8, "mn.a.example", Role.NODE, b"\x11" * 32)
        self.node("mn", (MN_PRIV, MN_PUB), rec=self.mn_rec, seed=seed + 2)

    def resolve_as_gn(self) -> None:
        """Answer the DC's resolution request as DNS discovery would for a general node, and the
        relay's distance probe as its runtime would (ICMP echo)."""
        self.answer_requests()

    def setup_path(self) -> PathReady:
        return self.path("mn", "www.gn.example")


def test_rsn_sequence_end_to_end() -> None:
    w = World()
    ready = w.setup_path()
    path = ready.path
    assert path.mode is PathMode.RS_N and path.rs_name == "rs1"
    assert path.endpoint == RS_EP and path.peer_vip4 is not None
    # The order of the paper's Fig. 2, as the datagrams flowed.
    flow = [(src, dst) for _, src, dst, _ in w.net.log]
    first_relay = flow.index(("dc", "rs"), flow.index(("mn", "dc"), 2))
    assert ("rs", "dc") in flow[first_relay:]
    decision = w.net.events_of("dc", DirectionDecision)[-1]
    assert decision.status is Status.OK and decision.rs == "rs1"
    assert any("no DC TXT marker" in line for line in decision.evidence)
    # The RS installed its NAT mapping (RelayAdded) for exactly this node VIP / GN VIP / GN address.
    added = w.net.events_of("rs", RelayAdded)[0]
    assert added.entry.nat_mappings() == [(w.mn.registration.vip4, path.peer_vip4, GN)]  # type: ignore[union-attr]
    # Data MN → RS-N: the RS hands the exact inner packet to its TUN.
    pkt = ipv4_udp(w.mn.registration.vip4, path.peer_vip4, b"GET / HTTP/1.0\r\n\r\n")  # type: ignore[union-attr, arg-type]
    w.send_ip("mn", pkt)
    w.net.step()
    assert [p for p, _gso in w.rs.packets_to_tun()] == [pkt]
    # Reply GN → MN, de-NATed by the kernel (src GN VIP, dst node VIP), sealed back to the node's NAT mapping.
    reply = ipv4_udp(path.peer_vip4, w.mn.registration.vip4, b"HTTP/1.0 200 OK\r\n\r\n")  # type: ignore[arg-type, union-attr]
    w.rs.tun_packet(reply, w.net.now)
    w.net.step()
    assert w.received("mn") == [reply]


@pytest.mark.parametrize("seed", [3, 4, 5, 6, 7])
def test_rsn_sequence_under_loss(seed: int) -> None:
    # 10 % loss on every datagram in both directions. (Measured over 40 seeds: 40/40 set-ups complete
    # within the app's DNS budget at 10 %, 38/40 at 20 %, 35/40 at 25 %.)
    w = World(loss=0.10, seed=seed)
    ready = w.setup_path()
    assert ready.path.mode is PathMode.RS_N
    retrans = w.mn.stats["retransmissions"] + w.dc.stats["retransmissions"] + w.rs.stats["retransmissions"]
    assert w.net.dropped > 0 and retrans > 0


def test_replayed_capsule_is_rejected() -> None:
    w = World()
    path = w.setup_path().path
    pkt = ipv4_udp(w.mn.registration.vip4, path.peer_vip4, b"x")  # type: ignore[arg-type, union-attr]
    w.send_ip("mn", pkt)
    w.net.step()
    assert len(w.rs.packets_to_tun()) == 1
    capsule = w.net.sent_by["mn"][-1]
    w.rs.receive_datagram(capsule, MN_PUB, w.net.now)  # replay
    assert w.rs.packets_to_tun() == []
    assert sum(v for k, v in w.rs.stats.items() if "replay" in k) >= 1


def test_replayed_signalling_is_rejected() -> None:
    w = World()
    w.setup_path()
    dc_before = dict(w.dc.stats)
    direction = next(d for d in w.net.sent_by["mn"] if d[1] == MessageType.DIRECTION_REQUEST)
    w.dc.receive_datagram(direction, MN_PUB, w.net.now)  # an attacker replays the captured request
    assert w.dc.stats["drop_replay"] == dc_before.get("drop_replay", 0) + 1
    assert w.dc.datagrams_to_send() == []


def test_forged_route_direction_is_rejected() -> None:
    """A Route Direction not sealed by the DC (an attacker guessing keys) is dropped."""
    w = World()
    forged = Channel(KeyPair(b"\x66" * 32, b"\x66" * 32), DC_ID, seq_start=2**40).seal(
        RouteDirection(path_id=b"\x77" * 8, path_role=1, mode=PathMode.RS_N, path_key=b"\x88" * 32, idle_timeout=60,
                       rs_endpoint=("203.0.113.66", 7411)), txid=1)
    w.mn.receive_datagram(forged, DC_EP, w.net.now)
    assert w.mn.stats["drop_auth"] == 1
    assert w.mn.datagrams_to_send() == []
    assert not w.net.events_of("mn", PathReady)


def test_forged_capsule_on_known_path_is_rejected() -> None:
    w = World()
    path = w.setup_path().path
    evil = CapsuleSealer(b"\x13" * 32, path.path_id, CapsuleFlags.NONE)
    w.rs.receive_datagram(evil.seal(b"\x45" + b"\x00" * 39), ("203.0.113.66", 9999), w.net.now)
    assert w.rs.packets_to_tun() == []


def test_nxdomain_reaches_the_node() -> None:
    w = World()
    w.mn.request_path("nonexistent.gn.example", w.net.now)
    w.net.step()
    token = next(e for e in w.net.hosts["dc"].events if isinstance(e, ResolveRequest)).token
    w.dc.resolution_result(token, DiscoveryResult("nonexistent.gn.example", Outcome.NXDOMAIN,
                                                   reason="NXDOMAIN from ns.gn.example"), w.net.now)
    w.net.run_until(lambda: bool(w.net.events_of("mn", PathFailed)))
    assert w.net.events_of("mn", PathFailed)[0].status is Status.NXDOMAIN


def test_unreachable_relay_gives_relay_failed_quickly() -> None:
    w = World()
    w.net.drop = lambda src, dst, data: dst == "rs"
    t0 = w.net.now
    w.mn.request_path("www.gn.example", w.net.now)
    w.net.run_until(lambda: (w.resolve_as_gn(), bool(w.net.events_of("mn", PathFailed)))[1])
    failed = w.net.events_of("mn", PathFailed)[0]
    assert failed.status is Status.RELAY_FAILED
    assert w.net.now - t0 < 4.0


def test_second_name_of_same_gn_supersedes_the_path() -> None:
    """www and ftp of one GN share the GN VIP, so they share one RS-N path (the kernel NAT keys on it): the
    node asks by name, so the DC sets a new path (new Path ID and key, on the same relay) that supersedes
    the old one at the relay and at the node; both names lead to it (docs/security.md §3)."""
    w = World()
    first = w.setup_path().path
    rid = w.mn.request_path("ftp.gn.example", w.net.now)

    def ready() -> bool:
        w.resolve_as_gn()
        return any(rid in e.request_ids for e in w.net.events_of("mn", PathReady))

    w.net.run_until(ready)
    second = next(e for e in w.net.events_of("mn", PathReady) if rid in e.request_ids).path
    assert second.path_id != first.path_id and second.peer_vip4 == first.peer_vip4
    assert second.data_keys != first.data_keys and second.rs_name == first.rs_name
    assert [e.path_id for e in w.rs.entries()] == [second.path_id]
    assert [e.path_id for e in w.net.events_of("mn", PathClosed)] == [first.path_id]
    assert w.mn.request_path("www.gn.example", w.net.now) and w.mn.paths()[0]["path_id"] == second.path_id.hex()
    decision = w.net.events_of("dc", DirectionDecision)[-1]
    assert any("superseding path" in line for line in decision.evidence)


def test_path_keepalives_keep_the_relay_entry_and_nat_mapping_alive() -> None:
    w = World()
    path = w.setup_path().path
    t0 = w.net.now
    w.net.run_until(lambda: w.net.now > t0 + 300, max_time=400)  # 2.5 × the relay's idle timeout, no data
    assert w.mn.stats["path_keepalives"] >= 15  # every 15 s: the DC said the node is behind a NAT
    assert w.rs.entry(path.path_id) is not None
    pkt = ipv4_udp(w.mn.registration.vip4, path.peer_vip4, b"still there")  # type: ignore[arg-type, union-attr]
    w.send_ip("mn", pkt)
    w.net.step()
    assert [p for p, _gso in w.rs.packets_to_tun()] == [pkt]


def test_lost_keepalive_answers_do_not_close_a_path_that_carries_data() -> None:
    """Relay-failure detection must not fire while authenticated data keeps arriving from the relay
    (e.g. a keepalive answered to the address the node just left)."""
    from ntmobile.core.node import PathClosed

    w = World()
    path = w.setup_path().path
    assert w.mn.registration is not None and path.peer_vip4 is not None
    w.net.drop = lambda src, dst, data: src == "rs" and dst == "mn" and data[1] == MessageType.KEEPALIVE_ACK
    t0 = w.net.now
    reply = ipv4_udp(path.peer_vip4, w.mn.registration.vip4, b"data from the GN")  # type: ignore[arg-type]

    while w.net.now < t0 + 60:  # the GN keeps sending through the relay, once a second
        w.rs.tun_packet(reply, w.net.now)
        w.net.run_for(1.0)
    assert w.mn.stats["path_keepalive_lost_but_alive"] >= 1
    assert not w.net.events_of("mn", PathClosed)
    assert w.mn.path_info(path.path_id) is not None
