"""Two DCs, their nodes and a relay, in memory: NAT classification by the DC's probes, the route
table, the authenticated DC-to-DC exchange (Peer Hello / Query / Answer) both ways, RS-S across NATs,
path reuse, and forged / replayed Peer Queries."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from ntmobile.core.dc import (
    DcConfig,
    DcCore,
    DirectionDecision,
    PathRecord,
    ResolveRequest,
    VerifyPeerDc,
    decide_route,
)
from ntmobile.core.discovery import DiscoveryResult, Evidence, Outcome
from ntmobile.core.dnsauth import DcMarker
from ntmobile.core.node import DcProbed, NodeConfig, NodeCore, PathFailed, PathReady
from ntmobile.core.registry import ClientRecord, MemoryStore, Pools
from ntmobile.core.rs import DcLink, RsConfig, RssEntry
from ntmobile.crypto import x25519_public
from ntmobile.wire import MessageType, NatKind, PathMode, PathRole, Role, RsType, Status, parse_signal_header

from . import harness
from .harness import Nat, NatNet, ipv4_udp, seeded_bytes

Endpoint = tuple[str, int]

DCA_ID, DCB_ID = bytes.fromhex("dca0000000000001"), bytes.fromhex("dcb0000000000002")
DCA_EP, DCB_EP = ("192.0.2.10", 7410), ("192.0.2.11", 7410)
DCA_PROBE, DCB_PROBE = ("192.0.2.10", 7413), ("192.0.2.11", 7413)
DCA_SECRET, DCB_SECRET = b"\x0a" * 32, b"\x0b" * 32
DCA_KEY, DCB_KEY = x25519_public(DCA_SECRET), x25519_public(DCB_SECRET)
RS_EP = ("192.0.2.20", 7411)
POOLS_A = Pools("100.64.1.0/24", "fd00:6e74:1::/64", "100.127.0.0/16", "fd00:6e74:ff::/64")
POOLS_B = Pools("100.64.2.0/24", "fd00:6e74:2::/64", "100.127.0.0/16", "fd00:6e74:ff::/64")
SEQ_BASE = 1_800_000_000_000_000  # wall clock in µs at the simulated start


# -- the world ----------------------------------------------------------------------------------


NAT_ADDRS = {"a": ("10.1.0.", "192.0.2.100"), "b": ("10.2.0.", "192.0.2.101")}


class World(harness.World):
    """Two DCs (a.example, b.example) with probe sockets, a relay serving both, and a node of each,
    in a NatNet world (harness.World): each node behind a NAT of the kind given ("none": global)."""

    def __init__(self, a_nat: str = "cone", b_nat: str = "cone", *, same_nat: bool = False,
                 configured: bool = False, traversal: bool = False) -> None:
        super().__init__(nat=True, seq_base=SEQ_BASE)
        self.store_a, self.store_b = MemoryStore(POOLS_A), MemoryStore(POOLS_B)
        self.mn_rec = ClientRecord(b"\x01" * 8, "mn.a.example", Role.NODE, b"\x11" * 32)
        self.cn_rec = ClientRecord(b"\x03" * 8, "cn.b.example", Role.NODE, b"\x33" * 32)
        self.rs_rec = ClientRecord(b"\x02" * 8, "rs1", Role.RELAY, b"\x22" * 32)
        self.store_a.add_client(self.mn_rec)
        self.store_b.add_client(self.cn_rec)
        self.store_a.add_client(self.rs_rec)
        self.store_b.add_client(ClientRecord(self.rs_rec.client_id, "rs1", Role.RELAY, b"\x44" * 32))
        for host, domain, dc_id, ep, probe, secret, store, peer, seed in (
                ("dca", "a.example", DCA_ID, DCA_EP, DCA_PROBE, DCA_SECRET, self.store_a, ("b.example", DCB_KEY), 1),
                ("dcb", "b.example", DCB_ID, DCB_EP, DCB_PROBE, DCB_SECRET, self.store_b, ("a.example", DCA_KEY), 2)):
            self.add_dc(host, DcConfig(domain, dc_id, secret=secret, peers=(peer,) if configured else (),
                                       probe=(probe,), traversal=traversal), store, ep, seed=seed * 100)
        self.add_relay("rs", RsConfig("rs1", self.rs_rec.client_id,
                                      [DcLink(DCA_ID, DCA_EP, self.rs_rec.psk), DcLink(DCB_ID, DCB_EP, b"\x44" * 32)],
                                      local_endpoints=[RS_EP]), RS_EP, seed=3)
        if same_nat:
            nat = Nat(a_nat, "192.0.2.100", "10.1.0.") if a_nat != "none" else None
            places = ((("10.1.0.10", 7412), nat), (("10.1.0.20", 7412), nat))
        else:
            places = ((self._addr("a", a_nat), self._nat("a", a_nat)), (self._addr("b", b_nat), self._nat("b", b_nat)))
        for (host, rec, dc_id, dc_ep, seed), (addr, nat) in zip(
                (("mn", self.mn_rec, DCA_ID, DCA_EP, 4), ("cn", self.cn_rec, DCB_ID, DCB_EP, 5)), places, strict=True):
            self.add_node(host, NodeConfig(rec.name, rec.client_id, rec.psk, dc_id, dc_ep), addr, nat=nat, seed=seed)
        self.resolved: list[str] = []
        self.verify_answers: dict[str, bytes | None] = {"a.example": DCA_KEY, "b.example": DCB_KEY}
        assert isinstance(self.net, NatNet)
        self.net.hooks.append(self._service)
        self.rs.register(self.net.now)
        self.mn.register((self.net.hosts["mn"].addr,), self.net.now)
        self.cn.register((self.net.hosts["cn"].addr,), self.net.now)
        self.net.run_until(lambda: self.mn.registered and self.cn.registered and bool(self.dca.relays())
                           and bool(self.dcb.relays()))

    @staticmethod
    def _addr(side: str, kind: str) -> Endpoint:
        lan, _pub = NAT_ADDRS[side]
        return ("192.0.2.60" if side == "a" else "192.0.2.70", 7412) if kind == "none" else (lan + "10", 7412)

    @staticmethod
    def _nat(side: str, kind: str) -> Nat | None:
        lan, pub = NAT_ADDRS[side]
        return None if kind == "none" else Nat(kind, pub, lan)

    def _service(self, host: str, ev: Any) -> bool:
        """What the DC runtimes do: DNS discovery (the other domain is an NTM peer with the marker of its
        DC) and the marker look-up that verifies a hello."""
        dc = {"dca": self.dca, "dcb": self.dcb}.get(host)
        if dc is None:
            return False
        if isinstance(ev, ResolveRequest):
            self.resolved.append(ev.fqdn)
            marker = {"b.example": (DCB_EP, DCB_KEY), "a.example": (DCA_EP, DCA_KEY)}
            zone = next(z for z in marker if ev.fqdn.endswith("." + z))
            ep, key = marker[zone]
            dc.resolution_result(ev.token, DiscoveryResult(ev.fqdn, Outcome.NTM_PEER, marker=DcMarker(*ep, key),
                                                           evidence=Evidence((f"DC marker at {zone}",))), self.net.now)
            return True
        if isinstance(ev, VerifyPeerDc):
            dc.peer_dc_verified(ev.token, self.verify_answers.get(ev.domain), self.net.now)
            return True
        return False

    def exchange_data(self, path_id: bytes) -> None:
        """A packet each way on the path; both must arrive (end to end, also through RS-S)."""
        for sender, host, receiver in ((self.mn, "mn", "cn"), (self.cn, "cn", "mn")):
            before = len(self.received(receiver))

            def known(s: NodeCore = sender) -> bool:
                info = s.path_info(path_id)
                return info is not None and info.endpoint is not None

            self.net.run_until(known, max_time=10)
            info, reg = sender.path_info(path_id), sender.registration
            assert info is not None and info.peer_vip4 and reg is not None and reg.vip4
            pkt = ipv4_udp(reg.vip4, info.peer_vip4, b"hello from " + sender.config.name.encode())

            def arrived(r: str = receiver, n: int = before) -> bool:
                return len(self.received(r)) > n

            deadline = self.net.now + 10
            while not arrived() and self.net.now < deadline:
                self.send_ip(host, pkt)
                try:
                    self.net.run_until(arrived, max_time=0.5)
                except AssertionError:
                    pass
            assert arrived(), f"no data from {sender.config.name}"
            assert self.received(receiver)[-1] == pkt


# -- the route table ----------------------------------------------------------------------------

N, OP, C, S, U = NatKind.NONE, NatKind.OPEN, NatKind.CONE, NatKind.SYMMETRIC, NatKind.NAT
A4, B4, SAME4, A6 = ("192.0.2.60", 7412), ("192.0.2.70", 7412), ("192.0.2.100", 40000), ("2001:db8:1::60", 7412)


@pytest.mark.parametrize(("a", "a_ep", "b", "b_ep", "mode", "a_initiates"), [
    (N, A4, N, B4, PathMode.DIRECT, True),          # both global
    (N, A4, C, B4, PathMode.DIRECT, False),         # only the peer behind a NAT: it initiates
    (C, A4, N, B4, PathMode.DIRECT, True),          # only the requester behind a NAT: it initiates
    (U, A4, N, B4, PathMode.DIRECT, True),          # unclassified NAT counts as cone
    (OP, A4, C, B4, PathMode.DIRECT, False),         # one-to-one is reachable like a global host
    (C, A4, OP, B4, PathMode.DIRECT, True),
    (OP, A4, OP, B4, PathMode.DIRECT, True),
    (OP, A4, N, B4, PathMode.DIRECT, True),
    (C, A4, C, B4, PathMode.RS_S, True),            # both behind different NATs
    (N, A4, S, B4, PathMode.DIRECT, False),         # symmetric toward a reachable end: the NAT side initiates
    (S, A4, OP, B4, PathMode.DIRECT, True),
    (S, A4, S, B4, PathMode.RS_S, True),
    (C, SAME4, C, SAME4, PathMode.DIRECT, True),    # same NAT: direct on private addresses
    (S, SAME4, S, SAME4, PathMode.DIRECT, True),    # ... whatever its type
    (N, A4, N, A6, PathMode.RS_S, True),            # IPv4 / IPv6 mismatch: relay
    (OP, A6, C, B4, PathMode.RS_S, True),
])
def test_route_table(a: NatKind, a_ep: Endpoint, b: NatKind, b_ep: Endpoint, mode: PathMode,
                     a_initiates: bool) -> None:
    assert decide_route(a, a_ep, b, b_ep) == (mode, a_initiates)


# -- NAT classification ------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "expected"), [
    ("none", NatKind.NONE), ("cone", NatKind.CONE), ("symmetric", NatKind.SYMMETRIC), ("open", NatKind.OPEN)])
def test_nat_classification_by_probes(kind: str, expected: NatKind) -> None:
    w = World(kind, "none")
    w.net.run_until(lambda: any(s["name"] == "mn.a.example" and s["nat_class"] == expected.name
                                for s in w.dca.sessions()), max_time=5)
    if kind == "none":
        assert w.dca.stats["nat_filter_probes"] == 0
    else:
        assert w.dca.stats["nat_mapping_probes"] >= 1
    # The node learns the class from the DC's answer to its next session Keepalive (`ntm netcheck`
    # sends one): the registration itself only says NONE or NAT.
    assert w.mn.nat_class is None or w.mn.nat_class is expected
    probe = w.mn.probe_dc(w.net.now)
    w.net.run_until(lambda: any(e.probe_id == probe for e in w.net.events_of("mn", DcProbed)), max_time=5)
    assert w.mn.nat_class is expected


# -- DC to DC: the grid -------------------------------------------------------------------------

KINDS = ["none", "cone", "symmetric", "open"]
CLASS = {"none": N, "cone": C, "symmetric": S, "open": OP}


@pytest.mark.parametrize(("a_nat", "b_nat"), list(itertools.product(KINDS, KINDS)))
def test_peer_dc_grid(a_nat: str, b_nat: str) -> None:
    w = World(a_nat, b_nat)
    w.net.run_until(lambda: {s["nat_class"] for s in w.dca.sessions() if s["name"] == "mn.a.example"}
                    == {CLASS[a_nat].name} and {s["nat_class"] for s in w.dcb.sessions()
                                                if s["name"] == "cn.b.example"} == {CLASS[b_nat].name}, max_time=5)
    mode, mn_initiates = decide_route(CLASS[a_nat], ("192.0.2.1", 1), CLASS[b_nat], ("192.0.2.2", 1))
    ready = w.connect(w.mn, "mn", "cn.b.example")
    assert isinstance(ready, PathReady), ready
    assert ready.path.mode is mode
    assert ready.path.role is (PathRole.INITIATOR if mn_initiates else PathRole.RESPONDER)
    assert ready.path.peer_name == "cn.b.example"
    assert ready.path.peer_vip4 == w.store_b.get_client(w.cn_rec.client_id).vip4  # type: ignore[union-attr]
    if mode is PathMode.RS_S:
        assert ready.path.rs_name == "rs1" and ready.path.endpoint == RS_EP
    # cn's side of the same path, with the opposite role
    cn_path = w.cn.path_info(ready.path.path_id)
    assert cn_path is not None and cn_path.mode is mode and cn_path.role is not ready.path.role
    w.exchange_data(ready.path.path_id)
    # the RS-S relayed both directions by Path ID, holding no key that opens the capsules
    if mode is PathMode.RS_S:
        entry = w.rs.entry(ready.path.path_id)
        assert entry is not None and entry.packets_i2r >= 1 and entry.packets_r2i >= 1
        assert isinstance(entry, RssEntry) and not hasattr(entry, "opener")
    decisions = [e for e in w.net.events_of("dcb", DirectionDecision) if e.status is Status.OK]
    assert decisions and decisions[-1].mode is mode


def test_both_nodes_behind_the_same_nat_talk_directly_on_private_addresses() -> None:
    w = World("cone", "cone", same_nat=True)
    ready = w.connect(w.mn, "mn", "cn.b.example")
    assert isinstance(ready, PathReady) and ready.path.mode is PathMode.DIRECT
    assert ready.path.endpoint == ("10.1.0.20", 7412)
    w.exchange_data(ready.path.path_id)


def test_either_side_initiates_and_a_second_connection_reuses_the_path() -> None:
    w = World("cone", "none")
    first = w.connect(w.cn, "cn", "mn.a.example")  # from b.example's side this time
    assert isinstance(first, PathReady) and first.path.mode is PathMode.DIRECT
    queries = w.dcb.stats["peer_queries_sent"]
    assert queries == 1 and w.dca.stats["peer_queries"] == 1
    again = w.connect(w.cn, "cn", "mn.a.example")
    assert isinstance(again, PathReady) and again.path.path_id == first.path.path_id
    reverse = w.connect(w.mn, "mn", "cn.b.example")
    assert isinstance(reverse, PathReady) and reverse.path.path_id == first.path.path_id
    assert w.dcb.stats["peer_queries_sent"] == queries and w.dca.stats["peer_queries_sent"] == 0
    w.exchange_data(first.path.path_id)


def test_configured_peer_keys_need_no_dns_verification() -> None:
    w = World("cone", "cone", configured=True)
    w.verify_answers.clear()  # any marker look-up would now fail
    ready = w.connect(w.mn, "mn", "cn.b.example")
    assert isinstance(ready, PathReady) and ready.path.mode is PathMode.RS_S
    assert w.dcb.stats["peer_verified"] >= 1
    assert not any(isinstance(e, VerifyPeerDc) for e in w.net.hosts["dcb"].events)


def test_a_hello_whose_key_the_domain_marker_does_not_name_is_not_trusted() -> None:
    w = World("cone", "none")
    w.verify_answers["a.example"] = b"\x77" * 32  # the marker names another key (spoofed hello or DNS)
    result = w.connect(w.mn, "mn", "cn.b.example")
    assert isinstance(result, PathFailed) and result.status is Status.PEER_UNREACHABLE
    assert w.dcb.stats["peer_unverified"] == 1 and w.dcb.stats["peer_queries"] == 0
    assert not w.cn.paths()


def test_configured_key_overrides_a_spoofed_marker() -> None:
    w = World("cone", "none", configured=True)

    def spoof(host: str, ev: Any) -> bool:
        if host == "dca" and isinstance(ev, ResolveRequest):
            w.dca.resolution_result(ev.token, DiscoveryResult(ev.fqdn, Outcome.NTM_PEER,
                                                                    marker=DcMarker(*DCB_EP, b"\x55" * 32)),
                                    w.net.now)
            return True
        return False

    w.net.hooks.insert(0, spoof)
    result = w.connect(w.mn, "mn", "cn.b.example")
    assert isinstance(result, PathFailed) and result.status is Status.PEER_UNREACHABLE
    assert "configured" in result.reason


def _marker_gone(w: World, host: str, dc: DcCore) -> Callable[[str, Any], bool]:
    """A hook: the peer's zone lost its marker (removed, or DNS spoofed): discovery finds a general node."""

    def hook(h: str, ev: Any) -> bool:
        if h == host and isinstance(ev, ResolveRequest):
            dc.resolution_result(ev.token, DiscoveryResult(ev.fqdn, Outcome.GENERAL_NODE, a=("192.0.2.70",)),
                                 w.net.now)
            return True
        return False

    return hook


