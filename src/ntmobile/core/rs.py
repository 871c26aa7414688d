"""The relay server's sans-IO core: registration with its DCs, the Relay Table, RS-S and RS-N relaying.

One box, two modes (paper §3). Per path the DC says which mode to use (RS type in the Relay
Direction):

- **RS-S** relays between two NTM nodes behind different NATs. It holds a *relay key* (never the
  path key): each leg's tunnel signalling is sealed with that leg's keys from ``relay_leg_keys``,
  which authenticates the leg and tells the RS its address. Data capsules are forwarded
  byte-identical to the other leg; the RS-S cannot open or forge them.
- **RS-N** relays between an NTM node and a general node. It is the *responder* end of the path and
  holds the path key: it opens the node's capsules and hands the inner IP packet to the runtime,
  which writes it to the TUN device where the kernel NATs it (nft DNAT peer VIP -> GN address,
  masquerade); replies the kernel de-NATs come back through ``tun_packet`` and are sealed to the node.

Driving (see ``core.common``): ``register(now)``, ``receive_datagram(data, addr, now)``,
``tun_packet(packet, now)``, ``handle_timer(now)`` at ``get_timer()``; outputs
``datagrams_to_send()``, ``next_event()`` (drain before sending: ``RelayAdded`` precedes the
Direction Response that lets the DC route the node here) and ``packets_to_tun()``.

Address learning. An endpoint is only ever learnt from authenticated input: tunnel signalling and
path keepalives (both modes), and end-to-end authenticated data (RS-N only). An RS-S cannot
authenticate data, so data never moves a leg; it is forwarded only when it comes from the sending
leg's learnt endpoint (otherwise anybody who saw a path ID could use the RS-S as a reflector). A
node whose address changed re-announces itself with a Tunnel Request or a path Keepalive.

RS-N paths are unique per (node VIP, peer VIP) pair, because the kernel NAT cannot tell two apart:
a new path of the same DC for a pair supersedes the old one (RelayRemoved "superseded", then
RelayAdded); the same pair from another DC is refused (BUSY). An RS-N drops GSO capsules unless
its configuration offers Capability.GSO, and drops decrypted packets that are not between the
path's node VIP and peer VIP, so nothing else reaches the NAT.

Flags on what the RS sends: a reply travelling towards the initiator carries
``SignalFlags.FROM_RESPONDER`` (RS-N replies; RS-S replies on the initiator leg); a reply on an
RS-S responder leg carries no flag. Incoming tunnel signalling names its leg with the same flag
(set = responder leg).
"""

from __future__ import annotations

import dataclasses
import heapq
import ipaddress
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any

from ntmobile.crypto import (
    PROCESS_POOL,
    AuthError,
    CapsuleOpener,
    CapsuleSealer,
    Channel,
    CounterFloor,
    ReassemblyRefused,
    ReplayError,
    UsedKeys,
    path_keys,
    relay_leg_keys,
)
from ntmobile.wire import (
    CAPSULE_OVERHEAD,
    VERSION,
    Capability,
    CapsuleFlags,
    CodecError,
    DirectionResponse,
    Endpoint,
    Keepalive,
    KeepaliveAck,
    MessageType,
    PathRelease,
    PathReleaseAck,
    PathRole,
    RegistrationRequest,
    RelayDirection,
    RelayProbe,
    RelayProbeResult,
    Role,
    RsType,
    SignalFlags,
    SignalHeader,
    Status,
    StatusMessage,
    TunnelRequest,
    TunnelResponse,
    encode_body,
    parse_signal_header,
)
from ntmobile.wire.constants import SUPPORTED_VERSIONS
from ntmobile.wire.frame import GSO_CHUNK_OVERHEAD

from .common import CoreBase, Event, new_txid
from .registration import (
    AttemptFailed,
    DcState,
    RegistrationClient,
    RegistrationPolicy,
    SessionLost,
    SessionUp,
)
from .registration import Outcome as RegistrationOutcome
from .targets import TargetPolicy
from .timing import REGISTRATION_TIMEOUT, RELAY_KEEPALIVE_DEFAULT, relay_keepalive_timeout

#: Size of the virtio_net_hdr that starts a GSO payload.
VNET_HDR_SIZE = 10

_ID_SIZE = 8
#: Distance measurements in progress at once (more are answered BUSY).
MAX_PROBES = 256
#: RS-S: relay keys an entry remembers after a re-key (they are never taken again).
RETIRED_KEYS_MAX = 8
#: Keys remembered as used by the whole relay (32 bytes each; beyond Relay Table size at default limits).
USED_KEYS_MAX = 1 << 16
# Plain ints for the data path: ``int & IntFlag`` goes through enum's Python-level __rand__ and
# builds a flag object per datagram (a few microseconds each on the relay's hot path).
_F_GSO = int(CapsuleFlags.GSO)
_F_FROM_RESPONDER = int(CapsuleFlags.FROM_RESPONDER)
_CAP_GSO = int(Capability.GSO)


# -- configuration ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DcLink:
    """A DC this relay serves: its ID, where to register, and the enrolment secret."""

    dc_id: bytes
    endpoint: Endpoint
    psk: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class RsConfig:
    name: str
    rs_id: bytes
    dcs: Sequence[DcLink]
    local_endpoints: Sequence[Endpoint] = ()
    #: Relay Table size; a Relay Direction beyond it is answered BUSY.
    max_paths: int = 4096
    #: Capabilities announced to DCs and (RS-N) to nodes, e.g. Capability.GSO | Capability.INNER6.
    capabilities: int = 0
    #: Used when a Relay Direction carries idle_timeout 0.
    default_idle_timeout: float = 120.0
    registration_timeout: float = REGISTRATION_TIMEOUT
    #: Underlay path MTU: GSO capsules toward nodes are cut into chunks whose datagrams fit it.
    path_mtu: int = 1500
    #: RS-N targets (docs/security.md, "RS-N targets"): prefixes opened although not globally routable
    #: (operator allow-list), and prefixes always refused (the relay's VIP ranges).
    rsn_allow: tuple[str, ...] = ()
    rsn_refuse: tuple[str, ...] = ()


