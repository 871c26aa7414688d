"""Unauthenticated memory: GSO reassembly holds bounded state (issue 14, section 2).

Nothing of a GSO capsule is authenticated before its last chunk is in, so the opener's partials
are memory a stranger can ask for. The rules (crypto.channel.CapsuleOpener, docs/dataplane.md
"Reassembly limits"): chunks that need a partial only from the path's learnt endpoint; count x seg
within the largest sealed super-packet; buffers that grow as bytes arrive; a byte budget per opener
and per pool (daemon); expiry on the daemon's timer."""

from __future__ import annotations

import os
import random
import struct
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntmobile.crypto import AuthError, CapsuleOpener, CapsuleSealer, ReassemblyPool, ReassemblyRefused
from ntmobile.crypto.channel import (
    MAX_GSO_SEALED,
    OPENER_BUDGET,
    PARTIAL_OVERHEAD,
    PROCESS_POOL,
    REASSEMBLY_SLOTS,
    REASSEMBLY_TIMEOUT,
)
from ntmobile.dataplane.forwarder import NodeForwarder
from ntmobile.wire import CodecError, pack_capsule_header
from ntmobile.wire.constants import CapsuleFlags
from ntmobile.wire.frame import CHUNK_HEADER
from tests.unit.test_rs_core import ATTACKER, GN_VIP, NODE_A, NODE_VIP, ip4, setup_rs_n

KEY = bytes(range(32))
PID = b"PATH-ID!"
GSO = int(CapsuleFlags.GSO)


def forged_chunk(counter: int, count: int = 255, index: int = 254, seg: int = 65535, body: bytes = b"x",
                 pid: bytes = PID) -> bytes:
    """The issue's datagram: a capsule header with a live Path ID and the GSO flag, a chunk header,
    a body. 25 bytes with the defaults."""
    return pack_capsule_header(GSO, pid, counter) + CHUNK_HEADER.pack(count, index, seg) + body


def chunks(blob: bytes, size: int) -> list[bytes]:
    return [blob[i:i + size] for i in range(0, len(blob), size)]


def held_bytes(o: CapsuleOpener) -> int:
    """What the opener's partials really hold: bodies plus the charged overhead."""
    return sum(PARTIAL_OVERHEAD + sum(len(b) for b in p.pieces.values()) for p in o._partial.values())


def test_the_issues_forged_chunk_flood_holds_nothing() -> None:
    """512 forged 25-byte chunks (count 255, index 254, seg 65535): on main each made a 16 MiB
    buffer (count x seg) before any tag check, 16 per opener (256 MiB). Now count x seg beyond the
    largest super-packet is malformed, even from the learnt endpoint: nothing is held."""
    pool = ReassemblyPool()
    o = CapsuleOpener(KEY, pool)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(512):
            d = forged_chunk(i + 1)
            assert len(d) == 25
            try:
                o.open_chunk(d, 0.0, learnt=True)
            except CodecError:
                pass
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert o.pending == 0 and o.held == 0 and pool.held == 0
    assert grown < 64 * 1024


def test_forged_flood_from_the_learnt_endpoint_holds_at_most_the_opener_budget() -> None:
    """A spoofer that also forges the learnt source, with plausible layouts (count 45, seg 1448)
    and random indices and counters: the opener holds at most OPENER_BUDGET (and REASSEMBLY_SLOTS
    partials), whatever it is sent; measured with tracemalloc, not only by the opener's own books."""
    pool = ReassemblyPool()
    o = CapsuleOpener(KEY, pool)
    rng = random.Random(14)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        peak = 0
        for i in range(5000):
            idx = rng.randrange(44)
            d = forged_chunk(rng.randrange(1, 1 << 40), 45, idx, 1448, os.urandom(1448))
            o.open_chunk(d, 0.0, learnt=True)
            assert o.held <= OPENER_BUDGET and o.pending <= REASSEMBLY_SLOTS
            if i % 50 == 0:
                peak = max(peak, tracemalloc.get_traced_memory()[0] - before)
    finally:
        tracemalloc.stop()
    assert o.held == held_bytes(o) == pool.held
    assert o.reasm_dropped > 0  # the oldest partials made room
    assert peak < OPENER_BUDGET + 256 * 1024


