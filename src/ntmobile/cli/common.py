"""Helpers shared by CLI commands: one-line errors that say what to fix."""

from __future__ import annotations

import os
import sys
from pathlib import Path
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


def install_service(kind: str, config: Path, unit_dir: Path, print_only: bool) -> None:
    """`ntm dc|rs|node install-service`: write the daemon's systemd unit for ``config`` (checked first)."""
    import shutil

    from pydantic import BaseModel

    from ntmobile.runtime.config import ConfigError, DcSettings, NodeSettings, RsSettings, load
    from ntmobile.service import render_unit

    models: dict[str, type[BaseModel]] = {"dc": DcSettings, "rs": RsSettings, "node": NodeSettings}
    model = models[kind]
    try:
        load(config, model)
    except ConfigError as exc:
        fail(str(exc))
    ntm = shutil.which("ntm") or sys.argv[0]
    unit = render_unit(kind, str(Path(ntm).resolve()), str(config.resolve()))
    if print_only:
        sys.stdout.write(unit)
        return
    path = unit_dir / f"ntm-{kind}.service"
    try:
        unit_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(unit)
        tmp.chmod(0o644)
        tmp.replace(path)
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}")
    print(f"wrote {path}; start it with: systemctl daemon-reload && systemctl enable --now ntm-{kind}.service",
          file=sys.stderr)


def add_install_service(app: Any, kind: str) -> None:
    """Give a command group (``ntm dc``, ``ntm rs``, ``ntm node``) its ``install-service`` command."""
    import typer

    def install_service_cmd(
            config: Path = typer.Option(..., "--config", "-c", help="the daemon's configuration file (checked first)"),
            unit_dir: Path = typer.Option(Path("/etc/systemd/system"), "--unit-dir", help="where to write the unit"),
            print_only: bool = typer.Option(False, "--print", help="print the unit instead of writing it")) -> None:
        install_service(kind, config, unit_dir, print_only)

    install_service_cmd.__doc__ = (f"Write the systemd unit ntm-{kind}.service for this configuration (only the "
                                   "capabilities the daemon needs).")
    app.command("install-service")(install_service_cmd)
