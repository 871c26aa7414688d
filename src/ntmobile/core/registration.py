"""A client's registration with one DC, shared by the node (one DC) and the relay (one per DC it serves).

The mechanics are the same for both (docs/protocol.md, registration): a long-term channel to the
DC (keys from the enrolment PSK); a Registration Request carrying a fresh X25519 ephemeral, sealed
on that channel and retransmitted until answered or timed out; the Registration Response's
ephemeral turns into the session channel; failures are retried with a doubling backoff; session
keepalives at the interval the DC asked for, and after ``KEEPALIVE_MISSES`` lost ones the client
registers again.

What differs is policy, left to the subclass (``NodeCore``'s ``_NodeDcLink``, ``RsCore``'s ``_Dc``):
the request's contents, which responses it refuses, the events and counters it reports, the
keepalive's interval, timeout and contents, and whether the old session carries on while a
re-registration is under way (the node's does: its paths keep working during a handover).

A client is not a core: it sends and schedules through the ``CoreBase`` that owns it.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable

from ntmobile.crypto import Channel, CounterFloor, Ephemeral, long_term_keys, session_keys
from ntmobile.wire import (
    Endpoint,
    Keepalive,
    Message,
    RegistrationRequest,
    RegistrationResponse,
    SignalFlags,
    SignalHeader,
    StatusMessage,
)

from .common import CoreBase
from .timing import KEEPALIVE_MISSES, REGISTRATION_BACKOFF_INITIAL, REGISTRATION_BACKOFF_MAX


class DcState(enum.Enum):
    IDLE = "idle"
    REGISTERING = "registering"
    REGISTERED = "registered"
    BACKOFF = "backoff"


class RegistrationClient:
    """One client's registration with one DC. Subclasses fill in the hooks below."""

    #: True: starting a registration leaves the current session and its keepalives running until the
    #: new session is up. False: it stops them (and cancels every request of this client in flight).
    KEEP_SESSION_WHILE_REGISTERING = False
    #: Counter for a Registration Response that answers no pending registration.
    STALE_STAT = "drop_late_response"
    #: Reason given when the DC does not answer the Registration Request in time.
    TIMEOUT_REASON = "no answer from the DC"
    #: Reason given when the DC's ephemeral key is unusable; None: only count it (drop_auth).
    BAD_KEY_REASON: str | None = "degenerate ephemeral key from the DC"

    def __init__(self, core: CoreBase, client_id: bytes, endpoint: Endpoint, psk: bytes, *, counter: CounterFloor,
                 random_bytes: Callable[[int], bytes], timeout: float, keepalive: float = 0.0) -> None:
        self.core = core
        self.client_id = client_id
        self.endpoint = endpoint
        self.psk = psk
        self.timeout = timeout
        self.long_term = Channel(long_term_keys(psk, client_id), client_id, counter=counter)
        self.session: Channel | None = None
        self.state = DcState.IDLE
        #: Bumped when the keepalive chain of the session must stop (and older retry timers).
        self.gen = 0
        self.ephemeral: Ephemeral | None = None
        self.reg_txid: int | None = None
        self.ka_txid: int | None = None
        #: Keepalive interval (0: none).
        self.keepalive = keepalive
        self.missed = 0
        self.backoff = REGISTRATION_BACKOFF_INITIAL
        self.observed: Endpoint | None = None
        self.nat: int | None = None
        self.registered_at: float | None = None
        self._rand = random_bytes

    # -- hooks -----------------------------------------------------------------------------------
    def _new_txid(self) -> int:
        raise NotImplementedError

    def _request_message(self, ephemeral: bytes) -> RegistrationRequest:
        raise NotImplementedError

    def _refusal(self, header: SignalHeader, msg: RegistrationResponse) -> tuple[int, str] | None:
        """(status, reason) when the Registration Response cannot be used; None when it can."""
        raise NotImplementedError

    def _keepalive_interval(self, msg: RegistrationResponse) -> float:
        raise NotImplementedError

    def _keepalive_message(self) -> Keepalive:
        return Keepalive()

    def _keepalive_timeout(self) -> float:
        raise NotImplementedError

    def _registered(self, msg: RegistrationResponse, now: float) -> None:
        """The session is up (state, keys and counters already updated): report it."""

    def _failed(self, status: int | None, reason: str, now: float) -> None:
        """A registration attempt failed (``status`` None: no usable answer); a retry is scheduled."""

    def _may_retry(self, gen: int) -> bool:
        return self.gen == gen and self.state is DcState.BACKOFF

    def _retry(self, now: float) -> None:
        self.start(now)

    def _lost(self, now: float) -> None:
        """``KEEPALIVE_MISSES`` keepalives in a row went unanswered (the chain is already stopped)."""
        self.start(now)

    def _on_status(self, header: SignalHeader, msg: StatusMessage, now: float) -> None:
        """A Status message on the long-term channel."""

    def _on_other(self, header: SignalHeader, msg: Message, addr: Endpoint, now: float) -> bool:
        """Any other message on the long-term channel; False: unexpected (counted and dropped)."""
        return False

    # -- registration ----------------------------------------------------------------------------
    def start(self, now: float) -> None:
        """Send a Registration Request (a new ephemeral; a pending one is abandoned)."""
        if self.KEEP_SESSION_WHILE_REGISTERING:
            if self.reg_txid is not None:
                self.core._answered(self.long_term, self.reg_txid)
        else:
            self.gen += 1
            self.ka_txid = None
            self.core._cancel_where(lambda p: p.tag is self)
        self.state = DcState.REGISTERING
        self.ephemeral = Ephemeral(self._rand)
        self.reg_txid = txid = self._new_txid()
        msg = self._request_message(self.ephemeral.public)
        self.core._request(self.long_term, msg, txid, self.endpoint, now, timeout=self.timeout,
                           flags=SignalFlags.LONG_TERM, tag=self,
                           on_timeout=functools.partial(self._timed_out, txid))

    def resend(self) -> None:
        """Send the pending Registration Request again now (e.g. a route just appeared)."""
        if self.reg_txid is not None:
            pending = self.core._pending.get((id(self.long_term), self.reg_txid))
            if pending is not None:
                self.core._transmit(pending)

    def _timed_out(self, txid: int, now: float) -> None:
        if txid == self.reg_txid and self.state is DcState.REGISTERING:
            self.fail(None, self.TIMEOUT_REASON, now)

    def fail(self, status: int | None, reason: str, now: float) -> None:
        """The pending registration failed: report it and retry after the backoff."""
        if self.reg_txid is not None:
            self.core._answered(self.long_term, self.reg_txid)
        self.state = DcState.BACKOFF
        self.reg_txid = None
        self.ephemeral = None
        delay = self.backoff
        self.backoff = min(self.backoff * 2, REGISTRATION_BACKOFF_MAX)
        self._failed(status, reason, now)
        self.core._call_at(now + delay, functools.partial(self._retry_after_backoff, self.gen))

    def _retry_after_backoff(self, gen: int, now: float) -> None:
        if self._may_retry(gen):
            self._retry(now)

    def receive_long_term(self, header: SignalHeader, data: bytes, addr: Endpoint, now: float) -> None:
        """A datagram from the DC flagged LONG_TERM."""
        msg = self.core._open(self.long_term, header, data)
        if msg is None:
            return
        if isinstance(msg, RegistrationResponse):
            self._on_response(header, msg, now)
        elif isinstance(msg, StatusMessage):
            self._on_status(header, msg, now)
        elif not self._on_other(header, msg, addr, now):
            self.core.stats["drop_unexpected"] += 1

    def _on_response(self, header: SignalHeader, msg: RegistrationResponse, now: float) -> None:
        eph = self.ephemeral
        if header.txid != self.reg_txid or eph is None:
            self.core.stats[self.STALE_STAT] += 1
            return
        self.core._answered(self.long_term, header.txid)
        refusal = self._refusal(header, msg)
        if refusal is not None:
            self.fail(refusal[0], refusal[1], now)
            return
        try:
            shared = eph.exchange(msg.ephemeral)
        except ValueError:
            self.core.stats["drop_auth"] += 1
            if self.BAD_KEY_REASON is not None:
                self.fail(None, self.BAD_KEY_REASON, now)
            return
        keys = session_keys(self.psk, shared, self.client_id, eph.public, msg.ephemeral)
        self.session = Channel(keys, self.client_id)
        self.state = DcState.REGISTERED
        self.reg_txid = None
        self.ephemeral = None
        self.backoff = REGISTRATION_BACKOFF_INITIAL
        self.missed = 0
        self.gen += 1
        self.keepalive = self._keepalive_interval(msg)
        self.observed = msg.observed
        self.nat = msg.nat
        self.registered_at = now
        self._registered(msg, now)
        if self.keepalive > 0:
            self.core._call_at(now + self.keepalive, functools.partial(self._send_keepalive, self.gen))

    # -- keepalives ------------------------------------------------------------------------------
    def _send_keepalive(self, gen: int, now: float) -> None:
        if gen != self.gen or self.session is None:
            return
        if self.ka_txid is not None:
            self.core._answered(self.session, self.ka_txid)
        self.ka_txid = txid = self._new_txid()
        self.core._request(self.session, self._keepalive_message(), txid, self.endpoint, now,
                           timeout=self._keepalive_timeout(), tag=self,
                           on_timeout=functools.partial(self._keepalive_missed, gen, txid))
        self.core._call_at(now + self.keepalive, functools.partial(self._send_keepalive, gen))

    def _keepalive_missed(self, gen: int, txid: int, now: float) -> None:
        if gen != self.gen:
            return
        if self.ka_txid == txid:
            self.ka_txid = None
        self.missed += 1
        self.core.stats["keepalive_missed"] += 1
        if self.missed >= KEEPALIVE_MISSES:
            self.gen += 1
            self._lost(now)
