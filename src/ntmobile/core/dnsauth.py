"""Sans-IO authoritative DNS responder for a DC's zone, and the DC marker TXT format.

A DC is the authoritative name server of its zone. It serves the SOA and NS records of the apex,
the glue addresses of its NS hosts, the DC marker TXT record at the apex, and the A/AAAA records of
the nodes it has registered (their VIPs), which it reads through a callback.

The DC marker is a single TXT record at the zone apex (see docs/dns.md)::

    "v=ntm1; dc=<signalling IP address>; port=<udp port>; key=<base64url of the 32-byte public key>"

`AuthoritativeZone.respond` turns one query (wire bytes) into one response (wire bytes) or `None`
when the input does not even carry a DNS header. It never raises on input.
"""

import base64
import binascii
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rrset

from ntmobile.core.common import AMPLIFICATION_MAX

MARKER_VERSION = "ntm1"
MARKER_KEY_LEN = 32
HEADER_LEN = 12
# Largest UDP payload we ever send (DNS flag day 2020 recommendation).
DEFAULT_MAX_UDP_PAYLOAD = 1232
CLASSIC_UDP_LIMIT = 512
TXT_STRING_MAX = 255
#: A UDP answer is at most this many times the size of its query (its source address is not verified:
#: a spoofed query must not make us a reflector). Larger answers are truncated (TC), so the client
#: asks again over TCP, or pads its query (EDNS padding) to make room. The same bound as every other
#: unauthenticated reply of the DC (core.common.AMPLIFICATION_MAX).
UDP_AMPLIFICATION_MAX = AMPLIFICATION_MAX


# --------------------------------------------------------------------------------------------
# DC marker
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DcMarker:
    """What the TXT marker at a zone apex says about the zone's DC."""

    dc: str  # signalling address of the DC: an IPv4 or IPv6 literal
    port: int  # the DC's signalling UDP port
    key: bytes  # the DC's 32-byte public key

    @property
    def address(self) -> tuple[str, int]:
        return (self.dc, self.port)


def format_marker(dc: str, port: int, key: bytes) -> str:
    """Render the marker TXT content. Raises ValueError on a bad address, port or key."""
    addr = ipaddress.ip_address(dc)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {port}")
    if len(key) != MARKER_KEY_LEN:
        raise ValueError(f"key must be {MARKER_KEY_LEN} bytes, got {len(key)}")
    key_b64 = base64.urlsafe_b64encode(key).rstrip(b"=").decode("ascii")
    return f"v={MARKER_VERSION}; dc={addr.compressed}; port={port}; key={key_b64}"


def parse_marker(txt: str) -> DcMarker | None:
    """Parse marker TXT content; None if it is not a (valid) v=ntm1 marker.

    Fields are `name=value` separated by `;`, surrounding blanks ignored, names case-insensitive.
    `v=ntm1` must come first; `dc`, `port` and `key` are required; unknown fields are ignored so
    that later versions can add some. Duplicate fields make the marker invalid.
    """
    parts = [p.strip() for p in txt.split(";")]
    if parts and parts[-1] == "":
        parts.pop()
    fields: dict[str, str] = {}
    order: list[str] = []
    for part in parts:
        name, sep, value = part.partition("=")
        name = name.strip().lower()
        if not sep or not name:
            return None
        if name in fields:
            return None
        fields[name] = value.strip()
        order.append(name)
    if not order or order[0] != "v" or fields["v"].lower() != MARKER_VERSION:
        return None
    try:
        addr = ipaddress.ip_address(fields["dc"])
        port_text = fields["port"]
        key_text = fields["key"]
    except (KeyError, ValueError):
        return None
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    if not key_text.isascii():
        return None
    try:
        key = base64.urlsafe_b64decode(key_text + "=" * (-len(key_text) % 4))
    except (binascii.Error, ValueError):
        return None
    if len(key) != MARKER_KEY_LEN:
        return None
    return DcMarker(dc=addr.compressed, port=int(port_text), key=key)


def txt_strings(rdata: dns.rdata.Rdata) -> str:
    """The content of one TXT rdata: its character-strings concatenated (RFC 7208 style)."""
    if not isinstance(rdata, dns.rdtypes.ANY.TXT.TXT):
        return ""
    return b"".join(rdata.strings).decode("utf-8", errors="replace")


