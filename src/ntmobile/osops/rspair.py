"""RS-N pair: configuration text for Debian's keepalived (VRRP) and conntrackd (FTFW sync).

Two relays share the GN-facing source address (a VRRP address that keepalived moves to the live
relay) and their connection-tracking state (conntrackd, FTFW), and both SNAT RS-N traffic to the
shared address (RsSettings.snat4/snat6), so a NAT binding made at one relay is valid at the other
(docs/operations.md "RS-N pair"). Pure text renderers; the lab and operators run the daemons.

Choices (measured in the lab, issue 20):
* VRRP version 3 with ``advert_int 0.1``: the address moves about 70 ms after the master stops.
* keepalived's ``track_process`` does not see processes of another network namespace, so the relay
  daemon is tracked with a ``track_script`` (``kill -0`` of its PID file) instead.
* conntrackd FTFW with ``DisableExternalCache`` (entries go straight into the kernel table, nothing
  to commit at failover) and ``ExpectationSync on`` (FTP/TFTP expectations move too).

Also the relay's side of the pair: ``holds_address`` tells whether the shared address is on this host
now (the relay is the active one), so that the standby refuses new RS-N paths.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from pathlib import Path

_IF_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,15}$")
_PATH_RE = re.compile(r"^/[^\s\"'\\]+$")


@dataclass(frozen=True)
class PairMember:
    """One relay of the pair, as its keepalived/conntrackd see it."""
    interface: str  # the GN-facing interface (VRRP adverts and conntrackd sync go over it)
    address: str  # this relay's own address on it
    peer: str  # the other relay's address on it
    priority: int  # VRRP priority (the higher starts as master)
    shared4: str  # the shared IPv4 address, with its prefix length ("192.0.2.25/24")
    relay_pidfile: str  # the relay daemon's PID file (track_script)
    workdir: str  # where conntrackd's lock and socket live
    vrid: int = 51
    #: The shared IPv6 address ("2001:db8:1::25/128"): moved with the IPv4 one, by the same instance.
    shared6: str | None = None
    #: This relay's and the peer's own IPv6 addresses on the interface (conntrackd leaves their
    #: entries out of the sync, as for the IPv4 ones).
    address6: str | None = None
    peer6: str | None = None

    def __post_init__(self) -> None:
        if not _IF_RE.match(self.interface):
            raise ValueError(f"bad interface name {self.interface!r}")
        ipaddress.IPv4Address(self.address)
        ipaddress.IPv4Address(self.peer)
        ipaddress.IPv4Interface(self.shared4)
        if self.shared6 is not None:
            ipaddress.IPv6Interface(self.shared6)
        for a in (self.address6, self.peer6):
            if a is not None:
                ipaddress.IPv6Address(a)
        if not 1 <= self.priority <= 254 or not 1 <= self.vrid <= 255:
            raise ValueError("VRRP priority must be 1..254 and vrid 1..255")
        for p in (self.relay_pidfile, self.workdir):
            if not _PATH_RE.match(p):
                raise ValueError(f"bad path {p!r}")


def keepalived_conf(m: PairMember) -> str:
    """keepalived.conf for one relay: VRRP v3, 0.1 s adverts, the relay daemon tracked by PID.

    The shared IPv6 address rides on the IPv4 instance as an excluded address (keepalived wants one
    family among an instance's advertised addresses; excluded ones move with the instance, so both
    addresses are always on the same relay, with no second state machine to disagree). keepalived
    adds an IPv6 VIP with IFA_F_NODAD by default (its ``-nodad`` keyword *turns DAD back on*: never
    render it), so the address is usable at once after every takeover: no Duplicate Address
    Detection keeping it tentative for about a second, during which the relay could not bind it
    and the kernel would not answer neighbour solicitations for it. keepalived sends an unsolicited
    Neighbour Advertisement for it on taking over, as it sends gratuitous ARP for the IPv4 one. A
    /128 is added deprecated (preferred_lft 0, keepalived's default for a /128), so the relay never
    picks it as the source of its own traffic; SNAT uses it all the same."""
    v6 = (f"    virtual_ipaddress_excluded {{\n        {m.shared6} dev {m.interface}\n    }}\n"
          if m.shared6 else "")
    return (
        "global_defs {\n    vrrp_version 3\n    script_user root\n    enable_script_security\n}\n\n"
        "vrrp_script relay_alive {\n"
        # kill -0 also succeeds on a zombie (a dead relay its parent has not reaped yet): check /proc.
        f"    script \"/bin/sh -c 'p=$(cat {m.relay_pidfile}) && kill -0 $p && "
        "! grep -qs ^State:.Z /proc/$p/status'\"\n"
        "    interval 1\n    timeout 1\n    fall 1\n    rise 2\n}\n\n"
        "vrrp_instance rsn {\n    state BACKUP\n"
        f"    interface {m.interface}\n    virtual_router_id {m.vrid}\n    priority {m.priority}\n"
        "    advert_int 0.1\n    nopreempt\n"
        f"    unicast_src_ip {m.address}\n    unicast_peer {{\n        {m.peer}\n    }}\n"
        f"    virtual_ipaddress {{\n        {m.shared4} dev {m.interface}\n    }}\n{v6}"
        "    track_script {\n        relay_alive\n    }\n}\n")


def conntrackd_conf(m: PairMember, port: int = 3780) -> str:
    """conntrackd.conf for one relay: FTFW over UDP to the peer, no external cache, expectations.

    Every family's entries are synced (conntrackd's default: the sync channel itself is IPv4); the
    relays' own addresses (their own connections, e.g. to the DC, and the sync itself) are left
    out, IPv4 and IPv6."""
    ignore6 = "".join(f"            IPv6_address {a}\n" for a in ("::1", m.address6, m.peer6) if a)
    return (
        "Sync {\n    Mode FTFW {\n        DisableExternalCache On\n        ResendQueueSize 131072\n"
        "        ACKWindowSize 300\n    }\n"
        "    UDP {\n"
        f"        IPv4_address {m.address}\n        IPv4_Destination_Address {m.peer}\n"
        f"        Port {port}\n        Interface {m.interface}\n        SndSocketBuffer 1249280\n"
        "        RcvSocketBuffer 1249280\n        Checksum on\n    }\n"
        "    Options {\n        ExpectationSync on\n    }\n}\n\n"
        "General {\n    Systemd off\n    HashSize 32768\n    HashLimit 131072\n"
        f"    LockFile {m.workdir}/conntrackd.lock\n"
        f"    UNIX {{\n        Path {m.workdir}/conntrackd.ctl\n    }}\n"
        "    NetlinkBufferSize 2097152\n    NetlinkBufferSizeMaxGrowth 8388608\n"
        "    NetlinkEventsReliable On\n"
        "    Filter From Kernelspace {\n        Address Ignore {\n"
        f"            IPv4_address 127.0.0.1\n            IPv4_address {m.address}\n"
        f"            IPv4_address {m.peer}\n{ignore6}        }}\n    }}\n}}\n")


def holds_address(address: str) -> bool:
    """Whether ``address`` is on one of this network namespace's interfaces: a UDP socket binds to it
    only then (EADDRNOTAVAIL otherwise; an IPv6 address still in DAD does not count either). Always
    true when the kernel binds non-local addresses (``nonlocal_bind``)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((address, 0))
        except OSError:
            return False
    return True


def nonlocal_bind(address: str) -> bool:
    """net.ipv4.ip_nonlocal_bind (net.ipv6.ip_nonlocal_bind for an IPv6 address) is set: any bind
    succeeds, so ``holds_address`` cannot tell."""
    key = "ipv6" if ":" in address else "ipv4"
    try:
        return Path(f"/proc/sys/net/{key}/ip_nonlocal_bind").read_text().strip() != "0"
    except OSError:
        return False
