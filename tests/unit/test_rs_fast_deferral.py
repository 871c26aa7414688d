"""FastPaths with a ``spawn``: a moved leg's demotion runs beside the daemon (issue 21), not inside the
event handler nor on the loop; a second move while it runs starts no second one; a path that already
left the kernel is not demoted twice; counters read before a newer read are not counted again."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from ntmobile.core.rs.fastpolicy import FastPath
from ntmobile.runtime.rsfast import FastPaths

PID = b"\x01" * 8


class FakeTable:
    local4, local6 = "192.0.2.20", None

    def __init__(self) -> None:
        self.by_id = {PID: FastPath(PID, ("192.0.2.100", 7412), ("192.0.2.101", 7412))}
        self.removed: list[bytes] = []

    @property
    def paths(self) -> list[FastPath]:
        return list(self.by_id.values())

    def __contains__(self, pid: object) -> bool:
        return pid in self.by_id

    def remove(self, pid: bytes) -> bool:
        self.removed.append(pid)
        return self.by_id.pop(pid, None) is not None

    def counters(self) -> tuple[dict[bytes, tuple[int, int, int, int]], int]:
        return {pid: (0, 0, 0, 0) for pid in self.by_id}, 0


def test_a_moved_legs_demotion_runs_beside_the_daemon() -> None:
    queued: list[Coroutine[Any, Any, None]] = []
    table = FakeTable()
    fast = FastPaths(Any, table, lambda: 0.0, spawn=queued.append)  # type: ignore[arg-type]
    fast.enabled = True
    fast.on_endpoint(PID, ("192.0.2.110", 40000))
    fast.on_endpoint(PID, ("192.0.2.110", 40001))  # a second move before the first demotion ran
    assert table.removed == [] and len(queued) == 1 and fast.stats["demotions_deferred"] == 1
    assert PID in fast.demoting

    async def run() -> None:
        for coro in queued:
            await coro

    asyncio.run(run())
    assert table.removed == [PID] and fast.stats["demoted"] == 1 and PID not in table and not fast.demoting


def test_a_demotion_of_a_path_gone_meanwhile_does_nothing() -> None:
    queued: list[Coroutine[Any, Any, None]] = []
    table = FakeTable()
    fast = FastPaths(Any, table, lambda: 0.0, spawn=queued.append)  # type: ignore[arg-type]
    fast.enabled = True
    fast.on_endpoint(PID, ("192.0.2.110", 40000))
    table.by_id.clear()  # (taken out meanwhile: the entry was removed)
    asyncio.run(queued[0])
    assert table.removed == [] and fast.stats["demoted"] == 0 and not fast.demoting


def test_counters_older_than_those_accounted_are_skipped() -> None:
    seen: list[tuple[int, int]] = []

    class Core:
        def kernel_forwarded(self, pid: bytes, i2r: tuple[int, int], r2i: tuple[int, int], now: float) -> bool:
            seen.append(i2r)
            return True

    fast = FastPaths(Core(), FakeTable(), lambda: 0.0)  # type: ignore[arg-type]
    fast._account({PID: (10, 1000, 0, 0)})
    fast._account({PID: (7, 700, 0, 0)})  # read earlier (beside the poll), accounted later
    fast._account({PID: (12, 1200, 0, 0)})
    assert seen == [(10, 1000), (2, 200)]


def test_without_deferral_it_is_at_once() -> None:
    table = FakeTable()
    fast = FastPaths(Any, table, lambda: 0.0)  # type: ignore[arg-type]
    fast.enabled = True
    fast.on_endpoint(PID, ("192.0.2.110", 40000))
    assert table.removed == [PID]
