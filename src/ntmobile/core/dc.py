"""The Direction Coordinator's sans-IO core: registration of nodes and relay servers, NAT detection,
direction of every path (general nodes through RS-N; NTM peers of the same domain directly or
through RS-S), keepalives.

Name resolution is asked for, not performed: a Direction Request for a name outside the DC's own
domain emits ``ResolveRequest``; the runtime runs the DNS discovery (core.discovery) and feeds the
answer back with ``resolution_result``.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

from ntmobile.crypto import Channel, Ephemeral, long_term_keys, session_keys
from ntmobile.wire import (
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
    parse_signal_header,
    peek,
)

from .common import CoreBase, Event, new_txid
from .registry import ClientRecord, Store, StoreError

RELAY_DIRECTION_TIMEOUT = 0.8
ROUTE_DIRECTION_TIMEOUT = 2.0
#: A relay that has not been heard from for this many keepalive intervals is considered down.
RELAY_DEAD_AFTER = 3
#: Replies to requests are kept this long, to answer retransmissions identically.
REPLY_CACHE_SECONDS = 30.0
#: Relays are retried (a second round) while the direction is younger than this; the node waits 4 s.
RELAY_BUDGET = 2.5
#: How long the DC waits for relays to measure their distance to a general node.
PROBE_TIMEOUT = 0.5
#: How long a relay's measured distance to a GN address is reused.
METRIC_TTL = 300.0


@dataclass(frozen=True, slots=True)
class DcConfig:
    domain: str
    dc_id: bytes
    keepalive: int = 15
    relay_keepalive: int = 5
    idle_timeout: int = 120
    #: Further domains this DC is authoritative for (one DC may serve several).
    extra_domains: tuple[str, ...] = ()

    def own_domain(self, fqdn: str) -> str | None:
        """The domain of this DC that ``fqdn`` belongs to, or None."""
        for dom in (self.domain, *self.extra_domains):
            if fqdn == dom or fqdn.endswith("." + dom):
                return dom
        return None


class PeerKind(Enum):
    GENERAL = "general"
    NTM = "ntm"
    NXDOMAIN = "nxdomain"
    NODATA = "nodata"
    SERVFAIL = "servfail"


@dataclass(frozen=True, slots=True)
class Resolution:
    """What DNS discovery found out about a name (see core.discovery)."""

    kind: PeerKind
    addrs4: tuple[str, ...] = ()
    addrs6: tuple[str, ...] = ()
    evidence: tuple[str, ...] = ()
    reason: str = ""


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
    load: int = 0
    alive: bool = True


@dataclass(slots=True)
class _RegCache:
    txid: int
    client_eph: bytes
    reply: bytes
    at: float


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


def decide_route(a_nat: NatKind, a_observed: Endpoint, b_nat: NatKind, b_observed: Endpoint) -> tuple[PathMode, bool]:
    """The route table for two NTM nodes (docs/protocol.md, "Route decision").

    Returns (mode, a_initiates).
    """
    fam_a = ipaddress.ip_address(a_observed[0]).version
    fam_b = ipaddress.ip_address(b_observed[0]).version
    if fam_a != fam_b:
        return PathMode.RS_S, True
    if a_nat is NatKind.NONE and b_nat is NatKind.NONE:
        return PathMode.DIRECT, True
    if a_nat is NatKind.NONE:
        return PathMode.DIRECT, False  # only b is behind NAT: b opens its own NAT
    if b_nat is NatKind.NONE:
        return PathMode.DIRECT, True
    if a_observed[0] == b_observed[0]:
        return PathMode.DIRECT, True  # same NAT: direct on private addresses
    return PathMode.RS_S, True


class DcCore(CoreBase):
    def __init__(self, config: DcConfig, store: Store, now: float, *, seq_base: int,
                 random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        CoreBase.__init__(self)
        self.config = config
        self.store = store
        self._rand = random_bytes
        self._seq_base = seq_base
        self._lt: dict[bytes, Channel] = {}
        self._sessions: dict[bytes, _Session] = {}
        self._reg_cache: dict[bytes, _RegCache] = {}
        self._directions: dict[tuple[bytes, int], _Direction] = {}
        self._resolving: dict[int, _Direction] = {}
        self._next_token = 1
        self.paths: dict[bytes, PathRecord] = {}
        self._metrics: dict[tuple[str, str], tuple[int | None, int | None, float]] = {}
        self._call_at(now + config.relay_keepalive, self._sweep)

    # -- introspection ---------------------------------------------------------------------------
    def sessions(self) -> list[dict[str, object]]:
        return [{"name": s.record.name, "role": s.record.role.name, "vip4": s.record.vip4, "vip6": s.record.vip6,
                 "endpoint": list(s.endpoint), "nat": s.nat.name, "load": s.load, "alive": s.alive}
                for s in self._sessions.values()]

    def relays(self) -> list[_Session]:
        return [s for s in self._sessions.values() if s.record.role is Role.RELAY and s.alive]

    # -- input --------------------------------------------------------------------------------
    def receive_datagram(self, data: bytes, addr: Endpoint, now: float) -> None:
        try:
            _v, mtype = peek(data)
            if mtype == MessageType.DATA:
                self.stats["drop_data_at_dc"] += 1
                return
            header = parse_signal_header(data)
        except CodecError:
            self.stats["drop_malformed"] += 1
            return
        record = self.store.get_client(header.sender)
        if record is None:
            self.stats["drop_unknown_client"] += 1
            return
        if header.flags & SignalFlags.LONG_TERM:
            self._on_long_term(record, header, data, addr, now)
        else:
            self._on_session(record, header, data, addr, now)

    def _long_term(self, record: ClientRecord) -> Channel:
        ch = self._lt.get(record.client_id)
        if ch is None:
            ch = Channel(long_term_keys(record.psk, record.client_id).swapped(), self.config.dc_id,
                         seq_start=self._seq_base, recv_floor=record.last_seq)
            self._lt[record.client_id] = ch
        return ch

    # -- registration -------------------------------------------------------------------------------
    def _on_long_term(self, record: ClientRecord, header: SignalHeader, data: bytes, addr: Endpoint,
                      now: float) -> None:
        if header.type is not MessageType.REGISTRATION_REQUEST:
            self.stats["drop_unexpected"] += 1
            return
        lt = self._long_term(record)
        msg = self._open(lt, header, data)
        if not isinstance(msg, RegistrationRequest):
            return
        cached = self._reg_cache.get(record.client_id)
        if cached is not None and cached.txid == header.txid and cached.client_eph == msg.ephemeral:
            self.stats["registration_retransmits"] += 1
            self._send(cached.reply, addr)
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
        vip4 = vip6 = None
        if record.role is Role.NODE:
            try:
                vip4, vip6 = self.store.assign_vips(record.client_id)
            except StoreError as exc:
                self._reject(lt, record, header.txid, addr, Status.STORAGE_ERROR, f"cannot assign a VIP: {exc}")
                return
        nat = NatKind.NONE if addr in msg.local_endpoints else NatKind.NAT
        if record.role is Role.RELAY:
            keepalive = self.config.relay_keepalive
        else:
            keepalive = self.config.keepalive if nat is NatKind.NAT else 0
        eph = Ephemeral(self._rand)
        try:
            shared = eph.exchange(msg.ephemeral)
        except ValueError:
            self.stats["drop_auth"] += 1
            return
        keys = session_keys(record.psk, shared, record.client_id, msg.ephemeral, eph.public).swapped()
        session = _Session(record, Channel(keys, self.config.dc_id), addr, msg.local_endpoints, nat, now,
                           msg.capabilities, load=msg.load or 0)
        self._sessions[record.client_id] = session
        reply = RegistrationResponse(ephemeral=eph.public, version=VERSION, observed=addr, nat=nat,
                                     keepalive=keepalive, vip4=vip4, vip6=vip6, name=record.name)
        data_out = self._reply(lt, reply, header.txid, addr, flags=SignalFlags.LONG_TERM)
        self._reg_cache[record.client_id] = _RegCache(header.txid, msg.ephemeral, data_out, now)
        self.stats["registrations"] += 1
        self._emit(ClientRegistered(record.name, record.role, vip4, vip6, addr, nat))

    def _reject(self, lt: Channel, record: ClientRecord, txid: int, addr: Endpoint, status: Status,
                reason: str) -> None:
        self.stats["registrations_rejected"] += 1
        self._reply(lt, StatusMessage(answers=MessageType.REGISTRATION_REQUEST, reason=reason), txid, addr,
                    status=status, flags=SignalFlags.LONG_TERM)
        self._emit(RegistrationRejected(record.name, status, reason))

    # -- session messages --------------------------------------------------------------------------
    def _on_session(self, record: ClientRecord, header: SignalHeader, data: bytes, addr: Endpoint,
                    now: float) -> None:
        session = self._sessions.get(record.client_id)
        if session is None:
            # We lost the session (DC restart): ask the client to register again.
            self.stats["reregister_sent"] += 1
            self._reply(self._long_term(record), StatusMessage(answers=header.type, reason="no session; register"),
                        header.txid, addr, status=Status.REREGISTER, flags=SignalFlags.LONG_TERM)
            return
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

    def resolution_result(self, token: int, result: Resolution, now: float) -> None:
        d = self._resolving.pop(token, None)
        if d is None:
            return
        d.evidence.extend(result.evidence)
        if result.kind is PeerKind.GENERAL:
            self._direct_general_node(d, result, now)
        elif result.kind is PeerKind.NXDOMAIN:
            self._fail_direction(d, Status.NXDOMAIN, result.reason or f"{d.fqdn} does not exist")
        elif result.kind is PeerKind.NODATA:
            self._fail_direction(d, Status.NODATA, result.reason or f"{d.fqdn} has no address")
        elif result.kind is PeerKind.NTM:
            self._fail_direction(d, Status.PEER_UNREACHABLE,
                                 f"{d.fqdn} is an NTM node of another DC; DC-to-DC coordination is not enabled")
        else:
            self._fail_direction(d, Status.SERVFAIL, result.reason or f"resolving {d.fqdn} failed")

    def _new_path_id(self) -> bytes:
        while True:
            pid = self._rand(8)
            if pid not in self.paths and pid != self.config.dc_id and self.store.get_client(pid) is None:
                return pid

    def _direct_general_node(self, d: _Direction, res: Resolution, now: float) -> None:
        rec = d.node.record
        mapping: list[tuple[str, str]] = []
        peer4 = peer6 = gn4 = gn6 = None
        try:
            if rec.vip4 and res.addrs4:
                gn4 = res.addrs4[0]
                peer4 = self.store.gn_vip(rec.client_id, gn4)
                mapping.append((peer4, gn4))
            if rec.vip6 and res.addrs6:
                gn6 = res.addrs6[0]
                peer6 = self.store.gn_vip(rec.client_id, gn6)
                mapping.append((peer6, gn6))
        except StoreError as exc:
            self._fail_direction(d, Status.STORAGE_ERROR, f"cannot record the GN VIP: {exc}")
            return
        if not mapping:
            self._fail_direction(d, Status.NODATA, "the general node has no address of a family the node has a VIP of")
            return
        d.gn_map = tuple(mapping)
        d.evidence.append("general node: " + ", ".join(f"VIP {v} stands for {r}" for v, r in mapping))
        gn_addr = gn4 or gn6 or ""
        relays = self.relays()
        if not relays:
            self._fail_direction(d, Status.NO_RELAY, "no relay server is registered")
            return
        # One RS-N path per (node, GN address): the kernel NAT keys on (node VIP, GN VIP), so a second
        # name of the same GN reuses the path (same ID and key; the RS treats the repeat as a refresh).
        same = next((p for p in self.paths.values() if p.initiator == rec.name and p.gn_map == d.gn_map
                     and p.mode is PathMode.RS_N), None)
        if same is not None:
            d.evidence.append(f"reusing path {same.path_id.hex()} to the same general node (via {same.rs})")
            d.path_id, path_key = same.path_id, same.path_key
            d.reuse_rs = same.rs
        else:
            d.path_id, path_key = self._new_path_id(), self._rand(32)
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
                self._request(r.channel, probe, new_txid(self._rand), r.endpoint, now, timeout=PROBE_TIMEOUT,
                              tag=("probe", d, r), on_timeout=functools.partial(self._probe_timed_out, d, r))
            return
        self._choose_relay(d, relays, now)

    def _metric_fresh(self, rs: str, gn_addr: str, now: float) -> bool:
        m = self._metrics.get((rs, gn_addr))
        return m is not None and m[2] > now

    def _probe_timed_out(self, d: _Direction, rs: _Session, now: float) -> None:
        self._probe_answered(d, rs, None, None, now)

    def _probe_answered(self, d: _Direction, rs: _Session, hops: int | None, rtt_us: int | None, now: float) -> None:
        self._metrics[(rs.record.name, d.gn_addr)] = (hops, rtt_us, now + (METRIC_TTL if hops is not None else 10.0))
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
            d.candidates, d.tried = [r for r in d.tried if r.alive or len(d.tried) == 1], []
        if not d.candidates:
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
        rs.alive = False
        self._emit(RelayLost(rs.record.name))
        self._try_next_relay(d, now)

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
            if header.status == Status.PATH_ID_IN_USE:
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
        mode, a_initiates = decide_route(d.node.nat, d.node.endpoint, peer.nat, peer.endpoint)
        d.evidence.append(f"NTM peer {d.fqdn}: requester {d.node.nat.name} at {d.node.endpoint}, peer {peer.nat.name} "
                          f"at {peer.endpoint} -> {mode.name}, {'requester' if a_initiates else 'peer'} initiates")
        d.path_id = self._new_path_id()
        path_key = self._rand(32)
        relay_key = self._rand(32) if mode is PathMode.RS_S else None
        same_nat = d.node.nat is NatKind.NAT and peer.nat is NatKind.NAT and d.node.endpoint[0] == peer.endpoint[0]

        def targets(of: _Session) -> tuple[Endpoint, ...]:
            if mode is not PathMode.DIRECT:
                return ()
            return of.local_endpoints if same_nat else (of.endpoint,)

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
        assert d.route is not None and d.path_id is not None
        d.reply = d.node.channel.seal(d.route, txid=d.txid)
        d.done_at = now
        self._send(d.reply, d.node.endpoint)
        rs_name = d.rs.record.name if d.rs is not None else None
        self.paths[d.path_id] = PathRecord(d.path_id, d.node.record.name, d.fqdn, PathMode(d.route.mode), rs_name,
                                           now, d.gn_map, d.route.path_key)
        self.stats["paths_directed"] += 1
        self._emit(DirectionDecision(d.node.record.name, d.fqdn, Status.OK, PathMode(d.route.mode), rs_name,
                                     d.path_id, tuple(d.evidence)))

    def _fail_direction(self, d: _Direction, status: Status, reason: str) -> None:
        d.evidence.append(f"failed: {reason}")
        d.reply = d.node.channel.seal(StatusMessage(answers=MessageType.DIRECTION_REQUEST, reason=reason),
                                      txid=d.txid, status=status)
        self._directions[(d.node.record.client_id, d.txid)] = d
        self._send(d.reply, d.node.endpoint)
        self.stats["directions_failed"] += 1
        self._emit(DirectionDecision(d.node.record.name, d.fqdn, status, None, None, None, tuple(d.evidence)))

    def _release(self, path_id: bytes, now: float) -> None:
        rec = self.paths.pop(path_id, None)
        if rec is None or rec.rs is None:
            return
        rs = next((s for s in self._sessions.values() if s.record.name == rec.rs and s.record.role is Role.RELAY), None)
        if rs is not None:
            self._request(rs.channel, PathRelease(path_id=path_id), new_txid(self._rand), rs.endpoint, now,
                          timeout=RELAY_DIRECTION_TIMEOUT)

    # -- housekeeping -----------------------------------------------------------------------------
    def _sweep(self, now: float) -> None:
        for s in self._sessions.values():
            silent = now - s.last_seen
            if s.record.role is Role.RELAY and s.alive and silent > RELAY_DEAD_AFTER * self.config.relay_keepalive:
                s.alive = False
                self._emit(RelayLost(s.record.name))
        expired = [k for k, d in self._directions.items()
                   if d.reply is not None and now - d.done_at > REPLY_CACHE_SECONDS]
        for k in expired:
            del self._directions[k]
        for cid in [cid for cid, c in self._reg_cache.items() if now - c.at > REPLY_CACHE_SECONDS]:
            del self._reg_cache[cid]
        self._call_at(now + self.config.relay_keepalive, self._sweep)


_M = TypeVar("_M", bound=Message)


def _replace(msg: _M, **changes: Any) -> _M:
    return dataclasses.replace(msg, **changes)
