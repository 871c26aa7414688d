"""Handover in the lab (docs/handover.md): mn moves NAT A -> NAT B -> global -> NAT A while its
connections through RS-N to the general node run; they survive, and no byte is corrupted."""

from __future__ import annotations

import hashlib
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ntmobile.bench.handover import PATH_TYPES, run_path_type, topology_for
from ntmobile.lab import Lab
from tests.lab.conftest import LabFactory, wait_for

pytestmark = [pytest.mark.root, pytest.mark.lab]

#: Where mn goes and how the DC then sees it (NAT A and B masquerade to their wan address).
MOVES = (("netb", "192.0.2.101"), ("global", "192.0.2.60"), ("neta", "192.0.2.100"))
BIG = 33554432


def node_status(lab: Lab, host: str = "mn") -> dict[str, Any]:
    r = lab.exec(host, [sys.executable, "-m", "ntmobile", "status", "--json"], check=False, timeout=10)
    try:
        out: dict[str, Any] = json.loads(r.stdout)
        return out
    except ValueError:
        return {}


def rs_paths(lab: Lab, rs: str) -> list[dict[str, Any]]:
    r = lab.exec(rs, [sys.executable, "-m", "ntmobile", "rs", "status", "--json"], check=False, timeout=10)
    try:
        entries: list[dict[str, Any]] = json.loads(r.stdout).get("entries", [])
        return entries
    except ValueError:
        return []


def observed_at(lab: Lab, address: str) -> bool:
    obs = node_status(lab).get("observed")
    return isinstance(obs, list) and bool(obs) and obs[0] == address


def mode_is(path: dict[str, Any] | None, expected: str) -> bool:
    """``path`` has the ``expected`` mode; an RS_S path may also have been punched to DIRECT by NAT
    traversal (issue 16: both NATs are cone NATs), which counts as RS_S here."""
    if path is None:
        return False
    punched = path.get("mode") == "DIRECT" and (path.get("traversal") or {}).get("state") == "direct"
    return path.get("mode") == expected or (expected == "RS_S" and punched)


def peer_mode_is(lab: Lab, expected: str) -> bool:
    return mode_is(next((p for p in node_status(lab).get("paths", []) if p.get("peer") == "cn.b.example"), None),
                   expected)


def fetch_argv(url: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "ntmobile.bench.handover", "fetch", url, "--rate", "1000000", "--out", str(out)]


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def test_rsn_tcp_transfer_survives_nat_a_nat_b_global_nat_a(lab_factory: LabFactory) -> None:
    lab = lab_factory("handover", bare=False)
    assert lab.network_of("mn") == "neta"
    out = Path(lab.workdir) / "big.download"
    wait_for(lambda: lab.exec("mn", ["getent", "ahostsv4", "www.gn.example"], check=False).returncode == 0, 60,
             "www.gn.example to resolve to a VIP through an RS-N path")
    # 32 MiB read steadily at 1 MB/s (about 34 s): the connection carries data through every move.
    curl = lab.popen("mn", fetch_argv("http://www.gn.example/big.bin", out), name="fetch", stderr=subprocess.PIPE)
    try:
        wait_for(lambda: size(out) > 1_000_000, 30, "the download to start through RS-N")
        path = next(p for p in node_status(lab)["paths"] if p["peer"] == "www.gn.example")
        assert path["mode"] == "RS_N"
        for network, public in MOVES:
            assert curl.poll() is None, "the download ended before this move"
            lab.move("mn", network)
            wait_for(lambda: observed_at(lab, public), 15, f"mn to re-register from {network}")  # noqa: B023
            # The relay follows mn to its new address (learnt from mn's authenticated announcement) ...
            wait_for(lambda: any(e["path_id"] == path["path_id"] and e["initiator"].startswith(public + ":")  # noqa: B023
                                 for e in rs_paths(lab, str(path["rs"]))), 15, f"{path['rs']} to learn mn's address")
            # ... and the same TCP connection keeps moving data.
            before = size(out)
            wait_for(lambda: size(out) > before + 300_000 or size(out) == BIG, 15,  # noqa: B023
                     f"the download to go on from {network}")
        assert curl.wait(120) == 0, curl.stderr.read().decode() if curl.stderr else ""
        digest = hashlib.sha256(out.read_bytes()).hexdigest()
        assert lab.state.big_file is not None and digest == lab.state.big_file.sha256
        # One path all along: the same Path ID carried the connection through every move.
        after = next(p for p in node_status(lab)["paths"] if p["peer"] == "www.gn.example")
        assert after["path_id"] == path["path_id"]
        assert node_status(lab)["stats"].get("handovers") == len(MOVES)
    finally:
        if curl.poll() is None:
            os.killpg(curl.pid, 9)
            curl.wait()


