"""The node's tunnels: making a path from a Route Direction, the Tunnel Request / Response exchange
with the peer or relay, announcements after a move, re-directed paths, path keepalives (and what
their loss means on a relayed path), address learning and closing a path.

NodeTunnels is the lowest layer of NodeCore (core.py): direction.py builds on it, and overrides
``_redirect_path``, which a lost RS-S keepalive asks for.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from ntmobile.crypto import (
    CapsuleOpener,
    CapsuleSealer,
    Channel,
    UsedKeys,
    path_keys,
    relay_leg_keys,
)
from ntmobile.wire import (
    CapsuleFlags,
    Endpoint,
    Keepalive,
    KeepaliveAck,
    MessageType,
    PathMode,
    PathProbe,
    PathProbeAck,
    PathRelease,
    PathReleaseAck,
    PathRole,
    RouteDirection,
    SignalFlags,
    SignalHeader,
    Status,
    TunnelRequest,
    TunnelResponse,
)

from ..common import CoreBase, new_txid
from ..registration import RegistrationClient
from ..timing import MOVED_GRACE, PATH_PROBE_TIMEOUT, RELAY_RELEASE_TIMEOUT, TUNNEL_TIMEOUT, node_keepalive_timeout
from .events import (
    LegWatch,
    NodeConfig,
    PathClosed,
    PathConfirmed,
    PathEndpointChanged,
    PathFailed,
    PathProbed,
    PathReady,
    Registered,
)
from .paths import KeepaliveTag, PathProbeTag, PathState, RelayReleaseTag, TunnelTag, _Path
from .traversal import (
    Action,
    AskDc,
    GoDirect,
    GoRelayed,
    PathTraversal,
    SendProbe,
    SendProbeAck,
    StopRelayLeg,
    TraversalState,
)


class NodeTunnels(CoreBase):
    """Paths and their signalling with peers and relays (see the module docstring)."""

    config: NodeConfig
    _rand: Callable[[int], bytes]
    _dc: RegistrationClient
    registration: Registered | None
    _paths: dict[bytes, _Path]
    _by_name: dict[str, bytes]
    _used_keys: UsedKeys
    _now_hint: float
    _moved_at: float
    _probe_seq: int

    def _redirect_path(self, path: _Path, now: float, *, no_punch: bool = False) -> bool:  # pragma: no cover
        raise NotImplementedError  # direction.py has it

    # -- making a path ------------------------------------------------------------------------------
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
        self._offer_traversal(path, rd, now)
        return path

    # -- NAT traversal (docs/protocol.md, "Traversal of RS_S paths") ----------------------------------
    def _offer_traversal(self, path: _Path, rd: RouteDirection, now: float) -> None:
        """The DC offered punch candidates for this RS-S path: probe them at its time."""
        if rd.mode != PathMode.RS_S or not rd.punch_endpoints:
            return
        start = now + (rd.punch_delay or 0) / 1000
        t = path.traversal
        if t is None:
            path.traversal = PathTraversal(tuple(rd.punch_endpoints), start)
        elif t.state is TraversalState.RELAYED:
            t.offer(tuple(rd.punch_endpoints), start)
        else:
            return
        # The data plane's view of the path (shared, like the sealer): the relay is never learnt as the
        # peer, nor a candidate while on the relay leg; capsules from each are counted.
        cands = frozenset(rd.punch_endpoints)
        if path.leg_watch is None:
            path.leg_watch = LegWatch(rd.rs_endpoint, cands)
        else:
            path.leg_watch.relay, path.leg_watch.candidates = rd.rs_endpoint, cands
        self.stats["traversal_offers"] += 1
        self._traversal_schedule(path)

    def _path_channel(self, path: _Path) -> Channel:
        """The path-key signalling channel (made once per path: its sequence numbers never restart)."""
        sig = path.channels.get(("path",))
        if sig is None:
            keys = path_keys(path.rd.path_key, path.path_id)
            pair = keys.for_initiator() if path.role is PathRole.INITIATOR else keys.for_responder()
            sig = path.channels[("path",)] = Channel(pair[0], path.path_id)
        return sig

    def _traversal_schedule(self, path: _Path) -> None:
        t = path.traversal
        if path.traversal_timer is not None:
            path.traversal_timer.cancel()
            path.traversal_timer = None
        if t is None or path.state is PathState.CLOSED:
            return
        when = t.deadline()
        if when is not None:
            path.traversal_timer = self._call_at(when, functools.partial(self._traversal_tick, path))

    def _traversal_tick(self, path: _Path, now: float) -> None:
        path.traversal_timer = None
        t = path.traversal
        if t is None or path.state is PathState.CLOSED:
            return
        actions = t.on_timer(now)
        if t.state is TraversalState.DIRECT:
            lw = path.leg_watch
            actions += t.sample(now, path.sealer.counter, path.opener.window.top,
                                lw.relayed if lw is not None else 0, lw.direct if lw is not None else 0)
        self._traversal_do(path, actions, now)

    def _traversal_do(self, path: _Path, actions: list[Action], now: float) -> None:
        for a in actions:
            if isinstance(a, SendProbe):
                self._reply(self._path_channel(path), PathProbe(), new_txid(self._rand), a.to,
                            flags=self._sig_flags(path))
                self.stats["traversal_probes"] += 1
            elif isinstance(a, SendProbeAck):
                self._reply(self._path_channel(path), PathProbeAck(observed=a.to), new_txid(self._rand), a.to,
                            flags=self._sig_flags(path))
            elif isinstance(a, GoDirect):
                self._traversal_switch(path, PathMode.DIRECT, self._path_channel(path), a.peer)
                self.stats["traversal_direct"] += 1
            elif isinstance(a, GoRelayed):
                self._cancel_relay_release(path)
                leg = path.channels.get(("leg", path.rd.relay_key))
                if leg is not None and path.rd.rs_endpoint is not None:
                    self._traversal_switch(path, PathMode.RS_S, leg, path.rd.rs_endpoint)
                self.stats["traversal_fallbacks"] += 1
            elif isinstance(a, StopRelayLeg):
                self._release_relay(path, now)
            elif isinstance(a, AskDc):
                # A timed retry (the DC times a new punch), or NO_PUNCH: the relay leg was let go, so the
                # DC directs the path as plain RS-S again (a fresh relay key, a relay entry anew).
                if self._redirect_path(path, now, no_punch=a.no_punch):
                    self.stats["traversal_no_punch_requests" if a.no_punch else "traversal_retries"] += 1
        self._traversal_schedule(path)

    def _release_relay(self, path: _Path, now: float) -> None:
        """The relay leg's grace period is over: tell the DC (on our session, so authenticated and
        replay-protected) that this path no longer needs its relay entry; the DC has the relay drop it.
        Unanswered, the relay's idle timeout drops the entry as before."""
        self.stats["traversal_relay_released"] += 1
        session = self._dc.session
        if session is None or not path.rd.peer_name:
            return
        self._cancel_relay_release(path)
        path.relay_release = self._request(
            session, PathRelease(path_id=path.path_id, relay_only=1), new_txid(self._rand),
            self.config.dc_endpoint, now, timeout=RELAY_RELEASE_TIMEOUT, tag=RelayReleaseTag(path.path_id),
            on_timeout=functools.partial(self._relay_release_timed_out, path))

    def _relay_release_timed_out(self, path: _Path, now: float) -> None:
        path.relay_release = None
        self.stats["relay_release_timeouts"] += 1

    def _cancel_relay_release(self, path: _Path) -> None:
        """A release in flight is for the relay leg the path had: never retransmit it once the path
        falls back or is re-directed (it could reach the DC after the path's next relay entry)."""
        self._cancel_request(path.relay_release)
        path.relay_release = None

    def _on_release_ack(self, header: SignalHeader, msg: PathReleaseAck) -> None:
        """The DC's answer to a relay-only Path Release."""
        session = self._dc.session
        pending = self._answered(session, header.txid) if session is not None else None
        if pending is None or not isinstance(pending.tag, RelayReleaseTag) or pending.tag.path_id != msg.path_id:
            self.stats["drop_unexpected"] += 1
            return
        path = self._paths.get(msg.path_id)
        if path is not None and path.relay_release is pending:
            path.relay_release = None
        self.stats["relay_release_acked" if header.status == Status.OK else "relay_release_refused"] += 1

    def _traversal_switch(self, path: _Path, mode: PathMode, sig: Channel, endpoint: Endpoint) -> None:
        """Same Path ID, keys, counters and VIPs; only the mode, the signalling channel and the endpoint
        change, and the data plane re-reads them (PathReady)."""
        self._cancel_request(path.keepalive_req)
        path.mode, path.sig, path.targets, path.target_index = mode, sig, [endpoint], 0
        if path.endpoint != endpoint:
            path.endpoint = endpoint
            self._emit(PathEndpointChanged(path.path_id, endpoint))
        if path.established:
            self._emit(PathReady(path.info(), ()))

    def _on_traversal(self, path: _Path, header: SignalHeader, data: bytes, addr: Endpoint, now: float) -> None:
        """A Path Probe or Path Probe Ack (on the path keys, whatever the path's mode)."""
        t = path.traversal
        msg = self._open(self._path_channel(path), header, data)
        if msg is None:
            if t is not None:
                t.on_unauthenticated()
            return
        if t is None:
            self.stats["drop_unexpected"] += 1
            return
        if isinstance(msg, PathProbe):
            self._traversal_do(path, t.on_probe(addr, now), now)
        elif isinstance(msg, PathProbeAck):
            path.last_rx = now
            self._traversal_do(path, t.on_probe_ack(addr, now), now)

    def _traversal_moved(self, now: float) -> None:
        """This node moved: a punched path goes back to its relay leg at once (our NAT mapping is gone);
        the re-registration re-directs every path, which brings a new offer (backoff reset)."""
        for path in list(self._paths.values()):
            t = path.traversal
            if t is not None and path.established:
                self._traversal_do(path, [a for a in t.on_move(now) if not isinstance(a, AskDc)], now)

    def _sig_flags(self, path: _Path) -> int:
        return SignalFlags.FROM_RESPONDER if path.role is PathRole.RESPONDER else 0

    # -- the Tunnel Request / Response exchange -----------------------------------------------------
    def _send_tunnel_request(self, path: _Path, now: float) -> None:
        if not path.targets:
            return
        dest = path.targets[path.target_index % len(path.targets)]
        reg = self.registration
        msg = TunnelRequest(capabilities=self.config.capabilities, vip4=reg.vip4 if reg else None,
                            vip6=reg.vip6 if reg else None)
        self._cancel_request(path.tunnel_req)
        path.tunnel_req = self._request(path.sig, msg, new_txid(self._rand), dest, now, timeout=TUNNEL_TIMEOUT,
                                        flags=self._sig_flags(path), tag=TunnelTag(path.path_id),
                                        on_timeout=functools.partial(self._tunnel_timed_out, path))

    def _tunnel_timed_out(self, path: _Path, now: float) -> None:
        path.tunnel_req = None
        path.target_index += 1
        if not path.established and path.target_index < len(path.targets):
            self._send_tunnel_request(path, now)
            return
        if path.established:
            # A refresh after handover went unanswered; address learning may still heal the path.
            self.stats["tunnel_refresh_timeouts"] += 1
            return
        self._forget(path)
        if path.fqdn is not None:
            self._by_name.pop(path.fqdn, None)
        if path.request_ids:
            self._emit(PathFailed(tuple(path.request_ids), path.fqdn or (path.rd.peer_name or ""),
                                  Status.PEER_UNREACHABLE, "no Tunnel Response from the peer or relay"))
        self._emit(PathClosed(path.path_id, "tunnel set-up timed out"))

    def tunnel_request_in_flight(self, path_id: bytes) -> bool:
        """A Tunnel Request (set-up or announcement) of ``path_id`` is still being retransmitted."""
        path = self._paths.get(path_id)
        p = path.tunnel_req if path is not None else None
        return p is not None and self._pending.get(p.key) is p

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
        if path.traversal is not None:
            # A punched (or probing) path the DC decided again: the new Route Direction says where the
            # path goes now, and brings a new offer if traversal is worth trying again.
            path.traversal.reset("re-directed")
            self._cancel_relay_release(path)
            if mode is not PathMode.RS_S:
                path.traversal = None
                path.leg_watch = None
        # (A keepalive still pending was sealed for the old relay or key: its loss would look like a
        # relay failure. The keepalive chain goes on with the new targets.)
        self._cancel_request(path.tunnel_req)
        self._cancel_request(path.keepalive_req)
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
        self._offer_traversal(path, rd, now)
        self._traversal_schedule(path)

    def _on_tunnel(self, path: _Path, header: SignalHeader, data: bytes, addr: Endpoint, now: float) -> None:
        if header.type in (MessageType.PATH_PROBE, MessageType.PATH_PROBE_ACK):
            self._on_traversal(path, header, data, addr, now)
            return
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
            self._establish(path, addr)
        elif isinstance(msg, TunnelResponse):
            if self._answered(path.sig, header.txid) is None:
                self.stats["drop_late_response"] += 1
                return
            self._learn(path, addr)
            path.peer_caps = msg.capabilities
            self._establish(path, addr)
        elif isinstance(msg, Keepalive):
            self._learn(path, addr)
            self._reply(path.sig, KeepaliveAck(observed=addr), header.txid, addr, flags=self._sig_flags(path))
        elif isinstance(msg, KeepaliveAck):
            answered = self._answered(path.sig, header.txid)
            if answered is not None and isinstance(answered.tag, PathProbeTag):
                t = answered.tag
                self._emit(PathProbed(t.probe_id, t.path_id, t.mode, t.rs_name, t.endpoint, now - t.sent_at))
        else:
            self.stats["drop_unexpected"] += 1

    def _establish(self, path: _Path, addr: Endpoint | None = None) -> None:
        first = not path.established
        if first:
            path.move(PathState.ESTABLISHED)
        if first or path.request_ids:
            self._emit(PathReady(path.info(), tuple(path.request_ids)))
            path.request_ids.clear()
        elif addr is not None and addr == path.endpoint:
            self._emit(PathConfirmed(path.path_id, addr))  # (after a move: the data plane's kept capsules)
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

    # -- path keepalives ----------------------------------------------------------------------------
    def _start_path_keepalives(self, path: _Path) -> None:
        interval = self._path_keepalive_interval(path)
        if interval > 0 and path.keepalive_timer is None:
            path.keepalive_timer = self._call_at(self._now_hint + interval,
                                                 functools.partial(self._path_keepalive, path))

    def _path_keepalive_interval(self, path: _Path) -> float:
        """Behind a NAT the DC asks for keepalives (its mapping must stay open); a relayed path is kept
        alive anyway, at a third of the relay's idle timeout, so the relay keeps its entry."""
        if path.rd.keepalive:
            return float(path.rd.keepalive)
        if path.mode is not PathMode.DIRECT and path.rd.idle_timeout:
            return path.rd.idle_timeout / 3
        return 0.0

    def _path_keepalive(self, path: _Path, now: float) -> None:
        """One link of the keepalive chain (closing the path cancels it)."""
        path.keepalive_timer = None
        interval = self._path_keepalive_interval(path)
        if path.endpoint is None or interval <= 0:
            # (A re-direction may have made keepalives unnecessary, e.g. DIRECT between global nodes.)
            return
        self._cancel_request(path.keepalive_req)
        # The highest data counter received so far: data arriving meanwhile proves the far end alive
        # even if the keepalive's answer is lost (e.g. sent to the address we just left).
        mark = path.opener.window.top
        path.keepalive_req = self._request(
            path.sig, Keepalive(), new_txid(self._rand), path.endpoint, now, timeout=node_keepalive_timeout(interval),
            flags=self._sig_flags(path), tag=KeepaliveTag(path.path_id),
            on_timeout=functools.partial(self._path_keepalive_lost, path, mark))
        self.stats["path_keepalives"] += 1
        path.keepalive_timer = self._call_at(now + interval, functools.partial(self._path_keepalive, path))

    def probe_path(self, path_id: bytes, now: float) -> int | None:
        """`ntm ping`: one authenticated probe of an established path, a Keepalive on its signalling
        channel (answered by the peer on DIRECT, by the relay on RS_S and RS_N), sent once. Its
        answer or, after PATH_PROBE_TIMEOUT, its loss is a PathProbed event. None when the path is
        not established or has no endpoint."""
        self._now_hint = now
        path = self._paths.get(path_id)
        if path is None or not path.established or path.endpoint is None:
            return None
        self._probe_seq += 1
        tag = PathProbeTag(path_id, self._probe_seq, now, path.mode, path.rd.rs_name, path.endpoint)

        def lost(at: float) -> None:
            self._emit(PathProbed(tag.probe_id, path_id, tag.mode, tag.rs_name, tag.endpoint, None))

        self._request(path.sig, Keepalive(), new_txid(self._rand), path.endpoint, now, timeout=PATH_PROBE_TIMEOUT,
                      rto=PATH_PROBE_TIMEOUT, flags=self._sig_flags(path), tag=tag, on_timeout=lost)
        self.stats["path_probes"] += 1
        return tag.probe_id

    def _path_keepalive_lost(self, path: _Path, mark: int, now: float) -> None:
        """A path keepalive went unanswered through all its retransmissions. On a relayed path that
        means the relay is gone (docs/protocol.md §10, "Relay failure"). The node notices within one
        keepalive interval plus min(3 s, interval / 2).

        - RS-N: the path is closed and asked for again at once by its name (direction.py's
          _relay_lost): the DC sets up a new path (new Path ID and key, same GN VIP) on a live relay.
        - RS-S: the path is kept (the VIPs, keys and counters carry on) and the node asks the DC to
          re-direct it (a Direction Request naming the path); the DC moves it to a live relay (or
          DIRECT) and tells both nodes. If that fails, the next lost keepalive asks again."""
        path.keepalive_req = None
        if path.mode is PathMode.DIRECT:
            return
        if path.opener.window.top > mark or now - self._moved_at < MOVED_GRACE:
            # Authenticated data came in since the keepalive left (the relay is alive), or we have
            # just moved and the answer went to our old address: not a relay failure.
            self.stats["path_keepalive_lost_but_alive"] += 1
            return
        self._relay_lost(path, now, "the relay stopped answering path keepalives")

    def _relay_lost(self, path: _Path, now: float, reason: str) -> None:
        """The relay of ``path`` is gone (a lost keepalive, or liveness.py's probe of a busy path):
        an RS-S path is re-directed, an RS-N path closed (see _path_keepalive_lost)."""
        if path.mode is PathMode.RS_S:
            self.stats["rss_relay_lost"] += 1
            if self._redirect_path(path, now):
                self.stats["rss_relay_redirects"] += 1
            return
        self.stats["relay_lost"] += 1
        self._close_path(path.path_id, reason)

    # -- closing, learning --------------------------------------------------------------------------
    def _forget(self, path: _Path) -> None:
        """Take ``path`` out of the path table for good: CLOSED, its requests and timers cancelled."""
        path.move(PathState.CLOSED)
        if self._paths.get(path.path_id) is path:
            del self._paths[path.path_id]
        self._cancel_request(path.tunnel_req)
        self._cancel_request(path.keepalive_req)
        if path.keepalive_timer is not None:
            path.keepalive_timer.cancel()
            path.keepalive_timer = None
        if path.traversal_timer is not None:
            path.traversal_timer.cancel()
            path.traversal_timer = None
        self._cancel_relay_release(path)

    def _close_path(self, path_id: bytes, reason: str) -> None:
        """Forget a path (its names, timers) and tell the runtime; the next packet to its VIP asks the
        DC again by name, for a new path (new Path ID and key)."""
        path = self._paths.get(path_id)
        if path is None:
            return
        self._forget(path)
        for name in [n for n, pid in self._by_name.items() if pid == path_id]:
            del self._by_name[name]
        self._emit(PathClosed(path_id, reason))

    def _learn(self, path: _Path, addr: Endpoint) -> None:
        if path.endpoint != addr:
            changed = path.endpoint is not None
            path.endpoint = addr
            if changed:
                self.stats["endpoint_learned"] += 1
                self._emit(PathEndpointChanged(path.path_id, addr))

