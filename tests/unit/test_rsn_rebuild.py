"""An RS-N path whose relay dies is rebuilt by the node itself (issue 20), in memory with real cores:
nobody asks for the name again and nothing more is sent to the GN VIP (a download, an ssh session's
output: the node's TCP only acknowledges, and nothing arrives), yet a new path to the same GN VIP
comes up on the other relay. Before the fix the path stayed closed until the node's next packet to
the GN VIP, which such a flow never sends."""

from __future__ import annotations

from typing import Any

from ntmobile.core.node import PathClosed, PathReady
from ntmobile.wire import PathMode

from .test_liveness import BOUND, busy, closed
from .test_relay_failure import RS2_EP, TwoRelays


def via_rs2(w: Any) -> list[PathReady]:
    return [e for e in w.net.events_of("mn", PathReady) if e.path.rs_name == "rs2"]


def run_until_rebuilt(w: Any, max_time: float) -> PathReady:
    def rebuilt() -> bool:
        w.answer_requests()  # the DC's discovery, the relays' distance probes
        return bool(via_rs2(w))
    w.net.run_until(rebuilt, max_time=max_time)
    [ev] = via_rs2(w)
    return ev


def test_busy_rsn_path_is_rebuilt_on_the_other_relay_without_a_new_packet_or_lookup() -> None:
    w = TwoRelays()
    first = w.setup_path().path
    assert first.rs_name == "rs1"
    busy(w, first.path_id, 1.0, replies=True)  # a download: data in, ACKs out
    dead_at = w.net.now
    w.net.drop = lambda src, dst, data: "rs" in (src, dst)  # rs1 is gone (kill -9)
    # Nothing sent after the death (no ACK without data), nothing asked: the node on its own.
    w.net.run_until(lambda: bool(closed(w)), max_time=BOUND)
    closed_at = w.net.now - dead_at
    assert closed_at <= BOUND
    ev = run_until_rebuilt(w, max_time=5.0)
    took = w.net.now - dead_at
    second = ev.path
    print(f"relay death noticed after {closed_at:.2f} s, path rebuilt on rs2 after {took:.2f} s")
    assert second.mode is PathMode.RS_N and second.endpoint == RS2_EP
    assert (second.peer_vip4, second.peer_vip6) == (first.peer_vip4, first.peer_vip6)  # the flow's VIPs
    assert second.path_id != first.path_id and second.data_keys != first.data_keys  # never a key twice
    assert w.mn.stats["rsn_rebuilds"] == 1
    # detection (≤ 2 s) + the DC's one Relay Direction timeout at the dead relay (0.8 s) + set-up
    assert took <= BOUND + 1.5, took
    assert [e.path_id for e in w.rs2.entries()] == [second.path_id]
    # The name leads to the new path: a later lookup gets it at once.
    assert w.setup_path().path.path_id == second.path_id


def test_idle_rsn_path_is_rebuilt_after_its_lost_keepalive() -> None:
    """An idle path (an ssh session nobody types into) notices by its path keepalive (one interval plus
    3 s behind a NAT) and is rebuilt then, so the GN's next segment finds a relay that knows the node."""
    w = TwoRelays()
    first = w.setup_path().path
    w.net.drop = lambda src, dst, data: "rs" in (src, dst)
    ev = run_until_rebuilt(w, max_time=30.0)
    [c] = closed(w)
    assert c.path_id == first.path_id and "keepalive" in c.reason
    assert ev.path.peer_vip4 == first.peer_vip4 and ev.path.path_id != first.path_id
    assert w.mn.stats["rsn_rebuilds"] == 1


def test_no_rebuild_loop_when_no_relay_is_left() -> None:
    """The only relay dies: one rebuild is asked for, the DC has no relay and says so; the node does not
    ask again by itself (the next packet or lookup will)."""
    w = TwoRelays()
    first = w.setup_path().path
    busy(w, first.path_id, 1.0, replies=True)
    w.net.drop = lambda src, dst, data: src in ("rs", "rs2") or dst in ("rs", "rs2")  # both relays gone
    w.net.run_until(lambda: bool(closed(w)), max_time=BOUND)
    w.net.run_for(30.0)
    assert w.mn.stats["rsn_rebuilds"] == 1
    assert [e for e in w.net.events_of("mn", PathReady) if e.path.path_id != first.path_id] == []
    assert len(w.net.events_of("mn", PathClosed)) == 1
