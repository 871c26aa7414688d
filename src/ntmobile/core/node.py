"""The NTM node's sans-IO core: registration, the DNS-triggered direction exchange, tunnels, data.

Inputs: datagrams from the node's single UDP socket, API calls (``register``, ``request_path``,
``send_data``, ``addresses_changed``), ``handle_timer``. Outputs: datagrams, events, the timer.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from ntmobile.crypto import (
    AuthError,
    CapsuleOpener,
    CapsuleSealer,
    Channel,
    CounterFloor,
    KeyPair,
    UsedKeys,
    path_keys,
    relay_leg_keys,
)
from ntmobile.wire import (
    MAX_SIGNAL_SIZE,
    CapsuleFlags,
    CodecError,
    DirectionRequest,
    Endpoint,
    Keepalive,
    KeepaliveAck,
    MessageType,
    NatKind,
    PathMode,
    PathRole,
    RegistrationRequest,
    RegistrationResponse,
    Role,
    RouteDirection,
    RouteDirectionAck,
    SignalFlags,
    SignalHeader,
    Status,
    StatusMessage,
    TunnelRequest,
    TunnelResponse,
    parse_capsule_header,
    parse_signal_header,
    parse_version_not_supported,
    peek,
)
from ntmobile.wire.constants import SUPPORTED_VERSIONS

from .common import CoreBase, Event, new_txid
from .registration import AttemptFailed, RegistrationClient, RegistrationPolicy, SessionLost, SessionUp
from .registration import Outcome as RegistrationOutcome
from .timing import (
    DIRECTION_TIMEOUT,
    EARLY_HOLD,
    MAPPING_PROBE_TIMEOUT,
    MOVED_GRACE,
    REGISTRATION_TIMEOUT,
    TUNNEL_TIMEOUT,
    node_keepalive_timeout,
)

#: Tunnel Requests held for a path we do not know yet (for EARLY_HOLD seconds): at most this many.
EARLY_MAX = 16
#: Path keys remembered as used (32 bytes each): a Route Direction re-using one is refused.
RETIRED_KEYS = 4096


@dataclass(frozen=True, slots=True)
class NodeConfig:
    name: str
    node_id: bytes
    psk: bytes
    dc_id: bytes
    dc_endpoint: Endpoint
    capabilities: int = 0


# -- events ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Registered(Event):
    vip4: str | None
    vip6: str | None
    observed: Endpoint
    nat: NatKind
    keepalive: int


@dataclass(frozen=True, slots=True)
class RegistrationFailed(Event):
    status: Status
    reason: str


@dataclass(frozen=True, slots=True)
class PathInfo:
    path_id: bytes
    role: PathRole
    mode: PathMode
    peer_name: str | None
    peer_vip4: str | None
    peer_vip6: str | None
    endpoint: Endpoint | None
    rs_name: str | None
    data_keys: KeyPair
    capabilities: int
    #: The path's capsule sealer/opener (shared with the data plane: one counter per direction).
    sealer: CapsuleSealer = field(compare=False, repr=False)
    opener: CapsuleOpener = field(compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class PathReady(Event):
    path: PathInfo
    request_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PathFailed(Event):
    request_ids: tuple[int, ...]
    fqdn: str
    status: Status
    reason: str


@dataclass(frozen=True, slots=True)
class PathEndpointChanged(Event):
    path_id: bytes
    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class PathClosed(Event):
    path_id: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class DataReceived(Event):
    path_id: bytes
    payload: bytes


# -- state -------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Path:
    path_id: bytes
    role: PathRole
    mode: PathMode
    rd: RouteDirection
    sig: Channel
    sealer: CapsuleSealer
    opener: CapsuleOpener
    data_keys: KeyPair
    targets: list[Endpoint]
    endpoint: Endpoint | None = None
    established: bool = False
    request_ids: list[int] = field(default_factory=list)
    fqdn: str | None = None
    target_index: int = 0
    last_rx: float = 0.0
    peer_caps: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0
    created: float = 0.0
    #: Signalling channels by key family: ("path",) for the path keys, ("leg", relay key) for an RS-S
    #: leg. A re-direction that changes the mode switches channel but never restarts one (a fresh
    #: channel would reuse sequence numbers the other end has already seen).
    channels: dict[tuple[object, ...], Channel] = field(default_factory=dict)
    #: A path keepalive chain is scheduled (a re-direction may start or end the need for one).
    keepalive_on: bool = False

    @property
    def sends_tunnel_request(self) -> bool:
        return self.role is PathRole.INITIATOR or self.mode is PathMode.RS_S

    def info(self) -> PathInfo:
        return PathInfo(self.path_id, self.role, self.mode, self.rd.peer_name, self.rd.peer_vip4, self.rd.peer_vip6,
                        self.endpoint, self.rd.rs_name, self.data_keys, self.peer_caps, self.sealer, self.opener)


@dataclass(slots=True)
class _Lookup:
    fqdn: str
    request_ids: list[int]


#: The node's registration: a re-registration (handover, DC request) keeps the old session and its
#: keepalives until the new session is up (RENEWING); after a failure the node retries only while it is
#: not registered.
_REGISTRATION_POLICY = RegistrationPolicy(
    keep_session=True, keepalive_timeout=node_keepalive_timeout, versions=SUPPORTED_VERSIONS,
    stale_stat="drop_stale_registration", timeout_reason="the DC did not answer the registration",
    bad_key_reason=None)


class NodeCore(CoreBase):
    """An NTM node. See the module docstring and docs/protocol.md."""

    def __init__(self, config: NodeConfig, now: float, *, seq_base: int = 1, counter: CounterFloor | None = None,
                 random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        """``counter``: the long-term send counter, persisted by the runtime (CounterFloor); without
        one, an in-memory counter from ``seq_base`` (tests)."""
        CoreBase.__init__(self)
        self.config = config
        self._rand = random_bytes
        #: This process's instance (RegistrationRequest INSTANCE): its paths and counters live and die with it.
        self.instance = random_bytes(8)
        c = config
        self._dc = RegistrationClient(
            self, c.node_id, c.dc_endpoint, c.psk, counter=counter if counter is not None else CounterFloor(seq_base),
            random_bytes=random_bytes, new_txid=lambda: new_txid(random_bytes), timeout=REGISTRATION_TIMEOUT,
            policy=_REGISTRATION_POLICY, request_message=self._registration_request,
            on_outcome=self._registration_outcome)
        self.local_endpoints: tuple[Endpoint, ...] = ()
        self.registered = False
        self.registration: Registered | None = None
        self._paths: dict[bytes, _Path] = {}
        self._by_name: dict[str, bytes] = {}
        self._lookups: dict[int, _Lookup] = {}  # Direction Request txid -> lookup
        #: Lookups made before the node is registered: name -> request ids.
        self._awaiting_registration: dict[str, list[int]] = {}
        self._next_request_id = 1
        self._now_hint = now
        self._moved_at = -1e9
        #: Set by addresses_changed; the next Registration Response then re-directs NTM-peer paths.
        self._handover_pending = False
        #: Re-direction requests in flight (Direction Request txid -> Path ID).
        self._redirects: dict[int, bytes] = {}
        #: The DC's probe endpoint (Registration Response), for NAT classification.
        self._probe_endpoint: Endpoint | None = None
        #: Tunnel signalling that arrived before the Route Direction that makes its path (a peer that
        #: initiates may be faster than our own DC): (path id, datagram, source, time).
        self._early: list[tuple[bytes, bytes, Endpoint, float]] = []
        #: Every path key this process has made sealers under (the newest RETIRED_KEYS): a Route
        #: Direction that would make a new sealer under one of them is refused, so a counter never
        #: starts again under a key, whatever the DC sends (docs/security.md §3).
        self._used_keys = UsedKeys(RETIRED_KEYS)

    # -- registration with the DC (core.registration) ------------------------------------------
    def _registration_request(self, ephemeral: bytes) -> RegistrationRequest:
        return RegistrationRequest(role=Role.NODE, name=self.config.name, ephemeral=ephemeral,
                                   versions=SUPPORTED_VERSIONS, local_endpoints=self.local_endpoints,
                                   capabilities=self.config.capabilities, instance=self.instance)

    def _registration_outcome(self, outcome: RegistrationOutcome, now: float) -> None:
        if isinstance(outcome, SessionUp):
            self._on_registered(outcome.response, now)
        elif isinstance(outcome, AttemptFailed):
            status = Status.SERVFAIL if outcome.status is None else _status(outcome.status)
            self._emit(RegistrationFailed(status, outcome.reason))
        elif isinstance(outcome, SessionLost):
            self.registered = False
            self.register(self.local_endpoints, now)
        elif not self.registered:  # RetryDue: only while not registered
            self.register(self.local_endpoints, now)

    # -- API ----------------------------------------------------------------------------------
    def register(self, local_endpoints: tuple[Endpoint, ...], now: float) -> None:
        """(Re-)register with the DC, reporting the addresses the node believes it has."""
        self.local_endpoints = tuple(local_endpoints)
        self._dc.start(now)

    def addresses_changed(self, local_endpoints: tuple[Endpoint, ...], now: float) -> None:
        """Handover: the node's real address changed.

        Two things start at once (docs/handover.md): the fast path, an authenticated Tunnel Request
        from the new address on every established path (the peer or RS learns the new endpoint from
        it and answers there), and the re-registration with the DC, after which every path is
        announced again and NTM-peer paths are re-directed."""
        self.stats["handovers"] += 1
        self._moved_at = now
        self._handover_pending = True
        self.register(local_endpoints, now)
        self._announce_all(now)

    def routes_changed(self, now: float) -> None:
        """The routing changed without an address change (typically: the default route arrived just
        after the new address). Whatever could not leave before goes out now instead of at its next
        retransmission: the pending registration and an announcement on every established path."""
        self.stats["route_changes"] += 1
        self._dc.resend()
        self._announce_all(now)

    def request_path(self, fqdn: str, now: float) -> int:
        """Ask the DC for a path to ``fqdn`` (the hooked DNS query). Returns a request id that the
        PathReady / PathFailed event carries."""
        rid = self._next_request_id
        self._next_request_id += 1
        name = fqdn.rstrip(".").lower()
        pid = self._by_name.get(name)
        if pid is not None and pid in self._paths:
            path = self._paths[pid]
            if path.established:
                self._emit(PathReady(path.info(), (rid,)))
            else:
                path.request_ids.append(rid)
            return rid
        for lookup in self._lookups.values():
            if lookup.fqdn == name:
                lookup.request_ids.append(rid)
                return rid
        if self._dc.session is None:
            # Not registered yet (start-up, or re-registering after a DC restart): hold the lookup until
            # the registration completes, within the same budget as a Direction Request.
            waiting = self._awaiting_registration.get(name)
            if waiting is not None:
                waiting.append(rid)
            else:
                self._awaiting_registration[name] = [rid]
                self._call_at(now + DIRECTION_TIMEOUT, functools.partial(self._registration_wait_over, name))
            return rid
        self._send_direction_request(name, [rid], now)
        return rid

    def _registration_wait_over(self, name: str, now: float) -> None:
        rids = self._awaiting_registration.pop(name, None)
        if rids:
            self._emit(PathFailed(tuple(rids), name, Status.SERVFAIL, "not registered with the DC"))

    def _send_direction_request(self, name: str, rids: list[int], now: float) -> None:
        assert self._dc.session is not None
        txid = new_txid(self._rand)
        self._lookups[txid] = _Lookup(name, list(rids))
        self._request(self._dc.session, DirectionRequest(fqdn=name, capabilities=self.config.capabilities), txid,
                      self.config.dc_endpoint, now, timeout=DIRECTION_TIMEOUT,
                      on_timeout=functools.partial(self._direction_timed_out, txid))

    def send_data(self, path_id: bytes, payload: bytes, now: float, *, gso: bool = False) -> bool:
        path = self._paths.get(path_id)
        if path is None or not path.established or path.endpoint is None:
            self.stats["data_no_path"] += 1
            return False
        self._send(path.sealer.seal(payload, CapsuleFlags.GSO if gso else 0), path.endpoint)
        path.tx_packets += 1
        path.tx_bytes += len(payload)
        return True

    def paths(self) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for p in self._paths.values():
            out.append({
                "path_id": p.path_id.hex(), "peer": p.rd.peer_name, "peer_vip4": p.rd.peer_vip4,
                "peer_vip6": p.rd.peer_vip6, "mode": p.mode.name, "role": p.role.name, "rs": p.rd.rs_name,
                "endpoint": list(p.endpoint) if p.endpoint else None, "established": p.established,
                "tx_packets": p.tx_packets, "tx_bytes": p.tx_bytes, "rx_packets": p.rx_packets,
                "rx_bytes": p.rx_bytes, "created": p.created,
            })
        return out

    def note_data(self, path_id: bytes, addr: Endpoint, rx_packets: int, rx_bytes: int, now: float) -> None:
        """The data plane authenticated capsules of ``path_id`` from ``addr`` (it decrypts outside
        the core): keep liveness, counters and address learning in one place."""
        self._now_hint = now
        path = self._paths.get(path_id)
        if path is None:
            return
        path.last_rx = now
        path.rx_packets += rx_packets
        path.rx_bytes += rx_bytes
        if path.mode is not PathMode.RS_S:
            self._learn(path, addr)
        if not path.established and path.role is PathRole.RESPONDER:
            self._establish(path)

    def note_sent(self, path_id: bytes, packets: int, nbytes: int) -> None:
        path = self._paths.get(path_id)
        if path is not None:
            path.tx_packets += packets
            path.tx_bytes += nbytes

    def path_info(self, path_id: bytes) -> PathInfo | None:
        p = self._paths.get(path_id)
        return p.info() if p is not None else None

    def handle_timer(self, now: float) -> None:
        self._now_hint = now
        CoreBase.handle_timer(self, now)

    # -- input --------------------------------------------------------------------------------
    def receive_datagram(self, data: bytes, addr: Endpoint, now: float) -> None:
        self._now_hint = now
        if (len(data) >= 2 and data[1] == MessageType.VERSION_NOT_SUPPORTED and addr == self.config.dc_endpoint
                and self._dc.reg_txid is not None):
            self._on_version_not_supported(data, now)
            return
        try:
            _version, mtype = peek(data)
            if mtype == MessageType.DATA:
                self._on_data(data, addr, now)
                return
            header = parse_signal_header(data)
        except CodecError:
            self.stats["drop_malformed"] += 1
            return
        if header.sender == self.config.dc_id:
            self._on_dc(header, data, addr, now)
        elif header.sender in self._paths:
            self._on_tunnel(self._paths[header.sender], header, data, addr, now)
        elif header.type is MessageType.TUNNEL_REQUEST and len(data) <= MAX_SIGNAL_SIZE:
            # Unauthenticated until its path arrives: at most EARLY_MAX of at most MAX_SIGNAL_SIZE
            # bytes, for EARLY_HOLD seconds.
            kept = [e for e in self._early if 0 <= now - e[3] < EARLY_HOLD][-EARLY_MAX + 1:]
            self.stats["tunnel_request_held_dropped"] += len(self._early) - len(kept)
            kept.append((header.sender, data, addr, now))
            self._early = kept
            self.stats["tunnel_request_held"] += 1
        elif header.type is MessageType.TUNNEL_REQUEST:
            self.stats["drop_oversize"] += 1
        else:
            self.stats["drop_unknown_sender"] += 1

    # -- DC signalling ---------------------------------------------------------------------------
    def _on_dc(self, header: SignalHeader, data: bytes, addr: Endpoint, now: float) -> None:
        if addr != self.config.dc_endpoint and not (
                # NAT classification: the DC's filtering probe (long-term Keepalive, answered to the DC
                # endpoint, never to its source) and the answer to our mapping probe.
                (header.type is MessageType.KEEPALIVE and header.flags & SignalFlags.LONG_TERM)
                or (header.type is MessageType.KEEPALIVE_ACK and addr == self._probe_endpoint)):
            self.stats["drop_dc_wrong_source"] += 1
            return
        if header.flags & SignalFlags.LONG_TERM:
            lt_msg = self._dc.receive_long_term(header, data, addr, now)
            if isinstance(lt_msg, StatusMessage):
                self._on_long_term_status(header, lt_msg, now)
            elif isinstance(lt_msg, Keepalive):
                self._on_nat_filter_probe(header, addr)
            elif lt_msg is not None:
                self.stats["drop_unexpected"] += 1
            return
        session = self._dc.session
        if session is None:
            self.stats["drop_no_session"] += 1
            return
        msg = self._open(session, header, data)
        if msg is None:
            return
        if isinstance(msg, RouteDirection):
            self._on_route_direction(header, msg, addr, now)
        elif isinstance(msg, KeepaliveAck):
            self._dc.keepalive_acked(header.txid)
        elif isinstance(msg, StatusMessage):
            self._on_session_status(header, msg, now)
        else:
            self.stats["drop_unexpected"] += 1

    def _on_nat_filter_probe(self, header: SignalHeader, addr: Endpoint) -> None:
        self.stats["nat_filter_probes_answered"] += 1
        self._reply(self._dc.long_term, KeepaliveAck(observed=addr), header.txid, self.config.dc_endpoint,
                    flags=SignalFlags.LONG_TERM)

    def _on_registered(self, msg: RegistrationResponse, now: float) -> None:
        """The session with the DC is up (the keepalives to it are started by the DC link)."""
        self.registered = True
        nat = NatKind(msg.nat) if msg.nat in (0, 1) else NatKind.NAT
        self.registration = Registered(msg.vip4, msg.vip6, msg.observed, nat, msg.keepalive)
        self._emit(self.registration)
        for name, rids in list(self._awaiting_registration.items()):
            del self._awaiting_registration[name]
            self._send_direction_request(name, rids, now)
        self._probe_endpoint = msg.probe
        if msg.probe is not None:
            # Mapping probe: the DC compares its source with the registration's observed endpoint.
            assert self._dc.session is not None
            self._request(self._dc.session, Keepalive(), new_txid(self._rand), msg.probe, now,
                          timeout=MAPPING_PROBE_TIMEOUT, tag="nat-probe")
        for path in self._paths.values():
            self._refresh_path(path, now)
        if self._handover_pending:
            self._handover_pending = False
            self._redirect_all(now)

    def _on_long_term_status(self, header: SignalHeader, msg: StatusMessage, now: float) -> None:
        status = _status(header.status)
        if status is Status.REREGISTER:
            self.stats["reregister_requested"] += 1
            self._dc.drop_session()
            self.registered = False
            self.register(self.local_endpoints, now)
            return
        if header.txid == self._dc.reg_txid:
            self._dc.fail(status, msg.reason, now)

    def _on_session_status(self, header: SignalHeader, msg: StatusMessage, now: float) -> None:
        assert self._dc.session is not None
        pending = self._answered(self._dc.session, header.txid)
        redirected = self._redirects.pop(header.txid, None)
        if redirected is not None:
            # The DC could not re-direct. PATH_GONE: the peer node restarted, and must never get this
            # path's key again: close the path, so the next packet sets a new one up by name. Otherwise
            # (UNKNOWN_PATH after a DC restart, the peer unreachable, no relay) the path stays as it is;
            # the announcements and address learning keep it working where they can.
            self.stats["redirect_refused"] += 1
            if header.status == Status.PATH_GONE:
                self._close_path(redirected, "the peer restarted: the path is set up again")
            return
        lookup = self._lookups.pop(header.txid, None)
        if lookup is not None:
            self._emit(PathFailed(tuple(lookup.request_ids), lookup.fqdn, _status(header.status), msg.reason))
        elif pending is None:
            self.stats["drop_unexpected"] += 1

    def _on_version_not_supported(self, data: bytes, now: float) -> None:
        """Unauthenticated hint: only believed for our pending registration's transaction."""
        try:
            txid, (lo, hi) = parse_version_not_supported(data)
        except CodecError:
            self.stats["drop_malformed"] += 1
            return
        if txid != self._dc.reg_txid:
            self.stats["drop_stale_registration"] += 1
            return
        self._dc.fail(Status.UNSUPPORTED_VERSION, f"the DC speaks protocol versions {lo}..{hi}; this node speaks "
                      f"{SUPPORTED_VERSIONS[0]}..{SUPPORTED_VERSIONS[1]}", now)

    def _direction_timed_out(self, txid: int, now: float) -> None:
        lookup = self._lookups.pop(txid, None)
        if lookup is not None:
            self._emit(PathFailed(tuple(lookup.request_ids), lookup.fqdn, Status.SERVFAIL,
                                  "the DC did not answer the direction request in time"))

    # -- paths -------------------------------------------------------------------------------
    def _on_route_direction(self, header: SignalHeader, rd: RouteDirection, addr: Endpoint, now: float) -> None:
        assert self._dc.session is not None
        lookup = self._lookups.pop(header.txid, None)
        redirected = self._redirects.pop(header.txid, None)
        if lookup is not None or redirected is not None:
            self._answered(self._dc.session, header.txid)
        elif header.status != Status.OK:
            self.stats["drop_unexpected"] += 1
            return
        try:
            role = PathRole(rd.path_role)
            mode = PathMode(rd.mode)
        except ValueError:
            self.stats["drop_bad_route_direction"] += 1
            return
        existing = self._paths.get(rd.path_id)
        if existing is None:
            path = self._new_path(rd, role, mode, now)
            if path is None:
                self.stats["drop_bad_route_direction"] += 1
                if lookup is not None:
                    self._emit(PathFailed(tuple(lookup.request_ids), lookup.fqdn, Status.BAD_REQUEST,
                                          "unusable route direction"))
                return
        else:
            path = existing
            if rd != path.rd:
                self._redirected(path, rd, role, mode, now)
        if lookup is not None:
            path.fqdn = lookup.fqdn
            path.request_ids.extend(lookup.request_ids)
            self._by_name[lookup.fqdn] = path.path_id
        elif rd.peer_name:
            self._by_name.setdefault(rd.peer_name.rstrip(".").lower(), path.path_id)
        if lookup is None and redirected is None:
            # DC-initiated (we are told to take part in a path): acknowledge, also for duplicates.
            self._reply(self._dc.session, RouteDirectionAck(path_id=rd.path_id), header.txid, addr)
        if path.established:
            if path.request_ids:
                self._emit(PathReady(path.info(), tuple(path.request_ids)))
                path.request_ids.clear()
            return
        if existing is None and path.sends_tunnel_request:
            self._send_tunnel_request(path, now)
        if existing is None:
            early = [e for e in self._early if e[0] == path.path_id and now - e[3] < EARLY_HOLD]
            self._early = [e for e in self._early if e[0] != path.path_id]
            for _pid, held, src, _at in early:
                self.receive_datagram(held, src, now)

    def _claim_key(self, key: bytes) -> bool:
        """Take ``key`` for new sealers; False (counted) if this process has sealed under it before."""
        if self._used_keys.claim(key):
            return True
        self.stats["drop_reused_path_key"] += 1
        return False

    def _new_path(self, rd: RouteDirection, role: PathRole, mode: PathMode, now: float) -> _Path | None:
        if not self._claim_key(rd.path_key):
            return None
        keys = path_keys(rd.path_key, rd.path_id)
        sig_keys, data_keys = keys.for_initiator() if role is PathRole.INITIATOR else keys.for_responder()
        responder = role is PathRole.RESPONDER
        if mode is PathMode.RS_S:
            if rd.relay_key is None or rd.rs_endpoint is None:
                return None
            sig_keys = relay_leg_keys(rd.relay_key, rd.path_id, responder_leg=responder)
            targets = [rd.rs_endpoint]
        elif mode is PathMode.RS_N:
            if rd.rs_endpoint is None and not rd.peer_endpoints:
                return None
            targets = [rd.rs_endpoint] if rd.rs_endpoint is not None else list(rd.peer_endpoints)
        else:
            targets = list(rd.peer_endpoints)
            if role is PathRole.INITIATOR and not targets:
                return None
        flags = CapsuleFlags.FROM_RESPONDER if responder else CapsuleFlags.NONE
        sig = Channel(sig_keys, rd.path_id)
        path = _Path(rd.path_id, role, mode, rd, sig,
                     CapsuleSealer(data_keys.send, rd.path_id, flags), CapsuleOpener(data_keys.recv), data_keys,
                     targets, endpoint=targets[0] if targets else None, created=now)
        path.channels[("leg", rd.relay_key) if mode is PathMode.RS_S else ("path",)] = sig
        self._paths[rd.path_id] = path
        return path

    def _sig_flags(self, path: _Path) -> int:
        return SignalFlags.FROM_RESPONDER if path.role is PathRole.RESPONDER else 0

    def _send_tunnel_request(self, path: _Path, now: float) -> None:
        if not path.targets:
            return
        dest = path.targets[path.target_index % len(path.targets)]
        reg = self.registration
        msg = TunnelRequest(capabilities=self.config.capabilities, vip4=reg.vip4 if reg else None,
                            vip6=reg.vip6 if reg else None)
        self._cancel_where(lambda p: p.tag == ("tunnel", path.path_id))
        self._request(path.sig, msg, new_txid(self._rand), dest, now, timeout=TUNNEL_TIMEOUT,
                      flags=self._sig_flags(path), tag=("tunnel", path.path_id),
                      on_timeout=lambda t: self._tunnel_timed_out(path.path_id, t))

    def _tunnel_timed_out(self, path_id: bytes, now: float) -> None:
        path = self._paths.get(path_id)
        if path is None:
            return
        path.target_index += 1
        if not path.established and path.target_index < len(path.targets):
            self._send_tunnel_request(path, now)
            return
        if path.established:
            # A refresh after handover went unanswered; address learning may still heal the path.
            self.stats["tunnel_refresh_timeouts"] += 1
            return
        del self._paths[path_id]
        if path.fqdn is not None:
            self._by_name.pop(path.fqdn, None)
        if path.request_ids:
            self._emit(PathFailed(tuple(path.request_ids), path.fqdn or (path.rd.peer_name or ""),
                                  Status.PEER_UNREACHABLE, "no Tunnel Response from the peer or relay"))
        self._emit(PathClosed(path_id, "tunnel set-up timed out"))

    def _refresh_path(self, path: _Path, now: float) -> None:
        """Announce our (possibly new) address on an established path: a Tunnel Request to the peer
        (DIRECT, either role), the RS-N, or on our own leg to the RS-S. Authenticated, so the other
        end learns our new endpoint from it and answers there at once."""
        if path.established and path.endpoint is not None:
            if path.endpoint not in path.targets:
                path.targets.insert(0, path.endpoint)
            path.target_index = path.targets.index(path.endpoint)
            self.stats["path_announcements"] += 1
            self._send_tunnel_request(path, now)

    def _announce_all(self, now: float) -> None:
        for path in self._paths.values():
            self._refresh_path(path, now)

    def _redirect_all(self, now: float) -> None:
        """After a handover re-registration: ask the DC to decide every NTM-peer path again (a Direction
        Request naming the path; docs/protocol.md §10). The DC may change the mode (DIRECT <-> RS-S) and
        the relay, never the Path ID, key or roles; it tells the peer too."""
        for path in self._paths.values():
            self._redirect_path(path, now)

    def _redirect_path(self, path: _Path, now: float) -> bool:
        """Ask the DC to decide this NTM-peer path again (same Path ID, key and roles). False when it
        cannot be asked now (not registered, not an NTM-peer path, or a re-direction is in flight)."""
        if self._dc.session is None or not path.established or path.mode is PathMode.RS_N or not path.rd.peer_name:
            return False
        if path.path_id in self._redirects.values():
            return False
        txid = new_txid(self._rand)
        self._redirects[txid] = path.path_id
        self.stats["redirects_requested"] += 1
        self._request(self._dc.session, DirectionRequest(fqdn=path.rd.peer_name, path_id=path.path_id,
                                                      capabilities=self.config.capabilities),
                      txid, self.config.dc_endpoint, now, timeout=DIRECTION_TIMEOUT,
                      on_timeout=functools.partial(self._redirect_timed_out, txid))
        return True

    def _redirect_timed_out(self, txid: int, now: float) -> None:
        if self._redirects.pop(txid, None) is not None:
            self.stats["redirect_timeouts"] += 1

    def _redirected(self, path: _Path, rd: RouteDirection, role: PathRole, mode: PathMode, now: float) -> None:
        """A new Route Direction for a path we have: the DC re-decided it (after a move of either end).
        Same Path ID, key and role, so the data sealer/opener and their counters carry on; the mode,
        the targets and (RS-S) the relay may change. Both ends then announce themselves. (A Path ID
        names one key for its whole life: a path that needs new keys gets a new Path ID.)"""
        if role is not path.role or rd.path_key != path.rd.path_key:
            # Another role would make us seal with the other direction's key: never reuse a key so.
            self.stats["redirect_refused_role_or_key"] += 1
            return
        if mode is PathMode.RS_S:
            if rd.relay_key is None or rd.rs_endpoint is None:
                self.stats["drop_bad_route_direction"] += 1
                return
            key: tuple[object, ...] = ("leg", rd.relay_key)
            targets = [rd.rs_endpoint]
        elif mode is PathMode.RS_N or path.mode is PathMode.RS_N:
            return  # an RS-N path is never re-directed (a repeated Route Direction)
        else:
            key = ("path",)
            targets = list(rd.peer_endpoints)
        sig = path.channels.get(key)
        if sig is None:
            if mode is PathMode.RS_S:
                assert rd.relay_key is not None
                sig_keys = relay_leg_keys(rd.relay_key, rd.path_id, responder_leg=role is PathRole.RESPONDER)
            else:
                keys = path_keys(rd.path_key, rd.path_id)
                sig_keys = (keys.for_initiator() if role is PathRole.INITIATOR else keys.for_responder())[0]
            sig = path.channels[key] = Channel(sig_keys, rd.path_id)
        old_mode = path.mode
        # (A keepalive still pending was sealed for the old relay or key: its loss would look like a
        # relay failure. The keepalive chain goes on with the new targets.)
        self._cancel_where(lambda p: p.tag in (("tunnel", path.path_id), ("keepalive", path.path_id)))
        path.rd, path.mode, path.sig = rd, mode, sig
        self.stats["redirected"] += 1
        if targets:
            path.targets, path.target_index = targets, 0
            if path.endpoint != targets[0]:
                path.endpoint = targets[0]
                self._emit(PathEndpointChanged(path.path_id, targets[0]))
        if mode is not old_mode and path.established:
            self._emit(PathReady(path.info(), ()))  # the data plane re-reads mode (address learning) and endpoint
        if path.established:
            self._start_path_keepalives(path)
        if path.endpoint is not None:
            self._send_tunnel_request(path, now)

    def _on_tunnel(self, path: _Path, header: SignalHeader, data: bytes, addr: Endpoint, now: float) -> None:
        msg = self._open(path.sig, header, data)
        if msg is None:
            return
        path.last_rx = now
        if isinstance(msg, TunnelRequest):
            # A DIRECT responder receives the initiator's requests; on an established path either
            # end re-announces itself this way after a move, so the initiator answers too. (On the
            # path keys each role seals with its own direction: a reflected request fails to open.)
            if path.mode is PathMode.RS_S or (path.role is PathRole.INITIATOR
                                              and (path.mode is not PathMode.DIRECT or not path.established)):
                self.stats["drop_unexpected"] += 1
                return
            self._learn(path, addr)
            path.peer_caps = msg.capabilities
            self._reply(path.sig, TunnelResponse(capabilities=self.config.capabilities, observed=addr), header.txid,
                        addr, flags=self._sig_flags(path))
            self._establish(path)
        elif isinstance(msg, TunnelResponse):
            if self._answered(path.sig, header.txid) is None:
                self.stats["drop_late_response"] += 1
                return
            self._learn(path, addr)
            path.peer_caps = msg.capabilities
            self._establish(path)
        elif isinstance(msg, Keepalive):
            self._learn(path, addr)
            self._reply(path.sig, KeepaliveAck(observed=addr), header.txid, addr, flags=self._sig_flags(path))
        elif isinstance(msg, KeepaliveAck):
            self._answered(path.sig, header.txid)
        else:
            self.stats["drop_unexpected"] += 1

    def _establish(self, path: _Path) -> None:
        first = not path.established
        path.established = True
        if first or path.request_ids:
            self._emit(PathReady(path.info(), tuple(path.request_ids)))
            path.request_ids.clear()
        if first:
            self._start_path_keepalives(path)
        if first and path.mode is PathMode.RS_N:
            # A new RS-N path to a general node we already had one to supersedes it (the DC set it up
            # again: a second name, a dead relay; same GN VIP, new Path ID and key). The data plane has
            # just moved the VIP to the new path; the old one goes.
            vips = {path.rd.peer_vip4, path.rd.peer_vip6} - {None}
            for old in [p for p in self._paths.values() if p is not path and p.mode is PathMode.RS_N
                        and vips & {p.rd.peer_vip4, p.rd.peer_vip6}]:
                self.stats["paths_superseded"] += 1
                for name in [n for n, pid in self._by_name.items() if pid == old.path_id]:
                    self._by_name[name] = path.path_id  # its names now lead to the new path
                self._close_path(old.path_id, "superseded by a new path to the same general node")

    def _start_path_keepalives(self, path: _Path) -> None:
        interval = self._path_keepalive_interval(path)
        if interval > 0 and not path.keepalive_on:
            path.keepalive_on = True
            self._call_at(self._now_hint + interval, functools.partial(self._path_keepalive, path.path_id, path))

    def _path_keepalive_interval(self, path: _Path) -> float:
        """Behind a NAT the DC asks for keepalives (its mapping must stay open); a relayed path is kept
        alive anyway, at a third of the relay's idle timeout, so the relay keeps its entry."""
        if path.rd.keepalive:
            return float(path.rd.keepalive)
        if path.mode is not PathMode.DIRECT and path.rd.idle_timeout:
            return path.rd.idle_timeout / 3
        return 0.0

    def _path_keepalive(self, path_id: bytes, path: _Path, now: float) -> None:
        interval = self._path_keepalive_interval(path)
        if self._paths.get(path_id) is not path or path.endpoint is None or interval <= 0:
            # (A re-direction may have made keepalives unnecessary, e.g. DIRECT between global nodes.)
            path.keepalive_on = False
            return
        self._cancel_where(lambda p: p.tag == ("keepalive", path_id))
        # The highest data counter received so far: data arriving meanwhile proves the far end alive
        # even if the keepalive's answer is lost (e.g. sent to the address we just left).
        mark = path.opener.window.top
        self._request(path.sig, Keepalive(), new_txid(self._rand), path.endpoint, now,
                      timeout=node_keepalive_timeout(interval), flags=self._sig_flags(path),
                      tag=("keepalive", path_id),
                      on_timeout=functools.partial(self._path_keepalive_lost, path_id, path, mark))
        self.stats["path_keepalives"] += 1
        self._call_at(now + interval, functools.partial(self._path_keepalive, path_id, path))

    def _path_keepalive_lost(self, path_id: bytes, path: _Path, mark: int, now: float) -> None:
        """A path keepalive went unanswered through all its retransmissions. On a relayed path that
        means the relay is gone (docs/protocol.md §10, "Relay failure"). The node notices within one
        keepalive interval plus min(3 s, interval / 2).

        - RS-N: the path is closed, so the next packet to the GN VIP asks the DC again; the DC moves
          the path (same Path ID, key and GN VIP) to a live relay.
        - RS-S: the path is kept (the VIPs, keys and counters carry on) and the node asks the DC to
          re-direct it (a Direction Request naming the path); the DC moves it to a live relay (or
          DIRECT) and tells both nodes. If that fails, the next lost keepalive asks again."""
        if self._paths.get(path_id) is not path or path.mode is PathMode.DIRECT:
            return
        if path.opener.window.top > mark or now - self._moved_at < MOVED_GRACE:
            # Authenticated data came in since the keepalive left (the relay is alive), or we have
            # just moved and the answer went to our old address: not a relay failure.
            self.stats["path_keepalive_lost_but_alive"] += 1
            return
        if path.mode is PathMode.RS_S:
            self.stats["rss_relay_lost"] += 1
            if self._redirect_path(path, now):
                self.stats["rss_relay_redirects"] += 1
            return
        self.stats["relay_lost"] += 1
        self._close_path(path_id, "the relay stopped answering path keepalives")

    def _close_path(self, path_id: bytes, reason: str) -> None:
        """Forget a path (its names, timers) and tell the runtime; the next packet to its VIP asks the
        DC again by name, for a new path (new Path ID and key)."""
        if self._paths.pop(path_id, None) is None:
            return
        for name in [n for n, pid in self._by_name.items() if pid == path_id]:
            del self._by_name[name]
        self._cancel_where(lambda p: p.tag in (("tunnel", path_id), ("keepalive", path_id)))
        self._emit(PathClosed(path_id, reason))

    def _learn(self, path: _Path, addr: Endpoint) -> None:
        if path.endpoint != addr:
            changed = path.endpoint is not None
            path.endpoint = addr
            if changed:
                self.stats["endpoint_learned"] += 1
                self._emit(PathEndpointChanged(path.path_id, addr))

    def _on_data(self, data: bytes, addr: Endpoint, now: float) -> None:
        try:
            hdr = parse_capsule_header(data)
        except CodecError:
            self.stats["drop_malformed"] += 1
            return
        path = self._paths.get(hdr.path_id)
        if path is None:
            self.stats["drop_unknown_path"] += 1
            return
        try:
            payload = path.opener.open(data)
        except AuthError:
            self.stats["drop_data_auth"] += 1
            return
        except CodecError:
            self.stats["drop_malformed"] += 1
            return
        path.last_rx = now
        path.rx_packets += 1
        path.rx_bytes += len(payload)
        if path.mode is not PathMode.RS_S:
            # End-to-end authenticated data from a new address: the peer moved (handover).
            self._learn(path, addr)
        if not path.established and path.role is PathRole.RESPONDER:
            self._establish(path)
        self._emit(DataReceived(path.path_id, payload))


def _status(code: int) -> Status:
    try:
        return Status(code)
    except ValueError:
        return Status.BAD_REQUEST
