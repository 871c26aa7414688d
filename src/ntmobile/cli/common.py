"""Helpers shared by CLI commands: one-line errors that say what to fix."""

from __future__ import annotations

import os
import sys
from typing import NoReturn


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one line to stderr (prefixed with `ntm: `) and exit."""
    print(f"ntm: {message}", file=sys.stderr)
    raise SystemExit(code)


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        fail(f"{what} needs root (network namespaces, TUN devices, nftables): run it with sudo or as root")
