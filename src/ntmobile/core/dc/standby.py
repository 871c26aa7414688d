"""Standby legs of RS-N paths through an RS-N pair (issue 20, docs/operations.md "RS-N pair").

An RS-N path directed at a relay of a configured pair (``DcConfig.rsn_pairs``) also gets a **standby
leg** at the pair's other relay: a Relay Direction with STANDBY = 1 (the standby relay accepts it while
the shared address is elsewhere), its own Path ID and its own fresh path key (never the path's: one
key is never at two relays, docs/security.md), the same node VIP, GN VIP and GN address. Once that
relay accepted it, the node gets a Route Direction of the path (a request of the DC, acknowledged)
with the standby leg's STANDBY_* attributes. The node switches to the leg by itself when its relay
dies, then asks for a new standby leg (a Direction Request naming the leg's Path ID with STANDBY = 1):
the leg becomes the path here, the old path is released, and a new standby leg goes to the other
relay as soon as that relay is registered (again).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ntmobile.wire import (
    DirectionRequest,
    DirectionResponse,
    MessageType,
    PathMode,
    PathRelease,
    RelayDirection,
    RouteDirection,
    SignalHeader,
    Status,
    StatusMessage,
)

from ..common import new_txid
from ..timing import RELAY_DIRECTION_TIMEOUT, REPLY_CACHE_SECONDS, ROUTE_DIRECTION_TIMEOUT
from .flows import MovedTag
from .paths import PathRecord
from .sessions import _Session

if TYPE_CHECKING:
    from .core import DcCore


@dataclass(frozen=True, slots=True)
class StandbyTag:
    """The Relay Direction of a standby leg for the RS-N path ``active``."""

    active: bytes
    leg: bytes
    rs: str


@dataclass(slots=True)
class _Want:
    """An RS-N path of a pair: what its legs' Relay Directions are made from, and its standby leg."""

    node: str  # the node's name
    client_id: bytes
    instance: bytes  # the node process that holds the path's key (the only one told of its legs)
    route: RouteDirection  # the path's Route Direction as the node has it (without standby attributes)
    relay_msg: RelayDirection  # the path's Relay Direction (its key and Path ID replaced per leg)
    rs: str  # the relay the path runs through
    standby: bytes | None = None  # the standby leg's Path ID, once its relay accepted it
    asking: bytes | None = None  # the standby leg's Path ID while its Relay Direction is in flight


