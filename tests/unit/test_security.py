"""Security properties of the real node, DC and RS cores in memory (issue 8): replayed signalling
and data, directions not from the DC, unenrolled or impersonating nodes, injection into another
node's Path ID or VIP, RS-N relaying only for paths its DC set up, and DNS not steering tunnels.
Each test is listed in docs/security.md §7."""

from __future__ import annotations

from ntmobile.core.dc import RegistrationRejected, ResolveRequest
from ntmobile.core.discovery import DiscoveryResult, Outcome
from ntmobile.core.node import NodeConfig, NodeCore, PathReady, RegistrationFailed
from ntmobile.core.registry import ClientRecord
from ntmobile.core.rs import ProbeRequest, RelayAdded
from ntmobile.crypto import CapsuleSealer, Channel, KeyPair
from ntmobile.wire import CapsuleFlags, MessageType, PathMode, Role, Status, TunnelRequest

from .harness import TEST_NETS, seeded_bytes
from .test_rsn_sequence import DC_EP, DC_ID, GN, MN_PUB, RS_EP, World, ipv4_udp

EVIL_PRIV = ("10.1.0.66", 7412)
EVIL_PUB = ("192.0.2.166", 40066)
ATTACKER = ("203.0.113.66", 5353)
GN2 = "192.0.2.41"


class TwoNodes(World):
    """The RS-N world of test_rsn_sequence plus a second enrolled node, ``evil``."""

    def __init__(self, seed: int = 1) -> None:
        super().__init__(seed=seed)
        self.evil_rec = ClientRecord(b"\x06" * 8, "evil.a.example", Role.NODE, b"\x66" * 32)
        self.node("evil", (EVIL_PRIV, EVIL_PUB), rec=self.evil_rec, seed=seed + 9)
        self.gn_addr = GN

    def gn_address(self, fqdn: str) -> str:
        return GN2 if fqdn.startswith("other.") else self.gn_addr

    def path_of(self, node: NodeCore, host: str, fqdn: str) -> PathReady:
        assert node is self.nodes[host]
        return self.path(host, fqdn)


def _tun_packets(w: World) -> list[bytes]:
    return [bytes(p) for p, _gso in w.rs.packets_to_tun()]


def test_node_cannot_inject_into_another_nodes_path_id() -> None:
    w = TwoNodes()
    mine = w.path_of(w.mn, "mn", "www.gn.example").path
    theirs = w.path_of(w.evil, "evil", "other.gn.example").path
    assert mine.path_id != theirs.path_id
    before = w.rs.entry(mine.path_id)
    assert before is not None
    mn_endpoint = before.initiator.endpoint
    # evil seals a packet for mn's Path ID with the only path key it holds (its own) ...
    pkt = ipv4_udp(w.mn.registration.vip4, mine.peer_vip4, b"injected")  # type: ignore[arg-type, union-attr]
    forged = CapsuleSealer(theirs.data_keys.send, mine.path_id, CapsuleFlags.NONE).seal(pkt)
    w.rs.receive_datagram(forged, EVIL_PUB, w.net.now)
    assert _tun_packets(w) == []
    assert w.rs.stats["drop_data_auth"] == 1
    # ... or re-sends one of mn's captured capsules from its own address: a replay, refused, and
    # mn's learnt endpoint does not move to evil.
    w.send_ip("mn", pkt)
    w.net.step()
    assert _tun_packets(w) == [pkt]
    captured = w.net.sent_by["mn"][-1]
    w.rs.receive_datagram(captured, EVIL_PUB, w.net.now)
    assert _tun_packets(w) == []
    assert w.rs.stats["drop_data_replay"] == 1
    entry = w.rs.entry(mine.path_id)
    assert entry is not None and entry.initiator.endpoint == mn_endpoint != EVIL_PUB
    # mn's own traffic still flows.
    w.send_ip("mn", pkt)
    w.net.step()
    assert _tun_packets(w) == [pkt]


def test_node_cannot_claim_another_nodes_vip_as_inner_source() -> None:
    w = TwoNodes()
    mn_vip = w.mn.registration.vip4  # type: ignore[union-attr]
    theirs = w.path_of(w.evil, "evil", "www.gn.example").path
    assert theirs.mode is PathMode.RS_N
    spoofed = ipv4_udp(mn_vip, theirs.peer_vip4, b"as mn")  # type: ignore[arg-type]
    w.send_ip("evil", spoofed)
    w.net.step()
    assert _tun_packets(w) == []
    assert w.rs.stats["drop_inner_address"] == 1
    # Its own VIP passes: the check is the path's (node VIP, GN VIP) pair, not a blanket refusal.
    honest = ipv4_udp(w.evil.registration.vip4, theirs.peer_vip4, b"as evil")  # type: ignore[arg-type, union-attr]
    w.send_ip("evil", honest)
    w.net.step()
    assert _tun_packets(w) == [honest]


