"""asyncio glue that drives a sans-IO core over UDP sockets (the aioquic protocol pattern).

One ``CoreDriver`` owns an IPv4 and (optionally) an IPv6 UDP socket bound to the same port, feeds
every datagram to the core with ``now = loop.time()``, then *first* hands the core's events to the
daemon's handler (which may perform OS actions synchronously) and *then* sends the core's
datagrams, and re-arms one timer at ``core.get_timer()``.

With ``batch_reads`` (the DC) the driver reads the sockets itself: each readiness callback drains up
to ``READ_BATCH`` datagrams into the core and flushes once, between ``on_batch_start`` and the
flush's ``on_flush`` (the DC commits its registry writes there, once per batch, before the replies
leave).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any, Protocol

from ntmobile.wire import MessageType

log = logging.getLogger(__name__)

Endpoint = tuple[str, int]
#: Datagrams a batch-reading driver takes from a socket per readiness callback.
READ_BATCH = 16


class SansIOCore(Protocol):
    def receive_datagram(self, data: bytes, addr: Endpoint, now: float) -> None: ...
    def datagrams_to_send(self) -> list[Any]: ...
    def next_event(self) -> Any: ...
    def get_timer(self) -> float | None: ...
    def handle_timer(self, now: float) -> None: ...


def normalize(addr: tuple[Any, ...]) -> Endpoint:
    host = str(addr[0])
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, int(addr[1])


def bind_udp(host: str, port: int, *, family: int, rcvbuf: int = 4 << 20) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, rcvbuf)
            except OSError:
                pass
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


_DATA = int(MessageType.DATA)
#: TTL / hop limit of a node's signalling datagrams: never the data's (the system default, 64 on
#: most hosts), so that no receiver's GRO coalesces signalling into a train of data (it only merges
#: datagrams whose IP headers agree but for the length). 255 unless that is the default.
SIGNAL_HOPS = 255


def signal_hops_cmsg(sock: socket.socket) -> list[tuple[int, int, bytes]]:
    """The ancillary data that sends one datagram on ``sock`` with ``SIGNAL_HOPS`` (or 254 when
    the socket's own TTL / hop limit is 255 already)."""
    if sock.family == socket.AF_INET6:
        level, opt, cm = socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, socket.IPV6_HOPLIMIT
    else:
        level, opt, cm = socket.IPPROTO_IP, socket.IP_TTL, socket.IP_TTL
    default = sock.getsockopt(level, opt)
    if default < 0:  # IPv6: "the route's" hop limit, i.e. net.ipv6.conf.*.hop_limit (64)
        default = 64
    hops = SIGNAL_HOPS if default != SIGNAL_HOPS else SIGNAL_HOPS - 1
    return [(level, cm, struct.pack("i", hops))]


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, driver: CoreDriver) -> None:
        self.driver = driver

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.driver.on_datagram(data, normalize(addr))

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable, ...) on a UDP socket: count, never die.
        self.driver.socket_errors += 1


