"""The DC daemon (`ntm dc run`): DcCore on its signalling port, the authoritative DNS server of its
zone, DNS discovery for Direction Requests, the SQLite registry, a control socket."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import gc
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ntmobile.core.dc import (
    ClientRegistered,
    DcConfig,
    DcCore,
    DcZones,
    DirectionDecision,
    NatClassified,
    PeerDcNote,
    ProbeDatagram,
    RegistrationRejected,
    RelayLost,
    ResolveRequest,
    VerifyPeerDc,
    rsn_refused,
)
from ntmobile.core.discovery import Discovery, DiscoveryCache, DiscoveryResult, Outcome
from ntmobile.core.dnsauth import (
    UDP_AMPLIFICATION_MAX,
    format_marker,
)
from ntmobile.core.registry import Pools, StoreError
from ntmobile.core.timing import DISCOVERY_DEADLINE
from ntmobile.crypto import CounterFloor
from ntmobile.wire import Role

from . import dnsclasses  # noqa: F401  (dnspython's IN rdata classes before any input)
from .config import DcSettings, group_id, reload_settings, replica_endpoint
from .control import serve_control
from .counters import DC_BLOCK, counter_floor
from .dns import DnsServer, run_discovery, serve_dns
from .driver import CoreDriver, bind_udp, normalize
from .metrics import DriverCollector, Metrics, MetricsServer, dc_families, metrics_status, open_metrics
from .store import is_postgres, open_store

log = logging.getLogger("ntm.dc")

#: Node registrations are logged one by one at DEBUG; at INFO as a count every this many seconds.
REGISTRATION_SUMMARY_SECONDS = 10.0
#: Every this many seconds the DC moves the objects that survived so far (sessions, records,
#: channels: ten for each of 100,000 nodes) out of the cyclic garbage collector's sight
#: (``gc.freeze``). A full collection would otherwise walk all of them, pausing the DC for
#: hundreds of milliseconds at 100,000 nodes. They are still freed by reference counting when
#: dropped (sessions, channels and paths hold no reference cycles). What a freeze does keep is a
#: cycle that dies after it (say, a finished discovery task with its exception and traceback):
#: small and rare next to the pauses it saves. Every second, not every few: a full collection also
#: walks everything made since the last freeze, and at thousands of path set-ups per second that
#: alone paused the DC for 50-110 ms (freezing is a constant-time list splice).
GC_FREEZE_SECONDS = 1.0
#: The registry's write-ahead log is copied into the database this often, on a thread of its own
#: (SqliteStore.checkpoint), so that no commit on the event loop ever waits for that copy and fsync.
CHECKPOINT_SECONDS = 1.0


class _ProbeProtocol(asyncio.DatagramProtocol):
    """The DC's probe socket (NAT classification): datagrams go to DcCore.receive_probe."""

    def __init__(self, daemon: DcDaemon) -> None:
        self.daemon = daemon

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        d = self.daemon
        d.core.receive_probe(data, normalize(addr), d.driver.now())
        d.driver.flush()

    def error_received(self, exc: Exception) -> None:
        pass


