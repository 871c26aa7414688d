"""The DC's authoritative responder and the DC marker format."""

import base64

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntmobile.core.dnsauth import (
    UDP_AMPLIFICATION_MAX,
    AuthoritativeZone,
    DcMarker,
    NameServer,
    NodeRecords,
    SoaFields,
    format_marker,
    parse_marker,
    txt_strings,
)

KEY = bytes(range(32))
MARKER = format_marker("192.0.2.53", 4500, KEY)


def _nodes() -> dict[dns.name.Name, NodeRecords]:
    return {
        dns.name.from_text("mn.a.example."): NodeRecords(a=("198.18.0.5",), aaaa=("2001:db8:c0ff:ee::5",)),
        dns.name.from_text("v4only.a.example."): NodeRecords(a=("198.18.0.6",), ttl=7),
        dns.name.from_text("many.a.example."): NodeRecords(
            a=tuple(f"198.18.1.{i}" for i in range(1, 51))  # 50 x 16 bytes: > 512, < 1232
        ),
        dns.name.from_text("huge.a.example."): NodeRecords(
            a=tuple(f"198.18.{i // 250}.{i % 250 + 1}" for i in range(100))  # > 1232
        ),
    }


def make_zone(marker: str | None = MARKER) -> AuthoritativeZone:
    nodes = _nodes()
    return AuthoritativeZone(
        "a.example.",
        soa=SoaFields("dc.a.example.", "hostmaster.a.example.", serial=7, minimum=30, ttl=300),
        nameservers=[
            NameServer("dc.a.example.", ("192.0.2.1", "2001:db8::1")),
            NameServer("ns1.sub.a.example.", ("192.0.2.2",)),
            NameServer("ns.other.example.", ("192.0.2.99",)),  # out of zone: never glue
        ],
        marker=marker,
        lookup=nodes.get,
        ttl=60,
    )


def ask(
    zone: AuthoritativeZone,
    name: str,
    rdtype: str,
    *,
    tcp: bool = False,
    use_edns: int | bool = False,
    payload: int = 1232,
    pad: int = 0,
) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, use_edns=use_edns, payload=payload, pad=pad)
    wire = zone.respond(q.to_wire(), tcp=tcp)
    assert wire is not None
    r = dns.message.from_wire(wire)
    assert r.id == q.id
    assert r.flags & dns.flags.QR
    assert [(x.name, x.rdtype) for x in r.question] == [(x.name, x.rdtype) for x in q.question]
    return r


def rrset(msg: dns.message.Message, section: str, name: str, rdtype: str) -> list[str]:
    for rr in getattr(msg, section):
        if rr.name == dns.name.from_text(name) and rr.rdtype == dns.rdatatype.from_text(rdtype):
            return sorted(rd.to_text() for rd in rr)
    return []


# ------------------------------------------------------------------------------------- marker


def test_marker_round_trips_ipv4_and_ipv6() -> None:
    assert parse_marker(MARKER) == DcMarker("192.0.2.53", 4500, KEY)
    v6 = format_marker("2001:db8:0::53", 1, KEY)
    assert "dc=2001:db8::53;" in v6
    assert parse_marker(v6) == DcMarker("2001:db8::53", 1, KEY)


def test_marker_text_has_the_documented_shape() -> None:
    key_b64 = base64.urlsafe_b64encode(KEY).rstrip(b"=").decode()
    assert MARKER == f"v=ntm1; dc=192.0.2.53; port=4500; key={key_b64}"


