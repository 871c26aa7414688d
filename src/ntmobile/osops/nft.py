"""nftables rulesets applied atomically with the `nft` command, and the RS-N NAPT table.

`nft -f -` (text) and `nft -j -f -` (JSON) read a whole ruleset from stdin and commit it as one
netlink transaction: either all of it applies or none. They run as a subprocess in the caller's
network namespace (a daemon started in its namespace manages that namespace's tables). Errors come
back as `NftError` with one line: nft's first "Error:" line plus the offending input line.

RS-N: the RS daemon only decapsulates tunnel packets into its TUN and encapsulates what the TUN
gives back; the kernel does the translation with `RsNatTable`:

* DNAT at prerouting, for packets from the TUN, through the maps `dnat4`/`dnat6` keyed by
  (node VIP . GN VIP) -> GN real address. The source VIP is part of the key because a DC may hand
  the same GN VIP to different nodes for different GNs.
* masquerade at postrouting for packets from the VIP ranges leaving through any non-TUN interface
  (SNAT to the RS's address on that interface).
* the configured conntrack helpers (osops.cthelpers; default FTP and TFTP) attached to new
  connections from the TUN to their standard ports that were translated to a path's GN, so e.g.
  PORT/EPRT/PASV/EPSV payloads are rewritten and data connections (or TFTP's answer from another
  port) are expected.
* forward: counted accepts for traffic from the TUN and for established/related traffic back into
  it; anything else towards the VIP ranges through the TUN is dropped (nobody on the GN side can
  open connections to VIPs).
* guard, at prerouting after DNAT (priority dstnat + 10): a packet from the TUN that was translated
  (``ct status dnat``) to an address of the relay itself (``fib daddr type local``, also broadcast and
  multicast) or lies in the refused ranges (``refused4``/``refused6``: what core.targets refuses,
  allow-list applied) is dropped and counted, whatever mapping the daemon installed
  (docs/security.md, "RS-N targets").
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ntmobile.core.rs.fastpolicy import FastPath

from . import cthelpers

NFT = "nft"
Family = Literal["ip", "ip6", "inet", "arp", "bridge", "netdev"]

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.\-:@]{1,15}$")


class NftError(RuntimeError):
    """`nft` rejected a ruleset or command. The message is a single line."""


def _one_line(stderr: str, stdin: str | None) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    err = next((ln for ln in lines if ln.startswith("Error:")), lines[0] if lines else "unknown error")
    where = ""
    m = re.match(r"^(?:/dev/stdin|-):(\d+):", err)
    if m and stdin is not None:
        n = int(m.group(1))
        src = stdin.splitlines()
        if 0 < n <= len(src):
            where = f" [line {n}: {src[n - 1].strip()}]"
    elif len(lines) > 1 and not lines[1].lstrip().startswith("^"):
        where = f" [{lines[1].strip()}]"
    return f"nft: {err.strip()}{where}"


def run_nft(args: Sequence[str], stdin: str | None = None, *, timeout: float = 30.0) -> str:
    """Run `nft ARGS` (stdin optional) and return its stdout; NftError on failure."""
    try:
        r = subprocess.run([NFT, *args], input=stdin, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as e:
        raise NftError("nft: command not found: install nftables (apt-get install nftables)") from e
    if r.returncode != 0:
        raise NftError(_one_line(r.stderr, stdin))
    return r.stdout


def apply_ruleset(text: str, *, check_only: bool = False) -> None:
    """Apply a ruleset in nft syntax atomically (`nft -f -`); check_only just validates (`-c`)."""
    run_nft(["-c", "-f", "-"] if check_only else ["-f", "-"], text)


def apply_json(ruleset: dict[str, Any] | list[dict[str, Any]], *, check_only: bool = False) -> None:
    """Apply a JSON ruleset atomically (`nft -j -f -`): {"nftables": [...]} or the list of commands."""
    doc = ruleset if isinstance(ruleset, dict) else {"nftables": ruleset}
    run_nft(["-j", "-c", "-f", "-"] if check_only else ["-j", "-f", "-"], json.dumps(doc))


def list_table_json(family: Family, name: str) -> list[dict[str, Any]]:
    """The objects of one table as nft's JSON (list of {"table"|"chain"|"rule"|"map"...: {...}})."""
    out = run_nft(["-j", "list", "table", family, name])
    items: list[dict[str, Any]] = json.loads(out)["nftables"]
    return [i for i in items if "metainfo" not in i]


