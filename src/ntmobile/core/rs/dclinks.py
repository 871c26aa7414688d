"""The relay's links to its DCs and their signalling: registration (``core.registration``), Relay
Direction (install, refresh, re-key), Path Release, and distance probes.

Every DC message arrives on the DC's session channel and is dispatched by its type
(``_DC_MESSAGES``); the relay checks a Relay Direction itself before anything is allocated (keys,
RS-N targets, one RS-N path per (node VIP, peer VIP) pair, table size)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from ntmobile.crypto import Channel, CounterFloor
from ntmobile.wire import (
    VERSION,
    DirectionResponse,
    Endpoint,
    Keepalive,
    KeepaliveAck,
    PathRelease,
    PathReleaseAck,
    RegistrationRequest,
    RelayDirection,
    RelayProbe,
    RelayProbeResult,
    Role,
    RsType,
    SignalFlags,
    SignalHeader,
    Status,
    StatusMessage,
)
from ntmobile.wire.constants import SUPPORTED_VERSIONS

from ..common import CoreBase
from ..registration import (
    AttemptFailed,
    DcState,
    RegistrationClient,
    RegistrationPolicy,
    SessionLost,
    SessionUp,
)
from ..registration import Outcome as RegistrationOutcome
from ..targets import TargetPolicy
from ..timing import RELAY_KEEPALIVE_DEFAULT, relay_keepalive_timeout
from .config import MAX_PROBES, DcLink, RsConfig
from .events import ProbeRequest, Registered, RegistrationFailed, RelayAdded, RelayRemoved
from .table import AnyEntry, RelayTable, RssEntry, new_entry, same_binding, same_binding_but_relay_key, vip_pairs


class _Dc(RegistrationClient):
    """The relay's registration with one of its DCs (core.registration), and the link it serves. A
    registration that starts stops the old session's keepalives; a failed one is retried after the
    backoff."""

    def __init__(self, rs: DcSignalling, link: DcLink, counter: CounterFloor,
                 random_bytes: Callable[[int], bytes], new_txid: Callable[[], int]) -> None:
        RegistrationClient.__init__(
            self, rs, rs.config.rs_id, link.endpoint, link.psk, counter=counter, random_bytes=random_bytes,
            new_txid=new_txid, timeout=rs.config.registration_timeout, policy=_REGISTRATION_POLICY,
            request_message=rs._registration_request,
            on_outcome=partial(rs._registration_outcome, link.dc_id),
            keepalive_message=rs._keepalive_message)
        self.link = link
        #: Where it registers, the current replica first (one entry without replicas).
        self.ring = (link.endpoint, *link.replicas)
        if link.replicas:
            self.misses_allowed = 1  # another replica is there to take the relay at the first silence

    def next_replica(self) -> bool:
        """Register with the DC's next replica from now on (False: the DC has no other)."""
        if len(self.ring) < 2:
            return False
        self.ring = (*self.ring[1:], self.ring[0])
        self.endpoint = self.ring[0]
        return True


#: The relay's registrations: no session kept while registering again; a refused status or another
#: protocol version is a refusal.
_REGISTRATION_POLICY = RegistrationPolicy(
    keep_session=False, keepalive_timeout=relay_keepalive_timeout, default_keepalive=RELAY_KEEPALIVE_DEFAULT,
    versions=(VERSION, VERSION), refuse_on_status=True)


@dataclass(frozen=True, slots=True)
class ProbeKey:
    """A distance probe being measured: the DC's request it answers."""

    dc_id: bytes
    txid: int


@dataclass(frozen=True, slots=True)
class _Probe:
    token: int
    session: Channel
    addr: Endpoint
    msg: RelayProbe


