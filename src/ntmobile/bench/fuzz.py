"""Hostile input: a seeded generator of random and mutated datagrams, and `ntm bench fuzz`.

The corpus is made of *real* datagrams: the node, DC and RS cores run a registration and an RS-N
path set-up in memory and every datagram they exchange is captured. The generator then mutates
them (truncate, extend to oversize, flip bits, keep the header and garble the body, reseal under a
wrong key, invent Path IDs and senders, replay verbatim) or sends pure random bytes. DNS targets get
random bytes, mutated queries and valid-but-odd queries (odd types and classes, several questions,
long names, compression loops, EDNS oddities).

`fuzz_core` feeds a sans-IO core in memory and checks that every datagram is accounted for (a
counter moved, or the core sent or emitted something). `run_bench` starts a real DC daemon on
loopback with a temporary database and high ports and sends to its signalling port and its DNS
port over UDP and TCP; it reports rates, RSS before/after and the daemon's counters against what
was sent (datagrams the kernel dropped before the daemon read them are read from /proc/net/udp).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ntmobile.core.dc import DcConfig, DcCore, ResolveRequest
from ntmobile.core.discovery import DiscoveryResult, Outcome
from ntmobile.core.node import NodeConfig, NodeCore
from ntmobile.core.registry import ClientRecord, MemoryStore, Pools
from ntmobile.core.rs import DcLink, ProbeRequest, RsConfig, RsCore
from ntmobile.core.targets import DOCUMENTATION_NETS as LAB_NETS
from ntmobile.crypto import CapsuleSealer
from ntmobile.dataplane.memory import MemoryNode
from ntmobile.runtime.config import NodeSettings
from ntmobile.wire import CapsuleFlags, MessageType, Role

#: The node's DNS stub (its default address).
STUB_ADDR: str = NodeSettings.model_fields["dns_listen"].default

if TYPE_CHECKING:
    from ntmobile.lab import Lab

Endpoint = tuple[str, int]

DC_EP: Endpoint = ("127.0.0.1", 7410)
RS_EP: Endpoint = ("127.0.0.2", 7411)
NODE_EP: Endpoint = ("127.0.0.3", 7412)
POOLS = Pools("100.64.1.0/24", "fd00:6e74:1::/64", "100.127.0.0/16", "fd00:6e74:ff::/64")
SIGNAL_HEADER = 24
CAPSULE_HEADER = 20


@dataclass
class Identities:
    """The DC ID and the enrolled clients the corpus uses (shared with a real DC's database so
    that mutated datagrams get past the unknown-client check and reach authentication)."""

    dc_id: bytes = bytes.fromhex("dc00000000000f22")
    node: ClientRecord = field(default_factory=lambda: ClientRecord(b"\xf1" * 8, "fz.fuzz.example", Role.NODE,
                                                                    b"\x17" * 32))
    relay: ClientRecord = field(default_factory=lambda: ClientRecord(b"\xf2" * 8, "fzrs", Role.RELAY, b"\x27" * 32))


def _rng_bytes(rng: random.Random) -> Callable[[int], bytes]:
    return rng.randbytes


def capture_corpus(ids: Identities | None = None, seed: int = 1) -> dict[str, list[bytes]]:
    """Every datagram of `corpus_world`, keyed by the receiving role ("dc", "rs", "node")."""
    return corpus_world(ids, seed)[0]


def corpus_world(ids: Identities | None = None, seed: int = 1
                 ) -> tuple[dict[str, list[bytes]], DcCore, RsCore, FuzzNode]:
    """Run registration (node and relay) and one RS-N path set-up with data both ways between real
    cores in memory; return every datagram sent, keyed by the receiving role, and the three cores
    (registered, with the path set up)."""
    ids = ids or Identities()
    rng = random.Random(seed)
    store = MemoryStore(POOLS)
    store.add_client(ClientRecord(ids.node.client_id, ids.node.name, Role.NODE, ids.node.psk))
    store.add_client(ClientRecord(ids.relay.client_id, ids.relay.name, Role.RELAY, ids.relay.psk))
    now = 1000.0
    dc = DcCore(DcConfig("fuzz.example", ids.dc_id, rsn_allow=LAB_NETS), store, now, seq_base=10**15,
                random_bytes=_rng_bytes(rng))
    rs = RsCore(RsConfig(ids.relay.name, ids.relay.client_id, [DcLink(ids.dc_id, DC_EP, ids.relay.psk)],
                         local_endpoints=[RS_EP], rsn_allow=LAB_NETS), now, seq_base=10**15,
                random_bytes=_rng_bytes(rng))
    node = FuzzNode(NodeCore(NodeConfig(ids.node.name, ids.node.client_id, ids.node.psk, ids.dc_id, DC_EP), now,
                             seq_base=10**15, random_bytes=_rng_bytes(rng)))
    cores: dict[Endpoint, tuple[str, Any]] = {DC_EP: ("dc", dc), RS_EP: ("rs", rs), NODE_EP: ("node", node)}
    out: dict[str, list[bytes]] = {"dc": [], "rs": [], "node": []}

    def pump() -> None:
        for _ in range(50):
            moved = False
            for src, (_name, core) in cores.items():
                for dg in core.datagrams_to_send():
                    dest = cores.get(tuple(dg.addr))
                    if dest is None:
                        continue
                    moved = True
                    out[dest[0]].append(bytes(dg.data))
                    dest[1].receive_datagram(dg.data, src, now)
            for ev in _drain(rs):
                if isinstance(ev, ProbeRequest):
                    rs.probe_result(ev.token, 1, 250, now)
                    moved = True
            for ev in _drain(dc):
                if isinstance(ev, ResolveRequest):
                    gn = DiscoveryResult(ev.fqdn, Outcome.GENERAL_NODE, a=("192.0.2.40",))
                    dc.resolution_result(ev.token, gn, now)
                    moved = True
            _drain(node)
            if not moved:
                return

    rs.register(now)
    node.register((NODE_EP,), now)
    pump()
    node.request_path("www.gn.example", now)
    pump()
    for info in node.paths():
        vip = node.registration.vip4 if node.registration is not None else "100.64.1.1"
        pkt = _ipv4_udp(str(vip), str(info["peer_vip4"]), b"fuzz corpus")
        node.send_ip(pkt)
        pump()
        rs.tun_packet(_ipv4_udp(str(info["peer_vip4"]), str(vip), b"reply"), now)
        pump()
    return out, dc, rs, node


class FuzzNode(MemoryNode):
    """The fuzzed node: the core with its data path (``MemoryNode``); the core's API reachable on it."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.core, name)


