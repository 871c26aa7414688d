"""Registry of ntmobile daemon kinds the lab can start (`[[hosts.daemons]] kind = "..."`).

A kind maps to a builder: given a DaemonContext (the lab, the host, the host's working dir and the
topology's daemon spec) it returns a DaemonLaunch (argv, config files to write, ports to wait for, and optionally a
status check on its control socket that says when it is ready for use).
Code adds kinds with `register_daemon_kind("dc", build_dc)`. The modules listed in KIND_MODULES are
imported (once) the first time an unregistered kind is looked up, so that the project's own kinds
are available to `ntm lab up` without an explicit import; a listed module that does not exist is
skipped.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .topology import DaemonSpec

if TYPE_CHECKING:
    from .lab import Lab


@dataclass(frozen=True)
class DaemonContext:
    lab: Lab
    host: str
    workdir: Path
    spec: DaemonSpec


@dataclass(frozen=True)
class DaemonLaunch:
    argv: list[str]
    files: dict[Path, str] = field(default_factory=dict)  # written before the start
    ready_tcp: tuple[int, ...] = ()  # the daemon is up when these ports listen in its namespace
    ready_udp: tuple[int, ...] = ()
    #: Then, if set, the lab asks this control socket (in the host's namespace) for ``status`` until
    #: ``ready_when(reply)`` holds: e.g. a node is ready once it is registered with its DC.
    ready_control: str | None = None
    ready_when: Callable[[dict[str, Any]], bool] | None = None


DaemonBuilder = Callable[[DaemonContext], DaemonLaunch]

_KINDS: dict[str, DaemonBuilder] = {}

KIND_MODULES: list[str] = ["ntmobile.lab.ntm", "ntmobile.lab.rspair"]
_kind_modules_loaded = False


def _load_kind_modules() -> None:
    global _kind_modules_loaded
    if _kind_modules_loaded:
        return
    _kind_modules_loaded = True
    for name in KIND_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise RuntimeError(f"daemon kinds module {name}: {e}") from e
        except Exception as e:
            raise RuntimeError(f"daemon kinds module {name} failed to import: {e}") from e


def register_daemon_kind(kind: str, builder: DaemonBuilder, *, replace: bool = False) -> None:
    if kind in _KINDS and not replace:
        raise ValueError(f"daemon kind {kind!r} is already registered")
    _KINDS[kind] = builder


def daemon_kinds() -> list[str]:
    _load_kind_modules()
    return sorted(_KINDS)


def daemon_builder(kind: str) -> DaemonBuilder | None:
    if kind not in _KINDS:
        _load_kind_modules()
    return _KINDS.get(kind)


def unregister_daemon_kind(kind: str) -> None:
    _KINDS.pop(kind, None)
