"""`ntm node` (run an NTM node) and `ntm status` (what the node in this network namespace is doing)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

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
           as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
           wide: bool = typer.Option(False, "--wide", "-w", help="every column (peer VIPs, endpoint, exact bytes), "
                                     "however wide the terminal")) -> None:
    """Show the node's registration, VIPs and paths (peer, mode and relay, state, bytes, age; --wide: more)."""
    st = daemon_status(control, as_json)
    if st is None:
        return
    sys.stdout.write(render_status(st, wide=wide))


def human_bytes(n: int) -> str:
    """1234567 -> "1.2M" (at most 5 characters)."""
    v = float(n)
    for unit in ("", "k", "M", "G", "T"):
        if v < 1000 or unit == "T":
            return f"{int(v)}" if not unit else f"{v:.1f}{unit}" if v < 100 else f"{int(v)}{unit}"
        v /= 1000
    return str(n)


def mode_text(p: dict[str, Any]) -> str:
    """A path's mode for ``ntm status``: with its relay, and for NAT traversal (issue 16) whether a
    DIRECT path was punched, the candidate an RS_S path is trying, or why it is relayed."""
    mode = str(p["mode"])
    tr = p.get("traversal")
    if mode == "DIRECT":
        return mode + (" (punched)" if tr and tr.get("state") == "direct" else "")
    text = mode + (f" via {p['rs']}" if p.get("rs") else "")
    if mode != "RS_S" or not tr:
        return text  # (no punch offered: the DC's decision evidence says why, `ntm dc status`)
    cand = tr.get("candidate")
    if tr.get("state") == "probing" and cand:
        return text + f" (trying {cand[0]}:{cand[1]})"
    return text + f" ({tr.get('reason')})"


def render_status(st: dict[str, Any], *, wide: bool = False, width: int | None = None) -> str:
    """The node's status as text for a terminal of ``width`` columns (the terminal's, COLUMNS): every
    peer's name and mode are always shown whole (a long name wraps); --wide adds the peer VIPs, the
    endpoint and exact byte counts and ignores the width."""
    import io

    from rich.console import Console
    from rich.table import Table

    out = io.StringIO()
    con = Console(file=out, width=200 if wide else width, force_terminal=False, color_system=None,
                  highlight=False)
    reg = "registered" if st["registered"] else "NOT registered"
    con.print(f"[bold]{st['name']}[/] {reg} with DC {st['dc']['address']}:{st['dc']['port']} ({st['dc']['domain']})")
    obs = st.get("observed")
    con.print(f"  VIPs {st['vip4']} {st['vip6']}")
    con.print(f"  observed {f'{obs[0]}:{obs[1]}' if obs else '-'}  NAT {st['nat']}  keepalive {st['keepalive']}s  "
              f"TUN {st['tun']}")
    if st.get("error"):
        con.print(f"  [red]{st['error']}[/]")
    if (line := handler_errors_line(st)) is not None:
        con.print(line)
    metrics = st.get("metrics") or {}
    if metrics.get("error"):
        con.print(f"  [yellow]{metrics['error']}[/]")
    if wide:
        t = Table("peer", "peer VIPs", "mode", "RS", "endpoint", "tx bytes", "rx bytes", "age s", "state")
        for p in st["paths"]:
            ep = p["endpoint"]
            # a punched path's relay is its standby leg (the RS column says so), not where data goes
            tr = p.get("traversal") or {}
            punched = p["mode"] == "DIRECT" and tr.get("state") == "direct"
            rs = f"{p['rs']} ({tr.get('relay_leg') or 'standby'})" if punched and p["rs"] else p["rs"] or "-"
            t.add_row(str(p["peer"]), " ".join(v for v in (p["peer_vip4"], p["peer_vip6"]) if v),
                      "DIRECT (punched)" if punched else p["mode"], rs, f"{ep[0]}:{ep[1]}" if ep else "-",
                      str(p["tx_bytes"]), str(p["rx_bytes"]), str(p["age"]), "up" if p["established"] else "setting up")
    else:
        t = Table(box=None, pad_edge=False)
        t.add_column("peer", overflow="fold", ratio=1, min_width=12)
        t.add_column("mode", no_wrap=True)
        t.add_column("state", no_wrap=True)
        for h in ("tx", "rx", "age s"):
            t.add_column(h, no_wrap=True, justify="right")
        for p in st["paths"]:
            mode = mode_text(p)
            t.add_row(str(p["peer"]), mode, "up" if p["established"] else "setting up", human_bytes(p["tx_bytes"]),
                      human_bytes(p["rx_bytes"]), f"{float(p['age']):.0f}")
    con.print(t)
    return out.getvalue()


