"""The NTM node daemon (`ntm node run`): NodeCore on one UDP socket, a TUN device carrying the
node's VIPs, the per-packet forwarder, the local DNS stub that turns lookups into tunnel set-ups,
netlink-driven handover, and a control socket for `ntm status`."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from ntmobile.core.discovery import Discovery, DiscoveryCache, DiscoveryResult, Outcome
from ntmobile.core.node import (
    DcProbed,
    LookupFallback,
    NodeConfig,
    NodeCore,
    PathClosed,
    PathFailed,
    PathInfo,
    PathProbed,
    PathReady,
    Registered,
    RegistrationFailed,
    StandbyGone,
    StandbyReady,
)
from ntmobile.core.stubpolicy import StubPolicy, failure_rcode, normalize
from ntmobile.core.timing import (
    DIRECTION_TIMEOUT,
    DISCOVERY_DEADLINE,
    FALLBACK_TTL,
    MOVE_KEEP,
    PATH_PROBE_TIMEOUT,
    TUNNEL_TIMEOUT,
)
from ntmobile.crypto.channel import PROCESS_POOL, REASSEMBLY_TIMEOUT, reassembly_snapshot
from ntmobile.dataplane.forwarder import PATH_MTU, FwdPath, NodeForwarder, gso_max_size, inner_mtu
from ntmobile.dataplane.tun import Tun, open_tun
from ntmobile.dataplane.udpio import UdpIo
from ntmobile.osops import netlink
from ntmobile.osops.iproute import set_gso_max_size
from ntmobile.osops.ping import icmp_echo
from ntmobile.osops.resolver import ResolverError
from ntmobile.wire import Capability, NatKind, PathMode, Status

from . import dnsclasses  # noqa: F401  (dnspython's IN rdata classes before any input)
from .config import ConfigError, Credentials, NodeSettings, group_id, parse_replica, reload_settings
from .control import serve_control
from .counters import counter_floor
from .dns import run_discovery
from .driver import CoreDriver
from .hostdns import HostDns, take_host_dns
from .metrics import DriverCollector, Metrics, MetricsServer, NodeParts, metrics_status, node_families, open_metrics
from .stub import StubServer
from .stubanswer import vip_answer

log = logging.getLogger("ntm.node")

#: TTL of the VIP answers the stub gives applications (the VIP is stable; the path is rebuilt on
#: demand when an application sends to a VIP whose path has expired).
ANSWER_TTL = 60
#: Upstream forwarding timeout for names that are not tunnelled.
UPSTREAM_TIMEOUT = 2.0


@dataclass
class _Held:
    """An application's DNS query held until its tunnel is ready; ``send`` takes the answer (once)."""

    query: dns.message.Message
    wire: bytes
    send: Callable[[bytes | None], None]
    qtype: int
    done: bool = False

    def answer(self, wire: bytes | None) -> None:
        if not self.done:
            self.done = True
            self.send(wire)


@dataclass
class _Lookup:
    fqdn: str
    held: list[_Held] = field(default_factory=list)