def _lowest_priority() -> None:
    """Run the calling thread at nice 19 (Linux nices threads one by one): the checkpoint thread then
    only takes the CPU the event loop leaves idle, even when the DC is pinned to one core."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


class DcDaemon:
    def __init__(self, settings: DcSettings) -> None:
        self.settings = settings
        s = settings
        self.store = open_store(s.database, Pools(s.pools.vip4, s.pools.vip6, s.pools.gn_vip4, s.pools.gn_vip6),
                                background_checkpoint=True)
        self._checkpointer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ntm-dc-checkpoint",
                                                                   initializer=_lowest_priority)
        self.checkpoint_errors = 0
        self.dc_id, secret = self.store.identity()
        self.secret = secret
        self.public_key = X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes_raw()
        self.cache = DiscoveryCache()
        self.started = time.time()
        self.decisions: list[dict[str, Any]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.dns_servers: list[DnsServer] = []
        self._node_registrations = 0
        self._summary_at = 0.0
        self.commit_errors = 0
        #: SIGHUP reloads done.
        self.reloads = 0
        self.metrics = Metrics("dc")
        self.m_directions = self.metrics.counter("directions", "Direction decisions, by mode and outcome (status)",
                                                 ["mode", "outcome"])
        self.m_setup = self.metrics.histogram("direction_setup_seconds", "From a Direction Request to the path "
                                              "directed (discovery, relay choice, Route Directions acknowledged), "
                                              "by mode", ["mode"])
        self.m_relay_choice = self.metrics.counter("relay_choices", "Directions through a relay, by relay", ["relay"])
        self.m_registrations = self.metrics.counter("registrations", "Registrations answered, by role and outcome",
                                                    ["role", "outcome"])
        self.m_discovery = self.metrics.counter("discovery_queries", "Discoveries of a name for a direction, by "
                                                "source (cache or DNS) and outcome", ["source", "outcome"])
        self.m_discovery_time = self.metrics.histogram("discovery_seconds", "How long a DNS discovery for a "
                                                       "direction took (the DC's part of a path's set-up)")
        self.metrics_server: MetricsServer | None = None
        self.metrics_error: str | None = None

    def reload(self, config: Path) -> None:
        """SIGHUP: keepalive intervals, the idle timeout and the RS-N allow-list take effect at once (for
        new registrations and directions); other changed settings wait for a restart (logged)."""
        got = reload_settings(config, self.settings, DC_RELOADABLE)
        if got is None:
            return
        new, now_, later = got
        self.settings = new
        self.reloads += 1
        if later:
            log.warning("reload: %s change only when the DC restarts", ", ".join(sorted(later)))
        if now_:
            log.info("reload: %s", ", ".join(sorted(now_)))
            self.core.config = dataclasses.replace(self.core.config, keepalive=new.keepalive,
                                                   relay_keepalive=new.relay_keepalive,
                                                   idle_timeout=new.idle_timeout, rsn_allow=tuple(new.rsn_allow))

    def make_zones(self) -> DcZones:
        """One authoritative zone per served domain; each carries the DC marker TXT at its apex."""
        s = self.settings
        return DcZones(s.domains, self.store, ns_name=s.ns_name or "", ns_addresses=[*(s.ns_addresses or [s.address]),
                                                                    *(r.address for r in s.replicas)],
                       marker=format_marker(s.address, s.port, self.public_key), serial=int(self.started))

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        probe: tuple[tuple[str, int], ...] = ()
        if s.probe_port is not None:
            probe = tuple((a, s.probe_port) for a in dict.fromkeys([s.address, *s.ns_addresses]))
        cfg = DcConfig(s.domain, self.dc_id, keepalive=s.keepalive, relay_keepalive=s.relay_keepalive,
                       idle_timeout=s.idle_timeout, extra_domains=tuple(s.extra_domains), secret=self.secret,
                       peers=tuple((p.domain.rstrip(".").lower(), p.key_bytes) for p in s.peers), probe=probe,
                       rsn_allow=tuple(s.rsn_allow), rsn_pairs=tuple((a, b) for a, b in s.rsn_pairs),
                       rsn_refuse=rsn_refused((s.pools.vip4, s.pools.vip6, s.pools.gn_vip4, s.pools.gn_vip6),
                                              (s.address, *s.ns_addresses)), address=s.address, port=s.port,
                       traversal=s.traversal,
                       replicas=tuple(replica_endpoint(r.address, r.port) for r in s.replicas))
        if is_postgres(s.database):
            # replicas share the DC key: their send counters come from disjoint blocks of the database
            counter: CounterFloor = self.store.counter_floor("dc", block=DC_BLOCK)
            self.store.holder = cfg.replica_name  # the registry names this replica as its nodes' holder
        else:
            db = Path(s.database)
            counter = counter_floor(db.with_name(db.name + ".counter"), block=DC_BLOCK)
        self.core = DcCore(cfg, self.store, loop.time(), seq_base=time.time_ns() // 1000, counter=counter)
        self.driver = CoreDriver(self.core, self.on_event, batch_reads=True, on_batch_start=self._begin_batch,
                                 on_flush=self._commit,
                                 on_batch_read=self.store.prefetch if is_postgres(s.database) else None,
                                 can_send_early=self._nothing_to_commit, sends_first=True)
        self._summary_at = loop.time()
        await self.driver.start(s.port, host4=s.listen4, host6=s.listen6)
        self.probe_transports: dict[tuple[bool, int], asyncio.DatagramTransport] = {}
        if s.probe_port is not None:
            # The probe port receives nodes' mapping probes; the filter port (probe port + 1) only
            # sends the unsolicited filtering probes.
            for is_filter, port in ((False, s.probe_port), (True, s.probe_port % 65535 + 1)):
                for host, fam in ((s.listen4, socket.AF_INET), (s.listen6, socket.AF_INET6)):
                    if host is None:
                        continue
                    try:
                        sock = bind_udp(host, port, family=fam)
                    except OSError as exc:
                        log.warning("no probe socket on %s port %d: %s", host, port, exc)
                        continue
                    proto = (lambda: asyncio.DatagramProtocol()) if is_filter else (lambda: _ProbeProtocol(self))
                    tr, _ = await loop.create_datagram_endpoint(proto, sock=sock)
                    self.probe_transports[(is_filter, fam)] = tr
        dns_zones = self.make_zones()
        self.zones = dns_zones.zones
        for host in (s.listen4, s.listen6):
            if host is None:
                continue
            try:
                self.dns_servers.append(await serve_dns(dns_zones.respond, host, s.dns_port,
                                                        max_reply_factor=UDP_AMPLIFICATION_MAX))
            except OSError as exc:
                if host == s.listen4:
                    raise
                log.warning("no IPv6 DNS listener: %s", exc)
        control = await serve_control(s.control, self.control, group=group_id(s.control_group))
        errors = self.driver.errors
        self.metrics.add(DriverCollector("dc", self.driver.status, lambda: errors.by_where))
        self.metrics.add(lambda: dc_families(self.core, zones=getattr(self, "zones", []), servers=self.dns_servers,
                                             cache=self.cache, errors={"commit": self.commit_errors,
                                                                       "checkpoint": self.checkpoint_errors}))
        self.metrics_server, self.metrics_error = await open_metrics(s.metrics, self.metrics, errors)
        housekeeping = asyncio.create_task(self._housekeeping())
        checkpoints = asyncio.create_task(self._checkpoints())
        self.driver.errors.watch(housekeeping, "housekeeping")
        self.driver.errors.watch(checkpoints, "checkpoints")
        log.info("DC %s (id %s) up: signalling %s:%d, DNS port %d, %d enrolled", s.domain, self.dc_id.hex(),
                 s.address, s.port, s.dns_port, self.store.count())
        try:
            await stop.wait()
        finally:
            housekeeping.cancel()
            checkpoints.cancel()
            control.close()
            if self.metrics_server is not None:
                self.metrics_server.close()
            for tr in self.probe_transports.values():
                tr.close()
            for srv in self.dns_servers:
                await srv.close()
            self.driver.close()
            for t in self._tasks:
                t.cancel()
            self._checkpointer.shutdown(wait=True)
            self.store.close()

    async def _housekeeping(self) -> None:
        """Every GC_FREEZE_SECONDS: freeze what survived; every REGISTRATION_SUMMARY_SECONDS: log how
        many nodes registered (they are logged one by one only at DEBUG)."""
        while True:
            await asyncio.sleep(GC_FREEZE_SECONDS)
            gc.freeze()
            now = self.driver.now()
            if self._node_registrations and now - self._summary_at >= REGISTRATION_SUMMARY_SECONDS:
                log.info("registered %d nodes in the last %.0f s (%d sessions)", self._node_registrations,
                         now - self._summary_at, self.core.session_count())
                self._node_registrations = 0
                self._summary_at = now

    async def _checkpoints(self) -> None:
        """Every CHECKPOINT_SECONDS, a passive checkpoint of the registry on the checkpoint thread
        (failures are counted and logged; the log just grows until one succeeds)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(CHECKPOINT_SECONDS)
            try:
                await loop.run_in_executor(self._checkpointer, self.store.checkpoint)
            except StoreError as exc:
                self.checkpoint_errors += 1
                if self.checkpoint_errors == 1 or self.checkpoint_errors % 60 == 0:
                    log.warning("registry checkpoint failed (%d times so far): %s", self.checkpoint_errors, exc)

    def _begin_batch(self) -> None:
        self.store.begin_batch()
        self.core.begin_batch()

    def _nothing_to_commit(self) -> bool:
        """Mid-batch: the answers so far may leave now (no registration in the batch yet, whose
        answers must wait for the batch's commit)."""
        return not self.store.batch_pending() and not self.core.batch_pending()

    def _commit(self) -> None:
        """Group commit, before the batch's replies are sent; if it fails, the core answers the batch's
        registrations with STORAGE_ERROR instead."""
        tr = self.driver.trace
        t0 = time.monotonic() if tr is not None else 0.0
        try:
            lost = self.store.end_batch()
        except StoreError as exc:
            self.commit_errors += 1
            self.core.end_batch(str(exc), self.driver.now())
        else:
            self.core.end_batch(None, self.driver.now(), lost)
        if tr is not None and (ms := (time.monotonic() - t0) * 1000) >= 0.2:
            tr.mark("commit", ms=round(ms, 3))

    # -- events ----------------------------------------------------------------------------------
    def on_event(self, ev: object) -> None:
        if isinstance(ev, ResolveRequest):
            self._resolve(ev)
        elif isinstance(ev, ProbeDatagram):
            tr = self.probe_transports.get((ev.filter, socket.AF_INET6 if ":" in ev.addr[0] else socket.AF_INET))
            if tr is not None:
                tr.sendto(ev.data, ev.addr)
        elif isinstance(ev, NatClassified):
            log.info("NAT of %s: %s (%s)", ev.name, ev.kind.name, ev.evidence)
        elif isinstance(ev, VerifyPeerDc):
            self._verify_peer(ev)
        elif isinstance(ev, PeerDcNote):
            log.info("peer DC %s: %s", ev.peer, ev.text)
        elif isinstance(ev, DirectionDecision):
            self.m_directions.labels(ev.mode.name if ev.mode else "none", ev.status.name).inc()
            if ev.elapsed is not None and ev.mode is not None:
                self.m_setup.labels(ev.mode.name).observe(ev.elapsed)
            if ev.rs:
                self.m_relay_choice.labels(ev.rs).inc()
            entry = {"time": time.time(), "node": ev.node, "fqdn": ev.fqdn, "status": ev.status.name,
                     "mode": ev.mode.name if ev.mode else None, "rs": ev.rs,
                     "path_id": ev.path_id.hex() if ev.path_id else None, "evidence": list(ev.evidence)}
            self.decisions = (self.decisions + [entry])[-200:]
            # One line per decision (a busy DC makes thousands a second); the evidence also stays in
            # the decision list (`ntm dc status`).
            log.info("direction %s -> %s: %s %s%s | evidence: %s", ev.node, ev.fqdn, ev.status.name,
                     ev.mode.name if ev.mode else "", f" via {ev.rs}" if ev.rs else "", " | ".join(ev.evidence))
        elif isinstance(ev, ClientRegistered):
            self.m_registrations.labels(ev.role.name.lower(), "OK").inc()
            if ev.role is Role.NODE:
                self._node_registrations += 1
            log.log(logging.DEBUG if ev.role is Role.NODE else logging.INFO,
                    "registered %s %s vip4=%s vip6=%s observed=%s:%d nat=%s", ev.role.name.lower(), ev.name,
                    ev.vip4, ev.vip6, ev.observed[0], ev.observed[1], ev.nat.name)
        elif isinstance(ev, RegistrationRejected):
            self.m_registrations.labels("unknown", ev.status.name).inc()
            log.warning("registration of %s rejected: %s (%s)", ev.name, ev.status.name, ev.reason)
        elif isinstance(ev, RelayLost):
            log.warning("relay %s stopped answering", ev.name)

    def _resolve(self, ev: ResolveRequest) -> None:
        loop = asyncio.get_running_loop()
        cached = self.cache.get(ev.fqdn, loop.time())
        tr = self.driver.trace
        if tr is not None:
            tr.mark("discovery", name=ev.fqdn, cached=cached is not None)
        if cached is not None:
            res = dataclasses.replace(cached, evidence=dataclasses.replace(
                cached.evidence, lines=cached.evidence.lines + ("(from the DC's discovery cache)",)))
            self.m_discovery.labels("cache", cached.outcome.value).inc()
            self.core.resolution_result(ev.token, res, loop.time())  # the flush that runs us sends its output
            return
        resolvers = [(a, self.settings.resolver_port) for a in self.settings.resolvers]
        if not resolvers:
            self.core.resolution_result(
                ev.token, DiscoveryResult(ev.fqdn, Outcome.SERVFAIL, reason="no resolvers configured"), loop.time())
            return

        async def work() -> None:
            started = loop.time()
            try:
                d = Discovery(ev.fqdn, resolvers, loop.time(), deadline=DISCOVERY_DEADLINE)
                res = await run_discovery(d)
                self.cache.put(res, loop.time())
            except ValueError as exc:
                res = DiscoveryResult(ev.fqdn, Outcome.NXDOMAIN, reason=str(exc))
            except Exception as exc:  # discovery must never take the DC down
                log.exception("discovery of %s failed", ev.fqdn)
                res = DiscoveryResult(ev.fqdn, Outcome.SERVFAIL, reason=f"discovery error: {exc}")
            self.m_discovery.labels("dns", res.outcome.value).inc()
            self.m_discovery_time.observe(loop.time() - started)
            if tr is not None:
                tr.mark("discovered", name=ev.fqdn, outcome=res.outcome.value)
            self.core.resolution_result(ev.token, res, loop.time())
            self.driver.flush()

        self.driver.spawn(work(), self._tasks, "discovery")

    def _verify_peer(self, ev: VerifyPeerDc) -> None:
        """A peer DC's hello names ``ev.domain``: look up that zone's marker TXT; its key must be the
        hello's (docs/security.md, "Peer DCs")."""
        loop = asyncio.get_running_loop()
        resolvers = [(a, self.settings.resolver_port) for a in self.settings.resolvers]

        async def work() -> None:
            key: bytes | None = None
            try:
                cached = self.cache.get(ev.domain, loop.time())
                result = cached
                if result is None and resolvers:
                    result = await run_discovery(Discovery(ev.domain, resolvers, loop.time(),
                                                           deadline=DISCOVERY_DEADLINE))
                    self.cache.put(result, loop.time())
                if result is not None and result.marker is not None:
                    key = result.marker.key
            except Exception:  # verification must never take the DC down
                log.exception("marker look-up of %s failed", ev.domain)
            self.core.peer_dc_verified(ev.token, key, loop.time())
            self.driver.flush()

        self.driver.spawn(work(), self._tasks, "peer DC verification")

    # -- control ---------------------------------------------------------------------------------
    def control(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req.get("cmd", "status")
        if cmd == "decisions":
            return {"decisions": self.decisions}
        if cmd == "stats":  # counters only: cheap with many sessions (benches, monitoring)
            return {"stats": dict(self.core.stats), "paths": len(self.core.paths),
                    "sessions": self.core.session_count(), "relays": len(self.core.relays()),
                    "driver": self.driver.status(),
                    # statements and transaction blocks sent to a PostgreSQL registry (None for SQLite)
                    "db_statements": getattr(self.store, "round_trips", None),
                    "db_transactions": getattr(self.store, "transactions", None)}
        return {
            "role": "dc", "domain": self.settings.domain, "dc_id": self.dc_id.hex(), "reloads": self.reloads,
            "keepalive": self.settings.keepalive,
            "address": self.settings.address, "port": self.settings.port, "uptime": time.time() - self.started,
            "sessions": self.core.sessions(), "paths": len(self.core.paths), "stats": dict(self.core.stats),
            "dns": {z.origin.to_text(): vars(z.stats) for z in getattr(self, "zones", [])},
            "dns_servers": [{"host": srv.host, "port": srv.port, **vars(srv.stats)} for srv in self.dns_servers],
            "driver": self.driver.status() | {"commit_errors": self.commit_errors,
                                              "checkpoint_errors": self.checkpoint_errors},
            "discovery_cache": {"entries": len(self.cache), "hits": self.cache.stats.hits,
                                "misses": self.cache.stats.misses},
            "decisions": self.decisions[-20:], "pid": os.getpid(),
            "metrics": metrics_status(self.settings.metrics, self.metrics, self.metrics_server, self.metrics_error),
        } | ({"trace": self.driver.trace.snapshot()} if self.driver.trace is not None else {})


#: What a DC's SIGHUP changes at once (everything else needs a restart).
DC_RELOADABLE = {"keepalive", "relay_keepalive", "idle_timeout", "rsn_allow"}


def run_dc(settings: DcSettings, config: Path | None = None) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        daemon = DcDaemon(settings)
        if config is not None:
            loop.add_signal_handler(signal.SIGHUP, daemon.reload, config)
        await daemon.run(stop)

    asyncio.run(main())