def test_marker_parser_tolerates_spacing_padding_case_and_unknown_fields() -> None:
    key_b64 = base64.urlsafe_b64encode(KEY).decode()  # with '=' padding
    text = f" v=NTM1 ;DC=192.0.2.53;  port=4500 ; key={key_b64}; future=thing;"
    assert parse_marker(text) == DcMarker("192.0.2.53", 4500, KEY)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "v=spf1 -all",
        "v=ntm2; dc=192.0.2.53; port=4500; key=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
        "dc=192.0.2.53; v=ntm1; port=4500; key=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
        "v=ntm1; port=4500; key=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
        "v=ntm1; dc=dc.a.example; port=4500; key=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
        "v=ntm1; dc=192.0.2.53; port=0; key=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
        "v=ntm1; dc=192.0.2.53; port=65536; key=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
        "v=ntm1; dc=192.0.2.53; port=-1; key=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
        "v=ntm1; dc=192.0.2.53; port=4500; key=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg",  # 31 bytes
        "v=ntm1; dc=192.0.2.53; port=4500; key=!!!notbase64!!!",
        "v=ntm1; dc=192.0.2.53; port=4500",
        "v=ntm1; dc=192.0.2.53; dc=192.0.2.54; port=4500; key=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
        "v=ntm1; garbage; dc=192.0.2.53; port=4500; key=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
    ],
)
def test_marker_parser_rejects_invalid_markers(text: str) -> None:
    assert parse_marker(text) is None


@pytest.mark.parametrize(
    "dc,port,key", [("dc.a.example", 1, KEY), ("192.0.2.1", 0, KEY), ("192.0.2.1", 1, b"short")]
)
def test_format_marker_refuses_bad_input(dc: str, port: int, key: bytes) -> None:
    with pytest.raises(ValueError):
        format_marker(dc, port, key)


@given(st.text(max_size=200))
def test_parse_marker_never_raises(text: str) -> None:
    parse_marker(text)


# ---------------------------------------------------------------------------------- responder


def test_soa_at_apex_is_authoritative_and_copies_id_and_question() -> None:
    r = ask(make_zone(), "a.example.", "SOA")
    assert r.rcode() == dns.rcode.NOERROR
    assert r.flags & dns.flags.AA
    assert not r.flags & dns.flags.RA
    assert rrset(r, "answer", "a.example.", "SOA") == [
        "dc.a.example. hostmaster.a.example. 7 3600 600 86400 30"
    ]


def test_ns_at_apex_carries_in_zone_glue_only() -> None:
    # (a padded query: NS with glue is more than UDP_AMPLIFICATION_MAX times a bare query)
    r = ask(make_zone(), "a.example.", "NS", use_edns=0, pad=128)
    assert rrset(r, "answer", "a.example.", "NS") == [
        "dc.a.example.",
        "ns.other.example.",
        "ns1.sub.a.example.",
    ]
    assert rrset(r, "additional", "dc.a.example.", "A") == ["192.0.2.1"]
    assert rrset(r, "additional", "dc.a.example.", "AAAA") == ["2001:db8::1"]
    assert rrset(r, "additional", "ns1.sub.a.example.", "A") == ["192.0.2.2"]
    assert rrset(r, "additional", "ns.other.example.", "A") == []


def test_txt_at_apex_is_the_dc_marker() -> None:
    r = ask(make_zone(), "a.example.", "TXT", use_edns=0)  # as resolvers ask
    assert r.flags & dns.flags.AA
    texts = [txt_strings(rd) for rr in r.answer for rd in rr]
    assert texts == [MARKER]
    assert parse_marker(texts[0]) == DcMarker("192.0.2.53", 4500, KEY)


def test_zone_without_marker_answers_txt_with_nodata() -> None:
    r = ask(make_zone(marker=None), "a.example.", "TXT")
    assert r.rcode() == dns.rcode.NOERROR and not r.answer
    assert rrset(r, "authority", "a.example.", "SOA")


