"""asyncio glue for DNS: a UDP+TCP server around a sync handler, and a driver for `Discovery`.

All DNS decisions live in the sans-IO cores (`ntmobile.core.dnsauth`, `ntmobile.core.discovery`);
this module only moves bytes and keeps time.
"""

import asyncio
import functools
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from ntmobile.core.discovery import Discovery, DiscoveryResult, OutgoingQuery

from . import dnsclasses  # noqa: F401  (dnspython's IN rdata classes before any input)

log = logging.getLogger(__name__)

Handler = Callable[[bytes, bool], bytes | None]

TCP_IDLE_TIMEOUT = 10.0
TCP_MAX_CONNECTIONS = 128
MAX_UDP_RESPONSE = 65507


@dataclass
class ServerStats:
    udp_queries: int = 0
    udp_responses: int = 0
    tcp_connections: int = 0
    tcp_queries: int = 0
    tcp_responses: int = 0
    tcp_rejected: int = 0  # connections over the limit
    no_answer: int = 0  # the handler returned None
    handler_errors: int = 0  # the handler raised (counted, dropped)
    send_errors: int = 0
    amplification_dropped: int = 0  # UDP replies over max_reply_factor times their query: not sent


class _UdpServerProtocol(asyncio.DatagramProtocol):
    def __init__(self, handler: Handler, stats: ServerStats, max_reply_factor: int | None = None) -> None:
        self.handler = handler
        self.stats = stats
        self.max_reply_factor = max_reply_factor
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.stats.udp_queries += 1
        try:
            reply = self.handler(data, False)
        except Exception:
            self.stats.handler_errors += 1
            log.exception("DNS handler failed on a %d-byte UDP query from %s", len(data), addr)
            return
        if reply is None:
            self.stats.no_answer += 1
            return
        if self.transport is None or len(reply) > MAX_UDP_RESPONSE:
            self.stats.send_errors += 1
            return
        if self.max_reply_factor is not None and len(reply) > self.max_reply_factor * len(data):
            # The handler truncates such answers itself (core.dnsauth); this is the last line.
            self.stats.amplification_dropped += 1
            return
        self.transport.sendto(reply, addr)
        self.stats.udp_responses += 1

    def error_received(self, exc: Exception) -> None:
        # ICMP errors from earlier replies: nothing to do, the socket stays up.
        self.stats.send_errors += 1


@dataclass
class DnsServer:
    """A running UDP endpoint and TCP listener on the same address and port."""

    host: str
    port: int
    stats: ServerStats
    udp: asyncio.DatagramTransport
    tcp: asyncio.Server
    _conns: set[asyncio.Task[None]] = field(default_factory=set)

    async def close(self) -> None:
        self.udp.close()
        self.tcp.close()
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)
        await self.tcp.wait_closed()

    async def __aenter__(self) -> "DnsServer":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def serve_dns(handler: Handler, host: str, port: int, *, max_reply_factor: int | None = None) -> DnsServer:
    """Serve `handler(query, tcp) -> response | None` over UDP and TCP on host:port.

With ``max_reply_factor``, no UDP reply larger than that many times its query is sent (counted in
``amplification_dropped``): an unverified source address cannot get an amplified answer.

    Port 0 picks a free port (the same for UDP and TCP); `DnsServer.port` tells which.
    TCP uses the 2-byte length framing of RFC 1035 §4.2.2, several queries per connection.
    """
    loop = asyncio.get_running_loop()
    stats = ServerStats()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    conns: set[asyncio.Task[None]] = set()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(conns) >= TCP_MAX_CONNECTIONS:
            stats.tcp_rejected += 1
            writer.close()
            return
        conns.add(task)
        try:
            await _tcp_session(handler, stats, reader, writer)
        finally:
            conns.discard(task)

    last_error: OSError | None = None
    for _ in range(20 if port == 0 else 1):
        usock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:  # IPv6 only: an IPv4 listener on the same port may exist
                usock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            usock.bind((host, port))
        except OSError:
            usock.close()
            raise
        udp, _proto = await loop.create_datagram_endpoint(lambda: _UdpServerProtocol(handler, stats, max_reply_factor),
                                                       sock=usock)
        bound_port = int(udp.get_extra_info("sockname")[1])
        try:  # room for bursts (and floods) of queries while the loop is busy
            udp.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        except OSError:
            pass
        tsock = socket.socket(family, socket.SOCK_STREAM)
        try:
            tsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                tsock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            tsock.bind((host, bound_port))
            tcp = await asyncio.start_server(on_client, sock=tsock)
        except OSError as exc:  # the TCP port is taken: try another pair
            tsock.close()
            udp.close()
            last_error = exc
            continue
        return DnsServer(host, bound_port, stats, udp, tcp, conns)
    assert last_error is not None
    raise last_error


