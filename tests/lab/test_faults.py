"""Faults and recovery (issue 8; docs/operations.md "Faults and recovery"):

- the DC is killed with SIGKILL: an established RS-N tunnel keeps carrying a running transfer; the
  DC restarted from its SQLite registry: the node re-syncs by itself (its next keepalive gets
  REREGISTER, it registers again) and keeps its VIPs;
- the NAT forgets idle UDP mappings after 5 s: with a DC keepalive shorter than that, an idle node
  keeps its mapping (same observed endpoint, no re-registration) and its path keeps working;
- the DC's database cannot be written: a new registration gets STORAGE_ERROR (one line in the
  node's status), established paths go on.
- the RS-S relay between two NTM nodes of one DC is killed mid-transfer: the path moves to the other
  relay (same Path ID and keys) within the documented bound and the TCP download completes intact.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from ntmobile.lab import Lab, load_topology
from ntmobile.lab.state import ProcRecord, proc_alive

from .conftest import LabFactory, wait_for

pytestmark = [pytest.mark.root, pytest.mark.lab]

NTM = [sys.executable, "-m", "ntmobile"]


def status(lab: Lab, host: str = "mn") -> dict[str, Any]:
    cp = lab.exec(host, [*NTM, "status", "--json"], check=False, timeout=10)
    return json.loads(cp.stdout) if cp.returncode == 0 else {}


def dc_status(lab: Lab, host: str = "dca") -> dict[str, Any]:
    cp = lab.exec(host, [*NTM, "dc", "status", "--json"], check=False, timeout=10)
    return json.loads(cp.stdout) if cp.returncode == 0 else {}


def registered(lab: Lab, host: str = "mn", timeout: float = 20) -> dict[str, Any]:
    return wait_for(lambda: (st := status(lab, host)).get("registered") and st, timeout,  # type: ignore[no-any-return]
                    f"{host} registered")


def daemon(lab: Lab, host: str, kind: str) -> ProcRecord:
    return next(p for p in lab.state.processes if p.host == host and p.name.startswith(kind))


def rsn_path(lab: Lab) -> dict[str, Any]:
    """Set up mn's RS-N path to the GN by name (DNS through the node's stub) and return it."""
    lab.exec("mn", ["curl", "-sS", "-4", "-m", "20", "-o", "/dev/null", "http://www.gn.example/"], timeout=30)
    [path] = [p for p in status(lab)["paths"] if p["peer"] == "www.gn.example"]
    assert path["mode"] == "RS_N" and path["established"]
    return path


def fetch_by_vip(lab: Lab, vip: str, out: str, *extra: str) -> list[str]:
    """curl the big file from the GN at its VIP (no DNS, so no DC involved) into ``out``."""
    return ["curl", "-sS", "-m", "120", "-H", "Host: www.gn.example", *extra, "-o", out, f"http://{vip}/big.bin"]


def sha256(lab: Lab, host: str, path: str) -> str:
    return lab.exec(host, ["sha256sum", path], timeout=30).stdout.split()[0]


def test_dc_killed_tunnel_carries_on_and_restarted_dc_resyncs(lab_factory: LabFactory) -> None:
    lab = lab_factory("nat", bare=False)
    st = registered(lab)
    vip4, vip6 = st["vip4"], st["vip6"]
    big = lab.state.big_file
    assert big is not None
    path = rsn_path(lab)
    out = str(Path(lab.workdir) / "during-kill.bin")
    # A transfer of 32 MiB at 8 MiB/s (about 4 s) is running when the DC dies.
    transfer = lab.popen("mn", fetch_by_vip(lab, path["peer_vip4"], out, "--limit-rate", "8M"), name="curl",
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for(lambda: os.path.exists(out) and os.path.getsize(out) > 0, 20, "the transfer to start")
    dc = daemon(lab, "dca", "dc")
    os.kill(dc.pid, signal.SIGKILL)
    wait_for(lambda: not proc_alive(dc), 10, "the DC to die")
    lab.stop(dc)  # forget the dead record
    assert transfer.wait(timeout=120) == 0
    assert os.path.getsize(out) == big.size and sha256(lab, "mn", out) == big.sha256
    # With the DC still down, a fresh transfer over the established tunnel works too.
    out2 = str(Path(lab.workdir) / "dc-down.bin")
    lab.exec("mn", fetch_by_vip(lab, path["peer_vip4"], out2), timeout=150)
    assert sha256(lab, "mn", out2) == big.sha256
    # Restart the DC with the same command: registrations and VIPs come back from SQLite, and the
    # node re-syncs without an operator (keepalive -> REREGISTER -> registration).
    lab.spawn("dca", dc.argv, dc.name)
    wait_for(lambda: dc_status(lab).get("dc_id"), 20, "the restarted DC")

    def resynced() -> dict[str, Any] | None:
        sessions = {s["name"]: s for s in dc_status(lab).get("sessions", [])}
        return sessions.get("mn.a.example")

    # Bound: the node's keepalive interval (15 s behind a NAT) plus a retransmission round.
    session = wait_for(resynced, 40, "mn to register with the restarted DC")
    assert (session["vip4"], session["vip6"]) == (vip4, vip6)
    st = registered(lab)
    assert (st["vip4"], st["vip6"]) == (vip4, vip6)
    assert st["stats"].get("reregister_requested", 0) >= 1
    assert dc_status(lab)["stats"].get("reregister_sent", 0) >= 1
    # And new path set-ups through the restarted DC work, by name.
    out3 = str(Path(lab.workdir) / "after-restart.bin")
    lab.exec("mn", ["curl", "-sS", "-4", "-m", "120", "-o", out3, "http://www.gn.example/big.bin"], timeout=150)
    assert sha256(lab, "mn", out3) == big.sha256


def test_keepalives_hold_a_5s_nat_mapping(lab_factory: LabFactory) -> None:
    topo = load_topology("nat")
    spec = topo.host("dca").daemons[0].model_dump()
    spec["config"] = {**spec["config"], "keepalive": 2}
    lab = lab_factory(topo.with_host("dca", daemons=[spec]), bare=False, udp_timeout={"nata": 5})
    st = registered(lab)
    assert st["nat"] == "NAT" and st["keepalive"] == 2
    observed = st["observed"]
    path = rsn_path(lab)
    ka0 = st["stats"].get("path_keepalives", 0)
    # Idle (no data) for at least 20 s, four times the NAT's UDP timeout: 10 path keepalives at 2 s.
    wait_for(lambda: status(lab)["stats"].get("path_keepalives", 0) >= ka0 + 10, 40, "20 s of path keepalives")
    st = status(lab)
    assert st["registered"] and st["observed"] == observed  # the mapping never expired
    assert st["stats"].get("reregister_requested", 0) == 0
    big = lab.state.big_file
    assert big is not None
    out = str(Path(lab.workdir) / "after-idle.bin")
    lab.exec("mn", fetch_by_vip(lab, path["peer_vip4"], out), timeout=150)
    assert sha256(lab, "mn", out) == big.sha256


def test_unwritable_database_refuses_new_registrations_clearly(lab_factory: LabFactory) -> None:
    lab = lab_factory("nat", bare=False)
    registered(lab, "mn")
    registered(lab, "gl")
    path = rsn_path(lab)
    dc = daemon(lab, "dca", "dc")
    cfg = tomllib.loads(Path(dc.argv[-1]).read_text())
    db = Path(cfg["database"])
    gl = daemon(lab, "gl", "node")
    lab.stop(gl)
    files = [p for p in (db, db.with_name(db.name + "-wal")) if p.exists()]
    subprocess.run(["chattr", "+i", *map(str, files)], check=True)
    try:
        lab.spawn("gl", gl.argv, gl.name)
        st = wait_for(lambda: (s := status(lab, "gl")).get("error") and s, 30, "gl's registration error")
        assert st["error"].startswith("registration failed: STORAGE_ERROR: ") and "\n" not in st["error"]
        assert not st["registered"]
        # mn's established path goes on.
        big = lab.state.big_file
        assert big is not None
        out = str(Path(lab.workdir) / "db-readonly.bin")
        lab.exec("mn", fetch_by_vip(lab, path["peer_vip4"], out), timeout=150)
        assert sha256(lab, "mn", out) == big.sha256
        assert dc_status(lab)["stats"].get("registrations_rejected", 0) >= 1
    finally:
        subprocess.run(["chattr", "-i", *map(str, files)], check=False)


def test_dead_relay_path_moves_to_the_other_relay_keeping_the_vip(lab_factory: LabFactory) -> None:
    """The RS-N relay of mn's path is killed: mn's path keepalive goes unanswered (mn is behind a
    NAT: keepalive every 15 s, so it notices within 18 s), it closes the path, and the next packet to
    the GN VIP asks the DC again, which sets a new path (new Path ID and key, same GN VIP) up on the
    other relay.
    Applications keep using the VIP they resolved before."""
    lab = lab_factory("nat", bare=False)
    registered(lab)
    path = rsn_path(lab)
    old_rs = path["rs"]
    other = {"rs1": "rs2", "rs2": "rs1"}[old_rs]
    rs = daemon(lab, old_rs, "rs")
    os.kill(rs.pid, signal.SIGKILL)
    wait_for(lambda: not proc_alive(rs), 10, "the relay to die")
    lab.stop(rs)
    vip = path["peer_vip4"]

    def moved() -> dict[str, Any] | None:
        lab.exec("mn", ["curl", "-sS", "-m", "3", "-o", "/dev/null", "-H", "Host: www.gn.example", f"http://{vip}/"],
                 check=False, timeout=10)
        now = [p for p in status(lab)["paths"] if p["peer_vip4"] == vip and p["established"]]
        return now[0] if now and now[0]["rs"] == other else None

    new = wait_for(moved, 90, f"the path to move to {other}")
    assert new["path_id"] != path["path_id"] and new["mode"] == "RS_N"
    assert status(lab)["stats"].get("relay_lost", 0) == 1
    big = lab.state.big_file
    assert big is not None
    out = str(Path(lab.workdir) / "after-relay-death.bin")
    lab.exec("mn", fetch_by_vip(lab, vip, out), timeout=150)
    assert sha256(lab, "mn", out) == big.sha256


def test_dead_rss_relay_path_moves_to_the_other_relay_and_tcp_survives(lab_factory: LabFactory) -> None:
    """mn (behind NAT A) downloads 16 MiB over TCP from cn (behind NAT B, same DC) through an RS-S; the
    relay is killed (SIGKILL by PID) mid-transfer. The nodes' path keepalives (every 3 s: the DC's
    keepalive in this topology) go unanswered, a node asks the DC to re-direct the path, and the DC
    moves it to the other relay with the same Path ID and keys: the download goes on and checks out."""
    here = Path(__file__).resolve().parent
    lab = lab_factory(load_topology(here / "topologies" / "rssfail.toml"), bare=False)
    keepalive = 3.0
    # docs/operations.md: detection (keepalive + min(3, keepalive / 2)) + the move (about 1 s: at most one
    # 0.8 s Relay Direction timeout). The assertion allows 5 s more for polling both nodes' status on a
    # loaded CI machine (7.1 s was seen there against the documented 5.5 s); the figure is printed.
    documented = keepalive + min(3.0, keepalive / 2) + 1.0
    bound = documented + 5.0
    for host in ("mn", "cn"):
        registered(lab, host)
    www = Path(lab.workdir) / "cn-www"
    www.mkdir()
    data = os.urandom(16 * 1024 * 1024)
    (www / "big.bin").write_bytes(data)
    srv = lab.popen("cn", [sys.executable, "-m", "http.server", "8080", "--bind", "0.0.0.0", "--directory", str(www)],
                    name="http", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = Path(lab.workdir) / "from-cn.bin"
    curl: subprocess.Popen[bytes] | None = None

    def path_of(host: str, peer: str) -> dict[str, Any] | None:
        return next((p for p in status(lab, host).get("paths", []) if p.get("peer") == peer and p["established"]),
                    None)

    def size() -> int:
        return out.stat().st_size if out.exists() else 0

    try:
        wait_for(lambda: lab.exec("mn", ["getent", "ahostsv4", "cn.a.example"], check=False).returncode == 0, 30,
                 "cn.a.example to resolve to a VIP through a path")
        before = path_of("mn", "cn.a.example")
        assert before is not None and before["mode"] == "RS_S", before
        old_rs = before["rs"]
        other = {"rs1": "rs2", "rs2": "rs1"}[old_rs]
        curl = lab.popen("mn", ["curl", "-sS", "-4", "--limit-rate", "1M", "-o", str(out),
                                "http://cn.a.example:8080/big.bin"], name="curl", stderr=subprocess.PIPE)
        wait_for(lambda: size() > 2_000_000, 30, "the download from cn to start")
        rs = daemon(lab, old_rs, "rs")
        os.kill(rs.pid, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: not proc_alive(rs), 10, "the relay to die")
        lab.stop(rs)

        def moved() -> bool:
            a, b = path_of("mn", "cn.a.example"), path_of("cn", "mn.a.example")
            return bool(a and b and a["rs"] == other and b["rs"] == other)

        wait_for(moved, 30, f"both ends of the path to move to {other}")
        moved_after = time.monotonic() - killed
        at_move = size()
        wait_for(lambda: size() > at_move + 500_000, 30, "the download to go on through the other relay")
        resumed_after = time.monotonic() - killed
        print(f"RS-S relay {old_rs} killed: path on {other} after {moved_after:.2f} s, "
              f"data flowing again after {resumed_after:.2f} s (documented bound {documented:.1f} s)")
        assert moved_after <= bound, (moved_after, bound)
        assert curl.wait(120) == 0, curl.stderr.read().decode() if curl.stderr else ""
        assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
        after = path_of("mn", "cn.a.example")
        assert after is not None and after["path_id"] == before["path_id"] and after["mode"] == "RS_S"
        st = status(lab, "mn").get("stats", {})
        st_cn = status(lab, "cn").get("stats", {})
        assert st.get("rss_relay_lost", 0) + st_cn.get("rss_relay_lost", 0) >= 1
        assert st.get("drop_data_auth", 0) == 0 and st_cn.get("drop_data_auth", 0) == 0
        entries = json.loads(lab.exec(other, [*NTM, "rs", "status", "--json"], timeout=10).stdout).get("entries", [])
        assert [e["path_id"] for e in entries] == [before["path_id"]]
    finally:
        for p in (curl, srv):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def test_dead_relay_on_a_busy_path_is_noticed_within_two_seconds(lab_factory: LabFactory) -> None:
    """mn downloads through its RS-N relay when the relay is killed (SIGKILL by PID): the path carries
    data, nothing comes back, so mn probes at once and drops the relay within 2 s (protocol.md §10,
    "Detection on a busy path"), not after its 15 s keepalive. The running TCP connection breaks (the
    GN would see another relay's address); a new connection to the same GN VIP works on the other
    relay right after (issue 20)."""
    lab = lab_factory("nat", bare=False)
    registered(lab)
    path = rsn_path(lab)
    vip = path["peer_vip4"]
    other = {"rs1": "rs2", "rs2": "rs1"}[path["rs"]]
    out = str(Path(lab.workdir) / "during-relay-kill.bin")
    transfer = lab.popen("mn", fetch_by_vip(lab, vip, out, "--limit-rate", "2M"), name="curl",
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: os.path.exists(out) and os.path.getsize(out) > 1_000_000, 30, "the transfer to run")
    rs = daemon(lab, path["rs"], "rs")
    os.kill(rs.pid, signal.SIGKILL)
    killed, killed_wall = time.monotonic(), time.time()
    wait_for(lambda: not proc_alive(rs), 10, "the relay to die")
    lab.stop(rs)
    node_log = daemon(lab, "mn", "node").log
    assert node_log is not None

    def noticed() -> float | None:
        # the node logs the moment it closed the path ("<asctime> ... closed: <reason>")
        for line in Path(node_log).read_text(errors="replace").splitlines():
            if "closed: the relay stopped answering a busy path" in line:
                stamp = datetime.datetime.strptime(" ".join(line.split()[:2]), "%Y-%m-%d %H:%M:%S,%f")
                return stamp.timestamp()
        return None

    at = wait_for(noticed, 20, "mn to notice the dead relay")
    took = at - killed_wall
    print(f"dead relay noticed {took:.2f} s after the kill")
    # Documented bound 2 s (1.8 s + the 0.2 s sampling); 0.5 s more for a loaded machine.
    assert took <= 2.5, took
    st = status(lab)
    assert st["stats"].get("liveness_probes", 0) >= 1 and st["stats"].get("relay_lost", 0) == 1
    transfer.kill()
    transfer.wait(timeout=10)
    big = lab.state.big_file
    assert big is not None

    def works() -> dict[str, Any] | None:
        cp = lab.exec("mn", ["curl", "-sS", "-m", "3", "-o", "/dev/null", "-H", "Host: www.gn.example",
                             f"http://{vip}/"], check=False, timeout=10)
        now = [p for p in status(lab)["paths"] if p["peer_vip4"] == vip and p["established"]]
        return now[0] if cp.returncode == 0 and now and now[0]["rs"] == other else None

    new = wait_for(works, 15, f"a new connection through {other}")
    print(f"new connection through {other} {time.monotonic() - killed:.2f} s after the kill")
    assert new["path_id"] != path["path_id"] and new["mode"] == "RS_N"
