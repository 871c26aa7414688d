"""RS-S: capsules from a leg's new source are held while the leg moves, and forwarded only when the
leg's own node moves it there on an authenticated, non-replayed datagram (core/rs/hold.py, issue 21).
Hostile senders: spoofed sources, forged and replayed announcements, floods past the bounds."""

from __future__ import annotations

import os
from collections import Counter

from ntmobile.core.common import Datagram
from ntmobile.core.rs import RelayEndpointChanged, RsCore
from ntmobile.core.rs.config import HOLD_MAX_BYTES, HOLD_MAX_DATAGRAMS, HOLD_MAX_LEGS, HOLD_SOURCES, HOLD_TOTAL_BYTES
from ntmobile.core.rs.hold import MoveHold
from ntmobile.core.timing import MOVE_HOLD, RTO_INITIAL
from ntmobile.wire import Keepalive, PathRole, TunnelResponse

from .test_rs_core import ATTACKER, NODE_A, NODE_A2, NODE_B, LegS, events, setup_rs_s

PID = b"S" * 8


def active_rs_s() -> tuple[RsCore, LegS, LegS]:
    core, _dc, ini, resp = setup_rs_s(PID)
    core.receive_datagram(ini.request(1), NODE_A, 2.0)
    core.receive_datagram(resp.request(2), NODE_B, 2.1)
    core.datagrams_to_send()
    events(core)
    return core, ini, resp


def test_a_moved_legs_capsules_reach_the_other_leg_in_order_once_it_announces_itself() -> None:
    core, ini, resp = active_rs_s()
    sent = [ini.sealer.seal(f"probe {i}".encode()) for i in range(3)]
    for i, c in enumerate(sent):  # the kernel sends from the new address before the node noticed
        core.receive_datagram(c, NODE_A2, 3.0 + i * 0.01)
    assert core.datagrams_to_send() == [] and core.stats["data_held"] == 3
    core.receive_datagram(ini.request(7), NODE_A2, 3.05)  # the announcement
    assert events(core) == [RelayEndpointChanged(PID, PathRole.INITIATOR, NODE_A2)]
    out = core.datagrams_to_send()
    assert out[:3] == [Datagram(c, NODE_B) for c in sent]
    [answer] = out[3:]
    msg = ini.open(answer.data)[1]
    assert answer.addr == NODE_A2 and isinstance(msg, TunnelResponse) and msg.observed == NODE_A2
    # The far node opens each exactly once.
    assert [resp.opener.open(d.data) for d in out[:3]] == [f"probe {i}".encode() for i in range(3)]
    e = core.entry(PID)
    assert e is not None and e.packets_i2r == 3 and core.stats["data_held_released"] == 3
    assert len(core._moving) == 0 and core._moving.held_bytes == 0
    # From now on the new source is the leg: forwarded at once.
    c = ini.sealer.seal(b"after")
    core.receive_datagram(c, NODE_A2, 3.1)
    assert core.datagrams_to_send() == [Datagram(c, NODE_B)]


def test_the_responder_leg_moves_the_same_way() -> None:
    core, ini, resp = active_rs_s()
    c = resp.sealer.seal(b"from b")
    core.receive_datagram(c, ATTACKER, 3.0)  # (any new address)
    core.receive_datagram(resp.sig.seal(Keepalive(), txid=9, flags=resp.flags), ATTACKER, 3.01)
    out = core.datagrams_to_send()
    assert out[0] == Datagram(c, NODE_A) and ini.opener.open(out[0].data) == b"from b"


def test_held_capsules_are_never_forwarded_without_the_legs_authenticated_move() -> None:
    core, ini, resp = active_rs_s()
    # An attacker who saw the Path ID sends capsules from its own address ...
    junk = [foreign_capsule(os.urandom(40)) for _ in range(5)]
    for j in junk:
        core.receive_datagram(j, ATTACKER, 3.0)
    # ... and a forged announcement (no leg key), and a replay of the node's genuine one.
    forger = LegS(PID, os.urandom(32), os.urandom(32), responder=False)
    forger.sig.next_seq = 1000  # (past the replay window's floor: it is the key that fails)
    core.receive_datagram(forger.request(5), ATTACKER, 3.01)
    genuine = ini.request(8)
    core.receive_datagram(genuine, NODE_A, 3.02)  # the node, still where it was
    core.datagrams_to_send()
    core.receive_datagram(genuine, ATTACKER, 3.03)  # replayed from the attacker's address
    assert core.stats["drop_auth"] >= 1 and core.stats["drop_replay"] == 1
    assert events(core) == [] and core.datagrams_to_send() == []
    e = core.entry(PID)
    assert e is not None and e.initiator.endpoint == NODE_A and e.packets_i2r == 0
    # The held junk goes after MOVE_HOLD, counted; nothing was ever sent.
    core.handle_timer(3.0 + MOVE_HOLD)
    assert core.datagrams_to_send() == [] and core.stats["data_held_dropped"] == 5
    assert len(core._moving) == 0 and core._moving.held_bytes == 0