def test_a_configured_peer_domain_without_its_marker_fails_the_direction_never_a_clear_rs_n_path() -> None:
    w = World("cone", "none", configured=True)
    w.net.hooks.insert(0, _marker_gone(w, "dca", w.dca))
    result = w.connect(w.mn, "mn", "cn.b.example")
    assert isinstance(result, PathFailed) and result.status is Status.PEER_UNREACHABLE
    assert "no DC marker" in result.reason
    assert w.dca.stats["direction_peer_marker_missing"] == 1
    assert not w.rs.entries() and not w.mn.paths()  # no Relay Direction, no general-node path
    assert not any(r.mode is PathMode.RS_N for r in w.dca.paths.values())
    # a name outside every configured peer domain is still a general node
    assert w.dca.peering.configured_key("www.c.example") is None


def test_a_redirected_ntm_peer_path_whose_marker_is_gone_is_not_made_a_general_node_path() -> None:
    w = World("cone", "cone")
    ready = w.connect(w.mn, "mn", "cn.b.example")
    assert isinstance(ready, PathReady) and ready.path.mode is PathMode.RS_S
    w.net.hooks.insert(0, _marker_gone(w, "dca", w.dca))
    t = w.net.now
    w.net.run_until(lambda: w.net.now >= t + 1.0)
    w.net.hosts["mn"].addr = ("192.0.2.60", 7412)  # mn goes global: its DC re-directs the path
    w.net.nat_of.pop("mn", None)
    decided = len(w.net.events_of("dca", DirectionDecision))
    w.mn.addresses_changed((("192.0.2.60", 7412),), w.net.now)
    w.net.run_until(lambda: len(w.net.events_of("dca", DirectionDecision)) > decided, max_time=10)
    decision = w.net.events_of("dca", DirectionDecision)[decided]
    assert decision.status is Status.PEER_UNREACHABLE and w.dca.stats["direction_peer_marker_missing"] == 1
    assert not any(r.mode is PathMode.RS_N for r in w.dca.paths.values())
    assert all(e.rs_type is not RsType.N for e in w.rs.entries())


