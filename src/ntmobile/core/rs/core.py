"""``RsCore``, the relay server's sans-IO core: what it is fed (datagrams, TUN packets, timers) and
what it gives (datagrams, events, inner packets), dispatching to its parts: the DC links
(``dclinks``), the Relay Table (``table``), the hot path (``forward``) and, here, the nodes'
tunnel signalling on a path's legs."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from typing import Any

from ntmobile.crypto import PROCESS_POOL, Channel, CounterFloor
from ntmobile.wire import (
    VERSION,
    CodecError,
    Endpoint,
    Keepalive,
    KeepaliveAck,
    Message,
    MessageType,
    RegistrationRequest,
    Role,
    SignalFlags,
    SignalHeader,
    Status,
    TunnelRequest,
    TunnelResponse,
    encode_body,
    parse_signal_header,
)
from ntmobile.wire.constants import SUPPORTED_VERSIONS

from ..common import CoreBase, new_txid
from ..registration import DcState
from ..targets import TargetPolicy
from .config import ID_SIZE, RsConfig
from .dclinks import DcSignalling, _Dc
from .events import RelayRemoved
from .forward import DataPath, GsoSend, TunPacket
from .hold import MoveHold
from .table import AnyEntry, Leg, RelayTable, RsnEntry, RssEntry, _ep


class RsCore(DcSignalling, DataPath):
    """A relay server (RS-S and RS-N in one). See the package docstring."""

    def __init__(self, config: RsConfig, now: float, *, random_bytes: Callable[[int], bytes] = os.urandom,
                 seq_base: int = 1, counter: CounterFloor | None = None) -> None:
        """``counter``: the long-term send counter of every DC link, persisted by the runtime
        (CounterFloor); without one, an in-memory counter from ``seq_base`` (tests)."""
        CoreBase.__init__(self)
        if len(config.rs_id) != ID_SIZE:
            raise ValueError("rs_id must be 8 bytes")
        if config.max_paths < 0:
            raise ValueError("max_paths must not be negative")
        try:
            encode_body(RegistrationRequest(role=Role.RELAY, name=config.name, ephemeral=bytes(32),
                                            versions=SUPPORTED_VERSIONS,
                                            local_endpoints=tuple(config.local_endpoints),
                                            capabilities=config.capabilities, load=0))
        except CodecError as exc:
            raise ValueError(f"bad relay configuration: {exc}") from None
        self.config = config
        try:
            self.targets = TargetPolicy(config.rsn_allow, config.rsn_refuse)
        except ValueError as exc:
            raise ValueError(f"bad relay configuration: {exc}") from None
        self._own = tuple(str(ep[0]) for ep in config.local_endpoints)
        #: The standby of an RS-N pair (docs/operations.md "RS-N pair"): the runtime sets it while the
        #: pair's shared SNAT address is on the other relay. New RS-N paths are refused (BUSY) then,
        #: since the GN's answers to that address would reach the other relay, which has no such path.
        self.standby = False
        self.created = now
        self._rand = random_bytes
        #: This process's instance (RegistrationRequest INSTANCE).
        self.instance = random_bytes(8)
        self.table = RelayTable()
        # The hot path's views of the table (the same dicts: one attribute lookup per datagram).
        self._paths = self.table.paths
        self._by_vips = self.table.by_vips
        self._dcs = {}
        lt_counter = counter if counter is not None else CounterFloor(seq_base)
        for link in config.dcs:
            if len(link.dc_id) != ID_SIZE or link.dc_id == config.rs_id or link.dc_id in self._dcs:
                raise ValueError(f"bad or duplicate DC id {link.dc_id.hex()}")
            self._dcs[link.dc_id] = _Dc(self, link, lt_counter, random_bytes, self._txid)
        self._tun = []
        self._gso_out = []
        self._probing = {}
        self._probe_tokens = {}
        self._probe_token = 0
        self._moving = MoveHold(self.stats)

    # -- API ---------------------------------------------------------------------------------------
    def register(self, now: float) -> None:
        """(Re-)register with every DC (one not already mid-registration)."""
        for dc in self._dcs.values():
            if dc.state is not DcState.REGISTERING:
                self._start_registration(dc, now)

    def packets_to_tun(self) -> list[TunPacket]:
        """Inner packets of RS-N paths for the TUN device, as ``(payload, gso)``: with ``gso`` the
        payload starts with a 10-byte virtio_net_hdr (a super-packet the runtime writes to a TUN
        opened with IFF_VNET_HDR, or segments itself)."""
        out, self._tun = self._tun, []
        return out

    def gso_to_send(self) -> list[GsoSend]:
        """GSO capsules for nodes, as ``(datagrams, size, endpoint)``: the chunk datagrams back to
        back, ``size`` bytes each but the last; the runtime sends them with UDP_SEGMENT."""
        out, self._gso_out = self._gso_out, []
        return out

    def has_output(self) -> bool:
        """Events or datagrams are waiting (the runtime flushes only then after a batch of
        forwards)."""
        return bool(self._events or self._out)

    def entries(self) -> list[AnyEntry]:
        return list(self._paths.values())

    def rs_s_entries(self) -> list[RssEntry]:
        return list(self.table.rs_s.values())

    def entry(self, path_id: bytes) -> AnyEntry | None:
        return self._paths.get(path_id)

    def dc_state(self, dc_id: bytes) -> DcState | None:
        dc = self._dcs.get(dc_id)
        return dc.state if dc is not None else None

    def dc_session(self, dc_id: bytes) -> Channel | None:
        """The session channel of the relay's registration with ``dc_id`` (None: not registered)."""
        dc = self._dcs.get(dc_id)
        return dc.session if dc is not None else None

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.config.name,
            "rs_id": self.config.rs_id.hex(),
            "paths": len(self._paths),
            "max_paths": self.config.max_paths,
            "dcs": [{"dc_id": dc.link.dc_id.hex(), "endpoint": _ep(dc.endpoint), "state": dc.state.value,
                     "observed": _ep(dc.observed), "keepalive": dc.keepalive, "missed_keepalives": dc.missed,
                     "registered_at": dc.registered_at} for dc in self._dcs.values()],
            "entries": [e.info() for e in self._paths.values()],
            "stats": dict(self.stats),
        }

    def get_timer(self) -> float | None:
        """Earliest of retransmissions, keepalive/retry timers and idle expiry. The idle part may be
        early (an entry refreshed since it was scheduled); ``handle_timer`` then reschedules it."""
        t = CoreBase.get_timer(self)
        idle = self.table.next_expiry()
        if idle is not None:
            t = idle if t is None else min(t, idle)
        held = self._moving.deadline()  # RS-S capsules held while a leg moves
        if held is not None:
            t = held if t is None else min(t, held)
        reasm = PROCESS_POOL.deadline()  # partial GSO capsules of the RS-N paths
        if reasm is not None:
            t = reasm if t is None else min(t, reasm)
        return t

    def handle_timer(self, now: float) -> None:
        CoreBase.handle_timer(self, now)
        for e in self.table.expire(now):
            self.stats["relays_idle"] += 1
            self.stats["relays_removed"] += 1
            self._emit(RelayRemoved(e, "idle"))
        self._moving.expire(now)
        PROCESS_POOL.expire(now)

    def kernel_forwarded(self, path_id: bytes, i2r: tuple[int, int], r2i: tuple[int, int], now: float) -> bool:
        """RS-S data the kernel forwarded for ``path_id`` since the last call (the runtime's
        fast path: docs/dataplane.md): (packets, bytes) each way. It counts like relayed data and,
        when anything moved, keeps the entry active. False when the entry is gone or not RS-S."""
        e = self._paths.get(path_id)
        if not isinstance(e, RssEntry):
            return False
        e.packets_i2r += i2r[0]
        e.bytes_i2r += i2r[1]
        e.packets_r2i += r2i[0]
        e.bytes_r2i += r2i[1]
        if i2r[0] or r2i[0]:
            e.last_active = max(e.last_active, now)
            self.stats["kernel_forwarded"] += i2r[0] + r2i[0]
        return True

    # -- input: UDP ---------------------------------------------------------------------------------
    def receive_datagram(self, data: bytes, addr: Endpoint, now: float) -> None:
        """A datagram arrived on the relay's UDP socket (signalling or data capsule)."""
        if len(data) < 2:
            self.stats["drop_malformed"] += 1
            return
        if len(addr) != 2:
            addr = (addr[0], addr[1])
        version, mtype = data[0], data[1]
        if version != VERSION:
            self.stats["drop_unknown_version"] += 1
            return
        if mtype == MessageType.DATA:
            dest = self._on_data(data, addr, now)
            if dest is not None:
                self._send(bytes(data), dest)
            return
        if mtype == MessageType.VERSION_NOT_SUPPORTED:
            self.stats["drop_version_not_supported"] += 1
            return
        try:
            hdr = parse_signal_header(data)
        except CodecError:
            self.stats["drop_malformed"] += 1
            return
        # The sender names a DC link or a path (Path IDs never collide with DC IDs: _validate).
        dc = self._dcs.get(hdr.sender)
        if dc is not None:
            self._on_dc(dc, hdr, data, addr, now)
            return
        e = self._paths.get(hdr.sender)
        if e is not None:
            self._on_tunnel(e, hdr, data, addr, now)
            return
        self.stats["drop_unknown_sender"] += 1

    # -- tunnel signalling from nodes ---------------------------------------------------------------
    def _on_tunnel(self, e: AnyEntry, hdr: SignalHeader, data: bytes, addr: Endpoint, now: float) -> None:
        from_responder = bool(hdr.flags & SignalFlags.FROM_RESPONDER)
        if hdr.flags & SignalFlags.LONG_TERM or hdr.status != Status.OK:
            e.drops += 1
            self.stats["drop_bad_flags"] += 1
            return
        if isinstance(e, RssEntry):
            leg = e.responder if from_responder else e.initiator
        elif from_responder:  # an RS-N is the responder itself
            e.drops += 1
            self.stats["drop_bad_flags"] += 1
            return
        else:
            leg = e.initiator
        msg = self._open(leg.channel, hdr, data)
        if msg is None:
            e.drops += 1
            return
        e.last_active = now
        handler = _LEG_MESSAGES.get(type(msg))
        if handler is None:
            e.drops += 1
            self.stats["drop_unexpected"] += 1
            return
        handler(self, e, leg, hdr, msg, addr, now)

    def _on_tunnel_request(self, e: AnyEntry, leg: Leg, hdr: SignalHeader, msg: TunnelRequest,
                           addr: Endpoint, now: float) -> None:
        self.stats["tunnel_requests"] += 1
        leg.capabilities = msg.capabilities
        self._learn(e, leg, addr, now)
        if isinstance(e, RsnEntry):
            self._reply(leg.channel, TunnelResponse(capabilities=self.config.capabilities,
                                                    observed=_observed(addr)),
                        hdr.txid, addr, flags=leg.reply_flags)
        else:
            leg.pending_txid = hdr.txid
            if not self._answer_legs(e):
                self.stats["tunnel_wait_other_leg"] += 1

    def _on_path_keepalive(self, e: AnyEntry, leg: Leg, hdr: SignalHeader, msg: Keepalive, addr: Endpoint,
                           now: float) -> None:
        self.stats["path_keepalives"] += 1
        self._learn(e, leg, addr, now)
        self._reply(leg.channel, KeepaliveAck(observed=_observed(addr)), hdr.txid, addr, flags=leg.reply_flags)
        if isinstance(e, RssEntry):
            self._answer_legs(e)

    def _answer_legs(self, e: RssEntry) -> bool:
        """RS-S: once both legs' endpoints are known, answer every pending Tunnel Request."""
        for leg, other in ((e.initiator, e.responder), (e.responder, e.initiator)):
            if leg.endpoint is None or other.endpoint is None:
                return False
        for leg, other in ((e.initiator, e.responder), (e.responder, e.initiator)):
            if leg.pending_txid is None or leg.endpoint is None:
                continue
            caps = other.capabilities if other.capabilities is not None else e.direction.capabilities
            self._reply(leg.channel, TunnelResponse(capabilities=caps, observed=_observed(leg.endpoint)),
                        leg.pending_txid, leg.endpoint, flags=leg.reply_flags)
            leg.pending_txid = None
        return True

    def _txid(self) -> int:
        while True:
            txid = new_txid(self._rand)
            if all(p.txid != txid for p in self._pending.values()):
                return txid


#: What a node may send on a path's leg, by message type (anything else is counted and dropped).
_LEG_MESSAGES: dict[type[Message], Callable[[RsCore, AnyEntry, Leg, SignalHeader, Any, Endpoint, float], None]] = {
    TunnelRequest: RsCore._on_tunnel_request,
    Keepalive: RsCore._on_path_keepalive,
}


def _observed(addr: Endpoint) -> Endpoint | None:
    """``addr`` if it can be encoded as an Observed Endpoint attribute."""
    if not isinstance(addr[0], str):
        return None
    try:
        ipaddress.ip_address(addr[0])
    except ValueError:
        return None
    return addr if isinstance(addr[1], int) and 0 <= addr[1] <= 0xFFFF else None
