"""The relay's configuration: the DCs it serves (``DcLink``), its ``RsConfig``, and the size limits
of its tables."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ntmobile.wire import Endpoint

from ..timing import REGISTRATION_TIMEOUT

#: Size of the virtio_net_hdr that starts a GSO payload.
VNET_HDR_SIZE = 10
#: Size of the relay's and its DCs' identifiers.
ID_SIZE = 8
#: Distance measurements in progress at once (more are answered BUSY).
MAX_PROBES = 256
#: RS-S: relay keys an entry remembers after a re-key (they are never taken again).
RETIRED_KEYS_MAX = 8
#: Keys remembered as used by the whole relay (32 bytes each; beyond Relay Table size at default limits).
USED_KEYS_MAX = 1 << 16
#: RS-S capsules held from a leg's new source while the leg moves (hold.py): per leg, datagrams and
#: bytes (about 20 ms of a 30 Mbit/s flow) and distinct sources ...
HOLD_MAX_DATAGRAMS = 64
HOLD_MAX_BYTES = 96 * 1024
HOLD_SOURCES = 2
#: ... and for the whole relay: bytes, and legs holding at once.
HOLD_TOTAL_BYTES = 4 << 20
HOLD_MAX_LEGS = 256


@dataclass(frozen=True, slots=True)
class DcLink:
    """A DC this relay serves: its ID, where to register, and the enrolment secret."""

    dc_id: bytes
    endpoint: Endpoint
    psk: bytes = field(repr=False)
    #: The DC's other replicas (issue 17): when the current one stops answering, the relay registers
    #: with the next (same DC ID and secret), as a node does (REPLICA_FAILOVER_BOUND).
    replicas: tuple[Endpoint, ...] = ()


@dataclass(frozen=True, slots=True)
class RsConfig:
    name: str
    rs_id: bytes
    dcs: Sequence[DcLink]
    local_endpoints: Sequence[Endpoint] = ()
    #: Relay Table size; a Relay Direction beyond it is answered BUSY.
    max_paths: int = 4096
    #: Capabilities announced to DCs and (RS-N) to nodes, e.g. Capability.GSO | Capability.INNER6.
    capabilities: int = 0
    #: Used when a Relay Direction carries idle_timeout 0.
    default_idle_timeout: float = 120.0
    registration_timeout: float = REGISTRATION_TIMEOUT
    #: Underlay path MTU: GSO capsules toward nodes are cut into chunks whose datagrams fit it.
    path_mtu: int = 1500
    #: RS-N targets (docs/security.md, "RS-N targets"): prefixes opened although not globally routable
    #: (operator allow-list), and prefixes always refused (the relay's VIP ranges).
    rsn_allow: tuple[str, ...] = ()
    rsn_refuse: tuple[str, ...] = ()
