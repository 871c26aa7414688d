"""`ntm bench`: measurements in the lab (results as JSON and markdown under artifacts/)."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import fail, require_root

app = typer.Typer(help="Benchmarks, run in the lab (need root).", no_args_is_help=True)


@app.command("handover")
def handover(moves: int = typer.Option(20, "--moves", min=1, help="moves of mn per path type"),
             path_types: str = typer.Option("rs-n,direct", "--paths",
                                            help="comma-separated path types: rs-n (to the GN), direct (to cn)"),
             name: str = typer.Option("hob", "--name", help="lab name prefix"),
             attach: bool = typer.Option(False, "--attach", help="use the running handover lab NAME (left up)"),
             dwell: float = typer.Option(0.6, "--dwell", help="seconds of traffic on each network after recovery"),
             out: Path = typer.Option(Path("artifacts"), "--out", help="directory for the JSON and markdown")) -> None:
    """Move mn between NAT A, NAT B and a global address while a 10 ms UDP probe stream (and, via
    RS-N, a checksummed TCP download) runs through the tunnel; report the gap from the new address
    being configured to the first probe delivered, and the probes lost (median and max)."""
    require_root("ntm bench handover")
    from ntmobile.bench.handover import PATH_TYPES, run_bench, to_markdown

    wanted = [p.strip() for p in path_types.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in PATH_TYPES]
    if unknown or not wanted:
        fail(f"unknown path type {', '.join(unknown) or '(none)'}; choose from {', '.join(PATH_TYPES)}")
    from ntmobile.lab import LabError

    try:
        report = run_bench(moves=moves, path_types=wanted, prefix=name, attach=attach, out_dir=out, dwell=dwell,
                           log=typer.echo)
    except LabError as exc:
        fail(str(exc))
    typer.echo(to_markdown(report))
    typer.echo(f"written: {out / 'bench-handover.json'}, {out / 'bench-handover.md'}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="bench")
