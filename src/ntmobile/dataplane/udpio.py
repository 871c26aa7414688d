"""The data plane's UDP side: batched receive with UDP_GRO, GSO sends of chunked capsules.

A daemon's UDP socket carries both signalling and data capsules. ``UdpIo`` takes over the reading
of the sockets that ``runtime.driver.CoreDriver`` bound (their asyncio transports are paused; the
transports still send signalling). Each readiness callback drains up to ``BATCH`` ``recvmsg``
calls; every coalesced batch is split into its datagrams, capsules go to ``on_capsule`` as
zero-copy views of one preallocated buffer (valid only during the call), anything else goes to
``on_other`` as bytes (the core's signalling path).

Sends are non-blocking: a full socket buffer drops the datagram (counted), as a router would.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections.abc import Callable, Iterable

from .udp import (
    GSO_MAX_BYTES,
    GSO_MAX_SEGMENTS,
    RECV_BUF_SIZE,
    GsoUnsupported,
    enable_gro,
    recv_gro,
    send_gso,
    send_segments,
    set_buffers,
)

Endpoint = tuple[str, int]
BATCH = 64
#: Socket buffers the data plane asks for (SO_*BUFFORCE when privileged).
SOCKET_BUFFER = 8 << 20
_DATA = 0x40

CapsuleHandler = Callable[[memoryview, Endpoint, float], None]
#: Takes the rest of a GRO batch starting at a GSO chunk, returns how many datagrams it consumed.
RunHandler = Callable[[memoryview, int, Endpoint, float], int]
_GSO_FLAG = 0x02


class UdpIo:
    def __init__(self, socks: Iterable[socket.socket], on_capsule: CapsuleHandler,
                 on_other: Callable[[bytes, Endpoint], None], *,
                 on_batch_end: Callable[[], None] | None = None, on_run: RunHandler | None = None,
                 gro: bool = True, gso: bool = True,
                 buffer: int = SOCKET_BUFFER) -> None:
        # Duplicates of the sockets: asyncio refuses a second reader on a transport's own fd.
        self.socks = {s.family: s.dup() for s in socks}
        for s in self.socks.values():
            s.setblocking(False)
        self.on_capsule = on_capsule
        self.on_other = on_other
        self.on_batch_end = on_batch_end
        self.on_run = on_run
        self.buf = bytearray(RECV_BUF_SIZE)
        self.view = memoryview(self.buf)
        self.gro = {fam: False for fam in self.socks}
        self.gso = {fam: gso for fam in self.socks}
        self.want_gro = gro
        self.buffer = buffer
        self.stats = {"rx_batches": 0, "rx_datagrams": 0, "rx_errors": 0, "tx_datagrams": 0, "tx_gso_sends": 0,
                      "tx_dropped": 0, "tx_errors": 0, "gso_fallbacks": 0}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._paused: list[asyncio.BaseTransport] = []

    def start(self, loop: asyncio.AbstractEventLoop, transports: Iterable[asyncio.BaseTransport] = ()) -> None:
        """Pause ``transports`` (asyncio readers of the same sockets) and read the sockets here."""
        self._loop = loop
        for t in transports:
            pause = getattr(t, "pause_reading", None)
            if pause is not None:
                pause()
                self._paused.append(t)
        for fam, s in self.socks.items():
            try:
                set_buffers(s, self.buffer)
            except OSError:
                pass
            if self.want_gro:
                self.gro[fam] = enable_gro(s)
            loop.add_reader(s.fileno(), self._readable, s)

    def stop(self) -> None:
        if self._loop is not None:
            for s in self.socks.values():
                if s.fileno() >= 0:
                    self._loop.remove_reader(s.fileno())
        self._loop = None
        for s in self.socks.values():
            s.close()

    # -- receive ----------------------------------------------------------------------------------
    def _readable(self, sock: socket.socket) -> None:
        buf, view = self.buf, self.view
        st = self.stats
        on_capsule, on_other, on_run = self.on_capsule, self.on_other, self.on_run
        now = time.monotonic()
        try:
            for _ in range(BATCH):
                try:
                    n, raw, seg = recv_gro(sock, buf)
                except BlockingIOError:
                    break
                except (OSError, ValueError):
                    st["rx_errors"] += 1  # ICMP errors, truncation: never fatal
                    continue
                st["rx_batches"] += 1
                addr: Endpoint = (raw[0], raw[1])
                if seg is None or seg >= n:
                    st["rx_datagrams"] += 1
                    if n >= 2 and buf[1] == _DATA:
                        on_capsule(view[:n], addr, now)
                    else:
                        on_other(bytes(view[:n]), addr)
                    continue
                off = 0
                while off < n:
                    end = min(off + seg, n)
                    if end - off >= 3 and buf[off + 1] == _DATA:
                        if on_run is not None and buf[off + 2] & _GSO_FLAG and end < n:
                            k = on_run(view[off:n], seg, addr, now)
                            st["rx_datagrams"] += k
                            off += k * seg
                            continue
                        on_capsule(view[off:end], addr, now)
                    else:
                        on_other(bytes(view[off:end]), addr)
                    st["rx_datagrams"] += 1
                    off = end
        finally:
            if self.on_batch_end is not None:
                self.on_batch_end()

    # -- send -------------------------------------------------------------------------------------
    def send(self, data: bytes | bytearray | memoryview, addr: Endpoint) -> bool:
        """False when the kernel refused it (no route, e.g. mid-move; full buffer): nothing left."""
        s = self.socks.get(socket.AF_INET6 if ":" in addr[0] else socket.AF_INET)
        if s is None:
            self.stats["tx_errors"] += 1
            return False
        try:
            s.sendto(data, addr)
            self.stats["tx_datagrams"] += 1
            return True
        except BlockingIOError:
            self.stats["tx_dropped"] += 1
        except OSError:
            self.stats["tx_errors"] += 1
        return False

    def send_chunks(self, data: bytes | bytearray | memoryview, size: int, addr: Endpoint) -> bool:
        """Send back-to-back ``size``-byte datagrams (the last may be shorter) to ``addr``: one
        UDP_SEGMENT sendmsg per 64 datagrams / 64 KB, or one sendto each without GSO. False when the
        kernel refused (some of) them."""
        fam = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        s = self.socks.get(fam)
        if s is None:
            self.stats["tx_errors"] += 1
            return False
        n = len(data)
        if n <= size:
            return self.send(data, addr)
        mv = memoryview(data)
        per = min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // size) * size
        try:
            if self.gso[fam]:
                for off in range(0, n, per):
                    try:
                        send_gso(s, mv[off:off + per], size, addr)
                    except GsoUnsupported:
                        self.gso[fam] = False
                        self.stats["gso_fallbacks"] += 1
                        send_segments(s, mv[off:], size, addr)
                        break
                    self.stats["tx_gso_sends"] += 1
            else:
                send_segments(s, mv, size, addr)
            self.stats["tx_datagrams"] += -(-n // size)
            return True
        except BlockingIOError:
            self.stats["tx_dropped"] += 1
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                self.stats["tx_dropped"] += 1
            else:
                self.stats["tx_errors"] += 1
        return False


def chunk_size(path_mtu: int, family: int) -> int:
    """Largest UDP payload one datagram may carry on a path of ``path_mtu`` bytes (no fragments)."""
    return path_mtu - (40 if family == socket.AF_INET6 else 20) - 8


class Train:
    """Re-batches forwarded datagrams (RS-S): consecutive datagrams to the same endpoint with the
    same size are copied into one buffer and sent with one UDP_SEGMENT sendmsg; a shorter one may
    end a train. Call ``flush`` at the end of every receive batch."""

    __slots__ = ("io", "buf", "dest", "size", "count", "closed")

    def __init__(self, io: UdpIo) -> None:
        self.io = io
        self.buf = bytearray()
        self.dest: Endpoint | None = None
        self.size = 0
        self.count = 0
        self.closed = False

    def add(self, data: bytes | bytearray | memoryview, dest: Endpoint, size: int = 0) -> None:
        """Queue one datagram, or with ``size`` a block of datagrams of ``size`` bytes each (the
        last may be shorter)."""
        n = len(data)
        if not size or size >= n:
            size, k, last = n, 1, n
        else:
            k = -(-n // size)
            last = n - (k - 1) * size
        if self.count and (dest != self.dest or self.closed or (size != self.size if k > 1 else n > self.size)
                           or self.count + k > GSO_MAX_SEGMENTS or len(self.buf) + n > GSO_MAX_BYTES):
            self.flush()
        if not self.count:
            if k > 1:
                # A whole block (a GRO batch's run): send it from the receive buffer, no copy.
                self.io.send_chunks(data, size, dest)
                return
            self.dest, self.size = dest, size
        self.buf += data
        self.count += k
        if last < self.size:
            self.closed = True

    def flush(self) -> None:
        if self.count and self.dest is not None:
            self.io.send_chunks(self.buf, self.size, self.dest)
        self.buf = bytearray()
        self.count = 0
        self.closed = False
        self.dest = None
