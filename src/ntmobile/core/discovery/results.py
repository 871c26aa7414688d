"""What discovery gives and takes: Outcome, DiscoveryResult and its Evidence, the OutgoingQuery the
runtime sends, DiscoveryStats."""

import enum
from dataclasses import dataclass

from ntmobile.core.dnsauth import DcMarker

Address = tuple[str, int]

QUERY_PAYLOAD = 1232


class Outcome(enum.Enum):
    NTM_PEER = "ntm-peer"
    GENERAL_NODE = "general-node"
    NXDOMAIN = "nxdomain"
    NODATA = "nodata"  # the name exists but has no A/AAAA and no DC marker
    SERVFAIL = "servfail"  # servers unreachable or broken, or the deadline passed


@dataclass(frozen=True)
class OutgoingQuery:
    id: int  # handle for receive()/fail(); not the DNS message id
    dest: Address
    wire: bytes  # the DNS message (no TCP length prefix)
    tcp: bool


@dataclass(frozen=True)
class Evidence:
    lines: tuple[str, ...] = ()
    zone: str | None = None
    ns_names: tuple[str, ...] = ()
    ns_addresses: tuple[str, ...] = ()
    txt_server: str | None = None
    txt: tuple[str, ...] = ()
    a: tuple[str, ...] = ()
    aaaa: tuple[str, ...] = ()
    cnames: tuple[str, ...] = ()


@dataclass(frozen=True)
class DiscoveryResult:
    """What discovery found out about a name; the DC core takes it as it is (DcCore.resolution_result)."""

    fqdn: str
    outcome: Outcome
    ttl: int = 0  # seconds this result may be cached
    reason: str = ""
    evidence: Evidence = Evidence()
    #: NTM peers: the marker TXT of the peer's zone (the peer DC's signalling endpoint and key).
    marker: DcMarker | None = None
    a: tuple[str, ...] = ()
    aaaa: tuple[str, ...] = ()


@dataclass
class DiscoveryStats:
    sent: int = 0
    retransmits: int = 0
    tcp_fallbacks: int = 0
    responses: int = 0
    ignored: int = 0  # unparseable, mismatched or late responses
