"""Sealing and opening of signalling messages and data capsules (AES-256-GCM), replay windows."""

from __future__ import annotations

import struct
from collections import OrderedDict, deque
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ntmobile.wire import (
    MAX_SIGNAL_SIZE,
    SIGNAL_HEADER_SIZE,
    VERSION,
    CodecError,
    Message,
    SignalHeader,
    decode_body,
    encode_body,
    pack_capsule_header,
    parse_capsule_header,
)
from ntmobile.wire.constants import TAG_SIZE, CapsuleFlags
from ntmobile.wire.frame import (
    CAPSULE_HEADER,
    CAPSULE_HEADER_SIZE,
    CHUNK_HEADER,
    GSO_CHUNK_OVERHEAD,
    parse_chunk_header,
)

from .keys import KeyPair

_NONCE = struct.Struct("!4xQ")
_MAX_SEQ = (1 << 64) - 1
_GSO = int(CapsuleFlags.GSO)
#: Partly received GSO capsules kept per opener; the oldest is dropped beyond this.
REASSEMBLY_SLOTS = 16
#: A GSO capsule not complete after this many seconds is dropped (a chunk was lost).
REASSEMBLY_TIMEOUT = 0.5
#: Most chunks one GSO capsule may have (the chunk header's count is a u8).
MAX_CHUNKS = 255
#: Largest GSO payload: virtio_net_hdr + a 64 KB IP packet.
MAX_GSO_PAYLOAD = 10 + 65535
#: Largest sealed GSO capsule (payload + tag): what the chunks of one capsule may add up to.
MAX_GSO_SEALED = MAX_GSO_PAYLOAD + TAG_SIZE
#: Bytes charged to a partial capsule for its bookkeeping, beyond the chunk bytes it holds.
PARTIAL_OVERHEAD = 512
#: Bytes of partial GSO capsules one opener may hold (four of the largest capsules).
OPENER_BUDGET = 4 * (MAX_GSO_SEALED + PARTIAL_OVERHEAD)
#: Bytes of partial GSO capsules all openers of one pool (one daemon) may hold together.
POOL_BUDGET = 2 << 20


class _Scratch:
    """Buffers shared by every sealer and opener of the process (the data plane is single
    threaded): a ``scratch=True`` result is a view into them, valid until the next such call."""

    def __init__(self) -> None:
        n = MAX_GSO_PAYLOAD + TAG_SIZE
        self.ct_v = memoryview(bytearray(n))
        self.plain_v = memoryview(bytearray(n))


_scratch: _Scratch | None = None


def _buffers() -> _Scratch:
    global _scratch
    if _scratch is None:
        _scratch = _Scratch()
    return _scratch


class AuthError(Exception):
    """A datagram failed authentication, or was a replay (ReplayError)."""


class ReplayError(AuthError):
    """A datagram whose counter the replay window has already seen, or is below the window (checked
    before authentication: a forged datagram reusing an old counter is refused here too)."""


class ReplayWindow:
    """Sliding window over 64-bit counters (RFC 6479 style, bitmap in a Python int).

    ``floor`` and everything below it count as already seen, so a fresh window accepts 1, 2, ...
    and a window restored from a persisted ``floor`` refuses every older counter. The bitmap starts
    empty (a small int) and grows to ``size`` bits only on a path that carries traffic.
    """

    __slots__ = ("size", "top", "bits", "floor")

    def __init__(self, size: int = 4096, floor: int = 0) -> None:
        self.size = size
        self.top = floor
        self.floor = floor
        self.bits = 0

    def check(self, seq: int) -> bool:
        if seq > self.top:
            return True
        if seq <= self.floor:
            return False
        d = self.top - seq
        return d < self.size and not (self.bits >> d) & 1

    def update(self, seq: int) -> None:
        if seq > self.top:
            shift = seq - self.top
            if shift < self.size:
                bits = (self.bits << shift) | 1
                if bits >> self.size:
                    bits &= _mask(self.size)
                self.bits = bits
            else:
                self.bits = 1
            self.top = seq
        else:
            self.bits |= 1 << (self.top - seq)


_MASKS: dict[int, int] = {}


def _mask(size: int) -> int:
    m = _MASKS.get(size)
    if m is None:
        m = _MASKS[size] = (1 << size) - 1
    return m


#: AES-GCM contexts kept alive at once (about 2.5 KB each); older ones are rebuilt on next use.
LIVE_CONTEXTS = 1024


