"""Sans-IO peer discovery (a package): is the owner of an FQDN an NTM node (behind a DC) or a
general node? Everything importable from it.

- results.py: Outcome, DiscoveryResult and its Evidence, OutgoingQuery, DiscoveryStats;
- machine.py: Discovery, the NS -> TXT -> A/AAAA state machine (DiscoveryState, TRANSITIONS);
- cache.py: DiscoveryCache and cache_key.
"""

from .cache import CacheStats, DiscoveryCache, cache_key
from .machine import TRANSITIONS, Discovery, DiscoveryState, DiscoveryStateError
from .results import QUERY_PAYLOAD, Address, DiscoveryResult, DiscoveryStats, Evidence, Outcome, OutgoingQuery

__all__ = [
    "QUERY_PAYLOAD", "TRANSITIONS", "Address", "CacheStats", "Discovery", "DiscoveryCache", "DiscoveryResult",
    "DiscoveryState", "DiscoveryStateError", "DiscoveryStats", "Evidence", "Outcome", "OutgoingQuery", "cache_key",
]
