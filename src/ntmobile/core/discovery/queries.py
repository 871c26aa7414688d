"""The DNS queries a discovery has out (what each is for, where it stands, which attempt an answer
belongs to) and the small formatting helpers of the evidence lines."""

import enum
from dataclasses import dataclass

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

from .results import Address


class Purpose(enum.Enum):
    ZONE = "zone"
    NSADDR = "nsaddr"
    TXT = "txt"
    ADDR = "addr"


@dataclass
class Query:
    purpose: Purpose
    qname: dns.name.Name
    rdtype: dns.rdatatype.RdataType
    servers: list[Address]
    recursive: bool
    timeout: float
    server_index: int = 0
    attempt: int = 0
    tcp: bool = False
    msg_id: int = 0
    wire: bytes = b""
    expires: float = 0.0
    finished: bool = False
    failed: bool = False
    nxdomain: bool = False
    label: str = ""


@dataclass
class Sent:
    query: Query
    server: Address
    msg_id: int
    tcp: bool


def fmt_server(server: Address) -> str:
    host, port = server
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def rcode_text(rcode: int) -> str:
    try:
        return dns.rcode.to_text(dns.rcode.Rcode(rcode))
    except ValueError:
        return f"RCODE{rcode}"


def negative_ttl(msg: dns.message.Message) -> int | None:
    for rrset in msg.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset) > 0:
            minimum = int(getattr(rrset[0], "minimum", rrset.ttl))
            return min(rrset.ttl, minimum)
    return None
