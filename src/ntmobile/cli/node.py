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
        creds = load(settings.credentials, Credentials)  # (relative paths: from the config's directory)
    except ConfigError as exc:
        fail(str(exc))
    if creds.role != "node":
        fail(f"{settings.credentials}: these are {creds.role} credentials; a node needs `ntm dc enroll` ones")
    require_root("ntm node run")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        run_node(settings, creds, config)
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


@app.command("join")
def join(token: str = typer.Argument(..., help="the token `ntm dc enroll NAME --token` printed"),
         directory: Path = typer.Option(Path("/etc/ntmobile"), "--dir", help="where to write node.toml and the "
                                        "credentials"),
         timeout: float = typer.Option(10.0, "--timeout", help="seconds to wait for the DC")) -> None:
    """Join a DC with a token: get this node's credentials and write its configuration."""
    from ntmobile.runtime.config import ConfigError, NodeSettings, dump
    from ntmobile.runtime.join import JoinError, credentials_of, redeem
    from ntmobile.runtime.private import PrivateFileError, private_dir
    from ntmobile.wire import CodecError
    from ntmobile.wire.join import parse_token

    try:
        parsed = parse_token(token)
    except CodecError as exc:
        fail(str(exc))
    config = directory / "node.toml"
    if config.exists():
        fail(f"{config} exists: remove it or choose another --dir")
    try:
        private_dir(directory)
    except PrivateFileError as exc:
        fail(f"cannot write the node's files there: {exc}")
    try:
        got = redeem(parsed, timeout=timeout)
    except JoinError as exc:
        fail(str(exc))
    creds = credentials_of(got)
    cred_path = directory / f"{got.name}.cred.toml"
    try:
        dump(creds, cred_path)
        dump(NodeSettings(credentials=cred_path.name), config)
    except ConfigError as exc:
        fail(f"joined as {got.name}, but cannot write its files: {exc}")
    typer.echo(f"joined {got.domain} as {got.name} (id {creds.client_id}); wrote {config} and {cred_path}", err=True)
    typer.echo(f"start it with `ntm node run -c {config}` (or `ntm node install-service -c {config}`)", err=True)

def register(root: typer.Typer) -> None:
    root.add_typer(app, name="node")
    root.command("status")(status)
