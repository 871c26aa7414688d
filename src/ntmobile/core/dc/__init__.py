"""The Direction Coordinator's sans-IO core, one module per sub-protocol over a shared session table:
``core`` (DcCore: input, dispatch, sweep), ``sessions`` (the session table), ``registration``,
``natprobe``, ``direction`` (general nodes, local NTM peers, relay choice), ``peering`` (DC to DC),
``redirect`` (re-direction after moves), ``paths`` (the path table and the route decision), ``flows``
(every flow's record, states and transitions), ``zones`` (the authoritative DNS policy), ``config``
and ``events``."""

from .config import DcConfig, rsn_refused
from .core import DcCore
from .events import (
    ClientRegistered,
    DirectionDecision,
    NatClassified,
    PeerDcNote,
    ProbeDatagram,
    RegistrationRejected,
    RelayLost,
    ResolveRequest,
    VerifyPeerDc,
)
from .paths import PathRecord, decide_route, reachable, same_nat
from .peering import (
    PEER_HELD_MAX,
    PEER_HELD_TOTAL,
    PEER_HELLO_GLOBAL_RATE,
    PEER_HELLO_RATE,
    PEER_PATH_ATTEMPTS,
    PEER_UNVERIFIED_MAX,
)
from .sessions import LONG_TERM_CACHE
from .zones import DcZones

__all__ = [
    "LONG_TERM_CACHE",
    "PEER_HELD_MAX",
    "PEER_HELD_TOTAL",
    "PEER_HELLO_GLOBAL_RATE",
    "PEER_HELLO_RATE",
    "PEER_PATH_ATTEMPTS",
    "PEER_UNVERIFIED_MAX",
    "ClientRegistered",
    "DcConfig",
    "DcCore",
    "DcZones",
    "DirectionDecision",
    "NatClassified",
    "PathRecord",
    "PeerDcNote",
    "ProbeDatagram",
    "RegistrationRejected",
    "RelayLost",
    "ResolveRequest",
    "VerifyPeerDc",
    "decide_route",
    "reachable",
    "rsn_refused",
    "same_nat",
]
