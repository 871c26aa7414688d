"""Issue 5 end to end: two NTM nodes of two DCs (mn.a.example behind NAT A, cn.b.example behind NAT B)
reach each other by name, directly when the route table allows and through RS-S otherwise.

The grid runs every pair of NAT profiles for nata x natb; for each pair the chosen path must match
the table in docs/protocol.md ("Route decision"): its initial mode, and its final mode after NAT
traversal (issue 16: an RS_S path between two cone NATs is punched to DIRECT), and ping, an iperf3 TCP
run and an iperf3 UDP run must work in both directions. The results go to artifacts/ntm-peer-grid.md
(with the time from the path's creation to DIRECT for punched paths).
"""

from __future__ import annotations

import itertools
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ntmobile.lab import Lab, load_topology

from .conftest import LabFactory, wait_for

pytestmark = [pytest.mark.root, pytest.mark.lab]

NTM = [sys.executable, "-m", "ntmobile"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
PROFILES = ["none", "port_restricted", "symmetric", "one_to_one"]
CLASS = {"none": "NONE", "port_restricted": "CONE", "symmetric": "SYMMETRIC", "one_to_one": "OPEN"}
#: docs/protocol.md, "Route decision": (mode, who initiates) for nata x natb.
EXPECTED = {
    ("none", "none"): ("DIRECT", "mn"), ("none", "port_restricted"): ("DIRECT", "cn"),
    ("none", "symmetric"): ("DIRECT", "cn"), ("none", "one_to_one"): ("DIRECT", "mn"),
    ("port_restricted", "none"): ("DIRECT", "mn"), ("port_restricted", "port_restricted"): ("RS_S", "mn"),
    ("port_restricted", "symmetric"): ("RS_S", "mn"), ("port_restricted", "one_to_one"): ("DIRECT", "mn"),
    ("symmetric", "none"): ("DIRECT", "mn"), ("symmetric", "port_restricted"): ("RS_S", "mn"),
    ("symmetric", "symmetric"): ("RS_S", "mn"), ("symmetric", "one_to_one"): ("DIRECT", "mn"),
    ("one_to_one", "none"): ("DIRECT", "mn"), ("one_to_one", "port_restricted"): ("DIRECT", "cn"),
    ("one_to_one", "symmetric"): ("DIRECT", "cn"), ("one_to_one", "one_to_one"): ("DIRECT", "mn"),
}
#: NAT traversal (docs/protocol.md, "Traversal of RS_S paths"): the final mode of the pairs whose RS_S
#: path is punched; the others keep their initial mode. (A cone side with a symmetric side is offered
#: a punch, which the lab's port-restricted filtering defeats: they stay RS_S.)
PUNCHED = {("port_restricted", "port_restricted")}
IPERF_PORT = 5301


def ntm_json(lab: Lab, host: str, *args: str) -> dict[str, Any]:
    cp = lab.exec(host, [*NTM, *args, "--json"], check=False, timeout=10)
    return json.loads(cp.stdout) if cp.returncode == 0 and cp.stdout.strip() else {}


def dc_class(lab: Lab, dc: str, name: str) -> str | None:
    for s in ntm_json(lab, dc, "dc", "status").get("sessions", []):
        if s.get("name") == name:
            return str(s.get("nat_class"))
    return None


def path_to(lab: Lab, host: str, peer: str) -> dict[str, Any] | None:
    for p in ntm_json(lab, host, "status").get("paths", []):
        if p.get("peer") == peer and p.get("established"):
            return p  # type: ignore[no-any-return]
    return None


def first_mode(lab: Lab, host: str, path_id: str) -> str | None:
    """The mode of the path's first "ready" line in the host's node log (the mode it was set up in)."""
    log = Path(lab.workdir) / "logs" / f"{host}-node.log"
    m = re.search(rf"path {path_id} to \S+ ready: (\w+)", log.read_text())
    return m.group(1) if m else None


def resolve_ms(lab: Lab, host: str, name: str) -> tuple[str, float]:
    """The app's view: a DNS query to the node's stub, answered once the tunnel is up."""
    cp = lab.exec(host, ["dig", "+tries=1", "+time=8", "A", name], timeout=20)
    answer = re.search(rf"^{re.escape(name)}\.\s+\d+\s+IN\s+A\s+(\S+)", cp.stdout, re.M)
    took = re.search(r"Query time: (\d+) msec", cp.stdout)
    assert answer and took, cp.stdout
    return answer.group(1), float(took.group(1))


def ping_rtt(lab: Lab, host: str, name: str) -> float:
    cp = lab.exec(host, ["ping", "-n", "-c", "5", "-i", "0.2", "-W", "2", name], check=False, timeout=20)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    m = re.search(r"= [\d.]+/([\d.]+)/", cp.stdout)
    assert m, cp.stdout
    return float(m.group(1))


def iperf(lab: Lab, host: str, name: str, *extra: str) -> dict[str, Any]:
    def run() -> dict[str, Any] | None:
        cp = lab.exec(host, ["iperf3", "-c", name, "-4", "-p", str(IPERF_PORT), "-t", "2", "-J", *extra],
                      check=False, timeout=30)
        try:
            out: dict[str, Any] = json.loads(cp.stdout)
        except json.JSONDecodeError:
            return None
        return None if "error" in out else out

    result: dict[str, Any] = wait_for(run, 20, f"iperf3 {host} -> {name} {' '.join(extra)}")
    return result


def iperf_both(lab: Lab, host: str, name: str) -> tuple[float, float]:
    """TCP and UDP runs from ``host`` to ``name``: (TCP Mbit/s received, UDP loss %)."""
    tcp = iperf(lab, host, name)
    tcp_bytes = tcp["end"]["sum_received"]["bytes"]
    assert tcp_bytes > 0
    udp = iperf(lab, host, name, "-u", "-b", "20M")
    s = udp["end"]["sum"]
    assert s["packets"] > 0 and s["lost_percent"] < 50, s
    return tcp["end"]["sum_received"]["bits_per_second"] / 1e6, float(s["lost_percent"])


@pytest.fixture(scope="module")
def grid() -> Iterator[dict[tuple[str, str], dict[str, Any]]]:
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    yield rows
    if not rows:
        return
    ARTIFACTS.mkdir(exist_ok=True)
    lines = ["# NTM node to NTM node: path per NAT pair (lab `nat`, mn behind nata, cn behind natb)", "",
             "Set-up = the app's first DNS query for the peer (`dig` to the node's stub), answered once the "
             "tunnel is up (lab resolver warmed with both zones' NS/TXT first; cn→mn reuses the path). "
             "RTT = ping average over the path. TCP = iperf3 -t 2 received rate.", "",
             "Initial = the path's mode when the lookup was answered; final = after the traffic (NAT "
             "traversal punches RS_S paths where the NATs allow it: issue 16); to direct = from the path's "
             "creation on mn to its first DIRECT (punched paths).", "",
             "| nata | natb | classes (mn / cn) | initial | final | to direct s | initiator | RS | set-up mn→cn ms | "
             "set-up cn→mn ms | RTT mn→cn ms | RTT cn→mn ms | TCP mn→cn Mbit/s | TCP cn→mn Mbit/s | "
             "UDP loss % (mn→cn / cn→mn) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (a, b), r in sorted(rows.items(), key=lambda kv: (PROFILES.index(kv[0][0]), PROFILES.index(kv[0][1]))):
        ttd = f"{r['to_direct']:.2f}" if r["to_direct"] is not None else "-"
        lines.append(f"| {a} | {b} | {r['classes']} | {r['mode']} | {r['final']} | {ttd} | {r['initiator']} | "
                     f"{r['rs'] or '-'} | "
                     f"{r['setup_mn']:.0f} | {r['setup_cn']:.0f} | {r['rtt_mn']:.2f} | {r['rtt_cn']:.2f} | "
                     f"{r['tcp_mn']:.0f} | {r['tcp_cn']:.0f} | {r['udp_mn']:.1f} / {r['udp_cn']:.1f} |")
    (ARTIFACTS / "ntm-peer-grid.md").write_text("\n".join(lines) + "\n")


def warm_resolver(lab: Lab) -> None:
    """Prime the lab resolver with both zones' NS and marker TXT, as any running resolver would be.
    (A cold unbound first tries the DCs' IPv6 glue; the DC daemon's DNS has no IPv6 listener today,
    so the first look-up of each zone costs a ~0.8 s timeout and may exceed the DC's 2 s discovery
    budget. The set-up times in the grid are therefore warm-resolver times.)"""
    resolver = lab.resolvers()[0]
    for zone in ("a.example", "b.example"):
        for rtype in ("NS", "TXT"):
            lab.exec("gn", ["dig", "+tries=3", "+time=3", f"@{resolver}", rtype, zone], timeout=30)


def start_iperf_servers(lab: Lab) -> None:
    for host in ("mn", "cn"):
        lab.spawn(host, ["iperf3", "-s", "-p", str(IPERF_PORT)], f"iperf3-{IPERF_PORT}")


@pytest.mark.parametrize(("nata", "natb"), list(itertools.product(PROFILES, PROFILES)))
def test_ntm_peer_grid(lab_factory: LabFactory, grid: dict[tuple[str, str], dict[str, Any]], nata: str,
                       natb: str) -> None:
    lab = lab_factory("nat", bare=False, nat={"nata": nata, "natb": natb})
    mode, initiator = EXPECTED[(nata, natb)]
    # Both DCs have classified their node's NAT by the probes.
    wait_for(lambda: dc_class(lab, "dca", "mn.a.example") == CLASS[nata], 15, f"mn classified {CLASS[nata]}")
    wait_for(lambda: dc_class(lab, "dcb", "cn.b.example") == CLASS[natb], 15, f"cn classified {CLASS[natb]}")
    start_iperf_servers(lab)
    warm_resolver(lab)
    # mn resolves cn: the DNS answer (cn's VIP) comes once the path is up.
    vip_cn, setup_mn = resolve_ms(lab, "mn", "cn.b.example")
    assert vip_cn.startswith("100.64.2.")
    p_mn = path_to(lab, "mn", "cn.b.example")
    final_mode = "DIRECT" if (nata, natb) in PUNCHED else mode
    assert p_mn is not None and p_mn["mode"] in (mode, final_mode), p_mn
    assert first_mode(lab, "mn", p_mn["path_id"]) == mode  # the mode the lookup's answer waited for
    assert p_mn["role"] == ("INITIATOR" if initiator == "mn" else "RESPONDER")
    if mode == "RS_S":
        assert p_mn["rs"] in ("rs1", "rs2")
    if p_mn["mode"] == "RS_S":
        assert p_mn["endpoint"][0] in (lab.addr("rs1", 4), lab.addr("rs2", 4))
    p_cn = wait_for(lambda: path_to(lab, "cn", "mn.a.example"), 10, "cn's side of the path")
    assert p_cn["path_id"] == p_mn["path_id"] and p_cn["mode"] in (mode, final_mode) and p_cn["rs"] == p_mn["rs"]
    # The reverse lookup reuses the path (no second set-up).
    vip_mn, setup_cn = resolve_ms(lab, "cn", "mn.a.example")
    assert vip_mn.startswith("100.64.1.")
    assert [p["path_id"] for p in ntm_json(lab, "cn", "status")["paths"]] == [p_cn["path_id"]]
    rtt_mn, rtt_cn = ping_rtt(lab, "mn", "cn.b.example"), ping_rtt(lab, "cn", "mn.a.example")
    tcp_mn, udp_mn = iperf_both(lab, "mn", "cn.b.example")
    tcp_cn, udp_cn = iperf_both(lab, "cn", "mn.a.example")
    # The traffic went over this one path, on both nodes.
    final = path_to(lab, "mn", "cn.b.example")
    assert final is not None and final["path_id"] == p_mn["path_id"] and final["rx_bytes"] > 0
    assert final["mode"] == final_mode, final
    final_cn = path_to(lab, "cn", "mn.a.example")
    assert final_cn is not None and final_cn["mode"] == final_mode, final_cn
    tr = final.get("traversal") or {}
    grid[(nata, natb)] = {
        "classes": f"{CLASS[nata]} / {CLASS[natb]}", "mode": mode, "initiator": initiator, "rs": p_mn["rs"],
        "final": final_mode, "to_direct": tr.get("time_to_direct"),
        "setup_mn": setup_mn, "setup_cn": setup_cn, "rtt_mn": rtt_mn, "rtt_cn": rtt_cn,
        "tcp_mn": tcp_mn, "tcp_cn": tcp_cn, "udp_mn": udp_mn, "udp_cn": udp_cn,
    }


def test_nodes_behind_the_same_nat_talk_directly_on_private_addresses(lab_factory: LabFactory) -> None:
    """cn (of b.example) moved into neta: mn and cn share NAT A, so the path is DIRECT between their
    private addresses, whatever the NAT type."""
    topo = load_topology("nat").with_host("cn", links=[{"network": "neta", "ipv4": "10.1.0.20"}])
    lab = lab_factory(topo, bare=False, nat={"nata": "symmetric"})
    wait_for(lambda: dc_class(lab, "dcb", "cn.b.example") == "SYMMETRIC", 15, "cn classified")
    wait_for(lambda: dc_class(lab, "dca", "mn.a.example") == "SYMMETRIC", 15, "mn classified")
    warm_resolver(lab)
    vip, _ = resolve_ms(lab, "mn", "cn.b.example")
    assert vip.startswith("100.64.2.")
    p = path_to(lab, "mn", "cn.b.example")
    assert p is not None and p["mode"] == "DIRECT" and p["endpoint"] == ["10.1.0.20", 7412], p
    p_cn = wait_for(lambda: path_to(lab, "cn", "mn.a.example"), 10, "cn's side of the path")
    assert p_cn["endpoint"] == ["10.1.0.10", 7412]  # private addresses both ways: the NAT is not involved
    ping_rtt(lab, "mn", "cn.b.example")
    ping_rtt(lab, "cn", "mn.a.example")


def test_either_side_initiates(lab_factory: LabFactory) -> None:
    """cn asks first; mn's later lookup reuses cn's path."""
    lab = lab_factory("nat", bare=False, nat={"nata": "none", "natb": "port_restricted"})
    wait_for(lambda: dc_class(lab, "dcb", "cn.b.example") == "CONE", 15, "cn classified")
    warm_resolver(lab)
    vip, _ = resolve_ms(lab, "cn", "mn.a.example")
    assert vip.startswith("100.64.1.")
    p_cn = path_to(lab, "cn", "mn.a.example")
    assert p_cn is not None and p_cn["mode"] == "DIRECT" and p_cn["role"] == "INITIATOR"  # cn is the NAT side
    resolve_ms(lab, "mn", "cn.b.example")
    assert [p["path_id"] for p in ntm_json(lab, "mn", "status")["paths"]] == [p_cn["path_id"]]
    ping_rtt(lab, "mn", "cn.b.example")