def test_forged_and_replayed_peer_queries_are_rejected() -> None:
    w = World("cone", "none")
    ready = w.connect(w.mn, "mn", "cn.b.example")
    assert isinstance(ready, PathReady)
    sent = [d for d in w.net.sent_by["dca"] if parse_signal_header(d).type is MessageType.PEER_QUERY]
    hellos = [d for d in w.net.sent_by["dca"] if d[1] == MessageType.PEER_HELLO]
    assert sent and hellos
    query = sent[0]
    routes_before = w.cn.stats["path_keepalives"], len(w.cn.paths())
    # 1. replay of the captured query: the channel's replay window drops it
    w.dcb.receive_datagram(query, DCA_EP, w.net.now)
    assert w.dcb.stats["drop_replay"] == 1
    # 2. a forged query (new sequence number, so not a replay; flipped body bit) does not authenticate
    forged = bytearray(query)
    forged[16:24] = (int.from_bytes(query[16:24], "big") + 1000).to_bytes(8, "big")
    forged[-20] ^= 1
    w.dcb.receive_datagram(bytes(forged), DCA_EP, w.net.now)
    assert w.dcb.stats["drop_auth"] == 1
    # 3. a replay to a restarted DC (empty replay window), after the 30 s skew: STALE
    w.net.now += 31
    fresh = DcCore(DcConfig("b.example", DCB_ID, secret=DCB_SECRET, probe=(DCB_PROBE,)), w.store_b, w.net.now,
                   seq_base=SEQ_BASE + 31_000_000, random_bytes=seeded_bytes(9))
    fresh.receive_datagram(hellos[0], DCA_EP, w.net.now)
    verify = [e for e in iter(fresh.next_event, None) if isinstance(e, VerifyPeerDc)]
    assert verify
    fresh.peer_dc_verified(verify[0].token, DCA_KEY, w.net.now)
    fresh.datagrams_to_send()
    fresh.receive_datagram(query, DCA_EP, w.net.now)
    assert fresh.stats["peer_queries_refused"] == 1 and fresh.stats["peer_queries"] == 0
    out = fresh.datagrams_to_send()
    assert [parse_signal_header(d.data).status for d in out] == [Status.STALE]
    assert (w.cn.stats["path_keepalives"], len(w.cn.paths())) == routes_before


