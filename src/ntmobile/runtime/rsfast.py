"""Applies the relay's RS-S fast-path decisions to its nft table and keeps the core's counters and
activity times true for the paths the kernel forwards (docs/dataplane.md, "RS-S in the kernel").

The decisions (``core.rs.fastpolicy.FastPolicy``) are pure: fed the Relay Table and counters, they
return what to add and remove. ``FastPaths`` applies them with ``osops.nft.RsFastTable``, once a second
(``poll``) and on Relay Table events (``on_endpoint``, ``on_removed``). A removed entry leaves the
kernel synchronously, in the event handler. A moved leg's path (``on_endpoint``) leaves it beside the
daemon (issue 21): its nft runs go to a worker thread, and the kernel meanwhile forwards only between
the old endpoints (the moved leg's capsules reach the daemon, which relays them).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

from ntmobile.core.rs import RsCore
from ntmobile.core.rs.fastpolicy import FastPolicy
from ntmobile.osops.nft import NftError, RsFastTable

log = logging.getLogger("ntm.rs.fast")

Endpoint = tuple[str, int]

#: Seconds between counter reads and promotion rounds.
POLL_SECONDS = 1.0


class FastPaths:
    """Applies ``FastPolicy`` with an ``RsFastTable`` and feeds the kernel's counters to the core."""

    def __init__(self, core: RsCore, table: RsFastTable, clock: Callable[[], float], *,
                 policy: FastPolicy | None = None,
                 spawn: Callable[[Coroutine[Any, Any, None]], object] | None = None) -> None:
        self.core = core
        #: Runs a moved leg's demotion as a task (the daemon's), its two nft runs in a worker thread, so
        #: the event loop goes on relaying meanwhile; without it, at once.
        self.spawn = spawn
        #: Paths whose demotion is running (never promoted meanwhile).
        self.demoting: set[bytes] = set()
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
        """A leg moved (handover): the paths it conflicts with leave the kernel. With ``spawn`` that
        runs beside the daemon (issue 21): the two nft runs of a demotion (counters, removal) took
        ~35 ms on a loaded machine; run in the event handler they held the moved node's Tunnel
        Response, run after it on the loop they held every capsule the relay had to forward meanwhile
        (the moved leg's first ones among them: 23 ms in a bench move). The kernel forwards only
        between the old endpoints meanwhile either way; the moved leg's capsules reach the daemon."""
        if self.enabled:
            for pid in self.policy.conflicts(self.table.paths, path_id, addr):
                if self.spawn is None:
                    self._demote(pid, "leg endpoint changed or shared")
                elif pid not in self.demoting:
                    self.stats["demotions_deferred"] += 1
                    self.demoting.add(pid)
                    self.spawn(self._demote_beside(pid, "leg endpoint changed or shared"))

    async def _demote_beside(self, path_id: bytes, why: str) -> None:
        """``_demote`` with its nft runs in a worker thread; the core hears of the counters on the loop."""
        try:
            if not (self.enabled and path_id in self.table):
                return
            try:
                counts, _posted = await asyncio.to_thread(self.table.counters)
                if not self.enabled:
                    return  # closed or given up meanwhile (the table is gone)
                self._account(counts, only=path_id)
                await asyncio.to_thread(self.table.remove, path_id)
            except NftError as exc:
                self.disable(f"cannot remove path {path_id.hex()}: {exc}")
                return
            self._forget(path_id, why)
        finally:
            self.demoting.discard(path_id)

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
        self._forget(path_id, why)

    def _forget(self, path_id: bytes, why: str) -> None:
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
            for pid in self.policy.idle(self._idle):
                if pid not in self.demoting:
                    self._demote(pid, "idle")
        fast = {p.path_id for p in self.table.paths} | self.demoting  # (a demotion running: not now)
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
        pre = self._account(counts, only)
        if only is None:
            sent, self._posted = posted - self._posted, posted
            if pre >= 8 and not sent:
                # Rewritten at prerouting, never seen at postrouting: something between (a forward
                # policy of drop, a missing route) eats them. The daemon relays those paths.
                self.disable("datagrams rewritten for forwarding never left (does a forward-chain "
                             "policy drop them? see docs/operations.md)")

    def _account(self, counts: dict[bytes, tuple[int, int, int, int]], only: bytes | None = None) -> int:
        """Hand the kernel's counters' progress (of ``only``, or of every fast path) to the core;
        returns the packets it forwarded since the last read."""
        when = self.clock()
        pre = 0
        for pid, c in counts.items():
            if only is not None and pid != only:
                continue
            old = self._counts.get(pid, (0, 0, 0, 0))
            d = tuple(x - y for x, y in zip(c, old, strict=True))
            if min(d) < 0:
                continue  # read before a newer read was accounted (a demotion's, beside the poll)
            self._counts[pid] = c
            pre += d[0] + d[2]
            if d[0] or d[2]:
                self._idle[pid] = 0
                self.core.kernel_forwarded(pid, (d[0], d[1]), (d[2], d[3]), when)
            elif pid in self._idle:
                self._idle[pid] += 1
        return pre

    def snapshot(self) -> dict[str, object]:
        return {"enabled": self.enabled, "disabled_reason": self.disabled_reason, "table": self.table.name,
                "paths": [p.path_id.hex() for p in self.table.paths], **dict(self.stats)}
