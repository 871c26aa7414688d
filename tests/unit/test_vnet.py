"""virtio_net_hdr parsing, super-packet segmentation and the internet checksum (pure)."""

from __future__ import annotations

import ipaddress
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntmobile.dataplane import vnet
from ntmobile.dataplane.checksum import checksum, ones_sum, pseudo_sum, verify


def naive_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


@given(st.binary(max_size=3000))
@settings(max_examples=300)
def test_checksum_matches_naive_reference(data: bytes) -> None:
    assert checksum(data) == naive_checksum(data)


@given(st.binary(max_size=600), st.binary(max_size=600))
def test_sums_of_parts_combine(a: bytes, b: bytes) -> None:
    if len(a) % 2:
        a += b"\0"
    assert checksum(b, ones_sum(a)) == naive_checksum(a + b)


@given(st.binary(min_size=1, max_size=1500))
def test_verify_accepts_data_with_its_checksum(data: bytes) -> None:
    if len(data) % 2:
        data += b"\0"
    with_csum = data + struct.pack("!H", checksum(data))
    assert verify(with_csum)
    assert checksum(with_csum) == 0


def test_checksum_of_zero_bytes_and_known_vector() -> None:
    assert checksum(b"\0\0\0\0") == 0xFFFF
    # RFC 1071 section 3 example words 0001 f203 f4f5 f6f7: sum ddf2 (folded), checksum 220d.
    assert checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D


def test_vnet_header_roundtrip() -> None:
    h = vnet.VnetHdr(vnet.F_NEEDS_CSUM, vnet.GSO_TCPV4 | vnet.GSO_ECN, 54, 1400, 34, 16)
    raw = h.pack()
    assert len(raw) == vnet.VNET_HDR_LEN
    assert vnet.parse_hdr(raw) == h
    assert h.gso == vnet.GSO_TCPV4 and h.needs_csum
    assert vnet.parse_hdr(vnet.ZERO_HDR) == vnet.VnetHdr()
    with pytest.raises(vnet.VnetError):
        vnet.parse_hdr(raw[:9])


# ---- synthetic super-packets, built like the kernel hands them over (CHECKSUM_PARTIAL) ----

SRC4, DST4 = ipaddress.ip_address("10.1.0.1").packed, ipaddress.ip_address("10.2.0.9").packed
SRC6, DST6 = ipaddress.ip_address("fd00::1").packed, ipaddress.ip_address("fd00:2::9").packed


def _ip(version: int, proto: int, l4: bytes) -> tuple[bytes, int]:
    if version == 4:
        h = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0x1234, 0x4000, 64, proto, 0,
                                  SRC4, DST4))
        struct.pack_into("!H", h, 10, checksum(h))
        return bytes(h), 20
    h6 = struct.pack("!IHBB16s16s", 0x60000000, len(l4), proto, 64, SRC6, DST6)
    return h6, 40


def _addrs(version: int) -> tuple[bytes, bytes]:
    return (SRC4, DST4) if version == 4 else (SRC6, DST6)


