"""In-memory stand-ins for the TUN device and the UDP sockets the node's forwarder drives: the same
``NodeForwarder`` runs in the daemon (real TUN, ``UdpIo``) and in the unit tests and the fuzz bench
(these), so every check the daemon makes on data is the one the tests exercise."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from .vnet import ZERO_HDR

Endpoint = tuple[str, int]


class MemoryTun:
    """A TUN queue in memory. ``inject`` queues what the kernel would hand the node (one IP packet,
    or with ``vnet_hdr`` a virtio_net_hdr followed by a packet or super-packet); ``written`` keeps what
    the node wrote toward the kernel, as written (with its virtio_net_hdr when ``vnet_hdr``)."""

    name = "mem0"

    def __init__(self, *, vnet_hdr: bool = False) -> None:
        self.vnet_hdr = vnet_hdr
        self.queue: deque[bytes] = deque()
        self.written: list[bytes] = []

    def inject(self, packet: bytes) -> None:
        """Queue an IP packet (a zero virtio_net_hdr is prepended on an offload TUN)."""
        self.queue.append(ZERO_HDR + packet if self.vnet_hdr else packet)

    def inject_raw(self, data: bytes) -> None:
        self.queue.append(data)

    def read_into(self, buf: bytearray | memoryview) -> int:
        if not self.queue:
            return 0
        data = self.queue.popleft()
        buf[:len(data)] = data
        return len(data)

    def write(self, buf: bytes | bytearray | memoryview) -> int:
        self.written.append(bytes(buf))
        return len(buf)

    def writev(self, parts: Sequence[bytes | bytearray | memoryview]) -> int:
        return self.write(b"".join(bytes(p) for p in parts))

    def packets(self) -> list[bytes]:
        """The IP packets written so far (virtio_net_hdr stripped), in order."""
        from .vnet import VNET_HDR_LEN

        return [w[VNET_HDR_LEN:] if self.vnet_hdr else w for w in self.written]


class MemoryUdp:
    """The forwarder's UDP output in memory: every datagram as (bytes, destination), chunk runs split
    into their datagrams as the kernel's UDP_SEGMENT would."""

    def __init__(self) -> None:
        self.out: list[tuple[bytes, Endpoint]] = []
        self.stats: dict[str, int] = {"tx_datagrams": 0}

    def send(self, data: bytes | bytearray | memoryview, addr: Endpoint) -> None:
        self.out.append((bytes(data), addr))
        self.stats["tx_datagrams"] += 1

    def send_chunks(self, data: bytes | bytearray | memoryview, size: int, addr: Endpoint) -> None:
        mv = memoryview(data)
        for off in range(0, len(mv), size):
            self.send(mv[off:off + size], addr)

    def take(self) -> list[tuple[bytes, Endpoint]]:
        out, self.out = self.out, []
        return out
