"""The set-up bench's client reads DNS answers with a plain wire walk (bench/setup.py ``first_a``):
it must give what dnspython gives, on compressed names, a CNAME before the A record and errors."""

import dns.message
import dns.rcode
import dns.rrset
import pytest

from ntmobile.bench.setup import first_a


def _response(*rrsets: dns.rrset.RRset, rcode: int = 0) -> bytes:
    q = dns.message.make_query("s1.gn.example.", "A")
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    r.answer.extend(rrsets)
    return r.to_wire()


def test_reads_the_a_record_of_a_compressed_answer() -> None:
    wire = _response(dns.rrset.from_text("s1.gn.example.", 60, "IN", "A", "100.96.0.7"))
    assert first_a(wire) == (0, "100.96.0.7")


def test_skips_a_cname_to_the_first_a_record() -> None:
    wire = _response(dns.rrset.from_text("s1.gn.example.", 60, "IN", "CNAME", "www.gn.example."),
                     dns.rrset.from_text("www.gn.example.", 60, "IN", "A", "100.96.0.9"))
    assert first_a(wire) == (0, "100.96.0.9")


def test_nxdomain_has_no_address() -> None:
    assert first_a(_response(rcode=dns.rcode.NXDOMAIN)) == (dns.rcode.NXDOMAIN, None)


def test_truncated_response_is_a_clear_error() -> None:
    wire = _response(dns.rrset.from_text("s1.gn.example.", 60, "IN", "A", "100.96.0.7"))
    with pytest.raises(ValueError, match="malformed DNS response"):
        first_a(wire[:-6])