def test_an_unverified_sender_cannot_name_requesters_of_another_domain() -> None:
    """A DC verified for a.example asks for a requester in c.example: NOT_AUTHORIZED."""
    w = World("cone", "none")
    ready = w.connect(w.mn, "mn", "cn.b.example")
    assert isinstance(ready, PathReady)
    w.store_a.add_client(ClientRecord(b"\x05" * 8, "x.c.example", Role.NODE, b"\x55" * 32))
    dca = w.dca
    dca.config = DcConfig("a.example", DCA_ID, extra_domains=("c.example",), secret=DCA_SECRET, probe=(DCA_PROBE,))
    x = NodeCore(NodeConfig("x.c.example", b"\x05" * 8, b"\x55" * 32, DCA_ID, DCA_EP), w.net.now, seq_base=SEQ_BASE,
                 random_bytes=seeded_bytes(11))
    w.net.add("x", x, ("192.0.2.80", 7412))
    x.register((("192.0.2.80", 7412),), w.net.now)
    w.net.run_until(lambda: x.registered)
    result = w.connect(x, "x", "cn.b.example")
    assert isinstance(result, PathFailed) and result.status is Status.NOT_AUTHORIZED


def test_path_id_in_use_at_the_peer_dc_is_retried_with_a_new_one() -> None:
    w = World("cone", "none")
    ids = iter([b"\x99" * 8])
    original = w.dca.path_table.new_path_id

    def first_collides() -> bytes:
        return next(ids, None) or original()

    w.dca.path_table.new_path_id = first_collides  # type: ignore[method-assign]
    w.dcb.paths[b"\x99" * 8] = PathRecord(b"\x99" * 8, "other", "other", PathMode.DIRECT, None, w.net.now)
    ready = w.connect(w.mn, "mn", "cn.b.example")
    assert isinstance(ready, PathReady) and ready.path.path_id != b"\x99" * 8
    assert w.dca.stats["peer_queries_sent"] == 2
    decision = [e for e in w.net.events_of("dca", DirectionDecision) if e.status is Status.OK][-1]
    assert any("in use" in line for line in decision.evidence)


