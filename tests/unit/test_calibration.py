"""Every bench records the host calibration beside its figures: two fixed loops, µs each."""

from __future__ import annotations

from ntmobile.bench.calibration import calibration_markdown, host_calibration


def test_calibration_measures_both_loops_and_prints_them() -> None:
    cal = host_calibration()
    assert cal["python_loop_us"] > 0 and cal["aesgcm_seal_us"] > 0
    assert cal["python_loop_iterations"] == 200_000 and cal["aesgcm_payload_bytes"] == 1400
    md = calibration_markdown(cal)
    assert "pure-Python loop" in md and "AES-GCM" in md and f"{cal['aesgcm_seal_us']} µs" in md
    assert calibration_markdown(None) == ""
