"""NAT traversal (issue 16): the DC's punch decision and timing (core/dc/paths.py) and the node's
per-path state machine (core/node/traversal.py): OFFERED -> PROBING -> DIRECT, punch failure and
backoff, silence fallback within 2 s, moves, hostile acks."""

from __future__ import annotations

import pytest

from ntmobile.core.dc.paths import (
    PUNCH_LEAD,
    PUNCH_LEAD_MAX,
    PUNCH_LEAD_MIN,
    PUNCH_MARGIN,
    delay_ms,
    punch_lead,
    punch_remaining,
    requester_delay,
    traversal,
)
from ntmobile.core.node.traversal import (
    BACKOFF_FIRST,
    BACKOFF_MAX,
    PROBE_WINDOW,
    RELAY_GRACE,
    SAMPLE_INTERVAL,
    AskDc,
    GoDirect,
    GoRelayed,
    PathTraversal,
    SendProbe,
    SendProbeAck,
    StopRelayLeg,
    TraversalState,
    TraversalStateError,
)
from ntmobile.wire import NatKind

OBS = ("198.51.100.7", 40001)
LOCAL = ("10.1.0.2", 7412)


@pytest.mark.parametrize(("a", "b", "punch", "reason"), [
    (NatKind.CONE, NatKind.CONE, True, "punch offered"),
    (NatKind.NAT, NatKind.CONE, True, "punch offered"),
    (NatKind.CONE, NatKind.SYMMETRIC, True, "punch offered"),
    (NatKind.SYMMETRIC, NatKind.CONE, True, "punch offered"),
    (NatKind.SYMMETRIC, NatKind.SYMMETRIC, False, "symmetric both"),
])
def test_dc_traversal_table(a: NatKind, b: NatKind, punch: bool, reason: str) -> None:
    t = traversal(a, b)
    assert (t.punch, t.reason) == (punch, reason)


def test_dc_no_punch_when_udp_filtered() -> None:
    cone = NatKind.CONE
    assert traversal(cone, cone, a_udp_ok=False) == traversal(cone, cone, b_udp_ok=False)
    assert not traversal(NatKind.CONE, NatKind.CONE, a_udp_ok=False).punch


def test_punch_timing_from_measured_round_trips() -> None:
    """The responder is told first and gets the lead; the requester, told once the responder acked,
    gets what is left of it less its own one-way time: both start together. Bounded; the default
    while a round trip is unmeasured."""
    rtt_r, rtt_i = 0.080, 0.020
    lead = punch_lead(rtt_r, rtt_i)
    assert lead == pytest.approx(rtt_r / 2 + rtt_i / 2 + PUNCH_MARGIN)
    # The DC sends the responder's Route Direction at 0, its Ack comes back at rtt_r.
    responder_starts = rtt_r / 2 + lead
    remaining = punch_remaining(lead, 0.0, rtt_r)
    requester_starts = rtt_r + rtt_i / 2 + requester_delay(remaining, rtt_i)
    assert requester_starts == pytest.approx(responder_starts)
    assert requester_delay(remaining, rtt_i) == pytest.approx(PUNCH_MARGIN)
    assert punch_lead(None, 0.01) == PUNCH_LEAD == punch_lead(0.01, None)
    assert punch_lead(0.0, 0.0) == PUNCH_LEAD_MIN and punch_lead(3.0, 3.0) == PUNCH_LEAD_MAX
    assert requester_delay(0.01, 0.5) == 0.0 and punch_remaining(0.1, 0.0, 5.0) == 0.0  # never negative
    assert delay_ms(0.25) == 250 and delay_ms(1e9) == 0xFFFF