# -- events ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Registered(Event):
    dc_id: bytes
    observed: Endpoint


@dataclass(frozen=True, slots=True)
class RegistrationFailed(Event):
    dc_id: bytes
    #: The DC's status, or None when the DC did not answer (timeout) or answered unusably.
    status: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class RelayAdded(Event):
    """A Relay Table entry was created. For RS-N the runtime installs the kernel mapping
    (entry.nat_mappings()) before sending the Direction Response queued by the same call."""

    entry: RelayEntry


@dataclass(frozen=True, slots=True)
class RelayRemoved(Event):
    entry: RelayEntry
    #: "released" (Path Release from the DC), "idle", or "superseded" (a newer path of the same DC
    #: took over its (node VIP, peer VIP) pair; RelayAdded of the new path follows).
    reason: str


@dataclass(frozen=True, slots=True)
class ProbeRequest(Event):
    """The DC asks how far ``target`` (a general node's address) is from this relay: the runtime
    measures (ICMP echo: hops from the reply's TTL, round-trip time) and calls ``probe_result``."""

    token: int
    target: str


@dataclass(frozen=True, slots=True)
class RelayEndpointChanged(Event):
    path_id: bytes
    #: INITIATOR = the node (RS-N) / initiator leg (RS-S); RESPONDER = the RS-S responder leg.
    leg: PathRole
    addr: Endpoint


# -- Relay Table -----------------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class Leg:
    """One side of a relayed path as the RS sees it."""

    role: PathRole
    channel: Channel = field(repr=False)
    #: Flags on what the RS sends on this leg.
    reply_flags: int
    endpoint: Endpoint | None = None
    #: RS-S: txid of the latest Tunnel Request not answered yet (waiting for the other leg).
    pending_txid: int | None = None
    #: Capabilities from the leg's latest Tunnel Request.
    capabilities: int | None = None


@dataclass(eq=False, slots=True)
class RelayEntry:
    """A Relay Table entry. Owned by the core: the runtime reads it, never changes it."""

    path_id: bytes
    dc_id: bytes
    rs_type: RsType
    idle_timeout: float
    direction: RelayDirection = field(repr=False)
    created: float
    last_active: float
    initiator: Leg
    #: RS-S only.
    responder: Leg | None = None
    #: RS-N only: the data keys (i2r, r2i); the opener and sealer are made on first use, so an idle
    #: entry holds 64 bytes of keys instead of two AEAD objects with their windows.
    data_keys: tuple[bytes, bytes] | None = field(default=None, repr=False)
    _opener: CapsuleOpener | None = field(default=None, repr=False)
    _sealer: CapsuleSealer | None = field(default=None, repr=False)
    #: RS-N: packed (node VIP, peer VIP) pairs, one per complete address family.
    vip_pairs: tuple[tuple[bytes, bytes], ...] = ()
    #: RS-S: relay keys this entry had before (a re-direction re-keys it): never taken again, since
    #: new leg channels would start their counters again under the same key.
    retired_keys: tuple[bytes, ...] = ()
    packets_i2r: int = 0
    bytes_i2r: int = 0
    packets_r2i: int = 0
    bytes_r2i: int = 0
    drops: int = 0

    @property
    def opener(self) -> CapsuleOpener | None:
        """RS-N: opens the node's capsules (i2r)."""
        if self._opener is None and self.data_keys is not None:
            self._opener = CapsuleOpener(self.data_keys[0])
        return self._opener

    @property
    def sealer(self) -> CapsuleSealer | None:
        """RS-N: seals the replies (r2i)."""
        if self._sealer is None and self.data_keys is not None:
            self._sealer = CapsuleSealer(self.data_keys[1], self.path_id, CapsuleFlags.FROM_RESPONDER)
        return self._sealer

    @property
    def node_endpoint(self) -> Endpoint | None:
        """RS-N: the node's current endpoint (RS-S: the initiator leg's)."""
        return self.initiator.endpoint

    @property
    def responder_endpoint(self) -> Endpoint | None:
        return self.responder.endpoint if self.responder is not None else None

    @property
    def deadline(self) -> float:
        return self.last_active + self.idle_timeout

    def nat_mappings(self) -> list[tuple[str, str, str]]:
        """RS-N: (node VIP, peer VIP, GN real address) per family, for the kernel DNAT mapping."""
        d = self.direction
        out: list[tuple[str, str, str]] = []
        if self.rs_type is RsType.N:
            if d.node_vip4 and d.peer_vip4 and d.gn_addr4:
                out.append((d.node_vip4, d.peer_vip4, d.gn_addr4))
            if d.node_vip6 and d.peer_vip6 and d.gn_addr6:
                out.append((d.node_vip6, d.peer_vip6, d.gn_addr6))
        return out

    def info(self) -> dict[str, Any]:
        d = self.direction
        return {
            "path_id": self.path_id.hex(), "dc_id": self.dc_id.hex(), "rs_type": self.rs_type.name,
            "idle_timeout": self.idle_timeout, "created": self.created, "last_active": self.last_active,
            "initiator": _ep(self.initiator.endpoint), "responder": _ep(self.responder_endpoint),
            "node_vip4": d.node_vip4, "node_vip6": d.node_vip6, "peer_vip4": d.peer_vip4,
            "peer_vip6": d.peer_vip6, "gn_addr4": d.gn_addr4, "gn_addr6": d.gn_addr6,
            "packets_i2r": self.packets_i2r, "bytes_i2r": self.bytes_i2r,
            "packets_r2i": self.packets_r2i, "bytes_r2i": self.bytes_r2i, "drops": self.drops,
        }


# -- DC links --------------------------------------------------------------------------------------


