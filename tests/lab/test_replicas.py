"""DC replicas in the lab (issue 17; topology ``replicas``, docs/lab.md): a.example served by two DC
replicas (dca, dca2) on one real PostgreSQL server (host db). dca2 starts first, so its send-counter
block is below dca's: mn's move to dca2 is the lower-block case (RECV_FLOOR, protocol.md).

mn registered at dca reaches cn.b.example and www.gn.example; dca is killed with SIGKILL while a
transfer runs through RS-N; mn re-registers at dca2 with the same VIPs within the documented bound,
the transfer finishes intact and new lookups work; dca is restarted with the same command and, once
dca2 is killed in turn, takes mn again (same VIPs) and sets up its new paths.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ntmobile.lab import Lab
from ntmobile.lab.state import ProcRecord, proc_alive

from .conftest import LabFactory, wait_for

pytestmark = [pytest.mark.root, pytest.mark.lab]

NTM = [sys.executable, "-m", "ntmobile"]
DCA, DCA2 = "192.0.2.10", "192.0.2.12"
#: REPLICA_FAILOVER_BOUND (20 s with the default 15 s keepalive, operations.md) plus a round of slack
FAILOVER = 30.0


def status(lab: Lab, host: str = "mn") -> dict[str, Any]:
    cp = lab.exec(host, [*NTM, "status", "--json"], check=False, timeout=10)
    return json.loads(cp.stdout) if cp.returncode == 0 else {}


def dc_status(lab: Lab, host: str) -> dict[str, Any]:
    cp = lab.exec(host, [*NTM, "dc", "status", "--json"], check=False, timeout=10)
    return json.loads(cp.stdout) if cp.returncode == 0 else {}


def registered_at(lab: Lab, host: str, dc: str, timeout: float) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        st = status(lab, host)
        return st if st.get("registered") and (st.get("dc") or {}).get("address") == dc else None
    return wait_for(check, timeout, f"{host} registered at the replica {dc}")  # type: ignore[no-any-return]


def session(lab: Lab, dc_host: str, name: str, timeout: float) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        return {s["name"]: s for s in dc_status(lab, dc_host).get("sessions", [])}.get(name)
    return wait_for(check, timeout, f"{name} in {dc_host}'s sessions")  # type: ignore[no-any-return]


def daemon(lab: Lab, host: str, kind: str) -> ProcRecord:
    return next(p for p in lab.state.processes if p.host == host and p.name.startswith(kind))


def kill9(lab: Lab, rec: ProcRecord) -> None:
    os.kill(rec.pid, signal.SIGKILL)
    wait_for(lambda: not proc_alive(rec), 10, f"{rec.name} on {rec.host} to die")
    lab.stop(rec)  # forget the dead record


def reaches(lab: Lab, name: str, timeout: float = 20) -> None:
    """mn reaches ``name`` (looked up through its stub): one ping answered."""
    wait_for(lambda: lab.exec("mn", ["ping", "-c", "1", "-W", "2", name], check=False, timeout=10).returncode == 0,
             timeout, f"mn to reach {name}")


def http_ok(lab: Lab, name: str) -> None:
    lab.exec("mn", ["curl", "-sS", "-4", "-m", "20", "-o", "/dev/null", f"http://{name}/"], timeout=30)


def sha256(lab: Lab, host: str, path: str) -> str:
    return lab.exec(host, ["sha256sum", path], timeout=30).stdout.split()[0]


def test_replica_killed_node_moves_transfer_survives_replica_returns(lab_factory: LabFactory) -> None:
    lab = lab_factory("replicas", bare=False)
    big = lab.state.big_file
    assert big is not None
    st = registered_at(lab, "mn", DCA, 20)
    vips = (st["vip4"], st["vip6"])
    registered_at(lab, "gl", DCA2, 20)
    # Both replicas answer for the whole zone from the shared registry.
    for ns in (DCA, DCA2):
        cp = lab.exec("root", ["dig", "+short", f"@{ns}", "mn.a.example", "A"], timeout=15)
        assert cp.stdout.split() == [vips[0]], (ns, cp.stdout)
    reaches(lab, "cn.b.example")
    reaches(lab, "gl.a.example")  # held by the other replica: directed across replicas
    http_ok(lab, "www.gn.example")
    [path] = [p for p in status(lab)["paths"] if p["peer"] == "www.gn.example"]
    assert path["mode"] == "RS_N" and path["established"]

    # A transfer through RS-N (32 MiB at 1.5 MiB/s, ~22 s: it outlasts the failover) runs while dca dies.
    out = str(Path(lab.workdir) / "during-kill.bin")
    transfer = lab.popen("mn", ["curl", "-sS", "-m", "120", "--limit-rate", "1500K", "-H", "Host: www.gn.example",
                                "-o", out, f"http://{path['peer_vip4']}/big.bin"],
                         name="curl", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for(lambda: os.path.exists(out) and os.path.getsize(out) > 0, 20, "the transfer to start")
    dca = daemon(lab, "dca", "dc")
    killed = time.monotonic()
    kill9(lab, dca)

    st = registered_at(lab, "mn", DCA2, FAILOVER)
    moved = time.monotonic() - killed
    assert (st["vip4"], st["vip6"]) == vips
    s = session(lab, "dca2", "mn.a.example", 10)
    assert (s["vip4"], s["vip6"]) == vips
    print(f"mn re-registered at dca2 {moved:.1f} s after dca was killed")
    # dca2 started first, so its counter block is below dca's: mn's RECV_FLOOR moved it above what mn
    # had accepted from dca (else mn would drop dca2's answers as replays and never register).
    assert dc_status(lab, "dca2")["stats"].get("counter_advanced", 0) >= 1
    assert transfer.wait(timeout=150) == 0, transfer.stderr.read() if transfer.stderr else ""
    assert os.path.getsize(out) == big.size and sha256(lab, "mn", out) == big.sha256

    # New lookups work with dca gone: the resolver falls back to dca2's glue, new paths are set up by dca2.
    cp = lab.exec("root", ["dig", "+short", "@192.0.2.3", "gl.a.example", "A"], timeout=30)
    assert cp.stdout.strip(), "gl.a.example resolves through dca2"
    http_ok(lab, "ftp.gn.example")
    out2 = str(Path(lab.workdir) / "after-kill.bin")
    lab.exec("mn", ["curl", "-sS", "-4", "-m", "120", "-o", out2, "http://iperf.gn.example/big.bin"], timeout=150)
    assert sha256(lab, "mn", out2) == big.sha256

    # dca returns (same command, nothing else): it rejoins from the database and takes nodes again
    # once dca2 is stopped.
    lab.spawn("dca", dca.argv, dca.name)
    wait_for(lambda: dc_status(lab, "dca").get("dc_id"), 20, "the restarted dca")
    dca2 = daemon(lab, "dca2", "dc")
    kill9(lab, dca2)
    st = registered_at(lab, "mn", DCA, FAILOVER)
    assert (st["vip4"], st["vip6"]) == vips
    # gl has no NAT (the DC asks it for no keepalives) yet notices dca2's death too: a node with
    # replicas keeps a liveness keepalive (REPLICA_LIVENESS_KEEPALIVE).
    registered_at(lab, "gl", DCA, FAILOVER)
    s = session(lab, "dca", "mn.a.example", 10)
    assert (s["vip4"], s["vip6"]) == vips
    cp = lab.exec("mn", ["curl", "-sS", "-4", "-m", "60", "-o", "/dev/null", "-w", "%{http_code}",
                         "http://www.gn.example/big.bin"], timeout=90)
    assert cp.stdout == "200"


def test_mn_moves_after_its_failover_and_the_other_replica_redirects_its_path(lab_factory: LabFactory) -> None:
    """mn (behind nata, at dca) has a path to cn.b.example, directed by dca; dca is killed; mn
    re-registers at dca2 and then moves to the global leg (handover): dca2, which never directed the
    path, re-directs it from the shared registry (same Path ID and key, through b.example's DC), and
    mn reaches cn on it from its new address."""
    lab = lab_factory("replicas", bare=False)
    registered_at(lab, "mn", DCA, 20)
    reaches(lab, "cn.b.example")
    [path] = [p for p in status(lab)["paths"] if p["peer"] == "cn.b.example"]
    kill9(lab, daemon(lab, "dca", "dc"))
    registered_at(lab, "mn", DCA2, FAILOVER)
    assert dc_status(lab, "dca2")["stats"].get("paths_redirected", 0) == 0
    refused = status(lab)["stats"].get("redirect_refused", 0)
    lab.move("mn", "global")
    wait_for(lambda: (status(lab).get("observed") or [None])[0] == "192.0.2.70", 20,
             "mn to re-register from its global address")
    wait_for(lambda: dc_status(lab, "dca2")["stats"].get("paths_redirected", 0) >= 1, 20,
             "dca2 to re-direct mn's path to cn.b.example")
    st = status(lab)
    assert st["stats"].get("redirect_refused", 0) == refused, st["stats"]
    stats = dc_status(lab, "dca2")["stats"]
    assert stats.get("path_claims", 0) >= 1 and stats.get("path_store_errors", 0) == 0, stats
    [after] = [p for p in st["paths"] if p["peer"] == "cn.b.example"]
    assert after["path_id"] == path["path_id"]  # the same path, re-directed
    reaches(lab, "cn.b.example")
    [again] = [p for p in status(lab)["paths"] if p["peer"] == "cn.b.example"]
    assert again["path_id"] == path["path_id"]
