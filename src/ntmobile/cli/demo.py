"""`ntm demo`: the paper's scenarios, live, on one machine."""

from __future__ import annotations

import typer

from .common import require_root


def demo(keep: bool = typer.Option(False, "--keep", help="leave the labs up for `ntm lab exec`"),
         name: str = typer.Option("demo", "--name", help="lab name prefix")) -> None:
    """Build the lab, start DCs, DNS, relays and nodes, and show NTMobile at work (needs root)."""
    require_root("ntm demo")
    from ntmobile.demo import run_demo

    raise SystemExit(run_demo(keep=keep, prefix=name))


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
