"""Typed signalling messages and their attribute schemas.

Each message is a frozen dataclass. Its fields map one-to-one onto attributes (see tlv.Attr) by the
``attr`` metadata; ``required`` fields must be present when decoding, ``list`` fields are repeated
attributes. docs/protocol.md lists every message with its attributes and sizes.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .constants import MessageType
from .errors import CodecError
from .tlv import DECODERS, ENCODERS, Attr, Endpoint, Kind


def _f(attr: Attr, kind: Kind, *, required: bool = False, default: Any = None) -> Any:
    return field(default=default, metadata={"attr": attr, "kind": kind, "required": required})


def _rep(attr: Attr, kind: Kind) -> Any:
    return field(default_factory=tuple, metadata={"attr": attr, "kind": kind, "repeated": True})


@dataclass(frozen=True, slots=True)
class Message:
    """Base class of signalling message bodies."""

    TYPE: ClassVar[MessageType]


@dataclass(frozen=True, slots=True)
class RegistrationRequest(Message):
    """Node (or relay server) → DC. Sealed with the long-term keys; starts a session."""

    TYPE: ClassVar[MessageType] = MessageType.REGISTRATION_REQUEST
    role: int = _f(Attr.ROLE, Kind.U8, required=True)
    name: str = _f(Attr.NAME, Kind.STR, required=True)
    ephemeral: bytes = _f(Attr.EPHEMERAL, Kind.KEY32, required=True)
    versions: tuple[int, int] = _f(Attr.VERSIONS, Kind.VERSIONS, required=True)
    local_endpoints: tuple[Endpoint, ...] = _rep(Attr.LOCAL_ENDPOINT, Kind.ENDPOINT)
    capabilities: int = _f(Attr.CAPABILITIES, Kind.U32, default=0)
    load: int | None = _f(Attr.LOAD, Kind.U32)
    #: 8 random bytes made when the client process starts: a registration with another instance means
    #: the client restarted (all its paths and counters are new), one with the same instance that it
    #: only registered again (handover, REREGISTER). The DC never hands a restarted client a path key.
    instance: bytes | None = _f(Attr.INSTANCE, Kind.ID8)
    #: The highest counter the client has accepted under the DC's long-term key (its replay window's
    #: top). DC replicas share that key and seal from disjoint counter blocks: a replica whose block
    #: is below this value moves above it before it answers, or the client would drop the answer.
    recv_floor: int | None = _f(Attr.RECV_FLOOR, Kind.U64)


@dataclass(frozen=True, slots=True)
class RegistrationResponse(Message):
    """DC → node or relay. Sealed with the long-term keys; completes the session handshake."""

    TYPE: ClassVar[MessageType] = MessageType.REGISTRATION_RESPONSE
    ephemeral: bytes = _f(Attr.EPHEMERAL, Kind.KEY32, required=True)
    version: int = _f(Attr.VERSION, Kind.U8, required=True)
    observed: Endpoint = _f(Attr.OBSERVED_ENDPOINT, Kind.ENDPOINT, required=True)
    nat: int = _f(Attr.NAT, Kind.U8, required=True)
    keepalive: int = _f(Attr.KEEPALIVE, Kind.U16, required=True)
    vip4: str | None = _f(Attr.VIP4, Kind.IP4)
    vip6: str | None = _f(Attr.VIP6, Kind.IP6)
    name: str | None = _f(Attr.NAME, Kind.STR)
    #: The DC's probe endpoint: a NATed node sends a Keepalive there so the DC can classify its NAT.
    probe: Endpoint | None = _f(Attr.PROBE_ENDPOINT, Kind.ENDPOINT)


@dataclass(frozen=True, slots=True)
class DirectionRequest(Message):
    """Node → its DC: set up a path to the peer named ``fqdn`` (or to ``peer_vip4/6``)."""

    TYPE: ClassVar[MessageType] = MessageType.DIRECTION_REQUEST
    fqdn: str | None = _f(Attr.FQDN, Kind.STR)
    peer_vip4: str | None = _f(Attr.PEER_VIP4, Kind.IP4)
    peer_vip6: str | None = _f(Attr.PEER_VIP6, Kind.IP6)
    capabilities: int = _f(Attr.CAPABILITIES, Kind.U32, default=0)
    #: Re-direction after a handover: decide this existing path again (same ID, keys and roles).
    path_id: bytes | None = _f(Attr.PATH_ID, Kind.ID8)
    #: 1: a direct (punched) path failed: direct this path as plain RS-S, no punch candidates.
    no_punch: int | None = _f(Attr.NO_PUNCH, Kind.U8)
    #: 1, with ``path_id`` of an RS-N path (issue 20, RS-N pair): this node now sends on that path
    #: (it switched to it as its standby leg, or its standby leg was lost): install a new standby leg
    #: at the other relay of the pair once it is up.
    standby: int | None = _f(Attr.STANDBY, Kind.U8)


@dataclass(frozen=True, slots=True)
class RelayDirection(Message):
    """DC → RS: prepare to relay a path (the paper's NTM Relay Direction, with the RS type)."""

    TYPE: ClassVar[MessageType] = MessageType.RELAY_DIRECTION
    path_id: bytes = _f(Attr.PATH_ID, Kind.ID8, required=True)
    rs_type: int = _f(Attr.RS_TYPE, Kind.U8, required=True)
    idle_timeout: int = _f(Attr.IDLE_TIMEOUT, Kind.U16, required=True)
    #: RS-N: the end-to-end path key (the RS-N terminates the tunnel). Absent for RS-S.
    path_key: bytes | None = _f(Attr.PATH_KEY, Kind.KEY32)
    #: RS-S: the relay key that authenticates each leg's tunnel signalling. Absent for RS-N.
    relay_key: bytes | None = _f(Attr.RELAY_KEY, Kind.KEY32)
    node_vip4: str | None = _f(Attr.NODE_VIP4, Kind.IP4)
    node_vip6: str | None = _f(Attr.NODE_VIP6, Kind.IP6)
    #: RS-N: the VIP that stands for the general node, and the GN's real address.
    peer_vip4: str | None = _f(Attr.PEER_VIP4, Kind.IP4)
    peer_vip6: str | None = _f(Attr.PEER_VIP6, Kind.IP6)
    gn_addr4: str | None = _f(Attr.GN_ADDR4, Kind.IP4)
    gn_addr6: str | None = _f(Attr.GN_ADDR6, Kind.IP6)
    #: Where the initiator's tunnel signalling is expected from (NAT-observed), informative.
    node_endpoint: Endpoint | None = _f(Attr.NODE_ENDPOINT, Kind.ENDPOINT)
    responder_endpoint: Endpoint | None = _f(Attr.RESPONDER_ENDPOINT, Kind.ENDPOINT)
    capabilities: int = _f(Attr.CAPABILITIES, Kind.U32, default=0)
    #: 1 (RS-N): the standby leg of an RS-N pair (issue 20): accepted while this relay is the pair's
    #: standby (the shared address at the other relay), which refuses other new RS-N paths.
    standby: int | None = _f(Attr.STANDBY, Kind.U8)


@dataclass(frozen=True, slots=True)
class DirectionResponse(Message):
    """RS → DC: the relay entry is ready (status OK) or refused (status, reason)."""

    TYPE: ClassVar[MessageType] = MessageType.DIRECTION_RESPONSE
    path_id: bytes = _f(Attr.PATH_ID, Kind.ID8, required=True)
    load: int = _f(Attr.LOAD, Kind.U32, default=0)
    capabilities: int = _f(Attr.CAPABILITIES, Kind.U32, default=0)
    #: Only from a DC replica that relayed the Relay Direction to one of its relays: which one, where.
    rs_endpoint: Endpoint | None = _f(Attr.RS_ENDPOINT, Kind.ENDPOINT)
    rs_name: str | None = _f(Attr.RS_NAME, Kind.STR)


@dataclass(frozen=True, slots=True)
class RouteDirection(Message):
    """DC → node: build the tunnel for a path. Answers the initiator's Direction Request (same
    transaction ID); sent as a new request to a responder node, which acknowledges it."""

    TYPE: ClassVar[MessageType] = MessageType.ROUTE_DIRECTION
    path_id: bytes = _f(Attr.PATH_ID, Kind.ID8, required=True)
    path_role: int = _f(Attr.PATH_ROLE, Kind.U8, required=True)
    mode: int = _f(Attr.MODE, Kind.U8, required=True)
    path_key: bytes = _f(Attr.PATH_KEY, Kind.KEY32, required=True)
    idle_timeout: int = _f(Attr.IDLE_TIMEOUT, Kind.U16, required=True)
    keepalive: int = _f(Attr.KEEPALIVE, Kind.U16, default=0)
    peer_name: str | None = _f(Attr.PEER_NAME, Kind.STR)
    peer_vip4: str | None = _f(Attr.PEER_VIP4, Kind.IP4)
    peer_vip6: str | None = _f(Attr.PEER_VIP6, Kind.IP6)
    #: Where to send Tunnel Requests (peer or RS), in order of preference. Empty for a responder
    #: that must wait for the initiator.
    peer_endpoints: tuple[Endpoint, ...] = _rep(Attr.PEER_ENDPOINT, Kind.ENDPOINT)
    rs_endpoint: Endpoint | None = _f(Attr.RS_ENDPOINT, Kind.ENDPOINT)
    rs_name: str | None = _f(Attr.RS_NAME, Kind.STR)
    relay_key: bytes | None = _f(Attr.RELAY_KEY, Kind.KEY32)
    capabilities: int = _f(Attr.CAPABILITIES, Kind.U32, default=0)
    #: NAT traversal of an RS-S path: the peer's candidates (observed, then local endpoints) and the
    #: milliseconds after this message until the node starts probing them.
    punch_endpoints: tuple[Endpoint, ...] = _rep(Attr.PUNCH_ENDPOINT, Kind.ENDPOINT)
    punch_delay: int | None = _f(Attr.PUNCH_DELAY, Kind.U16)
    #: RS-N pair (issue 20): the path's standby leg at the pair's other relay, with its own Path ID
    #: and its own key (never the path's): where the node switches by itself if the relay dies.
    standby_path_id: bytes | None = _f(Attr.STANDBY_PATH_ID, Kind.ID8)
    standby_key: bytes | None = _f(Attr.STANDBY_KEY, Kind.KEY32)
    standby_rs_endpoint: Endpoint | None = _f(Attr.STANDBY_RS_ENDPOINT, Kind.ENDPOINT)
    standby_rs_name: str | None = _f(Attr.STANDBY_RS_NAME, Kind.STR)


@dataclass(frozen=True, slots=True)
class RouteDirectionAck(Message):
    TYPE: ClassVar[MessageType] = MessageType.ROUTE_DIRECTION_ACK
    path_id: bytes = _f(Attr.PATH_ID, Kind.ID8, required=True)


@dataclass(frozen=True, slots=True)
class TunnelRequest(Message):
    """Node → peer or RS, sealed with the path's (or the relay leg's) keys; header ID = Path ID."""

    TYPE: ClassVar[MessageType] = MessageType.TUNNEL_REQUEST
    capabilities: int = _f(Attr.CAPABILITIES, Kind.U32, default=0)
    vip4: str | None = _f(Attr.VIP4, Kind.IP4)
    vip6: str | None = _f(Attr.VIP6, Kind.IP6)


@dataclass(frozen=True, slots=True)
class TunnelResponse(Message):
    TYPE: ClassVar[MessageType] = MessageType.TUNNEL_RESPONSE
    capabilities: int = _f(Attr.CAPABILITIES, Kind.U32, default=0)
    observed: Endpoint | None = _f(Attr.OBSERVED_ENDPOINT, Kind.ENDPOINT)


@dataclass(frozen=True, slots=True)
class Keepalive(Message):
    TYPE: ClassVar[MessageType] = MessageType.KEEPALIVE
    load: int | None = _f(Attr.LOAD, Kind.U32)


@dataclass(frozen=True, slots=True)
class KeepaliveAck(Message):
    TYPE: ClassVar[MessageType] = MessageType.KEEPALIVE_ACK
    observed: Endpoint | None = _f(Attr.OBSERVED_ENDPOINT, Kind.ENDPOINT)
    #: DC → node on a session Keepalive: the node's NAT as the DC classifies it now (NatKind).
    nat: int | None = _f(Attr.NAT, Kind.U8)


@dataclass(frozen=True, slots=True)
class StatusMessage(Message):
    """Error/status reply to the request with the same transaction ID (header status != 0)."""

    TYPE: ClassVar[MessageType] = MessageType.STATUS
    answers: int = _f(Attr.ANSWERS, Kind.U8, required=True)
    reason: str = _f(Attr.REASON, Kind.STR, default="")


@dataclass(frozen=True, slots=True)
class PeerQuery(Message):
    """DC → DC: my node ``name`` wants a path to your node ``fqdn``."""

    TYPE: ClassVar[MessageType] = MessageType.PEER_QUERY
    fqdn: str = _f(Attr.FQDN, Kind.STR, required=True)
    name: str = _f(Attr.NAME, Kind.STR, required=True)
    path_id: bytes = _f(Attr.PATH_ID, Kind.ID8, required=True)
    path_key: bytes = _f(Attr.PATH_KEY, Kind.KEY32, required=True)
    relay_key: bytes = _f(Attr.RELAY_KEY, Kind.KEY32, required=True)
    timestamp: int = _f(Attr.TIMESTAMP, Kind.U64, required=True)
    nat: int = _f(Attr.NAT, Kind.U8, required=True)
    vip4: str | None = _f(Attr.VIP4, Kind.IP4)
    vip6: str | None = _f(Attr.VIP6, Kind.IP6)
    observed: Endpoint | None = _f(Attr.OBSERVED_ENDPOINT, Kind.ENDPOINT)
    local_endpoints: tuple[Endpoint, ...] = _rep(Attr.LOCAL_ENDPOINT, Kind.ENDPOINT)
    capabilities: int = _f(Attr.CAPABILITIES, Kind.U32, default=0)
    #: The requester asked with NO_PUNCH (its direct path failed): no punch candidates.
    no_punch: int | None = _f(Attr.NO_PUNCH, Kind.U8)


@dataclass(frozen=True, slots=True)
class PeerAnswer(Message):
    """DC → DC: the peer node's addresses and the route its DC decided (mode, role, RS)."""

    TYPE: ClassVar[MessageType] = MessageType.PEER_ANSWER
    path_id: bytes = _f(Attr.PATH_ID, Kind.ID8, required=True)
    mode: int = _f(Attr.MODE, Kind.U8, required=True)
    path_role: int = _f(Attr.PATH_ROLE, Kind.U8, required=True)
    peer_name: str = _f(Attr.PEER_NAME, Kind.STR, required=True)
    peer_nat: int = _f(Attr.PEER_NAT, Kind.U8, required=True)
    peer_vip4: str | None = _f(Attr.PEER_VIP4, Kind.IP4)
    peer_vip6: str | None = _f(Attr.PEER_VIP6, Kind.IP6)
    peer_endpoints: tuple[Endpoint, ...] = _rep(Attr.PEER_ENDPOINT, Kind.ENDPOINT)
    rs_endpoint: Endpoint | None = _f(Attr.RS_ENDPOINT, Kind.ENDPOINT)
    rs_name: str | None = _f(Attr.RS_NAME, Kind.STR)
    capabilities: int = _f(Attr.CAPABILITIES, Kind.U32, default=0)
    #: RS-S with traversal: the peer node's candidates and the requester's probe start (ms).
    punch_endpoints: tuple[Endpoint, ...] = _rep(Attr.PUNCH_ENDPOINT, Kind.ENDPOINT)
    punch_delay: int | None = _f(Attr.PUNCH_DELAY, Kind.U16)


@dataclass(frozen=True, slots=True)
class PeerHello(Message):
    """DC → DC, in clear (wire.pack_peer_hello): "I am DC <header sender> of ``domain`` with the static
    X25519 public key ``key``". The receiver checks the key (configured peers, else the marker TXT of
    ``domain``) before it opens anything sealed with the static-static keys."""

    TYPE: ClassVar[MessageType] = MessageType.PEER_HELLO
    domain: str = _f(Attr.NAME, Kind.STR, required=True)
    key: bytes = _f(Attr.DC_KEY, Kind.KEY32, required=True)


@dataclass(frozen=True, slots=True)
class PathRelease(Message):
    """Node → DC or DC → RS: the path is no longer needed (node → DC with ``relay_only``: only its relay
    entry is, the path went DIRECT; issue 16)."""

    TYPE: ClassVar[MessageType] = MessageType.PATH_RELEASE
    path_id: bytes = _f(Attr.PATH_ID, Kind.ID8, required=True)
    #: 1 (node → DC): release the path's relay entry only; the path itself stays.
    relay_only: int | None = _f(Attr.RELAY_ONLY, Kind.U8)


@dataclass(frozen=True, slots=True)
class PathReleaseAck(Message):
    TYPE: ClassVar[MessageType] = MessageType.PATH_RELEASE_ACK
    path_id: bytes = _f(Attr.PATH_ID, Kind.ID8, required=True)
    #: RS → DC: the relay's path count after the release (as in Keepalive and Direction Response).
    load: int | None = _f(Attr.LOAD, Kind.U32)


@dataclass(frozen=True, slots=True)
class RelayProbe(Message):
    """DC → RS: measure your distance to a general node (ICMP echo) before I choose a relay."""

    TYPE: ClassVar[MessageType] = MessageType.RELAY_PROBE
    gn_addr4: str | None = _f(Attr.GN_ADDR4, Kind.IP4)
    gn_addr6: str | None = _f(Attr.GN_ADDR6, Kind.IP6)


@dataclass(frozen=True, slots=True)
class RelayProbeResult(Message):
    """RS → DC: hop count and round-trip time to the probed address (status PEER_UNREACHABLE when
    no echo reply came back)."""

    TYPE: ClassVar[MessageType] = MessageType.RELAY_PROBE_RESULT
    gn_addr4: str | None = _f(Attr.GN_ADDR4, Kind.IP4)
    gn_addr6: str | None = _f(Attr.GN_ADDR6, Kind.IP6)
    hops: int | None = _f(Attr.HOPS, Kind.U8)
    rtt_us: int | None = _f(Attr.RTT_US, Kind.U32)


@dataclass(frozen=True, slots=True)
class PathProbe(Message):
    """Node → node, from the tunnel socket to a punch candidate, sealed on the path's channel (its
    nonce comes from the path's counter). Answered with a Path Probe Ack to the probe's source."""

    TYPE: ClassVar[MessageType] = MessageType.PATH_PROBE


@dataclass(frozen=True, slots=True)
class PathProbeAck(Message):
    """Node → node: the probe arrived; ``observed`` is the source it came from."""

    TYPE: ClassVar[MessageType] = MessageType.PATH_PROBE_ACK
    observed: Endpoint | None = _f(Attr.OBSERVED_ENDPOINT, Kind.ENDPOINT)


MESSAGE_CLASSES: dict[MessageType, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        RegistrationRequest,
        RegistrationResponse,
        DirectionRequest,
        RelayDirection,
        DirectionResponse,
        RouteDirection,
        RouteDirectionAck,
        TunnelRequest,
        TunnelResponse,
        Keepalive,
        KeepaliveAck,
        StatusMessage,
        PeerQuery,
        PeerAnswer,
        PeerHello,
        PathRelease,
        PathReleaseAck,
        RelayProbe,
        RelayProbeResult,
        PathProbe,
        PathProbeAck,
    )
}


