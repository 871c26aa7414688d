"""The node's hold on the host's name resolution: which mechanism (``dns_integration``), the stub's upstream
servers when none are configured, and putting everything back when the node stops.

``auto`` (the default) uses systemd-resolved when it is in charge of the host's resolv.conf, else
rewrites resolv.conf; ``resolved`` and ``resolv.conf`` force one; ``none`` leaves the host alone (the
lab writes its hosts' resolv.conf itself). docs/operations.md, "The host's DNS".
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ntmobile.osops.resolver import RESOLVED_RUN, ResolvConf, ResolvedLink, ResolverError, resolved_in_charge

log = logging.getLogger("ntmobile.node")

#: Addresses that lead back to a local stub resolver (ours, or systemd-resolved's): never an upstream.
_LOCAL_STUBS = {"127.0.0.53", "127.0.0.54"}


def nameservers(path: Path) -> list[str]:
    """The ``nameserver`` addresses of a resolv.conf-format file ([] if it cannot be read)."""
    out = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    for ln in lines:
        parts = ln.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                out.append(str(ipaddress.ip_address(parts[1].split("%")[0])))
            except ValueError:
                continue
    return out


@dataclass
class HostDns:
    mode: str
    stub: str
    #: The host's resolvers as they were before the node took over (the stub's upstream by default).
    upstream: list[str] = field(default_factory=list)
    _resolv: ResolvConf | None = None
    _link: ResolvedLink | None = None

    def revert(self) -> None:
        """Put the host's resolver settings back (idempotent). ResolverError (one line) if it cannot."""
        if self._link is not None:
            link, self._link = self._link, None
            link.revert()
        if self._resolv is not None:
            resolv, self._resolv = self._resolv, None
            resolv.revert()


def take_host_dns(mode: str, *, stub: str, tun: str, domains: list[str], resolv_conf: Path,
                  state_dir: Path) -> HostDns:
    """Point the host at the node's stub ``stub`` by ``mode``. ResolverError (one line) if it cannot;
    a resolv.conf left behind by a node that died is restored first, whatever the mode."""
    resolv = ResolvConf(resolv_conf, state_dir / "resolv.conf.ntm-backup")
    if resolv.recover():
        log.warning("restored %s, which a node that did not stop cleanly had left pointing at its stub",
                    resolv_conf)
    if mode == "auto":
        mode = "resolved" if resolved_in_charge(resolv_conf) else "resolv.conf"
    host = HostDns(mode, stub)
    if mode == "none":
        host.upstream = [a for a in nameservers(resolv_conf) if a != stub and a not in _LOCAL_STUBS]
        return host
    if mode == "resolved":
        # resolved's own list of the upstream servers (not its stub): our link's "~." must not loop back.
        host.upstream = [a for a in nameservers(RESOLVED_RUN / "resolv.conf") if a != stub and a not in _LOCAL_STUBS]
        link = ResolvedLink(tun)
        link.apply([stub], domains)
        host._link = link
        return host
    if mode == "resolv.conf":
        host.upstream = [a for a in nameservers(resolv_conf) if a != stub and a not in _LOCAL_STUBS]
        resolv.apply([stub])
        host._resolv = resolv
        return host
    raise ResolverError(f"dns_integration: unknown mode {mode!r} (auto, resolved, resolv.conf or none)")
