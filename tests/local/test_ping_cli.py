"""`ntm ping` against a daemon's control socket (an async handler, as the node's): one line per probe,
the summary, --until-direct stopping at the first DIRECT answer, the exit status."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

from ntmobile.runtime.control import serve_control


def run_ping(replies: list[dict[str, Any]], *args: str) -> tuple[subprocess.CompletedProcess[str], list[Any]]:
    name = f"ntm-test-ping-{os.getpid()}-{len(args)}"
    calls: list[Any] = []

    async def handler(req: dict[str, Any]) -> dict[str, Any]:
        calls.append(req)
        await asyncio.sleep(0.01)  # the node's answer waits for the probe
        return replies[min(len(calls), len(replies)) - 1]

    async def main() -> subprocess.CompletedProcess[str]:
        ctl = await serve_control(name, handler)
        try:
            return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "ntmobile", "ping", "cn.b.example",
                                                            "--control", name, "-i", "0", *args],
                                           capture_output=True, text=True, timeout=60)
        finally:
            ctl.close()

    return asyncio.run(main()), calls


RSS = {"name": "cn.b.example", "peer_vip4": "100.64.2.1", "mode": "RS_S", "rs": "rs2",
       "endpoint": ["192.0.2.21", 7411], "rtt_ms": 1.5}
DIRECT = RSS | {"mode": "DIRECT", "rs": None, "endpoint": ["192.0.2.101", 7412], "rtt_ms": 0.5}


def test_probes_and_summary() -> None:
    cp, calls = run_ping([RSS, RSS | {"rtt_ms": 2.5}], "-c", "2")
    assert cp.returncode == 0, cp.stderr
    assert calls == [{"cmd": "ping", "target": "cn.b.example"}] * 2
    lines = cp.stdout.splitlines()
    assert lines[0] == "probe 1: cn.b.example (100.64.2.1) RS_S via rs2 192.0.2.21:7411 rtt 1.50 ms"
    assert lines[-1] == "--- cn.b.example: 2 probes, 2 answered, rtt min/avg/max 1.50/2.00/2.50 ms, last mode RS_S"


def test_a_relayed_probe_shows_the_peer_s_own_rtt_beside_the_relay_s() -> None:
    cp, _ = run_ping([RSS | {"peer_rtt_ms": 3.25}, RSS | {"peer_rtt_ms": None}], "-c", "2")
    assert cp.returncode == 0, cp.stderr
    lines = cp.stdout.splitlines()
    assert lines[0].endswith("RS_S via rs2 192.0.2.21:7411 rtt 1.50 ms, peer 3.25 ms")
    assert lines[1].endswith("rtt 1.50 ms, peer no echo")


def test_until_direct_stops_at_the_first_direct_answer_and_fails_if_it_never_comes() -> None:
    cp, calls = run_ping([RSS, RSS, DIRECT, DIRECT], "-c", "10", "--until-direct")
    assert cp.returncode == 0 and len(calls) == 3 and "DIRECT 192.0.2.101:7412" in cp.stdout
    cp, calls = run_ping([RSS], "-c", "3", "--until-direct")
    assert cp.returncode == 1 and len(calls) == 3


def test_a_name_without_a_path_is_one_line_and_exit_1() -> None:
    cp, _ = run_ping([{"name": "cn.b.example", "error": "NXDOMAIN: no such node"}], "-c", "1")
    assert cp.returncode == 1
    assert cp.stdout.splitlines()[0] == "probe 1: cn.b.example: NXDOMAIN: no such node"