@dataclass(frozen=True, slots=True)
class _FieldSpec:
    name: str
    attr: int
    kind: Kind
    required: bool
    repeated: bool


def _schema(cls: type[Message]) -> tuple[_FieldSpec, ...]:
    specs = []
    for f in dataclasses.fields(cls):
        md = f.metadata
        specs.append(
            _FieldSpec(f.name, int(md["attr"]), md["kind"], bool(md.get("required")), bool(md.get("repeated")))
        )
    return tuple(specs)


SCHEMAS: dict[type[Message], tuple[_FieldSpec, ...]] = {cls: _schema(cls) for cls in MESSAGE_CLASSES.values()}

# The codec below runs on every signalling message: per class, the fields with their attribute
# header bytes and value codecs resolved once.
_Enc = tuple[str, int, Callable[[object], bytes], bool, bool]
_ENC: dict[type[Message], tuple[_Enc, ...]] = {
    cls: tuple((sp.name, sp.attr, ENCODERS[sp.kind], sp.required, sp.repeated) for sp in specs)
    for cls, specs in SCHEMAS.items()
}
_DEC: dict[MessageType, tuple[type[Message], dict[int, tuple[str, Callable[[bytes], object], bool]],
                              tuple[tuple[str, int], ...]]] = {
    mtype: (cls, {sp.attr: (sp.name, DECODERS[sp.kind], sp.repeated) for sp in SCHEMAS[cls]},
            tuple((sp.name, sp.attr) for sp in SCHEMAS[cls] if sp.required))
    for mtype, cls in MESSAGE_CLASSES.items()
}
_TL = struct.Struct("!BH")


