"""The DC's path table: every path it directed (PathRecord), new Path IDs, releases, who holds a
path's key, and the route decision between two NTM nodes."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ntmobile.wire import Endpoint, NatKind, PathMode, PathRelease, PathRole, RelayDirection, RouteDirection, RsType

from ..common import new_txid
from ..timing import RELAY_DIRECTION_TIMEOUT, RELAY_RELEASE_MIN_AGE
from .config import DcConfig
from .sessions import _Session

if TYPE_CHECKING:
    from .core import DcCore


@dataclass(slots=True)
class PathRecord:
    path_id: bytes
    initiator: str
    peer: str
    mode: PathMode
    rs: str | None
    created: float
    gn_map: tuple[tuple[str, str], ...] = ()
    path_key: bytes = b""
    #: The role of ``initiator`` (the node that asked last) on the path; the other node has the other.
    requester_role: PathRole = PathRole.INITIATOR
    #: The path's relay key (made once, kept when a re-direction switches DIRECT <-> RS-S).
    relay_key: bytes = b""
    #: Who holds the path's sealers: each node's name with the process instance it got the key in. A
    #: re-direction re-sends the key only to those instances (docs/security.md §3).
    holders: tuple[tuple[str, bytes], ...] = ()
    #: Whether this DC sent the relay its Relay Direction (False: the peer DC of a path to one of its
    #: nodes did; only that DC may have the relay drop the entry).
    relay_ours: bool = True


def reachable(nat: NatKind) -> bool:
    """Reachable from anywhere at its observed endpoint: no NAT, or an open (one-to-one) NAT."""
    return nat in (NatKind.NONE, NatKind.OPEN)


def same_nat(a_nat: NatKind, a_observed: Endpoint, b_nat: NatKind, b_observed: Endpoint) -> bool:
    """Both nodes behind one NAT: both translated, same observed address."""
    return a_nat is not NatKind.NONE and b_nat is not NatKind.NONE and a_observed[0] == b_observed[0]


def decide_route(a_nat: NatKind, a_observed: Endpoint, b_nat: NatKind, b_observed: Endpoint) -> tuple[PathMode, bool]:
    """The route table for two NTM nodes (docs/protocol.md, "Route decision"); ``a`` is the requester.

    ``*_nat`` is the DC's classification (NONE, OPEN, CONE, SYMMETRIC; unclassified NAT counts as
    CONE). Returns (mode, a_initiates). Relayed paths are always initiated by the requester.
    """
    try:
        fam_a = ipaddress.ip_address(a_observed[0]).version
        fam_b = ipaddress.ip_address(b_observed[0]).version
    except ValueError:
        return PathMode.RS_S, True
    if fam_a != fam_b:
        return PathMode.RS_S, True  # IPv4 / IPv6 mismatch: only a dual-stack relay joins them
    if same_nat(a_nat, a_observed, b_nat, b_observed):
        return PathMode.DIRECT, True  # same NAT: direct on private addresses (NAT type irrelevant)
    if reachable(a_nat) and reachable(b_nat):
        return PathMode.DIRECT, True
    # Only one end is behind a NAT (cone, unclassified or symmetric): it initiates, so its own NAT
    # opens the mapping toward the reachable end, which answers the source it sees (a symmetric NAT's
    # per-destination mapping is then the one this path uses).
    if reachable(a_nat):
        return PathMode.DIRECT, False
    if reachable(b_nat):
        return PathMode.DIRECT, True
    return PathMode.RS_S, True  # both behind different NATs


def peer_targets(of: _Session, mode: PathMode, behind_one_nat: bool) -> tuple[Endpoint, ...]:
    """Where the other node of a DIRECT path sends its Tunnel Request to reach ``of``."""
    if mode is not PathMode.DIRECT:
        return ()
    return of.local_endpoints if behind_one_nat else (of.endpoint,)


def peer_route(config: DcConfig, path_id: bytes, mode: PathMode, path_key: bytes, relay_key: bytes | None,
               me: _Session, other: _Session, role: PathRole, peer_endpoints: tuple[Endpoint, ...]) -> RouteDirection:
    """The Route Direction that tells ``me`` of its path with ``other`` (both nodes of this DC)."""
    return RouteDirection(path_id=path_id, path_role=role, mode=mode, path_key=path_key,
                          idle_timeout=config.idle_timeout,
                          keepalive=config.keepalive if me.nat is NatKind.NAT else 0,
                          peer_name=other.record.name, peer_vip4=other.record.vip4,
                          peer_vip6=other.record.vip6, peer_endpoints=peer_endpoints, relay_key=relay_key)


def rss_direction(config: DcConfig, path_id: bytes, relay_key: bytes | None, ini: _Session,
                  res: _Session) -> RelayDirection:
    """The Relay Direction of an RS-S path between two nodes of this DC (``ini`` initiates)."""
    return RelayDirection(path_id=path_id, rs_type=RsType.S, idle_timeout=config.idle_timeout,
                          relay_key=relay_key, node_vip4=ini.record.vip4, node_vip6=ini.record.vip6,
                          peer_vip4=res.record.vip4, peer_vip6=res.record.vip6,
                          node_endpoint=ini.endpoint, responder_endpoint=res.endpoint)


class PathTable:
    """The paths by Path ID, and the RS-N path of each (node, general-node mapping)."""

    def __init__(self, core: DcCore) -> None:
        self._core = core
        self.records: dict[bytes, PathRecord] = {}
        #: RS-N path per (node name, GN mapping), for reuse without scanning every path.
        self.rsn_by_gn: dict[tuple[str, tuple[tuple[str, str], ...]], bytes] = {}

    def new_path_id(self) -> bytes:
        core = self._core
        while True:
            pid = core._rand(8)
            if pid not in self.records and pid != core.config.dc_id and core.store.get_client(pid) is None:
                return pid

    def release(self, path_id: bytes, now: float) -> None:
        """Forget a path and tell its relay (if any) to drop it."""
        core = self._core
        core.standbys.released(path_id, now)  # (its standby leg, if it has one: standby.py)
        rec = self.records.pop(path_id, None)
        if rec is None or rec.rs is None:
            return
        rs = core.clients.relay_named(rec.rs)
        if rs is not None:
            core._request(rs.channel, PathRelease(path_id=path_id), new_txid(core._rand), rs.endpoint, now,
                         timeout=RELAY_DIRECTION_TIMEOUT)

    def release_relay(self, path_id: bytes, now: float) -> None:
        """A node of the path (the caller checked) says its punched path no longer needs
        its relay entry (issue 16). If the relay is ours, it is told to drop the entry (its answer
        brings its load); the path stays, without a relay (a later fallback is re-directed as plain
        RS-S with a fresh relay key). Nothing to do for an unknown path, one without a relay or with
        another DC's relay (that DC's node releases it), and a path (re-)directed less than
        RELAY_RELEASE_MIN_AGE ago: the release was meant for its previous relay leg."""
        core = self._core
        rec = self.records.get(path_id)
        if rec is None or rec.rs is None or rec.mode is not PathMode.RS_S:
            core.stats["relay_release_nothing"] += 1
            return
        if now - rec.created < RELAY_RELEASE_MIN_AGE:
            core.stats["relay_release_too_early"] += 1
            return
        rs = core.clients.relay_named(rec.rs) if rec.relay_ours else None
        if rs is None:
            core.stats["relay_release_foreign_relay"] += 1
            return
        rec.rs = None
        core.stats["relay_releases"] += 1
        core._request(rs.channel, PathRelease(path_id=path_id), new_txid(core._rand), rs.endpoint, now,
                      timeout=RELAY_DIRECTION_TIMEOUT)

    def holds(self, rec: PathRecord, s: _Session, now: float) -> bool:
        """Whether ``s`` runs as the process instance that got ``rec``'s key; if not, the path is dropped
        (its relay entry released): the key must never reach a restarted process."""
        if dict(rec.holders).get(s.record.name) == s.instance:
            return True
        self._core.stats["paths_dropped_peer_restarted"] += 1
        self.release(rec.path_id, now)
        return False


#: The responder's PUNCH_DELAY (seconds) while the DC has not measured the round trips to both nodes
#: (a node new to it; at the answering DC of a path between two DCs, always: it never sees the
#: requester). With both measured, ``punch_lead`` derives it, within PUNCH_LEAD_MIN .. PUNCH_LEAD_MAX.
PUNCH_LEAD = 0.25
PUNCH_LEAD_MIN = 0.05
PUNCH_LEAD_MAX = 1.0
#: What the lead allows beyond the two one-way times it must cover (the DC's and nodes' processing,
#: jitter).
PUNCH_MARGIN = 0.04


@dataclass(frozen=True, slots=True)
class Traversal:
    """The DC's traversal verdict for an RS-S path between two NATed nodes: whether both nodes get
    each other's candidates (punch), and the reason shown by ``ntm status`` while the path is relayed."""

    punch: bool
    reason: str


