"""NAT traversal of one relayed path (issue 16): the sans-IO state machine that turns an RS-S path
into a DIRECT one when the DC offered punch candidates, and back to the relay when the direct path
goes silent.

States (explicit, TRAVERSAL_TRANSITIONS): OFFERED (candidates and start time from the DC, data flows
through the relay), PROBING (a probe to every candidate every PROBE_INTERVAL for up to PROBE_WINDOW),
DIRECT (a probe was acknowledged from the candidate it went to: the path's peer endpoint is that
candidate; Path ID, keys, counters and VIPs are unchanged), RELAYED (punch failed, or the direct path
went silent: data goes through the relay again, a retry is scheduled with backoff).

The machine only decides; the runtime seals probes on the path's own channel (so their nonces come
from the path's counter and no (key, nonce) is used twice), sends them from the tunnel socket and
feeds authenticated probes and acks back. Inputs that failed authentication never reach it except as
a count (``on_unauthenticated``); an ack from an address that was not probed is counted and ignored.

The relay leg: after the switch it is kept as a standby for RELAY_GRACE (capsules that still arrive
through the relay are accepted, a silent direct path falls back to it at once); then the node stops
its keepalives and releases the relay entry (StopRelayLeg: a relay-only Path Release to the DC, which
has the relay drop the entry and its keys). A fallback after that asks the DC for a plain RS-S
direction (AskDc with no_punch): a fresh relay key and entry.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass

from ntmobile.wire import Endpoint

from ..timing import RELAY_GRACE as RELAY_GRACE  # re-exported: the standby of the relay leg

#: Probe spacing and how long a punch is tried.
PROBE_INTERVAL = 0.07
PROBE_WINDOW = 3.0
#: A direct path with data sent and nothing received for this long gets a probe at once ...
SILENCE_PROBE = 0.5
#: ... and falls back to the relay after this long (≤ 2 s with the sampling period).
SILENCE_FALLBACK = 1.0
#: How often the runtime samples the sealer counter and the opener's replay-window top.
SAMPLE_INTERVAL = 0.1
#: One-sided fallback: after this long DIRECT (the peer switches within a probe interval and a round
#: trip of us) capsules that keep arriving only through the relay for RELAYED_FALLBACK mean the peer
#: went back to the relay (its direct path is silent, or it never got our ack): we follow it.
RELAYED_SETTLE = 1.0
RELAYED_FALLBACK = 0.3
#: The relay leg is kept as a standby this long after the switch (core.timing.RELAY_GRACE).
#: Retry backoff after a failed punch or a fallback: doubles from the first to the last.
BACKOFF_FIRST = 30.0
BACKOFF_MAX = 600.0


class TraversalState(enum.Enum):
    OFFERED = "offered"
    PROBING = "probing"
    DIRECT = "direct"
    RELAYED = "relayed"


TRAVERSAL_TRANSITIONS: dict[TraversalState, frozenset[TraversalState]] = {
    TraversalState.OFFERED: frozenset({TraversalState.PROBING, TraversalState.RELAYED}),
    TraversalState.PROBING: frozenset({TraversalState.DIRECT, TraversalState.RELAYED}),
    TraversalState.DIRECT: frozenset({TraversalState.RELAYED}),
    TraversalState.RELAYED: frozenset({TraversalState.OFFERED}),
}


class TraversalStateError(RuntimeError):
    """An illegal move of the traversal state (an internal error, never caused by input)."""


@dataclass(frozen=True, slots=True)
class SendProbe:
    """Seal a PATH_PROBE on the path's channel and send it from the tunnel socket to ``to``."""

    to: Endpoint


@dataclass(frozen=True, slots=True)
class SendProbeAck:
    """Answer an authenticated probe: a PATH_PROBE_ACK to the probe's source address."""

    to: Endpoint


@dataclass(frozen=True, slots=True)
class GoDirect:
    """Switch the path to DIRECT with ``peer`` as its endpoint (same Path ID, keys and counters)."""

    peer: Endpoint