def _drain(core: Any) -> list[Any]:
    evs = []
    while (ev := core.next_event()) is not None:
        evs.append(ev)
    return evs


def _ipv4_udp(src: str, dst: str, payload: bytes) -> bytes:
    s = socket.inet_aton(src)
    d = socket.inet_aton(dst)
    udp = struct.pack("!HHHH", 5000, 6000, 8 + len(payload), 0) + payload
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, s, d) + udp


# -- mutations --------------------------------------------------------------------------------------

SIGNAL_MUTATIONS = ("random", "truncate", "extend", "oversize", "bitflip", "garble_body", "wrong_key",
                    "unknown_sender", "unknown_path", "replay", "type_swap")
DNS_MUTATIONS = ("random", "truncate", "bitflip", "odd_query", "compression_loop", "header_only", "oversize")


class Mutator:
    """A seeded stream of hostile datagrams built from a corpus of real ones."""

    def __init__(self, corpus: list[bytes], seed: int, *, dns_mode: bool = False, max_size: int = 9000) -> None:
        self.rng = random.Random(seed)
        self.corpus = [c for c in corpus if c] or [bytes(SIGNAL_HEADER)]
        self.dns_mode = dns_mode
        self.max_size = max_size
        self.counts: dict[str, int] = {}

    def __iter__(self) -> Iterator[bytes]:
        while True:
            yield self.next()

    def next(self) -> bytes:
        kinds = DNS_MUTATIONS if self.dns_mode else SIGNAL_MUTATIONS
        kind = kinds[self.rng.randrange(len(kinds))]
        self.counts[kind] = self.counts.get(kind, 0) + 1
        fn: Callable[[], bytes] = getattr(self, "_" + kind)
        return fn()

    def _pick(self) -> bytes:
        return self.corpus[self.rng.randrange(len(self.corpus))]

    def _random(self) -> bytes:
        r = self.rng
        n = r.choice((0, 1, 2, r.randrange(3, 64), r.randrange(64, 1500)))
        return r.randbytes(n)

    def _truncate(self) -> bytes:
        d = self._pick()
        return d[:self.rng.randrange(len(d))]

    def _extend(self) -> bytes:
        d = self._pick()
        return d + self.rng.randbytes(self.rng.randrange(1, 300))

    def _oversize(self) -> bytes:
        d = self._pick()
        return d + self.rng.randbytes(self.rng.randrange(1200, self.max_size))

    def _bitflip(self) -> bytes:
        d = bytearray(self._pick())
        for _ in range(self.rng.randrange(1, 9)):
            i = self.rng.randrange(len(d))
            d[i] ^= 1 << self.rng.randrange(8)
        return bytes(d)

    def _garble_body(self) -> bytes:
        d = self._pick()
        head = SIGNAL_HEADER if len(d) > 1 and d[1] != MessageType.DATA else CAPSULE_HEADER
        return d[:head] + self.rng.randbytes(max(0, len(d) - head + self.rng.randrange(-16, 17)))

    def _wrong_key(self) -> bytes:
        """The right header (type, sender, txid, counter), a body sealed under some other key:
        the same length and shape as the real one, so only authentication can tell."""
        d = self._pick()
        if len(d) > 1 and d[1] == MessageType.DATA and len(d) >= CAPSULE_HEADER + 16:
            sealer = CapsuleSealer(self.rng.randbytes(32), d[4:12], d[2] & CapsuleFlags.FROM_RESPONDER)
            return sealer.seal(self.rng.randbytes(len(d) - CAPSULE_HEADER - 16))
        head = d[:SIGNAL_HEADER]
        nonce = b"\0\0\0\0" + head[-8:].rjust(8, b"\0")
        body = AESGCM(self.rng.randbytes(32)).encrypt(nonce, self.rng.randbytes(max(0, len(d) - SIGNAL_HEADER - 16)),
                                                      head)
        return head + body

    def _unknown_sender(self) -> bytes:
        d = bytearray(self._pick())
        if len(d) >= 12:
            d[4:12] = self.rng.randbytes(8)
        return bytes(d)

    def _unknown_path(self) -> bytes:
        """A data capsule (type DATA) for a Path ID nobody set up."""
        sealer = CapsuleSealer(self.rng.randbytes(32), self.rng.randbytes(8),
                               self.rng.choice((0, CapsuleFlags.FROM_RESPONDER)))
        return sealer.seal(self.rng.randbytes(self.rng.randrange(0, 1400)))

    def _replay(self) -> bytes:
        return self._pick()

    def _type_swap(self) -> bytes:
        d = bytearray(self._pick())
        if len(d) >= 2:
            d[1] = self.rng.randrange(256)
        return bytes(d)

    # DNS
    def _odd_query(self) -> bytes:
        r = self.rng
        labels = [r.choice(("www", "dc", "fz", "_ntm", "*", "x" * 63, "a-b", "\\000", "ns"))
                  for _ in range(r.randrange(0, 6))]
        zone = r.choice(("fuzz.example.", "example.", ".", "other.test.", "FUZZ.Example."))
        try:
            name = dns.name.from_text(".".join(labels) + "." + zone if labels else zone)
        except Exception:
            name = dns.name.from_text("fuzz.example.")
        rdtype = r.choice((1, 28, 16, 2, 6, 255, 252, 251, 0, 65535, 99, 41, 12, 33))
        rdclass = r.choice((1, 1, 1, 3, 255, 254, 2))
        q = dns.message.make_query(name, dns.rdatatype.RdataType.make(rdtype),
                                   dns.rdataclass.RdataClass.make(rdclass),
                                   use_edns=r.choice((None, 0, 1)), payload=r.choice((512, 1232, 0, 65535)))
        q.flags = r.randrange(1 << 16) & ~dns.flags.QR if r.random() < 0.3 else q.flags
        wire = bytearray(q.to_wire())
        if r.random() < 0.2:  # QDCOUNT lies
            wire[4:6] = struct.pack("!H", r.randrange(0, 4))
        if r.random() < 0.1:  # an opcode other than QUERY
            wire[2] = (wire[2] & 0x87) | (r.randrange(1, 16) << 3)
        return bytes(wire)

    def _compression_loop(self) -> bytes:
        # header with QDCOUNT 1; the name is a pointer to itself
        return struct.pack("!HHHHHH", self.rng.randrange(1 << 16), 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01"

    def _header_only(self) -> bytes:
        return struct.pack("!HHHHHH", self.rng.randrange(1 << 16), self.rng.randrange(1 << 16),
                           *(self.rng.randrange(3) for _ in range(4)))


#: Kinds of forged GSO chunk datagrams (``ChunkFlood``).
CHUNK_FLOODS = ("issue", "plausible", "many_paths", "random_layout")
_CHUNK = struct.Struct("!BBBB8sQBBH")  # capsule header + chunk header (wire/frame.py)


class ChunkFlood:
    """Forged GSO chunk datagrams: a capsule header with the GSO flag and a chunk header, then a
    body. Nothing in them can be authenticated before a capsule's last chunk is in, so they probe
    what a daemon holds for strangers (issue 14, section 2; crypto.channel.CapsuleOpener).

    - ``issue``: the review's datagram, 25 bytes: a live Path ID, count 255, index 254, seg 65535,
      one body byte;
    - ``plausible``: a live Path ID, count 45, seg 1448 and full 1448-byte bodies (a 64 KB
      capsule's layout), random index and counter;
    - ``many_paths``: the issue's datagram under random Path IDs;
    - ``random_layout``: a live Path ID, random count, index and seg, a short body.

    Counters are random, so every datagram would start a capsule of its own; the direction flag is
    random too."""

    def __init__(self, path_ids: list[bytes], seed: int, kinds: tuple[str, ...] = CHUNK_FLOODS) -> None:
        self.rng = random.Random(seed)
        self.path_ids = path_ids or [bytes(8)]
        self.kinds = kinds
        self.counts: dict[str, int] = {}
        self._n = 0

    def next(self) -> bytes:
        r = self.rng
        if self._n < 512 and "issue" in self.kinds:  # the flood first, exactly
            kind = "issue"
        else:
            kind = self.kinds[r.randrange(len(self.kinds))]
        self._n += 1
        self.counts[kind] = self.counts.get(kind, 0) + 1
        flags = int(CapsuleFlags.GSO) | r.choice((0, int(CapsuleFlags.FROM_RESPONDER)))
        pid = r.randbytes(8) if kind == "many_paths" else self.path_ids[r.randrange(len(self.path_ids))]
        counter = r.randrange(1, 1 << 48)
        if kind in ("issue", "many_paths"):
            count, index, seg, body = 255, 254, 65535, 1
        elif kind == "plausible":
            count, index, seg = 45, r.randrange(44), 1448
            body = seg
        else:
            count = r.randrange(2, 256)
            index, seg = r.randrange(count), r.randrange(1, 65536)
            body = seg if index < count - 1 and seg <= 1400 else r.randrange(1, 64)
        return _CHUNK.pack(1, int(MessageType.DATA), flags, 0, pid, counter, count, index, seg) + r.randbytes(body)


def dns_corpus(domain: str = "fuzz.example") -> list[bytes]:
    out = []
    for name in (domain, f"fz.{domain}", f"dc.{domain}", f"nobody.{domain}", "www.gn.example"):
        for t in ("A", "AAAA", "TXT", "NS", "SOA", "ANY"):
            out.append(dns.message.make_query(name, t).to_wire())
    return out


# -- in-memory core fuzz ----------------------------------------------------------------------------

@dataclass
class CoreFuzzReport:
    sent: int = 0
    raised: int = 0
    unaccounted: int = 0
    outputs: int = 0
    stats: dict[str, int] = field(default_factory=dict)


def fuzz_core(core: Any, datagrams: Iterator[bytes], count: int, *, now: float = 2000.0,
              sources: tuple[Endpoint, ...] = (("203.0.113.9", 40000),)) -> CoreFuzzReport:
    """Feed ``count`` datagrams to a sans-IO core. A datagram is *accounted* when a stats counter
    moved or the core sent a datagram or emitted an event. Exceptions are counted, not raised."""
    rep = CoreFuzzReport()
    stats = core.stats
    for i in range(count):
        data = next(datagrams)
        before = sum(stats.values())
        try:
            core.receive_datagram(data, sources[i % len(sources)], now + i * 1e-4)
        except Exception:
            rep.raised += 1
        out = len(core.datagrams_to_send()) + len(_drain(core))
        rep.outputs += out
        if sum(stats.values()) == before and out == 0:
            rep.unaccounted += 1
        rep.sent += 1
    rep.stats = dict(stats)
    return rep


# -- the real daemon on loopback --------------------------------------------------------------------

def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def udp_socket_drops(port: int, inode_pids: int | None = None) -> int:
    """Kernel drops (receive buffer full) of the UDP sockets bound to ``port`` (IPv4 and IPv6)."""
    total = 0
    for f in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(f).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) >= 13 and int(parts[1].rsplit(":", 1)[1], 16) == port:
                total += int(parts[-1])
    return total


