"""A client's registration with one DC, shared by the node (one DC) and the relay (one per DC it serves).

The mechanics are the same for both (docs/protocol.md, registration): a long-term channel to the
DC (keys from the enrolment PSK); a Registration Request carrying a fresh X25519 ephemeral, sealed
on that channel and retransmitted until answered or timed out; the Registration Response's
ephemeral turns into the session channel; failures are retried with a doubling backoff; session
keepalives at the interval the DC asked for, and after ``KEEPALIVE_MISSES`` lost ones the session
is lost.

What differs is policy, given as data (``RegistrationPolicy``) and three callables of the owner: the
request's contents, the keepalive's contents, and what the owner does with each ``Outcome``
(``SessionUp``, ``AttemptFailed``, ``SessionLost``, ``RetryDue``). Whether the old session carries on while a
re-registration is under way is the policy's ``keep_session`` (the node's does: its paths keep
working during a handover); such a re-registration is the state RENEWING.

A client is not a core: it sends and schedules through the signalling port of the ``CoreBase`` that
owns it (``send_request``, ``cancel_request``, ``retransmit``, ``call_at``, ``open_sealed``).

States (``DcState``; ``_TRANSITIONS`` lists every legal move)::

    IDLE --start--> REGISTERING --response--> REGISTERED --start(keep_session)--> RENEWING
                      |    ^                     |   ^                              |  |
                failure|    |start          start |   +------------response----------+  |
                      v    |                     v                                     |
                    BACKOFF-+               REGISTERING <----keepalives lost-----------+
    (RENEWING --failure--> REGISTERED: the old session is still up; keepalives lost in REGISTERED or
    RENEWING --> REGISTERING, the owner being told ``SessionLost``.)
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass, replace

from ntmobile.crypto import Channel, CounterFloor, Ephemeral, long_term_keys, session_keys
from ntmobile.wire import (
    Endpoint,
    Keepalive,
    Message,
    RegistrationRequest,
    RegistrationResponse,
    SignalFlags,
    SignalHeader,
    Status,
)

from .common import CoreBase, Timer, _Pending
from .timing import KEEPALIVE_MISSES, REGISTRATION_BACKOFF_INITIAL, REGISTRATION_BACKOFF_MAX


class DcState(enum.Enum):
    IDLE = "idle"
    REGISTERING = "registering"
    #: Registering again while the previous session (and its keepalives) carries on.
    RENEWING = "renewing"
    REGISTERED = "registered"
    BACKOFF = "backoff"


_S = DcState
#: Every legal move of a client (state -> the states it may go to).
_TRANSITIONS: dict[DcState, frozenset[DcState]] = {
    _S.IDLE: frozenset({_S.REGISTERING}),
    _S.REGISTERING: frozenset({_S.REGISTERING, _S.REGISTERED, _S.BACKOFF}),
    _S.BACKOFF: frozenset({_S.REGISTERING}),
    _S.REGISTERED: frozenset({_S.REGISTERING, _S.RENEWING}),
    _S.RENEWING: frozenset({_S.RENEWING, _S.REGISTERED, _S.REGISTERING}),
}


class RegistrationStateError(RuntimeError):
    """An illegal move of a registration client's state (a bug in the caller, never input)."""


# -- what the owner is told --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionUp:
    """The session is up (state, keys, observed endpoint and keepalive interval already set)."""
    response: RegistrationResponse


@dataclass(frozen=True, slots=True)
class AttemptFailed:
    """A registration attempt failed (``status`` None: no usable answer)."""
    status: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class SessionLost:
    """``KEEPALIVE_MISSES`` keepalives in a row went unanswered; the keepalive chain is stopped and a
    new registration is up to the owner (``start``)."""


@dataclass(frozen=True, slots=True)
class RetryDue:
    """The backoff after a failure is over: the owner starts again (or not)."""


Outcome = SessionUp | AttemptFailed | SessionLost | RetryDue


@dataclass(frozen=True, slots=True)
class RegistrationPolicy:
    """What differs between the node's and the relay's registration."""

    #: True: a start while registered leaves the current session and its keepalives running until the
    #: new session is up (RENEWING). False: it stops them (and cancels every request of this client).
    keep_session: bool
    #: Keepalive timeout for a keepalive interval.
    keepalive_timeout: Callable[[float], float]
    #: Keepalive interval when the Registration Response asks for none (0: none).
    default_keepalive: float = 0.0
    #: The protocol versions a Registration Response may choose (inclusive).
    versions: tuple[int, int] = (1, 1)
    #: A Registration Response whose status is not OK is a refusal (the relay's); False: its status
    #: is not looked at (the node's DC refuses with a Status message instead).
    refuse_on_status: bool = False
    #: Counter for a Registration Response that answers no pending registration.
    stale_stat: str = "drop_late_response"
    #: Reason given when the DC does not answer the Registration Request in time.
    timeout_reason: str = "no answer from the DC"
    #: Reason given when the DC's ephemeral key is unusable; None: only count it (drop_auth).
    bad_key_reason: str | None = "degenerate ephemeral key from the DC"


