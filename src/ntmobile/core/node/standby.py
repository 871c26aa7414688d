"""Standby legs of RS-N paths through an RS-N pair (issue 20, docs/operations.md "RS-N pair").

The DC gives an RS-N path through a relay of a pair a standby leg at the pair's other relay (a Route
Direction of the path with the STANDBY_* attributes, core/dc/standby.py): its own Path ID and its own
key, so its own sealer and opener; same VIPs. The node announces itself on the leg (a Tunnel
Request) and keeps it alive with path keepalives at the keepalive chain's low rate. When the path's
relay is lost (a lost keepalive, or liveness.py's probe of a busy path) the node switches the path's
traffic to the leg at once, without asking the DC: the leg becomes the path (its Path ID, key and
counters), the old path is closed for good. It also switches when the first authenticated capsule
arrives on the leg (the shared address moved before the node noticed). Then, in the background, it
asks the DC for a new standby leg (a Direction Request naming the path with STANDBY = 1); the DC
installs it at the other relay as soon as that relay is registered again.

Nonces: each leg has its own key, claimed once (``UsedKeys``) and sealed under by one sealer, which
moves with the leg when it becomes the path; a switch never goes back to the old path (closed, its
key retired), so no (key, nonce) pair is ever sealed twice. Nothing unauthenticated on the leg
switches anything: the data plane opens the capsule under the leg's key first.
"""

from __future__ import annotations

import dataclasses
import functools

from ntmobile.crypto import CapsuleOpener, CapsuleSealer, Channel, path_keys
from ntmobile.wire import (
    CapsuleFlags,
    DirectionRequest,
    Endpoint,
    Keepalive,
    KeepaliveAck,
    PathMode,
    PathRole,
    RouteDirection,
    SignalHeader,
    Status,
    StatusMessage,
    TunnelRequest,
    TunnelResponse,
)

from ..common import new_txid
from ..timing import DIRECTION_TIMEOUT, TUNNEL_TIMEOUT, node_keepalive_timeout
from .events import PathClosed, PathReady, StandbyGone, StandbyReady
from .liveness import NodeLiveness
from .paths import KeepaliveTag, PathState, StandbyAskTag, TunnelTag, _Path


