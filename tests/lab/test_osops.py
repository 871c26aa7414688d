"""osops in real network namespaces: netlink helpers, AddressMonitor, sysctl and the RS-N NAPT table
(DNAT keyed by source VIP + masquerade + the FTP helper, with vsftpd and curl)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import queue
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ntmobile.osops import netlink, netns, nft, sysctl
from ntmobile.osops.netlink import AddressEvent, AddressMonitor, LinkEvent, MonitorEvent, RouteEvent

pytestmark = pytest.mark.root


# ---- namespace and process bookkeeping (torn down whatever happens) ---------------------------

class Lab:
    def __init__(self) -> None:
        self.prefix = f"ntmos{uuid.uuid4().hex[:6]}"
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.dirs: list[str] = []

    def ns(self, role: str) -> str:
        name = f"{self.prefix}{role}"
        netns.add_netns(name)
        self.namespaces.append(name)
        netns.run_in_netns(name, ["ip", "link", "set", "lo", "up"])
        return name

    def sh(self, ns: str, *argv: str) -> str:
        return netns.run_in_netns(ns, list(argv)).stdout

    def veth(self, ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
        self.sh(ns_a, "ip", "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b)
        self.sh(ns_a, "ip", "link", "set", if_a, "up")
        self.sh(ns_b, "ip", "link", "set", if_b, "up")

    def spawn(self, ns: str, argv: list[str]) -> subprocess.Popen[bytes]:
        p = netns.popen_in_netns(ns, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(p)
        return p

    def tmpdir(self) -> Path:
        d = tempfile.mkdtemp(prefix=self.prefix)
        self.dirs.append(d)
        os.chmod(d, 0o755)
        return Path(d)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()  # by PID
                p.wait(10)
        for name in self.namespaces:
            netns.delete_netns(name)
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def lab() -> Iterator[Lab]:
    lb = Lab()
    try:
        yield lb
    finally:
        lb.close()


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def read_line(p: subprocess.Popen[bytes], timeout: float) -> str:
    assert p.stdout is not None
    r, _, _ = select.select([p.stdout], [], [], timeout)
    if not r:
        raise AssertionError("process printed nothing before the deadline")
    return p.stdout.readline().decode().strip()


# ---- netlink + sysctl --------------------------------------------------------------------------

def test_netlink_helpers_configure_a_namespace(lab: Lab) -> None:
    a, b = lab.ns("a"), lab.ns("b")
    lab.veth(a, "ntmva", b, "ntmvb")

    def configure() -> tuple[str | None, str | None, tuple[str | None, str] | None, list[tuple[str, str]]]:
        netlink.link_up("ntmva", mtu=1300)
        netlink.add_address("ntmva", "10.31.0.1/24")
        netlink.add_address("ntmva", "10.31.0.1/24")  # idempotent
        netlink.add_address("ntmva", "fd31::1/64")
        netlink.add_route("default", gateway="10.31.0.254")
        netlink.add_route("10.40.0.0/16", dev="ntmva", src="10.31.0.1")
        # The connected-UDP-socket lookup the node's handover watch uses agrees with `route get`.
        assert netlink.source_toward("10.40.3.3") == netlink.route_source_for("10.40.3.3")
        assert netlink.source_toward("fd31::9") == netlink.route_source_for("fd31::9")
        assert sorted(netlink.addresses_now()) == sorted(netlink.addresses())
        return (netlink.route_source_for("10.40.3.3"), netlink.route_source_for("fd31::9"),
                netlink.default_route(), netlink.addresses("ntmva"))

    src4, src6, default, addrs = netns.call_in_netns(a, configure)
    assert src4 == "10.31.0.1" and src6 == "fd31::1"
    assert default == ("10.31.0.254", "ntmva")
    assert ("ntmva", "10.31.0.1/24") in addrs and ("ntmva", "fd31::1/64") in addrs
    assert "mtu 1300" in lab.sh(a, "ip", "link", "show", "ntmva")
    # nothing of this leaked into the other namespace
    assert netns.call_in_netns(b, netlink.default_route) is None
    assert netns.call_in_netns(b, netlink.route_source_for, "10.40.3.3") is None
    assert netns.call_in_netns(b, netlink.source_toward, "10.40.3.3") is None

    async def from_a_coroutine() -> str | None:
        # the plain function inside a running loop (finished on a helper thread in this namespace)
        netlink.add_address("ntmva", "10.31.0.2/24")
        await netlink.async_add_route("10.41.0.0/16", dev="ntmva", src="10.31.0.2")
        return await netlink.async_route_source_for("10.41.0.1")

    assert netns.call_in_netns(a, asyncio.run, from_a_coroutine()) == "10.31.0.2"
    assert "10.31.0.2/24" in lab.sh(a, "ip", "-4", "addr", "show", "ntmva")

    def remove() -> tuple[str, str] | None | tuple[str | None, str]:
        netlink.delete_route("default", gateway="10.31.0.254")
        netlink.delete_route("default", gateway="10.31.0.254")  # missing_ok
        netlink.delete_address("ntmva", "10.31.0.1/24")
        return netlink.default_route()

    assert netns.call_in_netns(a, remove) is None
    with pytest.raises(netlink.NetlinkOpError, match="no such interface"):
        netns.call_in_netns(a, netlink.link_up, "ntmnope")


def test_sysctl_reads_and_writes_per_namespace(lab: Lab) -> None:
    a = lab.ns("s")
    netns.call_in_netns(a, sysctl.write_sysctl, "net.ipv4.ip_forward", 1)
    assert netns.call_in_netns(a, sysctl.read_sysctl, "net/ipv4/ip_forward") == "1"
    assert lab.sh(a, "cat", "/proc/sys/net/ipv4/ip_forward").strip() == "1"
    with pytest.raises(sysctl.SysctlError, match="net.ipv4.no_such_key"):
        sysctl.read_sysctl("net.ipv4.no_such_key")


def test_address_monitor_reports_changes(lab: Lab) -> None:
    ns = lab.ns("m")
    lab.sh(ns, "ip", "link", "add", "ntmm0", "type", "veth", "peer", "name", "ntmm1")
    ready = threading.Event()
    events: queue.Queue[MonitorEvent] = queue.Queue()

    async def watch() -> None:
        async with AddressMonitor() as mon:
            ready.set()
            async with asyncio.timeout(20):
                async for ev in mon:
                    events.put(ev)
                    if isinstance(ev, AddressEvent) and ev.kind == "removed" and ev.address == "fd33::7":
                        return

    t = netns.spawn_in_netns(ns, asyncio.run, watch())
    assert ready.wait(10)

    def change() -> None:
        netlink.link_up("ntmm0")
        netlink.add_address("ntmm0", "10.33.0.7/24")
        netlink.add_address("ntmm0", "fd33::7/64")
        netlink.add_route("10.34.0.0/16", gateway="10.33.0.1")
        netlink.delete_address("ntmm0", "10.33.0.7/24")
        netlink.delete_address("ntmm0", "fd33::7/64")

    netns.call_in_netns(ns, change)
    t.result(timeout=25)
    seen: list[MonitorEvent] = []
    while not events.empty():
        seen.append(events.get())
    addr = [(e.kind, e.ifname, e.address, e.prefixlen) for e in seen if isinstance(e, AddressEvent)]
    assert ("added", "ntmm0", "10.33.0.7", 24) in addr
    assert ("added", "ntmm0", "fd33::7", 64) in addr
    assert ("removed", "ntmm0", "10.33.0.7", 24) in addr
    assert ("removed", "ntmm0", "fd33::7", 64) in addr
    routes = [(e.kind, e.dst, e.gateway, e.ifname) for e in seen if isinstance(e, RouteEvent)]
    assert ("added", "10.34.0.0/16", "10.33.0.1", "ntmm0") in routes
    links = [(e.kind, e.ifname, e.up) for e in seen if isinstance(e, LinkEvent)]
    assert ("changed", "ntmm0", True) in links


# ---- nft basics ------------------------------------------------------------------------------------

def test_nft_errors_are_one_line_and_apply_is_atomic(lab: Lab) -> None:
    ns = lab.ns("n")
    bad = "table inet ntm_t {\n chain c { type filter hook input priority 0; policy accept; }\n}\n" \
          "add rule inet ntm_t c tcp dport 22 bogus\n"
    with pytest.raises(nft.NftError) as ei:
        netns.call_in_netns(ns, nft.apply_ruleset, bad)
    assert "\n" not in str(ei.value) and "bogus" in str(ei.value)
    # the valid first half was not committed either
    assert not netns.call_in_netns(ns, nft.table_exists, "inet", "ntm_t")
    netns.call_in_netns(ns, nft.apply_json, [{"add": {"table": {"family": "inet", "name": "ntm_j"}}}])
    assert netns.call_in_netns(ns, nft.table_exists, "inet", "ntm_j")
    netns.call_in_netns(ns, nft.delete_table, "inet", "ntm_j")
    netns.call_in_netns(ns, nft.delete_table, "inet", "ntm_j")  # missing_ok
    assert not netns.call_in_netns(ns, nft.table_exists, "inet", "ntm_j")


def test_rs_fast_table_adds_replaces_removes_and_counts(lab: Lab) -> None:
    """The RS-S fast-path table (nft.RsFastTable): paths of either family go in and out one
    transaction each, a re-added Path ID replaces its old legs, and counters read back per path."""
    ns = lab.ns("n")
    t = nft.RsFastTable("ntm_rs_fast", 7411, "192.0.2.20", "2001:db8:1::20")
    a = nft.FastPath(b"\x01" * 8, ("192.0.2.100", 7412), ("192.0.2.101", 7412))
    b = nft.FastPath(b"\x02" * 8, ("2001:db8::100", 7412), ("2001:db8::101", 7999))
    moved = nft.FastPath(b"\x01" * 8, ("192.0.2.100", 7413), ("192.0.2.101", 7412))

    def legs() -> str:
        return netns.run_in_netns(ns, ["nft", "list", "map", "inet", "ntm_rs_fast", "legs4"]).stdout

    netns.call_in_netns(ns, t.apply)
    netns.call_in_netns(ns, t.add, a)
    netns.call_in_netns(ns, t.add, b)
    netns.call_in_netns(ns, t.add, moved)
    assert "7413" in legs() and "192.0.2.100 . 7412" not in legs()
    counts, posted = netns.call_in_netns(ns, t.counters)
    assert counts == {a.path_id: (0, 0, 0, 0), b.path_id: (0, 0, 0, 0)} and posted == 0
    with pytest.raises(ValueError):
        t.add(nft.FastPath(b"\x03" * 8, ("192.0.2.100", 1), ("2001:db8::1", 2)))  # two families
    assert netns.call_in_netns(ns, t.remove, a.path_id) and not netns.call_in_netns(ns, t.remove, a.path_id)
    assert "192.0.2" not in legs()
    netns.call_in_netns(ns, t.apply)  # a restart rebuilds the same table from memory
    assert [p.path_id for p in t.paths] == [b.path_id]
    assert b.path_id.hex() in netns.run_in_netns(ns, ["nft", "list", "table", "inet", "ntm_rs_fast"]).stdout
    netns.call_in_netns(ns, t.delete)
    assert not netns.call_in_netns(ns, nft.table_exists, "inet", "ntm_rs_fast") and t.paths == []


# ---- RS-N NAPT -------------------------------------------------------------------------------------

ECHO_SERVER = r"""
import socket, sys, threading
def serve(fam, addr):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr, 7007)); s.listen(16)
    return s
