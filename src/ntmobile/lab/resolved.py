"""A lab host with a real systemd-resolved: its own system D-Bus and resolved in a private mount namespace
of the host's network namespace, and the node daemon run beside them (docs/lab.md, "systemd-resolved").

``python -m ntmobile.lab.resolved --dir WORKDIR -- NODE-ARGV...`` runs under ``unshare --mount
--propagation private`` inside the host's namespace (``resolved_argv`` builds that command line). It

1. bind-mounts WORKDIR's own /run/dbus and /run/systemd (resolved refuses a runtime directory not mode
   0755), and /etc/passwd and /etc/group with the system user ``systemd-resolve`` added;
2. starts ``dbus-daemon`` (a system bus on /run/dbus/system_bus_socket) and systemd-resolved, which
   takes the lab's resolv.conf as its upstream, then points /etc/resolv.conf at resolved's stub, as a
   host where resolved is in charge has it;
3. runs the node (``resolvectl`` on its PATH), passes SIGTERM/SIGINT on to it and, once it has exited,
   writes ``resolvectl status`` to WORKDIR/resolved-after.txt, stops resolved and the bus (by PID) and
   exits with the node's status.

Everything in the mount namespace goes with its last process; nothing on the host changes beyond
creating the empty directories /run/dbus and /run/systemd when they are missing (mount points).
systemd-resolved comes unpacked from its Debian package (``scripts/setup.sh``: ``apt-get download``,
``dpkg -x`` into RESOLVED_ROOT), never installed: its package would take the host's resolv.conf over.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

#: Where scripts/setup.sh unpacks the systemd-resolved package.
RESOLVED_ROOT = Path("/var/cache/ntmobile/resolved/root")
RESOLVED_BIN = RESOLVED_ROOT / "lib/systemd/systemd-resolved"
RESOLVECTL_DIR = RESOLVED_ROOT / "usr/bin"

_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=/run/dbus/system_bus_socket</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""


def available() -> bool:
    return RESOLVED_BIN.exists() and (RESOLVECTL_DIR / "resolvectl").exists()


def resolved_argv(workdir: Path, node_argv: list[str]) -> list[str]:
    """The command line the lab starts (in the host's namespace) instead of the node's own."""
    return ["unshare", "--mount", "--propagation", "private", sys.executable, "-m", "ntmobile.lab.resolved",
            "--dir", str(workdir), "--", *node_argv]


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=10)


def _with_user(src: Path, dst: Path, line: str) -> None:
    text = src.read_text()
    if not any(ln.startswith("systemd-resolve:") for ln in text.splitlines()):
        text = text.rstrip("\n") + "\n" + line + "\n"
    dst.write_text(text)
    _mount("--bind", str(dst), str(src))


def _wait(what: str, cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"ntmobile.lab.resolved: {what} did not come up within {timeout:.0f} s")
        time.sleep(0.05)


def _stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ntmobile.lab.resolved")
    ap.add_argument("--dir", required=True, type=Path)
    ap.add_argument("node", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    node_argv = a.node[1:] if a.node[:1] == ["--"] else a.node
    d: Path = a.dir / "resolved"
    for sub in ("dbus", "etc"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    for mp in ("/run/dbus", "/run/systemd"):
        os.makedirs(mp, exist_ok=True)
    _mount("--bind", str(d / "dbus"), "/run/dbus")
    _mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run/systemd")
    os.mkdir("/run/systemd/resolve", 0o755)
    _with_user(Path("/etc/passwd"), d / "etc/passwd", "systemd-resolve:x:991:991:resolved:/:/usr/sbin/nologin")
    _with_user(Path("/etc/group"), d / "etc/group", "systemd-resolve:x:991:")
    os.chown("/run/systemd/resolve", 991, 991)
    (d / "bus.conf").write_text(_BUS_CONFIG)
    procs: list[subprocess.Popen[bytes]] = []
    bus = subprocess.Popen(["dbus-daemon", "--nofork", f"--config-file={d / 'bus.conf'}"],
                           stdout=open(d / "dbus.log", "wb"), stderr=subprocess.STDOUT)
    procs.append(bus)
    node: subprocess.Popen[bytes] | None = None
    code = 1

    def forward(sig: int, _frame: object) -> None:
        if node is not None and node.poll() is None:
            node.send_signal(sig)
        else:
            raise SystemExit(128 + sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        _wait("the system bus", lambda: Path("/run/dbus/system_bus_socket").exists())
        resolved = subprocess.Popen([str(RESOLVED_BIN)], stdout=open(d / "resolved.log", "wb"),
                                    stderr=subprocess.STDOUT)
        procs.append(resolved)
        _wait("systemd-resolved", lambda: Path("/run/systemd/resolve/stub-resolv.conf").exists())
        _mount("--bind", "/run/systemd/resolve/stub-resolv.conf", "/etc/resolv.conf")
        env = {**os.environ, "PATH": f"{RESOLVECTL_DIR}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"}
        node = subprocess.Popen(node_argv, env=env)
        while True:
            try:
                code = node.wait()
                break
            except InterruptedError:
                continue
        after = subprocess.run([str(RESOLVECTL_DIR / "resolvectl"), "status"], capture_output=True, text=True,
                               timeout=10)
        (a.dir / "resolved-after.txt").write_text(after.stdout + after.stderr)
    finally:
        if node is not None:
            _stop(node)
        for p in reversed(procs):
            _stop(p)
    return code


if __name__ == "__main__":
    sys.exit(main())