@dataclass
class DaemonUnderTest:
    proc: subprocess.Popen[bytes]
    control: str
    port: int
    dns_port: int
    workdir: Path
    log: Path

    def status(self) -> dict[str, Any]:
        from ntmobile.runtime.control import query

        return query(self.control, timeout=10.0)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def lab_udp_drops(lab: Lab, host: str, port: int) -> int:
    """Datagrams the kernel dropped on ``host``'s UDP sockets bound to ``port`` (full buffers)."""
    total = 0
    for f in ("/proc/net/udp", "/proc/net/udp6"):
        for line in lab.exec(host, ["cat", f], timeout=10).stdout.splitlines()[1:]:
            parts = line.split()
            if int(parts[1].rsplit(":", 1)[1], 16) == port:
                total += int(parts[-1])
    return total


def _free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (the DNS server binds both)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no free UDP+TCP port pair on 127.0.0.1")


def start_dc(workdir: Path, ids: Identities, *, extra: str = "", timeout: float = 20.0) -> DaemonUnderTest:
    """Start `ntm dc run` on 127.0.0.1 with high ports, a database in ``workdir`` holding ``ids``
    (the DC identity and two enrolled clients), and a unique control socket name."""
    from ntmobile.runtime.store import SqliteStore

    db = workdir / "dc.sqlite"
    store = SqliteStore(db, POOLS)
    store.setting("dc_id", ids.dc_id)
    store.identity()
    for rec in (ids.node, ids.relay):
        if store.get_client(rec.client_id) is None:
            store.add_client(ClientRecord(rec.client_id, rec.name, rec.role, rec.psk))
    store.close()
    for _ in range(20):
        port, dns_port, probe = _free_port(), _free_port(), _free_port()
        if len({port, dns_port, probe, probe % 65535 + 1}) == 4:
            break
    control = f"ntm-fuzz-{os.getpid()}-{port}"
    cfg = workdir / "dc.toml"
    cfg.write_text(f'domain = "fuzz.example"\naddress = "127.0.0.1"\ndatabase = "{db}"\nport = {port}\n'
                   f'listen4 = "127.0.0.1"\ndns_port = {dns_port}\nprobe_port = {probe}\n'
                   f'control = "{control}"\n{extra}')
    log = workdir / "dc.log"
    with log.open("wb") as lf:
        # listen6 = "::" by default; the IPv6 socket is incidental, signalling is on 127.0.0.1
        proc = subprocess.Popen([sys.executable, "-m", "ntmobile", "dc", "run", "-c", str(cfg)], stdout=lf,
                                stderr=subprocess.STDOUT, start_new_session=True)
    dut = DaemonUnderTest(proc, control, port, dns_port, workdir, log)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the DC exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            dut.status()
            return dut
        except (ConnectionError, OSError, ValueError):
            if time.monotonic() > deadline:
                dut.stop()
                raise RuntimeError(f"the DC did not come up within {timeout} s: {log.read_text()[-2000:]}") from None
            time.sleep(0.05)


