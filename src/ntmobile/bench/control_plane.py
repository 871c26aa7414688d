"""`ntm bench control-plane`: many simulated nodes register and set up RS-N paths against a real DC.

Everything runs in a private network namespace (``unshare --net``, so only its loopback is used):

- the real DC daemon (`ntm dc run`, a subprocess) with a temporary SQLite registry into which the
  nodes are enrolled in bulk with the store API (one transaction; VIPs pre-assigned as enrolment
  would leave them after a first registration);
- a real relay: `RsCore` behind a real UDP socket on 127.0.0.2:7411, in a subprocess of its own;
- a loopback authoritative DNS server for ``gn.example`` on 127.0.0.53:53, the DC's resolver (the
  DC caches the discovery result, so path set-ups after the first use the cached DNS);
- the load generator: the sans-IO `NodeCore`, one per simulated node, all in this one process over
  one UDP socket bound to 0.0.0.0. Node *i* has its own address 127.(1+i/65536).(i/256%256).(i%256):
  datagrams are sent from it with ``IP_PKTINFO`` and received by their destination address, so the
  DC sees N distinct endpoints.

Phases: (1) register N nodes, at most ``window`` in flight; (2) ``paths`` of them each set up an
RS-N path to www.gn.example (DC → RS Relay Direction and back, Route Direction, Tunnel
Request/Response with the RS). Reported: messages/s (datagrams the generator sent and received),
set-ups/s, p50/p99 latency, the DC's RSS growth per registered node, and the exactly-once checks
(DC counters against what the generator completed; retransmissions and kernel drops).
"""

from __future__ import annotations

import gc
import heapq
import ipaddress
import json
import os
import selectors
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ntmobile.core.node import NodeConfig, NodeCore, PathFailed, PathReady, RegistrationFailed
from ntmobile.core.registry import ClientRecord, Pools
from ntmobile.core.rs import DcLink, ProbeRequest, RsConfig, RsCore
from ntmobile.wire import Role

from .calibration import host_calibration

DC_ADDR = "127.0.0.1"
DC_PORT = 7410
RS_EP = ("127.0.0.2", 7411)
DNS_ADDR = "127.0.0.53"
GN_ADDR = "192.0.2.40"
DOMAIN = "bench.example"
NODE_PORT = 7412
POOLS = Pools("100.64.0.0/10", "fd00:6e74:1::/64", "100.127.0.0/16", "fd00:6e74:ff::/64")
RELAY = ClientRecord(b"\xb0" * 8, "rs1", Role.RELAY, b"\x5a" * 32)

Endpoint = tuple[str, int]
#: Datagrams the generator takes per poll before it refills its window: small enough that the DC
#: gets new requests while the generator works through answers (no lock-step between the two).
POLL_BATCH = 8
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux; the socket module has it from Python 3.12


def node_addr(i: int) -> str:
    return f"127.{1 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"


def node_record(i: int) -> ClientRecord:
    return ClientRecord(struct.pack("!Q", 0x6E74_0000_0000_0000 + i + 1), f"n{i}.{DOMAIN}", Role.NODE,
                        struct.pack("!Q", i) * 4)


