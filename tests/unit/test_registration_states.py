"""core.registration's explicit states and core.common's cancellable timers."""

from __future__ import annotations

import os

import pytest

from ntmobile.core.common import CoreBase
from ntmobile.core.registration import (
    _TRANSITIONS,
    AttemptFailed,
    DcState,
    RegistrationClient,
    RegistrationPolicy,
    RegistrationStateError,
    RetryDue,
)
from ntmobile.crypto import CounterFloor
from ntmobile.wire import RegistrationRequest, Role


def _client(keep: bool) -> tuple[CoreBase, RegistrationClient, list[object]]:
    core = CoreBase()
    seen: list[object] = []
    txids = iter(range(1, 1000))
    client = RegistrationClient(
        core, b"\x01" * 8, ("192.0.2.1", 7000), b"k" * 32, counter=CounterFloor(1), random_bytes=os.urandom,
        new_txid=lambda: next(txids), timeout=2.0, policy=RegistrationPolicy(keep_session=keep,
                                                                             keepalive_timeout=lambda i: i / 2),
        request_message=lambda eph: RegistrationRequest(role=Role.NODE, name="n", ephemeral=eph, versions=(1, 1)),
        on_outcome=lambda o, now: seen.append(o))
    return core, client, seen


def test_every_state_is_reachable_from_idle() -> None:
    reached, todo = {DcState.IDLE}, [DcState.IDLE]
    while todo:
        for nxt in _TRANSITIONS[todo.pop()]:
            if nxt not in reached:
                reached.add(nxt)
                todo.append(nxt)
    assert reached == set(DcState)


def test_an_illegal_move_raises() -> None:
    _core, client, _seen = _client(keep=True)
    with pytest.raises(RegistrationStateError):
        client._move(DcState.REGISTERED)  # IDLE -> REGISTERED: no response was ever taken


def test_unanswered_registration_backs_off_then_asks_the_owner_to_retry() -> None:
    core, client, seen = _client(keep=False)
    client.start(0.0)
    assert client.state is DcState.REGISTERING and core.datagrams_to_send()
    t = 0.0
    while not seen:
        t = core.get_timer() or t + 1
        core.handle_timer(t)
    assert isinstance(seen[0], AttemptFailed) and client.state is DcState.BACKOFF
    deadline = core.get_timer()
    assert deadline is not None
    core.handle_timer(deadline)
    assert isinstance(seen[-1], RetryDue)


def test_a_start_cancels_the_pending_retry() -> None:
    core, client, seen = _client(keep=False)
    client.start(0.0)
    client.fail(None, "test", 0.0)
    client.start(0.1)  # the owner started again before the backoff ran out
    for t in (1.0, 2.0):  # the backoff (1 s) is over, the new request (2 s) not yet
        core.handle_timer(t)
    assert not any(isinstance(o, RetryDue) for o in seen) and client.state is DcState.REGISTERING


def test_renewal_failure_keeps_the_session_state() -> None:
    _core, client, seen = _client(keep=True)
    client.start(0.0)
    client._move(DcState.REGISTERED)  # (as a Registration Response would)
    client.reg_txid = None
    client.start(1.0)
    assert client.state is DcState.RENEWING
    client.fail(None, "no answer", 1.5)
    assert client.state is DcState.REGISTERED and isinstance(seen[-1], AttemptFailed)


def test_a_cancelled_timer_never_runs() -> None:
    core = CoreBase()
    ran: list[float] = []
    keep = core.call_at(1.0, ran.append)
    gone = core.call_at(0.5, ran.append)
    gone.cancel()
    assert not gone.active and core.get_timer() == 1.0
    core.handle_timer(2.0)
    assert ran == [2.0] and not keep.active
    keep.cancel()  # after it ran: a no-op
