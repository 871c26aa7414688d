"""`ntm node` (run an NTM node) and `ntm status` (what the node in this network namespace is doing)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer

from .common import add_install_service, daemon_status, fail, handler_errors_line, missing_command, require_root

app = typer.Typer(help="NTM node: TUN with the node's VIPs, DNS-triggered tunnels, handover.",
                  no_args_is_help=True)


@app.command("run")
def run(config: Path = typer.Option(..., "--config", "-c", help="node configuration file (TOML)"),
        verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Run the node daemon in the foreground."""
    from ntmobile.runtime.config import ConfigError, Credentials, NodeSettings, load
    from ntmobile.runtime.node import run_node

    try:
        settings = load(config, NodeSettings)
        creds_path = Path(settings.credentials)
        if not creds_path.is_absolute():
            creds_path = config.parent / creds_path
        creds = load(creds_path, Credentials)
    except ConfigError as exc:
        fail(str(exc))
    if creds.role != "node":
        fail(f"{settings.credentials}: these are {creds.role} credentials; a node needs `ntm dc enroll` ones")
    require_root("ntm node run")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        run_node(settings, creds)
    except ConfigError as exc:
        fail(str(exc))
    except OSError as exc:
        if exc.errno == 98:
            fail(f"a port is already in use ({exc}): stop the other service or change port/dns_port")
        fail(missing_command(exc) or f"cannot start the node: {exc}")


def status(control: str = typer.Option("ntm-node", help="control socket name of the node daemon"),
           as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """Show the node's registration, VIPs and paths (peer, VIPs, mode, RS, bytes, age)."""
    st = daemon_status(control, as_json)
    if st is None:
        return
    from rich.console import Console
    from rich.table import Table

    con = Console()
    reg = "registered" if st["registered"] else "NOT registered"
    con.print(f"[bold]{st['name']}[/] {reg} with DC {st['dc']['address']}:{st['dc']['port']} ({st['dc']['domain']})")
    con.print(f"  VIPs {st['vip4']} {st['vip6']}  observed {st['observed']}  NAT {st['nat']}  "
              f"keepalive {st['keepalive']}s  TUN {st['tun']}")
    if st.get("error"):
        con.print(f"  [red]{st['error']}[/]")
    if (line := handler_errors_line(st)) is not None:
        con.print(line)
    t = Table("peer", "peer VIPs", "mode", "RS", "endpoint", "tx bytes", "rx bytes", "age s", "state")
    for p in st["paths"]:
        ep = p["endpoint"]
        t.add_row(str(p["peer"]), " ".join(v for v in (p["peer_vip4"], p["peer_vip6"]) if v), p["mode"],
                  p["rs"] or "-", f"{ep[0]}:{ep[1]}" if ep else "-", str(p["tx_bytes"]), str(p["rx_bytes"]),
                  str(p["age"]), "up" if p["established"] else "setting up")
    con.print(t)


add_install_service(app, "node")

def register(root: typer.Typer) -> None:
    root.add_typer(app, name="node")
    root.command("status")(status)
