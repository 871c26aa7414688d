"""A debug timing trace (``NTM_TRACE=1`` in a daemon's environment): timestamped marks of the
signalling datagrams a daemon reads and sends (not data capsules), of the node's DNS stub (query
read, answer sent) and of the DC's discovery and registry commits, kept in a ring and shown by the
daemon's status (``trace``). ``ntm bench setup`` merges the traces of mn and the DCs into a
breakdown of a path's set-up (docs/dataplane.md, "Where a path's set-up goes").

The clock is ``time.monotonic()`` (CLOCK_MONOTONIC, shared by every network namespace of a host), so
the marks of the daemons of one lab line up. Off by default: a daemon without the variable pays one
``is None`` test per datagram.
"""

from __future__ import annotations

import os
import time
from collections import deque
from typing import Any

from ntmobile.wire import MessageType

ENV = "NTM_TRACE"
#: Marks kept (the oldest go first).
TRACE_MAX = 2048


class Trace:
    def __init__(self, maxlen: int = TRACE_MAX) -> None:
        self.marks: deque[dict[str, Any]] = deque(maxlen=maxlen)

    def mark(self, what: str, **fields: Any) -> None:
        self.marks.append({"t": time.monotonic(), "what": what, **fields})

    def datagram(self, direction: str, data: bytes, addr: tuple[str, int]) -> None:
        """A signalling datagram read ("recv") or sent ("send"); data capsules are left out."""
        if len(data) < 2 or data[1] == MessageType.DATA:
            return
        try:
            kind = MessageType(data[1]).name
        except ValueError:
            kind = f"0x{data[1]:02x}"
        self.marks.append({"t": time.monotonic(), "what": direction, "type": kind, "peer": f"{addr[0]}:{addr[1]}"})

    def snapshot(self) -> list[dict[str, Any]]:
        return list(self.marks)


def from_env() -> Trace | None:
    """A trace if ``NTM_TRACE=1`` is set, else None."""
    return Trace() if os.environ.get(ENV) == "1" else None
