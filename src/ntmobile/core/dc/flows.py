"""The DC's flows as explicit state machines: one record type per flow, each with a ``state`` enum and
a transition table (h11's ``_state.py`` style), ``move`` the one way to change a state, and the typed
tags the DC's requests carry.

A flow is one piece of work the DC does for somebody: a node's Direction Request until the flow it
needs is known (``Asked``: e.g. while its name is resolved), the direction of a path to a general
node (``GnDirection``) or to an NTM peer of this DC (``LocalPeerDirection``), a Peer Query to
another DC (``PeerQueryOut``, the asking side) or from one (``PeerQueryIn``, the answering side),
and the re-direction of an existing path (``Redirect``, which delegates to a LocalPeerDirection or a
PeerQueryOut).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, auto
from typing import TYPE_CHECKING, ClassVar

from ntmobile.wire import Endpoint, PathMode, PathRole, PeerQuery, RelayDirection, RouteDirection

from ..common import Timer
from .sessions import _Session

if TYPE_CHECKING:
    from .peering import PeerDc


class IllegalTransition(RuntimeError):
    """An internal error: the DC tried to move a flow along a transition its table does not have."""


class State(Enum):
    """The states of every flow (each flow's table uses some of them)."""

    #: Created, nothing sent yet.
    NEW = auto()
    #: Waiting to start: another re-direction of the same path runs.
    QUEUED = auto()
    #: The runtime resolves the name (ResolveRequest).
    RESOLVING = auto()
    #: Relays measure their distance to a general node (Relay Probes).
    PROBING = auto()
    #: A relay is asked to set the path up (Relay Direction).
    RELAYING = auto()
    #: The peer node is told of the path (Route Direction, acknowledged).
    TELLING_PEER = auto()
    #: A Peer Query is out to another DC.
    QUERYING = auto()
    #: A flow it started (the Peer Query of a re-direction) decides it.
    DELEGATED = auto()
    #: The resolution handed the request on to the flow it turned out to be.
    HANDED_ON = auto()
    DONE = auto()
    FAILED = auto()


S = State
#: States no flow leaves.
FINAL = frozenset({S.DONE, S.FAILED, S.HANDED_ON})


@dataclass(slots=True)
class _Flow:
    """What every flow has: who asked (``node``: for a Peer Query from another DC, our node that is
    asked for), the request's txid, the name, when it started, the evidence for the log, and the
    reply that answered it (kept to answer retransmissions)."""

    TRANSITIONS: ClassVar[dict[State, frozenset[State]]] = {}

    node: _Session
    txid: int
    fqdn: str
    started: float
    evidence: list[str] = field(default_factory=list)
    state: State = S.NEW
    reply: bytes = b""
    done_at: float = 0.0

    @property
    def finished(self) -> bool:
        return self.state in FINAL


def move(flow: _Flow, to: State) -> None:
    """Move ``flow`` to state ``to``; raises IllegalTransition if its table has no such move."""
    if to not in type(flow).TRANSITIONS.get(flow.state, frozenset()):
        raise IllegalTransition(f"{type(flow).__name__}: no transition {flow.state.name} -> {to.name}")
    flow.state = to


@dataclass(slots=True)
class Asked(_Flow):
    """A node's Direction Request until the flow it needs is known: for a name outside this DC's
    domains, while the runtime resolves it. Handed on to the flow (replacing it in the reply cache),
    or failed."""

    TRANSITIONS: ClassVar[dict[State, frozenset[State]]] = {
        S.NEW: frozenset({S.RESOLVING, S.HANDED_ON, S.FAILED}),
        S.RESOLVING: frozenset({S.HANDED_ON, S.FAILED}),
    }


@dataclass(slots=True)
class RelayLeg:
    """The relay leg of a flow: the Relay Direction, the relays still to ask (in order), those tried,
    those that refused the general node's address (not asked again), the relay asked last."""

    msg: RelayDirection
    candidates: list[_Session] = field(default_factory=list)
    tried: list[_Session] = field(default_factory=list)
    refused_by: list[str] = field(default_factory=list)
    rs: _Session | None = None


@dataclass(slots=True, kw_only=True)
class _Setup(_Flow):
    """A flow that sets a path up: its Path ID and the Route Direction its node gets."""

    path_id: bytes
    route: RouteDirection


@dataclass(slots=True, kw_only=True)
class GnDirection(_Setup):
    """A path to a general node through an RS-N relay."""

    TRANSITIONS: ClassVar[dict[State, frozenset[State]]] = {
        S.NEW: frozenset({S.PROBING, S.RELAYING, S.FAILED}),
        S.PROBING: frozenset({S.RELAYING, S.FAILED}),
        S.RELAYING: frozenset({S.RELAYING, S.DONE, S.FAILED}),
    }

    leg: RelayLeg
    gn_map: tuple[tuple[str, str], ...]
    gn_addr: str
    #: Relays whose distance probe is outstanding.
    probing: set[str] = field(default_factory=set)
    #: The relay of the path this one supersedes (asked first).
    reuse_rs: str | None = None


#: The table of the flows that tell a peer node (through a relay, or directly).
_PEER_TRANSITIONS: dict[State, frozenset[State]] = {
    S.NEW: frozenset({S.RELAYING, S.TELLING_PEER, S.FAILED}),
    S.RELAYING: frozenset({S.RELAYING, S.TELLING_PEER, S.FAILED}),
    S.TELLING_PEER: frozenset({S.DONE, S.FAILED}),
}


@dataclass(slots=True, kw_only=True)
class _PeerSetup(_Setup):
    """A flow that tells a peer node (``responder``) of the path, after a relay accepted it if the path
    is relayed (``leg``)."""

    responder: _Session
    responder_route: RouteDirection
    leg: RelayLeg | None = None
    #: NAT traversal: once the responder acknowledged its Route Direction (with PUNCH_DELAY), how long
    #: from then until it starts probing (seconds; dc/paths.py ``punch_remaining``).
    punch_remaining: float | None = None


@dataclass(slots=True, kw_only=True)
class LocalPeerDirection(_PeerSetup):
    """A path between two NTM nodes of this DC, DIRECT or through an RS-S relay; ``redirect``: the
    re-direction of an existing path this one decides (same Path ID, key and roles)."""

    TRANSITIONS: ClassVar[dict[State, frozenset[State]]] = _PEER_TRANSITIONS

    redirect: Redirect | None = None


@dataclass(slots=True, kw_only=True)
class PeerQueryIn(_PeerSetup):
    """DC to DC, answering side: another DC asks for a path from its node ``requester`` to our node
    (``node``, also the responder); the outcome goes back to the querying DC, not to a node."""

    TRANSITIONS: ClassVar[dict[State, frozenset[State]]] = _PEER_TRANSITIONS

    dc: PeerDc
    addr: Endpoint
    query: PeerQuery
    requester: str
    requester_role: PathRole
    mode: PathMode
    #: Where the requester sends its Tunnel Request (DIRECT, requester initiates).
    requester_targets: tuple[Endpoint, ...]
    #: A re-direction of a path we know (same Path ID and key).
    redirect: bool = False
    #: RS-S with traversal: our node's punch candidates for the requester (Peer Answer PUNCH_ENDPOINT).
    requester_punch: tuple[Endpoint, ...] = ()


@dataclass(slots=True, kw_only=True)
class Redirect(_Flow):
    """The re-direction of an existing NTM-peer path ``path_id`` (handover, or the DC moving a path
    whose relay died; docs/protocol.md §10): one runs per path at a time, the others queue. Decided by
    the flow it delegates to (a LocalPeerDirection, or a PeerQueryOut for a node of another DC).
    ``dc_initiated``: nobody asked; the node gets its Route Direction as a request, not as a reply."""

    TRANSITIONS: ClassVar[dict[State, frozenset[State]]] = {
        S.NEW: frozenset({S.QUEUED, S.RESOLVING, S.DELEGATED, S.FAILED}),
        S.QUEUED: frozenset({S.RESOLVING, S.DELEGATED, S.FAILED}),
        S.RESOLVING: frozenset({S.DELEGATED, S.FAILED}),
        S.DELEGATED: frozenset({S.DONE, S.FAILED}),
    }

    path_id: bytes
    dc_initiated: bool = False
    #: The node asked with NO_PUNCH (its punched path failed after its relay leg was let go): plain RS-S.
    no_punch: bool = False
    #: For a path with a node of another DC: the path's key and a fresh relay key for the Peer Query.
    path_key: bytes = b""
    relay_key: bytes = b""
    #: DC replicas: when it first asked for the path's re-direction lease (-1: not yet), and whether
    #: it holds it (given back if it fails; a success's write of the path ends it).
    claim_since: float = -1.0
    claimed: bool = False


@dataclass(slots=True, kw_only=True)
class PeerQueryOut(_Flow):
    """DC to DC, asking side: our node's path to a node of another DC, which decides it; ``redirect``:
    the re-direction this query runs for (its Path ID and keys are the path's)."""

    TRANSITIONS: ClassVar[dict[State, frozenset[State]]] = {
        S.NEW: frozenset({S.QUERYING}),
        S.QUERYING: frozenset({S.QUERYING, S.DONE, S.FAILED}),
    }

    dc: PeerDc
    endpoint: Endpoint
    path_key: bytes
    relay_key: bytes
    path_id: bytes = b""
    attempts: int = 0
    redirect: Redirect | None = None
    #: Hellos re-sent while the peer DC has not introduced itself (cancelled when the query ends).
    rehellos: list[Timer] = field(default_factory=list)


#: The flow records, for tests that walk every table.
FLOWS: tuple[type[_Flow], ...] = (Asked, GnDirection, LocalPeerDirection, PeerQueryIn, Redirect, PeerQueryOut)


# -- request tags (what a pending request is for) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProbeTag:
    """A Relay Probe: relay ``rs`` measures its distance for ``flow``."""

    flow: GnDirection
    rs: _Session


@dataclass(frozen=True, slots=True)
class RelayTag:
    """A Relay Direction of ``flow`` (its relay leg ``leg``)."""

    flow: _Setup
    leg: RelayLeg


@dataclass(frozen=True, slots=True)
class RouteTag:
    """The Route Direction that tells ``flow``'s responder of the path."""

    flow: _PeerSetup


@dataclass(frozen=True, slots=True)
class PeerQueryTag:
    """A Peer Query of ``flow``."""

    flow: PeerQueryOut


@dataclass(frozen=True, slots=True)
class MovedTag:
    """The Route Direction of a path the DC moved by itself, sent to a node as a request."""

    path_id: bytes
