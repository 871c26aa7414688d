"""keepalived itself accepts the RS-N pair configuration osops.rspair renders (issue 20)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ntmobile.osops.rspair import PairMember, keepalived_conf


@pytest.mark.skipif(shutil.which("keepalived") is None, reason="keepalived not installed (scripts/setup.sh)")
def test_keepalived_accepts_the_rendered_config(tmp_path: Path) -> None:
    m = PairMember(interface="eth0", address="192.0.2.20", peer="192.0.2.21", priority=150,
                   shared4="192.0.2.25/24", relay_pidfile=str(tmp_path / "rs.pid"), workdir=str(tmp_path),
                   shared6="2001:db8:1::25/128", address6="2001:db8:1::20", peer6="2001:db8:1::21")
    conf = tmp_path / "keepalived.conf"
    conf.write_text(keepalived_conf(m))
    cp = subprocess.run(["keepalived", "-t", "-f", str(conf)], capture_output=True, text=True, timeout=20)
    assert cp.returncode == 0, cp.stderr