def traversal(a_nat: NatKind, b_nat: NatKind, a_udp_ok: bool = True, b_udp_ok: bool = True) -> Traversal:
    """Whether an RS-S path also gets punch candidates (docs/protocol.md, "Route decision").

    Both mappings endpoint-independent (CONE, OPEN, unclassified NAT): punch. One cone side and one
    symmetric side: punch too ("try what can work": the cone side's mapping is stable, the symmetric
    side's probe toward it opens the one mapping the cone side answers). Symmetric on both sides, or
    UDP filtered on either: no punch, the path stays relayed.
    """
    if not (a_udp_ok and b_udp_ok):
        return Traversal(False, "udp filtered")
    sym_a = a_nat is NatKind.SYMMETRIC
    sym_b = b_nat is NatKind.SYMMETRIC
    if sym_a and sym_b:
        return Traversal(False, "symmetric both")
    return Traversal(True, "punch offered")


def punch_offer(mode: PathMode, a_nat: NatKind, b_nat: NatKind, no_punch: bool) -> Traversal | None:
    """The traversal verdict for a path the route table made ``mode`` (None: not an RS-S path, or the
    node asked with NO_PUNCH after its direct path failed)."""
    if mode is not PathMode.RS_S or no_punch:
        return None
    return traversal(a_nat, b_nat)


