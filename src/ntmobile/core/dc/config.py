"""The DC's configuration (DcConfig): its domains, keys, peer DCs, probe endpoints and RS-N target
policy."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ntmobile.wire import DC_PORT, Endpoint


@dataclass(frozen=True, slots=True)
class DcConfig:
    domain: str
    dc_id: bytes
    keepalive: int = 15
    relay_keepalive: int = 5
    idle_timeout: int = 120
    #: Further domains this DC is authoritative for (one DC may serve several).
    extra_domains: tuple[str, ...] = ()
    #: The DC's static X25519 secret (its public key is in the marker TXT). Empty: no DC-to-DC.
    secret: bytes = b""
    #: Configured peer DCs: (domain, static public key). They take precedence over DNS markers.
    peers: tuple[tuple[str, bytes], ...] = ()
    #: The DC's probe endpoints (one per family) for NAT classification; empty: no probes.
    probe: tuple[Endpoint, ...] = ()
    #: RS-N targets: prefixes opened although not globally routable (operator allow-list), and prefixes
    #: always refused (the VIP and GN-VIP pools, the DC's own addresses). docs/security.md "RS-N targets".
    rsn_allow: tuple[str, ...] = ()
    rsn_refuse: tuple[str, ...] = ()
    #: RS-N pairs (issue 20, docs/operations.md "RS-N pair"): relay names two by two. An RS-N path
    #: directed at one gets a standby leg at the other (its own Path ID and key).
    rsn_pairs: tuple[tuple[str, str], ...] = ()
    #: The DC's public signalling endpoint, as joined nodes' credentials name it (core/join.py).
    address: str = ""
    port: int = DC_PORT
    #: NAT traversal: RS-S paths the traversal table allows get punch candidates (docs/protocol.md,
    #: "Traversal of RS_S paths"); off keeps every such path relayed. The daemon's dc.toml turns it on
    #: by default (runtime.config.DcSettings.traversal); the core's default stays off so in-memory
    #: scenarios opt in.
    traversal: bool = False
    #: The other replicas of this DC ("address:port" each, as the registry's ``holder`` names them):
    #: a node registered at one of them is reached by a Peer Query to it (docs/architecture.md, "DC
    #: replicas"). Empty: a single DC.
    replicas: tuple[str, ...] = ()

    @property
    def replica_name(self) -> str:
        """This replica's "address:port" (what the registry records as the holder of its sessions)."""
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"

    def pair_partner(self, rs: str | None) -> str | None:
        """The other relay of ``rs``'s RS-N pair, or None."""
        for a, b in self.rsn_pairs:
            if rs == a:
                return b
            if rs == b:
                return a
        return None

    def own_domain(self, fqdn: str) -> str | None:
        """The domain of this DC that ``fqdn`` belongs to, or None."""
        for dom in (self.domain, *self.extra_domains):
            if fqdn == dom or fqdn.endswith("." + dom):
                return dom
        return None


def rsn_refused(pools: Iterable[str | None], addresses: Iterable[str]) -> tuple[str, ...]:
    """The prefixes never given to an RS-N, allow-list or not (``DcConfig.rsn_refuse``): the VIP and
    GN-VIP ``pools`` and the DC's own ``addresses`` (docs/security.md, "RS-N targets")."""
    return tuple(dict.fromkeys([*(p for p in pools if p), *addresses]))
