"""The relay's RS-S kernel fast path: which paths the kernel forwards, and keeping the core's
counters and activity times true for them (docs/dataplane.md, "RS-S in the kernel").

The decisions (``FastPolicy``) are pure: fed the Relay Table and counters, they return what to add
and remove. ``FastPaths`` applies them with ``osops.nft.RsFastTable``, once a second
(``poll``) and, synchronously, on Relay Table events (``on_endpoint``, ``on_removed``): an event
handler runs before the daemon sends the answer that caused it, so a path that shares a leg
endpoint with a fast path takes it out of the kernel before any of its data can arrive.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ntmobile.core.rs import RelayEntry, RsCore
from ntmobile.osops.nft import FastPath, NftError, RsFastTable

log = logging.getLogger("ntm.rs.fast")

Endpoint = tuple[str, int]

#: Seconds between counter reads and promotion rounds.
POLL_SECONDS = 1.0
#: A path is moved into the kernel once the daemon relayed this many bytes of it in one poll
#: (1 MiB/s = 8.4 Mbit/s): small paths stay in the daemon, where nft calls cost nothing.
PROMOTE_BYTES = 1 << 20
#: A fast path whose kernel counters stood still this many polls goes back to the daemon.
IDLE_POLLS = 300
#: Most paths forwarded by the kernel at once.
MAX_FAST = 1024


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
        if e.responder is None:
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

    def candidates(self, rs_s: Iterable[RelayEntry], everyone: Callable[[], Iterable[RelayEntry]],
                   fast: set[bytes]) -> list[FastPath]:
        """Paths to move into the kernel now: RS-S entries (``rs_s``) the daemon relayed at least
        ``promote_bytes`` of since the last call, busiest first, up to ``max_fast`` in all.
        ``everyone`` (every entry, for the endpoint check) is only walked when there is one."""
        busy: list[tuple[int, RelayEntry]] = []
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
        use: Counter[Endpoint] = Counter()
        for e in everyone():
            for leg in (e.initiator, e.responder):
                if leg is not None and leg.endpoint is not None:
                    use[leg.endpoint] += 1
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


class FastPaths:
    """Applies ``FastPolicy`` with an ``RsFastTable`` and feeds the kernel's counters to the core."""

    def __init__(self, core: RsCore, table: RsFastTable, clock: Callable[[], float], *,
                 policy: FastPolicy | None = None) -> None:
        self.core = core
        self.clock = clock
        self.table = table
        self.policy = policy or FastPolicy(table.local4, table.local6)
        self.enabled = False
        self.disabled_reason: str | None = None
        self.stats: Counter[str] = Counter()
        self._counts: dict[bytes, tuple[int, int, int, int]] = {}
        self._idle: dict[bytes, int] = {}
        self._posted = 0

    def start(self) -> bool:
        try:
            self.table.apply()
        except (NftError, ValueError) as exc:
            self.disable(f"cannot create nft table {self.table.name}: {exc}")
            return False
        self.enabled = True
        return True

    def disable(self, reason: str) -> None:
        """Give the kernel fast path up for this run: the daemon relays everything (as it can)."""
        log.error("RS-S kernel fast path off: %s", reason)
        self.enabled = False
        self.disabled_reason = reason
        self.stats["disabled"] += 1
        try:
            self.table.delete()
        except NftError:
            pass
        self._counts.clear()
        self._idle.clear()

    def close(self) -> None:
        if self.enabled:
            self.enabled = False
            try:
                self.table.delete()
            except NftError as exc:
                log.warning("cannot delete nft table %s: %s", self.table.name, exc)

    # -- Relay Table events (synchronous: before the daemon's answer leaves) ----------------------
    def on_endpoint(self, path_id: bytes, addr: Endpoint) -> None:
        if self.enabled:
            for pid in self.policy.conflicts(self.table.paths, path_id, addr):
                self._demote(pid, "leg endpoint changed or shared")

    def on_removed(self, path_id: bytes) -> None:
        if self.enabled and path_id in self.table:
            self._demote(path_id, "entry removed")

    def _demote(self, path_id: bytes, why: str) -> None:
        self._collect(only=path_id)
        try:
            self.table.remove(path_id)
        except NftError as exc:
            self.disable(f"cannot remove path {path_id.hex()}: {exc}")
            return
        self._counts.pop(path_id, None)
        self._idle.pop(path_id, None)
        self.stats["demoted"] += 1
        log.info("path %s relayed by the daemon again (%s)", path_id.hex(), why)

    # -- once a second ----------------------------------------------------------------------------
    def poll(self) -> None:
        if not self.enabled:
            return
        if self.table.paths:
            self._collect()
            if not self.enabled:
                return
            for pid, n in list(self._idle.items()):
                if n >= IDLE_POLLS:
                    self._demote(pid, "idle")
        fast = {p.path_id for p in self.table.paths}
        for p in self.policy.candidates(self.core.rs_s_entries(), self.core.entries, fast):
            try:
                self.table.add(p)
            except (NftError, ValueError) as exc:
                self.stats["errors"] += 1
                log.warning("cannot forward path %s in the kernel: %s", p.path_id.hex(), exc)
                continue
            self._counts[p.path_id] = (0, 0, 0, 0)
            self._idle[p.path_id] = 0
            self.stats["promoted"] += 1
            log.info("path %s forwarded by the kernel: %s:%d <-> %s:%d", p.path_id.hex(), *p.initiator,
                     *p.responder)

    def _collect(self, only: bytes | None = None) -> None:
        """Read the kernel's counters and hand what moved to the core (of every fast path, or of
        ``only``, which is about to leave the kernel)."""
        try:
            counts, posted = self.table.counters()
        except NftError as exc:
            self.disable(f"cannot read counters: {exc}")
            return
        when = self.clock()
        pre = 0
        for pid, c in counts.items():
            if only is not None and pid != only:
                continue
            old = self._counts.get(pid, (0, 0, 0, 0))
            d = tuple(x - y for x, y in zip(c, old, strict=True))
            self._counts[pid] = c
            pre += d[0] + d[2]
            if d[0] or d[2]:
                self._idle[pid] = 0
                self.core.kernel_forwarded(pid, (d[0], d[1]), (d[2], d[3]), when)
            elif pid in self._idle:
                self._idle[pid] += 1
        if only is None:
            sent, self._posted = posted - self._posted, posted
            if pre >= 8 and not sent:
                # Rewritten at prerouting, never seen at postrouting: something between (a forward
                # policy of drop, a missing route) eats them. The daemon relays those paths.
                self.disable("datagrams rewritten for forwarding never left (does a forward-chain "
                             "policy drop them? see docs/operations.md)")

    def snapshot(self) -> dict[str, object]:
        return {"enabled": self.enabled, "disabled_reason": self.disabled_reason, "table": self.table.name,
                "paths": [p.path_id.hex() for p in self.table.paths], **dict(self.stats)}