def test_chunks_from_a_source_other_than_the_learnt_endpoint_hold_nothing_and_are_counted() -> None:
    s, o = CapsuleSealer(KEY, PID, 0), CapsuleOpener(KEY, ReassemblyPool())
    payload = os.urandom(20000)
    parts = chunks(*s.seal_gso(payload, 1400))
    for p in parts:
        with pytest.raises(ReassemblyRefused):
            o.open_chunk(p, 0.0, learnt=False)
    assert o.pending == 0 and o.held == 0 and o.reasm_refused == len(parts)
    assert issubclass(ReassemblyRefused, AuthError)  # callers that only know AuthError still drop it
    # A capsule that needs no reassembly (one chunk, or a whole GRO run) is opened at once, from
    # anywhere: that is how a moved peer's data can still be authenticated and teach its address.
    one = s.seal_gso(b"small", 1400)[0]
    assert o.open_chunk(one, 0.0, learnt=False) == b"small"
    blob, size = s.seal_gso(payload, 1400)
    got, k = o.open_run(memoryview(blob), size, 0.0, learnt=False)
    assert got == payload and k == len(chunks(blob, size)) and o.held == 0
    # Half a run from a stranger: refused, nothing held.
    blob, size = s.seal_gso(payload, 1400)
    with pytest.raises(ReassemblyRefused):
        o.open_run(memoryview(blob)[:5 * size], size, 0.0, learnt=False)
    assert o.pending == 0 and o.held == 0


def test_partials_expire_on_the_timer_without_new_chunks() -> None:
    pool = ReassemblyPool()
    s, o = CapsuleSealer(KEY, PID, 0), CapsuleOpener(KEY, pool)
    for t in (10.0, 10.1, 10.2):
        o.open_chunk(chunks(*s.seal_gso(os.urandom(9000), 1400))[0], t, learnt=True)
    assert o.pending == 3 and pool.deadline() == 10.0 + REASSEMBLY_TIMEOUT
    assert pool.expire(10.0 + REASSEMBLY_TIMEOUT - 0.01) == 0
    assert pool.expire(10.15 + REASSEMBLY_TIMEOUT) == 2
    assert o.pending == 1 and pool.deadline() == 10.2 + REASSEMBLY_TIMEOUT
    # A clock that went back (started "in the future") drops the partial too.
    assert pool.expire(5.0) == 1
    assert o.pending == 0 and o.held == 0 and pool.held == 0 and pool.deadline() is None
    assert o.reasm_dropped == 3


def test_legitimate_capsules_reassemble_out_of_order_and_across_runs() -> None:
    s, o = CapsuleSealer(KEY, PID, 0), CapsuleOpener(KEY, ReassemblyPool())
    rng = random.Random(7)
    for n in range(30):
        payload = os.urandom(rng.randint(3000, 65545))
        blob, size = s.seal_gso(payload, 1448)
        parts = chunks(blob, size)
        if n % 2:
            rng.shuffle(parts)
            got = [r for p in parts if (r := o.open_chunk(p, float(n), learnt=True)) is not None]
        else:
            # GRO runs split anywhere, the later runs first, a chunk repeated.
            cuts = sorted(rng.sample(range(1, len(parts)), min(3, len(parts) - 1)))
            runs = [b"".join(parts[a:b]) for a, b in zip([0, *cuts], [*cuts, len(parts)], strict=True)]
            runs = runs[::-1]
            runs.insert(1, parts[-1])
            got = []
            for r in runs:
                mv = memoryview(r)
                while len(mv):
                    out, k = o.open_run(mv, size, float(n), learnt=True) if len(mv) > size else (
                        o.open_chunk(mv, float(n), learnt=True), 1)
                    if out is not None:
                        got.append(bytes(out))
                    mv = mv[k * size:]
        assert got == [payload]
        assert o.pending == 0 and o.held == 0