def test_dc_times_a_local_punch_from_the_nodes_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    """One DC, two NATed nodes: with both round trips measured the responder's PUNCH_DELAY is the
    derived lead, the requester's the lead less the responder's (just measured) and its own one-way
    times; the DC's RTT estimate comes from the responder's Route Direction Ack."""
    import dataclasses

    from ntmobile.wire import PathMode, RouteDirection

    from .test_handover import NAT_A, NAT_B, World

    w = World()
    w.dc.config = dataclasses.replace(w.dc.config, traversal=True)
    mn, cn = w.node("mn", NAT_A), w.node("cn", NAT_B)
    mn_routes, cn_routes = _routes_seen(monkeypatch, mn), _routes_seen(monkeypatch, cn)
    sessions = {s.record.name: s for s in w.dc.clients.by_id.values()}
    sessions["mn.a.example"].rtt, sessions["cn.a.example"].rtt = 0.040, 0.120
    ready = w.path("mn", "cn.a.example")
    assert ready.path.mode is PathMode.RS_S
    mn_rd = [r for r in mn_routes if isinstance(r, RouteDirection)][-1]
    cn_rd = [r for r in cn_routes if isinstance(r, RouteDirection)][-1]
    assert isinstance(mn_rd, RouteDirection) and isinstance(cn_rd, RouteDirection)
    lead = punch_lead(0.120, 0.040)
    assert cn_rd.punch_delay == delay_ms(lead) == 120
    # The in-memory network has no latency: the Ack's round trip measured 0 (and smoothed into cn's).
    assert mn_rd.punch_delay == delay_ms(lead - 0.040 / 2) == 100
    assert sessions["cn.a.example"].rtt == pytest.approx(0.120 * 7 / 8)


def test_dcs_time_a_cross_domain_punch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Across two DCs the answering DC never sees the requester: its node gets PUNCH_LEAD; its Peer
    Answer carries what is left of that when it leaves, and the requesting DC gives its node that less
    the node's own one-way time."""
    from ntmobile.wire import RouteDirection

    from .test_dc_peering import World

    w = World("cone", "cone", traversal=True)
    w.net.run_until(lambda: all(s["nat_class"] == "CONE" for s in w.dca.sessions() if s["name"] == "mn.a.example"),
                    max_time=5)
    next(s for s in w.dca.clients.by_id.values() if s.record.name == "mn.a.example").rtt = 0.060
    mn_routes, cn_routes = _routes_seen(monkeypatch, w.mn), _routes_seen(monkeypatch, w.cn)
    w.connect(w.mn, "mn", "cn.b.example")
    mn_rd = [r for r in mn_routes if isinstance(r, RouteDirection)][-1]
    cn_rd = [r for r in cn_routes if isinstance(r, RouteDirection)][-1]
    assert isinstance(mn_rd, RouteDirection) and isinstance(cn_rd, RouteDirection)
    assert cn_rd.punch_delay == delay_ms(PUNCH_LEAD)
    assert mn_rd.punch_delay == delay_ms(PUNCH_LEAD - 0.060 / 2)  # (no latency in memory: nothing else)
    assert any(s["name"] == "cn.b.example" and s["rtt_ms"] == 0.0 for s in w.dcb.sessions())


def _probing(now: float = 0.0) -> PathTraversal:
    t = PathTraversal((OBS, LOCAL), start_at=now + 0.25)
    assert t.state is TraversalState.OFFERED
    assert t.on_timer(now) == []
    assert t.deadline() == now + 0.25
    out = t.on_timer(now + 0.25)
    assert out == [SendProbe(OBS), SendProbe(LOCAL)]
    assert t.state is TraversalState.PROBING
    assert t.status() == f"RS_S (trying {OBS[0]}:{OBS[1]})"
    return t


