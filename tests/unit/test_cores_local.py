"""Node and DC cores together in memory: registration, NAT detection, NTM peers of one DC."""

from __future__ import annotations

import pytest

from ntmobile.core.dc import ClientRegistered, DcConfig, DcCore, DirectionDecision, ResolveRequest, decide_route
from ntmobile.core.discovery import DiscoveryResult, Evidence, Outcome
from ntmobile.core.dnsauth import DcMarker
from ntmobile.core.node import LookupFallback, NodeConfig, NodeCore, PathFailed, PathReady, Registered
from ntmobile.core.registry import ClientRecord, MemoryStore, Pools
from ntmobile.core.timing import DC_LIVENESS_TIMEOUT, DC_SILENT_BACKOFF, REGISTRATION_HOLD
from ntmobile.wire import NatKind, PathMode, PathRole, Role, Status

from .harness import Net, ipv4_udp, random_loss, seeded_bytes

DC_ID = bytes.fromhex("dc00000000000001")
DC_EP = ("192.0.2.10", 7410)
POOLS = Pools("100.64.1.0/24", "fd00:6e74:1::/64", "100.127.0.0/16", "fd00:6e74:ff::/64")


def make_dc(net: Net, store: MemoryStore | None = None) -> tuple[DcCore, MemoryStore]:
    store = store or MemoryStore(POOLS)
    dc = DcCore(DcConfig("a.example", DC_ID, keepalive=15), store, net.now, seq_base=10**15,
                random_bytes=seeded_bytes(1))
    net.add("dc", dc, DC_EP)
    return dc, store


def enroll(store: MemoryStore, name: str, idx: int, role: Role = Role.NODE) -> ClientRecord:
    rec = ClientRecord(bytes([0xA0 + idx]) * 8, name, role, bytes([idx]) * 32)
    store.add_client(rec)
    return rec


def make_node(net: Net, rec: ClientRecord, host: str, addr: tuple[str, int], public: tuple[str, int] | None = None,
              seed: int = 2, fallback: bool = True) -> NodeCore:
    node = NodeCore(NodeConfig(rec.name, rec.client_id, rec.psk, DC_ID, DC_EP, fallback=fallback), net.now,
                    seq_base=10**15,
                    random_bytes=seeded_bytes(seed))
    net.add(host, node, addr, public)
    net.attach_dataplane(host, node)
    node.register((addr,), net.now)
    return node


def test_registration_assigns_stable_vips_and_detects_nat() -> None:
    net = Net()
    dc, store = make_dc(net)
    mn = make_node(net, enroll(store, "mn.a.example", 1), "mn", ("10.1.0.10", 7412), public=("192.0.2.100", 7412))
    gl = make_node(net, enroll(store, "gl.a.example", 2), "gl", ("192.0.2.50", 7412), seed=3)
    net.run_until(lambda: mn.registered and gl.registered)
    reg_mn = net.events_of("mn", Registered)[0]
    reg_gl = net.events_of("gl", Registered)[0]
    assert reg_mn.nat is NatKind.NAT and reg_mn.keepalive == 15
    assert reg_mn.observed == ("192.0.2.100", 7412)
    assert reg_gl.nat is NatKind.NONE and reg_gl.keepalive == 0
    assert reg_mn.vip4 != reg_gl.vip4 and reg_mn.vip4 and reg_mn.vip6
    # Re-registration (e.g. after a move) keeps the VIPs.
    mn.addresses_changed((("10.2.0.10", 7412),), net.now)
    net.hosts["mn"].addr = ("10.2.0.10", 7412)
    net.hosts["mn"].public = ("192.0.2.101", 7412)
    net.run_until(lambda: len(net.events_of("mn", Registered)) == 2)
    again = net.events_of("mn", Registered)[1]
    assert (again.vip4, again.vip6) == (reg_mn.vip4, reg_mn.vip6)
    assert again.observed == ("192.0.2.101", 7412)
    assert [e.name for e in net.events_of("dc", ClientRegistered)].count("mn.a.example") == 2