def test_node_cannot_register_under_another_nodes_name_or_take_its_vip() -> None:
    w = World()
    vip4, vip6 = w.mn.registration.vip4, w.mn.registration.vip6  # type: ignore[union-attr]
    evil_rec = ClientRecord(b"\x06" * 8, "evil.a.example", Role.NODE, b"\x66" * 32)
    w.store.add_client(evil_rec)
    # Enrolled as evil, but claims mn's name in its (validly sealed) Registration Request.
    evil = NodeCore(NodeConfig("mn.a.example", evil_rec.client_id, evil_rec.psk, DC_ID, DC_EP), w.net.now,
                    seq_base=10**15, random_bytes=seeded_bytes(77))
    w.net.add("evil", evil, EVIL_PRIV, public=EVIL_PUB)
    evil.register((EVIL_PRIV,), w.net.now)
    w.net.run_until(lambda: bool(w.net.events_of("evil", RegistrationFailed)))
    assert w.net.events_of("evil", RegistrationFailed)[0].status is Status.NOT_AUTHORIZED
    assert [e.name for e in w.net.events_of("dc", RegistrationRejected)] == ["evil.a.example"]
    assert not evil.registered
    # mn keeps its VIPs and its session; the DC's DNS still maps mn's name to them.
    rec = w.store.client_by_name("mn.a.example")
    assert rec is not None and rec.client_id == w.mn_rec.client_id and (rec.vip4, rec.vip6) == (vip4, vip6)
    assert [s["name"] for s in w.dc.sessions()].count("mn.a.example") == 1


def test_rs_n_relays_only_for_paths_the_dc_set_up() -> None:
    w = World()
    made_up = b"\x42" * 8
    key = b"\x24" * 32
    # Data for a Path ID the DC never directed to this relay.
    pkt = ipv4_udp("100.64.1.2", "100.127.0.9", b"x")
    w.rs.receive_datagram(CapsuleSealer(key, made_up, CapsuleFlags.NONE).seal(pkt), ATTACKER, w.net.now)
    assert w.rs.stats["drop_unknown_path"] == 1
    # Tunnel signalling that names the made-up path as sender.
    tr = Channel(KeyPair(key, key), made_up, seq_start=1).seal(TunnelRequest(), txid=7)
    w.rs.receive_datagram(tr, ATTACKER, w.net.now)
    assert w.rs.stats["drop_unknown_sender"] == 1
    # Packets from the NAT side for no path: nothing is sealed to anyone.
    w.rs.tun_packet(ipv4_udp("100.127.0.9", "100.64.1.2", b"y"), w.net.now)
    assert w.rs.stats["tun_no_path"] == 1
    assert _tun_packets(w) == [] and w.rs.datagrams_to_send() == [] and w.rs.entries() == []
    # After the DC sets a path up, exactly that path is relayed.
    path = w.setup_path().path
    assert [e.path_id for e in w.rs.entries()] == [path.path_id]
    assert [e.entry.path_id for e in w.net.events_of("rs", RelayAdded)] == [path.path_id]


def test_replayed_route_and_relay_directions_are_rejected() -> None:
    w = World()
    w.setup_path()
    route = next(d for d in w.net.sent_by["dc"] if d[1] == MessageType.ROUTE_DIRECTION)
    relay = next(d for d in w.net.sent_by["dc"] if d[1] == MessageType.RELAY_DIRECTION)
    ready_before = len(w.net.events_of("mn", PathReady))
    added_before = len(w.net.events_of("rs", RelayAdded))
    mn_drops = sum(v for k, v in w.mn.stats.items() if k.startswith("drop_"))
    rs_drops = sum(v for k, v in w.rs.stats.items() if k.startswith("drop_"))
    w.mn.receive_datagram(route, DC_EP, w.net.now)
    w.rs.receive_datagram(relay, DC_EP, w.net.now)
    w.net.step()
    assert sum(v for k, v in w.mn.stats.items() if k.startswith("drop_")) == mn_drops + 1
    assert sum(v for k, v in w.rs.stats.items() if k.startswith("drop_")) == rs_drops + 1
    assert len(w.net.events_of("mn", PathReady)) == ready_before
    assert len(w.net.events_of("rs", RelayAdded)) == added_before


def test_route_direction_from_another_address_than_the_dc_is_rejected() -> None:
    """A captured, validly sealed Route Direction replayed from an attacker's address (as a DNS
    or on-path attacker would, to point the node at its own tunnel) is dropped before opening."""
    w = World()
    w.setup_path()
    route = next(d for d in w.net.sent_by["dc"] if d[1] == MessageType.ROUTE_DIRECTION)
    w.mn.receive_datagram(route, ATTACKER, w.net.now)
    assert w.mn.stats["drop_dc_wrong_source"] == 1
    assert w.mn.datagrams_to_send() == []


