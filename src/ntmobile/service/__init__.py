"""The systemd units of the three daemons (ntm-dc, ntm-rs, ntm-node), shipped in the package, and the
capabilities each daemon runs with instead of full root: ``render_unit`` fills a template in,
``capabilities`` reads a unit's CapabilityBoundingSet (the lab runs daemons with exactly that set)."""

from __future__ import annotations

import shlex
from importlib import resources

KINDS = ("dc", "rs", "node")


def template(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"no unit for {kind!r} (one of {', '.join(KINDS)})")
    return resources.files("ntmobile.service").joinpath(f"ntm-{kind}.service").read_text()


def capabilities(kind: str) -> list[str]:
    """The capabilities the unit of ``kind`` leaves the daemon (CapabilityBoundingSet), e.g. CAP_NET_ADMIN."""
    for line in template(kind).splitlines():
        if line.startswith("CapabilityBoundingSet="):
            return line.split("=", 1)[1].split()
    raise ValueError(f"ntm-{kind}.service has no CapabilityBoundingSet")


def render_unit(kind: str, ntm: str, config: str) -> str:
    """The unit for ``kind`` running the ``ntm`` command at that absolute path with ``config``."""
    return template(kind).replace("@NTM@", shlex.quote(ntm)).replace("@CONFIG@", shlex.quote(config))


def setpriv_argv(kind: str) -> list[str]:
    """A command prefix that runs a daemon as the unit would, capability-wise (no systemd needed):
    root's uid, but only the unit's capabilities, and no way to gain others."""
    caps = ",".join("+" + c.lower().removeprefix("cap_") for c in capabilities(kind))
    return ["setpriv", f"--bounding-set=-all,{caps}", "--inh-caps=-all", "--no-new-privs", "--"]
