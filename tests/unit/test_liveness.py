"""Busy-path liveness (core.node.liveness, issue 20): a dead relay on a path that carries data is
noticed within 2 s (probe at once after 0.4 s of silence, 1 s unanswered), with a fake clock and real
cores; idle paths, paths with replies, one-way traffic through a live relay and a stalled event loop
never count as a dead relay."""

from __future__ import annotations

from typing import Any

from ntmobile.core.node import PathClosed
from ntmobile.core.timing import LIVENESS_PROBE_LOSS, LIVENESS_SAMPLE, LIVENESS_SILENCE
from ntmobile.wire import PathMode

from .test_relay_failure import TwoRelays

BOUND = 2.0


def busy(w: Any, pid: bytes, seconds: float, *, replies: bool, step: float = 0.05) -> None:
    """The data plane seals a capsule every ``step`` s (and, with ``replies``, opens one back)."""
    end = w.net.now + seconds
    while w.net.now < end and pid in w.mn._paths:
        path = w.mn._paths[pid]
        path.sealer.seal(b"data")
        if replies:
            path.opener.window.update(path.opener.window.top + 1)
        w.net.run_for(step)


def closed(w: Any) -> list[PathClosed]:
    return list(w.net.events_of("mn", PathClosed))


def test_the_bound_is_within_two_seconds() -> None:
    assert LIVENESS_SILENCE + 2 * LIVENESS_SAMPLE + LIVENESS_PROBE_LOSS <= BOUND


def test_dead_relay_on_a_busy_path_is_noticed_within_two_seconds_and_the_path_moves() -> None:
    w = TwoRelays()
    first = w.setup_path().path
    assert first.mode is PathMode.RS_N and first.rs_name == "rs1"
    busy(w, first.path_id, 1.0, replies=True)
    assert closed(w) == [] and w.mn.stats["liveness_probes"] == 0  # replies: no probe at all
    dead_at = w.net.now
    w.net.drop = lambda src, dst, data: "rs" in (src, dst)  # rs1 is gone (kill -9)
    busy(w, first.path_id, 5.0, replies=False)
    [c] = closed(w)
    took = w.net.now - dead_at
    assert c.path_id == first.path_id and "busy path" in c.reason
    assert took <= BOUND, took
    print(f"dead relay noticed after {took:.2f} s")
    assert w.mn.stats["liveness_relay_lost"] == 1 and w.mn.stats["relay_lost"] == 1
    second = w.setup_path().path  # (rs1 still gone)
    assert second.rs_name == "rs2" and second.path_id != first.path_id


def test_idle_path_never_probes_even_with_the_relay_gone() -> None:
    w = TwoRelays()
    first = w.setup_path().path
    w.net.drop = lambda src, dst, data: "rs" in (src, dst)
    w.net.run_for(10.0)
    assert w.mn.stats["liveness_probes"] == 0 and w.mn.stats["liveness_relay_lost"] == 0
    assert first.path_id in w.mn._paths  # (the keepalive chain notices later, as before)


def test_one_way_traffic_through_a_live_relay_is_no_failure() -> None:
    w = TwoRelays()
    first = w.setup_path().path
    busy(w, first.path_id, 10.0, replies=False)  # e.g. UDP to a GN that never answers
    assert w.mn.stats["liveness_probes"] >= 5  # probed, answered by the relay each time
    assert w.mn.stats["liveness_relay_lost"] == 0 and closed(w) == []


def test_a_stalled_event_loop_is_not_silence_of_the_relay() -> None:
    w = TwoRelays()
    first = w.setup_path().path
    pid = first.path_id
    held: list[bytes] = []

    def hold(src: str, dst: str, data: bytes) -> bool:
        if src == "rs" and dst == "mn":
            held.append(data)  # the answer sits in the node's socket buffer
            return True
        return False

    w.net.drop = hold
    busy(w, pid, 0.8, replies=False)
    assert w.mn.stats["liveness_probes"] == 1
    # The node's loop stalls for 5 s (a loaded CI machine): its next sample comes late.
    w.net.now += 5.0
    w.mn.handle_timer(w.net.now)
    assert w.mn.stats["liveness_stalls"] == 1 and w.mn.stats["liveness_relay_lost"] == 0
    # Then it reads what was waiting: the relay's answers.
    w.net.drop = None
    mn = w.net.hosts["mn"]
    for data in held:
        w.net.receive(mn, data, w.net.hosts["rs"].addr)
    busy(w, pid, 3.0, replies=True)
    assert w.mn.stats["liveness_relay_lost"] == 0 and closed(w) == []


def test_a_download_whose_data_stops_is_noticed_too() -> None:
    """A download: the node only sends ACKs, and none once nothing arrives. Its last ACKs (sent in
    the same sample as the last data) still wait for an answer: the probe goes out, the path moves."""
    w = TwoRelays()
    first = w.setup_path().path
    busy(w, first.path_id, 1.0, replies=True)
    dead_at = w.net.now
    w.net.drop = lambda src, dst, data: "rs" in (src, dst)
    w.net.run_until(lambda: bool(closed(w)), max_time=BOUND)  # nothing sent after the death
    [c] = closed(w)
    assert c.path_id == first.path_id and w.net.now - dead_at <= BOUND
    assert w.mn.stats["liveness_relay_lost"] == 1