async def _tcp_session(
    handler: Handler, stats: ServerStats, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    stats.tcp_connections += 1
    try:
        while True:
            try:
                head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_TIMEOUT)
                length = int.from_bytes(head, "big")
                data = await asyncio.wait_for(reader.readexactly(length), TCP_IDLE_TIMEOUT)
            except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                return
            stats.tcp_queries += 1
            try:
                reply = handler(data, True)
            except Exception:
                stats.handler_errors += 1
                log.exception("DNS handler failed on a %d-byte TCP query", len(data))
                return
            if reply is None:
                stats.no_answer += 1
                return  # nothing sensible to say: close, as nsd does on garbage
            writer.write(len(reply).to_bytes(2, "big") + reply)
            try:
                await writer.drain()
            except ConnectionError:
                return
            stats.tcp_responses += 1
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass


# ---------------------------------------------------------------------------------------------
# discovery driver
# ---------------------------------------------------------------------------------------------

# (handle, response or None, error text)
_Event = tuple[int, bytes | None, str]


class _UdpClientProtocol(asyncio.DatagramProtocol):
    def __init__(self, handle: int, events: asyncio.Queue[_Event]) -> None:
        self.handle = handle
        self.events = events

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.events.put_nowait((self.handle, data, ""))

    def error_received(self, exc: Exception) -> None:
        self.events.put_nowait((self.handle, None, f"{type(exc).__name__}: {exc}"))


async def _tcp_exchange(q: OutgoingQuery, events: asyncio.Queue[_Event]) -> None:
    writer: asyncio.StreamWriter | None = None
    try:
        reader, writer = await asyncio.open_connection(q.dest[0], q.dest[1])
        writer.write(len(q.wire).to_bytes(2, "big") + q.wire)
        await writer.drain()
        length = int.from_bytes(await reader.readexactly(2), "big")
        data = await reader.readexactly(length)
        events.put_nowait((q.id, data, ""))
    except (OSError, asyncio.IncompleteReadError) as exc:
        events.put_nowait((q.id, None, f"TCP: {type(exc).__name__}: {exc}"))
    finally:
        if writer is not None:
            writer.close()


async def run_discovery(d: Discovery) -> DiscoveryResult:
    """Drive `d` over real UDP/TCP sockets until it is done; log and return its result."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[_Event] = asyncio.Queue()
    transports: list[asyncio.DatagramTransport] = []
    tasks: set[asyncio.Task[None]] = set()
    try:
        while not d.done:
            for q in d.next_queries(loop.time()):
                if q.tcp:
                    tasks.add(loop.create_task(_tcp_exchange(q, events)))
                    continue
                try:
                    transport, _ = await loop.create_datagram_endpoint(
                        functools.partial(_UdpClientProtocol, q.id, events),
                        remote_addr=q.dest,
                    )
                except OSError as exc:
                    d.fail(q.id, f"{type(exc).__name__}: {exc}", loop.time())
                    continue
                transports.append(transport)
                transport.sendto(q.wire)
            if d.done:
                break
            timer = d.get_timer()
            try:
                if timer is None:
                    event = await events.get()
                else:
                    event = await asyncio.wait_for(events.get(), max(0.0, timer - loop.time()))
            except TimeoutError:
                d.handle_timer(loop.time())
                continue
            handle, data, error = event
            if data is None:
                d.fail(handle, error, loop.time())
            else:
                d.receive(handle, data, loop.time())
    finally:
        for transport in transports:
            transport.close()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
    result = d.result
    log.info(
        "discovery of %s: %s (%s)\n  %s",
        result.fqdn,
        result.outcome.value,
        result.reason,
        "\n  ".join(result.evidence.lines),
    )
    return result
