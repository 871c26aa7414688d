"""Machinery shared by the sans-IO cores: outgoing datagrams, events, counters, retransmission.

Every core is driven the same way (the aioquic pattern):

- ``receive_datagram(data, addr, now)``: a UDP datagram arrived from ``addr``;
- API calls (``register``, ``request_path``, ...), each taking ``now``;
- ``handle_timer(now)`` when ``get_timer()`` is due.

and produces:

- ``datagrams_to_send() -> list[Datagram]``;
- ``next_event() -> Event | None``;
- ``get_timer() -> float | None``: the earliest deadline, or None.

Runtimes must drain events *before* sending the datagrams produced by the same call: an event can
ask for an OS action (install an nft mapping, configure a route) that must be in place before the
peer acts on the datagram.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ntmobile.crypto import AuthError, Channel, ReplayError
from ntmobile.wire import CodecError, Endpoint, Message, SignalHeader

from .timing import RTO_BACKOFF, RTO_INITIAL, RTO_MAX

#: No reply to unauthenticated input (whose source address nobody verified) is larger than this many
#: times the datagram it answers: DNS answers over UDP (larger ones are truncated), REREGISTER,
#: Version Not Supported, Peer Hello replies. A spoofed request cannot make the DC a reflector that
#: amplifies more than this (docs/security.md, "Reflection").
AMPLIFICATION_MAX = 4


@dataclass(frozen=True, slots=True)
class Datagram:
    data: bytes
    addr: Endpoint


class Event:
    """Base class of the events cores return."""

    __slots__ = ()


class Timer:
    """A cancellable handle on a callback a core scheduled with ``_call_at``: ``cancel()`` makes sure it
    never runs (idempotent; a no-op once it has run). Callbacks need no liveness checks of their own
    when whoever makes them obsolete cancels them."""

    __slots__ = ("when", "fn", "_live")

    def __init__(self, when: float, fn: Callable[[float], None]) -> None:
        self.when = when
        self.fn: Callable[[float], None] | None = fn
        self._live = True

    @property
    def active(self) -> bool:
        """True until it has run or been cancelled."""
        return self._live

    def cancel(self) -> None:
        self._live = False
        self.fn = None  # drop what the closure holds


@dataclass(slots=True)
class _Pending:
    key: tuple[int, int]
    channel: Channel
    msg: Message
    txid: int
    flags: int
    dest: Endpoint
    deadline: float
    give_up_at: float
    rto: float
    attempts: int = 0
    on_timeout: Callable[[float], None] | None = None
    tag: object = None
    #: When it was last (re)transmitted: with ``attempts`` == 1, its answer's arrival minus this is a
    #: round-trip sample (Karn: never from a retransmitted request).
    last_sent: float = 0.0


@dataclass(slots=True)
class CoreBase:
    """Outbox, event queue, counters and a retransmission table."""

    _out: list[Datagram] = field(default_factory=list)
    _events: deque[Event] = field(default_factory=deque)
    stats: Counter[str] = field(default_factory=Counter)
    _pending: dict[tuple[int, int], _Pending] = field(default_factory=dict)
    _timers: list[tuple[float, int, Timer]] = field(default_factory=list)
    _timer_seq: int = 0

    # -- outputs ---------------------------------------------------------------------------------
    def datagrams_to_send(self) -> list[Datagram]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        deadlines = [p.deadline for p in self._pending.values()]
        timers = self._timers
        while timers and not timers[0][2].active:
            heapq.heappop(timers)
        if timers:
            deadlines.append(timers[0][0])
        return min(deadlines) if deadlines else None

    # -- helpers for subclasses ------------------------------------------------------------------
    def _emit(self, event: Event) -> None:
        self._events.append(event)

    def _send(self, data: bytes, addr: Endpoint) -> None:
        self._out.append(Datagram(data, addr))

    def _send_unauthenticated(self, data: bytes, request_len: int, addr: Endpoint) -> bool:
        """Send a reply to input nobody authenticated (its source may be spoofed) only if it is at most
        AMPLIFICATION_MAX times the request; otherwise count it and send nothing."""
        if len(data) > AMPLIFICATION_MAX * request_len:
            self.stats["drop_reply_amplification"] += 1
            return False
        self._send(data, addr)
        return True

    def _reply(self, channel: Channel, msg: Message, txid: int, addr: Endpoint, *, status: int = 0,
               flags: int = 0) -> bytes:
        data = channel.seal(msg, txid=txid, status=status, flags=flags)
        self._send(data, addr)
        return data

    def _request(self, channel: Channel, msg: Message, txid: int, dest: Endpoint, now: float, *,
                 timeout: float, flags: int = 0, on_timeout: Callable[[float], None] | None = None,
                 tag: object = None, rto: float = RTO_INITIAL) -> _Pending:
        """Send a request and retransmit it (re-sealed, same txid) until answered or ``timeout``, first
        after ``rto``. Returns its handle, which ``_cancel_request`` takes."""
        key = (id(channel), txid)
        p = _Pending(key, channel, msg, txid, flags, dest, now + rto, now + timeout, rto,
                     on_timeout=on_timeout, tag=tag)
        self._pending[key] = p
        self._transmit(p, now)
        return p

    def _cancel_request(self, p: _Pending | None) -> None:
        """Stop retransmitting ``p`` and forget it (its ``on_timeout`` never runs). None is a no-op."""
        if p is not None and self._pending.get(p.key) is p:
            del self._pending[p.key]

    def _transmit(self, p: _Pending, now: float | None = None) -> None:
        p.attempts += 1
        if now is not None:
            p.last_sent = now
        if p.attempts > 1:
            self.stats["retransmissions"] += 1
        self._send(p.channel.seal(p.msg, txid=p.txid, flags=p.flags), p.dest)

    def _answered(self, channel: Channel | bytes, txid: int) -> _Pending | None:
        """Mark the request sent on ``channel`` with ``txid`` as answered; return it (None if unknown or
        late). Given a sender ID instead of a channel, any of our channels with that ID matches."""
        if isinstance(channel, Channel):
            return self._pending.pop((id(channel), txid), None)
        for key, p in self._pending.items():
            if p.txid == txid and p.channel.sender == channel:
                return self._pending.pop(key)
        return None

    def _cancel_where(self, pred: Callable[[_Pending], bool]) -> None:
        for k in [k for k, p in self._pending.items() if pred(p)]:
            del self._pending[k]

    def _call_at(self, when: float, fn: Callable[[float], None]) -> Timer:
        """Run ``fn(now)`` from the first ``handle_timer`` at or after ``when``; returns a handle whose
        ``cancel()`` stops it."""
        self._timer_seq += 1
        timer = Timer(when, fn)
        heapq.heappush(self._timers, (when, self._timer_seq, timer))
        return timer

    def handle_timer(self, now: float) -> None:
        for p in [p for p in self._pending.values() if p.deadline <= now]:
            if self._pending.get(p.key) is not p:
                continue
            if now >= p.give_up_at:
                del self._pending[p.key]
                self.stats["transaction_timeouts"] += 1
                if p.on_timeout is not None:
                    p.on_timeout(now)
                continue
            p.rto = min(p.rto * RTO_BACKOFF, RTO_MAX)
            p.deadline = min(now + p.rto, p.give_up_at)
            self._transmit(p, now)
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            fn = timer.fn
            if timer._live and fn is not None:
                timer._live = False
                timer.fn = None
                fn(now)

    # -- the signalling port: what a helper object a core owns (core.registration's client) may use --
    def send_request(self, channel: Channel, msg: Message, txid: int, dest: Endpoint, now: float, *,
                     timeout: float, flags: int = 0, on_timeout: Callable[[float], None] | None = None,
                     tag: object = None) -> _Pending:
        """``_request`` for helpers."""
        return self._request(channel, msg, txid, dest, now, timeout=timeout, flags=flags, on_timeout=on_timeout,
                             tag=tag)

    def cancel_request(self, p: _Pending | None) -> None:
        self._cancel_request(p)

    def retransmit(self, p: _Pending | None) -> None:
        """Send a request still in flight again now (its retransmission schedule is unchanged)."""
        if p is not None and self._pending.get(p.key) is p:
            self._transmit(p)

    def call_at(self, when: float, fn: Callable[[float], None]) -> Timer:
        return self._call_at(when, fn)

    def open_sealed(self, channel: Channel, header: SignalHeader, data: bytes) -> Message | None:
        return self._open(channel, header, data)

    def _open(self, channel: Channel, header: SignalHeader, data: bytes) -> Message | None:
        """Open a sealed message; count and drop on failure (never raises on input)."""
        try:
            return channel.open(header, data)
        except ReplayError:
            self.stats["drop_replay"] += 1
        except AuthError:
            self.stats["drop_auth"] += 1
        except CodecError:
            self.stats["drop_malformed_body"] += 1
        return None


def new_txid(random_bytes: Callable[[int], bytes]) -> int:
    return int.from_bytes(random_bytes(4), "big") or 1


def source_prefix(addr: Endpoint) -> str:
    """The network a source address belongs to for rate limits: its /24 (IPv4) or /48 (IPv6). One
    host, or one small network spoofing its neighbours, shares one bucket."""
    host = addr[0]
    if ":" not in host:
        return host.rpartition(".")[0]
    groups = host.split("%", 1)[0].split(":")
    if "" in groups:  # expand "::" far enough for the first three groups
        i = groups.index("")
        groups = groups[:i] + ["0"] * (8 - len(groups) + 1) + groups[i + 1:]
    return ":".join(g.lower().lstrip("0") or "0" for g in groups[:3])


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """Token buckets, ``now`` injected: one per key (``rate`` per second, ``burst`` at most) and one
    for all keys together (``global_rate``, ``global_burst``). At most ``max_keys`` buckets are kept
    (the oldest is forgotten first), so unauthenticated senders cannot grow it. A refused call costs
    no token."""

    def __init__(self, rate: float, burst: float, global_rate: float, global_burst: float,
                 max_keys: int = 1024) -> None:
        self.rate, self.burst = rate, burst
        self.max_keys = max_keys
        self._global = _Bucket(global_burst, 0.0)
        self._global_rate, self._global_burst = global_rate, global_burst
        self._keys: dict[str, _Bucket] = {}

    @staticmethod
    def _refill(b: _Bucket, rate: float, burst: float, now: float) -> None:
        if now > b.at:
            b.tokens = min(burst, b.tokens + (now - b.at) * rate)
        b.at = max(b.at, now)  # a clock stepped back refills nothing

    def allow(self, key: str, now: float) -> bool:
        b = self._keys.get(key)
        if b is None:
            if len(self._keys) >= self.max_keys:
                del self._keys[next(iter(self._keys))]
            b = self._keys[key] = _Bucket(self.burst, now)
        else:
            self._refill(b, self.rate, self.burst, now)
        g = self._global
        self._refill(g, self._global_rate, self._global_burst, now)
        if b.tokens < 1 or g.tokens < 1:
            return False
        b.tokens -= 1
        g.tokens -= 1
        return True

    def __len__(self) -> int:
        return len(self._keys)
