"""Data-plane primitives against the real kernel, in namespaces made here: TUN offloads and
super-packets (TCP TSO and UDP USO) relayed between two TUNs, userspace segmentation checked by the
receiving kernel, UDP GSO/GRO across a veth, and the GSO EIO fallback signal."""

from __future__ import annotations

import errno
import hashlib
import os
import select
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from ntmobile.dataplane import udp, vnet
from ntmobile.dataplane.tun import MAX_PACKET, Tun, open_tun
from ntmobile.osops import netlink, netns

pytestmark = pytest.mark.root


class Lab:
    def __init__(self) -> None:
        self.prefix = f"ntmdp{uuid.uuid4().hex[:6]}"
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.closers: list[Tun | socket.socket] = []

    def ns(self, role: str) -> str:
        name = f"{self.prefix}{role}"
        netns.add_netns(name)
        self.namespaces.append(name)
        netns.run_in_netns(name, ["ip", "link", "set", "lo", "up"])
        return name

    def spawn(self, ns: str, argv: list[str]) -> subprocess.Popen[bytes]:
        p = netns.popen_in_netns(ns, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(p)
        return p

    def keep(self, obj: Tun | socket.socket) -> None:
        self.closers.append(obj)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        for c in self.closers:  # TUN fds and sockets hold their namespace: close them first
            c.close()
        for name in self.namespaces:
            netns.delete_netns(name)


@pytest.fixture
def lab() -> Iterator[Lab]:
    lb = Lab()
    try:
        yield lb
    finally:
        lb.close()


def make_tun(lab: Lab, ns: str, name: str, *, vnet_hdr: bool, offloads: bool, cidrs: list[str],
             routes: list[str], up: bool = True) -> Tun:
    def mk() -> Tun:
        t = open_tun(name, vnet_hdr=vnet_hdr, offloads=offloads)
        if up:
            netlink.link_up(name, mtu=1400)
            for c in cidrs:
                netlink.add_address(name, c)
            for r in routes:
                netlink.add_route(r, dev=name)
        return t

    t = netns.call_in_netns(ns, mk)
    lab.keep(t)
    return t


def test_tun_probes_offloads_and_drops_writes_while_down(lab: Lab) -> None:
    ns = lab.ns("p")
    t = make_tun(lab, ns, "ntmtp0", vnet_hdr=True, offloads=True, cidrs=[], routes=[], up=False)
    assert {"csum", "tso4", "tso6"} <= t.features
    assert {"uso4", "uso6"} <= t.features  # kernel 6.18 accepts USO (>= 6.2)
    packet = bytes.fromhex("4500001c0000400040110000") + bytes(16)
    assert t.write_ip(packet) == 0 and t.dropped_link_down == 1  # EIO while down: tolerated
    buf = bytearray(MAX_PACKET)
    assert t.read_into(buf) == 0  # non-blocking, nothing queued
    t2 = make_tun(lab, ns, "ntmtp1", vnet_hdr=True, offloads=True, cidrs=[], routes=[], up=False)
    assert t2.features  # another device: its own probe
    with pytest.raises(ValueError):
        open_tun("ntmtpx", vnet_hdr=False, offloads=True)


@dataclass
class RelayStats:
    reads: list[tuple[int, int, int]] = field(default_factory=list)  # (gso type, ip length, gso_size)
    errors: list[BaseException] = field(default_factory=list)


def relay(a: Tun, b: Tun, stop: threading.Event, stats: RelayStats) -> None:
    """Wire two TUNs together. a has vnet_hdr; b either has it too (super-packets are passed
    verbatim) or not (super-packets are cut with vnet.segment; b's kernel verifies checksums)."""
    buf = bytearray(MAX_PACKET)
    mv = memoryview(buf)
    try:
        while not stop.is_set():
            r, _, _ = select.select([a, b], [], [], 0.05)
            if a in r:
                while (n := a.read_into(buf)) > 0:
                    hdr = vnet.parse_hdr(buf)
                    stats.reads.append((hdr.gso, n - vnet.VNET_HDR_LEN, hdr.gso_size))
                    if b.vnet_hdr:
                        b.write(mv[:n])
                    else:
                        for seg in vnet.segment(hdr, mv[vnet.VNET_HDR_LEN:n]):
                            b.write(seg)
            if b in r:
                while (n := b.read_into(buf)) > 0:
                    if b.vnet_hdr:
                        a.write(mv[:n])
                    else:
                        a.write_ip(mv[:n])
    except BaseException as e:  # reported by the test
        stats.errors.append(e)


SINK = r"""
import hashlib, socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.bind((sys.argv[1], 5201)); s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
h = hashlib.sha256(); n = 0
while True:
    d = c.recv(1 << 20)
    if not d:
        break
    h.update(d); n += len(d)
print(n, h.hexdigest(), flush=True)
"""


def read_line(p: subprocess.Popen[bytes], timeout: float) -> str:
    assert p.stdout is not None
    r, _, _ = select.select([p.stdout], [], [], timeout)
    assert r, "process printed nothing before the deadline"
    return p.stdout.readline().decode().strip()


@pytest.fixture(params=["segment", "verbatim"])
def tun_pair(request: pytest.FixtureRequest, lab: Lab) -> Iterator[tuple[str, str, RelayStats, Lab]]:
    """Namespaces A and B joined by two TUNs and a userspace relay."""
    a, b = lab.ns("a"), lab.ns("b")
    ta = make_tun(lab, a, "ntmta", vnet_hdr=True, offloads=True, cidrs=["10.81.0.1/24", "fd81::1/64"],
                  routes=["10.82.0.0/24", "fd82::/64"])
    verbatim = request.param == "verbatim"
    tb = make_tun(lab, b, "ntmtb", vnet_hdr=verbatim, offloads=verbatim,
                  cidrs=["10.82.0.1/24", "fd82::1/64"], routes=["10.81.0.0/24", "fd81::/64"])
    stop = threading.Event()
    stats = RelayStats()
    t = threading.Thread(target=relay, args=(ta, tb, stop, stats), daemon=True)
    t.start()
    try:
        yield a, b, stats, lab
    finally:
        stop.set()
        t.join(10)


@pytest.mark.parametrize("dst", ["10.82.0.1", "fd82::1"])
def test_tcp_stream_through_tun_pair_uses_super_packets(tun_pair: tuple[str, str, RelayStats, Lab],
                                                        dst: str) -> None:
    a, b, stats, lab = tun_pair
    sink = lab.spawn(b, [sys.executable, "-c", SINK, dst])
    assert read_line(sink, 15) == "ready"
    data = os.urandom(6 << 20)

    def send() -> None:
        with socket.create_connection((dst, 5201), timeout=30) as s:
            s.sendall(data)

    netns.call_in_netns(a, send, timeout=120)
    n, digest = read_line(sink, 60).split()
    assert not stats.errors, stats.errors
    assert int(n) == len(data) and digest == hashlib.sha256(data).hexdigest()
    want = vnet.GSO_TCPV4 if "." in dst else vnet.GSO_TCPV6
    supers = [(ln, sz) for g, ln, sz in stats.reads if g == want]
    assert supers, "no TSO super-packet was read from the TUN"
    assert max(ln for ln, _ in supers) > 1400  # larger than the MTU: one read, many segments
    assert all(0 < sz < 1400 for _, sz in supers)


def test_udp_gso_send_into_tun_gives_uso_super_packets(tun_pair: tuple[str, str, RelayStats, Lab]) -> None:
    a, b, stats, lab = tun_pair

    def bind() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("10.82.0.1", 9000))
        return s

    rx = netns.call_in_netns(b, bind)
    lab.keep(rx)
    rx.settimeout(10)
    tx = netns.call_in_netns(a, socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
    lab.keep(tx)
    data = os.urandom(11 * 1200 + 345)
    assert udp.send_gso(tx, data, 1200, ("10.82.0.1", 9000)) == len(data)
    got = [rx.recv(2000) for _ in range(12)]
    assert [len(d) for d in got] == [1200] * 11 + [345]
    assert b"".join(got) == data
    assert (vnet.GSO_UDP_L4, 20 + 8 + len(data), 1200) in stats.reads


def test_gso_send_eio_is_reported_for_fallback(lab: Lab) -> None:
    """The kernel answers EIO to a GSO send it cannot checksum-offload. Since Linux 6.11 a device
    without checksum offload gets a software checksum instead, so on this kernel the EIO path is
    reached with UDP-Lite (partial checksum coverage excludes offload), on the namespace's loopback."""
    ns = lab.ns("e")

    def mk() -> tuple[socket.socket, socket.socket]:
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDPLITE)
        rx.bind(("127.0.0.1", 9100))
        return rx, socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDPLITE)

    rx, tx = netns.call_in_netns(ns, mk)
    lab.keep(rx)
    lab.keep(tx)
    data = os.urandom(4000)
    with pytest.raises(udp.GsoUnsupported) as ei:
        udp.send_gso(tx, data, 1000, ("127.0.0.1", 9100))
    assert ei.value.errno == errno.EIO
    assert udp.send_segments(tx, data, 1000, ("127.0.0.1", 9100)) == 4000  # the fallback
    rx.settimeout(10)
    assert b"".join(rx.recv(2000) for _ in range(4)) == data


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_udp_gso_send_and_gro_receive_across_veth(lab: Lab, family: int) -> None:
    x, y = lab.ns("x"), lab.ns("y")
    netns.run_in_netns(x, ["ip", "link", "add", "ntmvx", "type", "veth", "peer", "name", "ntmvy",
                           "netns", y])

    def cfg(ifname: str, a4: str, a6: str) -> None:
        netlink.link_up(ifname)
        netlink.add_address(ifname, a4)
        netlink.add_address(ifname, a6)

    netns.call_in_netns(x, cfg, "ntmvx", "10.90.0.1/24", "fd90::1/64")
    netns.call_in_netns(y, cfg, "ntmvy", "10.90.0.2/24", "fd90::2/64")
    dst = ("10.90.0.2", 7000) if family == socket.AF_INET else ("fd90::2", 7000)

    def rx_sock() -> tuple[socket.socket, bool, tuple[int, int]]:
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.bind(dst)
        return s, udp.enable_gro(s), udp.set_buffers(s, 4 << 20)

    rx, gro_on, bufs = netns.call_in_netns(y, rx_sock)
    lab.keep(rx)
    assert gro_on
    assert bufs[1] >= 4 << 20  # FORCE variant passes the rmem_max cap as root
    tx = netns.call_in_netns(x, socket.socket, family, socket.SOCK_DGRAM)
    lab.keep(tx)
    seg = 1300
    data = os.urandom(40 * seg + 500)
    assert udp.send_gso(tx, data, seg, dst) == len(data)
    with pytest.raises(ValueError):
        udp.send_gso(tx, bytes(70_000), seg, dst)

    buf = bytearray(udp.RECV_BUF_SIZE)
    rx.settimeout(10)
    got = bytearray()
    sizes: list[tuple[int, int | None]] = []
    deadline = time.monotonic() + 10
    while len(got) < len(data) and time.monotonic() < deadline:
        n, addr, gso_size = udp.recv_gro(rx, buf)
        sizes.append((n, gso_size))
        for d in udp.split(buf, n, gso_size):
            assert len(d) == seg or len(d) == 500
            got += d
    assert bytes(got) == data
    assert any(n > seg and s == seg for n, s in sizes), sizes  # coalesced, segment size reported

    # per-datagram sends arrive as single datagrams: no segment size
    udp.send_segments(tx, data[:3 * seg], seg, dst)
    n, _, s = udp.recv_gro(rx, buf)
    assert n == seg or s == seg
    assert bytes(buf[:seg]) == data[:seg]