def test_count_times_seg_beyond_the_largest_super_packet_is_malformed() -> None:
    o = CapsuleOpener(KEY, ReassemblyPool())
    seg = 1448
    count = -(-MAX_GSO_SEALED // seg) + 1  # one chunk more than the largest capsule needs
    for bad in (forged_chunk(1, count, 0, seg, bytes(seg)), forged_chunk(2, 255, 254, 65535)):
        with pytest.raises(CodecError, match="largest super-packet"):
            o.open_chunk(bad, 0.0, learnt=True)
    # Within the bound, but the last chunk would make it larger than the largest capsule.
    count = -(-MAX_GSO_SEALED // seg)
    o.open_chunk(forged_chunk(3, count, 0, seg, bytes(seg)), 0.0, learnt=True)
    with pytest.raises(CodecError, match="largest super-packet"):
        o.open_chunk(forged_chunk(3, count, count - 1, seg, bytes(seg)), 0.0, learnt=True)
    assert o.held == held_bytes(o) == PARTIAL_OVERHEAD + seg


def test_the_pool_budget_holds_with_many_openers() -> None:
    budget = 1 << 20
    pool = ReassemblyPool(budget)
    openers = [CapsuleOpener(os.urandom(32), pool) for _ in range(200)]
    rng = random.Random(3)
    for i in range(6000):
        o = openers[i % len(openers)]
        o.open_chunk(forged_chunk(rng.randrange(1, 1 << 30), 45, rng.randrange(44), 1448, bytes(1448)),
                     0.0, learnt=True)
        assert pool.held <= budget
    assert pool.held == sum(o.held for o in openers) == sum(held_bytes(o) for o in openers)
    assert len(pool) == sum(o.pending for o in openers)
    assert sum(o.reasm_dropped for o in openers) > 0
    # A legitimate capsule still gets through the full pool (the oldest partials make room).
    s, o = CapsuleSealer(KEY, PID, 0), CapsuleOpener(KEY, pool)
    payload = os.urandom(60000)
    parts = chunks(*s.seal_gso(payload, 1448))
    assert [r for p in parts[::-1] if (r := o.open_chunk(p, 0.0, learnt=True)) is not None] == [payload]
    assert pool.held <= budget


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 40), st.integers(1, 255), st.integers(0, 254), st.integers(1, 2000),
                          st.integers(0, 2000), st.booleans(), st.floats(0, 3)), max_size=120))
def test_random_chunk_streams_keep_the_books_and_the_bounds(
        chunks_: list[tuple[int, int, int, int, int, bool, float]]) -> None:
    pool = ReassemblyPool(200_000)
    a, b = CapsuleOpener(KEY, pool), CapsuleOpener(os.urandom(32), pool)
    for counter, count, index, seg, blen, learnt, now in chunks_:
        o = a if counter % 2 else b
        d = forged_chunk(counter, count, min(index, count - 1), seg, bytes(blen))
        try:
            o.open_chunk(d, now, learnt=learnt)
        except (AuthError, CodecError):
            pass
        assert o.held <= OPENER_BUDGET and o.pending <= REASSEMBLY_SLOTS and pool.held <= pool.budget
        assert pool.held == a.held + b.held == held_bytes(a) + held_bytes(b)
    pool.expire(1e9)
    assert pool.held == a.held == b.held == 0 and len(pool) == 0


# -- the callers: node forwarder and RS-N know the learnt endpoint --------------------------------------


class _Tun:
    vnet_hdr = True

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes | memoryview) -> int:
        self.written.append(bytes(data))
        return len(data)


