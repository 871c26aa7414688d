"""The DC's authoritative DNS policy: one zone per served domain (its NS host, SOA and the DC marker
TXT at the apex), the enrolled nodes' VIPs as their A/AAAA records, and which zone answers a query."""

from __future__ import annotations

from collections.abc import Sequence

import dns.message
import dns.name

from ntmobile.wire import Role

from ..dnsauth import AuthoritativeZone, NameServer, NodeRecords, SoaFields
from ..registry import Store


def ns_host(domain: str, domains: Sequence[str], ns_name: str) -> str:
    """The name-server host of ``domain`` as its zone and its parent's delegation name it: ``ns_name``
    for the DC's own domain (``domains[0]``) when given, ``dc.<domain>`` otherwise."""
    return ns_name if (ns_name and domain == domains[0]) else f"dc.{domain}"


class DcZones:
    """The zones of ``domains`` (``domains[0]`` is the DC's own domain; its NS host is ``ns_name`` if
    given, every other domain's is ``dc.<domain>``), all served at ``ns_addresses``."""

    def __init__(self, domains: Sequence[str], store: Store, *, ns_name: str, ns_addresses: Sequence[str],
                 marker: str, serial: int) -> None:
        self._store = store
        self.zones: list[AuthoritativeZone] = []
        for domain in domains:
            host = ns_host(domain, domains, ns_name)
            self.zones.append(AuthoritativeZone(
                domain + ".",
                soa=SoaFields(mname=host + ".", rname=f"hostmaster.{domain}.", serial=serial),
                nameservers=[NameServer(host + ".", tuple(ns_addresses))],
                marker=marker,
                lookup=self._lookup_name,
            ))

    def respond(self, query: bytes, tcp: bool) -> bytes | None:
        """Answer from the zone the question falls in (the first zone refuses names outside all)."""
        zone = self.zones[0]
        if len(self.zones) > 1:
            try:
                qname = dns.message.from_wire(query).question[0].name
                zone = next((z for z in self.zones if qname.is_subdomain(z.origin)), zone)
            except Exception:  # (whatever a malformed query raises: the first zone answers FORMERR)
                pass
        return zone.respond(query, tcp=tcp)

    def _lookup_name(self, name: dns.name.Name) -> NodeRecords | None:
        """A node's VIPs (relays and unknown names have no records)."""
        rec = self._store.client_by_name(name.to_text().rstrip(".").lower())
        if rec is None or rec.role is not Role.NODE:
            return None
        return NodeRecords(a=(rec.vip4,) if rec.vip4 else (), aaaa=(rec.vip6,) if rec.vip6 else ())
