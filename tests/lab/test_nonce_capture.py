"""One nonce per key, seen from the wire (docs/security.md §3; the outside review's capture): mn
downloads from the GN through RS-N while its traffic is captured; its relay is killed (SIGKILL by PID)
and the path moves to the other relay; mn downloads again; mn's node daemon is killed and restarted;
mn downloads a third time. In the whole capture no (Path ID, direction, counter, chunk) occurs with two
different contents: every path set up again got a new Path ID and key, and no sealer started its
counter again under a key it had used."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from ntmobile.lab.state import proc_alive
from ntmobile.wire import NODE_PORT

from .conftest import LabFactory, wait_for
from .test_faults import daemon, fetch_by_vip, registered, rsn_path, sha256, status

pytestmark = [pytest.mark.root, pytest.mark.lab]


def _identities(cap_file: Path) -> dict[tuple[str, str, str, str], set[str]]:
    """(Path ID, direction, counter, chunk) -> the contents seen with it, from the capture so far."""
    contents: dict[tuple[str, str, str, str], set[str]] = defaultdict(set)
    for line in cap_file.read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) == 5:  # (the last line may be half written)
            pid, direction, counter, chunk, digest = fields
            contents[(pid, direction, counter, chunk)].add(digest)
    return contents


def _repeated(contents: dict[tuple[str, str, str, str], set[str]]) -> dict[tuple[str, str, str, str], set[str]]:
    return {k: v for k, v in contents.items() if len(v) > 1}


def _download(lab: Any, vip: str, name: str) -> None:
    big = lab.state.big_file
    out = str(Path(lab.workdir) / name)
    lab.exec("mn", fetch_by_vip(lab, vip, out), timeout=150)
    assert sha256(lab, "mn", out) == big.sha256


def test_no_capsule_identity_repeats_across_a_relay_kill_and_a_node_restart(lab_factory: LabFactory) -> None:
    lab = lab_factory("nat", bare=False)
    registered(lab)
    cap_file = Path(lab.workdir) / "capsules.txt"
    cap = lab.popen("mn", [sys.executable, "-m", "ntmobile.lab.capture", str(cap_file), str(NODE_PORT)],
                    name="capture", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: cap.poll() is not None or (cap_file.exists() and cap_file.read_text().startswith("ready")),
                 10, "the capture")
        assert cap.poll() is None, "the capture did not start"
        first = rsn_path(lab)
        vip = first["peer_vip4"]
        _download(lab, vip, "1.bin")

        # The relay of the path dies; the node notices, and the next packet sets a new path up.
        rs = daemon(lab, first["rs"], "rs")
        os.kill(rs.pid, signal.SIGKILL)
        wait_for(lambda: not proc_alive(rs), 10, "the relay to die")
        lab.stop(rs)

        def moved() -> dict[str, Any] | None:
            lab.exec("mn", ["curl", "-sS", "-m", "3", "-o", "/dev/null", "-H", "Host: www.gn.example",
                            f"http://{vip}/"], check=False, timeout=10)
            now = [p for p in status(lab)["paths"] if p["peer_vip4"] == vip and p["established"]]
            return now[0] if now and now[0]["rs"] != first["rs"] else None

        second = wait_for(moved, 90, "the path to move to the other relay")
        _download(lab, vip, "2.bin")
        repeated = _repeated(_identities(cap_file))
        assert not repeated, f"after the relay kill: {len(repeated)} capsule identities with two contents"

        # The node daemon dies and starts again (its counters are new; its persisted long-term counter
        # floor is all it keeps).
        node = daemon(lab, "mn", "node")
        os.kill(node.pid, signal.SIGKILL)
        wait_for(lambda: not proc_alive(node), 10, "the node to die")
        lab.stop(node)
        lab.spawn("mn", node.argv, node.name)
        registered(lab, timeout=30)
        third = rsn_path(lab)
        _download(lab, third["peer_vip4"], "3.bin")
    finally:
        cap.send_signal(signal.SIGTERM)
        _, err = cap.communicate(timeout=20)
    assert cap.returncode == 0, err.decode()[-500:]

    contents = _identities(cap_file)
    repeated = _repeated(contents)
    pids = {k[0] for k in contents}
    print(f"captured {len(contents)} capsule identities, paths {sorted(pids)}")
    # The three downloads (3 x 32 MiB) were seen, on three paths, in both directions.
    assert {first["path_id"], second["path_id"], third["path_id"]} <= pids and len(pids) >= 3
    assert len(contents) > 10_000 and {k[1] for k in contents} == {"0", "1"}
    assert not repeated, f"{len(repeated)} capsule identities with two contents, e.g. {next(iter(repeated))}"
