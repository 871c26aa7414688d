"""`ntm dc`: run a Direction Coordinator, enrol nodes and relay servers."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ntmobile.core.registry import StoreError
from ntmobile.wire import Role

if TYPE_CHECKING:
    from ntmobile.runtime.config import DcSettings as DcSettingsT

from .common import add_install_service, daemon_status, fail, handler_errors_line, missing_command, require_root

app = typer.Typer(help="Direction Coordinator: registration, VIPs, authoritative DNS, tunnel direction.",
                  no_args_is_help=True)

ConfigOpt = typer.Option(..., "--config", "-c", help="DC configuration file (TOML, see docs/operations.md)")


def _settings(path: Path):  # type: ignore[no-untyped-def]
    from ntmobile.runtime.config import ConfigError, DcSettings, load

    try:
        return load(path, DcSettings)
    except ConfigError as exc:
        fail(str(exc))


@app.command("run")
def run(config: Path = ConfigOpt, verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Run the DC daemon in the foreground."""
    from ntmobile.runtime.config import ConfigError
    from ntmobile.runtime.dc import run_dc

    settings = _settings(config)
    if settings.dns_port < 1024 or settings.port < 1024:
        require_root("binding ports below 1024")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        run_dc(settings, config)
    except (StoreError, ConfigError) as exc:
        fail(str(exc))
    except OSError as exc:
        if exc.errno == 98:
            fail(f"a port is already in use ({exc.strerror}): one of port {settings.port}, dns_port "
                 f"{settings.dns_port}, probe_port {settings.probe_port} (and the one after it) is taken; stop "
                 "the other service or change these in the config")
        fail(missing_command(exc) or f"cannot start the DC: {exc}")


def delegation(settings: DcSettingsT) -> list[str]:
    """The records the parent zone must publish for every domain the DC serves: NS, and glue (A/AAAA)
    when the name server's name lies inside the delegated domain (RFC 1034 §4.2.2)."""
    import ipaddress

    lines = []
    for domain in settings.domains:
        ns_name, addrs = settings.name_server(domain)
        lines.append(f"{domain}. 3600 IN NS {ns_name}.")
        if ns_name == domain or ns_name.endswith("." + domain):
            for a in addrs:
                kind = "A" if ipaddress.ip_address(a).version == 4 else "AAAA"
                lines.append(f"{ns_name}. 3600 IN {kind} {a}")
    return lines


@app.command("init")
def init(domain: str = typer.Argument(..., help="the domain this DC serves, e.g. a.example"),
         address: str = typer.Option(..., "--address", "-a", help="the DC's public IPv4 or IPv6 address"),
         address6: str | None = typer.Option(None, "--address6", help="a second (IPv6) address of the DC"),
         ns_name: str | None = typer.Option(None, "--ns-name", help="the DC's name-server name (default dc.DOMAIN)"),
         database: str = typer.Option("/var/lib/ntmobile/dc.sqlite", "--database", help="registry file"),
         out: Path = typer.Option(Path("dc.toml"), "--out", "-o", help="where to write the configuration"),
         force: bool = typer.Option(False, "--force", help="overwrite an existing configuration file"),
         ) -> None:
    """Write a DC configuration for DOMAIN and print the records its parent zone must publish."""
    from pydantic import ValidationError

    from ntmobile.runtime.config import ConfigError, DcSettings, dump

    if out.exists() and not force:
        fail(f"{out} exists: pass --force to overwrite it, or --out another file")
    try:
        settings = DcSettings(domain=domain, address=address, database=database, ns_name=ns_name,
                              ns_addresses=[address, *([address6] if address6 else [])])
    except ValidationError as exc:
        err = exc.errors()[0]
        fail(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}")
    try:
        dump(settings, out)
    except ConfigError as exc:
        fail(f"cannot write {out}: {exc}")
    typer.echo(f"wrote {out} (DC for {settings.domain} at {settings.address}, signalling UDP {settings.port}, "
               f"DNS {settings.dns_port})", err=True)
    typer.echo(f"; Publish in the parent zone of {settings.domain}:")
    for line in delegation(settings):
        typer.echo(line)
    typer.echo(f"; Then start it (as root): ntm dc run -c {out}")
    typer.echo(f"; Check from anywhere: dig {settings.domain} TXT   (the \"v=ntm1; dc=...\" marker)")


