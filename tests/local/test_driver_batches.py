"""The DC's batched reads (runtime/driver.py): within one read batch, the answers so far leave after
each datagram while the batch holds nothing to commit; once it does (a registration), they wait for
the batch's flush (its commit), as the group commit requires."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from typing import Any

import pytest

from ntmobile.runtime.driver import CoreDriver
from tests.local.test_signal_hops import QuietCore


@dataclass
class _Dg:
    data: bytes
    addr: tuple[str, int]


class EchoCore(QuietCore):
    """Answers every datagram with itself; a datagram starting with b"reg" makes the batch pending."""

    def __init__(self, log: list[tuple[str, bytes]]) -> None:
        self.log = log
        self.out: list[_Dg] = []
        self.pending = False

    def receive_datagram(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        self.log.append(("recv", data))
        self.pending = self.pending or data.startswith(b"reg")
        self.out.append(_Dg(data, addr))

    def datagrams_to_send(self) -> list[Any]:
        out, self.out = self.out, []
        return out


@pytest.mark.parametrize(("queries", "expected"), [
    ([b"dir1", b"dir2", b"dir3"], ["recv dir1", "send dir1", "recv dir2", "send dir2", "recv dir3", "send dir3"]),
    ([b"dir1", b"reg2", b"dir3"], ["recv dir1", "send dir1", "recv reg2", "recv dir3", "send reg2", "send dir3"]),
])
def test_answers_leave_during_a_batch_until_something_must_be_committed(queries: list[bytes],
                                                                       expected: list[str]) -> None:
    log: list[tuple[str, bytes]] = []
    core = EchoCore(log)
    committed: list[int] = []

    async def main() -> None:
        def commit() -> None:
            committed.append(len(log))
            core.pending = False

        drv = CoreDriver(core, lambda ev: None, batch_reads=True, on_flush=commit,
                         can_send_early=lambda: not core.pending)
        sent = drv.send

        def send(data: bytes, addr: tuple[str, int]) -> None:
            log.append(("send", data))
            sent(data, addr)
        drv.send = send  # type: ignore[method-assign]
        await drv.start(0, host4="127.0.0.1", host6=None)
        port = drv.sockets()[0].getsockname()[1]
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx.bind(("127.0.0.1", 0))
        tx.settimeout(5)
        try:
            for q in queries:  # all queued before the loop reads: one batch
                tx.sendto(q, ("127.0.0.1", port))
            got = [await asyncio.get_running_loop().run_in_executor(None, tx.recv, 64) for _ in queries]
            assert sorted(got) == sorted(queries)
        finally:
            tx.close()
            drv.close()

    asyncio.run(main())
    assert [f"{k} {d.decode()}" for k, d in log] == expected
    assert committed  # the batch's flush ran once the batch was read


class EventCore(EchoCore):
    """An EchoCore that also emits one event per datagram."""

    def __init__(self, log: list[tuple[str, bytes]]) -> None:
        super().__init__(log)
        self.events: list[bytes] = []

    def receive_datagram(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        super().receive_datagram(data, addr, now)
        self.events.append(data)

    def next_event(self) -> Any:
        return self.events.pop(0) if self.events else None


@pytest.mark.parametrize(("sends_first", "query", "expected"), [
    (False, b"dir1", ["recv dir1", "event dir1", "send dir1", "send late-dir1"]),
    (True, b"dir1", ["recv dir1", "send dir1", "event dir1", "send late-dir1"]),
    (True, b"reg1", ["recv reg1", "commit", "send reg1", "event reg1", "send late-reg1"]),
])
def test_sends_first_answers_before_the_event_handlers_run(sends_first: bool, query: bytes,
                                                          expected: list[str]) -> None:
    """The DC's driver (``sends_first``) sends a request's answer before its events are handled (they
    only log and count), still after the commit; what a handler makes the core say leaves after."""
    log: list[tuple[str, bytes]] = []
    core = EventCore(log)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("127.0.0.1", 0))
    tx.settimeout(5)

    async def main() -> None:
        def commit() -> None:
            log.append(("commit", b""))
            core.pending = False

        def on_event(ev: bytes) -> None:
            log.append(("event", ev))
            core.out.append(_Dg(b"late-" + ev, tx.getsockname()))

        drv = CoreDriver(core, on_event, batch_reads=True, on_flush=commit,
                         can_send_early=lambda: not core.pending, sends_first=sends_first)
        sent = drv.send

        def send(data: bytes, addr: tuple[str, int]) -> None:
            log.append(("send", data))
            sent(data, addr)
        drv.send = send  # type: ignore[method-assign]
        await drv.start(0, host4="127.0.0.1", host6=None)
        port = drv.sockets()[0].getsockname()[1]
        try:
            tx.sendto(query, ("127.0.0.1", port))
            rx = asyncio.get_running_loop().run_in_executor
            assert [await rx(None, tx.recv, 64), await rx(None, tx.recv, 64)] == [query, b"late-" + query]
        finally:
            tx.close()
            drv.close()

    asyncio.run(main())
    got = [f"{k} {d.decode()}".strip() for k, d in log if (k, d) != ("commit", b"") or "commit" in expected]
    assert got[:len(expected)] == expected
