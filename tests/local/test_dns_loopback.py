"""Loopback integration: unmodified nsd and unbound plus our DC responder behind `serve_dns`.

No root needed. Everything binds one random unprivileged port on four addresses of a random
127.53.R.0/24 block (never port 53, never outside 127.0.0.0/8):

    127.53.R.1  nsd: "." (the root, delegating example.), "example." (delegating a. and b.example.)
    127.53.R.2  nsd (same process): "b.example." (an ordinary zone: www has A and AAAA, no marker)
    127.53.R.3  our DC: "a.example." (SOA, NS, the DC marker TXT, node mn)
    127.53.R.4  unbound, the recursive resolver

Glue cannot carry a port, so unbound reaches each zone through a stub-zone entry (`stub-addr:
ip@port`) instead of following the referrals itself; the zone data it relays (NS sets, glue, SOAs,
NXDOMAINs) are real answers of nsd and of our DC, and `Discovery` walks the delegation from those
answers and queries the NS hosts directly (`ns_port`). A second variant drives `Discovery` with
nsd itself as the "resolver" (authoritative-only), which exercises the referral path.
"""

import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import pytest

from ntmobile.core.discovery import Discovery, DiscoveryResult, Outcome
from ntmobile.core.dnsauth import (
    AuthoritativeZone,
    DcMarker,
    NameServer,
    NodeRecords,
    SoaFields,
    format_marker,
)
from ntmobile.runtime.dns import DnsServer, Handler, run_discovery, serve_dns

NSD = shutil.which("nsd") or "/usr/sbin/nsd"
UNBOUND = shutil.which("unbound") or "/usr/sbin/unbound"
KEY = bytes(range(100, 132))
MARKER = format_marker("192.0.2.53", 4500, KEY)
T = TypeVar("T")

pytestmark = pytest.mark.skipif(
    not (os.path.exists(NSD) and os.path.exists(UNBOUND)), reason="nsd and unbound are not installed"
)


@dataclass
class Lab:
    base: str  # "127.53.R"
    port: int
    dir: Path

    def addr(self, host: int) -> str:
        return f"{self.base}.{host}"

    @property
    def resolver(self) -> tuple[str, int]:
        return (self.addr(4), self.port)


def _free_lab() -> tuple[str, int]:
    """A 127.53.R block and a port free for UDP and TCP on .1-.4 (other helpers share this host)."""
    rng = random.SystemRandom()
    for _ in range(50):
        base = f"127.53.{rng.randrange(1, 255)}"
        port = rng.randrange(20000, 60000)
        socks: list[socket.socket] = []
        try:
            for host in range(1, 5):
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    s = socket.socket(socket.AF_INET, kind)
                    socks.append(s)
                    s.bind((f"{base}.{host}", port))
            return base, port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free loopback block/port found")


def _descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of every descendant: the start time guards against PID reuse."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append((int(entry), fields[19]))
    out: list[tuple[int, str]] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child[0])
    return out


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server we started and whatever it forked, by PID."""
    children = _descendants(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    _wait_gone(children, 5.0)
    for child, started in children:
        if _alive(child, started):
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
    _wait_gone(children, 5.0)


def _wait_gone(procs: list[tuple[int, str]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(_alive(p, s) for p, s in procs) and time.monotonic() < deadline:
        time.sleep(0.05)  # poll until the forked server processes are gone, bounded


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) from /proc/PID/stat, None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[-1].split()
    except OSError:
        return None
    return fields[0], fields[19]


def _alive(pid: int, started: str) -> bool:
    """The same process (same start time) is still running and not a zombie."""
    st = _stat(pid)
    return st is not None and st[1] == started and st[0] != "Z"


def _wait_answer(proc: subprocess.Popen[bytes], log: Path, where: tuple[str, int], name: str, rdtype: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}):\n{log.read_text(errors='replace')}")
        try:
            r = dns.query.udp(dns.message.make_query(name, rdtype), where[0], port=where[1], timeout=0.2)
            if r.rcode() == dns.rcode.NOERROR:
                return
        except (dns.exception.Timeout, OSError):
            pass
        time.sleep(0.05)  # poll interval while waiting for readiness, bounded by the deadline
    raise RuntimeError(f"{name}/{rdtype} not answered at {where} in time:\n{log.read_text(errors='replace')}")


def _write_zones(lab: Lab) -> None:
    b = lab.base
    (lab.dir / "root.zone").write_text(
        f"""$ORIGIN .
$TTL 300
@ IN SOA ns.root-servers.test. hostmaster.test. 1 3600 600 86400 30
@ IN NS ns.root-servers.test.
ns.root-servers.test. IN A {b}.1
example. IN NS ns.example.
ns.example. IN A {b}.1
"""
    )
    (lab.dir / "example.zone").write_text(
        f"""$ORIGIN example.
$TTL 300
@ IN SOA ns.example. hostmaster.example. 1 3600 600 86400 30
@ IN NS ns.example.
ns IN A {b}.1
a IN NS dc.a
dc.a IN A {b}.3
b IN NS ns.b
ns.b IN A {b}.2
"""
    )
    (lab.dir / "b.zone").write_text(
        f"""$ORIGIN b.example.
