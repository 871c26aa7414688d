"""`ntm bench`: measurements in the lab (results as JSON and markdown under artifacts/)."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import typer

from .common import fail, require_root

app = typer.Typer(help="Benchmarks, run in the lab (need root).", no_args_is_help=True)


def _chosen(value: str, known: Collection[str], what: str) -> list[str]:
    """The comma-separated names of ``value``, each one of ``known`` (else one line and exit)."""
    wanted = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in wanted if v not in known]
    if bad or not wanted:
        fail(f"unknown {what} {', '.join(bad) or '(none)'}; choose from {', '.join(known)}")
    return wanted


@app.command("handover")
def handover(moves: int = typer.Option(20, "--moves", min=1, help="moves of mn per path type"),
             path_types: str = typer.Option("rs-n,direct,rs-s,nebula", "--paths",
                                            help="comma-separated path types: rs-n (to the GN), direct (to cn), "
                                                 "rs-s (to cn behind NAT B), nebula (Nebula mn -> cn, "
                                                 "beside direct)"),
             name: str = typer.Option("hob", "--name", help="lab name prefix"),
             attach: bool = typer.Option(False, "--attach", help="use the running handover lab NAME (left up)"),
             dwell: float = typer.Option(0.6, "--dwell", help="seconds of traffic on each network after recovery"),
             out: Path = typer.Option(Path("artifacts"), "--out", help="directory for the JSON and markdown")) -> None:
    """Move mn between NAT A, NAT B and a global address while a 10 ms UDP probe stream (and, via
    RS-N, a checksummed TCP download) runs through the tunnel; report the gap from the new address
    being configured to the first probe delivered, and the probes lost (median and max)."""
    require_root("ntm bench handover")
    from ntmobile.bench.handover import PATH_TYPES, run_bench, to_markdown

    wanted = _chosen(path_types, PATH_TYPES, "path type")
    from ntmobile.lab import LabError

    try:
        report = run_bench(moves=moves, path_types=wanted, prefix=name, attach=attach, out_dir=out, dwell=dwell,
                           log=typer.echo)
    except LabError as exc:
        fail(str(exc))
    typer.echo(to_markdown(report))
    typer.echo(f"written: {out / 'bench-handover.json'}, {out / 'bench-handover.md'}")


@app.command("throughput")
def throughput(runs: int = typer.Option(10, "--runs", min=1, help="runs per mode and link condition"),
               seconds: float = typer.Option(10, "--seconds", min=1, help="seconds per iperf3 run"),
               conditions: str = typer.Option("100mbit,unlimited,punched", "--links",
                                              help="comma-separated link conditions: 100mbit, unlimited, "
                                              "punched (unlimited, NAT traversal on: ntm-punched)"),
               modes: str = typer.Option(",".join(("veth", "ntm-direct", "ntm-rs-n", "ntm-rs-s", "wireguard-go",
                                                   "openvpn", "nebula", "nebula-relay", "ntm-direct-v4",
                                                   "ntm-rs-n-v4", "ntm-punched")), "--modes",
                                         help="comma-separated modes (the -v4 ones run on 100mbit links only)"),
               name: str = typer.Option("tput", "--name", help="lab name prefix (one lab per condition)"),
               out: Path = typer.Option(Path("artifacts"), "--out", help="directory for JSON, markdown, PNG")) -> None:
    """Paper Table 2: iperf3 TCP from mn, direct NTM tunnel vs through RS-N (and RS-S), beside plain
    veth, wireguard-go and OpenVPN on the same topology, on 100 Mbit/s and unlimited links."""
    require_root("ntm bench throughput")
    from ntmobile.bench.throughput import CONDITIONS, MODES, run_bench, to_markdown

    wanted = [m.strip() for m in modes.split(",") if m.strip()]
    conds = [c.strip() for c in conditions.split(",") if c.strip()]
    bad = [m for m in wanted if m not in MODES] + [c for c in conds if c not in CONDITIONS]
    if bad or not wanted or not conds:
        fail(f"unknown mode or link condition: {', '.join(bad) or '(none)'}")
    from ntmobile.lab import LabError

    try:
        report = run_bench(runs=runs, seconds=seconds, conditions=conds, modes=wanted, prefix=name, out_dir=out,
                           log=typer.echo)
    except (LabError, RuntimeError) as exc:
        fail(str(exc))
    typer.echo(to_markdown(report))
    typer.echo(f"written: {out / 'bench-throughput.json'}, {out / 'bench-throughput.md'}, "
               f"{out / 'bench-throughput.png'}")


@app.command("relay-scale")
def relay_scale(paths: int = typer.Option(10000, "--paths", min=1, help="RS-N paths in the Relay Table"),
                out: Path = typer.Option(Path("artifacts"), "--out", help="directory for JSON and markdown")) -> None:
    """Fill a relay's Relay Table with PATHS RS-N paths through the real DC signalling (in memory, no
    network) and report the relay process's resident memory (target: <= 64 MiB for 10,000)."""
    from ntmobile.bench.relay_scale import run_bench as run_scale
    from ntmobile.bench.relay_scale import to_markdown as scale_md

    report = run_scale(paths=paths, out_dir=out, log=typer.echo)
    typer.echo(scale_md(report))


