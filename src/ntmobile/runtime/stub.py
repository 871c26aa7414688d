"""A small asyncio DNS server for *asynchronous* handlers (the node's stub holds an application's
query until its tunnel is ready, so answers come later than the query). UDP and TCP (RFC 1035
length framing); never dies on input."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from . import dnsclasses  # noqa: F401  (dnspython's IN rdata classes before any input)

log = logging.getLogger(__name__)

AsyncHandler = Callable[[bytes, bool], Awaitable[bytes | None]]
#: Optional synchronous first look at a UDP query: True when the handler took it and will call the
#: callback once with the answer (None: no answer), later or at once; False: the query goes to the
#: async handler. The tunnelled lookups the node holds take this way: no task, no future, and the
#: answer leaves in the same call that learns the tunnel is ready.
HeldHandler = Callable[[bytes, Callable[[bytes | None], None]], bool]
#: Queries held at once (a tunnelled lookup waits for its path, up to core.timing.DIRECTION_TIMEOUT).
MAX_PENDING = 4096
#: Largest query taken (UDP or TCP): a question and an OPT record need far less. What any local
#: process can make the stub hold is at most MAX_PENDING queries and PENDING_BYTES of them.
MAX_QUERY = 4096
#: Bytes of queries held at once.
PENDING_BYTES = 1 << 20
#: TCP connections open at once (each holds at most one query).
MAX_TCP = 128


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: StubServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        srv = self.server
        srv.received += 1
        n = len(data)
        if len(srv.tasks) + srv.held >= MAX_PENDING or n > MAX_QUERY or srv.pending_bytes + n > PENDING_BYTES:
            srv.dropped += 1
            return
        if srv.held_handler is not None and self._held(data, addr, n):
            return
        task = asyncio.get_running_loop().create_task(self._answer(data, addr))
        srv.hold(task, n)

    def _held(self, data: bytes, addr: tuple[Any, ...], n: int) -> bool:
        """Offer the query to the synchronous held handler; True if it took it."""
        srv = self.server
        assert srv.held_handler is not None
        srv.held += 1
        srv.pending_bytes += n
        answered = False

        def reply(wire: bytes | None) -> None:
            nonlocal answered
            if answered:
                return
            answered = True
            srv.held -= 1
            srv.pending_bytes -= n
            self._send(wire, data, addr)

        try:
            taken = srv.held_handler(data, reply)
        except Exception:
            srv.errors += 1
            log.exception("DNS handler failed")
            taken = False
        if not taken and not answered:
            answered = True
            srv.held -= 1
            srv.pending_bytes -= n
        return taken

    def _send(self, reply: bytes | None, query: bytes, addr: tuple[Any, ...]) -> None:
        if reply is not None and self.transport is not None:
            if len(reply) > 512 and not _has_edns(query):
                reply = _truncate(reply)
            self.transport.sendto(reply, addr)

    async def _answer(self, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            reply = await self.server.handler(data, False)
        except Exception:
            self.server.errors += 1
            log.exception("DNS handler failed")
            return
        self._send(reply, data, addr)


def _has_edns(query: bytes) -> bool:
    return len(query) >= 12 and int.from_bytes(query[10:12], "big") > 0


def _truncate(reply: bytes) -> bytes:
    """Header and question only, with TC set (the client retries over TCP)."""
    import dns.flags
    import dns.message

    msg = dns.message.from_wire(reply)
    msg.answer.clear()
    msg.authority.clear()
    msg.additional.clear()
    msg.flags |= dns.flags.TC
    return bytes(msg.to_wire())


class StubServer:
    def __init__(self, handler: AsyncHandler, held_handler: HeldHandler | None = None) -> None:
        self.handler = handler
        self.held_handler = held_handler
        #: UDP queries the held handler took and has not answered yet.
        self.held = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.received = 0  # UDP queries read (each is answered, held, or counted in dropped/errors)
        self.dropped = 0  # over MAX_PENDING / MAX_QUERY / PENDING_BYTES / MAX_TCP
        self.pending_bytes = 0
        self.tcp_open = 0
        self.errors = 0
        self.udp: asyncio.DatagramTransport | None = None
        self.tcp: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(host, port), family=fam)
        self.udp = transport
        self.tcp = await asyncio.start_server(self._tcp, host, port, family=fam, reuse_address=True)

    def hold(self, task: asyncio.Task[None], n: int) -> None:
        """Keep ``task`` (answering an ``n``-byte query) in the books until it is done."""
        self.tasks.add(task)
        self.pending_bytes += n

        def done(t: asyncio.Task[None]) -> None:
            self.tasks.discard(t)
            self.pending_bytes -= n
        task.add_done_callback(done)

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.tcp_open >= MAX_TCP:
            self.dropped += 1
            writer.close()
            return
        self.tcp_open += 1
        try:
            while True:
                n = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), 10.0), "big")
                if n > MAX_QUERY:
                    self.dropped += 1
                    break
                query = await asyncio.wait_for(reader.readexactly(n), 10.0)
                reply = await self.handler(query, True)
                if reply is None:
                    break
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        except Exception:
            self.errors += 1
            log.exception("DNS handler failed (TCP)")
        finally:
            self.tcp_open -= 1
            writer.close()

    async def close(self) -> None:
        if self.udp is not None:
            self.udp.close()
        if self.tcp is not None:
            self.tcp.close()
        for t in list(self.tasks):
            t.cancel()