class NodeDaemon:
    def __init__(self, settings: NodeSettings, creds: Credentials) -> None:
        self.settings = settings
        self.creds = creds
        #: Which names the DNS stub tunnels (core.stubpolicy).
        self.stub_policy = StubPolicy(creds.name, settings.tunnel_domains)
        self.started = time.time()
        self.lookups: dict[int, _Lookup] = {}  # core request id -> held queries
        self.name_by_vip: dict[bytes, str] = {}
        self.paths: dict[bytes, PathInfo] = {}
        self.vips: tuple[str | None, str | None] = (None, None)
        self.addr_task: asyncio.Task[None] | None = None
        self._refreshing: set[str] = set()
        self.last_error: str | None = None
        #: Background tasks running (kept referenced until done).
        self._tasks: set[asyncio.Task[None]] = set()
        #: Wall-clock time of the latest handover the node detected (reported by `ntm status`).
        self.handover_at: float | None = None
        #: The host's resolver settings the node holds (runtime.hostdns) and the stub's upstream servers.
        self.host_dns = HostDns("none", settings.dns_listen)
        self.upstream: list[str] = list(settings.upstream)
        #: Lookups answered without the DC (dns_fallback), by outcome, and what discovery found meanwhile.
        self.fallback_stats: Counter[str] = Counter()
        self.fallback_cache = DiscoveryCache()
        #: SIGHUP reloads done, and the changed settings that wait for a restart.
        self.reloads = 0
        self.restart_needed: list[str] = []
        #: When each pending path request was asked (loop time; the set-up latency histogram).
        self._asked: dict[int, float] = {}
        #: Loop time of the address change whose re-registration is pending (the handover gap).
        self._handover_started: float | None = None
        self.metrics = Metrics("node")
        self.m_setup = self.metrics.histogram("path_setup_seconds", "From a path request (a DNS lookup, a packet "
                                              "to an expired path) to the path ready, by mode", ["mode"])
        self.m_failed = self.metrics.counter("path_failures", "Path requests that failed, by status", ["status"])
        #: DNS queries held until their tunnel was ready (or failed).
        self.dns_holds = 0
        self.m_gap = self.metrics.histogram("handover_gap_seconds", "From an address change the node saw to the "
                                            "DC's answer to its re-registration")
        self.metrics_server: MetricsServer | None = None
        self.metrics_error: str | None = None
        #: `ntm ping` / `ntm netcheck`: path requests and probes the control socket waits for.
        self._path_waiters: dict[int, list[asyncio.Future[PathInfo | str]]] = {}
        self._probe_waiters: dict[tuple[str, int], asyncio.Future[PathProbed | DcProbed]] = {}

    # -- start-up ---------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        self.tun = open_data_tun(s.tun, s.offload)
        caps = Capability.INNER6 | (Capability.GSO if offload_active(self.tun) else 0)
        cfg = NodeConfig(self.creds.name, self.creds.id_bytes, self.creds.psk, self.creds.dc_id_bytes,
                         (self.creds.dc_address, self.creds.dc_port), capabilities=int(caps),
                         fallback=s.dns_fallback == "upstream",
                         dc_replicas=tuple(parse_replica(r) for r in self.creds.dc_replicas))
        state = Path(s.state_dir) if s.state_dir else Path(s.credentials).parent
        counter = counter_floor(state / f"node-{self.creds.client_id}.counter")
        self.core = NodeCore(cfg, loop.time(), counter=counter)
        await netlink.async_link_up(self.tun.name, min(s.mtu, inner_mtu(PATH_MTU)))
        if self.tun.vnet_hdr:
            set_gso_max_size(self.tun.name, gso_max_size(PATH_MTU))
        self.driver = CoreDriver(self.core, self.on_event, data_hook=self.on_datagram, mark_signalling=True)
        await self.driver.start(s.port)
        self.udpio = UdpIo(self.driver.sockets(), self.on_capsule, self.driver.on_datagram, on_run=self.on_run)
        errors = self.driver.errors
        self.fwd = NodeForwarder(self.tun, self.udpio, path_mtu=PATH_MTU, on_miss=errors.guard("on_miss", self.on_miss),
                                 on_learn=errors.guard("on_learn", self.on_learn),
                                 on_standby=errors.guard("on_standby", self.on_standby))
        self.udpio.start(loop, self.driver.transports.values())
        loop.add_reader(self.tun.fileno(), errors.guard("TUN read", self.fwd.on_tun_readable))
        self.stub = stub = StubServer(self.on_dns_query, self.on_dns_query_held)
        await stub.start(s.dns_listen, s.dns_port)
        try:
            self.host_dns = take_host_dns(s.dns_integration, stub=s.dns_listen, tun=self.tun.name,
                                          domains=s.tunnel_domains, resolv_conf=Path(s.resolv_conf), state_dir=state)
        except ResolverError as exc:
            await stub.close()
            raise ConfigError(f"dns_integration = {s.dns_integration!r}: {exc}") from None
        self.upstream = list(s.upstream) or self.host_dns.upstream
        control = await serve_control(s.control, self.control, group=group_id(s.control_group))
        await self.start_metrics()
        self.core.register(await self.local_endpoints(), loop.time())
        self.driver.flush()
        self.addr_task = loop.create_task(self.watch_addresses())
        sweep = loop.create_task(self.expire_partials())
        errors.watch(self.addr_task, "address monitor")
        errors.watch(sweep, "reassembly sweep")
        log.info("node %s up: TUN %s, UDP port %d, DNS stub %s:%d, DC %s:%d", self.creds.name, self.tun.name, s.port,
                 s.dns_listen, s.dns_port, self.creds.dc_address, self.creds.dc_port)
        try:
            await stop.wait()
        finally:
            if self.addr_task is not None:
                self.addr_task.cancel()
            sweep.cancel()
            loop.remove_reader(self.tun.fileno())
            self.udpio.stop()
            control.close()
            if self.metrics_server is not None:
                self.metrics_server.close()
            try:
                self.host_dns.revert()
            except ResolverError as exc:
                log.error("%s", exc)
            await stub.close()
            self.driver.close()
            self.tun.close()

    async def start_metrics(self) -> None:
        """The /metrics endpoint (``metrics``)."""
        errors = self.driver.errors
        self.metrics.add(DriverCollector("node", self.driver.status, lambda: errors.by_where))
        parts = NodeParts(self.core, self.fwd, udpio=self.udpio, stub=self.stub, fallback=self.fallback_stats,
                          holds=lambda: self.dns_holds)
        self.metrics.add(lambda: node_families(parts))
        self.metrics_server, self.metrics_error = await open_metrics(self.settings.metrics, self.metrics, errors)

    def request_path(self, name: str) -> int:
        """Ask the core for a path to ``name`` (remembering when, for the set-up latency)."""
        now = self.driver.now()
        rid = self.core.request_path(name, now)
        if len(self._asked) < 4096:
            self._asked.setdefault(rid, now)
        return rid

    def _answered(self, request_ids: tuple[int, ...], mode: str | None) -> None:
        now = self.driver.now()
        for rid in request_ids:
            t = self._asked.pop(rid, None)
            if t is not None and mode is not None:
                self.m_setup.labels(mode).observe(now - t)

    def _wake(self, request_ids: tuple[int, ...], result: PathInfo | str) -> None:
        for rid in request_ids:
            for fut in self._path_waiters.pop(rid, []):
                if not fut.done():
                    fut.set_result(result)

    async def path_to(self, fqdn: str) -> PathInfo | str:
        """The path to ``fqdn``, set up if needed (as a DNS lookup would), or why there is none."""
        fut: asyncio.Future[PathInfo | str] = asyncio.get_running_loop().create_future()
        rid = self.request_path(fqdn)
        self._path_waiters.setdefault(rid, []).append(fut)
        self.driver.flush()
        try:
            return await asyncio.wait_for(fut, DIRECTION_TIMEOUT + TUNNEL_TIMEOUT)
        except TimeoutError:
            return f"no path within {DIRECTION_TIMEOUT + TUNNEL_TIMEOUT:.0f} s"
        finally:
            waiting = self._path_waiters.get(rid)
            if waiting is not None and fut in waiting:
                waiting.remove(fut)
                if not waiting:
                    del self._path_waiters[rid]

    async def _probe(self, kind: str, probe_id: int | None) -> PathProbed | DcProbed | None:
        if probe_id is None:
            return None
        fut: asyncio.Future[PathProbed | DcProbed] = asyncio.get_running_loop().create_future()
        self._probe_waiters[(kind, probe_id)] = fut
        self.driver.flush()
        try:
            return await asyncio.wait_for(fut, PATH_PROBE_TIMEOUT + 1.0)
        except TimeoutError:
            return None
        finally:
            self._probe_waiters.pop((kind, probe_id), None)

    async def ping(self, name: str) -> dict[str, Any]:
        """`ntm ping NAME`: the path to NAME (set up if needed), then one authenticated path probe."""
        fqdn = normalize(name)
        if fqdn in ("", "."):
            return {"error": "ping needs a name"}
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        path = await self.path_to(fqdn)
        if isinstance(path, str):
            return {"name": fqdn, "error": path}
        setup = loop.time() - t0
        ev = await self._probe("path", self.core.probe_path(path.path_id, loop.time()))
        out: dict[str, Any] = {"name": fqdn, "peer": path.peer_name, "path_id": path.path_id.hex(),
                               "peer_vip4": path.peer_vip4, "peer_vip6": path.peer_vip6,
                               "path_ms": round(setup * 1000, 2)}
        if not isinstance(ev, PathProbed):
            return out | {"mode": path.mode.name, "rs": path.rs_name, "error": "the path is not established yet"}
        out |= {"mode": ev.mode.name, "rs": ev.rs_name, "endpoint": list(ev.endpoint) if ev.endpoint else None,
                "rtt_ms": None if ev.rtt is None else round(ev.rtt * 1000, 3)}
        vip = path.peer_vip4 or path.peer_vip6
        if ev.mode is PathMode.RS_S and vip is not None:
            # The probe's answer came from the relay (it holds the leg keys, never the path's): the
            # RTT to the peer itself is an ICMP echo to its VIP through the tunnel, answered by its
            # kernel (None without CAP_NET_RAW or without an answer).
            out["peer_rtt_ms"] = await self._echo_rtt_ms(vip)
        return out

    @staticmethod
    async def _echo_rtt_ms(vip: str) -> float | None:
        try:
            got = await icmp_echo(vip, timeout=PATH_PROBE_TIMEOUT)
        except OSError:
            return None
        return None if got is None else round(got[1] / 1000, 3)

    async def netcheck(self) -> dict[str, Any]:
        """`ntm netcheck`: the node's endpoints, what the DC observed and classified, and one probe each
        to the DC and to every relay the node's paths go through (in parallel)."""
        loop = asyncio.get_running_loop()
        reg = self.core.registration
        relayed = [p for p in self.core.paths() if p["rs"] and p["established"] and p["endpoint"]]
        probes = [self._probe("dc", self.core.probe_dc(loop.time()))]
        probes += [self._probe("path", self.core.probe_path(bytes.fromhex(str(p["path_id"])), loop.time()))
                   for p in relayed]
        got = await asyncio.gather(*probes)
        dc_ev = got[0]
        dc_rtt = dc_ev.rtt if isinstance(dc_ev, DcProbed) else None
        relays: dict[str, dict[str, Any]] = {}
        for ev in got[1:]:
            if not isinstance(ev, PathProbed) or ev.rs_name is None:
                continue
            r = relays.setdefault(ev.rs_name, {"name": ev.rs_name, "endpoint": None, "rtt_ms": None, "paths": 0})
            r["paths"] += 1
            if ev.rtt is not None and (r["rtt_ms"] is None or ev.rtt * 1000 < r["rtt_ms"]):
                r["rtt_ms"] = round(ev.rtt * 1000, 3)
                r["endpoint"] = list(ev.endpoint) if ev.endpoint else None
        # The DC's classification (its probes, on the Keepalive answers: the DC probe above brought
        # the latest) when it has one; else the registration's NONE / NAT.
        nat = self.core.nat_class or (reg.nat if reg else None)
        return {
            "name": self.creds.name, "registered": self.core.registered,
            "local_endpoints": [list(e) for e in self.core.local_endpoints],
            "observed": list(reg.observed) if reg else None, "nat": nat.name if nat is not None else None,
            "dc": {"address": self.creds.dc_address, "port": self.creds.dc_port,
                   "rtt_ms": None if dc_rtt is None else round(dc_rtt * 1000, 3)},
            "relays": sorted(relays.values(), key=lambda r: str(r["name"])),
            "udp": {"to_dc": dc_rtt is not None,
                    # The DC's classification (its filter probe): can a host the node never sent to reach it?
                    "unsolicited_inbound": {NatKind.NONE: True, NatKind.OPEN: True, NatKind.CONE: False,
                                            NatKind.SYMMETRIC: False}.get(nat) if nat is not None else None},
        }

    async def expire_partials(self) -> None:
        """Partial GSO capsules leave on a timer, not only when more chunks arrive (the data path
        bypasses the core's timer; crypto.channel.ReassemblyPool)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(REASSEMBLY_TIMEOUT / 2)
            PROCESS_POOL.expire(loop.time())

    async def local_endpoints(self) -> tuple[tuple[str, int], ...]:
        eps: list[tuple[str, int]] = []
        for ifname, cidr in netlink.addresses_now():  # one rtnetlink dump, ~0.1 ms (no pyroute2 objects)
            if ifname in ("lo", self.settings.tun):
                continue
            ip = ipaddress.ip_interface(cidr).ip
            if ip.is_link_local or ip.is_loopback:
                continue
            eps.append((str(ip), self.settings.port))
        return tuple(eps)

    async def network_state(self) -> tuple[frozenset[tuple[str, int]], str | None]:
        """What handover depends on: the node's local endpoints, and the source address the kernel
        picks toward the DC (None while there is no route, e.g. before the default route is up).

        The route first: an address comes before the routes through it, so the addresses read after a
        route include its source. Read the other way round in the middle of a move (old address
        flushed, new address and route added: one batch), the look could pair the old addresses with
        the new route and take the move for a route change only (issue 21: the move was then noticed
        on the next event, 20-30 ms later on a busy loop)."""
        src = netlink.source_toward(self.creds.dc_address)
        eps = frozenset(await self.local_endpoints())
        return eps, src

    async def watch_addresses(self) -> None:
        """Handover: netlink address and route events (no polling). Each burst of events is coalesced
        into one look at the network state: new local endpoints -> ``addresses_changed`` (the core
        announces itself on every path and re-registers); the same endpoints but a new route toward
        the DC (the default route arrives after the address) -> ``routes_changed`` (what could not
        leave goes out now). The UDP sockets are bound to the wildcard address, so the kernel picks
        the new source address per datagram."""
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()
        state = await self.network_state()
        trace = self.driver.trace  # NTM_TRACE: when the events came and what the look found

        async def check() -> None:
            nonlocal state
            relooks = 0
            while True:
                await changed.wait()
                changed.clear()
                try:
                    new = await self.network_state()
                except Exception:
                    log.exception("cannot read the network state")
                    continue
                eps, src = new
                if trace is not None:
                    trace.mark("net-state", name=",".join(a for a, _ in sorted(eps)) or "-", mode=src or "-")
                if new == state or not eps:
                    continue  # nothing to do yet (e.g. the old address is gone, the new not yet up)
                if src is not None and all(a != src for a, _ in eps) and relooks < 3:
                    # The route's source is not among the addresses read: mid-move, look again (a
                    # few times: a DC reached from an address that is no endpoint, e.g. loopback, stays so).
                    relooks += 1
                    changed.set()
                    continue
                relooks = 0
                old, state = state, new
                now = loop.time()
                try:
                    if eps != old[0]:
                        self.handover_at = time.time()
                        self._handover_started = now
                        log.info("addresses changed: %s (route to the DC via %s); announcing on every path and "
                                 "re-registering", ", ".join(a for a, _ in sorted(eps)), src)
                        # The data plane keeps what it sends until each path is confirmed or re-directed
                        # (sent again there: dataplane/forwarder.py, "After a move").
                        loop.call_later(MOVE_KEEP, self.fwd.settle, self.fwd.moved())
                        self.core.addresses_changed(tuple(sorted(eps)), now)
                    elif src is not None:
                        log.info("route to the DC now via %s: sending what is pending", src)
                        self.core.routes_changed(now)
                except Exception as exc:  # the watch goes on: counted, shown in status
                    self.driver.errors.record("address change", exc)
                self.driver.flush()

        checker = loop.create_task(check())
        self.driver.errors.watch(checker, "address change")
        try:
            async with netlink.AddressMonitor(routes=True, links=False) as mon:
                changed.set()  # anything that changed between the first look and the subscription
                async for ev in mon:
                    if getattr(ev, "ifname", None) == self.settings.tun:
                        continue
                    if trace is not None and not changed.is_set():
                        trace.mark("netlink")  # the first event of a burst
                    changed.set()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("address monitor stopped; handover detection is off")
        finally:
            checker.cancel()

    # -- core events --------------------------------------------------------------------------------
    def on_event(self, ev: object) -> None:
        self.fwd.follow(ev)  # the forwarding table follows the paths (the same call as the unit harness)
        if isinstance(ev, Registered):
            if self._handover_started is not None:
                self.m_gap.observe(self.driver.now() - self._handover_started)
                self._handover_started = None
            self.on_registered(ev)
        elif isinstance(ev, RegistrationFailed):
            self.last_error = f"registration failed: {ev.status.name}: {ev.reason}"
            log.warning("%s", self.last_error)
        elif isinstance(ev, PathReady):
            self.on_path_ready(ev)
        elif isinstance(ev, PathFailed):
            log.info("path to %s failed: %s (%s)", ev.fqdn, ev.status.name, ev.reason)
            self._answered(ev.request_ids, None)
            self._wake(ev.request_ids, f"{ev.status.name}: {ev.reason}")
            self.m_failed.labels(ev.status.name).inc()
            for rid in ev.request_ids:
                lk = self.lookups.pop(rid, None)
                if lk is not None:
                    for h in lk.held:
                        self.answer_failure(h, ev.status)
            self._refreshing.discard(ev.fqdn)
        elif isinstance(ev, LookupFallback):
            log.info("lookup of %s not tunnelled: %s", ev.fqdn, ev.reason)
            self._answered(ev.request_ids, None)
            self._wake(ev.request_ids, f"not tunnelled: {ev.reason}")
            for rid in ev.request_ids:
                lk = self.lookups.pop(rid, None)
                if lk is not None:
                    for h in lk.held:
                        self.driver.spawn(self.fallback_answer(h, ev.fqdn), self._tasks, "DNS fallback")
            self._refreshing.discard(ev.fqdn)
        elif isinstance(ev, PathClosed):
            self.paths.pop(ev.path_id, None)
            log.info("path %s closed: %s", ev.path_id.hex(), ev.reason)
        elif isinstance(ev, StandbyReady):
            log.info("path %s has a standby leg %s via %s", ev.path_id.hex(), ev.standby.path_id.hex(),
                     ev.standby.rs_name)
        elif isinstance(ev, StandbyGone):
            log.info("path %s: standby leg %s gone", ev.path_id.hex(), ev.standby_id.hex())
        elif isinstance(ev, PathProbed | DcProbed):
            fut = self._probe_waiters.pop(("path" if isinstance(ev, PathProbed) else "dc", ev.probe_id), None)
            if fut is not None and not fut.done():
                fut.set_result(ev)

    def on_registered(self, ev: Registered) -> None:
        old = self.vips
        self.vips = (ev.vip4, ev.vip6)
        log.info("registered: vip4=%s vip6=%s observed=%s:%d nat=%s keepalive=%ds", ev.vip4, ev.vip6,
                 ev.observed[0], ev.observed[1], ev.nat.name, ev.keepalive)
        self.last_error = None
        if old != self.vips:
            self.driver.spawn(self.configure_vips(ev.vip4, ev.vip6), self._tasks, "VIP configuration")

    async def configure_vips(self, vip4: str | None, vip6: str | None) -> None:
        name = self.tun.name
        try:
            if vip4:
                await netlink.async_add_address(name, f"{vip4}/32")
                for r in self.settings.routes4:
                    await netlink.async_add_route(r, dev=name, src=vip4)
            if vip6:
                await netlink.async_add_address(name, f"{vip6}/128")
                for r in self.settings.routes6:
                    await netlink.async_add_route(r, dev=name, src=vip6)
        except OSError as exc:
            self.last_error = f"cannot configure the VIPs on {name}: {exc}"
            log.error("%s", self.last_error)

    def on_path_ready(self, ev: PathReady) -> None:
        p = ev.path
        prev = self.paths.get(p.path_id)
        if self.driver.trace is not None:
            self.driver.trace.mark("path-ready", name=p.peer_name, mode=p.mode.name)
        self.paths[p.path_id] = p
        for rid in ev.request_ids:  # the held lookups first: their answers are the set-up's latency
            lk = self.lookups.pop(rid, None)
            if lk is not None:
                for h in lk.held:
                    self.answer_vips(h, p)
        vips = [v for v in (p.peer_vip4, p.peer_vip6) if v]
        if p.peer_name:
            for v in vips:
                self.name_by_vip[ipaddress.ip_address(v).packed] = p.peer_name
            self._refreshing.discard(normalize(p.peer_name))
        if prev is None or prev.mode is not p.mode or prev.endpoint != p.endpoint or ev.request_ids:
            tr = self.core.traversal_of(p.path_id)
            # The line is written after this flush's datagrams left (the responder's Tunnel Response
            # waits for this handler): logging is not on a path's set-up.
            self.driver.loop.call_soon(
                log.info, "path %s to %s ready: %s%s, peer %s%s", p.path_id.hex(), p.peer_name, p.mode.name,
                f" via {p.rs_name}" if p.rs_name and p.mode is not PathMode.DIRECT else "", ", ".join(vips),
                f" (traversal: {tr['status']}, endpoint {p.endpoint})" if tr else "")
        self._answered(ev.request_ids, p.mode.name)
        self._wake(ev.request_ids, p)

    # -- data plane hooks ---------------------------------------------------------------------------
    def on_datagram(self, data: bytes, addr: tuple[str, int]) -> bool:
        if len(data) >= 2 and data[1] == 0x40:
            self.fwd.on_capsule(memoryview(data), addr, self.driver.now())
            return True
        return False

    def on_capsule(self, data: memoryview, addr: tuple[str, int], now: float) -> None:
        self.fwd.on_capsule(data, addr, now)

    def on_run(self, data: memoryview, size: int, addr: tuple[str, int], now: float) -> int:
        return self.fwd.on_run(data, size, addr, now)

    def on_standby(self, fp: FwdPath) -> None:
        """Data arrived on a path's standby leg (RS-N pair): the core switches the path to it."""
        self.core.standby_used(fp.path_id, self.driver.now())
        self.driver.flush()

    def on_learn(self, fp: FwdPath, addr: tuple[str, int]) -> None:
        self.core.note_data(fp.path_id, addr, self.driver.now())
        self.driver.flush()

    def on_miss(self, dst: bytes) -> None:
        """A packet to a VIP without a path (e.g. expired): rebuild the path for that name."""
        name = self.name_by_vip.get(dst)
        if name is None or name in self._refreshing:
            return
        self._refreshing.add(name)
        self.request_path(name)
        self.driver.flush()

    # -- DNS stub ---------------------------------------------------------------------------------
    def _tunnel_query(self, wire: bytes) -> tuple[dns.message.Message, bytes, str, int] | None:
        """The query, its name and type if it is one the node answers from a tunnel (else None)."""
        try:
            q = dns.message.from_wire(wire)
        except Exception:
            return None
        if q.flags & dns.flags.QR or not q.question:
            return None
        question = q.question[0]
        qname = question.name.to_text()
        if not self.stub_policy.wants_tunnel(qname, question.rdtype):
            return None
        return q, wire, qname, question.rdtype

    def _hold(self, q: dns.message.Message, wire: bytes, qname: str, qtype: int,
              send: Callable[[bytes | None], None]) -> None:
        """Hold ``q`` until its tunnel is ready (or fails): the lookup starts now."""
        tr = self.driver.trace
        if tr is not None:
            tr.mark("dns-query", name=qname)

            def traced(reply: bytes | None, send: Callable[[bytes | None], None] = send) -> None:
                tr.mark("dns-answer", name=qname)
                send(reply)
            send = traced
        rid = self.request_path(normalize(qname))
        self.dns_holds += 1
        self.lookups.setdefault(rid, _Lookup(qname)).held.append(_Held(q, wire, send, qtype))
        self.driver.flush()

    def on_dns_query_held(self, wire: bytes, send: Callable[[bytes | None], None]) -> bool:
        """The stub's synchronous look at a UDP query (stub.HeldHandler): a tunnelled name is held
        here and answered by ``send`` from the event that ends its lookup; anything else goes to
        ``on_dns_query``."""
        got = self._tunnel_query(wire)
        if got is None:
            return False
        self._hold(*got, send)
        return True

    async def on_dns_query(self, wire: bytes, tcp: bool) -> bytes | None:
        try:
            q = dns.message.from_wire(wire)
        except Exception:
            return None
        if q.flags & dns.flags.QR:
            return None  # a response is not a query (and cannot be answered): drop it
        if not q.question:
            return _response(q, dns.rcode.FORMERR).to_wire()
        got = self._tunnel_query(wire)
        if got is not None:
            fut: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()

            def settle(reply: bytes | None) -> None:
                if not fut.done():  # (the TCP client may have gone: the future cancelled)
                    fut.set_result(reply)
            self._hold(*got, settle)
            return await fut
        return await self.forward_upstream(wire, tcp)

    def answer_vips(self, h: _Held, p: PathInfo) -> None:
        vip = p.peer_vip4 if h.qtype == dns.rdatatype.A else p.peer_vip6
        fast = vip_answer(h.wire, vip or None, ANSWER_TTL)
        if fast is not None:
            h.answer(fast)
            return
        r = _response(h.query, dns.rcode.NOERROR)
        if vip:
            r.answer.append(dns.rrset.from_text(h.query.question[0].name, ANSWER_TTL, "IN",
                                                dns.rdatatype.to_text(dns.rdatatype.RdataType(h.qtype)), vip))
        h.answer(r.to_wire())

    def answer_failure(self, h: _Held, status: Status) -> None:
        h.answer(_response(h.query, failure_rcode(status)).to_wire())

    def reload(self, config: Path) -> None:
        """SIGHUP: take the reloadable settings (NODE_RELOADABLE) from the file; say which others changed
        and wait for a restart."""
        got = reload_settings(config, self.settings, NODE_RELOADABLE)
        if got is None:
            return
        new, now_, later = got
        old, self.settings = self.settings, new
        self.reloads += 1
        self.restart_needed = sorted(set(self.restart_needed) | later)
        if later:
            log.warning("reload: %s change only when the node restarts", ", ".join(sorted(later)))
        if not now_:
            log.info("reload: nothing to change")
            return
        log.info("reload: %s", ", ".join(sorted(now_)))
        self.stub_policy = StubPolicy(self.creds.name, new.tunnel_domains)
        self.core.config = dataclasses.replace(self.core.config, fallback=new.dns_fallback == "upstream")
        if now_ & {"dns_integration", "resolv_conf", "tunnel_domains"} and (
                old.dns_integration != "none" or new.dns_integration != "none"):
            try:
                self.host_dns.revert()
                state = Path(new.state_dir) if new.state_dir else Path(new.credentials).parent
                self.host_dns = take_host_dns(new.dns_integration, stub=new.dns_listen, tun=self.tun.name,
                                              domains=new.tunnel_domains, resolv_conf=Path(new.resolv_conf),
                                              state_dir=state)
            except ResolverError as exc:
                self.last_error = f"reload: dns_integration: {exc}"
                log.error("%s", self.last_error)
                self.host_dns = HostDns("none", new.dns_listen)
        self.upstream = list(new.upstream) or self.host_dns.upstream

    async def fallback_answer(self, h: _Held, fqdn: str) -> None:
        """The DC is silent or the node unregistered (docs/operations.md, "When the DC is silent"): a
        general node's name is answered with its real addresses (untunnelled, FALLBACK_TTL); an NTM
        peer's (its zone has a DC marker) fails at once, as do names discovery cannot resolve."""
        loop = asyncio.get_running_loop()
        result = self.fallback_cache.get(fqdn, loop.time())
        if result is None:
            resolvers = [(a, self.settings.upstream_port) for a in self.upstream]
            if not resolvers:
                result = DiscoveryResult(fqdn, Outcome.SERVFAIL, reason="no upstream resolvers")
            else:
                try:
                    result = await run_discovery(Discovery(fqdn, resolvers, loop.time(), deadline=DISCOVERY_DEADLINE))
                except ValueError as exc:
                    result = DiscoveryResult(fqdn, Outcome.NXDOMAIN, reason=str(exc))
                self.fallback_cache.put(result, loop.time())
        r = _response(h.query, {Outcome.NXDOMAIN: dns.rcode.NXDOMAIN, Outcome.GENERAL_NODE: dns.rcode.NOERROR,
                                Outcome.NODATA: dns.rcode.NOERROR}.get(result.outcome, dns.rcode.SERVFAIL))
        if result.outcome is Outcome.GENERAL_NODE:
            self.fallback_stats["untunnelled"] += 1
            addrs = result.a if h.qtype == dns.rdatatype.A else result.aaaa
            if addrs:
                r.answer.append(dns.rrset.from_text(h.query.question[0].name, FALLBACK_TTL, "IN",
                                                    dns.rdatatype.to_text(dns.rdatatype.RdataType(h.qtype)), *addrs))
        elif result.outcome is Outcome.NTM_PEER:
            self.fallback_stats["ntm_peer_refused"] += 1
        else:
            self.fallback_stats[result.outcome.value] += 1
        h.answer(r.to_wire())

    async def forward_upstream(self, wire: bytes, tcp: bool) -> bytes | None:
        loop = asyncio.get_running_loop()
        for server in self.upstream:
            fam = socket.AF_INET6 if ":" in server else socket.AF_INET
            try:
                if tcp:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(server, self.settings.upstream_port), UPSTREAM_TIMEOUT)
                    writer.write(len(wire).to_bytes(2, "big") + wire)
                    n = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), UPSTREAM_TIMEOUT), "big")
                    data = await asyncio.wait_for(reader.readexactly(n), UPSTREAM_TIMEOUT)
                    writer.close()
                    return data
                sock = socket.socket(fam, socket.SOCK_DGRAM)
                sock.setblocking(False)
                try:
                    await loop.sock_sendto(sock, wire, (server, self.settings.upstream_port))
                    data, _ = await asyncio.wait_for(loop.sock_recvfrom(sock, 65535), UPSTREAM_TIMEOUT)
                    return data
                finally:
                    sock.close()
            except (OSError, TimeoutError, asyncio.IncompleteReadError):
                continue
        try:
            return _response(dns.message.from_wire(wire), dns.rcode.SERVFAIL).to_wire()
        except Exception:
            return None

    # -- control ---------------------------------------------------------------------------------
    def control(self, req: dict[str, Any]) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        cmd = req.get("cmd", "status")
        if cmd == "ping":
            return self.ping(str(req.get("target", "")))
        if cmd == "netcheck":
            return self.netcheck()
        return self.status()

    def status(self) -> dict[str, Any]:
        reg = self.core.registration
        paths = self.core.paths()
        now = self.driver.now()
        for p in paths:
            fp = self.fwd.by_id.get(bytes.fromhex(str(p["path_id"])))
            if fp is not None:
                p.update(tx_packets=fp.tx_packets, tx_bytes=fp.tx_bytes, rx_packets=fp.rx_packets,
                         rx_bytes=fp.rx_bytes)
            p["age"] = round(now - float(p.pop("created")), 1)  # type: ignore[arg-type]
        return {
            "role": "node", "name": self.creds.name, "pid": os.getpid(),
            # the DC replica it talks to now (its credentials' DC until a failover moved it, issue 17)
            "dc": {"address": self.core.config.dc_endpoint[0], "port": self.core.config.dc_endpoint[1],
                   "domain": self.creds.domain},
            "registered": self.core.registered,
            "vip4": reg.vip4 if reg else None, "vip6": reg.vip6 if reg else None,
            "observed": list(reg.observed) if reg else None,
            "nat": (self.core.nat_class or reg.nat).name if reg else None,
            "keepalive": reg.keepalive if reg else None,
            "local_endpoints": [list(e) for e in self.core.local_endpoints],
            "paths": paths, "stats": self.stats(), "traffic": self.fwd.totals_by_mode(),
            "dataplane": self.fwd.stats | self.udpio.stats,
            "reassembly": reassembly_snapshot(),
            "dns_stub": {"received": self.stub.received, "dropped": self.stub.dropped, "errors": self.stub.errors,
                         "pending": len(self.stub.tasks), "address": self.settings.dns_listen,
                         "host_integration": self.host_dns.mode, "upstream": self.upstream,
                         "fallback": dict(self.fallback_stats)},
            "reloads": self.reloads, "restart_needed": self.restart_needed,
            "offloads": sorted(self.tun.features), "gso": offload_active(self.tun), "error": self.last_error,
            "tun": self.tun.name, "uptime": round(time.time() - self.started, 1), "handover_at": self.handover_at,
            "driver": self.driver.status(),
            "metrics": metrics_status(self.settings.metrics, self.metrics, self.metrics_server, self.metrics_error),
        } | ({"trace": self.driver.trace.snapshot()} if self.driver.trace is not None else {})

    def stats(self) -> dict[str, int]:
        """The core's counters, with the data plane's totals (all paths, gone ones too) and the daemon's."""
        t = [sum(c[i] for c in self.fwd.totals_by_mode().values()) for i in range(4)]
        return dict(self.core.stats) | {
            "tx_packets": t[0], "tx_bytes": t[1], "rx_packets": t[2], "rx_bytes": t[3],
            "path_requests_pending": len(self._asked), "dns_queries": self.stub.received,
            "dns_holds": self.dns_holds, "handler_errors": self.driver.errors.count}



