"""The relay's per-datagram hot path: RS-S capsules forwarded byte-identical between the legs, RS-N
capsules opened for the TUN and the general node's replies sealed to the node.

Allocation-light on purpose: one Relay Table lookup per datagram (or per run of a GRO batch), plain
int flags, and no new objects but the ones sent. RS-S data is never authenticated here (the RS-S has
no data key), so it never moves a leg: it is forwarded only from the sending leg's learnt endpoint
(otherwise anybody who saw a path ID could use the RS-S as a reflector). RS-N data is authenticated
end to end and may move the node's endpoint.
"""

from __future__ import annotations

import struct
from functools import lru_cache

from ntmobile.crypto import AuthError, ReassemblyRefused, ReplayError
from ntmobile.wire import CAPSULE_OVERHEAD, Capability, CapsuleFlags, CodecError, Endpoint
from ntmobile.wire.frame import GSO_CHUNK_OVERHEAD

from ..common import CoreBase
from .config import VNET_HDR_SIZE, RsConfig
from .events import RelayEndpointChanged
from .hold import MoveHold
from .table import AnyEntry, EntryState, Leg, RelayEntry, RsnEntry, RssEntry

# Plain ints for the data path: ``int & IntFlag`` goes through enum's Python-level __rand__ and
# builds a flag object per datagram (a few microseconds each on the relay's hot path).
_F_GSO = int(CapsuleFlags.GSO)
_F_FROM_RESPONDER = int(CapsuleFlags.FROM_RESPONDER)
_CAP_GSO = int(Capability.GSO)

TunPacket = tuple[bytes | memoryview, bool]
#: A GSO capsule to send: (chunk datagrams back to back, datagram size, endpoint).
GsoSend = tuple[bytes, int, Endpoint]


