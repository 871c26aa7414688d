"""The debug timing trace (runtime.trace) and `ntm bench setup`'s report of it."""

from __future__ import annotations

from ntmobile.bench.setup import ratios, timeline_lines, to_markdown
from ntmobile.runtime.trace import ENV, Trace, from_env
from ntmobile.wire import MessageType


def test_trace_names_signalling_and_leaves_data_out() -> None:
    tr = Trace(maxlen=3)
    tr.datagram("send", bytes([1, MessageType.DIRECTION_REQUEST]) + b"x", ("192.0.2.10", 7410))
    tr.datagram("recv", bytes([1, MessageType.DATA]) + b"x", ("192.0.2.10", 7410))
    tr.datagram("recv", bytes([1, 0x7E]), ("192.0.2.10", 7410))
    tr.datagram("recv", b"\x01", ("192.0.2.10", 7410))
    marks = tr.snapshot()
    assert [(m["what"], m["type"]) for m in marks] == [("send", "DIRECTION_REQUEST"), ("recv", "0x7e")]
    assert marks[0]["peer"] == "192.0.2.10:7410" and marks[0]["t"] <= marks[1]["t"]
    for i in range(5):
        tr.mark("dns-query", n=i)
    assert len(tr.snapshot()) == 3  # a ring


def test_trace_off_unless_asked(monkeypatch: object) -> None:
    import pytest

    mp = pytest.MonkeyPatch()
    try:
        mp.delenv(ENV, raising=False)
        assert from_env() is None
        mp.setenv(ENV, "1")
        assert isinstance(from_env(), Trace)
    finally:
        mp.undo()


def test_setup_report_puts_nebula_beside_with_the_ratio_and_timeline() -> None:
    tl = [{"host": "mn", "ms": 0.5, "what": "dns-query", "name": "gl.a.example."},
          {"host": "mn", "ms": 1.0, "what": "send", "type": "DIRECTION_REQUEST", "peer": "192.0.2.10:7410"}]
    report = {"names": 1, "peer_samples": 1, "target_p50_ms": 10.0, "cases": {
        "ntm-direct-local": {"n": 1, "ok": 1, "p50_ms": 4.0, "p95_ms": 4.0, "min_ms": 4.0, "max_ms": 4.0,
                             "first_reply_p50_ms": 4.5, "first_reply_p95_ms": 4.5,
                             "samples": [{"timeline": tl, "first_reply_ms": 4.5}]},
        "nebula": {"n": 1, "ok": 1, "p50_ms": 6.0, "p95_ms": 6.0, "min_ms": 6.0, "max_ms": 6.0, "samples": []}}}
    report["ratios"] = ratios(report)
    assert report["ratios"] == {"ntm-direct-local/nebula": 0.75}
    md = to_markdown(report)
    assert "| nebula (first packet) | 1 / 1 |" in md and "| ntm-direct-local/nebula | 0.75 |" in md
    assert "DIRECTION_REQUEST" in md
    lines = timeline_lines(tl, 4.5)
    assert lines[-1].strip().startswith("4.50 ms (+  3.50)") and "client first reply" in lines[-1]


def test_bench_setup_reports_time_to_direct_per_nat_pair() -> None:
    """`ntm bench setup` (issue 16): per NAT pair, initial -> final mode and time to direct (p50, p90)
    from the samples that matched the expected modes; a pair that stays relayed has no figure."""
    from ntmobile.bench.setup import summarize, to_markdown

    punched = [{"ok": True, "ms": 10.0 + i, "first_reply_ms": 12.0 + i, "time_to_direct_ms": 250.0 + i}
               for i in range(5)] + [{"ok": False, "ms": 99.0, "time_to_direct_ms": 9999.0}]
    relayed = [{"ok": True, "ms": 11.0, "first_reply_ms": 13.0, "time_to_direct_ms": None}]
    s = summarize(punched)
    assert s["ok"] == 5 and s["time_to_direct_p50_ms"] == 252.0 and s["time_to_direct_p90_ms"] <= 254.0
    assert "time_to_direct_p50_ms" not in summarize(relayed)
    md = to_markdown({"names": 1, "peer_samples": 5, "target_p50_ms": 10.0,
                      "cases": {"ntm-rs-s": {"samples": punched, **s},
                                "ntm-symmetric": {"samples": relayed, **summarize(relayed)}}})
    assert "| ntm-rs-s | port_restricted / port_restricted | RS_S -> DIRECT | 5 / 6 | 14.0 |" in md
    assert "| ntm-symmetric | symmetric / port_restricted | RS_S -> RS_S | 1 / 1 | 13.0 | 13.0 | - | - |" in md