class _Dc(RegistrationClient):
    """The relay's registration with one of its DCs (core.registration), and the link it serves. A
    registration that starts stops the old session's keepalives; a failed one is retried after the
    backoff."""

    def __init__(self, rs: RsCore, link: DcLink, counter: CounterFloor) -> None:
        RegistrationClient.__init__(
            self, rs, rs.config.rs_id, link.endpoint, link.psk, counter=counter, random_bytes=rs._rand,
            new_txid=rs._txid, timeout=rs.config.registration_timeout, policy=_REGISTRATION_POLICY,
            request_message=rs._registration_request,
            on_outcome=partial(rs._registration_outcome, link.dc_id),
            keepalive_message=rs._keepalive_message)
        self.link = link


#: The relay's registrations: no session kept while registering again; a refused status or another
#: protocol version is a refusal.
_REGISTRATION_POLICY = RegistrationPolicy(
    keep_session=False, keepalive_timeout=relay_keepalive_timeout, default_keepalive=RELAY_KEEPALIVE_DEFAULT,
    versions=(VERSION, VERSION), refuse_on_status=True)


TunPacket = tuple[bytes | memoryview, bool]
#: A GSO capsule to send: (chunk datagrams back to back, datagram size, endpoint).
GsoSend = tuple[bytes, int, Endpoint]