def percentile(xs: list[float], p: float) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def pin_cpus(dc_pid: int, rs_pid: int) -> dict[str, list[int]]:
    """The DC gets a core of its own (the targets are "on one core"); the generator and the relay
    share the others. Unpinned, the scheduler tends to run the DC and the generator on one CPU in
    turn: every answer the DC sends wakes the generator, which then preempts the DC inside its
    ``sendto``. With fewer than two CPUs nothing is pinned."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return {"dc": cpus, "generator": cpus, "relay": cpus}
    dc_cpus, rest = cpus[:1], cpus[1:]
    os.sched_setaffinity(dc_pid, dc_cpus)
    os.sched_setaffinity(0, rest)
    os.sched_setaffinity(rs_pid, rest)
    return {"dc": dc_cpus, "generator": rest, "relay": rest}


def udp_drops() -> int:
    total = 0
    for f in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            for line in Path(f).read_text().splitlines()[1:]:
                total += int(line.split()[-1])
        except OSError:
            pass
    return total


# -- set-up ---------------------------------------------------------------------------------------

def enrol_bulk(db: Path, n: int) -> bytes:
    """Enrol the relay and ``n`` nodes (VIPs pre-assigned) in one transaction; return the DC ID."""
    from ntmobile.runtime.store import SqliteStore

    store = SqliteStore(db, POOLS)
    dc_id, _ = store.identity()
    store.add_client(RELAY)
    base4 = int.from_bytes(socket.inet_aton("100.64.0.0"), "big")
    base6 = ipaddress.IPv6Address("fd00:6e74:1::")
    store.db.execute("BEGIN")
    try:
        for i in range(n):
            rec = node_record(i)
            v4 = socket.inet_ntoa((base4 + 1 + i).to_bytes(4, "big"))
            v6 = str(base6 + 1 + i)
            store.add_client(ClientRecord(rec.client_id, rec.name, rec.role, rec.psk, v4, v6))
        store.db.execute("COMMIT")
    except sqlite3.Error:
        store.db.execute("ROLLBACK")
        raise
    store.close()
    return dc_id


def enrol_bulk_pg(dsn: str, n: int) -> bytes:
    """As enrol_bulk, into a PostgreSQL registry (the replicas' shared database): the relay through
    the store API, the nodes with one COPY in one transaction; return the domain's DC ID."""
    from ntmobile.runtime.pgstore import PgStore

    store = PgStore(dsn, POOLS)
    try:
        dc_id, _ = store.identity()
        store.add_client(RELAY)
        base4 = int.from_bytes(socket.inet_aton("100.64.0.0"), "big")
        base6 = ipaddress.IPv6Address("fd00:6e74:1::")
        conn = store._db()
        with conn.transaction(), conn.cursor() as cur, \
                cur.copy("COPY clients (client_id, name, role, psk, vip4, vip6, last_seq) FROM STDIN") as cp:
            for i in range(n):
                rec = node_record(i)
                cp.write_row((rec.client_id, rec.name, int(rec.role), rec.psk,
                              socket.inet_ntoa((base4 + 1 + i).to_bytes(4, "big")), str(base6 + 1 + i), 0))
        conn.execute("ANALYZE clients")
    finally:
        store.close()
    return dc_id


def replica_addr(k: int) -> str:
    """Replica k's signalling address: 127.0.0.1 (the single DC's), then 127.0.0.3, .4, ..."""
    return DC_ADDR if k == 0 else f"127.0.0.{2 + k}"


def control_name(k: int) -> str:
    return "ntm-bench-dc" if k == 0 else f"ntm-bench-dc{k + 1}"


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its direct children (the postmaster and its backends)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if int(d.name) == pid or ppid == pid:
            out.append(int(d.name))
    return out


def tree_sum(pid: int, of: Callable[[int], float]) -> float:
    """``of`` (CPU seconds, RSS) added over ``pid`` and its children; processes gone meanwhile count 0."""
    total = 0.0
    for p in tree_pids(pid):
        try:
            total += of(p)
        except (OSError, IndexError, ValueError):
            continue
    return total


def serve_gn_zone(stop: threading.Event) -> threading.Thread:
    """Authoritative DNS for gn.example (www has an A record, no DC marker: a general node) on
    127.0.0.53:53, UDP; the DC uses it as its resolver and asks it the apex TXT directly."""
    from ntmobile.core.dnsauth import AuthoritativeZone, NameServer, NodeRecords, SoaFields

    zone = AuthoritativeZone("gn.example.", soa=SoaFields("ns.gn.example.", "hostmaster.gn.example."),
                             nameservers=[NameServer("ns.gn.example.", (DNS_ADDR,))], marker=None,
                             lookup=lambda name: NodeRecords(a=(GN_ADDR,)) if name.labels[0] == b"www" else None,
                             ttl=3600)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((DNS_ADDR, 53))
    sock.settimeout(0.2)

    def loop() -> None:
        with sock:
            while not stop.is_set():
                try:
                    q, addr = sock.recvfrom(4096)
                except TimeoutError:
                    continue
                r = zone.respond(q, tcp=False)
                if r is not None:
                    sock.sendto(r, addr)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


def relay_main(dc_id_hex: str, max_paths: int) -> None:
    """The relay subprocess: RsCore on RS_EP over a real UDP socket; distance probes answered as
    1 hop, 250 µs (there is no GN to ping in the namespace). Stats as JSON on SIGTERM (stdout)."""
    core = RsCore(RsConfig(RELAY.name, RELAY.client_id, [DcLink(bytes.fromhex(dc_id_hex), (DC_ADDR, DC_PORT),
                                                               RELAY.psk)],
                           local_endpoints=[RS_EP], max_paths=max_paths, rsn_allow=(f"{GN_ADDR}/32",)),
                  time.monotonic(),
                  seq_base=time.time_ns() // 1000)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind(RS_EP)
    sock.setblocking(False)
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    core.register(time.monotonic())
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    frozen_at = 0.0
    while not stop:
        t = core.get_timer()
        now = time.monotonic()
        if now - frozen_at > 0.5:
            gc.freeze()  # as the generator: no full collections over the growing Relay Table
            frozen_at = now
        sel.select(timeout=0.2 if t is None else max(0.0, min(0.2, t - now)))
        now = time.monotonic()
        for _ in range(512):
            try:
                data, addr = sock.recvfrom(65536)
            except BlockingIOError:
                break
            core.receive_datagram(data, (addr[0], addr[1]), now)
        t = core.get_timer()
        if t is not None and t <= now:
            core.handle_timer(now)
        while (ev := core.next_event()) is not None:
            if isinstance(ev, ProbeRequest):
                core.probe_result(ev.token, 1, 250, now)
        core.packets_to_tun()
        for dg in core.datagrams_to_send():
            sock.sendto(dg.data, dg.addr)
    print(json.dumps({"stats": dict(core.stats), "entries": len(core.entries())}), flush=True)


# -- the load generator ---------------------------------------------------------------------------

class Generator:
    """NodeCores multiplexed over one UDP socket; node i speaks from node_addr(i):NODE_PORT.

    Each node runs on its own clock (a sans-IO core only sees the ``now`` it is given): a node
    prepared ahead of the timed phase (``prepare``: key generation and the sealed Registration
    Request, at node time 0) starts its clock when ``launch`` sends that request, so its timers and
    retransmissions run exactly as if it had been made at that moment. The timed phase then
    measures the DC, not the generator's key generation."""

    def __init__(self, dc_id: bytes, dcs: list[Endpoint] | None = None) -> None:
        self.dc_id = dc_id
        #: node i registers with dcs[i % len(dcs)] (the replicas; one DC: just it)
        self.dcs = dcs or [(DC_ADDR, DC_PORT)]
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 << 20)
        self.sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        self.sock.bind(("0.0.0.0", NODE_PORT))
        self.sock.setblocking(False)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.sock, selectors.EVENT_READ)
        #: address -> (index, core, offset of the core's clock: core time = monotonic - offset)
        self.nodes: dict[str, tuple[int, NodeCore, float]] = {}
        self.timers: list[tuple[float, str]] = []
        self.sent = 0
        self.received = 0
        self.unrouted = 0
        self.retransmissions = 0
        self.frozen_at = 0.0

    def prepare(self, i: int) -> tuple[NodeCore, list[Any]]:
        """Node i with its Registration Request made (node time 0), not sent yet."""
        rec = node_record(i)
        node = NodeCore(NodeConfig(rec.name, rec.client_id, rec.psk, self.dc_id, self.dcs[i % len(self.dcs)]), 0.0,
                        seq_base=time.time_ns() // 1000, random_bytes=os.urandom)
        node.register(((node_addr(i), NODE_PORT),), 0.0)
        return node, node.datagrams_to_send()

    def launch(self, i: int, prepared: tuple[NodeCore, list[Any]], now: float) -> None:
        """Send a prepared node's request now; its clock starts here."""
        node, dgs = prepared
        addr = node_addr(i)
        self.nodes[addr] = (i, node, now)
        self._send(addr, dgs)
        self._arm(addr, node, now)

    def clock(self, addr: str, now: float) -> float:
        """Node time of the node at ``addr`` at monotonic time ``now``."""
        return now - self.nodes[addr][2]

    def drop(self, i: int) -> None:
        entry = self.nodes.pop(node_addr(i), None)
        if entry is not None:
            self.retransmissions += entry[1].stats["retransmissions"]
            # Its timers and pending requests hold bound methods of the core (reference cycles):
            # drop them so reference counting frees the core at once, frozen or not.
            entry[1]._timers.clear()
            entry[1]._pending.clear()

    def flush(self, addr: str, node: NodeCore) -> None:
        self._send(addr, node.datagrams_to_send())
        self._arm(addr, node, self.nodes[addr][2])

    def _send(self, addr: str, dgs: list[Any]) -> None:
        if not dgs:
            return
        anc = [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=I4s4s", 0, socket.inet_aton(addr), b"\0\0\0\0"))]
        for dg in dgs:
            while True:
                try:
                    self.sock.sendmsg([dg.data], anc, 0, dg.addr)
                    break
                except BlockingIOError:
                    self.sel.select(0.001)
            self.sent += 1

    def _arm(self, addr: str, node: NodeCore, offset: float) -> None:
        t = node.get_timer()
        if t is not None:
            heapq.heappush(self.timers, (t + offset, addr))

    def poll(self, on_event: Callable[[int, NodeCore, object, float], None], timeout: float) -> None:
        """Receive what is there (waiting up to ``timeout``), feed the nodes, fire due timers."""
        if time.monotonic() - self.frozen_at > 0.5:
            # Keep the collector off the long-lived node cores (a full collection over tens of
            # thousands of them would show up as latency); the DC does the same (runtime/dc.py).
            gc.freeze()
            self.frozen_at = time.monotonic()
        recvmsg, nodes = self.sock.recvmsg, self.nodes
        if self.sel.select(timeout):
            for _ in range(POLL_BATCH):
                try:
                    data, anc, _flags, src = recvmsg(65536, 64)
                except BlockingIOError:
                    break
                dst = None
                for level, typ, val in anc:
                    if level == socket.IPPROTO_IP and typ == IP_PKTINFO:
                        dst = socket.inet_ntoa(val[8:12])
                self.received += 1
                entry = nodes.get(dst) if dst is not None else None
                if entry is None:
                    self.unrouted += 1
                    continue
                now = time.monotonic()
                entry[1].receive_datagram(data, (src[0], src[1]), now - entry[2])
                self._after(dst, entry, on_event, now)  # type: ignore[arg-type]
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _t, addr = heapq.heappop(self.timers)
            entry = nodes.get(addr)
            if entry is None:
                continue
            t = entry[1].get_timer()
            if t is not None and t + entry[2] <= now:
                entry[1].handle_timer(now - entry[2])
                self._after(addr, entry, on_event, now)

    def _after(self, addr: str, entry: tuple[int, NodeCore, float],
               on_event: Callable[[int, NodeCore, object, float], None], now: float) -> None:
        i, node, _offset = entry
        while (ev := node.next_event()) is not None:
            on_event(i, node, ev, now)
        if addr in self.nodes:
            self.flush(addr, node)


def _dc_stats(k: int = 0) -> dict[str, Any]:
    from ntmobile.runtime.control import query

    return query(control_name(k), cmd="stats", timeout=60.0)


def _sum_stats(replicas: int) -> dict[str, Any]:
    """The replicas' stats added up (counters, sessions, database statements)."""
    total: dict[str, Any] = {"stats": {}, "sessions": 0, "relays": 0, "db_statements": 0, "db_transactions": 0,
                             "per_replica": []}
    for k in range(replicas):
        st = _dc_stats(k)
        for key, v in st["stats"].items():
            total["stats"][key] = total["stats"].get(key, 0) + v
        total["sessions"] += st.get("sessions") or 0
        total["relays"] += st.get("relays") or 0
        total["db_statements"] += st.get("db_statements") or 0
        total["db_transactions"] += st.get("db_transactions") or 0
        total["per_replica"].append({"registrations": st["stats"].get("registrations", 0),
                                     "sessions": st.get("sessions")})
    return total


def run_inner(nodes: int, paths: int, window: int, workdir: Path, log: Callable[[str], None],
              store: str = "sqlite", replicas: int = 1) -> dict[str, Any]:
    """One run in this (private) namespace: ``store`` "sqlite" (one DC) or "postgresql" (``replicas``
    DC replicas on one PostgreSQL server started here; node i registers with replica i % replicas,
    the relay with replica 0, so paths of the other replicas' nodes go through a replica channel)."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    pg = None
    if store == "postgresql":
        from ntmobile.lab.postgres import PostgresServer

        pg = PostgresServer(workdir / "pg", port=5432)  # our own namespace: no other server's port
        pg.start()
        database = pg.dsn()
    else:
        replicas = 1
        database = str(workdir / "dc.sqlite")
    report: dict[str, Any] = {"store": store, "replicas": replicas, "nodes": nodes, "paths": paths,
                              "window": window}
    dcs: list[subprocess.Popen[bytes]] = []
    dc_logs: list[Any] = []
    rs: subprocess.Popen[bytes] | None = None
    stop_dns = threading.Event()
    try:
        t0 = time.monotonic()
        dc_id = enrol_bulk_pg(database, nodes) if pg is not None else enrol_bulk(Path(database), nodes)
        enrol_s = time.monotonic() - t0
        report["enrol_seconds"] = round(enrol_s, 2)
        log(f"enrolled {nodes} nodes in {enrol_s:.1f} s ({store})")
        serve_gn_zone(stop_dns)
        prof = os.environ.get("NTM_BENCH_PROFILE_DC")  # a file name: run the DC under cProfile (development)
        for k in range(replicas):
            addr = replica_addr(k)
            others = "".join(f'[[replicas]]\naddress = "{replica_addr(j)}"\nport = {DC_PORT}\n'
                             for j in range(replicas) if j != k)
            cfg = workdir / f"dc{k}.toml"
            cfg.write_text(f'domain = "{DOMAIN}"\naddress = "{addr}"\ndatabase = "{database}"\nport = {DC_PORT}\n'
                           f'listen4 = "{addr}"\nresolvers = ["{DNS_ADDR}"]\ncontrol = "{control_name(k)}"\n'
                           f'idle_timeout = 600\nrsn_allow = ["{GN_ADDR}/32"]\n'
                           + (f'metrics = "{addr}:9410"\n' if pg is not None else "")
                           + f'[pools]\nvip4 = "{POOLS.vip4}"\nvip6 = "{POOLS.vip6}"\n'
                           f'gn_vip4 = "{POOLS.gn_vip4}"\ngn_vip6 = "{POOLS.gn_vip6}"\n' + others)
            dc_log = (workdir / f"dc{k}.log").open("wb")
            dc_logs.append(dc_log)
            dcs.append(subprocess.Popen([sys.executable, *(["-m", "cProfile", "-o", f"{prof}.{k}"] if prof else []),
                                         "-m", "ntmobile", "dc", "run", "-c", str(cfg)],
                                        stdout=dc_log, stderr=subprocess.STDOUT))
        rs = subprocess.Popen([sys.executable, "-c", "import sys; from ntmobile.bench.control_plane import relay_main; "
                               f"relay_main({dc_id.hex()!r}, {max(paths, 1) + 16})"], stdout=subprocess.PIPE)
        if pg is None:
            report["cpus"] = pin_cpus(dcs[0].pid, rs.pid)
        else:
            # replicas, PostgreSQL, relay and generator: more busy processes than CPUs; the scheduler
            # places them (pinning the replicas to one CPU each would leave the database none).
            report["cpus"] = {"dc": "unpinned", "generator": "unpinned"}

        def dc_cpu() -> float:
            return sum(cpu_seconds(d.pid) for d in dcs)

        def dc_sys() -> float:
            return sum(cpu_split(d.pid)[1] for d in dcs)

        def dc_rss() -> int:
            return sum(rss_kib(d.pid) for d in dcs)

        def db_cpu() -> float:
            return tree_sum(pg.pid, cpu_seconds) if pg is not None and pg.pid is not None else 0.0

        deadline = time.monotonic() + 30
        while True:
            for k, d in enumerate(dcs):
                if d.poll() is not None:
                    raise RuntimeError(f"DC {k} exited: {(workdir / f'dc{k}.log').read_text()[-1500:]}")
            try:
                st = _sum_stats(replicas)
                if _dc_stats(0).get("relays", 0) >= 1:
                    break
            except (ConnectionError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the DC or the relay did not come up within 30 s")
            time.sleep(0.05)
        rss0 = dc_rss()
        report["dc_rss_kib_start"] = rss0
        stats0 = st["stats"]
        stmts0, txs0 = st["db_statements"], st["db_transactions"]
        drops0 = udp_drops()
        gen = Generator(dc_id, [(replica_addr(k), DC_PORT) for k in range(replicas)])
        lat_reg: list[float] = []
        started: dict[int, float] = {}
        failures: list[str] = []
        registered = [0] * nodes
        keep = set(range(paths))
        just_registered: list[int] = []

        def on_reg(i: int, node: NodeCore, ev: object, now: float) -> None:
            if isinstance(ev, RegistrationFailed):
                failures.append(f"n{i}: {ev.status.name} {ev.reason}")
            if node.registered and i in started:
                lat_reg.append(now - started.pop(i))
                registered[i] += 1
                just_registered.append(i)

        # phase 1: registrations. Every node's request is made first (not timed: key generation
        # is the node's work, and the generator shares its core with the relay, not with the DC).
        t_prep = time.monotonic()
        prepared: list[tuple[NodeCore, list[Any]] | None] = [gen.prepare(i) for i in range(nodes)]
        report["prepare_seconds"] = round(time.monotonic() - t_prep, 2)
        log(f"registering {nodes} nodes, {window} in flight ...")
        cpu_dc0, cpu_gen0, cpu_db0 = dc_cpu(), own_cpu_seconds(), db_cpu()
        sys_dc0 = dc_sys()
        t1 = time.monotonic()
        nxt = 0
        limit = t1 + max(60.0, nodes / 200)
        while (nxt < nodes or started) and time.monotonic() < limit:
            while nxt < nodes and len(started) < window:
                now = time.monotonic()
                started[nxt] = now
                prep = prepared[nxt]
                assert prep is not None
                prepared[nxt] = None
                gen.launch(nxt, prep, now)
                nxt += 1
            gen.poll(on_reg, 0.005)
            for idx in just_registered:
                if idx not in keep:
                    gen.drop(idx)  # the DC keeps its session; the generator needs the core no more
            just_registered.clear()
        reg_s = time.monotonic() - t1
        cpu_dc1, cpu_gen1, cpu_db1 = dc_cpu(), own_cpu_seconds(), db_cpu()
        sys_dc1 = dc_sys()
        sent1, recv1 = gen.sent, gen.received
        rss1 = dc_rss()
        st1 = _sum_stats(replicas)
        done = sum(1 for r in registered if r)
        report["registration"] = {
            "completed": done, "seconds": round(reg_s, 2), "per_s": round(done / reg_s) if reg_s else 0,
            "messages": sent1 + recv1, "messages_per_s": round((sent1 + recv1) / reg_s) if reg_s else 0,
            "p50_ms": round(percentile(lat_reg, 50) * 1000, 2), "p99_ms": round(percentile(lat_reg, 99) * 1000, 2),
            "max_ms": round(max(lat_reg, default=0) * 1000, 2), "failures": failures[:5], "failed": len(failures),
            "dc_registrations": st1["stats"].get("registrations", 0) - stats0.get("registrations", 0),
            "dc_registration_retransmits": st1["stats"].get("registration_retransmits", 0)
            - stats0.get("registration_retransmits", 0),
            "registered_twice": sum(1 for r in registered if r > 1),
            "dc_cpu_us_each": round((cpu_dc1 - cpu_dc0) / max(done, 1) * 1e6, 1),
            "dc_cpu_busy": round((cpu_dc1 - cpu_dc0) / reg_s, 2) if reg_s else 0,
            "dc_cpu_system_share": round((sys_dc1 - sys_dc0) / max(cpu_dc1 - cpu_dc0, 1e-9), 2),
            "generator_cpu_us_each": round((cpu_gen1 - cpu_gen0) / max(done, 1) * 1e6, 1),
        }
        if pg is not None:
            report["registration"].update({
                "db_statements_each": round((st1["db_statements"] - stmts0) / max(done, 1), 3),
                "db_transactions_each": round((st1["db_transactions"] - txs0) / max(done, 1), 3),
                # every statement is one round trip, every transaction block two more (BEGIN, COMMIT)
                "db_round_trips_each": round((st1["db_statements"] - stmts0 + 2 * (st1["db_transactions"] - txs0))
                                             / max(done, 1), 3),
                "db_cpu_us_each": round((cpu_db1 - cpu_db0) / max(done, 1) * 1e6, 1),
                "db_cpu_busy": round((cpu_db1 - cpu_db0) / reg_s, 2) if reg_s else 0,
                "per_replica": st1["per_replica"],
            })
        report["dc_rss_kib_registered"] = rss1
        report["dc_bytes_per_registered_node"] = round((rss1 - rss0) * 1024 / max(done, 1))
        if pg is not None and pg.pid is not None:
            report["db_rss_kib_registered"] = round(tree_sum(pg.pid, rss_kib))
        report["dc_sessions"] = st1.get("sessions")
        log(json.dumps(report["registration"]))

        # phase 2: RS-N path set-ups (the first request warms the DC's discovery cache)
        lat_path: list[float] = []
        pstarted: dict[int, float] = {}
        pfail: list[str] = []
        ready = [0] * paths

        def on_path(i: int, node: NodeCore, ev: object, now: float) -> None:
            if isinstance(ev, PathReady) and i in pstarted:
                lat_path.append(now - pstarted.pop(i))
                ready[i] += 1
            elif isinstance(ev, PathFailed):
                pstarted.pop(i, None)
                pfail.append(f"n{i}: {ev.status.name} {ev.reason}")

        if paths:
            warm = gen.nodes[node_addr(0)][1]
            pstarted[0] = time.monotonic()
            warm.request_path("www.gn.example", gen.clock(node_addr(0), pstarted[0]))
            gen.flush(node_addr(0), warm)
            wdl = time.monotonic() + 10
            while pstarted and time.monotonic() < wdl:
                gen.poll(on_path, 0.01)
            report["first_path_ms"] = round(lat_path[0] * 1000, 1) if lat_path else None
            lat_path.clear()
        log(f"setting up {max(paths - 1, 0)} RS-N paths, {window} in flight ...")
        sent2, recv2 = gen.sent, gen.received
        st2a = _sum_stats(replicas)
        cpu_dc2, cpu_gen2, cpu_rs2 = dc_cpu(), own_cpu_seconds(), cpu_seconds(rs.pid)
        t2 = time.monotonic()
        nxt = 1
        limit = t2 + max(60.0, paths / 100)
        while (nxt < paths or pstarted) and time.monotonic() < limit:
            while nxt < paths and len(pstarted) < window:
                now = time.monotonic()
                addr = node_addr(nxt)
                node = gen.nodes[addr][1]
                pstarted[nxt] = now
                node.request_path("www.gn.example", gen.clock(addr, now))
                gen.flush(addr, node)
                nxt += 1
            gen.poll(on_path, 0.005)
        path_s = time.monotonic() - t2
        cpu_dc3, cpu_gen3, cpu_rs3 = dc_cpu(), own_cpu_seconds(), cpu_seconds(rs.pid)
        st2 = _sum_stats(replicas)
        for i in range(paths):
            gen.drop(i)
        n_ok = sum(1 for r in ready[1:] if r)
        report["paths_phase"] = {
            "completed": n_ok, "seconds": round(path_s, 2), "per_s": round(n_ok / path_s) if path_s else 0,
            "messages": gen.sent - sent2 + gen.received - recv2,
            "messages_per_s": round((gen.sent - sent2 + gen.received - recv2) / path_s) if path_s else 0,
            "p50_ms": round(percentile(lat_path, 50) * 1000, 2), "p99_ms": round(percentile(lat_path, 99) * 1000, 2),
            "max_ms": round(max(lat_path, default=0) * 1000, 2), "failures": pfail[:5], "failed": len(pfail),
            "dc_paths_directed": st2["stats"].get("paths_directed", 0) - st2a["stats"].get("paths_directed", 0),
            "dc_direction_retransmits": st2["stats"].get("direction_retransmits", 0)
            - st2a["stats"].get("direction_retransmits", 0),
            "ready_twice": sum(1 for r in ready if r > 1),
            "dc_cpu_us_each": round((cpu_dc3 - cpu_dc2) / max(n_ok, 1) * 1e6, 1),
            "dc_cpu_busy": round((cpu_dc3 - cpu_dc2) / path_s, 2) if path_s else 0,
            "relay_cpu_us_each": round((cpu_rs3 - cpu_rs2) / max(n_ok, 1) * 1e6, 1),
            "generator_cpu_us_each": round((cpu_gen3 - cpu_gen2) / max(n_ok, 1) * 1e6, 1),
        }
        log(json.dumps(report["paths_phase"]))
        report["dc_rss_kib_end"] = dc_rss()
        report["node_retransmissions"] = gen.retransmissions
        report["unrouted_datagrams"] = gen.unrouted
        report["kernel_udp_drops"] = udp_drops() - drops0
        report["dc_stats_end"] = st2["stats"]
    finally:
        for p in [*dcs, *([rs] if rs is not None else [])]:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
        if rs is not None:
            try:
                out, _ = rs.communicate(timeout=10)
                report["relay"] = json.loads(out.decode().strip().splitlines()[-1]) if out.strip() else None
            except (subprocess.TimeoutExpired, ValueError):
                os.kill(rs.pid, signal.SIGKILL)
                rs.wait()
        for d in dcs:
            try:
                d.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(d.pid, signal.SIGKILL)
                d.wait()
        for f in dc_logs:
            f.close()
        stop_dns.set()
        if pg is not None:
            pg.stop()
    return report


TARGETS = {"nodes": 100_000, "registrations_per_s": 5000, "paths_per_s": 1000, "p99_ms": 50.0,
           "bytes_per_node": 2048}


def to_markdown(rep: dict[str, Any]) -> str:
    r, p = rep.get("registration", {}), rep.get("paths_phase", {})

    def ok(cond: bool) -> str:
        return "met" if cond else "**missed**"

    lines = [
        f"# ntm bench control-plane ({rep['nodes']} nodes, {rep['paths']} paths, {rep['window']} in flight)", "",
        "| figure | measured | target | |", "|---|---|---|---|",
        f"| registered nodes | {r.get('completed')} | {TARGETS['nodes']} | "
        f"{ok(r.get('completed', 0) >= TARGETS['nodes'])} |",
        f"| registrations/s | {r.get('per_s')} | ≥ {TARGETS['registrations_per_s']} | "
        f"{ok(r.get('per_s', 0) >= TARGETS['registrations_per_s'])} |",
        f"| registration p50 / p99 ms | {r.get('p50_ms')} / {r.get('p99_ms')} | p99 ≤ {TARGETS['p99_ms']} | "
        f"{ok(r.get('p99_ms', 1e9) <= TARGETS['p99_ms'])} |",
        f"| RS-N path set-ups/s | {p.get('per_s')} | ≥ {TARGETS['paths_per_s']} | "
        f"{ok(p.get('per_s', 0) >= TARGETS['paths_per_s'])} |",
        f"| path set-up p50 / p99 ms | {p.get('p50_ms')} / {p.get('p99_ms')} | p99 ≤ {TARGETS['p99_ms']} | "
        f"{ok(p.get('p99_ms', 1e9) <= TARGETS['p99_ms'])} |",
        f"| DC memory per registered node | {rep.get('dc_bytes_per_registered_node')} B | "
        f"≤ {TARGETS['bytes_per_node']} B | "
        f"{ok(rep.get('dc_bytes_per_registered_node', 1e9) <= TARGETS['bytes_per_node'])} |",
        f"| messages/s (registration, paths) | {r.get('messages_per_s')}, {p.get('messages_per_s')} | | |",
        "",
        f"Exactly once: DC registrations {r.get('dc_registrations')} for {r.get('completed')} completed "
        f"(DC retransmits seen {r.get('dc_registration_retransmits')}, nodes registered twice "
        f"{r.get('registered_twice')}); DC paths directed {p.get('dc_paths_directed')} for {p.get('completed')} "
        f"(direction retransmits {p.get('dc_direction_retransmits')}, ready twice {p.get('ready_twice')}); "
        f"node retransmissions {rep.get('node_retransmissions')}; kernel UDP drops {rep.get('kernel_udp_drops')}.",
        f"CPU per registration: DC {r.get('dc_cpu_us_each')} µs (busy {r.get('dc_cpu_busy')} of a core, "
        f"{r.get('dc_cpu_system_share')} of it in the kernel), generator {r.get('generator_cpu_us_each')} µs; "
        f"per path set-up: DC {p.get('dc_cpu_us_each')} µs (busy {p.get('dc_cpu_busy')}), relay "
        f"{p.get('relay_cpu_us_each')} µs, generator {p.get('generator_cpu_us_each')} µs.",
        f"CPUs: DC {rep.get('cpus', {}).get('dc')}, generator and relay {rep.get('cpus', {}).get('generator')}. "
        f"The generator made every node's Registration Request before the timed phase "
        f"({rep.get('prepare_seconds')} s); each node's clock starts when its request is sent.",
        f"DC RSS {rep.get('dc_rss_kib_start')} KiB at start, {rep.get('dc_rss_kib_registered')} KiB registered, "
        f"{rep.get('dc_rss_kib_end')} KiB at the end; first path (discovery, relay probe) "
        f"{rep.get('first_path_ms')} ms.",
    ]
    return "\n".join(lines)


def run_bench(nodes: int, paths: int, window: int, log: Callable[[str], None] = print, *, store: str = "sqlite",
              replicas: int = 1) -> dict[str, Any]:
    """Re-run this module in a fresh network namespace (needs root) and return its report."""
    if shutil.which("unshare") is None:
        raise RuntimeError("unshare not found: install util-linux (apt-get install util-linux)")
    with tempfile.TemporaryDirectory(prefix="ntm-cp-") as tmp:
        out = Path(tmp) / "report.json"
        cmd = ["unshare", "--net", "--", sys.executable, "-m", "ntmobile.bench.control_plane", str(nodes), str(paths),
               str(window), tmp, str(out), store, str(replicas)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                log(line.decode(errors="replace").rstrip())
            proc.wait()
        except BaseException:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            raise
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"the control-plane bench failed (exit {proc.returncode})")
        result: dict[str, Any] = json.loads(out.read_text())
        result["calibration"] = host_calibration()
        return result


#: PostgreSQL replicas against the single SQLite DC in the same run (issue 17).
PG_TARGETS = {"ratio": 0.7, "p99_ms": 50.0}


def host_load() -> dict[str, Any]:
    """What else the (shared) machine was doing: load averages and the CPU count."""
    la = os.getloadavg()
    return {"loadavg_1_5_15": [round(x, 2) for x in la], "cpus": os.cpu_count()}


def run_compare(nodes: int, paths: int, window: int, replicas: int,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """The single SQLite DC, then ``replicas`` PostgreSQL replicas, same sizes, one after the other
    (each in a fresh namespace); the report holds both and the registrations/s ratio."""
    load_before = host_load()
    log(f"host load before: {load_before}")
    sq = run_bench(nodes, paths, window, log, store="sqlite")
    load_mid = host_load()
    pgr = run_bench(nodes, paths, window, log, store="postgresql", replicas=replicas)
    sq_rate, pg_rate = sq["registration"]["per_s"], pgr["registration"]["per_s"]
    # lost: neither completed nor refused with a status; twice: completed or counted more than once
    reg, ph = pgr["registration"], pgr["paths_phase"]
    lost = {
        "registrations": reg["completed"] + reg["failed"] != nodes or reg["dc_registrations"] != reg["completed"]
        or reg["registered_twice"] != 0,
        "paths": ph["completed"] + ph["failed"] != max(paths - 1, 0) or ph["dc_paths_directed"] != ph["completed"]
        or ph["ready_twice"] != 0,
    }
    return {"nodes": nodes, "paths": paths, "window": window, "replicas": replicas, "sqlite": sq,
            "postgresql": pgr, "ratio": round(pg_rate / sq_rate, 3) if sq_rate else 0.0,
            "lost_or_twice": lost, "host_load": {"before": load_before, "between": load_mid, "after": host_load()},
            "calibration": pgr.get("calibration")}


def compare_markdown(rep: dict[str, Any]) -> str:
    sq, pg = rep["sqlite"], rep["postgresql"]
    rs, rp = sq["registration"], pg["registration"]
    ps, pp = sq["paths_phase"], pg["paths_phase"]

    def ok(cond: bool) -> str:
        return "met" if cond else "**missed**"

    lost = rep["lost_or_twice"]
    nothing_lost = not lost["registrations"] and not lost["paths"]
    hl = rep["host_load"]
    lines = [
        f"# ntm bench control-plane: {rep['replicas']} PostgreSQL replicas beside one SQLite DC "
        f"({rep['nodes']} nodes, {rep['paths']} paths, {rep['window']} in flight)", "",
        f"| figure | SQLite, 1 DC | PostgreSQL, {rep['replicas']} replicas | target | |", "|---|---|---|---|---|",
        f"| registered nodes | {rs.get('completed')} | {rp.get('completed')} | {rep['nodes']} | "
        f"{ok(rp.get('completed') == rep['nodes'])} |",
        f"| registrations/s | {rs.get('per_s')} | {rp.get('per_s')} | ratio ≥ {PG_TARGETS['ratio']} | "
        f"{rep['ratio']}: {ok(rep['ratio'] >= PG_TARGETS['ratio'])} |",
        f"| registration p50 / p99 (max) ms | {rs.get('p50_ms')} / {rs.get('p99_ms')} ({rs.get('max_ms')}) | "
        f"{rp.get('p50_ms')} / {rp.get('p99_ms')} ({rp.get('max_ms')}) | p99 ≤ {PG_TARGETS['p99_ms']} | "
        f"{ok(rp.get('p99_ms', 1e9) <= PG_TARGETS['p99_ms'])} |",
        f"| RS-N path set-ups/s | {ps.get('per_s')} | {pp.get('per_s')} | | |",
        f"| path set-up p50 / p99 (max) ms | {ps.get('p50_ms')} / {ps.get('p99_ms')} ({ps.get('max_ms')}) | "
        f"{pp.get('p50_ms')} / {pp.get('p99_ms')} ({pp.get('max_ms')}) | p99 ≤ {PG_TARGETS['p99_ms']} | "
        f"{ok(pp.get('p99_ms', 1e9) <= PG_TARGETS['p99_ms'])} |",
        f"| DC memory per registered node (all replicas) | {sq.get('dc_bytes_per_registered_node')} B | "
        f"{pg.get('dc_bytes_per_registered_node')} B | | |",
        f"| DC CPU per registration (busy, cores) | {rs.get('dc_cpu_us_each')} µs ({rs.get('dc_cpu_busy')}) | "
        f"{rp.get('dc_cpu_us_each')} µs ({rp.get('dc_cpu_busy')}) | | |",
        f"| PostgreSQL CPU per registration (busy) | | {rp.get('db_cpu_us_each')} µs ({rp.get('db_cpu_busy')}) | | |",
        f"| database round trips per registration = statements + 2 × transaction blocks | | "
        f"{rp.get('db_round_trips_each')} = {rp.get('db_statements_each')} + 2 × "
        f"{rp.get('db_transactions_each')} | | |",
        f"| refused with a status (registrations, paths) | {rs.get('failed')}, {ps.get('failed')} | "
        f"{rp.get('failed')}, {pp.get('failed')} | 0 | {ok(not rp.get('failed') and not pp.get('failed'))} |",
        f"| lost or applied twice | {'none' if rs.get('registered_twice') == 0 else 'some'} | "
        f"{'none' if nothing_lost else 'some: ' + json.dumps(lost)} | none | {ok(nothing_lost)} |",
        "",
        f"Per replica (registrations, sessions): {rp.get('per_replica')}. PostgreSQL RSS with registered nodes "
        f"{pg.get('db_rss_kib_registered')} KiB (postmaster and backends, shared buffers counted per process). "
        f"Node retransmissions SQLite {sq.get('node_retransmissions')}, PostgreSQL {pg.get('node_retransmissions')}; "
        f"kernel UDP drops {sq.get('kernel_udp_drops')}, {pg.get('kernel_udp_drops')}. "
        f"CPUs: SQLite DC pinned {sq.get('cpus', {}).get('dc')}, replicas and database unpinned.",
        f"Host load (1/5/15 min) before {hl['before']['loadavg_1_5_15']}, between {hl['between']['loadavg_1_5_15']}, "
        f"after {hl['after']['loadavg_1_5_15']} on {hl['before']['cpus']} CPUs (the machine is shared: other "
        "work ran at the same time).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # run_inner's clean-up runs on SIGTERM too
    n, m, w, wd, outp = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5])
    kind, nrep = (sys.argv[6], int(sys.argv[7])) if len(sys.argv) > 7 else ("sqlite", 1)
    rep = run_inner(n, m, w, wd, lambda s: print(s, flush=True), store=kind, replicas=nrep)
    outp.write_text(json.dumps(rep))
