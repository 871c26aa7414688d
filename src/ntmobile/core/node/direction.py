"""The node's lookups with its DC: Direction Requests for names (the DNS-triggered path set-up),
lookups held while the node is not registered, the Route Directions and Status answers that end
them, re-directions of existing NTM-peer paths (after a handover or a lost RS-S relay), and the
rebuild of an RS-N path whose relay is lost.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ntmobile.wire import (
    DirectionRequest,
    Endpoint,
    Keepalive,
    PathMode,
    PathRole,
    RouteDirection,
    RouteDirectionAck,
    SignalHeader,
    Status,
    StatusMessage,
)

from ..common import Timer, _Pending, new_txid
from ..registration import DcState
from ..timing import (
    DC_LIVENESS_TIMEOUT,
    DC_SILENT_BACKOFF,
    DIRECTION_RTO,
    DIRECTION_TIMEOUT,
    EARLY_HOLD,
    REGISTRATION_HOLD,
    RTO_BACKOFF,
)
from .events import LookupFallback, PathFailed, PathReady, status_of
from .paths import LivenessTag, LookupTag, RedirectTag, _Path
from .tunnel import NodeTunnels


@dataclass(slots=True)
class _Lookup:
    """A Direction Request for a name in flight, and the request ids waiting for it."""

    fqdn: str
    request_ids: list[int]


@dataclass(slots=True)
class _RegistrationWait:
    """Lookups of one name made while the node is not registered, and the timer that fails them
    after DIRECTION_TIMEOUT (cancelled when the registration completes first)."""

    request_ids: list[int]
    timer: Timer | None = None


class NodeDirections(NodeTunnels):
    """Direction Requests and re-directions (see the module docstring)."""

    _lookups: dict[int, _Lookup]
    _awaiting_registration: dict[str, _RegistrationWait]
    _redirects: dict[int, bytes]
    _early: list[tuple[bytes, bytes, Endpoint, float]]
    _next_request_id: int
    #: When the DC was last heard from (any authenticated datagram), until when it counts as silent,
    #: and the liveness Keepalive in flight (docs/operations.md, "When the DC is silent").
    _dc_heard_at: float
    _dc_silent_until: float
    _liveness: _Pending | None

    def receive_datagram(self, data: bytes, addr: Endpoint, now: float) -> None:  # pragma: no cover - core.py
        raise NotImplementedError

    # -- lookups by name ----------------------------------------------------------------------------
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
        fallback = self.config.fallback
        if fallback and now < self._dc_silent_until:
            self._fall_back((rid,), name, "the DC is not answering")
            return rid
        if self._dc.session is None:
            if fallback and self._dc.state is DcState.BACKOFF:
                self._fall_back((rid,), name, "not registered with the DC")
                return rid
            # Not registered yet (start-up, or re-registering after a DC restart): hold the lookup until
            # the registration completes: REGISTRATION_HOLD, then fall back (without fallback: the
            # budget of a Direction Request, then fail).
            waiting = self._awaiting_registration.get(name)
            if waiting is not None:
                waiting.request_ids.append(rid)
            else:
                wait = self._awaiting_registration[name] = _RegistrationWait([rid])
                wait.timer = self._call_at(now + (REGISTRATION_HOLD if fallback else DIRECTION_TIMEOUT),
                                           functools.partial(self._registration_wait_over, name))
            return rid
        self._send_direction_request(name, [rid], now)
        if fallback:
            self._check_dc_alive(now)
        return rid

    def _registration_wait_over(self, name: str, now: float) -> None:
        wait = self._awaiting_registration.pop(name)
        if self.config.fallback:
            self._fall_back(tuple(wait.request_ids), name, "not registered with the DC")
        else:
            self._emit(PathFailed(tuple(wait.request_ids), name, Status.SERVFAIL, "not registered with the DC"))

    # -- a silent DC never breaks DNS --------------------------------------------------------------
    def _fall_back(self, rids: tuple[int, ...], name: str, reason: str) -> None:
        self.stats["lookups_fallback"] += len(rids)
        self._emit(LookupFallback(rids, name, reason))

    def _check_dc_alive(self, now: float) -> None:
        """Ask the DC for a sign of life (a session Keepalive) beside a Direction Request, so a dead DC is
        noticed within DC_LIVENESS_TIMEOUT, not DIRECTION_TIMEOUT (its answer to a Direction Request may
        take the whole discovery; a Keepalive's comes at once). One in flight serves every lookup."""
        session = self._dc.session
        if session is None or self._liveness is not None:
            return
        self.stats["dc_liveness_checks"] += 1
        self._liveness = self._request(session, Keepalive(), new_txid(self._rand), self.config.dc_endpoint, now,
                                       timeout=DC_LIVENESS_TIMEOUT, tag=LivenessTag(),
                                       on_timeout=self._dc_went_silent)

    def _dc_heard(self, now: float) -> None:
        """An authenticated datagram from the DC: it is alive."""
        self._dc_heard_at = now
        if self._liveness is not None:
            self._cancel_request(self._liveness)
            self._liveness = None
            # The DC is alive and the Direction Requests sent before the Keepalive have most likely
            # reached it: their answers wait for its discovery, so give them DIRECTION_RTO before a
            # retransmission (a burst of new names then costs one Direction Request each).
            for p in self._pending.values():
                if isinstance(p.tag, LookupTag) and p.attempts == 1:
                    p.deadline = max(p.deadline, min(now + DIRECTION_RTO, p.give_up_at))
                    p.rto = max(p.rto, DIRECTION_RTO / RTO_BACKOFF)
        if self._dc_silent_until > now:
            self._dc_silent_until = now
            self.stats["dc_back"] += 1

    def _dc_went_silent(self, now: float) -> None:
        """The liveness Keepalive went unanswered: the DC counts as silent for DC_SILENT_BACKOFF, and the
        lookups waiting for it fall back now."""
        self._liveness = None
        self._dc_silent_until = now + DC_SILENT_BACKOFF
        self.stats["dc_silent"] += 1
        session = self._dc.session
        for txid, lookup in list(self._lookups.items()):
            del self._lookups[txid]
            if session is not None:
                self._answered(session, txid)
            self._fall_back(tuple(lookup.request_ids), lookup.fqdn, "the DC is not answering")

    def _send_held_lookups(self, now: float) -> None:
        """The node is registered: the lookups held meanwhile go to the DC now."""
        for name, wait in list(self._awaiting_registration.items()):
            del self._awaiting_registration[name]
            if wait.timer is not None:
                wait.timer.cancel()
            self._send_direction_request(name, wait.request_ids, now)

    def _send_direction_request(self, name: str, rids: list[int], now: float) -> None:
        assert self._dc.session is not None
        txid = new_txid(self._rand)
        self._lookups[txid] = _Lookup(name, list(rids))
        self._request(self._dc.session, DirectionRequest(fqdn=name, capabilities=self.config.capabilities), txid,
                      self.config.dc_endpoint, now, timeout=DIRECTION_TIMEOUT, tag=LookupTag(name),
                      on_timeout=functools.partial(self._direction_timed_out, txid))

    def _direction_timed_out(self, txid: int, now: float) -> None:
        # (The answer may have come on a newer session than the request's: then it is gone already.)
        lookup = self._lookups.pop(txid, None)
        if lookup is not None:
            self._emit(PathFailed(tuple(lookup.request_ids), lookup.fqdn, Status.SERVFAIL,
                                  "the DC did not answer the direction request in time"))

    # -- re-directions --------------------------------------------------------------------------------
    def _redirect_all(self, now: float) -> None:
        """After a handover re-registration: ask the DC to decide every NTM-peer path again (a Direction
        Request naming the path; docs/protocol.md §10). The DC may change the mode (DIRECT <-> RS-S) and
        the relay, never the Path ID, key or roles; it tells the peer too."""
        for path in self._paths.values():
            self._redirect_path(path, now)

    def _redirect_path(self, path: _Path, now: float, *, no_punch: bool = False) -> bool:
        """Ask the DC to decide this NTM-peer path again (same Path ID, key and roles); ``no_punch``: as
        plain RS-S, without punch candidates (the path's direct leg failed after its relay leg was let
        go). False when it cannot be asked now (not registered, not an NTM-peer path, or a
        re-direction is in flight)."""
        if self._dc.session is None or not path.established or path.mode is PathMode.RS_N or not path.rd.peer_name:
            return False
        if path.path_id in self._redirects.values():
            return False
        txid = new_txid(self._rand)
        self._redirects[txid] = path.path_id
        self.stats["redirects_requested"] += 1
        self._request(self._dc.session, DirectionRequest(fqdn=path.rd.peer_name, path_id=path.path_id,
                                                      capabilities=self.config.capabilities,
                                                      no_punch=1 if no_punch else None),
                      txid, self.config.dc_endpoint, now, timeout=DIRECTION_TIMEOUT, tag=RedirectTag(path.path_id),
                      on_timeout=functools.partial(self._redirect_timed_out, txid))
        return True

    def _redirect_timed_out(self, txid: int, now: float) -> None:
        if self._redirects.pop(txid, None) is not None:
            self.stats["redirect_timeouts"] += 1

    def _relay_lost(self, path: _Path, now: float, reason: str) -> None:
        """An RS-N path whose relay is gone is closed (tunnel.py) and, at once, asked for again by its
        name: a Direction Request the DC answers with a new path (new Path ID and key, same GN VIP) on a
        live relay. Waiting for the next packet to the GN VIP would leave a flow the node only receives
        (a download, an ssh session's output) without one: its TCP has nothing to send while nothing
        arrives, and the GN's retransmissions reach no relay that knows the node (issue 20)."""
        name = None
        if path.mode is PathMode.RS_N and path.established:
            name = path.fqdn or next((n for n, pid in self._by_name.items() if pid == path.path_id), None)
        super()._relay_lost(path, now, reason)
        if name is not None and name not in self._by_name:
            self.stats["rsn_rebuilds"] += 1
            self.request_path(name, now)

    # -- the DC's answers -----------------------------------------------------------------------------
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
            self._emit(PathFailed(tuple(lookup.request_ids), lookup.fqdn, status_of(header.status), msg.reason))
        elif pending is None:
            self.stats["drop_unexpected"] += 1

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
