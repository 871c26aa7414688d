"""`ntm bench failover`: how long an RS-N relay's death interrupts a TCP flow through it (issue 20).

Two cases, each in its own lab:

- **single** (topology `nat`: rs1 and rs2, each masquerading to its own address): the flow through
  the killed relay breaks (the GN would see another relay's address); the gap is from the kill to the
  first **new** connection to the same GN VIP answered (an HTTP request, retried every 0.2 s).
- **pair** (topology `rsnpair`: rs1 and rs2 as an RS-N pair, docs/operations.md "RS-N pair"): the
  same ssh session carries on; the gap is from the kill to its next line at mn (one line every
  50 ms).

Per kill: ``kill -9`` of the relay the node's path runs through, then the gap, when the node noticed
(its log: "closed: the relay stopped answering") and when its new path via the other relay was ready
(its log: "ready: RS_N via ..."), and whether the flow survived. The killed relay is started again (same command; in the
pair its keepalived's track_script reads the new PID) and registered before the next kill, which then
hits the other relay. Reported: median and max over N kills per case, beside the host calibration.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .calibration import calibration_markdown, host_calibration
from .handover import _log_time

CASES = {"single": "nat", "pair": "rsnpair"}
GN_NAME = "www.gn.example"
#: One kill whose flow is not back within this is recorded as a failure.
RECOVERY_DEADLINE = 20.0
#: The ssh session's output: one line every TICK seconds (the gap's resolution).
TICK = 0.05
NTM = [sys.executable, "-m", "ntmobile"]


@dataclass(slots=True)
class Kill:
    relay: str
    gap_s: float | None = None
    noticed_s: float | None = None
    rebuilt_s: float | None = None
    survived: bool = False
    new_relay: str | None = None
    #: The path had a ready standby leg at the kill (the pair with rsn_pairs: the node switches to it).
    standby: bool = False


def _logged(log: Path, text: str, since: float) -> float | None:
    """When the daemon first logged ``text`` at or after ``since``."""
    for line in log.read_text(errors="replace").splitlines():
        if text in line:
            at = _log_time(line)
            if at is not None and at >= since:
                return at
    return None


def _wait(pred: Callable[[], Any], timeout: float, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got or time.monotonic() >= deadline:
            return got
        time.sleep(step)


def _status(lab: Any, host: str, *cmd: str) -> dict[str, Any]:
    r = lab.exec(host, [*NTM, *cmd, "status", "--json"], check=False, timeout=10)
    try:
        out: dict[str, Any] = json.loads(r.stdout)
        return out
    except ValueError:
        return {}


def _path(lab: Any) -> dict[str, Any] | None:
    return next((p for p in _status(lab, "mn").get("paths", [])
                 if p.get("peer") == GN_NAME and p.get("mode") == "RS_N" and p.get("established")), None)


def _stop(p: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGKILL)
    p.wait()


class _Session:
    """An ssh session from mn to the GN printing a line every TICK s; arrival times at mn."""

    def __init__(self, lab: Any, family: str = "-4") -> None:
        self.arrivals: list[float] = []
        self.proc = lab.popen("mn", ["ssh", family, "-o", "ConnectTimeout=10", f"root@{GN_NAME}",
                                     f"while :; do echo tick; sleep {TICK}; done"], name="fo-ssh",
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for _ in self.proc.stdout:
            self.arrivals.append(time.monotonic())

    def back_after(self, t: float) -> bool:
        """Lines flow again after a silence that began at or after ``t``."""
        seen = self.arrivals
        return len(seen) > 0 and seen[-1] > t + 0.5 and time.monotonic() - seen[-1] < 0.5

    def gap_after(self, t: float) -> float:
        """The longest time without a line since ``t``."""
        seen = list(self.arrivals)
        return max((b - max(a, t) for a, b in zip(seen, seen[1:], strict=False) if b > t), default=0.0)

    def running(self, n: int = 5) -> bool:
        return len(self.arrivals) >= n and time.monotonic() - self.arrivals[-1] < 0.5


def _new_connection_ok(lab: Any, vip: str) -> bool:
    r = lab.exec("mn", ["curl", "-sS", "-m", "1", "-o", "/dev/null", "-H", f"Host: {GN_NAME}", f"http://{vip}/"],
                 check=False, timeout=10)
    return bool(r.returncode == 0)


def _restart(lab: Any, rec: Any, pair: bool) -> None:
    """Start the killed relay again (same command) and wait until its DCs registered it; in the pair,
    its keepalived's track_script reads the new PID (rise 2: BACKUP about 2 s on)."""
    lab.stop(rec)
    new = lab.spawn(rec.host, rec.argv, rec.name)
    if pair:
        (lab.host_workdir(rec.host) / "rs.pid").write_text(f"{new.pid}\n")
    ok = _wait(lambda: all(d.get("state") == "registered" for d in (_status(lab, rec.host, "rs").get("dcs") or [{}])),
               20, 0.2)
    if not ok:
        raise RuntimeError(f"the restarted relay on {rec.host} did not register within 20 s")
    if pair:
        time.sleep(2.5)  # the track_script's rise 2 (1 s interval): the relay's keepalived is BACKUP again