def test_punch_succeeds_on_first_ack() -> None:
    t = _probing()
    # The peer's probes are answered meanwhile; the first from a candidate also triggers a probe of ours.
    assert t.on_probe(OBS, 0.3) == [SendProbeAck(OBS), SendProbe(OBS)]
    assert t.on_probe(OBS, 0.301) == [SendProbeAck(OBS)]
    assert t.on_probe(("203.0.113.9", 9), 0.302) == [SendProbeAck(("203.0.113.9", 9))]  # not a candidate
    assert t.stats["probes_triggered"] == 1
    assert t.state is TraversalState.PROBING
    assert t.on_probe_ack(OBS, 0.31) == [GoDirect(OBS)]
    assert t.state is TraversalState.DIRECT and t.peer == OBS
    assert t.status() == "DIRECT (punched)"
    # A late ack of the other candidate changes nothing.
    assert t.on_probe_ack(LOCAL, 0.32) == []
    assert t.peer == OBS


def test_probes_repeat_then_punch_fails_with_backoff() -> None:
    t = _probing()
    now, sent = 0.25, 2
    while True:
        dl = t.deadline()
        assert dl is not None and dl > now
        now = dl
        out = t.on_timer(now)
        if t.state is not TraversalState.PROBING:
            break
        assert all(isinstance(a, SendProbe) for a in out)
        sent += len(out)
    assert now == pytest.approx(0.25 + PROBE_WINDOW)
    assert 2 * PROBE_WINDOW / 0.1 <= sent <= 2 * PROBE_WINDOW / 0.05 + 2  # every 50-100 ms
    assert t.state is TraversalState.RELAYED and t.status() == "RS_S (punch failed)"
    assert t.deadline() == pytest.approx(now + BACKOFF_FIRST)
    assert t.on_timer(now + BACKOFF_FIRST) == [AskDc(no_punch=False)]
    # The next offer is probed again; the backoff doubled.
    t.offer((OBS,), now + BACKOFF_FIRST + 1)
    assert t.state is TraversalState.OFFERED
    assert t.backoff == 2 * BACKOFF_FIRST


def test_backoff_caps() -> None:
    t = PathTraversal((OBS,), 0.0)
    now = 0.0
    for _ in range(10):
        t.on_timer(now)
        t.on_timer(now + PROBE_WINDOW)
        assert t.state is TraversalState.RELAYED
        now += PROBE_WINDOW + t.backoff
        t.offer((OBS,), now)
    assert t.backoff == BACKOFF_MAX


def test_unsolicited_and_unauthenticated_acks_are_ignored() -> None:
    t = _probing()
    assert t.on_probe_ack(("203.0.113.66", 9), 0.3) == []
    t.on_unauthenticated()
    assert t.state is TraversalState.PROBING
    assert t.stats["probe_acks_unsolicited"] == 1 and t.stats["probe_auth_failed"] == 1
    # Before any probe went out nothing is solicited either.
    u = PathTraversal((OBS,), 1.0)
    assert u.on_probe_ack(OBS, 0.5) == [] and u.state is TraversalState.OFFERED


def _direct() -> PathTraversal:
    t = _probing()
    t.on_probe_ack(OBS, 0.3)
    return t


def test_silent_direct_path_falls_back_within_two_seconds() -> None:
    t = _direct()
    now, tx, rx = 0.3, 100, 50
    t.sample(now, tx, rx)
    for _ in range(5):  # traffic both ways: nothing happens
        now += SAMPLE_INTERVAL
        tx += 3
        rx += 3
        assert t.sample(now, tx, rx) == []
    black_hole = now
    probed = False
    while t.state is TraversalState.DIRECT:
        now += SAMPLE_INTERVAL
        tx += 3
        out = t.sample(now, tx, rx)
        probed |= SendProbe(OBS) in out
    assert probed
    assert out == [GoRelayed("direct silent")]  # relay leg still alive: no DC round trip needed
    assert now - black_hole <= 2.0
    assert t.status() == "RS_S (direct silent)"
    assert t.deadline() == pytest.approx(now + BACKOFF_FIRST)


def test_idle_direct_path_is_not_silent() -> None:
    t = _direct()
    for i in range(40):
        assert t.sample(0.3 + i * SAMPLE_INTERVAL, 7, 9) == []
    assert t.state is TraversalState.DIRECT