class DcSignalling(CoreBase):
    """The relay core's DC links (a part of ``RsCore``)."""

    config: RsConfig
    targets: TargetPolicy
    instance: bytes
    table: RelayTable
    _dcs: dict[bytes, _Dc]
    #: The relay's own addresses: never an RS-N target.
    _own: tuple[str, ...]
    #: The standby of an RS-N pair (core.py): new RS-N paths are refused.
    standby: bool
    _probing: dict[ProbeKey, _Probe]
    _probe_tokens: dict[int, ProbeKey]
    _probe_token: int

    # -- registration with the DCs (core.registration) ---------------------------------------------
    def _registration_request(self, ephemeral: bytes) -> RegistrationRequest:
        c = self.config
        return RegistrationRequest(role=Role.RELAY, name=c.name, ephemeral=ephemeral, versions=SUPPORTED_VERSIONS,
                                   local_endpoints=tuple(c.local_endpoints), capabilities=c.capabilities,
                                   load=len(self.table), instance=self.instance)

    def _keepalive_message(self) -> Keepalive:
        return Keepalive(load=len(self.table))

    def _start_registration(self, dc: _Dc, now: float) -> None:
        self.stats["registrations_sent"] += 1
        dc.start(now)

    def _registration_outcome(self, dc_id: bytes, outcome: RegistrationOutcome, now: float) -> None:
        dc = self._dcs[dc_id]
        if isinstance(outcome, SessionUp):
            self.stats["registrations"] += 1
            self._emit(Registered(dc_id, outcome.response.observed))
        elif isinstance(outcome, AttemptFailed):
            self.stats["registrations_failed"] += 1
            if outcome.status is None and dc.next_replica():  # no answer: the next attempt goes elsewhere
                self.stats["dc_failovers"] += 1
            self._emit(RegistrationFailed(dc_id, _status(outcome.status) if outcome.status is not None else None,
                                          outcome.reason))
        elif isinstance(outcome, SessionLost):
            self.stats["reregister_keepalive"] += 1
            if dc.next_replica():
                self.stats["dc_failovers"] += 1
            self._start_registration(dc, now)
        else:  # RetryDue
            self._start_registration(dc, now)

    # -- from a DC ----------------------------------------------------------------------------------
    def _on_dc(self, dc: _Dc, hdr: SignalHeader, data: bytes, addr: Endpoint, now: float) -> None:
        if hdr.flags & SignalFlags.LONG_TERM:
            lt_msg = dc.receive_long_term(hdr, data, addr, now)
            if isinstance(lt_msg, StatusMessage):
                self._on_dc_status(dc, hdr, lt_msg, now)
            elif lt_msg is not None:
                self.stats["drop_unexpected"] += 1
            return
        session = dc.session
        if session is None:
            self.stats["drop_no_session"] += 1
            return
        msg = self._open(session, hdr, data)
        if msg is None:
            return
        handler = _DC_MESSAGES.get(type(msg))
        if handler is None:
            self.stats["drop_unexpected"] += 1
            return
        handler(self, dc, session, hdr, msg, addr, now)

    def _on_keepalive_ack(self, dc: _Dc, session: Channel, hdr: SignalHeader, msg: KeepaliveAck,
                          addr: Endpoint, now: float) -> None:
        if not dc.keepalive_acked(hdr.txid):
            self.stats["drop_late_response"] += 1
            return
        if msg.observed is not None:
            dc.observed = msg.observed

    def _on_session_status(self, dc: _Dc, session: Channel, hdr: SignalHeader, msg: StatusMessage,
                           addr: Endpoint, now: float) -> None:
        self._on_dc_status(dc, hdr, msg, now)

    def _on_dc_status(self, dc: _Dc, hdr: SignalHeader, msg: StatusMessage, now: float) -> None:
        if dc.state is DcState.REGISTERING and hdr.txid == dc.reg_txid:
            dc.fail(hdr.status, msg.reason or "registration refused", now)
        elif hdr.status == Status.REREGISTER or (dc.ka_txid is not None and hdr.txid == dc.ka_txid):
            # The DC lost our session (restart) or refused a keepalive: register again.
            if dc.state is not DcState.REGISTERING:
                self.stats["reregister_requested"] += 1
                self._start_registration(dc, now)
        else:
            self.stats["status_ignored"] += 1

    # -- distance probes ----------------------------------------------------------------------------
    def _on_probe(self, dc: _Dc, session: Channel, hdr: SignalHeader, msg: RelayProbe, addr: Endpoint,
                  now: float) -> None:
        key = ProbeKey(dc.link.dc_id, hdr.txid)
        if key in self._probing:
            return  # a retransmission while we measure: the result answers both
        if len(self._probing) >= MAX_PROBES:
            self.stats["probe_busy"] += 1
            self._reply(session, RelayProbeResult(gn_addr4=msg.gn_addr4, gn_addr6=msg.gn_addr6), hdr.txid, addr,
                        status=Status.BUSY)
            return
        target = msg.gn_addr4 or msg.gn_addr6
        if target is None:
            self._reply(session, RelayProbeResult(), hdr.txid, addr, status=Status.BAD_REQUEST)
            return
        if self._refused_target(target) is not None:
            self.stats["probe_target_refused"] += 1
            self._reply(session, RelayProbeResult(gn_addr4=msg.gn_addr4, gn_addr6=msg.gn_addr6), hdr.txid, addr,
                        status=Status.ADDRESS_REFUSED)
            return
        self._probe_token += 1
        self._probing[key] = _Probe(self._probe_token, session, addr, msg)
        self._probe_tokens[self._probe_token] = key
        self.stats["probes"] += 1
        self._emit(ProbeRequest(self._probe_token, target))

    def probe_result(self, token: int, hops: int | None, rtt_us: int | None, now: float) -> None:
        """The runtime measured the distance asked for by ProbeRequest ``token`` (None: no reply)."""
        key = self._probe_tokens.pop(token, None)
        if key is None:
            return
        p = self._probing.pop(key)
        reply = RelayProbeResult(gn_addr4=p.msg.gn_addr4, gn_addr6=p.msg.gn_addr6, hops=hops,
                                 rtt_us=min(rtt_us, 0xFFFFFFFF) if rtt_us is not None else None)
        self._reply(p.session, reply, key.txid, p.addr,
                    status=Status.OK if hops is not None else Status.PEER_UNREACHABLE)

    # -- Relay Direction and Path Release ----------------------------------------------------------
    def _on_relay_direction(self, dc: _Dc, session: Channel, hdr: SignalHeader, msg: RelayDirection,
                            addr: Endpoint, now: float) -> None:
        pid = msg.path_id
        table = self.table
        existing = table.paths.get(pid)
        if existing is not None:
            old_key = existing.direction.relay_key
            if (existing.dc_id == dc.link.dc_id and isinstance(existing, RssEntry) and msg.rs_type == RsType.S
                    and msg.relay_key is not None and msg.relay_key != old_key
                    and same_binding_but_relay_key(existing.direction, msg)):
                # The DC re-directed the path with a fresh relay key (docs/protocol.md §10).
                if msg.relay_key in existing.retired_keys or not table.used_keys.claim(msg.relay_key):
                    self.stats["relay_direction_retired_key"] += 1
                    self._direction_response(session, pid, hdr.txid, addr, Status.PATH_ID_IN_USE)
                    return
                table.rekey(existing, msg, self._idle_timeout(msg))
                self.stats["relay_direction_rekeyed"] += 1
                self._direction_response(session, pid, hdr.txid, addr, Status.OK)
                return
            if existing.dc_id != dc.link.dc_id or not same_binding(existing.direction, msg):
                self.stats["relay_direction_in_use"] += 1
                self._direction_response(session, pid, hdr.txid, addr, Status.PATH_ID_IN_USE)
                return
            if existing.direction != msg:
                # Same path, keys and addresses: a refresh of the informative/timing parts.
                existing.direction = msg
                table.retime(existing, self._idle_timeout(msg))
                self.stats["relay_direction_refreshed"] += 1
            else:
                self.stats["relay_direction_duplicate"] += 1
            self._direction_response(session, pid, hdr.txid, addr, Status.OK)
            return
        problem = self._validate(msg)
        if problem is not None:
            self.stats["relay_direction_bad"] += 1
            self._direction_response(session, pid, hdr.txid, addr, Status.BAD_REQUEST)
            return
        if msg.rs_type == RsType.N and msg.standby:
            # A path's standby leg (issue 20, RS-N pair): the GN's answers come here only once the shared
            # address does, and then the node switches to this leg. Accepted whichever relay holds it.
            self.stats["relay_direction_standby_leg"] += 1
        elif msg.rs_type == RsType.N and self.standby:
            # The pair's shared address is at the other relay: the GN's answers would not come here.
            self.stats["relay_direction_standby"] += 1
            self._direction_response(session, pid, hdr.txid, addr, Status.BUSY)
            return
        if msg.rs_type == RsType.N and self._refused_target(msg.gn_addr4, msg.gn_addr6) is not None:
            # Checked again here, before any NAT mapping exists: the DC may be wrong or compromised.
            self.stats["relay_direction_target_refused"] += 1
            self._direction_response(session, pid, hdr.txid, addr, Status.ADDRESS_REFUSED)
            return
        key = msg.path_key if msg.rs_type == RsType.N else msg.relay_key
        if key is None or key in table.used_keys:
            # A key this relay has sealed under before (its counters would start again): never again.
            self.stats["relay_direction_retired_key"] += 1
            self._direction_response(session, pid, hdr.txid, addr, Status.PATH_ID_IN_USE)
            return
        # One RS-N path per (node VIP, peer VIP) pair: the kernel NAT cannot tell two apart. A new
        # path of the same DC for a pair supersedes the old one (the node set the path up again);
        # the same pair from another DC (overlapping VIP spaces) cannot be relayed here.
        pairs = vip_pairs(msg) if msg.rs_type == RsType.N else ()
        superseded = {id(o): o for o in (table.by_vips.get(p) for p in pairs) if o is not None}
        if any(o.dc_id != dc.link.dc_id for o in superseded.values()):
            self.stats["relay_direction_vip_conflict"] += 1
            self._direction_response(session, pid, hdr.txid, addr, Status.BUSY)
            return
        if len(table) - len(superseded) >= self.config.max_paths:
            self.stats["relay_direction_busy"] += 1
            self._direction_response(session, pid, hdr.txid, addr, Status.BUSY)
            return
        for old in superseded.values():
            self.stats["relays_superseded"] += 1
            self._remove(old, "superseded")  # RelayRemoved before RelayAdded: the NAT mapping moves
        table.used_keys.claim(key)
        e = new_entry(dc.link.dc_id, msg, self._idle_timeout(msg), now)
        table.install(e)
        self.stats["relays_added"] += 1
        self._emit(RelayAdded(e))
        self._direction_response(session, pid, hdr.txid, addr, Status.OK)

    def _direction_response(self, session: Channel, pid: bytes, txid: int, addr: Endpoint, status: Status) -> None:
        self._reply(session, DirectionResponse(path_id=pid, load=len(self.table),
                                               capabilities=self.config.capabilities),
                    txid, addr, status=status)

    def _validate(self, msg: RelayDirection) -> str | None:
        pid = msg.path_id
        if pid in self._dcs or pid == self.config.rs_id:
            return "path id collides with a key identifier"
        if msg.rs_type == RsType.N:
            if msg.path_key is None or msg.relay_key is not None:
                return "RS-N needs the path key (and no relay key)"
            if not vip_pairs(msg):
                return "RS-N needs node VIP, peer VIP and GN address of one family"
        elif msg.rs_type == RsType.S:
            if msg.relay_key is None or msg.path_key is not None:
                return "RS-S needs the relay key (and never the path key)"
        else:
            return f"unknown RS type {msg.rs_type}"
        return None

    def _refused_target(self, *addrs: str | None) -> str | None:
        """Why one of ``addrs`` (None: absent) may not be an RS-N target of this relay, or None."""
        for a in addrs:
            if a is not None and (why := self.targets.refusal(a, self._own)) is not None:
                return why
        return None

    def _idle_timeout(self, msg: RelayDirection) -> float:
        return float(msg.idle_timeout) if msg.idle_timeout > 0 else self.config.default_idle_timeout

    def _on_path_release(self, dc: _Dc, session: Channel, hdr: SignalHeader, msg: PathRelease,
                         addr: Endpoint, now: float) -> None:
        e = self.table.paths.get(msg.path_id)
        if e is not None and e.dc_id != dc.link.dc_id:
            self.stats["release_not_owner"] += 1
            self._reply(session, PathReleaseAck(path_id=msg.path_id), hdr.txid, addr, status=Status.NOT_AUTHORIZED)
            return
        if e is not None:
            self._remove(e, "released")  # the entry and its leg keys are forgotten with it
        else:
            self.stats["release_unknown_path"] += 1  # already gone: acknowledge (idempotent)
        self._reply(session, PathReleaseAck(path_id=msg.path_id, load=len(self.table)), hdr.txid, addr)

    def _remove(self, e: AnyEntry, reason: str) -> None:
        if self.table.remove(e):
            self.stats["relays_removed"] += 1
            self._emit(RelayRemoved(e, reason))


#: What a DC may send on its session, by message type (anything else is counted and dropped).
_DC_MESSAGES: dict[type, Callable[[DcSignalling, _Dc, Channel, SignalHeader, Any, Endpoint, float], None]] = {
    RelayDirection: DcSignalling._on_relay_direction,
    PathRelease: DcSignalling._on_path_release,
    RelayProbe: DcSignalling._on_probe,
    KeepaliveAck: DcSignalling._on_keepalive_ack,
    StatusMessage: DcSignalling._on_session_status,
}


def _status(code: int) -> int:
    try:
        return Status(code)
    except ValueError:
        return code