def test_unenrolled_node_cannot_register() -> None:
    net = Net()
    dc, store = make_dc(net)
    stranger = ClientRecord(b"\xee" * 8, "evil.a.example", Role.NODE, b"\x66" * 32)  # not in the store
    node = make_node(net, stranger, "evil", ("192.0.2.66", 7412))
    with pytest.raises(AssertionError):
        net.run_until(lambda: node.registered, max_time=5.0)
    assert dc.stats["drop_unknown_client"] >= 1
    assert not node.registered


def test_wrong_secret_is_rejected() -> None:
    net = Net()
    dc, store = make_dc(net)
    rec = enroll(store, "mn.a.example", 1)
    forged = ClientRecord(rec.client_id, rec.name, Role.NODE, b"\x99" * 32)
    node = make_node(net, forged, "mn", ("192.0.2.60", 7412))
    with pytest.raises(AssertionError):
        net.run_until(lambda: node.registered, max_time=5.0)
    assert dc.stats["drop_auth"] >= 1


def test_storage_failure_gives_clear_error() -> None:
    net = Net()
    dc, store = make_dc(net)
    rec = enroll(store, "mn.a.example", 1)
    store.fail_writes = True
    make_node(net, rec, "mn", ("192.0.2.60", 7412))
    net.run_until(lambda: bool(net.hosts["mn"].events))
    from ntmobile.core.node import RegistrationFailed

    failed = net.events_of("mn", RegistrationFailed)
    assert failed and failed[0].status is Status.STORAGE_ERROR
    assert "cannot be written" in failed[0].reason


@pytest.mark.parametrize(
    ("a_nat", "a_ep", "b_nat", "b_ep", "expected"),
    [
        (NatKind.NONE, ("192.0.2.50", 1), NatKind.NONE, ("192.0.2.51", 1), (PathMode.DIRECT, True)),
        (NatKind.NONE, ("192.0.2.50", 1), NatKind.NAT, ("192.0.2.100", 1), (PathMode.DIRECT, False)),
        (NatKind.NAT, ("192.0.2.100", 1), NatKind.NONE, ("192.0.2.50", 1), (PathMode.DIRECT, True)),
        (NatKind.NAT, ("192.0.2.100", 1), NatKind.NAT, ("192.0.2.100", 2), (PathMode.DIRECT, True)),
        (NatKind.NAT, ("192.0.2.100", 1), NatKind.NAT, ("192.0.2.101", 1), (PathMode.RS_S, True)),
        (NatKind.NONE, ("192.0.2.50", 1), NatKind.NONE, ("2001:db8::1", 1), (PathMode.RS_S, True)),
    ],
)
def test_route_table(a_nat: NatKind, a_ep: tuple[str, int], b_nat: NatKind, b_ep: tuple[str, int],
                     expected: tuple[PathMode, bool]) -> None:
    assert decide_route(a_nat, a_ep, b_nat, b_ep) == expected


def _two_nodes(net: Net, mn_public: tuple[str, int] | None,
               fallback: bool = True) -> tuple[DcCore, NodeCore, NodeCore]:
    dc, store = make_dc(net)
    mn_addr = ("10.1.0.10", 7412) if mn_public else ("192.0.2.60", 7412)
    mn = make_node(net, enroll(store, "mn.a.example", 1), "mn", mn_addr, public=mn_public, fallback=fallback)
    gl = make_node(net, enroll(store, "gl.a.example", 2), "gl", ("192.0.2.50", 7412), seed=3, fallback=fallback)
    net.run_until(lambda: mn.registered and gl.registered)
    return dc, mn, gl


