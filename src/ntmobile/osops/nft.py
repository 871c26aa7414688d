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
* the FTP conntrack helper (nf_conntrack_ftp + nf_nat_ftp) attached to new TCP connections to port
  21 from the TUN, so PORT/EPRT/PASV/EPSV payloads are rewritten and data connections are expected.
* forward: counted accepts for traffic from the TUN and for established/related traffic back into
  it; anything else towards the VIP ranges through the TUN is dropped (nobody on the GN side can
  open connections to VIPs).
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

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
                 vip6_ranges: Iterable[str] = (), *, ftp_helper: bool = True) -> None:
        _check_name(name)
        self.name = name
        self.tun_ifname = tun_ifname
        _quote_if(tun_ifname)
        self.vip4_ranges = [ipaddress.IPv4Network(r) for r in vip4_ranges]
        self.vip6_ranges = [ipaddress.IPv6Network(r) for r in vip6_ranges]
        self.ftp_helper = ftp_helper
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
        if self.ftp_helper:
            out.append('\tct helper ftp-21 {\n\t\ttype "ftp" protocol tcp\n\t\tl3proto inet\n\t}\n\n')
        out.append("\tset vip4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n"
                   + elems([str(r) for r in self.vip4_ranges]) + "\t}\n\n")
        out.append("\tset vip6 {\n\t\ttype ipv6_addr\n\t\tflags interval\n"
                   + elems([str(r) for r in self.vip6_ranges]) + "\t}\n\n")
        out.append("\tmap dnat4 {\n\t\ttype ipv4_addr . ipv4_addr : ipv4_addr\n\t\tcounter\n"
                   + elems([m.element() for m in v4]) + "\t}\n\n")
        out.append("\tmap dnat6 {\n\t\ttype ipv6_addr . ipv6_addr : ipv6_addr\n\t\tcounter\n"
                   + elems([m.element() for m in v6]) + "\t}\n\n")
        out.append("\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
                   f"\t\tiifname {tun} ip saddr @vip4 dnat ip to ip saddr . ip daddr map @dnat4\n"
                   f"\t\tiifname {tun} ip6 saddr @vip6 dnat ip6 to ip6 saddr . ip6 daddr map @dnat6\n"
                   "\t}\n\n")
        out.append("\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
                   f"\t\toifname != {tun} ip saddr @vip4 counter masquerade\n"
                   f"\t\toifname != {tun} ip6 saddr @vip6 counter masquerade\n"
                   "\t}\n\n")
        if self.ftp_helper:
            out.append("\tchain helpers {\n\t\ttype filter hook prerouting priority filter; policy accept;\n"
                       f'\t\tiifname {tun} meta l4proto tcp tcp dport 21 ct state new ct helper set "ftp-21"\n'
                       "\t}\n\n")
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
        out: dict[str, int] = {}
        fwd = 0
        masq = 0
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
            elif rule["chain"] == "forward" and fwd < len(labels):
                out[labels[fwd]] = int(pk)
                fwd += 1
        return out
