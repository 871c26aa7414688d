"""DC-to-DC coordination (docs/protocol.md, "Peer DCs"): peer DCs known by their static keys, Peer
Hellos and the verification of the domains they claim, and Peer Queries both ways: asking another DC
for our node's path to its node, and answering another DC's query for a path to ours."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ntmobile.crypto import Channel, dc_static_keys, replica_id, replica_keys, x25519_public
from ntmobile.wire import (
    MAX_SIGNAL_SIZE,
    CodecError,
    DirectionResponse,
    Endpoint,
    MessageType,
    NatKind,
    PathMode,
    PathRole,
    PeerAnswer,
    PeerHello,
    PeerQuery,
    RelayDirection,
    Role,
    RouteDirection,
    RsType,
    SignalFlags,
    SignalHeader,
    Status,
    StatusMessage,
    pack_peer_hello,
    parse_peer_hello,
)

from ..common import RateLimiter, new_txid, source_prefix
from ..dnsauth import DcMarker
from ..timing import (
    PEER_CLOCK_SKEW,
    PEER_HELLO_MIN_GAP,
    PEER_HELLO_RESEND,
    PEER_QUERY_TIMEOUT,
    REPLY_CACHE_SECONDS,
)
from .events import DirectionDecision, PeerDcNote, VerifyPeerDc
from .flows import Asked, PeerQueryIn, PeerQueryOut, PeerQueryTag, Redirect, RelayLeg, S, move
from .paths import (
    PUNCH_DELAY_MS,
    PathRecord,
    candidates,
    decide_route,
    delay_ms,
    punch_offer,
    requester_delay,
    same_nat,
)

if TYPE_CHECKING:
    from .core import DcCore

#: What a replica's PeerDc has for a key (it has none of its own: the channel is keyed from the shared
#: secret), followed by its replica ID; no X25519 key starts so and is 16 bytes long.
REPLICA_KEY = b"replica:"
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


@dataclass(slots=True)
class PeerDc:
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


def _status(code: int) -> Status:
    try:
        return Status(code)
    except ValueError:
        return Status.PEER_UNREACHABLE


class Peering:
    """The peer DCs (by key and by DC ID), their hellos and verifications, and the Peer Query flows."""

    def __init__(self, core: DcCore) -> None:
        self._core = core
        self._public = x25519_public(core.config.secret) if core.config.secret else b""
        self.by_key: dict[bytes, PeerDc] = {}
        self._by_id: dict[bytes, PeerDc] = {}
        self._verifying: dict[int, tuple[PeerDc, str]] = {}
        self._hello_limit = RateLimiter(*PEER_HELLO_RATE, *PEER_HELLO_GLOBAL_RATE)
        #: The other replicas of this DC, by their "address:port" (docs/architecture.md, "DC replicas").
        self.replicas: dict[str, PeerDc] = {}
        #: The other replicas' IDs (derived from our own secret, so no client or peer DC chooses one):
        #: their datagrams go to the replica channel without a registry look-up.
        self.replica_ids: set[bytes] = set()
        self._replica_setup()

    def _replica_setup(self) -> None:
        """A channel to each other replica, keyed from the DC's shared secret and the two replica IDs:
        a replica is a peer DC whose verified domains are this DC's own (it answers queries for nodes
        registered with it, and only those: the rule that no replica directs a node it holds no
        session for holds because each replica only directs its own sessions)."""
        c = self._core.config
        if not c.secret or not c.replicas:
            return
        me = replica_id(c.secret, c.replica_name)
        for name in c.replicas:
            if name == c.replica_name:
                continue
            rid = replica_id(c.secret, name)
            host, _, port = name.rpartition(":")
            peer = PeerDc(REPLICA_KEY + rid, Channel(replica_keys(c.secret, me, rid), me, counter=self._core.counter),
                          dc_id=rid, endpoint=(host.strip("[]"), int(port)), trusted=True,
                          domains={c.domain, *c.extra_domains})
            self.replicas[name] = peer
            self._by_id[rid] = peer
            self.replica_ids.add(rid)
            self._core.replica_relays.add(name, peer, 0.0)

    def is_replica(self, peer: PeerDc) -> bool:
        """``peer`` is another replica of this DC."""
        return peer.key.startswith(REPLICA_KEY)

    def _peer_for_key(self, key: bytes) -> PeerDc | None:
        peer = self.by_key.get(key)
        if peer is not None:
            return peer
        core = self._core
        if not core.config.secret or key == self._public:
            return None
        try:
            keys = dc_static_keys(core.config.secret, self._public, key)
        except ValueError:
            core.stats["drop_peer_bad_key"] += 1
            return None
        peer = PeerDc(key, Channel(keys, core.config.dc_id, counter=core.counter))
        self.by_key[key] = peer
        return peer

    def configured_key(self, name: str) -> bytes | None:
        """The configured key of the most specific peer domain that ``name`` falls in."""
        best: tuple[int, bytes] | None = None
        for dom, key in self._core.config.peers:
            dom = dom.rstrip(".").lower()
            if (name == dom or name.endswith("." + dom)) and (best is None or len(dom) > best[0]):
                best = (len(dom), key)
        return best[1] if best is not None else None

    # -- hellos and verification -----------------------------------------------------------------------
    def _send_hello(self, peer: PeerDc, addr: Endpoint, domain: str, now: float, *, reply: int = 0) -> None:
        """Introduce ourselves; ``reply``: the length of the (unauthenticated) hello we answer."""
        core = self._core
        peer.hello_sent = now
        hello = PeerHello(domain=domain, key=self._public)
        data = pack_peer_hello(core.config.dc_id, new_txid(core._rand), hello,
                               flags=SignalFlags.FROM_RESPONDER if reply else 0)
        if not reply:
            core._send(data, addr)
        elif not core._send_unauthenticated(data, reply, addr):
            return
        core.stats["peer_hellos_sent"] += 1

    def _bind(self, peer: PeerDc, dc_id: bytes, now: float) -> None:
        peer.dc_id = dc_id
        peer.claimed_id = None
        self._by_id[dc_id] = peer
        held, peer.held = peer.held, []
        for header, data, addr in held:
            if header.sender == dc_id:
                self._on_sealed(peer, header, data, addr, now)

    def on_hello(self, data: bytes, addr: Endpoint, now: float) -> None:
        core = self._core
        try:
            header, hello = parse_peer_hello(data)
        except CodecError:
            core.stats["drop_malformed"] += 1
            return
        sender = header.sender
        if not core.config.secret or sender == core.config.dc_id or core.store.get_client(sender) is not None:
            core.stats["drop_peer_hello"] += 1
            return
        known = self.by_key.get(hello.key)
        if (known is None or not (known.trusted or known.domains) or known.endpoint != addr) \
                and not self._hello_limit.allow(source_prefix(addr), now):
            # Unauthenticated, from an unknown source: it may cost a key agreement, a DNS look-up
            # and a reply, so strangers get few.
            core.stats["drop_peer_hello_rate"] += 1
            return
        if hello.key not in self.by_key and sum(
                1 for p in self.by_key.values() if not p.trusted and not p.domains) >= PEER_UNVERIFIED_MAX:
            core.stats["drop_peer_hello_unverified_full"] += 1
            return
        peer = self._peer_for_key(hello.key)
        if peer is None:
            core.stats["drop_peer_hello"] += 1
            return
        core.stats["peer_hellos"] += 1
        if not (peer.trusted or peer.domains):
            peer.endpoint = addr  # a verified peer's endpoint moves only on authenticated datagrams
        domain = hello.domain.rstrip(".").lower()
        if peer.trusted or peer.domains:
            if peer.dc_id != sender:
                self._bind(peer, sender, now)
        else:
            peer.claimed_id = sender
        if domain and domain not in peer.domains and domain not in peer.checking \
                and core.config.own_domain(domain) is None:
            configured = self.configured_key(domain)
            if configured is not None:
                if configured == hello.key:
                    self._verified(peer, domain, "configured key", now)
                else:
                    core.stats["peer_key_mismatch"] += 1
                    core._emit(PeerDcNote(domain, "hello key differs from the configured key: not trusted"))
            else:
                token = core.next_token()
                self._verifying[token] = (peer, domain)
                peer.checking.add(domain)
                core._emit(VerifyPeerDc(token, domain, hello.key))
        if not header.flags & SignalFlags.FROM_RESPONDER and now - peer.hello_sent > PEER_HELLO_MIN_GAP:
            self._send_hello(peer, addr, core.config.domain, now, reply=len(data))

    def verified(self, token: int, key: bytes | None, now: float) -> None:
        entry = self._verifying.pop(token, None)
        if entry is None:
            return
        core = self._core
        peer, domain = entry
        peer.checking.discard(domain)
        if key is not None and key == peer.key:
            self._verified(peer, domain, "DNS marker", now)
            return
        core.stats["peer_unverified"] += 1
        core._emit(PeerDcNote(domain, "the domain's marker does not name the key of the hello: not trusted"))
        if not peer.checking and peer.dc_id is None:
            core.stats["drop_peer_held"] += len(peer.held)
            peer.held.clear()
        if not peer.checking and not peer.trusted and not peer.domains:
            del self.by_key[peer.key]  # nothing vouches for this key: forget it

    def _verified(self, peer: PeerDc, domain: str, how: str, now: float) -> None:
        core = self._core
        peer.domains.add(domain)
        core.stats["peer_verified"] += 1
        core._emit(PeerDcNote(domain, f"peer DC key {peer.key[:6].hex()}... verified ({how})"))
        if peer.claimed_id is not None:
            self._bind(peer, peer.claimed_id, now)

    # -- sealed datagrams ------------------------------------------------------------------------------
    def on_datagram(self, header: SignalHeader, data: bytes, addr: Endpoint, now: float) -> bool:
        """A sealed datagram whose sender is no client of ours: a peer DC's? (False: not ours to take.)"""
        peer = self._by_id.get(header.sender)
        if peer is not None:
            self._on_sealed(peer, header, data, addr, now)
            return True
        stats = self._core.stats
        for p in self.by_key.values():
            if p.claimed_id == header.sender and p.checking:
                if (len(p.held) < PEER_HELD_MAX and len(data) <= MAX_SIGNAL_SIZE
                        and sum(len(q.held) for q in self.by_key.values()) < PEER_HELD_TOTAL):
                    p.held.append((header, data, addr))
                    stats["peer_held"] += 1
                else:
                    stats["drop_peer_held"] += 1
                return True
        return False

    def _on_sealed(self, peer: PeerDc, header: SignalHeader, data: bytes, addr: Endpoint, now: float) -> None:
        core = self._core
        msg = core._open(peer.channel, header, data)
        if msg is None:
            return
        peer.endpoint = addr  # authenticated: the peer DC is there
        if peer.key.startswith(REPLICA_KEY) and isinstance(msg, RelayDirection):
            core.replica_relays.on_direction(peer, header, msg, addr, now)
        elif peer.key.startswith(REPLICA_KEY) and isinstance(msg, DirectionResponse):
            core.replica_relays.on_response(peer, header, msg, addr, now)
        elif isinstance(msg, PeerQuery):
            self._on_query(peer, header, msg, addr, now)
        elif isinstance(msg, (PeerAnswer, StatusMessage)):
            pending = core._answered(peer.channel, header.txid)
            tag = pending.tag if pending is not None else None
            if not isinstance(tag, PeerQueryTag):
                core.stats["drop_late_response"] += 1
                return
            if isinstance(msg, StatusMessage) or header.status != Status.OK:
                self._refused(tag.flow, _status(header.status),
                              msg.reason if isinstance(msg, StatusMessage) else "", now)
            else:
                self._answered(tag.flow, msg, now)
        else:
            core.stats["drop_unexpected"] += 1

    # -- asking side -----------------------------------------------------------------------------------
    def query(self, f: Asked | Redirect, marker: DcMarker | None, now: float) -> None:
        """``f``'s name is an NTM node of another DC: ask that DC (a PeerQueryOut takes ``f`` on)."""
        core = self._core
        fail = core.directions.fail
        if not core.config.secret:
            fail(f, Status.PEER_UNREACHABLE,
                 f"{f.fqdn} is an NTM node of another DC; this DC has no key for DC-to-DC coordination")
            return
        configured = self.configured_key(f.fqdn)
        if configured is not None and marker is not None and marker.key != configured:
            fail(f, Status.PEER_UNREACHABLE,
                 "the marker key of the peer's DC differs from the configured key (spoofed DNS?)")
            return
        key = configured if configured is not None else marker.key if marker is not None else None
        if key is None or marker is None:
            fail(f, Status.PEER_UNREACHABLE, "the peer's DC marker names no endpoint or key")
            return
        peer = self._peer_for_key(key)
        if peer is None:
            fail(f, Status.PEER_UNREACHABLE, "the peer DC's key is unusable")
            return
        endpoint = marker.address
        peer.trusted = True
        peer.endpoint = endpoint
        if isinstance(f, Redirect):
            q = PeerQueryOut(f.node, f.txid, f.fqdn, f.started, f.evidence, dc=peer, endpoint=endpoint,
                             path_id=f.path_id, path_key=f.path_key, relay_key=f.relay_key, redirect=f)
            move(f, S.DELEGATED)
        else:
            q = PeerQueryOut(f.node, f.txid, f.fqdn, f.started, f.evidence, dc=peer, endpoint=endpoint,
                             path_key=core._rand(32), relay_key=core._rand(32))
        core.directions.hand_on(f, q)
        q.evidence.append(f"peer DC at {endpoint[0]}:{endpoint[1]}, key {key[:6].hex()}... "
                          f"({'configured' if configured is not None else 'from the DNS marker'})")
        domain = core.config.own_domain(q.node.record.name) or core.config.domain
        self._send_query(q, now)
        q.rehellos = [core._call_at(now + delay, functools.partial(self._rehello, q, domain))
                      for delay in PEER_HELLO_RESEND]

    def query_replica(self, f: Asked | Redirect, holder: str, now: float) -> bool:
        """``f``'s target is registered at the replica ``holder``: ask it (False: not a replica we know).
        A re-direction asks with its path's ID and keys, as to a peer DC."""
        core = self._core
        peer = self.replicas.get(holder)
        if peer is None or peer.endpoint is None:
            return False
        if isinstance(f, Redirect):
            q = PeerQueryOut(f.node, f.txid, f.fqdn, f.started, f.evidence, dc=peer, endpoint=peer.endpoint,
                             path_id=f.path_id, path_key=f.path_key, relay_key=f.relay_key, redirect=f)
            move(f, S.DELEGATED)
        else:
            q = PeerQueryOut(f.node, f.txid, f.fqdn, f.started, f.evidence, dc=peer, endpoint=peer.endpoint,
                             path_key=core._rand(32), relay_key=core._rand(32))
        core.directions.hand_on(f, q)
        q.evidence.append(f"{f.fqdn} is registered at replica {holder}: asked with a Peer Query")
        core.stats["replica_queries_sent"] += 1
        self._send_query(q, now)
        return True

    def _send_query(self, q: PeerQueryOut, now: float) -> None:
        core = self._core
        move(q, S.QUERYING)
        peer, ep = q.dc, q.endpoint
        node, rec = q.node, q.node.record
        if q.redirect is None or not q.path_id:
            q.path_id = core.path_table.new_path_id()
        q.attempts += 1
        if peer.dc_id is None:
            self._send_hello(peer, ep, core.config.own_domain(rec.name) or core.config.domain, now)
        msg = PeerQuery(fqdn=q.fqdn, name=rec.name, path_id=q.path_id, path_key=q.path_key, relay_key=q.relay_key,
                        timestamp=self._core.wall_us(now), nat=int(node.nat_class), vip4=rec.vip4, vip6=rec.vip6,
                        observed=node.endpoint, local_endpoints=node.local_endpoints, capabilities=node.capabilities,
                        no_punch=1 if q.redirect is not None and q.redirect.no_punch else None)
        core._request(peer.channel, msg, new_txid(core._rand), ep, now, timeout=PEER_QUERY_TIMEOUT,
                      tag=PeerQueryTag(q), on_timeout=functools.partial(self._query_timed_out, q))
        core.stats["peer_queries_sent"] += 1

    def _rehello(self, q: PeerQueryOut, domain: str, now: float) -> None:
        if q.dc.dc_id is None:
            self._send_hello(q.dc, q.endpoint, domain, now)

    def query_ended(self, q: PeerQueryOut) -> None:
        """``q`` is decided: its hellos are not re-sent any more."""
        for t in q.rehellos:
            t.cancel()

    def _query_timed_out(self, q: PeerQueryOut, now: float) -> None:
        self._core.directions.fail(q, Status.PEER_UNREACHABLE, f"the DC of {q.fqdn} did not answer the peer query")

    def _refused(self, q: PeerQueryOut, status: Status, reason: str, now: float) -> None:
        if q.state is not S.QUERYING:
            return
        if status is Status.PATH_ID_IN_USE and q.attempts < PEER_PATH_ATTEMPTS and q.redirect is None:
            q.evidence.append(f"peer DC: path ID {q.path_id.hex()} in use; asking with a new one")
            self._send_query(q, now)
            return
        if status is Status.PATH_GONE and q.redirect is not None:
            self._core.path_table.drop(q.path_id)  # the peer's node restarted: set up again
        self._core.directions.fail(q, status, f"peer DC: {reason or status.name}")

    def _answered(self, q: PeerQueryOut, msg: PeerAnswer, now: float) -> None:
        core = self._core
        if q.state is not S.QUERYING or msg.path_id != q.path_id:
            core.stats["drop_late_response"] += 1
            return
        try:
            mode, role = PathMode(msg.mode), PathRole(msg.path_role)
        except ValueError:
            mode, role = PathMode.RS_N, PathRole.INITIATOR  # refused below
        if mode is PathMode.RS_N or (mode is PathMode.RS_S and msg.rs_endpoint is None) or \
                (mode is PathMode.DIRECT and role is PathRole.INITIATOR and not msg.peer_endpoints):
            core.directions.fail(q, Status.PEER_UNREACHABLE, "the peer DC's answer is unusable")
            return
        relayed = mode is PathMode.RS_S
        try:
            peer_nat = NatKind(msg.peer_nat).name
        except ValueError:
            peer_nat = str(msg.peer_nat)
        rs_name = msg.rs_name if relayed else None
        config, node = core.config, q.node
        route = RouteDirection(
            path_id=q.path_id, path_role=role, mode=mode, path_key=q.path_key, idle_timeout=config.idle_timeout,
            keepalive=config.keepalive if node.nat is NatKind.NAT else 0, peer_name=msg.peer_name,
            peer_vip4=msg.peer_vip4 if node.record.vip4 else None,
            peer_vip6=msg.peer_vip6 if node.record.vip6 else None,
            peer_endpoints=msg.peer_endpoints if mode is PathMode.DIRECT and (role is PathRole.INITIATOR
                                                                            or q.redirect is not None) else (),
            rs_endpoint=msg.rs_endpoint if relayed else None, rs_name=rs_name,
            relay_key=q.relay_key if relayed else None, capabilities=msg.capabilities,
            punch_endpoints=msg.punch_endpoints if relayed else (),
            # The peer DC's node starts PUNCH_DELAY after the Peer Answer left; ours gets that less its
            # one-way time (the DCs' one-way time is not known, so not subtracted: ours starts that late).
            punch_delay=delay_ms(requester_delay(msg.punch_delay / 1000, node.rtt))
            if relayed and msg.punch_endpoints and msg.punch_delay is not None else None)
        q.evidence.append(f"peer DC decided {mode.name} (peer NAT {peer_nat}); this node is the {role.name.lower()}"
                          + (f"; relay {msg.rs_name} at {msg.rs_endpoint}" if relayed else ""))
        self.query_ended(q)
        core.directions.complete(q, route, rs_name, (), now)

    # -- answering side --------------------------------------------------------------------------------
    def _on_query(self, peer: PeerDc, header: SignalHeader, q: PeerQuery, addr: Endpoint, now: float) -> None:
        core = self._core
        txid = header.txid
        cached = peer.replies.get(txid)
        if cached is not None:
            core.stats["peer_query_retransmits"] += 1
            core._send(cached[0], addr)
            return
        if txid in peer.busy:
            core.stats["peer_query_retransmits"] += 1
            return
        name, fqdn = q.name.rstrip(".").lower(), q.fqdn.rstrip(".").lower()

        def refuse(status: Status, reason: str) -> None:
            data = core._reply(peer.channel, StatusMessage(answers=MessageType.PEER_QUERY, reason=reason), txid, addr,
                               status=status)
            peer.replies[txid] = (data, now)
            core.stats["peer_queries_refused"] += 1
            core._emit(DirectionDecision(name, fqdn, status, None, None, None, (f"peer query refused: {reason}",)))

        if not any(name == dom or name.endswith("." + dom) for dom in peer.domains):
            refuse(Status.NOT_AUTHORIZED, f"{name} is not in a domain verified for the querying DC")
            return
        skew = (q.timestamp - self._core.wall_us(now)) / 1e6
        if abs(skew) > PEER_CLOCK_SKEW:
            refuse(Status.STALE, f"timestamp {skew:+.1f} s from this DC's clock")
            return
        if (q.path_id, q.timestamp) in peer.seen:
            core.stats["drop_peer_replay"] += 1
            return
        peer.seen[(q.path_id, q.timestamp)] = now
        config = core.config
        target = core.store.client_by_name(fqdn) if config.own_domain(fqdn) else None
        if target is None or target.role is not Role.NODE:
            refuse(Status.NXDOMAIN, f"no node named {fqdn} is enrolled here")
            return
        node = core.clients.get(target.client_id)
        if node is None:
            refuse(Status.PEER_UNREACHABLE, f"{fqdn} is not registered")
            return
        # (On a registry shared by replicas, the path's row: another replica may have directed it.)
        known = core.path_table.lookup(q.path_id, now)
        redirect = (known is not None and known.path_key == q.path_key and known.mode is not PathMode.RS_N
                    and {known.initiator, known.peer} == {name, fqdn})
        if redirect and known is not None and not core.path_table.holds(known, node, now):
            # Our node restarted since it got this path's key: never send the key to it again.
            refuse(Status.PATH_GONE, f"{fqdn} restarted since it got path {q.path_id.hex()}: set it up again")
            return
        if (known is not None and not redirect) or q.path_id == config.dc_id \
                or core.store.get_client(q.path_id) is not None:
            refuse(Status.PATH_ID_IN_USE, "path ID in use here")
            return
        if q.observed is None:
            refuse(Status.BAD_REQUEST, "the query names no observed endpoint of the requester")
            return
        try:
            req_nat = NatKind(q.nat)
        except ValueError:
            req_nat = NatKind.NAT
        mine = node.nat_class
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
            path_key=q.path_key, idle_timeout=config.idle_timeout,
            keepalive=config.keepalive if node.nat is NatKind.NAT else 0, peer_name=name,
            peer_vip4=q.vip4 if rec.vip4 else None, peer_vip6=q.vip6 if rec.vip6 else None,
            peer_endpoints=node_targets, relay_key=q.relay_key if mode is PathMode.RS_S else None,
            capabilities=q.capabilities)
        punch = punch_offer(mode, req_nat, mine, bool(q.no_punch) or not config.traversal)
        req_punch: tuple[Endpoint, ...] = ()
        if punch is not None and punch.punch:
            route = dataclasses.replace(route, punch_endpoints=candidates(q.observed, q.local_endpoints),
                                        punch_delay=PUNCH_DELAY_MS)
            req_punch = candidates(node.endpoint, node.local_endpoints)
        f = PeerQueryIn(node, txid, fqdn, now, path_id=q.path_id, route=route, responder=node, responder_route=route,
                        dc=peer, addr=addr, query=q, requester=name,
                        requester_role=PathRole.INITIATOR if req_initiates else PathRole.RESPONDER, mode=mode,
                        requester_targets=req_targets, redirect=redirect, requester_punch=req_punch)
        f.evidence.append(f"peer query from DC {header.sender.hex()}: {name} ({req_nat.name} at {q.observed}) -> "
                          f"{fqdn} ({mine.name} at {node.endpoint}): {mode.name}, "
                          f"{'requester' if req_initiates else fqdn} initiates"
                          + (f"; traversal: {punch.reason}" if punch is not None else ""))
        peer.busy.add(txid)
        core.stats["peer_queries"] += 1
        if mode is PathMode.RS_S:
            relays = core.clients.relays()
            if not relays and self.is_replica(peer):
                # Another replica asks and we have no relay: the replicas' relays, through them (as for
                # a path of our own: replicas.py).
                relays = core.replica_relays.candidates()
            if not relays:
                core.directions.fail(f, Status.NO_RELAY, "a relay is needed and none is up")
                return
            # The relay's binding names the initiator's VIPs first (a re-direction keeps the roles).
            ivip4, ivip6, rvip4, rvip6 = q.vip4, q.vip6, rec.vip4, rec.vip6
            i_ep, r_ep = q.observed, node.endpoint
            if not req_initiates:
                ivip4, ivip6, rvip4, rvip6, i_ep, r_ep = rvip4, rvip6, ivip4, ivip6, r_ep, i_ep
            f.leg = RelayLeg(RelayDirection(path_id=q.path_id, rs_type=RsType.S, idle_timeout=config.idle_timeout,
                                            relay_key=q.relay_key, node_vip4=ivip4, node_vip6=ivip6,
                                            peer_vip4=rvip4, peer_vip6=rvip6, node_endpoint=i_ep,
                                            responder_endpoint=r_ep),
                             sorted(relays, key=lambda s: (known is None or s.record.name != known.rs, s.load,
                                                           s.record.name)))
        core.directions.start_peer_setup(f, now)

    def answer(self, f: PeerQueryIn, now: float) -> None:
        """Our node acknowledged the path: the querying DC gets the Peer Answer."""
        core = self._core
        move(f, S.DONE)
        route, node = f.responder_route, f.node
        ans = PeerAnswer(path_id=f.path_id, mode=f.mode, path_role=f.requester_role, peer_name=node.record.name,
                         peer_nat=int(node.nat_class), peer_vip4=node.record.vip4, peer_vip6=node.record.vip6,
                         peer_endpoints=f.requester_targets, rs_endpoint=route.rs_endpoint, rs_name=route.rs_name,
                         capabilities=node.capabilities, punch_endpoints=f.requester_punch,
                         punch_delay=(PUNCH_DELAY_MS if f.punch_remaining is None else delay_ms(f.punch_remaining))
                         if f.requester_punch else None)
        f.reply = core._reply(f.dc.channel, ans, f.txid, f.addr)
        f.done_at = now
        f.dc.replies[f.txid] = (f.reply, now)
        f.dc.busy.discard(f.txid)
        rs_name = route.rs_name if f.leg is not None else None  # (a relay of another replica's: its own name)
        core.path_table.put(PathRecord(
            f.path_id, f.requester, node.record.name, f.mode, rs_name, now, (), f.query.path_key,
            requester_role=f.requester_role, relay_key=f.query.relay_key,
            holders=((node.record.name, node.instance),)), now)
        core.stats["paths_directed_for_peer_dc"] += 1
        core._emit(DirectionDecision(f.requester, node.record.name, Status.OK, f.mode, rs_name, f.path_id,
                                     tuple(f.evidence)))

    def refuse(self, f: PeerQueryIn, status: Status, reason: str) -> None:
        """The path could not be set up: the querying DC is told why."""
        core = self._core
        move(f, S.FAILED)
        f.reply = core._reply(f.dc.channel, StatusMessage(answers=MessageType.PEER_QUERY, reason=reason), f.txid,
                              f.addr, status=status)
        f.done_at = f.started
        f.dc.replies[f.txid] = (f.reply, f.started)
        f.dc.busy.discard(f.txid)
        core.stats["peer_queries_refused"] += 1
        core._emit(DirectionDecision(f.requester, f.fqdn, status, None, None, None, tuple(f.evidence)))

    def sweep(self, now: float) -> None:
        for peer in (*self.by_key.values(), *self.replicas.values()):
            peer.replies = {t: r for t, r in peer.replies.items() if now - r[1] <= REPLY_CACHE_SECONDS}
            peer.seen = {k: t for k, t in peer.seen.items() if now - t <= 2 * PEER_CLOCK_SKEW}