class LazyAead:
    """AES-256-GCM whose OpenSSL context exists only while in use: a relay holding thousands of
    idle paths keeps 32-byte keys, not thousands of contexts. Contexts are evicted first in,
    first out beyond LIVE_CONTEXTS; a busy path just rebuilds its own (a few µs)."""

    __slots__ = ("key", "_ctx")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self._ctx: AESGCM | None = None

    def ctx(self) -> AESGCM:
        c = self._ctx
        if c is None:
            c = self._ctx = AESGCM(self.key)
            _live.append(self)
            if len(_live) > LIVE_CONTEXTS:
                _live.popleft()._ctx = None
        return c


_live: deque[LazyAead] = deque()


class CounterFloor:
    """Send counters for keys that outlive a process (long-term and DC-to-DC static keys), shared by
    every channel under such keys in the process: each value is handed out once.

    Values are taken from blocks reserved before use: ``persist(ceiling)`` must make "every counter
    up to ``ceiling`` may have been used" durable before it returns (the runtime writes a file and
    fsyncs it), so a restarted process starts above everything it sealed, whatever the clock says.
    ``persist=None`` keeps the counter in memory only (tests, benches). A failing ``persist`` makes
    the seal fail (CodecError): nothing is sealed under a counter that is not reserved.
    """

    __slots__ = ("next", "ceiling", "block", "_persist")

    def __init__(self, start: int, persist: Callable[[int], None] | None = None, *, block: int = 1 << 16) -> None:
        if start < 1 or block < 1:
            raise ValueError("counters start at 1 and are reserved in blocks of at least 1")
        self.next = start
        self.ceiling = start - 1 if persist is not None else _MAX_SEQ
        self.block = block
        self._persist = persist

    def advance_past(self, floor: int) -> bool:
        """Make every later counter greater than ``floor`` (a peer has accepted counters up to it under
        this key from another holder of it). The caller bounds ``floor``. True: the next counter is
        above it."""
        if floor < self.next:
            return True
        if floor >= _MAX_SEQ:
            return False
        self.next = floor + 1  # take() reserves (persists) a block from there before using it
        return True

    def take(self) -> int:
        n = self.next
        if n > self.ceiling:
            if n > _MAX_SEQ:
                raise CodecError("send counter exhausted; re-key")
            ceiling = min(n + self.block - 1, _MAX_SEQ)
            assert self._persist is not None
            try:
                self._persist(ceiling)
            except Exception as exc:  # the runtime's storage failed: seal nothing
                raise CodecError(f"cannot reserve send counters: {exc}") from exc
            self.ceiling = ceiling
        self.next = n + 1
        return n


class Channel:
    """One authenticated, encrypted signalling channel between two parties.

    ``sender`` is the 8-byte key identifier written into every header we send; the receiver uses
    it to find the matching keys. Counters start at ``seq_start`` (1: the keys are new), or come from
    a shared ``counter`` (keys that outlive the process: see CounterFloor).
    """

    __slots__ = ("_send", "_recv", "sender", "next_seq", "window", "_counter")

    def __init__(self, keys: KeyPair, sender: bytes, *, seq_start: int = 1, recv_floor: int = 0,
                 counter: CounterFloor | None = None) -> None:
        self._send = LazyAead(keys.send)
        self._recv = LazyAead(keys.recv)
        self.sender = sender
        self.next_seq = seq_start
        self.window = ReplayWindow(floor=recv_floor)
        self._counter = counter

    @property
    def keys(self) -> KeyPair:
        """The channel's keys (send, receive); a DC holds a channel per registered node, so they are
        kept only once, in the AEAD wrappers."""
        return KeyPair(self._send.key, self._recv.key)

    def seal(self, msg: Message, *, txid: int, status: int = 0, flags: int = 0) -> bytes:
        if self._counter is not None:
            seq = self._counter.take()
        else:
            seq = self.next_seq
            if seq > _MAX_SEQ:
                raise CodecError("send counter exhausted; re-key")
        self.next_seq = seq + 1
        header = SignalHeader(VERSION, msg.TYPE, flags, status, self.sender, txid, seq).pack()
        sealed = self._send.ctx().encrypt(_NONCE.pack(seq), encode_body(msg), header)
        out = header + sealed
        if len(out) > MAX_SIGNAL_SIZE:
            raise CodecError(f"signalling message of {len(out)} bytes exceeds {MAX_SIGNAL_SIZE}")
        return out

    def open(self, header: SignalHeader, data: bytes) -> Message:
        """Check for replay, authenticate, and decode. ReplayError (an AuthError), AuthError or CodecError
        on failure."""
        if not self.window.check(header.seq):
            raise ReplayError("replayed or too old")
        try:
            body = self._recv.ctx().decrypt(_NONCE.pack(header.seq), data[SIGNAL_HEADER_SIZE:],
                                            data[:SIGNAL_HEADER_SIZE])
        except InvalidTag:
            raise AuthError("authentication failed") from None
        self.window.update(header.seq)
        return decode_body(header.type, body)


