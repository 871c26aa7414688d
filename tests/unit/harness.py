"""The in-memory test harness: a network that routes datagrams between sans-IO cores by address
(injected clock, NAT as fixed mappings or as NATs of four kinds, programmable loss), and the
``World`` of real node, DC and relay cores on it. A node host carries the daemon's own data path, a
``NodeForwarder`` over an in-memory TUN and UDP (``dataplane.memory``): data capsules go to it, as the
daemon's socket reader sends them, and it follows the core's path events. No sockets."""

from __future__ import annotations

import random
import struct
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ntmobile.core.dc import DcConfig, DcCore, ProbeDatagram, ResolveRequest
from ntmobile.core.discovery import DiscoveryResult, Evidence, Outcome
from ntmobile.core.node import NodeConfig, NodeCore, PathFailed, PathReady
from ntmobile.core.registry import ClientRecord, MemoryStore, Pools
from ntmobile.core.rs import DcLink, ProbeRequest, RsConfig, RsCore
from ntmobile.core.targets import DOCUMENTATION_NETS
from ntmobile.dataplane.forwarder import NodeForwarder
from ntmobile.dataplane.memory import MemoryNode, MemoryTun
from ntmobile.wire import Role

Endpoint = tuple[str, int]

#: The harness's "internet" is documentation space (RFC 5737, RFC 3849), which an RS-N refuses by
#: default (docs/security.md, "RS-N targets"): the DCs and relays of the tests allow-list it, as the
#: lab's configs do.
TEST_NETS = DOCUMENTATION_NETS


def ipv4_udp(src: str, dst: str, payload: bytes) -> bytes:
    """An IPv4/UDP packet from ``src`` to ``dst`` (what an application would write to the TUN)."""
    s = bytes(int(x) for x in src.split("."))
    d = bytes(int(x) for x in dst.split("."))
    udp = struct.pack("!HHHH", 5000, 6000, 8 + len(payload), 0) + payload
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, s, d) + udp


class SansIO(Protocol):
    def receive_datagram(self, data: bytes, addr: Endpoint, now: float) -> None: ...
    def datagrams_to_send(self) -> list[Any]: ...
    def next_event(self) -> Any: ...
    def get_timer(self) -> float | None: ...
    def handle_timer(self, now: float) -> None: ...


@dataclass
class Host:
    name: str
    core: SansIO
    addr: Endpoint
    public: Endpoint | None = None  # NAT mapping: what the world sees
    events: list[Any] = field(default_factory=list)
    #: A node's data path (``attach_dataplane``): the daemon's forwarder over an in-memory TUN and UDP.
    dp: MemoryNode | None = None

    @property
    def fwd(self) -> NodeForwarder | None:
        return self.dp.fwd if self.dp is not None else None

    @property
    def tun(self) -> MemoryTun | None:
        return self.dp.tun if self.dp is not None else None

    def follow(self, ev: Any) -> None:
        if self.dp is not None:
            self.dp.fwd.follow(ev)