def table_exists(family: Family, name: str) -> bool:
    try:
        run_nft(["list", "table", family, name])
        return True
    except NftError:
        return False


def delete_table(family: Family, name: str, *, missing_ok: bool = True) -> None:
    """Delete a table and everything in it. With missing_ok, a missing table is not an error
    (done atomically: `add table` first makes the delete always valid)."""
    _check_name(name)
    if missing_ok:
        apply_ruleset(f"add table {family} {name}\ndelete table {family} {name}\n")
    else:
        run_nft(["delete", "table", family, name])


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise ValueError(f"bad nft object name {name!r}")


def _quote_if(ifname: str) -> str:
    if not _IFNAME_RE.match(ifname):
        raise ValueError(f"bad interface name {ifname!r}")
    return f'"{ifname}"'


IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class NatMapping:
    node_vip: IPAddr
    gn_vip: IPAddr
    gn_real: IPAddr

    @property
    def version(self) -> int:
        return self.node_vip.version

    def element(self) -> str:
        return f"{self.node_vip} . {self.gn_vip} : {self.gn_real}"


class RsNatTable:
    """The RS-N NAPT table (family inet). Mappings are kept in memory too, so `render()`/`apply()`
    always reproduce the current state (e.g. after an RS restart)."""

    def __init__(self, name: str, tun_ifname: str, vip4_ranges: Iterable[str] = (),
                 vip6_ranges: Iterable[str] = (), *, helpers: Iterable[str] = cthelpers.DEFAULT_HELPERS,
                 refuse: Iterable[str] = (), snat4: str | None = None, snat6: str | None = None) -> None:
        _check_name(name)
        # RS-N pair (docs/operations.md "RS-N pair"): SNAT to the pair's shared address instead of
        # masquerading to this relay's own, so a synced conntrack entry is valid at the other relay.
        self.snat4 = ipaddress.IPv4Address(snat4) if snat4 else None
        self.snat6 = ipaddress.IPv6Address(snat6) if snat6 else None
        self.name = name
        self.tun_ifname = tun_ifname
        _quote_if(tun_ifname)
        self.vip4_ranges = [ipaddress.IPv4Network(r) for r in vip4_ranges]
        self.vip6_ranges = [ipaddress.IPv6Network(r) for r in vip6_ranges]
        self.helpers = cthelpers.resolve(helpers)
        refused = [ipaddress.ip_network(r) for r in refuse]
        self.refused4 = [n for n in refused if n.version == 4]
        self.refused6 = [n for n in refused if n.version == 6]
        self._maps: dict[tuple[IPAddr, IPAddr], NatMapping] = {}

    @property
    def mappings(self) -> list[NatMapping]:
        return list(self._maps.values())

    @staticmethod
    def _mapping(node_vip: str, gn_vip: str, gn_real: str) -> NatMapping:
        m = NatMapping(ipaddress.ip_address(node_vip), ipaddress.ip_address(gn_vip),
                       ipaddress.ip_address(gn_real))
        if not m.node_vip.version == m.gn_vip.version == m.gn_real.version:
            raise ValueError(f"mapping mixes IPv4 and IPv6: {node_vip} . {gn_vip} -> {gn_real}")
        return m

    def render(self) -> str:
        """The whole table in nft syntax (a `table` block; apply() wraps it in a replace)."""
        tun = _quote_if(self.tun_ifname)
        v4 = [m for m in self._maps.values() if m.version == 4]
        v6 = [m for m in self._maps.values() if m.version == 6]

        def elems(items: Sequence[str]) -> str:
            return f"\t\telements = {{ {', '.join(items)} }}\n" if items else ""

        out = [f"table inet {self.name} {{\n"]
        out.append(cthelpers.render_objects(self.helpers))
        out.append("\tset vip4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n"
                   + elems([str(r) for r in self.vip4_ranges]) + "\t}\n\n")
        out.append("\tset vip6 {\n\t\ttype ipv6_addr\n\t\tflags interval\n"
                   + elems([str(r) for r in self.vip6_ranges]) + "\t}\n\n")
        out.append("\tset refused4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n"
                   + elems([str(r) for r in self.refused4]) + "\t}\n\n")
        out.append("\tset refused6 {\n\t\ttype ipv6_addr\n\t\tflags interval\n"
                   + elems([str(r) for r in self.refused6]) + "\t}\n\n")
        out.append("\tmap dnat4 {\n\t\ttype ipv4_addr . ipv4_addr : ipv4_addr\n\t\tcounter\n"
                   + elems([m.element() for m in v4]) + "\t}\n\n")
        out.append("\tmap dnat6 {\n\t\ttype ipv6_addr . ipv6_addr : ipv6_addr\n\t\tcounter\n"
                   + elems([m.element() for m in v6]) + "\t}\n\n")
        out.append("\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
                   f"\t\tiifname {tun} ip saddr @vip4 dnat ip to ip saddr . ip daddr map @dnat4\n"
                   f"\t\tiifname {tun} ip6 saddr @vip6 dnat ip6 to ip6 saddr . ip6 daddr map @dnat6\n"
                   "\t}\n\n")
        out.append("\tchain guard {\n\t\ttype filter hook prerouting priority dstnat + 10; policy accept;\n"
                   f"\t\tiifname {tun} ct status dnat fib daddr type {{ local, broadcast, multicast }} counter drop\n"
                   f"\t\tiifname {tun} ct status dnat ip daddr @refused4 counter drop\n"
                   f"\t\tiifname {tun} ct status dnat ip6 daddr @refused6 counter drop\n"
                   "\t}\n\n")
        out.append("\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
                   f"\t\toifname != {tun} ip saddr @vip4 counter "
                   + (f"snat ip to {self.snat4}\n" if self.snat4 else "masquerade\n")
                   + f"\t\toifname != {tun} ip6 saddr @vip6 counter "
                   + (f"snat ip6 to {self.snat6}\n" if self.snat6 else "masquerade\n")
                   + "\t}\n\n")
        if self.helpers:
            out.append("\tchain helpers {\n\t\ttype filter hook prerouting priority filter; policy accept;\n"
                       + cthelpers.render_rules(self.helpers, tun) + "\t}\n\n")
        out.append("\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n"
                   f"\t\tiifname {tun} ip saddr @vip4 counter accept\n"
                   f"\t\tiifname {tun} ip6 saddr @vip6 counter accept\n"
                   f"\t\toifname {tun} ct state established,related counter accept\n"
                   f"\t\toifname {tun} ip daddr @vip4 counter drop\n"
                   f"\t\toifname {tun} ip6 daddr @vip6 counter drop\n"
                   "\t}\n}\n")
        return "".join(out)

    def apply(self) -> None:
        """Create or replace the whole table in one transaction."""
        apply_ruleset(f"add table inet {self.name}\ndelete table inet {self.name}\n{self.render()}")

    def delete(self) -> None:
        delete_table("inet", self.name)

    def add_mapping(self, node_vip: str, gn_vip: str, gn_real: str, *, live: bool = True) -> NatMapping:
        """Map (node_vip, gn_vip) -> gn_real; replaces an existing mapping of that key atomically.
        live=False only records it (for a later apply())."""
        m = self._mapping(node_vip, gn_vip, gn_real)
        key = (m.node_vip, m.gn_vip)
        old = self._maps.get(key)
        if live:
            mp = f"dnat{m.version}"
            cmds = ""
            if old is not None:
                cmds += f"delete element inet {self.name} {mp} {{ {old.node_vip} . {old.gn_vip} }}\n"
            cmds += f"add element inet {self.name} {mp} {{ {m.element()} }}\n"
            apply_ruleset(cmds)
        self._maps[key] = m
        return m

    def remove_mapping(self, node_vip: str, gn_vip: str, *, live: bool = True) -> bool:
        """Remove the mapping of (node_vip, gn_vip); False when there was none."""
        key = (ipaddress.ip_address(node_vip), ipaddress.ip_address(gn_vip))
        old = self._maps.pop(key, None)
        if old is None:
            return False
        if live:
            apply_ruleset(f"delete element inet {self.name} dnat{old.version} "
                          f"{{ {old.node_vip} . {old.gn_vip} }}\n")
        return True

    def counters(self) -> dict[str, int]:
        """Packet counters of the table's rules, by a short label (e.g. 'masquerade4', 'fwd_in4')."""
        labels = ["fwd_in4", "fwd_in6", "fwd_back", "fwd_drop4", "fwd_drop6"]
        guard = ["guard_local", "guard_refused4", "guard_refused6"]
        out: dict[str, int] = {}
        fwd = 0
        masq = 0
        g = 0
        for item in list_table_json("inet", self.name):
            rule = item.get("rule")
            if rule is None:
                continue
            pk = next((e["counter"]["packets"] for e in rule["expr"] if "counter" in e), None)
            if pk is None:
                continue
            if rule["chain"] == "postrouting":
                masq += 1
                out[f"masquerade{4 if masq == 1 else 6}"] = int(pk)
            elif rule["chain"] == "guard" and g < len(guard):
                out[guard[g]] = int(pk)
                g += 1
            elif rule["chain"] == "forward" and fwd < len(labels):
                out[labels[fwd]] = int(pk)
                fwd += 1
        return out