def test_any_is_answered_minimally_with_one_rrset() -> None:
    """RFC 8482: ANY gets one RRset (the SOA at the apex, a node's A RRset), never all of them."""
    zone = make_zone()
    for name, rdtype in (("a.example.", "SOA"), ("mn.a.example.", "A"), ("dc.a.example.", "A")):
        for tcp in (False, True):
            r = ask(zone, name, "ANY", tcp=tcp, use_edns=0)
            assert [dns.rdatatype.to_text(rr.rdtype) for rr in r.answer] == [rdtype]
            assert r.flags & dns.flags.AA and not r.additional and not r.flags & dns.flags.TC
    assert ask(zone, "v4only.a.example.", "ANY").answer[0].rdtype == dns.rdatatype.A
    assert zone.stats.any_minimal == 7
    assert ask(zone, "nope.a.example.", "ANY").rcode() == dns.rcode.NXDOMAIN


@pytest.mark.parametrize(
    "rdtype,expected",
    [("A", {"A": ["198.18.0.5"]}), ("AAAA", {"AAAA": ["2001:db8:c0ff:ee::5"]}),
     ("ANY", {"A": ["198.18.0.5"]})],
)
def test_node_names_answer_their_vips(rdtype: str, expected: dict[str, list[str]]) -> None:
    r = ask(make_zone(), "mn.a.example.", rdtype)
    assert r.flags & dns.flags.AA and r.rcode() == dns.rcode.NOERROR
    got = {dns.rdatatype.to_text(rr.rdtype): sorted(rd.to_text() for rd in rr) for rr in r.answer}
    assert got == expected
    assert all(rr.ttl == 60 for rr in r.answer)


def test_node_ttl_override_is_used() -> None:
    r = ask(make_zone(), "v4only.a.example.", "A")
    assert [rr.ttl for rr in r.answer] == [7]


def test_names_are_matched_case_insensitively_and_question_case_is_kept() -> None:
    r = ask(make_zone(), "MN.A.Example.", "A")
    assert r.question[0].name.to_text() == "MN.A.Example."
    assert [rd.to_text() for rr in r.answer for rd in rr] == ["198.18.0.5"]


def test_ns_host_names_answer_their_own_addresses() -> None:
    zone = make_zone()
    assert rrset(ask(zone, "dc.a.example.", "A"), "answer", "dc.a.example.", "A") == ["192.0.2.1"]
    assert rrset(ask(zone, "dc.a.example.", "AAAA"), "answer", "dc.a.example.", "AAAA") == ["2001:db8::1"]


def test_missing_name_is_nxdomain_with_negative_caching_soa() -> None:
    zone = make_zone()
    r = ask(zone, "nobody.a.example.", "A")
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert r.flags & dns.flags.AA
    assert not r.answer
    soa = [rr for rr in r.authority if rr.rdtype == dns.rdatatype.SOA]
    assert len(soa) == 1 and soa[0].ttl == 30  # min(SOA TTL 300, MINIMUM 30)
    assert zone.stats.nxdomain == 1


@pytest.mark.parametrize(
    "name,rdtype",
    [("v4only.a.example.", "AAAA"), ("mn.a.example.", "MX"), ("a.example.", "A"), ("sub.a.example.", "A")],
)
def test_existing_name_without_the_type_is_nodata(name: str, rdtype: str) -> None:
    r = ask(make_zone(), name, rdtype)
    assert r.rcode() == dns.rcode.NOERROR
    assert r.flags & dns.flags.AA
    assert not r.answer
    assert rrset(r, "authority", "a.example.", "SOA")


@pytest.mark.parametrize("name", ["b.example.", "example.", ".", "xa.example."])
def test_names_outside_the_zone_are_refused_without_aa(name: str) -> None:
    zone = make_zone()
    r = ask(zone, name, "A")
    assert r.rcode() == dns.rcode.REFUSED
    assert not r.flags & dns.flags.AA
    assert not r.answer
    assert zone.stats.refused == 1


def test_zone_transfer_is_refused() -> None:
    r = ask(make_zone(), "a.example.", "AXFR", tcp=True)
    assert r.rcode() == dns.rcode.REFUSED


def test_other_classes_are_refused() -> None:
    q = dns.message.make_query("a.example.", "TXT", rdclass="CH")
    wire = make_zone().respond(q.to_wire(), tcp=False)
    assert wire is not None and dns.message.from_wire(wire).rcode() == dns.rcode.REFUSED


