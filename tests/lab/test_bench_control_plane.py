"""`ntm bench control-plane` at a small size: the harness itself works and its exactly-once accounting
holds (every prepared node registers once, every path is directed once, nothing is retransmitted or
dropped). Timings are the bench's business, not asserted here."""

from __future__ import annotations

import pytest

from ntmobile.bench.control_plane import run_bench

pytestmark = [pytest.mark.root, pytest.mark.lab]


def test_small_control_plane_bench_registers_and_directs_every_node_exactly_once() -> None:
    nodes, paths = 400, 40
    rep = run_bench(nodes, paths, 16, log=lambda _line: None)
    reg, ph = rep["registration"], rep["paths_phase"]
    assert reg["failures"] == [] and ph["failures"] == []
    assert reg["completed"] == nodes == reg["dc_registrations"]
    assert reg["registered_twice"] == 0 and reg["dc_registration_retransmits"] == 0
    # the first path warms the DC's discovery cache outside the timed phase
    assert ph["completed"] == paths - 1 == ph["dc_paths_directed"]
    assert ph["ready_twice"] == 0 and ph["dc_direction_retransmits"] == 0
    assert rep["node_retransmissions"] == 0 and rep["unrouted_datagrams"] == 0
    assert rep["kernel_udp_drops"] == 0
    assert rep["prepare_seconds"] >= 0