class RegistrationClient:
    """One client's registration with one DC (see the module docstring)."""

    def __init__(self, core: CoreBase, client_id: bytes, endpoint: Endpoint, psk: bytes, *, counter: CounterFloor,
                 random_bytes: Callable[[int], bytes], new_txid: Callable[[], int], timeout: float,
                 policy: RegistrationPolicy, request_message: Callable[[bytes], RegistrationRequest],
                 on_outcome: Callable[[Outcome, float], None],
                 keepalive_message: Callable[[], Keepalive] = Keepalive) -> None:
        self.core = core
        self.client_id = client_id
        self.endpoint = endpoint
        self.psk = psk
        self.timeout = timeout
        self.policy = policy
        self.long_term = Channel(long_term_keys(psk, client_id), client_id, counter=counter)
        self.session: Channel | None = None
        self.state = DcState.IDLE
        self.ephemeral: Ephemeral | None = None
        self.reg_txid: int | None = None
        #: Keepalive interval (0: none).
        self.keepalive = policy.default_keepalive
        #: Keepalives lost in a row that end the session (SessionLost). A node with DC replicas sets
        #: 1: another replica is there to take it, so it moves at the first silence (issue 17).
        self.misses_allowed = KEEPALIVE_MISSES
        #: Keepalive interval when the Registration Response asks for none (0: none). A node with DC
        #: replicas sets one: it must notice its replica's death even with no NAT to keep open.
        self.default_keepalive = policy.default_keepalive
        self.missed = 0
        self.backoff = REGISTRATION_BACKOFF_INITIAL
        self.observed: Endpoint | None = None
        self.nat: int | None = None
        self.registered_at: float | None = None
        self._rand = random_bytes
        self._new_txid = new_txid
        self._request_message = request_message
        self._keepalive_message = keepalive_message
        self._outcome = on_outcome
        self._reg: _Pending | None = None
        self._ka: _Pending | None = None
        self._ka_timer: Timer | None = None
        self._retry_timer: Timer | None = None

    def _move(self, to: DcState) -> None:
        if to not in _TRANSITIONS[self.state]:
            raise RegistrationStateError(f"registration client: {self.state.value} -> {to.value}")
        self.state = to

    # -- registration ----------------------------------------------------------------------------
    def start(self, now: float) -> None:
        """Send a Registration Request (a new ephemeral; a pending one is abandoned)."""
        self._abandon_pending()
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None
        if self.policy.keep_session and self.state in (DcState.REGISTERED, DcState.RENEWING):
            self._move(DcState.RENEWING)
        else:
            self._stop_keepalives()
            self._move(DcState.REGISTERING)
        self.ephemeral = Ephemeral(self._rand)
        self.reg_txid = txid = self._new_txid()
        msg = self._request_message(self.ephemeral.public)
        top = self.long_term.window.top
        if top > 0:  # DC replicas answer above what we have accepted (see RegistrationRequest.recv_floor)
            msg = replace(msg, recv_floor=top)
        self._reg = self.core.send_request(self.long_term, msg, txid, self.endpoint, now, timeout=self.timeout,
                                           flags=SignalFlags.LONG_TERM,
                                           on_timeout=functools.partial(self._timed_out, txid))

    def resend(self) -> None:
        """Send the pending Registration Request again now (e.g. a route just appeared)."""
        self.core.retransmit(self._reg)

    def drop_session(self) -> None:
        """The DC has forgotten the session (REREGISTER): stop using it and its keepalives."""
        self._stop_keepalives()
        self.session = None

    def _abandon_pending(self) -> None:
        self.core.cancel_request(self._reg)
        self._reg = None
        self.reg_txid = None
        self.ephemeral = None

    def _timed_out(self, txid: int, now: float) -> None:
        if txid == self.reg_txid:
            self._reg = None
            self.fail(None, self.policy.timeout_reason, now)

    def fail(self, status: int | None, reason: str, now: float) -> None:
        """The pending registration failed: report it; retry after the backoff unless a previous session
        is still up (RENEWING goes back to REGISTERED)."""
        self._abandon_pending()
        if self.state is DcState.RENEWING:
            self._move(DcState.REGISTERED)
        elif self.state is DcState.REGISTERING:
            self._move(DcState.BACKOFF)
            delay = self.backoff
            self.backoff = min(self.backoff * 2, REGISTRATION_BACKOFF_MAX)
            self._retry_timer = self.core.call_at(now + delay, self._retry_due)
        self._outcome(AttemptFailed(status, reason), now)

    def _retry_due(self, now: float) -> None:
        self._retry_timer = None
        self._outcome(RetryDue(), now)

    def receive_long_term(self, header: SignalHeader, data: bytes, addr: Endpoint,
                          now: float) -> Message | None:
        """A datagram from the DC flagged LONG_TERM. A Registration Response is handled here; any other
        message that opens is returned for the owner (None: handled, or dropped and counted)."""
        msg = self.core.open_sealed(self.long_term, header, data)
        if msg is None:
            return None
        if isinstance(msg, RegistrationResponse):
            self._on_response(header, msg, now)
            return None
        return msg

    def _refusal(self, header: SignalHeader, msg: RegistrationResponse) -> tuple[int, str] | None:
        p = self.policy
        if p.refuse_on_status and header.status != Status.OK:
            return header.status, "registration refused"
        if not p.versions[0] <= msg.version <= p.versions[1]:
            return Status.UNSUPPORTED_VERSION, (f"the DC chose protocol version {msg.version}; this side speaks "
                                                f"{p.versions[0]}..{p.versions[1]}")
        return None

    def _on_response(self, header: SignalHeader, msg: RegistrationResponse, now: float) -> None:
        eph = self.ephemeral
        if header.txid != self.reg_txid or eph is None:
            self.core.stats[self.policy.stale_stat] += 1
            return
        self.core.cancel_request(self._reg)
        self._reg = None
        refusal = self._refusal(header, msg)
        if refusal is not None:
            self.fail(refusal[0], refusal[1], now)
            return
        try:
            shared = eph.exchange(msg.ephemeral)
        except ValueError:
            self.core.stats["drop_auth"] += 1
            if self.policy.bad_key_reason is not None:
                self.fail(None, self.policy.bad_key_reason, now)
            return
        keys = session_keys(self.psk, shared, self.client_id, eph.public, msg.ephemeral)
        self._stop_keepalives()
        self.session = Channel(keys, self.client_id)
        self._move(DcState.REGISTERED)
        self.reg_txid = None
        self.ephemeral = None
        self.backoff = REGISTRATION_BACKOFF_INITIAL
        self.missed = 0
        self.keepalive = float(msg.keepalive) if msg.keepalive > 0 else self.default_keepalive
        self.observed = msg.observed
        self.nat = msg.nat
        self.registered_at = now
        self._outcome(SessionUp(msg), now)
        if self.keepalive > 0 and self.session is not None:
            self._ka_timer = self.core.call_at(now + self.keepalive, self._send_keepalive)

    # -- keepalives ------------------------------------------------------------------------------
    def _stop_keepalives(self) -> None:
        if self._ka_timer is not None:
            self._ka_timer.cancel()
            self._ka_timer = None
        self.core.cancel_request(self._ka)
        self._ka = None

    def _send_keepalive(self, now: float) -> None:
        session = self.session
        if session is None:
            self._ka_timer = None
            return
        self.core.cancel_request(self._ka)
        txid = self._new_txid()
        self._ka = self.core.send_request(session, self._keepalive_message(), txid, self.endpoint, now,
                                          timeout=self.policy.keepalive_timeout(self.keepalive),
                                          on_timeout=self._keepalive_missed)
        self._ka_timer = self.core.call_at(now + self.keepalive, self._send_keepalive)

    @property
    def ka_txid(self) -> int | None:
        """The transaction of the keepalive in flight, if any."""
        return self._ka.txid if self._ka is not None else None

    def _keepalive_missed(self, now: float) -> None:
        self._ka = None
        self.missed += 1
        self.core.stats["keepalive_missed"] += 1
        if self.missed >= self.misses_allowed:
            self._stop_keepalives()
            if self.state is DcState.RENEWING:
                self._abandon_pending()
            self._move(DcState.REGISTERING)
            self._outcome(SessionLost(), now)

    def keepalive_acked(self, txid: int) -> bool:
        """A Keepalive Ack with ``txid`` arrived on the session: True if it answers the keepalive in
        flight (which is then done, and the miss count starts again)."""
        ka = self._ka
        if ka is None or ka.txid != txid:
            return False
        self.core.cancel_request(ka)
        self._ka = None
        self.missed = 0
        return True
