"""`lab move`: the host gets the new network's address and default route, the old leg goes down."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ntmobile.lab import Lab
from tests.lab.conftest import LabFactory, probe_udp, start_reflector

pytestmark = [pytest.mark.root, pytest.mark.lab]


def _links(lab: Lab, host: str) -> dict[str, dict[str, Any]]:
    out = json.loads(lab.exec(host, ["ip", "-j", "addr", "show"]).stdout)
    return {i["ifname"]: {"up": "UP" in i["flags"],
                          "addrs": {f"{a['local']}/{a['prefixlen']}" for a in i["addr_info"]
                                    if a.get("scope") == "global"}} for i in out}


def _defaults(lab: Lab, host: str, family: str) -> list[tuple[str, str]]:
    out = json.loads(lab.exec(host, ["ip", "-j", family, "route", "show", "default"]).stdout)
    return [(r["gateway"], r["dev"]) for r in out]


def test_move_gives_the_new_address_and_default_route(lab_factory: LabFactory) -> None:
    lab = lab_factory("handover")
    gn = start_reflector(lab, "gn")
    assert lab.network_of("mn") == "neta"
    assert _links(lab, "mn")["neta"]["addrs"] == {"10.1.0.10/24"}
    assert _defaults(lab, "mn", "-4") == [("10.1.0.1", "neta")]

    lab.move("mn", "global")
    links = _links(lab, "mn")
    assert links["global"] == {"up": True, "addrs": {"192.0.2.60/24", "2001:db8:1::60/64"}}
    assert links["neta"] == {"up": False, "addrs": set()}
    assert _defaults(lab, "mn", "-4") == [("192.0.2.1", "global")]
    assert _defaults(lab, "mn", "-6") == [("2001:db8:1::1", "global")]
    assert lab.addr("mn") == "192.0.2.60" and lab.addr("mn", 6) == "2001:db8:1::60"
    got = probe_udp(lab, "mn", sport=40000, to=["192.0.2.40:7001"], expect=1)
    assert got and got[0]["data"] == "seen 192.0.2.60 40000"

    lab.move("mn", "netb")
    links = _links(lab, "mn")
    assert links["netb"] == {"up": True, "addrs": {"10.2.0.10/24"}}
    assert links["global"] == {"up": False, "addrs": set()}
    assert _defaults(lab, "mn", "-4") == [("10.2.0.1", "netb")]
    assert _defaults(lab, "mn", "-6") == []
    got = probe_udp(lab, "mn", sport=40001, to=["192.0.2.40:7001"], expect=1)
    assert got and got[0]["data"].startswith("seen 192.0.2.101 "), "now behind natb"
    assert lab.exec("mn", ["getent", "ahostsv4", "www.gn.example"]).stdout.split()[0] == "192.0.2.40"
    assert len([e for e in gn.events() if e.get("proto") == "udp"]) == 2

    # the move is recorded in the state: a reattached Lab (as `ntm lab` uses) sees it
    assert Lab.attach(lab.prefix).network_of("mn") == "netb"
    assert lab.status()["hosts"]["mn"]["network"] == "netb"


def test_cli_move_prints_the_new_address(lab_factory: LabFactory) -> None:
    lab = lab_factory("handover")
    ntm = str(Path(sys.executable).parent / "ntm")
    cp = subprocess.run([ntm, "lab", "move", "mn", "global", "--name", lab.prefix],
                        capture_output=True, text=True, timeout=30)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.strip() == "mn is on global: 192.0.2.60 2001:db8:1::60"
    assert "192.0.2.60/24" in _links(lab, "mn")["global"]["addrs"]
    bad = subprocess.run([ntm, "lab", "move", "mn", "nowhere", "--name", lab.prefix],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1
    assert "cannot join 'nowhere'" in bad.stderr
