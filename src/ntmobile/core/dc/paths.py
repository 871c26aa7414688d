"""The DC's path table: every path it directed (PathRecord), new Path IDs, releases, who holds a
path's key, and the route decision between two NTM nodes."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ntmobile.wire import Endpoint, NatKind, PathMode, PathRelease, PathRole, RelayDirection, RouteDirection, RsType

from ..common import new_txid
from ..registry import PathRow, PathStore, StoreError
from ..timing import PATH_ROW_TTL, REDIRECT_STALE, RELAY_DIRECTION_TIMEOUT, RELAY_RELEASE_MIN_AGE
from .config import DcConfig
from .sessions import _Session

if TYPE_CHECKING:
    from .core import DcCore


#: Candidate Path IDs checked against the registry in one query (PathTable.new_path_id).
PATH_ID_POOL = 32


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


#: What ``PathTable.claim`` answers while another replica re-directs the path.
BUSY = "busy"


class PathTable:
    """The paths by Path ID, and the RS-N path of each (node, general-node mapping).

    On a registry shared by DC replicas (``store.shares_paths``: PostgreSQL) the NTM-peer paths
    (DIRECT, RS-S) are also kept there, one row per path (core.registry.PathRow), written at every
    (re-)direction and deleted when the path is dropped; a replica reads a path from there whenever
    it needs its current state (a re-direction, a peer's query, a release), so it re-directs paths
    another replica directed. ``records`` stays this replica's cache (and the whole table otherwise)."""

    def __init__(self, core: DcCore) -> None:
        self._core = core
        self.records: dict[bytes, PathRecord] = {}
        #: Path IDs checked to be no client's ID, not yet used (new_path_id with a ``not_clients`` store).
        self._id_pool: list[bytes] = []
        #: RS-N path per (node name, GN mapping), for reuse without scanning every path.
        self.rsn_by_gn: dict[tuple[str, tuple[tuple[str, str], ...]], bytes] = {}
        store = core.store
        self.shared: PathStore | None = store if getattr(store, "shares_paths", False) else None  # type: ignore[assignment]
        #: The name under which this DC holds re-direction leases (its replica name).
        self.owner = core.config.replica_name
        self._next_expiry = 0.0

    # -- the shared rows (replicas) -----------------------------------------------------------------
    def _row(self, rec: PathRecord, now: float) -> PathRow:
        a, b = sorted((rec.initiator, rec.peer))
        role_a = rec.requester_role if a == rec.initiator else (
            PathRole.RESPONDER if rec.requester_role is PathRole.INITIATOR else PathRole.INITIATOR)
        holders = dict(rec.holders)
        wall = self._core.wall_us(now) - int((now - rec.created) * 1_000_000)
        return PathRow(rec.path_id, a, b, int(role_a), holders.get(a), holders.get(b), int(rec.mode), rec.rs,
                       rec.path_key, rec.relay_ours, wall)

    def _record(self, row: PathRow, now: float) -> PathRecord:
        created = now - max(0, self._core.wall_us(now) - row.directed_us) / 1_000_000
        holders = tuple((n, i) for n, i in ((row.end_a, row.inst_a), (row.end_b, row.inst_b)) if i is not None)
        old = self.records.get(row.path_id)
        rec = PathRecord(row.path_id, row.end_a, row.end_b, PathMode(row.mode), row.rs, created, (), row.path_key,
                         requester_role=PathRole(row.role_a), relay_key=old.relay_key if old is not None else b"",
                         holders=holders, relay_ours=row.relay_ours)
        self.records[row.path_id] = rec
        return rec

    def lookup(self, path_id: bytes, now: float) -> PathRecord | None:
        """The path's current record: from the shared registry if there is one (this replica's own
        if the registry has no row or cannot be read; an RS-N path stays local), else this DC's."""
        local = self.records.get(path_id)
        if self.shared is None or (local is not None and local.mode is PathMode.RS_N):
            return local
        core = self._core
        try:
            row = self.shared.load_path(path_id)
        except StoreError:
            core.stats["path_store_errors"] += 1
            return local
        core.stats["path_store_reads"] += 1
        if row is None:
            return local
        return self._record(row, now)

    def put(self, rec: PathRecord, now: float) -> None:
        """Record a path this DC (re-)directed; an NTM-peer path goes to the shared registry too (the
        lease this replica held for its re-direction ends there)."""
        self.records[rec.path_id] = rec
        if self.shared is None or rec.mode is PathMode.RS_N:
            return
        try:
            self.shared.save_path(self._row(rec, now), self.owner)
            self._core.stats["path_store_writes"] += 1
        except StoreError:
            self._core.stats["path_store_errors"] += 1

    def claim(self, path_id: bytes, now: float) -> PathRecord | str | None:
        """The record of a path to re-direct, with its re-direction lease taken (shared registry): one
        re-direction of a path at a time across the replicas. BUSY: another replica's runs; None:
        no such path. Raises StoreError (the registry is down: no lease, no re-direction)."""
        local = self.records.get(path_id)
        if self.shared is None or (local is not None and local.mode is PathMode.RS_N):
            return local
        won, row = self.shared.claim_path(path_id, self.owner, REDIRECT_STALE)
        if row is None and local is not None:
            # Known here only (its row expired, or its write failed): written again, then claimed.
            self.shared.save_path(self._row(local, now), self.owner)
            won, row = self.shared.claim_path(path_id, self.owner, REDIRECT_STALE)
        self._core.stats["path_claims"] += 1
        if row is None:
            return None
        if not won:
            self._core.stats["path_claims_busy"] += 1
            return BUSY
        return self._record(row, now)

    def unclaim(self, path_id: bytes) -> None:
        """A re-direction that failed gives its lease back."""
        if self.shared is None:
            return
        try:
            self.shared.unclaim_path(path_id, self.owner)
        except StoreError:
            self._core.stats["path_store_errors"] += 1  # (the lease runs out by itself)

    def via(self, rs: str, now: float) -> list[PathRecord]:
        """The RS-S paths through relay ``rs`` (this DC's, and on a shared registry every replica's)."""
        recs = {p: r for p, r in self.records.items() if r.mode is PathMode.RS_S and r.rs == rs}
        if self.shared is not None:
            try:
                for row in self.shared.paths_via(rs):
                    recs[row.path_id] = self._record(row, now)
            except StoreError:
                self._core.stats["path_store_errors"] += 1
        return list(recs.values())

    def _forget(self, path_id: bytes, rec: PathRecord | None) -> None:
        if self.shared is None or (rec is not None and rec.mode is PathMode.RS_N):
            return
        try:
            self.shared.drop_path(path_id)
        except StoreError:
            self._core.stats["path_store_errors"] += 1  # (the row expires: PATH_ROW_TTL)

    def drop(self, path_id: bytes) -> None:
        """Forget a path here and in the shared registry (no relay to tell)."""
        self._forget(path_id, self.records.pop(path_id, None))

    def expire(self, now: float) -> None:
        """Rows of the shared registry not (re-)directed for PATH_ROW_TTL are deleted (every replica
        asks, at most once per PATH_ROW_TTL / 24)."""
        if self.shared is None or now < self._next_expiry:
            return
        self._next_expiry = now + PATH_ROW_TTL / 24
        try:
            self._core.stats["path_rows_expired"] += self.shared.expire_paths(PATH_ROW_TTL)
        except StoreError:
            self._core.stats["path_store_errors"] += 1

    def new_path_id(self) -> bytes:
        """8 random bytes, no active path's ID, not the DC ID and no enrolled client's ID (protocol.md,
        "Path ID"). A store that checks many IDs in one query (``not_clients``: PgStore, where each
        look-up is a round trip) gets PATH_ID_POOL candidates checked at once, taken one by one."""
        core = self._core
        check = getattr(core.store, "not_clients", None)
        while True:
            if check is None:
                pid = core._rand(8)
                if pid in self.records or pid == core.config.dc_id or core.store.get_client(pid) is not None:
                    continue
                return pid
            if not self._id_pool:
                self._id_pool = check([core._rand(8) for _ in range(PATH_ID_POOL)])
            pid = self._id_pool.pop()
            if pid not in self.records and pid != core.config.dc_id:
                return pid

    def release(self, path_id: bytes, now: float) -> None:
        """Forget a path and tell its relay (if any) to drop it."""
        core = self._core
        core.standbys.released(path_id, now)  # (its standby leg, if it has one: standby.py)
        rec = self.records.pop(path_id, None)
        if rec is None and self.shared is not None:
            rec = self.lookup(path_id, now)  # (another replica's: its relay may be ours)
            self.records.pop(path_id, None)
        self._forget(path_id, rec)
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
        rec = self.lookup(path_id, now)
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
        self.put(rec, now)
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
