"""Helpers shared by CLI commands: one-line errors that say what to fix."""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one line to stderr (prefixed with `ntm: `) and exit."""
    print(f"ntm: {message}", file=sys.stderr)
    raise SystemExit(code)


#: Commands the daemons run, and the Debian/Ubuntu package that provides each.
SYSTEM_PACKAGES = {"ip": "iproute2", "nft": "nftables", "sysctl": "procps", "ping": "iputils-ping",
                   "conntrack": "conntrack", "nsd": "nsd", "unbound": "unbound", "unshare": "util-linux"}


def missing_command(exc: BaseException) -> str | None:
    """For "command not found" (FileNotFoundError of a subprocess): one line saying what to install."""
    if not isinstance(exc, FileNotFoundError):
        return None
    name = os.path.basename(str(exc.filename or ""))
    pkg = SYSTEM_PACKAGES.get(name)
    if pkg is None:
        return None
    return f"`{name}` not found: install {pkg} (apt-get install {pkg})"


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        fail(f"{what} needs root (network namespaces, TUN devices, nftables): run it with sudo or as root")


def daemon_status(control: str, as_json: bool) -> dict[str, Any] | None:
    """Ask a daemon of this network namespace for its status. With ``as_json`` print it and return
    None; otherwise return it for the caller's table. Exits with one line when nobody answers."""
    import json

    from ntmobile.runtime.control import query

    try:
        st = query(control)
    except ConnectionError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps(st, indent=2))
        return None
    return st


def handler_errors_line(st: dict[str, Any]) -> str | None:
    """One line on the daemon's handler errors for its status table (None when there were none)."""
    drv = st.get("driver") or {}
    if not drv.get("handler_errors"):
        return None
    return f"  [red]{drv['handler_errors']} handler error(s), the last: {drv.get('last_handler_error')}[/]"
