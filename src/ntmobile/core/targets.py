"""Which addresses an RS-N may be directed to (docs/security.md, "RS-N targets").

An RS-N decapsulates a node's packets and NATs them to a general node's address, so the address a
path names is reachable *from the relay's network*. Only globally routable unicast addresses are
accepted; everything else would make the relay a gateway into its own network (its LAN, its
loopback services, a cloud metadata address, another node's VIP).

The table below is the IANA IPv4 and IPv6 Special-Purpose Address Registries (RFC 6890, as updated)
plus the non-unicast and unallocated space, one entry per row with its RFC. ``registry`` is the
registry's "Globally Reachable" column (None: N/A); ``ok`` is this project's decision, which differs
from the column only where ``note`` says why. The most specific entry that contains an address
decides. ``fixed`` entries are never opened by an operator's allow-list (loopback, "this network",
multicast, broadcast, link-local, IPv4-mapped): no private network is reached through them.

``TargetPolicy`` adds per-deployment refusals (the DC's VIP and GN-VIP pools, the DC's and the
relays' own addresses: never opened either) and the operator allow-list (``rsn_allow``) for relays
meant to reach a private network. ``refused_networks`` renders the same decision as prefixes for
the relay's nft table, so the kernel refuses exactly what the cores refuse.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


#: The documentation ranges (RFC 5737, RFC 3849): refused by default; the lab's "internet", the
#: benches and the unit harness use them and allow-list them in the configurations they write.
DOCUMENTATION_NETS = ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")


@dataclass(frozen=True, slots=True)
class Special:
    prefix: str
    name: str
    rfc: str
    #: IANA's "Globally Reachable" column (None: N/A, e.g. deprecated or not in the registry).
    registry: bool | None
    #: This project's decision: may an RS-N be directed there (without an allow-list)?
    ok: bool
    #: Never opened by an allow-list.
    fixed: bool = False
    note: str = ""


_F, _T = False, True

#: IPv4: the IANA IPv4 Special-Purpose Address Registry, plus multicast (RFC 5771).
SPECIAL4: tuple[Special, ...] = (
    Special("0.0.0.0/8", '"This network"', "RFC 791 §3.2", _F, _F, fixed=True),
    Special("0.0.0.0/32", '"This host on this network"', "RFC 1122 §3.2.1.3", _F, _F, fixed=True),
    Special("10.0.0.0/8", "Private-Use", "RFC 1918", _F, _F),
    Special("100.64.0.0/10", "Shared Address Space (carrier-grade NAT; also the default VIP pools)", "RFC 6598",
            _F, _F),
    Special("127.0.0.0/8", "Loopback", "RFC 1122 §3.2.1.3", _F, _F, fixed=True),
    Special("169.254.0.0/16", "Link Local (includes cloud metadata 169.254.169.254)", "RFC 3927", _F, _F, fixed=True),
    Special("172.16.0.0/12", "Private-Use", "RFC 1918", _F, _F),
    Special("192.0.0.0/24", "IETF Protocol Assignments", "RFC 6890 §2.1", _F, _F),
    Special("192.0.0.0/29", "IPv4 Service Continuity Prefix", "RFC 7335", _F, _F),
    Special("192.0.0.8/32", "IPv4 dummy address", "RFC 7600", _F, _F),
    Special("192.0.0.9/32", "Port Control Protocol Anycast", "RFC 7723", _T, _F,
            note="anycast for the nearest PCP server: from a relay that is a service of its own network"),
    Special("192.0.0.10/32", "Traversal Using Relays around NAT Anycast", "RFC 8155", _T, _F,
            note="anycast for the nearest TURN server: a service of the relay's own network"),
    Special("192.0.0.170/31", "NAT64/DNS64 Discovery", "RFC 8880, RFC 7050 §2.2", _F, _F),
    Special("192.0.2.0/24", "Documentation (TEST-NET-1; the lab's internet: allow-listed there)", "RFC 5737",
            _F, _F),
    Special("192.31.196.0/24", "AS112-v4", "RFC 7535", _T, _T),
    Special("192.52.193.0/24", "AMT", "RFC 7450", _T, _T),
    Special("192.88.99.0/24", "Deprecated (6to4 Relay Anycast)", "RFC 7526", None, _F,
            note="deprecated anycast: would reach the nearest 6to4 relay"),
    Special("192.168.0.0/16", "Private-Use", "RFC 1918", _F, _F),
    Special("192.175.48.0/24", "Direct Delegation AS112 Service", "RFC 7534", _T, _T),
    Special("198.18.0.0/15", "Benchmarking", "RFC 2544", _F, _F),
    Special("198.51.100.0/24", "Documentation (TEST-NET-2)", "RFC 5737", _F, _F),
    Special("203.0.113.0/24", "Documentation (TEST-NET-3)", "RFC 5737", _F, _F),
    Special("224.0.0.0/4", "Multicast", "RFC 5771", None, _F, fixed=True, note="not unicast"),
    Special("240.0.0.0/4", "Reserved", "RFC 1112 §4", _F, _F),
    Special("255.255.255.255/32", "Limited Broadcast", "RFC 8190, RFC 919 §7", _F, _F, fixed=True),
)

#: The NAT64 well-known prefix: judged by the IPv4 address it embeds (RFC 6052 §3.1 forbids it for
#: non-global IPv4 addresses), through the same policy.
NAT64_WKP = ipaddress.IPv6Network("64:ff9b::/96")

#: IPv6: the IANA IPv6 Special-Purpose Address Registry, plus the space outside global unicast
#: (2000::/3, RFC 4291 §2.4) and multicast.
SPECIAL6: tuple[Special, ...] = (
    Special("::/3", "Reserved by IETF (outside global unicast 2000::/3)", "RFC 4291 §2.4", None, _F),
    Special("4000::/2", "Reserved by IETF (outside global unicast 2000::/3)", "RFC 4291 §2.4", None, _F),
    Special("8000::/1", "Reserved by IETF (outside global unicast 2000::/3)", "RFC 4291 §2.4", None, _F),
    Special("::/96", "Deprecated IPv4-compatible addresses", "RFC 4291 §2.5.5.1", None, _F, fixed=True),
    Special("::/128", "Unspecified Address", "RFC 4291", _F, _F, fixed=True),
    Special("::1/128", "Loopback Address", "RFC 4291", _F, _F, fixed=True),
    Special("::ffff:0:0/96", "IPv4-mapped Address", "RFC 4291", _F, _F, fixed=True,
            note="refused whatever the IPv4 address: an RS-N maps IPv4 general nodes with IPv4"),
    Special("64:ff9b::/96", "IPv4-IPv6 Translat. (NAT64 well-known prefix)", "RFC 6052", _T, _T,
            note="judged by the embedded IPv4 address (RFC 6052 §3.1)"),
    Special("64:ff9b:1::/48", "IPv4-IPv6 Translat. (local use)", "RFC 8215", _F, _F),
    Special("100::/64", "Discard-Only Address Block", "RFC 6666", _F, _F),
    Special("100:0:0:1::/64", "Dummy IPv6 Prefix", "RFC 9780", _F, _F),
    Special("2001::/23", "IETF Protocol Assignments", "RFC 2928", _F, _F),
    Special("2001::/32", "TEREDO", "RFC 4380, RFC 8190", None, _F,
            note="embeds a server and an obfuscated client IPv4 address; a tunnel, not a host"),
    Special("2001:1::1/128", "Port Control Protocol Anycast", "RFC 7723", _T, _F,
            note="anycast for the nearest PCP server: a service of the relay's own network"),
    Special("2001:1::2/128", "Traversal Using Relays around NAT Anycast", "RFC 8155", _T, _F,
            note="anycast for the nearest TURN server: a service of the relay's own network"),
    Special("2001:1::3/128", "DNS-SD Service Registration Protocol Anycast", "RFC 9665", _T, _F,
            note="anycast for the nearest SRP server: a service of the relay's own network"),
    Special("2001:2::/48", "Benchmarking", "RFC 5180", _F, _F),
    Special("2001:3::/32", "AMT", "RFC 7450", _T, _T),
    Special("2001:4:112::/48", "AS112-v6", "RFC 7535", _T, _T),
    Special("2001:10::/28", "Deprecated (previously ORCHID)", "RFC 4843", None, _F),
    Special("2001:20::/28", "ORCHIDv2", "RFC 7343", _T, _T),
    Special("2001:30::/28", "Drone Remote ID Protocol Entity Tags (DETs) Prefix", "RFC 9374", _T, _T),
    Special("2001:db8::/32", "Documentation (the lab's internet: allow-listed there)", "RFC 3849", _F, _F),
    Special("2002::/16", "6to4", "RFC 3056", None, _F,
            note="deprecated (RFC 7526); embeds an IPv4 address that may be private"),
    Special("2620:4f:8000::/48", "Direct Delegation AS112 Service", "RFC 7534", _T, _T),
    Special("3fff::/20", "Documentation", "RFC 9637", _F, _F),
    Special("5f00::/16", "Segment Routing (SRv6) SIDs", "RFC 9602", _F, _F),
    Special("fc00::/7", "Unique-Local", "RFC 4193, RFC 8190", _F, _F),
    Special("fe80::/10", "Link-Local Unicast", "RFC 4291", _F, _F, fixed=True),
    Special("fec0::/10", "Deprecated site-local", "RFC 3879", None, _F),
    Special("ff00::/8", "Multicast", "RFC 4291 §2.7", None, _F, fixed=True, note="not unicast"),
)


@dataclass(frozen=True, slots=True)
class _Row:
    net: int
    mask: int
    special: Special


def _rows(table: tuple[Special, ...], bits: int) -> tuple[_Row, ...]:
    rows = []
    for s in table:
        n = ipaddress.ip_network(s.prefix)
        rows.append(_Row(int(n.network_address), ((1 << n.prefixlen) - 1) << (bits - n.prefixlen), s))
    # Most specific first: the first row that matches decides.
    return tuple(sorted(rows, key=lambda r: -bin(r.mask).count("1")))


_ROWS4 = _rows(SPECIAL4, 32)
_ROWS6 = _rows(SPECIAL6, 128)


def special(addr: Address) -> Special | None:
    """The most specific special-purpose entry containing ``addr`` (None: ordinary unicast)."""
    a = int(addr)
    for r in (_ROWS4 if addr.version == 4 else _ROWS6):
        if a & r.mask == r.net:
            return r.special
    return None


def parse_networks(prefixes: Iterable[str], what: str) -> tuple[Network, ...]:
    """Prefixes as networks; ValueError naming ``what`` and the bad entry (one line)."""
    out = []
    for p in prefixes:
        try:
            out.append(ipaddress.ip_network(str(p), strict=False))
        except ValueError as exc:
            raise ValueError(f"{what}: {p!r} is not an address prefix ({exc})") from None
    return tuple(out)


class TargetPolicy:
    """The decision for one daemon: ``refusal(addr)`` is None for an acceptable RS-N target, else why not.

    ``allow``: operator allow-list (prefixes opened although the registry refuses them, except the
    fixed entries). ``refuse``: deployment prefixes always refused (pools, own addresses)."""

    def __init__(self, allow: Iterable[str] = (), refuse: Iterable[str] = ()) -> None:
        self.allow = parse_networks(allow, "allow-list")
        self.refuse = parse_networks(refuse, "refused prefixes")

    def refusal(self, address: str, extra: Iterable[str] = ()) -> str | None:
        """None if an RS-N may be directed to ``address``; else a one-line reason. ``extra``: more
        addresses refused for this decision (e.g. the relays' current addresses)."""
        try:
            addr = ipaddress.ip_address(address)
        except ValueError:
            return f"{address!r} is not an IP address"
        if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id:
            return f"{address} has a zone index"
        for e in extra:
            if address == e or _same(addr, e):
                return f"{addr} is an address of this deployment's DC or relays"
        for n in self.refuse:
            if addr.version == n.version and addr in n:
                return f"{addr} is in {n}, a VIP pool or own address of this deployment"
        return self._registry(addr)

    def _registry(self, addr: Address) -> str | None:
        s = special(addr)
        if s is None or s.ok:
            if s is not None and isinstance(addr, ipaddress.IPv6Address) and addr in NAT64_WKP:
                v4 = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
                why = self.refusal(str(v4))
                return f"{addr} embeds {v4}: {why}" if why is not None else None
            return None
        if not s.fixed and any(addr.version == n.version and addr in n for n in self.allow):
            return None
        return f"{addr} is not a globally routable unicast address ({s.name}, {s.prefix}, {s.rfc})"

    def refused_networks(self, version: int) -> list[Network]:
        """Every prefix ``refusal`` refuses for IP ``version`` (without ``extra``), collapsed: what
        the relay's nft table drops after translation."""
        table = SPECIAL4 if version == 4 else SPECIAL6
        entries = sorted(table, key=lambda s: ipaddress.ip_network(s.prefix).prefixlen)
        refused: list[Network] = []
        for s in entries:  # shortest first: a longer entry overrides the shorter ones it lies in
            n = ipaddress.ip_network(s.prefix)
            refused = _subtract(refused, n)
            if not s.ok:
                refused.append(n)
        fixed = [ipaddress.ip_network(s.prefix) for s in table if s.fixed]
        allow = [n for n in self.allow if n.version == version]
        for a in allow:
            refused = _subtract(refused, a)
        refused += fixed
        if version == 6:
            # 64:ff9b::/96 refuses what its embedded IPv4 address would.
            base = int(NAT64_WKP.network_address)
            refused += [ipaddress.IPv6Network((base | int(n.network_address), 96 + n.prefixlen))
                        for n in self.refused_networks(4)]
        refused += [n for n in self.refuse if n.version == version]
        v4 = [n for n in refused if isinstance(n, ipaddress.IPv4Network)]
        v6 = [n for n in refused if isinstance(n, ipaddress.IPv6Network)]
        return [*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6)]


def _same(addr: Address, other: str) -> bool:
    try:
        return addr == ipaddress.ip_address(other)
    except ValueError:
        return False


def _subtract(nets: list[Network], cut: Network) -> list[Network]:
    out: list[Network] = []
    for n in nets:
        if n.version != cut.version or not n.overlaps(cut):
            out.append(n)
        elif n.subnet_of(cut):  # type: ignore[arg-type]
            continue
        else:
            out.extend(n.address_exclude(cut))  # type: ignore[arg-type]
    return out


__all__ = [
    "DOCUMENTATION_NETS", "NAT64_WKP", "SPECIAL4", "SPECIAL6", "Special", "TargetPolicy", "parse_networks", "special",
]
