"""asyncio glue that drives a sans-IO core over UDP sockets (the aioquic protocol pattern).

One ``CoreDriver`` owns an IPv4 and (optionally) an IPv6 UDP socket bound to the same port, feeds
every datagram to the core with ``now = loop.time()``, then *first* hands the core's events to the
daemon's handler (which may perform OS actions synchronously) and *then* sends the core's
datagrams, and re-arms one timer at ``core.get_timer()``.

With ``batch_reads`` (the DC) the driver reads the sockets itself: each readiness callback drains up
to ``READ_BATCH`` datagrams into the core and flushes once, between ``on_batch_start`` and the
flush's ``on_flush`` (the DC commits its registry writes there, once per batch, before the replies
leave).

An exception out of a daemon's handler (an event handler, a task it started, a callback of the
data plane) or out of the core never stops the daemon: ``HandlerErrors`` counts it, logs it with its
traceback the first time that kind of error happens there (one line after that), and keeps the
last one's text for the daemon's status (``driver.handler_errors``, ``driver.last_handler_error``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any, Protocol

from ntmobile.wire import MessageType

from .trace import Trace, from_env

log = logging.getLogger(__name__)

Endpoint = tuple[str, int]
#: Datagrams a batch-reading driver takes from a socket per readiness callback.
READ_BATCH = 16
#: Kinds of handler error (where, exception type) whose traceback has been logged: at most this many
#: are remembered (past that, every new kind is logged in one line).
TRACEBACK_KINDS_MAX = 256
#: Places (``where``) whose handler errors are counted apart (the metrics' label; the rest: "other").
WHERE_MAX = 64


class HandlerErrors:
    """Exceptions that a daemon's handlers raised: counted, logged, the last one kept for status."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self.log = logger
        self.count = 0
        #: "where: ExceptionType: message" of the last one (None until one happens).
        self.last: str | None = None
        self._logged: set[tuple[str, type[BaseException]]] = set()
        #: Counts by where (the metrics' label): at most WHERE_MAX places, the rest under "other".
        self.by_where: dict[str, int] = {}

    def record(self, where: str, exc: BaseException) -> None:
        self.count += 1
        key = where if where in self.by_where or len(self.by_where) < WHERE_MAX else "other"
        self.by_where[key] = self.by_where.get(key, 0) + 1
        self.last = f"{where}: {type(exc).__name__}: {exc}"
        kind = (where, type(exc))
        if kind not in self._logged and len(self._logged) < TRACEBACK_KINDS_MAX:
            self._logged.add(kind)
            self.log.error("handler error in %s", where, exc_info=exc)
        else:
            self.log.error("handler error (%d so far; traceback logged at its first): %s", self.count, self.last)

    def watch(self, task: asyncio.Task[Any], where: str) -> None:
        """Record the exception a background task ends with (cancellation is not an error)."""

        def done(t: asyncio.Task[Any]) -> None:
            if not t.cancelled() and (exc := t.exception()) is not None:
                self.record(where, exc)

        task.add_done_callback(done)

    def guard(self, where: str, fn: Callable[..., None]) -> Callable[..., None]:
        """``fn`` as a callback whose exceptions are recorded instead of raised."""

        def guarded(*args: Any) -> None:
            try:
                fn(*args)
            except Exception as exc:
                self.record(where, exc)

        return guarded


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
                 on_batch_start: Callable[[], None] | None = None, mark_signalling: bool = False,
                 on_batch_read: Callable[[list[bytes]], None] | None = None,
                 can_send_early: Callable[[], bool] | None = None, sends_first: bool = False) -> None:
        self.core = core
        #: With ``sends_first`` the core's datagrams leave before its events are handled (after
        #: ``on_flush``): for a daemon whose event handlers only log, count and start tasks (the DC),
        #: so that no log line or metric sits between a request and its answer.
        self.sends_first = sends_first
        #: With ``batch_reads``: after each datagram of a read batch, when this says the batch holds
        #: nothing that must be committed before its answers leave (the DC: no registration yet), the
        #: events and datagrams so far are handled and sent at once, not after the whole batch.
        self.can_send_early = can_send_early
        #: With ``batch_reads``: called with a read batch's datagrams before the core gets them (the
        #: DC on PostgreSQL looks up the batch's registering clients in one query).
        self.on_batch_read = on_batch_read
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
        self.errors = HandlerErrors()
        #: Datagrams read from the sockets (every one goes to the core or the data hook, which count
        #: their own drops): with the kernel's per-socket drops this accounts for all that arrived.
        self.received = 0
        #: The debug timing trace (runtime.trace; NTM_TRACE=1), else None.
        self.trace: Trace | None = from_env()

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

    @property
    def handler_errors(self) -> int:
        return self.errors.count

    def status(self) -> dict[str, Any]:
        """The driver's part of a daemon's status."""
        return {"received": self.received, "socket_errors": self.socket_errors,
                "handler_errors": self.errors.count, "last_handler_error": self.errors.last}

    def spawn(self, coro: Any, tasks: set[asyncio.Task[None]], where: str) -> asyncio.Task[None]:
        """Run ``coro`` as a task kept in ``tasks`` while it runs; an exception it ends with is recorded."""
        task: asyncio.Task[None] = self.loop.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        self.errors.watch(task, where)
        return task

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
        if self.trace is not None:
            self.trace.datagram("recv", data, addr)
        try:
            if self.data_hook is not None and self.data_hook(data, addr):
                return
            self.core.receive_datagram(data, addr, self.loop.time())
        except Exception as exc:  # a bug must not kill the daemon: counted, shown in status
            self.errors.record("receive_datagram", exc)
        self.flush()

    def _readable(self, sock: socket.socket) -> None:
        if self.on_batch_start is not None:
            self.on_batch_start()
        core, hook = self.core, self.data_hook
        now = self.loop.time()
        batch: list[tuple[bytes, Any]] = []
        for _ in range(READ_BATCH):
            try:
                batch.append(sock.recvfrom(65536))
            except BlockingIOError:
                break
            except OSError:
                self.socket_errors += 1  # ICMP errors and the like: never fatal
                continue
        if self.on_batch_read is not None and batch:
            try:
                self.on_batch_read([d for d, _ in batch])
            except Exception as exc:  # a look-ahead only: the core reads what it needs itself
                self.errors.record("on_batch_read", exc)
        early = self.can_send_early
        last = len(batch) - 1
        for i, (data, raw) in enumerate(batch):
            self.received += 1
            addr = normalize(raw)
            if self.trace is not None:
                self.trace.datagram("recv", data, addr)
            try:
                if hook is not None and hook(data, addr):
                    continue
                core.receive_datagram(data, addr, now)
            except Exception as exc:  # a bug must not kill the daemon: counted, shown in status
                self.errors.record("receive_datagram", exc)
            if early is not None and i < last and early():
                self._send_now()
        self.flush()

    def _send_now(self) -> None:
        """Mid-batch: the core's events, then its datagrams (the flush's order, without on_flush);
        with ``sends_first``, the datagrams, then the events, then what handling them made the core say."""
        if self.sends_first:
            self._send_datagrams()
        self._drain_events()
        self._send_datagrams()

    def _send_datagrams(self) -> None:
        for dg in self.core.datagrams_to_send():
            self.send(dg.data, dg.addr)

    def _drain_events(self) -> None:
        while (ev := self.core.next_event()) is not None:
            try:
                self.on_event(ev)
            except Exception as exc:  # a handler bug must not kill the daemon
                self.errors.record(f"on_event({type(ev).__name__})", exc)

    def flush(self) -> None:
        """Process events, then send datagrams, then re-arm the timer (``sends_first``: on_flush,
        datagrams, events)."""
        if not self.sends_first:
            self._drain_events()
        if self.on_flush is not None:
            try:
                self.on_flush()
            except Exception as exc:
                self.errors.record("on_flush", exc)
        self._send_now()  # (again first what on_flush made the core say)
        self._arm()

    def send(self, data: bytes, addr: Endpoint) -> None:
        if self.trace is not None:
            self.trace.datagram("send", data, addr)
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
        try:
            self.core.handle_timer(self.loop.time())
        except Exception as exc:  # the timer is re-armed below all the same
            self.errors.record("handle_timer", exc)
        self.flush()
