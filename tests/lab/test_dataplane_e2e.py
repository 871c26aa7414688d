"""End-to-end data plane through the real daemons: checksummed TCP and UDP over direct, RS-N and
RS-S paths, inner IPv4 and IPv6, with offloads (GSO capsules) on and off, mixed offload/per-packet
peers in both directions, and transfers under 1 % random loss.

Topology: the `nat` lab, one DC (a.example) and one relay (rs1). mn (behind NAT A) talks to gl
(global: DIRECT), to gn (a general node: RS-N) and to cn (behind NAT B: RS-S).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ntmobile.lab import Lab, Topology, load_topology
from ntmobile.lab.topology import DaemonSpec

from .conftest import LabFactory, wait_for

pytestmark = [pytest.mark.root, pytest.mark.lab]

DPCHECK = str(Path(__file__).with_name("dpcheck.py"))
TCP_PORT, UDP_PORT = 7500, 7501
#: Peer host -> the name mn uses for it (through the node's DNS stub) and the path type.
PEERS = {"gl": ("gl.a.example", "DIRECT"), "gn": ("iperf.gn.example", "RS_N"), "cn": ("cn.a.example", "RS_S")}


def topology(offload: dict[str, bool], loss_percent: float | None = None) -> Topology:
    """One DC (dca) for mn, gl and cn, one relay (rs1). NAT traversal off: the mn <-> cn path stays
    RS_S, the relayed data plane under test (tests/lab/test_traversal.py tests the punched one)."""
    t = load_topology("nat").with_host("dcb", daemons=[]).with_host("rs2", daemons=[])
    dca = t.host("dca").daemons[0]
    t = t.with_host("dca", daemons=[DaemonSpec(kind="dc", config={**dca.config, "traversal": False})])
    t = t.with_host("rs1", daemons=[DaemonSpec(kind="rs", config={"dcs": ["dca"], "offload": offload["rs1"]})])
    for host in ("gl", "mn", "cn"):
        t = t.with_host(host, daemons=[DaemonSpec(kind="node", config={
            "dc": "dca", "name": f"{host}.a.example", "offload": offload[host]})])
    if loss_percent is not None:
        t = t.with_links(loss_percent=loss_percent)
    return t


def start_servers(lab: Lab, hosts: tuple[str, ...] = ("gl", "gn", "cn")) -> None:
    for h in hosts:
        lab.spawn(h, [sys.executable, DPCHECK, "tcp-server", str(TCP_PORT)], f"dpcheck-tcp-{h}")
        lab.spawn(h, [sys.executable, DPCHECK, "udp-server", str(UDP_PORT)], f"dpcheck-udp-{h}")
    for h in hosts:
        wait_for(_listening(lab, h), 10, f"echo server on {h}")


def _listening(lab: Lab, host: str) -> Callable[[], bool]:
    return lambda: f":{TCP_PORT}" in lab.exec(host, ["ss", "-ltnH"]).stdout


def tcp(lab: Lab, peer: str, nbytes: int, family: int, timeout: float = 120) -> dict[str, Any]:
    cp = lab.exec("mn", [sys.executable, DPCHECK, "tcp-client", PEERS[peer][0], str(TCP_PORT), str(nbytes),
                         str(family)], timeout=timeout)
    res: dict[str, Any] = json.loads(cp.stdout.strip().splitlines()[-1])
    return res


def udp(lab: Lab, peer: str, count: int, family: int) -> dict[str, Any]:
    cp = lab.exec("mn", [sys.executable, DPCHECK, "udp-client", PEERS[peer][0], str(UDP_PORT), str(count),
                         str(family)], timeout=60)
    res: dict[str, Any] = json.loads(cp.stdout.strip().splitlines()[-1])
    return res


def status(lab: Lab, host: str) -> dict[str, Any]:
    cmd = ["rs", "status"] if host.startswith("rs") else ["status"]
    cp = lab.exec(host, [sys.executable, "-m", "ntmobile", *cmd, "--json"])
    res: dict[str, Any] = json.loads(cp.stdout)
    return res


def path_modes(lab: Lab) -> dict[str, str]:
    return {str(p.get("peer") or "").rstrip("."): str(p.get("mode")) for p in status(lab, "mn")["paths"]}


def curl_sha(lab: Lab, family: int) -> str:
    cp = lab.exec("mn", ["sh", "-c", f"curl -sS -m 90 -{family} http://www.gn.example/big.bin | sha256sum"],
                  timeout=120)
    return cp.stdout.split()[0]


@pytest.mark.parametrize("offload", [True, False], ids=["offload", "per-packet"])
def test_checked_transfers_on_every_path(lab_factory: LabFactory, offload: bool) -> None:
    lab = lab_factory(topology(dict.fromkeys(("mn", "gl", "cn", "rs1"), offload)), bare=False)
    start_servers(lab)
    big = lab.state.big_file
    assert big is not None
    for fam in (4, 6):
        assert curl_sha(lab, fam) == big.sha256
    for peer in PEERS:
        for fam in (4, 6):
            r = tcp(lab, peer, 4 << 20, fam)
            assert r["ok"], (peer, fam, r)
            assert (":" in r["peer"]) == (fam == 6)
            u = udp(lab, peer, 400, fam)
            assert u["ok"] and u["echoed"] >= 360, (peer, fam, u)  # UDP: no corruption, little loss
    modes = path_modes(lab)  # (www. and iperf.gn.example share the GN's RS-N path)
    assert set(modes.values()) == {"DIRECT", "RS_N", "RS_S"}, modes
    mn = status(lab, "mn")
    assert mn["gso"] is offload and ("tso4" in mn["offloads"]) is offload
    dp = mn["dataplane"]
    assert dp["rx_auth"] == 0 and dp["rx_spoofed"] == 0 and dp["tun_write_errors"] == 0
    if offload:
        assert dp["tx_gso_capsules"] > 0 and dp["rx_gso_capsules"] > 0
        rs = status(lab, "rs1")
        assert rs["gso"] is True and rs["dataplane"]["tx_gso_sends"] > 0
    else:
        assert dp["tx_gso_capsules"] == 0 and dp["rx_gso_capsules"] == 0


def test_offload_and_per_packet_peers_interoperate(lab_factory: LabFactory) -> None:
    """mn and cn use GSO capsules; gl and the relay are per-packet: mn segments toward them in
    userspace, takes their per-packet capsules into its offload TUN, and still sends GSO capsules
    to cn through the (per-packet) RS-S, which forwards chunks without opening them."""
    lab = lab_factory(topology({"mn": True, "cn": True, "gl": False, "rs1": False}), bare=False)
    start_servers(lab)
    big = lab.state.big_file
    assert big is not None
    assert curl_sha(lab, 4) == big.sha256  # RS-N per-packet relay -> offload node
    for peer in PEERS:
        for fam in (4, 6):
            r = tcp(lab, peer, 4 << 20, fam)  # echo: both directions carry the bulk
            assert r["ok"], (peer, fam, r)
        u = udp(lab, peer, 300, 4)
        assert u["ok"] and u["echoed"] >= 270, (peer, u)
    mn = status(lab, "mn")
    caps = {str(p.get("peer") or "").rstrip("."): p for p in mn["paths"]}
    assert mn["gso"] is True
    dp = mn["dataplane"]
    assert dp["tx_segmented"] > 0  # super-packets cut for gl and the RS-N
    assert dp["tx_gso_capsules"] > 0 and dp["rx_gso_capsules"] > 0  # with cn, through the RS-S
    assert dp["rx_auth"] == 0 and dp["tun_write_errors"] == 0
    gl = status(lab, "gl")
    assert gl["gso"] is False and gl["dataplane"]["rx_gso_unsupported"] == 0
    assert status(lab, "rs1")["gso"] is False
    assert {p["mode"] for p in caps.values()} == {"DIRECT", "RS_N", "RS_S"}, caps


def test_transfers_complete_under_one_percent_loss(lab_factory: LabFactory) -> None:
    """1 % random loss on every link (nft numgen): a lost chunk drops its whole GSO capsule, and
    TCP recovers; nothing is wedged or corrupted."""
    lab = lab_factory(topology(dict.fromkeys(("mn", "gl", "cn", "rs1"), True), loss_percent=1), bare=False)
    start_servers(lab, ("gl", "cn"))
    big = lab.state.big_file
    assert big is not None
    assert curl_sha(lab, 4) == big.sha256
    for peer in ("gl", "cn"):
        r = tcp(lab, peer, 8 << 20, 4, timeout=180)
        assert r["ok"], (peer, r)
    dp = status(lab, "mn")["dataplane"]
    assert dp["rx_auth"] == 0 and dp["rx_malformed"] == 0
