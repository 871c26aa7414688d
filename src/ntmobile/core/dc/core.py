"""DcCore, the Direction Coordinator's sans-IO core: it takes every datagram, hands each message type
to the sub-protocol that owns it (a dispatch table), runs the periodic sweep, and brackets batches.

Name resolution is asked for, not performed: a Direction Request for a name outside the DC's own
domain emits ``ResolveRequest``; the runtime runs the DNS discovery (core.discovery) and feeds the
answer (a ``DiscoveryResult``) back with ``resolution_result``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ntmobile.crypto import CounterFloor
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
    PathRelease,
    PathReleaseAck,
    RelayProbeResult,
    Role,
    RouteDirectionAck,
    SignalFlags,
    SignalHeader,
    Status,
    StatusMessage,
    parse_signal_header,
    peek,
)
from ntmobile.wire.frame import SIGNAL_HEADER_SIZE, pack_version_not_supported, txid_of

from ..common import CoreBase
from ..discovery import DiscoveryResult
from ..join import JoinDesk, JoinDeskConfig
from ..registry import ClientRecord, Store
from ..timing import RELAY_DEAD_AFTER
from .config import DcConfig
from .direction import Directions
from .events import RelayLost
from .natprobe import NatProbe
from .paths import PathRecord, PathTable
from .peering import Peering
from .redirect import Redirects
from .registration import Registration
from .replicas import ReplicaRelays
from .sessions import SessionTable, _Session
from .standby import Standbys

#: A handler of one message type on a session: (session, header, message, address, now).
_Handler = Callable[..., None]


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
        self.seq_base = seq_base
        self.counter = counter if counter is not None else CounterFloor(max(seq_base, 1))
        self._next_token = 1
        self._t0 = now
        self.clients = SessionTable(config.dc_id, self.counter)
        self.path_table = PathTable(self)
        #: Every path directed, by Path ID.
        self.paths: dict[bytes, PathRecord] = self.path_table.records
        self.registration = Registration(self)
        self.natprobe = NatProbe(self)
        self.directions = Directions(self)
        self.replica_relays = ReplicaRelays(self)
        self.peering = Peering(self)
        self.redirects = Redirects(self)
        #: Standby legs of RS-N paths through an RS-N pair (standby.py).
        self.standbys = Standbys(self)
        #: Nodes joining with a token (core/join.py).
        self.joins = JoinDesk(JoinDeskConfig(config.dc_id, config.address, config.port, config.domain,
                                                  tuple(r for r in config.replicas if r != config.replica_name)), store,
                              random_bytes, stats=self.stats)
        #: What each message type on a session goes to.
        self._dispatch: dict[type[Message], _Handler] = {
            Keepalive: self._on_keepalive,
            DirectionRequest: self.directions.on_request,
            RelayProbeResult: self.directions.on_probe_result,
            DirectionResponse: self.directions.on_relay_response,
            RouteDirectionAck: self.directions.on_route_ack,
            PathRelease: self._on_path_release,
            StatusMessage: self._on_answer,
            PathReleaseAck: self._on_release_ack,
        }
        self._call_at(now + config.relay_keepalive, self._sweep)

    def next_token(self) -> int:
        """A token for a question to the runtime (ResolveRequest, VerifyPeerDc)."""
        token = self._next_token
        self._next_token += 1
        return token

    # -- introspection ---------------------------------------------------------------------------
    def sessions(self) -> list[dict[str, object]]:
        return self.clients.listing()

    def session_count(self) -> int:
        return len(self.clients)

    def session(self, client_id: bytes) -> _Session | None:
        return self.clients.get(client_id)

    def relays(self) -> list[_Session]:
        return self.clients.relays()

    # -- input --------------------------------------------------------------------------------
    def wall_us(self, now: float) -> int:
        """Wall-clock microseconds (the runtime gives ``seq_base`` = wall clock at ``now`` of start)."""
        return self.seq_base + int((now - self._t0) * 1_000_000)

    def _on_join(self, data: bytes, addr: Endpoint, now: float) -> None:
        """A Join Request: the join desk answers (or not: unknown token, bad MAC) on the wall clock."""
        answer = self.joins.receive(data, self.wall_us(now) // 1_000_000)
        if answer is not None:
            self._send_unauthenticated(answer, len(data), addr)

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
            if mtype == MessageType.JOIN_REQUEST:
                self._on_join(data, addr, now)
                return
            header = parse_signal_header(data)
        except CodecError:
            self.stats["drop_malformed"] += 1
            return
        if header.type is MessageType.PEER_HELLO:
            self.peering.on_hello(data, addr, now)
            return
        if not header.flags & SignalFlags.LONG_TERM:
            session = self.clients.by_id.get(header.sender)
            if session is not None:  # the common case needs no registry read
                self._on_session(session, header, data, addr, now)
                return
        if header.sender in self.peering.replica_ids:  # another replica: no registry read (replicas.py)
            self.peering.on_datagram(header, data, addr, now)
            return
        record = self.store.get_client(header.sender)
        if record is None:
            if not self.peering.on_datagram(header, data, addr, now):
                self.stats["drop_unknown_client"] += 1
            return
        if header.flags & SignalFlags.LONG_TERM:
            self._on_long_term(record, header, data, addr, now)
        else:
            # We lost the session (DC restart): ask the client to register again.
            self.stats["reregister_sent"] += 1
            reply = self.clients.long_term(record).seal(
                StatusMessage(answers=header.type, reason="no session; register"), txid=header.txid,
                status=Status.REREGISTER, flags=SignalFlags.LONG_TERM)
            self._send_unauthenticated(reply, len(data), addr)

    def _on_long_term(self, record: ClientRecord, header: SignalHeader, data: bytes, addr: Endpoint,
                      now: float) -> None:
        if header.type is MessageType.KEEPALIVE_ACK:
            self.natprobe.on_filter_ack(record, header, data, now)
        elif header.type is MessageType.REGISTRATION_REQUEST:
            self.registration.on_request(record, header, data, addr, now)
        else:
            self.stats["drop_unexpected"] += 1

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
        handler = self._dispatch.get(type(msg))
        if handler is None:
            self.stats["drop_unexpected"] += 1
        else:
            handler(session, header, msg, addr, now)

    # -- session message handlers (the dispatch table) ---------------------------------------------
    def _on_keepalive(self, session: _Session, header: SignalHeader, msg: Keepalive, addr: Endpoint,
                      now: float) -> None:
        if msg.load is not None:
            session.load = msg.load
        # The classification goes back with every answer: a node learns what its probes found
        # (`ntm netcheck`) without a message of its own.
        ack = KeepaliveAck(observed=addr, nat=int(session.nat_class) if session.record.role is Role.NODE else None)
        self._reply(session.channel, ack, header.txid, addr)

    def _on_path_release(self, session: _Session, header: SignalHeader, msg: PathRelease, addr: Endpoint,
                         now: float) -> None:
        """A node releases a path of its own (authenticated on its session; a replay was dropped by the
        channel): the whole path, or with RELAY_ONLY only its relay entry (the path went DIRECT, issue
        16). A relay, or a node naming another's path, gets NOT_AUTHORIZED and nothing changes. Unknown
        paths and repeated releases are acknowledged OK (idempotent)."""
        ack = PathReleaseAck(path_id=msg.path_id)
        rec = self.path_table.lookup(msg.path_id, now)
        name = session.record.name
        if session.record.role is not Role.NODE or (rec is not None and name not in (rec.initiator, rec.peer)):
            self.stats["path_release_not_owner"] += 1
            self._reply(session.channel, ack, header.txid, addr, status=Status.NOT_AUTHORIZED)
            return
        if msg.relay_only:
            self.path_table.release_relay(msg.path_id, now)
        else:
            self.path_table.release(msg.path_id, now)
        self._reply(session.channel, ack, header.txid, addr)

    def _on_release_ack(self, session: _Session, header: SignalHeader, msg: PathReleaseAck, addr: Endpoint,
                        now: float) -> None:
        """A relay dropped a path we released: its path count is the relay's load from now on."""
        if self._answered(session.channel, header.txid) is None:
            return
        if session.record.role is Role.RELAY and msg.load is not None:
            session.load = msg.load
        if header.status != Status.OK:
            self.stats["relay_release_refused"] += 1

    def _on_answer(self, session: _Session, header: SignalHeader, msg: Message, addr: Endpoint, now: float) -> None:
        self._answered(session.channel, header.txid)

    # -- API ---------------------------------------------------------------------------------------
    def resolution_result(self, token: int, result: DiscoveryResult, now: float) -> None:
        """The runtime's answer to ResolveRequest ``token``: what discovery (core.discovery) found."""
        self.directions.resolution_result(token, result, now)

    def peer_dc_verified(self, token: int, key: bytes | None, now: float) -> None:
        """The runtime looked up the marker of a domain a peer DC's hello named: ``key`` is the key it
        names (None: no valid marker). The hello's key is trusted for that domain only if they match."""
        self.peering.verified(token, key, now)

    def receive_probe(self, data: bytes, addr: Endpoint, now: float) -> None:
        """A datagram on the DC's probe socket: the node's mapping probe (a session Keepalive). Its source
        port compared with the registration's observed endpoint tells the mapping behaviour."""
        self.natprobe.receive_probe(data, addr, now)

    # -- group commit (the runtime brackets each batch of datagrams) -----------------------------------
    def begin_batch(self) -> None:
        """The registry defers this batch's writes to one commit; answers wait for end_batch."""
        self.registration.begin_batch()

    def batch_pending(self) -> bool:
        """This batch has registrations whose answers wait for end_batch (the rest may leave now)."""
        return self.registration.batch_pending()

    def end_batch(self, error: str | None, now: float, lost: set[bytes] | frozenset[bytes] = frozenset()) -> None:
        """The batch's registry writes were committed (``error`` None) or failed: then the batch's
        registrations are undone and answered with STORAGE_ERROR instead (call this before sending
        the datagrams). ``lost``: clients whose replay-floor write lost to another replica (the
        store's ``end_batch``): their registrations are undone, unanswered."""
        self.registration.end_batch(error, lost)

    # -- housekeeping -----------------------------------------------------------------------------
    def _sweep(self, now: float) -> None:
        for s in self.clients.all_relays():
            silent = now - s.last_seen
            if s.alive and silent > RELAY_DEAD_AFTER * self.config.relay_keepalive:
                s.alive = False
                self._emit(RelayLost(s.record.name))
                self.redirects.move_paths_off(s.record.name, now)
        self.redirects.sweep(now)
        self.path_table.expire(now)
        self.directions.sweep(now)
        self.standbys.sweep(now)
        self.peering.sweep(now)
        self._call_at(now + self.config.relay_keepalive, self._sweep)