def ping(name: str = typer.Argument(..., help="an NTM peer's or a general node's name"),
         count: int = typer.Option(4, "--count", "-c", help="probes to send (0: until interrupted)"),
         interval: float = typer.Option(1.0, "--interval", "-i", help="seconds between probes"),
         until_direct: bool = typer.Option(False, "--until-direct", help="keep probing until the path is DIRECT "
                                           "(at most --count probes unless --count 0)"),
         control: str = typer.Option("ntm-node", help="control socket name of the node daemon"),
         as_json: bool = typer.Option(False, "--json", help="one JSON object per probe, then the summary")) -> None:
    """Probe the path to NAME (set up through the node if needed): mode, relay and RTT of each probe."""
    import json
    import time

    from ntmobile.runtime.control import query

    if interval < 0 or count < 0:
        fail("--count and --interval must not be negative")
    sent = 0
    rtts: list[float] = []
    modes: list[str] = []
    try:
        while count == 0 or sent < count:
            if sent:
                time.sleep(interval)
            sent += 1
            try:
                r = query(control, "ping", timeout=15.0, target=name)
            except ConnectionError as exc:
                fail(str(exc))
            if as_json:
                print(json.dumps(r))
            if r.get("rtt_ms") is not None:
                rtts.append(float(r["rtt_ms"]))
            if r.get("mode"):
                modes.append(str(r["mode"]))
            if not as_json:
                print(_probe_line(sent, r))
            if until_direct and r.get("mode") == "DIRECT" and r.get("rtt_ms") is not None:
                break
    except KeyboardInterrupt:
        pass
    summary = {"name": name, "sent": sent, "answered": len(rtts), "modes": sorted(set(modes)),
               "min_ms": min(rtts) if rtts else None, "avg_ms": round(sum(rtts) / len(rtts), 3) if rtts else None,
               "max_ms": max(rtts) if rtts else None, "direct": bool(modes) and modes[-1] == "DIRECT"}
    if as_json:
        print(json.dumps({"summary": summary}))
    else:
        line = f"--- {name}: {sent} probes, {len(rtts)} answered"
        if rtts:
            line += f", rtt min/avg/max {summary['min_ms']:.2f}/{summary['avg_ms']:.2f}/{summary['max_ms']:.2f} ms"
        print(line + (f", last mode {modes[-1]}" if modes else ""))
    if not rtts or (until_direct and not summary["direct"]):
        raise SystemExit(1)


def _probe_line(n: int, r: dict[str, object]) -> str:
    if r.get("error") and r.get("rtt_ms") is None and not r.get("mode"):
        return f"probe {n}: {r.get('name')}: {r['error']}"
    mode = str(r.get("mode"))
    # a punched DIRECT path keeps its relay leg as a standby: the probe went direct, not via it
    via = f" via {r['rs']}" if r.get("rs") and mode != "DIRECT" else ""
    ep = r.get("endpoint")
    at = f" {ep[0]}:{ep[1]}" if isinstance(ep, list) else ""
    vip = r.get("peer_vip4") or r.get("peer_vip6") or "-"
    got = r.get("rtt_ms")
    rtt = f"rtt {float(got):.2f} ms" if isinstance(got, int | float) else f"no answer ({r.get('error', 'lost')})"
    peer = r.get("peer_rtt_ms")
    if isinstance(got, int | float) and "peer_rtt_ms" in r:
        rtt += f", peer {float(peer):.2f} ms" if isinstance(peer, int | float) else ", peer no echo"
    return f"probe {n}: {r.get('name')} ({vip}) {mode}{via}{at} {rtt}"


def netcheck(control: str = typer.Option("ntm-node", help="control socket name of the node daemon"),
             as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """What the node knows of its network: endpoints, the NAT as the DC classified it, DC and relay RTTs."""
    import json

    from ntmobile.runtime.control import query

    try:
        r = query(control, "netcheck", timeout=10.0)
    except ConnectionError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps(r, indent=2))
        return
    if r.get("error"):
        fail(str(r["error"]))

    def ms(v: object) -> str:
        return f"{float(v):.2f} ms" if isinstance(v, int | float) else "no answer"

    print(f"{r['name']}: {'registered' if r['registered'] else 'NOT registered'}")
    print("  local endpoints: " + (", ".join(f"{a}:{p}" for a, p in r["local_endpoints"]) or "none"))
    obs = r.get("observed")
    print(f"  observed by the DC: {f'{obs[0]}:{obs[1]}' if obs else '-'}   NAT: {r.get('nat') or '-'}")
    dc = r["dc"]
    print(f"  DC {dc['address']}:{dc['port']}: {ms(dc['rtt_ms'])}")
    udp = r["udp"]
    inbound = {True: "yes", False: "no (filtered)", None: "unknown"}[udp["unsolicited_inbound"]]
    print(f"  UDP: to the DC {'yes' if udp['to_dc'] else 'no'}; unsolicited inbound {inbound}")
    if not r["relays"]:
        print("  relays: none in use (relays are probed through the node's relayed paths)")
    for rel in r["relays"]:
        ep = rel.get("endpoint")
        print(f"  relay {rel['name']}{f' {ep[0]}:{ep[1]}' if ep else ''}: {ms(rel['rtt_ms'])} ({rel['paths']} path(s))")


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
    root.command("ping")(ping)
    root.command("netcheck")(netcheck)
