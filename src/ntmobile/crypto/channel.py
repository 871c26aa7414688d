"""Sealing and opening of signalling messages and data capsules (AES-256-GCM), replay windows."""

from __future__ import annotations

import struct
from collections import deque
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
    """A datagram failed authentication, or was a replay."""


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
        """Authenticate, check for replay, and decode. AuthError or CodecError on failure."""
        if not self.window.check(header.seq):
            raise AuthError("replayed or too old")
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
    __slots__ = ("header", "count", "seg", "buf", "missing", "total", "started")

    def __init__(self, header: bytes, count: int, seg: int, now: float) -> None:
        self.header = header
        self.count = count
        self.seg = seg
        self.buf = bytearray(count * seg)
        self.missing = (1 << count) - 1
        self.total = (count - 1) * seg  # completed by the last chunk
        self.started = now


class CapsuleOpener:
    """Opens data capsules of one path direction, with replay protection.

    GSO capsules arrive as chunks (``open_chunk``): they are reassembled, then opened with one AEAD
    operation. At most REASSEMBLY_SLOTS capsules are pending; one that is not complete within
    REASSEMBLY_TIMEOUT (a chunk was lost) is dropped whole and counted in ``reasm_dropped``.
    """

    __slots__ = ("_aead", "window", "_partial", "reasm_dropped")

    def __init__(self, key: bytes) -> None:
        self._aead = LazyAead(key)
        self.window = ReplayWindow()
        self._partial: dict[int, _Partial] = {}
        self.reasm_dropped = 0

    def open(self, data: bytes | bytearray | memoryview) -> bytes:
        """Return the inner payload. CodecError for a malformed capsule, AuthError for a bad or
        replayed one."""
        hdr = parse_capsule_header(data)
        if not self.window.check(hdr.counter):
            raise AuthError("replayed capsule")
        try:
            payload = self._aead.ctx().decrypt(
                _NONCE.pack(hdr.counter), data[CAPSULE_HEADER_SIZE:], data[:CAPSULE_HEADER_SIZE]
            )
        except InvalidTag:
            raise AuthError("capsule authentication failed") from None
        self.window.update(hdr.counter)
        return payload

    def open_chunk(self, data: bytes | bytearray | memoryview, now: float) -> bytes | None:
        """Take one datagram of a GSO capsule. Returns the opened payload (virtio_net_hdr +
        super-packet) once all chunks are in, None while chunks are missing. CodecError for a
        malformed chunk, AuthError for a bad or replayed capsule."""
        ch = parse_chunk_header(data)
        counter: int = CAPSULE_HEADER.unpack_from(data, 0)[5]
        if not self.window.check(counter):
            raise AuthError("replayed capsule")
        if ch.chunks == 1:
            return self._open_whole(counter, bytes(data[:CAPSULE_HEADER_SIZE]), data[GSO_CHUNK_OVERHEAD:])
        parts = self._partial
        p = parts.get(counter)
        if p is None:
            if parts:
                self._expire(now)
            p = parts[counter] = _Partial(bytes(data[:CAPSULE_HEADER_SIZE]), ch.chunks, ch.seg, now)
        elif p.count != ch.chunks or p.seg != ch.seg or p.header != data[:CAPSULE_HEADER_SIZE]:
            raise CodecError("GSO chunk does not match the capsule's other chunks")
        bit = 1 << ch.chunk
        if not p.missing & bit:
            return None  # duplicate
        body = data[GSO_CHUNK_OVERHEAD:]
        off = ch.chunk * p.seg
        p.buf[off:off + len(body)] = body
        p.missing &= ~bit
        if ch.chunk == p.count - 1:
            p.total += len(body)
        if p.missing:
            return None
        del parts[counter]
        return self._open_whole(counter, p.header, memoryview(p.buf)[:p.total])

    def open_run(self, data: memoryview, size: int, now: float, *,
                 scratch: bool = False) -> tuple[bytes | memoryview | None, int]:
        """Take a run of GSO chunk datagrams laid back to back every ``size`` bytes (a UDP GRO
        batch from the first chunk on). Consumes the consecutive chunks of the first datagram's
        capsule (at least that one) and returns ``(payload or None, datagrams consumed)``: the
        same result as ``open_chunk`` on each, with one header check and copy per chunk.
        CodecError / AuthError as ``open_chunk`` (then one datagram counts as consumed). With
        ``scratch`` a payload is a view of a shared buffer, valid until the next such call."""
        n = len(data)
        ch = parse_chunk_header(data[:size])
        count, idx, seg = ch
        if count == 1 or size != seg + GSO_CHUNK_OVERHEAD or n <= size:
            return self.open_chunk(data[:size], now), 1
        header = data[:CAPSULE_HEADER_SIZE].tobytes()
        counter: int = CAPSULE_HEADER.unpack_from(header, 0)[5]
        if not self.window.check(counter):
            raise AuthError("replayed capsule")
        k = min(count - idx, -(-n // size))
        pack = CHUNK_HEADER.pack
        o = (k - 1) * size
        if idx == 0 and k == count and data[o:o + GSO_CHUNK_OVERHEAD] == header + pack(count, k - 1, seg):
            # Fast path: the whole capsule, first and last chunk in place (one sendmsg, one GRO
            # batch). Chunks in between are not checked one by one: if one is foreign, the AEAD
            # fails and the datagrams are taken one at a time instead.
            sealed = b"".join([data[o + GSO_CHUNK_OVERHEAD:o + size] for o in range(0, n, size)][:k])
            try:
                return self._open_whole(counter, header, sealed, scratch), k
            except AuthError:
                out = None
                for o in range(0, min(k * size, n), size):
                    try:
                        out = self.open_chunk(data[o:o + size], now) or out
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
        parts = self._partial
        p = parts.get(counter)
        if p is None:
            if parts:
                self._expire(now)
            p = parts[counter] = _Partial(header, count, seg, now)
        elif p.count != count or p.seg != seg or p.header != header:
            raise CodecError("GSO chunk does not match the capsule's other chunks")
        buf = p.buf
        bit = 1 << idx
        for o in range(0, end, size):
            if p.missing & bit:
                body = data[o + GSO_CHUNK_OVERHEAD:min(o + size, n)]
                boff = (o // size + idx) * seg
                buf[boff:boff + len(body)] = body
                p.missing &= ~bit
                if bit >> (count - 1):
                    p.total += len(body)
            bit <<= 1
        if p.missing:
            return None, k
        del parts[counter]
        return self._open_whole(counter, p.header, memoryview(buf)[:p.total], scratch), k

    def _open_whole(self, counter: int, header: bytes, sealed: bytes | bytearray | memoryview,
                    scratch: bool = False) -> bytes:
        if not self.window.check(counter):
            raise AuthError("replayed capsule")
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

    def _expire(self, now: float) -> None:
        parts = self._partial
        limit = now - REASSEMBLY_TIMEOUT
        for c in [c for c, p in parts.items() if p.started < limit]:
            del parts[c]
            self.reasm_dropped += 1
        while len(parts) >= REASSEMBLY_SLOTS:
            del parts[next(iter(parts))]
            self.reasm_dropped += 1

    @property
    def pending(self) -> int:
        """GSO capsules waiting for chunks."""
        return len(self._partial)