@dataclass
class Net:
    now: float = 1000.0
    hosts: dict[str, Host] = field(default_factory=dict)
    drop: Callable[[str, str, bytes], bool] | None = None
    delivered: int = 0
    dropped: int = 0
    log: list[tuple[float, str, str, int]] = field(default_factory=list)
    sent_by: dict[str, list[bytes]] = field(default_factory=lambda: defaultdict(list))

    def add(self, name: str, core: SansIO, addr: Endpoint, public: Endpoint | None = None) -> Host:
        h = Host(name, core, addr, public)
        self.hosts[name] = h
        return h

    def _by_dest(self, dest: Endpoint) -> Host | None:
        for h in self.hosts.values():
            if dest in (h.addr, h.public):
                return h
        return None

    def attach_dataplane(self, name: str, node: NodeCore, *, vnet_hdr: bool = False) -> Host:
        """Give node host ``name`` the daemon's data path: a NodeForwarder on an in-memory TUN (offload
        mode with ``vnet_hdr``) and UDP, whose address learning reaches the core as the daemon's does."""
        h = self.hosts[name]
        h.dp = MemoryNode(node, vnet_hdr=vnet_hdr)
        return h

    def pump_events(self) -> None:
        for h in self.hosts.values():
            while (ev := h.core.next_event()) is not None:
                h.follow(ev)
                h.events.append(ev)

    def step(self) -> bool:
        """Deliver every queued datagram once (the cores' and the forwarders'). Returns True if anything
        moved."""
        self.pump_events()
        moved = False
        for h in list(self.hosts.values()):
            out = [(dg.data, dg.addr) for dg in h.core.datagrams_to_send()]
            if h.dp is not None:
                out += h.dp.udp.take()
            for data, addr in out:
                moved = True
                self.sent_by[h.name].append(data)
                self._deliver(h.name, data, addr)
        self.pump_events()
        return moved

    def receive(self, target: Host, data: bytes, src: Endpoint) -> None:
        """``data`` reaches ``target`` from ``src``: a data capsule goes to its forwarder (as the daemon's
        socket reader hands it over), anything else to its core."""
        if target.dp is not None:
            target.dp.receive_datagram(data, src, self.now)
        else:
            target.core.receive_datagram(data, src, self.now)

    def send_ip(self, name: str, packet: bytes) -> None:
        """An application on node host ``name`` sends an IP packet: it enters the forwarder from the TUN."""
        dp = self.hosts[name].dp
        assert dp is not None, f"{name} has no data path"
        dp.send_ip(packet)

    def received(self, name: str) -> list[bytes]:
        """The IP packets node host ``name``'s forwarder wrote to its TUN, in order."""
        tun = self.hosts[name].tun
        assert tun is not None, f"{name} has no data path"
        return tun.packets()

    def _deliver(self, src_name: str, data: bytes, dest_addr: Endpoint) -> None:
        h = self.hosts[src_name]
        dest = self._by_dest(dest_addr)
        if dest is None:
            self.dropped += 1
            return
        if self.drop is not None and self.drop(h.name, dest.name, data):
            self.dropped += 1
            return
        src = h.public or h.addr
        self.log.append((self.now, h.name, dest.name, len(data)))
        self.delivered += 1
        self.receive(dest, data, src)

    def run_until(self, cond: Callable[[], bool], *, max_time: float = 60.0) -> None:
        """Run (delivering datagrams, firing timers in time order) until ``cond()`` or ``max_time``
        of simulated time has passed; AssertionError on timeout."""
        deadline = self.now + max_time
        while True:
            while self.step():
                if cond():
                    return
            if cond():
                return
            timers = [t for h in self.hosts.values() if (t := h.core.get_timer()) is not None]
            if not timers:
                raise AssertionError("no datagrams in flight and no timers: the exchange is stuck")
            nxt = max(min(timers), self.now)
            if nxt > deadline:
                raise AssertionError(f"condition not met within {max_time} s of simulated time")
            self.now = nxt
            for h in self.hosts.values():
                t = h.core.get_timer()
                if t is not None and t <= self.now:
                    h.core.handle_timer(self.now)

    def run_for(self, seconds: float) -> None:
        """Let ``seconds`` of simulated time pass, delivering datagrams and firing timers."""
        end = self.now + seconds
        while True:
            while self.step():
                pass
            timers = [t for h in self.hosts.values() if (t := h.core.get_timer()) is not None]
            nxt = min(timers) if timers else None
            if nxt is None or nxt > end:
                self.now = end
                return
            self.now = max(nxt, self.now)
            for h in self.hosts.values():
                t = h.core.get_timer()
                if t is not None and t <= self.now:
                    h.core.handle_timer(self.now)

    def events_of(self, name: str, cls: type) -> list[Any]:
        return [e for e in self.hosts[name].events if isinstance(e, cls)]


def random_loss(rate: float, seed: int) -> Callable[[str, str, bytes], bool]:
    rng = random.Random(seed)
    return lambda src, dst, data: rng.random() < rate


def seeded_bytes(seed: int) -> Callable[[int], bytes]:
    rng = random.Random(seed)
    return lambda n: rng.randbytes(n)


# -- NATs ----------------------------------------------------------------------------------------


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
    """Routes by address like Net, with NATs: a host behind a NAT reaches the world through its
    mappings, is reached only as its NAT's filtering allows, and reaches hosts of its own LAN on
    their private addresses. A DC's ProbeDatagram events leave from its probe sockets; ``hooks``
    may consume events (what a runtime would do with them)."""

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
                h.follow(ev)
                if any(hook(h.name, ev) for hook in self.hooks):
                    continue
                h.events.append(ev)

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
        self.receive(target, data, src)