def _dc_received(st: dict[str, Any]) -> int:
    return int(st.get("driver", {}).get("received", 0))


def _dns_udp_received(st: dict[str, Any]) -> int:
    return sum(int(s.get("udp_queries", 0)) for s in st.get("dns_servers", []))


def _dns_tcp(st: dict[str, Any]) -> tuple[int, int]:
    servers = st.get("dns_servers", [])
    return (sum(int(s.get("tcp_connections", 0)) for s in servers), sum(int(s.get("tcp_queries", 0)) for s in servers))


def blast_udp(port: int, gen: Mutator, count: int, received: Callable[[], int], *, window: int = 2000,
              deadline_s: float = 1800.0) -> dict[str, Any]:
    """Send ``count`` datagrams to 127.0.0.1:``port``, at most ``window`` ahead of what the
    daemon reports received (plus what the kernel dropped), so that the daemon processes them rather
    than the kernel dropping them. Returns counts and timings."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.setblocking(True)
    base_rx = received()
    base_drops = udp_socket_drops(port)
    sent = errors = 0
    t0 = time.monotonic()
    end = t0 + deadline_s
    try:
        while sent < count and time.monotonic() < end:
            burst = min(window, count - sent)
            for _ in range(burst):
                try:
                    sock.sendto(gen.next(), ("127.0.0.1", port))
                except OSError:
                    errors += 1  # EMSGSIZE for a 65k+ datagram and the like: never reached the daemon
                sent += 1
            while time.monotonic() < end:
                got = received() - base_rx + udp_socket_drops(port) - base_drops
                if got + errors >= sent - window // 2:
                    break
                time.sleep(0.002)
        # wait for the tail
        while time.monotonic() < end:
            got = received() - base_rx + udp_socket_drops(port) - base_drops
            if got + errors >= sent:
                break
            time.sleep(0.01)
    finally:
        sock.close()
    elapsed = time.monotonic() - t0
    rx = received() - base_rx
    drops = udp_socket_drops(port) - base_drops
    return {"sent": sent, "send_errors": errors, "daemon_received": rx, "kernel_drops": drops,
            "accounted": rx + drops + errors == sent, "seconds": round(elapsed, 2),
            "rate_per_s": round(sent / elapsed) if elapsed else 0}


def blast_tcp_dns(port: int, gen: Mutator, count: int, *, timeout: float = 5.0) -> dict[str, Any]:
    """Open ``count`` TCP connections, each sending one length-framed hostile message (the server
    closes a connection after a message it cannot answer, as nsd does, so one per connection keeps
    the accounting exact); a tenth of them then send a frame that never completes and a tenth half a
    length prefix. Returns counts: the server must report ``count`` connections and ``count``
    complete messages read."""
    sent = resets = partial = 0
    t0 = time.monotonic()
    rng = random.Random(gen.rng.random())
    while sent < count:
        msg = gen.next()[:65535]
        tail = rng.random()
        extra = b"\xff\xff" + b"x" * 10 if tail < 0.1 else b"\x00" if tail < 0.2 else b""
        partial += bool(extra)
        sent += 1
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
                s.sendall(struct.pack("!H", len(msg)) + msg + extra)
                s.shutdown(socket.SHUT_WR)
                while s.recv(65536):
                    pass
        except OSError:
            resets += 1  # the server closed first (after a message it does not answer): expected
    elapsed = time.monotonic() - t0
    return {"sent": sent, "connections": sent, "partial_frames": partial, "closed_by_server": resets,
            "seconds": round(elapsed, 2), "rate_per_s": round(sent / elapsed) if elapsed else 0}


def registration_works(dut: DaemonUnderTest, ids: Identities, timeout: float = 5.0) -> bool:
    """A fresh node core registers with the daemon over real UDP (the daemon still works)."""
    rng = random.Random()
    node = NodeCore(NodeConfig(ids.node.name, ids.node.client_id, ids.node.psk, ids.dc_id,
                               ("127.0.0.1", dut.port)), time.monotonic(), seq_base=time.time_ns() // 1000 + 10**12,
                    random_bytes=rng.randbytes)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        node.register((sock.getsockname(),), time.monotonic())
        deadline = time.monotonic() + timeout
        while not node.registered and time.monotonic() < deadline:
            for dg in node.datagrams_to_send():
                sock.sendto(dg.data, dg.addr)
            t = node.get_timer()
            wait = max(0.001, min(deadline, t if t is not None else deadline) - time.monotonic())
            sock.settimeout(wait)
            try:
                data, addr = sock.recvfrom(65536)
                node.receive_datagram(data, (addr[0], addr[1]), time.monotonic())
            except TimeoutError:
                node.handle_timer(time.monotonic())
            _drain(node)
        return node.registered
    finally:
        sock.close()


def dns_works(dut: DaemonUnderTest) -> bool:
    import dns.query

    q = dns.message.make_query("fuzz.example", "SOA")
    try:
        r = dns.query.udp(q, "127.0.0.1", port=dut.dns_port, timeout=3.0)
        t = dns.query.tcp(q, "127.0.0.1", port=dut.dns_port, timeout=3.0)
    except Exception:
        return False
    return bool(r.answer) and bool(t.answer)


def run_bench(count: int, seed: int = 8, *, tcp_count: int | None = None, log: Callable[[str], None] = print,
              workdir: Path | None = None) -> dict[str, Any]:
    """Fuzz a real DC daemon on loopback: ``count`` datagrams to its signalling port and to its DNS
    UDP port, ``tcp_count`` (default count // 10) framed messages to its DNS TCP port."""
    ids = Identities()
    corpus = capture_corpus(ids, seed)
    tmp = tempfile.TemporaryDirectory(prefix="ntm-fuzz-") if workdir is None else None
    wd = Path(tmp.name) if tmp is not None else workdir
    assert wd is not None
    report: dict[str, Any] = {"seed": seed, "count_per_port": count, "targets": {}}
    dut = start_dc(wd, ids)
    try:
        pid = dut.proc.pid
        report["rss_kib_start"] = rss_kib(pid)
        st0 = dut.status()
        sig = Mutator(corpus["dc"] + corpus["rs"] + corpus["node"], seed)
        log(f"DC signalling 127.0.0.1:{dut.port}: {count} datagrams ...")
        r = blast_udp(dut.port, sig, count, lambda: _dc_received(dut.status()))
        st1 = dut.status()
        stats0, stats1 = st0["stats"], st1["stats"]
        r["core_counter_delta"] = {k: v - stats0.get(k, 0) for k, v in stats1.items() if v != stats0.get(k, 0)}
        r["mutations"] = dict(sig.counts)
        r["rss_kib_after"] = rss_kib(pid)
        report["targets"]["dc_signalling_udp"] = r
        log(json.dumps({k: v for k, v in r.items() if k != "core_counter_delta"}))

        dgen = Mutator(dns_corpus(), seed + 1, dns_mode=True)
        log(f"DC DNS UDP 127.0.0.1:{dut.dns_port}: {count} datagrams ...")
        r = blast_udp(dut.dns_port, dgen, count, lambda: _dns_udp_received(dut.status()), window=200)
        st2 = dut.status()
        r["dns_server_stats"] = st2.get("dns_servers")
        r["mutations"] = dict(dgen.counts)
        r["rss_kib_after"] = rss_kib(pid)
        report["targets"]["dc_dns_udp"] = r
        log(json.dumps({k: v for k, v in r.items() if k != "dns_server_stats"}))

        tcount = count // 10 if tcp_count is None else tcp_count
        tgen = Mutator(dns_corpus(), seed + 2, dns_mode=True, max_size=65000)
        log(f"DC DNS TCP 127.0.0.1:{dut.dns_port}: {tcount} messages ...")
        before = _dns_tcp(st2)
        r = blast_tcp_dns(dut.dns_port, tgen, tcount)
        deadline = time.monotonic() + 30
        while True:  # the server counts a connection when its handler runs: wait for the last ones
            st3 = dut.status()
            conns, queries = (a - b for a, b in zip(_dns_tcp(st3), before, strict=True))
            if (conns >= tcount and queries >= tcount) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        r["daemon_connections"], r["daemon_received"] = conns, queries
        r["accounted"] = conns == tcount and queries == tcount
        r["dns_server_stats"] = st3.get("dns_servers")
        r["rss_kib_after"] = rss_kib(pid)
        report["targets"]["dc_dns_tcp"] = r
        log(json.dumps({k: v for k, v in r.items() if k != "dns_server_stats"}))

        report["alive"] = dut.proc.poll() is None
        report["registration_after"] = registration_works(dut, ids)
        report["dns_after"] = dns_works(dut)
        report["rss_kib_end"] = rss_kib(pid)
        report["handler_errors"] = st3.get("driver", {}).get("handler_errors")
    finally:
        dut.stop()
        text = dut.log.read_text(errors="replace")
        report["log_tracebacks"] = text.count("Traceback")
        if "Traceback" in text:
            i = text.index("Traceback")
            report["first_traceback"] = text[max(0, text.rfind("\n", 0, i - 1) - 200):i + 3000]
        if tmp is not None:
            tmp.cleanup()
    return report


def to_markdown(rep: dict[str, Any]) -> str:
    where = "every daemon port of the nat lab" if rep.get("lab") else "a DC on loopback"
    lines = [f"# ntm bench fuzz (seed {rep['seed']}, {where})", "",
             "| target | sent | daemon received | kernel drops | send errors | accounted | rate/s | RSS after KiB |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in rep["targets"].items():
        lines.append(f"| {name} | {r['sent']} | {r.get('daemon_received', '')} | "
                     f"{r.get('kernel_drops', '')} | {r.get('send_errors', '')} | "
                     f"{r.get('accounted', '')} | {r['rate_per_s']} | {r['rss_kib_after']} |")
    lines += ["", f"RSS start {rep.get('rss_kib_start')} KiB, end {rep.get('rss_kib_end')} KiB; alive "
              f"{rep.get('alive')}; registration afterwards {rep.get('registration_after')}; DNS afterwards "
              f"{rep.get('dns_after')}; transfer afterwards {rep.get('transfer_after', 'n/a')}; tracebacks in the "
              f"log {rep.get('log_tracebacks', 'n/a')}; handler errors {rep.get('handler_errors')}"]
    floods = rep.get("chunk_floods", {}).get("floods", {})
    if floods:
        lines += ["", "Forged GSO chunk floods (what reassembly holds for strangers):", "",
                  "| flood | daemon | sent | received | RSS before KiB | RSS after KiB | growth KiB | held after |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, r in floods.items():
            held = (r.get("reassembly") or {}).get("held")
            lines.append(f"| {name} | {r['daemon']} | {r['sent']} | {r['daemon_received']} | {r['rss_kib_before']} | "
                         f"{r['rss_kib_after']} | {r['rss_growth_kib']} | {held} |")
    return "\n".join(lines)


#: setsockopt(SOL_IP, IP_TRANSPARENT): bind to an address that is not the host's (root only).
IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)


def send_paced(host: str, port: int, gen: Mutator | ChunkFlood, count: int, rate: float, *,
               source: Endpoint | None = None) -> dict[str, Any]:
    """Send ``count`` datagrams to host:port at about ``rate`` per second (no feedback: what the
    receiver's socket cannot hold shows up in its kernel drop counter). With ``source`` they leave
    from that address and port even if it is not this host's (a spoofer: IP_TRANSPARENT, IPv4)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(fam, socket.SOCK_DGRAM)
    if source is not None:
        sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(source)
    sent = errors = 0
    t0 = time.monotonic()
    try:
        while sent < count:
            burst = min(200, count - sent)
            for _ in range(burst):
                try:
                    sock.sendto(gen.next(), (host, port))
                except OSError:
                    errors += 1
                sent += 1
            ahead = sent / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
    finally:
        sock.close()
    elapsed = time.monotonic() - t0
    return {"sent": sent, "send_errors": errors, "seconds": round(elapsed, 2),
            "rate_per_s": round(sent / elapsed) if elapsed else 0, "mutations": gen.counts}


def lab_json(lab: Lab, host: str, *argv: str) -> dict[str, Any]:
    """``ntm ARGV --json`` in a lab host, parsed."""
    cp = lab.exec(host, [sys.executable, "-m", "ntmobile", *argv, "--json"], timeout=30)
    out: dict[str, Any] = json.loads(cp.stdout)
    return out


def daemon_pid(lab: Lab, host: str, kind: str) -> int:
    return next(p.pid for p in lab.state.processes if p.host == host and p.name.startswith(kind))


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def run_chunk_floods(lab: Lab, count: int, seed: int = 8, *, rate: int = 5000,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """Forged GSO chunk floods (``ChunkFlood``) against the relays and the node mn of a running
    ``nat`` lab. mn first sets up an RS-N path (to the GN) and, if the DCs peer, an RS-S path (to
    cn). Then, per relay holding such paths: ``count`` datagrams from gl (a source that is no leg),
    and ``count`` from gl spoofing mn's learnt endpoint there (the relay's worst case); and to mn's
    port: ``count`` from inside mn (a wrong source) and ``count`` from nata spoofing the relay's
    endpoint (the node's worst case). Each flood reports the daemon's RSS (KiB) before and after
    (after partials had time to expire), its reassembly books and the drop counters that moved."""
    from ntmobile.crypto.channel import REASSEMBLY_TIMEOUT

    for name in ("www.gn.example", "cn.b.example"):
        lab.exec("mn", ["ping", "-c", "2", "-W", "2", name], timeout=30, check=False)
    _wait(lambda: any(p["mode"] == "RS_N" and p["established"] for p in lab_json(lab, "mn", "status")["paths"]), 30)
    relays = sorted({p.host for p in lab.state.processes if p.name.startswith("rs")})
    report: dict[str, Any] = {"count": count, "rate": rate, "floods": {}}

    def rx_of(host: str, kind: str) -> Callable[[], int]:
        def rx() -> int:
            d = lab_json(lab, host, *(("rs", "status") if kind == "rs" else ("status",)))["dataplane"]
            return int(d["rx_datagrams"] + d["rx_errors"])
        return rx

    def flood(name: str, src: str, dest: str, port: int, host: str, kind: str, pids: list[str],
              spoof: str | None, i: int) -> None:
        pid = daemon_pid(lab, host, kind)
        rx = rx_of(host, kind)

        def status() -> dict[str, Any]:
            return lab_json(lab, host, *(("rs", "status") if kind == "rs" else ("status",)))

        before, d0, rss0 = rx(), lab_udp_drops(lab, host, port), rss_kib(pid)
        st0 = status()
        argv = [sys.executable, "-m", "ntmobile.bench.fuzz", "send", dest, str(port), str(count), str(seed + i),
                "chunks", str(rate), ",".join(pids), ",".join(CHUNK_FLOODS)] + ([spoof] if spoof else [])
        log(f"{name}: {count} forged chunks {dest}:{port} from {src}{' as ' + spoof if spoof else ''} ...")
        cp = lab.exec(src, argv, timeout=count / rate * 4 + 60)
        r: dict[str, Any] = json.loads(cp.stdout.strip().splitlines()[-1])
        wanted = r["sent"] - r["send_errors"]
        _wait(lambda: rx() - before + lab_udp_drops(lab, host, port) - d0 >= wanted, 60)
        # Partials leave on the daemon's timer (REASSEMBLY_TIMEOUT): RSS after they did, not during.
        r["partials_expired"] = _wait(lambda: not status()["reassembly"]["partials"], 10 + REASSEMBLY_TIMEOUT)
        st1 = status()
        c0 = st0["stats"] | {"dp_" + k: v for k, v in st0["dataplane"].items()}
        c1 = st1["stats"] | {"dp_" + k: v for k, v in st1["dataplane"].items()}
        r.update(daemon=host, daemon_received=rx() - before, kernel_drops=lab_udp_drops(lab, host, port) - d0,
                 rss_kib_before=rss0, rss_kib_after=rss_kib(pid), reassembly=st1.get("reassembly"),
                 counters={k: v - c0.get(k, 0) for k, v in c1.items() if isinstance(v, int) and v != c0.get(k, 0)})
        r["rss_growth_kib"] = r["rss_kib_after"] - rss0
        report["floods"][name] = r
        log(json.dumps({k: v for k, v in r.items() if k not in ("mutations", "counters")}))

    i = 0
    for rs in relays:
        entries = lab_json(lab, rs, "rs", "status")["entries"]
        if not entries:
            continue
        pids = [e["path_id"] for e in entries]
        flood(f"{rs}_wrong_source", "gl", lab.addr(rs), 7411, rs, "rs", pids, None, i)
        i += 1
        for e in entries:
            if e["rs_type"] == "N" and e["initiator"] and not e["initiator"].startswith("["):  # IPv4 spoofing
                flood(f"{rs}_spoofed_learnt_endpoint", "gl", lab.addr(rs), 7411, rs, "rs", [e["path_id"]],
                      str(e["initiator"]), i)
                i += 1
                break
    paths = lab_json(lab, "mn", "status")["paths"]
    pids = [p["path_id"] for p in paths]
    flood("mn_wrong_source", "mn", "127.0.0.1", 7412, "mn", "node", pids, None, i)
    for p in paths:
        ep = p.get("endpoint")
        if p["mode"] == "RS_N" and ep and ":" not in str(ep[0]):
            flood("mn_spoofed_relay_endpoint", "nata", lab.addr("mn"), 7412, "mn", "node", [p["path_id"]],
                  f"{ep[0]}:{ep[1]}", i + 1)
            break
    return report


def run_lab_bench(count: int, seed: int = 8, *, prefix: str = "fuzz", log: Callable[[str], None] = print
                  ) -> dict[str, Any]:
    """Every daemon port of a running lab (built-in topology "nat", brought up and torn down here):
    ``count`` datagrams each to the DC's signalling and DNS ports (sent from gl), the relay's port
    (from gl) and the node's port and DNS stub (from inside mn's namespace). Accounting per port:
    datagrams the daemon read (its own counters) + the kernel's drops on that socket vs sent."""
    from ntmobile.lab import Lab

    js, pid_of = lab_json, daemon_pid
    lab = Lab.up("nat", prefix=prefix, bare=False)
    report: dict[str, Any] = {"seed": seed, "count_per_port": count, "targets": {}, "lab": "nat"}
    try:
        deadline = time.monotonic() + 30
        while not js(lab, "mn", "status").get("registered"):
            if time.monotonic() > deadline:
                raise RuntimeError("mn did not register in the lab")
            time.sleep(0.2)
        pids = {"dc": pid_of(lab, "dca", "dc"), "rs": pid_of(lab, "rs1", "rs"), "node": pid_of(lab, "mn", "node")}
        report["rss_kib_start"] = {k: rss_kib(v) for k, v in pids.items()}
        dca, rs1 = lab.addr("dca"), lab.addr("rs1")

        def dc_sig() -> int:
            return int(js(lab, "dca", "dc", "status")["driver"]["received"])

        def dc_dns() -> int:
            return sum(int(x["udp_queries"]) for x in js(lab, "dca", "dc", "status")["dns_servers"])

        def rs_rx() -> int:
            d = js(lab, "rs1", "rs", "status")["dataplane"]
            return int(d["rx_datagrams"] + d["rx_errors"])

        def node_rx() -> int:
            d = js(lab, "mn", "status")["dataplane"]
            return int(d["rx_datagrams"] + d["rx_errors"])

        def stub_rx() -> int:
            return int(js(lab, "mn", "status")["dns_stub"]["received"])

        targets = [("dc_signalling_udp", "gl", dca, 7410, "dca", "signal", 25000, dc_sig, "dc"),
                   ("dc_dns_udp", "gl", dca, 53, "dca", "dns", 4000, dc_dns, "dc"),
                   ("rs_udp", "gl", rs1, 7411, "rs1", "signal", 15000, rs_rx, "rs"),
                   ("node_udp", "mn", "127.0.0.1", 7412, "mn", "signal", 15000, node_rx, "node"),
                   ("node_dns_stub_udp", "mn", STUB_ADDR, 53, "mn", "dns", 4000, stub_rx, "node")]
        for i, (name, src, dest, port, dhost, kind, rate, rx, who) in enumerate(targets):
            log(f"{name} {dest}:{port} from {src}: {count} datagrams ...")
            before, d0 = rx(), lab_udp_drops(lab, dhost, port)
            cp = lab.exec(src, [sys.executable, "-m", "ntmobile.bench.fuzz", "send", dest, str(port), str(count),
                                str(seed + i), kind, str(rate)], timeout=count / rate * 4 + 120)
            r: dict[str, Any] = json.loads(cp.stdout.strip().splitlines()[-1])
            wanted = r["sent"] - r["send_errors"]
            until = time.monotonic() + 60
            while rx() - before + lab_udp_drops(lab, dhost, port) - d0 < wanted and time.monotonic() < until:
                time.sleep(0.2)
            r["daemon_received"] = rx() - before
            r["kernel_drops"] = lab_udp_drops(lab, dhost, port) - d0
            r["accounted"] = wanted <= r["daemon_received"] + r["kernel_drops"]
            r["rss_kib_after"] = rss_kib(pids[who])
            report["targets"][name] = r
            log(json.dumps({k: v for k, v in r.items() if k != "mutations"}))
        # Forged GSO chunks (issue 14): what reassembly holds for strangers, per daemon.
        report["chunk_floods"] = run_chunk_floods(lab, max(1000, count // 10), seed, log=log)
        report["alive"] = all(Path(f"/proc/{p}").exists() for p in pids.values())
        report["rss_kib_end"] = {k: rss_kib(v) for k, v in pids.items()}
        # The stub holds tunnelled lookups until the DC answers (at most MAX_PENDING at once): let the
        # flood's backlog drain, and report how long that took.
        t0 = time.monotonic()
        while js(lab, "mn", "status")["dns_stub"]["pending"] and time.monotonic() - t0 < 120:
            time.sleep(0.5)
        report["stub_backlog_drained_s"] = round(time.monotonic() - t0, 1)
        big = lab.state.big_file
        out = str(lab.workdir / "after-fuzz.bin")
        cp = lab.exec("mn", ["curl", "-sS", "-4", "-m", "120", "--retry", "3", "-o", out,
                             "http://www.gn.example/big.bin"], timeout=500, check=False)
        got = lab.exec("mn", ["sha256sum", out], timeout=30, check=False).stdout.split()[:1]
        report["transfer_after"] = cp.returncode == 0 and big is not None and got == [big.sha256]
        report["registration_after"] = bool(js(lab, "mn", "status").get("registered"))
        report["dns_after"] = bool(lab.exec("gl", ["dig", f"@{dca}", "+short", "A", "mn.a.example"],
                                            timeout=20, check=False).stdout.strip())
        report["handler_errors"] = {"dc": js(lab, "dca", "dc", "status")["driver"]["handler_errors"],
                                    "node_dns_stub": js(lab, "mn", "status")["dns_stub"]["errors"]}
    finally:
        lab.down()
    return report


_USAGE = ("usage: python -m ntmobile.bench.fuzz send HOST PORT COUNT SEED signal|dns [RATE] | "
          "send HOST PORT COUNT SEED chunks RATE PATHIDS(hex,comma-separated) [KINDS(comma-separated) [SRC_ADDR:PORT]]")


def main(argv: list[str]) -> None:
    """``python -m ntmobile.bench.fuzz send HOST PORT COUNT SEED signal|dns [RATE]``, or ``... chunks
    RATE PATHIDS [KINDS [SRC:PORT]]`` (forged GSO chunks, optionally from a spoofed source): the
    sender the lab tests run inside a lab host; prints its figures as JSON."""
    if len(argv) < 6 or argv[0] != "send" or argv[5] not in ("signal", "dns", "chunks") or (
            argv[5] == "chunks" and len(argv) < 8):
        raise SystemExit(_USAGE)
    host, port, count, seed, kind = argv[1], int(argv[2]), int(argv[3]), int(argv[4]), argv[5]
    rate = float(argv[6]) if len(argv) > 6 else 20000.0
    source: Endpoint | None = None
    gen: Mutator | ChunkFlood
    if kind == "chunks":
        kinds = tuple(argv[8].split(",")) if len(argv) > 8 and argv[8] else CHUNK_FLOODS
        gen = ChunkFlood([bytes.fromhex(x) for x in argv[7].split(",") if x], seed, kinds)
        if len(argv) > 9:
            a, _, p = argv[9].rpartition(":")
            source = (a, int(p))
    elif kind == "dns":
        gen = Mutator(dns_corpus(), seed, dns_mode=True)
    else:
        c = capture_corpus(seed=seed)
        gen = Mutator(c["dc"] + c["rs"] + c["node"], seed)
    print(json.dumps(send_paced(host, port, gen, count, rate, source=source)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
