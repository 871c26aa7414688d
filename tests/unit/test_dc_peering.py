"""Two DCs, their nodes and a relay, in memory: NAT classification by the DC's probes, the route
table, the authenticated DC-to-DC exchange (Peer Hello / Query / Answer) both ways, RS-S across NATs,
path reuse, and forged / replayed Peer Queries."""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from ntmobile.core.dc import (
    DcConfig,
    DcCore,
    DirectionDecision,
    PathRecord,
    ProbeDatagram,
    ResolveRequest,
    VerifyPeerDc,
    decide_route,
)
from ntmobile.core.discovery import DiscoveryResult, Evidence, Outcome
from ntmobile.core.dnsauth import DcMarker
from ntmobile.core.node import DataReceived, NodeConfig, NodeCore, PathFailed, PathReady
from ntmobile.core.registry import ClientRecord, MemoryStore, Pools
from ntmobile.core.rs import DcLink, RsConfig, RsCore
from ntmobile.crypto import x25519_public
from ntmobile.wire import MessageType, NatKind, PathMode, PathRole, Role, RsType, Status, parse_signal_header

from .harness import Net, seeded_bytes

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


# -- a network with NATs of the four kinds ------------------------------------------------------


@dataclass
class Nat:
    kind: str  # "cone" (port-restricted), "symmetric", "open" (one-to-one)
    public_ip: str
    lan: str  # prefix of the inside addresses, e.g. "10.1.0."
    mappings: dict[tuple[Endpoint, Endpoint | None], int] = field(default_factory=dict)
    allowed: dict[int, set[Endpoint]] = field(default_factory=dict)
    inside: dict[int, Endpoint] = field(default_factory=dict)
    next_port: int = 40000

    def outbound(self, src: Endpoint, dest: Endpoint) -> Endpoint:
        key = (src, dest if self.kind == "symmetric" else None)
        port = self.mappings.get(key)
        if port is None:
            if self.kind != "symmetric" and src[1] not in self.inside:
                port = src[1]  # port preserved (Linux masquerade when free; one-to-one always)
            else:
                self.next_port += 7
                port = self.next_port
            self.mappings[key] = port
            self.inside[port] = src
        self.allowed.setdefault(port, set()).add(dest)
        return (self.public_ip, port)

    def inbound(self, port: int, src: Endpoint) -> Endpoint | None:
        inner = self.inside.get(port)
        if inner is None:
            return None
        if self.kind == "open" or src in self.allowed.get(port, set()):
            return inner
        return None


class ProbeSocket:
    """The DC's probe socket as a harness host: datagrams go to DcCore.receive_probe; ProbeDatagram
    events of the DC are sent from here."""

    def __init__(self, dc: DcCore) -> None:
        self.dc = dc
        self.out: list[Any] = []

    def receive_datagram(self, data: bytes, addr: Endpoint, now: float) -> None:
        self.dc.receive_probe(data, addr, now)

    def datagrams_to_send(self) -> list[Any]:
        out, self.out = self.out, []
        return out

    def next_event(self) -> Any:
        return None

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        pass


@dataclass
class _Dg:
    data: bytes
    addr: Endpoint


