"""`ntm bench throughput` with Nebula beside ntmobile, a short run: every mode produces a rate and a
CPU cost per GB, nebula-relay really goes through the Nebula relay on rs1, and the report puts the
ratios side by side. The figures themselves are the bench's business."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ntmobile.bench.throughput import run_bench

from .conftest import new_prefix

pytestmark = [pytest.mark.root, pytest.mark.lab]


def test_nebula_modes_produce_figures_beside_ntmobile(tmp_path: Path) -> None:
    modes = ("veth", "ntm-direct", "nebula", "ntm-rs-s", "nebula-relay")
    rep = run_bench(runs=1, seconds=2, conditions=("unlimited",), modes=modes, prefix=new_prefix()[:6],
                    out_dir=tmp_path, log=lambda _line: None)
    res = rep["conditions"]["unlimited"]
    for m in modes:
        assert res["median"][m] > 1.0, m
        assert res["cpu_median"][m] > 0, m
    assert res["via_share"]["nebula-relay"][0] >= 0.9  # rs1 received what it relayed
    assert {"ntm-direct / nebula", "ntm-rs-s / nebula-relay"} <= set(res["ratios"])
    assert "ntm-direct / nebula" in res["cpu_ratios"]
    md = (tmp_path / "bench-throughput.md").read_text()
    assert "nebula-relay" in md and "CPU s/GB" in md
    assert json.loads((tmp_path / "bench-throughput.json").read_text())["modes"] == list(modes)