def _split_txt(text: str) -> list[bytes]:
    raw = text.encode("utf-8")
    return [raw[i : i + TXT_STRING_MAX] for i in range(0, len(raw), TXT_STRING_MAX)] or [b""]


# --------------------------------------------------------------------------------------------
# zone configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeRecords:
    """Addresses published for one name (a registered node's VIPs)."""

    a: tuple[str, ...] = ()
    aaaa: tuple[str, ...] = ()
    ttl: int | None = None  # None: the zone's default TTL


@dataclass(frozen=True)
class SoaFields:
    mname: str  # primary name server, e.g. "dc.a.example."
    rname: str  # mailbox, e.g. "hostmaster.a.example."
    serial: int = 1
    refresh: int = 3600
    retry: int = 600
    expire: int = 86400
    minimum: int = 30  # negative-caching TTL (RFC 2308)
    ttl: int = 300


@dataclass(frozen=True)
class NameServer:
    """An NS host of the zone; addresses are served as glue when the host is inside the zone."""

    name: str
    addresses: tuple[str, ...] = ()


@dataclass
class ResponderStats:
    queries: int = 0  # messages with a parseable header
    answers: int = 0  # responses produced
    dropped: int = 0  # inputs with no header, or responses (QR set): no reply
    formerr: int = 0
    refused: int = 0
    notimp: int = 0
    nxdomain: int = 0
    nodata: int = 0
    servfail: int = 0
    truncated: int = 0
    amplification_truncated: int = 0  # of these, truncated with the limit set by UDP_AMPLIFICATION_MAX
    any_minimal: int = 0  # ANY queries answered with one RRset (RFC 8482)
    by_type: dict[str, int] = field(default_factory=dict)


LookupFn = Callable[[dns.name.Name], NodeRecords | None]


