"""The node's data plane: TUN ↔ encrypted capsules over UDP.

Control logic stays in the core: the forwarder only knows, per path, the peer's VIPs, the current
endpoint, whether the peer takes GSO capsules, and the path's capsule sealer/opener (shared with
the core, so one counter per direction). It enforces that a path only injects packets whose inner
source is that path's peer VIP, so no peer can spoof another's address.

Two TUN modes (docs/dataplane.md):

- **offload** (``tun.vnet_hdr``): every read is a virtio_net_hdr plus a packet or a TSO
  super-packet. Toward a GSO peer it is sealed once as a GSO capsule and sent as chunk datagrams
  with one UDP_SEGMENT sendmsg. Toward a per-packet peer it is segmented in userspace
  (``vnet.segment``) and every segment is sealed as its own capsule. GSO capsules received are
  reassembled, opened once and written with their virtio_net_hdr in one TUN write.
- **per-packet** (no vnet_hdr): one capsule per IP packet both ways; GSO capsules are dropped (a
  per-packet node never announces Capability.GSO).

**After a move** (``moved``, issue 21) every path keeps the capsules it sends, as sent (sealed, so
re-sending them uses no nonce again), until the core confirms the path (``PathConfirmed``: the far
end answered at the path's endpoint) or ``settle``. If the path's endpoint or mode changed in
between (a re-direction: the old addressing did not work from the new place), they are sent again
to the confirmed endpoint: what went to the old one is not lost. A capsule that did arrive the first
time is dropped by the peer's replay window (counted there as a replay). Bounded per path
(``KEEP_MAX_DATAGRAMS``, ``KEEP_MAX_BYTES``); beyond that nothing more is kept.

**Refused by the kernel** (``send`` False: no route, as between the old address going and the new
one's route coming; a full buffer): the last ``UNSENT_MAX`` capsules per path are remembered with the
time, and sent again when the node notices the move (``moved``) and on the path's confirmation, if
refused within ``MOVE_KEEP`` before. They never left the host, so this sends nothing twice.

**Standby legs** (RS-N pair, issue 20; core/node/standby.py): a path's standby leg (``StandbyReady``)
is a path of its own here (its Path ID, sealer and opener) that only receives: nothing is sent on it
and it holds none of the path's VIPs. The first capsule authenticated on it (the shared address moved
to its relay) makes it the path at once: the VIPs go to it (``on_standby`` tells the core, which
switches too and closes the old path). When the core switches first (the relay's death noticed), its
``PathReady`` of the leg does the same. What the old path kept or could not send is its own: sealed
under the old path's key for a relay that is gone, never re-sent on the leg (TCP sends it again).
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ntmobile.core.node import (
    LegWatch,
    PathClosed,
    PathConfirmed,
    PathEndpointChanged,
    PathInfo,
    PathReady,
    StandbyGone,
    StandbyReady,
)
from ntmobile.core.timing import MOVE_KEEP
from ntmobile.crypto import AuthError, CapsuleOpener, CapsuleSealer, ReassemblyRefused
from ntmobile.wire import CodecError
from ntmobile.wire.constants import TAG_SIZE, Capability, CapsuleFlags, PathMode
from ntmobile.wire.frame import GSO_CHUNK_OVERHEAD

from . import vnet
from .tun import MAX_PACKET
from .udp import GSO_MAX_BYTES, GSO_MAX_SEGMENTS
from .udpio import chunk_size
from .vnet import VNET_HDR_LEN, ZERO_HDR

Endpoint = tuple[str, int]
BATCH = 64
_GSO = int(CapsuleFlags.GSO)
#: Default underlay path MTU: chunk datagrams and capsules are sized to fit it.
PATH_MTU = 1500
#: Bytes a per-packet capsule adds on the wire, worst case (IPv6 outer): 40 + 8 + 36.
WIRE_OVERHEAD = 40 + 8 + 36
#: After a move, per path: capsule sends (datagrams or GSO blobs) and bytes kept at most (module docstring).
KEEP_MAX_DATAGRAMS = 256
KEEP_MAX_BYTES = 1 << 20
#: Capsule sends the kernel refused, remembered per path (the oldest go first; module docstring).
UNSENT_MAX = 64


def inner_mtu(path_mtu: int = PATH_MTU) -> int:
    """The TUN MTU that keeps every per-packet capsule within ``path_mtu`` (IPv4 or IPv6 outer)."""
    return path_mtu - WIRE_OVERHEAD


def gso_max_size(path_mtu: int = PATH_MTU) -> int:
    """The largest super-packet whose GSO capsule still goes out in one UDP_SEGMENT sendmsg
    (at most 64 datagrams and 65507 bytes), for IPv4 and IPv6 outer headers alike."""
    best = 65535
    for fam in (socket.AF_INET, socket.AF_INET6):
        size = chunk_size(path_mtu, fam)
        per = min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // size)
        best = min(best, per * (size - GSO_CHUNK_OVERHEAD) - TAG_SIZE - VNET_HDR_LEN)
    return best


class TunDevice(Protocol):
    """What the forwarder needs of a TUN queue: ``tun.Tun`` in the daemon, ``memory.MemoryTun`` in tests."""

    vnet_hdr: bool

    def read_into(self, buf: bytearray | memoryview) -> int: ...
    def write(self, buf: bytes | bytearray | memoryview) -> int: ...
    def writev(self, parts: Sequence[bytes | bytearray | memoryview]) -> int: ...


class DatagramOut(Protocol):
    """What the forwarder needs of the UDP side: ``udpio.UdpIo`` in the daemon, ``memory.MemoryUdp`` in tests."""

    def send(self, data: bytes | bytearray | memoryview, addr: Endpoint) -> bool: ...
    def send_chunks(self, data: bytes | bytearray | memoryview, size: int, addr: Endpoint) -> bool: ...


@dataclass(slots=True)
class FwdPath:
    path_id: bytes
    sealer: CapsuleSealer
    opener: CapsuleOpener
    peer_vips: frozenset[bytes]  # packed addresses the peer may use as inner source
    endpoint: Endpoint | None
    learn: bool  # address learning from authenticated data (not through an RS-S)
    gso: bool = False  # send GSO capsules (we have offloads and the peer announced Capability.GSO)
    tx_packets: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0
    #: The path's mode (PathMode name) and its counters when it took that mode (a path whose mode
    #: changes keeps its counters; the totals by mode count from there).
    mode: str = ""
    base: tuple[int, int, int, int] = (0, 0, 0, 0)
    #: NAT traversal (core.node.LegWatch, shared with the core): the relay's and the peer's candidate
    #: endpoints, never learnt across modes; where each delivered capsule came from.
    leg: LegWatch | None = None
    #: After a move: what was sent since, as (datagram or GSO blob, chunk size or 0); None: not keeping.
    kept: list[tuple[bytes, int]] | None = None
    kept_bytes: int = 0
    #: The endpoint or mode changed while keeping (a re-direction): re-send on confirmation.
    redirected: bool = False
    #: Sends the kernel refused: (datagram or GSO blob, chunk size or 0, when).
    unsent: list[tuple[bytes, int, float]] | None = None
    #: A standby leg (module docstring): the Path ID of the path it stands by for; None once it is one.
    standby_of: bytes | None = None

    def refused(self, data: bytes, size: int, now: float) -> None:
        if self.unsent is None:
            self.unsent = []
        elif len(self.unsent) >= UNSENT_MAX:
            del self.unsent[0]
        self.unsent.append((data, size, now))

    def keep(self, data: bytes, size: int) -> None:
        kept = self.kept
        if kept is not None and len(kept) < KEEP_MAX_DATAGRAMS and self.kept_bytes + len(data) <= KEEP_MAX_BYTES:
            kept.append((data, size))
            self.kept_bytes += len(data)

    def leg_knows(self, addr: Endpoint) -> bool:
        """Besides the learnt endpoint (checked inline first, the per-packet case), ``addr`` may hold
        reassembly state if it is (traversal) the relay or a candidate of the peer: capsules arrive
        from both while the two ends switch."""
        return self.leg is not None and self.leg.knows(addr)

    def counts(self) -> tuple[int, int, int, int]:
        return self.tx_packets, self.tx_bytes, self.rx_packets, self.rx_bytes


def _add_since_base(totals: list[int], fp: FwdPath) -> None:
    """Add ``fp``'s counts since it took its mode to ``totals``."""
    for i, (now, base) in enumerate(zip(fp.counts(), fp.base, strict=True)):
        totals[i] += now - base