def _one_kill(lab: Any, session: _Session, path: dict[str, Any], pair: bool, node_log: Path) -> tuple[Kill, Any]:
    """Kill the relay of ``path``; measure until traffic is back. Returns the kill and the relay's record."""
    k = Kill(path["rs"], standby=bool((path.get("standby") or {}).get("ready")))
    rec = next(r for r in lab.state.processes if r.host == k.relay and r.name == "rs")
    vip = path["peer_vip4"]
    t0, wall0 = time.monotonic(), time.time()
    os.kill(rec.pid, signal.SIGKILL)

    def back() -> float | None:
        if pair:
            return session.gap_after(t0) if session.back_after(t0) else None
        return time.monotonic() - t0 if _new_connection_ok(lab, vip) else None

    gap = _wait(back, RECOVERY_DEADLINE, 0.05 if pair else 0.2)
    if gap:
        k.gap_s = round(gap, 3)
        k.survived = pair and session.proc.poll() is None

    def other() -> dict[str, Any] | None:
        p = _path(lab)
        return p if p is not None and p["rs"] != k.relay else None

    p2 = _wait(other, 10, 0.1)
    if p2:
        k.new_relay = p2["rs"]
        ready = _logged(node_log, f"ready: RS_N via {k.new_relay}", wall0)
        if ready is not None:
            k.rebuilt_s = round(ready - wall0, 3)
    seen = _wait(lambda: _logged(node_log, "closed: the relay stopped answering", wall0 - 0.5)
                 or _logged(node_log, "switched to its standby leg", wall0 - 0.5), 5, 0.2)
    if seen:
        k.noticed_s = round(seen - wall0, 3)
    return k, rec


def run_case(lab: Any, case: str, kills: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    pair = case == "pair"
    node_log = Path(lab.workdir) / "logs" / "mn-node.log"
    result: dict[str, Any] = {"case": case, "topology": CASES[case]}
    done: list[Kill] = []
    session: _Session | None = None
    try:
        if not _wait(lambda: _status(lab, "mn").get("registered"), 20, 0.2):
            result["error"] = "mn did not register"
        for i in range(kills if "error" not in result else 0):
            if session is None or session.proc.poll() is not None or not session.running():
                if session is not None:
                    _stop(session.proc)
                session = _Session(lab)
                if not _wait(functools.partial(session.running, 10), 30):
                    result["error"] = f"kill {i + 1}: the ssh session through RS-N did not start"
                    break
            path = _wait(lambda: _path(lab), 10, 0.2)
            if not path:
                result["error"] = f"kill {i + 1}: mn has no RS-N path to {GN_NAME}"
                break
            k, rec = _one_kill(lab, session, path, pair, node_log)
            done.append(k)
            log(f"  kill {i + 1:2d} of {k.relay}: gap {k.gap_s} s, noticed {k.noticed_s} s, "
                f"via {k.new_relay} by {k.rebuilt_s} s{' (standby leg)' if k.standby else ''}, "
                f"flow {'survived' if k.survived else 'broken'}")
            if not pair:
                _stop(session.proc)  # (its TCP connection is gone: a new session for the next kill)
                session = None
            _restart(lab, rec, pair)
            if pair:
                # the DC installs a new standby leg at the restarted relay (rsn_pairs): ready before the next kill
                _wait(lambda: bool(((_path(lab) or {}).get("standby") or {}).get("ready")), 10, 0.1)
    finally:
        if session is not None and session.proc.poll() is None:
            _stop(session.proc)
    result.update(summary(done))
    result["per_kill"] = [asdict(k) for k in done]
    return result


def summary(kills: Sequence[Kill]) -> dict[str, Any]:
    def stat(xs: list[float]) -> dict[str, float | None]:
        return {"median": round(statistics.median(xs), 2) if xs else None, "max": max(xs) if xs else None}

    return {"kills": len(kills), "recovered": sum(k.gap_s is not None for k in kills),
            "survived": sum(k.survived for k in kills), "standby": sum(k.standby for k in kills),
            "gap_s": stat([k.gap_s for k in kills if k.gap_s is not None]),
            "noticed_s": stat([k.noticed_s for k in kills if k.noticed_s is not None]),
            "rebuilt_s": stat([k.rebuilt_s for k in kills if k.rebuilt_s is not None])}


def to_markdown(report: dict[str, Any]) -> str:
    lines = ["# ntm bench failover", "",
             f"{report['when']} · {report['kills']} kills (`kill -9`) of the active RS-N relay per case", "",
             "Gap: kill → traffic again (single: a new connection to the same GN VIP answered; pair: the same "
             "ssh session's next line at mn). Noticed: mn closed the path (busy-path probe). Via other: mn's "
             "new path through the other relay ready (mn's log).", "",
             "| case | topology | kills | recovered | same connection survived | gap median / max s | "
             "noticed median / max s | via other median / max s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        if "error" in r and not r.get("kills"):
            lines.append(f"| {r['case']} | {r['topology']} | – | – | – | {r['error']} | | |")
            continue
        g, n, b = r["gap_s"], r["noticed_s"], r["rebuilt_s"]
        lines.append(f"| {r['case']} | {r['topology']} | {r['kills']} | {r['recovered']} | {r['survived']} | "
                     f"{g['median']} / {g['max']} | {n['median']} / {n['max']} | {b['median']} / {b['max']} |")
        if "error" in r:
            lines.append(f"| | | stopped: {r['error']} | | | | | |")
    return "\n".join(lines) + "\n"


def run_bench(*, kills: int = 10, cases: Sequence[str] = ("single", "pair"), prefix: str = "fob",
              out_dir: Path = Path("artifacts"), log: Callable[[str], None] = print) -> dict[str, Any]:
    """Each case in its own lab (``prefix`` + "s" / "p"), torn down afterwards."""
    from ntmobile.lab import Lab

    results: list[dict[str, Any]] = []
    for case in cases:
        lab = Lab.up(CASES[case], prefix=prefix + case[0])
        try:
            log(f"{case} ({CASES[case]}): {kills} kills")
            results.append(run_case(lab, case, kills, log=log))
        finally:
            lab.down()
    cal = host_calibration()
    report = {"bench": "failover", "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "lab": prefix, "kills": kills, "results": results, "calibration": cal}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench-failover.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "bench-failover.md").write_text(to_markdown(report) + calibration_markdown(cal))
    return report
