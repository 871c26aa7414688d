"""The RS-S kernel fast path's policy: which RS-S paths the kernel may forward, which to promote
into it now, and which to take out (docs/dataplane.md, "RS-S in the kernel").

Pure: fed the Relay Table and counters, it returns decisions (``FastPath`` records); the runtime's
``runtime.rsfast.FastPaths`` applies them to the nft table and reads the kernel's counters."""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .table import RelayEntry, RssEntry

Endpoint = tuple[str, int]

#: A path is moved into the kernel once the daemon relayed this many bytes of it in one poll
#: (1 MiB/s = 8.4 Mbit/s): small paths stay in the daemon, where nft calls cost nothing.
PROMOTE_BYTES = 1 << 20
#: A fast path whose kernel counters stood still this many polls goes back to the daemon.
IDLE_POLLS = 300
#: Most paths forwarded by the kernel at once.
MAX_FAST = 1024


@dataclass(frozen=True, slots=True)
class FastPath:
    """One RS-S path forwarded by the kernel: data capsules of ``path_id`` from the initiator
    leg's endpoint go to the responder leg's and back, rewritten as if the relay had sent them."""

    path_id: bytes
    initiator: Endpoint
    responder: Endpoint

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.initiator[0]).version

    @property
    def tag(self) -> str:
        return self.path_id.hex()


def _family(ep: Endpoint) -> int:
    return ipaddress.ip_address(ep[0]).version


@dataclass
class FastPolicy:
    """Which RS-S paths may be forwarded by the kernel, and which should be."""

    local4: str | None
    local6: str | None
    promote_bytes: int = PROMOTE_BYTES
    max_fast: int = MAX_FAST
    #: Bytes the daemon had relayed per entry at the last poll.
    _seen: dict[bytes, int] = field(default_factory=dict)

    def eligible(self, e: RelayEntry, use: Counter[Endpoint]) -> FastPath | None:
        """The fast path for ``e``, or None when the kernel cannot forward it exactly as the daemon
        would: RS-S with both legs learnt, one address family the relay has, and leg endpoints
        that carry no other path (the kernel forwards a coalesced packet as a whole)."""
        if not isinstance(e, RssEntry):
            return None
        a, b = e.initiator.endpoint, e.responder.endpoint
        if a is None or b is None or a == b:
            return None
        fam = _family(a)
        if fam != _family(b) or (self.local4 if fam == 4 else self.local6) is None:
            return None
        if use[a] != 1 or use[b] != 1:
            return None
        return FastPath(e.path_id, (a[0], int(a[1])), (b[0], int(b[1])))

    def candidates(self, rs_s: Iterable[RssEntry], everyone: Callable[[], Iterable[RelayEntry]],
                   fast: set[bytes]) -> list[FastPath]:
        """Paths to move into the kernel now: RS-S entries (``rs_s``) the daemon relayed at least
        ``promote_bytes`` of since the last call, busiest first, up to ``max_fast`` in all.
        ``everyone`` (every entry, for the endpoint check) is only walked when there is one."""
        busy: list[tuple[int, RssEntry]] = []
        seen = self._seen
        now_seen: dict[bytes, int] = {}
        for e in rs_s:
            if e.path_id in fast:
                continue
            total = e.bytes_i2r + e.bytes_r2i
            now_seen[e.path_id] = total
            delta = total - seen.get(e.path_id, total)
            if delta >= self.promote_bytes:
                busy.append((delta, e))
        self._seen = now_seen
        room = self.max_fast - len(fast)
        if not busy or room <= 0:
            return []
        use = endpoint_use(everyone())
        out: list[FastPath] = []
        for _, e in sorted(busy, key=lambda x: -x[0]):
            if len(out) >= room:
                break
            p = self.eligible(e, use)
            if p is not None:
                out.append(p)
        return out

    @staticmethod
    def conflicts(fast: Iterable[FastPath], path_id: bytes, addr: Endpoint) -> list[bytes]:
        """Fast paths to take out of the kernel because ``path_id`` now has a leg at ``addr``: the
        path itself (its legs moved) and any other fast path with a leg there."""
        return [p.path_id for p in fast if p.path_id == path_id or addr in (p.initiator, p.responder)]

    @staticmethod
    def idle(idle_polls: dict[bytes, int]) -> list[bytes]:
        """Fast paths whose kernel counters stood still ``IDLE_POLLS`` polls: back to the daemon."""
        return [pid for pid, n in idle_polls.items() if n >= IDLE_POLLS]


def endpoint_use(entries: Iterable[RelayEntry]) -> Counter[Endpoint]:
    """How many legs of ``entries`` are at each learnt endpoint."""
    use: Counter[Endpoint] = Counter()
    for e in entries:
        for leg in e.legs():
            if leg.endpoint is not None:
                use[leg.endpoint] += 1
    return use