def test_fallback_after_grace_asks_dc_no_punch() -> None:
    t = _direct()
    assert t.on_timer(0.3 + RELAY_GRACE) == [StopRelayLeg()]
    assert not t.relay_alive
    now = 0.3 + RELAY_GRACE
    t.sample(now, 1, 1)
    out: list[object] = []
    while t.state is TraversalState.DIRECT:
        now += SAMPLE_INTERVAL
        out = list(t.sample(now, int(now * 100), 1))
    assert out == [GoRelayed("direct silent"), AskDc(no_punch=True)]


def test_move_resets_backoff_and_retries_at_once() -> None:
    t = _direct()
    t.backoff = 240.0
    assert t.on_move(1.0) == [GoRelayed("moved"), AskDc(no_punch=False)]
    assert t.backoff == BACKOFF_FIRST  # reset
    assert t.state is TraversalState.RELAYED
    assert t.deadline() is None  # the DC's answer (a new offer) drives the next attempt


def test_no_candidates_is_relayed() -> None:
    t = PathTraversal((), 0.0)
    assert t.state is TraversalState.RELAYED and t.status() == "RS_S (no candidates)"


def test_illegal_transition_is_an_internal_error() -> None:
    t = _direct()
    with pytest.raises(TraversalStateError):
        t._set(TraversalState.PROBING)


def test_wire_probe_messages_and_punch_attributes() -> None:
    from ntmobile import wire
    from ntmobile.wire import MessageType, PathProbe, PathProbeAck

    assert (MessageType.PATH_PROBE, MessageType.PATH_PROBE_ACK) == (0x13, 0x14)
    assert wire.encode_body(PathProbe()) == b""
    ack = PathProbeAck(observed=("192.0.2.1", 7412))
    assert wire.encode_body(ack) == b"\x05\x00\x07\x04\x1c\xf4\xc0\x00\x02\x01"
    assert wire.decode_body(MessageType.PATH_PROBE_ACK, wire.encode_body(ack)) == ack
    rd = wire.RouteDirection(path_id=b"PATHID!!", path_role=1, mode=2, path_key=bytes(32), idle_timeout=60,
                             punch_endpoints=(OBS, LOCAL), punch_delay=250)
    body = wire.encode_body(rd)
    assert body.endswith(b"\x2c\x00\x07\x04\x9c\x41\xc6\x33\x64\x07" + b"\x2c\x00\x07\x04\x1c\xf4\x0a\x01\x00\x02"
                         + b"\x2d\x00\x02\x00\xfa")
    assert wire.decode_body(MessageType.ROUTE_DIRECTION, body) == rd
    dr = wire.DirectionRequest(path_id=b"PATHID!!", no_punch=1)
    assert wire.encode_body(dr).endswith(b"\x2e\x00\x01\x01")
    assert wire.decode_body(MessageType.DIRECTION_REQUEST, wire.encode_body(dr)) == dr


def _routes_seen(monkeypatch: pytest.MonkeyPatch, node: object) -> list[object]:
    seen: list[object] = []
    orig = node._on_route_direction  # type: ignore[attr-defined]

    def spy(header: object, rd: object, addr: object, now: float) -> None:
        seen.append(rd)
        orig(header, rd, addr, now)

    monkeypatch.setattr(node, "_on_route_direction", spy)
    return seen


@pytest.mark.parametrize(("a_nat", "b_nat", "offered"), [
    ("cone", "cone", True), ("cone", "symmetric", True), ("symmetric", "symmetric", False)])