@dataclass(frozen=True, slots=True)
class GoRelayed:
    """Switch the path back to its relay leg at once."""

    reason: str


@dataclass(frozen=True, slots=True)
class StopRelayLeg:
    """The grace period is over: stop the relay leg's keepalives, let the RS entry expire."""


@dataclass(frozen=True, slots=True)
class AskDc:
    """Send a Direction Request for this path: ``no_punch`` asks for a plain RS-S direction (the relay
    leg is gone); otherwise a retry of traversal (the DC times a new punch)."""

    no_punch: bool


Action = SendProbe | SendProbeAck | GoDirect | GoRelayed | StopRelayLeg | AskDc


class PathTraversal:
    """Traversal of one path. Every input takes ``now`` and returns the actions to carry out;
    ``deadline()`` is when ``on_timer`` wants to run next (None: nothing scheduled)."""

    def __init__(self, candidates: tuple[Endpoint, ...], start_at: float) -> None:
        self.state = TraversalState.OFFERED
        self.candidates = tuple(dict.fromkeys(candidates))
        self.start_at = start_at
        #: Why the path is relayed (``ntm status``), or the candidate being tried / in use.
        self.reason = "punch offered"
        self.trying: Endpoint | None = None
        self.peer: Endpoint | None = None
        self.relay_alive = True
        self.backoff = BACKOFF_FIRST
        self.stats: Counter[str] = Counter()
        self.direct_since: float | None = None
        #: When the path first went DIRECT (``ntm status``: time to direct from the path's creation).
        self.first_direct: float | None = None
        self._probe_end = 0.0
        self._next_probe = start_at
        self._probed: set[Endpoint] = set()
        #: Candidates sent a triggered probe in this attempt (one each).
        self._triggered: set[Endpoint] = set()
        self._retry_at: float | None = None
        self._grace_end: float | None = None
        self._next_sample: float | None = None
        self._last_tx: int | None = None
        self._last_rx: int | None = None
        self._silent_since: float | None = None
        self._silence_probed = False
        self._last_relayed: int | None = None
        self._last_direct: int | None = None
        self._relayed_since: float | None = None
        if not self.candidates:
            self._set(TraversalState.RELAYED)
            self.reason = "no candidates"

    # -- state ---------------------------------------------------------------------------------
    def _set(self, new: TraversalState) -> None:
        if new not in TRAVERSAL_TRANSITIONS[self.state]:
            raise TraversalStateError(f"{self.state.value} -> {new.value}")
        self.state = new

    def status(self) -> str:
        """The short text ``ntm status`` shows for the path."""
        if self.state is TraversalState.DIRECT:
            return "DIRECT (punched)"
        if self.state is TraversalState.PROBING and self.trying is not None:
            return f"RS_S (trying {self.trying[0]}:{self.trying[1]})"
        return f"RS_S ({self.reason})"

    def snapshot(self, created: float) -> dict[str, object]:
        """``ntm status``'s view: state, the text above, why relayed, the candidate being tried or in
        use, seconds from the path's creation to its first DIRECT, the counters."""
        ep = self.trying or self.peer
        return {"state": self.state.value, "status": self.status(), "reason": self.reason,
                "candidate": list(ep) if ep is not None else None,
                "candidates": [list(c) for c in self.candidates],
                "time_to_direct": None if self.first_direct is None else round(self.first_direct - created, 3),
                # on DIRECT: the relay leg is a standby until the grace period ends, then released
                "relay_leg": None if self.state is not TraversalState.DIRECT else (
                    "standby" if self._grace_end is not None else "released"),
                "stats": dict(self.stats)}

    def deadline(self) -> float | None:
        times: list[float] = []
        if self.state is TraversalState.OFFERED:
            times.append(self.start_at)
        elif self.state is TraversalState.PROBING:
            times.append(min(self._next_probe, self._probe_end))
        elif self.state is TraversalState.DIRECT:
            if self._next_sample is not None:
                times.append(self._next_sample)
            if self._grace_end is not None:
                times.append(self._grace_end)
        elif self._retry_at is not None:
            times.append(self._retry_at)
        return min(times) if times else None

    # -- inputs --------------------------------------------------------------------------------
    def offer(self, candidates: tuple[Endpoint, ...], start_at: float) -> list[Action]:
        """A new offer from the DC (a retry or a re-direction after a move) while relayed."""
        if self.state is not TraversalState.RELAYED or not candidates:
            return []
        self._set(TraversalState.OFFERED)
        self.candidates = tuple(dict.fromkeys(candidates))
        self.start_at = start_at
        self._next_probe = start_at
        self._retry_at = None
        self.reason = "punch offered"
        return []

    def on_timer(self, now: float) -> list[Action]:
        out: list[Action] = []
        if self.state is TraversalState.OFFERED and now >= self.start_at:
            self._set(TraversalState.PROBING)
            self._probe_end = now + PROBE_WINDOW
            self._next_probe = now
            self._triggered.clear()
        if self.state is TraversalState.PROBING:
            if now >= self._probe_end:
                out += self._fail("punch failed", now)
            elif now >= self._next_probe:
                for c in self.candidates:
                    self._probed.add(c)
                    out.append(SendProbe(c))
                self.trying = self.candidates[0]
                self._next_probe = now + PROBE_INTERVAL
                self.stats["probes_sent"] += len(self.candidates)
        elif self.state is TraversalState.DIRECT:
            if self._grace_end is not None and now >= self._grace_end:
                self._grace_end = None
                self.relay_alive = False
                out.append(StopRelayLeg())
        elif self.state is TraversalState.RELAYED and self._retry_at is not None and now >= self._retry_at:
            self._retry_at = None
            out.append(AskDc(no_punch=False))
        return out

    def on_probe(self, src: Endpoint, now: float) -> list[Action]:
        """An authenticated PATH_PROBE from ``src``: answered in any state (the peer is probing). While
        PROBING, a probe from a candidate also gets one probe of ours at once (a triggered probe): its
        arrival shows the peer's NAT is open toward us now, so the side whose earlier probes were
        dropped goes DIRECT a round trip after the other, not at its next PROBE_INTERVAL."""
        self.stats["probes_answered"] += 1
        out: list[Action] = [SendProbeAck(src)]
        if self.state is TraversalState.PROBING and src in self.candidates and src not in self._triggered:
            self._triggered.add(src)
            self._probed.add(src)
            out.append(SendProbe(src))
            self.stats["probes_triggered"] += 1
        return out

    def on_probe_ack(self, src: Endpoint, now: float) -> list[Action]:
        """An authenticated PATH_PROBE_ACK from ``src``."""
        if src not in self._probed:
            self.stats["probe_acks_unsolicited"] += 1
            return []
        if self.state is TraversalState.DIRECT:
            if src == self.peer:
                self._touch_rx(now)
            return []
        if self.state is not TraversalState.PROBING:
            return []
        self._set(TraversalState.DIRECT)
        self.peer = src
        self.trying = None
        self.reason = "direct"
        self.direct_since = now
        if self.first_direct is None:
            self.first_direct = now
        self.backoff = BACKOFF_FIRST
        self._grace_end = now + RELAY_GRACE
        self._next_sample = now + SAMPLE_INTERVAL
        self._last_tx = self._last_rx = None
        self._silent_since = None
        self._last_relayed = self._last_direct = None
        self._relayed_since = None
        self.stats["punched"] += 1
        return [GoDirect(src)]

    def on_unauthenticated(self) -> None:
        """A probe or ack that failed authentication: counted, nothing else (no state, no answer)."""
        self.stats["probe_auth_failed"] += 1

    def sample(self, now: float, tx_counter: int, rx_top: int, relayed: int = 0, direct: int = 0) -> list[Action]:
        """The path's sealer counter and opener replay-window top, sampled every SAMPLE_INTERVAL while
        DIRECT: data sent with nothing received for SILENCE_PROBE gets a probe, for SILENCE_FALLBACK
        the path falls back to the relay. ``relayed`` / ``direct``: the data plane's counts of capsules
        delivered from the relay and from elsewhere (LegWatch): after RELAYED_SETTLE, capsules arriving
        only through the relay for RELAYED_FALLBACK make the path fall back too (the peer did)."""
        if self.state is not TraversalState.DIRECT:
            return []
        self._next_sample = now + SAMPLE_INTERVAL
        if self._relayed_only(now, relayed, direct):
            return self._fail("peer relayed", now)
        if self._last_rx is None or rx_top != self._last_rx:
            self._last_rx = rx_top
            self._last_tx = tx_counter
            self._touch_rx(now)
            return []
        if tx_counter == self._last_tx:
            return []  # nothing sent, nothing expected
        if self._silent_since is None:
            self._silent_since = now
            return []
        silent = now - self._silent_since
        assert self.peer is not None
        if silent >= SILENCE_FALLBACK:
            return self._fail("direct silent", now)
        if silent >= SILENCE_PROBE and not self._silence_probed:
            self._silence_probed = True
            return [SendProbe(self.peer)]
        return []

    def on_move(self, now: float) -> list[Action]:
        """This node moved: traversal is tried again at once (backoff reset)."""
        out: list[Action] = []
        if self.state is TraversalState.DIRECT:
            out += self._fail("moved", now)
        elif self.state in (TraversalState.OFFERED, TraversalState.PROBING):
            self._set(TraversalState.RELAYED)
            self.reason = "moved"
            self._probed.clear()
        self.backoff = BACKOFF_FIRST
        self._retry_at = None
        out.append(AskDc(no_punch=False))
        return out

    def reset(self, reason: str) -> None:
        """The DC re-directed the path (a move, a dead relay): whatever was tried or in use is over, a
        new offer (or none) comes with the new Route Direction. No actions: the re-direction itself
        switched the path."""
        self._relayed(reason)
        self.relay_alive = True
        self._retry_at = None
        self.backoff = BACKOFF_FIRST

    # -- helpers -------------------------------------------------------------------------------
    def _relayed_only(self, now: float, relayed: int, direct: int) -> bool:
        last_r, last_d = self._last_relayed, self._last_direct
        self._last_relayed, self._last_direct = relayed, direct
        if last_r is None or last_d is None or direct != last_d or relayed == last_r:
            if direct != last_d:
                self._relayed_since = None
            return False
        assert self.direct_since is not None
        if now - self.direct_since < RELAYED_SETTLE:
            return False
        if self._relayed_since is None:
            self._relayed_since = now
        return now - self._relayed_since >= RELAYED_FALLBACK

    def _touch_rx(self, now: float) -> None:
        self._silent_since = None
        self._silence_probed = False

    def _relayed(self, reason: str) -> None:
        """To RELAYED (if not there yet): nothing tried, nothing in use, no samples, no grace."""
        if self.state is not TraversalState.RELAYED:
            self._set(TraversalState.RELAYED)
        self.reason = reason
        self.trying = None
        self.peer = None
        self._next_sample = None
        self._grace_end = None
        self._probed.clear()

    def _fail(self, reason: str, now: float) -> list[Action]:
        was_direct = self.state is TraversalState.DIRECT
        self._relayed(reason)
        self._retry_at = now + self.backoff
        self.backoff = min(BACKOFF_MAX, self.backoff * 2)
        self.stats["fallbacks" if was_direct else "punch_failed"] += 1
        out: list[Action] = []
        if was_direct:
            out.append(GoRelayed(reason))
            if not self.relay_alive:
                out.append(AskDc(no_punch=True))
                self.relay_alive = True
        return out
