"""RS-N pair standby legs (issue 20; core/dc/standby.py, core/node/standby.py), in memory with real
cores: the DC installs an RS-N path at one relay of the pair and a standby leg at the other, each with
its own Path ID and key; the node switches to the leg by itself when the relay dies (or when data
arrives on the leg), asks for a new leg, and never seals under a (key, nonce) twice across switches."""

from __future__ import annotations

import dataclasses
from typing import Any

from ntmobile.core.node import PathClosed, PathReady, Registered, StandbyReady
from ntmobile.core.rs import RsCore
from ntmobile.core.timing import MOVED_GRACE
from ntmobile.wire import PathMode

from .harness import ipv4_udp, seeded_bytes
from .nonce_ledger import nonce_ledger
from .test_liveness import BOUND, busy
from .test_relay_failure import RS2_EP, TwoRelays
from .test_rsn_sequence import MN_PUB, RS_EP

PAIR = (("rs1", "rs2"),)


def pair_world(**rs2_config: Any) -> TwoRelays:
    w = TwoRelays()
    w.dc.config = dataclasses.replace(w.dc.config, rsn_pairs=PAIR)
    if rs2_config:
        w.rs2.config = dataclasses.replace(w.rs2.config, **rs2_config)
    return w


def standby(w: TwoRelays, pid: bytes, max_time: float = 5.0) -> Any:
    def ready() -> bool:
        sb = w.mn.standby_of(pid)
        return sb is not None and sb.established
    w.net.run_until(ready, max_time=max_time)
    return w.mn.standby_of(pid)


def kill(w: TwoRelays, *hosts: str) -> None:
    w.net.drop = lambda src, dst, data: src in hosts or dst in hosts


def restart(w: TwoRelays, host: str, seq_base: int, seed: int) -> RsCore:
    """The relay on ``host`` starts again (empty table) and registers."""
    w.net.drop = None
    old = w.net.hosts[host].core
    rs = RsCore(old.config, w.net.now, seq_base=seq_base, random_bytes=seeded_bytes(seed))
    w.net.hosts[host].core = rs
    if host == "rs":
        w.rs = rs
    else:
        w.rs2 = rs
    rs.register(w.net.now)
    w.net.run_until(lambda: rs.stats["registrations"] == 1 and len(w.dc.relays()) == 2, max_time=30)
    return rs


def goes_by(w: TwoRelays, relay: RsCore, gn_vip: str | None, payload: bytes) -> bool:
    """A packet from mn to ``gn_vip`` reaches ``relay``'s TUN (and was the last to)."""
    pkt = ipv4_udp(w.mn.registration.vip4, gn_vip, payload)  # type: ignore[arg-type, union-attr]
    w.send_ip("mn", pkt)
    w.net.step()
    return [p for p, _gso in relay.packets_to_tun()][-1:] == [pkt]


def test_dc_installs_the_path_and_a_standby_leg_with_their_own_keys_and_path_ids() -> None:
    w = pair_world()
    first = w.setup_path().path
    assert first.rs_name == "rs1" and first.mode is PathMode.RS_N
    sb = standby(w, first.path_id)
    assert sb.rd.rs_name == "rs2" and sb.endpoint == RS2_EP
    [active] = w.rs.entries()
    [leg] = w.rs2.entries()
    assert active.path_id == first.path_id and leg.path_id == sb.path_id != first.path_id
    # never one key at two relays
    assert active.direction.path_key != leg.direction.path_key and leg.direction.standby == 1
    assert sb.data_keys != first.data_keys
    # same node VIP and GN VIP (the kernel NAT keys on them), same GN address
    assert leg.nat_mappings() == active.nat_mappings()
    assert w.dc.stats["rsn_standby_installed"] == 1
    [ev] = w.net.events_of("mn", StandbyReady)
    assert ev.path_id == first.path_id and ev.standby.path_id == sb.path_id


def test_node_switches_to_the_standby_leg_without_the_dc() -> None:
    w = pair_world()
    first = w.setup_path().path
    sb = standby(w, first.path_id)
    busy(w, first.path_id, 1.0, replies=True)
    dead_at = w.net.now
    kill(w, "rs", "dc")  # rs1 dies and the DC is unreachable: the node alone
    busy(w, first.path_id, 5.0, replies=False)
    took = w.net.now - dead_at
    assert took <= BOUND, took
    [c] = w.net.events_of("mn", PathClosed)
    assert c.path_id == first.path_id and "standby" in c.reason
    now_ready = [e for e in w.net.events_of("mn", PathReady) if e.path.path_id == sb.path_id]
    assert now_ready and now_ready[-1].path.rs_name == "rs2" and now_ready[-1].path.endpoint == RS2_EP
    assert w.mn.stats["rsn_standby_switches"] == 1 and w.mn.stats["rsn_rebuilds"] == 0
    print(f"switched to the standby leg {took:.2f} s after the relay's death")
    assert goes_by(w, w.rs2, first.peer_vip4, b"after")  # the GN VIP's traffic by rs2, under the leg's key


