"""No (key, nonce) pair is ever sealed twice, by any party, across loss, expiry, restart, handover,
redirect and re-key (docs/security.md §3, "One nonce per key").

The real DC, relay and node cores in the in-memory harness, with a nonce ledger that records every
AES-GCM seal (tests/unit/nonce_ledger.py), and a look at the wire as an observer sees it: no two data
capsules with the same (Path ID, direction, counter, chunk) and different bytes (a Path ID names one key).
A hypothesis state machine drives a random fault scenario:
relay loss, relay idle expiry, relay restart, node restart, DC restart, moves (re-directions, RS-S
re-keys) and traffic on RS-N and RS-S paths, and checks after every step that no pair repeats. Restarted
parties keep what their runtime persists: the registry (DC) and the CounterFloor ceiling of their
long-term counters; every other piece of state is new, as after a real restart."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from ntmobile.core.dc import DcConfig, DcCore, ResolveRequest
from ntmobile.core.discovery import DiscoveryResult, Outcome
from ntmobile.core.node import NodeConfig, NodeCore, PathClosed, PathReady
from ntmobile.core.registry import ClientRecord, MemoryStore
from ntmobile.core.rs import DcLink, ProbeRequest, RsConfig, RsCore
from ntmobile.crypto import CounterFloor
from ntmobile.wire import PathMode, Role
from ntmobile.wire.frame import capsule_nonce_id

from .harness import TEST_NETS, Net, seeded_bytes
from .nonce_ledger import NonceLedger, nonce_ledger
from .test_handover import DC_EP, DC_ID, GLOBAL, GN, NAT_A, NAT_B, NAT_C, POOLS, RS_EP, ipv4_udp
from .test_relay_failure import RS2_EP

Ep = tuple[str, int]
PLACES = {"nat_a": NAT_A, "nat_b": NAT_B, "nat_c": NAT_C, "global": GLOBAL}
RELAYS = {"rs": (b"\x02" * 8, RS_EP), "rs2": (b"\x03" * 8, RS2_EP)}
NODES = {"mn": (b"\x11" * 8, NAT_A), "cn": (b"\x12" * 8, NAT_B)}


class Disk:
    """What the runtimes persist: each party's reserved counter ceiling (runtime/counters.py)."""

    def __init__(self) -> None:
        self.ceilings: dict[str, int] = {}

    def floor(self, who: str) -> CounterFloor:
        start = self.ceilings.get(who, 0) + 1

        def persist(ceiling: int) -> None:
            self.ceilings[who] = ceiling

        return CounterFloor(start, persist, block=8)  # small blocks: many reservations