$TTL 300
@ IN SOA ns.b.example. hostmaster.b.example. 1 3600 600 86400 20
@ IN NS ns
ns IN A {b}.2
www IN A 192.0.2.10
www IN AAAA 2001:db8::10
"""
    )


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    base, port = _free_lab()
    lab = Lab(base, port, tmp_path_factory.mktemp("dnslab"))
    assert port != 53 and base.startswith("127.")
    _write_zones(lab)
    d = lab.dir
    (d / "nsd.conf").write_text(
        f"""server:
  ip-address: {base}.1
  ip-address: {base}.2
  port: {port}
  do-ip6: no
  username: ""
  chroot: ""
  database: ""
  zonelistfile: "{d}/zone.list"
  pidfile: "{d}/nsd.pid"
  xfrdfile: "{d}/xfrd.state"
  xfrdir: "{d}"
  zonesdir: "{d}"
  logfile: "{d}/nsd.log"
  server-count: 1
  verbosity: 1
remote-control:
  control-enable: no
zone:
  name: "."
  zonefile: "root.zone"
zone:
  name: "example."
  zonefile: "example.zone"
zone:
  name: "b.example."
  zonefile: "b.zone"
"""
    )
    (d / "unbound.conf").write_text(
        f"""server:
  interface: {base}.4
  port: {port}
  outgoing-interface: {base}.4
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{d}"
  pidfile: "{d}/unbound.pid"
  use-syslog: no
  logfile: ""
  verbosity: 1
  do-ip6: no
  do-not-query-localhost: no
  module-config: "iterator"
  access-control: 127.0.0.0/8 allow
  num-threads: 1
  so-reuseport: no
  outgoing-range: 64
  num-queries-per-thread: 32
remote-control:
  control-enable: no
stub-zone:
  name: "."
  stub-addr: {base}.1@{port}
stub-zone:
  name: "example."
  stub-addr: {base}.1@{port}
stub-zone:
  name: "b.example."
  stub-addr: {base}.2@{port}
stub-zone:
  name: "a.example."
  stub-addr: {base}.3@{port}
