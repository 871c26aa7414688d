"""RS-S: data capsules from a leg's new source, held while the leg moves (issue 21).

A relay cannot authenticate RS-S data (it has no data key), so data never moves a leg and is
forwarded only from the sending leg's learnt endpoint (forward.py). After a move, though, the node's
kernel sends the capsules from the new address at once, before the node has noticed the move and
announced itself on the leg (Tunnel Request or Keepalive under the leg key): those capsules used to be
dropped, a probe or two per move. The relay now holds them, per leg, and forwards them to the other
leg when, within ``MOVE_HOLD``, the leg moves to exactly their source, on the leg's unchanged rule: an
authenticated, non-replayed signalling datagram from that leg's node. Otherwise they are dropped.

What an attacker can and cannot do with it (docs/security.md, "RS-S: capsules held while a leg
moves"):

- Nothing it sends is ever forwarded unless the leg's own node moves the leg to that very source
  (then it is forwarded, once, to the other leg: what the relay would forward from that source anyway
  after the move; the far node authenticates every capsule end to end).
- The state is bounded: per leg ``HOLD_MAX_DATAGRAMS`` / ``HOLD_MAX_BYTES`` and ``HOLD_SOURCES``
  sources, for the whole relay ``HOLD_TOTAL_BYTES`` and ``HOLD_MAX_LEGS`` legs holding; only legs of
  entries a DC installed (the Path ID must name one), and only for ``MOVE_HOLD``. Past a bound a
  capsule is dropped as before: filling the budget only takes the hold away (today's behaviour), it
  never blocks a leg's move.

Sans-IO: datagrams and ``now`` in, the datagrams to release out; the core sends them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ntmobile.wire import Endpoint

from ..timing import MOVE_HOLD
from .config import HOLD_MAX_BYTES, HOLD_MAX_DATAGRAMS, HOLD_MAX_LEGS, HOLD_SOURCES, HOLD_TOTAL_BYTES

#: A held leg: (Path ID, from the responder leg).
LegKey = tuple[bytes, bool]


@dataclass(slots=True)
class _Held:
    """The capsules held for one leg, in arrival order, since ``since`` (the first one)."""

    since: float
    items: list[tuple[Endpoint, bytes]] = field(default_factory=list)
    nbytes: int = 0
    sources: set[Endpoint] = field(default_factory=set)


class MoveHold:
    """The relay's held capsules, by leg. Counts go to ``stats`` (the core's)."""

    def __init__(self, stats: dict[str, int], *, hold_time: float = MOVE_HOLD, max_datagrams: int = HOLD_MAX_DATAGRAMS,
                 max_bytes: int = HOLD_MAX_BYTES, max_sources: int = HOLD_SOURCES,
                 total_bytes: int = HOLD_TOTAL_BYTES, max_legs: int = HOLD_MAX_LEGS) -> None:
        self.stats = stats
        self.hold_time = hold_time
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.max_sources = max_sources
        self.total_bytes = total_bytes
        self.max_legs = max_legs
        #: Insertion order is ``since`` order (a leg's entry is made with its first capsule and
        #: removed whole), so the first one expires first.
        self._legs: dict[LegKey, _Held] = {}
        self.held_bytes = 0

    def __len__(self) -> int:
        return len(self._legs)

    def hold(self, key: LegKey, source: Endpoint, data: bytes | bytearray | memoryview, now: float) -> bool:
        """Hold ``data`` (a capsule of the leg ``key`` from ``source``, not the leg's endpoint).
        False when a bound refuses it (the caller drops it)."""
        self.expire(now)
        h = self._legs.get(key)
        n = len(data)
        if self.held_bytes + n > self.total_bytes:
            self.stats["hold_refused_total"] += 1
            return False
        if h is None:
            if len(self._legs) >= self.max_legs:
                self.stats["hold_refused_total"] += 1
                return False
            h = self._legs[key] = _Held(now)
        if len(h.items) >= self.max_datagrams or h.nbytes + n > self.max_bytes:
            self.stats["hold_refused_leg"] += 1
            return False
        if source not in h.sources:
            if len(h.sources) >= self.max_sources:
                self.stats["hold_refused_sources"] += 1
                return False
            h.sources.add(source)
        h.items.append((source, bytes(data)))
        h.nbytes += n
        self.held_bytes += n
        self.stats["data_held"] += 1
        return True

    def release(self, key: LegKey, source: Endpoint, now: float) -> list[bytes]:
        """The leg ``key`` moved to ``source`` (authenticated): its capsules held from ``source``, in
        arrival order, to forward to the other leg. The leg's other sources' capsules are dropped."""
        self.expire(now)
        h = self._legs.pop(key, None)
        if h is None:
            return []
        self.held_bytes -= h.nbytes
        out = [d for s, d in h.items if s == source]
        self.stats["data_held_released"] += len(out)
        self.stats["data_held_dropped"] += len(h.items) - len(out)
        return out

    def discard(self, path_id: bytes) -> None:
        """The entry is gone: drop both legs' capsules."""
        self.discard_leg((path_id, False))
        self.discard_leg((path_id, True))

    def discard_leg(self, key: LegKey) -> None:
        """Drop the capsules held for one leg."""
        h = self._legs.pop(key, None)
        if h is not None:
            self.held_bytes -= h.nbytes
            self.stats["data_held_dropped"] += len(h.items)

    def deadline(self) -> float | None:
        """When the oldest held leg expires (None: nothing held)."""
        for h in self._legs.values():
            return h.since + self.hold_time
        return None

    def expire(self, now: float) -> int:
        """Drop the legs held for ``hold_time`` or longer; returns how many capsules went."""
        gone = 0
        legs = self._legs
        while legs:
            key, h = next(iter(legs.items()))
            if h.since <= now < h.since + self.hold_time:
                break  # (a clock that went back drops what is held)
            del legs[key]
            self.held_bytes -= h.nbytes
            gone += len(h.items)
        if gone:
            self.stats["data_held_dropped"] += gone
        return gone
