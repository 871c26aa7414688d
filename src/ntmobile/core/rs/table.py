"""The Relay Table: one entry type per mode (``RssEntry``, ``RsnEntry``) with an explicit state, and
the table itself (``RelayTable``: install, re-key, re-time, release, idle expiry).

Entry states (``EntryState``; ``_TRANSITIONS`` lists every legal move)::

    WAITING --(every leg's endpoint learnt)--> ACTIVE
    WAITING, ACTIVE --(released, idle, superseded)--> REMOVED

An RS-S entry is WAITING until both legs have announced themselves (Tunnel Request or Keepalive),
an RS-N entry until its node has. A removed entry is never used again: the idle heap may still hold
it, and skips it by its state.
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import ipaddress
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ntmobile.crypto import CapsuleOpener, CapsuleSealer, Channel, KeyPair, UsedKeys, path_keys, relay_leg_keys
from ntmobile.wire import CapsuleFlags, Endpoint, PathRole, RelayDirection, RsType, SignalFlags

from .config import RETIRED_KEYS_MAX, USED_KEYS_MAX


class EntryState(enum.Enum):
    #: A leg's endpoint is not known yet (nothing can be relayed to it).
    WAITING = "waiting"
    #: Every leg's endpoint is known.
    ACTIVE = "active"
    #: Out of the table (released, idle or superseded).
    REMOVED = "removed"


_TRANSITIONS: dict[EntryState, frozenset[EntryState]] = {
    EntryState.WAITING: frozenset({EntryState.ACTIVE, EntryState.REMOVED}),
    EntryState.ACTIVE: frozenset({EntryState.REMOVED}),
    EntryState.REMOVED: frozenset(),
}


class RelayStateError(RuntimeError):
    """An internal error: a Relay Table entry was asked to make a move its state does not allow."""


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
    """What a Relay Table entry of either mode has. Owned by the core: the runtime reads it, never
    changes it."""

    rs_type: ClassVar[RsType]

    path_id: bytes
    dc_id: bytes
    idle_timeout: float
    direction: RelayDirection = field(repr=False)
    created: float
    last_active: float
    #: RS-N: the node; RS-S: the initiator leg.
    initiator: Leg
    packets_i2r: int = 0
    bytes_i2r: int = 0
    packets_r2i: int = 0
    bytes_r2i: int = 0
    drops: int = 0
    state: EntryState = EntryState.WAITING

    def move(self, to: EntryState) -> None:
        """The one way an entry changes state; an illegal move is an internal error."""
        if to not in _TRANSITIONS[self.state]:
            raise RelayStateError(f"relay entry {self.path_id.hex()}: {self.state.value} -> {to.value}")
        self.state = to

    def legs(self) -> tuple[Leg, ...]:
        return (self.initiator,)

    @property
    def node_endpoint(self) -> Endpoint | None:
        """RS-N: the node's current endpoint (RS-S: the initiator leg's)."""
        return self.initiator.endpoint

    @property
    def responder_endpoint(self) -> Endpoint | None:
        return None

    @property
    def deadline(self) -> float:
        return self.last_active + self.idle_timeout

    def nat_mappings(self) -> list[tuple[str, str, str]]:
        """RS-N: (node VIP, peer VIP, GN real address) per family, for the kernel DNAT mapping."""
        return []

    def info(self) -> dict[str, Any]:
        d = self.direction
        return {
            "path_id": self.path_id.hex(), "dc_id": self.dc_id.hex(), "rs_type": self.rs_type.name,
            "state": self.state.value,
            "idle_timeout": self.idle_timeout, "created": self.created, "last_active": self.last_active,
            "initiator": _ep(self.initiator.endpoint), "responder": _ep(self.responder_endpoint),
            "node_vip4": d.node_vip4, "node_vip6": d.node_vip6, "peer_vip4": d.peer_vip4,
            "peer_vip6": d.peer_vip6, "gn_addr4": d.gn_addr4, "gn_addr6": d.gn_addr6,
            "packets_i2r": self.packets_i2r, "bytes_i2r": self.bytes_i2r,
            "packets_r2i": self.packets_r2i, "bytes_r2i": self.bytes_r2i, "drops": self.drops,
        }


@dataclass(eq=False, slots=True, kw_only=True)
class RssEntry(RelayEntry):
    """RS-S: relays capsules byte-identical between two legs, holding the relay key only."""

    rs_type: ClassVar[RsType] = RsType.S

    responder: Leg
    #: Relay keys this entry had before (a re-direction re-keys it): never taken again, since new
    #: leg channels would start their counters again under the same key.
    retired_keys: tuple[bytes, ...] = ()

    def legs(self) -> tuple[Leg, ...]:
        return (self.initiator, self.responder)

    @property
    def responder_endpoint(self) -> Endpoint | None:
        return self.responder.endpoint


@dataclass(eq=False, slots=True, kw_only=True)
class RsnEntry(RelayEntry):
    """RS-N: the responder end of the path, holding the path key; opens the node's capsules for the
    kernel NAT and seals the general node's replies."""

    rs_type: ClassVar[RsType] = RsType.N

    #: The data keys (i2r, r2i); the opener and sealer are made on first use, so an idle entry holds
    #: 64 bytes of keys instead of two AEAD objects with their windows.
    data_keys: tuple[bytes, bytes] = field(repr=False)
    _opener: CapsuleOpener | None = field(default=None, repr=False)
    _sealer: CapsuleSealer | None = field(default=None, repr=False)
    #: Packed (node VIP, peer VIP) pairs, one per complete address family.
    vip_pairs: tuple[tuple[bytes, bytes], ...] = ()

    @property
    def opener(self) -> CapsuleOpener:
        """Opens the node's capsules (i2r)."""
        if self._opener is None:
            self._opener = CapsuleOpener(self.data_keys[0])
        return self._opener

    @property
    def sealer(self) -> CapsuleSealer:
        """Seals the replies (r2i)."""
        if self._sealer is None:
            self._sealer = CapsuleSealer(self.data_keys[1], self.path_id, CapsuleFlags.FROM_RESPONDER)
        return self._sealer

    def nat_mappings(self) -> list[tuple[str, str, str]]:
        d = self.direction
        out: list[tuple[str, str, str]] = []
        if d.node_vip4 and d.peer_vip4 and d.gn_addr4:
            out.append((d.node_vip4, d.peer_vip4, d.gn_addr4))
        if d.node_vip6 and d.peer_vip6 and d.gn_addr6:
            out.append((d.node_vip6, d.peer_vip6, d.gn_addr6))
        return out