def test_dns_answers_cannot_steer_the_node_to_an_attackers_tunnel() -> None:
    """The node asks its DC by name; the tunnel endpoint and keys come only from the DC's sealed
    Route Direction. A spoofed A record in the DC's discovery can change the GN address the RS-N
    NATs to (plain DNS spoofing), never the node's tunnel endpoint or its keys; an attacker's
    Tunnel Request for a path the node does not have never becomes a path."""
    w = World()
    w.mn.stats.clear()
    # The attacker's Tunnel Request arrives first, as if a DNS answer had pointed the node at it.
    key = b"\x31" * 32
    bogus = Channel(KeyPair(key, key), b"\x99" * 8, seq_start=1).seal(TunnelRequest(), txid=9)
    w.mn.receive_datagram(bogus, ATTACKER, w.net.now)
    assert w.mn.datagrams_to_send() == []
    # Spoofed discovery: the DC is told the GN lives at the attacker's address.
    rid = w.mn.request_path("www.gn.example", w.net.now)

    def ready() -> bool:
        for ev in list(w.net.hosts["rs"].events):
            if isinstance(ev, ProbeRequest):
                w.net.hosts["rs"].events.remove(ev)
                w.rs.probe_result(ev.token, 1, 250, w.net.now)
        for ev in list(w.net.hosts["dc"].events):
            if isinstance(ev, ResolveRequest):
                w.net.hosts["dc"].events.remove(ev)
                w.dc.resolution_result(ev.token, DiscoveryResult(ev.fqdn, Outcome.GENERAL_NODE, a=(ATTACKER[0],)),
                                       w.net.now)
        return any(rid in e.request_ids for e in w.net.events_of("mn", PathReady))

    w.net.run_until(ready, max_time=20)
    paths = w.mn.paths()
    assert len(paths) == 1 and paths[0]["endpoint"] == list(RS_EP)  # the DC's relay, not the attacker
    assert all(e.path_id != b"\x99" * 8 for e in w.rs.entries())
    added = w.net.events_of("rs", RelayAdded)[0]
    assert [m[2] for m in added.entry.nat_mappings()] == [ATTACKER[0]]  # only the GN address is spoofable
    assert w.mn.stats["tunnel_request_held"] == 1  # held briefly, never accepted
    assert GN != ATTACKER[0] and MN_PUB != ATTACKER


def test_recorded_registration_replayed_to_a_restarted_dc_is_rejected() -> None:
    w = World()
    request = next(d for d in w.net.sent_by["mn"] if d[1] == MessageType.REGISTRATION_REQUEST)
    assert w.store.get_client(w.mn_rec.client_id).last_seq > 0  # type: ignore[union-attr]
    # The DC restarts: a new core over the same (persisted) registry.
    from ntmobile.core.dc import ClientRegistered, DcConfig, DcCore

    dc2 = DcCore(DcConfig("a.example", DC_ID, rsn_allow=TEST_NETS), w.store, w.net.now, seq_base=10**15 + 10**9,
                 random_bytes=seeded_bytes(99))
    dc2.receive_datagram(request, MN_PUB, w.net.now)
    assert dc2.stats["drop_replay"] == 1
    assert dc2.datagrams_to_send() == []
    assert not any(isinstance(e, ClientRegistered) for e in iter(dc2.next_event, None))
    assert dc2.sessions() == []


def test_registration_flood_with_a_known_id_costs_no_state_and_no_reply() -> None:
    """Forged Registration Requests naming an enrolled ID (but sealed under other keys) are dropped
    by the AEAD check: no X25519, no session, no reply, nothing stored."""
    w = World()
    request = next(d for d in w.net.sent_by["mn"] if d[1] == MessageType.REGISTRATION_REQUEST)
    header = request[:24]
    sessions = len(w.dc.sessions())
    last_seq = w.store.get_client(w.mn_rec.client_id).last_seq  # type: ignore[union-attr]
    for i in range(500):
        body = seeded_bytes(i)(len(request) - 24)
        forged = header[:16] + (2**62 + i).to_bytes(8, "big") + body
        w.dc.receive_datagram(forged, ("203.0.113.7", 1000 + i), w.net.now)
    assert w.dc.stats["drop_auth"] + w.dc.stats["drop_replay"] == 500
    assert w.dc.datagrams_to_send() == []
    assert len(w.dc.sessions()) == sessions
    assert w.store.get_client(w.mn_rec.client_id).last_seq == last_seq  # type: ignore[union-attr]
