"""The daemons as services (issue 18): each systemd unit shipped in the package passes
`systemd-analyze verify`; every daemon of the `nat` lab runs with only its unit's capabilities (root's
uid, bounding set from the unit, no new privileges) and the lab's RS-N and RS-S paths work; SIGTERM
leaves each host clean (no TUN, no routes into it, no nft table of the daemon)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ntmobile.lab import Lab, load_topology
from ntmobile.lab.state import proc_alive
from ntmobile.service import KINDS, capabilities

from .conftest import LabFactory, wait_for
from .test_faults import registered, status

pytestmark = [pytest.mark.root, pytest.mark.lab]

#: capability name -> bit (linux/capability.h)
CAP_BITS = {"CAP_NET_BIND_SERVICE": 10, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13}


def test_every_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze (package systemd) is missing"
    for kind in KINDS:
        cfg = tmp_path / f"{kind}.toml"
        cfg.write_text({"dc": 'domain = "a.example"\naddress = "192.0.2.53"\n',
                        "rs": 'name = "rs1"\ncredentials = ["rs.cred.toml"]\naddress = "192.0.2.20"\n',
                        "node": 'credentials = "node.cred.toml"\n'}[kind])
        p = subprocess.run([sys.executable, "-m", "ntmobile", kind, "install-service", "-c", str(cfg),
                            "--unit-dir", str(tmp_path / "units")], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        unit = tmp_path / "units" / f"ntm-{kind}.service"
        text = unit.read_text()
        assert f" {kind} run -c {cfg}" in text and "CapabilityBoundingSet=" in text
        v = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
        assert v.returncode == 0, v.stdout + v.stderr


def cap_eff(pid: int) -> set[str]:
    line = next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("CapEff:"))
    bits = int(line.split()[1], 16)
    return {name for name, bit in CAP_BITS.items() if bits >> bit & 1} | ({"OTHER"} if bits & ~sum(
        1 << b for b in CAP_BITS.values()) else set())


def daemon_pids(lab: Lab) -> dict[tuple[str, str], int]:
    out = {}
    for p in lab.state.processes:
        kind = p.name.split("-")[0].split(":")[0]
        if kind in KINDS:
            # The recorded PID is setpriv's, which execs the daemon: the same process.
            out[(p.host, kind)] = p.pid
    return out


def test_daemons_work_with_only_their_units_capabilities_and_sigterm_leaves_hosts_clean(
        lab_factory: LabFactory) -> None:
    topo = load_topology("nat")
    for h in topo.hosts:
        if h.daemons:
            specs = [d.model_dump() for d in h.daemons]
            for s in specs:
                s["config"] = {**s["config"], "service_caps": True}
            topo = topo.with_host(h.name, daemons=specs)
    lab = lab_factory(topo, bare=False)
    registered(lab)
    pids = daemon_pids(lab)
    assert {k for _, k in pids} == set(KINDS)
    for (host, kind), pid in pids.items():
        assert cap_eff(pid) == set(capabilities(kind)), (host, kind, cap_eff(pid))
    # RS-N to the GN and RS-S to cn (another DC's node behind another NAT), by name.
    big = lab.state.big_file
    assert big is not None
    got = lab.exec("mn", ["bash", "-c", "curl -sS -4 -m 60 http://www.gn.example/big.bin | sha256sum"], timeout=90)
    assert got.stdout.split()[0] == big.sha256
    lab.exec("mn", ["ping", "-c", "2", "-W", "5", "cn.b.example"], timeout=30)
    modes = {p["peer"]: p["mode"] + ("/punched" if (p.get("traversal") or {}).get("state") == "direct" else "")
             for p in status(lab)["paths"]}
    # (cn's path starts RS_S and may be punched to DIRECT by NAT traversal by now: issue 16.)
    assert modes.get("www.gn.example") == "RS_N" and modes.get("cn.b.example") in ("RS_S", "DIRECT/punched"), modes
    # SIGTERM every daemon; afterwards no host has a TUN, a route into one, or an nft table of ours left.
    tables = lab.exec("rs1", ["nft", "list", "tables"]).stdout
    assert "ntm_rs" in tables, tables  # (the relay's RS-N table, there while it runs)
    for pid in pids.values():
        os.kill(pid, signal.SIGTERM)
    for (host, kind), pid in pids.items():
        rec = next(p for p in lab.state.processes if p.pid == pid)
        wait_for(lambda rec=rec: not proc_alive(rec), 20, f"{kind} on {host} to stop")  # type: ignore[misc]
        lab.stop(rec)
    for host, _ in pids:
        links = lab.exec(host, ["ip", "-o", "link", "show", "type", "tun"]).stdout
        assert links.strip() == "", (host, links)
        routes = lab.exec(host, ["ip", "route", "show", "100.64.0.0/10"]).stdout
        assert routes.strip() == "", (host, routes)
        left = [t for t in lab.exec(host, ["nft", "list", "tables"]).stdout.splitlines() if "ntm_" in t]
        assert left == [], (host, left)