def test_data_on_the_standby_leg_switches_the_path() -> None:
    w = pair_world()
    first = w.setup_path().path
    sb = standby(w, first.path_id)
    # The shared address moved to rs2 before the node noticed: the GN's answer comes by the leg.
    reply = ipv4_udp(first.peer_vip4, w.mn.registration.vip4, b"by rs2")  # type: ignore[arg-type, union-attr]
    w.rs2.tun_packet(reply, w.net.now)
    w.net.step()
    assert w.received("mn") == [reply]
    assert w.mn.stats["rsn_standby_switched_by_data"] == 1
    assert sb.path_id in w.mn._paths and first.path_id not in w.mn._paths
    assert goes_by(w, w.rs2, first.peer_vip4, b"back")


def test_unauthenticated_datagrams_from_the_standby_address_switch_nothing_and_allocate_nothing() -> None:
    w = pair_world()
    first = w.setup_path().path
    sb = standby(w, first.path_id)
    dp = w.net.hosts["mn"].dp
    assert dp is not None
    before = (dict(w.mn._paths), dict(w.mn._standby_legs), len(w.mn._early), dict(dp.fwd.by_dst))
    sealed = bytearray(sb.sealer.__class__(seeded_bytes(5)(32), sb.path_id, 0).seal(b"\x45" + b"\x00" * 39))
    for junk in (bytes(sealed),  # the leg's Path ID, another key
                 bytes(sealed[:-1]) + bytes([sealed[-1] ^ 1]),
                 bytes([sealed[0], 0x07]) + bytes(sealed[2:])):  # signalling type, the leg's Path ID
        w.net.hosts["mn"].dp.receive_datagram(junk, RS2_EP, w.net.now)  # type: ignore[union-attr]
        w.mn.receive_datagram(junk, RS2_EP, w.net.now)
    w.net.step()
    assert (dict(w.mn._paths), dict(w.mn._standby_legs), len(w.mn._early), dict(dp.fwd.by_dst)) == before
    assert w.mn.stats["rsn_standby_switches"] == 0 and dp.fwd.stats["rx_standby_switches"] == 0
    assert dp.fwd.stats["rx_auth"] >= 1
    assert w.received("mn") == []


def test_no_key_and_nonce_twice_across_switches_back_and_forth() -> None:
    with nonce_ledger() as ledger:
        w = pair_world()
        pid = w.setup_path().path.path_id
        keys = set()
        vip4 = w.mn.registration.vip4  # type: ignore[union-attr]
        hosts = ["rs", "rs2"]
        for i in range(4):
            sb = standby(w, pid, max_time=10.0)
            assert sb is not None, f"no standby leg before kill {i + 1}"
            path = w.mn._paths[pid]
            keys.update({path.rd.path_key, sb.rd.path_key})
            gn_vip = path.rd.peer_vip4
            for _ in range(3):
                w.send_ip("mn", ipv4_udp(vip4, gn_vip, b"x" * 100))  # type: ignore[arg-type]
            busy(w, pid, 0.5, replies=True)
            dead = hosts[i % 2]
            kill(w, dead)
            busy(w, pid, 5.0, replies=False)
            assert pid not in w.mn._paths and sb.path_id in w.mn._paths, f"kill {i + 1}: not switched"
            pid = sb.path_id
            for _ in range(3):
                w.send_ip("mn", ipv4_udp(vip4, gn_vip, b"y" * 100))  # type: ignore[arg-type]
            w.net.step()
            restart(w, dead, seq_base=10 ** 16 * (i + 2), seed=100 + i)
        assert w.mn.stats["rsn_standby_switches"] == 4
        assert len(keys) == 5  # the first path's and four legs': every leg its own key
        assert ledger.seals > 0 and ledger.reused == []


def test_a_standby_relay_that_refuses_leaves_the_path_as_without_a_pair() -> None:
    w = pair_world(max_paths=0)  # rs2 answers BUSY
    first = w.setup_path().path
    w.net.run_until(lambda: w.dc.stats["rsn_standby_refused"] >= 1, max_time=5)
    assert w.mn.standby_of(first.path_id) is None and w.rs2.entries() == []
    assert goes_by(w, w.rs, first.peer_vip4, b"still")
    assert first.endpoint == RS_EP
    # and a dead relay is handled as today: closed, rebuilt by name
    busy(w, first.path_id, 0.5, replies=True)
    kill(w, "rs")
    busy(w, first.path_id, 5.0, replies=False)
    assert w.mn.stats["rsn_rebuilds"] == 1 and w.mn.stats["rsn_standby_switches"] == 0


# -- a node move while the path has a standby leg -------------------------------------------------------

NAT_B = (("10.2.0.10", 7412), ("192.0.2.101", 40002))  # (as test_handover: behind NAT B)
GLOBAL = (("192.0.2.60", 7412), None)


