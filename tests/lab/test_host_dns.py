"""The node and the host's resolver (issue 18): the node points the host at its DNS stub and always puts
the host's settings back, on SIGTERM and after a SIGKILL (at its next start).

- resolv.conf mode: mn's resolv.conf (bind-mounted by `ip netns exec`, so rewritten in place) names the
  stub while the node runs and is byte-for-byte the original after it stops;
- systemd-resolved mode: a real systemd-resolved with its own system D-Bus runs in mn's namespace (a
  private mount namespace: lab/resolved.py); the node registers its stub as the DNS server of its TUN
  link with the routing domain ``~.``, and applications resolving through resolved reach tunnels.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from ntmobile.lab import Lab, load_topology
from ntmobile.lab.resolved import RESOLVECTL_DIR
from ntmobile.lab.resolved import available as resolved_available
from ntmobile.lab.state import proc_alive
from ntmobile.osops.resolver import MARKER

from .conftest import LabFactory, wait_for
from .test_faults import daemon, registered, status

pytestmark = [pytest.mark.root, pytest.mark.lab]


def _with_node_config(extra: dict[str, object]) -> object:
    topo = load_topology("nat")
    spec = topo.host("mn").daemons[0].model_dump()
    spec["config"] = {**spec["config"], **extra}
    return topo.with_host("mn", daemons=[spec])


def resolv_file(lab: Lab) -> Path:
    return Path("/etc/netns") / lab.ns("mn") / "resolv.conf"


def test_resolv_conf_mode_points_at_the_stub_and_restores_the_original(lab_factory: LabFactory) -> None:
    lab = lab_factory(_with_node_config({"dns_integration": "resolv.conf"}), bare=False)
    st = registered(lab)
    assert st["dns_stub"]["host_integration"] == "resolv.conf"
    original = "".join(f"nameserver {a}\n" for a in lab.resolvers())
    text = resolv_file(lab).read_text()
    assert text.startswith(MARKER) and f"nameserver {st['dns_stub']['address']}" in text
    assert st["dns_stub"]["upstream"] == lab.resolvers()
    # Applications resolve through the stub: a GN name gets a GN VIP (tunnelled) ...
    got = lab.exec("mn", ["getent", "ahostsv4", "www.gn.example"], timeout=20).stdout.split()
    assert got and got[0].startswith("100.")
    # ... and SIGTERM leaves the host as it was.
    node = daemon(lab, "mn", "node")
    os.kill(node.pid, signal.SIGTERM)
    wait_for(lambda: not proc_alive(node), 15, "the node to stop")
    lab.stop(node)
    assert resolv_file(lab).read_text().endswith(original) and MARKER not in resolv_file(lab).read_text()
    kept = resolv_file(lab).read_text()
    # SIGKILL: the file still names the stub; the next start restores, then takes over again, and the
    # next clean stop gives the original back (never the node's own file saved as "the original").
    lab.spawn("mn", node.argv, node.name)
    wait_for(lambda: status(lab).get("registered"), 20, "the node to start again")
    again = daemon(lab, "mn", "node")
    os.kill(again.pid, signal.SIGKILL)
    wait_for(lambda: not proc_alive(again), 15, "the node to die")
    lab.stop(again)
    assert resolv_file(lab).read_text().startswith(MARKER)
    lab.spawn("mn", node.argv, node.name)
    wait_for(lambda: status(lab).get("registered"), 20, "the node to start after the kill")
    assert status(lab)["dns_stub"]["upstream"] == lab.resolvers()
    last = daemon(lab, "mn", "node")
    os.kill(last.pid, signal.SIGTERM)
    wait_for(lambda: not proc_alive(last), 15, "the node to stop")
    lab.stop(last)
    assert resolv_file(lab).read_text() == kept


def in_resolved_host(pid: int, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run a command where the node runs: its namespace and its mount namespace (resolved's bus, stub)."""
    env = {"PATH": f"{RESOLVECTL_DIR}:/usr/sbin:/usr/bin:/sbin:/bin"}
    return subprocess.run(["nsenter", "-t", str(pid), "-m", "-n", "--", *argv], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_with_systemd_resolved_the_stub_is_the_tun_links_dns_server(lab_factory: LabFactory) -> None:
    assert resolved_available(), "systemd-resolved is not unpacked: run scripts/setup.sh"
    lab = lab_factory(_with_node_config({"dns_integration": "auto", "host_resolved": True}), bare=False)
    st = registered(lab)
    assert st["dns_stub"]["host_integration"] == "resolved"
    # The stub's upstream is resolved's own upstream (the lab resolver), never resolved itself.
    upstream = st["dns_stub"]["upstream"]
    assert upstream and set(upstream) <= set(lab.resolvers())
    host = daemon(lab, "mn", "node")
    link = in_resolved_host(host.pid, "resolvectl", "status", st["tun"])
    assert link.returncode == 0, link.stderr
    assert st["dns_stub"]["address"] in link.stdout and "~." in link.stdout and "+DefaultRoute" in link.stdout
    assert "-LLMNR" in link.stdout  # nothing multicast into the tunnel
    # An application resolving through resolved (127.0.0.53, as on a desktop) gets the tunnel's VIP ...
    got = in_resolved_host(host.pid, "getent", "ahostsv4", "www.gn.example")
    assert got.returncode == 0 and got.stdout.split()[0].startswith("100."), got
    # ... and reaches the GN through it.
    big = lab.state.big_file
    assert big is not None
    curl = in_resolved_host(host.pid, "bash", "-c", "curl -sS -4 -m 60 http://www.gn.example/big.bin | sha256sum",
                            timeout=90)
    assert curl.stdout.split()[:1] == [big.sha256], curl
    assert any(p["peer"] == "www.gn.example" and p["mode"] == "RS_N" for p in status(lab)["paths"])
    # SIGTERM: the node takes its settings away before its TUN goes (resolved shows no link of ours).
    os.kill(host.pid, signal.SIGTERM)
    wait_for(lambda: not proc_alive(host), 20, "the node and its resolved to stop")
    lab.stop(host)
    after = (lab.host_workdir("mn") / "resolved-after.txt").read_text()
    assert st["dns_stub"]["address"] not in after and st["tun"] not in after, after
