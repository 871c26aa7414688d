"""Busy-path liveness: a dead relay noticed within two seconds while data flows (issue 20).

The keepalive chain (tunnel.py) notices a dead relay one keepalive interval plus up to 3 s on: 18 s
behind a NAT, 43 s for a global node. A path that carries data knows sooner: every LIVENESS_SAMPLE
seconds the node reads each relayed path's data counters (the sealer's send counter, the opener's
replay-window top). Data sent but nothing authenticated received for LIVENESS_SILENCE: a path
Keepalive goes out at once (the relay answers it itself, whatever the far end does). Neither its
answer nor any data within LIVENESS_PROBE_LOSS: the relay is lost, handled as a lost keepalive
(``_relay_lost``: RS-N closed and set up again by the DC on a live relay, RS-S re-directed).

No false positives: an idle path (nothing sent) and a path with replies never probe; a probe
answered proves the relay alive. All durations are node *run time*: a sample later than
LIVENESS_MAX_CREDIT (the event loop stalled, e.g. a loaded CI machine) counts only that much, so a
stall of the node itself never looks like silence of the relay (docs/protocol.md §10, timers).

Sans-IO: the counters and ``now`` in, a Keepalive and the relay-failure handling out.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ntmobile.wire import Endpoint, Keepalive, PathMode, PathRole, RouteDirection

from ..common import Timer, _Pending, new_txid
from ..timing import (
    LIVENESS_MAX_CREDIT,
    LIVENESS_PROBE_LOSS,
    LIVENESS_SAMPLE,
    LIVENESS_SILENCE,
    MOVED_GRACE,
)
from .direction import NodeDirections
from .paths import KeepaliveTag, _Path

#: How long the probe is retransmitted (its loss is judged by the sampler, in run time).
_PROBE_GIVE_UP = 10.0


@dataclass(slots=True)
class _Watch:
    """What the sampler last saw of one path."""

    sent: int
    received: int
    #: Data was sent since the last data received (or answered probe): an answer is due.
    armed: bool = False
    #: Run time since then with nothing received.
    silence: float = 0.0
    probe: _Pending | None = None
    probe_at: float = 0.0  # run time the probe left


class NodeLiveness(NodeDirections):
    """The sampler of relayed paths (mixed into NodeCore)."""

    def _init_liveness(self, now: float) -> None:
        self._watches: dict[bytes, _Watch] = {}
        self._live_timer: Timer | None = None
        self._live_last = now
        #: Node run time: wall time between samples, each gap counted up to LIVENESS_MAX_CREDIT.
        self._run_time = 0.0

    @staticmethod
    def _watched(path: _Path) -> bool:
        return path.established and path.mode is not PathMode.DIRECT and path.endpoint is not None

    def _ensure_sampler(self) -> None:
        if self._live_timer is None and any(self._watched(p) for p in self._paths.values()):
            self._live_last = self._now_hint
            self._live_timer = self._call_at(self._now_hint + LIVENESS_SAMPLE, self._sample)

    # hooks: a path that becomes established or is re-directed may need the sampler
    def _establish(self, path: _Path, addr: Endpoint | None = None) -> None:
        super()._establish(path, addr)
        self._ensure_sampler()

    def _redirected(self, path: _Path, rd: RouteDirection, role: PathRole, mode: PathMode, now: float) -> None:
        # a new relay (or DIRECT): what was seen of the old one no longer counts
        w = self._watches.pop(path.path_id, None)
        if w is not None:
            self._cancel_request(w.probe)
        super()._redirected(path, rd, role, mode, now)
        self._ensure_sampler()

    def _relay_lost(self, path: _Path, now: float, reason: str) -> None:
        w = self._watches.pop(path.path_id, None)
        if w is not None:
            self._cancel_request(w.probe)
        super()._relay_lost(path, now, reason)
        self._ensure_sampler()

    def _sample(self, now: float) -> None:
        self._live_timer = None
        gap = now - self._live_last
        self._live_last = now
        if gap > LIVENESS_MAX_CREDIT:
            self.stats["liveness_stalls"] += 1
        dt = min(max(gap, 0.0), LIVENESS_MAX_CREDIT)
        self._run_time += dt
        for pid in [pid for pid in self._watches if pid not in self._paths]:
            self._cancel_request(self._watches.pop(pid).probe)
        lost: list[_Path] = []
        for path in list(self._paths.values()):
            if not self._watched(path):
                w0 = self._watches.pop(path.path_id, None)
                if w0 is not None:
                    self._cancel_request(w0.probe)
                continue
            if self._check(path, now, dt):
                lost.append(path)
        for path in lost:
            if self._paths.get(path.path_id) is path:
                self.stats["liveness_relay_lost"] += 1
                self._relay_lost(path, now, "the relay stopped answering a busy path")
        if any(self._watched(p) for p in self._paths.values()) and self._live_timer is None:
            self._live_timer = self._call_at(now + LIVENESS_SAMPLE, self._sample)

    def _check(self, path: _Path, now: float, dt: float) -> bool:
        """One sample of ``path``; True when its relay is lost."""
        sent, received = path.sealer.counter, path.opener.window.top
        w = self._watches.get(path.path_id)
        if w is None:
            self._watches[path.path_id] = _Watch(sent, received)
            return False
        sent_now = sent != w.sent
        w.sent = sent
        if received != w.received or (w.probe is not None and self._pending.get(w.probe.key) is not w.probe):
            # data came in, or the probe was answered: alive. Data sent within the same sample may
            # have left after the last arrival (a download's last ACKs): it still waits for an answer.
            w.received, w.silence, w.armed = received, 0.0, sent_now
            self._cancel_request(w.probe)
            w.probe = None
            return False
        if w.armed:
            w.silence += dt
        w.armed = w.armed or sent_now
        if w.probe is None:
            if w.silence >= LIVENESS_SILENCE and path.endpoint is not None:
                self.stats["liveness_probes"] += 1
                w.probe = self._request(path.sig, Keepalive(), new_txid(self._rand), path.endpoint, now,
                                        timeout=_PROBE_GIVE_UP, flags=self._sig_flags(path),
                                        tag=KeepaliveTag(path.path_id),
                                        on_timeout=functools.partial(self._probe_gave_up, path.path_id))
                w.probe_at = self._run_time
            return False
        if self._run_time - w.probe_at < LIVENESS_PROBE_LOSS:
            return False
        self._cancel_request(w.probe)
        w.probe, w.silence = None, 0.0
        if now - self._moved_at < MOVED_GRACE:
            # just moved: the answer may have gone to the address we left
            self.stats["liveness_lost_after_move"] += 1
            return False
        return True

    def _probe_gave_up(self, path_id: bytes, now: float) -> None:
        w = self._watches.get(path_id)
        if w is not None:
            w.probe = None