def roundtrip(w: TwoRelays, relay: RsCore, gn_vip: str, tag: bytes) -> None:
    """A packet from mn reaches ``relay``'s TUN and the GN's answer, from that relay's TUN, reaches mn
    (at wherever mn is now: the relay seals it to the node endpoint it learnt)."""
    assert goes_by(w, relay, gn_vip, b"up " + tag)
    down = ipv4_udp(gn_vip, w.mn.registration.vip4, b"down " + tag)  # type: ignore[arg-type, union-attr]
    relay.tun_packet(down, w.net.now)
    w.net.run_until(lambda: down in w.received("mn"), max_time=2)


def test_a_move_announces_the_node_on_the_standby_leg_too() -> None:
    """mn moves (NAT A -> NAT B) while its RS-N path via rs1 has a standby leg at rs2: it announces its
    new address on both (authenticated Tunnel Requests), so rs2 knows where mn is before rs1 dies and
    the GN's traffic that reaches rs2 with the shared address goes to mn's new address, not the old."""
    w = pair_world()
    first = w.setup_path().path
    sb = standby(w, first.path_id)
    assert w.rs2.entry(sb.path_id).node_endpoint == MN_PUB  # type: ignore[union-attr]
    w.net.drop = lambda src, dst, data: "dc" in (src, dst)  # the DC out of reach: the node alone
    w.move("mn", NAT_B)
    w.net.run_until(lambda: w.rs2.entry(sb.path_id).node_endpoint == NAT_B[1]  # type: ignore[union-attr]
                    and w.rs.entry(first.path_id).node_endpoint == NAT_B[1], max_time=2)  # type: ignore[union-attr]
    assert w.mn.stats["standby_announcements"] == 1
    assert w.mn.standby_of(first.path_id) is sb  # the same leg: its Path ID, key and counters
    roundtrip(w, w.rs, first.peer_vip4, b"after the move, via rs1")  # type: ignore[arg-type]
    # The shared address moved to rs2 before the node noticed: the GN's answer by rs2 reaches mn at
    # its new address and switches the path there.
    reply = ipv4_udp(first.peer_vip4, w.mn.registration.vip4, b"by rs2")  # type: ignore[arg-type, union-attr]
    w.rs2.tun_packet(reply, w.net.now)
    w.net.run_until(lambda: reply in w.received("mn"), max_time=2)
    assert w.mn.stats["rsn_standby_switched_by_data"] == 1 and sb.path_id in w.mn._paths


def test_relay_killed_after_a_move_keeps_the_flow_and_no_key_nonce_twice() -> None:
    """After moves (NAT A -> NAT B -> global) with a standby leg, a kill of the active relay switches
    the path to the leg, which works both ways from the node's newest address; the new standby leg
    the DC installs at the restarted relay is announced from there too on the next move. No (key,
    nonce) pair is sealed twice on either leg (nor at any relay) across the moves and the switch."""
    with nonce_ledger() as ledger:
        w = pair_world()
        first = w.setup_path().path
        sb = standby(w, first.path_id)
        vip4 = w.mn.registration.vip4  # type: ignore[union-attr]
        for i, place in enumerate((NAT_B, GLOBAL)):
            w.move("mn", place)
            w.net.run_until(lambda: w.rs2.entry(sb.path_id).node_endpoint == w.seen_as("mn"),  # type: ignore[union-attr]
                            max_time=2)
            regs = i + 2
            w.net.run_until(lambda: len(w.net.events_of("mn", Registered)) == regs, max_time=5)  # noqa: B023
            roundtrip(w, w.rs, first.peer_vip4, b"move %d" % i)  # type: ignore[arg-type]
        busy(w, first.path_id, 0.5, replies=True)
        dead_at = w.net.now
        kill(w, "rs")
        # (Within MOVED_GRACE of a move a lost probe is not yet a dead relay: its answer may have gone
        # to the address the node left; liveness.py.)
        busy(w, first.path_id, MOVED_GRACE + BOUND, replies=False)
        assert first.path_id not in w.mn._paths and sb.path_id in w.mn._paths
        assert w.net.now - dead_at <= MOVED_GRACE + BOUND
        assert w.mn.stats["rsn_standby_switches"] == 1 and w.mn.stats["rsn_rebuilds"] == 0
        assert w.rs2.entry(sb.path_id).node_endpoint == GLOBAL[0]  # type: ignore[union-attr]
        roundtrip(w, w.rs2, first.peer_vip4, b"after the kill, via rs2")  # type: ignore[arg-type]
        # rs1 comes back; the DC installs a new standby leg there; another move announces it too.
        restart(w, "rs", seq_base=10 ** 16 * 3, seed=77)
        sb2 = standby(w, sb.path_id, max_time=10.0)
        assert sb2 is not None and sb2.rd.rs_name == "rs1"
        w.move("mn", NAT_B)
        w.net.run_until(lambda: w.rs.entry(sb2.path_id).node_endpoint == NAT_B[1], max_time=2)  # type: ignore[union-attr]
        roundtrip(w, w.rs2, first.peer_vip4, b"after the second move")  # type: ignore[arg-type]
        for _ in range(3):
            w.send_ip("mn", ipv4_udp(vip4, first.peer_vip4, b"z" * 100))  # type: ignore[arg-type]
        w.net.step()
        assert ledger.seals > 0 and ledger.reused == []
