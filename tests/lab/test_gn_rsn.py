"""Issue 4 end to end: an NTM node talks to a general node through RS-N, with unmodified apps.

The node's DNS query is hooked, its DC finds out by DNS that the peer is an ordinary host, gives it a
VIP, sets up a relay on the best RS-N, and the node's packets reach the GN translated by the kernel.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ntmobile.lab import Lab

from .conftest import LabFactory, wait_for

pytestmark = [pytest.mark.root, pytest.mark.lab]

NTM = [sys.executable, "-m", "ntmobile"]
HERE = Path(__file__).parent


def status(lab: Lab, host: str = "mn") -> dict[str, Any]:
    cp = lab.exec(host, [*NTM, "status", "--json"], check=False, timeout=10)
    return json.loads(cp.stdout) if cp.returncode == 0 else {}


def registered(lab: Lab, host: str = "mn") -> dict[str, Any]:
    return wait_for(lambda: (st := status(lab, host)).get("registered") and st, 15, f"{host} registered")  # type: ignore[no-any-return]


def sha256_of(lab: Lab, url: str, *curl_args: str) -> str:
    cp = lab.exec("mn", ["sh", "-c", f"curl -sS -m 60 {' '.join(curl_args)} '{url}' | sha256sum"], timeout=90)
    return cp.stdout.split()[0]


@pytest.mark.parametrize("topology", ["paper", "nat"])
def test_unmodified_apps_reach_the_gn_through_rsn(lab_factory: LabFactory, topology: str) -> None:
    lab = lab_factory(topology, bare=False)
    st = registered(lab)
    if topology == "nat":
        assert st["nat"] == "NAT" and st["observed"][0] == "192.0.2.100"  # mn is behind NAT A
    big = lab.state.big_file
    assert big is not None
    # HTTP over IPv4 and IPv6: the large file arrives intact.
    assert sha256_of(lab, "http://www.gn.example/big.bin", "-4") == big.sha256
    assert sha256_of(lab, "http://www.gn.example/big.bin", "-6") == big.sha256
    # FTP, passive and active (the kernel's FTP helper on the RS-N rewrites PORT/EPRT).
    assert sha256_of(lab, "ftp://ftp.gn.example/big.bin", "-4", "--ftp-pasv") == big.sha256
    assert sha256_of(lab, "ftp://ftp.gn.example/big.bin", "-4", "--ftp-port", "-") == big.sha256
    # iperf3 both ways.
    for extra in ([], ["-R"]):
        cp = lab.exec("mn", ["iperf3", "-c", "iperf.gn.example", "-4", "-t", "2", "-J", *extra], timeout=60)
        assert json.loads(cp.stdout)["end"]["sum_received"]["bytes"] > 0
    # ssh: the GN sees the RS-N's address as the client, not the node's.
    cp = lab.exec("mn", ["ssh", "-4", "-o", "ConnectTimeout=10", "root@www.gn.example", "echo $SSH_CONNECTION"],
                  timeout=60)
    assert cp.stdout.split()[0] == lab.addr("rs1", 4)
    # ntm status: www, ftp and iperf are one GN (one address), so they share one RS-N path via rs1.
    # Each new name of the GN set the path up again (new Path ID and key, same GN VIP: a Path ID names
    # one key, docs/security.md §3.1); the path carries the name looked up last and its own bytes.
    st = status(lab)
    [path] = st["paths"]
    assert (path["mode"], path["rs"], path["established"]) == ("RS_N", "rs1", True)
    assert path["peer"] == "iperf.gn.example" and path["peer_vip4"].startswith("100.127.")
    assert path["rx_bytes"] > 0 and st["stats"].get("paths_superseded", 0) == 2


def test_ipv6_only_gn_is_reached_over_ipv6(lab_factory: LabFactory) -> None:
    lab = lab_factory("nat", bare=False)
    registered(lab)
    cp = lab.exec("mn", ["dig", "+short", "AAAA", "v6only.gn.example"], timeout=15)
    vip6 = cp.stdout.strip()
    assert vip6.startswith("fd00:6e74:ffff:")  # a GN VIP, handed out only once the tunnel is up
    assert lab.exec("mn", ["dig", "+short", "A", "v6only.gn.example"], timeout=15).stdout.strip() == ""
    big = lab.state.big_file
    assert big is not None
    assert sha256_of(lab, "http://v6only.gn.example/big.bin") == big.sha256
    cp = lab.exec("mn", ["ssh", "-6", "-o", "ConnectTimeout=10", "root@v6only.gn.example", "echo $SSH_CONNECTION"],
                  timeout=60)
    assert cp.stdout.split()[0] == lab.addr("rs1", 6)


def test_failures_are_quick_and_clear(lab_factory: LabFactory) -> None:
    lab = lab_factory("nat", bare=False)
    registered(lab)
    # A name that does not exist: NXDOMAIN to the app.
    t0 = time.monotonic()
    cp = lab.exec("mn", ["dig", "+tries=1", "+time=6", "nonexistent.gn.example"], timeout=20)
    assert "status: NXDOMAIN" in cp.stdout
    assert time.monotonic() - t0 < 5.0
    # A GN that is down: the tunnel is set up, and the connection fails like any unreachable host.
    cp = lab.exec("mn", ["curl", "-sS", "-4", "-m", "15", "http://down.gn.example/"], check=False, timeout=30)
    assert cp.returncode in (7, 28), cp.stderr  # couldn't connect / timed out: a normal connection error
    # A name in a domain nobody serves: the node answers before the app's resolver gives up (5 s).
    t0 = time.monotonic()
    cp = lab.exec("mn", ["dig", "+tries=1", "+time=8", "www.nowhere.example"], timeout=20)
    assert "status: NXDOMAIN" in cp.stdout or "status: SERVFAIL" in cp.stdout
    assert time.monotonic() - t0 < 5.0


def _relay_of(lab: Lab, name: str) -> str:
    lab.exec("mn", ["curl", "-sS", "-4", "-m", "15", "-o", "/dev/null", f"http://{name}/"], timeout=30)
    paths = {p["peer"]: p for p in status(lab)["paths"]}
    return str(paths[name]["rs"])


def test_dc_chooses_the_relay_closest_to_the_gn(lab_factory: LabFactory) -> None:
    """Documented rule: fewest measured hops from the relay to the GN, then the least loaded relay,
    then the name. gn is 0 hops from both relays (rs1 wins the tie); gnfar sits behind rs2."""
    lab = lab_factory(load_topology_file("relaychoice.toml"), bare=False)
    # rs2 is also the far network's router; its router firewall (policy drop) must let the relay's
    # de-capsulated traffic (from its TUN) through, as an operator would configure it.
    lab.exec("rs2", ["nft", "add", "rule", "ip", f"{lab.prefix}_nat", "forwarding", "iifname", "ntmrs0", "accept"])
    registered(lab)
    assert _relay_of(lab, "www.gn.example") == "rs1"
    assert _relay_of(lab, "far.gn.example") == "rs2"
    log = (Path(lab.workdir) / "logs" / "dca-dc.log").read_text()
    assert "rs2(hops 0" in log and "rs1(hops 1" in log


def test_unreachable_relay_makes_the_dc_choose_another(lab_factory: LabFactory) -> None:
    lab = lab_factory("nat", bare=False)
    registered(lab)
    rs1 = next(p for p in lab.state.processes if p.host == "rs1" and p.name.startswith("rs"))
    lab.stop(rs1)
    t0 = time.monotonic()
    assert _relay_of(lab, "www.gn.example") == "rs2"
    assert time.monotonic() - t0 < 10.0


def load_topology_file(name: str) -> Any:
    from ntmobile.lab import load_topology

    return load_topology(HERE / "topologies" / name)


def test_every_daemon_shows_its_handler_errors_in_status(lab_factory: LabFactory) -> None:
    """`ntm status`, `ntm dc status` and `ntm rs status` (--json) each carry the driver's count of
    handler exceptions and the last one's text (runtime.driver.HandlerErrors): none in a healthy run."""
    lab = lab_factory("nat", bare=False)
    registered(lab)
    lab.exec("mn", ["curl", "-sS", "-4", "-m", "15", "-o", "/dev/null", "http://www.gn.example/"], timeout=30)
    for host, cmd in (("mn", []), ("dca", ["dc"]), ("rs1", ["rs"]), ("rs2", ["rs"])):
        cp = lab.exec(host, [*NTM, *cmd, "status", "--json"], timeout=10)
        drv = json.loads(cp.stdout)["driver"]
        assert (drv["handler_errors"], drv["last_handler_error"]) == (0, None), (host, drv)
        assert drv["received"] > 0, host


def test_tftp_through_rsn_needs_only_the_kernel_helper(lab_factory: LabFactory) -> None:
    """TFTP's server answers from a new port: the relay's tftp conntrack helper (a default helper)
    expects it, so a download from tftpd-hpa on the GN works through RS-N, IPv4 and IPv6 (issue 20)."""
    lab = lab_factory("paper", bare=False)
    registered(lab)
    small = lab.host_workdir("gn") / "www" / "small.bin"
    want = hashlib.sha256(small.read_bytes()).hexdigest()
    for fam in ("-4", "-6"):
        out = lab.host_workdir("mn") / f"tftp{fam}.bin"
        cp = lab.exec("mn", ["timeout", "30", "tftp", fam, "www.gn.example", "-m", "binary",
                             "-c", "get", "small.bin", str(out)], check=False, timeout=40)
        assert cp.returncode == 0 and out.exists(), (fam, cp.stdout, cp.stderr)
        assert hashlib.sha256(out.read_bytes()).hexdigest() == want, fam