def _enroll(config: Path, name: str, out: Path | None, role: Role, client_id: str | None = None) -> None:
    from ntmobile.runtime.config import ConfigError, dump
    from ntmobile.runtime.enroll import enroll

    settings = _settings(config)
    if out is not None and str(out) != "-":
        from ntmobile.runtime.private import PrivateFileError, private_dir

        try:  # before the registry changes: a refused directory leaves nothing enrolled
            private_dir(out.parent)
        except PrivateFileError as exc:
            fail(f"cannot write credentials there: {exc}")
    try:
        creds = enroll(settings, name, role, client_id=bytes.fromhex(client_id) if client_id else None)
    except StoreError as exc:
        fail(f"cannot enrol {name}: {exc}")
    if out is None or str(out) == "-":
        import tomli_w

        sys.stdout.write(tomli_w.dumps(creds.model_dump()))
    else:
        try:
            dump(creds, out)
        except ConfigError as exc:
            fail(f"enrolled {creds.name}, but cannot write its credentials: {exc}")
        typer.echo(f"enrolled {creds.name} ({creds.role}, id {creds.client_id}); credentials in {out}", err=True)


@app.command("enroll")
def enroll_node(name: str = typer.Argument(..., help="node name, e.g. mn or mn.a.example"),
                config: Path = ConfigOpt,
                out: Path | None = typer.Option(None, "--out", "-o", help="write the credentials here (mode 600)"),
                token: bool = typer.Option(False, "--token", help="print a one-line join token for `ntm node join` "
                                           "instead (single use; the node gets its credentials from the DC)"),
                expires: int = typer.Option(3600, "--expires", min=60, max=30 * 86400,
                                            help="seconds the token stays valid"),
                ) -> None:
    """Issue a node's credentials (or a join token). Without them a node cannot register."""
    if not token:
        _enroll(config, name, out, Role.NODE)
        return
    from ntmobile.runtime.join import JoinError, issue_token

    settings = _settings(config)
    try:
        full, text = issue_token(settings, name, lifetime=expires)
    except (JoinError, StoreError) as exc:
        fail(f"cannot issue a token for {name}: {exc}")
    typer.echo(text)
    typer.echo(f"token for {full}, valid {expires} s, single use: on the node run `ntm node join TOKEN`", err=True)


@app.command("enroll-rs")
def enroll_rs(name: str = typer.Argument(..., help="relay server name, e.g. rs1"), config: Path = ConfigOpt,
              out: Path | None = typer.Option(None, "--out", "-o"),
              rs_id: str | None = typer.Option(None, "--id", help="reuse this 16-hex-digit relay ID (a relay "
                                               "serving several DCs keeps one ID)")) -> None:
    """Issue a relay server's credentials for this DC."""
    if rs_id is not None and (len(rs_id) != 16 or any(c not in "0123456789abcdef" for c in rs_id)):
        fail("--id must be 16 lowercase hex digits")
    _enroll(config, name, out, Role.RELAY, rs_id)


@app.command("status")
def status(control: str = typer.Option("ntm-dc", help="control socket name"),
           as_json: bool = typer.Option(False, "--json")) -> None:
    """Show the running DC's sessions, paths and recent decisions."""
    st = daemon_status(control, as_json)
    if st is None:
        return
    from rich.console import Console
    from rich.table import Table

    con = Console()
    con.print(f"DC [bold]{st['domain']}[/] id {st['dc_id']} at {st['address']}:{st['port']}, {st['paths']} paths")
    if (line := handler_errors_line(st)) is not None:
        con.print(line)
    t = Table("name", "role", "VIP4", "VIP6", "endpoint", "NAT", "load")
    for s in st["sessions"]:
        t.add_row(s["name"], s["role"], s["vip4"] or "", s["vip6"] or "", f"{s['endpoint'][0]}:{s['endpoint'][1]}",
                  s.get("nat_class", s["nat"]), str(s["load"]))
    con.print(t)
    for d in st["decisions"][-5:]:
        con.print(f"{d['node']} -> {d['fqdn']}: {d['status']} {d['mode'] or ''} {d['rs'] or ''}")


add_install_service(app, "dc")

def register(root: typer.Typer) -> None:
    root.add_typer(app, name="dc")