class FaultWorld:
    """One DC (a.example), relays rs and rs2, nodes mn (behind NAT A) and cn (behind NAT B)."""

    def __init__(self) -> None:
        self.net = Net()
        self.store = MemoryStore(POOLS)
        self.disk = Disk()
        self.incarnation = 0
        self.dead: set[str] = set()
        for name, (cid, _ep) in RELAYS.items():
            self.store.add_client(ClientRecord(cid, "rs1" if name == "rs" else name, Role.RELAY, cid * 4))
        for host, (cid, _place) in NODES.items():
            self.store.add_client(ClientRecord(cid, f"{host}.a.example", Role.NODE, cid * 4))
        self.net.drop = lambda src, dst, data: src in self.dead or dst in self.dead
        self.start_dc()
        for name in RELAYS:
            self.start_relay(name)
        self.nodes: dict[str, NodeCore] = {}
        for host in NODES:
            self.start_node(host, NODES[host][1])
        self.settle(5.0)

    def _rand(self) -> Callable[[int], bytes]:
        self.incarnation += 1
        return seeded_bytes(1000 + self.incarnation)

    def start_dc(self) -> None:
        self.dc = DcCore(DcConfig("a.example", DC_ID, keepalive=15, rsn_allow=TEST_NETS), self.store, self.net.now,
                         seq_base=10**15, counter=self.disk.floor("dc"), random_bytes=self._rand())
        if "dc" in self.net.hosts:
            self.net.hosts["dc"].core = self.dc
        else:
            self.net.add("dc", self.dc, DC_EP)

    def start_relay(self, name: str) -> None:
        cid, ep = RELAYS[name]
        rec = self.store.get_client(cid)
        assert rec is not None
        core = RsCore(RsConfig(rec.name, cid, [DcLink(DC_ID, DC_EP, rec.psk)], local_endpoints=[ep],
                               rsn_allow=TEST_NETS), self.net.now,
                      counter=self.disk.floor(name), random_bytes=self._rand())
        if name in self.net.hosts:
            self.net.hosts[name].core = core
        else:
            self.net.add(name, core, ep)
        core.register(self.net.now)

    def relay(self, name: str) -> RsCore:
        core = self.net.hosts[name].core
        assert isinstance(core, RsCore)
        return core

    def start_node(self, host: str, place: tuple[Ep, Ep | None]) -> None:
        cid = NODES[host][0]
        rec = self.store.get_client(cid)
        assert rec is not None
        core = NodeCore(NodeConfig(rec.name, cid, rec.psk, DC_ID, DC_EP), self.net.now, counter=self.disk.floor(host),
                        random_bytes=self._rand())
        if host in self.net.hosts:
            h = self.net.hosts[host]
            h.core, h.events = core, []
            place = (h.addr, h.public)
        else:
            self.net.add(host, core, place[0], place[1])
        self.net.attach_dataplane(host, core)  # a restarted daemon starts with an empty forwarding table
        self.nodes[host] = core
        core.register((place[0],), self.net.now)

    def answer_requests(self) -> None:
        """Play each relay's ICMP prober and the DC's DNS discovery (a general node at GN)."""
        for name in RELAYS:
            h = self.net.hosts[name]
            for ev in [e for e in h.events if isinstance(e, ProbeRequest)]:
                h.events.remove(ev)
                self.relay(name).probe_result(ev.token, 1 if name == "rs" else 2, 250, self.net.now)
        h = self.net.hosts["dc"]
        for ev in [e for e in h.events if isinstance(e, ResolveRequest)]:
            h.events.remove(ev)
            self.dc.resolution_result(ev.token, DiscoveryResult(ev.fqdn, Outcome.GENERAL_NODE, a=(GN,)), self.net.now)

    def settle(self, seconds: float) -> None:
        end = self.net.now + seconds
        while self.net.now < end:
            self.net.run_for(min(0.5, end - self.net.now))
            self.answer_requests()
        for name in RELAYS:
            self.relay(name).packets_to_tun()  # what reached the relays' TUN (the GN)

    def traffic(self) -> None:
        """A packet each way on every established path: node → peer or RS-N, and the GN's reply."""
        for host, core in self.nodes.items():
            reg = core.registration
            if reg is None or reg.vip4 is None:
                continue
            for path in list(core._paths.values()):
                info = core.path_info(path.path_id)
                if info is None or not path.established:
                    continue
                dst = info.peer_vip4 or GN
                self.net.send_ip(host, ipv4_udp(reg.vip4, dst, b"from " + host.encode()))
                if info.mode is PathMode.RS_N:
                    for name in RELAYS:
                        e = self.relay(name).entry(info.path_id)
                        if e is not None and e.node_endpoint is not None and name not in self.dead:
                            self.relay(name).tun_packet(ipv4_udp(dst, reg.vip4, b"to " + host.encode()), self.net.now)
        self.settle(1.0)