def tcp_super(version: int, payload: bytes, mss: int, flags: int = 0x18 | 0x01 | 0x80,
              seq: int = 0xFFFFF000) -> tuple[vnet.VnetHdr, bytes]:
    opts = b"\x01\x01\x08\x0a" + b"\0" * 8  # NOP NOP timestamps: a 32-byte header
    th = bytearray(struct.pack("!HHIIBBHHH", 40000, 5001, seq, 7, (32 // 4) << 4, flags, 512, 0, 0) + opts)
    src, dst = _addrs(version)
    # Partial checksum as the stack leaves it: the folded pseudo-header sum, not complemented.
    ps = pseudo_sum(src, dst, 6, len(th) + len(payload))
    struct.pack_into("!H", th, 16, ps)
    iph, l4off = _ip(version, 6, bytes(th) + payload)
    gso = vnet.GSO_TCPV4 if version == 4 else vnet.GSO_TCPV6
    hdr = vnet.VnetHdr(vnet.F_NEEDS_CSUM, gso, l4off + 32, mss, l4off, 16)
    return hdr, iph + bytes(th) + payload


def udp_super(version: int, payload: bytes, size: int) -> tuple[vnet.VnetHdr, bytes]:
    src, dst = _addrs(version)
    uh = bytearray(struct.pack("!HHHH", 40000, 4789, 8 + len(payload), 0))
    struct.pack_into("!H", uh, 6, pseudo_sum(src, dst, 17, 8 + len(payload)))
    iph, l4off = _ip(version, 17, bytes(uh) + payload)
    hdr = vnet.VnetHdr(vnet.F_NEEDS_CSUM, vnet.GSO_UDP_L4, l4off + 8, size, l4off, 6)
    return hdr, iph + bytes(uh) + payload


def _check_l4(version: int, proto: int, pkt: bytes) -> bytes:
    """Verify IP header fields and the L4 checksum of one segment; return its L4 bytes."""
    src, dst = _addrs(version)
    if version == 4:
        assert struct.unpack_from("!H", pkt, 2)[0] == len(pkt)
        assert verify(pkt[:20]), "IPv4 header checksum"
        l4 = pkt[20:]
    else:
        assert struct.unpack_from("!H", pkt, 4)[0] == len(pkt) - 40
        l4 = pkt[40:]
    assert verify(l4, pseudo_sum(src, dst, proto, len(l4))), "L4 checksum"
    return l4


@pytest.mark.parametrize("version", [4, 6])
def test_tcp_segmentation(version: int) -> None:
    payload = os.urandom(10_000)
    mss = 1448
    hdr, pkt = tcp_super(version, payload, mss)
    segs = vnet.segment(hdr, pkt)
    assert len(segs) == 7  # 6 full + 1 of 1312
    got = b""
    for i, s in enumerate(segs):
        l4 = _check_l4(version, 6, s)
        seq = struct.unpack_from("!I", l4, 4)[0]
        assert seq == (0xFFFFF000 + i * mss) & 0xFFFFFFFF  # advances, wrapping at 2**32
        flags = l4[13]
        last = i == len(segs) - 1
        assert bool(flags & 0x01) == last and bool(flags & 0x08) == last  # FIN, PSH only on the last
        assert bool(flags & 0x80) == (i == 0)  # CWR only on the first
        assert flags & 0x10  # ACK everywhere
        data = l4[32:]
        assert len(data) == (mss if not last else 10_000 - 6 * mss)
        got += data
        if version == 4:
            assert struct.unpack_from("!H", s, 4)[0] == 0x1234 + i
    assert got == payload


@pytest.mark.parametrize("version", [4, 6])
def test_udp_segmentation(version: int) -> None:
    payload = os.urandom(5000)
    hdr, pkt = udp_super(version, payload, 1200)
    segs = vnet.segment(hdr, pkt)
    assert [len(_check_l4(version, 17, s)) - 8 for s in segs] == [1200, 1200, 1200, 1200, 200]
    got = b""
    for s in segs:
        l4 = _check_l4(version, 17, s)
        assert struct.unpack_from("!H", l4, 4)[0] == len(l4)
        got += l4[8:]
    assert got == payload


def test_segment_without_gso_completes_checksum() -> None:
    hdr, pkt = tcp_super(4, b"hello world", 1400)
    single = vnet.VnetHdr(hdr.flags, vnet.GSO_NONE, hdr.hdr_len, 0, hdr.csum_start, hdr.csum_offset)
    (out,) = vnet.segment(single, pkt)
    _check_l4(4, 6, out)


@pytest.mark.parametrize("version,proto", [(4, 6), (6, 6), (4, 17), (6, 17)])
def test_complete_checksum(version: int, proto: int) -> None:
    payload = os.urandom(777)
    hdr, pkt = tcp_super(version, payload, 1400) if proto == 6 else udp_super(version, payload, 1400)
    assert not verify(pkt[hdr.csum_start:], pseudo_sum(*_addrs(version), proto, len(pkt) - hdr.csum_start))
    done = vnet.complete_checksum(hdr, pkt)
    _check_l4(version, proto, done)
    assert done[: hdr.csum_start + hdr.csum_offset] == pkt[: hdr.csum_start + hdr.csum_offset]
    assert vnet.complete_checksum(vnet.VnetHdr(), pkt) == pkt  # nothing to do without NEEDS_CSUM


@given(st.integers(min_value=0, max_value=9000), st.integers(min_value=500, max_value=9000),
       st.sampled_from([4, 6]))
@settings(max_examples=60)
def test_tcp_segmentation_any_size(n: int, mss: int, version: int) -> None:
    payload = os.urandom(n)
    hdr, pkt = tcp_super(version, payload, mss, flags=0x10)
    segs = vnet.segment(hdr, pkt)
    assert len(segs) == max(1, -(-n // mss))
    assert b"".join(_check_l4(version, 6, s)[32:] for s in segs) == payload


def test_segment_rejects_mismatched_gso_type() -> None:
    hdr, pkt = udp_super(4, b"x" * 3000, 1000)
    bad = vnet.VnetHdr(hdr.flags, vnet.GSO_TCPV4, hdr.hdr_len, 1000, hdr.csum_start, hdr.csum_offset)
    with pytest.raises(vnet.VnetError):
        vnet.segment(bad, pkt)


def test_tcp6_segmentation_with_extension_header() -> None:
    payload = os.urandom(4000)
    hdr, pkt = tcp_super(6, payload, 1000)
    hbh = bytes([6, 0, 1, 4, 0, 0, 0, 0])  # hop-by-hop: next TCP, PadN
    ip6 = bytearray(pkt[:40])
    ip6[6] = 0  # next header: hop-by-hop
    struct.pack_into("!H", ip6, 4, len(pkt) - 40 + 8)
    ext = bytes(ip6) + hbh + pkt[40:]
    h = vnet.VnetHdr(hdr.flags, hdr.gso_type, hdr.hdr_len + 8, 1000, 48, 16)
    segs = vnet.segment(h, ext)
    assert len(segs) == 4
    got = b""
    for s in segs:
        assert struct.unpack_from("!H", s, 4)[0] == len(s) - 40
        assert s[40:48] == hbh
        l4 = s[48:]
        assert verify(l4, pseudo_sum(SRC6, DST6, 6, len(l4)))
        got += l4[32:]
    assert got == payload
