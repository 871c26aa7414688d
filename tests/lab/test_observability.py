"""Issue 19 in the `nat` lab: every daemon's /metrics (parsed with prometheus-client's parser) and its
series moving with traffic; `ntm ping` (RS_N to a general node, RS_S or DIRECT to an NTM peer behind
another NAT); `ntm netcheck`; `ntm status` at 80 columns."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ntmobile.cli.node import mode_text
from ntmobile.lab import Lab

from .conftest import LabFactory, wait_for

pytestmark = [pytest.mark.root, pytest.mark.lab]

NTM = [sys.executable, "-m", "ntmobile"]
PORTS = {"dc": 9410, "rs": 9411, "node": 9412}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def status(lab: Lab, host: str) -> dict[str, Any]:
    cp = lab.exec(host, [*NTM, "status", "--json"], check=False, timeout=10)
    return json.loads(cp.stdout) if cp.returncode == 0 else {}


def scrape(lab: Lab, host: str, role: str) -> Samples:
    cp = lab.exec(host, ["curl", "-sS", "-m", "5", f"http://127.0.0.1:{PORTS[role]}/metrics"], timeout=10)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(cp.stdout) for s in fam.samples}


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over the series of ``name`` whose labels include ``labels``."""
    return sum(v for (n, lab), v in samples.items() if n == name and set(labels.items()) <= set(lab))


def ping(lab: Lab, name: str, *args: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    cp = lab.exec("mn", [*NTM, "ping", name, "--json", "-i", "0.2", *args], check=False, timeout=90)
    lines = [json.loads(line) for line in cp.stdout.splitlines()]
    assert lines and "summary" in lines[-1], (cp.stdout, cp.stderr)
    return lines[:-1], lines[-1]["summary"]


def test_metrics_ping_netcheck_and_status_in_the_nat_lab(lab_factory: LabFactory) -> None:
    lab = lab_factory("nat", bare=False)
    for host in ("mn", "cn", "gl"):
        wait_for(lambda h=host: status(lab, h).get("registered"), 20, f"{host} registered")  # type: ignore[misc]

    # Every daemon serves its series; the process's resident memory among them.
    daemons = [("dca", "dc"), ("dcb", "dc"), ("rs1", "rs"), ("rs2", "rs"), ("mn", "node"), ("cn", "node")]
    before = {host: scrape(lab, host, role) for host, role in daemons}
    for host, samples in before.items():
        assert total(samples, "ntm_process_resident_memory_bytes") > 1 << 20, host
    assert total(before["dca"], "ntm_dc_sessions") >= 3  # gl, mn, both relays
    assert total(before["mn"], "ntm_node_registered") == 1

    # ntm ping: RS_N through a relay to the general node, and the set-up it needed.
    probes, summary = ping(lab, "www.gn.example", "-c", "3")
    assert summary["answered"] == 3 and summary["modes"] == ["RS_N"], probes
    assert all(p["rs"] in ("rs1", "rs2") and p["rtt_ms"] > 0 for p in probes)
    # To cn behind NAT B: through an RS-S, or direct once NAT traversal allows it.
    probes, summary = ping(lab, "cn.b.example", "-c", "2")
    assert summary["answered"] == 2 and set(summary["modes"]) <= {"RS_S", "DIRECT"}, probes
    assert all(p["mode"] == "DIRECT" or p["rs"] in ("rs1", "rs2") for p in probes)
    # On RS_S the probe's answer is the relay's; the peer's own RTT is an ICMP echo to its VIP
    # through the tunnel, so it is at least the relay's.
    for p in probes:
        if p["mode"] == "RS_S":
            assert p["peer_rtt_ms"] is not None and p["peer_rtt_ms"] > 0, p
    # A name nobody has: one line saying so, exit status 1.
    cp = lab.exec("mn", [*NTM, "ping", "nobody.a.example", "-c", "1"], check=False, timeout=30)
    assert cp.returncode == 1 and "NXDOMAIN" in cp.stdout

    # Traffic through the RS-N moves the node's, the relay's and the DC's series.
    cp = lab.exec("mn", ["sh", "-c", "curl -sS -4 -m 30 -o /dev/null -w '%{size_download}' "
                         "http://www.gn.example/big.bin"], timeout=60)
    size = int(cp.stdout)
    assert size > 100_000
    after = {host: scrape(lab, host, role) for host, role in daemons}
    assert total(after["mn"], "ntm_node_rx_bytes_total", mode="RS_N") - total(
        before["mn"], "ntm_node_rx_bytes_total", mode="RS_N") >= size
    assert total(after["mn"], "ntm_node_path_setup_seconds_count", mode="RS_N") >= 1
    assert total(after["mn"], "ntm_node_dns_holds_total") >= 1
    relayed = sum(total(after[h], "ntm_rs_relayed_bytes_total", mode="RS_N") - total(
        before[h], "ntm_rs_relayed_bytes_total", mode="RS_N") for h in ("rs1", "rs2"))
    assert relayed >= size
    assert total(after["dca"], "ntm_dc_directions_total", mode="RS_N", outcome="OK") >= 1
    assert total(after["dca"], "ntm_dc_direction_setup_seconds_count", mode="RS_N") >= 1
    assert 0 < total(after["dca"], "ntm_dc_direction_setup_seconds_sum", mode="RS_N") < 30
    assert total(after["dca"], "ntm_dc_relay_choices_total") >= 1
    assert sum(total(after[h], "ntm_rs_relay_entries", mode="RS_N") for h in ("rs1", "rs2")) >= 1
    # The drop counters are there by reason (layer core / dataplane / udp), counters never went down.
    assert any(n == "ntm_node_drops_total" for n, _ in after["mn"])
    for host, samples in after.items():
        for key, v in before[host].items():
            if key[0].endswith("_total"):
                assert samples.get(key, 0) >= v, (host, key)

    # ntm netcheck: endpoints, the NAT as classified, the DC's and the relays' RTT.
    nc = json.loads(lab.exec("mn", [*NTM, "netcheck", "--json"], timeout=20).stdout)
    assert nc["registered"] and nc["observed"][0] == "192.0.2.100" and nc["nat"] == "CONE"
    assert nc["local_endpoints"] and nc["local_endpoints"][0][0].startswith("10.1.0.")
    assert nc["dc"]["rtt_ms"] is not None and nc["udp"]["to_dc"] is True
    assert nc["udp"]["unsolicited_inbound"] is False  # a port-restricted cone filters it
    assert nc["relays"] and all(r["rtt_ms"] is not None and r["name"] in ("rs1", "rs2") for r in nc["relays"])
    text = lab.exec("mn", [*NTM, "netcheck"], timeout=20).stdout
    assert "DC 192.0.2.10:7410" in text and "relay rs" in text

    # ntm status at 80 columns: every peer whole, with its mode.
    st = status(lab, "mn")
    out = lab.exec("mn", ["env", "COLUMNS=80", *NTM, "status"], timeout=10).stdout
    assert max(len(line) for line in out.splitlines()) <= 80, out
    assert st["paths"]
    for p in st["paths"]:
        assert str(p["peer"]) in out and mode_text(p) in out, out
    assert st["stats"]["rx_bytes"] >= size and st["metrics"]["scrapes"] >= 2 and st["metrics"]["serving"]