class NonceFaults(RuleBasedStateMachine):
    """Random faults; after every step no (key, nonce) pair has been sealed twice."""

    ledger: NonceLedger

    @initialize()
    def start(self) -> None:
        self.ledger = LEDGER[0]
        # Each example replays the same seeded randomness from the start: a ledger of its own.
        self.ledger.seen.clear()
        self.ledger.reused.clear()
        self.w = FaultWorld()
        # Every fault then meets live paths: mn → a general node (RS-N), mn ↔ cn (RS-S), with traffic.
        for name in ("www.gn.example", "cn.a.example"):
            self.w.nodes["mn"].request_path(name, self.w.net.now)
            self.w.settle(4.0)
        self.w.traffic()

    @rule(name=st.sampled_from(["www.gn.example", "ftp.gn.example", "cn.a.example"]))
    def ask_and_send(self, name: str) -> None:
        self.w.nodes["mn"].request_path(name, self.w.net.now)
        self.w.settle(4.0)
        self.w.traffic()

    @rule()
    def send(self) -> None:
        self.w.traffic()

    @rule(name=st.sampled_from(list(RELAYS)), seconds=st.sampled_from([5.0, 25.0]))
    def relay_lost(self, name: str, seconds: float) -> None:
        self.w.dead.add(name)
        self.w.traffic()
        self.w.settle(seconds)
        self.w.dead.discard(name)
        self.w.traffic()

    @rule(name=st.sampled_from(list(RELAYS)))
    def relay_restart(self, name: str) -> None:
        self.w.start_relay(name)
        self.w.settle(3.0)
        self.w.traffic()
        self.w.settle(25.0)  # nodes notice the relay forgot their paths
        self.w.traffic()

    @rule(name=st.sampled_from(list(RELAYS)))
    def relay_idle_expiry(self, name: str) -> None:
        rs = self.w.relay(name)
        for e in rs.entries():
            # The entry's idle deadline passes (its keepalives were lost): the relay forgets it.
            rs._remove(e, "idle")
        self.w.traffic()
        self.w.settle(25.0)
        self.w.traffic()

    @rule(host=st.sampled_from(list(NODES)))
    def node_restart(self, host: str) -> None:
        self.w.start_node(host, NODES[host][1])
        self.w.settle(3.0)
        self.w.nodes[host].request_path("www.gn.example" if host == "mn" else "mn.a.example", self.w.net.now)
        self.w.settle(4.0)
        self.w.traffic()

    @rule()
    def dc_restart(self) -> None:
        self.w.start_dc()
        self.w.settle(20.0)  # keepalives meet REREGISTER; everyone registers again
        self.w.traffic()

    @rule(host=st.sampled_from(list(NODES)), place=st.sampled_from(list(PLACES)))
    def move(self, host: str, place: str) -> None:
        h = self.w.net.hosts[host]
        h.addr, h.public = PLACES[place]
        self.w.nodes[host].addresses_changed((h.addr,), self.w.net.now)
        self.w.settle(5.0)
        self.w.traffic()

    @invariant()
    def no_nonce_sealed_twice(self) -> None:
        if hasattr(self, "ledger"):
            assert not self.ledger.reused, f"{len(self.ledger.reused)} (key, nonce) pairs sealed twice"
            assert not wire_repeats(self.w.net), "capsule identities repeated with other bytes on the wire"


LEDGER: list[NonceLedger] = []


def wire_repeats(net: Net) -> list[tuple[bytes, bool, int, int]]:
    """Capsule identities (wire.capsule_nonce_id) sent twice with different bytes, by anyone."""
    seen: dict[tuple[bytes, bool, int, int], bytes] = {}
    out = []
    for sent in net.sent_by.values():
        for data in sent:
            ident = capsule_nonce_id(data)
            if ident is not None and seen.setdefault(ident, data) != data:
                out.append(ident)
    return out


@pytest.fixture
def ledger() -> object:
    with nonce_ledger() as led:
        LEDGER[:] = [led]
        yield led
        LEDGER.clear()


def test_no_nonce_is_sealed_twice_under_random_faults(ledger: NonceLedger) -> None:
    run_state_machine_as_test(NonceFaults, settings=settings(
        max_examples=60, stateful_step_count=10, deadline=None, derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))


# -- the review's scenarios, one by one ----------------------------------------------------------------


def _rsn_path(w: FaultWorld) -> PathReady:
    mn = w.nodes["mn"]
    rid = mn.request_path("www.gn.example", w.net.now)
    w.settle(4.0)
    ready = [e for e in w.net.events_of("mn", PathReady) if rid in e.request_ids]
    assert ready, "no RS-N path"
    return ready[-1]


