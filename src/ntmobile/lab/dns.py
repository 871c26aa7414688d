"""DNS of the lab, served by unmodified software: nsd (root/TLD and static zones) and unbound.

Pure text generation: zone files, nsd.conf, unbound.conf and root hints.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .topology import Dns

TTL = 60
# addresses(host) -> (ipv4, ipv6 or None) of the host on the network it serves DNS on.
AddrOf = Callable[[str], tuple[str, str | None]]


def _fq(name: str) -> str:
    return name.rstrip(".") + "."


def _tld(name: str) -> str:
    return name.rstrip(".").split(".")[-1]


def _under(name: str, zone: str) -> bool:
    n, z = _fq(name), _fq(zone)
    return n == z or n.endswith("." + z)


def _soa(origin: str, ns: str) -> list[str]:
    return [
        f"$ORIGIN {_fq(origin) if origin != '.' else '.'}",
        f"$TTL {TTL}",
        f"@ IN SOA {_fq(ns)} hostmaster.{_fq(ns)} 1 3600 600 86400 {TTL}",
        f"@ IN NS {_fq(ns)}",
    ]


def _addr_rrs(name: str, v4: str, v6: str | None) -> list[str]:
    rrs = [f"{_fq(name)} IN A {v4}"]
    if v6:
        rrs.append(f"{_fq(name)} IN AAAA {v6}")
    return rrs


def root_server_zones(dns: Dns, addr_of: AddrOf) -> dict[str, str]:
    """Zone name -> zone text for the root/TLD server: "." and every TLD with the delegations."""
    root_v4, root_v6 = addr_of(dns.root)
    delegs = [*dns.delegations, *dns.zones]
    tlds = sorted({_tld(d.zone) for d in delegs} | {_tld(dns.root_ns)})
    root = _soa(".", dns.root_ns)
    for tld in tlds:
        root.append(f"{tld}. IN NS {_fq(dns.root_ns)}")
    root += _addr_rrs(dns.root_ns, root_v4, root_v6)  # glue
    zones = {".": "\n".join(root) + "\n"}
    for tld in tlds:
        z = _soa(tld, dns.root_ns)
        if _under(dns.root_ns, tld):
            z += _addr_rrs(dns.root_ns, root_v4, root_v6)
        for d in delegs:
            if _tld(d.zone) != tld:
                continue
            z.append(f"{_fq(d.zone)} IN NS {_fq(d.ns)}")
            if _under(d.ns, tld):
                v4, v6 = addr_of(d.server)
                z += _addr_rrs(d.ns, v4, v6)
        zones[f"{tld}."] = "\n".join(dict.fromkeys(z)) + "\n"
    return zones


def static_zones(dns: Dns, server: str, addr_of: AddrOf) -> dict[str, str]:
    """Zone name -> zone text for the static zones served by host `server`."""
    out = {}
    for z in dns.zones:
        if z.server != server:
            continue
        lines = _soa(z.zone, z.ns)
        if _under(z.ns, z.zone):
            v4, v6 = addr_of(server)
            lines += _addr_rrs(z.ns, v4, v6)
        lines += z.records
        out[_fq(z.zone)] = "\n".join(lines) + "\n"
    return out


def zone_file_name(zone: str) -> str:
    return "root.zone" if zone == "." else zone.rstrip(".") + ".zone"


def nsd_conf(workdir: Path, listen: list[str], zones: list[str]) -> str:
    w = str(workdir)
    lines = ["server:"]
    lines += [f"  ip-address: {a}" for a in listen]
    lines += [
        "  port: 53",
        "  server-count: 1",
        '  username: ""',
        '  chroot: ""',
        f'  zonesdir: "{w}"',
        '  database: ""',
        f'  zonelistfile: "{w}/nsd-zone.list"',
        f'  xfrdfile: "{w}/nsd-xfrd.state"',
        f'  xfrdir: "{w}"',
        f'  pidfile: "{w}/nsd.pid"',
        f'  logfile: "{w}/nsd.log"',
        "  verbosity: 1",
        "  hide-version: yes",
        "remote-control:",
        "  control-enable: no",
    ]
    for z in zones:
        lines += ["zone:", f'  name: "{z}"', f'  zonefile: "{zone_file_name(z)}"']
    return "\n".join(lines) + "\n"


def root_hints(dns: Dns, addr_of: AddrOf) -> str:
    v4, v6 = addr_of(dns.root)
    lines = [f". 3600000 IN NS {_fq(dns.root_ns)}", f"{_fq(dns.root_ns)} 3600000 IN A {v4}"]
    if v6:
        lines.append(f"{_fq(dns.root_ns)} 3600000 IN AAAA {v6}")
    return "\n".join(lines) + "\n"


def unbound_conf(workdir: Path, listen: list[str]) -> str:
    w = str(workdir)
    lines = ["server:", "  verbosity: 1"]
    lines += [f"  interface: {a}" for a in listen]
    lines += [
        "  port: 53",
        "  num-threads: 1",
        "  so-reuseport: no",
        "  access-control: 0.0.0.0/0 allow",
        "  access-control: ::/0 allow",
        "  do-not-query-localhost: no",
        '  chroot: ""',
        '  username: ""',
        f'  directory: "{w}"',
        f'  pidfile: "{w}/unbound.pid"',
        "  use-syslog: no",
        f'  logfile: "{w}/unbound.log"',
        f'  root-hints: "{w}/root.hints"',
        '  module-config: "iterator"',
        "  harden-dnssec-stripped: no",
        "  cache-max-ttl: 30",
        "  cache-max-negative-ttl: 5",
        "  infra-host-ttl: 30",
        "remote-control:",
        "  control-enable: no",
    ]
    return "\n".join(lines) + "\n"