class CapsuleSealer:
    """Seals inner packets into data capsules of one path direction.

    ``seal`` makes one capsule (one datagram). ``seal_gso`` makes one GSO capsule: a single AEAD
    operation over ``virtio_net_hdr || super-packet``, returned as chunk datagrams (wire/frame.py).
    Both draw from the same counter, so every capsule of this direction has its own nonce.
    """

    __slots__ = ("_aead", "path_id", "flags", "counter")

    def __init__(self, key: bytes, path_id: bytes, flags: int) -> None:
        self._aead = LazyAead(key)
        self.path_id = path_id
        self.flags = flags
        self.counter = 0

    def _next(self) -> int:
        if self.counter >= _MAX_SEQ:
            raise CodecError("capsule counter exhausted; re-key")
        self.counter += 1
        return self.counter

    def seal(self, payload: bytes | bytearray | memoryview, extra_flags: int = 0) -> bytes:
        counter = self._next()
        header = pack_capsule_header(self.flags | extra_flags, self.path_id, counter)
        return header + self._aead.ctx().encrypt(_NONCE.pack(counter), payload, header)

    def seal_gso(self, payload: bytes | bytearray | memoryview, seg: int) -> tuple[bytes, int]:
        """Seal ``payload`` (virtio_net_hdr + super-packet) once; return ``(datagrams, size)``:
        the chunk datagrams back to back, each ``size`` bytes (the last may be shorter), ready for
        one UDP_SEGMENT send of segment size ``size`` (or ``size``-byte slices)."""
        plen = len(payload)
        if plen > MAX_GSO_PAYLOAD:
            raise CodecError(f"GSO payload of {plen} bytes")
        n = plen + TAG_SIZE
        count = -(-n // seg)
        if count > MAX_CHUNKS:
            raise CodecError(f"GSO capsule of {n} bytes needs {count} chunks of {seg}")
        counter = self._next()
        header = pack_capsule_header(self.flags | _GSO, self.path_id, counter)
        ct = _buffers().ct_v[:n]
        self._aead.ctx().encrypt_into(_NONCE.pack(counter), payload, header, ct)
        parts: list[bytes | memoryview] = [header] * (3 * count)
        parts[1::3] = _chunk_headers(count, seg)
        parts[2::3] = [ct[o:o + seg] for o in range(0, n, seg)]
        return b"".join(parts), seg + GSO_CHUNK_OVERHEAD


_CHUNK_HEADERS: dict[tuple[int, int], list[bytes]] = {}


def _chunk_headers(count: int, seg: int) -> list[bytes]:
    """The ``count`` chunk headers of a capsule cut in ``seg``-byte chunks (cached: few sizes occur)."""
    hs = _CHUNK_HEADERS.get((count, seg))
    if hs is None:
        if len(_CHUNK_HEADERS) > 1024:
            _CHUNK_HEADERS.clear()
        hs = _CHUNK_HEADERS[(count, seg)] = [CHUNK_HEADER.pack(count, i, seg) for i in range(count)]
    return hs


class _Partial:
    """A GSO capsule waiting for chunks. ``pieces`` maps a chunk index to the bodies of the
    consecutive chunks that arrived together from there (one chunk, or part of a GRO run): a
    partial holds the bytes that arrived, never count x seg up front."""

    __slots__ = ("opener", "counter", "header", "count", "seg", "pieces", "missing", "held", "started")

    def __init__(self, opener: CapsuleOpener, counter: int, header: bytes, count: int, seg: int,
                 now: float) -> None:
        self.opener = opener
        self.counter = counter
        self.header = header
        self.count = count
        self.seg = seg
        self.pieces: dict[int, bytes] = {}
        self.missing = (1 << count) - 1
        self.held = PARTIAL_OVERHEAD
        self.started = now

    def sealed(self) -> tuple[memoryview, int]:
        """The process's scratch buffer with the bodies received in place (chunk i at i x seg),
        and the end of the last of them."""
        ct = _buffers().ct_v
        seg = self.seg
        total = 0
        for i, b in self.pieces.items():
            o = i * seg
            ct[o:o + len(b)] = b
            total = max(total, o + len(b))
        return ct, total


class ReassemblyPool:
    """The partial GSO capsules of every opener of one daemon, oldest first: one byte budget for
    all of them (the oldest is dropped to make room) and their expiry. ``expire`` runs from the
    daemon's timer (``deadline`` says when it is next due), so a partial leaves after
    REASSEMBLY_TIMEOUT whether or not more chunks arrive."""

    __slots__ = ("budget", "timeout", "held", "_order")

    def __init__(self, budget: int = 0, timeout: float = REASSEMBLY_TIMEOUT) -> None:
        self.budget = budget or POOL_BUDGET
        self.timeout = timeout
        #: Bytes held by all partials of the pool (chunk bodies + PARTIAL_OVERHEAD each).
        self.held = 0
        self._order: OrderedDict[_Partial, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._order)

    def deadline(self) -> float | None:
        """When the oldest partial expires; None without partials."""
        for p in self._order:
            return p.started + self.timeout
        return None

    def expire(self, now: float) -> int:
        """Drop every partial older than the timeout, or started after ``now`` (the clock went
        back); return how many were dropped (each is counted in its opener's ``reasm_dropped``)."""
        order = self._order
        limit = now - self.timeout
        n = 0
        while order:
            p = next(iter(order))
            if limit < p.started <= now:
                break
            p.opener._drop(p)
            n += 1
        return n

    def _make_room(self, need: int, keep: _Partial) -> None:
        order = self._order
        while self.held + need > self.budget:
            it = iter(order)
            p = next(it, None)
            if p is keep:
                p = next(it, None)
            if p is None:
                return
            p.opener._drop(p)


class ReassemblyRefused(AuthError):
    """A chunk that would need reassembly state, from a source that is not the path's learnt
    endpoint (an unauthenticated stranger holds no memory of ours)."""


#: The pool of every opener made without one. A daemon runs one core: this is the per-process
#: budget.
PROCESS_POOL = ReassemblyPool()


def reassembly_snapshot(pool: ReassemblyPool = PROCESS_POOL) -> dict[str, int]:
    """A daemon's reassembly books for its status: bytes held by partial GSO capsules, how many,
    and the budget."""
    return {"held": pool.held, "partials": len(pool), "budget": pool.budget}


class CapsuleOpener:
    """Opens data capsules of one path direction, with replay protection.

    GSO capsules arrive as chunks (``open_chunk``, ``open_run``): they are reassembled, then opened
    with one AEAD operation. Nothing is authenticated before the last chunk is in, so reassembly
    holds state only under these rules (docs/dataplane.md, "Reassembly limits"):

    - A capsule received whole (one chunk, or a whole GRO run) is opened at once, from any source.
      Anything that needs a partial is taken only with ``learnt`` (the datagram came from the
      path's learnt endpoint); otherwise ``ReassemblyRefused``, counted in ``reasm_refused``.
    - A capsule's count x seg must fit the largest sealed super-packet (MAX_GSO_SEALED).
    - A partial holds the bytes that arrived, plus PARTIAL_OVERHEAD. At most REASSEMBLY_SLOTS
      partials and OPENER_BUDGET bytes per opener, POOL_BUDGET bytes per pool (per daemon): the
      oldest partial is dropped to make room.
    - A partial not complete after REASSEMBLY_TIMEOUT is dropped by the pool's ``expire`` (the
      daemon's timer). Every dropped partial is counted in ``reasm_dropped``.
    """

    __slots__ = ("_aead", "window", "_partial", "_pool", "held", "reasm_dropped", "reasm_refused")

    def __init__(self, key: bytes, pool: ReassemblyPool | None = None) -> None:
        self._aead = LazyAead(key)
        self.window = ReplayWindow()
        self._partial: dict[int, _Partial] = {}
        self._pool = PROCESS_POOL if pool is None else pool
        #: Bytes held by this opener's partials.
        self.held = 0
        self.reasm_dropped = 0
        self.reasm_refused = 0

    def open(self, data: bytes | bytearray | memoryview) -> bytes:
        """Return the inner payload. CodecError for a malformed capsule, AuthError for a bad or
        replayed one."""
        hdr = parse_capsule_header(data)
        if not self.window.check(hdr.counter):
            raise ReplayError("replayed capsule")
        try:
            payload = self._aead.ctx().decrypt(
                _NONCE.pack(hdr.counter), data[CAPSULE_HEADER_SIZE:], data[:CAPSULE_HEADER_SIZE]
            )
        except InvalidTag:
            raise AuthError("capsule authentication failed") from None
        self.window.update(hdr.counter)
        return payload

    def open_chunk(self, data: bytes | bytearray | memoryview, now: float, *, learnt: bool) -> bytes | None:
        """Take one datagram of a GSO capsule (``learnt``: it came from the path's learnt
        endpoint). Returns the opened payload (virtio_net_hdr + super-packet) once all chunks are
        in, None while chunks are missing. CodecError for a malformed chunk, AuthError for a bad or
        replayed capsule, ReassemblyRefused (an AuthError) for a chunk that needs reassembly from
        another source."""
        ch = parse_chunk_header(data)
        counter: int = CAPSULE_HEADER.unpack_from(data, 0)[5]
        if not self.window.check(counter):
            raise ReplayError("replayed capsule")
        if ch.chunks == 1:
            return self._open_whole(counter, bytes(data[:CAPSULE_HEADER_SIZE]), data[GSO_CHUNK_OVERHEAD:])
        count, idx, seg = ch
        p = self._partial.get(counter) if learnt else None
        if p is None or p.count != count or p.seg != seg or p.header != data[:CAPSULE_HEADER_SIZE]:
            p = self._partial_for(data, counter, count, seg, now, learnt)
        bit = 1 << idx
        if not p.missing & bit:
            return None  # duplicate
        self._add(p, idx, bit, bytes(data[GSO_CHUNK_OVERHEAD:]))
        if p.missing:
            return None
        return self._complete(p, False)

    def open_run(self, data: memoryview, size: int, now: float, *, learnt: bool,
                 scratch: bool = False) -> tuple[bytes | memoryview | None, int]:
        """Take a run of GSO chunk datagrams laid back to back every ``size`` bytes (a UDP GRO
        batch from the first chunk on), all from one source (``learnt`` as in ``open_chunk``).
        Consumes the consecutive chunks of the first datagram's capsule (at least that one) and
        returns ``(payload or None, datagrams consumed)``: the same result as ``open_chunk`` on
        each, with one header check and copy per chunk. CodecError / AuthError as ``open_chunk``
        (then one datagram counts as consumed). With ``scratch`` a payload is a view of a shared
        buffer, valid until the next such call."""
        n = len(data)
        ch = parse_chunk_header(data[:size])
        count, idx, seg = ch
        if count == 1 or size != seg + GSO_CHUNK_OVERHEAD or n <= size:
            return self.open_chunk(data[:size], now, learnt=learnt), 1
        header = data[:CAPSULE_HEADER_SIZE].tobytes()
        counter: int = CAPSULE_HEADER.unpack_from(header, 0)[5]
        if not self.window.check(counter):
            raise ReplayError("replayed capsule")
        k = min(count - idx, -(-n // size))
        pack = CHUNK_HEADER.pack
        o = (k - 1) * size
        if idx == 0 and k == count and data[o:o + GSO_CHUNK_OVERHEAD] == header + pack(count, k - 1, seg):
            # Fast path: the whole capsule, first and last chunk in place (one sendmsg, one GRO
            # batch). Chunks in between are not checked one by one: if one is foreign, the AEAD
            # fails and the datagrams are taken one at a time instead. Nothing is held.
            sealed = b"".join([data[o + GSO_CHUNK_OVERHEAD:o + size] for o in range(0, n, size)][:k])
            try:
                return self._open_whole(counter, header, sealed, scratch), k
            except AuthError:
                out = None
                for o in range(0, min(k * size, n), size):
                    try:
                        out = self.open_chunk(data[o:o + size], now, learnt=learnt) or out
                    except (AuthError, CodecError):
                        self.reasm_dropped += 1
                return out, k
        for j in range(1, k):
            o = j * size
            if data[o:o + GSO_CHUNK_OVERHEAD] != header + pack(count, idx + j, seg):
                k = j
                break
        last = idx + k == count
        end = min(k * size, n)
        if not last and end != k * size:
            k -= 1  # a short datagram that is not the capsule's last chunk: leave it to open_chunk
            end = k * size
        p = self._partial_for(header, counter, count, seg, now, learnt)
        mask = ((1 << k) - 1) << idx
        if p.missing == mask:  # the run completes the capsule: its chunks go straight to the scratch
            if last and idx * seg + end - k * GSO_CHUNK_OVERHEAD > MAX_GSO_SEALED:
                raise CodecError("GSO capsule larger than the largest super-packet")
            self._release(p)
            ct, total = p.sealed()
            for o in range(0, end, size):
                b = data[o + GSO_CHUNK_OVERHEAD:min(o + size, n)]
                off = (o // size + idx) * seg
                ct[off:off + len(b)] = b
                total = max(total, off + len(b))
            return self._open_whole(counter, p.header, ct[:total], scratch), k
        if p.missing & mask == mask:  # the usual case: the run is new, keep it as one piece
            self._add(p, idx, mask, b"".join([data[o + GSO_CHUNK_OVERHEAD:min(o + size, n)]
                                              for o in range(0, end, size)]))
        else:
            bit = 1 << idx
            for o in range(0, end, size):
                if p.missing & bit:
                    self._add(p, (o // size) + idx, bit, data[o + GSO_CHUNK_OVERHEAD:min(o + size, n)].tobytes())
                bit <<= 1
        if p.missing:
            return None, k
        return self._complete(p, scratch), k

    # -- reassembly state -------------------------------------------------------------------------
    def _partial_for(self, data: bytes | bytearray | memoryview, counter: int, count: int, seg: int,
                     now: float, learnt: bool) -> _Partial:
        """The partial of capsule ``counter`` (``data`` starts with its header), made if new."""
        if not learnt:
            self.reasm_refused += 1
            raise ReassemblyRefused("GSO chunk to reassemble from a source other than the learnt endpoint")
        p = self._partial.get(counter)
        if p is not None:
            if p.count != count or p.seg != seg or p.header != data[:CAPSULE_HEADER_SIZE]:
                raise CodecError("GSO chunk does not match the capsule's other chunks")
            return p
        if (count - 1) * seg >= MAX_GSO_SEALED:
            raise CodecError(f"GSO capsule of {count} chunks of {seg} bytes exceeds the largest super-packet")
        pool = self._pool
        if pool._order:
            pool.expire(now)
        parts = self._partial
        while len(parts) >= REASSEMBLY_SLOTS:
            self._drop(next(iter(parts.values())))
        p = parts[counter] = _Partial(self, counter, bytes(data[:CAPSULE_HEADER_SIZE]), count, seg, now)
        pool._order[p] = None
        self.held += PARTIAL_OVERHEAD
        pool.held += PARTIAL_OVERHEAD
        return p

    def _add(self, p: _Partial, idx: int, mask: int, body: bytes) -> None:
        """Keep ``body``: the chunks ``mask`` of ``p``, from chunk ``idx`` on."""
        n = len(body)
        if mask >> (p.count - 1) and idx * p.seg + n > MAX_GSO_SEALED:
            raise CodecError("GSO capsule larger than the largest super-packet")
        if self.held + n > OPENER_BUDGET:
            for q in [q for q in self._partial.values() if q is not p]:
                self._drop(q)
                if self.held + n <= OPENER_BUDGET:
                    break
        pool = self._pool
        if pool.held + n > pool.budget:
            pool._make_room(n, p)
        p.pieces[idx] = body
        p.missing &= ~mask
        p.held += n
        self.held += n
        pool.held += n

    def _release(self, p: _Partial) -> None:
        del self._partial[p.counter]
        self.held -= p.held
        pool = self._pool
        pool.held -= p.held
        del pool._order[p]

    def _drop(self, p: _Partial) -> None:
        self._release(p)
        p.pieces.clear()
        self.reasm_dropped += 1

    def _complete(self, p: _Partial, scratch: bool) -> bytes:
        self._release(p)
        ct, total = p.sealed()
        return self._open_whole(p.counter, p.header, ct[:total], scratch)

    def _open_whole(self, counter: int, header: bytes, sealed: bytes | bytearray | memoryview,
                    scratch: bool = False) -> bytes:
        if not self.window.check(counter):
            raise ReplayError("replayed capsule")
        if len(sealed) < TAG_SIZE:
            raise CodecError("GSO capsule shorter than its tag")
        try:
            if scratch:
                plain = _buffers().plain_v[:len(sealed) - TAG_SIZE]
                self._aead.ctx().decrypt_into(_NONCE.pack(counter), sealed, header, plain)
                payload: bytes = plain  # type: ignore[assignment]  # a view: see open_run
            else:
                payload = self._aead.ctx().decrypt(_NONCE.pack(counter), sealed, header)
        except InvalidTag:
            raise AuthError("capsule authentication failed") from None
        self.window.update(counter)
        return payload

    @property
    def pending(self) -> int:
        """GSO capsules waiting for chunks."""
        return len(self._partial)