#: An entry of either mode (what the Relay Table holds).
AnyEntry = RssEntry | RsnEntry


def new_entry(dc_id: bytes, msg: RelayDirection, idle_timeout: float, now: float) -> AnyEntry:
    """The entry a valid Relay Direction sets up (``msg`` checked: RS-N with the path key, RS-S with
    the relay key)."""
    pid = msg.path_id
    if msg.rs_type == RsType.N:
        assert msg.path_key is not None
        keys = path_keys(msg.path_key, pid)
        sig, _data = keys.for_responder()
        return RsnEntry(pid, dc_id, idle_timeout, msg, now, now,
                        Leg(PathRole.INITIATOR, Channel(sig, pid), SignalFlags.FROM_RESPONDER),
                        data_keys=(keys.data_i2r, keys.data_r2i), vip_pairs=vip_pairs(msg))
    assert msg.relay_key is not None
    i_keys, r_keys = _leg_keys(msg.relay_key, pid)
    return RssEntry(pid, dc_id, idle_timeout, msg, now, now,
                    Leg(PathRole.INITIATOR, Channel(i_keys, pid), SignalFlags.FROM_RESPONDER),
                    responder=Leg(PathRole.RESPONDER, Channel(r_keys, pid), SignalFlags.NONE))


def _leg_keys(relay_key: bytes, pid: bytes) -> tuple[KeyPair, KeyPair]:
    """The RS's side of the initiator and responder legs' keys."""
    return (relay_leg_keys(relay_key, pid, responder_leg=False).swapped(),
            relay_leg_keys(relay_key, pid, responder_leg=True).swapped())