@app.command("fuzz")
def fuzz(count: int = typer.Option(1_000_000, "--count", min=1, help="datagrams per UDP port"),
         tcp_count: int | None = typer.Option(None, "--tcp-count", help="DNS-over-TCP connections "
                                                 "(default: count / 10)"),
         seed: int = typer.Option(8, "--seed"),
         lab: bool = typer.Option(False, "--lab", help="every daemon port of a nat lab (DC, DNS, relay, node, "
                                  "node DNS stub; needs root) instead of a DC on loopback"),
         out: Path = typer.Option(Path("artifacts"), "--out", help="directory for JSON and markdown")) -> None:
    """Hostile input: seeded random and mutated datagrams (from real captured ones) to a real DC
    daemon on loopback (signalling port, DNS over UDP and TCP); reports rates, RSS before and after,
    and the daemon's counters against what was sent. The cores' in-memory fuzz runs in CI."""
    import json

    from ntmobile.bench.fuzz import run_bench as run_fuzz
    from ntmobile.bench.fuzz import to_markdown as fuzz_md

    try:
        if lab:
            require_root("ntm bench fuzz --lab")
            from ntmobile.bench.fuzz import run_lab_bench
            from ntmobile.lab import LabError

            try:
                report = run_lab_bench(count, seed, log=typer.echo)
            except LabError as exc:
                fail(str(exc))
        else:
            report = run_fuzz(count, seed, tcp_count=tcp_count, log=typer.echo)
    except RuntimeError as exc:
        fail(str(exc))
    out.mkdir(parents=True, exist_ok=True)
    from ntmobile.bench.calibration import calibration_markdown, host_calibration

    report["calibration"] = host_calibration()
    (out / "bench-fuzz.json").write_text(json.dumps(report, indent=2))
    (out / "bench-fuzz.md").write_text(fuzz_md(report) + "\n" + calibration_markdown(report["calibration"]))
    typer.echo(fuzz_md(report))
    typer.echo(f"written: {out / 'bench-fuzz.json'}, {out / 'bench-fuzz.md'}")
    if not (report.get("alive") and report.get("registration_after") and report.get("dns_after")):
        fail("the DC did not survive the fuzz run (see the report)")


@app.command("control-plane")
def control_plane(nodes: int = typer.Option(100_000, "--nodes", min=1, help="simulated nodes to register"),
                  paths: int = typer.Option(10_000, "--paths", min=0, help="of them, nodes that set up an RS-N path"),
                  window: int = typer.Option(32, "--window", min=1, help="requests in flight at once"),
                  store: str = typer.Option("sqlite", "--store", help="sqlite (one DC) or postgresql (DC replicas "
                                            "on a PostgreSQL server started for the run, measured beside one "
                                            "SQLite DC in the same run)"),
                  replicas: int = typer.Option(2, "--replicas", min=1, max=8, help="DC replicas (--store postgresql)"),
                  out: Path = typer.Option(Path("artifacts"), "--out", help="directory for JSON and markdown")) -> None:
    """Many simulated nodes (sans-IO node cores in one process, real UDP on loopback, in a private
    network namespace) register and set up RS-N paths against a real DC daemon and a real relay
    core; reports messages/s, p50/p99 latency and the DC's memory per registered node. With
    ``--store postgresql`` the same load runs against one SQLite DC and then against REPLICAS DC
    replicas sharing a real PostgreSQL server, with the registrations/s ratio and the database
    round trips per registration."""
    require_root("ntm bench control-plane")
    import json

    from ntmobile.bench.control_plane import run_bench as run_cp
    from ntmobile.bench.control_plane import to_markdown as cp_md

    if paths > nodes:
        fail("--paths must not exceed --nodes")
    if store not in ("sqlite", "postgresql"):
        fail("--store is sqlite or postgresql")
    if store == "postgresql":
        from ntmobile.bench.calibration import calibration_markdown
        from ntmobile.bench.control_plane import compare_markdown, run_compare

        try:
            rep = run_compare(nodes, paths, window, replicas, log=typer.echo)
        except RuntimeError as exc:
            fail(str(exc))
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench-control-plane-postgresql.json").write_text(json.dumps(rep, indent=2))
        (out / "bench-control-plane-postgresql.md").write_text(compare_markdown(rep) + "\n"
                                                               + calibration_markdown(rep.get("calibration")))
        typer.echo(compare_markdown(rep))
        typer.echo(f"written: {out / 'bench-control-plane-postgresql.json'}, "
                   f"{out / 'bench-control-plane-postgresql.md'}")
        return
    try:
        report = run_cp(nodes, paths, window, log=typer.echo)
    except RuntimeError as exc:
        fail(str(exc))
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench-control-plane.json").write_text(json.dumps(report, indent=2))
    from ntmobile.bench.calibration import calibration_markdown

    (out / "bench-control-plane.md").write_text(cp_md(report) + "\n" + calibration_markdown(report.get("calibration")))
    typer.echo(cp_md(report))
    typer.echo(f"written: {out / 'bench-control-plane.json'}, {out / 'bench-control-plane.md'}")