class AuthoritativeZone:
    """Answers queries for one zone from its configuration and a node lookup callback."""

    def __init__(
        self,
        origin: str,
        *,
        soa: SoaFields,
        nameservers: Sequence[NameServer],
        marker: str | None,
        lookup: LookupFn,
        ttl: int = 60,
        max_udp_payload: int = DEFAULT_MAX_UDP_PAYLOAD,
    ) -> None:
        if not nameservers:
            raise ValueError("a zone needs at least one NS host")
        self.origin = dns.name.from_text(origin)
        self.ttl = ttl
        self.max_udp_payload = max(CLASSIC_UDP_LIMIT, max_udp_payload)
        self.lookup = lookup
        self.marker = marker
        self.stats = ResponderStats()
        mname = dns.name.from_text(soa.mname).to_text()
        rname = dns.name.from_text(soa.rname).to_text()
        self._soa = dns.rrset.from_text_list(
            self.origin,
            soa.ttl,
            dns.rdataclass.IN,
            dns.rdatatype.SOA,
            [f"{mname} {rname} {soa.serial} {soa.refresh} {soa.retry} {soa.expire} {soa.minimum}"],
        )
        self._neg_ttl = min(soa.ttl, soa.minimum)
        self._ns = dns.rrset.from_text_list(
            self.origin,
            ttl,
            dns.rdataclass.IN,
            dns.rdatatype.NS,
            [dns.name.from_text(ns.name).to_text() for ns in nameservers],
        )
        # NS hosts inside the zone: their addresses are authoritative data of this zone.
        self._hosts: dict[dns.name.Name, NodeRecords] = {}
        for ns in nameservers:
            name = dns.name.from_text(ns.name)
            if not name.is_subdomain(self.origin):
                continue
            v4 = tuple(ipaddress.IPv4Address(a).compressed for a in ns.addresses if ":" not in a)
            v6 = tuple(ipaddress.IPv6Address(a).compressed for a in ns.addresses if ":" in a)
            old = self._hosts.get(name, NodeRecords())
            self._hosts[name] = NodeRecords(a=old.a + v4, aaaa=old.aaaa + v6)
        # Empty non-terminals between the apex and the NS hosts (e.g. "ns" in ns1.ns.a.example.).
        self._ents: set[dns.name.Name] = set()
        for host in self._hosts:
            parent = host.parent()
            while parent != self.origin and parent.is_subdomain(self.origin):
                self._ents.add(parent)
                parent = parent.parent()
        self._txt: dns.rrset.RRset | None = None
        if marker is not None:
            self._txt = dns.rrset.from_rdata(
                self.origin,
                ttl,
                dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, _split_txt(marker)),
            )

    # ----------------------------------------------------------------------------------------

    def respond(self, query_wire: bytes, *, tcp: bool) -> bytes | None:
        """One response for one query, or None when there is nothing to answer to."""
        if len(query_wire) < HEADER_LEN:
            self.stats.dropped += 1
            return None
        qid = int.from_bytes(query_wire[0:2], "big")
        flags = int.from_bytes(query_wire[2:4], "big")
        if flags & dns.flags.QR:
            # Never answer a response: that is how reflection loops start.
            self.stats.dropped += 1
            return None
        self.stats.queries += 1
        if dns.opcode.from_flags(flags) != dns.opcode.QUERY:
            return self._bare_error(qid, flags, dns.rcode.NOTIMP)
        try:
            query = dns.message.from_wire(query_wire)
        except Exception:  # dnspython raises many kinds on garbage: all mean FORMERR
            return self._bare_error(qid, flags, dns.rcode.FORMERR)
        if len(query.question) != 1:
            return self._bare_error(qid, flags, dns.rcode.FORMERR)
        try:
            # pad=0: no EDNS padding (RFC 8467 pads only encrypted transports; padding would only
            # make answers larger than their queries)
            response = dns.message.make_response(query, our_payload=self.max_udp_payload, pad=0)
        except Exception:
            return self._bare_error(qid, flags, dns.rcode.FORMERR)
        if query.edns > 0:
            response.set_rcode(dns.rcode.BADVERS)
            return self._finish(response, query, tcp, len(query_wire))
        q = query.question[0]
        self.stats.by_type[dns.rdatatype.to_text(q.rdtype)] = (
            self.stats.by_type.get(dns.rdatatype.to_text(q.rdtype), 0) + 1
        )
        if q.rdclass not in (dns.rdataclass.IN, dns.rdataclass.ANY) or not q.name.is_subdomain(
            self.origin
        ):
            self.stats.refused += 1
            response.set_rcode(dns.rcode.REFUSED)
            return self._finish(response, query, tcp, len(query_wire))
        if dns.rdatatype.is_metatype(q.rdtype) and q.rdtype != dns.rdatatype.ANY:
            # AXFR, IXFR, OPT, TSIG...: zone transfers are not offered.
            self.stats.refused += 1
            response.set_rcode(dns.rcode.REFUSED)
            return self._finish(response, query, tcp, len(query_wire))
        response.flags |= dns.flags.AA
        try:
            self._fill(response, q.name, q.rdtype)
        except Exception:
            # A failing record source (or bad data from it) is our fault, not the client's.
            self.stats.servfail += 1
            response.flags &= ~dns.flags.AA
            response.answer, response.authority, response.additional = [], [], []
            response.set_rcode(dns.rcode.SERVFAIL)
        return self._finish(response, query, tcp, len(query_wire))

    # ----------------------------------------------------------------------------------------

    def _fill(self, response: dns.message.Message, name: dns.name.Name, rdtype: int) -> None:
        if name == self.origin:
            self._fill_apex(response, rdtype)
            return
        records = self._hosts.get(name)
        if records is None:
            records = self.lookup(name)
        if records is None:
            if name in self._ents:
                self._nodata(response)
            else:
                self.stats.nxdomain += 1
                response.set_rcode(dns.rcode.NXDOMAIN)
                response.authority.append(self._negative_soa())
            return
        answers = self._address_rrsets(name, records, rdtype)
        if not answers:
            self._nodata(response)
            return
        if rdtype == dns.rdatatype.ANY:
            # RFC 8482: ANY gets one RRset (the A RRset, or the AAAA one if there is no A), not all.
            self.stats.any_minimal += 1
            answers = answers[:1]
        response.answer.extend(answers)

    def _fill_apex(self, response: dns.message.Message, rdtype: int) -> None:
        if rdtype == dns.rdatatype.SOA:
            response.answer.append(self._soa)
        elif rdtype == dns.rdatatype.ANY:
            # RFC 8482: ANY at the apex gets the SOA RRset only (ask NS and TXT by name).
            self.stats.any_minimal += 1
            response.answer.append(self._soa)
        elif rdtype == dns.rdatatype.NS:
            response.answer.append(self._ns)
            response.additional.extend(self._glue())
        elif rdtype == dns.rdatatype.TXT and self._txt is not None:
            response.answer.append(self._txt)
        if not response.answer:
            self._nodata(response)

    def _glue(self) -> list[dns.rrset.RRset]:
        out: list[dns.rrset.RRset] = []
        for host, rec in self._hosts.items():
            out.extend(self._address_rrsets(host, rec, dns.rdatatype.ANY))
        return out

    def _address_rrsets(
        self, name: dns.name.Name, records: NodeRecords, rdtype: int
    ) -> list[dns.rrset.RRset]:
        ttl = self.ttl if records.ttl is None else records.ttl
        out: list[dns.rrset.RRset] = []
        if rdtype in (dns.rdatatype.A, dns.rdatatype.ANY) and records.a:
            out.append(
                dns.rrset.from_text_list(name, ttl, dns.rdataclass.IN, dns.rdatatype.A, list(records.a))
            )
        if rdtype in (dns.rdatatype.AAAA, dns.rdatatype.ANY) and records.aaaa:
            out.append(
                dns.rrset.from_text_list(
                    name, ttl, dns.rdataclass.IN, dns.rdatatype.AAAA, list(records.aaaa)
                )
            )
        return out

    def _negative_soa(self) -> dns.rrset.RRset:
        # RFC 2308: the SOA in a negative answer carries min(SOA TTL, SOA MINIMUM).
        return dns.rrset.from_rdata(self.origin, self._neg_ttl, self._soa[0])

    def _nodata(self, response: dns.message.Message) -> None:
        self.stats.nodata += 1
        response.authority.append(self._negative_soa())

    def _finish(self, response: dns.message.Message, query: dns.message.Message, tcp: bool,
                query_len: int) -> bytes:
        amplification = False
        if tcp:
            limit = 65535
        else:
            if query.edns >= 0:
                limit = max(CLASSIC_UDP_LIMIT, min(query.payload, self.max_udp_payload))
            else:
                limit = CLASSIC_UDP_LIMIT
            if query_len * UDP_AMPLIFICATION_MAX < limit:
                # The truncated form (header, question, OPT without options) is never larger than
                # the query, so it always fits this limit.
                limit = query_len * UDP_AMPLIFICATION_MAX
                amplification = True
        self.stats.answers += 1
        wire = _wire_within(response, limit)
        if wire is not None:
            return wire
        # The additional section is optional: drop it before truncating (RFC 2181 §9).
        response.additional = []
        wire = _wire_within(response, limit)
        if wire is not None:
            return wire
        self.stats.truncated += 1
        if amplification:
            self.stats.amplification_truncated += 1
        response.answer = []
        response.authority = []
        response.flags |= dns.flags.TC
        wire = _wire_within(response, limit)
        if wire is None:  # cannot happen (see above): never more than the limit anyway
            return self._bare_error(response.id, query.flags, dns.rcode.SERVFAIL)
        return wire

    def _bare_error(self, qid: int, flags: int, rcode: dns.rcode.Rcode) -> bytes:
        """An error response built from the header alone (the query could not be used)."""
        if rcode == dns.rcode.FORMERR:
            self.stats.formerr += 1
        elif rcode == dns.rcode.NOTIMP:
            self.stats.notimp += 1
        self.stats.answers += 1
        opcode_bits = flags & 0x7800
        out_flags = dns.flags.QR | opcode_bits | (flags & dns.flags.RD) | int(rcode)
        return qid.to_bytes(2, "big") + out_flags.to_bytes(2, "big") + bytes(8)


def _wire_within(response: dns.message.Message, limit: int) -> bytes | None:
    """The response's wire form if it fits ``limit`` bytes (dnspython never enforces less than 512)."""
    try:
        wire = response.to_wire(max_size=limit)
    except dns.exception.TooBig:
        return None
    return wire if len(wire) <= limit else None
