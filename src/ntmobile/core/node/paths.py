"""The node's path records: one _Path per Path ID, its explicit lifecycle (PathState and its
transition table) and the typed tags of the requests a path has in flight.

A path is ESTABLISHING from the Route Direction that makes it until the Tunnel Request / Response
exchange (or, for a responder, authenticated data) completes; then ESTABLISHED until it is closed.
A re-direction (new mode, relay or targets after a move) keeps the state: the Path ID, key and
counters carry on. CLOSED is final: the record is out of the path table and its timers are cancelled.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ntmobile.crypto import CapsuleOpener, CapsuleSealer, Channel, KeyPair
from ntmobile.wire import Endpoint, PathMode, PathRole, RouteDirection

from ..common import Timer, _Pending
from .events import LegWatch, PathInfo
from .traversal import PathTraversal


class PathState(enum.Enum):
    ESTABLISHING = "establishing"
    ESTABLISHED = "established"
    CLOSED = "closed"


#: Allowed moves of a path's state (h11 style: anything else is a bug in the core).
PATH_TRANSITIONS: dict[PathState, frozenset[PathState]] = {
    PathState.ESTABLISHING: frozenset({PathState.ESTABLISHED, PathState.CLOSED}),
    PathState.ESTABLISHED: frozenset({PathState.CLOSED}),
    PathState.CLOSED: frozenset(),
}


class PathStateError(RuntimeError):
    """An illegal move of a path's state (an internal error, never caused by input)."""


@dataclass(frozen=True, slots=True)
class TunnelTag:
    """A Tunnel Request (set-up or announcement) of one path."""

    path_id: bytes


@dataclass(frozen=True, slots=True)
class KeepaliveTag:
    """A path keepalive of one path."""

    path_id: bytes


@dataclass(frozen=True, slots=True)
class PathProbeTag:
    """A path probe (`ntm ping`): a Keepalive sent once, its answer timed."""

    path_id: bytes
    probe_id: int
    sent_at: float
    mode: PathMode
    rs_name: str | None
    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class DcProbeTag:
    """A DC probe (`ntm netcheck`): a session Keepalive sent once, its answer timed."""

    probe_id: int
    sent_at: float


@dataclass(frozen=True, slots=True)
class NatProbeTag:
    """The NAT mapping probe to the DC's probe endpoint."""


@dataclass(frozen=True, slots=True)
class LivenessTag:
    """The node's Keepalive asking a quiet DC for a sign of life before a lookup waits on it."""


@dataclass(frozen=True, slots=True)
class LookupTag:
    """A Direction Request for a name (a DNS-triggered lookup)."""

    fqdn: str


@dataclass(frozen=True, slots=True)
class RedirectTag:
    """A Direction Request naming an existing path (a re-direction)."""

    path_id: bytes


@dataclass(frozen=True, slots=True)
class StandbyAskTag:
    """A Direction Request asking for a new standby leg of an RS-N path (issue 20)."""

    path_id: bytes


@dataclass(frozen=True, slots=True)
class RelayReleaseTag:
    """A relay-only Path Release of a punched path (issue 16)."""

    path_id: bytes


@dataclass(slots=True)
class _Path:
    path_id: bytes
    role: PathRole
    mode: PathMode
    rd: RouteDirection
    sig: Channel
    sealer: CapsuleSealer
    opener: CapsuleOpener
    data_keys: KeyPair
    targets: list[Endpoint]
    endpoint: Endpoint | None = None
    state: PathState = PathState.ESTABLISHING
    request_ids: list[int] = field(default_factory=list)
    fqdn: str | None = None
    target_index: int = 0
    last_rx: float = 0.0
    peer_caps: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0
    created: float = 0.0
    #: Signalling channels by key family: ("path",) for the path keys, ("leg", relay key) for an RS-S
    #: leg. A re-direction that changes the mode switches channel but never restarts one (a fresh
    #: channel would reuse sequence numbers the other end has already seen).
    channels: dict[tuple[object, ...], Channel] = field(default_factory=dict)
    #: The Tunnel Request in flight, the path keepalive in flight (handles for _cancel_request).
    tunnel_req: _Pending | None = None
    keepalive_req: _Pending | None = None
    #: The next link of the path keepalive chain (None: no chain; a re-direction may start or end the
    #: need for one).
    keepalive_timer: Timer | None = None
    #: NAT traversal of an RS-S path the DC offered punch candidates for (core/node/traversal.py), and
    #: its next timer.
    traversal: PathTraversal | None = None
    traversal_timer: Timer | None = None
    leg_watch: LegWatch | None = None
    #: The relay-only Path Release in flight (after the relay leg's grace period), if any.
    relay_release: _Pending | None = None
    #: RS-N pair (issue 20, core/node/standby.py): the path's standby leg at the pair's other relay (a
    #: path record of its own: Path ID, key, sealer and opener), and on a standby leg the Path ID of the
    #: path it stands by for.
    standby: _Path | None = None
    standby_of: bytes | None = None

    @property
    def established(self) -> bool:
        return self.state is PathState.ESTABLISHED

    @property
    def sends_tunnel_request(self) -> bool:
        return self.role is PathRole.INITIATOR or self.mode is PathMode.RS_S

    def move(self, new: PathState) -> None:
        """Move to ``new``; raises PathStateError for a move the transition table does not allow."""
        if new not in PATH_TRANSITIONS[self.state]:
            raise PathStateError(f"path {self.path_id.hex()}: {self.state.name} -> {new.name} is not allowed")
        self.state = new

    def info(self) -> PathInfo:
        return PathInfo(self.path_id, self.role, self.mode, self.rd.peer_name, self.rd.peer_vip4, self.rd.peer_vip6,
                        self.endpoint, self.rd.rs_name, self.data_keys, self.peer_caps, self.sealer, self.opener,
                        self.leg_watch)
