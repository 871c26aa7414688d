"""The NTM node's sans-IO core (a package): NodeCore and everything importable from it.

- events.py: NodeConfig and the events (Registered, PathReady, ...);
- paths.py: the path records, their PathState and transition table, the typed request tags;
- tunnel.py: paths and their signalling with peers and relays, path keepalives;
- direction.py: Direction Requests, held lookups, re-directions;
- core.py: NodeCore (registration, API, dispatch, the core's own data capsules).
"""

from .core import EARLY_MAX, RETIRED_KEYS, NodeCore
from .events import (
    DcProbed,
    LegWatch,
    LookupFallback,
    NodeConfig,
    PathClosed,
    PathConfirmed,
    PathEndpointChanged,
    PathFailed,
    PathInfo,
    PathProbed,
    PathReady,
    Registered,
    RegistrationFailed,
    StandbyGone,
    StandbyReady,
)
from .paths import PATH_TRANSITIONS, PathState, PathStateError

__all__ = [
    "DcProbed", "EARLY_MAX", "LegWatch", "PATH_TRANSITIONS", "RETIRED_KEYS", "LookupFallback", "NodeConfig", "NodeCore",
    "PathClosed", "PathConfirmed",
    "PathEndpointChanged", "PathFailed", "PathInfo", "PathProbed", "PathReady", "PathState", "PathStateError",
    "Registered",
    "RegistrationFailed", "StandbyGone", "StandbyReady",
]