class NatNet(Net):
    """Routes by address like harness.Net, with NATs: a host behind a NAT reaches the world through
    its mappings, is reached only as its NAT's filtering allows, and reaches hosts of its own LAN on
    their private addresses."""

    def __init__(self) -> None:
        super().__init__()
        self.nat_of: dict[str, Nat] = {}
        self.probe_of: dict[str, ProbeSocket] = {}
        self.filter_of: dict[str, ProbeSocket] = {}
        self.hooks: list[Callable[[str, Any], bool]] = []

    def pump_events(self) -> None:
        for h in self.hosts.values():
            while (ev := h.core.next_event()) is not None:
                if isinstance(ev, ProbeDatagram) and h.name in self.probe_of:
                    sockets = self.filter_of if ev.filter else self.probe_of
                    sockets[h.name].out.append(_Dg(ev.data, ev.addr))
                    continue
                if any(hook(h.name, ev) for hook in self.hooks):
                    continue
                h.events.append(ev)

    def step(self) -> bool:
        self.pump_events()
        moved = False
        for h in list(self.hosts.values()):
            for dg in h.core.datagrams_to_send():
                moved = True
                self.sent_by[h.name].append(dg.data)
                self._deliver(h.name, dg.data, dg.addr)
        self.pump_events()
        return moved

    def _deliver(self, src_name: str, data: bytes, dest: Endpoint) -> None:
        src_host = self.hosts[src_name]
        src_nat = self.nat_of.get(src_name)
        target = next((h for h in self.hosts.values() if h.addr == dest), None)
        if target is not None:
            dst_nat = self.nat_of.get(target.name)
            if dst_nat is not None and dst_nat is not src_nat:
                self.dropped += 1  # a private address of another network
                return
            src = src_host.addr if (src_nat is None or dst_nat is src_nat) else src_nat.outbound(src_host.addr, dest)
        else:
            nat = next((n for n in self.nat_of.values() if n.public_ip == dest[0]), None)
            src = src_host.addr if src_nat is None else src_nat.outbound(src_host.addr, dest)
            inner = nat.inbound(dest[1], src) if nat is not None else None
            target = next((h for h in self.hosts.values() if h.addr == inner), None) if inner else None
            if target is None:
                self.dropped += 1
                return
        if self.drop is not None and self.drop(src_name, target.name, data):
            self.dropped += 1
            return
        self.delivered += 1
        target.core.receive_datagram(data, src, self.now)


# -- the world ----------------------------------------------------------------------------------


NAT_ADDRS = {"a": ("10.1.0.", "192.0.2.100"), "b": ("10.2.0.", "192.0.2.101")}


