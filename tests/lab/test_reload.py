"""SIGHUP reloads what can change (issue 18): the node's tunnelled domains and upstream at once, the DC's
keepalive and RS-N allow-list at once; other changes are named as waiting for a restart; a broken file
changes nothing and stops nothing."""

from __future__ import annotations

import os
import signal
import tomllib
from pathlib import Path

import pytest
import tomli_w

from ntmobile.lab.state import proc_alive

from .conftest import LabFactory, wait_for
from .test_faults import daemon, dc_status, registered, status

pytestmark = [pytest.mark.root, pytest.mark.lab]


def edit(path: Path, **changes: object) -> None:
    data = tomllib.loads(path.read_text())
    data.update(changes)
    path.write_text(tomli_w.dumps(data))


def test_sighup_reloads_the_node_and_the_dc(lab_factory: LabFactory) -> None:
    lab = lab_factory("nat", bare=False)
    registered(lab)
    first = lab.exec("mn", ["getent", "ahostsv4", "www.gn.example"], timeout=20).stdout.split()
    assert first[0].startswith("100.")  # tunnelled: every domain is
    node, node_toml = daemon(lab, "mn", "node"), lab.host_workdir("mn") / "node.toml"
    edit(node_toml, tunnel_domains=["a.example", "b.example"], mtu=1380)
    os.kill(node.pid, signal.SIGHUP)
    st = wait_for(lambda: (s := status(lab)).get("reloads") == 1 and s, 10, "the node to reload")
    assert st["restart_needed"] == ["mtu"]
    # gn.example is not tunnelled any more: its names are forwarded upstream (the real address) ...
    assert lab.exec("mn", ["getent", "ahostsv4", "iperf.gn.example"], timeout=20).stdout.split()[0] == "192.0.2.40"
    # ... while the node's own domain still is.
    assert lab.exec("mn", ["getent", "ahostsv4", "gl.a.example"], timeout=20).stdout.split()[0].startswith("100.")
    # A broken file: nothing changes, the node goes on.
    node_toml.write_text("tunnel_domains = [")
    os.kill(node.pid, signal.SIGHUP)
    assert proc_alive(node) and status(lab)["reloads"] == 1
    # The DC: a new keepalive interval applies to the next registrations.
    dc, dc_toml = daemon(lab, "dca", "dc"), lab.host_workdir("dca") / "dc.toml"
    assert dc_status(lab)["keepalive"] == 15
    edit(dc_toml, keepalive=7)
    os.kill(dc.pid, signal.SIGHUP)
    wait_for(lambda: dc_status(lab).get("reloads") == 1, 10, "the DC to reload")
    assert dc_status(lab)["keepalive"] == 7 and proc_alive(dc)
