"""What the node core is configured with and what it tells its owner: NodeConfig and the events."""

from __future__ import annotations

from dataclasses import dataclass, field

from ntmobile.crypto import CapsuleOpener, CapsuleSealer, KeyPair
from ntmobile.wire import Endpoint, NatKind, PathMode, PathRole, Status

from ..common import Event


@dataclass(frozen=True, slots=True)
class NodeConfig:
    name: str
    node_id: bytes
    psk: bytes
    dc_id: bytes
    dc_endpoint: Endpoint
    capabilities: int = 0
    #: While the DC is silent or the node unregistered, lookups fall back (LookupFallback) instead of
    #: waiting for DIRECTION_TIMEOUT and failing.
    fallback: bool = True
    #: The domain's other DC replicas (issue 17): when the current DC stops answering (a
    #: registration attempt times out, or the session's keepalives go unanswered), the node
    #: re-registers with the next one, round robin; its VIPs are the registry's, shared by them all.
    dc_replicas: tuple[Endpoint, ...] = ()


@dataclass(frozen=True, slots=True)
class Registered(Event):
    vip4: str | None
    vip6: str | None
    observed: Endpoint
    nat: NatKind
    keepalive: int


@dataclass(frozen=True, slots=True)
class RegistrationFailed(Event):
    status: Status
    reason: str


@dataclass(slots=True)
class LegWatch:
    """Shared by the node core and the data plane for a path with NAT traversal (as the sealer and
    opener are): the relay's endpoint and the peer's punch candidates, and the capsules the data plane
    delivered from the relay and from anywhere else. The data plane never learns the relay's address
    as the peer's (nor, on the relay leg, a candidate's), and takes GSO chunks from all of them; the
    core samples the counts (core/node/traversal.py: a DIRECT path whose capsules keep arriving
    through the relay falls back, the peer went back to it)."""

    relay: Endpoint | None
    candidates: frozenset[Endpoint] = frozenset()
    relayed: int = 0
    direct: int = 0

    def knows(self, addr: Endpoint) -> bool:
        return addr == self.relay or addr in self.candidates


@dataclass(frozen=True, slots=True)
class PathInfo:
    path_id: bytes
    role: PathRole
    mode: PathMode
    peer_name: str | None
    peer_vip4: str | None
    peer_vip6: str | None
    endpoint: Endpoint | None
    rs_name: str | None
    data_keys: KeyPair
    capabilities: int
    #: The path's capsule sealer/opener (shared with the data plane: one counter per direction).
    sealer: CapsuleSealer = field(compare=False, repr=False)
    opener: CapsuleOpener = field(compare=False, repr=False)
    #: NAT traversal's shared counters (None: the path has no traversal).
    leg: LegWatch | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class PathReady(Event):
    path: PathInfo
    request_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class LookupFallback(Event):
    """The DC is silent, or the node is not registered: the lookups ``request_ids`` of ``fqdn`` are not
    tunnelled; the stub resolves them upstream (a general node) or refuses them (an NTM peer)."""

    request_ids: tuple[int, ...]
    fqdn: str
    reason: str


@dataclass(frozen=True, slots=True)
class PathFailed(Event):
    request_ids: tuple[int, ...]
    fqdn: str
    status: Status
    reason: str


@dataclass(frozen=True, slots=True)
class PathEndpointChanged(Event):
    path_id: bytes
    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class PathConfirmed(Event):
    """An established path's far end (the peer, or the relay once both legs are known) answered our
    Tunnel Request at ``endpoint``, or (DIRECT) sent us one from there: capsules sent there arrive now.
    The data plane re-sends there what it kept since a move if a re-direction moved the path
    (dataplane/forwarder.py, ``NodeForwarder.moved``)."""

    path_id: bytes
    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class PathClosed(Event):
    path_id: bytes
    reason: str


def status_of(code: int) -> Status:
    """A Status from the wire (an unknown code reads as BAD_REQUEST)."""
    try:
        return Status(code)
    except ValueError:
        return Status.BAD_REQUEST


@dataclass(frozen=True, slots=True)
class PathProbed(Event):
    """The answer to a path probe (``NodeCore.probe_path``), or its timeout (``rtt`` None). ``mode``
    and ``rs_name`` are the path's when the probe left; the answer came from the peer (DIRECT) or
    the relay (RS_S, RS_N), authenticated on the path's signalling channel."""

    probe_id: int
    path_id: bytes
    mode: PathMode
    rs_name: str | None
    endpoint: Endpoint | None
    rtt: float | None


@dataclass(frozen=True, slots=True)
class DcProbed(Event):
    """The answer to a DC probe (``NodeCore.probe_dc``: a session Keepalive, sent once), or its
    timeout (``rtt`` None)."""

    probe_id: int
    rtt: float | None


@dataclass(frozen=True, slots=True)
class StandbyReady(Event):
    """An RS-N path ``path_id`` has a standby leg (issue 20, RS-N pair): the data plane opens what
    arrives on it (``standby.path_id``, its own key) and, on the first authenticated capsule, sends the
    path's traffic there. Replaces the path's previous standby leg, if any."""

    path_id: bytes
    standby: PathInfo


@dataclass(frozen=True, slots=True)
class StandbyGone(Event):
    """The standby leg ``standby_id`` of path ``path_id`` is gone (lost, replaced, its path closed)."""

    path_id: bytes
    standby_id: bytes
