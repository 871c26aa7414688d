"""The stub's hand-written answer to a tunnelled lookup (runtime/stubanswer.py) reads back with
dnspython as the answer dnspython would have made; anything outside the simple case is declined."""

from __future__ import annotations

import dns.edns
import dns.flags
import dns.message
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ntmobile.runtime.stubanswer import vip_answer


@pytest.mark.parametrize(("qtype", "vip"), [("A", "100.64.1.7"), ("AAAA", "fd00:6e74:1::7"), ("A", None)])
@pytest.mark.parametrize("edns", [False, True])
def test_the_answer_reads_back_as_the_query_s_answer(qtype: str, vip: str | None, edns: bool) -> None:
    q = dns.message.make_query("gl.A.example.", qtype, use_edns=0 if edns else False, want_dnssec=False)
    q.flags |= dns.flags.CD
    out = vip_answer(q.to_wire(), vip, 60)
    assert out is not None
    r = dns.message.from_wire(out)
    assert r.id == q.id and r.flags & dns.flags.QR and r.flags & dns.flags.RA and r.flags & dns.flags.RD
    assert r.flags & dns.flags.CD and r.rcode() == 0 and r.question == q.question
    assert (r.edns >= 0) == edns
    if vip is None:
        assert r.answer == []
    else:
        assert r.answer == [dns.rrset.from_text("gl.A.example.", 60, "IN", qtype, vip)]
        assert r.answer[0].ttl == 60


def test_queries_outside_the_simple_case_are_declined() -> None:
    q = dns.message.make_query("gl.a.example.", "A")
    wire = q.to_wire()
    assert vip_answer(wire, "fd00::1", 60) is None  # family does not match the question
    assert vip_answer(dns.message.make_query("gl.a.example.", "MX").to_wire(), "100.64.1.7", 60) is None
    resp = dns.message.make_response(q).to_wire()
    assert vip_answer(resp, "100.64.1.7", 60) is None  # a response
    assert vip_answer(wire[:15], "100.64.1.7", 60) is None  # cut short
    two = dns.message.make_query("gl.a.example.", "A")
    two.additional.append(dns.rrset.from_text("x.", 5, "IN", "A", "192.0.2.1"))
    assert vip_answer(two.to_wire(), "100.64.1.7", 60) is None  # an additional record that is no OPT


@given(st.binary(max_size=80))
def test_any_bytes_give_an_answer_that_parses_or_none(data: bytes) -> None:
    out = vip_answer(data, "100.64.1.7", 60)
    if out is not None:
        dns.message.from_wire(out)
