"""Each NAT profile of the lab behaves as named (nat topology, mn behind nata at 10.1.0.10)."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.lab.conftest import LabFactory, probe_argv, probe_udp, start_reflector, wait_for

pytestmark = [pytest.mark.root, pytest.mark.lab]

NATA_WAN = "192.0.2.100"
GN = "192.0.2.40"
GL = "192.0.2.50"


def _udp_from(e: dict[str, object]) -> bool:
    return e.get("proto") == "udp" and e.get("data") == "probe"


def _two_destinations_then_unsolicited(lab_factory: LabFactory, profile: str) -> tuple[int, int, list[str]]:
    """mn sends from port 40000 to gn and gl; then a third host (rs1) and the contacted peer from
    another port send unsolicited datagrams to the mapped port, then gn:7001 sends a marker.
    Returns (mapped port seen by gn, mapped port seen by gl, payloads mn received)."""
    lab = lab_factory("nat", nat={"nata": profile})
    gn = start_reflector(lab, "gn")
    gl = start_reflector(lab, "gl")
    p = lab.popen("mn", probe_argv(sport=40000, to=[f"{GN}:7001", f"{GL}:7001"], until="MARKER", timeout=30),
                  stdout=subprocess.PIPE, text=True)
    e_gn = gn.wait_event(_udp_from, what="mn's probe")
    e_gl = gl.wait_event(_udp_from, what="mn's probe")
    assert e_gn["src"] == NATA_WAN and e_gl["src"] == NATA_WAN
    mapped = e_gn["port"]
    probe_udp(lab, "rs1", sport=5555, to=[f"{NATA_WAN}:{mapped}"], payload="unsolicited-third", timeout=0)
    probe_udp(lab, "gn", sport=7002, to=[f"{NATA_WAN}:{mapped}"], payload="unsolicited-otherport", timeout=0)
    probe_udp(lab, "gn", sport=7001, reuseport=True, to=[f"{NATA_WAN}:{mapped}"], payload="MARKER", timeout=0)
    out, _ = p.communicate(timeout=40)
    received = json.loads(out.strip().splitlines()[-1])["received"]
    return int(e_gn["port"]), int(e_gl["port"]), [r["data"] for r in received]


def test_port_restricted_keeps_one_mapping_and_drops_unsolicited_inbound(lab_factory: LabFactory) -> None:
    p_gn, p_gl, got = _two_destinations_then_unsolicited(lab_factory, "port_restricted")
    assert p_gn == p_gl, "endpoint-independent mapping: same mapped port for both destinations"
    assert f"seen {NATA_WAN} {p_gn}" in got, "the contacted peer's reply passes"
    assert "MARKER" in got
    assert not any(d.startswith("unsolicited") for d in got), f"unsolicited inbound passed: {got}"


def test_symmetric_uses_a_new_mapped_port_per_destination(lab_factory: LabFactory) -> None:
    p_gn, p_gl, got = _two_destinations_then_unsolicited(lab_factory, "symmetric")
    assert p_gn != p_gl, "symmetric NAT: a new mapped port per destination"
    assert f"seen {NATA_WAN} {p_gn}" in got and f"seen {NATA_WAN} {p_gl}" in got
    assert not any(d.startswith("unsolicited") for d in got), f"unsolicited inbound passed: {got}"


def test_one_to_one_maps_the_inside_host_to_its_outside_address(lab_factory: LabFactory) -> None:
    lab = lab_factory("nat", nat={"nata": "one_to_one"})
    mn = start_reflector(lab, "mn")
    gn = start_reflector(lab, "gn")
    # unsolicited inbound to the outside address reaches the inside host, and its reply comes back
    got = probe_udp(lab, "gl", sport=5555, to=["192.0.2.110:7001"], expect=1)
    assert got == [{"src": "192.0.2.110", "port": 7001, "data": "seen 192.0.2.50 5555"}]
    assert mn.wait_event(_udp_from)["src"] == GL
    # outbound from the inside host leaves with the outside address
    got = probe_udp(lab, "mn", sport=40000, to=[f"{GN}:7001"], expect=1)
    assert got and got[0]["data"].startswith("seen 192.0.2.110 ")
    assert gn.wait_event(_udp_from)["src"] == "192.0.2.110"


def test_udp_blocked_passes_no_udp_but_tcp(lab_factory: LabFactory) -> None:
    lab = lab_factory("nat", nat={"nata": "udp_blocked"})
    gn = start_reflector(lab, "gn")
    # UDP first, then a TCP connection on the same path as a marker (TCP passes this NAT)
    got = probe_udp(lab, "mn", sport=40000, to=[f"{GN}:7001"], tcp_marker=f"{GN}:7001", timeout=0)
    assert got == []
    tcp = gn.wait_event(lambda e: e.get("proto") == "tcp", what="TCP marker")
    assert tcp["src"] == NATA_WAN
    assert not [e for e in gn.events() if e.get("proto") == "udp"], "UDP passed a udp_blocked NAT"
    # and nothing comes in either: unsolicited UDP towards the router's outside address is dropped
    mn = start_reflector(lab, "mn")
    probe_udp(lab, "gn", sport=7001, reuseport=True, to=[f"{NATA_WAN}:40000"], timeout=0)
    probe_udp(lab, "gl", sport=5555, to=[f"{NATA_WAN}:7001"], timeout=0)
    assert not [e for e in mn.events() if e.get("proto") == "udp"]


def test_none_is_plain_routing_both_ways(lab_factory: LabFactory) -> None:
    lab = lab_factory("nat", nat={"nata": "none"})
    gn = start_reflector(lab, "gn")
    mn = start_reflector(lab, "mn")
    got = probe_udp(lab, "mn", sport=40000, to=[f"{GN}:7001"], expect=1)
    assert got and got[0]["data"] == "seen 10.1.0.10 40000", "no address translation"
    assert gn.wait_event(_udp_from)["src"] == "10.1.0.10"
    got = probe_udp(lab, "gl", sport=5555, to=["10.1.0.10:7001"], expect=1)
    assert got == [{"src": "10.1.0.10", "port": 7001, "data": "seen 192.0.2.50 5555"}]
    assert mn.wait_event(_udp_from)["src"] == GL


def test_short_udp_timeout_applies_to_the_routers_conntrack(lab_factory: LabFactory) -> None:
    lab = lab_factory("nat", udp_timeout={"nata": 5})
    assert lab.exec("nata", ["sysctl", "-n", "net.netfilter.nf_conntrack_udp_timeout"]).stdout.strip() == "5"
    assert lab.exec("natb", ["sysctl", "-n", "net.netfilter.nf_conntrack_udp_timeout"]).stdout.strip() == "30"
    start_reflector(lab, "gn")
    assert probe_udp(lab, "mn", sport=40000, to=[f"{GN}:7001"], expect=1)

    def entry_timeout() -> int | None:
        out = lab.exec("nata", ["conntrack", "-L", "-p", "udp", "--dport", "7001"], check=False).stdout
        for line in out.splitlines():
            return int(line.split()[2])
        return None

    t = wait_for(entry_timeout, 10, "conntrack entry of the probe")
    assert 0 < t <= 5


def test_link_options_install_tbf_and_numgen_loss(lab_factory: LabFactory) -> None:
    lab = lab_factory("paper", rate_mbit=50, loss_percent=100)
    assert "tbf" in lab.exec("mn", ["tc", "qdisc", "show", "dev", "internet"]).stdout
    assert "50Mbit" in lab.exec("mn", ["tc", "qdisc", "show", "dev", "internet"]).stdout
    rules = lab.exec("mn", ["nft", "list", "table", "inet", f"{lab.prefix}_loss"]).stdout
    assert 'iifname "internet" drop' in rules and 'oifname "internet" drop' in rules
    # 100 % loss: nothing gets through
    gn = start_reflector(lab, "gn")
    assert probe_udp(lab, "mn", sport=40000, to=[f"{GN}:7001"], timeout=0) == []
    assert lab.exec("mn", ["ping", "-c", "1", "-W", "1", GN], check=False).returncode != 0
    assert not [e for e in gn.events() if e.get("proto") == "udp"]