def open_data_tun(name: str, offload: bool) -> Tun:
    """The data TUN: with ``offload``, IFF_VNET_HDR and TSO (USO is not negotiated: UDP_L4
    super-packets would need the peer's TUN to take them, so it is not requested)."""
    return open_tun(name, vnet_hdr=offload, offloads=offload, uso=False)


def offload_active(tun: Tun) -> bool:
    """The TUN takes and gives TSO super-packets: announce Capability.GSO."""
    return tun.vnet_hdr and {"csum", "tso4", "tso6"} <= tun.features


def _response(q: dns.message.Message, rcode: int) -> dns.message.Message:
    r = dns.message.make_response(q)
    r.set_rcode(dns.rcode.Rcode(rcode))
    r.flags |= dns.flags.RA
    return r


#: What a node's SIGHUP changes at once (everything else needs a restart).
NODE_RELOADABLE = {"tunnel_domains", "upstream", "upstream_port", "dns_fallback", "dns_integration", "resolv_conf"}


def run_node(settings: NodeSettings, creds: Credentials, config: Path | None = None) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        daemon = NodeDaemon(settings, creds)
        if config is not None:
            loop.add_signal_handler(signal.SIGHUP, daemon.reload, config)
        await daemon.run(stop)

    asyncio.run(main())