def loop(s):
    while True:
        c, peer = s.accept()
        c.sendall(f"{peer[0]} {c.getsockname()[0]}\n".encode()); c.close()
ss = [serve(socket.AF_INET, "0.0.0.0"), serve(socket.AF_INET6, "::")]
for s in ss:
    threading.Thread(target=loop, args=(s,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""


def ask(dst: str, src: str | None = None, timeout: float = 3.0) -> str:
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        if src:
            s.bind((src, 0))
        s.connect((dst, 7007))
        return s.recv(200).decode().strip()


class RsnLab:
    """node --veth standing in for the RS TUN (ntmrst)--> RS --ntmrsg/ntmgr--> GN."""

    def __init__(self, lab: Lab, helpers: tuple[str, ...] = ("ftp", "tftp")) -> None:
        self.lab = lab
        self.node, self.rs, self.gn = lab.ns("node"), lab.ns("rs"), lab.ns("gn")
        lab.veth(self.node, "ntmnr", self.rs, "ntmrst")
        lab.veth(self.rs, "ntmrsg", self.gn, "ntmgr")

        def node_cfg() -> None:
            netlink.add_address("ntmnr", "10.200.0.1/16")
            netlink.add_address("ntmnr", "10.200.0.2/16")
            netlink.add_address("ntmnr", "fd00:200::1/64")
            # only the GN VIP ranges go to the RS, as a node's TUN routes only VIPs
            netlink.add_route("10.201.0.0/16", gateway="10.200.255.254")
            netlink.add_route("fd00:201::/64", gateway="fd00:200::ffff")

        def rs_cfg() -> None:
            netlink.add_address("ntmrst", "10.200.255.254/16")
            netlink.add_address("ntmrst", "fd00:200::ffff/64")
            netlink.add_address("ntmrsg", "198.18.0.1/24")
            netlink.add_address("ntmrsg", "2001:db8:18::1/64")
            sysctl.enable_forwarding()

        def gn_cfg() -> None:
            netlink.add_address("ntmgr", "198.18.0.2/24")
            netlink.add_address("ntmgr", "198.18.0.3/24")
            netlink.add_address("ntmgr", "2001:db8:18::2/64")

        netns.call_in_netns(self.node, node_cfg)
        netns.call_in_netns(self.rs, rs_cfg)
        netns.call_in_netns(self.gn, gn_cfg)
        self.table = nft.RsNatTable("ntm_rs", "ntmrst", ["10.200.0.0/16"], ["fd00:200::/64"],
                                    helpers=helpers)
        self.table.add_mapping("10.200.0.1", "10.201.0.5", "198.18.0.2", live=False)
        self.table.add_mapping("fd00:200::1", "fd00:201::5", "2001:db8:18::2", live=False)
        netns.call_in_netns(self.rs, self.table.apply)

    def in_rs(self, fn: Callable[..., object], *args: object) -> object:
        return netns.call_in_netns(self.rs, fn, *args)

    def ask(self, dst: str, src: str | None = None) -> str:
        return netns.call_in_netns(self.node, ask, dst, src)


def test_rs_nat_table_validates_its_input() -> None:
    t = nft.RsNatTable("ntm_rs", "ntmrs0", ["10.200.0.0/16"], ["fd00:200::/64"])
    with pytest.raises(ValueError, match="mixes"):
        t.add_mapping("10.200.0.1", "fd00:201::5", "198.18.0.2", live=False)
    with pytest.raises(ValueError):
        nft.RsNatTable("bad name;", "ntmrs0")
    with pytest.raises(ValueError):
        nft.RsNatTable("ntm_rs", 'x"; flush ruleset; "')
    t.add_mapping("10.200.0.1", "10.201.0.5", "198.18.0.2", live=False)
    t.add_mapping("10.200.0.1", "10.201.0.5", "198.18.0.9", live=False)  # same key: replaced
    assert [str(m.gn_real) for m in t.mappings] == ["198.18.0.9"]
    assert "10.200.0.1 . 10.201.0.5 : 198.18.0.9" in t.render()
    assert t.remove_mapping("10.200.0.1", "10.201.0.5", live=False)
    assert not t.remove_mapping("10.200.0.1", "10.201.0.5", live=False)


def test_rs_nat_table_dnat_by_source_vip_and_masquerade(lab: Lab) -> None:
    r = RsnLab(lab)
    srv = lab.spawn(r.gn, [sys.executable, "-c", ECHO_SERVER])
    assert read_line(srv, 15) == "ready"

    # IPv4 and IPv6: the GN is reached at its real address and sees the RS's address
    assert r.ask("10.201.0.5", "10.200.0.1") == "198.18.0.1 198.18.0.2"
    assert r.ask("fd00:201::5") == "2001:db8:18::1 2001:db8:18::2"

    # the same GN VIP stands for another GN for another node: the key includes the source VIP
    with pytest.raises(OSError):
        r.ask("10.201.0.5", "10.200.0.2")  # no mapping yet for this node
    r.in_rs(r.table.add_mapping, "10.200.0.2", "10.201.0.5", "198.18.0.3")
    assert r.ask("10.201.0.5", "10.200.0.2") == "198.18.0.1 198.18.0.3"
    assert r.ask("10.201.0.5", "10.200.0.1") == "198.18.0.1 198.18.0.2"

    # replacing and removing mappings takes effect for new connections
    r.in_rs(r.table.add_mapping, "10.200.0.1", "10.201.0.5", "198.18.0.3")
    assert r.ask("10.201.0.5", "10.200.0.1") == "198.18.0.1 198.18.0.3"
    assert r.in_rs(r.table.remove_mapping, "10.200.0.1", "10.201.0.5") is True
    with pytest.raises(OSError):
        r.ask("10.201.0.5", "10.200.0.1")

    counters = r.in_rs(r.table.counters)
    assert isinstance(counters, dict)
    assert counters["masquerade4"] >= 4 and counters["masquerade6"] >= 1
    assert counters["fwd_in4"] > 0 and counters["fwd_back"] > 0

    # the GN side cannot open connections to VIPs through the RS
    lab.sh(r.gn, "ip", "route", "add", "10.200.0.0/16", "via", "198.18.0.1")
    with pytest.raises(OSError):
        netns.call_in_netns(r.gn, lambda: socket.create_connection(("10.200.0.1", 22), timeout=1.0))
    assert r.in_rs(r.table.counters)["fwd_drop4"] >= 1  # type: ignore[index]

    r.in_rs(r.table.delete)
    assert not r.in_rs(nft.table_exists, "inet", "ntm_rs")



def test_rs_nat_table_guard_drops_translated_traffic_to_the_relay_and_refused_ranges(lab: Lab) -> None:
    """Issue 14 §3: whatever mapping exists, the kernel never delivers translated traffic to the relay
    itself (fib daddr type local) or into a refused range; allow-listed and global targets work."""
    from ntmobile.core.targets import TargetPolicy

    r = RsnLab(lab)
    policy = TargetPolicy(allow=["198.18.0.0/15", "2001:db8::/32"], refuse=["10.200.0.0/16", "fd00:200::/64"])
    r.table = nft.RsNatTable("ntm_rs", "ntmrst", ["10.200.0.0/16"], ["fd00:200::/64"],
                             refuse=[str(n) for v in (4, 6) for n in policy.refused_networks(v)])
    for gn_vip, target in (("10.201.0.5", "198.18.0.2"),  # the GN (allow-listed here): reachable
                           ("10.201.0.6", "198.18.0.1"),  # the relay's own address
                           ("10.201.0.7", "127.0.0.1"),  # the relay's loopback
                           ("10.201.0.8", "10.202.0.2")):  # a refused range, routed to the GN host
        r.table.add_mapping("10.200.0.1", gn_vip, target, live=False)
    r.table.add_mapping("fd00:200::1", "fd00:201::5", "2001:db8:18::2", live=False)
    r.table.add_mapping("fd00:200::1", "fd00:201::6", "2001:db8:18::1", live=False)  # the relay's own
    r.in_rs(r.table.apply)
    lab.sh(r.gn, "ip", "addr", "add", "10.202.0.2/32", "dev", "lo")
    lab.sh(r.rs, "ip", "route", "add", "10.202.0.2/32", "via", "198.18.0.2")
    for ns in (r.gn, r.rs):  # echo servers on the GN and on the relay itself (all its addresses)
        srv = lab.spawn(ns, [sys.executable, "-c", ECHO_SERVER])
        assert read_line(srv, 15) == "ready"
    assert r.ask("10.201.0.5", "10.200.0.1") == "198.18.0.1 198.18.0.2"
    assert r.ask("fd00:201::5") == "2001:db8:18::1 2001:db8:18::2"
    for refused in ("10.201.0.6", "10.201.0.7", "10.201.0.8", "fd00:201::6"):
        with pytest.raises(OSError):
            netns.call_in_netns(r.node, ask, refused, None if ":" in refused else "10.200.0.1", 1.5)
    c = r.in_rs(r.table.counters)
    assert isinstance(c, dict)
    assert c["guard_local"] >= 3 and c["guard_refused4"] >= 1, c  # (SYN retransmissions count too)
    # Without the guard (today's main) the relay's own echo server would have answered:
    lab.sh(r.rs, "nft", "flush", "chain", "inet", "ntm_rs", "guard")
    assert r.ask("10.201.0.6", "10.200.0.1") == "10.200.0.1 198.18.0.1"


VSFTPD_CONF = """listen=YES
listen_ipv6=NO
background=NO
anonymous_enable=YES
local_enable=NO
write_enable=NO
no_anon_password=YES
anon_root={root}
secure_chroot_dir={empty}
pasv_enable=YES
port_enable=YES
connect_from_port_20=YES
pasv_min_port=40000
pasv_max_port=40100
seccomp_sandbox=NO
xferlog_enable=NO
vsftpd_log_file={log}
dual_log_enable=NO
syslog_enable=NO
"""


@pytest.fixture
def ftp_rsn(lab: Lab) -> tuple[RsnLab, bytes]:
    r = RsnLab(lab)
    base = lab.tmpdir()
    root, empty = base / "root", base / "empty"
    root.mkdir(mode=0o755)
    empty.mkdir(mode=0o755)
    data = os.urandom(300_000)
    (root / "blob.bin").write_bytes(data)
    os.chmod(root / "blob.bin", 0o644)
    conf = base / "vsftpd.conf"
    conf.write_text(VSFTPD_CONF.format(root=root, empty=empty, log=base / "vsftpd.log"))
    lab.spawn(r.gn, ["vsftpd", str(conf)])

    def listening() -> bool:
        try:
            netns.call_in_netns(r.gn, lambda: socket.create_connection(("198.18.0.2", 21), 1).close())
            return True
        except OSError:
            return False

    wait_for(listening, 15, "vsftpd to listen")
    return r, data


def curl_get(r: RsnLab, mode: list[str], out: Path) -> subprocess.CompletedProcess[str]:
    return netns.run_in_netns(r.node, ["curl", "-sS", "--max-time", "20", "--disable-epsv",
                                       "--disable-eprt", *mode, "ftp://10.201.0.5/blob.bin",
                                       "-o", str(out)], check=False, timeout=40)


@pytest.mark.parametrize("mode", [["--ftp-pasv", "--no-ftp-skip-pasv-ip"], ["--ftp-port", "-"]],
                         ids=["passive", "active"])
def test_ftp_through_rs_nat(ftp_rsn: tuple[RsnLab, bytes], lab: Lab, mode: list[str]) -> None:
    r, data = ftp_rsn
    out = lab.tmpdir() / "got.bin"
    res = curl_get(r, mode, out)
    assert res.returncode == 0, res.stderr
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_active_ftp_needs_the_helper(ftp_rsn: tuple[RsnLab, bytes], lab: Lab) -> None:
    r, _ = ftp_rsn
    nohelper = nft.RsNatTable("ntm_rs", "ntmrst", ["10.200.0.0/16"], ["fd00:200::/64"], helpers=())
    for m in r.table.mappings:
        nohelper.add_mapping(str(m.node_vip), str(m.gn_vip), str(m.gn_real), live=False)
    r.in_rs(nohelper.apply)
    res = curl_get(r, ["--ftp-port", "-"], lab.tmpdir() / "got.bin")
    # PORT carries the untranslated VIP, vsftpd answers "500 Illegal PORT command": curl exit 30
    assert res.returncode == 30, res.stderr
