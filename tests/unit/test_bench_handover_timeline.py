"""`ntm bench handover`: the slowest move's timeline tells a queue (late, none lost) from a loss."""

from __future__ import annotations

from pathlib import Path

from ntmobile.bench.handover import Move, Probes, analyse, format_timeline, timeline


def _probes(delay: dict[int, float], lost: set[int], t0: float = 1000.0) -> Probes:
    p = Probes()
    for s in range(1, 101):
        ts = t0 + s * 0.01
        p.sent[s] = (ts, True)
        if s not in lost:
            p.received[s] = ts + delay.get(s, 0.001)
    return p


def test_timeline_shows_probes_held_in_a_queue(tmp_path: Path) -> None:
    # From probe 41 on, everything waits until 1001.45 (a 1 s ARP retransmission would look like
    # this: the kernel's queue releases them in order), none lost.
    delay = {s: max(0.001, 1001.45 - (1000.0 + s * 0.01)) for s in range(41, 101)}
    probes = _probes(delay, set())
    m = Move("netb", 1000.405, 1000.41)
    analyse([m], probes, 1001.01)
    log = tmp_path / "mn-node.log"
    log.write_text("2026-12-01 10:00:00,000 ntm.node INFO far outside the window\n")
    events = timeline(m, probes, {"mn": log})
    text = "\n".join(format_timeline(events))
    assert m.lost == 0 and m.gap_ms is not None and m.gap_ms > 1000
    assert "delivered late" in text and "not lost" in text
    assert "far outside" not in text
    assert [e["ms"] for e in events] == sorted(e["ms"] for e in events)


def test_timeline_counts_lost_probes() -> None:
    probes = _probes({}, set(range(41, 46)))
    m = Move("global", 1000.405, 1000.41)
    analyse([m], probes, 1001.01)
    text = "\n".join(format_timeline(timeline(m, probes, {})))
    assert m.lost == 5
    assert "5 probes sent from here on were lost (#41..#45)" in text


def test_timeline_merges_the_daemons_trace_marks() -> None:
    probes = _probes({}, set())
    m = Move("global", 1000.405, 1000.41)
    analyse([m], probes, 1001.01)
    marks = [{"t": 1000.412, "host": "mn", "what": "send", "type": "REGISTRATION_REQUEST", "peer": "192.0.2.10:7410"},
             {"t": 1000.418, "host": "dca", "what": "commit", "ms": 5.5},
             {"t": 999.0, "host": "mn", "what": "netlink"}]  # outside the window
    text = "\n".join(format_timeline(timeline(m, probes, {}, marks=marks)))
    assert "mn*      send REGISTRATION_REQUEST 192.0.2.10:7410" in text
    assert "dca*     commit (took 5.5 ms)" in text and "netlink" not in text
