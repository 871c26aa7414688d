"""`ntm bench failover` at a small size (2 kills per case): the harness works and shows the issue 20
behaviour: with single relays every kill breaks the flow and a new connection works through the other
relay; with the RS-N pair the same ssh session survives every kill, the node noticing within the
bound and rebuilding its path via the other relay by itself. Gaps are the bench's business (only
their bound is asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ntmobile.bench.failover import run_bench, to_markdown

from .conftest import new_prefix

pytestmark = [pytest.mark.root, pytest.mark.lab]


def test_small_failover_bench_single_relays_and_pair(tmp_path: Path) -> None:
    rep = run_bench(kills=2, prefix=new_prefix(), out_dir=tmp_path, log=lambda _line: None)
    single, pair = rep["results"]
    assert "error" not in single and "error" not in pair, (single.get("error"), pair.get("error"))
    assert single["recovered"] == 2 and single["survived"] == 0
    assert pair["recovered"] == 2 and pair["survived"] == 2
    for r in (single, pair):
        assert [k["relay"] for k in r["per_kill"]] == ["rs1", "rs2"]  # the restarted relay takes the next path
        assert [k["new_relay"] for k in r["per_kill"]] == ["rs2", "rs1"]
        assert r["noticed_s"]["max"] <= 2.5  # the 2 s bound, 0.5 s more for a loaded machine
        assert r["gap_s"]["max"] <= 10.0
    assert (tmp_path / "bench-failover.json").exists() and "| pair | rsnpair | 2 | 2 | 2 |" in to_markdown(rep)
    assert rep["calibration"]["python_loop_us"] > 0
