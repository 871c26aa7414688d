"""The NTM node's sans-IO core: NodeCore, its registration with the DC, its API and the dispatch of
every signalling datagram it is fed. Data capsules are not the core's: the node's one data path is
``dataplane.forwarder.NodeForwarder`` (daemon and unit tests alike), which follows the core's path
events and tells it what it learns (``note_data``).

Inputs: signalling datagrams from the node's UDP socket, API calls (``register``, ``request_path``,
``addresses_changed``), ``handle_timer``. Outputs: datagrams, events, the timer.
The lookups with the DC are in direction.py, the tunnels with peers and relays in tunnel.py, the
path records and their states in paths.py.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from ntmobile.crypto import CounterFloor, UsedKeys
from ntmobile.wire import (
    MAX_SIGNAL_SIZE,
    CodecError,
    Endpoint,
    Keepalive,
    KeepaliveAck,
    MessageType,
    NatKind,
    PathMode,
    PathReleaseAck,
    PathRole,
    RegistrationRequest,
    RegistrationResponse,
    Role,
    RouteDirection,
    SignalFlags,
    SignalHeader,
    Status,
    StatusMessage,
    parse_signal_header,
    parse_version_not_supported,
    peek,
)
from ntmobile.wire.constants import SUPPORTED_VERSIONS

from ..common import CoreBase, new_txid
from ..registration import AttemptFailed, RegistrationClient, RegistrationPolicy, SessionLost, SessionUp
from ..registration import Outcome as RegistrationOutcome
from ..timing import (
    EARLY_HOLD,
    MAPPING_PROBE_TIMEOUT,
    PATH_PROBE_TIMEOUT,
    REGISTRATION_TIMEOUT,
    REPLICA_LIVENESS_KEEPALIVE,
    node_keepalive_timeout,
)
from .events import (
    DcProbed,
    NodeConfig,
    PathInfo,
    Registered,
    RegistrationFailed,
    status_of,
)
from .paths import DcProbeTag, NatProbeTag
from .standby import NodeStandby

#: Tunnel Requests held for a path we do not know yet (for EARLY_HOLD seconds): at most this many.
EARLY_MAX = 16
#: Path keys remembered as used (32 bytes each): a Route Direction re-using one is refused.
RETIRED_KEYS = 4096


#: The node's registration: a re-registration (handover, DC request) keeps the old session and its
#: keepalives until the new session is up (RENEWING); after a failure the node retries only while it is
#: not registered.
_REGISTRATION_POLICY = RegistrationPolicy(
    keep_session=True, keepalive_timeout=node_keepalive_timeout, versions=SUPPORTED_VERSIONS,
    stale_stat="drop_stale_registration", timeout_reason="the DC did not answer the registration",
    bad_key_reason=None)


class NodeCore(NodeStandby):
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
        if c.dc_replicas:
            self._dc.misses_allowed = 1  # a lost keepalive (retransmitted meanwhile): the next replica
            # A node with no NAT gets no keepalive interval from the DC; with replicas it keeps one
            # anyway, or it would not notice its replica's death (REPLICA_LIVENESS_KEEPALIVE).
            self._dc.default_keepalive = REPLICA_LIVENESS_KEEPALIVE
        self.local_endpoints: tuple[Endpoint, ...] = ()
        self.registered = False
        self.registration: Registered | None = None
        self._paths = {}
        self._by_name = {}
        self._lookups = {}  # Direction Request txid -> lookup
        #: Lookups made before the node is registered: name -> the request ids and their timer.
        self._awaiting_registration = {}
        self._next_request_id = 1
        self._dc_heard_at = now
        self._dc_silent_until = -1e9
        self._liveness = None
        #: `ntm ping` / `ntm netcheck` probes sent (their IDs).
        self._probe_seq = 0
        self._now_hint = now
        self._moved_at = -1e9
        #: Set by addresses_changed; the next Registration Response then re-directs NTM-peer paths.
        self._handover_pending = False
        #: Re-direction requests in flight (Direction Request txid -> Path ID).
        self._redirects = {}
        #: The DC's probe endpoint (Registration Response), for NAT classification.
        self._probe_endpoint: Endpoint | None = None
        #: Our NAT as the DC last classified it (its Keepalive answers); None until it says, and again
        #: after each registration (a move may change it).
        self.nat_class: NatKind | None = None
        #: Tunnel signalling that arrived before the Route Direction that makes its path (a peer that
        #: initiates may be faster than our own DC): (path id, datagram, source, time).
        self._early = []
        #: Every path key this process has made sealers under (the newest RETIRED_KEYS): a Route
        #: Direction that would make a new sealer under one of them is refused, so a counter never
        #: starts again under a key, whatever the DC sends (docs/security.md §3).
        self._used_keys = UsedKeys(RETIRED_KEYS)
        self._init_liveness(now)  # busy relayed paths: a dead relay within 2 s (liveness.py)
        self._init_standby()  # RS-N pairs: standby legs (standby.py)

    # -- registration with the DC (core.registration) ------------------------------------------
    def _registration_request(self, ephemeral: bytes) -> RegistrationRequest:
        return RegistrationRequest(role=Role.NODE, name=self.config.name, ephemeral=ephemeral,
                                   versions=SUPPORTED_VERSIONS, local_endpoints=self.local_endpoints,
                                   capabilities=self.config.capabilities, instance=self.instance)

    def _registration_outcome(self, outcome: RegistrationOutcome, now: float) -> None:
        if isinstance(outcome, SessionUp):
            self._dc_heard(now)
            self._on_registered(outcome.response, now)
        elif isinstance(outcome, AttemptFailed):
            status = Status.SERVFAIL if outcome.status is None else status_of(outcome.status)
            if outcome.status is None:
                self._next_replica()  # no answer: the next attempt (RetryDue) goes to another replica
            self._emit(RegistrationFailed(status, outcome.reason))
        elif isinstance(outcome, SessionLost):
            self.registered = False
            self._next_replica()
            self.register(self.local_endpoints, now)
        elif not self.registered:  # RetryDue: only while not registered
            self.register(self.local_endpoints, now)

    def _next_replica(self) -> None:
        """Move to the next DC replica (no-op with none): the DC endpoint of every later message."""
        c = self.config
        if not c.dc_replicas:
            return
        ring = (c.dc_endpoint, *c.dc_replicas)
        nxt = ring[1]
        self.config = dataclasses.replace(c, dc_endpoint=nxt, dc_replicas=(*ring[2:], ring[0]))
        self._dc.endpoint = nxt
        self.stats["dc_failovers"] += 1

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
        self._traversal_moved(now)
        self.register(local_endpoints, now)
        self._announce_all(now)

    def routes_changed(self, now: float) -> None:
        """The routing changed without an address change (typically: the default route arrived just
        after the new address). Whatever could not leave before goes out now instead of at its next
        retransmission: the pending registration and an announcement on every established path."""
        self.stats["route_changes"] += 1
        self._dc.resend()
        self._announce_all(now)

    def paths(self) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for p in self._paths.values():
            out.append({
                "path_id": p.path_id.hex(), "peer": p.rd.peer_name, "peer_vip4": p.rd.peer_vip4,
                "peer_vip6": p.rd.peer_vip6, "mode": p.mode.name, "role": p.role.name, "rs": p.rd.rs_name,
                "endpoint": list(p.endpoint) if p.endpoint else None, "established": p.established,
                "tx_packets": p.tx_packets, "tx_bytes": p.tx_bytes, "rx_packets": p.rx_packets,
                "rx_bytes": p.rx_bytes, "created": p.created,
                "traversal": p.traversal.snapshot(p.created) if p.traversal is not None else None,
                "standby": ({"path_id": p.standby.path_id.hex(), "rs": p.standby.rd.rs_name,
                             "endpoint": list(p.standby.endpoint) if p.standby.endpoint else None,
                             "ready": p.standby.established} if p.standby is not None else None),
            })
        return out

    def traversal_of(self, path_id: bytes) -> dict[str, object] | None:
        """The NAT traversal of ``path_id`` as ``ntm status`` shows it (None: no traversal)."""
        p = self._paths.get(path_id)
        return p.traversal.snapshot(p.created) if p is not None and p.traversal is not None else None

    def probe_dc(self, now: float) -> int | None:
        """`ntm netcheck`: one session Keepalive to the DC, sent once; its answer or, after
        PATH_PROBE_TIMEOUT, its loss is a DcProbed event. None while there is no session."""
        session = self._dc.session
        if session is None:
            return None
        self._probe_seq += 1
        tag = DcProbeTag(self._probe_seq, now)
        self._request(session, Keepalive(), new_txid(self._rand), self.config.dc_endpoint, now,
                      timeout=PATH_PROBE_TIMEOUT, rto=PATH_PROBE_TIMEOUT, tag=tag,
                      on_timeout=lambda at: self._emit(DcProbed(tag.probe_id, None)))
        self.stats["dc_probes"] += 1
        return tag.probe_id

    def note_data(self, path_id: bytes, addr: Endpoint, now: float) -> None:
        """The data plane authenticated a capsule of ``path_id`` from a new address ``addr`` (it
        decrypts outside the core; its counters are its own): liveness and address learning."""
        self._now_hint = now
        path = self._paths.get(path_id)
        if path is None:
            return
        path.last_rx = now
        if path.mode is not PathMode.RS_S:
            # End-to-end authenticated data from a new address: the peer moved (handover).
            self._learn(path, addr)
        if not path.established and path.role is PathRole.RESPONDER:
            self._establish(path)

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
                # The forwarder's (NodeForwarder.on_capsule): a capsule fed here is not opened.
                self.stats["drop_data_not_signalling"] += 1
                return
            header = parse_signal_header(data)
        except CodecError:
            self.stats["drop_malformed"] += 1
            return
        if header.sender == self.config.dc_id:
            self._on_dc(header, data, addr, now)
        elif header.sender in self._paths:
            self._on_tunnel(self._paths[header.sender], header, data, addr, now)
        elif header.sender in self._standby_legs:
            self._on_standby_signal(self._standby_legs[header.sender], header, data, addr, now)
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
            if lt_msg is not None:
                self._dc_heard(now)
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
        self._dc_heard(now)
        if isinstance(msg, RouteDirection):
            self._on_route_direction(header, msg, addr, now)
        elif isinstance(msg, KeepaliveAck):
            self._on_nat_class(msg.nat)
            if not self._dc.keepalive_acked(header.txid):
                probe = self._answered(session, header.txid)
                if probe is not None and isinstance(probe.tag, DcProbeTag):
                    self._emit(DcProbed(probe.tag.probe_id, now - probe.tag.sent_at))
        elif isinstance(msg, StatusMessage):
            self._on_session_status(header, msg, now)
        elif isinstance(msg, PathReleaseAck):
            self._on_release_ack(header, msg)
        else:
            self.stats["drop_unexpected"] += 1

    def _on_nat_class(self, nat: int | None) -> None:
        """The DC's current classification of our NAT (on its session Keepalive answers)."""
        if nat is None:
            return
        try:
            self.nat_class = NatKind(nat)
        except ValueError:
            self.stats["bad_nat_class"] += 1

    def _on_nat_filter_probe(self, header: SignalHeader, addr: Endpoint) -> None:
        self.stats["nat_filter_probes_answered"] += 1
        self._reply(self._dc.long_term, KeepaliveAck(observed=addr), header.txid, self.config.dc_endpoint,
                    flags=SignalFlags.LONG_TERM)

    def _on_registered(self, msg: RegistrationResponse, now: float) -> None:
        """The session with the DC is up (the keepalives to it are started by the DC link)."""
        self.registered = True
        self.nat_class = None
        nat = NatKind(msg.nat) if msg.nat in (0, 1) else NatKind.NAT
        self.registration = Registered(msg.vip4, msg.vip6, msg.observed, nat, msg.keepalive)
        self._emit(self.registration)
        self._send_held_lookups(now)
        self._probe_endpoint = msg.probe
        if msg.probe is not None:
            # Mapping probe: the DC compares its source with the registration's observed endpoint.
            assert self._dc.session is not None
            self._request(self._dc.session, Keepalive(), new_txid(self._rand), msg.probe, now,
                          timeout=MAPPING_PROBE_TIMEOUT, tag=NatProbeTag())
        for path in self._paths.values():
            self._refresh_path(path, now)
        if self._handover_pending:
            self._handover_pending = False
            self._redirect_all(now)

    def _on_long_term_status(self, header: SignalHeader, msg: StatusMessage, now: float) -> None:
        status = status_of(header.status)
        if status is Status.REREGISTER:
            self.stats["reregister_requested"] += 1
            self._dc.drop_session()
            self.registered = False
            self.register(self.local_endpoints, now)
            return
        if header.txid == self._dc.reg_txid:
            self._dc.fail(status, msg.reason, now)

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
