"""The Direction Coordinator's sans-IO core: registration of nodes and relay servers, NAT detection,
direction of every path (general nodes through RS-N; NTM peers of the same domain directly or
through RS-S), keepalives.

Name resolution is asked for, not performed: a Direction Request for a name outside the DC's own
domain emits ``ResolveRequest``; the runtime runs the DNS discovery (core.discovery) and feeds the
answer (a ``DiscoveryResult``) back with ``resolution_result``.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ntmobile.crypto import (
    Channel,
    CounterFloor,
    Ephemeral,
    dc_static_keys,
    long_term_keys,
    session_keys,
    x25519_public,
)
from ntmobile.wire import (
    MAX_SIGNAL_SIZE,
    VERSION,
    CodecError,
    DirectionRequest,
    DirectionResponse,
    Endpoint,
    Keepalive,
    KeepaliveAck,
    Message,
    MessageType,
    NatKind,
    PathMode,
    PathRelease,
    PathReleaseAck,
    PathRole,
    PeerAnswer,
    PeerHello,
    PeerQuery,
    RegistrationRequest,
    RegistrationResponse,
    RelayDirection,
    RelayProbe,
    RelayProbeResult,
    Role,
    RouteDirection,
    RouteDirectionAck,
    RsType,
    SignalFlags,
    SignalHeader,
    Status,
    StatusMessage,
    pack_peer_hello,
    parse_peer_hello,
    parse_signal_header,
    peek,
)
from ntmobile.wire.frame import SIGNAL_HEADER_SIZE, pack_version_not_supported, txid_of

from .common import CoreBase, Event, RateLimiter, new_txid, source_prefix
from .discovery import DiscoveryResult, Outcome
from .dnsauth import DcMarker
from .registry import ClientRecord, Store, StoreError
from .targets import TargetPolicy
from .timing import (
    DISTANCE_PROBE_TIMEOUT,
    EPHEMERAL_LIFETIME,
    METRIC_TTL,
    PEER_CLOCK_SKEW,
    PEER_HELLO_MIN_GAP,
    PEER_HELLO_RESEND,
    PEER_QUERY_TIMEOUT,
    REDIRECT_STALE,
    RELAY_BUDGET,
    RELAY_DEAD_AFTER,
    RELAY_DIRECTION_TIMEOUT,
    REPLY_CACHE_SECONDS,
    ROUTE_DIRECTION_TIMEOUT,
    UNREACHABLE_METRIC_TTL,
)

#: Long-term channels kept in memory (least recently used first out). A dropped one is rebuilt from
#: the registry (its replay floor is the last registration's sequence number) on the next message.
LONG_TERM_CACHE = 4096
#: Sealed datagrams held per peer DC while its key is being checked.
PEER_HELD_MAX = 16
#: ... and for all peer DCs together (each at most MAX_SIGNAL_SIZE bytes: unauthenticated input
#: holds at most 256 x 1200 bytes here).
PEER_HELD_TOTAL = 256
#: A Peer Query whose Path ID is in use at the peer DC or its relay is retried this often.
PEER_PATH_ATTEMPTS = 3
#: Peer DCs known only from an unverified hello (unauthenticated input): at most this many at a time.
PEER_UNVERIFIED_MAX = 256
#: Peer Hellos from unknown sources (any but a verified peer's known endpoint, with its key): per
#: source prefix (/24, /48) this many per second with this burst, and for all such sources together.
PEER_HELLO_RATE = (1.0, 4.0)
PEER_HELLO_GLOBAL_RATE = (20.0, 50.0)


@dataclass(frozen=True, slots=True)
class DcConfig:
    domain: str
    dc_id: bytes
    keepalive: int = 15
    relay_keepalive: int = 5
    idle_timeout: int = 120
    #: Further domains this DC is authoritative for (one DC may serve several).
    extra_domains: tuple[str, ...] = ()
    #: The DC's static X25519 secret (its public key is in the marker TXT). Empty: no DC-to-DC.
    secret: bytes = b""
    #: Configured peer DCs: (domain, static public key). They take precedence over DNS markers.
    peers: tuple[tuple[str, bytes], ...] = ()
    #: The DC's probe endpoints (one per family) for NAT classification; empty: no probes.
    probe: tuple[Endpoint, ...] = ()
    #: RS-N targets: prefixes opened although not globally routable (operator allow-list), and prefixes
    #: always refused (the VIP and GN-VIP pools, the DC's own addresses). docs/security.md "RS-N targets".
    rsn_allow: tuple[str, ...] = ()
    rsn_refuse: tuple[str, ...] = ()

    def own_domain(self, fqdn: str) -> str | None:
        """The domain of this DC that ``fqdn`` belongs to, or None."""
        for dom in (self.domain, *self.extra_domains):
            if fqdn == dom or fqdn.endswith("." + dom):
                return dom
        return None


# -- events ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientRegistered(Event):
    name: str
    role: Role
    vip4: str | None
    vip6: str | None
    observed: Endpoint
    nat: NatKind


@dataclass(frozen=True, slots=True)
class RegistrationRejected(Event):
    name: str
    status: Status
    reason: str


@dataclass(frozen=True, slots=True)
class ResolveRequest(Event):
    token: int
    fqdn: str


@dataclass(frozen=True, slots=True)
class DirectionDecision(Event):
    """One set-up decision and its evidence, for the log."""

    node: str
    fqdn: str
    status: Status
    mode: PathMode | None
    rs: str | None
    path_id: bytes | None
    evidence: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RelayLost(Event):
    name: str


@dataclass(frozen=True, slots=True)
class ProbeDatagram(Event):
    """Send ``data`` to ``addr`` from the DC's probe socket (NAT classification), or from its filter
    socket (the probe port + 1, which nobody ever sends to) when ``filter`` is set."""

    data: bytes
    addr: Endpoint
    filter: bool = False


@dataclass(frozen=True, slots=True)
class NatClassified(Event):
    name: str
    kind: NatKind
    evidence: str


@dataclass(frozen=True, slots=True)
class VerifyPeerDc(Event):
    """Look up the DC marker TXT at the apex of ``domain`` and call ``peer_dc_verified(token, key)``
    with the key it names (None if there is no valid marker)."""

    token: int
    domain: str
    key: bytes


@dataclass(frozen=True, slots=True)
class PeerDcNote(Event):
    """Something about a peer DC worth logging (verified, refused)."""

    peer: str
    text: str


# -- state -------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Session:
    record: ClientRecord
    channel: Channel
    endpoint: Endpoint
    local_endpoints: tuple[Endpoint, ...]
    nat: NatKind
    last_seen: float
    capabilities: int
    #: The registration that made this session: its txid and the client ephemeral's first 8 bytes in
    #: one integer (a retransmitted request gets the same response again, rebuilt from the session),
    #: the DC ephemeral and the probe endpoint it announced.
    reg_tag: int = 0
    #: The client process (RegistrationRequest INSTANCE; without one, every registration counts as a
    #: new process): a path key is only ever given again to the instance that holds it.
    instance: bytes = b""
    dc_eph: bytes = b""
    probe: Endpoint | None = None
    load: int = 0
    alive: bool = True
    #: NAT classification by the probes (None: not measured, use ``nat``).
    measured: NatKind | None = None
    filter_txid: int = 0
    filter_open: bool = False
    mapping_same: bool | None = None


@dataclass(slots=True)
class _Direction:
    node: _Session
    txid: int
    fqdn: str
    started: float
    evidence: list[str] = field(default_factory=list)
    reply: bytes | None = None
    done_at: float = 0.0
    candidates: list[_Session] = field(default_factory=list)
    relay_msg: RelayDirection | None = None
    route: RouteDirection | None = None
    rs: _Session | None = None
    responder: _Session | None = None
    responder_route: RouteDirection | None = None
    path_id: bytes | None = None
    gn_map: tuple[tuple[str, str], ...] = ()
    gn_addr: str = ""
    probing: set[str] = field(default_factory=set)
    reuse_rs: str | None = None
    tried: list[_Session] = field(default_factory=list)
    #: Relays that refused the general node's address (ADDRESS_REFUSED): not asked again.
    refused_by: list[str] = field(default_factory=list)
    #: A re-direction of an existing path (handover): its Path ID, key and roles never change.
    redirect: bool = False
    #: A re-direction the DC started itself (the path's relay died, or a relay is back for a path that
    #: had none): ``node`` gets its Route Direction as a request (acknowledged), not as a reply.
    dc_initiated: bool = False
    #: The relay named by a peer DC (our node's path through the other DC's RS-S).
    rs_name: str | None = None
    #: DC to DC, requesting side: the peer DC asked, and the keys we made.
    peer_out: _PeerDc | None = None
    peer_out_ep: Endpoint | None = None
    path_key: bytes = b""
    relay_key: bytes = b""
    peer_attempts: int = 0
    #: DC to DC, answering side: ``node`` is then our own node (the peer of the remote requester) and the
    #: outcome goes back to the querying DC instead of to a node.
    peer_in: _PeerIn | None = None


@dataclass(slots=True)
class _PeerDc:
    """Another DC, known by its static public key."""

    key: bytes
    channel: Channel
    dc_id: bytes | None = None
    #: The ID from a hello whose key is still being checked.
    claimed_id: bytes | None = None
    endpoint: Endpoint | None = None
    #: We picked this key ourselves (configured, or from the marker) to send a query: its answers count.
    trusted: bool = False
    #: Domains this key was verified for (configured key or the domain's marker): its queries may name
    #: requesters in them.
    domains: set[str] = field(default_factory=set)
    checking: set[str] = field(default_factory=set)
    held: list[tuple[SignalHeader, bytes, Endpoint]] = field(default_factory=list)
    hello_sent: float = -1e9
    replies: dict[int, tuple[bytes, float]] = field(default_factory=dict)
    busy: set[int] = field(default_factory=set)
    seen: dict[tuple[bytes, int], float] = field(default_factory=dict)


@dataclass(slots=True)
class _PeerIn:
    dc: _PeerDc
    txid: int
    addr: Endpoint
    query: PeerQuery
    requester: str
    requester_role: PathRole
    mode: PathMode
    #: Where the requester sends its Tunnel Request (DIRECT, requester initiates).
    requester_targets: tuple[Endpoint, ...]


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
    if NatKind.SYMMETRIC in (a_nat, b_nat):
        return PathMode.RS_S, True  # an endpoint-dependent mapping: nobody can be told where to send
    if reachable(a_nat):
        return PathMode.DIRECT, False  # only b is behind a (cone) NAT: b initiates and opens it
    if reachable(b_nat):
        return PathMode.DIRECT, True
    return PathMode.RS_S, True  # both behind different filtering NATs


class DcCore(CoreBase):
    def __init__(self, config: DcConfig, store: Store, now: float, *, seq_base: int,
                 counter: CounterFloor | None = None, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        """``seq_base``: the wall clock (µs) at ``now`` (Peer Query timestamps). ``counter``: the send
        counter of every long-term and DC-to-DC channel, persisted by the runtime (CounterFloor);
        without one, an in-memory counter from ``seq_base`` (tests)."""
        CoreBase.__init__(self)
        self.config = config
        self.store = store
        self._rand = random_bytes
        self._seq_base = seq_base
        self._counter = counter if counter is not None else CounterFloor(max(seq_base, 1))
        self._lt: OrderedDict[bytes, Channel] = OrderedDict()
        self._eph: Ephemeral | None = None
        self._eph_at = -1e9
        #: Between begin_batch and end_batch: the registrations answered (whose registry writes the
        #: runtime commits at end_batch): session, response datagram, long-term channel, txid, address.
        self._batch: list[tuple[_Session, bytes, Channel, int, Endpoint]] | None = None
        self._sessions: dict[bytes, _Session] = {}
        #: IDs of the relays among the sessions (relays() must not scan every node's session).
        self._relay_ids: dict[bytes, None] = {}
        #: RS-N path per (node name, GN mapping), for reuse without scanning every path.
        self._rsn_by_gn: dict[tuple[str, tuple[tuple[str, str], ...]], bytes] = {}
        #: RS-N target policy, for the configuration it was built from (rebuilt if that is replaced).
        #: Built now, so a bad prefix is a ValueError at construction, never an error on input.
        self._targets = (config, self._target_policy(config))
        self._directions: dict[tuple[bytes, int], _Direction] = {}
        self._resolving: dict[int, _Direction] = {}
        self._next_token = 1
        self.paths: dict[bytes, PathRecord] = {}
        self._metrics: dict[tuple[str, str], tuple[int | None, int | None, float]] = {}
        self._t0 = now
        self._public = x25519_public(config.secret) if config.secret else b""
        self._peers_by_key: dict[bytes, _PeerDc] = {}
        self._peers_by_id: dict[bytes, _PeerDc] = {}
        self._verifying: dict[int, tuple[_PeerDc, str]] = {}
        self._hello_limit = RateLimiter(*PEER_HELLO_RATE, *PEER_HELLO_GLOBAL_RATE)
        #: Re-directions: the one running per Path ID, and the ones waiting for it (docs/protocol.md §10).
        self._redirecting: dict[bytes, _Direction] = {}
        self._redirect_queue: dict[bytes, list[_Direction]] = {}
        #: RS-S paths that could not be moved for want of a live relay: rebuilt when one is back.
        self._waiting_relay: set[bytes] = set()
        self._call_at(now + config.relay_keepalive, self._sweep)

    # -- introspection ---------------------------------------------------------------------------
    def sessions(self) -> list[dict[str, object]]:
        return [{"name": s.record.name, "role": s.record.role.name, "vip4": s.record.vip4, "vip6": s.record.vip6,
                 "endpoint": list(s.endpoint), "nat": s.nat.name, "nat_class": self._nat_class(s).name,
                 "load": s.load, "alive": s.alive}
                for s in self._sessions.values()]

    def relays(self) -> list[_Session]:
        return [s for cid in self._relay_ids if (s := self._sessions.get(cid)) is not None and s.alive]

    # -- input --------------------------------------------------------------------------------
    def receive_datagram(self, data: bytes, addr: Endpoint, now: float) -> None:
        if len(data) >= SIGNAL_HEADER_SIZE and data[0] != VERSION and data[1] != MessageType.VERSION_NOT_SUPPORTED:
            # A client of another protocol version: tell it which versions we speak (unauthenticated,
            # smaller than the request, so it cannot amplify).
            self.stats["drop_unknown_version"] += 1
            txid = txid_of(data)
            self._send_unauthenticated(pack_version_not_supported(txid if txid is not None else 0), len(data), addr)
            return
        try:
            _v, mtype = peek(data)
            if mtype == MessageType.DATA:
                self.stats["drop_data_at_dc"] += 1
                return
            header = parse_signal_header(data)
        except CodecError:
            self.stats["drop_malformed"] += 1
            return
        if header.type is MessageType.PEER_HELLO:
            self._on_peer_hello(data, addr, now)
            return
        if not header.flags & SignalFlags.LONG_TERM:
            session = self._sessions.get(header.sender)
            if session is not None:  # the common case needs no registry read
                self._on_session(session, header, data, addr, now)
                return
        record = self.store.get_client(header.sender)
        if record is None:
            if not self._on_peer_dc_datagram(header, data, addr, now):
                self.stats["drop_unknown_client"] += 1
            return
        if header.flags & SignalFlags.LONG_TERM:
            self._on_long_term(record, header, data, addr, now)
        else:
            # We lost the session (DC restart): ask the client to register again.
            self.stats["reregister_sent"] += 1
            reply = self._long_term(record, now).seal(StatusMessage(answers=header.type, reason="no session; register"),
                                                      txid=header.txid, status=Status.REREGISTER,
                                                      flags=SignalFlags.LONG_TERM)
            self._send_unauthenticated(reply, len(data), addr)

    def _long_term(self, record: ClientRecord, now: float) -> Channel:
        """The long-term channel of ``record`` (fresh from the registry). Every long-term channel draws
        its send counter from the DC's persisted CounterFloor, so a rebuilt channel (eviction, restart)
        never reuses a sequence number, whatever the clock does."""
        lt = self._lt
        ch = lt.get(record.client_id)
        if ch is None:
            ch = Channel(long_term_keys(record.psk, record.client_id).swapped(), self.config.dc_id,
                         counter=self._counter, recv_floor=record.last_seq)
            lt[record.client_id] = ch
            if len(lt) > LONG_TERM_CACHE:
                lt.popitem(last=False)
        else:
            lt.move_to_end(record.client_id)
        return ch

    # -- group commit (the runtime brackets each batch of datagrams) -----------------------------------
    def begin_batch(self) -> None:
        """The registry defers this batch's writes to one commit; answers wait for end_batch."""
        self._batch = []

    def end_batch(self, error: str | None, now: float) -> None:
        """The batch's registry writes were committed (``error`` None) or failed: then the batch's
        registrations are undone and answered with STORAGE_ERROR instead (call this before sending
        the datagrams)."""
        batch, self._batch = self._batch, None
        if error is None or not batch:
            return
        failed = {id(data) for _s, data, _lt, _t, _a in batch}
        self._out = [dg for dg in self._out if id(dg.data) not in failed]
        for session, _data, lt, txid, addr in batch:
            rec = session.record
            if self._sessions.get(rec.client_id) is session:
                del self._sessions[rec.client_id]
                self._relay_ids.pop(rec.client_id, None)
            self.stats["registrations"] -= 1
            self._reject(lt, rec, txid, addr, Status.STORAGE_ERROR, f"registry cannot be written: {error}")

    def _ephemeral(self, now: float) -> Ephemeral:
        eph = self._eph
        if eph is None or now - self._eph_at >= EPHEMERAL_LIFETIME or now < self._eph_at:
            eph = self._eph = Ephemeral(self._rand)
            self._eph_at = now
        return eph

    # -- registration -------------------------------------------------------------------------------
    def _on_long_term(self, record: ClientRecord, header: SignalHeader, data: bytes, addr: Endpoint,
                      now: float) -> None:
        if header.type is MessageType.KEEPALIVE_ACK:
            self._on_filter_ack(record, header, data, now)
            return
        if header.type is not MessageType.REGISTRATION_REQUEST:
            self.stats["drop_unexpected"] += 1
            return
        lt = self._long_term(record, now)
        msg = self._open(lt, header, data)
        if not isinstance(msg, RegistrationRequest):
            return
        reg_tag = (header.txid << 64) | int.from_bytes(msg.ephemeral[:8], "big")
        old = self._sessions.get(record.client_id)
        if old is not None and old.reg_tag == reg_tag:
            # Our response was lost: send it again (same session, same keys; resealed).
            self.stats["registration_retransmits"] += 1
            self._reply(lt, self._registration_response(old, addr), header.txid, addr, flags=SignalFlags.LONG_TERM)
            return
        try:
            self.store.set_last_seq(record.client_id, header.seq)
        except StoreError as exc:
            self._reject(lt, record, header.txid, addr, Status.STORAGE_ERROR, f"registry cannot be written: {exc}")
            return
        if not msg.versions[0] <= VERSION <= msg.versions[1]:
            self._reject(lt, record, header.txid, addr, Status.UNSUPPORTED_VERSION,
                         f"DC speaks version {VERSION}, node offers {msg.versions[0]}..{msg.versions[1]}")
            return
        if msg.role != record.role or msg.name.rstrip(".").lower() != record.name:
            self._reject(lt, record, header.txid, addr, Status.NOT_AUTHORIZED,
                         "name or role does not match the enrolment")
            return
        if record.role is Role.NODE:
            try:
                record.vip4, record.vip6 = self.store.assign_vips(record.client_id, record)
            except StoreError as exc:
                self._reject(lt, record, header.txid, addr, Status.STORAGE_ERROR, f"cannot assign a VIP: {exc}")
                return
        else:
            record.vip4 = record.vip6 = None
        nat = NatKind.NONE if addr in msg.local_endpoints else NatKind.NAT
        eph = self._ephemeral(now)
        try:
            shared = eph.exchange(msg.ephemeral)
        except ValueError:
            self.stats["drop_auth"] += 1
            return
        keys = session_keys(record.psk, shared, record.client_id, msg.ephemeral, eph.public).swapped()
        probe = None
        if record.role is Role.NODE and nat is NatKind.NAT:
            probe = next((p for p in self.config.probe if (":" in p[0]) == (":" in addr[0])), None)
        session = _Session(record, Channel(keys, self.config.dc_id), addr, msg.local_endpoints, nat, now,
                           msg.capabilities, reg_tag=reg_tag, dc_eph=eph.public,
                           instance=msg.instance or reg_tag.to_bytes(24, "big"),
                           probe=probe, load=msg.load or 0)
        self._sessions[record.client_id] = session
        if record.role is Role.RELAY:
            self._relay_ids[record.client_id] = None
        if probe is not None:
            self._send_filter_probe(session, lt, addr)
        data_out = self._reply(lt, self._registration_response(session, addr), header.txid, addr,
                               flags=SignalFlags.LONG_TERM)
        if self._batch is not None:
            self._batch.append((session, data_out, lt, header.txid, addr))
        self.stats["registrations"] += 1
        self._emit(ClientRegistered(record.name, record.role, record.vip4, record.vip6, addr, nat))

    def _registration_response(self, s: _Session, addr: Endpoint) -> RegistrationResponse:
        rec = s.record
        if rec.role is Role.RELAY:
            keepalive = self.config.relay_keepalive
        else:
            keepalive = self.config.keepalive if s.nat is NatKind.NAT else 0
        return RegistrationResponse(ephemeral=s.dc_eph, version=VERSION, observed=addr, nat=s.nat,
                                    keepalive=keepalive, vip4=rec.vip4, vip6=rec.vip6, name=rec.name, probe=s.probe)

    def _reject(self, lt: Channel, record: ClientRecord, txid: int, addr: Endpoint, status: Status,
                reason: str) -> None:
        self.stats["registrations_rejected"] += 1
        self._reply(lt, StatusMessage(answers=MessageType.REGISTRATION_REQUEST, reason=reason), txid, addr,
                    status=status, flags=SignalFlags.LONG_TERM)
        self._emit(RegistrationRejected(record.name, status, reason))

    # -- session messages --------------------------------------------------------------------------
    def _on_session(self, session: _Session, header: SignalHeader, data: bytes, addr: Endpoint,
                    now: float) -> None:
        msg = self._open(session.channel, header, data)
        if msg is None:
            return
        session.last_seen = now
        session.alive = True
        if addr != session.endpoint:
            # Authenticated traffic from a new address (NAT rebinding): follow it.
            self.stats["session_endpoint_learned"] += 1
            session.endpoint = addr
        if isinstance(msg, Keepalive):
            if msg.load is not None:
                session.load = msg.load
            self._reply(session.channel, KeepaliveAck(observed=addr), header.txid, addr)
        elif isinstance(msg, DirectionRequest):
            self._on_direction_request(session, header, msg, now)
        elif isinstance(msg, RelayProbeResult):
            pending = self._answered(session.channel, header.txid)
            if pending is not None and isinstance(pending.tag, tuple) and pending.tag[0] == "probe":
                _, d, rs = pending.tag
                ok = header.status == Status.OK
                self._probe_answered(d, rs, msg.hops if ok else None, msg.rtt_us if ok else None, now)
        elif isinstance(msg, DirectionResponse):
            self._on_direction_response(session, header, msg, now)
        elif isinstance(msg, RouteDirectionAck):
            self._on_route_ack(session, header, msg, now)
        elif isinstance(msg, PathRelease):
            self._release(msg.path_id, now)
            self._reply(session.channel, PathReleaseAck(path_id=msg.path_id), header.txid, addr)
        elif isinstance(msg, (StatusMessage, PathReleaseAck)):
            self._answered(session.channel, header.txid)
        else:
            self.stats["drop_unexpected"] += 1

    # -- directions --------------------------------------------------------------------------------
    def _on_direction_request(self, node: _Session, header: SignalHeader, msg: DirectionRequest, now: float) -> None:
        key = (node.record.client_id, header.txid)
        existing = self._directions.get(key)
        if existing is not None:
            self.stats["direction_retransmits"] += 1
            if existing.reply is not None:
                self._send(existing.reply, node.endpoint)
            return
        if node.record.role is not Role.NODE or not msg.fqdn:
            self._fail_direction(_Direction(node, header.txid, msg.fqdn or "", now), Status.BAD_REQUEST,
                                 "a direction request needs a node session and an FQDN")
            return
        if msg.path_id is not None:
            self._redirect(node, header, msg, now)
            return
        fqdn = msg.fqdn.rstrip(".").lower()
        d = _Direction(node, header.txid, fqdn, now)
        self._directions[key] = d
        own = self.config.own_domain(fqdn)
        if own is not None:
            d.evidence.append(f"{fqdn} is in this DC's own domain {own}")
            self._direct_local_peer(d, now)
            return
        token = self._next_token
        self._next_token += 1
        self._resolving[token] = d
        self._emit(ResolveRequest(token, fqdn))

    def resolution_result(self, token: int, result: DiscoveryResult, now: float) -> None:
        """The runtime's answer to ResolveRequest ``token``: what discovery (core.discovery) found."""
        d = self._resolving.pop(token, None)
        if d is None:
            return
        d.evidence.extend(result.evidence.lines)
        why = self._must_be_ntm_peer(d) if result.outcome is Outcome.GENERAL_NODE else None
        if why is not None:
            # Its marker is gone (removed, or DNS spoofed): an NTM peer we cannot reach, never a general
            # node, whose traffic would leave an RS-N in clear.
            self.stats["direction_peer_marker_missing"] += 1
            self._fail_direction(d, Status.PEER_UNREACHABLE, f"{d.fqdn} is an NTM peer ({why}) but its zone has no "
                                 "DC marker: not reached as a general node")
        elif result.outcome is Outcome.GENERAL_NODE:
            self._direct_general_node(d, result, now)
        elif result.outcome is Outcome.NXDOMAIN:
            self._fail_direction(d, Status.NXDOMAIN, result.reason or f"{d.fqdn} does not exist")
        elif result.outcome is Outcome.NODATA:
            self._fail_direction(d, Status.NODATA, result.reason or f"{d.fqdn} has no address")
        elif result.outcome is Outcome.NTM_PEER:
            self._query_peer_dc(d, result.marker, now)
        else:
            self._fail_direction(d, Status.SERVFAIL, result.reason or f"resolving {d.fqdn} failed")

    def _must_be_ntm_peer(self, d: _Direction) -> str | None:
        """Why ``d``'s name can only be an NTM peer (None: it may be a general node)."""
        rec = self.paths.get(d.path_id) if d.redirect and d.path_id is not None else None
        if rec is not None and rec.mode is not PathMode.RS_N:
            return "its NTM-peer path is being re-directed"
        if self._configured_key(d.fqdn) is not None:
            return "it is under a configured peer domain"
        return None

    def _new_path_id(self) -> bytes:
        while True:
            pid = self._rand(8)
            if pid not in self.paths and pid != self.config.dc_id and self.store.get_client(pid) is None:
                return pid

    def _direct_general_node(self, d: _Direction, res: DiscoveryResult, now: float) -> None:
        rec = d.node.record
        mapping: list[tuple[str, str]] = []
        peer4 = peer6 = gn4 = gn6 = None
        # Only globally routable unicast addresses (or allow-listed ones) become NAT targets: anything
        # else would let the relay reach into its own network (docs/security.md, "RS-N targets").
        refused: list[str] = []
        gn4 = self._rsn_target(res.a, refused) if rec.vip4 else None
        gn6 = self._rsn_target(res.aaaa, refused) if rec.vip6 else None
        try:
            if gn4 is not None:
                peer4 = self.store.gn_vip(rec.client_id, gn4)
                mapping.append((peer4, gn4))
            if gn6 is not None:
                peer6 = self.store.gn_vip(rec.client_id, gn6)
                mapping.append((peer6, gn6))
        except StoreError as exc:
            self._fail_direction(d, Status.STORAGE_ERROR, f"cannot record the GN VIP: {exc}")
            return
        if refused:
            self.stats["rsn_targets_refused"] += len(refused)
            d.evidence.append("refused as RS-N targets: " + "; ".join(refused))
        if not mapping:
            if refused:
                self._fail_direction(d, Status.ADDRESS_REFUSED, f"no address of {d.fqdn} may be reached through "
                                     f"a relay: {refused[0]}")
            else:
                self._fail_direction(d, Status.NODATA,
                                     "the general node has no address of a family the node has a VIP of")
            return
        d.gn_map = tuple(mapping)
        d.evidence.append("general node: " + ", ".join(f"VIP {v} stands for {r}" for v, r in mapping))
        gn_addr = gn4 or gn6 or ""
        relays = self.relays()
        if not relays:
            self._fail_direction(d, Status.NO_RELAY, "no relay server is registered")
            return
        # One RS-N path per (node, GN address): the kernel NAT keys on (node VIP, GN VIP). A node that
        # asks again by name (a second name of the GN, its relay died, it restarted) gets a new path
        # (new Path ID and key: it may hold nothing of the old one, and the relay may be another) that
        # supersedes the old one at the relay and at the node, on the same relay if it is alive. A Path
        # ID names one key for its whole life (docs/security.md §3).
        known = self._rsn_by_gn.get((rec.name, d.gn_map))
        same = self.paths.get(known) if known is not None else None
        if same is not None and not (same.initiator == rec.name and same.gn_map == d.gn_map
                                     and same.mode is PathMode.RS_N):
            same = None
        if same is not None:
            d.evidence.append(f"superseding path {same.path_id.hex()} to the same general node (via {same.rs})")
            d.reuse_rs = same.rs
        d.path_id = self._new_path_id()
        path_key = self._rand(32)
        d.gn_addr = gn_addr
        d.relay_msg = RelayDirection(path_id=d.path_id, rs_type=RsType.N, idle_timeout=self.config.idle_timeout,
                                     path_key=path_key, node_vip4=rec.vip4 if peer4 else None,
                                     node_vip6=rec.vip6 if peer6 else None, peer_vip4=peer4, peer_vip6=peer6,
                                     gn_addr4=gn4, gn_addr6=gn6, node_endpoint=d.node.endpoint)
        d.route = RouteDirection(path_id=d.path_id, path_role=PathRole.INITIATOR, mode=PathMode.RS_N,
                                 path_key=path_key, idle_timeout=self.config.idle_timeout,
                                 keepalive=self.config.keepalive if d.node.nat is NatKind.NAT else 0,
                                 peer_name=d.fqdn, peer_vip4=peer4, peer_vip6=peer6)
        # The rule: prefer the relay closest to the GN by measured hop count (ICMP echo from each relay,
        # cached per relay and GN address), then the least loaded, then the name. Unmeasured or
        # unreachable relays come last.
        missing = [r for r in relays if not self._metric_fresh(r.record.name, gn_addr, now)]
        if missing and d.reuse_rs is None:
            probe = RelayProbe(gn_addr4=gn4, gn_addr6=None if gn4 else gn6)
            d.probing = {r.record.name for r in missing}
            for r in missing:
                self._request(r.channel, probe, new_txid(self._rand), r.endpoint, now, timeout=DISTANCE_PROBE_TIMEOUT,
                              tag=("probe", d, r), on_timeout=functools.partial(self._probe_timed_out, d, r))
            return
        self._choose_relay(d, relays, now)

    @staticmethod
    def _target_policy(c: DcConfig) -> TargetPolicy:
        return TargetPolicy(c.rsn_allow, c.rsn_refuse + tuple(str(a) for a, _p in c.probe))

    def _rsn_target(self, addrs: tuple[str, ...], refused: list[str]) -> str | None:
        """The first of ``addrs`` an RS-N may be directed to; the others' reasons go to ``refused``."""
        if not addrs:
            return None
        if self._targets[0] is not self.config:
            self._targets = (self.config, self._target_policy(self.config))
        policy = self._targets[1]
        own: list[str] = []
        for rs in self.relays():
            own.append(rs.endpoint[0])
            own.extend(ep[0] for ep in rs.local_endpoints)
        for a in addrs:
            why = policy.refusal(a, own)
            if why is None and (vip_of := self.store.client_by_vip(a)) is not None:
                why = f"{a} is the VIP of {vip_of.name}"
            if why is None:
                return a
            refused.append(why)
        return None

    def _metric_fresh(self, rs: str, gn_addr: str, now: float) -> bool:
        m = self._metrics.get((rs, gn_addr))
        return m is not None and m[2] > now

    def _probe_timed_out(self, d: _Direction, rs: _Session, now: float) -> None:
        self._probe_answered(d, rs, None, None, now)

    def _probe_answered(self, d: _Direction, rs: _Session, hops: int | None, rtt_us: int | None, now: float) -> None:
        ttl = METRIC_TTL if hops is not None else UNREACHABLE_METRIC_TTL
        self._metrics[(rs.record.name, d.gn_addr)] = (hops, rtt_us, now + ttl)
        d.probing.discard(rs.record.name)
        if not d.probing and d.reply is None and not d.candidates and d.rs is None:
            self._choose_relay(d, self.relays(), now)

    def _choose_relay(self, d: _Direction, relays: list[_Session], now: float) -> None:
        def key(r: _Session) -> tuple[bool, int, int, str]:
            m = self._metrics.get((r.record.name, d.gn_addr))
            hops = m[0] if m is not None else None
            return (hops is None, hops if hops is not None else 0, r.load, r.record.name)

        ranked = sorted(relays, key=key)
        if d.reuse_rs is not None:
            ranked.sort(key=lambda r: r.record.name != d.reuse_rs)

        def show(r: _Session) -> str:
            m = self._metrics.get((r.record.name, d.gn_addr))
            if m is None or m[0] is None:
                return f"{r.record.name}(unreachable or unmeasured, load {r.load})"
            rtt = f", rtt {m[1] / 1000:.2f} ms" if m[1] is not None else ""
            return f"{r.record.name}(hops {m[0]}{rtt}, load {r.load})"

        d.evidence.append(f"relay ranking for GN {d.gn_addr} (hops, then load): " + ", ".join(show(r) for r in ranked))
        d.candidates = ranked
        self._try_next_relay(d, now)

    def _try_next_relay(self, d: _Direction, now: float) -> None:
        assert d.relay_msg is not None
        if not d.candidates and d.tried and now - d.started < RELAY_BUDGET:
            # Every relay failed once but the node's budget allows another round (lossy paths).
            d.candidates, d.tried = [r for r in d.tried if (r.alive or len(d.tried) == 1)
                                     and r.record.name not in d.refused_by], []
        if not d.candidates:
            if d.refused_by:
                self._fail_direction(d, Status.ADDRESS_REFUSED, f"relay {d.refused_by[0]} refuses to reach "
                                     f"{d.gn_addr} and no other relay accepted the path")
            else:
                self._fail_direction(d, Status.RELAY_FAILED, "no relay server accepted the path")
            return
        rs = d.candidates.pop(0)
        d.tried.append(rs)
        d.rs = rs
        self._request(rs.channel, d.relay_msg, new_txid(self._rand), rs.endpoint, now,
                      timeout=RELAY_DIRECTION_TIMEOUT, tag=d,
                      on_timeout=functools.partial(self._relay_timed_out, d, rs))

    def _relay_timed_out(self, d: _Direction, rs: _Session, now: float) -> None:
        d.evidence.append(f"relay {rs.record.name} did not answer the Relay Direction")
        was_alive, rs.alive = rs.alive, False
        self._emit(RelayLost(rs.record.name))
        self._try_next_relay(d, now)
        if was_alive:
            self._move_paths_off(rs.record.name, now)

    def _on_direction_response(self, rs: _Session, header: SignalHeader, msg: DirectionResponse, now: float) -> None:
        pending = self._answered(rs.channel, header.txid)
        if pending is None:
            self.stats["drop_late_response"] += 1
            return
        d = pending.tag
        if not isinstance(d, _Direction) or d.route is None or d.reply is not None or d.path_id != msg.path_id:
            return
        rs.load = msg.load
        if header.status != Status.OK:
            d.evidence.append(f"relay {rs.record.name} refused: status {header.status}")
            if header.status == Status.PATH_ID_IN_USE and d.peer_in is not None:
                # The Path ID is the querying DC's: it picks another and asks again.
                self._fail_direction(d, Status.PATH_ID_IN_USE, f"relay {rs.record.name}: path ID in use")
                return
            if header.status == Status.ADDRESS_REFUSED:
                d.refused_by.append(rs.record.name)
            if header.status == Status.PATH_ID_IN_USE and not d.redirect:
                new_id = self._new_path_id()
                assert d.relay_msg is not None
                d.path_id = new_id
                d.relay_msg = _replace(d.relay_msg, path_id=new_id)
                d.route = _replace(d.route, path_id=new_id)
                if d.responder_route is not None:
                    d.responder_route = _replace(d.responder_route, path_id=new_id)
                d.candidates.insert(0, rs)
            self._try_next_relay(d, now)
            return
        rs_ep = rs.endpoint
        d.route = _replace(d.route, rs_endpoint=rs_ep, rs_name=rs.record.name)
        d.evidence.append(f"relay {rs.record.name} at {rs_ep[0]}:{rs_ep[1]} accepted path {msg.path_id.hex()}")
        if d.responder is not None and d.responder_route is not None:
            d.responder_route = _replace(d.responder_route, rs_endpoint=rs_ep, rs_name=rs.record.name)
            self._send_responder_route(d, now)
        else:
            self._complete_direction(d, now)

    # -- NTM peers of this DC's own domain ---------------------------------------------------------
    def _direct_local_peer(self, d: _Direction, now: float) -> None:
        target = self.store.client_by_name(d.fqdn)
        if target is None or target.role is not Role.NODE:
            self._fail_direction(d, Status.NXDOMAIN, f"no node named {d.fqdn} is enrolled here")
            return
        peer = self._sessions.get(target.client_id)
        if peer is None or target.client_id == d.node.record.client_id:
            self._fail_direction(d, Status.PEER_UNREACHABLE, f"{d.fqdn} is not registered (or is the requester)")
            return
        a_nat, b_nat = self._nat_class(d.node), self._nat_class(peer)
        mode, a_initiates = decide_route(a_nat, d.node.endpoint, b_nat, peer.endpoint)
        d.evidence.append(f"NTM peer {d.fqdn}: requester {a_nat.name} at {d.node.endpoint}, peer {b_nat.name} "
                          f"at {peer.endpoint} -> {mode.name}, {'requester' if a_initiates else 'peer'} initiates")
        d.path_id = self._new_path_id()
        path_key = self._rand(32)
        relay_key = self._rand(32) if mode is PathMode.RS_S else None
        same = same_nat(a_nat, d.node.endpoint, b_nat, peer.endpoint)

        def targets(of: _Session) -> tuple[Endpoint, ...]:
            if mode is not PathMode.DIRECT:
                return ()
            return of.local_endpoints if same else (of.endpoint,)

        def route_for(me: _Session, other: _Session, initiator: bool) -> RouteDirection:
            return RouteDirection(path_id=d.path_id or b"", path_role=PathRole.INITIATOR if initiator else
                                  PathRole.RESPONDER, mode=mode, path_key=path_key,
                                  idle_timeout=self.config.idle_timeout,
                                  keepalive=self.config.keepalive if me.nat is NatKind.NAT else 0,
                                  peer_name=other.record.name, peer_vip4=other.record.vip4,
                                  peer_vip6=other.record.vip6,
                                  peer_endpoints=targets(other) if initiator else (), relay_key=relay_key)

        d.route = route_for(d.node, peer, a_initiates)
        d.responder = peer
        d.responder_route = route_for(peer, d.node, not a_initiates)
        if mode is PathMode.RS_S:
            relays = self.relays()
            if not relays:
                self._fail_direction(d, Status.NO_RELAY, "both nodes are behind different NATs and no relay is up")
                return
            d.candidates = sorted(relays, key=lambda s: (s.load, s.record.name))
            d.relay_msg = RelayDirection(path_id=d.path_id, rs_type=RsType.S, idle_timeout=self.config.idle_timeout,
                                         relay_key=relay_key, node_vip4=d.node.record.vip4,
                                         node_vip6=d.node.record.vip6, peer_vip4=peer.record.vip4,
                                         peer_vip6=peer.record.vip6, node_endpoint=d.node.endpoint,
                                         responder_endpoint=peer.endpoint)
            self._try_next_relay(d, now)
        else:
            self._send_responder_route(d, now)

    def _send_responder_route(self, d: _Direction, now: float) -> None:
        assert d.responder is not None and d.responder_route is not None
        self._request(d.responder.channel, d.responder_route, new_txid(self._rand), d.responder.endpoint, now,
                      timeout=ROUTE_DIRECTION_TIMEOUT, tag=d,
                      on_timeout=functools.partial(self._responder_timed_out, d))

    def _responder_timed_out(self, d: _Direction, now: float) -> None:
        self._fail_direction(d, Status.PEER_UNREACHABLE, f"{d.fqdn} did not acknowledge its Route Direction")

    def _on_route_ack(self, session: _Session, header: SignalHeader, msg: RouteDirectionAck, now: float) -> None:
        pending = self._answered(session.channel, header.txid)
        if pending is None:
            return
        d = pending.tag
        if isinstance(d, _Direction) and d.reply is None and d.responder is session and d.path_id == msg.path_id:
            self._complete_direction(d, now)

    def _complete_direction(self, d: _Direction, now: float) -> None:
        if d.peer_in is not None:
            self._answer_peer_dc(d, now)
            return
        assert d.route is not None and d.path_id is not None
        if d.dc_initiated:
            # Nobody asked: the node gets the Route Direction as a request of its own (acknowledged).
            d.reply = b""
            self._request(d.node.channel, d.route, new_txid(self._rand), d.node.endpoint, now,
                          timeout=ROUTE_DIRECTION_TIMEOUT, tag=("moved", d.path_id))
        else:
            d.reply = d.node.channel.seal(d.route, txid=d.txid)
            self._send(d.reply, d.node.endpoint)
        d.done_at = now
        rs_name = d.rs.record.name if d.rs is not None else d.rs_name
        previous = self.paths.get(d.path_id)
        self.paths[d.path_id] = PathRecord(d.path_id, d.node.record.name, d.fqdn, PathMode(d.route.mode), rs_name,
                                           now, d.gn_map, d.route.path_key)
        self.paths[d.path_id].requester_role = PathRole(d.route.path_role)
        self.paths[d.path_id].relay_key = d.route.relay_key or (previous.relay_key if previous else b"")
        self.paths[d.path_id].holders = tuple((s.record.name, s.instance) for s in (d.node, d.responder)
                                              if s is not None)
        if d.route.mode == PathMode.RS_N and d.gn_map:
            superseded = self._rsn_by_gn.get((d.node.record.name, d.gn_map))
            self._rsn_by_gn[(d.node.record.name, d.gn_map)] = d.path_id
            if superseded is not None and superseded != d.path_id:
                self._release(superseded, now)  # (its relay has dropped it already if it is this one)
        self.stats["paths_directed"] += 1
        self._emit(DirectionDecision(d.node.record.name, d.fqdn, Status.OK, PathMode(d.route.mode), rs_name,
                                     d.path_id, tuple(d.evidence)))
        if d.redirect:
            self.stats["paths_moved" if d.dc_initiated else "paths_redirected"] += 1
            self._waiting_relay.discard(d.path_id)
            self._redirect_finished(d, None)

    def _fail_direction(self, d: _Direction, status: Status, reason: str) -> None:
        d.evidence.append(f"failed: {reason}")
        if d.peer_in is not None:
            self._refuse_peer_dc(d, status, reason)
            return
        if d.dc_initiated:
            d.reply = b""
            d.done_at = d.started
            self.stats["path_moves_failed"] += 1
            self._emit(DirectionDecision(d.node.record.name, d.fqdn, status, None, None, d.path_id, tuple(d.evidence)))
            self._redirect_finished(d, status)
            return
        d.reply = d.node.channel.seal(StatusMessage(answers=MessageType.DIRECTION_REQUEST, reason=reason),
                                      txid=d.txid, status=status)
        self._directions[(d.node.record.client_id, d.txid)] = d
        self._send(d.reply, d.node.endpoint)
        self.stats["directions_failed"] += 1
        self._emit(DirectionDecision(d.node.record.name, d.fqdn, status, None, None, None, tuple(d.evidence)))
        if d.redirect:
            self._redirect_finished(d, status)

    def _release(self, path_id: bytes, now: float) -> None:
        rec = self.paths.pop(path_id, None)
        if rec is None or rec.rs is None:
            return
        rs = next((s for cid in self._relay_ids if (s := self._sessions.get(cid)) is not None
                   and s.record.name == rec.rs), None)
        if rs is not None:
            self._request(rs.channel, PathRelease(path_id=path_id), new_txid(self._rand), rs.endpoint, now,
                          timeout=RELAY_DIRECTION_TIMEOUT)

    # -- NAT classification (docs/protocol.md, "NAT classification") ---------------------------------
    def _nat_class(self, s: _Session) -> NatKind:
        return s.measured if s.measured is not None else s.nat

    def _send_filter_probe(self, session: _Session, lt: Channel, addr: Endpoint) -> None:
        """Filtering test: a long-term Keepalive from the filter socket to the mapping the Registration
        Request just created. The node never sends to that port, so only a NAT that filters nothing
        lets it through. (Not from the probe port: the conntrack entry it leaves on the NAT would
        collide with the node's mapping probe and make a cone NAT pick another port.)"""
        session.filter_txid = new_txid(self._rand)
        data = lt.seal(Keepalive(), txid=session.filter_txid, flags=SignalFlags.LONG_TERM)
        self._emit(ProbeDatagram(data, addr, filter=True))
        self.stats["nat_filter_probes"] += 1

    def _on_filter_ack(self, record: ClientRecord, header: SignalHeader, data: bytes, now: float) -> None:
        msg = self._open(self._long_term(record, now), header, data)
        session = self._sessions.get(record.client_id)
        if not isinstance(msg, KeepaliveAck) or session is None or not session.filter_txid \
                or header.txid != session.filter_txid:
            self.stats["drop_unexpected"] += 1
            return
        session.filter_txid = 0
        session.filter_open = True
        self._classify(session)

    def receive_probe(self, data: bytes, addr: Endpoint, now: float) -> None:
        """A datagram on the DC's probe socket: the node's mapping probe (a session Keepalive). Its source
        port compared with the registration's observed endpoint tells the mapping behaviour."""
        try:
            header = parse_signal_header(data)
        except CodecError:
            self.stats["drop_malformed"] += 1
            return
        session = self._sessions.get(header.sender)
        if session is None or header.type is not MessageType.KEEPALIVE or header.flags & SignalFlags.LONG_TERM:
            self.stats["drop_probe_unexpected"] += 1
            return
        msg = self._open(session.channel, header, data)
        if not isinstance(msg, Keepalive):
            return
        session.mapping_same = addr == session.endpoint
        self._emit(ProbeDatagram(session.channel.seal(KeepaliveAck(observed=addr), txid=header.txid), addr))
        self.stats["nat_mapping_probes"] += 1
        self._classify(session, addr)

    def _classify(self, s: _Session, probe_src: Endpoint | None = None) -> None:
        if s.nat is NatKind.NONE or s.mapping_same is None:
            return
        if not s.mapping_same:
            kind = NatKind.SYMMETRIC
        else:
            kind = NatKind.OPEN if s.filter_open else NatKind.CONE
        if kind is s.measured:
            return
        s.measured = kind
        preserved = any(s.endpoint[1] == e[1] for e in s.local_endpoints)
        mapping = ("same mapped endpoint toward the probe port" if s.mapping_same else
                   f"mapped to {probe_src} toward the probe port, {s.endpoint} toward the signalling port")
        evidence = (f"{mapping}; unsolicited probe from the filter port "
                    f"{'passed' if s.filter_open else 'filtered (or not answered yet)'}; "
                    f"port {'preserved' if preserved else 'translated'}")
        self._emit(NatClassified(s.record.name, kind, evidence))

    # -- DC to DC (docs/protocol.md, "Peer DCs") -----------------------------------------------------
    def _wall_us(self, now: float) -> int:
        """Wall-clock microseconds (the runtime gives ``seq_base`` = wall clock at ``now`` of start)."""
        return self._seq_base + int((now - self._t0) * 1_000_000)

    def _peer_for_key(self, key: bytes, now: float) -> _PeerDc | None:
        peer = self._peers_by_key.get(key)
        if peer is not None:
            return peer
        if not self.config.secret or key == self._public:
            return None
        try:
            keys = dc_static_keys(self.config.secret, self._public, key)
        except ValueError:
            self.stats["drop_peer_bad_key"] += 1
            return None
        peer = _PeerDc(key, Channel(keys, self.config.dc_id, counter=self._counter))
        self._peers_by_key[key] = peer
        return peer

    def _configured_key(self, name: str) -> bytes | None:
        """The configured key of the most specific peer domain that ``name`` falls in."""
        best: tuple[int, bytes] | None = None
        for dom, key in self.config.peers:
            dom = dom.rstrip(".").lower()
            if (name == dom or name.endswith("." + dom)) and (best is None or len(dom) > best[0]):
                best = (len(dom), key)
        return best[1] if best is not None else None

    def _send_hello(self, peer: _PeerDc, addr: Endpoint, domain: str, now: float, *, reply: int = 0) -> None:
        """Introduce ourselves; ``reply``: the length of the (unauthenticated) hello we answer."""
        peer.hello_sent = now
        hello = PeerHello(domain=domain, key=self._public)
        data = pack_peer_hello(self.config.dc_id, new_txid(self._rand), hello,
                               flags=SignalFlags.FROM_RESPONDER if reply else 0)
        if not reply:
            self._send(data, addr)
        elif not self._send_unauthenticated(data, reply, addr):
            return
        self.stats["peer_hellos_sent"] += 1

    def _bind_peer(self, peer: _PeerDc, dc_id: bytes, now: float) -> None:
        peer.dc_id = dc_id
        peer.claimed_id = None
        self._peers_by_id[dc_id] = peer
        held, peer.held = peer.held, []
        for header, data, addr in held:
            if header.sender == dc_id:
                self._on_peer_sealed(peer, header, data, addr, now)

    def _on_peer_hello(self, data: bytes, addr: Endpoint, now: float) -> None:
        try:
            header, hello = parse_peer_hello(data)
        except CodecError:
            self.stats["drop_malformed"] += 1
            return
        sender = header.sender
        if not self.config.secret or sender == self.config.dc_id or self.store.get_client(sender) is not None:
            self.stats["drop_peer_hello"] += 1
            return
        known = self._peers_by_key.get(hello.key)
        if (known is None or not (known.trusted or known.domains) or known.endpoint != addr) \
                and not self._hello_limit.allow(source_prefix(addr), now):
            # Unauthenticated, from an unknown source: it may cost a key agreement, a DNS look-up
            # and a reply, so strangers get few.
            self.stats["drop_peer_hello_rate"] += 1
            return
        if hello.key not in self._peers_by_key and sum(
                1 for p in self._peers_by_key.values() if not p.trusted and not p.domains) >= PEER_UNVERIFIED_MAX:
            self.stats["drop_peer_hello_unverified_full"] += 1
            return
        peer = self._peer_for_key(hello.key, now)
        if peer is None:
            self.stats["drop_peer_hello"] += 1
            return
        self.stats["peer_hellos"] += 1
        if not (peer.trusted or peer.domains):
            peer.endpoint = addr  # a verified peer's endpoint moves only on authenticated datagrams
        domain = hello.domain.rstrip(".").lower()
        if peer.trusted or peer.domains:
            if peer.dc_id != sender:
                self._bind_peer(peer, sender, now)
        else:
            peer.claimed_id = sender
        if domain and domain not in peer.domains and domain not in peer.checking \
                and self.config.own_domain(domain) is None:
            configured = self._configured_key(domain)
            if configured is not None:
                if configured == hello.key:
                    self._peer_verified(peer, domain, "configured key", now)
                else:
                    self.stats["peer_key_mismatch"] += 1
                    self._emit(PeerDcNote(domain, "hello key differs from the configured key: not trusted"))
            else:
                token = self._next_token
                self._next_token += 1
                self._verifying[token] = (peer, domain)
                peer.checking.add(domain)
                self._emit(VerifyPeerDc(token, domain, hello.key))
        if not header.flags & SignalFlags.FROM_RESPONDER and now - peer.hello_sent > PEER_HELLO_MIN_GAP:
            self._send_hello(peer, addr, self.config.domain, now, reply=len(data))

    def peer_dc_verified(self, token: int, key: bytes | None, now: float) -> None:
        """The runtime looked up the marker of a domain a peer DC's hello named: ``key`` is the key it
        names (None: no valid marker). The hello's key is trusted for that domain only if they match."""
        entry = self._verifying.pop(token, None)
        if entry is None:
            return
        peer, domain = entry
        peer.checking.discard(domain)
        if key is not None and key == peer.key:
            self._peer_verified(peer, domain, "DNS marker", now)
            return
        self.stats["peer_unverified"] += 1
        self._emit(PeerDcNote(domain, "the domain's marker does not name the key of the hello: not trusted"))
        if not peer.checking and peer.dc_id is None:
            self.stats["drop_peer_held"] += len(peer.held)
            peer.held.clear()
        if not peer.checking and not peer.trusted and not peer.domains:
            del self._peers_by_key[peer.key]  # nothing vouches for this key: forget it

    def _peer_verified(self, peer: _PeerDc, domain: str, how: str, now: float) -> None:
        peer.domains.add(domain)
        self.stats["peer_verified"] += 1
        self._emit(PeerDcNote(domain, f"peer DC key {peer.key[:6].hex()}... verified ({how})"))
        if peer.claimed_id is not None:
            self._bind_peer(peer, peer.claimed_id, now)

    def _on_peer_dc_datagram(self, header: SignalHeader, data: bytes, addr: Endpoint, now: float) -> bool:
        """A sealed datagram whose sender is no client of ours: a peer DC's? (False: not ours to take.)"""
        peer = self._peers_by_id.get(header.sender)
        if peer is not None:
            self._on_peer_sealed(peer, header, data, addr, now)
            return True
        for p in self._peers_by_key.values():
            if p.claimed_id == header.sender and p.checking:
                if (len(p.held) < PEER_HELD_MAX and len(data) <= MAX_SIGNAL_SIZE
                        and sum(len(q.held) for q in self._peers_by_key.values()) < PEER_HELD_TOTAL):
                    p.held.append((header, data, addr))
                    self.stats["peer_held"] += 1
                else:
                    self.stats["drop_peer_held"] += 1
                return True
        return False

    def _on_peer_sealed(self, peer: _PeerDc, header: SignalHeader, data: bytes, addr: Endpoint, now: float) -> None:
        msg = self._open(peer.channel, header, data)
        if msg is None:
            return
        peer.endpoint = addr  # authenticated: the peer DC is there
        if isinstance(msg, PeerQuery):
            self._on_peer_query(peer, header, msg, addr, now)
        elif isinstance(msg, (PeerAnswer, StatusMessage)):
            pending = self._answered(peer.channel, header.txid)
            tag = pending.tag if pending is not None else None
            if not (isinstance(tag, tuple) and tag[0] == "peerq" and isinstance(tag[1], _Direction)):
                self.stats["drop_late_response"] += 1
                return
            d: _Direction = tag[1]
            if isinstance(msg, StatusMessage) or header.status != Status.OK:
                self._peer_refused(d, _status(header.status), msg.reason if isinstance(msg, StatusMessage) else "",
                                   now)
            else:
                self._peer_answered(d, msg, now)
        else:
            self.stats["drop_unexpected"] += 1

    # requesting side
    def _query_peer_dc(self, d: _Direction, marker: DcMarker | None, now: float) -> None:
        if not self.config.secret:
            self._fail_direction(d, Status.PEER_UNREACHABLE,
                                 f"{d.fqdn} is an NTM node of another DC; this DC has no key for DC-to-DC coordination")
            return
        configured = self._configured_key(d.fqdn)
        if configured is not None and marker is not None and marker.key != configured:
            self._fail_direction(d, Status.PEER_UNREACHABLE,
                                 "the marker key of the peer's DC differs from the configured key (spoofed DNS?)")
            return
        key = configured if configured is not None else marker.key if marker is not None else None
        if key is None or marker is None:
            self._fail_direction(d, Status.PEER_UNREACHABLE, "the peer's DC marker names no endpoint or key")
            return
        peer = self._peer_for_key(key, now)
        if peer is None:
            self._fail_direction(d, Status.PEER_UNREACHABLE, "the peer DC's key is unusable")
            return
        endpoint = marker.address
        peer.trusted = True
        peer.endpoint = endpoint
        d.peer_out, d.peer_out_ep = peer, endpoint
        if not d.redirect:
            d.path_key, d.relay_key = self._rand(32), self._rand(32)
        d.evidence.append(f"peer DC at {endpoint[0]}:{endpoint[1]}, key {key[:6].hex()}... "
                          f"({'configured' if configured is not None else 'from the DNS marker'})")
        domain = self.config.own_domain(d.node.record.name) or self.config.domain
        self._send_peer_query(d, now)
        for delay in PEER_HELLO_RESEND:
            self._call_at(now + delay, functools.partial(self._rehello, d, domain))

    def _send_peer_query(self, d: _Direction, now: float) -> None:
        peer, ep = d.peer_out, d.peer_out_ep
        assert peer is not None and ep is not None
        node, rec = d.node, d.node.record
        if not d.redirect or d.path_id is None:
            d.path_id = self._new_path_id()
        d.peer_attempts += 1
        if peer.dc_id is None:
            self._send_hello(peer, ep, self.config.own_domain(rec.name) or self.config.domain, now)
        q = PeerQuery(fqdn=d.fqdn, name=rec.name, path_id=d.path_id, path_key=d.path_key, relay_key=d.relay_key,
                      timestamp=self._wall_us(now), nat=int(self._nat_class(node)), vip4=rec.vip4, vip6=rec.vip6,
                      observed=node.endpoint, local_endpoints=node.local_endpoints, capabilities=node.capabilities)
        self._request(peer.channel, q, new_txid(self._rand), ep, now, timeout=PEER_QUERY_TIMEOUT, tag=("peerq", d),
                      on_timeout=functools.partial(self._peer_query_timed_out, d))
        self.stats["peer_queries_sent"] += 1

    def _rehello(self, d: _Direction, domain: str, now: float) -> None:
        peer = d.peer_out
        if d.reply is None and peer is not None and peer.dc_id is None and d.peer_out_ep is not None:
            self._send_hello(peer, d.peer_out_ep, domain, now)

    def _peer_query_timed_out(self, d: _Direction, now: float) -> None:
        if d.reply is None:
            self._fail_direction(d, Status.PEER_UNREACHABLE, f"the DC of {d.fqdn} did not answer the peer query")

    def _peer_refused(self, d: _Direction, status: Status, reason: str, now: float) -> None:
        if d.reply is not None:
            return
        if status is Status.PATH_ID_IN_USE and d.peer_attempts < PEER_PATH_ATTEMPTS and not d.redirect:
            d.evidence.append(f"peer DC: path ID {d.path_id.hex() if d.path_id else ''} in use; asking with a new one")
            self._send_peer_query(d, now)
            return
        if status is Status.PATH_GONE and d.redirect and d.path_id is not None:
            self.paths.pop(d.path_id, None)  # the peer's node restarted: the path is set up again
        self._fail_direction(d, status, f"peer DC: {reason or status.name}")

    def _peer_answered(self, d: _Direction, msg: PeerAnswer, now: float) -> None:
        if d.reply is not None or msg.path_id != d.path_id or d.path_id is None:
            self.stats["drop_late_response"] += 1
            return
        try:
            mode, role = PathMode(msg.mode), PathRole(msg.path_role)
        except ValueError:
            mode, role = PathMode.RS_N, PathRole.INITIATOR  # refused below
        if mode is PathMode.RS_N or (mode is PathMode.RS_S and msg.rs_endpoint is None) or \
                (mode is PathMode.DIRECT and role is PathRole.INITIATOR and not msg.peer_endpoints):
            self._fail_direction(d, Status.PEER_UNREACHABLE, "the peer DC's answer is unusable")
            return
        relayed = mode is PathMode.RS_S
        try:
            peer_nat = NatKind(msg.peer_nat).name
        except ValueError:
            peer_nat = str(msg.peer_nat)
        d.rs_name = msg.rs_name if relayed else None
        d.route = RouteDirection(
            path_id=d.path_id, path_role=role, mode=mode, path_key=d.path_key, idle_timeout=self.config.idle_timeout,
            keepalive=self.config.keepalive if d.node.nat is NatKind.NAT else 0, peer_name=msg.peer_name,
            peer_vip4=msg.peer_vip4 if d.node.record.vip4 else None,
            peer_vip6=msg.peer_vip6 if d.node.record.vip6 else None,
            peer_endpoints=msg.peer_endpoints if mode is PathMode.DIRECT and (role is PathRole.INITIATOR
                                                                            or d.redirect) else (),
            rs_endpoint=msg.rs_endpoint if relayed else None, rs_name=d.rs_name,
            relay_key=d.relay_key if relayed else None, capabilities=msg.capabilities)
        d.evidence.append(f"peer DC decided {mode.name} (peer NAT {peer_nat}); this node is the {role.name.lower()}"
                          + (f"; relay {msg.rs_name} at {msg.rs_endpoint}" if relayed else ""))
        self._complete_direction(d, now)

    # answering side
    def _on_peer_query(self, peer: _PeerDc, header: SignalHeader, q: PeerQuery, addr: Endpoint, now: float) -> None:
        txid = header.txid
        cached = peer.replies.get(txid)
        if cached is not None:
            self.stats["peer_query_retransmits"] += 1
            self._send(cached[0], addr)
            return
        if txid in peer.busy:
            self.stats["peer_query_retransmits"] += 1
            return
        name, fqdn = q.name.rstrip(".").lower(), q.fqdn.rstrip(".").lower()

        def refuse(status: Status, reason: str) -> None:
            data = self._reply(peer.channel, StatusMessage(answers=MessageType.PEER_QUERY, reason=reason), txid, addr,
                               status=status)
            peer.replies[txid] = (data, now)
            self.stats["peer_queries_refused"] += 1
            self._emit(DirectionDecision(name, fqdn, status, None, None, None, (f"peer query refused: {reason}",)))

        if not any(name == dom or name.endswith("." + dom) for dom in peer.domains):
            refuse(Status.NOT_AUTHORIZED, f"{name} is not in a domain verified for the querying DC")
            return
        skew = (q.timestamp - self._wall_us(now)) / 1e6
        if abs(skew) > PEER_CLOCK_SKEW:
            refuse(Status.STALE, f"timestamp {skew:+.1f} s from this DC's clock")
            return
        if (q.path_id, q.timestamp) in peer.seen:
            self.stats["drop_peer_replay"] += 1
            return
        peer.seen[(q.path_id, q.timestamp)] = now
        target = self.store.client_by_name(fqdn) if self.config.own_domain(fqdn) else None
        if target is None or target.role is not Role.NODE:
            refuse(Status.NXDOMAIN, f"no node named {fqdn} is enrolled here")
            return
        node = self._sessions.get(target.client_id)
        if node is None:
            refuse(Status.PEER_UNREACHABLE, f"{fqdn} is not registered")
            return
        known = self.paths.get(q.path_id)
        redirect = (known is not None and known.path_key == q.path_key and known.mode is not PathMode.RS_N
                    and {known.initiator, known.peer} == {name, fqdn})
        if redirect and known is not None and not self._holds(known, node, now):
            # Our node restarted since it got this path's key: never send the key to it again.
            refuse(Status.PATH_GONE, f"{fqdn} restarted since it got path {q.path_id.hex()}: set it up again")
            return
        if (q.path_id in self.paths and not redirect) or q.path_id == self.config.dc_id \
                or self.store.get_client(q.path_id) is not None:
            refuse(Status.PATH_ID_IN_USE, "path ID in use here")
            return
        if q.observed is None:
            refuse(Status.BAD_REQUEST, "the query names no observed endpoint of the requester")
            return
        try:
            req_nat = NatKind(q.nat)
        except ValueError:
            req_nat = NatKind.NAT
        mine = self._nat_class(node)
        mode, req_initiates = decide_route(req_nat, q.observed, mine, node.endpoint)
        if redirect and known is not None:
            # Re-direction after a move: the roles (and so the key directions) stay as they were.
            req_role = known.requester_role if name == known.initiator else (
                PathRole.RESPONDER if known.requester_role is PathRole.INITIATOR else PathRole.INITIATOR)
            req_initiates = req_role is PathRole.INITIATOR
        same = same_nat(req_nat, q.observed, mine, node.endpoint)
        direct = mode is PathMode.DIRECT
        node_initiates = not req_initiates
        node_targets: tuple[Endpoint, ...] = ()
        req_targets: tuple[Endpoint, ...] = ()
        if direct and redirect:
            # Both nodes are told where the other is now, and both announce themselves.
            node_targets = q.local_endpoints if same else (q.observed,)
            req_targets = node.local_endpoints if same else (node.endpoint,)
        elif direct and node_initiates:
            node_targets = q.local_endpoints if same else (q.observed,)
        elif direct:
            req_targets = node.local_endpoints if same else (node.endpoint,)
        rec = node.record
        route = RouteDirection(
            path_id=q.path_id, path_role=PathRole.INITIATOR if node_initiates else PathRole.RESPONDER, mode=mode,
            path_key=q.path_key, idle_timeout=self.config.idle_timeout,
            keepalive=self.config.keepalive if node.nat is NatKind.NAT else 0, peer_name=name,
            peer_vip4=q.vip4 if rec.vip4 else None, peer_vip6=q.vip6 if rec.vip6 else None,
            peer_endpoints=node_targets, relay_key=q.relay_key if mode is PathMode.RS_S else None,
            capabilities=q.capabilities)
        d = _Direction(node, txid, fqdn, now)
        d.redirect = redirect
        d.path_id = q.path_id
        d.route = d.responder_route = route
        d.responder = node
        d.peer_in = _PeerIn(peer, txid, addr, q, name, PathRole.INITIATOR if req_initiates else PathRole.RESPONDER,
                            mode, req_targets)
        d.evidence.append(f"peer query from DC {header.sender.hex()}: {name} ({req_nat.name} at {q.observed}) -> "
                          f"{fqdn} ({mine.name} at {node.endpoint}): {mode.name}, "
                          f"{'requester' if req_initiates else fqdn} initiates")
        peer.busy.add(txid)
        self.stats["peer_queries"] += 1
        if mode is PathMode.RS_S:
            relays = self.relays()
            if not relays:
                self._fail_direction(d, Status.NO_RELAY, "a relay is needed and none is up")
                return
            d.candidates = sorted(relays, key=lambda s: (known is None or s.record.name != known.rs, s.load,
                                                         s.record.name))
            # The relay's binding names the initiator's VIPs first (a re-direction keeps the roles).
            ivip4, ivip6, rvip4, rvip6 = q.vip4, q.vip6, rec.vip4, rec.vip6
            i_ep, r_ep = q.observed, node.endpoint
            if not req_initiates:
                ivip4, ivip6, rvip4, rvip6, i_ep, r_ep = rvip4, rvip6, ivip4, ivip6, r_ep, i_ep
            d.relay_msg = RelayDirection(path_id=q.path_id, rs_type=RsType.S, idle_timeout=self.config.idle_timeout,
                                         relay_key=q.relay_key, node_vip4=ivip4, node_vip6=ivip6,
                                         peer_vip4=rvip4, peer_vip6=rvip6, node_endpoint=i_ep,
                                         responder_endpoint=r_ep)
            self._try_next_relay(d, now)
        else:
            self._send_responder_route(d, now)

    def _answer_peer_dc(self, d: _Direction, now: float) -> None:
        pi, route = d.peer_in, d.responder_route
        assert pi is not None and route is not None and d.path_id is not None
        node = d.node
        ans = PeerAnswer(path_id=d.path_id, mode=pi.mode, path_role=pi.requester_role, peer_name=node.record.name,
                         peer_nat=int(self._nat_class(node)), peer_vip4=node.record.vip4, peer_vip6=node.record.vip6,
                         peer_endpoints=pi.requester_targets, rs_endpoint=route.rs_endpoint, rs_name=route.rs_name,
                         capabilities=node.capabilities)
        d.reply = self._reply(pi.dc.channel, ans, pi.txid, pi.addr)
        d.done_at = now
        pi.dc.replies[pi.txid] = (d.reply, now)
        pi.dc.busy.discard(pi.txid)
        rs_name = d.rs.record.name if d.rs is not None else None
        self.paths[d.path_id] = PathRecord(d.path_id, pi.requester, node.record.name, pi.mode, rs_name, now,
                                           (), pi.query.path_key)
        self.paths[d.path_id].requester_role = pi.requester_role
        self.paths[d.path_id].relay_key = pi.query.relay_key
        self.paths[d.path_id].holders = ((node.record.name, node.instance),)
        self.stats["paths_directed_for_peer_dc"] += 1
        self._emit(DirectionDecision(pi.requester, node.record.name, Status.OK, pi.mode, rs_name, d.path_id,
                                     tuple(d.evidence)))

    def _refuse_peer_dc(self, d: _Direction, status: Status, reason: str) -> None:
        pi = d.peer_in
        assert pi is not None
        d.reply = self._reply(pi.dc.channel, StatusMessage(answers=MessageType.PEER_QUERY, reason=reason), pi.txid,
                              pi.addr, status=status)
        d.done_at = d.started
        pi.dc.replies[pi.txid] = (d.reply, d.started)
        pi.dc.busy.discard(pi.txid)
        self.stats["peer_queries_refused"] += 1
        self._emit(DirectionDecision(pi.requester, d.fqdn, status, None, None, None, tuple(d.evidence)))


    # -- handover: re-direction of an existing NTM-peer path ---------------------------------------
    def _redirect(self, node: _Session, header: SignalHeader, msg: DirectionRequest, now: float) -> None:
        """A node that moved asks to decide its path ``msg.path_id`` again (docs/protocol.md §10). The
        decision is re-run on both nodes' current registrations; the Path ID, path key and roles stay
        (the nodes' capsule counters continue), the mode and relay may change. Both nodes get a Route
        Direction naming the other's current endpoint(s), so both announce themselves (whichever sits
        behind a filtering NAT opens it)."""
        assert msg.path_id is not None
        pid = msg.path_id
        d = _Direction(node, header.txid, (msg.fqdn or "").rstrip(".").lower(), now)
        d.redirect = True
        d.path_id = pid
        self._directions[(node.record.client_id, header.txid)] = d
        busy = self._redirecting.get(pid)
        if busy is not None and busy.reply is None and now - busy.started < REDIRECT_STALE:
            # One re-direction of a path at a time (both nodes may ask at once, e.g. both noticed that
            # their relay died): this one is decided after it, on the state it leaves.
            d.evidence.append(f"waiting for the re-direction of path {pid.hex()} in progress")
            self._redirect_queue.setdefault(pid, []).append(d)
            self.stats["redirects_queued"] += 1
            return
        self._start_redirect(d, now)

    def _start_redirect(self, d: _Direction, now: float) -> None:
        """Decide the path ``d.path_id`` again for ``d.node`` (it asked, or the DC moves the path)."""
        assert d.path_id is not None
        pid, node = d.path_id, d.node
        d.started = now
        self._redirecting[pid] = d
        rec = self.paths.get(pid)
        name = node.record.name
        if rec is None or rec.mode is PathMode.RS_N or name not in (rec.initiator, rec.peer):
            self._fail_direction(d, Status.UNKNOWN_PATH, f"no NTM-peer path {pid.hex()} of {name} is known here")
            return
        other_name = rec.peer if name == rec.initiator else rec.initiator
        d.fqdn = other_name
        if d.dc_initiated and not self._still_held(d, rec, node, now):
            return
        target = self.store.client_by_name(other_name)
        if target is None and self.config.own_domain(other_name) is None:
            # An NTM node of another DC: ask its DC again with this path's ID and keys (a Peer Query
            # it accepts as a re-direction of the path it knows, if its node still holds the path); the
            # name is resolved as usual.
            d.path_id, d.path_key = pid, rec.path_key
            # A fresh relay key for every re-direction: the relay the peer DC picks may be another one
            # (or one that restarted), whose leg channels start their counters again (§10).
            d.relay_key = self._rand(32)
            d.evidence.append(f"re-direction of path {pid.hex()} with {other_name} (another DC) after a move: "
                              f"{name} {node.nat.name} at {node.endpoint}")
            token = self._next_token
            self._next_token += 1
            self._resolving[token] = d
            self._emit(ResolveRequest(token, other_name))
            return
        peer = self._sessions.get(target.client_id) if target is not None else None
        if peer is None:
            self._fail_direction(d, Status.PEER_UNREACHABLE, f"{other_name} is not registered")
            return
        if not self._still_held(d, rec, peer, now):
            return
        initiator = PathRole.INITIATOR
        my_role = rec.requester_role if name == rec.initiator else (
            PathRole.RESPONDER if rec.requester_role is initiator else initiator)
        peer_role = PathRole.RESPONDER if my_role is initiator else initiator
        node_nat, peer_nat = self._nat_class(node), self._nat_class(peer)
        mode, _ = decide_route(node_nat, node.endpoint, peer_nat, peer.endpoint)
        d.path_id = pid
        # A fresh relay key for every re-direction through a relay: the relay may be another one, or the
        # same one restarted, and a relay's leg channels start their counters at 1; a key is never
        # given to a relay twice (the relay re-keys an entry it has, §10).
        relay_key = self._rand(32) if mode is PathMode.RS_S else None
        behind_one_nat = same_nat(node_nat, node.endpoint, peer_nat, peer.endpoint)

        def targets(of: _Session) -> tuple[Endpoint, ...]:
            if mode is not PathMode.DIRECT:
                return ()
            return of.local_endpoints if behind_one_nat else (of.endpoint,)

        def route_for(me: _Session, other: _Session, role: PathRole) -> RouteDirection:
            return RouteDirection(path_id=pid, path_role=role, mode=mode, path_key=rec.path_key,
                                  idle_timeout=self.config.idle_timeout,
                                  keepalive=self.config.keepalive if me.nat is NatKind.NAT else 0,
                                  peer_name=other.record.name, peer_vip4=other.record.vip4,
                                  peer_vip6=other.record.vip6, peer_endpoints=targets(other), relay_key=relay_key)

        d.evidence.append(f"re-direction of path {pid.hex()} after a move: {name} {node_nat.name} at {node.endpoint}, "
                          f"{other_name} {peer_nat.name} at {peer.endpoint} -> {mode.name} (was {rec.mode.name}); "
                          f"path ID, key and roles kept")
        d.route = route_for(node, peer, my_role)
        d.responder = peer
        d.responder_route = route_for(peer, node, peer_role)
        if mode is PathMode.RS_S:
            relays = self.relays()
            if not relays:
                self._fail_direction(d, Status.NO_RELAY, "the nodes need a relay now and none is up")
                return
            d.candidates = sorted(relays, key=lambda s: (s.record.name != rec.rs, s.load, s.record.name))
            ini, res = (node, peer) if my_role is initiator else (peer, node)
            d.relay_msg = RelayDirection(path_id=pid, rs_type=RsType.S, idle_timeout=self.config.idle_timeout,
                                         relay_key=relay_key, node_vip4=ini.record.vip4, node_vip6=ini.record.vip6,
                                         peer_vip4=res.record.vip4, peer_vip6=res.record.vip6,
                                         node_endpoint=ini.endpoint, responder_endpoint=res.endpoint)
            self._try_next_relay(d, now)
        else:
            self._send_responder_route(d, now)

    def _holds(self, rec: PathRecord, s: _Session, now: float) -> bool:
        """Whether ``s`` runs as the process instance that got ``rec``'s key; if not, the path is dropped
        (its relay entry released): the key must never reach a restarted process."""
        if dict(rec.holders).get(s.record.name) == s.instance:
            return True
        self.stats["paths_dropped_peer_restarted"] += 1
        self._release(rec.path_id, now)
        return False

    def _still_held(self, d: _Direction, rec: PathRecord, s: _Session, now: float) -> bool:
        """Whether ``s`` still holds the path's sealers: it runs as the process instance that got the key.
        A node that restarted since has new counters: the key must never reach it again, so the path
        is dropped (PATH_GONE) and set up anew, by name, with a new Path ID and key (docs/security.md
        §3: a Path ID names one key for its whole life)."""
        if self._holds(rec, s, now):
            return True
        self._fail_direction(d, Status.PATH_GONE, f"{s.record.name} restarted since it got path "
                             f"{rec.path_id.hex()}: the path must be set up again")
        return False

    def _redirect_finished(self, d: _Direction, status: Status | None) -> None:
        pid = d.path_id
        if pid is None:
            return
        if status in (Status.NO_RELAY, Status.RELAY_FAILED) and pid in self.paths:
            self._waiting_relay.add(pid)  # rebuilt by the sweep once a relay is alive
        if self._redirecting.get(pid) is d:
            del self._redirecting[pid]
        if self._redirect_queue.get(pid):
            # (A timer due at once: the next one starts with the real time, after this datagram.)
            self._call_at(d.started, functools.partial(self._next_redirect, pid))

    def _next_redirect(self, pid: bytes, now: float) -> None:
        busy = self._redirecting.get(pid)
        queue = self._redirect_queue.get(pid)
        if not queue or (busy is not None and busy.reply is None and now - busy.started < REDIRECT_STALE):
            return
        d = queue.pop(0)
        if not queue:
            del self._redirect_queue[pid]
        self._start_redirect(d, now)

    def _move_path(self, rec: PathRecord, why: str, now: float) -> bool:
        """The DC re-directs an NTM-peer path by itself (same Path ID, key and roles): both nodes get a
        Route Direction as a request. For a path of two nodes of this DC; a path to a node of another
        DC is moved when our node asks (its relay is the other DC's, or the peer DC decides)."""
        busy = self._redirecting.get(rec.path_id)
        if busy is not None and busy.reply is None and now - busy.started < REDIRECT_STALE:
            return False  # the running one decides with the relay already marked dead
        sessions: list[_Session] = []
        for name in (rec.initiator, rec.peer):
            client = self.store.client_by_name(name)
            if client is None:
                return False
            s = self._sessions.get(client.client_id)
            if s is not None:
                sessions.append(s)
        if not sessions:
            return False
        node = sessions[0]
        d = _Direction(node, 0, rec.peer if node.record.name == rec.initiator else rec.initiator, now)
        d.redirect = d.dc_initiated = True
        d.path_id = rec.path_id
        d.evidence.append(why)
        self.stats["path_moves"] += 1
        self._start_redirect(d, now)
        return True

    def _move_paths_off(self, rs_name: str, now: float) -> None:
        """Relay ``rs_name`` is dead: move the RS-S paths of our nodes through it to a live relay (or
        DIRECT, if the route table allows by now), keeping their Path ID and path key."""
        for rec in [r for r in self.paths.values() if r.mode is PathMode.RS_S and r.rs == rs_name]:
            self._move_path(rec, f"relay {rs_name} of path {rec.path_id.hex()} is dead: moving the path", now)

    # -- housekeeping -----------------------------------------------------------------------------
    def _sweep(self, now: float) -> None:
        for s in [s for cid in self._relay_ids if (s := self._sessions.get(cid)) is not None]:
            silent = now - s.last_seen
            if s.alive and silent > RELAY_DEAD_AFTER * self.config.relay_keepalive:
                s.alive = False
                self._emit(RelayLost(s.record.name))
                self._move_paths_off(s.record.name, now)
        if self._waiting_relay and self.relays():
            waiting, self._waiting_relay = self._waiting_relay, set()
            for pid in waiting:
                rec = self.paths.get(pid)
                if rec is not None and rec.mode is PathMode.RS_S:
                    self._move_path(rec, f"a relay is alive again: rebuilding path {pid.hex()}", now)
        expired = [k for k, d in self._directions.items()
                   if d.reply is not None and now - d.done_at > REPLY_CACHE_SECONDS]
        for k in expired:
            del self._directions[k]
        for peer in self._peers_by_key.values():
            peer.replies = {t: r for t, r in peer.replies.items() if now - r[1] <= REPLY_CACHE_SECONDS}
            peer.seen = {k: t for k, t in peer.seen.items() if now - t <= 2 * PEER_CLOCK_SKEW}
        self._call_at(now + self.config.relay_keepalive, self._sweep)


_M = TypeVar("_M", bound=Message)


def _replace(msg: _M, **changes: Any) -> _M:
    return dataclasses.replace(msg, **changes)


def _status(code: int) -> Status:
    try:
        return Status(code)
    except ValueError:
        return Status.PEER_UNREACHABLE
