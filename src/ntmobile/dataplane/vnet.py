"""virtio_net_hdr: the 10-byte header a TUN opened with IFF_VNET_HDR puts before every packet.

Layout (legacy virtio, native byte order, as the TUN uses on little-endian hosts):
    u8 flags, u8 gso_type, u16 hdr_len, u16 gso_size, u16 csum_start, u16 csum_offset

With TUNSETOFFLOAD the kernel hands the reader "super-packets": one IP packet of up to 64 KB whose
L4 payload must be cut into `gso_size` pieces (TSO for TCP, USO for UDP), and packets whose L4
checksum is only partially computed (flags NEEDS_CSUM: the checksum field holds the pseudo-header
sum; the sum from csum_start to the end must be complemented into csum_start + csum_offset).

`segment()` turns a super-packet into ordinary, fully checksummed IP packets (the per-packet
fallback: a peer or TUN without vnet_hdr); `complete_checksum()` finishes one NEEDS_CSUM packet.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ntmobile.dataplane.checksum import Buffer, checksum

VNET_HDR_LEN = 10

F_NEEDS_CSUM = 1
F_DATA_VALID = 2

GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3  # UFO, obsolete; never produced with the offloads ntmobile requests
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80

PROTO_TCP = 6
PROTO_UDP = 17

_HDR = struct.Struct("=BBHHHH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")

ZERO_HDR = bytes(VNET_HDR_LEN)
"""A header saying: complete packet, no GSO, checksum already correct."""

_TCP_FIN = 0x01
_TCP_PSH = 0x08
_TCP_CWR = 0x80


class VnetError(ValueError):
    """A vnet header or packet that cannot be segmented or checksummed."""


@dataclass(frozen=True, slots=True)
class VnetHdr:
    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    @property
    def needs_csum(self) -> bool:
        return bool(self.flags & F_NEEDS_CSUM)

    @property
    def gso(self) -> int:
        """The GSO type without the ECN bit."""
        return self.gso_type & ~GSO_ECN

    def pack(self) -> bytes:
        return _HDR.pack(self.flags, self.gso_type, self.hdr_len, self.gso_size, self.csum_start,
                         self.csum_offset)

    def pack_into(self, buf: bytearray | memoryview, offset: int = 0) -> None:
        _HDR.pack_into(buf, offset, self.flags, self.gso_type, self.hdr_len, self.gso_size,
                       self.csum_start, self.csum_offset)


def parse_hdr(buf: Buffer, offset: int = 0) -> VnetHdr:
    """Parse the 10-byte header at `offset`."""
    if len(buf) - offset < VNET_HDR_LEN:
        raise VnetError("short virtio_net_hdr")
    return VnetHdr(*_HDR.unpack_from(buf, offset))


def build_hdr(flags: int = 0, gso_type: int = GSO_NONE, hdr_len: int = 0, gso_size: int = 0,
              csum_start: int = 0, csum_offset: int = 0) -> bytes:
    return _HDR.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


@dataclass(frozen=True, slots=True)
class _Layout:
    version: int
    l4_off: int
    proto: int


def _layout(pkt: Buffer, hdr: VnetHdr) -> _Layout:
    if len(pkt) < 20:
        raise VnetError("packet shorter than an IPv4 header")
    version = pkt[0] >> 4
    if version == 4:
        ihl = (pkt[0] & 0x0F) * 4
        if ihl < 20 or len(pkt) < ihl:
            raise VnetError("bad IPv4 header length")
        return _Layout(4, ihl, pkt[9])
    if version == 6:
        if len(pkt) < 40:
            raise VnetError("packet shorter than an IPv6 header")
        nxt = pkt[6]
        if nxt in (PROTO_TCP, PROTO_UDP):
            return _Layout(6, 40, nxt)
        # Extension headers: trust csum_start for the L4 offset and the GSO type for the protocol.
        # (A routing header would change the pseudo-header's destination: not handled.)
        if hdr.needs_csum and hdr.csum_start >= 40 and hdr.csum_offset in (16, 6):
            return _Layout(6, hdr.csum_start, PROTO_TCP if hdr.csum_offset == 16 else PROTO_UDP)
        raise VnetError(f"IPv6 next header {nxt} without usable csum_start")
    raise VnetError(f"not an IP packet (version {version})")


def _addr_sum(pkt: Buffer, lay: _Layout) -> int:
    if lay.version == 4:
        return int.from_bytes(pkt[12:20], "big")
    return int.from_bytes(pkt[8:40], "big")


def _fix_ip_header(seg: bytearray, lay: _Layout, l4_len: int, ip_id: int) -> None:
    """Set length fields (and the IPv4 id and header checksum) of one segment in place."""
    if lay.version == 4:
        _U16.pack_into(seg, 2, lay.l4_off + l4_len)
        _U16.pack_into(seg, 4, ip_id & 0xFFFF)
        seg[10:12] = b"\0\0"
        _U16.pack_into(seg, 10, checksum(memoryview(seg)[: lay.l4_off]))
    else:
        _U16.pack_into(seg, 4, lay.l4_off - 40 + l4_len)


def _l4_csum(seg: bytearray, lay: _Layout, addr_sum: int, l4_len: int, csum_pos: int) -> None:
    seg[csum_pos:csum_pos + 2] = b"\0\0"
    c = checksum(memoryview(seg)[lay.l4_off:], (addr_sum + lay.proto + l4_len) % 0xFFFF)
    if c == 0 and lay.proto == PROTO_UDP:
        c = 0xFFFF
    _U16.pack_into(seg, csum_pos, c)


def complete_checksum(hdr: VnetHdr, packet: Buffer) -> bytes:
    """Return `packet` with its partial (NEEDS_CSUM) L4 checksum completed; unchanged otherwise.

    The checksum field already holds the folded pseudo-header sum, so the sum runs from
    csum_start to the end of the packet, as the kernel's skb_checksum_help does.
    """
    if not hdr.needs_csum:
        return bytes(packet)
    start, pos = hdr.csum_start, hdr.csum_start + hdr.csum_offset
    if pos + 2 > len(packet) or start >= len(packet):
        raise VnetError("csum_start/csum_offset outside the packet")
    out = bytearray(packet)
    c = checksum(memoryview(out)[start:])
    _U16.pack_into(out, pos, c or 0xFFFF)
    return bytes(out)


def segment(hdr: VnetHdr, packet: Buffer) -> list[bytes]:
    """Split a TSO/USO super-packet into gso_size-payload IP packets with complete checksums.

    Per segment: IPv4 total length, id (+1 per segment) and header checksum, or the IPv6 payload
    length; TCP sequence number advanced by the payload sent before it, FIN and PSH kept only on
    the last segment and CWR only on the first; UDP length; full L4 checksum with pseudo-header.
    A packet without GSO is returned alone (checksum completed when NEEDS_CSUM).
    """
    gso = hdr.gso
    if gso == GSO_NONE or hdr.gso_size == 0:
        return [complete_checksum(hdr, packet)]
    if gso not in (GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4):
        raise VnetError(f"unsupported gso_type {hdr.gso_type}")
    lay = _layout(packet, hdr)
    if gso == GSO_TCPV4 and (lay.version != 4 or lay.proto != PROTO_TCP):
        raise VnetError("TCPV4 GSO on a packet that is not IPv4/TCP")
    if gso == GSO_TCPV6 and (lay.version != 6 or lay.proto != PROTO_TCP):
        raise VnetError("TCPV6 GSO on a packet that is not IPv6/TCP")
    if gso == GSO_UDP_L4 and lay.proto != PROTO_UDP:
        raise VnetError("UDP_L4 GSO on a packet that is not UDP")
    mv = memoryview(packet)
    l4 = lay.l4_off
    if lay.proto == PROTO_TCP:
        if len(packet) < l4 + 20:
            raise VnetError("truncated TCP header")
        l4_hdr_len = (packet[l4 + 12] >> 4) * 4
        csum_pos = l4 + 16
    else:
        l4_hdr_len = 8
        csum_pos = l4 + 6
    payload_off = l4 + l4_hdr_len
    if len(packet) < payload_off:
        raise VnetError("truncated L4 header")
    headers = mv[:payload_off]
    total = len(packet) - payload_off
    mss = hdr.gso_size
    addr_sum = _addr_sum(packet, lay)
    ip_id = _U16.unpack_from(packet, 4)[0] if lay.version == 4 else 0
    seq = _U32.unpack_from(packet, l4 + 4)[0] if lay.proto == PROTO_TCP else 0
    flags = packet[l4 + 13] if lay.proto == PROTO_TCP else 0
    out: list[bytes] = []
    off = 0
    i = 0
    while True:
        chunk = mv[payload_off + off:payload_off + min(off + mss, total)]
        last = off + mss >= total
        seg = bytearray(headers)
        seg += chunk
        l4_len = l4_hdr_len + len(chunk)
        _fix_ip_header(seg, lay, l4_len, ip_id + i)
        if lay.proto == PROTO_TCP:
            _U32.pack_into(seg, l4 + 4, (seq + off) & 0xFFFFFFFF)
            f = flags
            if not last:
                f &= ~(_TCP_FIN | _TCP_PSH)
            if i > 0:
                f &= ~_TCP_CWR
            seg[l4 + 13] = f
        else:
            _U16.pack_into(seg, l4 + 4, l4_len)
        _l4_csum(seg, lay, addr_sum, l4_len, csum_pos)
        out.append(bytes(seg))
        if last:
            return out
        off += mss
        i += 1


__all__ = [
    "F_DATA_VALID", "F_NEEDS_CSUM", "GSO_ECN", "GSO_NONE", "GSO_TCPV4", "GSO_TCPV6", "GSO_UDP",
    "GSO_UDP_L4", "VNET_HDR_LEN", "ZERO_HDR", "VnetError", "VnetHdr", "build_hdr", "complete_checksum",
    "parse_hdr", "segment",
]