def test_global_node_asks_for_natted_peer_which_initiates() -> None:
    net = Net()
    dc, mn, gl = _two_nodes(net, mn_public=("192.0.2.100", 7412))
    rid = gl.request_path("mn.a.example", net.now)
    net.run_until(lambda: bool(net.events_of("gl", PathReady)) and bool(net.events_of("mn", PathReady)))
    ready_gl = net.events_of("gl", PathReady)[0]
    ready_mn = net.events_of("mn", PathReady)[0]
    assert ready_gl.request_ids == (rid,)
    assert ready_gl.path.mode is PathMode.DIRECT and ready_gl.path.role is PathRole.RESPONDER
    assert ready_mn.path.role is PathRole.INITIATOR  # the NAT-side node opens its own NAT
    assert ready_gl.path.endpoint == ("192.0.2.100", 7412)
    decision = net.events_of("dc", DirectionDecision)[0]
    assert decision.mode is PathMode.DIRECT and any("initiates" in line for line in decision.evidence)
    # Data both ways, end-to-end encrypted.
    gl_vip, mn_vip = ready_mn.path.peer_vip4, ready_gl.path.peer_vip4
    assert gl_vip and mn_vip
    to_mn, to_gl = ipv4_udp(gl_vip, mn_vip, b"hello from gl"), ipv4_udp(mn_vip, gl_vip, b"hello from mn")
    net.send_ip("gl", to_mn)
    net.send_ip("mn", to_gl)
    net.run_until(lambda: bool(net.received("mn")) and bool(net.received("gl")))
    assert net.received("mn") == [to_mn] and net.received("gl") == [to_gl]
    # A second lookup of the same name reuses the path without asking the DC again.
    before = dc.stats["paths_directed"]
    rid2 = gl.request_path("mn.a.example", net.now)
    net.pump_events()
    assert net.events_of("gl", PathReady)[-1].request_ids == (rid2,)
    assert dc.stats["paths_directed"] == before


def test_lossy_setup_recovers_by_retransmission() -> None:
    # (30 % loss both ways would make the liveness check call the DC silent now and then: without
    # fallback, the lookup waits for the retransmissions, which is what this tests.)
    net = Net(drop=random_loss(0.3, seed=7))
    dc, mn, gl = _two_nodes(net, mn_public=None, fallback=False)
    gl.request_path("mn.a.example", net.now)
    net.run_until(lambda: bool(net.events_of("gl", PathReady)), max_time=30)
    assert dc.stats["direction_retransmits"] + mn.stats["retransmissions"] + gl.stats["retransmissions"] > 0


def test_unknown_name_in_own_domain_is_nxdomain() -> None:
    net = Net()
    dc, mn, gl = _two_nodes(net, mn_public=None)
    gl.request_path("nobody.a.example", net.now)
    net.run_until(lambda: bool(net.events_of("gl", PathFailed)))
    assert net.events_of("gl", PathFailed)[0].status is Status.NXDOMAIN


def test_dc_silent_gives_servfail_before_app_timeout() -> None:
    """Without fallback (dns_fallback = "off"), a silent DC gives SERVFAIL before the resolver gives up."""
    net = Net()
    dc, mn, gl = _two_nodes(net, mn_public=None, fallback=False)
    t0 = net.now
    net.drop = lambda src, dst, data: dst == "dc"
    gl.request_path("mn.a.example", net.now)
    net.run_until(lambda: bool(net.events_of("gl", PathFailed)))
    failed = net.events_of("gl", PathFailed)[0]
    assert failed.status is Status.SERVFAIL
    assert net.now - t0 < 5.0  # answered before glibc's 5 s resolver timeout


