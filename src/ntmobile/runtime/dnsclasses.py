"""Imported (for its side effect) by every runtime module that parses DNS input."""

import dns.rdata
import dns.rdataclass
import dns.rdatatype


def _load_rdata_classes() -> None:
    """Load dnspython's rdata classes (class IN) of the types we answer or read, before any input.

    dnspython looks a class up on first use and caches the answer. A hostile DNS message carrying a
    record of class ANY (255) and, say, type A makes it cache the *generic* class for (ANY, A), and a
    later first lookup of (IN, A) falls back to that: from then on every A answer the DNS stub or
    the DC builds fails ("generic rdata does not start with \\#"), a stuck state found by
    `ntm bench fuzz --lab`. With the IN classes loaded first, that fallback is never taken."""
    for t in ("A", "AAAA", "TXT", "NS", "SOA", "CNAME", "DNAME", "PTR", "MX", "SRV", "HTTPS", "SVCB"):
        dns.rdata.get_rdata_class(dns.rdataclass.IN, dns.rdatatype.from_text(t))  # type: ignore[no-untyped-call]


_load_rdata_classes()
