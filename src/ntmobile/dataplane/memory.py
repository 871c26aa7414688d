"""In-memory stand-ins for the TUN device and the UDP sockets the node's forwarder drives: the same
``NodeForwarder`` runs in the daemon (real TUN, ``UdpIo``) and in the unit tests and the fuzz bench
(these), so every check the daemon makes on data is the one the tests exercise."""

from __future__ import annotations

from collections import ChainMap, deque
from collections.abc import Sequence
from typing import Any

from ntmobile.core.common import Datagram
from ntmobile.core.node import NodeCore
from ntmobile.wire import MessageType

from .forwarder import FwdPath, NodeForwarder
from .vnet import VNET_HDR_LEN, ZERO_HDR

Endpoint = tuple[str, int]


class MemoryTun:
    """A TUN queue in memory. ``inject`` queues what the kernel would hand the node (one IP packet,
    or with ``vnet_hdr`` a virtio_net_hdr followed by a packet or super-packet); ``written`` keeps what
    the node wrote toward the kernel, as written (with its virtio_net_hdr when ``vnet_hdr``)."""

    def __init__(self, *, vnet_hdr: bool = False) -> None:
        self.vnet_hdr = vnet_hdr
        self.queue: deque[bytes] = deque()
        self.written: list[bytes] = []

    def inject(self, packet: bytes) -> None:
        """Queue an IP packet (a zero virtio_net_hdr is prepended on an offload TUN)."""
        self.queue.append(ZERO_HDR + packet if self.vnet_hdr else packet)

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
        return [w[VNET_HDR_LEN:] if self.vnet_hdr else w for w in self.written]


class MemoryUdp:
    """The forwarder's UDP output in memory: every datagram as (bytes, destination), chunk runs split
    into their datagrams as the kernel's UDP_SEGMENT would."""

    def __init__(self) -> None:
        self.out: list[tuple[bytes, Endpoint]] = []
        self.stats: dict[str, int] = {"tx_datagrams": 0}
        #: Refuse every send (tests: the host has no route, as in the middle of a move).
        self.refuse = False

    def send(self, data: bytes | bytearray | memoryview, addr: Endpoint) -> bool:
        if self.refuse:  # like a kernel without a route to anywhere (mid-move)
            return False
        self.out.append((bytes(data), addr))
        self.stats["tx_datagrams"] += 1
        return True

    def send_chunks(self, data: bytes | bytearray | memoryview, size: int, addr: Endpoint) -> bool:
        mv = memoryview(data)
        return all([self.send(mv[off:off + size], addr) for off in range(0, len(mv), size)])

    def take(self) -> list[tuple[bytes, Endpoint]]:
        out, self.out = self.out, []
        return out


class MemoryNode:
    """A node core with the daemon's data path, in memory, fed as the daemon's socket reader feeds
    it: data capsules to the forwarder, everything else to the core; the forwarder follows the core's
    path events (as ``runtime.node`` does) and tells the core what it learns. Used by the unit
    harness and the fuzz bench. ``stats`` is a live view of the forwarder's and the core's counters."""

    def __init__(self, core: NodeCore, *, vnet_hdr: bool = False) -> None:
        self.core = core
        self.tun, self.udp = MemoryTun(vnet_hdr=vnet_hdr), MemoryUdp()
        self.fwd = NodeForwarder(self.tun, self.udp, on_learn=self._learnt,
                                 on_standby=lambda fp: core.standby_used(fp.path_id, self._now))
        # The forwarder's plain dict first: the core's Counter answers 0 for any key.
        self.stats: ChainMap[str, int] = ChainMap(self.fwd.stats, core.stats)
        self._now = 0.0

    def _learnt(self, fp: FwdPath, addr: Endpoint) -> None:
        self.core.note_data(fp.path_id, addr, self._now)

    def receive_datagram(self, data: bytes, addr: Endpoint, now: float) -> None:
        self._now = now
        if len(data) >= 2 and data[1] == MessageType.DATA:
            self.fwd.on_capsule(memoryview(data), addr, now)
        else:
            self.core.receive_datagram(data, addr, now)

    def datagrams_to_send(self) -> list[Datagram]:
        return self.core.datagrams_to_send() + [Datagram(d, a) for d, a in self.udp.take()]

    def next_event(self) -> Any:
        ev = self.core.next_event()
        if ev is not None:
            self.fwd.follow(ev)
        return ev

    def send_ip(self, packet: bytes) -> None:
        """An application's IP packet enters the forwarder from the TUN."""
        self.tun.inject(packet)
        self.fwd.on_tun_readable()
