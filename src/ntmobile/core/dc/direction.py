"""Direction of a node's path by name: the Direction Request and its reply cache, resolution, paths
to general nodes (RS-N targets, relay distance probes, relay choice), paths to NTM peers of this DC,
and the relay and responder legs every set-up shares; a flow's outcome goes back to its node."""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, TypeVar

from ntmobile.wire import (
    DirectionRequest,
    DirectionResponse,
    Endpoint,
    Message,
    MessageType,
    NatKind,
    PathMode,
    PathRole,
    RelayDirection,
    RelayProbe,
    RelayProbeResult,
    Role,
    RouteDirection,
    RouteDirectionAck,
    RsType,
    SignalHeader,
    Status,
    StatusMessage,
)

from ..common import new_txid
from ..discovery import DiscoveryResult, Outcome
from ..registry import ClientRecord, StoreError
from ..targets import TargetPolicy
from ..timing import (
    DISTANCE_PROBE_TIMEOUT,
    METRIC_TTL,
    RELAY_BUDGET,
    RELAY_DIRECTION_TIMEOUT,
    REPLY_CACHE_SECONDS,
    ROUTE_DIRECTION_TIMEOUT,
    UNREACHABLE_METRIC_TTL,
)
from .config import DcConfig
from .events import DirectionDecision, RelayLost, ResolveRequest
from .flows import (
    Asked,
    GnDirection,
    LocalPeerDirection,
    MovedTag,
    PeerQueryIn,
    PeerQueryOut,
    ProbeTag,
    Redirect,
    RelayLeg,
    RelayTag,
    RouteTag,
    S,
    _Flow,
    _PeerSetup,
    _Setup,
    move,
)
from .paths import (
    PathRecord,
    candidates,
    decide_route,
    delay_ms,
    peer_route,
    peer_targets,
    punch_lead,
    punch_offer,
    punch_remaining,
    requester_delay,
    rss_direction,
    same_nat,
)
from .replicas import ProxyTag, is_proxy
from .sessions import _Session
from .standby import StandbyTag

if TYPE_CHECKING:
    from .core import DcCore

_M = TypeVar("_M", bound=Message)


def _replace(msg: _M, **changes: Any) -> _M:
    return dataclasses.replace(msg, **changes)


#: General-node addresses remembered as no client's VIP (Directions._not_vip).
NOT_VIP_CACHE = 4096


def _target_policy(c: DcConfig) -> TargetPolicy:
    return TargetPolicy(c.rsn_allow, c.rsn_refuse + tuple(str(a) for a, _p in c.probe))


def redirect_of(f: _Flow) -> Redirect | None:
    """The re-direction ``f`` is (or decides), if any."""
    if isinstance(f, Redirect):
        return f
    if isinstance(f, (LocalPeerDirection, PeerQueryOut)):
        return f.redirect
    return None


