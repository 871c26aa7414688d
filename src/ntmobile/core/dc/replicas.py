"""Relays registered at another replica of this DC (docs/architecture.md, "DC replicas"): a replica
with no relay of its own hands a path's Relay Direction to another replica, which gives it to one of
*its* relays (it holds their sessions; the asking replica holds none) and answers with the relay's
Direction Response plus which relay it was and where (RS_ENDPOINT, RS_NAME).

On the asking side the other replica stands in the relay leg as a pseudo relay session (its channel
is the replica channel), so the relay leg's retries, timeouts and refusals work unchanged."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ntmobile.wire import DirectionResponse, Endpoint, NatKind, RelayDirection, Role, SignalHeader, Status

from ..common import new_txid
from ..registry import ClientRecord
from ..timing import RELAY_DIRECTION_TIMEOUT
from .sessions import _Session

if TYPE_CHECKING:
    from .core import DcCore
    from .peering import PeerDc

#: The name prefix of a pseudo relay session standing for another replica.
PROXY_PREFIX = "replica "


@dataclass(frozen=True, slots=True)
class ProxyTag:
    """A Relay Direction another replica asked us to give to our relay ``rs``."""

    replica: PeerDc
    txid: int
    addr: Endpoint
    rs: _Session


def is_proxy(rs: _Session) -> bool:
    """``rs`` stands for another replica's relays, not for a relay of ours."""
    return rs.record.role is Role.RELAY and rs.record.name.startswith(PROXY_PREFIX)


class ReplicaRelays:
    def __init__(self, core: DcCore) -> None:
        self._core = core
        #: The pseudo relay session of each other replica, by its "address:port".
        self.proxies: dict[str, _Session] = {}

    def add(self, name: str, peer: PeerDc, now: float) -> None:
        assert peer.dc_id is not None and peer.endpoint is not None
        self.proxies[name] = _Session(ClientRecord(peer.dc_id, PROXY_PREFIX + name, Role.RELAY, b""), peer.channel,
                                      peer.endpoint, (), NatKind.NONE, now, 0)

    def candidates(self) -> list[_Session]:
        """The other replicas, as relay candidates (in name order) for a flow with no relay of ours."""
        return [self.proxies[k] for k in sorted(self.proxies)]

    # -- asking side: the other replica's answer -----------------------------------------------------
    def on_response(self, peer: PeerDc, header: SignalHeader, msg: DirectionResponse, addr: Endpoint,
                    now: float) -> None:
        proxy = next((s for s in self.proxies.values() if s.channel is peer.channel), None)
        if proxy is None:
            self._core.stats["drop_unexpected"] += 1
            return
        self._core.directions.on_relay_response(proxy, header, msg, addr, now)

    # -- answering side: another replica's Relay Direction -------------------------------------------
    def on_direction(self, peer: PeerDc, header: SignalHeader, msg: RelayDirection, addr: Endpoint,
                     now: float) -> None:
        core = self._core
        txid = header.txid
        cached = peer.replies.get(txid)
        if cached is not None:
            core._send(cached[0], addr)
            return
        if txid in peer.busy:
            return  # (a retransmission while our relay has not answered)
        relays = sorted(core.clients.relays(), key=lambda s: (s.load, s.record.name))
        if not relays:
            self._answer(peer, txid, addr, DirectionResponse(path_id=msg.path_id), Status.NO_RELAY, now)
            return
        rs = relays[0]
        peer.busy.add(txid)
        core.stats["replica_relay_directions"] += 1
        core._request(rs.channel, msg, new_txid(core._rand), rs.endpoint, now, timeout=RELAY_DIRECTION_TIMEOUT,
                      tag=ProxyTag(peer, txid, addr, rs), on_timeout=functools.partial(self._timed_out, peer, txid))

    def relay_answered(self, tag: ProxyTag, header: SignalHeader, msg: DirectionResponse, now: float) -> None:
        """Our relay answered the Relay Direction of another replica: that replica gets the answer."""
        rs = tag.rs
        rs.load = msg.load
        ans = DirectionResponse(path_id=msg.path_id, load=msg.load, capabilities=msg.capabilities,
                                rs_endpoint=rs.endpoint, rs_name=rs.record.name)
        self._answer(tag.replica, tag.txid, tag.addr, ans, header.status, now)

    def _timed_out(self, peer: PeerDc, txid: int, now: float) -> None:
        peer.busy.discard(txid)  # the asking replica times out too and tries its next candidate

    def _answer(self, peer: PeerDc, txid: int, addr: Endpoint, ans: DirectionResponse, status: int,
                now: float) -> None:
        data = self._core._reply(peer.channel, ans, txid, addr, status=status)
        peer.replies[txid] = (data, now)
        peer.busy.discard(txid)