def test_version_negotiation_gives_a_clear_error() -> None:
    """A DC answers a datagram of another protocol version with Version Not Supported; a node whose
    registration gets that answer reports which versions the DC speaks."""
    from ntmobile.core.node import RegistrationFailed
    from ntmobile.wire import MessageType, SignalHeader, parse_version_not_supported

    net = Net()
    dc, store = make_dc(net)
    future = SignalHeader(2, MessageType.REGISTRATION_REQUEST, 0, 0, b"\x01" * 8, 77, 1).pack() + bytes(40)
    dc.receive_datagram(future, ("192.0.2.99", 7412), net.now)
    [reply] = dc.datagrams_to_send()
    assert parse_version_not_supported(reply.data) == (77, (1, 1))
    assert dc.stats["drop_unknown_version"] == 1
    # The node side: its pending registration is answered by Version Not Supported.
    rec = enroll(store, "mn.a.example", 1)
    node = make_node(net, rec, "mn", ("192.0.2.60", 7412))
    reg = node.datagrams_to_send()[0]
    from ntmobile.wire.frame import pack_version_not_supported, txid_of

    txid = txid_of(reg.data)
    assert txid is not None
    node.receive_datagram(pack_version_not_supported(txid), DC_EP, net.now)
    net.pump_events()
    [failed] = net.events_of("mn", RegistrationFailed)
    assert failed.status is Status.UNSUPPORTED_VERSION and "1..1" in failed.reason


def test_lookup_before_registration_is_held_until_registered() -> None:
    """An application's lookup that arrives while the node is still registering (start-up, or after a
    DC restart) waits for the registration instead of failing at once."""
    net = Net()
    dc, store = make_dc(net)
    gl = make_node(net, enroll(store, "gl.a.example", 2), "gl", ("192.0.2.50", 7412), seed=3)
    net.run_until(lambda: gl.registered)
    mn = make_node(net, enroll(store, "mn.a.example", 1), "mn", ("192.0.2.60", 7412))
    assert not mn.registered
    rid = mn.request_path("gl.a.example", net.now)  # before the Registration Response
    net.run_until(lambda: bool(net.events_of("mn", PathReady)) or bool(net.events_of("mn", PathFailed)))
    assert net.events_of("mn", PathReady)[0].request_ids == (rid,)
    # With no DC at all, the held lookup falls back (resolved upstream by the stub) within REGISTRATION_HOLD;
    # without fallback it fails within the node's budget.
    for fallback, event, bound in ((True, LookupFallback, REGISTRATION_HOLD + 0.01), (False, PathFailed, 5.0)):
        net2 = Net()
        _dc2, store2 = make_dc(net2)
        lonely = make_node(net2, enroll(store2, "mn.a.example", 1), "mn", ("192.0.2.60", 7412), fallback=fallback)
        net2.drop = lambda src, dst, data: dst == "dc"
        t0 = net2.now
        rid2 = lonely.request_path("gl.a.example", net2.now)
        net2.run_until(lambda: bool(net2.events_of("mn", event)))  # noqa: B023
        got = net2.events_of("mn", event)[0]
        assert got.request_ids == (rid2,) and net2.now - t0 < bound
        assert not net2.events_of("mn", PathFailed if fallback else LookupFallback)


