"""Running code inside a named network namespace (/run/netns/NAME, as `ip netns` manages them).

Two ways, both leaving the calling thread's namespace alone:

* Subprocesses: `popen_in_netns()` / `run_in_netns()` prefix the command with `ip netns exec NAME`,
  which also remounts /sys for the namespace and applies /etc/netns/NAME overrides. Daemons (node,
  DC, RS) are started this way, so all their sockets, TUNs and netlink sessions live there.
* Callables: `NetnsThread` / `call_in_netns()` run a function in a fresh thread that first calls
  setns(2) with CLONE_NEWNET on the namespace file. A network namespace is per thread on Linux, so
  only that thread moves; sockets, TUN devices and netlink sockets it creates belong to the target
  namespace and keep doing so when used from other threads afterwards. The thread ends when the
  function returns, so nothing else ever runs in the switched thread. Python 3.11 has no os.setns:
  libc's setns is called through ctypes.

Namespaces themselves are created and removed with `ip netns add/del` (`add_netns`, `delete_netns`).
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")

NETNS_RUN_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(OSError):
    """A namespace could not be entered, created or removed."""


def netns_path(name: str) -> Path:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"bad namespace name {name!r}")
    return NETNS_RUN_DIR / name


def setns_current_thread(name: str) -> None:
    """Move the calling thread into namespace `name`. Only for threads made for that purpose."""
    path = netns_path(name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise NetnsError(e.errno, f"open {path}: {e.strerror}") from e
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetnsError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


class NetnsThread(threading.Thread, Generic[T]):
    """A thread that enters a namespace and then runs `fn(*args)`; `result()` joins and returns."""

    def __init__(self, name: str, fn: Callable[..., T], *args: Any, daemon: bool = True) -> None:
        super().__init__(name=f"netns-{name}", daemon=daemon)
        self.netns = name
        self._fn = fn
        self._args = args
        self._result: T | None = None
        self._exc: BaseException | None = None

    def run(self) -> None:
        try:
            setns_current_thread(self.netns)
            self._result = self._fn(*self._args)
        except BaseException as e:  # handed to the joiner
            self._exc = e

    def result(self, timeout: float | None = None) -> T:
        self.join(timeout)
        if self.is_alive():
            raise TimeoutError(f"function in namespace {self.netns} still running after {timeout}s")
        if self._exc is not None:
            raise self._exc
        return self._result  # type: ignore[return-value]


def call_in_netns(name: str, fn: Callable[..., T], *args: Any, timeout: float | None = 60.0) -> T:
    """Run `fn(*args)` in namespace `name` on a dedicated thread and return its result."""
    t: NetnsThread[T] = NetnsThread(name, fn, *args)
    t.start()
    return t.result(timeout)


def spawn_in_netns(name: str, fn: Callable[..., T], *args: Any) -> NetnsThread[T]:
    """Start `fn(*args)` in namespace `name` on a dedicated daemon thread; join with `.result()`."""
    t: NetnsThread[T] = NetnsThread(name, fn, *args)
    t.start()
    return t


def netns_argv(name: str, argv: Sequence[str]) -> list[str]:
    netns_path(name)
    return ["ip", "netns", "exec", name, *argv]


def popen_in_netns(name: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """Start `argv` inside namespace `name` (the returned Popen's pid is the command's own pid:
    `ip netns exec` execs it in place)."""
    return subprocess.Popen(netns_argv(name, argv), **kwargs)


def run_in_netns(name: str, argv: Sequence[str], *, check: bool = True, timeout: float | None = 60.0,
                 input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `argv` inside namespace `name` to completion, capturing text output."""
    r = subprocess.run(netns_argv(name, argv), capture_output=True, text=True, timeout=timeout,
                       input=input)
    if check and r.returncode != 0:
        msg = (r.stderr.strip() or r.stdout.strip()).splitlines()
        raise NetnsError(0, f"in netns {name}: {' '.join(argv)}: rc={r.returncode}: "
                            f"{msg[0] if msg else ''}")
    return r


def add_netns(name: str) -> None:
    """Create namespace `name` (fails if it exists)."""
    netns_path(name)
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        raise NetnsError(0, f"ip netns add {name}: {r.stderr.strip()}")


def delete_netns(name: str, *, missing_ok: bool = True) -> None:
    """Remove namespace `name`; its interfaces go with it once no process holds it."""
    if missing_ok and not netns_path(name).exists():
        return
    r = subprocess.run(["ip", "netns", "del", name], capture_output=True, text=True)
    if r.returncode != 0:
        raise NetnsError(0, f"ip netns del {name}: {r.stderr.strip()}")
