"""The events DcCore returns to its runtime: registrations, resolutions and verifications it asks
for, decisions for the log, relays lost, NAT probes and classifications, peer-DC notes."""

from __future__ import annotations

from dataclasses import dataclass

from ntmobile.wire import Endpoint, NatKind, PathMode, Role, Status

from ..common import Event


@dataclass(frozen=True, slots=True)
class ClientRegistered(Event):
    name: str
    role: Role
    vip4: str | None
    vip6: str | None
    observed: Endpoint
    nat: NatKind


@dataclass(frozen=True, slots=True)
class RegistrationRejected(Event):
    name: str
    status: Status
    reason: str


@dataclass(frozen=True, slots=True)
class ResolveRequest(Event):
    token: int
    fqdn: str


@dataclass(frozen=True, slots=True)
class DirectionDecision(Event):
    """One set-up decision and its evidence, for the log."""

    node: str
    fqdn: str
    status: Status
    mode: PathMode | None
    rs: str | None
    path_id: bytes | None
    evidence: tuple[str, ...]
    #: From the Direction Request (or Peer Query) to this decision, seconds (None: not timed).
    elapsed: float | None = None


@dataclass(frozen=True, slots=True)
class RelayLost(Event):
    name: str


@dataclass(frozen=True, slots=True)
class ProbeDatagram(Event):
    """Send ``data`` to ``addr`` from the DC's probe socket (NAT classification), or from its filter
    socket (the probe port + 1, which nobody ever sends to) when ``filter`` is set."""

    data: bytes
    addr: Endpoint
    filter: bool = False


@dataclass(frozen=True, slots=True)
class NatClassified(Event):
    name: str
    kind: NatKind
    evidence: str


@dataclass(frozen=True, slots=True)
class VerifyPeerDc(Event):
    """Look up the DC marker TXT at the apex of ``domain`` and call ``peer_dc_verified(token, key)``
    with the key it names (None if there is no valid marker)."""

    token: int
    domain: str
    key: bytes


@dataclass(frozen=True, slots=True)
class PeerDcNote(Event):
    """Something about a peer DC worth logging (verified, refused)."""

    peer: str
    text: str
