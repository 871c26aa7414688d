"""In-memory network for the sans-IO cores: routes datagrams between cores by address, with an
injected clock, optional NAT (address rewriting) and programmable loss. No sockets."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ntmobile.core.targets import DOCUMENTATION_NETS

Endpoint = tuple[str, int]

#: The harness's "internet" is documentation space (RFC 5737, RFC 3849), which an RS-N refuses by
#: default (docs/security.md, "RS-N targets"): the DCs and relays of the tests allow-list it, as the
#: lab's configs do.
TEST_NETS = DOCUMENTATION_NETS


class SansIO(Protocol):
    def receive_datagram(self, data: bytes, addr: Endpoint, now: float) -> None: ...
    def datagrams_to_send(self) -> list[Any]: ...
    def next_event(self) -> Any: ...
    def get_timer(self) -> float | None: ...
    def handle_timer(self, now: float) -> None: ...


@dataclass
class Host:
    name: str
    core: SansIO
    addr: Endpoint
    public: Endpoint | None = None  # NAT mapping: what the world sees
    events: list[Any] = field(default_factory=list)


@dataclass
class Net:
    now: float = 1000.0
    hosts: dict[str, Host] = field(default_factory=dict)
    drop: Callable[[str, str, bytes], bool] | None = None
    delivered: int = 0
    dropped: int = 0
    log: list[tuple[float, str, str, int]] = field(default_factory=list)
    sent_by: dict[str, list[bytes]] = field(default_factory=lambda: defaultdict(list))

    def add(self, name: str, core: SansIO, addr: Endpoint, public: Endpoint | None = None) -> Host:
        h = Host(name, core, addr, public)
        self.hosts[name] = h
        return h

    def _by_dest(self, dest: Endpoint) -> Host | None:
        for h in self.hosts.values():
            if dest in (h.addr, h.public):
                return h
        return None

    def pump_events(self) -> None:
        for h in self.hosts.values():
            while (ev := h.core.next_event()) is not None:
                h.events.append(ev)

    def step(self) -> bool:
        """Deliver every queued datagram once. Returns True if anything moved."""
        self.pump_events()
        moved = False
        for h in list(self.hosts.values()):
            for dg in h.core.datagrams_to_send():
                moved = True
                self.sent_by[h.name].append(dg.data)
                dest = self._by_dest(dg.addr)
                if dest is None:
                    self.dropped += 1
                    continue
                if self.drop is not None and self.drop(h.name, dest.name, dg.data):
                    self.dropped += 1
                    continue
                src = h.public or h.addr
                self.log.append((self.now, h.name, dest.name, len(dg.data)))
                self.delivered += 1
                dest.core.receive_datagram(dg.data, src, self.now)
        self.pump_events()
        return moved

    def run_until(self, cond: Callable[[], bool], *, max_time: float = 60.0) -> None:
        """Run (delivering datagrams, firing timers in time order) until ``cond()`` or ``max_time``
        of simulated time has passed; AssertionError on timeout."""
        deadline = self.now + max_time
        while True:
            while self.step():
                if cond():
                    return
            if cond():
                return
            timers = [t for h in self.hosts.values() if (t := h.core.get_timer()) is not None]
            if not timers:
                raise AssertionError("no datagrams in flight and no timers: the exchange is stuck")
            nxt = max(min(timers), self.now)
            if nxt > deadline:
                raise AssertionError(f"condition not met within {max_time} s of simulated time")
            self.now = nxt
            for h in self.hosts.values():
                t = h.core.get_timer()
                if t is not None and t <= self.now:
                    h.core.handle_timer(self.now)

    def run_for(self, seconds: float) -> None:
        """Let ``seconds`` of simulated time pass, delivering datagrams and firing timers."""
        end = self.now + seconds
        while True:
            while self.step():
                pass
            timers = [t for h in self.hosts.values() if (t := h.core.get_timer()) is not None]
            nxt = min(timers) if timers else None
            if nxt is None or nxt > end:
                self.now = end
                return
            self.now = max(nxt, self.now)
            for h in self.hosts.values():
                t = h.core.get_timer()
                if t is not None and t <= self.now:
                    h.core.handle_timer(self.now)

    def events_of(self, name: str, cls: type) -> list[Any]:
        return [e for e in self.hosts[name].events if isinstance(e, cls)]


def random_loss(rate: float, seed: int) -> Callable[[str, str, bytes], bool]:
    rng = random.Random(seed)
    return lambda src, dst, data: rng.random() < rate


def seeded_bytes(seed: int) -> Callable[[int], bytes]:
    rng = random.Random(seed)
    return lambda n: rng.randbytes(n)