def test_only_the_capsules_from_the_source_the_leg_moved_to_are_released() -> None:
    core, ini, _resp = active_rs_s()
    mine = ini.sealer.seal(b"mine")
    core.receive_datagram(foreign_capsule(b"x" * 40), ATTACKER, 3.0)
    core.receive_datagram(mine, NODE_A2, 3.001)
    core.receive_datagram(ini.request(3), NODE_A2, 3.002)
    out = core.datagrams_to_send()
    assert Datagram(mine, NODE_B) in out and all(d.addr != NODE_B or d.data == mine for d in out)
    assert core.stats["data_held_released"] == 1 and core.stats["data_held_dropped"] == 1


def test_capsules_held_longer_than_move_hold_are_not_released() -> None:
    assert MOVE_HOLD < RTO_INITIAL
    core, ini, _resp = active_rs_s()
    core.receive_datagram(ini.sealer.seal(b"old"), NODE_A2, 3.0)
    core.receive_datagram(ini.request(3), NODE_A2, 3.0 + MOVE_HOLD + 0.01)
    out = core.datagrams_to_send()
    assert [d.addr for d in out] == [NODE_A2]  # only the Tunnel Response
    assert core.stats["data_held_dropped"] == 1 and core.stats["data_held_released"] == 0


def test_the_core_wakes_up_to_drop_what_it_holds() -> None:
    core, ini, _resp = active_rs_s()
    core.receive_datagram(ini.sealer.seal(b"x"), NODE_A2, 3.0)
    t = core.get_timer()
    assert t is not None and t <= 3.0 + MOVE_HOLD
    core.handle_timer(3.0 + MOVE_HOLD)
    assert len(core._moving) == 0


def foreign_capsule(body: bytes) -> bytes:
    """A data capsule of the path under a key nobody has (what an attacker who saw the Path ID sends)."""
    return LegS(PID, os.urandom(32), os.urandom(32), responder=False).sealer.seal(body)


def test_bounds_per_leg_per_relay_and_sources() -> None:
    stats: Counter[str] = Counter()
    h = MoveHold(stats)
    key = (PID, False)
    for i in range(HOLD_MAX_DATAGRAMS + 10):
        h.hold(key, ATTACKER, bytes(100), 1.0 + i * 1e-4)
    assert len(h._legs[key].items) == HOLD_MAX_DATAGRAMS and stats["hold_refused_leg"] == 10
    big = bytes(60000)
    h2 = MoveHold(stats)
    assert h2.hold(key, ATTACKER, big, 1.0) and not h2.hold(key, ATTACKER, big, 1.0)
    assert h2.held_bytes <= HOLD_MAX_BYTES
    # Sources per leg.
    h3 = MoveHold(stats)
    for i in range(HOLD_SOURCES + 3):
        h3.hold(key, ("192.0.2.1", 1000 + i), bytes(50), 1.0)
    assert len(h3._legs[key].sources) == HOLD_SOURCES and stats["hold_refused_sources"] == 3
    # The whole relay: legs holding at once and bytes.
    h4 = MoveHold(stats)
    for i in range(HOLD_MAX_LEGS + 5):
        h4.hold((i.to_bytes(8, "big"), False), ATTACKER, bytes(50), 1.0)
    assert len(h4) == HOLD_MAX_LEGS
    h5 = MoveHold(stats, max_legs=1 << 20)
    n = 0
    while h5.hold((n.to_bytes(8, "big"), False), ATTACKER, bytes(60000), 1.0):
        n += 1
    assert h5.held_bytes <= HOLD_TOTAL_BYTES and n == HOLD_TOTAL_BYTES // 60000
    # Everything goes at MOVE_HOLD; a clock that went back drops it too.
    assert h5.expire(1.0 + MOVE_HOLD) == n and h5.held_bytes == 0 and h5.deadline() is None
    h5.hold(key, ATTACKER, bytes(10), 5.0)
    assert h5.expire(4.0) == 1


def test_capsules_to_a_leg_not_announced_yet_wait_for_it() -> None:
    """A re-direction onto the relay: one node's capsules (from its learnt endpoint) arrive before the
    other node's Tunnel Request; they go on once that leg is known, in order. From anywhere but the
    learnt endpoint they stay unforwarded, as before."""
    core, _dc, ini, resp = setup_rs_s(PID)
    core.receive_datagram(resp.request(1), NODE_B, 2.0)
    core.datagrams_to_send()
    waiting = [resp.sealer.seal(b"to mn %d" % i) for i in range(3)]
    for c in waiting:
        core.receive_datagram(c, NODE_B, 2.01)
    core.receive_datagram(foreign_capsule(b"y" * 40), ATTACKER, 2.02)  # as the initiator, from elsewhere
    assert core.datagrams_to_send() == [] and core.stats["drop_no_leg"] == 0
    core.receive_datagram(ini.request(2), NODE_A, 2.05)
    out = core.datagrams_to_send()
    assert [d for d in out if d.addr == NODE_A and d.data in waiting] == [Datagram(c, NODE_A) for c in waiting]
    assert [d for d in out if d.addr == NODE_B and d.data[1] == 0x40] == []  # no data of the attacker's
    assert core.stats["data_held_dropped"] == 1
    assert [ini.opener.open(c) for c in waiting] == [b"to mn %d" % i for i in range(3)]
    assert core._moving.held_bytes == 0