def test_dcs_give_both_nodes_of_a_cross_domain_rs_s_path_the_others_candidates(
        monkeypatch: pytest.MonkeyPatch, a_nat: str, b_nat: str, offered: bool) -> None:
    """mn.a.example and cn.b.example (two DCs): the answering DC puts its node's candidates into the
    Peer Answer, the requesting DC passes them on; each node gets the other's observed endpoint."""
    from ntmobile.core.dc import DirectionDecision
    from ntmobile.core.node import PathReady
    from ntmobile.wire import PathMode, RouteDirection

    from .test_dc_peering import CLASS, World

    w = World(a_nat, b_nat, traversal=True)
    w.net.run_until(lambda: {s["nat_class"] for s in w.dca.sessions() if s["name"] == "mn.a.example"}
                    == {CLASS[a_nat].name} and {s["nat_class"] for s in w.dcb.sessions()
                                                if s["name"] == "cn.b.example"} == {CLASS[b_nat].name}, max_time=5)
    mn_routes, cn_routes = _routes_seen(monkeypatch, w.mn), _routes_seen(monkeypatch, w.cn)
    ready = w.connect(w.mn, "mn", "cn.b.example")
    assert isinstance(ready, PathReady) and ready.path.mode is PathMode.RS_S  # still relayed first
    mn_rd = [r for r in mn_routes if isinstance(r, RouteDirection)][-1]
    cn_rd = [r for r in cn_routes if isinstance(r, RouteDirection)][-1]
    assert isinstance(mn_rd, RouteDirection) and isinstance(cn_rd, RouteDirection)
    cn_obs = next(s["endpoint"] for s in w.dcb.sessions() if s["name"] == "cn.b.example")
    mn_obs = next(s["endpoint"] for s in w.dca.sessions() if s["name"] == "mn.a.example")
    if offered:
        assert mn_rd.punch_endpoints[0] == tuple(cn_obs) and mn_rd.punch_delay == 250
        assert cn_rd.punch_endpoints[0] == tuple(mn_obs) and cn_rd.punch_delay == 250
    else:
        assert mn_rd.punch_endpoints == () == cn_rd.punch_endpoints
        assert mn_rd.punch_delay is None is cn_rd.punch_delay
    ev = [e for e in w.net.events_of("dcb", DirectionDecision) if e.path_id == ready.path.path_id][-1]
    assert any(("traversal: punch offered" if offered else "traversal: symmetric both") in x for x in ev.evidence)
    w.exchange_data(ready.path.path_id)  # the relayed path works as before


@pytest.mark.parametrize(("a_nat", "b_nat", "punched"), [
    ("cone", "cone", True), ("symmetric", "symmetric", False)])
def test_nodes_punch_a_cross_domain_rs_s_path_to_direct(a_nat: str, b_nat: str, punched: bool) -> None:
    """In the in-memory NAT world (cone: endpoint-independent mapping, filtered inbound), the path
    starts RS_S and becomes DIRECT on both nodes with the same Path ID; data flows before and after."""
    from ntmobile.core.node import PathReady
    from ntmobile.wire import PathMode

    from .test_dc_peering import CLASS, World

    w = World(a_nat, b_nat, traversal=True)
    w.net.run_until(lambda: {s["nat_class"] for s in w.dca.sessions() if s["name"] == "mn.a.example"}
                    == {CLASS[a_nat].name} and {s["nat_class"] for s in w.dcb.sessions()
                                                if s["name"] == "cn.b.example"} == {CLASS[b_nat].name}, max_time=5)
    ready = w.connect(w.mn, "mn", "cn.b.example")
    assert isinstance(ready, PathReady) and ready.path.mode is PathMode.RS_S
    pid = ready.path.path_id
    w.exchange_data(pid)

    def modes() -> tuple[object, object]:
        a, b = w.mn.path_info(pid), w.cn.path_info(pid)
        return (a.mode if a else None, b.mode if b else None)

    if punched:
        w.net.run_until(lambda: modes() == (PathMode.DIRECT, PathMode.DIRECT), max_time=5)
    else:
        with pytest.raises(AssertionError, match="not met"):
            w.net.run_until(lambda: modes() != (PathMode.RS_S, PathMode.RS_S), max_time=5)
    if punched:
        assert modes() == (PathMode.DIRECT, PathMode.DIRECT)
        assert w.mn.stats["traversal_direct"] == 1 == w.cn.stats["traversal_direct"]
    else:
        assert modes() == (PathMode.RS_S, PathMode.RS_S)
        assert w.mn.stats["traversal_probes"] == 0
    w.exchange_data(pid)