# -- RS-S kernel fast path -----------------------------------------------------------------------
# (FastPath, the record of one path, comes with the policy that decides it: core.rs.fastpolicy.)


class RsFastTable:
    """The RS-S kernel fast path (table inet NAME, docs/dataplane.md "RS-S in the kernel").

    * prerouting, priority raw - 10 (before conntrack): a datagram to the relay's address and
      port whose first bytes say version 1, DATA, *while a socket is bound there* (the daemon's:
      a relay daemon that died forwards nothing, so its nodes see it dead and move on), looks its
      source (address . port) up in
      ``legs4``/``legs6``; a fast path's leg jumps to the chain ``p<path id>i`` or ``...r``, which
      checks the Path ID and the FROM_RESPONDER flag of that leg, marks it untracked, counts it and
      rewrites the destination to the other leg's endpoint. Anything else (signalling, other
      paths, a datagram whose flag names the wrong leg) is left alone and reaches the daemon.
    * postrouting, priority srcnat: a datagram whose (source . destination) 4-tuple is a rewritten
      leg pair of ``fwd4``/``fwd6`` leaves from the relay's address and port, and is counted.

    The kernel forwards a GSO packet (a capsule's chunks from one sender) as one unit. Everything in
    it is the head's: the daemon only puts paths here whose leg endpoints carry no other path, and
    nodes send signalling with a hop limit their data never has, so that no receive offload
    merges anything else behind a fast path's data (docs/dataplane.md)."""

    def __init__(self, name: str, port: int, local4: str | None, local6: str | None = None) -> None:
        _check_name(name)
        self.name = name
        self.port = int(port)
        self.local4 = str(ipaddress.IPv4Address(local4)) if local4 else None
        self.local6 = str(ipaddress.IPv6Address(local6)) if local6 else None
        self._paths: dict[bytes, FastPath] = {}

    @property
    def paths(self) -> list[FastPath]:
        return list(self._paths.values())

    def __contains__(self, path_id: object) -> bool:
        return path_id in self._paths

    def _check(self, p: FastPath) -> None:
        a, b = ipaddress.ip_address(p.initiator[0]), ipaddress.ip_address(p.responder[0])
        if a.version != b.version:
            raise ValueError("legs of different address families cannot be rewritten in the kernel")
        if (self.local4 if a.version == 4 else self.local6) is None:
            raise ValueError(f"the relay has no IPv{a.version} address")
        if len(p.path_id) != 8:
            raise ValueError("a Path ID is 8 bytes")
        for _, port in (p.initiator, p.responder):
            if not 0 < int(port) < 65536:
                raise ValueError(f"bad port {port}")

    def _objects(self, p: FastPath) -> str:
        """The path's counters and leg chains, as statements inside a table block."""
        ip = "ip" if p.version == 4 else "ip6"
        out = []
        for side, flag, dst in (("i", 0, p.responder), ("r", 1, p.initiator)):
            out.append(f"\tcounter c{p.tag}{side} {{\n\t}}\n"
                       f"\tchain p{p.tag}{side} {{\n"
                       f"\t\t@th,96,64 0x{p.tag} @th,87,1 {flag} notrack counter name \"c{p.tag}{side}\" "
                       f"{ip} daddr set {dst[0]} udp dport set {dst[1]}\n\t}}\n")
        return "".join(out)

    @staticmethod
    def _legs(p: FastPath) -> str:
        (ia, ip_), (ra, rp) = p.initiator, p.responder
        return f"{ia} . {ip_} : jump p{p.tag}i, {ra} . {rp} : jump p{p.tag}r"

    @staticmethod
    def _fwd(p: FastPath) -> str:
        (ia, ip_), (ra, rp) = p.initiator, p.responder
        return f"{ia} . {ip_} . {ra} . {rp}, {ra} . {rp} . {ia} . {ip_}"

    def render(self) -> str:
        """The whole table in nft syntax."""
        port = self.port
        out = [f"table inet {self.name} {{\n"]
        out += [self._objects(p) for p in self._paths.values()]
        for v, addr in ((4, "ipv4_addr"), (6, "ipv6_addr")):
            mine = [p for p in self._paths.values() if p.version == v]
            out.append(f"\tmap legs{v} {{\n\t\ttype {addr} . inet_service : verdict\n"
                       + (f"\t\telements = {{ {', '.join(map(self._legs, mine))} }}\n" if mine else "") + "\t}\n")
            out.append(f"\tset fwd{v} {{\n\t\ttype {addr} . inet_service . {addr} . inet_service\n"
                       + (f"\t\telements = {{ {', '.join(map(self._fwd, mine))} }}\n" if mine else "") + "\t}\n")
        out.append("\tchain prerouting {\n\t\ttype filter hook prerouting priority raw - 10; policy accept;\n")
        if self.local4:
            out.append(f"\t\tip daddr {self.local4} udp dport {port} @th,64,16 0x0140 socket transparent 0 "
                       "ip saddr . udp sport vmap @legs4\n")
        if self.local6:
            out.append(f"\t\tip6 daddr {self.local6} udp dport {port} @th,64,16 0x0140 socket transparent 0 "
                       "ip6 saddr . udp sport vmap @legs6\n")
        out.append("\t}\n")
        out.append("\tchain postrouting {\n\t\ttype filter hook postrouting priority srcnat; policy accept;\n")
        if self.local4:
            out.append(f"\t\tip saddr . udp sport . ip daddr . udp dport @fwd4 counter "
                       f"ip saddr set {self.local4} udp sport set {port}\n")
        if self.local6:
            out.append(f"\t\tip6 saddr . udp sport . ip6 daddr . udp dport @fwd6 counter "
                       f"ip6 saddr set {self.local6} udp sport set {port}\n")
        out.append("\t}\n}\n")
        return "".join(out)

    def apply(self) -> None:
        """Create or replace the whole table in one transaction."""
        apply_ruleset(f"add table inet {self.name}\ndelete table inet {self.name}\n{self.render()}")

    def delete(self) -> None:
        """Delete the table; the paths are forgotten too."""
        self._paths.clear()
        delete_table("inet", self.name)

    def add(self, p: FastPath) -> None:
        """Forward ``p`` in the kernel (replacing an older binding of its Path ID), atomically."""
        self._check(p)
        old = self._paths.get(p.path_id)
        t = f"inet {self.name}"
        cmds = self._remove_cmds(old) if old is not None else ""
        cmds += (f"table {t} {{\n{self._objects(p)}}}\n"
                 f"add element {t} legs{p.version} {{ {self._legs(p)} }}\n"
                 f"add element {t} fwd{p.version} {{ {self._fwd(p)} }}\n")
        apply_ruleset(cmds)
        self._paths[p.path_id] = p

    def _remove_cmds(self, p: FastPath) -> str:
        t = f"inet {self.name}"
        (ia, ip_), (ra, rp) = p.initiator, p.responder
        return (f"delete element {t} legs{p.version} {{ {ia} . {ip_}, {ra} . {rp} }}\n"
                f"delete element {t} fwd{p.version} {{ {self._fwd(p)} }}\n"
                + "".join(f"delete chain {t} p{p.tag}{s}\ndelete counter {t} c{p.tag}{s}\n" for s in "ir"))

    def remove(self, path_id: bytes) -> bool:
        """Stop forwarding ``path_id`` in the kernel; False when it was not."""
        p = self._paths.pop(path_id, None)
        if p is None:
            return False
        apply_ruleset(self._remove_cmds(p))
        return True

    def counters(self) -> tuple[dict[bytes, tuple[int, int, int, int]], int]:
        """Per fast path (packets, bytes) initiator->responder then responder->initiator, and the
        packets the postrouting rules sent on. A kernel packet may be a GSO packet of many
        datagrams: packets count those units, bytes are exact."""
        named: dict[str, tuple[int, int]] = {}
        posted = 0
        for item in list_table_json("inet", self.name):
            c = item.get("counter")
            if c is not None:
                named[c["name"]] = (int(c["packets"]), int(c["bytes"]))
            rule = item.get("rule")
            if rule is not None and rule.get("chain") == "postrouting":
                posted += next((int(e["counter"]["packets"]) for e in rule["expr"] if "counter" in e), 0)
        out = {}
        for p in self._paths.values():
            i2r, r2i = named.get(f"c{p.tag}i", (0, 0)), named.get(f"c{p.tag}r", (0, 0))
            out[p.path_id] = (*i2r, *r2i)
        return out, posted