class World:
    def __init__(self, a_nat: str = "cone", b_nat: str = "cone", *, same_nat: bool = False,
                 configured: bool = False) -> None:
        self.net = NatNet()
        self.store_a, self.store_b = MemoryStore(POOLS_A), MemoryStore(POOLS_B)
        self.mn_rec = ClientRecord(b"\x01" * 8, "mn.a.example", Role.NODE, b"\x11" * 32)
        self.cn_rec = ClientRecord(b"\x03" * 8, "cn.b.example", Role.NODE, b"\x33" * 32)
        self.rs_rec = ClientRecord(b"\x02" * 8, "rs1", Role.RELAY, b"\x22" * 32)
        self.store_a.add_client(self.mn_rec)
        self.store_b.add_client(self.cn_rec)
        self.store_a.add_client(self.rs_rec)
        self.store_b.add_client(ClientRecord(self.rs_rec.client_id, "rs1", Role.RELAY, b"\x44" * 32))
        self.dca = self._dc("dca", "a.example", DCA_ID, DCA_EP, DCA_PROBE, DCA_SECRET, self.store_a,
                            (("b.example", DCB_KEY),) if configured else (), 1)
        self.dcb = self._dc("dcb", "b.example", DCB_ID, DCB_EP, DCB_PROBE, DCB_SECRET, self.store_b,
                            (("a.example", DCA_KEY),) if configured else (), 2)
        self.rs = RsCore(RsConfig("rs1", self.rs_rec.client_id,
                                  [DcLink(DCA_ID, DCA_EP, self.rs_rec.psk), DcLink(DCB_ID, DCB_EP, b"\x44" * 32)],
                                  local_endpoints=[RS_EP]), self.net.now, seq_base=SEQ_BASE,
                         random_bytes=seeded_bytes(3))
        self.net.add("rs", self.rs, RS_EP)
        if same_nat:
            nat = Nat(a_nat, "192.0.2.100", "10.1.0.") if a_nat != "none" else None
            self.mn = self._node("mn", self.mn_rec, DCA_ID, DCA_EP, ("10.1.0.10", 7412), nat, 4)
            self.cn = self._node("cn", self.cn_rec, DCB_ID, DCB_EP, ("10.1.0.20", 7412), nat, 5)
        else:
            self.mn = self._node("mn", self.mn_rec, DCA_ID, DCA_EP, self._addr("a", a_nat), self._nat("a", a_nat), 4)
            self.cn = self._node("cn", self.cn_rec, DCB_ID, DCB_EP, self._addr("b", b_nat), self._nat("b", b_nat), 5)
        self.resolved: list[str] = []
        self.verify_answers: dict[str, bytes | None] = {"a.example": DCA_KEY, "b.example": DCB_KEY}
        self.net.hooks.append(self._service)
        self.rs.register(self.net.now)
        self.mn.register((self.net.hosts["mn"].addr,), self.net.now)
        self.cn.register((self.net.hosts["cn"].addr,), self.net.now)
        self.net.run_until(lambda: self.mn.registered and self.cn.registered and bool(self.dca.relays())
                           and bool(self.dcb.relays()))

    def _dc(self, host: str, domain: str, dc_id: bytes, ep: Endpoint, probe: Endpoint, secret: bytes,
            store: MemoryStore, peers: tuple[tuple[str, bytes], ...], seed: int) -> DcCore:
        dc = DcCore(DcConfig(domain, dc_id, secret=secret, peers=peers, probe=(probe,)), store, self.net.now,
                    seq_base=SEQ_BASE, random_bytes=seeded_bytes(seed * 100))
        ps = ProbeSocket(dc)
        self.net.add(host + "-probe", ps, probe)
        self.net.probe_of[host] = ps
        fs = ProbeSocket(dc)  # the filter socket only sends
        self.net.add(host + "-filter", fs, (probe[0], probe[1] + 1))
        self.net.filter_of[host] = fs
        self.net.add(host, dc, ep)
        return dc

    @staticmethod
    def _addr(side: str, kind: str) -> Endpoint:
        lan, _pub = NAT_ADDRS[side]
        return ("192.0.2.60" if side == "a" else "192.0.2.70", 7412) if kind == "none" else (lan + "10", 7412)

    @staticmethod
    def _nat(side: str, kind: str) -> Nat | None:
        lan, pub = NAT_ADDRS[side]
        return None if kind == "none" else Nat(kind, pub, lan)

    def _node(self, host: str, rec: ClientRecord, dc_id: bytes, dc_ep: Endpoint, addr: Endpoint, nat: Nat | None,
              seed: int) -> NodeCore:
        node = NodeCore(NodeConfig(rec.name, rec.client_id, rec.psk, dc_id, dc_ep), self.net.now, seq_base=SEQ_BASE,
                        random_bytes=seeded_bytes(seed))
        self.net.add(host, node, addr)
        if nat is not None:
            self.net.nat_of[host] = nat
        return node

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

    def connect(self, src: NodeCore, host: str, fqdn: str, max_time: float = 10.0) -> PathReady | PathFailed:
        rid = src.request_path(fqdn, self.net.now)

        def done() -> bool:
            return any(rid in e.request_ids for e in self.net.events_of(host, PathReady) + self.net.events_of(
                host, PathFailed))

        self.net.run_until(done, max_time=max_time)
        result: PathReady | PathFailed = next(
            e for e in self.net.events_of(host, PathReady) + self.net.events_of(host, PathFailed)
            if rid in e.request_ids)
        return result

    def exchange_data(self, path_id: bytes) -> None:
        """A packet each way on the path; both must arrive (end to end, also through RS-S)."""
        for sender, receiver in ((self.mn, "cn"), (self.cn, "mn")):
            before = len(self.net.events_of(receiver, DataReceived))
            pkt = ipv4_udp(b"hello from " + sender.config.name.encode())

            def known(s: NodeCore = sender) -> bool:
                info = s.path_info(path_id)
                return info is not None and info.endpoint is not None

            self.net.run_until(known, max_time=10)

            def arrived(r: str = receiver, n: int = before) -> bool:
                return len(self.net.events_of(r, DataReceived)) > n

            deadline = self.net.now + 10
            while not arrived() and self.net.now < deadline:
                sender.send_data(path_id, pkt, self.net.now)
                try:
                    self.net.run_until(arrived, max_time=0.5)
                except AssertionError:
                    pass
            assert arrived(), f"no data from {sender.config.name}"
            assert self.net.events_of(receiver, DataReceived)[-1].payload == pkt


def ipv4_udp(payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", 5000, 6000, 8 + len(payload), 0) + payload
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, b"\x64\x40\x01\x01",
                       b"\x64\x40\x02\x01") + udp


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
    (N, A4, S, B4, PathMode.RS_S, True),            # symmetric: relay
    (S, A4, OP, B4, PathMode.RS_S, True),
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
        entry = w.rs._paths[ready.path.path_id]
        assert entry.packets_i2r >= 1 and entry.packets_r2i >= 1
        assert entry.opener is None
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
