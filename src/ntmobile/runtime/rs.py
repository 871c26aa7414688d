"""The relay server daemon (`ntm rs run`): RsCore on its UDP port, a TUN device for RS-N inner
packets, the nftables NAPT table (DNAT per path + masquerade + FTP helper), a control socket."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import Any

from ntmobile.core.rs import (
    DcLink,
    Registered,
    RegistrationFailed,
    RelayAdded,
    RelayEndpointChanged,
    RelayRemoved,
    RsConfig,
    RsCore,
)
from ntmobile.dataplane.tun import open_tun
from ntmobile.osops import netlink, sysctl
from ntmobile.osops.nft import NftError, RsNatTable
from ntmobile.wire import Capability

from .config import ConfigError, Credentials, RsSettings
from .control import serve_control
from .driver import CoreDriver

log = logging.getLogger("ntm.rs")
BATCH = 64


def dc_links(creds: list[Credentials]) -> tuple[bytes, list[DcLink]]:
    ids = {c.client_id for c in creds}
    if len(ids) != 1:
        raise ConfigError("the relay's credentials carry different IDs: enrol it at every DC with the same "
                          "`ntm dc enroll-rs NAME --id HEX`")
    for c in creds:
        if c.role != "relay":
            raise ConfigError(f"credentials for {c.name} are {c.role} credentials; use `ntm dc enroll-rs`")
    return bytes.fromhex(ids.pop()), [DcLink(c.dc_id_bytes, (c.dc_address, c.dc_port), c.psk) for c in creds]


class RsDaemon:
    def __init__(self, settings: RsSettings, creds: list[Credentials]) -> None:
        self.settings = settings
        self.rs_id, self.links = dc_links(creds)
        self.started = time.time()
        self.nat_errors = 0

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        local = [(s.address, s.port)] + ([(s.address6, s.port)] if s.address6 else [])
        cfg = RsConfig(s.name, self.rs_id, self.links, local_endpoints=local, max_paths=s.max_paths,
                       capabilities=int(Capability.INNER6))
        self.core = RsCore(cfg, loop.time(), seq_base=time.time_ns() // 1000)
        self.tun = open_tun(s.tun, vnet_hdr=False, offloads=False)
        await netlink.async_link_up(self.tun.name, s.mtu)
        for r in s.vip4_ranges:
            await netlink.async_add_route(r, dev=self.tun.name)
        for r in s.vip6_ranges:
            await netlink.async_add_route(r, dev=self.tun.name)
        sysctl.enable_forwarding()
        for key in (f"net/ipv4/conf/{self.tun.name}/rp_filter", "net/ipv4/conf/all/rp_filter"):
            try:
                sysctl.write_sysctl(key, 0)
            except OSError as exc:
                log.warning("sysctl %s: %s", key, exc)
        self.nat = RsNatTable(s.nft_table, self.tun.name, s.vip4_ranges, s.vip6_ranges)
        self.nat.apply()
        self.driver = CoreDriver(self.core, self.on_event, on_flush=self.flush_tun)
        await self.driver.start(s.port)
        self.buf = bytearray(65536)
        loop.add_reader(self.tun.fileno(), self.on_tun_readable)
        control = await serve_control(s.control, self.control)
        self.core.register(loop.time())
        self.driver.flush()
        log.info("relay %s (id %s) up: %s:%d, TUN %s, nft table inet %s, %d DC(s)", s.name, self.rs_id.hex(),
                 s.address, s.port, self.tun.name, s.nft_table, len(self.links))
        try:
            await stop.wait()
        finally:
            loop.remove_reader(self.tun.fileno())
            control.close()
            self.driver.close()
            try:
                self.nat.delete()
            except NftError as exc:
                log.warning("cannot delete nft table %s: %s", s.nft_table, exc)
            self.tun.close()

    # -- data ------------------------------------------------------------------------------------
    def flush_tun(self) -> None:
        for payload, _gso in self.core.packets_to_tun():
            self.tun.write(payload)

    def on_event(self, ev: object) -> None:
        if isinstance(ev, RelayAdded):
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
            for node_vip, peer_vip, _gn in e.nat_mappings():
                try:
                    self.nat.remove_mapping(node_vip, peer_vip)
                except NftError as exc:
                    self.nat_errors += 1
                    log.error("cannot remove NAT mapping: %s", exc)
            log.info("relay entry %s removed (%s): %d/%d packets", e.path_id.hex(), ev.reason, e.packets_i2r,
                     e.packets_r2i)
        elif isinstance(ev, RelayEndpointChanged):
            log.info("path %s: %s leg now at %s:%d", ev.path_id.hex(), ev.leg.name.lower(), ev.addr[0], ev.addr[1])
        elif isinstance(ev, Registered):
            log.info("registered with DC %s (observed %s:%d)", ev.dc_id.hex(), ev.observed[0], ev.observed[1])
        elif isinstance(ev, RegistrationFailed):
            log.warning("registration with DC %s failed: %s", ev.dc_id.hex(), ev.reason)

    def on_tun_readable(self) -> None:
        buf = self.buf
        now = self.driver.now()
        for _ in range(BATCH):
            n = self.tun.read_into(buf)
            if n <= 0:
                break
            self.core.tun_packet(bytes(buf[:n]), now)
        self.driver.flush()

    def control(self, req: dict[str, Any]) -> dict[str, Any]:
        snap = self.core.snapshot()
        snap.update(role="rs", pid=os.getpid(), uptime=round(time.time() - self.started, 1),
                    nat_errors=self.nat_errors, tun=self.tun.name, mappings=len(self.nat.mappings))
        return snap


def run_rs(settings: RsSettings, creds: list[Credentials]) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await RsDaemon(settings, creds).run(stop)

    asyncio.run(main())
