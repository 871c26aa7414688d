"""The RS-S kernel fast path's decisions (``core.rs.fastpolicy.FastPolicy``) and the core's
accounting of kernel-forwarded data (``RsCore.kernel_forwarded``), on a real relay core.

Which paths the kernel may forward: RS-S, both legs learnt, one address family the relay has,
and leg endpoints that carry no other path (the kernel forwards a coalesced packet as a whole, so
a second path on the same 5-tuple would be forwarded with the first one's rewrite)."""

from __future__ import annotations

import os
from collections import Counter

from ntmobile.core.rs import RelayAdded, RsCore, RssEntry
from ntmobile.core.rs.fastpolicy import FastPath, FastPolicy
from ntmobile.wire import RelayDirection, RsType, Status, TunnelRequest

from .test_rs_core import NODE_A, NODE_B, FakeDc, LegS, direct, events, setup_rs_n, setup_rs_s

RS4 = "192.0.2.20"


def add_rs_s(core: RsCore, dc: FakeDc, pid: bytes, a: tuple[str, int], b: tuple[str, int], txid: int) -> None:
    rk, pk = os.urandom(32), os.urandom(32)
    msg = RelayDirection(path_id=pid, rs_type=RsType.S, idle_timeout=60, relay_key=rk, node_vip4="100.64.0.7",
                         peer_vip4="100.64.0.8", node_endpoint=a, responder_endpoint=b)
    evs, hdr, _ = direct(core, dc, msg, txid=txid)
    assert hdr.status == Status.OK and isinstance(evs[0], RelayAdded)
    ini, resp = LegS(pid, rk, pk, responder=False), LegS(pid, rk, pk, responder=True)
    core.receive_datagram(ini.request(txid * 10), a, 2.0)
    core.receive_datagram(resp.request(txid * 10 + 1, TunnelRequest(capabilities=0)), b, 2.0)
    core.datagrams_to_send()
    events(core)


def learnt_rs_s() -> tuple[RsCore, FakeDc]:
    core, dc, ini, resp = setup_rs_s()
    core.receive_datagram(ini.request(100), NODE_A, 2.0)
    core.receive_datagram(resp.request(200, TunnelRequest(capabilities=0)), NODE_B, 2.1)
    core.datagrams_to_send()
    events(core)
    return core, dc


def relay_bytes(core: RsCore, pid: bytes, n: int) -> None:
    e = core.entry(pid)
    assert e is not None
    e.bytes_i2r += n  # what relaying n bytes in the daemon does to the entry's counters


def test_a_busy_rs_s_path_is_promoted_a_quiet_one_is_not() -> None:
    core, _ = learnt_rs_s()
    pid = b"S" * 8
    pol = FastPolicy(RS4, None, promote_bytes=1000)
    assert pol.candidates(core.rs_s_entries(), core.entries, set()) == []  # first look: the baseline
    relay_bytes(core, pid, 999)
    assert pol.candidates(core.rs_s_entries(), core.entries, set()) == []
    relay_bytes(core, pid, 1000)
    assert pol.candidates(core.rs_s_entries(), core.entries, set()) == [FastPath(pid, NODE_A, NODE_B)]
    # Already in the kernel: not again.
    relay_bytes(core, pid, 5000)
    assert pol.candidates(core.rs_s_entries(), core.entries, {pid}) == []


def test_busiest_first_within_the_limit() -> None:
    core, dc = learnt_rs_s()
    add_rs_s(core, dc, b"T" * 8, ("203.0.113.11", 1), ("198.18.0.21", 2), txid=3)
    add_rs_s(core, dc, b"U" * 8, ("203.0.113.12", 1), ("198.18.0.22", 2), txid=4)
    pol = FastPolicy(RS4, None, promote_bytes=10, max_fast=3)
    pol.candidates(core.rs_s_entries(), core.entries, set())
    for pid, n in ((b"S" * 8, 100), (b"T" * 8, 300), (b"U" * 8, 200)):
        relay_bytes(core, pid, n)
    assert [p.path_id for p in pol.candidates(core.rs_s_entries(), core.entries, {b"X" * 8})] == [b"T" * 8, b"U" * 8]


