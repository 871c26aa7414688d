"""The events the relay core gives its runtime: registration outcomes, Relay Table changes and
distance-probe requests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ntmobile.wire import Endpoint, PathRole

from ..common import Event

if TYPE_CHECKING:
    from .table import RelayEntry


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