def test_peer_dc_that_does_not_answer_fails_the_direction() -> None:
    w = World("cone", "none")
    w.net.drop = lambda src, dst, data: dst == "dcb"
    result = w.connect(w.mn, "mn", "cn.b.example")
    assert isinstance(result, PathFailed) and result.status is Status.PEER_UNREACHABLE


def test_hellos_with_unverifiable_keys_do_not_accumulate() -> None:
    """Peer Hellos are unauthenticated: keys nothing vouches for are forgotten, and at most
    PEER_UNVERIFIED_MAX wait for their check at a time."""
    from ntmobile.core.dc import PEER_UNVERIFIED_MAX
    from ntmobile.wire import PeerHello, pack_peer_hello

    w = World("cone", "none")
    dcb = w.dcb
    tokens = []
    for i in range(PEER_UNVERIFIED_MAX + 10):
        key = x25519_public(i.to_bytes(2, "big") * 16)
        w.net.now += 0.05  # (within the global hello rate; one source network each: no per-prefix limit)
        dcb.receive_datagram(pack_peer_hello(bytes([0xEE, i >> 8, i & 0xFF]) + bytes(5), 1,
                                             PeerHello(domain="evil.example", key=key)),
                             (f"10.{i >> 8}.{i & 255}.9", 7410), w.net.now)
        tokens += [e.token for e in iter(dcb.next_event, None) if isinstance(e, VerifyPeerDc)]
    assert len(tokens) == PEER_UNVERIFIED_MAX
    assert dcb.stats["drop_peer_hello_unverified_full"] == 10
    for t in tokens:
        dcb.peer_dc_verified(t, None, w.net.now)  # no marker vouches for any of them
    assert len(dcb.peering.by_key) <= 1  # only keys that are trusted or verified remain
    ready = w.connect(w.mn, "mn", "cn.b.example")  # the real peer DC still gets through
    assert isinstance(ready, PathReady)