class RsCore(CoreBase):
    """A relay server (RS-S and RS-N in one). See the module docstring."""

    def __init__(self, config: RsConfig, now: float, *, random_bytes: Callable[[int], bytes] = os.urandom,
                 seq_base: int = 1, counter: CounterFloor | None = None) -> None:
        """``counter``: the long-term send counter of every DC link, persisted by the runtime
        (CounterFloor); without one, an in-memory counter from ``seq_base`` (tests)."""
        CoreBase.__init__(self)
        if len(config.rs_id) != _ID_SIZE:
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
        #: The relay's own addresses: never an RS-N target.
        self._own = tuple(str(ep[0]) for ep in config.local_endpoints)
        self.created = now
        self._rand = random_bytes
        #: This process's instance (RegistrationRequest INSTANCE).
        self.instance = random_bytes(8)
        self._dcs: dict[bytes, _Dc] = {}
        lt_counter = counter if counter is not None else CounterFloor(seq_base)
        for link in config.dcs:
            if len(link.dc_id) != _ID_SIZE or link.dc_id == config.rs_id or link.dc_id in self._dcs:
                raise ValueError(f"bad or duplicate DC id {link.dc_id.hex()}")
            self._dcs[link.dc_id] = _Dc(self, link, lt_counter)
        self._paths: dict[bytes, RelayEntry] = {}
        #: Path and relay keys this process has made sealers (channels, capsule sealers) under: a Relay
        #: Direction that would make another one under any of them is refused (docs/security.md §3).
        self._used_keys = UsedKeys(USED_KEYS_MAX)
        #: The RS-S entries among them (what the runtime's kernel fast path looks at every second).
        self._rs_s: dict[bytes, RelayEntry] = {}
        #: RS-N reply lookup: (node VIP, peer VIP) packed -> entry.
        self._by_vips: dict[tuple[bytes, bytes], RelayEntry] = {}
        self._idle: list[tuple[float, int, RelayEntry]] = []
        self._idle_seq = 0
        self._tun: list[TunPacket] = []
        self._gso_out: list[GsoSend] = []
        self._probing: dict[tuple[bytes, int], tuple[int, Channel, Endpoint, RelayProbe]] = {}
        self._probe_tokens: dict[int, tuple[bytes, int]] = {}
        self._probe_token = 0

    # -- registration with the DCs (core.registration) ---------------------------------------------
    def _registration_request(self, ephemeral: bytes) -> RegistrationRequest:
        c = self.config
        return RegistrationRequest(role=Role.RELAY, name=c.name, ephemeral=ephemeral, versions=SUPPORTED_VERSIONS,
                                   local_endpoints=tuple(c.local_endpoints), capabilities=c.capabilities,
                                   load=len(self._paths), instance=self.instance)

    def _keepalive_message(self) -> Keepalive:
        return Keepalive(load=len(self._paths))

    def _start_registration(self, dc: _Dc, now: float) -> None:
        self.stats["registrations_sent"] += 1
        dc.start(now)

    def _registration_outcome(self, dc_id: bytes, outcome: RegistrationOutcome, now: float) -> None:
        dc = self._dcs[dc_id]
        if isinstance(outcome, SessionUp):
            self.stats["registrations"] += 1
            self._emit(Registered(dc_id, outcome.response.observed))
        elif isinstance(outcome, AttemptFailed):
            self.stats["registrations_failed"] += 1
            self._emit(RegistrationFailed(dc_id, _status(outcome.status) if outcome.status is not None else None,
                                          outcome.reason))
        elif isinstance(outcome, SessionLost):
            self.stats["reregister_keepalive"] += 1
            self._start_registration(dc, now)
        else:  # RetryDue
            self._start_registration(dc, now)

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

    def entries(self) -> list[RelayEntry]:
        return list(self._paths.values())

    def rs_s_entries(self) -> list[RelayEntry]:
        return list(self._rs_s.values())

    def entry(self, path_id: bytes) -> RelayEntry | None:
        return self._paths.get(path_id)

    def dc_state(self, dc_id: bytes) -> DcState | None:
        dc = self._dcs.get(dc_id)
        return dc.state if dc is not None else None

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.config.name,
            "rs_id": self.config.rs_id.hex(),
            "paths": len(self._paths),
            "max_paths": self.config.max_paths,
            "dcs": [{"dc_id": dc.link.dc_id.hex(), "endpoint": _ep(dc.link.endpoint), "state": dc.state.value,
                     "observed": _ep(dc.observed), "keepalive": dc.keepalive, "missed_keepalives": dc.missed,
                     "registered_at": dc.registered_at} for dc in self._dcs.values()],
            "entries": [e.info() for e in self._paths.values()],
            "stats": dict(self.stats),
        }

    def get_timer(self) -> float | None:
        """Earliest of retransmissions, keepalive/retry timers and idle expiry. The idle part may be
        early (an entry refreshed since it was scheduled); ``handle_timer`` then reschedules it."""
        t = CoreBase.get_timer(self)
        if self._idle:
            top = self._idle[0][0]
            t = top if t is None else min(t, top)
        reasm = PROCESS_POOL.deadline()  # partial GSO capsules of the RS-N paths
        if reasm is not None:
            t = reasm if t is None else min(t, reasm)
        return t

    def handle_timer(self, now: float) -> None:
        CoreBase.handle_timer(self, now)
        self._expire(now)
        PROCESS_POOL.expire(now)

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
        dc = self._dcs.get(hdr.sender)
        if dc is not None:
            self._on_dc(dc, hdr, data, addr, now)
            return
        e = self._paths.get(hdr.sender)
        if e is not None:
            self._on_tunnel(e, hdr, data, addr, now)
            return
        self.stats["drop_unknown_sender"] += 1

    # -- input: TUN ---------------------------------------------------------------------------------
    def relay_data(self, data: bytes | bytearray | memoryview, addr: Endpoint, now: float) -> Endpoint | None:
        """A data capsule datagram (the runtime's fast path; ``data`` may be a view of a receive
        buffer, used only during the call). RS-N capsules are opened here (their inner packets go
        to ``packets_to_tun``). For RS-S, returns the endpoint to forward the datagram to,
        unchanged (the runtime sends it, batching equal-sized datagrams with UDP GSO); None when
        there is nothing to forward."""
        if len(addr) != 2:
            addr = (addr[0], addr[1])
        return self._on_data(data, addr, now)

    def relay_run(self, data: memoryview, size: int, addr: Endpoint, now: float) -> tuple[Endpoint | None, int]:
        """Data capsule datagrams back to back every ``size`` bytes (a UDP GRO batch, from a GSO
        chunk on): the same as ``relay_data`` on each, in bulk. Returns ``(endpoint, k)``: the
        first ``k`` datagrams were consumed, and (RS-S) are to be forwarded unchanged to
        ``endpoint``. An RS-N payload it queues for the TUN is a view of a shared buffer: drain
        ``packets_to_tun()`` before the next call."""
        if len(addr) != 2:
            addr = (addr[0], addr[1])
        n = len(data)
        first = data[:size]
        e = self._paths.get(bytes(data[4:12]))
        if e is None or n <= size:
            return self._on_data(first, addr, now), 1
        if e.responder is not None:
            dest = self._on_data(first, addr, now)
            if dest is None:
                return None, 1
            k = _same_prefix_run(data, size, 12)
            more = min(k * size, n) - size
            if data[2] & _F_FROM_RESPONDER:
                e.packets_r2i += k - 1
                e.bytes_r2i += more
            else:
                e.packets_i2r += k - 1
                e.bytes_i2r += more
            return dest, k
        opener = e.opener
        if (data[2] & _F_FROM_RESPONDER or opener is None
                or not self.config.capabilities & _CAP_GSO):
            return self._on_data(first, addr, now), 1
        try:
            payload, k = opener.open_run(data, size, now, learnt=addr == e.initiator.endpoint, scratch=True)
        except (AuthError, CodecError):
            return self._on_data(first, addr, now), 1  # counts it
        if payload is not None:
            self._accept_n(e, payload, True, addr, now)
        return None, k

    def tun_packet(self, packet: bytes | bytearray | memoryview, now: float, *, gso: bool = False) -> bool:
        """An IP packet the kernel routed to the TUN device: a general node's reply, already
        de-NATed (dst = node VIP, src = the VIP standing for the GN). Sealed to the node's current
        endpoint. With ``gso`` the packet starts with a virtio_net_hdr and goes out as one GSO
        capsule in chunks (``gso_to_send``) if the path's node announced Capability.GSO
        (``entry.initiator.capabilities``); if it did not, nothing is done and False is returned:
        the runtime then segments the super-packet and passes the segments without ``gso``."""
        pair = _ip_pair(packet, VNET_HDR_SIZE if gso else 0)
        if pair is None:
            self.stats["tun_malformed"] += 1
            return True
        src, dst = pair
        e = self._by_vips.get((dst, src))
        if e is None or e.sealer is None:
            self.stats["tun_no_path"] += 1
            return True
        ep = e.initiator.endpoint
        if ep is None:
            e.drops += 1
            self.stats["tun_no_endpoint"] += 1
            return True
        if gso:
            caps = e.initiator.capabilities
            if caps is None or not caps & Capability.GSO:
                return False
            seg = self.config.path_mtu - (48 if ":" in ep[0] else 28) - GSO_CHUNK_OVERHEAD
            blob, size = e.sealer.seal_gso(packet, seg)
            self._gso_out.append((blob, size, ep))
            e.packets_r2i += 1
            e.bytes_r2i += len(packet) - VNET_HDR_SIZE
            return True
        e.packets_r2i += 1
        e.bytes_r2i += len(packet)
        self._send(e.sealer.seal(packet), ep)
        return True

    # -- from a DC ----------------------------------------------------------------------------------
    def _on_dc(self, dc: _Dc, hdr: SignalHeader, data: bytes, addr: Endpoint, now: float) -> None:
        if hdr.flags & SignalFlags.LONG_TERM:
            lt_msg = dc.receive_long_term(hdr, data, addr, now)
            if isinstance(lt_msg, StatusMessage):
                self._on_dc_status(dc, hdr, lt_msg, now)
            elif lt_msg is not None:
                self.stats["drop_unexpected"] += 1
            return
        session = dc.session
        if session is None:
            self.stats["drop_no_session"] += 1
            return
        msg = self._open(session, hdr, data)
        if msg is None:
            return
        if isinstance(msg, RelayDirection):
            self._on_relay_direction(dc, session, hdr, msg, addr, now)
        elif isinstance(msg, PathRelease):
            self._on_path_release(dc, session, hdr, msg, addr)
        elif isinstance(msg, RelayProbe):
            self._on_probe(dc, session, hdr, msg, addr)
        elif isinstance(msg, KeepaliveAck):
            if not dc.keepalive_acked(hdr.txid):
                self.stats["drop_late_response"] += 1
                return
            if msg.observed is not None:
                dc.observed = msg.observed
        elif isinstance(msg, StatusMessage):
            self._on_dc_status(dc, hdr, msg, now)
        else:
            self.stats["drop_unexpected"] += 1

    def _on_probe(self, dc: _Dc, session: Channel, hdr: SignalHeader, msg: RelayProbe, addr: Endpoint) -> None:
        key = (dc.link.dc_id, hdr.txid)
        if key in self._probing:
            return  # a retransmission while we measure: the result answers both
        if len(self._probing) >= MAX_PROBES:
            self.stats["probe_busy"] += 1
            self._reply(session, RelayProbeResult(gn_addr4=msg.gn_addr4, gn_addr6=msg.gn_addr6), hdr.txid, addr,
                        status=Status.BUSY)
            return
        target = msg.gn_addr4 or msg.gn_addr6
        if target is None:
            self._reply(session, RelayProbeResult(), hdr.txid, addr, status=Status.BAD_REQUEST)
            return
        if self._refused_target(target) is not None:
            self.stats["probe_target_refused"] += 1
            self._reply(session, RelayProbeResult(gn_addr4=msg.gn_addr4, gn_addr6=msg.gn_addr6), hdr.txid, addr,
                        status=Status.ADDRESS_REFUSED)
            return
        self._probe_token += 1
        self._probing[key] = (self._probe_token, session, addr, msg)
        self._probe_tokens[self._probe_token] = key
        self.stats["probes"] += 1
        self._emit(ProbeRequest(self._probe_token, target))

    def kernel_forwarded(self, path_id: bytes, i2r: tuple[int, int], r2i: tuple[int, int], now: float) -> bool:
        """RS-S data the kernel forwarded for ``path_id`` since the last call (the runtime's
        fast path: docs/dataplane.md): (packets, bytes) each way. It counts like relayed data and,
        when anything moved, keeps the entry active. False when the entry is gone or not RS-S."""
        e = self._paths.get(path_id)
        if e is None or e.responder is None:
            return False
        e.packets_i2r += i2r[0]
        e.bytes_i2r += i2r[1]
        e.packets_r2i += r2i[0]
        e.bytes_r2i += r2i[1]
        if i2r[0] or r2i[0]:
            e.last_active = max(e.last_active, now)
            self.stats["kernel_forwarded"] += i2r[0] + r2i[0]
        return True

    def probe_result(self, token: int, hops: int | None, rtt_us: int | None, now: float) -> None:
        """The runtime measured the distance asked for by ProbeRequest ``token`` (None: no reply)."""
        key = self._probe_tokens.pop(token, None)
        if key is None:
            return
        _tok, session, addr, msg = self._probing.pop(key)
        reply = RelayProbeResult(gn_addr4=msg.gn_addr4, gn_addr6=msg.gn_addr6, hops=hops,
                                 rtt_us=min(rtt_us, 0xFFFFFFFF) if rtt_us is not None else None)
        self._reply(session, reply, key[1], addr, status=Status.OK if hops is not None else Status.PEER_UNREACHABLE)

    def _on_dc_status(self, dc: _Dc, hdr: SignalHeader, msg: StatusMessage, now: float) -> None:
        if dc.state is DcState.REGISTERING and hdr.txid == dc.reg_txid:
            dc.fail(hdr.status, msg.reason or "registration refused", now)
        elif hdr.status == Status.REREGISTER or (dc.ka_txid is not None and hdr.txid == dc.ka_txid):
            # The DC lost our session (restart) or refused a keepalive: register again.
            if dc.state is not DcState.REGISTERING:
                self.stats["reregister_requested"] += 1
                self._start_registration(dc, now)
        else:
            self.stats["status_ignored"] += 1

    def _on_relay_direction(self, dc: _Dc, session: Channel, hdr: SignalHeader, msg: RelayDirection,
                            addr: Endpoint, now: float) -> None:
        pid = msg.path_id
        existing = self._paths.get(pid)
        if existing is not None:
            old_key = existing.direction.relay_key
            if (existing.dc_id == dc.link.dc_id and existing.responder is not None and msg.rs_type == RsType.S
                    and msg.relay_key is not None and msg.relay_key != old_key
                    and _same_binding(existing.direction, dataclasses.replace(msg, relay_key=old_key))):
                # The DC re-directed the path with a fresh relay key (docs/protocol.md §10): new leg keys,
                # same legs and endpoints, so relaying goes on while the nodes announce themselves.
                if msg.relay_key in existing.retired_keys or not self._used_keys.claim(msg.relay_key):
                    self.stats["relay_direction_retired_key"] += 1
                    self._direction_response(session, pid, hdr.txid, addr, Status.PATH_ID_IN_USE)
                    return
                self._rekey(existing, msg)
                self._direction_response(session, pid, hdr.txid, addr, Status.OK)
                return
            if existing.dc_id != dc.link.dc_id or not _same_binding(existing.direction, msg):
                self.stats["relay_direction_in_use"] += 1
                self._direction_response(session, pid, hdr.txid, addr, Status.PATH_ID_IN_USE)
                return
            if existing.direction != msg:
                # Same path, keys and addresses: a refresh of the informative/timing parts.
                existing.direction = msg
                old_timeout, existing.idle_timeout = existing.idle_timeout, self._idle_timeout(msg)
                if existing.idle_timeout < old_timeout:
                    self._push_idle(existing, existing.deadline)  # expires earlier than scheduled
                self.stats["relay_direction_refreshed"] += 1
            else:
                self.stats["relay_direction_duplicate"] += 1
            self._direction_response(session, pid, hdr.txid, addr, Status.OK)
            return
        problem = self._validate(msg)
        if problem is not None:
            self.stats["relay_direction_bad"] += 1
            self._direction_response(session, pid, hdr.txid, addr, Status.BAD_REQUEST)
            return
        if msg.rs_type == RsType.N and self._refused_target(msg.gn_addr4, msg.gn_addr6) is not None:
            # Checked again here, before any NAT mapping exists: the DC may be wrong or compromised.
            self.stats["relay_direction_target_refused"] += 1
            self._direction_response(session, pid, hdr.txid, addr, Status.ADDRESS_REFUSED)
            return
        key = msg.path_key if msg.rs_type == RsType.N else msg.relay_key
        if key is None or key in self._used_keys:
            # A key this relay has sealed under before (its counters would start again): never again.
            self.stats["relay_direction_retired_key"] += 1
            self._direction_response(session, pid, hdr.txid, addr, Status.PATH_ID_IN_USE)
            return
        # One RS-N path per (node VIP, peer VIP) pair: the kernel NAT cannot tell two apart. A new
        # path of the same DC for a pair supersedes the old one (the node set the path up again);
        # the same pair from another DC (overlapping VIP spaces) cannot be relayed here.
        pairs = _vip_pairs(msg) if msg.rs_type == RsType.N else ()
        superseded = {id(o): o for o in (self._by_vips.get(p) for p in pairs) if o is not None}
        if any(o.dc_id != dc.link.dc_id for o in superseded.values()):
            self.stats["relay_direction_vip_conflict"] += 1
            self._direction_response(session, pid, hdr.txid, addr, Status.BUSY)
            return
        if len(self._paths) - len(superseded) >= self.config.max_paths:
            self.stats["relay_direction_busy"] += 1
            self._direction_response(session, pid, hdr.txid, addr, Status.BUSY)
            return
        for old in superseded.values():
            self.stats["relays_superseded"] += 1
            self._remove(old, "superseded")  # RelayRemoved before RelayAdded: the NAT mapping moves
        self._used_keys.claim(key)
        e = self._new_entry(dc, msg, now)
        self._paths[pid] = e
        if e.responder is not None:
            self._rs_s[pid] = e
        for pair in e.vip_pairs:
            self._by_vips[pair] = e
        self._push_idle(e, e.deadline)
        self.stats["relays_added"] += 1
        self._emit(RelayAdded(e))
        self._direction_response(session, pid, hdr.txid, addr, Status.OK)

    def _rekey(self, e: RelayEntry, msg: RelayDirection) -> None:
        assert msg.relay_key is not None and e.responder is not None and e.direction.relay_key is not None
        e.retired_keys = (*e.retired_keys, e.direction.relay_key)[-RETIRED_KEYS_MAX:]
        e.direction = msg
        pid = e.path_id
        e.initiator.channel = Channel(relay_leg_keys(msg.relay_key, pid, responder_leg=False).swapped(), pid)
        e.responder.channel = Channel(relay_leg_keys(msg.relay_key, pid, responder_leg=True).swapped(), pid)
        e.initiator.pending_txid = e.responder.pending_txid = None
        old_timeout, e.idle_timeout = e.idle_timeout, self._idle_timeout(msg)
        if e.idle_timeout < old_timeout:
            self._push_idle(e, e.deadline)
        self.stats["relay_direction_rekeyed"] += 1

    def _direction_response(self, session: Channel, pid: bytes, txid: int, addr: Endpoint, status: Status) -> None:
        self._reply(session, DirectionResponse(path_id=pid, load=len(self._paths),
                                               capabilities=self.config.capabilities),
                    txid, addr, status=status)

    def _validate(self, msg: RelayDirection) -> str | None:
        pid = msg.path_id
        if pid in self._dcs or pid == self.config.rs_id:
            return "path id collides with a key identifier"
        if msg.rs_type == RsType.N:
            if msg.path_key is None or msg.relay_key is not None:
                return "RS-N needs the path key (and no relay key)"
            if not _vip_pairs(msg):
                return "RS-N needs node VIP, peer VIP and GN address of one family"
        elif msg.rs_type == RsType.S:
            if msg.relay_key is None or msg.path_key is not None:
                return "RS-S needs the relay key (and never the path key)"
        else:
            return f"unknown RS type {msg.rs_type}"
        return None

    def _refused_target(self, *addrs: str | None) -> str | None:
        """Why one of ``addrs`` (None: absent) may not be an RS-N target of this relay, or None."""
        for a in addrs:
            if a is not None and (why := self.targets.refusal(a, self._own)) is not None:
                return why
        return None

    def _idle_timeout(self, msg: RelayDirection) -> float:
        return float(msg.idle_timeout) if msg.idle_timeout > 0 else self.config.default_idle_timeout

    def _new_entry(self, dc: _Dc, msg: RelayDirection, now: float) -> RelayEntry:
        pid = msg.path_id
        if msg.rs_type == RsType.N:
            assert msg.path_key is not None
            keys = path_keys(msg.path_key, pid)
            sig, _data = keys.for_responder()
            return RelayEntry(pid, dc.link.dc_id, RsType.N, self._idle_timeout(msg), msg, now, now,
                              Leg(PathRole.INITIATOR, Channel(sig, pid), SignalFlags.FROM_RESPONDER),
                              data_keys=(keys.data_i2r, keys.data_r2i),
                              vip_pairs=_vip_pairs(msg))
        assert msg.relay_key is not None
        i_keys = relay_leg_keys(msg.relay_key, pid, responder_leg=False).swapped()
        r_keys = relay_leg_keys(msg.relay_key, pid, responder_leg=True).swapped()
        return RelayEntry(pid, dc.link.dc_id, RsType.S, self._idle_timeout(msg), msg, now, now,
                          Leg(PathRole.INITIATOR, Channel(i_keys, pid), SignalFlags.FROM_RESPONDER),
                          responder=Leg(PathRole.RESPONDER, Channel(r_keys, pid), SignalFlags.NONE))

    def _on_path_release(self, dc: _Dc, session: Channel, hdr: SignalHeader, msg: PathRelease,
                         addr: Endpoint) -> None:
        e = self._paths.get(msg.path_id)
        if e is not None and e.dc_id != dc.link.dc_id:
            self.stats["release_not_owner"] += 1
            self._reply(session, PathReleaseAck(path_id=msg.path_id), hdr.txid, addr, status=Status.NOT_AUTHORIZED)
            return
        if e is not None:
            self._remove(e, "released")
        else:
            self.stats["release_unknown_path"] += 1  # already gone: acknowledge (idempotent)
        self._reply(session, PathReleaseAck(path_id=msg.path_id), hdr.txid, addr)

    # -- tunnel signalling from nodes ---------------------------------------------------------------
    def _on_tunnel(self, e: RelayEntry, hdr: SignalHeader, data: bytes, addr: Endpoint, now: float) -> None:
        from_responder = bool(hdr.flags & SignalFlags.FROM_RESPONDER)
        if hdr.flags & SignalFlags.LONG_TERM or hdr.status != Status.OK:
            e.drops += 1
            self.stats["drop_bad_flags"] += 1
            return
        if e.responder is None:
            if from_responder:  # an RS-N is the responder itself
                e.drops += 1
                self.stats["drop_bad_flags"] += 1
                return
            leg = e.initiator
        else:
            leg = e.responder if from_responder else e.initiator
        msg = self._open(leg.channel, hdr, data)
        if msg is None:
            e.drops += 1
            return
        e.last_active = now
        if isinstance(msg, TunnelRequest):
            self.stats["tunnel_requests"] += 1
            leg.capabilities = msg.capabilities
            self._learn(e, leg, addr)
            if e.responder is None:
                self._reply(leg.channel, TunnelResponse(capabilities=self.config.capabilities,
                                                        observed=_observed(addr)),
                            hdr.txid, addr, flags=leg.reply_flags)
            else:
                leg.pending_txid = hdr.txid
                if not self._answer_legs(e):
                    self.stats["tunnel_wait_other_leg"] += 1
        elif isinstance(msg, Keepalive):
            self.stats["path_keepalives"] += 1
            self._learn(e, leg, addr)
            self._reply(leg.channel, KeepaliveAck(observed=_observed(addr)), hdr.txid, addr, flags=leg.reply_flags)
            if e.responder is not None:
                self._answer_legs(e)
        else:
            e.drops += 1
            self.stats["drop_unexpected"] += 1

    def _answer_legs(self, e: RelayEntry) -> bool:
        """RS-S: once both legs' endpoints are known, answer every pending Tunnel Request."""
        legs = (e.initiator, e.responder)
        if any(leg is None or leg.endpoint is None for leg in legs):
            return False
        for leg, other in ((e.initiator, e.responder), (e.responder, e.initiator)):
            assert leg is not None and other is not None and leg.endpoint is not None
            if leg.pending_txid is None:
                continue
            caps = other.capabilities if other.capabilities is not None else e.direction.capabilities
            self._reply(leg.channel, TunnelResponse(capabilities=caps, observed=_observed(leg.endpoint)),
                        leg.pending_txid, leg.endpoint, flags=leg.reply_flags)
            leg.pending_txid = None
        return True

    def _learn(self, e: RelayEntry, leg: Leg, addr: Endpoint) -> None:
        if leg.endpoint != addr:
            leg.endpoint = addr
            self.stats["endpoint_learned"] += 1
            self._emit(RelayEndpointChanged(e.path_id, leg.role, addr))

    # -- data capsules ------------------------------------------------------------------------------
    def _on_data(self, data: bytes | bytearray | memoryview, addr: Endpoint, now: float) -> Endpoint | None:
        """One data capsule datagram. Returns the endpoint to forward it to (RS-S) or None."""
        n = len(data)
        flags = data[2] if n > 2 else 0
        gso = flags & _F_GSO
        if n < (GSO_CHUNK_OVERHEAD + 1 if gso else CAPSULE_OVERHEAD):
            self.stats["drop_malformed"] += 1
            return None
        e = self._paths.get(bytes(data[4:12]))
        if e is None:
            self.stats["drop_unknown_path"] += 1
            return None
        from_responder = flags & _F_FROM_RESPONDER
        resp = e.responder
        if resp is not None:
            # RS-S: no key, so no authentication and no address learning here (module docstring).
            # GSO chunks are forwarded like any capsule: the far node reassembles and opens them.
            src, dst = (resp, e.initiator) if from_responder else (e.initiator, resp)
            if src.endpoint != addr:
                e.drops += 1
                self.stats["drop_data_unknown_source"] += 1
                return None
            if dst.endpoint is None:
                e.drops += 1
                self.stats["drop_no_leg"] += 1
                return None
            e.last_active = now
            if from_responder:
                e.packets_r2i += 1
                e.bytes_r2i += n
            else:
                e.packets_i2r += 1
                e.bytes_i2r += n
            return dst.endpoint
        # RS-N: the node is the initiator; open end to end.
        opener = e.opener
        if from_responder or opener is None:
            e.drops += 1
            self.stats["drop_bad_direction"] += 1
            return None
        if gso and not self.config.capabilities & _CAP_GSO:
            # We did not offer GSO: the runtime's TUN cannot take a virtio_net_hdr super-packet.
            e.drops += 1
            self.stats["drop_gso_unsupported"] += 1
            return None
        try:
            # Reassembly state only for chunks from the node's learnt endpoint (CapsuleOpener).
            payload = (opener.open_chunk(data, now, learnt=addr == e.initiator.endpoint) if gso
                       else opener.open(data))
        except ReassemblyRefused:
            e.drops += 1
            self.stats["drop_chunk_unknown_source"] += 1
            return None
        except ReplayError:
            e.drops += 1
            self.stats["drop_data_replay"] += 1
            return None
        except AuthError:
            e.drops += 1
            self.stats["drop_data_auth"] += 1
            return None
        except CodecError:
            e.drops += 1
            self.stats["drop_malformed"] += 1
            return None
        if payload is None:
            return None  # a GSO capsule still missing chunks
        self._accept_n(e, payload, bool(gso), addr, now)
        return None

    def _accept_n(self, e: RelayEntry, payload: bytes | memoryview, gso: bool, addr: Endpoint, now: float) -> None:
        """RS-N: an opened inner packet (or virtio_net_hdr + super-packet) from the node."""
        if _ip_pair(payload, VNET_HDR_SIZE if gso else 0) not in e.vip_pairs:
            # Authenticated, but not between this path's VIPs: never let it reach the NAT.
            e.drops += 1
            self.stats["drop_inner_address"] += 1
            return
        e.last_active = now
        e.packets_i2r += 1
        e.bytes_i2r += len(payload)
        if e.initiator.endpoint != addr:
            self._learn(e, e.initiator, addr)
        self._tun.append((payload, gso))

    # -- Relay Table maintenance --------------------------------------------------------------------
    def _push_idle(self, e: RelayEntry, when: float) -> None:
        self._idle_seq += 1
        heapq.heappush(self._idle, (when, self._idle_seq, e))

    def _expire(self, now: float) -> None:
        heap = self._idle
        while heap and heap[0][0] <= now:
            _, _, e = heapq.heappop(heap)
            if self._paths.get(e.path_id) is not e:
                continue
            if e.deadline <= now:
                self.stats["relays_idle"] += 1
                self._remove(e, "idle")
            else:
                self._push_idle(e, e.deadline)

    def _remove(self, e: RelayEntry, reason: str) -> None:
        if self._paths.get(e.path_id) is not e:
            return
        del self._paths[e.path_id]
        self._rs_s.pop(e.path_id, None)
        for pair in e.vip_pairs:
            if self._by_vips.get(pair) is e:
                del self._by_vips[pair]
        self.stats["relays_removed"] += 1
        self._emit(RelayRemoved(e, reason))

    def _txid(self) -> int:
        while True:
            txid = new_txid(self._rand)
            if all(p.txid != txid for p in self._pending.values()):
                return txid