def test_node_forwarder_takes_chunks_only_from_the_paths_endpoint() -> None:
    peer: tuple[str, int] = ("198.51.100.7", 7412)
    fwd = NodeForwarder(_Tun(), object())  # type: ignore[arg-type]
    s = CapsuleSealer(KEY, PID, 0)
    fp = fwd.add(PID, CapsuleSealer(os.urandom(32), PID, 0), CapsuleOpener(KEY, ReassemblyPool()),
                 ["100.64.0.9"], peer, learn=False)
    vnet = bytes(10)
    payload = vnet + ip4("100.64.0.9", "100.64.0.2", b"z" * 5000)
    parts = chunks(*s.seal_gso(payload, 1400))
    for p in parts:
        fwd.on_capsule(memoryview(p), ATTACKER, 0.0)
    assert fwd.stats["rx_chunk_unknown_source"] == len(parts) and fp.opener.pending == 0
    for p in parts[::-1]:
        fwd.on_capsule(memoryview(p), peer, 0.0)
    assert fwd.stats["rx_gso_capsules"] == 1 and fwd.tun.written == [payload]  # type: ignore[attr-defined]
    blob, size = s.seal_gso(payload, 1400)
    assert fwd.on_run(memoryview(blob)[:2 * size], size, ATTACKER, 0.0) == 1
    assert fwd.stats["rx_chunk_unknown_source"] == len(parts) + 1 and fp.opener.pending == 0


def test_rs_n_takes_chunks_only_from_the_nodes_learnt_endpoint() -> None:
    core, _dc, node = setup_rs_n()
    vnet = bytes([1, 3]) + struct.pack("<HHHH", 40, 1448, 20, 16)
    payload = vnet + ip4(NODE_VIP, GN_VIP, b"x" * 3000)
    parts = chunks(*node.sealer.seal_gso(payload, 1000))
    for c in parts:
        core.receive_datagram(c, ATTACKER, 4.0)
    assert core.stats["drop_chunk_unknown_source"] == len(parts) and core.packets_to_tun() == []
    # The forged flood of the issue, from the learnt endpoint itself: malformed, nothing held.
    held = PROCESS_POOL.held
    for i in range(512):
        core.receive_datagram(forged_chunk(10_000 + i, pid=b"P" * 8), NODE_A, 4.0)
    assert core.stats["drop_malformed"] >= 512 and PROCESS_POOL.held == held
    for c in parts:
        core.receive_datagram(c, NODE_A, 4.0)
    assert core.packets_to_tun() == [(payload, True)]


def test_rs_core_timer_expires_partials() -> None:
    core, _dc, node = setup_rs_n()
    PROCESS_POOL.expire(1e12)  # whatever other tests left
    vnet = bytes([1, 3]) + struct.pack("<HHHH", 40, 1448, 20, 16)
    parts = chunks(*node.sealer.seal_gso(vnet + ip4(NODE_VIP, GN_VIP, b"x" * 3000), 1000))
    core.receive_datagram(parts[0], NODE_A, 4.0)
    assert len(PROCESS_POOL) == 1
    timer = core.get_timer()
    assert timer is not None and timer <= 4.0 + REASSEMBLY_TIMEOUT
    core.handle_timer(4.0 + REASSEMBLY_TIMEOUT)
    assert len(PROCESS_POOL) == 0 and PROCESS_POOL.held == 0


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 30), st.integers(2, 60), st.integers(0, 59), st.integers(1, 12),
                          st.sampled_from([100, 1448, 30000]), st.booleans()), max_size=60))
def test_random_runs_keep_the_books_and_the_bounds(runs: list[tuple[int, int, int, int, int, bool]]) -> None:
    """The same through ``open_run``: GRO-like runs of forged chunks (any start, any length, the
    last one short or not), from the learnt endpoint or not."""
    pool = ReassemblyPool(300_000)
    o = CapsuleOpener(KEY, pool)
    for counter, count, start, k, seg, learnt in runs:
        start = min(start, count - 1)
        k = min(k, count - start)
        size = seg + 24
        data = b"".join(forged_chunk(counter, count, start + j, seg,
                                     bytes(seg if start + j < count - 1 else max(1, seg // 3))) for j in range(k))
        mv = memoryview(data)
        before = o.held
        try:
            _, used = o.open_run(mv, size, 0.0, learnt=learnt)
            assert 1 <= used <= k
        except (AuthError, CodecError):
            pass
        assert o.held <= OPENER_BUDGET and pool.held <= pool.budget and o.held == held_bytes(o) == pool.held
        assert learnt or o.held <= before  # a stranger's run never adds state
    pool.expire(1e9)
    assert pool.held == o.held == 0
