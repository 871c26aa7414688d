"""Bringing labs up and down: every topology comes up, resolves and goes down leaving nothing behind;
failed starts clean up; daemons come from the registry; the CLI round trip and its root check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ntmobile.lab import (
    BUILTIN_TOPOLOGIES,
    DaemonContext,
    DaemonLaunch,
    Lab,
    LabError,
    load_topology,
    register_daemon_kind,
    teardown,
)
from ntmobile.lab.daemons import unregister_daemon_kind
from ntmobile.lab.state import ETC_NETNS, lab_dir, proc_alive
from tests.lab.conftest import LabFactory, new_prefix, wait_for

pytestmark = [pytest.mark.root, pytest.mark.lab]

NTM = str(Path(sys.executable).parent / "ntm")


def _leftovers(prefix: str, pids: list[int]) -> list[str]:
    left = [n for n in os.listdir("/run/netns") if n.startswith(prefix + "-")]
    if ETC_NETNS.is_dir():
        left += [str(p) for p in ETC_NETNS.glob(f"{prefix}-*")]
    if lab_dir(prefix).exists():
        left.append(str(lab_dir(prefix)))
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            left.append(f"pid {pid}")
    return left


@pytest.mark.parametrize("name", BUILTIN_TOPOLOGIES)
def test_topology_comes_up_resolves_and_goes_down_leaving_nothing(name: str) -> None:
    prefix = new_prefix()
    t0 = time.monotonic()
    lab = Lab.up(name, prefix=prefix)
    up_s = time.monotonic() - t0
    try:
        st = lab.status()
        assert set(st["hosts"]) == {h.name for h in load_topology(name).hosts}
        assert all(p["alive"] for p in st["processes"]), st["processes"]
        for h in lab.topology.hosts:
            out = lab.exec(h.name, ["getent", "ahostsv4", "www.gn.example"]).stdout
            if any(d.kind == "node" for d in h.daemons):
                # NTM nodes resolve through their node's DNS stub: the answer is the GN's VIP
                assert out.split()[0].startswith("100.127."), f"{h.name} does not resolve: {out!r}"
            else:
                assert out.split()[0] == "192.0.2.40", f"{h.name} does not resolve: {out!r}"
        pids = [p["pid"] for p in st["processes"]]
        # a tracked helper and an untracked process inside a lab namespace
        tracked = lab.popen("gn", ["sleep", "300"])
        stray = subprocess.Popen(["ip", "netns", "exec", lab.ns("cn"), "sleep", "300"])
        pids += [tracked.pid, stray.pid]
    finally:
        t1 = time.monotonic()
        lab.down()
        down_s = time.monotonic() - t1
    stray.wait(timeout=10)
    print(f"\n{name}: up {up_s:.2f} s, down {down_s:.2f} s")
    assert _leftovers(prefix, pids) == []


def test_teardown_sweeps_by_prefix_when_the_state_is_lost() -> None:
    prefix = new_prefix()
    lab = Lab.up("paper", prefix=prefix)
    try:
        pids = [r.pid for r in lab.state.processes]
        (lab_dir(prefix) / "state.json").unlink()
        with pytest.raises(LabError, match="no lab"):
            Lab.attach(prefix)
        removed = teardown(prefix)
        assert f"{prefix}-sw" in removed
        assert not any(proc_alive(r) for r in lab.state.processes)
    finally:
        lab.down()  # reaps our children; idempotent
    assert _leftovers(prefix, pids) == []


def test_failed_start_cleans_up_and_says_why_in_one_line() -> None:
    prefix = new_prefix()
    topo = load_topology("paper")
    dns = topo.dns
    assert dns is not None
    bad_zone = dns.zones[0].model_copy(update={"records": ["www A not-an-address"]})
    broken = topo.model_copy(update={"dns": dns.model_copy(update={"zones": [bad_zone]})})
    started: list[Lab] = []
    try:
        with pytest.raises(LabError) as e:
            started.append(Lab.up(broken, prefix=prefix))
    finally:
        for lab in started:  # only if Lab.up wrongly succeeded
            lab.down()
    msg = str(e.value)
    assert msg.startswith("dns zone gn.example. on dnsgn:") and "not-an-address" in msg and "\n" not in msg
    assert _leftovers(prefix, []) == []

    unknown = topo.with_host("dca", daemons=[{"kind": "no-such-daemon"}])
    try:
        with pytest.raises(LabError, match=r"hosts\.dca\.daemons: unknown daemon kind 'no-such-daemon'"):
            started.append(Lab.up(unknown, prefix=prefix))
    finally:
        for lab in started:
            lab.down()
    assert _leftovers(prefix, []) == []


def test_daemons_come_from_the_registry_and_bare_skips_them(lab_factory: LabFactory) -> None:
    kind = "labtest-echo"

    def build(ctx: DaemonContext) -> DaemonLaunch:
        port = int(ctx.spec.config["port"])
        note = ctx.workdir / "echo.note"
        return DaemonLaunch(argv=[sys.executable, "-m", "ntmobile.lab.probe", "reflect", str(port)],
                            files={note: f"{ctx.host} {ctx.lab.addr(ctx.host)}\n"}, ready_tcp=(port,))

    register_daemon_kind(kind, build)
    try:
        topo = load_topology("paper").with_host("rs1", daemons=[{"kind": kind, "config": {"port": 7100}}])
        lab = lab_factory(topo, bare=False)
        procs = [p for p in lab.status()["processes"] if p["host"] == "rs1"]
        assert [p["name"] for p in procs] == [kind] and procs[0]["alive"]
        assert (lab.workdir / "rs1" / "echo.note").read_text() == "rs1 192.0.2.20\n"
        assert lab.exec("mn", ["bash", "-c", "echo > /dev/tcp/192.0.2.20/7100"]).returncode == 0
        bare = lab_factory(topo, bare=True)
        assert not [p for p in bare.status()["processes"] if p["host"] == "rs1"]
    finally:
        unregister_daemon_kind(kind)


def test_cli_round_trip() -> None:
    prefix = new_prefix()

    def ntm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([NTM, "lab", *args], capture_output=True, text=True, timeout=60)

    try:
        up = ntm("up", "nat", "--name", prefix, "--nat", "natb=symmetric", "--udp-timeout", "nata=7", "--json")
        assert up.returncode == 0, up.stderr
        st = json.loads(up.stdout)
        assert st["hosts"]["natb"]["nat"]["profile"] == "symmetric"
        assert st["hosts"]["nata"]["nat"]["udp_timeout"] == 7
        assert len(st["big_file"]["sha256"]) == 64
        again = ntm("up", "nat", "--name", prefix)
        assert again.returncode != 0 and "already up" in again.stderr
        ex = ntm("exec", "mn", "--name", prefix, "--", "ip", "-4", "-o", "addr", "show", "dev", "neta")
        assert ex.returncode == 0 and "10.1.0.10/24" in ex.stdout
        assert ntm("exec", "mn", "--name", prefix, "--", "sh", "-c", "exit 3").returncode == 3
        status = ntm("status", "--name", prefix, "--json")
        assert json.loads(status.stdout)["hosts"]["mn"]["links"][0]["ipv4"] == "10.1.0.10"
        assert "mn.a.example" in ntm("status", "--name", prefix).stdout
    finally:
        down = ntm("down", "--name", prefix)
    assert down.returncode == 0 and "removed 14 namespaces" in down.stdout
    assert _leftovers(prefix, []) == []
    bad = ntm("up", "/nonexistent.toml", "--name", prefix)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1


def test_cli_not_root_gives_one_line() -> None:
    cp = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", NTM, "lab", "status"],
                        capture_output=True, text=True, timeout=30)
    assert cp.returncode != 0
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs root" in lines[0]


def test_the_lab_waits_for_services_with_a_deadline(lab_factory: LabFactory) -> None:
    lab = lab_factory("paper")
    gn = [p for p in lab.status()["processes"] if p["host"] == "gn"]
    assert sorted(p["name"] for p in gn) == ["httpd", "iperf3", "sshd", "tftpd", "vsftpd"]
    wait_for(lambda: all(p["alive"] for p in lab.status()["processes"]), 5, "services alive")