class DataPath(CoreBase):
    """The relay core's data capsules and TUN packets (a part of ``RsCore``)."""

    config: RsConfig
    #: The Relay Table's dicts (``RelayTable.paths`` and ``.by_vips``, the same objects).
    _paths: dict[bytes, AnyEntry]
    _by_vips: dict[tuple[bytes, bytes], RsnEntry]
    _tun: list[TunPacket]
    _gso_out: list[GsoSend]
    #: RS-S capsules from legs' new sources, held while the legs move (hold.py).
    _moving: MoveHold

    def relay_data(self, data: bytes | bytearray | memoryview, addr: Endpoint, now: float) -> Endpoint | None:
        """A data capsule datagram (the runtime's fast path; ``data`` may be a view of a receive
        buffer, used only during the call). RS-N capsules are opened here (their inner packets go
        to ``packets_to_tun``). For RS-S, returns the endpoint to forward the datagram to,
        unchanged (the runtime sends it, batching equal-sized datagrams with UDP GSO); None when
        there is nothing to forward."""
        if len(addr) != 2:
            addr = (addr[0], addr[1])
        return self._on_data(data, addr, now)

    def relay_run(self, data: memoryview, size: int, addr: Endpoint, now: float) -> tuple[Endpoint | None, int]:
        """Data capsule datagrams back to back every ``size`` bytes (a UDP GRO batch, from a GSO
        chunk on): the same as ``relay_data`` on each, in bulk. Returns ``(endpoint, k)``: the
        first ``k`` datagrams were consumed, and (RS-S) are to be forwarded unchanged to
        ``endpoint``. An RS-N payload it queues for the TUN is a view of a shared buffer: drain
        ``packets_to_tun()`` before the next call."""
        if len(addr) != 2:
            addr = (addr[0], addr[1])
        n = len(data)
        first = data[:size]
        e = self._paths.get(bytes(data[4:12]))
        if e is None or n <= size:
            return self._on_data(first, addr, now), 1
        if isinstance(e, RssEntry):
            dest = self._on_data(first, addr, now)
            if dest is None:
                return None, 1
            k = _same_prefix_run(data, size, 12)
            more = min(k * size, n) - size
            if data[2] & _F_FROM_RESPONDER:
                e.packets_r2i += k - 1
                e.bytes_r2i += more
            else:
                e.packets_i2r += k - 1
                e.bytes_i2r += more
            return dest, k
        if data[2] & _F_FROM_RESPONDER or not self.config.capabilities & _CAP_GSO:
            return self._on_data(first, addr, now), 1
        try:
            payload, k = e.opener.open_run(data, size, now, learnt=addr == e.initiator.endpoint, scratch=True)
        except (AuthError, CodecError):
            return self._on_data(first, addr, now), 1  # counts it
        if payload is not None:
            self._accept_n(e, payload, True, addr, now)
        return None, k

    def tun_packet(self, packet: bytes | bytearray | memoryview, now: float, *, gso: bool = False) -> bool:
        """An IP packet the kernel routed to the TUN device: a general node's reply, already
        de-NATed (dst = node VIP, src = the VIP standing for the GN). Sealed to the node's current
        endpoint. With ``gso`` the packet starts with a virtio_net_hdr and goes out as one GSO
        capsule in chunks (``gso_to_send``) if the path's node announced Capability.GSO
        (``entry.initiator.capabilities``); if it did not, nothing is done and False is returned:
        the runtime then segments the super-packet and passes the segments without ``gso``."""
        pair = _ip_pair(packet, VNET_HDR_SIZE if gso else 0)
        if pair is None:
            self.stats["tun_malformed"] += 1
            return True
        src, dst = pair
        e = self._by_vips.get((dst, src))
        if e is None:
            self.stats["tun_no_path"] += 1
            return True
        ep = e.initiator.endpoint
        if ep is None:
            e.drops += 1
            self.stats["tun_no_endpoint"] += 1
            return True
        if gso:
            caps = e.initiator.capabilities
            if caps is None or not caps & Capability.GSO:
                return False
            seg = self.config.path_mtu - (48 if ":" in ep[0] else 28) - GSO_CHUNK_OVERHEAD
            blob, size = e.sealer.seal_gso(packet, seg)
            self._gso_out.append((blob, size, ep))
            e.packets_r2i += 1
            e.bytes_r2i += len(packet) - VNET_HDR_SIZE
            return True
        e.packets_r2i += 1
        e.bytes_r2i += len(packet)
        self._send(e.sealer.seal(packet), ep)
        return True

    def _on_data(self, data: bytes | bytearray | memoryview, addr: Endpoint, now: float) -> Endpoint | None:
        """One data capsule datagram. Returns the endpoint to forward it to (RS-S) or None."""
        n = len(data)
        flags = data[2] if n > 2 else 0
        gso = flags & _F_GSO
        if n < (GSO_CHUNK_OVERHEAD + 1 if gso else CAPSULE_OVERHEAD):
            self.stats["drop_malformed"] += 1
            return None
        e = self._paths.get(bytes(data[4:12]))
        if e is None:
            self.stats["drop_unknown_path"] += 1
            return None
        from_responder = flags & _F_FROM_RESPONDER
        if isinstance(e, RssEntry):
            # RS-S: no key, so no authentication and no address learning here (module docstring).
            # GSO chunks are forwarded like any capsule: the far node reassembles and opens them.
            src, dst = (e.responder, e.initiator) if from_responder else (e.initiator, e.responder)
            if src.endpoint != addr:
                # Perhaps the leg's node moved and its announcement is on the way: held, forwarded
                # only if the leg moves to ``addr`` on an authenticated datagram (hold.py).
                if not self._moving.hold((e.path_id, bool(from_responder)), addr, data, now):
                    e.drops += 1
                    self.stats["drop_data_unknown_source"] += 1
                return None
            if dst.endpoint is None:
                # From the leg's learnt endpoint, to a leg not announced yet (a re-direction onto this
                # relay: the other node's Tunnel Request is on the way): held the same way.
                if not self._moving.hold((e.path_id, bool(from_responder)), addr, data, now):
                    e.drops += 1
                    self.stats["drop_no_leg"] += 1
                return None
            e.last_active = now
            if from_responder:
                e.packets_r2i += 1
                e.bytes_r2i += n
            else:
                e.packets_i2r += 1
                e.bytes_i2r += n
            return dst.endpoint
        # RS-N: the node is the initiator; open end to end.
        if from_responder:
            e.drops += 1
            self.stats["drop_bad_direction"] += 1
            return None
        if gso and not self.config.capabilities & _CAP_GSO:
            # We did not offer GSO: the runtime's TUN cannot take a virtio_net_hdr super-packet.
            e.drops += 1
            self.stats["drop_gso_unsupported"] += 1
            return None
        try:
            # Reassembly state only for chunks from the node's learnt endpoint (CapsuleOpener).
            payload = (e.opener.open_chunk(data, now, learnt=addr == e.initiator.endpoint) if gso
                       else e.opener.open(data))
        except ReassemblyRefused:
            e.drops += 1
            self.stats["drop_chunk_unknown_source"] += 1
            return None
        except ReplayError:
            e.drops += 1
            self.stats["drop_data_replay"] += 1
            return None
        except AuthError:
            e.drops += 1
            self.stats["drop_data_auth"] += 1
            return None
        except CodecError:
            e.drops += 1
            self.stats["drop_malformed"] += 1
            return None
        if payload is None:
            return None  # a GSO capsule still missing chunks
        self._accept_n(e, payload, bool(gso), addr, now)
        return None

    def _accept_n(self, e: RsnEntry, payload: bytes | memoryview, gso: bool, addr: Endpoint, now: float) -> None:
        """RS-N: an opened inner packet (or virtio_net_hdr + super-packet) from the node."""
        if _ip_pair(payload, VNET_HDR_SIZE if gso else 0) not in e.vip_pairs:
            # Authenticated, but not between this path's VIPs: never let it reach the NAT.
            e.drops += 1
            self.stats["drop_inner_address"] += 1
            return
        e.last_active = now
        e.packets_i2r += 1
        e.bytes_i2r += len(payload)
        if e.initiator.endpoint != addr:
            self._learn(e, e.initiator, addr, now)
        self._tun.append((payload, gso))

    def _learn(self, e: RelayEntry, leg: Leg, addr: Endpoint, now: float) -> None:
        """An authenticated ``addr`` for ``leg``: the entry is ACTIVE once every leg has one. RS-S:
        the capsules held from ``addr`` for this leg (it moved) go to the other leg now."""
        if leg.endpoint != addr:
            leg.endpoint = addr
            self.stats["endpoint_learned"] += 1
            if e.state is EntryState.WAITING and all(x.endpoint is not None for x in e.legs()):
                e.move(EntryState.ACTIVE)
            self._emit(RelayEndpointChanged(e.path_id, leg.role, addr))
            if isinstance(e, RssEntry) and self._moving:
                # Both ways: what the moved leg sent from ``addr``, and what the other leg sent
                # from its endpoint while this one was not known yet.
                for from_responder in (False, True):
                    self._release_held(e, from_responder, now)

    def _release_held(self, e: RssEntry, from_responder: bool, now: float) -> None:
        """Forward what was held from one leg's current endpoint to the other leg's (in arrival
        order), once both are known; capsules held from other sources go."""
        src, dst = (e.responder, e.initiator) if from_responder else (e.initiator, e.responder)
        if src.endpoint is None or dst.endpoint is None:
            return  # still held (until MOVE_HOLD)
        held = self._moving.release((e.path_id, from_responder), src.endpoint, now)
        dst_ep = dst.endpoint
        for data in held:
            self._send(data, dst_ep)
        if held:
            e.last_active = now
            sizes = sum(map(len, held))
            if from_responder:
                e.packets_r2i, e.bytes_r2i = e.packets_r2i + len(held), e.bytes_r2i + sizes
            else:
                e.packets_i2r, e.bytes_i2r = e.packets_i2r + len(held), e.bytes_i2r + sizes


