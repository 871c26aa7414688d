"""`ntm rs`: run a relay server (RS-S and RS-N in one daemon)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer

from .common import add_install_service, daemon_status, fail, handler_errors_line, missing_command, require_root

app = typer.Typer(help="Relay server: RS-S between NATed NTM nodes, RS-N to general nodes (kernel NAPT).",
                  no_args_is_help=True)


@app.command("run")
def run(config: Path = typer.Option(..., "--config", "-c", help="relay configuration file (TOML)"),
        verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Run the relay daemon in the foreground."""
    from ntmobile.runtime.lean import without_tls

    without_tls()  # before asyncio is imported: the relay needs no TLS (docs/dataplane.md, memory)
    from ntmobile.osops.nft import NftError
    from ntmobile.runtime.config import ConfigError, Credentials, RsSettings, load
    from ntmobile.runtime.rs import dc_links, run_rs

    try:
        settings = load(config, RsSettings)
        creds = []
        for c in settings.credentials:  # (relative paths: from the config's directory)
            creds.append(load(c, Credentials))
        dc_links(creds)
    except ConfigError as exc:
        fail(str(exc))
    require_root("ntm rs run")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        run_rs(settings, creds, config)
    except ConfigError as exc:
        fail(str(exc))
    except NftError as exc:
        fail(f"cannot start the relay: {exc}")
    except OSError as exc:
        if exc.errno == 98:
            fail(f"port {settings.port} is already in use: stop the other service or change `port`")
        fail(missing_command(exc) or f"cannot start the relay: {exc}")


@app.command("status")
def status(control: str = typer.Option("ntm-rs", help="control socket name"),
           as_json: bool = typer.Option(False, "--json")) -> None:
    """Show the relay's DCs and its Relay Table with per-path counters."""
    st = daemon_status(control, as_json)
    if st is None:
        return
    from rich.console import Console
    from rich.table import Table

    con = Console()
    con.print(f"relay [bold]{st['name']}[/] id {st['rs_id']}: {st['paths']} paths, {st['mappings']} NAT mappings")
    if (line := handler_errors_line(st)) is not None:
        con.print(line)
    for dc in st["dcs"]:
        con.print(f"  DC {dc['dc_id']} at {dc['endpoint']}: {dc['state']}")
    fast = st.get("fast_path") or {}
    in_kernel = set(fast.get("paths", []))
    if fast.get("enabled"):
        con.print(f"  RS-S kernel fast path (nft table inet {fast['table']}): {len(in_kernel)} path(s) in the "
                  f"kernel, {fast.get('promoted', 0)} promoted, {fast.get('demoted', 0)} back to the daemon")
    else:
        con.print(f"  RS-S kernel fast path off{': ' + fast['disabled_reason'] if fast.get('disabled_reason') else ''}")
    t = Table("path", "type", "initiator", "responder", "VIP map", "bytes i→r", "bytes r→i", "drops")
    for e in st["entries"]:
        vmap = " ".join(f"{e[f'peer_vip{f}']}→{e[f'gn_addr{f}']}" for f in (4, 6) if e.get(f"gn_addr{f}"))
        kind = e["rs_type"] + (" (kernel)" if e["path_id"] in in_kernel else "")
        t.add_row(e["path_id"], kind, str(e["initiator"]), str(e["responder"] or "-"), vmap,
                  str(e["bytes_i2r"]), str(e["bytes_r2i"]), str(e["drops"]))
    con.print(t)


add_install_service(app, "rs")

def register(root: typer.Typer) -> None:
    root.add_typer(app, name="rs")
