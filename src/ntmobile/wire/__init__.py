"""Wire codec: bytes <-> typed messages. Pure; raises only CodecError. See docs/protocol.md."""

from .constants import (
    DC_PORT,
    MAX_SIGNAL_SIZE,
    NODE_PORT,
    RS_PORT,
    VERSION,
    Capability,
    CapsuleFlags,
    MessageType,
    NatKind,
    PathMode,
    PathRole,
    Role,
    RsType,
    SignalFlags,
    Status,
)
from .errors import CodecError
from .frame import (
    CAPSULE_HEADER_SIZE,
    CAPSULE_OVERHEAD,
    SIGNAL_HEADER_SIZE,
    CapsuleHeader,
    SignalHeader,
    pack_capsule_header,
    pack_version_not_supported,
    parse_capsule_header,
    parse_signal_header,
    parse_version_not_supported,
    peek,
)
from .messages import (
    MESSAGE_CLASSES,
    DirectionRequest,
    DirectionResponse,
    Keepalive,
    KeepaliveAck,
    Message,
    PathRelease,
    PathReleaseAck,
    PeerAnswer,
    PeerQuery,
    RegistrationRequest,
    RegistrationResponse,
    RelayDirection,
    RelayProbe,
    RelayProbeResult,
    RouteDirection,
    RouteDirectionAck,
    StatusMessage,
    TunnelRequest,
    TunnelResponse,
    decode_body,
    encode_body,
)
from .tlv import Endpoint

__all__ = [
    "CAPSULE_HEADER_SIZE", "CAPSULE_OVERHEAD", "DC_PORT", "MAX_SIGNAL_SIZE", "MESSAGE_CLASSES", "NODE_PORT",
    "RS_PORT", "SIGNAL_HEADER_SIZE", "VERSION", "Capability", "CapsuleFlags", "CapsuleHeader", "CodecError",
    "DirectionRequest", "DirectionResponse", "Endpoint", "Keepalive", "KeepaliveAck", "Message", "MessageType",
    "NatKind", "PathMode", "PathRelease", "PathReleaseAck", "PathRole", "PeerAnswer", "PeerQuery",
    "RegistrationRequest", "RegistrationResponse", "RelayDirection", "RelayProbe", "RelayProbeResult", "Role", "RouteDirection",
    "RouteDirectionAck", "RsType", "SignalFlags", "SignalHeader", "Status", "StatusMessage", "TunnelRequest",
    "TunnelResponse", "decode_body", "encode_body", "pack_capsule_header", "pack_version_not_supported",
    "parse_capsule_header", "parse_signal_header", "parse_version_not_supported", "peek",
]
