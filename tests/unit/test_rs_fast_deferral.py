"""FastPaths with a ``defer``: a moved leg's demotion runs after the flush that answers (issue 21),
not inside it; a path that already left the kernel is not demoted twice."""

from __future__ import annotations

from collections.abc import Callable
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


def test_a_moved_legs_demotion_waits_for_the_deferral() -> None:
    queued: list[Callable[[], None]] = []
    table = FakeTable()
    fast = FastPaths(Any, table, lambda: 0.0, defer=queued.append)  # type: ignore[arg-type]
    fast.enabled = True
    fast.on_endpoint(PID, ("192.0.2.110", 40000))
    fast.on_endpoint(PID, ("192.0.2.110", 40001))  # a second move before the loop ran
    assert table.removed == [] and len(queued) == 2 and fast.stats["demotions_deferred"] == 2
    for fn in queued:
        fn()
    assert table.removed == [PID] and fast.stats["demoted"] == 1 and PID not in table


def test_without_deferral_it_is_at_once() -> None:
    table = FakeTable()
    fast = FastPaths(Any, table, lambda: 0.0)  # type: ignore[arg-type]
    fast.enabled = True
    fast.on_endpoint(PID, ("192.0.2.110", 40000))
    assert table.removed == [PID]
