"""The kernel's conntrack helpers (ALGs) an RS-N relay can attach, by name.

RS-N leaves translation to the kernel, so every application-level gateway the kernel has works
through RS-N once its helper is attached to the path's connections: the helper reads the control
connection (FTP's PASV, TFTP's request, SIP's SDP, ...), rewrites addresses in it for the NAT and
opens an *expectation* so the answer from another port is let back in (RELATED).

`RsNatTable` declares one nftables ``ct helper`` object per (helper, transport) and one rule per
standard port that sets it on new connections from the TUN that were translated to a path's GN
(``ct status dnat``): expectations exist only for connections to a path's own GN, never for the
relay itself or anything else. docs/operations.md ("RS-N conntrack helpers") lists what each
enables and its trade-off.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class CtHelper:
    """One kernel helper: its nft ``type`` name, transport and standard ports."""

    name: str  # the name in configuration (``helpers = [...]``)
    kernel: str  # the nft helper type (the kernel module's helper name)
    proto: Literal["tcp", "udp"]
    ports: tuple[int, ...]
    enables: str

    @property
    def obj(self) -> str:
        """Name of the nft ct helper object in the RS-N table."""
        return f"{self.name.replace('.', '').replace('-', '')}-{self.proto}"


HELPERS: dict[str, tuple[CtHelper, ...]] = {
    "ftp": (CtHelper("ftp", "ftp", "tcp", (21,), "FTP active and passive data connections"),),
    "tftp": (CtHelper("tftp", "tftp", "udp", (69,), "TFTP transfers (the server answers from a new port)"),),
    "sip": (CtHelper("sip", "sip", "udp", (5060,), "SIP signalling and its RTP media streams"),
            CtHelper("sip", "sip", "tcp", (5060,), "SIP signalling and its RTP media streams")),
    "irc": (CtHelper("irc", "irc", "tcp", (6667,), "IRC DCC chat and file transfers"),),
    "pptp": (CtHelper("pptp", "pptp", "tcp", (1723,), "PPTP VPN (GRE data, IPv4 only)"),),
    "h323": (CtHelper("h323", "RAS", "udp", (1719,), "H.323 gatekeeper (RAS) and its calls"),
             CtHelper("h323", "Q.931", "tcp", (1720,), "H.323 call signalling and media")),
    "sane": (CtHelper("sane", "sane", "tcp", (6566,), "SANE network scanner data connections"),),
    "amanda": (CtHelper("amanda", "amanda", "udp", (10080,), "Amanda backup data connections"),),
    "snmp": (CtHelper("snmp", "snmp", "udp", (161,), "SNMP payload address rewriting (IPv4 only)"),),
    "netbios-ns": (CtHelper("netbios-ns", "netbios-ns", "udp", (137,),
                            "NetBIOS name service broadcast answers (IPv4 only)"),),
}

DEFAULT_HELPERS = ("ftp", "tftp")


def check_names(names: Iterable[str]) -> list[str]:
    """The names, deduplicated in order; ValueError (one line naming the valid ones) on an unknown one."""
    out: list[str] = []
    for n in names:
        if n not in HELPERS:
            raise ValueError(f"unknown conntrack helper {n!r}: valid helpers are {', '.join(sorted(HELPERS))}")
        if n not in out:
            out.append(n)
    return out


def resolve(names: Iterable[str]) -> list[CtHelper]:
    """The helper objects for the configured names (validated)."""
    return [h for n in check_names(names) for h in HELPERS[n]]


def _nft_str(s: str) -> str:
    return '"' + s + '"'


def render_objects(helpers: Iterable[CtHelper]) -> str:
    """``ct helper`` object declarations (one per helper and transport, IPv4 and IPv6: l3proto inet)."""
    return "".join(f"\tct helper {h.obj} {{\n\t\ttype {_nft_str(h.kernel)} protocol {h.proto}\n"
                   "\t\tl3proto inet\n\t}\n\n" for h in helpers)


def render_rules(helpers: Iterable[CtHelper], tun: str) -> str:
    """Rules (for a filter chain at prerouting, after DNAT) attaching each helper to new connections
    from the TUN to its standard ports that were translated to a path's GN."""
    out = []
    for h in helpers:
        ports = str(h.ports[0]) if len(h.ports) == 1 else "{ " + ", ".join(map(str, h.ports)) + " }"
        out.append(f"\t\tiifname {tun} ct status dnat meta l4proto {h.proto} {h.proto} dport {ports} "
                   f"ct state new ct helper set {_nft_str(h.obj)}\n")
    return "".join(out)
