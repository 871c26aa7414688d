"""The node's DNS stub policy: which queries the stub turns into tunnel set-ups, and which DNS rcode
an application gets when its name cannot be tunnelled (the Status -> rcode map). Pure; the stub
server and the daemon (runtime/stub.py, runtime/node.py) only do the I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

import dns.rcode
import dns.rdatatype

from ntmobile.wire import Status

#: What the application gets when its name cannot be tunnelled (anything else: SERVFAIL). A name whose
#: addresses no relay may reach (ADDRESS_REFUSED: loopback, private, link-local ...; docs/security.md
#: "RS-N targets") is REFUSED, never the internal address.
FAILURE_RCODES: dict[Status, int] = {Status.NXDOMAIN: dns.rcode.NXDOMAIN, Status.NODATA: dns.rcode.NOERROR,
                                     Status.ADDRESS_REFUSED: dns.rcode.REFUSED}

#: The query types a tunnel answers (with the peer's VIP4 / VIP6).
TUNNELLED_TYPES = frozenset({dns.rdatatype.A, dns.rdatatype.AAAA})


def failure_rcode(status: Status) -> int:
    """The rcode of the answer to a query whose tunnel failed with ``status``."""
    return FAILURE_RCODES.get(status, dns.rcode.SERVFAIL)


def normalize(qname: str) -> str:
    """A query name as the node core takes it: no trailing dot, lower case."""
    return qname.rstrip(".").lower()


class StubPolicy:
    """Which names the stub tunnels: those under one of ``tunnel_domains`` (the empty domain: all),
    never the node's own name, ``localhost`` or reverse (``.arpa``) names."""

    __slots__ = ("own_name", "suffixes")

    def __init__(self, own_name: str, tunnel_domains: Iterable[str]) -> None:
        self.own_name = own_name
        self.suffixes = tuple(s.strip(".").lower() for s in tunnel_domains)

    def tunnelled(self, qname: str) -> bool:
        name = normalize(qname)
        if not name or name == "localhost" or name.endswith(".arpa") or name == self.own_name:
            return False
        return any(suf == "" or name == suf or name.endswith("." + suf) for suf in self.suffixes)

    def wants_tunnel(self, qname: str, qtype: int) -> bool:
        """The query is answered by setting up a tunnel (else it is forwarded upstream)."""
        return qtype in TUNNELLED_TYPES and self.tunnelled(qname)
