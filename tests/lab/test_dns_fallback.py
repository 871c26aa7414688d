"""A silent DC never breaks the host's DNS (issue 18): with mn's DC killed, a general node's name answers
within 1 s with its real address (untunnelled) and curl reaches it; an NTM peer's name fails within
1 s; once the DC is back, new lookups are tunnelled again."""

from __future__ import annotations

import os
import signal
import time

import pytest

from ntmobile.lab.state import proc_alive

from .conftest import LabFactory, wait_for
from .test_faults import daemon, dc_status, registered, status

pytestmark = [pytest.mark.root, pytest.mark.lab]


def test_a_dead_dc_leaves_names_working_and_its_return_tunnels_again(lab_factory: LabFactory) -> None:
    lab = lab_factory("nat", bare=False)
    registered(lab)
    dc = daemon(lab, "dca", "dc")
    os.kill(dc.pid, signal.SIGKILL)
    wait_for(lambda: not proc_alive(dc), 10, "the DC to die")
    lab.stop(dc)
    t0 = time.monotonic()
    got = lab.exec("mn", ["getent", "ahostsv4", "www.gn.example"], timeout=10)
    took = time.monotonic() - t0
    assert got.stdout.split()[0] == "192.0.2.40" and took < 1.0, (got.stdout, took)
    lab.exec("mn", ["curl", "-sS", "-4", "-m", "10", "-o", "/dev/null", "http://www.gn.example/"], timeout=20)
    t0 = time.monotonic()
    peer = lab.exec("mn", ["getent", "ahostsv4", "cn.b.example"], check=False, timeout=10)
    took = time.monotonic() - t0
    assert peer.returncode != 0 and took < 1.0, (peer.stdout, took)
    fb = status(lab)["dns_stub"]["fallback"]
    assert fb.get("untunnelled", 0) >= 1 and fb.get("ntm_peer_refused", 0) >= 1, fb
    assert status(lab)["stats"].get("dc_silent", 0) >= 1
    # The DC comes back (same command, same registry): lookups are tunnelled again.
    lab.spawn("dca", dc.argv, dc.name)
    wait_for(lambda: dc_status(lab).get("dc_id"), 20, "the restarted DC")

    def tunnelled() -> bool:
        out = lab.exec("mn", ["getent", "ahostsv4", "iperf.gn.example"], check=False, timeout=10).stdout.split()
        return bool(out) and out[0].startswith("100.")

    wait_for(tunnelled, 60, "a new lookup to be tunnelled again")
    assert any(p["peer"] == "iperf.gn.example" and p["mode"] == "RS_N" for p in status(lab)["paths"])
