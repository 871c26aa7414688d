"""`ntm lab up ... --monitor`: Debian's Prometheus on a lab host scrapes every daemon over the lab
network (nodes behind NATs through a TCP port forward on their router); its HTTP API has live series
from the DCs, both relays and the nodes; `lab down` stops it by PID."""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from ntmobile.lab import Lab

from .conftest import LabFactory, wait_for

pytestmark = [pytest.mark.root, pytest.mark.lab]

NTM = [sys.executable, "-m", "ntmobile"]
ROOT = Path(__file__).resolve().parents[2]
#: Series that only some events make.
EVENT_ONLY = {"ntm_node_handover_gap_seconds_bucket", "ntm_node_dns_fallbacks_total"}
DAEMONS = {"dca": "dc", "dcb": "dc", "rs1": "rs", "rs2": "rs", "mn": "node", "cn": "node", "gl": "node"}


def query(lab: Lab, promql: str) -> list[dict[str, Any]]:
    """An instant query through Prometheus' HTTP API, from a lab host (the API listens on the lab network)."""
    url = f"{lab.state.monitor_url}/api/v1/query?query={urllib.parse.quote(promql)}"
    cp = lab.exec("gl", ["curl", "-sS", "-m", "5", url], timeout=10)
    got = json.loads(cp.stdout)
    assert got["status"] == "success", got
    return got["data"]["result"]  # type: ignore[no-any-return]


def by_host(results: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in results:
        out[r["metric"]["host"]] = out.get(r["metric"]["host"], 0.0) + float(r["value"][1])
    return out


def test_prometheus_in_the_lab_scrapes_every_daemon(lab_factory: LabFactory) -> None:
    lab = lab_factory("nat", bare=False, monitor=True)
    assert lab.state.monitor_url is not None and lab.status()["monitor"] == lab.state.monitor_url

    # Every daemon is a target that is up, each under its job (dc, rs, node) and lab host.
    wait_for(lambda: {r["metric"]["host"]: (r["metric"]["job"], r["value"][1]) for r in query(lab, "up")}
             == {h: (job, "1") for h, job in DAEMONS.items()}, 30, "every daemon scraped")
    rss = by_host(query(lab, "ntm_process_resident_memory_bytes"))
    assert set(rss) == set(DAEMONS) and min(rss.values()) > 1 << 20

    # Live series: a path to the general node shows up at the node, a relay and the DC.
    lab.exec("mn", [*NTM, "ping", "www.gn.example", "-c", "2", "-i", "0.2"], timeout=60)
    lab.exec("mn", ["curl", "-sS", "-4", "-m", "30", "-o", "/dev/null", "http://www.gn.example/"], timeout=60)
    wait_for(lambda: by_host(query(lab, 'ntm_node_path_setup_seconds_count{mode="RS_N"}')).get("mn", 0) >= 1, 20,
             "mn's set-up latency in Prometheus")
    wait_for(lambda: sum(by_host(query(lab, 'ntm_rs_relayed_packets_total{mode="RS_N"}')).values()) > 0, 20,
             "RS-N traffic at a relay")
    wait_for(lambda: by_host(query(lab, 'ntm_dc_directions_total{mode="RS_N"}')).get("dca", 0) >= 1, 20,
             "the DC's RS-N direction")
    assert set(by_host(query(lab, "ntm_rs_relay_entries"))) == {"rs1", "rs2"}
    assert {"mn", "cn", "gl"} <= set(by_host(query(lab, "ntm_node_registered == 1")))

    # The Grafana dashboard (docs/grafana-ntmobile.json): every expression is valid PromQL for this
    # Prometheus, and every series it names exists here (but those only events make: no handover,
    # fallback, failed path or discovery from the cache happened in this test).
    dash = json.loads((ROOT / "docs" / "grafana-ntmobile.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    present = {r["metric"]["__name__"] for r in query(lab, 'count by (__name__) ({__name__=~"ntm_.+"})')}
    for expr in exprs:
        query(lab, expr)  # status "success" (a syntax error is "error")
        for name in re.findall(r"\bntm_[a-z0-9_]+", expr):
            if name not in EVENT_ONLY:
                assert name in present, (name, expr)

    # Down: Prometheus (a tracked process of the lab) is stopped by its PID.
    [proc] = [p for p in lab.state.processes if p.name == "prometheus"]
    lab.down()
    wait_for(lambda: not os.path.exists(f"/proc/{proc.pid}") or _starttime(proc.pid) != proc.starttime, 10,
             "Prometheus stopped")


def _starttime(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None