@app.command("setup")
def setup(names: int = typer.Option(50, "--names", min=1, help="GN names to resolve (s1..sN.gn.example)"),
          peers: int = typer.Option(20, "--peers", min=1, help="fresh set-ups per NTM-peer case"),
          cases: str = typer.Option("gn,ntm-direct-local,nebula,ntm-rs-s,ntm-direct,ntm-symmetric", "--cases",
                                    help="comma-separated: gn, ntm-direct-local, nebula, ntm-rs-s (then punched: "
                                         "time to direct), ntm-direct, ntm-symmetric (NAT A symmetric: stays RS-S)"),
          name: str = typer.Option("setb", "--name", help="lab name prefix"),
          out: Path = typer.Option(Path("artifacts"), "--out", help="directory for JSON and markdown")) -> None:
    """Set-up time as the app sees it: from its DNS query to the node's stub to the answer (tunnel
    ready), p50/p95, for general nodes (RS-N) and NTM peers (direct and RS-S, same and other DC), then to
    the first reply (an ICMP echo) and, per NAT pair, the final mode and time to direct; Nebula's first
    packet to a never-contacted peer beside it; the daemons' debug timing trace (NTM_TRACE) gives each
    sample's timeline."""
    require_root("ntm bench setup")
    from ntmobile.bench.setup import CASES
    from ntmobile.bench.setup import run_bench as run_setup
    from ntmobile.bench.setup import to_markdown as setup_md
    from ntmobile.lab import LabError

    wanted = _chosen(cases, CASES, "case")
    try:
        report = run_setup(names=names, peers=peers, cases=wanted, prefix=name, out_dir=out, log=typer.echo)
    except (LabError, RuntimeError) as exc:
        fail(str(exc))
    typer.echo(setup_md(report))
    typer.echo(f"written: {out / 'bench-setup.json'}, {out / 'bench-setup.md'}")


@app.command("failover")
def failover(kills: int = typer.Option(10, "--kills", min=1, help="kill -9 of the active RS-N relay, per case"),
             cases: str = typer.Option("single,pair", "--cases",
                                       help="comma-separated: single (topology nat: the flow breaks, a new "
                                            "connection is timed), pair (topology rsnpair: the same flow)"),
             name: str = typer.Option("fob", "--name", help="lab name prefix (one lab per case: +s, +p)"),
             out: Path = typer.Option(Path("artifacts"), "--out", help="directory for JSON and markdown")) -> None:
    """An RS-N relay's death under a running ssh session from mn to the GN: kill -9 of the relay the
    path runs through, KILLS times per case (restarted between kills); the gap until traffic flows again
    (single relays: a new connection; an RS-N pair: the same session), when the node noticed and when its
    path ran via the other relay, median and max."""
    require_root("ntm bench failover")
    from ntmobile.bench.failover import CASES
    from ntmobile.bench.failover import run_bench as run_failover
    from ntmobile.bench.failover import to_markdown as failover_md
    from ntmobile.lab import LabError

    wanted = _chosen(cases, CASES, "case")
    try:
        report = run_failover(kills=kills, cases=wanted, prefix=name, out_dir=out, log=typer.echo)
    except (LabError, RuntimeError) as exc:
        fail(str(exc))
    typer.echo(failover_md(report))
    typer.echo(f"written: {out / 'bench-failover.json'}, {out / 'bench-failover.md'}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="bench")
