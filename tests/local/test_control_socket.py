"""Control sockets (issue 14 §4): the daemon checks who connects (SO_PEERCRED) and serves only root,
its own user and members of the configured ``control_group``."""

from __future__ import annotations

import asyncio
import grp
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ntmobile.runtime import control
from ntmobile.runtime.config import ConfigError, NodeSettings, group_id, load
from ntmobile.runtime.control import allowed, query, serve_control

NOBODY = 65534
CLIENT = ("import sys\nfrom ntmobile.runtime.control import query\n"
          "try:\n    print(query(sys.argv[1]))\nexcept ConnectionError as exc:\n    print('REFUSED', exc)\n"
          "    sys.exit(3)\n")


def _as_nobody(name: str, gid: int = NOBODY) -> subprocess.CompletedProcess[str]:
    """A client process with uid nobody (and ``gid`` as its group, no supplementary groups)."""
    setpriv = shutil.which("setpriv") or "setpriv"  # (as tests/unit/test_cli_errors.py runs non-root commands)
    return subprocess.run([setpriv, f"--reuid={NOBODY}", f"--regid={gid}", "--clear-groups", sys.executable, "-c",
                           CLIENT, name], capture_output=True, text=True, timeout=30)


async def _serve(name: str, group: int | None, client: Any) -> tuple[Any, control.ControlServer, list[Any]]:
    calls: list[Any] = []

    def handler(req: dict[str, Any]) -> dict[str, Any]:
        calls.append(req)
        return {"ok": True}

    ctl = await serve_control(name, handler, group=group)
    try:
        result = await asyncio.wait_for(asyncio.to_thread(client, name), 30)
    finally:
        ctl.close()
    return result, ctl, calls


@pytest.mark.root
def test_a_client_of_another_uid_is_refused_and_root_is_served() -> None:
    name = f"ntm-test-ctl-{os.getpid()}"
    proc, ctl, calls = asyncio.run(_serve(name, None, _as_nobody))
    assert proc.returncode == 3 and "REFUSED" in proc.stdout and "control_group" in proc.stdout, proc
    assert f"uid {NOBODY}" in proc.stdout  # the client really ran as nobody
    assert ctl.refused == 1 and ctl.served == 0 and not calls  # the handler never ran
    reply, ctl, calls = asyncio.run(_serve(name, None, query))
    assert reply == {"ok": True} and ctl.served == 1 and ctl.refused == 0 and calls == [{"cmd": "status"}]


@pytest.mark.root
def test_a_member_of_the_control_group_is_served() -> None:
    name = f"ntm-test-ctlg-{os.getpid()}"
    proc, ctl, _calls = asyncio.run(_serve(name, NOBODY, _as_nobody))  # gid 65534 (nogroup) configured
    assert proc.returncode == 0 and "'ok': True" in proc.stdout, proc
    assert ctl.served == 1 and ctl.refused == 0
    proc, ctl, _calls = asyncio.run(_serve(name, 0, _as_nobody))  # another group configured: refused
    assert proc.returncode == 3 and ctl.refused == 1


def test_who_may_use_the_control_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    me = os.geteuid()
    assert allowed(0, 0, None) and allowed(me, 12345, None)
    other = 54321 if me != 54321 else 54322
    assert not allowed(other, other, None)
    assert allowed(other, 777, 777)  # primary group
    assert not allowed(other, 778, 777)

    class Pw:
        pw_name = "alice"

    class Gr:
        gr_mem = ["alice"]

    monkeypatch.setattr(control.pwd, "getpwuid", lambda uid: Pw())
    monkeypatch.setattr(control.grp, "getgrgid", lambda gid: Gr())
    assert allowed(other, 778, 777)  # supplementary member in the group database


def test_control_group_must_exist_and_a_bad_one_is_one_line(tmp_path: Path) -> None:
    root_group = grp.getgrgid(0).gr_name
    assert group_id(NodeSettings(credentials="c", control_group=root_group).control_group) == 0
    assert group_id(NodeSettings(credentials="c", control_group="0").control_group) == 0
    assert group_id(NodeSettings(credentials="c").control_group) is None
    cfg = tmp_path / "node.toml"
    cfg.write_text('credentials = "c"\ncontrol_group = "no-such-group-ntm"\n')
    with pytest.raises(ConfigError) as err:
        load(cfg, NodeSettings)
    assert str(err.value).startswith(f"{cfg}: control_group: ") and "no such group" in str(err.value)
