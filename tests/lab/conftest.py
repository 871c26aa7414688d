"""Lab fixtures for root tests (usable by later end-to-end tests).

- `lab_factory(topology="nat", bare=True, monitor=False, **overrides)`: brings a topology up under a fresh random
  prefix and always tears it down (also after a failed or interrupted test; an atexit hook catches
  the rest). Overrides: nat={"nata": "symmetric"}, udp_timeout={"nata": 5}, rate_mbit=..., loss_percent=...
- `Reflector` / `start_reflector(lab, host, port)`: the probe reflector of ntmobile.lab.probe.
- `probe_udp(lab, host, ...)`: one-shot UDP probe from a host, returns the datagrams received.
- `wait_for(predicate, timeout, what)`: poll a condition against a deadline.
"""

from __future__ import annotations

import atexit
import json
import secrets
import signal
import string
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ntmobile.lab import Lab, Topology, load_topology

_LIVE: dict[str, Lab] = {}


@atexit.register
def _teardown_leftovers() -> None:
    for lab in list(_LIVE.values()):
        lab.down()
    _LIVE.clear()


def new_prefix() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "t" + "".join(secrets.choice(alphabet) for _ in range(5))


def build_topology(topology: str | Topology, *, nat: dict[str, str] | None = None,
                   udp_timeout: dict[str, int] | None = None, rate_mbit: float | None = None,
                   loss_percent: float | None = None) -> Topology:
    topo = topology if isinstance(topology, Topology) else load_topology(topology)
    for router, profile in (nat or {}).items():
        topo = topo.with_nat(router, profile)  # type: ignore[arg-type]
    for router, secs in (udp_timeout or {}).items():
        topo = topo.with_nat(router, udp_timeout=secs)
    if rate_mbit is not None or loss_percent is not None:
        topo = topo.with_links(rate_mbit=rate_mbit, loss_percent=loss_percent)
    return topo


LabFactory = Callable[..., Lab]


def _sigterm_to_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture
def lab_factory() -> Iterator[LabFactory]:
    mine: list[Lab] = []
    # SIGTERM (e.g. a CI job cancelled) becomes KeyboardInterrupt, so pytest still runs the finalizer
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    if main and previous in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _sigterm_to_interrupt)

    def make(topology: str | Topology = "nat", *, bare: bool = True, monitor: bool = False, **overrides: Any) -> Lab:
        lab = Lab.up(build_topology(topology, **overrides), prefix=new_prefix(), bare=bare, monitor=monitor)
        mine.append(lab)
        _LIVE[lab.prefix] = lab
        return lab

    try:
        yield make
    finally:
        for lab in mine:
            lab.down()
            _LIVE.pop(lab.prefix, None)
        if main and signal.getsignal(signal.SIGTERM) is _sigterm_to_interrupt:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class Reflector:
    """A running `probe reflect PORT` on a lab host; its JSON events are read from a log file."""

    def __init__(self, lab: Lab, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.log = Path(lab.workdir) / f"reflect-{host}-{port}.jsonl"
        with open(self.log, "wb") as f:
            self.proc = lab.popen(host, [sys.executable, "-m", "ntmobile.lab.probe", "reflect", str(port)],
                                  name=f"reflect{port}", stdout=f, stderr=subprocess.STDOUT)
        wait_for(lambda: any("ready" in e for e in self.events()), 10, f"reflector on {host}:{port}")

    def events(self) -> list[dict[str, Any]]:
        try:
            lines = self.log.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def wait_event(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 10.0,
                   what: str = "event") -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            return next((e for e in self.events() if pred(e)), None)
        return wait_for(find, timeout, f"{what} at reflector {self.host}:{self.port}")  # type: ignore[no-any-return]


def start_reflector(lab: Lab, host: str, port: int = 7001) -> Reflector:
    return Reflector(lab, host, port)


def probe_argv(*, sport: int = 0, to: list[str], payload: str = "probe", until: str = "",
               expect: int = 0, timeout: float = 10.0, tcp_marker: str = "",
               reuseport: bool = False) -> list[str]:
    argv = [sys.executable, "-m", "ntmobile.lab.probe", "udp", "--sport", str(sport), "--payload", payload,
            "--expect", str(expect), "--timeout", str(timeout)]
    for d in to:
        argv += ["--to", d]
    if until:
        argv += ["--until", until]
    if tcp_marker:
        argv += ["--tcp-marker", tcp_marker]
    if reuseport:
        argv.append("--reuseport")
    return argv


def probe_udp(lab: Lab, host: str, **kw: Any) -> list[dict[str, Any]]:
    """Send UDP from `host` (see probe_argv) and return the datagrams it received."""
    cp = lab.exec(host, probe_argv(**kw), timeout=float(kw.get("timeout", 10.0)) + 20)
    return json.loads(cp.stdout.strip().splitlines()[-1])["received"]  # type: ignore[no-any-return]