class NodeForwarder:
    def __init__(self, tun: TunDevice, io: DatagramOut, *, path_mtu: int = PATH_MTU,
                 on_miss: Callable[[bytes], None] | None = None,
                 on_learn: Callable[[FwdPath, Endpoint], None] | None = None,
                 on_standby: Callable[[FwdPath], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.tun = tun
        self.io = io
        #: Read only when the kernel refuses a send (module docstring), never per packet.
        self.clock = clock
        self.vnet = tun.vnet_hdr
        self.seg = {fam: chunk_size(path_mtu, fam) - GSO_CHUNK_OVERHEAD for fam in (socket.AF_INET, socket.AF_INET6)}
        self.on_miss = on_miss
        self.on_learn = on_learn
        self.on_standby = on_standby
        self.by_dst: dict[bytes, FwdPath] = {}
        self.by_id: dict[bytes, FwdPath] = {}
        self.buf = bytearray(MAX_PACKET)
        self.stats = {"tun_no_path": 0, "rx_auth": 0, "rx_malformed": 0, "rx_unknown_path": 0, "rx_spoofed": 0,
                      "rx_gso_unsupported": 0, "tun_write_dropped": 0, "tun_write_errors": 0, "tx_gso_capsules": 0,
                      "tx_segmented": 0, "rx_gso_capsules": 0, "tun_bad_vnet": 0,
                      "rx_chunk_unknown_source": 0, "tx_resent_after_move": 0, "tx_unsent_resent": 0,
                      "rx_standby_switches": 0}
        self._moves = 0
        #: Packets and bytes (tx packets, tx bytes, rx packets, rx bytes) by path mode of the paths
        #: gone or of the modes paths left: with the live paths', totals that never go down.
        self.retired: dict[str, list[int]] = {}

    def add(self, path_id: bytes, sealer: CapsuleSealer, opener: CapsuleOpener, peer_vips: list[str],
            endpoint: Endpoint | None, learn: bool, *, gso: bool = False, mode: str = "",
            leg: LegWatch | None = None) -> FwdPath:
        packed = frozenset(ipaddress.ip_address(v).packed for v in peer_vips)
        fp = FwdPath(path_id, sealer, opener, packed, endpoint, learn, gso and self.vnet, mode=mode, leg=leg)
        old = self.by_id.get(path_id)
        if old is not None:
            fp.tx_packets, fp.tx_bytes, fp.rx_packets, fp.rx_bytes = old.counts()
            fp.unsent = old.unsent
            if old.kept is not None:  # keeping since a move: goes on; another mode or endpoint is a re-direction
                fp.kept, fp.kept_bytes = old.kept, old.kept_bytes
                fp.redirected = old.redirected or old.mode != mode or old.endpoint != endpoint
            if old.mode != mode:
                self._retire(old)
                fp.base = old.counts()
            else:
                fp.base = old.base
        self.by_id[path_id] = fp
        for v in packed:
            self.by_dst[v] = fp
        return fp

    def add_standby(self, active_id: bytes, leg: PathInfo) -> FwdPath:
        """The standby leg ``leg`` of path ``active_id``: it receives only, until it is the path (module
        docstring). Replaces the path's previous standby leg."""
        for old in [f for f in self.by_id.values() if f.standby_of == active_id and f.path_id != leg.path_id]:
            self.remove(old.path_id)
        packed = frozenset(ipaddress.ip_address(v).packed for v in (leg.peer_vip4, leg.peer_vip6) if v)
        fp = FwdPath(leg.path_id, leg.sealer, leg.opener, packed, leg.endpoint, learn=True,
                     gso=bool(leg.capabilities & Capability.GSO) and self.vnet, mode=leg.mode.name,
                     standby_of=active_id)
        self.by_id[leg.path_id] = fp
        return fp

    def _take_over(self, fp: FwdPath) -> None:
        """Standby leg ``fp`` authenticated a capsule: it is the path now (its VIPs go to it)."""
        fp.standby_of = None
        for v in fp.peer_vips:
            self.by_dst[v] = fp
        self.stats["rx_standby_switches"] += 1
        if self.on_standby is not None:
            self.on_standby(fp)

    def remove(self, path_id: bytes) -> None:
        fp = self.by_id.pop(path_id, None)
        if fp is not None:
            self._retire(fp)
            for v in fp.peer_vips:
                if self.by_dst.get(v) is fp:
                    del self.by_dst[v]

    def _retire(self, fp: FwdPath) -> None:
        _add_since_base(self.retired.setdefault(fp.mode, [0, 0, 0, 0]), fp)

    def totals_by_mode(self) -> dict[str, list[int]]:
        """(tx packets, tx bytes, rx packets, rx bytes) by path mode, of every path this forwarder had
        (the metrics' running totals: they never go down)."""
        out = {mode: list(t) for mode, t in self.retired.items()}
        for fp in self.by_id.values():
            _add_since_base(out.setdefault(fp.mode, [0, 0, 0, 0]), fp)
        return out

    def set_endpoint(self, path_id: bytes, endpoint: Endpoint) -> None:
        fp = self.by_id.get(path_id)
        if fp is not None:
            if fp.kept is not None and fp.endpoint != endpoint:
                fp.redirected = True
            fp.endpoint = endpoint

    # -- after a move ---------------------------------------------------------------------------
    def moved(self) -> int:
        """The node noticed that it moved: every path keeps what it sends from now on (module
        docstring). Returns a token for ``settle``."""
        self._moves += 1
        for fp in self.by_id.values():
            fp.kept, fp.kept_bytes, fp.redirected = [], 0, False
            if fp.unsent and fp.endpoint is not None:
                self._resend_unsent(fp, fp.endpoint)
        return self._moves

    def _send(self, fp: FwdPath, data: bytes, size: int, ep: Endpoint) -> None:
        """Send (``size``: GSO chunks), keep after a move, remember a refusal."""
        if not (self.io.send_chunks(data, size, ep) if size else self.io.send(data, ep)):
            fp.refused(data, size, self.clock())
        elif fp.kept is not None:
            fp.keep(data, size)

    def _resend_unsent(self, fp: FwdPath, ep: Endpoint) -> None:
        """What the kernel refused on ``fp`` within MOVE_KEEP, sent again to ``ep`` (older: dropped)."""
        unsent, fp.unsent = fp.unsent or [], None
        since = self.clock() - MOVE_KEEP
        again = [(d, size) for d, size, t in unsent if t >= since]
        for data, size in again:
            self._send(fp, data, size, ep)
        self.stats["tx_unsent_resent"] += len(again)

    def settle(self, token: int) -> None:
        """Stop keeping (the runtime calls this MOVE_KEEP after ``moved``; a later move's keep goes on)."""
        if token == self._moves:
            for fp in self.by_id.values():
                fp.kept = None
                fp.kept_bytes = 0

    def confirmed(self, path_id: bytes, endpoint: Endpoint) -> None:
        """The far end of ``path_id`` answered at ``endpoint``: if a re-direction moved the path since
        the move, what it kept is sent again there; either way it stops keeping."""
        fp = self.by_id.get(path_id)
        if fp is None:
            return
        kept, fp.kept, fp.kept_bytes = fp.kept, None, 0
        if kept and fp.redirected and fp.endpoint == endpoint:
            for data, size in kept:
                self._send(fp, data, size, endpoint)
            self.stats["tx_resent_after_move"] += len(kept)
        if fp.unsent:
            self._resend_unsent(fp, endpoint)

    def follow(self, ev: object) -> None:
        """Apply a node core event to the forwarding table: a ready path is installed (its peer's VIPs,
        its endpoint, address learning unless relayed by an RS-S, GSO if the peer takes it), a moved
        endpoint updated, a closed path removed. Other events are not the data plane's."""
        if isinstance(ev, PathReady):
            p = ev.path
            self.add(p.path_id, p.sealer, p.opener, [v for v in (p.peer_vip4, p.peer_vip6) if v], p.endpoint,
                     learn=p.mode is not PathMode.RS_S, gso=bool(p.capabilities & Capability.GSO), mode=p.mode.name,
                     leg=p.leg)
        elif isinstance(ev, PathEndpointChanged):
            self.set_endpoint(ev.path_id, ev.endpoint)
        elif isinstance(ev, PathConfirmed):
            self.confirmed(ev.path_id, ev.endpoint)
        elif isinstance(ev, PathClosed):
            self.remove(ev.path_id)
        elif isinstance(ev, StandbyReady):
            self.add_standby(ev.path_id, ev.standby)
        elif isinstance(ev, StandbyGone):
            fp = self.by_id.get(ev.standby_id)
            if fp is not None and fp.standby_of is not None:
                self.remove(ev.standby_id)

    # -- TUN → UDP -------------------------------------------------------------------------------
    def on_tun_readable(self) -> None:
        buf = self.buf
        mv = memoryview(buf)
        off = VNET_HDR_LEN if self.vnet else 0
        io = self.io
        for _ in range(BATCH):
            n = self.tun.read_into(buf)
            if n <= off:
                if n <= 0:
                    return
                continue
            version = buf[off] >> 4
            if version == 4 and n >= off + 20:
                dst = bytes(buf[off + 16:off + 20])
            elif version == 6 and n >= off + 40:
                dst = bytes(buf[off + 24:off + 40])
            else:
                continue
            fp = self.by_dst.get(dst)
            ep = fp.endpoint if fp is not None else None
            if fp is None or ep is None:
                self.stats["tun_no_path"] += 1
                if self.on_miss is not None:
                    self.on_miss(dst)
                continue
            try:
                if not off:
                    c = fp.sealer.seal(mv[:n])
                    if not io.send(c, ep):
                        fp.refused(c, 0, self.clock())
                    elif fp.kept is not None:
                        fp.keep(c, 0)
                    fp.tx_packets += 1
                elif fp.gso:
                    blob, size = fp.sealer.seal_gso(mv[:n], self.seg[socket.AF_INET6 if ":" in ep[0]
                                                                     else socket.AF_INET])
                    self._send(fp, blob, size, ep)
                    self.stats["tx_gso_capsules"] += 1
                    fp.tx_packets += 1
                else:
                    for pkt in self._per_packet(mv, n):
                        self._send(fp, fp.sealer.seal(pkt), 0, ep)
                        fp.tx_packets += 1
            except (vnet.VnetError, CodecError):
                self.stats["tun_bad_vnet"] += 1
                continue
            fp.tx_bytes += n - off

    def _per_packet(self, mv: memoryview, n: int) -> list[bytes] | tuple[memoryview]:
        """IP packets for a per-packet peer from one offload-TUN read (header + packet)."""
        hdr = vnet.parse_hdr(mv)
        if hdr.gso != vnet.GSO_NONE:
            self.stats["tx_segmented"] += 1
            return vnet.segment(hdr, mv[VNET_HDR_LEN:n])
        if hdr.needs_csum:
            return [vnet.complete_checksum(hdr, mv[VNET_HDR_LEN:n])]
        return (mv[VNET_HDR_LEN:n],)

    # -- UDP → TUN -------------------------------------------------------------------------------
    def on_run(self, data: memoryview, size: int, addr: Endpoint, now: float) -> int:
        """GSO chunks back to back in a GRO batch (``UdpIo`` on_run): reassembled in bulk."""
        fp = self.by_id.get(bytes(data[4:12]))
        if fp is None or not self.vnet:
            self.stats["rx_unknown_path" if fp is None else "rx_gso_unsupported"] += 1
            return 1
        try:
            # Reassembly state only for chunks from the path's endpoint (crypto.channel.CapsuleOpener).
            inner, k = fp.opener.open_run(data, size, now, learnt=addr == fp.endpoint or fp.leg_knows(addr),
                                          scratch=True)
        except ReassemblyRefused:
            self.stats["rx_chunk_unknown_source"] += 1
            return 1
        except AuthError:
            self.stats["rx_auth"] += 1
            return 1
        except CodecError:
            self.stats["rx_malformed"] += 1
            return 1
        if inner is not None:
            self.stats["rx_gso_capsules"] += 1
            self._deliver(fp, inner, True, addr)
        return k

    def on_capsule(self, data: memoryview, addr: Endpoint, now: float) -> None:
        fp = self.by_id.get(bytes(data[4:12]))
        if fp is None:
            self.stats["rx_unknown_path"] += 1
            return
        gso = bool(data[2] & _GSO)
        try:
            if gso:
                if not self.vnet:
                    self.stats["rx_gso_unsupported"] += 1
                    return
                inner = fp.opener.open_chunk(data, now, learnt=addr == fp.endpoint or fp.leg_knows(addr))
                if inner is None:
                    return
                self.stats["rx_gso_capsules"] += 1
            else:
                inner = fp.opener.open(data)
        except ReassemblyRefused:
            self.stats["rx_chunk_unknown_source"] += 1
            return
        except AuthError:
            self.stats["rx_auth"] += 1
            return
        except CodecError:
            self.stats["rx_malformed"] += 1
            return
        self._deliver(fp, inner, gso, addr)

    def _deliver(self, fp: FwdPath, inner: bytes | memoryview, gso: bool, addr: Endpoint) -> None:
        off = VNET_HDR_LEN if gso else 0
        if len(inner) <= off:
            return
        version = inner[off] >> 4
        src = bytes(inner[off + 12:off + 16] if version == 4 else inner[off + 8:off + 24] if version == 6 else b"")
        if src not in fp.peer_vips:
            self.stats["rx_spoofed"] += 1
            return
        try:
            if gso or not self.vnet:
                written = self.tun.write(inner)
            else:
                written = self.tun.writev((ZERO_HDR, inner))
        except OSError:
            self.stats["tun_write_errors"] += 1  # e.g. a virtio_net_hdr the kernel refuses
            return
        if written == 0:
            self.stats["tun_write_dropped"] += 1
            return
        fp.rx_packets += 1
        fp.rx_bytes += len(inner) - off
        if fp.standby_of is not None:
            self._take_over(fp)
        leg = fp.leg
        if leg is not None:
            if addr == leg.relay:
                leg.relayed += 1
                return  # through the relay: the peer's own endpoint is not the relay's
            leg.direct += 1
        if fp.learn and addr != fp.endpoint:
            fp.endpoint = addr
            if self.on_learn is not None:
                self.on_learn(fp, addr)


def family_of(addr: Endpoint) -> int:
    return socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