# -- worlds ------------------------------------------------------------------------------------------

#: The one-DC world's DC and relay.
WORLD_DC_EP = ("192.0.2.10", 7410)
WORLD_RS_EP = ("192.0.2.20", 7411)
WORLD_POOLS = Pools("100.64.1.0/24", "fd00:6e74:1::/64", "100.127.0.0/16", "fd00:6e74:ff::/64")
#: Where the one-DC world's general nodes are (the DC's DNS discovery, played by ``answer_requests``).
WORLD_GN = "192.0.2.40"


class World:
    """The real node, DC and relay cores on one in-memory network, with what their runtimes would do
    played here (the DC's DNS discovery of a general node, the relay's distance probe).

    Options: ``dc_id`` builds the one-DC world (DC ``dc`` of a.example, relay ``rs``, registered;
    nodes added with ``node``); ``nat`` routes through NATs (``NatNet``: add hosts behind a ``Nat``,
    DCs with probe sockets); ``loss`` drops that share of every datagram (seeded by ``seed``, which
    also seeds the cores' randomness). Cores are reachable as attributes by host name (``w.mn``)."""

    def __init__(self, *, dc_id: bytes | None = None, nat: bool = False, loss: float = 0.0, seed: int = 1,
                 seq_base: int = 10**15, pools: Pools = WORLD_POOLS, fallback: bool | None = None) -> None:
        self.net: Net = NatNet() if nat else Net(drop=random_loss(loss, seed) if loss else None)
        #: The nodes' DNS fallback (NodeConfig.fallback). Under loss it is off by default: a lost liveness
        #: check would make a lookup untunnelled, and lossy scenarios test the retransmissions.
        self.fallback = (not loss) if fallback is None else fallback
        self.seq_base = seq_base
        self.nodes: dict[str, NodeCore] = {}
        self.stores: dict[str, MemoryStore] = {}
        self._seed = seed + 10
        if dc_id is not None:
            self.store = MemoryStore(pools)
            self.rs_rec = ClientRecord(b"\x02" * 8, "rs1", Role.RELAY, b"\x22" * 32)
            self.store.add_client(self.rs_rec)
            self.add_dc("dc", DcConfig("a.example", dc_id, rsn_allow=TEST_NETS), self.store, WORLD_DC_EP, seed=seed)
            self.add_relay("rs", RsConfig("rs1", self.rs_rec.client_id, [DcLink(dc_id, WORLD_DC_EP, self.rs_rec.psk)],
                                          local_endpoints=[WORLD_RS_EP], rsn_allow=TEST_NETS),
                           WORLD_RS_EP, seed=seed + 1).register(self.net.now)

    def __getattr__(self, name: str) -> Any:
        """A host's core by its name (what the network runs: a core a test swapped in counts)."""
        net = self.__dict__.get("net")
        if net is not None and name in net.hosts:
            return net.hosts[name].core
        raise AttributeError(name)

    # -- building ------------------------------------------------------------------------------------
    def add_dc(self, host: str, config: DcConfig, store: MemoryStore, ep: Endpoint, *, seed: int) -> DcCore:
        """A DC at ``ep``; with ``config.probe`` (a NatNet world) its probe and filter sockets too."""
        dc = DcCore(config, store, self.net.now, seq_base=self.seq_base, random_bytes=seeded_bytes(seed))
        if config.probe and isinstance(self.net, NatNet):
            probe = config.probe[0]
            ps = ProbeSocket(dc)
            self.net.add(host + "-probe", ps, probe)
            self.net.probe_of[host] = ps
            fs = ProbeSocket(dc)  # the filter socket only sends
            self.net.add(host + "-filter", fs, (probe[0], probe[1] + 1))
            self.net.filter_of[host] = fs
        self.net.add(host, dc, ep)
        self.stores[host] = store
        return dc

    def add_relay(self, host: str, config: RsConfig, ep: Endpoint, *, seed: int) -> RsCore:
        rs = RsCore(config, self.net.now, seq_base=self.seq_base, random_bytes=seeded_bytes(seed))
        self.net.add(host, rs, ep)
        return rs

    def add_node(self, host: str, config: NodeConfig, addr: Endpoint, *, public: Endpoint | None = None,
                 nat: Nat | None = None, seed: int) -> NodeCore:
        """A node at ``addr`` (behind ``public``, a fixed NAT mapping, or ``nat`` in a NatNet world)."""
        node = NodeCore(config, self.net.now, seq_base=self.seq_base, random_bytes=seeded_bytes(seed))
        self.net.add(host, node, addr, public)
        self.net.attach_dataplane(host, node)
        if nat is not None:
            assert isinstance(self.net, NatNet)
            self.net.nat_of[host] = nat
        self.nodes[host] = node
        return node

    def node(self, host: str, place: tuple[Endpoint, Endpoint | None], *, rec: ClientRecord | None = None,
             seed: int | None = None) -> NodeCore:
        """One-DC world: enrol a node, place it at (private address, NAT mapping or None), register it."""
        if rec is None:
            idx = len(self.nodes) + 1
            rec = ClientRecord(bytes([0x10 + idx]) * 8, f"{host}.a.example", Role.NODE, bytes([0x30 + idx]) * 32)
        self.store.add_client(rec)
        if seed is None:
            self._seed += 1
            seed = self._seed
        dc = self.net.hosts["dc"].core
        core = self.add_node(host, NodeConfig(rec.name, rec.client_id, rec.psk, dc.config.dc_id, WORLD_DC_EP,
                                              fallback=self.fallback), place[0], public=place[1], seed=seed)
        core.register((place[0],), self.net.now)
        self.net.run_until(lambda: core.registered and bool(dc.relays()))
        return core

    # -- playing the runtimes ----------------------------------------------------------------------
    def gn_address(self, fqdn: str) -> str:
        """What a general node's name resolves to (override for other answers)."""
        return WORLD_GN

    def answer_requests(self) -> None:
        """Play the relays' ICMP prober and the DCs' DNS discovery (every name a general node)."""
        for host in self.net.hosts.values():
            core: Any = host.core
            for ev in list(host.events):
                if isinstance(ev, ProbeRequest):
                    host.events.remove(ev)
                    core.probe_result(ev.token, 1, 250, self.net.now)
                elif isinstance(ev, ResolveRequest):
                    host.events.remove(ev)
                    addr = self.gn_address(ev.fqdn)
                    core.resolution_result(ev.token, DiscoveryResult(
                        ev.fqdn, Outcome.GENERAL_NODE, a=(addr,), evidence=Evidence((
                            "NS gn.example = ns.gn.example", "no DC TXT marker", f"A {addr}"))), self.net.now)

    def path(self, host: str, fqdn: str, *, max_time: float = 20) -> PathReady:
        """``host`` asks for a path to ``fqdn``, the runtimes' requests answered, until it is ready."""
        rid = self.nodes[host].request_path(fqdn, self.net.now)

        def ready() -> bool:
            self.answer_requests()
            return any(rid in e.request_ids for e in self.net.events_of(host, PathReady))

        self.net.run_until(ready, max_time=max_time)
        found: PathReady = next(e for e in self.net.events_of(host, PathReady) if rid in e.request_ids)
        return found

    def connect(self, src: NodeCore, host: str, fqdn: str, max_time: float = 10.0) -> PathReady | PathFailed:
        """``src`` (host ``host``) asks for a path to ``fqdn``: its outcome (the requests answered by hooks)."""
        rid = src.request_path(fqdn, self.net.now)

        def done() -> bool:
            return any(rid in e.request_ids for e in self.net.events_of(host, PathReady) + self.net.events_of(
                host, PathFailed))

        self.net.run_until(done, max_time=max_time)
        result: PathReady | PathFailed = next(
            e for e in self.net.events_of(host, PathReady) + self.net.events_of(host, PathFailed)
            if rid in e.request_ids)
        return result

    def send_ip(self, host: str, packet: bytes) -> None:
        self.net.send_ip(host, packet)

    def received(self, host: str) -> list[bytes]:
        return self.net.received(host)

    def move(self, host: str, place: tuple[Endpoint, Endpoint | None]) -> None:
        """The host's interface now has another address (and sits behind another NAT, or none)."""
        h = self.net.hosts[host]
        h.addr, h.public = place
        self.nodes[host].addresses_changed((place[0],), self.net.now)

    def seen_as(self, host: str) -> Endpoint:
        h = self.net.hosts[host]
        return h.public or h.addr
