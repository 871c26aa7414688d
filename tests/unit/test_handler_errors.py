"""A daemon never stops on an exception out of its handlers or its core: runtime.driver counts it,
logs its traceback the first time that kind happens (one line after that), and shows the count and
the last error in the daemon's status (``driver.handler_errors``, ``driver.last_handler_error``)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest

from ntmobile.runtime.driver import CoreDriver, HandlerErrors


@dataclass(frozen=True)
class Bad:
    n: int


@dataclass(frozen=True)
class Good:
    n: int


@dataclass
class FakeCore:
    events: list[Any] = field(default_factory=list)
    out: list[Any] = field(default_factory=list)
    timer: float | None = None
    raise_on_datagram: bool = False
    raise_on_timer: bool = False
    sent_calls: int = 0

    def receive_datagram(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        if self.raise_on_datagram:
            raise RuntimeError("core bug on input")

    def datagrams_to_send(self) -> list[Any]:
        self.sent_calls += 1
        out, self.out = self.out, []
        return out

    def next_event(self) -> Any:
        return self.events.pop(0) if self.events else None

    def get_timer(self) -> float | None:
        return self.timer

    def handle_timer(self, now: float) -> None:
        self.timer = None
        if self.raise_on_timer:
            self.timer = now + 60.0
            raise KeyError("timer bug")


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info]


def test_a_raising_event_handler_is_counted_logged_once_with_a_traceback_and_shown_in_status(
        caplog: pytest.LogCaptureFixture) -> None:
    handled: list[int] = []

    def on_event(ev: Any) -> None:
        if isinstance(ev, Bad):
            raise ValueError(f"boom {ev.n}")
        handled.append(ev.n)

    async def main() -> CoreDriver:
        core = FakeCore(events=[Bad(1), Good(2), Bad(3), Good(4)])
        drv = CoreDriver(core, on_event)
        drv.flush()
        assert core.sent_calls == 1  # the datagrams still went out after the failing handlers
        return drv

    with caplog.at_level(logging.ERROR, logger="ntmobile.runtime.driver"):
        drv = asyncio.run(main())
    assert handled == [2, 4]
    st = drv.status()
    assert st["handler_errors"] == 2 and drv.handler_errors == 2
    assert st["last_handler_error"] == "on_event(Bad): ValueError: boom 3"
    assert len(tracebacks(caplog)) == 1  # the same kind again: one line, no second traceback
    assert sum("boom 3" in r.getMessage() for r in caplog.records) == 1


def test_an_exception_out_of_the_core_or_its_timer_does_not_stop_the_daemon() -> None:
    async def main() -> tuple[CoreDriver, FakeCore]:
        loop = asyncio.get_running_loop()
        core = FakeCore(raise_on_datagram=True)
        drv = CoreDriver(core, lambda ev: None)
        drv.on_datagram(b"\x01\x02", ("192.0.2.1", 7410))
        assert core.sent_calls == 1  # flushed all the same
        core.raise_on_timer, core.timer = True, loop.time()
        drv._arm()
        deadline = loop.time() + 5.0
        while drv.handler_errors < 2 and loop.time() < deadline:
            await asyncio.sleep(0.01)
        return drv, core

    drv, core = asyncio.run(main())
    assert drv.status()["handler_errors"] == 2
    assert drv.status()["last_handler_error"] == "handle_timer: KeyError: 'timer bug'"
    assert drv._timer_at == core.timer  # the timer was re-armed at the core's next deadline


def test_a_background_task_that_fails_is_counted_and_a_cancelled_one_is_not() -> None:
    async def fails() -> None:
        raise OSError("no ICMP socket")

    async def waits() -> None:
        await asyncio.sleep(3600)

    async def main() -> CoreDriver:
        drv = CoreDriver(FakeCore(), lambda ev: None)
        tasks: set[asyncio.Task[None]] = set()
        t1 = drv.spawn(fails(), tasks, "distance probe")
        t2 = drv.spawn(waits(), tasks, "poll")
        await asyncio.wait_for(asyncio.gather(t1, return_exceptions=True), 5)
        t2.cancel()
        await asyncio.gather(t2, return_exceptions=True)
        await asyncio.sleep(0)  # done callbacks run
        assert not tasks
        return drv

    drv = asyncio.run(main())
    assert drv.status()["handler_errors"] == 1
    assert drv.status()["last_handler_error"] == "distance probe: OSError: no ICMP socket"


def test_a_guarded_callback_records_instead_of_raising(caplog: pytest.LogCaptureFixture) -> None:
    errors = HandlerErrors()

    def on_miss(dst: bytes) -> None:
        raise LookupError(dst.hex())

    guarded = errors.guard("on_miss", on_miss)
    with caplog.at_level(logging.ERROR, logger="ntmobile.runtime.driver"):
        for _ in range(3):
            guarded(b"\x0a\x00\x00\x01")
    assert errors.count == 3 and errors.last == "on_miss: LookupError: 0a000001"
    assert len(tracebacks(caplog)) == 1