@lru_cache(maxsize=64)
def _prefix_struct(size: int, plen: int) -> struct.Struct:
    """Unpacks the ``plen``-byte prefix of one ``size``-byte datagram (and skips the rest)."""
    return struct.Struct(f"{plen}s{size - plen}x")


def _same_prefix_run(data: memoryview, size: int, plen: int) -> int:
    """How many datagrams laid every ``size`` bytes in ``data`` start with the first one's
    ``plen``-byte prefix, counting from the first. The full-size datagrams' prefixes are taken in
    one C pass (``struct.iter_unpack``) and compared with ``list.count`` (the common case: one
    path, one direction); a mixed batch is then walked to its first stranger."""
    n = len(data)
    if size <= plen or n <= size:
        return 1
    full = n // size
    key = (data[:plen].tobytes(),)
    heads = list(_prefix_struct(size, plen).iter_unpack(data[:full * size]))
    if heads.count(key) == full:
        o = full * size
        return full + 1 if o < n and data[o:o + plen] == key[0] else full
    return heads.index(next(h for h in heads if h != key))


def _ip_pair(packet: bytes | bytearray | memoryview, off: int) -> tuple[bytes, bytes] | None:
    """(source, destination) of an IPv4/IPv6 packet starting at ``off``; None if not one."""
    if len(packet) < off + 20:
        return None
    version = packet[off] >> 4
    if version == 4:
        return bytes(packet[off + 12:off + 16]), bytes(packet[off + 16:off + 20])
    if version == 6 and len(packet) >= off + 40:
        return bytes(packet[off + 8:off + 24]), bytes(packet[off + 24:off + 40])
    return None
