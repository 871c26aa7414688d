"""Protocol constants: version, ports, message types, status codes and enumerations.

docs/protocol.md is the byte-level description of everything here.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

VERSION = 1
SUPPORTED_VERSIONS = (1, 1)

DC_PORT = 7410
RS_PORT = 7411
NODE_PORT = 7412
#: The DC's second signalling port: NAT classification probes (docs/protocol.md, "NAT classification").
DC_PROBE_PORT = 7413

#: Signalling datagrams never exceed this size, so they fit any path MTU without fragmentation.
MAX_SIGNAL_SIZE = 1200
#: The AEAD tag size (AES-256-GCM).
TAG_SIZE = 16
KEY_SIZE = 32
ID_SIZE = 8


class MessageType(IntEnum):
    REGISTRATION_REQUEST = 0x01
    REGISTRATION_RESPONSE = 0x02
    DIRECTION_REQUEST = 0x03
    RELAY_DIRECTION = 0x04
    DIRECTION_RESPONSE = 0x05
    ROUTE_DIRECTION = 0x06
    ROUTE_DIRECTION_ACK = 0x07
    TUNNEL_REQUEST = 0x08
    TUNNEL_RESPONSE = 0x09
    KEEPALIVE = 0x0A
    KEEPALIVE_ACK = 0x0B
    STATUS = 0x0C
    PEER_QUERY = 0x0D
    PEER_ANSWER = 0x0E
    PATH_RELEASE = 0x0F
    PATH_RELEASE_ACK = 0x10
    RELAY_PROBE = 0x11
    RELAY_PROBE_RESULT = 0x12
    #: Node ↔ node on a path being punched (NAT traversal, issue 16), sealed on the path's channel.
    PATH_PROBE = 0x13
    PATH_PROBE_ACK = 0x14
    PEER_HELLO = 0x20
    #: Joining with a token (wire/join.py): a framing of their own, not the signalling header's.
    JOIN_REQUEST = 0x21
    JOIN_RESPONSE = 0x22
    VERSION_NOT_SUPPORTED = 0x3F
    DATA = 0x40


#: Types carried in the signalling framing (everything but DATA).
SIGNAL_TYPES = frozenset(t for t in MessageType
                         if t not in (MessageType.DATA, MessageType.JOIN_REQUEST, MessageType.JOIN_RESPONSE))


class SignalFlags(IntFlag):
    NONE = 0
    #: Sealed with the long-term (enrolment) keys instead of the session keys.
    LONG_TERM = 0x01
    #: The sender is the responder side of a path (tunnel signalling only).
    FROM_RESPONDER = 0x02


class CapsuleFlags(IntFlag):
    NONE = 0
    #: Sent by the responder side of the path (selects key and nonce direction).
    FROM_RESPONDER = 0x01
    #: Payload starts with a 10-byte virtio_net_hdr: one encrypted TCP/UDP super-packet (offload path).
    GSO = 0x02


class Status(IntEnum):
    OK = 0
    BAD_REQUEST = 1
    AUTH_FAILED = 2
    UNKNOWN_NODE = 3
    REREGISTER = 4
    NXDOMAIN = 5
    SERVFAIL = 6
    NO_RELAY = 7
    RELAY_FAILED = 8
    PEER_UNREACHABLE = 9
    UNSUPPORTED_VERSION = 10
    NOT_AUTHORIZED = 11
    STORAGE_ERROR = 12
    BUSY = 13
    UNKNOWN_PATH = 14
    NODATA = 15
    PATH_ID_IN_USE = 16
    STALE = 17
    #: The general node's address is not one an RS-N may be directed to (docs/security.md, "RS-N targets").
    ADDRESS_REFUSED = 18
    #: A re-direction cannot keep the path: a node of it restarted since it got the path's key, and no
    #: key is ever given to a process twice. The node closes the path; the next packet sets up a new one.
    PATH_GONE = 19
    #: A join token past its expiry (wire/join.py).
    TOKEN_EXPIRED = 20
    #: A join token that another join has already used.
    TOKEN_USED = 21


class Role(IntEnum):
    """Who registers: an NTM node or a relay server."""

    NODE = 1
    RELAY = 2


class PathRole(IntEnum):
    INITIATOR = 1
    RESPONDER = 2


class RsType(IntEnum):
    """The RS type of the paper's NTM Relay Direction."""

    S = 1  # relay between two NTM nodes (outer header rewrite only, never decrypts)
    N = 2  # relay to a general node (decapsulate, kernel NAPT)


class PathMode(IntEnum):
    DIRECT = 1
    RS_S = 2
    RS_N = 3


class NatKind(IntEnum):
    NONE = 0  # reported address == observed address: globally reachable
    NAT = 1  # address or port translated on the way to the DC (not classified further)
    #: Classified by the DC's probes (docs/protocol.md, "NAT classification"):
    CONE = 2  # endpoint-independent mapping, filtered inbound (e.g. port-restricted cone)
    SYMMETRIC = 3  # endpoint-dependent mapping: a new mapped port per destination
    OPEN = 4  # endpoint-independent mapping and filtering, e.g. a one-to-one NAT: reachable like a global host


class Capability(IntFlag):
    NONE = 0
    #: Understands GSO capsules (virtio_net_hdr + super-packet) on this path.
    GSO = 0x01
    #: Understands IPv6 inner packets.
    INNER6 = 0x02
