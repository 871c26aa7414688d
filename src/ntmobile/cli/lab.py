"""`ntm lab`: bring the network-namespace lab up and down, run commands in it, move hosts."""

from __future__ import annotations

import json
import os
import shutil
import sys

import typer

from ntmobile.cli.common import fail, require_root

lab_app = typer.Typer(name="lab", help="The network-namespace lab (see docs/lab.md).", no_args_is_help=True)

NAME_HELP = "Lab name: prefix of its namespaces and files (1-8 lowercase letters/digits); default: $NTM_LAB, else ntm."


def _pairs(values: list[str], what: str) -> dict[str, str]:
    out = {}
    for v in values:
        key, sep, val = v.partition("=")
        if not sep or not key or not val:
            fail(f"{what} {v!r}: expected HOST=VALUE")
        out[key] = val
    return out


@lab_app.command("up")
def up(
    topology: str = typer.Argument(
        ..., help="Built-in topology (paper, nat, handover, rsnpair, replicas) or a TOML file."),
    name: str = typer.Option("ntm", "--name", "-n", envvar="NTM_LAB", help=NAME_HELP),
    bare: bool = typer.Option(False, "--bare", help="Do not start the topology's ntmobile daemons."),
    rate: float | None = typer.Option(None, "--rate", help="Rate limit (Mbit/s, tbf) on every link."),
    loss: float | None = typer.Option(None, "--loss", help="Random loss (percent, nft numgen) on every link."),
    nat: list[str] = typer.Option([], "--nat", help="ROUTER=PROFILE, e.g. nata=symmetric (repeatable)."),
    udp_timeout: list[str] = typer.Option([], "--udp-timeout", help="ROUTER=SECONDS conntrack UDP timeout."),
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON."),
    monitor: bool = typer.Option(False, "--monitor", help="Start Prometheus on a lab host, scraping every daemon "
                                 "(docs/lab.md, \"Monitoring\")."),
) -> None:
    """Bring a topology up: namespaces, links, NATs, DNS, GN servers (and daemons unless --bare)."""
    require_root("ntm lab up")
    from ntmobile.lab import NAT_PROFILES, Lab, LabError, TopologyError, load_topology

    try:
        topo = load_topology(topology)
        if rate is not None or loss is not None:
            topo = topo.with_links(rate_mbit=rate, loss_percent=loss)
        for router, profile in _pairs(nat, "--nat").items():
            if profile not in NAT_PROFILES:
                fail(f"--nat {router}={profile}: unknown profile (one of {', '.join(NAT_PROFILES)})")
            topo = topo.with_nat(router, profile)
        for router, secs in _pairs(udp_timeout, "--udp-timeout").items():
            if not secs.isdigit():
                fail(f"--udp-timeout {router}={secs}: seconds must be a positive integer")
            topo = topo.with_nat(router, udp_timeout=int(secs))
        lab = Lab.up(topo, prefix=name, bare=bare, monitor=monitor)
    except (LabError, TopologyError, KeyError) as e:
        fail(str(e).strip("'\""))
    if as_json:
        typer.echo(json.dumps(lab.status(), indent=2))
    else:
        _print_status(lab.status())


@lab_app.command("down")
def down(name: str = typer.Option("ntm", "--name", "-n", envvar="NTM_LAB", help=NAME_HELP)) -> None:
    """Tear a lab down: processes, namespaces, veths, nft tables, /etc/netns files, state."""
    require_root("ntm lab down")
    from ntmobile.lab import LabError, teardown

    try:
        removed = teardown(name)
    except LabError as e:
        fail(str(e))
    namespaces = [r for r in removed if not r.startswith("/")]
    typer.echo(f"lab {name}: removed {len(namespaces)} namespaces" if removed else f"lab {name}: nothing to remove")


