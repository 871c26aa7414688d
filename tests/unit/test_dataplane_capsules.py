"""GSO capsules: one AEAD per super-packet, chunked to fit the path MTU, reassembled under loss,
reordering, duplication and forgery; the forwarder's MTU arithmetic; RS-S re-batching."""

from __future__ import annotations

import os
import random
import socket

import pytest

from ntmobile.crypto import AuthError, CapsuleOpener, CapsuleSealer
from ntmobile.crypto.channel import REASSEMBLY_SLOTS, REASSEMBLY_TIMEOUT, ReassemblyPool
from ntmobile.dataplane.forwarder import gso_max_size, inner_mtu
from ntmobile.dataplane.udp import GSO_MAX_BYTES, GSO_MAX_SEGMENTS
from ntmobile.dataplane.udpio import Train, UdpIo, chunk_size
from ntmobile.wire import CodecError, parse_capsule_header
from ntmobile.wire.constants import CapsuleFlags
from ntmobile.wire.frame import GSO_CHUNK_OVERHEAD, parse_chunk_header

KEY = bytes(range(32))
PID = b"PATH-ID!"


def pair() -> tuple[CapsuleSealer, CapsuleOpener]:
    return CapsuleSealer(KEY, PID, 0), CapsuleOpener(KEY, ReassemblyPool())


def chunks(blob: bytes, size: int) -> list[bytes]:
    return [blob[i:i + size] for i in range(0, len(blob), size)]