def _drop_route_acks(w: World, sender: str) -> None:
    w.net.drop = lambda src, dst, data: src == sender and len(data) > 1 and data[1] == MessageType.ROUTE_DIRECTION_ACK


def test_a_direct_path_is_answered_beside_the_responders_route_direction_not_after_its_ack() -> None:
    """Issue 21: DIRECT needs no wait for the responder's Ack (it holds an early Tunnel Request), so
    the answer saves a round trip; a responder that never acks is counted, the initiator's tunnel
    exchange decides."""
    w = World("cone", "none")
    _drop_route_acks(w, "cn")
    ready = w.connect(w.mn, "mn", "cn.b.example")
    assert isinstance(ready, PathReady) and ready.path.mode is PathMode.DIRECT
    w.net.run_for(3.0)  # past ROUTE_DIRECTION_TIMEOUT
    assert w.dcb.stats["route_directions_unacked"] == 1 and w.dcb.stats["peer_queries"] == 1
    w.exchange_data(ready.path.path_id)


def test_a_relayed_path_still_waits_for_the_responders_ack() -> None:
    w = World("cone", "cone")
    _drop_route_acks(w, "cn")
    result = w.connect(w.mn, "mn", "cn.b.example")
    assert isinstance(result, PathFailed) and result.status is Status.PEER_UNREACHABLE
    assert w.dcb.stats["route_directions_unacked"] == 0
