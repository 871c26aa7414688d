"""The DC's session table: one session per registered node or relay (its channel, endpoints, NAT,
load, liveness), the relays among them, and the long-term channels of enrolled clients."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from ntmobile.crypto import Channel, CounterFloor, long_term_keys
from ntmobile.wire import Endpoint, NatKind, Role

from ..registry import ClientRecord

#: Long-term channels kept in memory (least recently used first out). A dropped one is rebuilt from
#: the registry (its replay floor is the last registration's sequence number) on the next message.
LONG_TERM_CACHE = 4096


@dataclass(slots=True)
class _Session:
    record: ClientRecord
    channel: Channel
    endpoint: Endpoint
    local_endpoints: tuple[Endpoint, ...]
    nat: NatKind
    last_seen: float
    capabilities: int
    #: The registration that made this session: its txid and the client ephemeral's first 8 bytes in
    #: one integer (a retransmitted request gets the same response again, rebuilt from the session),
    #: the DC ephemeral and the probe endpoint it announced.
    reg_tag: int = 0
    #: The client process (RegistrationRequest INSTANCE; without one, every registration counts as a
    #: new process): a path key is only ever given again to the instance that holds it.
    instance: bytes = b""
    dc_eph: bytes = b""
    probe: Endpoint | None = None
    load: int = 0
    alive: bool = True
    #: NAT classification by the probes (None: not measured, use ``nat``).
    measured: NatKind | None = None
    filter_txid: int = 0
    filter_open: bool = False
    mapping_same: bool | None = None
    #: Smoothed round trip to the client (seconds; None: not measured yet), from the DC's own requests
    #: it answered at the first attempt (Route Direction -> Ack): times the NAT punch (dc/paths.py).
    rtt: float | None = None

    def rtt_sample(self, sample: float) -> None:
        """One round-trip sample: the first is taken as is, later ones smoothed (1/8, as TCP's SRTT)."""
        sample = max(0.0, sample)
        self.rtt = sample if self.rtt is None else self.rtt + (sample - self.rtt) / 8

    @property
    def nat_class(self) -> NatKind:
        """The NAT classification directions use: the probes' if measured, else the registration's."""
        return self.measured if self.measured is not None else self.nat


class SessionTable:
    """Sessions by client ID, the relays among them, and the long-term channel cache."""

    def __init__(self, dc_id: bytes, counter: CounterFloor) -> None:
        self._dc_id = dc_id
        self._counter = counter
        self.by_id: dict[bytes, _Session] = {}
        #: IDs of the relays among the sessions (relays() must not scan every node's session).
        self._relay_ids: dict[bytes, None] = {}
        self._lt: OrderedDict[bytes, Channel] = OrderedDict()

    def __len__(self) -> int:
        return len(self.by_id)

    def get(self, client_id: bytes) -> _Session | None:
        return self.by_id.get(client_id)

    def add(self, session: _Session) -> None:
        cid = session.record.client_id
        self.by_id[cid] = session
        if session.record.role is Role.RELAY:
            self._relay_ids[cid] = None

    def remove(self, session: _Session) -> None:
        """Forget ``session`` (if it is still the client's session)."""
        cid = session.record.client_id
        if self.by_id.get(cid) is session:
            del self.by_id[cid]
            self._relay_ids.pop(cid, None)

    def relays(self) -> list[_Session]:
        """The live relays."""
        return [s for s in self.all_relays() if s.alive]

    def all_relays(self) -> list[_Session]:
        return [s for cid in self._relay_ids if (s := self.by_id.get(cid)) is not None]

    def relay_named(self, name: str) -> _Session | None:
        return next((s for s in self.all_relays() if s.record.name == name), None)

    def long_term(self, record: ClientRecord) -> Channel:
        """The long-term channel of ``record`` (fresh from the registry). Every long-term channel draws
        its send counter from the DC's persisted CounterFloor, so a rebuilt channel (eviction, restart)
        never reuses a sequence number, whatever the clock does."""
        lt = self._lt
        ch = lt.get(record.client_id)
        if ch is None:
            ch = Channel(long_term_keys(record.psk, record.client_id).swapped(), self._dc_id,
                         counter=self._counter, recv_floor=record.last_seq)
            lt[record.client_id] = ch
            if len(lt) > LONG_TERM_CACHE:
                lt.popitem(last=False)
        else:
            lt.move_to_end(record.client_id)
        return ch

    def long_term_cached(self, client_id: bytes) -> bool:
        """Whether the long-term channel of ``client_id`` is in the cache."""
        return client_id in self._lt

    def listing(self) -> list[dict[str, object]]:
        return [{"name": s.record.name, "role": s.record.role.name, "vip4": s.record.vip4, "vip6": s.record.vip6,
                 "endpoint": list(s.endpoint), "nat": s.nat.name, "nat_class": s.nat_class.name,
                 "load": s.load, "alive": s.alive,
                 "rtt_ms": None if s.rtt is None else round(s.rtt * 1000, 1)}
                for s in self.by_id.values()]