def test_rsn_path_moved_after_a_relay_kill_gets_new_keys(ledger: NonceLedger) -> None:
    """The review's capture: download through RS-N, kill the relay, the path moves, download again."""
    w = FaultWorld()
    first = _rsn_path(w)
    assert first.path.rs_name == "rs1"
    for _ in range(3):
        w.traffic()
    w.dead.add("rs")
    w.settle(30.0)  # the node notices; the next packet asks again
    second = _rsn_path(w)
    # A new path (new Path ID and key) on rs2, for the same GN VIP: the application keeps its address.
    assert second.path.rs_name == "rs2" and second.path.peer_vip4 == first.path.peer_vip4
    assert second.path.path_id != first.path.path_id and second.path.data_keys != first.path.data_keys
    for _ in range(3):
        w.traffic()
    assert ledger.seals > 0 and not ledger.reused and not wire_repeats(w.net)


def test_node_restart_gets_a_path_key_it_never_had(ledger: NonceLedger) -> None:
    w = FaultWorld()
    first = _rsn_path(w)
    w.traffic()
    w.start_node("mn", NAT_A)
    w.settle(3.0)
    second = _rsn_path(w)
    assert second.path.peer_vip4 == first.path.peer_vip4
    assert second.path.path_id != first.path.path_id and second.path.data_keys != first.path.data_keys
    w.traffic()
    assert not ledger.reused and not wire_repeats(w.net)


def test_redirect_to_a_restarted_node_sets_a_new_path_up(ledger: NonceLedger) -> None:
    """mn ↔ cn through RS-S; cn restarts (its counters are new); mn moves and asks to re-direct the path:
    the DC must not hand the old key to the new cn. It answers PATH_GONE, mn closes the path, and the
    next set-up (by name, as the next packet to cn's VIP does) gets a new Path ID and key."""
    w = FaultWorld()
    mn = w.nodes["mn"]
    rid = mn.request_path("cn.a.example", w.net.now)
    w.settle(4.0)
    ready = next(e for e in w.net.events_of("mn", PathReady) if rid in e.request_ids)
    pid = ready.path.path_id
    w.traffic()
    w.start_node("cn", NAT_B)
    w.settle(3.0)
    h = w.net.hosts["mn"]
    h.addr, h.public = NAT_C
    mn.addresses_changed((h.addr,), w.net.now)
    w.settle(6.0)
    assert w.dc.stats["paths_dropped_peer_restarted"] == 1 and mn.stats["redirect_refused"] == 1
    assert mn.path_info(pid) is None and w.nodes["cn"].path_info(pid) is None and pid not in w.dc.paths
    assert any(getattr(e, "path_id", None) == pid for e in w.net.events_of("mn", PathClosed))
    rid = mn.request_path("cn.a.example", w.net.now)
    w.settle(4.0)
    again = next(e for e in w.net.events_of("mn", PathReady) if rid in e.request_ids)
    assert again.path.path_id != pid and again.path.data_keys != ready.path.data_keys
    assert again.path.peer_vip4 == ready.path.peer_vip4
    w.traffic()
    assert not ledger.reused and not wire_repeats(w.net)


def test_a_node_never_makes_a_second_sealer_under_a_key_it_used(ledger: NonceLedger) -> None:
    """Whatever the DC sends: a Route Direction that would re-install a used key is refused."""
    w = FaultWorld()
    first = _rsn_path(w)
    mn = w.nodes["mn"]
    rd = mn._paths[first.path.path_id].rd
    del mn._paths[first.path.path_id]  # the node closed the path (e.g. its relay died)
    assert mn._new_path(rd, first.path.role, PathMode.RS_N, w.net.now) is None
    assert mn.stats["drop_reused_path_key"] == 1
    # (The same at a relay: test_rs_core.py::test_path_id_in_use_busy_and_bad_request.)


def test_restarted_parties_start_their_long_term_counters_above_everything_sealed(ledger: NonceLedger) -> None:
    """Long-term and DC-to-DC static counters come from the persisted CounterFloor, not the clock: a
    restart (a clock stepped back changes nothing here: no clock is read) seals above every counter used."""
    w = FaultWorld()
    for _ in range(3):
        w.start_dc()
        for name in RELAYS:
            w.start_relay(name)
        for host in NODES:
            w.start_node(host, NODES[host][1])
        w.settle(3.0)
    assert all(core.registered for core in w.nodes.values())
    assert not ledger.reused