"""
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        nsd_log = d / "nsd.out"
        with open(nsd_log, "wb") as out:
            procs.append(subprocess.Popen([NSD, "-d", "-c", str(d / "nsd.conf")], stdout=out, stderr=out))
        _wait_answer(procs[-1], nsd_log, (f"{base}.1", port), "example.", "SOA")
        _wait_answer(procs[-1], nsd_log, (f"{base}.2", port), "b.example.", "SOA")
        ub_log = d / "unbound.out"
        with open(ub_log, "wb") as out:
            procs.append(subprocess.Popen([UNBOUND, "-d", "-c", str(d / "unbound.conf")], stdout=out, stderr=out))
        _wait_answer(procs[-1], ub_log, lab.resolver, "example.", "SOA")
        yield lab
    finally:
        for proc in reversed(procs):
            _stop(proc)


def dc_zone(lab: Lab) -> AuthoritativeZone:
    nodes = {dns.name.from_text("mn.a.example."): NodeRecords(a=("198.18.0.5",), aaaa=("2001:db8:c0ff:ee::5",))}
    return AuthoritativeZone(
        "a.example.",
        soa=SoaFields("dc.a.example.", "hostmaster.a.example."),
        nameservers=[NameServer("dc.a.example.", (lab.addr(3),))],
        marker=MARKER,
        lookup=nodes.get,
    )


def with_dc(lab: Lab, handler: Handler, body: Callable[[DnsServer], Awaitable[T]]) -> T:
    async def main() -> T:
        server = await serve_dns(handler, lab.addr(3), lab.port)
        try:
            return await body(server)
        finally:
            await server.close()

    return asyncio.run(main())


def discover(
    lab: Lab, fqdn: str, resolvers: list[tuple[str, int]] | None = None, *, deadline: float = 4.0
) -> DiscoveryResult:
    async def body(_server: DnsServer) -> DiscoveryResult:
        loop = asyncio.get_running_loop()
        d = Discovery(fqdn, resolvers or [lab.resolver], loop.time(), ns_port=lab.port, deadline=deadline)
        return await run_discovery(d)

    zone = dc_zone(lab)
    return with_dc(lab, lambda b, tcp: zone.respond(b, tcp=tcp), body)


def test_name_in_the_dc_zone_is_an_ntm_peer_with_the_marker(lab: Lab) -> None:
    result = discover(lab, "mn.a.example.")
    assert result.outcome is Outcome.NTM_PEER, result.evidence.lines
    assert result.marker == DcMarker("192.0.2.53", 4500, KEY)
    ev = result.evidence
    assert ev.zone == "a.example."
    assert ev.ns_names == ("dc.a.example.",)
    assert ev.ns_addresses == (lab.addr(3),)
    assert ev.txt == (MARKER,)
    assert ev.txt_server == f"{lab.addr(3)}:{lab.port}"


def test_name_in_an_nsd_zone_is_a_general_node_with_a_and_aaaa(lab: Lab) -> None:
    result = discover(lab, "www.b.example.")
    assert result.outcome is Outcome.GENERAL_NODE, result.evidence.lines
    assert result.a == ("192.0.2.10",) and result.aaaa == ("2001:db8::10",)
    ev = result.evidence
    assert ev.zone == "b.example." and ev.ns_names == ("ns.b.example.",)
    assert ev.ns_addresses == (lab.addr(2),) and ev.txt == ()
    assert ev.txt_server == f"{lab.addr(2)}:{lab.port}"
    assert result.ttl == 20  # nsd's NODATA for TXT: min(SOA TTL, MINIMUM)


@pytest.mark.parametrize("fqdn", ["nope.b.example.", "nobody.a.example.", "x.nozone.example."])
def test_missing_names_are_nxdomain(lab: Lab, fqdn: str) -> None:
    result = discover(lab, fqdn)
    assert result.outcome is Outcome.NXDOMAIN, result.evidence.lines


def test_unreachable_resolver_is_servfail(lab: Lab) -> None:
    result = discover(lab, "www.b.example.", resolvers=[(lab.addr(9), lab.port)], deadline=3.0)
    assert result.outcome is Outcome.SERVFAIL
    assert "no resolver answered" in result.reason or "deadline" in result.reason


def test_authoritative_only_nsd_as_resolver_follows_referrals(lab: Lab) -> None:
    nsd = [(lab.addr(1), lab.port)]
    peer = discover(lab, "mn.a.example.", resolvers=nsd)
    assert peer.outcome is Outcome.NTM_PEER, peer.evidence.lines
    assert any("referral NS dc.a.example." in line for line in peer.evidence.lines)
    gn = discover(lab, "www.b.example.", resolvers=nsd)
    assert gn.outcome is Outcome.GENERAL_NODE, gn.evidence.lines
    assert gn.a == ("192.0.2.10",)


def test_truncated_udp_answer_from_the_dc_is_fetched_over_tcp(lab: Lab) -> None:
    zone = dc_zone(lab)

    def truncating(query: bytes, tcp: bool) -> bytes | None:
        wire = zone.respond(query, tcp=tcp)
        if tcp or wire is None:
            return wire
        msg = dns.message.from_wire(wire)
        msg.answer, msg.authority, msg.additional = [], [], []
        msg.flags |= dns.flags.TC
        return msg.to_wire()

    async def body(server: DnsServer) -> tuple[DiscoveryResult, int, int]:
        loop = asyncio.get_running_loop()
        d = Discovery("mn.a.example.", [(lab.addr(1), lab.port)], loop.time(), ns_port=lab.port)
        return await run_discovery(d), d.stats.tcp_fallbacks, server.stats.tcp_queries

    result, fallbacks, tcp_queries = with_dc(lab, truncating, body)
    assert result.outcome is Outcome.NTM_PEER, result.evidence.lines
    assert fallbacks == 1 and tcp_queries == 1


def test_dc_server_survives_garbage_and_answers_udp_and_tcp(lab: Lab) -> None:
    zone = dc_zone(lab)

    async def body(server: DnsServer) -> None:
        loop = asyncio.get_running_loop()
        where = (lab.addr(3), lab.port)
        # Garbage over UDP: a 3-byte datagram (dropped) and a header with junk (FORMERR).
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.connect(where)
            await loop.sock_sendall(sock, b"\x01\x02\x03")
            await loop.sock_sendall(sock, b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff")
            reply = await asyncio.wait_for(loop.sock_recv(sock, 2048), 5)
        finally:
            sock.close()
        assert dns.message.from_wire(reply).rcode() == dns.rcode.FORMERR
        # Garbage over TCP: the connection is answered with FORMERR, then a real query works.
        reader, writer = await asyncio.open_connection(*where)
        junk = b"\x55\x66\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff"
        writer.write(len(junk).to_bytes(2, "big") + junk)
        q = dns.message.make_query("a.example.", "TXT")
        writer.write(q.to_wire(prepend_length=True))
        await writer.drain()
        answers = []
        for _ in range(2):
            n = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), 5), "big")
            answers.append(dns.message.from_wire(await reader.readexactly(n)))
        writer.close()
        await writer.wait_closed()
        assert answers[0].rcode() == dns.rcode.FORMERR
        assert answers[1].flags & dns.flags.AA and answers[1].answer
        # And UDP still works for a well-formed query.
        r = await asyncio.to_thread(
            dns.query.udp, dns.message.make_query("mn.a.example.", "AAAA"), where[0], 5, where[1]
        )
        assert [rd.to_text() for rr in r.answer for rd in rr] == ["2001:db8:c0ff:ee::5"]
        assert server.stats.udp_queries == 3 and server.stats.udp_responses == 2
        assert server.stats.tcp_queries == 2 and server.stats.handler_errors == 0

    with_dc(lab, lambda b, tcp: zone.respond(b, tcp=tcp), body)