def test_a_dc_that_dies_is_noticed_within_the_liveness_timeout_and_remembered() -> None:
    """A silent DC never breaks DNS: the first lookup after the DC died falls back within
    DC_LIVENESS_TIMEOUT (not DIRECTION_TIMEOUT); lookups meanwhile fall back at once; once the DC
    answers again, lookups are tunnelled again."""
    net = Net()
    dc, store = make_dc(net)
    gl = make_node(net, enroll(store, "gl.a.example", 2), "gl", ("192.0.2.50", 7412), seed=3)
    mn = make_node(net, enroll(store, "mn.a.example", 1), "mn", ("192.0.2.60", 7412))
    net.run_until(lambda: mn.registered and gl.registered)
    net.drop = lambda src, dst, data: dst == "dc"  # the DC is dead now (it answered a moment ago)
    t0 = net.now
    rid = mn.request_path("gl.a.example", net.now)
    net.run_until(lambda: bool(net.events_of("mn", LookupFallback)))
    assert net.events_of("mn", LookupFallback)[0].request_ids == (rid,)
    assert net.now - t0 <= DC_LIVENESS_TIMEOUT + 0.01 and mn.stats["dc_silent"] == 1
    # Remembered: the next lookup falls back at once, without asking the DC.
    sent = mn.stats.get("dc_liveness_checks", 0)
    rid2 = mn.request_path("other.a.example", net.now)
    t1 = net.now
    net.run_until(lambda: len(net.events_of("mn", LookupFallback)) >= 2)
    assert net.events_of("mn", LookupFallback)[-1].request_ids == (rid2,) and net.now == t1
    assert mn.stats.get("dc_liveness_checks", 0) == sent
    # The DC answers again (its keepalive ack arrives): lookups are tunnelled again.
    net.drop = lambda src, dst, data: False
    net.run_until(lambda: mn.stats.get("dc_back", 0) >= 1 or net.now - t0 > DC_SILENT_BACKOFF + 30)
    rid3 = mn.request_path("gl.a.example", net.now)
    net.run_until(lambda: bool([e for e in net.events_of("mn", PathReady) if rid3 in e.request_ids]))
    assert not [e for e in net.events_of("mn", PathFailed) if rid3 in e.request_ids]


def test_an_alias_into_the_dcs_own_domain_is_directed_to_its_own_node() -> None:
    """x.gn.example CNAME gl.a.example: discovery ends at this DC's own marker; the DC directs the path to
    its own node gl (it never asks itself as a peer DC)."""
    net = Net()
    dc, mn, gl = _two_nodes(net, mn_public=None)
    rid = mn.request_path("x.gn.example", net.now)
    own = DcMarker("192.0.2.10", 7410, bytes(32))

    def answered() -> bool:
        host = net.hosts["dc"]
        for ev in [e for e in host.events if isinstance(e, ResolveRequest)]:
            host.events.remove(ev)
            dc.resolution_result(ev.token, DiscoveryResult(
                ev.fqdn, Outcome.NTM_PEER, marker=own,
                evidence=Evidence(("alias x.gn.example. -> gl.a.example.",),
                                  cnames=("x.gn.example. -> gl.a.example.",))), net.now)
        return bool([e for e in net.events_of("mn", PathReady) if rid in e.request_ids]
                    or [e for e in net.events_of("mn", PathFailed) if rid in e.request_ids])

    net.run_until(answered)
    ready = [e for e in net.events_of("mn", PathReady) if rid in e.request_ids]
    assert ready, net.events_of("mn", PathFailed)
    assert ready[0].path.peer_vip4 == gl.registration.vip4  # type: ignore[union-attr]
    assert dc.stats["direction_alias_own_domain"] == 1


def test_a_burst_of_new_names_sends_one_direction_request_each() -> None:
    """200 new names at once, answered by the DC 0.9 s later (its discovery under load): one Direction
    Request per name reaches the DC, none retransmitted (the liveness Keepalive tells the DC alive)."""
    net = Net()
    dc, mn, gl = _two_nodes(net, mn_public=None)
    t0 = net.now
    names = [f"h{i}.gn.example" for i in range(200)]
    rids = {mn.request_path(n, net.now) for n in names}
    for n in names[:50]:  # the application asks A and AAAA of each: the same lookup
        rids.add(mn.request_path(n, net.now))
    def answer(now: float) -> None:  # the DC's discovery answers 0.9 s later
        host = net.hosts["dc"]
        for ev in [e for e in host.events if isinstance(e, ResolveRequest)]:
            host.events.remove(ev)
            dc.resolution_result(ev.token, DiscoveryResult(ev.fqdn, Outcome.NXDOMAIN), now)

    dc.call_at(t0 + 0.9, answer)

    def answer_late() -> bool:
        done = {r for e in net.events_of("mn", PathFailed) for r in e.request_ids}
        return rids <= done

    net.run_until(answer_late)
    assert dc.stats["directions_failed"] == 200 and dc.stats.get("direction_retransmits", 0) == 0, dc.stats