def test_a_leg_endpoint_shared_with_another_path_keeps_both_in_the_daemon() -> None:
    core, dc = learnt_rs_s()
    pol = FastPolicy(RS4, None, promote_bytes=1)
    use: Counter[tuple[str, int]] = Counter()
    for e in core.entries():
        use.update(leg.endpoint for leg in e.legs() if leg.endpoint)
    [e] = core.entries()
    assert pol.eligible(e, use) == FastPath(e.path_id, NODE_A, NODE_B)
    # A second RS-S path from node A's very endpoint (another peer, same relay, same socket).
    add_rs_s(core, dc, b"T" * 8, NODE_A, ("198.18.0.30", 9), txid=5)
    pol.candidates(core.rs_s_entries(), core.entries, set())
    for e in core.entries():
        relay_bytes(core, e.path_id, 10)
    assert pol.candidates(core.rs_s_entries(), core.entries, set()) == []


def test_rs_n_paths_are_never_candidates_but_count_as_endpoint_users() -> None:
    core, _dc, _node = setup_rs_n()
    pol = FastPolicy(RS4, None, promote_bytes=1)
    pol.candidates(core.rs_s_entries(), core.entries, set())
    [e] = core.entries()
    e.bytes_i2r += 10
    assert pol.candidates(core.rs_s_entries(), core.entries, set()) == []
    assert pol.eligible(e, Counter({NODE_A: 1})) is None


def test_families_the_kernel_cannot_rewrite() -> None:
    core, _ = learnt_rs_s()
    [e] = core.entries()
    use = Counter({NODE_A: 1, NODE_B: 1})
    assert FastPolicy(None, "2001:db8::20").eligible(e, use) is None  # no IPv4 address to send from
    assert isinstance(e, RssEntry)
    e.responder.endpoint = ("2001:db8::30", 5)
    assert FastPolicy(RS4, "2001:db8::20").eligible(e, Counter({NODE_A: 1, ("2001:db8::30", 5): 1})) is None


def test_conflicts_name_the_path_itself_and_any_fast_path_at_that_endpoint() -> None:
    a = FastPath(b"A" * 8, NODE_A, NODE_B)
    b = FastPath(b"B" * 8, ("203.0.113.50", 1), ("198.18.0.50", 2))
    assert FastPolicy.conflicts([a, b], b"A" * 8, ("10.0.0.1", 1)) == [b"A" * 8]
    assert FastPolicy.conflicts([a, b], b"Z" * 8, NODE_B) == [b"A" * 8]
    assert FastPolicy.conflicts([a, b], b"Z" * 8, ("10.0.0.1", 1)) == []


def test_kernel_forwarded_data_counts_and_keeps_the_entry_alive() -> None:
    core, _ = learnt_rs_s()
    [e] = core.entries()
    before = (e.packets_i2r, e.bytes_i2r, e.packets_r2i, e.bytes_r2i)
    active = e.last_active
    assert core.kernel_forwarded(e.path_id, (3, 190_000), (5, 400), 50.0)
    assert (e.packets_i2r, e.bytes_i2r, e.packets_r2i, e.bytes_r2i) == (
        before[0] + 3, before[1] + 190_000, before[2] + 5, before[3] + 400)
    assert e.last_active == 50.0 and core.stats["kernel_forwarded"] == 8
    assert core.kernel_forwarded(e.path_id, (0, 0), (0, 0), 80.0) and e.last_active == 50.0
    assert e.last_active > active
    # The idle timer sees the activity: the entry outlives its original deadline.
    core.handle_timer(active + e.idle_timeout + 1)
    assert core.entry(e.path_id) is e
    assert not core.kernel_forwarded(b"Q" * 8, (1, 1), (0, 0), 51.0)
    rsn, _dc, _node = setup_rs_n()
    assert not rsn.kernel_forwarded(rsn.entries()[0].path_id, (1, 1), (0, 0), 51.0)
