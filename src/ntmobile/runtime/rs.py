"""The relay server daemon (`ntm rs run`): RsCore on its UDP port, a TUN device for RS-N inner
packets, the nftables NAPT table (DNAT per path + masquerade + FTP helper), a control socket."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from ntmobile.core.rs import (
    DcLink,
    ProbeRequest,
    Registered,
    RegistrationFailed,
    RelayAdded,
    RelayEndpointChanged,
    RelayRemoved,
    RsConfig,
    RsCore,
)
from ntmobile.core.timing import ECHO_PROBE_TIMEOUT
from ntmobile.crypto.channel import reassembly_snapshot
from ntmobile.dataplane import vnet
from ntmobile.dataplane.forwarder import PATH_MTU, inner_mtu
from ntmobile.dataplane.tun import MAX_PACKET, Tun, open_tun
from ntmobile.dataplane.udpio import Train, UdpIo
from ntmobile.osops import sysctl
from ntmobile.osops.iproute import ip_link_up, ip_route_replace
from ntmobile.osops.nft import NftError, RsFastTable, RsNatTable
from ntmobile.osops.ping import icmp_echo
from ntmobile.osops.rspair import holds_address, nonlocal_bind
from ntmobile.wire import Capability

from .config import ConfigError, Credentials, RsSettings, group_id, parse_replica, reload_settings
from .control import serve_control
from .counters import counter_floor
from .driver import CoreDriver
from .metrics import DriverCollector, Metrics, MetricsServer, RelayTotals, metrics_status, open_metrics, rs_families
from .rsfast import POLL_SECONDS, FastPaths

log = logging.getLogger("ntm.rs")
#: How often an RS-N pair's relay checks whether it holds the shared SNAT address (docs/operations.md
#: "RS-N pair"): the standby refuses new RS-N paths.
SHARED_POLL = 0.2
BATCH = 64


def dc_links(creds: list[Credentials]) -> tuple[bytes, list[DcLink]]:
    ids = {c.client_id for c in creds}
    if len(ids) != 1:
        raise ConfigError("the relay's credentials carry different IDs: enrol it at every DC with the same "
                          "`ntm dc enroll-rs NAME --id HEX`")
    for c in creds:
        if c.role != "relay":
            raise ConfigError(f"credentials for {c.name} are {c.role} credentials; use `ntm dc enroll-rs`")
    return bytes.fromhex(ids.pop()), [DcLink(c.dc_id_bytes, (c.dc_address, c.dc_port), c.psk,
                                                   tuple(parse_replica(r) for r in c.dc_replicas)) for c in creds]


class RsDaemon:
    def __init__(self, settings: RsSettings, creds: list[Credentials]) -> None:
        self.settings = settings
        self.rs_id, self.links = dc_links(creds)
        self.started = time.time()
        self.nat_errors = 0
        self.tun_write_errors = 0
        self.tun_bad_vnet = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.metrics = Metrics("rs")
        #: Packets and bytes of the entries gone (the metrics' totals by mode never go down).
        self.totals = RelayTotals()
        self.metrics_server: MetricsServer | None = None
        self.metrics_error: str | None = None

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        local = [(s.address, s.port)] + ([(s.address6, s.port)] if s.address6 else [])
        self.tun = open_tun(s.tun, vnet_hdr=s.offload, offloads=s.offload, uso=False)
        caps = Capability.INNER6 | (Capability.GSO if _offload_active(self.tun) else 0)
        cfg = RsConfig(s.name, self.rs_id, self.links, local_endpoints=local, max_paths=s.max_paths,
                       capabilities=int(caps), path_mtu=PATH_MTU, rsn_allow=tuple(s.rsn_allow),
                       rsn_refuse=(*s.vip4_ranges, *s.vip6_ranges))
        state = Path(s.state_dir) if s.state_dir else Path(s.credentials[0]).parent
        counter = counter_floor(state / f"rs-{self.rs_id.hex()}.counter")
        self.core = RsCore(cfg, loop.time(), counter=counter)
        # iproute2, not pyroute2: the relay keeps its resident memory small (docs/dataplane.md).
        ip_link_up(self.tun.name, min(s.mtu, inner_mtu(PATH_MTU)))
        # No gso_max_size cap here (unlike a node's TUN): super-packets the kernel forwards from a
        # general node are up to 64 KB, and a smaller cap would make the kernel segment them in
        # software before the TUN. A capsule beyond one UDP_SEGMENT send goes out in two.
        for r in s.vip4_ranges:
            ip_route_replace(r, self.tun.name)
        for r in s.vip6_ranges:
            ip_route_replace(r, self.tun.name)
        sysctl.enable_forwarding()
        for key in (f"net/ipv4/conf/{self.tun.name}/rp_filter", "net/ipv4/conf/all/rp_filter"):
            try:
                sysctl.write_sysctl(key, 0)
            except OSError as exc:
                log.warning("sysctl %s: %s", key, exc)
        # After translation the kernel drops what the core refuses too (and every local address).
        policy = self.core.targets
        self.nat = RsNatTable(s.nft_table, self.tun.name, s.vip4_ranges, s.vip6_ranges, helpers=s.helpers,
                              refuse=[str(n) for v in (4, 6) for n in policy.refused_networks(v)],
                              snat4=s.snat4, snat6=s.snat6)
        self.nat.apply()
        self.driver = CoreDriver(self.core, self.on_event, on_flush=self.flush_tun)
        self.fast = FastPaths(self.core, RsFastTable(f"{s.nft_table}_fast", s.port, s.address, s.address6),
                              self.driver.now,
                              spawn=lambda coro: self._spawn(coro, "demotion"))
        if s.fast_path:
            self.fast.start()
            self._spawn(self._poll_fast(), "fast path poll")
        await self.driver.start(s.port)
        self.buf = bytearray(MAX_PACKET)
        self._dirty = False
        self.udpio = UdpIo(self.driver.sockets(), self.on_capsule, self.on_other,
                           on_batch_end=self.on_batch_end, on_run=self.on_run)
        self.train = Train(self.udpio)
        self.udpio.start(loop, self.driver.transports.values())
        loop.add_reader(self.tun.fileno(), self.driver.errors.guard("TUN read", self.on_tun_readable))
        control = await serve_control(s.control, self.control, group=group_id(s.control_group))
        errors = self.driver.errors
        self.metrics.add(DriverCollector("rs", self.driver.status, lambda: errors.by_where))
        self.metrics.add(lambda: rs_families(self.core, self.totals, fast=self.fast, udpio=self.udpio, extra_drops={
            "tun_write_errors": self.tun_write_errors, "tun_bad_vnet": self.tun_bad_vnet,
            "nat_errors": self.nat_errors}))
        self.metrics_server, self.metrics_error = await open_metrics(s.metrics, self.metrics, errors)
        shared = [a for a in (s.snat4, s.snat6) if a]
        if shared and any(nonlocal_bind(a) for a in shared):
            log.warning("ip_nonlocal_bind is set: cannot tell whether %s is on this host; RS-N paths are "
                        "accepted as if it were", ", ".join(shared))
        elif shared:
            self._check_shared(shared)
            self._spawn(self._watch_shared(shared), "shared address watch")
        self.core.register(loop.time())
        self.driver.flush()
        log.info("relay %s (id %s) up: %s:%d, TUN %s, nft table inet %s, %d DC(s)", s.name, self.rs_id.hex(),
                 s.address, s.port, self.tun.name, s.nft_table, len(self.links))
        try:
            await stop.wait()
        finally:
            loop.remove_reader(self.tun.fileno())
            self.udpio.stop()
            control.close()
            if self.metrics_server is not None:
                self.metrics_server.close()
            self.driver.close()
            self.fast.close()
            try:
                self.nat.delete()
            except NftError as exc:
                log.warning("cannot delete nft table %s: %s", s.nft_table, exc)
            self.tun.close()

    def _spawn(self, coro: Any, where: str) -> None:
        self.driver.spawn(coro, self._tasks, where)

    def _check_shared(self, shared: list[str]) -> None:
        """The pair's standby (a shared SNAT address not here) refuses new RS-N paths (core: BUSY)."""
        standby = not all(holds_address(a) for a in shared)
        if standby != self.core.standby:
            self.core.standby = standby
            if standby:
                log.info("standby: %s is not on this host: new RS-N paths are refused until it is",
                         ", ".join(shared))
            else:
                log.info("active: %s is on this host: RS-N paths are accepted", ", ".join(shared))

    async def _watch_shared(self, shared: list[str]) -> None:
        while True:
            await asyncio.sleep(SHARED_POLL)
            self._check_shared(shared)

    async def _poll_fast(self) -> None:
        while self.fast.enabled:
            await asyncio.sleep(POLL_SECONDS)
            try:
                self.fast.poll()
            except Exception as exc:  # never let a bug here take the relay down: the daemon relays all
                self.driver.errors.record("fast path poll", exc)
                self.fast.disable("internal error (logged)")

    # -- data ------------------------------------------------------------------------------------
    def flush_tun(self) -> None:
        tun = self.tun
        for payload, gso in self.core.packets_to_tun():
            try:
                if gso or not tun.vnet_hdr:
                    tun.write(payload)
                else:
                    tun.write_ip(payload)
            except OSError:
                self.tun_write_errors += 1  # e.g. a virtio_net_hdr the kernel refuses
        for blob, size, ep in self.core.gso_to_send():
            self.udpio.send_chunks(blob, size, ep)

    # An RS-S forward (a destination returned) only updates the entry's counters and activity
    # time in the core: no event, datagram or timer change. Anything else (RS-N, drops) may have
    # produced some, so the batch ends with a driver flush only then (``_dirty``).
    def on_capsule(self, data: memoryview, addr: tuple[str, int], now: float) -> None:
        dest = self.core.relay_data(data, addr, now)
        if dest is not None:
            self.train.add(data, dest)
        else:
            self._dirty = True

    def on_run(self, data: memoryview, size: int, addr: tuple[str, int], now: float) -> int:
        dest, k = self.core.relay_run(data, size, addr, now)
        if dest is not None:
            self.train.add(data[:k * size], dest, size)
        else:
            self._dirty = True
            self.flush_tun()  # an RS-N payload from relay_run is a view: write it now
        return k

    def on_other(self, data: bytes, addr: tuple[str, int]) -> None:
        self._dirty = True
        self.driver.on_datagram(data, addr)

    def on_batch_end(self) -> None:
        self.train.flush()
        core = self.core
        if self._dirty or core.has_output():  # (the queues: should a forward ever emit)
            self._dirty = False
            self.driver.flush()  # events (endpoint learnt), inner packets to the TUN, sends

    def on_event(self, ev: object) -> None:
        if isinstance(ev, ProbeRequest):
            self.probe(ev)
        elif isinstance(ev, RelayAdded):
            e = ev.entry
            for node_vip, peer_vip, gn in e.nat_mappings():
                try:
                    self.nat.add_mapping(node_vip, peer_vip, gn)
                except (NftError, ValueError) as exc:
                    self.nat_errors += 1
                    log.error("cannot install NAT mapping %s . %s -> %s: %s", node_vip, peer_vip, gn, exc)
            log.info("relay entry %s: RS-%s %s", e.path_id.hex(), e.rs_type.name,
                     ", ".join(f"{a} . {b} -> {c}" for a, b, c in e.nat_mappings()) or "(outer rewrite only)")
        elif isinstance(ev, RelayRemoved):
            e = ev.entry
            self.fast.on_removed(e.path_id)
            self.totals.retire(e)
            for node_vip, peer_vip, _gn in e.nat_mappings():
                try:
                    self.nat.remove_mapping(node_vip, peer_vip)
                except NftError as exc:
                    self.nat_errors += 1
                    log.error("cannot remove NAT mapping: %s", exc)
            log.info("relay entry %s removed (%s): %d/%d packets", e.path_id.hex(), ev.reason, e.packets_i2r,
                     e.packets_r2i)
        elif isinstance(ev, RelayEndpointChanged):
            self.fast.on_endpoint(ev.path_id, ev.addr)
            log.info("path %s: %s leg now at %s:%d", ev.path_id.hex(), ev.leg.name.lower(), ev.addr[0], ev.addr[1])
        elif isinstance(ev, Registered):
            log.info("registered with DC %s (observed %s:%d)", ev.dc_id.hex(), ev.observed[0], ev.observed[1])
        elif isinstance(ev, RegistrationFailed):
            log.warning("registration with DC %s failed: %s", ev.dc_id.hex(), ev.reason)

    def probe(self, ev: ProbeRequest) -> None:
        async def measure() -> None:
            result = await icmp_echo(ev.target, timeout=ECHO_PROBE_TIMEOUT)
            hops, rtt = result if result is not None else (None, None)
            log.info("distance to %s: %s", ev.target, f"{hops} hops, {rtt} µs" if result else "no echo reply")
            self.core.probe_result(ev.token, hops, rtt, self.driver.now())
            self.driver.flush()

        self._spawn(measure(), "distance probe")

    def on_tun_readable(self) -> None:
        buf = self.buf
        mv = memoryview(buf)
        core = self.core
        now = self.driver.now()
        off = vnet.VNET_HDR_LEN if self.tun.vnet_hdr else 0
        for _ in range(BATCH):
            n = self.tun.read_into(buf)
            if n <= off:
                if n <= 0:
                    break
                continue
            if not off:
                core.tun_packet(mv[:n], now)
            elif not core.tun_packet(mv[:n], now, gso=True):
                # The node takes no GSO capsules: per-packet capsules of the segments.
                try:
                    hdr = vnet.parse_hdr(mv)
                    if hdr.gso != vnet.GSO_NONE:
                        for seg in vnet.segment(hdr, mv[off:n]):
                            core.tun_packet(seg, now)
                    else:
                        core.tun_packet(vnet.complete_checksum(hdr, mv[off:n]) if hdr.needs_csum else mv[off:n],
                                        now)
                except vnet.VnetError:
                    self.tun_bad_vnet += 1
        self.driver.flush()

    def control(self, req: dict[str, Any]) -> dict[str, Any]:
        snap = self.core.snapshot()
        snap.update(role="rs", pid=os.getpid(), uptime=round(time.time() - self.started, 1), standby=self.core.standby,
                    nat_errors=self.nat_errors, tun=self.tun.name, mappings=len(self.nat.mappings),
                    offloads=sorted(self.tun.features), gso=_offload_active(self.tun),
                    fast_path=self.fast.snapshot(), reassembly=reassembly_snapshot(), driver=self.driver.status(),
                    metrics=metrics_status(self.settings.metrics, self.metrics, self.metrics_server,
                                           self.metrics_error),
                    dataplane=self.udpio.stats | {"tun_write_errors": self.tun_write_errors,
                                                  "tun_bad_vnet": self.tun_bad_vnet})
        return snap


def _offload_active(tun: Tun) -> bool:
    return tun.vnet_hdr and {"csum", "tso4", "tso6"} <= tun.features


def run_rs(settings: RsSettings, creds: list[Credentials], config: Path | None = None) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if config is not None:
            loop.add_signal_handler(signal.SIGHUP, _reload_rs, config, settings)
        await RsDaemon(settings, creds).run(stop)

    asyncio.run(main())


def _reload_rs(config: Path, settings: RsSettings) -> None:
    """SIGHUP: a relay's settings all shape its TUN, nft tables and DC links, so none changes without a
    restart: the file is checked and what changed is logged."""
    got = reload_settings(config, settings, set())
    if got is not None and got[2]:
        log.warning("reload: %s change only when the relay restarts", ", ".join(sorted(got[2])))
    elif got is not None:
        log.info("reload: nothing changed")