def candidates(observed: Endpoint, local: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
    """A node's punch candidates: its observed endpoint first, then its own addresses."""
    return tuple(dict.fromkeys((observed, *local)))


def punch_lead(rtt_responder: float | None, rtt_requester: float | None) -> float:
    """The responder's PUNCH_DELAY (seconds), sent in its Route Direction before the requester's.

    The DC tells the responder first and the requester once the responder acknowledged: the requester
    gets its Route Direction about rtt_responder / 2 + rtt_requester / 2 after the responder got its
    own. The lead covers that gap (plus PUNCH_MARGIN), so the requester's delay (``requester_delay``)
    is never negative; bounded by PUNCH_LEAD_MIN and PUNCH_LEAD_MAX. PUNCH_LEAD while either round
    trip is unmeasured."""
    if rtt_responder is None or rtt_requester is None:
        return PUNCH_LEAD
    lead = rtt_responder / 2 + rtt_requester / 2 + PUNCH_MARGIN
    return min(PUNCH_LEAD_MAX, max(PUNCH_LEAD_MIN, lead))


def punch_remaining(lead: float, sent_at: float, now: float) -> float:
    """The responder was sent ``lead`` at ``sent_at`` (its Route Direction's last transmission) and
    acknowledged at ``now``: it got the message half that round trip after it was sent, so it starts
    probing this long from ``now`` (seconds, never negative)."""
    return max(0.0, lead - (now - sent_at) / 2)


def requester_delay(remaining: float, rtt_requester: float | None) -> float:
    """The requester's PUNCH_DELAY (seconds): the responder starts ``remaining`` from now, the
    requester's Route Direction takes half its round trip to arrive (0 while unmeasured)."""
    return max(0.0, remaining - (rtt_requester or 0.0) / 2)


def delay_ms(seconds: float) -> int:
    """A PUNCH_DELAY in ms (U16)."""
    return min(0xFFFF, max(0, round(seconds * 1000)))


#: PUNCH_DELAY in ms of the responder while the DC has measured no round trips (``punch_lead``).
PUNCH_DELAY_MS = delay_ms(PUNCH_LEAD)