class Standbys:
    """The standby legs the DC installed or wants to (see the module docstring)."""

    def __init__(self, core: DcCore) -> None:
        self._core = core
        #: By the path's Path ID (the leg the node sends on).
        self.paths: dict[bytes, _Want] = {}
        #: Standby leg Path ID -> the path it stands by for.
        self.legs: dict[bytes, bytes] = {}
        #: The keys of the legs whose Relay Direction is in flight.
        self._keys: dict[bytes, bytes] = {}
        #: The answers to the nodes' requests by (client ID, txid), for their retransmissions.
        self._replies: dict[tuple[bytes, int], tuple[bytes, float]] = {}

    def directed(self, node: _Session, route: RouteDirection, relay_msg: RelayDirection, rs_name: str | None,
                 now: float) -> None:
        """An RS-N path was directed at ``rs_name``: in a pair, its standby leg goes to the other relay."""
        if rs_name is None or self._core.config.pair_partner(rs_name) is None:
            return
        route = dataclasses.replace(route, standby_path_id=None, standby_key=None, standby_rs_endpoint=None,
                                    standby_rs_name=None)
        self._drop(route.path_id)
        self.paths[route.path_id] = _Want(node.record.name, node.record.client_id, node.instance, route, relay_msg,
                                          rs_name)
        self.install(route.path_id, now)

    def install(self, pid: bytes, now: float) -> None:
        """Ask the pair's other relay for a standby leg of ``pid`` (if it is registered and alive)."""
        core = self._core
        w = self.paths.get(pid)
        if w is None or w.asking is not None:
            return
        partner = core.config.pair_partner(w.rs)
        rs = core.clients.relay_named(partner) if partner is not None else None
        if rs is None or not rs.alive:
            core.stats["rsn_standby_waiting"] += 1  # installed when that relay registers (relay_up)
            return
        leg = core.path_table.new_path_id()
        key = core._rand(32)  # the leg's own key: never the path's, never another leg's
        node = self._node(w)
        msg = dataclasses.replace(w.relay_msg, path_id=leg, path_key=key, standby=1,
                                  node_endpoint=node.endpoint if node is not None else w.relay_msg.node_endpoint)
        w.asking = leg
        core.stats["rsn_standby_asked"] += 1
        core._request(rs.channel, msg, new_txid(core._rand), rs.endpoint, now, timeout=RELAY_DIRECTION_TIMEOUT,
                      tag=StandbyTag(pid, leg, rs.record.name),
                      on_timeout=functools.partial(self._timed_out, pid, leg))
        self._keys[leg] = key

    def _timed_out(self, pid: bytes, leg: bytes, now: float) -> None:
        self._keys.pop(leg, None)
        w = self.paths.get(pid)
        if w is not None and w.asking == leg:
            w.asking = None
            self._core.stats["rsn_standby_timeouts"] += 1  # tried again when that relay registers again

    def relay_answered(self, rs: _Session, tag: StandbyTag, header: SignalHeader, msg: DirectionResponse,
                       now: float) -> None:
        core = self._core
        key = self._keys.pop(tag.leg, None)
        w = self.paths.get(tag.active)
        if w is None or w.asking != tag.leg or key is None:
            # the path is gone or superseded meanwhile: the leg is not wanted
            if header.status == Status.OK:
                self._release(tag.leg, tag.rs, now)
            return
        w.asking = None
        rs.load = msg.load
        if header.status != Status.OK:
            core.stats["rsn_standby_refused"] += 1  # the path works as without a pair
            return
        self._drop_leg(w, now)
        w.standby = tag.leg
        self.legs[tag.leg] = tag.active
        core.path_table.records[tag.leg] = PathRecord(
            tag.leg, w.node, w.route.peer_name or "", PathMode.RS_N, tag.rs, now,
            core.path_table.records[tag.active].gn_map if tag.active in core.path_table.records else (), key)
        core.stats["rsn_standby_installed"] += 1
        node = self._node(w)
        if node is None:
            return
        rd = dataclasses.replace(w.route, standby_path_id=tag.leg, standby_key=key, standby_rs_endpoint=rs.endpoint,
                                 standby_rs_name=tag.rs)
        core._request(node.channel, rd, new_txid(core._rand), node.endpoint, now,
                      timeout=ROUTE_DIRECTION_TIMEOUT, tag=MovedTag(tag.active))

    def _node(self, w: _Want) -> _Session | None:
        """The node's session, if it is still the process that holds the path's key."""
        s = self._core.clients.get(w.client_id)
        return s if s is not None and s.instance == w.instance else None

    def on_request(self, node: _Session, header: SignalHeader, msg: DirectionRequest, now: float) -> None:
        """The node sends on ``msg.path_id`` now (it switched to that standby leg, or lost its standby):
        a new standby leg at the other relay of the pair."""
        core = self._core
        pid = msg.path_id
        assert pid is not None
        asked = (node.record.client_id, header.txid)
        again = self._replies.get(asked)
        if again is not None:  # a retransmission: the same answer, nothing done twice
            core.stats["rsn_standby_retransmits"] += 1
            core._send(again[0], node.endpoint)
            return
        status = Status.OK
        active = self.legs.get(pid)
        if active is not None and self._node(self.paths[active]) is node:
            # The node switched to its standby leg: the leg is the path now, the old path is released.
            old = self.paths.pop(active)
            del self.legs[pid]
            rec = core.path_table.records.get(pid)
            rs = core.clients.relay_named(rec.rs) if rec is not None and rec.rs else None
            route = dataclasses.replace(old.route, path_id=pid, path_key=rec.path_key if rec else b"",
                                        rs_endpoint=rs.endpoint if rs is not None else None,
                                        rs_name=rec.rs if rec else None)
            self.paths[pid] = _Want(old.node, old.client_id, old.instance, route, old.relay_msg,
                                    rec.rs if rec and rec.rs else old.rs)
            paths = core.path_table
            for k, v in list(paths.rsn_by_gn.items()):
                if v == active:
                    paths.rsn_by_gn[k] = pid
            paths.release(active, now)
            core.stats["rsn_standby_switched"] += 1
            self.install(pid, now)
        elif pid in self.paths and self._node(self.paths[pid]) is node:
            # Its standby leg was lost (that relay restarted): another one.
            w = self.paths[pid]
            self._drop_leg(w, now)
            core.stats["rsn_standby_renewed"] += 1
            self.install(pid, now)
        else:
            status = Status.UNKNOWN_PATH
            core.stats["rsn_standby_unknown"] += 1
        reply = node.channel.seal(StatusMessage(answers=MessageType.DIRECTION_REQUEST), txid=header.txid,
                                  status=status)
        self._replies[asked] = (reply, now)
        core._send(reply, node.endpoint)

    def sweep(self, now: float) -> None:
        """Forget the answers older than REPLY_CACHE_SECONDS."""
        for k in [k for k, (_r, at) in self._replies.items() if now - at > REPLY_CACHE_SECONDS]:
            del self._replies[k]

    def relay_up(self, rs_name: str, now: float) -> None:
        """Relay ``rs_name`` registered (a restart: its entries are gone): the paths whose standby leg
        belongs there get one (again)."""
        for pid, w in list(self.paths.items()):
            if self._core.config.pair_partner(w.rs) != rs_name:
                continue
            if w.standby is not None:
                self._drop_leg(w, now)
            w.asking = None
            self.install(pid, now)

    def released(self, pid: bytes, now: float) -> None:
        """The path ``pid`` is gone (released, superseded): its standby leg too."""
        self._drop(pid, now)

    def _drop(self, pid: bytes, now: float = 0.0) -> None:
        w = self.paths.pop(pid, None)
        if w is not None:
            self._drop_leg(w, now)

    def _drop_leg(self, w: _Want, now: float) -> None:
        leg, w.standby = w.standby, None
        if leg is None:
            return
        self.legs.pop(leg, None)
        rec = self._core.path_table.records.pop(leg, None)
        if rec is not None and rec.rs is not None:
            self._release(leg, rec.rs, now)

    def _release(self, leg: bytes, rs_name: str, now: float) -> None:
        core = self._core
        rs = core.clients.relay_named(rs_name)
        if rs is not None:
            core._request(rs.channel, PathRelease(path_id=leg), new_txid(core._rand), rs.endpoint, now,
                          timeout=RELAY_DIRECTION_TIMEOUT)