class CoreDriver:
    """Runs ``core`` on UDP ``port``. ``on_event`` is called for each event, before sends."""

    def __init__(self, core: SansIOCore, on_event: Callable[[Any], None], *,
                 data_hook: Callable[[bytes, Endpoint], bool] | None = None,
                 on_flush: Callable[[], None] | None = None, batch_reads: bool = False,
                 on_batch_start: Callable[[], None] | None = None, mark_signalling: bool = False) -> None:
        self.core = core
        #: With ``mark_signalling``, every datagram that is not a data capsule leaves with its own
        #: TTL / hop limit (``SIGNAL_HOPS``): a node's GRO barrier, docs/dataplane.md "RS-S in the
        #: kernel". Per family: the socket and its ancillary data.
        self.mark_signalling = mark_signalling
        self._hops_cmsg: dict[int, tuple[socket.socket, list[tuple[int, int, bytes]]]] = {}
        self.on_flush = on_flush
        self.batch_reads = batch_reads
        self.on_batch_start = on_batch_start
        self._readers: list[socket.socket] = []
        self.on_event = on_event
        self.data_hook = data_hook
        self.loop = asyncio.get_running_loop()
        self.transports: dict[int, asyncio.DatagramTransport] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.socket_errors = 0
        self.handler_errors = 0
        #: Datagrams read from the sockets (every one goes to the core or the data hook, which count
        #: their own drops): with the kernel's per-socket drops this accounts for all that arrived.
        self.received = 0

    async def start(self, port: int, *, host4: str = "0.0.0.0", host6: str | None = "::") -> None:
        socks = [bind_udp(host4, port, family=socket.AF_INET)]
        if host6 is not None and socket.has_ipv6:
            try:
                socks.append(bind_udp(host6, port, family=socket.AF_INET6))
            except OSError as exc:
                log.warning("no IPv6 signalling socket on port %d: %s", port, exc)
        for s in socks:
            if self.mark_signalling:
                self._hops_cmsg[s.family] = (s, signal_hops_cmsg(s))
            transport, _ = await self.loop.create_datagram_endpoint(lambda: _Proto(self), sock=s)
            self.transports[s.family] = transport
            if self.batch_reads:
                # The transport keeps sending; we read (asyncio's reader takes one datagram per wake-up).
                transport.pause_reading()  # type: ignore[attr-defined]
                r = s.dup()
                r.setblocking(False)
                self._readers.append(r)
                self.loop.add_reader(r.fileno(), self._readable, r)

    def sockets(self) -> list[socket.socket]:
        return [t.get_extra_info("socket") for t in self.transports.values()]

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for r in self._readers:
            self.loop.remove_reader(r.fileno())
            r.close()
        self._readers.clear()
        for t in self.transports.values():
            t.close()

    def now(self) -> float:
        return self.loop.time()

    def on_datagram(self, data: bytes, addr: Endpoint) -> None:
        self.received += 1
        if self.data_hook is not None and self.data_hook(data, addr):
            return
        self.core.receive_datagram(data, addr, self.loop.time())
        self.flush()

    def _readable(self, sock: socket.socket) -> None:
        if self.on_batch_start is not None:
            self.on_batch_start()
        core, hook = self.core, self.data_hook
        now = self.loop.time()
        for _ in range(READ_BATCH):
            try:
                data, raw = sock.recvfrom(65536)
            except BlockingIOError:
                break
            except OSError:
                self.socket_errors += 1  # ICMP errors and the like: never fatal
                continue
            self.received += 1
            addr = normalize(raw)
            if hook is not None and hook(data, addr):
                continue
            core.receive_datagram(data, addr, now)
        self.flush()

    def _drain_events(self) -> None:
        while (ev := self.core.next_event()) is not None:
            try:
                self.on_event(ev)
            except Exception:  # a handler bug must not kill the daemon
                self.handler_errors += 1
                log.exception("event handler failed on %r", ev)

    def flush(self) -> None:
        """Process events, then send datagrams, then re-arm the timer."""
        self._drain_events()
        if self.on_flush is not None:
            self.on_flush()
            self._drain_events()  # what on_flush made the core say
        for dg in self.core.datagrams_to_send():
            self.send(dg.data, dg.addr)
        self._arm()

    def send(self, data: bytes, addr: Endpoint) -> None:
        fam = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        t = self.transports.get(fam)
        if t is None:
            self.socket_errors += 1
            return
        marked = self._hops_cmsg.get(fam)
        if (marked is not None and not (len(data) > 1 and data[1] == _DATA)
                and not t.get_write_buffer_size()):  # type: ignore[attr-defined]
            try:
                marked[0].sendmsg([data], marked[1], 0, addr)
                return
            except BlockingIOError:
                pass  # the transport queues it (unmarked): a full buffer is no time for a barrier
            except OSError:
                self.socket_errors += 1
                return
        t.sendto(data, addr)

    def _arm(self) -> None:
        when = self.core.get_timer()
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = when
        if when is not None:
            self._timer = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = None
        self.core.handle_timer(self.loop.time())
        self.flush()