class NodeStandby(NodeLiveness):
    """Standby legs of RS-N paths (see the module docstring; mixed into NodeCore)."""

    def _init_standby(self) -> None:
        #: Standby leg Path ID -> its record (not in the path table: no traffic goes there yet).
        self._standby_legs: dict[bytes, _Path] = {}
        #: Direction Requests for a new standby leg in flight: txid -> the path's Path ID.
        self._standby_asks: dict[int, bytes] = {}

    # -- the DC offers a standby leg ---------------------------------------------------------------
    def _new_path(self, rd: RouteDirection, role: PathRole, mode: PathMode, now: float) -> _Path | None:
        path = super()._new_path(rd, role, mode, now)
        if path is not None and rd.standby_path_id is not None:
            path.rd = _without_standby(rd)
            self._standby_offered(path, rd, now)
        return path

    def _redirected(self, path: _Path, rd: RouteDirection, role: PathRole, mode: PathMode, now: float) -> None:
        if path.mode is PathMode.RS_N and rd.standby_path_id is not None:
            if role is not path.role or rd.path_key != path.rd.path_key:
                self.stats["drop_bad_standby"] += 1  # only a standby leg for the path as it is
                return
            self._standby_offered(path, rd, now)
            return
        super()._redirected(path, rd, role, mode, now)

    def _standby_offered(self, path: _Path, rd: RouteDirection, now: float) -> None:
        sb_id, key, ep = rd.standby_path_id, rd.standby_key, rd.standby_rs_endpoint
        if path.mode is not PathMode.RS_N or path.role is not PathRole.INITIATOR:
            self.stats["drop_bad_standby"] += 1
            return
        if sb_id is None or key is None or ep is None or sb_id == path.path_id or sb_id in self._paths:
            self.stats["drop_bad_standby"] += 1
            return
        if path.standby is not None and path.standby.path_id == sb_id:
            return  # (the DC's retransmission: our acknowledgement was lost)
        if sb_id in self._standby_legs or not self._claim_key(key):
            self.stats["drop_bad_standby"] += 1  # a key sealed under before is never taken again
            return
        self._drop_standby(path, "replaced")
        leg_rd = dataclasses.replace(_without_standby(rd), path_id=sb_id, path_key=key, rs_endpoint=ep,
                                     rs_name=rd.standby_rs_name, peer_endpoints=())
        keys = path_keys(key, sb_id)
        sig_keys, data_keys = keys.for_initiator()
        sig = Channel(sig_keys, sb_id)
        sb = _Path(sb_id, PathRole.INITIATOR, PathMode.RS_N, leg_rd, sig,
                   CapsuleSealer(data_keys.send, sb_id, CapsuleFlags.NONE), CapsuleOpener(data_keys.recv), data_keys,
                   [ep], endpoint=ep, created=now, fqdn=path.fqdn, standby_of=path.path_id)
        sb.channels[("path",)] = sig
        path.standby = sb
        self._standby_legs[sb_id] = sb
        self.stats["rsn_standby_legs"] += 1
        self._emit(StandbyReady(path.path_id, sb.info()))
        # The relay learns our endpoint from the leg's authenticated Tunnel Request (and keepalives).
        self._announce_standby(sb, now)
        self.stats["standby_announcements"] -= 1  # (the set-up, not an announcement after a move)
        self._standby_keepalives(sb, now)

    def _refresh_path(self, path: _Path, now: float) -> None:
        """A move (or re-registration, or a route change): the path announces the node's new address
        and so does its standby leg, else the standby relay would send the GN's answers to the old
        address once the shared address moved there (until the leg's next keepalive)."""
        super()._refresh_path(path, now)
        sb = path.standby
        if sb is not None and self._standby_legs.get(sb.path_id) is sb:
            self._announce_standby(sb, now)

    def _announce_standby(self, sb: _Path, now: float) -> None:
        """An authenticated Tunnel Request on the leg, from wherever the node is now (the relay learns
        the leg's endpoint from it). Sealed by the leg's own channel: its counter goes on."""
        if sb.endpoint is None:
            return
        self._cancel_request(sb.tunnel_req)
        reg = self.registration
        sb.tunnel_req = self._request(sb.sig, TunnelRequest(capabilities=self.config.capabilities,
                                                            vip4=reg.vip4 if reg else None,
                                                            vip6=reg.vip6 if reg else None),
                                      new_txid(self._rand), sb.endpoint, now, timeout=TUNNEL_TIMEOUT,
                                      tag=TunnelTag(sb.path_id))
        self.stats["standby_announcements"] += 1

    def _standby_keepalives(self, sb: _Path, now: float) -> None:
        interval = self._path_keepalive_interval(sb)
        if interval > 0:
            sb.keepalive_timer = self._call_at(now + interval, functools.partial(self._standby_keepalive, sb))

    def _standby_keepalive(self, sb: _Path, now: float) -> None:
        """One link of the standby leg's keepalive chain: the relay keeps the entry, the node knows
        the leg works."""
        sb.keepalive_timer = None
        if self._standby_legs.get(sb.path_id) is not sb or sb.endpoint is None:
            return
        interval = self._path_keepalive_interval(sb)
        self._cancel_request(sb.keepalive_req)
        sb.keepalive_req = self._request(sb.sig, Keepalive(), new_txid(self._rand), sb.endpoint, now,
                                         timeout=node_keepalive_timeout(interval), tag=KeepaliveTag(sb.path_id),
                                         on_timeout=functools.partial(self._standby_lost, sb))
        self.stats["standby_keepalives"] += 1
        self._standby_keepalives(sb, now)

    def _standby_lost(self, sb: _Path, now: float) -> None:
        """The standby leg's relay stopped answering: the leg goes; the DC is asked for another."""
        sb.keepalive_req = None
        active = self._paths.get(sb.standby_of or b"")
        if active is None or active.standby is not sb:
            return
        self.stats["rsn_standby_lost"] += 1
        self._drop_standby(active, "its relay stopped answering keepalives")
        self._ask_standby(active, now)

    def _drop_standby(self, path: _Path, reason: str) -> None:
        sb, path.standby = path.standby, None
        if sb is None:
            return
        self._standby_legs.pop(sb.path_id, None)
        self._stop_leg(sb)
        self._emit(StandbyGone(path.path_id, sb.path_id))

    def _stop_leg(self, sb: _Path) -> None:
        self._cancel_request(sb.tunnel_req)
        self._cancel_request(sb.keepalive_req)
        sb.tunnel_req = sb.keepalive_req = None
        if sb.keepalive_timer is not None:
            sb.keepalive_timer.cancel()
            sb.keepalive_timer = None

    # -- the leg's signalling ------------------------------------------------------------------------
    def _on_standby_signal(self, sb: _Path, header: SignalHeader, data: bytes, addr: Endpoint, now: float) -> None:
        msg = self._open(sb.sig, header, data)
        if msg is None:
            return  # (counted by _open: nothing unauthenticated counts as the leg's)
        if isinstance(msg, TunnelResponse):
            if self._answered(sb.sig, header.txid) is None:
                self.stats["drop_late_response"] += 1
                return
            sb.tunnel_req = None
            sb.peer_caps = msg.capabilities
            sb.last_rx = now
            if sb.state is PathState.ESTABLISHING:
                sb.move(PathState.ESTABLISHED)
                self.stats["rsn_standby_ready"] += 1
        elif isinstance(msg, KeepaliveAck):
            if self._answered(sb.sig, header.txid) is not None:
                sb.last_rx = now
        else:
            self.stats["drop_unexpected"] += 1

    # -- the switch ----------------------------------------------------------------------------------
    def _relay_lost(self, path: _Path, now: float, reason: str) -> None:
        if path.standby is not None and path.mode is PathMode.RS_N and self._paths.get(path.path_id) is path:
            w = self._watches.pop(path.path_id, None)
            if w is not None:
                self._cancel_request(w.probe)
            self.stats["relay_lost"] += 1
            self._switch_to_standby(path, now, reason)
            return
        super()._relay_lost(path, now, reason)

    def standby_used(self, standby_id: bytes, now: float) -> None:
        """The data plane authenticated a capsule on the standby leg ``standby_id`` (the shared address
        moved there): the path's traffic goes there too (the data plane has switched already)."""
        self._now_hint = now
        sb = self._standby_legs.get(standby_id)
        path = self._paths.get(sb.standby_of or b"") if sb is not None else None
        if sb is None or path is None or path.standby is not sb:
            return
        self.stats["rsn_standby_switched_by_data"] += 1
        self._switch_to_standby(path, now, "data arrived on its standby leg")

    def _switch_to_standby(self, path: _Path, now: float, reason: str) -> None:
        """The leg becomes the path (its own Path ID, key, sealer and counters); the old path is closed
        for good (its key is never sealed under again). No round trip to the DC."""
        sb = path.standby
        assert sb is not None
        path.standby = None
        self._standby_legs.pop(sb.path_id, None)
        self._stop_leg(sb)
        sb.standby_of = None
        if sb.state is PathState.ESTABLISHING:
            sb.move(PathState.ESTABLISHED)
        sb.fqdn, sb.request_ids, path.request_ids = path.fqdn, path.request_ids, []
        self._paths[sb.path_id] = sb
        for name in [n for n, pid in self._by_name.items() if pid == path.path_id]:
            self._by_name[name] = sb.path_id
        self.stats["rsn_standby_switches"] += 1
        self._emit(PathReady(sb.info(), ()))  # the data plane: the path's VIPs now go by the leg
        self._forget(path)
        self._emit(PathClosed(path.path_id, f"{reason} (switched to its standby leg via {sb.rd.rs_name})"))
        self._start_path_keepalives(sb)
        self._ensure_sampler()
        self._ask_standby(sb, now)

    def _forget(self, path: _Path) -> None:
        self._drop_standby(path, "its path closed")
        super()._forget(path)

    # -- a new standby leg ---------------------------------------------------------------------------
    def _ask_standby(self, path: _Path, now: float) -> None:
        """Ask the DC (in the background) for a new standby leg of ``path``."""
        session = self._dc.session
        name = path.fqdn or path.rd.peer_name
        if session is None or not name or path.path_id in self._standby_asks.values():
            return
        txid = new_txid(self._rand)
        self._standby_asks[txid] = path.path_id
        self.stats["rsn_standby_asks"] += 1
        self._request(session, DirectionRequest(fqdn=name, path_id=path.path_id, standby=1,
                                                capabilities=self.config.capabilities),
                      txid, self.config.dc_endpoint, now, timeout=DIRECTION_TIMEOUT, tag=StandbyAskTag(path.path_id),
                      on_timeout=functools.partial(self._standby_ask_timed_out, txid))

    def _standby_ask_timed_out(self, txid: int, now: float) -> None:
        if self._standby_asks.pop(txid, None) is not None:
            self.stats["rsn_standby_ask_timeouts"] += 1

    def _on_session_status(self, header: SignalHeader, msg: StatusMessage, now: float) -> None:
        pid = self._standby_asks.pop(header.txid, None)
        if pid is None:
            super()._on_session_status(header, msg, now)
            return
        assert self._dc.session is not None
        self._answered(self._dc.session, header.txid)
        # OK: the DC installs a new leg when it can (a Route Direction then brings it).
        self.stats["rsn_standby_asked" if header.status == Status.OK else "rsn_standby_ask_refused"] += 1

    def standby_of(self, path_id: bytes) -> _Path | None:
        """The standby leg of ``path_id`` (introspection, tests)."""
        path = self._paths.get(path_id)
        return path.standby if path is not None else None


def _without_standby(rd: RouteDirection) -> RouteDirection:
    return dataclasses.replace(rd, standby_path_id=None, standby_key=None, standby_rs_endpoint=None,
                               standby_rs_name=None)