def test_garbage_after_a_header_is_formerr_with_the_id_copied() -> None:
    zone = make_zone()
    wire = zone.respond(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff\xff", tcp=False)
    assert wire is not None
    r = dns.message.from_wire(wire)
    assert r.id == 0x1234 and r.rcode() == dns.rcode.FORMERR and r.flags & dns.flags.QR
    assert zone.stats.formerr == 1 and zone.stats.queries == 1


def test_input_shorter_than_a_header_is_dropped_and_counted() -> None:
    zone = make_zone()
    assert zone.respond(b"\x00\x01\x02", tcp=False) is None
    assert zone.respond(b"", tcp=True) is None
    assert zone.stats.dropped == 2 and zone.stats.answers == 0


def test_responses_are_never_answered() -> None:
    zone = make_zone()
    q = dns.message.make_query("a.example.", "SOA")
    resp = dns.message.make_response(q)
    assert zone.respond(resp.to_wire(), tcp=False) is None
    assert zone.stats.dropped == 1


def test_two_questions_are_formerr() -> None:
    q = dns.message.make_query("a.example.", "SOA")
    q.question.append(q.question[0])
    wire = make_zone().respond(q.to_wire(), tcp=False)
    assert wire is not None and dns.message.from_wire(wire).rcode() == dns.rcode.FORMERR


@pytest.mark.parametrize("opcode", [dns.opcode.NOTIFY, dns.opcode.UPDATE, dns.opcode.STATUS])
def test_other_opcodes_are_notimp(opcode: dns.opcode.Opcode) -> None:
    zone = make_zone()
    q = dns.message.make_query("a.example.", "SOA")
    q.set_opcode(opcode)
    wire = zone.respond(q.to_wire(), tcp=False)
    assert wire is not None
    r = dns.message.from_wire(wire)
    assert r.rcode() == dns.rcode.NOTIMP and r.opcode() == opcode
    assert zone.stats.notimp == 1


def test_edns_query_gets_opt_with_our_payload() -> None:
    r = ask(make_zone(), "mn.a.example.", "A", use_edns=0, payload=4096)
    assert r.edns == 0 and r.payload == 1232


def test_edns_version_above_zero_is_badvers() -> None:
    r = ask(make_zone(), "mn.a.example.", "A", use_edns=1)
    assert r.rcode() == dns.rcode.BADVERS and not r.answer


def test_plain_udp_answer_over_512_bytes_is_truncated() -> None:
    zone = make_zone()
    r = ask(zone, "many.a.example.", "A")
    assert r.flags & dns.flags.TC
    assert not r.answer
    assert zone.stats.truncated == 1


def test_edns_payload_lets_the_same_answer_through_udp() -> None:
    # (from a query padded enough that the answer stays within UDP_AMPLIFICATION_MAX times it)
    r = ask(make_zone(), "many.a.example.", "A", use_edns=0, payload=1232, pad=400)
    assert not r.flags & dns.flags.TC
    assert len(rrset(r, "answer", "many.a.example.", "A")) == 50


def test_our_udp_limit_caps_a_larger_client_payload() -> None:
    r = ask(make_zone(), "huge.a.example.", "A", use_edns=0, payload=4096)
    assert r.flags & dns.flags.TC and not r.answer


def test_tcp_answer_is_never_truncated() -> None:
    r = ask(make_zone(), "huge.a.example.", "A", tcp=True)
    assert not r.flags & dns.flags.TC
    assert len(rrset(r, "answer", "huge.a.example.", "A")) == 100


def test_glue_is_dropped_before_the_answer_is_truncated() -> None:
    many_ns = [NameServer(f"ns{i}.a.example.", (f"192.0.2.{i}", f"2001:db8::{i}")) for i in range(1, 13)]
    zone = AuthoritativeZone(
        "a.example.",
        soa=SoaFields("ns1.a.example.", "hostmaster.a.example."),
        nameservers=many_ns,
        marker=None,
        lookup=lambda name: None,
    )
    r = ask(zone, "a.example.", "NS", use_edns=0, payload=512, pad=128)
    assert not r.flags & dns.flags.TC
    assert len(rrset(r, "answer", "a.example.", "NS")) == 12
    assert not r.additional


def test_failing_record_source_gives_servfail_not_an_exception() -> None:
    def broken(name: dns.name.Name) -> NodeRecords | None:
        raise RuntimeError("registry down")

    zone = AuthoritativeZone(
        "a.example.",
        soa=SoaFields("dc.a.example.", "hostmaster.a.example."),
        nameservers=[NameServer("dc.a.example.", ("192.0.2.1",))],
        marker=MARKER,
        lookup=broken,
    )
    r = ask(zone, "mn.a.example.", "A")
    assert r.rcode() == dns.rcode.SERVFAIL and not r.flags & dns.flags.AA
    assert zone.stats.servfail == 1
    # The apex does not need the record source.
    assert ask(zone, "a.example.", "TXT").rcode() == dns.rcode.NOERROR


def test_stats_count_queries_answers_and_types() -> None:
    zone = make_zone()
    for name, rdtype in [("a.example.", "SOA"), ("mn.a.example.", "A"), ("mn.a.example.", "A")]:
        ask(zone, name, rdtype)
    assert zone.stats.queries == 3 and zone.stats.answers == 3
    assert zone.stats.by_type == {"SOA": 1, "A": 2}


@settings(max_examples=400)
@given(st.binary(max_size=600), st.booleans())
def test_random_bytes_never_raise(data: bytes, tcp: bool) -> None:
    out = make_zone().respond(data, tcp=tcp)
    if out is not None:
        assert len(out) >= 12 and out[:2] == data[:2]


@settings(max_examples=400)
@given(st.binary(min_size=0, max_size=300), st.booleans())
def test_random_bodies_behind_a_query_header_never_raise(body: bytes, tcp: bool) -> None:
    header = b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01"
    out = make_zone().respond(header + body, tcp=tcp)
    assert out is not None and out[:2] == b"\xab\xcd"
    if not tcp:
        assert len(out) <= UDP_AMPLIFICATION_MAX * len(header + body)


AMP_NAMES = ["a.example.", "mn.a.example.", "v4only.a.example.", "many.a.example.", "huge.a.example.",
             "dc.a.example.", "ns1.sub.a.example.", "sub.a.example.", "nope.a.example.", "other.example.", "."]
AMP_TYPES = ["A", "AAAA", "ANY", "TXT", "NS", "SOA", "MX", "AXFR", "CNAME"]


@pytest.mark.parametrize("use_edns,payload", [(False, 512), (0, 512), (0, 1232), (0, 4096)])
def test_no_udp_answer_is_more_than_the_amplification_bound_times_its_query(use_edns: int | bool,
                                                                             payload: int) -> None:
    """A query's source address is not verified, so a UDP answer is at most UDP_AMPLIFICATION_MAX
    times the query (for every name and type, with and without EDNS); a larger one is truncated and
    complete over TCP."""
    zone = make_zone()
    for name in AMP_NAMES:
        for rdtype in AMP_TYPES:
            q = dns.message.make_query(name, rdtype, use_edns=use_edns, payload=payload).to_wire()
            udp = zone.respond(q, tcp=False)
            assert udp is not None and len(udp) <= UDP_AMPLIFICATION_MAX * len(q), (name, rdtype, len(udp))
            if dns.message.from_wire(udp).flags & dns.flags.TC:
                tcp = zone.respond(q, tcp=True)
                assert tcp is not None and not dns.message.from_wire(tcp).flags & dns.flags.TC
    assert zone.stats.amplification_truncated > 0
    assert UDP_AMPLIFICATION_MAX == 4
