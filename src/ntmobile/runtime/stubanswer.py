"""The stub's answer to a tunnelled lookup, written straight from the query's bytes: the answer
leaves in the call that learns the tunnel is ready, and building it with dnspython (parse, response
object, rrset from text, render) cost ~0.2-0.3 ms of that. Only the simple case is done here (one
question, the name uncompressed as every stub resolver sends it, at most an OPT record in the
additional section); anything else returns None and the caller uses dnspython."""

from __future__ import annotations

import ipaddress
import struct

_HEADER = struct.Struct("!HHHHHH")
_RR_TAIL = struct.Struct("!HHIH")  # type, class, TTL, rdlength
#: OPT record of the answer: root name, type 41, our UDP payload size, no extended rcode or flags.
_OPT = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
_QR, _RA, _RD, _OPCODE, _CD = 0x8000, 0x0080, 0x0100, 0x7800, 0x0010
_A, _AAAA, _IN = 1, 28, 1


def _question_end(wire: bytes) -> int | None:
    """Offset just past the question (name, type, class), or None if it is not a plain one."""
    i, n = 12, len(wire)
    while True:
        if i >= n:
            return None
        length = wire[i]
        if length == 0:
            i += 1
            break
        if length > 63:  # a compression pointer or an extended label: not the simple case
            return None
        i += 1 + length
    i += 4
    return i if i <= n else None


def vip_answer(query: bytes, vip: str | None, ttl: int) -> bytes | None:
    """The NOERROR answer to ``query`` (A or AAAA, class IN) with ``vip`` (None: no data), or None
    when the query is not the simple case."""
    if len(query) < 17:
        return None
    qid, flags, qd, an, ns, ar = _HEADER.unpack_from(query)
    if flags & _QR or qd != 1 or an or ns or ar > 1:
        return None
    end = _question_end(query)
    if end is None:
        return None
    qtype, qclass = struct.unpack_from("!HH", query, end - 4)
    if qclass != _IN or qtype not in (_A, _AAAA):
        return None
    edns = False
    if ar:
        # the one additional record must be an OPT with the root name: we answer with our own
        if end + 11 > len(query) or query[end] != 0 or query[end + 1:end + 3] != b"\x00\x29":
            return None
        edns = True
    rdata = b""
    if vip is not None:
        addr = ipaddress.ip_address(vip)
        if (addr.version == 4) != (qtype == _A):
            return None
        rdata = addr.packed
    out_flags = _QR | _RA | (flags & (_OPCODE | _RD | _CD))
    parts = [_HEADER.pack(qid, out_flags, 1, 1 if rdata else 0, 0, 1 if edns else 0), query[12:end]]
    if rdata:
        parts.append(b"\xc0\x0c" + _RR_TAIL.pack(qtype, _IN, ttl, len(rdata)) + rdata)
    if edns:
        parts.append(_OPT)
    return b"".join(parts)
