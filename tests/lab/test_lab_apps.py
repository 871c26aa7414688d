"""Unmodified application servers on the GN, used from mn behind NAT A: HTTP, FTP (active and
passive through the NAT's FTP helper), ssh, iperf3."""

from __future__ import annotations

import json

import pytest

from tests.lab.conftest import LabFactory

pytestmark = [pytest.mark.root, pytest.mark.lab]


@pytest.mark.parametrize("profile", ["port_restricted", "symmetric"])
def test_gn_apps_work_from_behind_the_nat(lab_factory: LabFactory, profile: str) -> None:
    lab = lab_factory("nat", nat={"nata": profile})
    big = lab.state.big_file
    assert big is not None and big.size == 32 << 20
    fetch = {
        "http": "curl -sf http://www.gn.example/big.bin",
        "ftp-passive": "curl -sf --disable-epsv ftp://ftp.gn.example/big.bin",
        "ftp-active": "curl -sf -P - --disable-eprt ftp://ftp.gn.example/big.bin",
    }
    for what, cmd in fetch.items():
        out = lab.exec("mn", ["bash", "-o", "pipefail", "-c", f"{cmd} | sha256sum"], timeout=60)
        assert out.stdout.split()[0] == big.sha256, what
    ssh = lab.exec("mn", ["ssh", "-i", str(lab.state.client_key), "-o", "StrictHostKeyChecking=no",
                          "root@www.gn.example", "echo $SSH_CLIENT"], timeout=30)
    assert ssh.stdout.split()[0] == "192.0.2.100"
    perf = json.loads(lab.exec("mn", ["iperf3", "-J", "-t", "1", "-c", "iperf.gn.example"], timeout=30).stdout)
    assert perf["end"]["sum_received"]["bytes"] > 0