# -- helpers ---------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _prefix_struct(size: int, plen: int) -> struct.Struct:
    """Unpacks the ``plen``-byte prefix of one ``size``-byte datagram (and skips the rest)."""
    return struct.Struct(f"{plen}s{size - plen}x")


def _same_prefix_run(data: memoryview, size: int, plen: int) -> int:
    """How many datagrams laid every ``size`` bytes in ``data`` start with the first one's
    ``plen``-byte prefix, counting from the first. The full-size datagrams' prefixes are taken in
    one C pass (``struct.iter_unpack``) and compared with ``list.count`` (the common case: one
    path, one direction); a mixed batch is then walked to its first stranger."""
    n = len(data)
    if size <= plen or n <= size:
        return 1
    full = n // size
    key = (data[:plen].tobytes(),)
    heads = list(_prefix_struct(size, plen).iter_unpack(data[:full * size]))
    if heads.count(key) == full:
        o = full * size
        return full + 1 if o < n and data[o:o + plen] == key[0] else full
    return heads.index(next(h for h in heads if h != key))


def _ip_pair(packet: bytes | bytearray | memoryview, off: int) -> tuple[bytes, bytes] | None:
    """(source, destination) of an IPv4/IPv6 packet starting at ``off``; None if not one."""
    if len(packet) < off + 20:
        return None
    version = packet[off] >> 4
    if version == 4:
        return bytes(packet[off + 12:off + 16]), bytes(packet[off + 16:off + 20])
    if version == 6 and len(packet) >= off + 40:
        return bytes(packet[off + 8:off + 24]), bytes(packet[off + 24:off + 40])
    return None


