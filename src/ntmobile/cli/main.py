"""The `ntm` command. Each module in this package that defines `register(app)` adds its commands."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import typer

from ntmobile import __version__

app = typer.Typer(
    name="ntm",
    help="ntmobile: NTMobile (Network Traversal with Mobility) nodes, DCs, relay servers and a lab.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def version() -> None:
    """Print the ntmobile version."""
    typer.echo(__version__)


def _register_all() -> None:
    import ntmobile.cli as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name in {"main", "common"}:
            continue
        mod = importlib.import_module(f"ntmobile.cli.{info.name}")
        register = getattr(mod, "register", None)
        if register is not None:
            register(app)


_register_all()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