def encode_body(msg: Message) -> bytes:
    """Encode a message's attributes (the plaintext body)."""
    out: list[bytes] = []
    add = out.append
    tl = _TL.pack
    try:
        for name, atype, enc, required, repeated in _ENC[type(msg)]:
            value = getattr(msg, name)
            if repeated:
                for item in value:
                    raw = enc(item)
                    add(tl(atype, len(raw)))
                    add(raw)
            elif value is None:
                if required:
                    raise CodecError(f"{type(msg).__name__}.{name} is required")
            else:
                raw = enc(value)
                add(tl(atype, len(raw)))
                add(raw)
    except ValueError as exc:  # address errors (CodecError is a ValueError too)
        if isinstance(exc, CodecError):
            raise
        raise CodecError(f"bad value in {type(msg).__name__}: {exc}") from None
    except struct.error:
        raise CodecError("attribute too long") from None
    return b"".join(out)


def decode_body(mtype: MessageType, body: bytes) -> Message:
    """Decode a plaintext body of the given type. Raises CodecError only."""
    entry = _DEC.get(mtype)
    if entry is None:
        raise CodecError(f"no body schema for message type 0x{int(mtype):02x}")
    cls, by_attr, required = entry
    values: dict[str, Any] = {}
    off = 0
    end = len(body)
    while off < end:
        if end - off < 3:
            raise CodecError("truncated attribute header")
        atype = body[off]
        alen = (body[off + 1] << 8) | body[off + 2]
        off += 3
        if alen > end - off:
            raise CodecError(f"attribute 0x{atype:02x} runs past the body")
        spec = by_attr.get(atype)
        if spec is None:
            if atype < 0x80:
                raise CodecError(f"unknown critical attribute 0x{atype:02x} in {cls.__name__}")
            off += alen
            continue
        name, dec, repeated = spec
        value = dec(body[off:off + alen])
        off += alen
        if repeated:
            values[name] = values.get(name, ()) + (value,)
        elif name in values:
            raise CodecError(f"attribute 0x{atype:02x} repeated in {cls.__name__}")
        else:
            values[name] = value
    for name, attr in required:
        if name not in values:
            raise CodecError(f"{cls.__name__} lacks required attribute 0x{attr:02x} ({name})")
    return cls(**values)