# -- one-sided fallback, re-direction, the data plane's view (issue 16, lab follow-up) ---------------


def _sample_relayed(t: PathTraversal, start: float, until: float, *, direct_too: bool = False) -> list[object]:
    """Samples from ``start`` to ``until`` with data both ways and capsules arriving through the relay
    (and, with ``direct_too``, directly as well); returns the last sample's actions."""
    now, n, out = start, 0, []
    while now < until and t.state is TraversalState.DIRECT:
        n += 1
        out = list(t.sample(now, 100 + n, 50 + n, relayed=n, direct=n if direct_too else 0))
        now += SAMPLE_INTERVAL
    return out


def test_capsules_only_through_the_relay_make_the_direct_side_fall_back() -> None:
    """The peer went back to the relay (its direct path went silent one way): our side still receives
    (through the relay), so it never looks silent; it follows the peer within RELAYED_SETTLE +
    RELAYED_FALLBACK + a sample."""
    from ntmobile.core.node.traversal import RELAYED_FALLBACK, RELAYED_SETTLE

    t = _direct()  # DIRECT at 0.3
    out = _sample_relayed(t, 0.4, 0.3 + RELAYED_SETTLE + RELAYED_FALLBACK + 2 * SAMPLE_INTERVAL + 0.01)
    assert out == [GoRelayed("peer relayed")]
    assert t.state is TraversalState.RELAYED and t.status() == "RS_S (peer relayed)"
    assert t.stats["fallbacks"] == 1


def test_relayed_capsules_during_the_switch_or_beside_direct_ones_are_no_fallback() -> None:
    t = _direct()
    from ntmobile.core.node.traversal import RELAYED_SETTLE

    # Right after the switch the peer may still be probing: its capsules come through the relay.
    assert _sample_relayed(t, 0.4, 0.3 + RELAYED_SETTLE - 0.05) == []
    assert t.state is TraversalState.DIRECT
    # Later, relayed capsules beside direct ones (in flight across the peer's switch): no fallback.
    assert _sample_relayed(t, 0.3 + RELAYED_SETTLE, 5.0, direct_too=True) == []
    assert t.state is TraversalState.DIRECT


def test_reset_by_a_re_direction_then_a_new_offer() -> None:
    t = _direct()
    t.backoff = 120.0
    t.reset("re-directed")
    assert t.state is TraversalState.RELAYED and t.status() == "RS_S (re-directed)"
    assert t.deadline() is None and t.backoff == BACKOFF_FIRST and t.relay_alive
    t.reset("re-directed")  # twice is harmless
    t.offer((OBS,), 5.0)
    assert t.state is TraversalState.OFFERED and t.deadline() == 5.0


def test_forwarder_never_learns_the_relay_as_the_peer() -> None:
    """A punched path (DIRECT, address learning on): capsules still arriving through the relay are
    delivered and counted, the peer's endpoint stays; a new address of the peer itself is learnt
    (handover)."""
    import os

    from ntmobile.core.node import LegWatch
    from ntmobile.crypto import CapsuleOpener, CapsuleSealer
    from ntmobile.dataplane.forwarder import NodeForwarder

    from .test_reassembly_limits import _Tun, ip4

    tun = _Tun()
    tun.vnet_hdr = False  # per-packet capsules
    key, pid = os.urandom(32), b"\x07" * 8
    relay, peer, moved = ("192.0.2.20", 7411), ("192.0.2.101", 7412), ("192.0.2.102", 7412)
    learnt: list[tuple[str, int]] = []
    fwd = NodeForwarder(tun, object(), on_learn=lambda fp, a: learnt.append(a))  # type: ignore[arg-type]
    leg = LegWatch(relay, frozenset({peer}))
    fp = fwd.add(pid, CapsuleSealer(os.urandom(32), pid, 0), CapsuleOpener(key), ["100.64.2.1"], peer,
                 learn=True, mode="DIRECT", leg=leg)
    s = CapsuleSealer(key, pid, 0)
    pkt = ip4("100.64.2.1", "100.64.1.2", b"x" * 40)
    for _ in range(3):
        fwd.on_capsule(memoryview(s.seal(pkt)), relay, 0.0)
    assert fp.endpoint == peer and learnt == [] and (leg.relayed, leg.direct) == (3, 0)
    fwd.on_capsule(memoryview(s.seal(pkt)), peer, 0.0)
    assert (leg.relayed, leg.direct) == (3, 1) and fp.endpoint == peer
    fwd.on_capsule(memoryview(s.seal(pkt)), moved, 0.0)
    assert fp.endpoint == moved and learnt == [moved]
    assert len(tun.written) == 5