def _vip_pairs(msg: RelayDirection) -> tuple[tuple[bytes, bytes], ...]:
    """Packed (node VIP, peer VIP) for each family the Relay Direction gives completely."""
    pairs: list[tuple[bytes, bytes]] = []
    if msg.node_vip4 and msg.peer_vip4 and msg.gn_addr4:
        pairs.append((ipaddress.IPv4Address(msg.node_vip4).packed, ipaddress.IPv4Address(msg.peer_vip4).packed))
    if msg.node_vip6 and msg.peer_vip6 and msg.gn_addr6:
        pairs.append((ipaddress.IPv6Address(msg.node_vip6).packed, ipaddress.IPv6Address(msg.peer_vip6).packed))
    return tuple(pairs)


def _same_binding(a: RelayDirection, b: RelayDirection) -> bool:
    """Same keys, type and addressing: the same path (other fields may be refreshed)."""
    return (a.rs_type == b.rs_type and a.path_key == b.path_key and a.relay_key == b.relay_key
            and a.node_vip4 == b.node_vip4 and a.node_vip6 == b.node_vip6 and a.peer_vip4 == b.peer_vip4
            and a.peer_vip6 == b.peer_vip6 and a.gn_addr4 == b.gn_addr4 and a.gn_addr6 == b.gn_addr6)


def _observed(addr: Endpoint) -> Endpoint | None:
    """``addr`` if it can be encoded as an Observed Endpoint attribute."""
    if not isinstance(addr[0], str):
        return None
    try:
        ipaddress.ip_address(addr[0])
    except ValueError:
        return None
    return addr if isinstance(addr[1], int) and 0 <= addr[1] <= 0xFFFF else None


def _status(code: int) -> int:
    try:
        return Status(code)
    except ValueError:
        return code


def _ep(ep: Endpoint | None) -> str | None:
    if ep is None:
        return None
    host, port = ep
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


__all__ = [
    "DcLink", "DcState", "Leg", "Registered", "RegistrationFailed", "RelayAdded", "RelayEndpointChanged",
    "RelayEntry", "RelayRemoved", "RsConfig", "RsCore", "TunPacket", "GsoSend",
]
