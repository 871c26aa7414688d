"""The DC's cache of discovery results by name (TTL-bounded, LRU-bounded) and its key."""

from collections import OrderedDict
from dataclasses import dataclass, field

import dns.name

from .results import DiscoveryResult


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0


@dataclass
class _Entry:
    result: DiscoveryResult
    expires: float


_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


def cache_key(fqdn: str) -> str:
    """Case-insensitive, absolute form of a name ('WWW.B.Example' -> 'www.b.example.').

    A string that is not a valid name gets a key no valid name can have (never raises; it cannot
    match a stored result, since results only exist for valid names). Plain host names (letters,
    digits, '-', '_') take a fast path that gives what dnspython gives; the rest goes to dnspython.
    """
    low = fqdn.lower()
    if 0 < len(low) <= 253 and _PLAIN.issuperset(low):
        name = low[:-1] if low.endswith(".") else low
        if all(0 < len(label) <= 63 for label in name.split(".")):
            return name + "."
    try:
        return dns.name.from_text(fqdn).canonicalize().to_text()
    except Exception:
        return "invalid:" + fqdn.lower()


@dataclass
class DiscoveryCache:
    """Discovery results by FQDN until their TTL runs out (TTL capped by max_ttl). LRU-bounded."""

    max_entries: int = 4096
    max_ttl: int = 3600
    stats: CacheStats = field(default_factory=CacheStats)
    _entries: "OrderedDict[str, _Entry]" = field(default_factory=OrderedDict)

    def get(self, fqdn: str, now: float) -> DiscoveryResult | None:
        key = cache_key(fqdn)
        entry = self._entries.get(key)
        if entry is None or entry.expires <= now:
            if entry is not None:
                del self._entries[key]
            self.stats.misses += 1
            return None
        self._entries.move_to_end(key)
        self.stats.hits += 1
        return entry.result

    def put(self, result: DiscoveryResult, now: float) -> None:
        ttl = min(result.ttl, self.max_ttl)
        if ttl <= 0:
            return
        key = cache_key(result.fqdn)
        self._entries[key] = _Entry(result, now + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self.stats.evictions += 1

    def purge(self, now: float) -> int:
        stale = [k for k, e in self._entries.items() if e.expires <= now]
        for k in stale:
            del self._entries[k]
        return len(stale)

    def __len__(self) -> int:
        return len(self._entries)