class RelayTable:
    """Relay Table entries by Path ID, the RS-S ones apart (the runtime's kernel fast path looks at
    those every second), the RS-N reply lookup by (node VIP, peer VIP), the keys ever used, and
    the idle heap. Counting and events are the core's."""

    def __init__(self) -> None:
        self.paths: dict[bytes, AnyEntry] = {}
        self.rs_s: dict[bytes, RssEntry] = {}
        #: RS-N reply lookup: (node VIP, peer VIP) packed -> entry.
        self.by_vips: dict[tuple[bytes, bytes], RsnEntry] = {}
        #: Path and relay keys this process has made sealers (channels, capsule sealers) under: a
        #: Relay Direction that would make another one under any of them is refused (docs/security.md §3).
        self.used_keys = UsedKeys(USED_KEYS_MAX)
        #: (when, seq, entry): lazy, an entry refreshed since is put back at its new deadline.
        self._idle: list[tuple[float, int, AnyEntry]] = []
        self._idle_seq = 0

    def __len__(self) -> int:
        return len(self.paths)

    def install(self, e: AnyEntry) -> None:
        self.paths[e.path_id] = e
        if isinstance(e, RssEntry):
            self.rs_s[e.path_id] = e
        else:
            for pair in e.vip_pairs:
                self.by_vips[pair] = e
        self._push_idle(e, e.deadline)

    def remove(self, e: AnyEntry) -> bool:
        """Take ``e`` out (False if it is not in the table)."""
        if self.paths.get(e.path_id) is not e:
            return False
        del self.paths[e.path_id]
        self.rs_s.pop(e.path_id, None)
        if isinstance(e, RsnEntry):
            for pair in e.vip_pairs:
                if self.by_vips.get(pair) is e:
                    del self.by_vips[pair]
        e.move(EntryState.REMOVED)
        return True

    def retime(self, e: AnyEntry, idle_timeout: float) -> None:
        """A new idle timeout for ``e`` (a shorter one is scheduled now)."""
        old, e.idle_timeout = e.idle_timeout, idle_timeout
        if idle_timeout < old:
            self._push_idle(e, e.deadline)

    def rekey(self, e: RssEntry, msg: RelayDirection, idle_timeout: float) -> None:
        """RS-S: the DC re-directed the path with a fresh relay key (docs/protocol.md §10): new leg
        keys, same legs and endpoints, so relaying goes on while the nodes announce themselves."""
        assert msg.relay_key is not None and e.direction.relay_key is not None
        e.retired_keys = (*e.retired_keys, e.direction.relay_key)[-RETIRED_KEYS_MAX:]
        e.direction = msg
        i_keys, r_keys = _leg_keys(msg.relay_key, e.path_id)
        e.initiator.channel = Channel(i_keys, e.path_id)
        e.responder.channel = Channel(r_keys, e.path_id)
        e.initiator.pending_txid = e.responder.pending_txid = None
        self.retime(e, idle_timeout)

    def next_expiry(self) -> float | None:
        """When the earliest entry may go idle (early if it was refreshed since: ``expire`` then
        reschedules it)."""
        return self._idle[0][0] if self._idle else None

    def idle_deadlines(self) -> list[float]:
        """Every scheduled idle check (stale ones included), for tests and status."""
        return [t for t, _, _ in self._idle]

    def expire(self, now: float) -> list[AnyEntry]:
        """Take out the entries idle past their deadline at ``now``, and return them."""
        heap = self._idle
        out: list[AnyEntry] = []
        while heap and heap[0][0] <= now:
            _, _, e = heapq.heappop(heap)
            if e.state is EntryState.REMOVED:
                continue
            if e.deadline <= now:
                self.remove(e)
                out.append(e)
            else:
                self._push_idle(e, e.deadline)
        return out

    def _push_idle(self, e: AnyEntry, when: float) -> None:
        self._idle_seq += 1
        heapq.heappush(self._idle, (when, self._idle_seq, e))


def vip_pairs(msg: RelayDirection) -> tuple[tuple[bytes, bytes], ...]:
    """Packed (node VIP, peer VIP) for each family the Relay Direction gives completely."""
    pairs: list[tuple[bytes, bytes]] = []
    if msg.node_vip4 and msg.peer_vip4 and msg.gn_addr4:
        pairs.append((ipaddress.IPv4Address(msg.node_vip4).packed, ipaddress.IPv4Address(msg.peer_vip4).packed))
    if msg.node_vip6 and msg.peer_vip6 and msg.gn_addr6:
        pairs.append((ipaddress.IPv6Address(msg.node_vip6).packed, ipaddress.IPv6Address(msg.peer_vip6).packed))
    return tuple(pairs)


def same_binding(a: RelayDirection, b: RelayDirection) -> bool:
    """Same keys, type and addressing: the same path (other fields may be refreshed)."""
    return (a.rs_type == b.rs_type and a.path_key == b.path_key and a.relay_key == b.relay_key
            and a.node_vip4 == b.node_vip4 and a.node_vip6 == b.node_vip6 and a.peer_vip4 == b.peer_vip4
            and a.peer_vip6 == b.peer_vip6 and a.gn_addr4 == b.gn_addr4 and a.gn_addr6 == b.gn_addr6)


def same_binding_but_relay_key(a: RelayDirection, b: RelayDirection) -> bool:
    """``same_binding`` with ``b``'s relay key taken as ``a``'s."""
    return same_binding(a, dataclasses.replace(b, relay_key=a.relay_key))


def _ep(ep: Endpoint | None) -> str | None:
    if ep is None:
        return None
    host, port = ep
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
