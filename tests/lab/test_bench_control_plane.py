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


def test_small_control_plane_bench_on_two_postgresql_replicas_beside_sqlite() -> None:
    """`--store postgresql --replicas 2` at CI size: a real PostgreSQL server, two DC replicas, the
    nodes split over them (the relay at the first, so half the paths cross the replica channel);
    every node registers once, every path is directed once, the ratio and round trips are reported."""
    from ntmobile.bench.control_plane import compare_markdown, run_compare

    nodes, paths = 300, 30
    rep = run_compare(nodes, paths, 16, 2, log=lambda _line: None)
    pg, reg, ph = rep["postgresql"], rep["postgresql"]["registration"], rep["postgresql"]["paths_phase"]
    assert pg["store"] == "postgresql" and pg["replicas"] == 2
    assert reg["failures"] == [] and ph["failures"] == []
    assert reg["completed"] == nodes == reg["dc_registrations"] and reg["registered_twice"] == 0
    assert [r["registrations"] for r in reg["per_replica"]] == [nodes // 2 + 1, nodes // 2]  # + the relay at 0
    assert ph["completed"] == paths - 1 == ph["dc_paths_directed"] and ph["ready_twice"] == 0
    assert rep["lost_or_twice"] == {"registrations": False, "paths": False}
    # look-ups batched per read (PgStore.prefetch), a batch's replay floors in one autocommit statement
    # (no BEGIN/COMMIT): below one round trip each, all of them statements
    assert 0 < reg["db_statements_each"] == reg["db_round_trips_each"] < 1
    assert rep["ratio"] > 0 and rep["sqlite"]["registration"]["completed"] == nodes
    assert "PostgreSQL, 2 replicas" in compare_markdown(rep)