@pytest.mark.parametrize(("path_type", "mode", "modes"), [
    ("direct", "DIRECT", ("DIRECT", "DIRECT", "DIRECT")),
    # cn behind NAT B: mn behind NAT A -> RS-S; mn behind NAT B too -> DIRECT on the private addresses;
    # mn global -> DIRECT (cn opens its NAT); mn behind NAT A again -> RS-S. Re-directed by the two DCs.
    ("rs-s", "RS_S", ("DIRECT", "DIRECT", "RS_S")),
])
def test_ntm_peer_tcp_transfer_survives_the_moves(lab_factory: LabFactory, path_type: str, mode: str,
                                                  modes: tuple[str, str, str]) -> None:
    """mn downloads the 32 MiB file from cn (an NTM node of the other DC: cn global -> DIRECT; cn behind
    NAT B -> RS-S) while it moves NAT A -> NAT B -> global -> NAT A; the path type follows the moves."""
    lab = lab_factory(topology_for(PATH_TYPES[path_type]), bare=False)
    www = Path(lab.workdir) / "gn" / "www"
    srv = lab.popen("cn", [sys.executable, "-m", "http.server", "8080", "--bind", "::", "--directory", str(www)],
                    name="http", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = Path(lab.workdir) / "from-cn.bin"
    curl: subprocess.Popen[bytes] | None = None
    try:
        # Both DCs' markers must be resolvable before the first DC-to-DC set-up: a peer DC whose marker
        # lookup failed right after start-up is not trusted (see the report of issue 6).
        for zone in ("a.example", "b.example"):
            wait_for(lambda: "v=ntm1" in lab.exec("gn", ["dig", "+short", "TXT", zone, "@" + lab.resolvers()[0]],  # noqa: B023
                                                  check=False).stdout, 30, f"the DC marker of {zone}")
        wait_for(lambda: lab.exec("mn", ["getent", "ahostsv4", "cn.b.example"], check=False).returncode == 0, 60,
                 "cn.b.example to resolve to a VIP through a path")
        curl = lab.popen("mn", fetch_argv("http://cn.b.example:8080/big.bin", out), name="fetch",
                         stderr=subprocess.PIPE)
        wait_for(lambda: size(out) > 1_000_000, 40, "the download from cn to start")
        path = next(p for p in node_status(lab)["paths"] if p["peer"] == "cn.b.example")
        assert mode_is(path, mode), path
        for (network, public), expected in zip(MOVES, modes, strict=True):
            assert curl.poll() is None, "the download ended before this move"
            lab.move("mn", network)
            wait_for(lambda: observed_at(lab, public), 15, f"mn to re-register from {network}")  # noqa: B023
            wait_for(lambda: peer_mode_is(lab, expected), 15, f"the path to become {expected} on {network}")  # noqa: B023
            before = size(out)
            wait_for(lambda: size(out) > before + 300_000 or size(out) == BIG, 15,  # noqa: B023
                     f"the download to go on from {network}")
        assert curl.wait(120) == 0, curl.stderr.read().decode() if curl.stderr else ""
        assert lab.state.big_file is not None
        assert hashlib.sha256(out.read_bytes()).hexdigest() == lab.state.big_file.sha256
        after = next(p for p in node_status(lab)["paths"] if p["peer"] == "cn.b.example")
        assert after["path_id"] == path["path_id"]
    finally:
        for p in (curl, srv):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait()


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    assert proc.stdout is not None
    buf = b""
    fd = proc.stdout.fileno()
    end = time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        deadline_left = end - time.monotonic()
        if deadline_left <= 0:
            raise AssertionError(f"no answer from the ssh session within {timeout} s (got {buf!r})")
        ready, _, _ = select.select([fd], [], [], deadline_left)
        if ready:
            chunk = os.read(fd, 1)
            if not chunk:
                raise AssertionError(f"the ssh session ended (got {buf!r})")
            buf += chunk
    return buf


def test_interactive_ssh_session_survives_the_moves(lab_factory: LabFactory) -> None:
    lab = lab_factory("handover", bare=False)
    wait_for(lambda: lab.exec("mn", ["getent", "ahostsv4", "www.gn.example"], check=False).returncode == 0, 60,
             "www.gn.example to resolve to a VIP through an RS-N path")
    ssh = lab.popen("mn", ["ssh", "-T", "-o", "ServerAliveInterval=0", "root@www.gn.example", "sh"], name="ssh",
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert ssh.stdin is not None
    try:
        ssh.stdin.write(b"echo hello-$((6*7))\n")
        ssh.stdin.flush()
        assert _read_line(ssh, 30) == b"hello-42\n"
        for i, (network, public) in enumerate(MOVES):
            lab.move("mn", network)
            wait_for(lambda: observed_at(lab, public), 15, f"mn to re-register from {network}")  # noqa: B023
            ssh.stdin.write(f"echo moved-$(({i}+100))\n".encode())
            ssh.stdin.flush()
            assert _read_line(ssh, 15) == f"moved-{i + 100}\n".encode()
        # Bulk data over the same session after the moves, byte-exact.
        ssh.stdin.write(b"head -c 200000 /dev/zero | tr '\\0' 'x' | sha256sum | cut -c1-64\n")
        ssh.stdin.flush()
        assert _read_line(ssh, 15).strip().decode() == hashlib.sha256(b"x" * 200000).hexdigest()
        assert ssh.poll() is None
    finally:
        if ssh.poll() is None:
            os.killpg(ssh.pid, 9)
            ssh.wait()


def test_bench_handover_measures_every_move(lab_factory: LabFactory) -> None:
    """`ntm bench handover` machinery on a short run: every move recovers, no TCP byte corrupted.
    (Timings are the bench's to report, not asserted here.)"""
    lab = lab_factory("handover", bare=False)
    result = run_path_type(lab, PATH_TYPES["rs-n"], 3, dwell=0.3, log=lambda s: None)
    assert "error" not in result, result.get("error")
    assert result["mode"] == "RS_N"
    assert result["moves"] == 3 and result["recovered"] == 3
    assert [m["to"] for m in result["per_move"]] == ["netb", "global", "neta"]
    assert all(m["gap_ms"] is not None and m["echo_gap_ms"] is not None for m in result["per_move"])
    assert result["tcp"]["ok"], result["tcp"]


def test_bench_handover_nebula_path(lab_factory: LabFactory) -> None:
    """The bench's Nebula path beside ntmobile's (issue 21): Nebula on rs1 (lighthouse), mn and cn; the
    same moves recover over it and its TCP download checks out."""
    from ntmobile.bench.handover import NEBULA_IPS, NEBULA_PORT
    from ntmobile.bench.setup import start_nebula

    lab = lab_factory("handover", bare=False)
    start_nebula(lab, Path(lab.workdir), NEBULA_IPS, port=NEBULA_PORT, name="nebula-handover", dev="nbh")
    result = run_path_type(lab, PATH_TYPES["nebula"], 3, dwell=0.3, log=lambda s: None)
    assert "error" not in result, result.get("error")
    assert result["mode"] == "NEBULA" and result["recovered"] == 3
    assert all(m["gap_ms"] is not None and m["detect_ms"] is None for m in result["per_move"])
    assert result["tcp"]["ok"], result["tcp"]
    assert isinstance(result["tcp"]["retransmits"], int)