@pytest.mark.parametrize("length", [1, 100, 1447, 1448, 1449, 30000, 63686])
def test_chunk_layout_byte_by_byte(length: int) -> None:
    s, _ = pair()
    payload = os.urandom(length)
    blob, size = s.seal_gso(payload, 1448)
    assert size == 1448 + GSO_CHUNK_OVERHEAD == 1472
    parts = chunks(blob, size)
    sealed = length + 16
    assert len(parts) == -(-sealed // 1448)
    assert sum(len(p) - GSO_CHUNK_OVERHEAD for p in parts) == sealed
    for i, p in enumerate(parts):
        assert p[:20] == parts[0][:20]  # the same capsule header (same counter) in every chunk
        h = parse_capsule_header(p[:36] if len(p) >= 36 else p + bytes(36 - len(p)))
        assert h.flags == CapsuleFlags.GSO and h.path_id == PID and h.counter == 1
        assert (p[20], p[21], int.from_bytes(p[22:24], "big")) == (len(parts), i, 1448)
        assert parse_chunk_header(p) == (len(parts), i, 1448)


def test_in_order_reordered_and_duplicated_chunks_open_once() -> None:
    s, o = pair()
    for n in range(20):
        payload = os.urandom(random.randint(2000, 60000))
        parts = chunks(*s.seal_gso(payload, 1000))
        if n % 2:
            random.shuffle(parts)
        parts[1:1] = parts[:1]  # a duplicate before the capsule is complete
        got = [r for p in parts if (r := o.open_chunk(p, 0.0, learnt=True)) is not None]
        assert got == [payload]


def test_interleaved_capsules_and_per_packet_capsules_share_the_counter() -> None:
    s, o = pair()
    a, b = os.urandom(5000), os.urandom(7000)
    pa, pb = chunks(*s.seal_gso(a, 1400)), chunks(*s.seal_gso(b, 1400))
    single = s.seal(b"plain packet")
    assert parse_capsule_header(single).counter == 3
    mixed = [x for pair_ in zip(pa, pb, strict=False) for x in pair_] + pb[len(pa):]
    got = [r for p in mixed if (r := o.open_chunk(p, 0.0, learnt=True)) is not None]
    assert sorted(got, key=len) == [a, b]
    assert o.open(single) == b"plain packet"


def test_lost_chunk_drops_the_capsule_and_frees_its_slot() -> None:
    s, o = pair()
    lost = chunks(*s.seal_gso(os.urandom(20000), 1400))
    for p in lost[:-1]:
        assert o.open_chunk(p, 0.0, learnt=True) is None
    assert o.pending == 1
    # Later capsules still open; the incomplete one times out.
    nxt = os.urandom(3000)
    later = REASSEMBLY_TIMEOUT + 1
    got = [r for p in chunks(*s.seal_gso(nxt, 1400)) if (r := o.open_chunk(p, later, learnt=True)) is not None]
    assert got == [nxt] and o.pending == 0 and o.reasm_dropped == 1


def test_reassembly_memory_is_bounded() -> None:
    s, o = pair()
    for _ in range(REASSEMBLY_SLOTS * 3):
        first = chunks(*s.seal_gso(os.urandom(5000), 1400))[0]
        o.open_chunk(first, 0.0, learnt=True)
        assert o.pending <= REASSEMBLY_SLOTS
    assert o.reasm_dropped == REASSEMBLY_SLOTS * 2


def test_replay_and_forgery() -> None:
    s, o = pair()
    payload = os.urandom(4000)
    parts = chunks(*s.seal_gso(payload, 1400))
    assert [r for p in parts if (r := o.open_chunk(p, 0.0, learnt=True))] == [payload]
    with pytest.raises(AuthError, match="replay"):
        o.open_chunk(parts[0], 0.0, learnt=True)
    parts2 = chunks(*s.seal_gso(payload, 1400))
    bad = bytearray(parts2[1])
    bad[-1] ^= 1
    o.open_chunk(parts2[0], 0.0, learnt=True)
    o.open_chunk(bytes(bad), 0.0, learnt=True)
    with pytest.raises(AuthError):
        o.open_chunk(parts2[2], 0.0, learnt=True)
    # A chunk claiming another layout than its capsule's other chunks.
    parts3 = chunks(*s.seal_gso(payload, 1400))
    o.open_chunk(parts3[0], 0.0, learnt=True)
    wrong = bytearray(parts3[1])
    wrong[20] = 9
    with pytest.raises(CodecError):
        o.open_chunk(bytes(wrong), 0.0, learnt=True)


@pytest.mark.parametrize("bad", [
    b"\x01\x40\x02\x00" + PID + bytes(8),  # no chunk header
    b"\x01\x40\x02\x00" + PID + bytes(8) + bytes([0, 0, 0, 10]) + b"x",  # count 0
    b"\x01\x40\x02\x00" + PID + bytes(8) + bytes([2, 2, 0, 10]) + b"x",  # index >= count
    b"\x01\x40\x02\x00" + PID + bytes(8) + bytes([2, 0, 0, 10]) + b"x" * 9,  # short middle chunk
    b"\x01\x40\x02\x00" + PID + bytes(8) + bytes([2, 1, 0, 10]) + b"x" * 11,  # last chunk > seg
])
def test_malformed_chunk_headers(bad: bytes) -> None:
    _, o = pair()
    with pytest.raises(CodecError):
        o.open_chunk(bad, 0.0, learnt=True)


@pytest.mark.parametrize("split", [None, 1, 20, 43])
def test_open_run_matches_open_chunk(split: int | None) -> None:
    s, o = pair()
    payload = os.urandom(gso_max_size())
    blob, size = s.seal_gso(payload, chunk_size(1500, socket.AF_INET) - GSO_CHUNK_OVERHEAD)
    mv = memoryview(blob)
    batches = [mv] if split is None else [mv[:split * size], mv[split * size:]]
    out = []
    for b in batches:
        off = 0
        while off < len(b):
            r, k = o.open_run(b[off:], size, 0.0, learnt=True, scratch=True)
            assert k >= 1
            off += k * size
            if r is not None:
                out.append(bytes(r))
    assert out == [payload]


def test_open_run_falls_back_when_a_foreign_chunk_is_in_the_run() -> None:
    s, o = pair()
    a, b = os.urandom(6000), os.urandom(6000)
    pa, pb = chunks(*s.seal_gso(a, 1400)), chunks(*s.seal_gso(b, 1400))
    size = 1400 + GSO_CHUNK_OVERHEAD
    # a's chunk 2 was lost; b's chunk 2 sits in its place (same size): the run fails the fast
    # path's AEAD and is taken chunk by chunk; a stays incomplete, nothing wrong is delivered.
    run = b"".join(pa[:2] + [pb[2]] + pa[3:])
    r, k = o.open_run(memoryview(run), size, 0.0, learnt=True)
    assert r is None and k == len(pa)
    rest = [x for p in pb[:2] + pb[3:] if (x := o.open_chunk(p, 0.0, learnt=True)) is not None]
    assert rest == [b]


def test_mtu_arithmetic() -> None:
    assert inner_mtu(1500) == 1416  # 1416 + 36 capsule + 8 UDP + 40 IPv6 = 1500
    assert chunk_size(1500, socket.AF_INET) == 1472 and chunk_size(1500, socket.AF_INET6) == 1452
    g = gso_max_size(1500)
    for fam in (socket.AF_INET, socket.AF_INET6):
        size = chunk_size(1500, fam)
        seg = size - GSO_CHUNK_OVERHEAD
        s, _ = pair()
        blob, dsize = s.seal_gso(bytes(10 + g), seg)
        assert dsize == size and len(blob) <= GSO_MAX_BYTES and -(-len(blob) // size) <= GSO_MAX_SEGMENTS


class _Sink:
    """A UdpIo stand-in that records sends (Train only calls send_chunks)."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, int, tuple[str, int]]] = []

    def send_chunks(self, data: bytes | bytearray | memoryview, size: int, addr: tuple[str, int]) -> None:
        self.sent.append((bytes(data), size, addr))


def test_train_rebatches_equal_datagrams_per_destination() -> None:
    sink = _Sink()
    t = Train(sink)  # type: ignore[arg-type]
    a, b = ("192.0.2.1", 1), ("192.0.2.2", 2)
    for _ in range(3):
        t.add(b"x" * 100, a)
    t.add(b"y" * 40, a)  # a shorter one ends the train
    t.add(b"z" * 100, a)
    t.add(b"w" * 100, b)
    t.add(memoryview(b"v" * 250), b, 100)  # a block of 3 (100, 100, 50)
    t.flush()
    # the block joins the train of 'w' (same destination and size); alone it goes out uncopied
    assert [(len(d), s, ep) for d, s, ep in sink.sent] == [(340, 100, a), (100, 100, a), (350, 100, b)]
    t.add(memoryview(b"u" * 250), b, 100)
    assert sink.sent[-1] == (b"u" * 250, 100, b) and t.count == 0


def test_train_respects_gso_limits() -> None:
    sink = _Sink()
    t = Train(sink)  # type: ignore[arg-type]
    for _ in range(GSO_MAX_SEGMENTS + 5):
        t.add(b"q" * 1000, ("192.0.2.1", 1))
    t.flush()
    assert all(len(d) <= GSO_MAX_BYTES and len(d) // 1000 <= GSO_MAX_SEGMENTS for d, _, _ in sink.sent)
    assert sum(len(d) for d, _, _ in sink.sent) == 1000 * (GSO_MAX_SEGMENTS + 5)


class _NoGsoSocket:
    """A UDP socket stand-in whose kernel refuses UDP_SEGMENT (EIO), as on a path without
    checksum offload: UdpIo must fall back to one sendto per datagram, for good."""

    family = socket.AF_INET

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.gso_tries = 0

    def dup(self) -> _NoGsoSocket:
        return self

    def setblocking(self, flag: bool) -> None:
        pass

    def sendmsg(self, buffers: list[bytes], anc: object = (), flags: int = 0, addr: object = None) -> int:
        if anc:
            self.gso_tries += 1
            import errno
            raise OSError(errno.EIO, "no checksum offload")
        data = b"".join(bytes(b) for b in buffers)
        self.sent.append(data)
        return len(data)

    def sendto(self, data: bytes | memoryview, addr: object) -> int:
        self.sent.append(bytes(data))
        return len(data)

    def close(self) -> None:
        pass


def test_udpio_falls_back_to_one_datagram_per_send_without_gso() -> None:
    sock = _NoGsoSocket()
    io = UdpIo([sock], lambda d, a, n: None, lambda d, a: None)  # type: ignore[list-item]
    s, o = pair()
    payload = os.urandom(20000)
    for _ in range(2):
        blob, size = s.seal_gso(payload, 1448)
        io.send_chunks(blob, size, ("192.0.2.1", 7412))
    assert sock.gso_tries == 1 and io.gso[socket.AF_INET] is False and io.stats["gso_fallbacks"] == 1
    assert all(len(d) <= size for d in sock.sent)
    got = [r for d in sock.sent if (r := o.open_chunk(d, 0.0, learnt=True)) is not None]
    assert got == [payload, payload]
