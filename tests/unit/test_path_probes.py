"""`ntm ping` / `ntm netcheck` probes in the node core: a Keepalive sent once on the path's (or the DC
session's) authenticated channel, answered by the peer (DIRECT) or the relay (RS_S, RS_N); its answer
timed, its loss reported after PATH_PROBE_TIMEOUT; a forged or replayed answer does nothing."""

from __future__ import annotations

from ntmobile.core.node import DcProbed, PathProbed
from ntmobile.core.timing import PATH_PROBE_TIMEOUT
from ntmobile.wire import MessageType, PathMode

from .harness import World


def probed(w: World, host: str, cls: type) -> list:  # type: ignore[type-arg]
    return w.net.events_of(host, cls)


def test_rs_s_probe_is_answered_by_the_relay_and_timed() -> None:
    w = World(dc_id=b"\x01" * 8)
    w.node("mn", (("10.1.0.10", 7412), ("192.0.2.100", 7412)))
    w.node("cn", (("10.2.0.10", 7412), ("192.0.2.101", 7412)))
    ready = w.path("mn", "cn.a.example")
    assert ready.path.mode is PathMode.RS_S
    pid = w.mn.probe_path(ready.path.path_id, w.net.now)
    assert pid is not None
    w.net.run_until(lambda: bool(probed(w, "mn", PathProbed)))
    [ev] = probed(w, "mn", PathProbed)
    assert ev.probe_id == pid and ev.mode is PathMode.RS_S and ev.rs_name == "rs1"
    assert ev.endpoint == ("192.0.2.20", 7411) and ev.rtt is not None and 0 <= ev.rtt < PATH_PROBE_TIMEOUT
    assert w.mn.stats["path_probes"] == 1
    # Unknown or unestablished paths: no probe.
    assert w.mn.probe_path(b"\x00" * 8, w.net.now) is None


def test_a_lost_probe_is_reported_once_after_the_timeout_and_never_retransmitted() -> None:
    w = World(dc_id=b"\x01" * 8)
    w.node("mn", (("10.1.0.10", 7412), ("192.0.2.100", 7412)))
    w.node("cn", (("10.2.0.10", 7412), ("192.0.2.101", 7412)))
    ready = w.path("mn", "cn.a.example")
    w.net.drop = lambda src, dst, data: src == "mn" and dst == "rs"
    def keepalives() -> int:  # (traversal's Path Probes to the peer's candidates are other datagrams)
        return sum(1 for d in w.net.sent_by["mn"] if d[1] == MessageType.KEEPALIVE)

    sent = keepalives()
    t0 = w.net.now
    pid = w.mn.probe_path(ready.path.path_id, w.net.now)
    w.net.run_until(lambda: bool(probed(w, "mn", PathProbed)), max_time=5)
    [ev] = probed(w, "mn", PathProbed)
    assert ev.probe_id == pid and ev.rtt is None
    assert PATH_PROBE_TIMEOUT <= w.net.now - t0 < PATH_PROBE_TIMEOUT + 0.5
    assert keepalives() - sent == 1  # sent once


def test_dc_probe_and_a_replayed_answer() -> None:
    w = World(dc_id=b"\x01" * 8)
    w.node("mn", (("10.1.0.10", 7412), ("192.0.2.100", 7412)))
    pid = w.mn.probe_dc(w.net.now)
    assert pid is not None
    w.net.run_until(lambda: bool(probed(w, "mn", DcProbed)))
    [ev] = probed(w, "mn", DcProbed)
    assert ev.probe_id == pid and ev.rtt is not None
    # The DC's answer once more (a replay): dropped and counted, no second event. (The DC's last
    # datagram went to mn: the log says so.)
    assert w.net.log[-1][1:3] == ("dc", "mn")
    ack = w.net.sent_by["dc"][-1]
    drops = sum(v for k, v in w.mn.stats.items() if k.startswith("drop_"))
    w.mn.receive_datagram(ack, ("192.0.2.10", 7410), w.net.now)
    w.net.pump_events()
    assert len(probed(w, "mn", DcProbed)) == 1
    assert sum(v for k, v in w.mn.stats.items() if k.startswith("drop_")) == drops + 1


def test_the_dc_s_nat_class_on_keepalive_answers_and_an_unknown_value() -> None:
    """The DC's answer to a session Keepalive carries the node's NAT class; a value the node does not
    know is counted and changes nothing; a new registration forgets the class (a move may change it)."""
    w = World(dc_id=b"\x01" * 8)
    w.node("mn", (("10.1.0.10", 7412), ("192.0.2.100", 7412)))
    pid = w.mn.probe_dc(w.net.now)
    w.net.run_until(lambda: any(e.probe_id == pid for e in probed(w, "mn", DcProbed)))
    assert w.mn.nat_class is not None
    known = w.mn.nat_class
    w.mn._on_nat_class(200)
    assert w.mn.nat_class is known and w.mn.stats["bad_nat_class"] == 1