@lab_app.command("exec")
def exec_(
    host: str = typer.Argument(..., help="Host name (mn, cn, gn, ...)."),
    cmd: list[str] = typer.Argument(..., metavar="-- CMD...", help="Command and arguments."),
    name: str = typer.Option("ntm", "--name", "-n", envvar="NTM_LAB", help=NAME_HELP),
) -> None:
    """Run a command in a lab host (its namespace, resolv.conf and ssh config)."""
    require_root("ntm lab exec")
    from ntmobile.lab import Lab, LabError

    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        fail("ntm lab exec HOST -- CMD...: no command given")

    try:
        ns = Lab.attach(name).ns(host)
    except (LabError, KeyError) as e:
        fail(str(e).strip("'\""))
    if shutil.which(cmd[0]) is None and not os.path.exists(cmd[0]):
        fail(f"{cmd[0]}: command not found")
    os.execvp("ip", ["ip", "netns", "exec", ns, *cmd])


@lab_app.command("status")
def status(
    name: str = typer.Option("ntm", "--name", "-n", envvar="NTM_LAB", help=NAME_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Hosts, addresses, NAT profiles, running services of a lab."""
    require_root("ntm lab status")
    from ntmobile.lab import Lab, LabError

    try:
        st = Lab.attach(name).status()
    except LabError as e:
        fail(str(e))
    if as_json:
        typer.echo(json.dumps(st, indent=2))
    else:
        _print_status(st)


@lab_app.command("move")
def move(
    host: str = typer.Argument(..., help="The host to move (e.g. mn)."),
    network: str = typer.Argument(..., help="Target link/network (e.g. neta, netb, global)."),
    name: str = typer.Option("ntm", "--name", "-n", envvar="NTM_LAB", help=NAME_HELP),
) -> None:
    """Move a host to another access network: old leg down, new leg up with address and route."""
    require_root("ntm lab move")
    from ntmobile.lab import Lab, LabError

    try:
        lab = Lab.attach(name)
        lab.move(host, network)
    except (LabError, KeyError) as e:
        fail(str(e).strip("'\""))
    addrs = [lab.addr(host, 4)]
    try:
        addrs.append(lab.addr(host, 6))
    except LabError:
        pass
    typer.echo(f"{host} is on {lab.network_of(host)}: {' '.join(addrs)}")


def _print_status(st: dict[str, object]) -> None:
    from rich.console import Console
    from rich.table import Table

    hosts = st["hosts"]
    procs = st["processes"]
    assert isinstance(hosts, dict) and isinstance(procs, list)
    t = Table(title=f"lab {st['prefix']} (topology {st['topology']}, up in {st['up_seconds']} s)")
    for col in ("host", "network", "addresses", "NAT", "DNS names", "running"):
        t.add_column(col)
    for hname, h in hosts.items():
        active = [ln for ln in h["links"] if ln["active"]]
        addrs = "\n".join(f"{ln['name']}: {ln['ipv4']}" + (f" {ln['ipv6']}" if ln["ipv6"] else "")
                          for ln in active)
        nat = h["nat"]
        natcol = ""
        if nat:
            natcol = nat["profile"] + (f" udp_timeout={nat['udp_timeout']}" if nat["udp_timeout"] else "")
        running = " ".join(f"{p['name']}({p['pid']})" + ("" if p["alive"] else "!dead")
                           for p in procs if p["host"] == hname)
        others = [ln["name"] for ln in h["links"] if not ln["active"]]
        net = str(h["network"]) + (f" (can move: {', '.join(others)})" if others else "")
        t.add_row(hname, net, addrs, natcol, " ".join(h["dns_names"]), running)
    c = Console(width=None if sys.stdout.isatty() else 160)
    c.print(t)
    if st.get("monitor"):
        c.print(f"Prometheus: {st['monitor']} (from the lab hosts; e.g. ntm lab exec mn -- curl "
                f"'{st['monitor']}/api/v1/query?query=up')")
    big = st.get("big_file")
    if isinstance(big, dict):
        c.print(f"GN big file: http://www.gn.example{big['url_path']} and ftp://ftp.gn.example/{big['url_path'][1:]}"
                f"  {big['size']} bytes  sha256 {big['sha256']}")
    c.print(f"resolver: {' '.join(st['resolver'])}   ssh key: {st['client_key']}")  # type: ignore[arg-type]


def register(app: typer.Typer) -> None:
    app.add_typer(lab_app, name="lab")
