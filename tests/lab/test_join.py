"""Joining with a token (issue 18), as an operator and a new host would: `ntm dc enroll NAME --token` on
the DC's host prints one line; `ntm node join TOKEN` on the new host writes its configuration and
credentials; the node then runs, registers under that name and reaches a GN. The token works once."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

from ntmobile.lab.state import proc_alive

from .conftest import LabFactory, wait_for
from .test_faults import daemon

pytestmark = [pytest.mark.root, pytest.mark.lab]

NTM = [sys.executable, "-m", "ntmobile"]


def test_a_new_host_joins_with_a_token_once(lab_factory: LabFactory, tmp_path: Path) -> None:
    lab = lab_factory("nat", bare=False)
    dc_toml = str(lab.host_workdir("dca") / "dc.toml")
    issued = lab.exec("dca", [*NTM, "dc", "enroll", "newbie", "-c", dc_toml, "--token", "--expires", "600"])
    token = issued.stdout.strip()
    assert token.startswith("ntmj1.") and "\n" not in token and "newbie.a.example" in issued.stderr
    # mn becomes the new host: its own node stops first.
    old = daemon(lab, "mn", "node")
    os.kill(old.pid, signal.SIGTERM)
    wait_for(lambda: not proc_alive(old), 15, "mn's node to stop")
    lab.stop(old)
    conf = tmp_path / "etc"
    joined = lab.exec("mn", [*NTM, "node", "join", token, "--dir", str(conf)], check=False)
    assert joined.returncode == 0, joined.stderr
    assert (conf / "node.toml").exists() and (conf / "newbie.a.example.cred.toml").stat().st_mode & 0o077 == 0
    # The same token again, from anywhere: refused, one line, nothing written.
    again = lab.exec("mn", [*NTM, "node", "join", token, "--dir", str(tmp_path / "again")], check=False)
    assert again.returncode == 1 and again.stderr.strip() == (
        "ntm: this token has been used already: ask the DC operator for a new one"), again.stderr
    assert not (tmp_path / "again" / "node.toml").exists()
    # The joined node runs and works.
    (conf / "node.toml").write_text((conf / "node.toml").read_text().replace('dns_integration = "auto"',
                                                                             'dns_integration = "none"'))
    lab.spawn("mn", [*NTM, "node", "run", "-c", str(conf / "node.toml")], "node-joined")

    def registered() -> dict[str, object] | None:
        cp = lab.exec("mn", [*NTM, "status", "--json"], check=False, timeout=10)
        st = json.loads(cp.stdout) if cp.returncode == 0 else {}
        return st if st.get("registered") else None

    st = wait_for(registered, 30, "the joined node to register")
    assert st["name"] == "newbie.a.example" and st["vip4"]
    # Its long-term counter sits beside its credentials, not in the working directory.
    assert list(conf.glob("node-*.counter")) and not list(Path.cwd().glob("node-*.counter"))
    lab.exec("mn", ["curl", "-sS", "-4", "-m", "20", "-o", "/dev/null", "http://www.gn.example/"], timeout=30)
    dc = json.loads(lab.exec("dca", [*NTM, "dc", "status", "--json"]).stdout)
    assert any(s["name"] == "newbie.a.example" for s in dc["sessions"])