def test_nodes_follow_a_peer_that_went_back_to_the_relay() -> None:
    """Both nodes punched to DIRECT; cn alone falls back to the relay (as after a one-way black hole):
    mn sees cn's capsules arrive only through the relay and falls back too; data flows throughout;
    same Path ID."""
    from ntmobile.core.node import PathReady
    from ntmobile.wire import PathMode

    from .test_dc_peering import World

    w = World("cone", "cone", traversal=True)
    w.net.run_until(lambda: all(s["nat_class"] == "CONE" for s in w.dca.sessions() if s["name"] == "mn.a.example"),
                    max_time=5)
    ready = w.connect(w.mn, "mn", "cn.b.example")
    assert isinstance(ready, PathReady)
    pid = ready.path.path_id

    def modes() -> tuple[object, object]:
        a, b = w.mn.path_info(pid), w.cn.path_info(pid)
        return (a.mode if a else None, b.mode if b else None)

    w.net.run_until(lambda: modes() == (PathMode.DIRECT, PathMode.DIRECT), max_time=5)
    w.net.run_for(1.5)  # past RELAYED_SETTLE
    cn_path = w.cn._paths[pid]
    w.cn._traversal_do(cn_path, cn_path.traversal._fail("test: direct silent", w.net.now),  # type: ignore[union-attr]
                       w.net.now)
    assert modes() == (PathMode.DIRECT, PathMode.RS_S)
    start = w.net.now
    while modes()[0] is PathMode.DIRECT and w.net.now - start < 3:
        w.exchange_data(pid)
        w.net.run_for(0.05)
    assert modes() == (PathMode.RS_S, PathMode.RS_S)
    assert w.net.now - start < 2.0
    t = w.mn._paths[pid].traversal
    assert t is not None and t.reason == "peer relayed"
    w.exchange_data(pid)


