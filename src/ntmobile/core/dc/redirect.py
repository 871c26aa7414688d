"""Re-direction of existing NTM-peer paths (docs/protocol.md §10): a node that moved asks again, or the
DC moves the paths of a dead relay (and rebuilds those left without one when a relay is back). One
re-direction runs per path at a time; the Path ID, key and roles never change."""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING

from ntmobile.wire import (
    PathMode,
    PathRole,
    RouteDirection,
    Status,
)

from ..registry import StoreError
from ..timing import REDIRECT_CLAIM_RETRY, REDIRECT_CLAIM_WAIT, REDIRECT_STALE
from .flows import LocalPeerDirection, Redirect, RelayLeg, S, move
from .paths import (
    BUSY,
    PathRecord,
    candidates,
    decide_route,
    delay_ms,
    peer_route,
    peer_targets,
    punch_lead,
    punch_offer,
    rss_direction,
    same_nat,
)
from .sessions import _Session

if TYPE_CHECKING:
    from .core import DcCore


class Redirects:
    """The Redirect flows: the one running per Path ID, those queued behind it, and the RS-S paths that
    wait for a live relay."""

    def __init__(self, core: DcCore) -> None:
        self._core = core
        self.running: dict[bytes, Redirect] = {}
        self.queue: dict[bytes, list[Redirect]] = {}
        #: RS-S paths that could not be moved for want of a live relay: rebuilt when one is back.
        self.waiting_relay: set[bytes] = set()

    def _busy(self, pid: bytes, now: float) -> bool:
        """A re-direction of ``pid`` runs (and is not stuck)."""
        busy = self.running.get(pid)
        return busy is not None and not busy.finished and now - busy.started < REDIRECT_STALE

    def on_request(self, r: Redirect, now: float) -> None:
        """A node that moved asks to decide its path ``r.path_id`` again. The decision is re-run on both
        nodes' current registrations; the Path ID, path key and roles stay (the nodes' capsule counters
        continue), the mode and relay may change. Both nodes get a Route Direction naming the other's
        current endpoint(s), so both announce themselves (whichever sits behind a filtering NAT opens
        it)."""
        if self._busy(r.path_id, now):
            # One re-direction of a path at a time (both nodes may ask at once, e.g. both noticed that
            # their relay died): this one is decided after it, on the state it leaves.
            r.evidence.append(f"waiting for the re-direction of path {r.path_id.hex()} in progress")
            move(r, S.QUEUED)
            self.queue.setdefault(r.path_id, []).append(r)
            self._core.stats["redirects_queued"] += 1
            return
        self._start(r, now)

    def _start(self, r: Redirect, now: float) -> None:
        """Decide the path ``r.path_id`` again for ``r.node`` (it asked, or the DC moves the path)."""
        core = self._core
        fail = core.directions.fail
        pid, node = r.path_id, r.node
        r.started = now
        self.running[pid] = r
        got = self._claim(r, now)
        if got is BUSY:
            return
        rec = got if isinstance(got, PathRecord) else None
        name = node.record.name
        if rec is None or rec.mode is PathMode.RS_N or name not in (rec.initiator, rec.peer):
            fail(r, Status.UNKNOWN_PATH, f"no NTM-peer path {pid.hex()} of {name} is known here")
            return
        other_name = rec.peer if name == rec.initiator else rec.initiator
        r.fqdn = other_name
        if r.dc_initiated and not self._still_held(r, rec, node, now):
            return
        target = core.store.client_by_name(other_name)
        if target is None and core.config.own_domain(other_name) is None:
            # An NTM node of another DC: ask its DC again with this path's ID and keys (a Peer Query
            # it accepts as a re-direction of the path it knows, if its node still holds the path); the
            # name is resolved as usual.
            r.path_key = rec.path_key
            # A fresh relay key for every re-direction: the relay the peer DC picks may be another one
            # (or one that restarted), whose leg channels start their counters again (§10).
            r.relay_key = core._rand(32)
            r.evidence.append(f"re-direction of path {pid.hex()} with {other_name} (another DC) after a move: "
                              f"{name} {node.nat.name} at {node.endpoint}")
            core.directions.resolve(r, other_name)
            return
        peer = core.clients.get(target.client_id) if target is not None else None
        if peer is None and target is not None:
            # A node of this domain registered at another replica: that replica re-directs it (a Peer
            # Query with this path's ID and key, as for another DC; a fresh relay key, §10).
            r.path_key = rec.path_key
            r.relay_key = core._rand(32)
            r.evidence.append(f"re-direction of path {pid.hex()} with {other_name} (at another replica) after a "
                              f"move: {name} {node.nat.name} at {node.endpoint}")
            if core.directions.redirect_at_replica(r, target, now):
                return
        if peer is None:
            fail(r, Status.PEER_UNREACHABLE, f"{other_name} is not registered")
            return
        if not self._still_held(r, rec, peer, now):
            return
        initiator = PathRole.INITIATOR
        my_role = rec.requester_role if name == rec.initiator else (
            PathRole.RESPONDER if rec.requester_role is initiator else initiator)
        peer_role = PathRole.RESPONDER if my_role is initiator else initiator
        node_nat, peer_nat = node.nat_class, peer.nat_class
        mode, _ = decide_route(node_nat, node.endpoint, peer_nat, peer.endpoint)
        # A fresh relay key for every re-direction through a relay: the relay may be another one, or the
        # same one restarted, and a relay's leg channels start their counters at 1; a key is never
        # given to a relay twice (the relay re-keys an entry it has, §10).
        relay_key = core._rand(32) if mode is PathMode.RS_S else None
        behind_one_nat = same_nat(node_nat, node.endpoint, peer_nat, peer.endpoint)
        config = core.config
        # NAT traversal again (after a move, a dead relay, a node's timed retry), unless the node asked
        # with NO_PUNCH: its punched path failed after its relay leg was let go.
        punch = punch_offer(mode, node_nat, peer_nat, r.no_punch or not config.traversal)
        lead_ms = delay_ms(punch_lead(peer.rtt, node.rtt))  # (the node's own is set when the peer acked)

        def route_for(me: _Session, other: _Session, role: PathRole) -> RouteDirection:
            route = peer_route(config, pid, mode, rec.path_key, relay_key, me, other, role,
                               peer_targets(other, mode, behind_one_nat))
            if punch is not None and punch.punch:
                route = dataclasses.replace(route, punch_endpoints=candidates(other.endpoint, other.local_endpoints),
                                            punch_delay=lead_ms)
            return route

        r.evidence.append(f"re-direction of path {pid.hex()} after a move: {name} {node_nat.name} at {node.endpoint}, "
                          f"{other_name} {peer_nat.name} at {peer.endpoint} -> {mode.name} (was {rec.mode.name}); "
                          f"path ID, key and roles kept"
                          + (f"; traversal: {punch.reason}" if punch is not None else
                             "; traversal: not asked (NO_PUNCH)" if r.no_punch and mode is PathMode.RS_S else ""))
        f = LocalPeerDirection(node, r.txid, other_name, now, r.evidence, path_id=pid,
                               route=route_for(node, peer, my_role), responder=peer,
                               responder_route=route_for(peer, node, peer_role), redirect=r)
        if mode is PathMode.RS_S:
            relays = core.clients.relays()
            if not relays:
                fail(r, Status.NO_RELAY, "the nodes need a relay now and none is up")
                return
            ini, res = (node, peer) if my_role is initiator else (peer, node)
            f.leg = RelayLeg(rss_direction(config, pid, relay_key, ini, res),
                             sorted(relays, key=lambda s: (s.record.name != rec.rs, s.load, s.record.name)))
        move(r, S.DELEGATED)
        core.directions.hand_on(r, f)
        core.directions.start_peer_setup(f, now)

    def _claim(self, r: Redirect, now: float) -> PathRecord | str | None:
        """The path's record, with its re-direction lease if the registry is shared by replicas: of
        two replicas re-directing one path at once one wins; the other waits (polling the lease every
        REDIRECT_CLAIM_RETRY) and then decides on the state the first left, as a local re-direction
        queued behind another does. BUSY: waiting (or failed)."""
        core = self._core
        pid = r.path_id
        try:
            got = core.path_table.claim(pid, now)
        except StoreError as exc:
            core.directions.fail(r, Status.STORAGE_ERROR, f"cannot take path {pid.hex()}'s re-direction lease: {exc}")
            return BUSY
        if got is not BUSY:
            r.claimed = got is not None and core.path_table.shared is not None
            return got
        if r.claim_since < 0:
            r.claim_since = now
            r.evidence.append(f"another replica is re-directing path {pid.hex()}: waiting for it")
            core.stats["redirects_waiting_replica"] += 1
            if r.state is S.NEW:
                move(r, S.QUEUED)
        if now - r.claim_since >= REDIRECT_CLAIM_WAIT:
            core.directions.fail(r, Status.PEER_UNREACHABLE, f"another replica kept re-directing path {pid.hex()}")
            return BUSY
        core._call_at(now + REDIRECT_CLAIM_RETRY, functools.partial(self._reclaim, r))
        return BUSY

    def _reclaim(self, r: Redirect, now: float) -> None:
        if not r.finished and self.running.get(r.path_id) is r:
            self._start(r, now)

    def _still_held(self, r: Redirect, rec: PathRecord, s: _Session, now: float) -> bool:
        """Whether ``s`` still holds the path's sealers: it runs as the process instance that got the key.
        A node that restarted since has new counters: the key must never reach it again, so the path
        is dropped (PATH_GONE) and set up anew, by name, with a new Path ID and key (docs/security.md
        §3: a Path ID names one key for its whole life)."""
        if self._core.path_table.holds(rec, s, now):
            return True
        self._core.directions.fail(r, Status.PATH_GONE, f"{s.record.name} restarted since it got path "
                                   f"{rec.path_id.hex()}: the path must be set up again")
        return False

    def finished(self, r: Redirect, status: Status | None) -> None:
        """``r`` (or the flow it delegated to) ended: ``status`` None if the path was re-directed."""
        pid = r.path_id
        if not r.finished:
            move(r, S.DONE if status is None else S.FAILED)
        if r.claimed and status is not None:
            r.claimed = False
            self._core.path_table.unclaim(pid)
        if status is None:
            self.waiting_relay.discard(pid)
        elif status in (Status.NO_RELAY, Status.RELAY_FAILED) and pid in self._core.path_table.records:
            self.waiting_relay.add(pid)  # rebuilt by the sweep once a relay is alive
        if self.running.get(pid) is r:
            del self.running[pid]
        if self.queue.get(pid):
            # (A timer due at once: the next one starts with the real time, after this datagram.)
            self._core._call_at(r.started, functools.partial(self._next, pid))

    def _next(self, pid: bytes, now: float) -> None:
        queue = self.queue.get(pid)
        if not queue or self._busy(pid, now):
            return
        r = queue.pop(0)
        if not queue:
            del self.queue[pid]
        self._start(r, now)

    def _move_path(self, rec: PathRecord, why: str, now: float) -> bool:
        """The DC re-directs an NTM-peer path by itself (same Path ID, key and roles): both nodes get a
        Route Direction as a request. For a path of two nodes of this DC; a path to a node of another
        DC is moved when our node asks (its relay is the other DC's, or the peer DC decides)."""
        if self._busy(rec.path_id, now):
            return False  # the running one decides with the relay already marked dead
        core = self._core
        sessions: list[_Session] = []
        for name in (rec.initiator, rec.peer):
            client = core.store.client_by_name(name)
            if client is None:
                return False
            s = core.clients.get(client.client_id)
            if s is not None:
                sessions.append(s)
        if not sessions:
            return False
        node = sessions[0]
        r = Redirect(node, 0, rec.peer if node.record.name == rec.initiator else rec.initiator, now,
                     path_id=rec.path_id, dc_initiated=True)
        r.evidence.append(why)
        core.stats["path_moves"] += 1
        self._start(r, now)
        return True

    def move_paths_off(self, rs_name: str, now: float) -> None:
        """Relay ``rs_name`` is dead: move the RS-S paths of our nodes through it to a live relay (or
        DIRECT, if the route table allows by now), keeping their Path ID and path key."""
        for rec in self._core.path_table.via(rs_name, now):
            self._move_path(rec, f"relay {rs_name} of path {rec.path_id.hex()} is dead: moving the path", now)

    def sweep(self, now: float) -> None:
        """Rebuild the paths that waited for a relay, if one is alive."""
        if self.waiting_relay and self._core.clients.relays():
            waiting, self.waiting_relay = self.waiting_relay, set()
            for pid in waiting:
                rec = self._core.path_table.records.get(pid)
                if rec is not None and rec.mode is PathMode.RS_S:
                    self._move_path(rec, f"a relay is alive again: rebuilding path {pid.hex()}", now)
