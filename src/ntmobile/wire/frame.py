"""Datagram framing: the signalling header, the data capsule header, and Version Not Supported.

Signalling datagram (24-byte header, authenticated as AEAD associated data)::

    0  version   u8     protocol version (1)
    1  type      u8     MessageType
    2  flags     u8     SignalFlags
    3  status    u8     Status (0 in requests)
    4  sender    8 B    key identifier: Node ID, RS ID, DC ID, or Path ID (tunnel signalling)
    12 txid      u32    transaction ID; every reply copies the request's
    16 seq       u64    per-key send counter; AEAD nonce and replay-window input
    24 sealed body      AES-256-GCM(attributes) || 16-byte tag

Data capsule (20-byte header, authenticated as associated data)::

    0  version   u8
    1  type      u8     0x40
    2  flags     u8     CapsuleFlags
    3  reserved  u8     0
    4  path_id   8 B
    12 counter   u64    per-direction send counter; AEAD nonce and replay-window input
    20 sealed inner IP packet || 16-byte tag

GSO capsule (flags has GSO): one AEAD capsule over ``virtio_net_hdr || super-packet``, cut into
chunks that each travel in their own datagram, so no datagram exceeds the path MTU. Every chunk
repeats the 20-byte header (same counter) and adds a 4-byte chunk header::

    0  capsule header (20 B, GSO flag set; the AEAD associated data)
    20 count     u8     number of chunks of this capsule (1..255)
    21 index     u8     this chunk's index (0..count-1)
    22 seg       u16    size of every chunk's body but the last; chunk i starts at i * seg
    24 body      the sealed bytes [index*seg, index*seg + len) of ciphertext || tag
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .constants import SIGNAL_TYPES, SUPPORTED_VERSIONS, TAG_SIZE, VERSION, CapsuleFlags, MessageType
from .errors import CodecError

SIGNAL_HEADER = struct.Struct("!BBBB8sIQ")
SIGNAL_HEADER_SIZE = SIGNAL_HEADER.size  # 24
CAPSULE_HEADER = struct.Struct("!BBBB8sQ")
CAPSULE_HEADER_SIZE = CAPSULE_HEADER.size  # 20
#: Bytes a data capsule adds around the inner packet (header + tag).
CAPSULE_OVERHEAD = CAPSULE_HEADER_SIZE + TAG_SIZE
_VNS = struct.Struct("!BB")
CHUNK_HEADER = struct.Struct("!BBH")
CHUNK_HEADER_SIZE = CHUNK_HEADER.size  # 4
#: Header bytes of every datagram of a GSO capsule (capsule header + chunk header).
GSO_CHUNK_OVERHEAD = CAPSULE_HEADER_SIZE + CHUNK_HEADER_SIZE  # 24


class SignalHeader(NamedTuple):
    version: int
    type: MessageType
    flags: int
    status: int
    sender: bytes
    txid: int
    seq: int

    def pack(self) -> bytes:
        return SIGNAL_HEADER.pack(
            self.version, int(self.type), self.flags, self.status, self.sender, self.txid, self.seq
        )


class CapsuleHeader(NamedTuple):
    flags: int
    path_id: bytes
    counter: int


def peek(data: bytes) -> tuple[int, int]:
    """Return ``(version, type)`` of any datagram; CodecError when shorter than 2 bytes."""
    if len(data) < 2:
        raise CodecError("datagram shorter than 2 bytes")
    return data[0], data[1]


def parse_signal_header(data: bytes) -> SignalHeader:
    """Parse the 24-byte signalling header (the sealed body is not checked here)."""
    if len(data) < SIGNAL_HEADER_SIZE + TAG_SIZE:
        raise CodecError(f"signalling datagram too short ({len(data)} bytes)")
    version, mtype, flags, status, sender, txid, seq = SIGNAL_HEADER.unpack_from(data, 0)
    if version != VERSION:
        raise CodecError(f"unsupported version {version}")
    try:
        mt = MessageType(mtype)
    except ValueError:
        raise CodecError(f"unknown message type 0x{mtype:02x}") from None
    if mt not in SIGNAL_TYPES or mt is MessageType.VERSION_NOT_SUPPORTED:
        raise CodecError(f"type 0x{mtype:02x} is not a sealed signalling message")
    return SignalHeader(version, mt, flags, status, sender, txid, seq)


def pack_capsule_header(flags: int, path_id: bytes, counter: int) -> bytes:
    return CAPSULE_HEADER.pack(VERSION, MessageType.DATA, flags, 0, path_id, counter)


def parse_capsule_header(data: bytes | bytearray | memoryview) -> CapsuleHeader:
    if len(data) < CAPSULE_OVERHEAD:
        raise CodecError(f"capsule too short ({len(data)} bytes)")
    version, mtype, flags, _rsv, path_id, counter = CAPSULE_HEADER.unpack_from(data, 0)
    if version != VERSION or mtype != MessageType.DATA:
        raise CodecError("not a version-1 data capsule")
    return CapsuleHeader(flags, path_id, counter)


class ChunkHeader(NamedTuple):
    chunks: int  # number of chunks of the capsule
    chunk: int  # this chunk's index
    seg: int


def parse_chunk_header(data: bytes | bytearray | memoryview) -> ChunkHeader:
    """The chunk header of a GSO capsule datagram (after the 20-byte capsule header)."""
    if len(data) <= GSO_CHUNK_OVERHEAD:
        raise CodecError(f"GSO chunk too short ({len(data)} bytes)")
    count, index, seg = CHUNK_HEADER.unpack_from(data, CAPSULE_HEADER_SIZE)
    if count == 0 or index >= count or (count > 1 and seg == 0):
        raise CodecError(f"bad GSO chunk header (count {count}, index {index}, seg {seg})")
    body = len(data) - GSO_CHUNK_OVERHEAD
    if index < count - 1 and body != seg or index == count - 1 and count > 1 and body > seg:
        raise CodecError(f"GSO chunk {index}/{count}: {body} body bytes with seg {seg}")
    return ChunkHeader(count, index, seg)


def capsule_nonce_id(data: bytes | bytearray | memoryview) -> tuple[bytes, bool, int, int] | None:
    """What an observer sees of a data capsule's (key, nonce): (Path ID, from the responder, counter,
    GSO chunk index or -1). A Path ID names one key for its whole life and each direction has its own
    key, so two capsules with one identity and different bytes would be one nonce sealed twice
    (docs/security.md §3). None for anything that is not a well-formed data capsule."""
    try:
        flags, path_id, counter = parse_capsule_header(data)
        chunk = parse_chunk_header(data).chunk if flags & CapsuleFlags.GSO else -1
    except CodecError:
        return None
    return path_id, bool(flags & CapsuleFlags.FROM_RESPONDER), counter, chunk


def pack_version_not_supported(txid: int) -> bytes:
    """Unauthenticated reply to a datagram of an unknown version: header + (min, max) supported."""
    hdr = SIGNAL_HEADER.pack(VERSION, MessageType.VERSION_NOT_SUPPORTED, 0, 0, bytes(8), txid, 0)
    return hdr + _VNS.pack(*SUPPORTED_VERSIONS)


def parse_version_not_supported(data: bytes) -> tuple[int, tuple[int, int]]:
    """Return ``(txid, (min, max))`` from a Version Not Supported datagram."""
    if len(data) != SIGNAL_HEADER_SIZE + 2:
        raise CodecError("bad Version Not Supported length")
    _v, mtype, _f, _s, _sender, txid, _seq = SIGNAL_HEADER.unpack_from(data, 0)
    if mtype != MessageType.VERSION_NOT_SUPPORTED:
        raise CodecError("not a Version Not Supported datagram")
    lo, hi = _VNS.unpack_from(data, SIGNAL_HEADER_SIZE)
    if lo > hi:
        raise CodecError("versions: min > max")
    return txid, (lo, hi)


def txid_of(data: bytes) -> int | None:
    """Best-effort transaction ID of any datagram with a full signalling header (for error replies)."""
    if len(data) < SIGNAL_HEADER_SIZE:
        return None
    return int(SIGNAL_HEADER.unpack_from(data, 0)[5])