def test_a_timed_retry_is_offered_again_and_no_punch_is_plain_rs_s(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a fallback the node asks again (a re-direction naming the path): the DCs time a new punch
    (both nodes get candidates, the path goes DIRECT again, same Path ID); asked with NO_PUNCH they
    direct it as plain RS-S (no candidates for either node)."""
    from ntmobile.wire import PathMode, RouteDirection

    from .test_dc_peering import World

    w = World("cone", "cone", traversal=True)
    w.net.run_until(lambda: all(s["nat_class"] == "CONE" for s in w.dca.sessions() if s["name"] == "mn.a.example"),
                    max_time=5)
    ready = w.connect(w.mn, "mn", "cn.b.example")
    pid = ready.path.path_id  # type: ignore[union-attr]
    w.net.run_until(lambda: w.mn._paths[pid].mode is PathMode.DIRECT is w.cn._paths[pid].mode, max_time=5)
    mn_routes, cn_routes = _routes_seen(monkeypatch, w.mn), _routes_seen(monkeypatch, w.cn)
    for node in (w.mn, w.cn):
        node._traversal_do(node._paths[pid], [GoRelayed("test")], w.net.now)
    w.net.run_for(0.5)
    assert w.mn._redirect_path(w.mn._paths[pid], w.net.now, no_punch=True)
    w.net.run_until(lambda: bool(mn_routes) and bool(cn_routes), max_time=5)
    last = [r for r in mn_routes + cn_routes if isinstance(r, RouteDirection)]
    assert last and all(r.mode == PathMode.RS_S and r.punch_endpoints == () for r in last)
    w.exchange_data(pid)
    assert w.mn._paths[pid].mode is PathMode.RS_S
    mn_routes.clear()
    cn_routes.clear()
    w.net.run_for(0.5)
    t = w.mn._paths[pid].traversal
    assert t is not None
    w.mn._traversal_do(w.mn._paths[pid], [AskDc(no_punch=False)], w.net.now)  # the timed retry
    w.net.run_until(lambda: bool(mn_routes) and bool(cn_routes), max_time=5)
    offered = [r for r in mn_routes + cn_routes if isinstance(r, RouteDirection)]
    assert offered and all(r.punch_endpoints for r in offered)
    w.net.run_until(lambda: w.mn._paths[pid].mode is PathMode.DIRECT is w.cn._paths[pid].mode, max_time=5)
    assert w.mn.stats["traversal_retries"] == 1 and w.mn.stats["traversal_no_punch_requests"] == 0
    w.exchange_data(pid)


def test_no_nonce_is_sealed_twice_across_punch_fallback_and_retry() -> None:
    """docs/security.md §3.1 across the switch: data and signalling on the relay leg, punched DIRECT,
    back on the relay, punched again after a retry (a re-direction with a fresh relay key): the nonce
    ledger sees no (key, nonce) twice, and no capsule identity goes out twice with other bytes."""
    from ntmobile.wire import PathMode

    from .nonce_ledger import nonce_ledger
    from .test_dc_peering import World
    from .test_nonce_safety import wire_repeats

    with nonce_ledger() as led:
        w = World("cone", "cone", traversal=True)
        w.net.run_until(lambda: all(s["nat_class"] == "CONE" for s in w.dca.sessions()
                                    if s["name"] == "mn.a.example"), max_time=5)
        ready = w.connect(w.mn, "mn", "cn.b.example")
        pid = ready.path.path_id  # type: ignore[union-attr]
        w.exchange_data(pid)
        w.net.run_until(lambda: w.mn._paths[pid].mode is PathMode.DIRECT is w.cn._paths[pid].mode, max_time=5)
        w.exchange_data(pid)
        for node in (w.mn, w.cn):
            node._traversal_do(node._paths[pid], [GoRelayed("test")], w.net.now)
        w.exchange_data(pid)
        w.mn._traversal_do(w.mn._paths[pid], [AskDc(no_punch=False)], w.net.now)
        w.net.run_until(lambda: w.mn._paths[pid].mode is PathMode.DIRECT is w.cn._paths[pid].mode, max_time=5)
        w.exchange_data(pid)
        w.net.run_for(15.0)  # keepalives on the direct path, the relay's grace over
        w.exchange_data(pid)
    assert led.seals > 50 and led.reused == []
    assert wire_repeats(w.net) == []


def test_throughput_bench_keeps_rs_s_relayed_and_measures_the_punched_path_apart() -> None:
    """`ntm bench throughput`: ntm-rs-s runs in labs whose DC has traversal off; ntm-punched only in
    the `punched` condition, whose DC punches (issue 16)."""
    from ntmobile.bench.throughput import CONDITIONS, EXCLUSIVE, REGISTRY, topology

    assert REGISTRY["ntm-punched"].conditions == ("punched",) and "punched" in EXCLUSIVE
    for cond, (rate, punch) in CONDITIONS.items():
        dc = topology(rate, traversal=punch).host("dca").daemons[0]
        assert dc.config["traversal"] is (cond == "punched")