class Directions:
    """Runs the direction flows; owns the reply cache of Direction Requests, the resolutions asked
    for, and the relays' measured distances to general-node addresses."""

    def __init__(self, core: DcCore) -> None:
        self._core = core
        #: Every Direction Request by (client ID, txid), with the flow that answers it (its reply is
        #: sent again to a retransmission).
        self._asked: dict[tuple[bytes, int], _Flow] = {}
        self._resolving: dict[int, Asked | Redirect] = {}
        self._metrics: dict[tuple[str, str], tuple[int | None, int | None, float]] = {}
        #: RS-N target policy, for the configuration it was built from (rebuilt if that is replaced).
        #: Built now, so a bad prefix is a ValueError at construction, never an error on input.
        self._targets = (core.config, _target_policy(core.config))
        #: General-node addresses looked up and found to be no client's VIP (``_not_vip``).
        self._not_vips: OrderedDict[str, None] = OrderedDict()

    # -- the node's request ---------------------------------------------------------------------------
    def on_request(self, node: _Session, header: SignalHeader, msg: DirectionRequest, addr: Endpoint,
                   now: float) -> None:
        core = self._core
        if msg.path_id is not None and msg.standby and node.record.role is Role.NODE:
            core.standbys.on_request(node, header, msg, now)  # a new standby leg (standby.py)
            return
        key = (node.record.client_id, header.txid)
        existing = self._asked.get(key)
        if existing is not None:
            core.stats["direction_retransmits"] += 1
            if existing.finished and existing.reply:
                core._send(existing.reply, node.endpoint)
            return
        if node.record.role is not Role.NODE or not msg.fqdn:
            self.fail(Asked(node, header.txid, msg.fqdn or "", now), Status.BAD_REQUEST,
                      "a direction request needs a node session and an FQDN")
            return
        if msg.path_id is not None:
            r = Redirect(node, header.txid, (msg.fqdn or "").rstrip(".").lower(), now, path_id=msg.path_id,
                         no_punch=bool(msg.no_punch))
            self._asked[key] = r
            core.redirects.on_request(r, now)
            return
        fqdn = msg.fqdn.rstrip(".").lower()
        d = Asked(node, header.txid, fqdn, now)
        self._asked[key] = d
        own = core.config.own_domain(fqdn)
        if own is not None:
            d.evidence.append(f"{fqdn} is in this DC's own domain {own}")
            self._direct_local_peer(d, now)
            return
        self.resolve(d, fqdn)

    def resolve(self, f: Asked | Redirect, fqdn: str) -> None:
        """Ask the runtime to resolve ``fqdn`` for ``f`` (ResolveRequest; answered by resolution_result)."""
        move(f, S.RESOLVING)
        token = self._core.next_token()
        self._resolving[token] = f
        self._core._emit(ResolveRequest(token, fqdn))

    def hand_on(self, old: _Flow, new: _Flow) -> None:
        """``new`` answers the request ``old`` stood for (a retransmission gets ``new``'s reply)."""
        if isinstance(old, Asked):
            move(old, S.HANDED_ON)
        key = (old.node.record.client_id, old.txid)
        if self._asked.get(key) is old:
            self._asked[key] = new

    def resolution_result(self, token: int, result: DiscoveryResult, now: float) -> None:
        f = self._resolving.pop(token, None)
        if f is None:
            return
        f.evidence.extend(result.evidence.lines)
        why = self._must_be_ntm_peer(f) if result.outcome is Outcome.GENERAL_NODE else None
        if why is not None:
            # Its marker is gone (removed, or DNS spoofed): an NTM peer we cannot reach, never a general
            # node, whose traffic would leave an RS-N in clear.
            self._core.stats["direction_peer_marker_missing"] += 1
            self.fail(f, Status.PEER_UNREACHABLE, f"{f.fqdn} is an NTM peer ({why}) but its zone has no "
                      "DC marker: not reached as a general node")
        elif result.outcome is Outcome.GENERAL_NODE and isinstance(f, Asked):  # (a Redirect's is a peer: above)
            self._direct_general_node(f, result, now)
        elif result.outcome is Outcome.NXDOMAIN:
            self.fail(f, Status.NXDOMAIN, result.reason or f"{f.fqdn} does not exist")
        elif result.outcome is Outcome.NODATA:
            self.fail(f, Status.NODATA, result.reason or f"{f.fqdn} has no address")
        elif result.outcome is Outcome.NTM_PEER and isinstance(f, Asked) and (own := self._own_alias(result)):
            # An alias into this DC's own domain (x.gn.example CNAME gl.a.example): our own node, whose
            # marker is ours; directed like a name of the domain, never asked of a "peer DC" that is us.
            f.evidence.append(f"{f.fqdn} is an alias of {own}, in this DC's own domain")
            self._core.stats["direction_alias_own_domain"] += 1
            self._direct_local_peer(f, now, target_name=own)
        elif result.outcome is Outcome.NTM_PEER:
            self._core.peering.query(f, result.marker, now)
        else:
            self.fail(f, Status.SERVFAIL, result.reason or f"resolving {f.fqdn} failed")

    def _own_alias(self, result: DiscoveryResult) -> str | None:
        """The name in this DC's own domains that ``result``'s alias chain ends at, if it does."""
        if not result.evidence.cnames:
            return None
        final = result.evidence.cnames[-1].rsplit("->", 1)[-1].strip().rstrip(".").lower()
        return final if self._core.config.own_domain(final) is not None else None

    def _must_be_ntm_peer(self, f: Asked | Redirect) -> str | None:
        """Why ``f``'s name can only be an NTM peer (None: it may be a general node)."""
        if isinstance(f, Redirect):
            return "its NTM-peer path is being re-directed"
        if self._core.peering.configured_key(f.fqdn) is not None:
            return "it is under a configured peer domain"
        return None

    # -- general nodes ---------------------------------------------------------------------------------
    def _direct_general_node(self, d: Asked, res: DiscoveryResult, now: float) -> None:
        core = self._core
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
                peer4 = core.store.gn_vip(rec.client_id, gn4)
                mapping.append((peer4, gn4))
            if gn6 is not None:
                peer6 = core.store.gn_vip(rec.client_id, gn6)
                mapping.append((peer6, gn6))
        except StoreError as exc:
            self.fail(d, Status.STORAGE_ERROR, f"cannot record the GN VIP: {exc}")
            return
        if refused:
            core.stats["rsn_targets_refused"] += len(refused)
            d.evidence.append("refused as RS-N targets: " + "; ".join(refused))
        if not mapping:
            if refused:
                self.fail(d, Status.ADDRESS_REFUSED, f"no address of {d.fqdn} may be reached through "
                          f"a relay: {refused[0]}")
            else:
                self.fail(d, Status.NODATA, "the general node has no address of a family the node has a VIP of")
            return
        gn_map = tuple(mapping)
        d.evidence.append("general node: " + ", ".join(f"VIP {v} stands for {r}" for v, r in mapping))
        gn_addr = gn4 or gn6 or ""
        relays = core.clients.relays()
        remote = not relays  # then the relays registered at the other replicas, through them
        if remote:
            relays = core.replica_relays.candidates()
        if not relays:
            self.fail(d, Status.NO_RELAY, "no relay server is registered")
            return
        # One RS-N path per (node, GN address): the kernel NAT keys on (node VIP, GN VIP). A node that
        # asks again by name (a second name of the GN, its relay died, it restarted) gets a new path
        # (new Path ID and key: it may hold nothing of the old one, and the relay may be another) that
        # supersedes the old one at the relay and at the node, on the same relay if it is alive. A Path
        # ID names one key for its whole life (docs/security.md §3).
        paths = core.path_table
        known = paths.rsn_by_gn.get((rec.name, gn_map))
        same = paths.records.get(known) if known is not None else None
        if same is not None and not (same.initiator == rec.name and same.gn_map == gn_map
                                     and same.mode is PathMode.RS_N):
            same = None
        reuse_rs = None
        if same is not None:
            d.evidence.append(f"superseding path {same.path_id.hex()} to the same general node (via {same.rs})")
            reuse_rs = same.rs
        path_id = paths.new_path_id()
        path_key = core._rand(32)
        config = core.config
        relay_msg = RelayDirection(path_id=path_id, rs_type=RsType.N, idle_timeout=config.idle_timeout,
                                   path_key=path_key, node_vip4=rec.vip4 if peer4 else None,
                                   node_vip6=rec.vip6 if peer6 else None, peer_vip4=peer4, peer_vip6=peer6,
                                   gn_addr4=gn4, gn_addr6=gn6, node_endpoint=d.node.endpoint)
        route = RouteDirection(path_id=path_id, path_role=PathRole.INITIATOR, mode=PathMode.RS_N,
                               path_key=path_key, idle_timeout=config.idle_timeout,
                               keepalive=config.keepalive if d.node.nat is NatKind.NAT else 0,
                               peer_name=d.fqdn, peer_vip4=peer4, peer_vip6=peer6)
        g = GnDirection(d.node, d.txid, d.fqdn, d.started, d.evidence, path_id=path_id, route=route,
                        leg=RelayLeg(relay_msg), gn_map=gn_map, gn_addr=gn_addr, reuse_rs=reuse_rs)
        self.hand_on(d, g)
        # The rule: prefer the relay closest to the GN by measured hop count (ICMP echo from each relay,
        # cached per relay and GN address), then the least loaded, then the name. Unmeasured or
        # unreachable relays come last.
        missing = [] if remote else [r for r in relays if not self._metric_fresh(r.record.name, gn_addr, now)]
        if missing and reuse_rs is None:
            move(g, S.PROBING)
            probe = RelayProbe(gn_addr4=gn4, gn_addr6=None if gn4 else gn6)
            g.probing = {r.record.name for r in missing}
            for r in missing:
                core._request(r.channel, probe, new_txid(core._rand), r.endpoint, now, timeout=DISTANCE_PROBE_TIMEOUT,
                              tag=ProbeTag(g, r), on_timeout=functools.partial(self._probe_answered, g, r, None, None))
            return
        self._choose_relay(g, relays, now)

    def _rsn_target(self, addrs: tuple[str, ...], refused: list[str]) -> str | None:
        """The first of ``addrs`` an RS-N may be directed to; the others' reasons go to ``refused``."""
        if not addrs:
            return None
        core = self._core
        if self._targets[0] is not core.config:
            self._targets = (core.config, _target_policy(core.config))
        policy = self._targets[1]
        own: list[str] = []
        for rs in core.clients.relays():
            own.append(rs.endpoint[0])
            own.extend(ep[0] for ep in rs.local_endpoints)
        for a in addrs:
            why = policy.refusal(a, own)
            if why is None and a not in self._not_vips:
                if (vip_of := core.store.client_by_vip(a)) is not None:
                    why = f"{a} is the VIP of {vip_of.name}"
                else:
                    self._not_vip(a)
            if why is None:
                return a
            refused.append(why)
        return None

    def _not_vip(self, addr: str) -> None:
        """``addr`` is no client's VIP now. Remembered (at most NOT_VIP_CACHE addresses), so that a busy
        DC on PostgreSQL does not ask the database once per RS-N set-up to a popular general node,
        unless it lies in the registry's VIP pools: VIPs are only ever assigned from those, so an
        address outside them never becomes one (one assigned under an earlier pool configuration
        already is one, and the look-up finds it). (The daemon's policy refuses the pools anyway.)"""
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return
        pools = getattr(self._core.store, "pools", None)
        for net in (pools.vip4, pools.vip6) if pools is not None else ("0.0.0.0/0", "::/0"):
            if net and ip.version == ipaddress.ip_network(net).version and ip in ipaddress.ip_network(net):
                return
        cache = self._not_vips
        cache[addr] = None
        if len(cache) > NOT_VIP_CACHE:
            cache.popitem(last=False)

    def _metric_fresh(self, rs: str, gn_addr: str, now: float) -> bool:
        m = self._metrics.get((rs, gn_addr))
        return m is not None and m[2] > now

    def on_probe_result(self, rs: _Session, header: SignalHeader, msg: RelayProbeResult, addr: Endpoint,
                        now: float) -> None:
        pending = self._core._answered(rs.channel, header.txid)
        if pending is not None and isinstance(pending.tag, ProbeTag):
            ok = header.status == Status.OK
            self._probe_answered(pending.tag.flow, pending.tag.rs, msg.hops if ok else None,
                                 msg.rtt_us if ok else None, now)

    def _probe_answered(self, g: GnDirection, rs: _Session, hops: int | None, rtt_us: int | None,
                        now: float) -> None:
        ttl = METRIC_TTL if hops is not None else UNREACHABLE_METRIC_TTL
        self._metrics[(rs.record.name, g.gn_addr)] = (hops, rtt_us, now + ttl)
        g.probing.discard(rs.record.name)
        if not g.probing and g.state is S.PROBING:
            self._choose_relay(g, self._core.clients.relays(), now)

    def _choose_relay(self, g: GnDirection, relays: list[_Session], now: float) -> None:
        def key(r: _Session) -> tuple[bool, int, int, str]:
            m = self._metrics.get((r.record.name, g.gn_addr))
            hops = m[0] if m is not None else None
            return (hops is None, hops if hops is not None else 0, r.load, r.record.name)

        ranked = sorted(relays, key=key)
        if g.reuse_rs is not None:
            ranked.sort(key=lambda r: r.record.name != g.reuse_rs)

        def show(r: _Session) -> str:
            m = self._metrics.get((r.record.name, g.gn_addr))
            if m is None or m[0] is None:
                return f"{r.record.name}(unreachable or unmeasured, load {r.load})"
            rtt = f", rtt {m[1] / 1000:.2f} ms" if m[1] is not None else ""
            return f"{r.record.name}(hops {m[0]}{rtt}, load {r.load})"

        g.evidence.append(f"relay ranking for GN {g.gn_addr} (hops, then load): " + ", ".join(show(r) for r in ranked))
        g.leg.candidates = ranked
        self.try_next_relay(g, g.leg, now)

    # -- NTM peers of this DC's own domain ---------------------------------------------------------
    def _direct_local_peer(self, d: Asked, now: float, target_name: str | None = None) -> None:
        """A path between two nodes of this DC: ``d``'s name, or ``target_name`` it is an alias of."""
        core = self._core
        name = target_name or d.fqdn
        target = core.store.client_by_name(name)
        if target is None or target.role is not Role.NODE:
            self.fail(d, Status.NXDOMAIN, f"no node named {name} is enrolled here")
            return
        peer = core.clients.get(target.client_id)
        if peer is None and target.client_id != d.node.record.client_id and self._at_replica(d, target, now):
            return
        if peer is None or target.client_id == d.node.record.client_id:
            self.fail(d, Status.PEER_UNREACHABLE, f"{name} is not registered (or is the requester)")
            return
        node = d.node
        a_nat, b_nat = node.nat_class, peer.nat_class
        mode, a_initiates = decide_route(a_nat, node.endpoint, b_nat, peer.endpoint)
        d.evidence.append(f"NTM peer {d.fqdn}: requester {a_nat.name} at {node.endpoint}, peer {b_nat.name} "
                          f"at {peer.endpoint} -> {mode.name}, {'requester' if a_initiates else 'peer'} initiates")
        path_id = core.path_table.new_path_id()
        path_key = core._rand(32)
        relay_key = core._rand(32) if mode is PathMode.RS_S else None
        same = same_nat(a_nat, node.endpoint, b_nat, peer.endpoint)
        config = core.config
        punch = punch_offer(mode, a_nat, b_nat, not config.traversal)
        if punch is not None:
            d.evidence.append(f"traversal: {punch.reason}")
        # (the requester's delay is replaced once the responder acknowledged: _told_peer)
        lead_ms = delay_ms(punch_lead(peer.rtt, node.rtt))

        def route_for(me: _Session, other: _Session, initiator: bool) -> RouteDirection:
            route = peer_route(config, path_id, mode, path_key, relay_key, me, other,
                               PathRole.INITIATOR if initiator else PathRole.RESPONDER,
                               peer_targets(other, mode, same) if initiator else ())
            if punch is not None and punch.punch:
                route = dataclasses.replace(route, punch_endpoints=candidates(other.endpoint, other.local_endpoints),
                                punch_delay=lead_ms)
            return route

        f = LocalPeerDirection(node, d.txid, d.fqdn, d.started, d.evidence, path_id=path_id,
                               route=route_for(node, peer, a_initiates), responder=peer,
                               responder_route=route_for(peer, node, not a_initiates))
        if mode is PathMode.RS_S:
            relays = core.clients.relays() or core.replica_relays.candidates()
            if not relays:
                self.fail(d, Status.NO_RELAY, "both nodes are behind different NATs and no relay is up")
                return
            f.leg = RelayLeg(rss_direction(config, path_id, relay_key, node, peer),
                             sorted(relays, key=lambda s: (s.load, s.record.name)))
        self.hand_on(d, f)
        self.start_peer_setup(f, now)

    def _at_replica(self, d: Asked | Redirect, target: ClientRecord, now: float) -> bool:
        """``target`` has no session here: if the registry names another replica of this DC as the
        holder of its session, that replica is asked (a Peer Query; for a re-direction with the path's
        ID and key) and directs it. True: asked."""
        core = self._core
        holder_of = getattr(core.store, "holder_of", None)  # (only the shared PostgreSQL registry has holders)
        if not core.config.replicas or holder_of is None:
            return False
        try:
            holder = holder_of(target.client_id)
        except StoreError as exc:
            d.evidence.append(f"cannot read which replica holds {target.name}: {exc}")
            return False
        if holder is None or holder == core.config.replica_name:
            return False
        return core.peering.query_replica(d, holder, now)

    def redirect_at_replica(self, r: Redirect, target: ClientRecord, now: float) -> bool:
        """A re-direction of a path whose other node is registered at another replica (no session
        here): that replica re-directs its node, as a peer DC would (True: asked)."""
        return self._at_replica(r, target, now)

    def start_peer_setup(self, f: _PeerSetup, now: float) -> None:
        """Ask the relay (if the path is relayed), then tell the responder."""
        if f.leg is not None:
            self.try_next_relay(f, f.leg, now)
        else:
            self.send_responder_route(f, now)

    # -- the relay leg -------------------------------------------------------------------------------
    def try_next_relay(self, f: _Setup, leg: RelayLeg, now: float) -> None:
        if not leg.candidates and leg.tried and now - f.started < RELAY_BUDGET:
            # Every relay failed once but the node's budget allows another round (lossy paths).
            leg.candidates, leg.tried = [r for r in leg.tried if (r.alive or len(leg.tried) == 1)
                                         and r.record.name not in leg.refused_by], []
        if not leg.candidates:
            if leg.refused_by:
                gn_addr = f.gn_addr if isinstance(f, GnDirection) else ""
                self.fail(f, Status.ADDRESS_REFUSED, f"relay {leg.refused_by[0]} refuses to reach "
                          f"{gn_addr} and no other relay accepted the path")
            else:
                self.fail(f, Status.RELAY_FAILED, "no relay server accepted the path")
            return
        move(f, S.RELAYING)
        core = self._core
        rs = leg.candidates.pop(0)
        leg.tried.append(rs)
        leg.rs = rs
        core._request(rs.channel, leg.msg, new_txid(core._rand), rs.endpoint, now,
                      timeout=RELAY_DIRECTION_TIMEOUT, tag=RelayTag(f, leg),
                      on_timeout=functools.partial(self._relay_timed_out, f, leg, rs))

    def _relay_timed_out(self, f: _Setup, leg: RelayLeg, rs: _Session, now: float) -> None:
        core = self._core
        f.evidence.append(f"relay {rs.record.name} did not answer the Relay Direction")
        if is_proxy(rs):  # another replica (it stays a candidate for later flows)
            self.try_next_relay(f, leg, now)
            return
        was_alive, rs.alive = rs.alive, False
        core._emit(RelayLost(rs.record.name))
        self.try_next_relay(f, leg, now)
        if was_alive:
            core.redirects.move_paths_off(rs.record.name, now)

    def on_relay_response(self, rs: _Session, header: SignalHeader, msg: DirectionResponse, addr: Endpoint,
                          now: float) -> None:
        core = self._core
        pending = core._answered(rs.channel, header.txid)
        if pending is None:
            core.stats["drop_late_response"] += 1
            return
        tag = pending.tag
        if isinstance(tag, ProxyTag):  # the Relay Direction of another replica, given to our relay
            core.replica_relays.relay_answered(tag, header, msg, now)
            return
        if isinstance(tag, StandbyTag):  # a standby leg of an RS-N pair (standby.py)
            core.standbys.relay_answered(rs, tag, header, msg, now)
            return
        if not isinstance(tag, RelayTag) or tag.flow.state is not S.RELAYING or tag.flow.path_id != msg.path_id:
            return
        f, leg = tag.flow, tag.leg
        rs.load = msg.load
        if header.status != Status.OK:
            f.evidence.append(f"relay {rs.record.name} refused: status {header.status}")
            if header.status == Status.PATH_ID_IN_USE and isinstance(f, PeerQueryIn):
                # The Path ID is the querying DC's: it picks another and asks again.
                self.fail(f, Status.PATH_ID_IN_USE, f"relay {rs.record.name}: path ID in use")
                return
            if header.status == Status.ADDRESS_REFUSED:
                leg.refused_by.append(rs.record.name)
            elif is_proxy(rs) and header.status != Status.PATH_ID_IN_USE and rs in leg.tried:
                leg.tried.remove(rs)  # that replica's relays answered (or it has none): not asked again
            if header.status == Status.PATH_ID_IN_USE and redirect_of(f) is None:
                new_id = core.path_table.new_path_id()
                f.path_id = new_id
                leg.msg = _replace(leg.msg, path_id=new_id)
                f.route = _replace(f.route, path_id=new_id)
                if isinstance(f, _PeerSetup):
                    f.responder_route = _replace(f.responder_route, path_id=new_id)
                leg.candidates.insert(0, rs)
            self.try_next_relay(f, leg, now)
            return
        rs_ep, rs_name = rs.endpoint, rs.record.name
        if is_proxy(rs):
            if msg.rs_endpoint is None or not msg.rs_name:
                f.evidence.append(f"{rs_name} named no relay in its answer")
                self.try_next_relay(f, leg, now)
                return
            f.evidence.append(f"{rs_name} gave the path to its relay {msg.rs_name}")
            rs_ep, rs_name = msg.rs_endpoint, msg.rs_name
        f.route = _replace(f.route, rs_endpoint=rs_ep, rs_name=rs_name)
        f.evidence.append(f"relay {rs_name} at {rs_ep[0]}:{rs_ep[1]} accepted path {msg.path_id.hex()}")
        if isinstance(f, _PeerSetup):
            f.responder_route = _replace(f.responder_route, rs_endpoint=rs_ep, rs_name=rs_name)
            self.send_responder_route(f, now)
        elif isinstance(f, GnDirection):
            self.complete(f, f.route, rs_name, f.gn_map, now)

    # -- the responder leg ----------------------------------------------------------------------------
    def send_responder_route(self, f: _PeerSetup, now: float) -> None:
        """Tell the responder (an acknowledged request, retransmitted until its Ack). A DIRECT path
        is answered at once, in the same flush (docs/protocol.md "0x06 Route Direction"): the
        responder holds an early Tunnel Request (EARLY_HOLD), so waiting for its Ack would only add a
        round trip to every set-up and handover. An RS path waits for the Ack (the relay learns the
        responder's leg from its own Tunnel Request)."""
        move(f, S.TELLING_PEER)
        core = self._core
        core._request(f.responder.channel, f.responder_route, new_txid(core._rand), f.responder.endpoint, now,
                      timeout=ROUTE_DIRECTION_TIMEOUT, tag=RouteTag(f),
                      on_timeout=functools.partial(self._responder_timed_out, f))
        if f.leg is None and f.responder_route.mode == PathMode.DIRECT:
            f.evidence.append("answered beside the responder's Route Direction (DIRECT: no wait for its Ack)")
            self._told_peer(f, now)

    def _told_peer(self, f: _PeerSetup, now: float) -> None:
        if isinstance(f, PeerQueryIn):
            self._core.peering.answer(f, now)
        elif isinstance(f, LocalPeerDirection):
            if f.punch_remaining is not None and f.route.punch_endpoints:
                # The requester starts when the responder does: what is left of the responder's delay,
                # less the requester's own one-way time (docs/protocol.md, "Route decision").
                f.route = _replace(f.route, punch_delay=delay_ms(requester_delay(f.punch_remaining, f.node.rtt)))
            self.complete(f, f.route, f.route.rs_name if f.leg is not None else None, (), now)

    def _responder_timed_out(self, f: _PeerSetup, now: float) -> None:
        if f.state is S.DONE:
            # A DIRECT path answered before the Ack: the initiator's Tunnel Request goes unanswered
            # and fails on its own (TUNNEL_TIMEOUT); the record ages out like any unused path.
            self._core.stats["route_directions_unacked"] += 1
            return
        self.fail(f, Status.PEER_UNREACHABLE, f"{f.fqdn} did not acknowledge its Route Direction")

    def on_route_ack(self, session: _Session, header: SignalHeader, msg: RouteDirectionAck, addr: Endpoint,
                     now: float) -> None:
        pending = self._core._answered(session.channel, header.txid)
        if pending is None:
            return
        if pending.attempts == 1:
            session.rtt_sample(now - pending.last_sent)  # (Karn: never from a retransmitted request)
        if not isinstance(pending.tag, RouteTag):
            return  # (a MovedTag: the node took the moved path; nothing waits for it)
        f = pending.tag.flow
        if f.state is S.TELLING_PEER and f.responder is session and f.path_id == msg.path_id:
            if f.responder_route.punch_endpoints and f.responder_route.punch_delay is not None:
                f.punch_remaining = punch_remaining(f.responder_route.punch_delay / 1000, pending.last_sent, now)
            self._told_peer(f, now)

    # -- outcomes ---------------------------------------------------------------------------------------
    def complete(self, f: GnDirection | LocalPeerDirection | PeerQueryOut, route: RouteDirection,
                 rs_name: str | None, gn_map: tuple[tuple[str, str], ...], now: float) -> None:
        """``f`` directed its path: its node gets ``route`` (the reply, or for a path the DC moved by
        itself a request of its own) and the path is recorded."""
        core = self._core
        node, pid = f.node, route.path_id
        r = redirect_of(f)
        move(f, S.DONE)
        if r is not None and r.dc_initiated:
            # Nobody asked: the node gets the Route Direction as a request of its own (acknowledged).
            core._request(node.channel, route, new_txid(core._rand), node.endpoint, now,
                          timeout=ROUTE_DIRECTION_TIMEOUT, tag=MovedTag(pid))
        else:
            f.reply = node.channel.seal(route, txid=f.txid)
            core._send(f.reply, node.endpoint)
        f.done_at = now
        paths = core.path_table
        previous = paths.records.get(pid)
        responder = f.responder if isinstance(f, LocalPeerDirection) else None
        if r is not None:
            r.claimed = False  # (the write below ends this replica's re-direction lease)
        paths.put(PathRecord(
            pid, node.record.name, f.fqdn, PathMode(route.mode), rs_name, now, gn_map, route.path_key,
            requester_role=PathRole(route.path_role),
            relay_key=route.relay_key or (previous.relay_key if previous else b""),
            holders=tuple((s.record.name, s.instance) for s in (node, responder) if s is not None),
            # (a path through another replica: that replica gave the relay its Relay Direction, a
            # relay of this domain; through a peer DC: that DC's)
            relay_ours=not isinstance(f, PeerQueryOut) or core.peering.is_replica(f.dc)), now)
        if route.mode == PathMode.RS_N and gn_map:
            superseded = paths.rsn_by_gn.get((node.record.name, gn_map))
            paths.rsn_by_gn[(node.record.name, gn_map)] = pid
            if superseded is not None and superseded != pid:
                paths.release(superseded, now)  # (its relay has dropped it already if it is this one)
            if isinstance(f, GnDirection) and f.leg.rs is not None and not is_proxy(f.leg.rs):
                core.standbys.directed(node, route, f.leg.msg, rs_name, now)  # an RS-N pair: its standby leg
        core.stats["paths_directed"] += 1
        core._emit(DirectionDecision(node.record.name, f.fqdn, Status.OK, PathMode(route.mode), rs_name, pid,
                                     tuple(f.evidence), now - f.started))
        if r is not None:
            core.stats["paths_moved" if r.dc_initiated else "paths_redirected"] += 1
            core.redirects.finished(r, None)

    def fail(self, f: _Flow, status: Status, reason: str) -> None:
        """``f`` failed: its node (or the querying DC) is told why."""
        core = self._core
        f.evidence.append(f"failed: {reason}")
        if isinstance(f, PeerQueryIn):
            core.peering.refuse(f, status, reason)
            return
        if isinstance(f, PeerQueryOut):
            core.peering.query_ended(f)
        move(f, S.FAILED)
        r = redirect_of(f)
        if r is not None and r.dc_initiated:
            core.stats["path_moves_failed"] += 1
            core._emit(DirectionDecision(f.node.record.name, f.fqdn, status, None, None, r.path_id,
                                         tuple(f.evidence)))
            core.redirects.finished(r, status)
            return
        node = f.node
        f.reply = node.channel.seal(StatusMessage(answers=MessageType.DIRECTION_REQUEST, reason=reason),
                                    txid=f.txid, status=status)
        self._asked[(node.record.client_id, f.txid)] = f
        core._send(f.reply, node.endpoint)
        core.stats["directions_failed"] += 1
        core._emit(DirectionDecision(node.record.name, f.fqdn, status, None, None, None, tuple(f.evidence)))
        if r is not None:
            core.redirects.finished(r, status)

    def flows(self) -> list[_Flow]:
        """The flows answering the Direction Requests the DC remembers (introspection, tests)."""
        return list(self._asked.values())

    def sweep(self, now: float) -> None:
        """Forget the replies older than REPLY_CACHE_SECONDS."""
        expired = [k for k, f in self._asked.items() if f.finished and now - f.done_at > REPLY_CACHE_SECONDS]
        for k in expired:
            del self._asked[k]
