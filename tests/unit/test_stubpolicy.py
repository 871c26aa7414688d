"""core.stubpolicy: which names the node's DNS stub tunnels, and the rcode of a failed tunnel."""

from __future__ import annotations

import dns.rcode
import dns.rdatatype
import pytest

from ntmobile.core.stubpolicy import StubPolicy, failure_rcode, normalize
from ntmobile.wire import Status


@pytest.mark.parametrize(("qname", "want"), [
    ("cn.a.example.", True), ("CN.A.Example", True), ("a.example", True), ("x.b.a.example.", True),
    ("b.example", False), ("aa.example", False), ("mn.a.example", False), ("localhost", False),
    ("1.0.0.127.in-addr.arpa.", False), ("", False), (".", False),
])
def test_tunnelled_names(qname: str, want: bool) -> None:
    policy = StubPolicy("mn.a.example", ["a.example."])
    assert policy.tunnelled(qname) is want


def test_the_root_domain_tunnels_every_name_but_the_excluded() -> None:
    policy = StubPolicy("mn.a.example", ["."])
    assert policy.tunnelled("www.example.org")
    assert not policy.tunnelled("localhost.") and not policy.tunnelled("x.ip6.arpa")
    assert not StubPolicy("mn.a.example", []).tunnelled("www.example.org")


def test_only_address_queries_set_up_tunnels() -> None:
    policy = StubPolicy("mn.a.example", ["."])
    assert policy.wants_tunnel("cn.a.example.", dns.rdatatype.A)
    assert policy.wants_tunnel("cn.a.example.", dns.rdatatype.AAAA)
    assert not policy.wants_tunnel("cn.a.example.", dns.rdatatype.TXT)
    assert not policy.wants_tunnel("localhost.", dns.rdatatype.A)


def test_failure_rcodes() -> None:
    assert failure_rcode(Status.NXDOMAIN) == dns.rcode.NXDOMAIN
    assert failure_rcode(Status.NODATA) == dns.rcode.NOERROR
    assert failure_rcode(Status.ADDRESS_REFUSED) == dns.rcode.REFUSED  # never the internal address
    for status in (Status.SERVFAIL, Status.PEER_UNREACHABLE, Status.BAD_REQUEST):
        assert failure_rcode(status) == dns.rcode.SERVFAIL


def test_normalize() -> None:
    assert normalize("CN.A.Example.") == "cn.a.example"
