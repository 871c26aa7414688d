"""The sans-IO discovery machine, fed canned dnspython responses with injected time."""

from collections.abc import Callable
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntmobile.core.discovery import (
    Discovery,
    DiscoveryCache,
    DiscoveryResult,
    Evidence,
    Outcome,
    OutgoingQuery,
)
from ntmobile.core.dnsauth import (
    AuthoritativeZone,
    DcMarker,
    NameServer,
    NodeRecords,
    SoaFields,
    format_marker,
)

KEY = bytes(range(32))
MARKER = format_marker("192.0.2.53", 4500, KEY)
R1 = ("10.9.0.1", 53)
R2 = ("10.9.0.2", 53)
SOA_A = "dc.a.example. hostmaster.a.example. 1 3600 600 86400 30"
SOA_B = "ns.b.example. hostmaster.b.example. 1 3600 600 86400 20"


def rr(name: str, rdtype: str, *rdatas: str, ttl: int = 300) -> dns.rrset.RRset:
    return dns.rrset.from_text_list(name, ttl, "IN", rdtype, list(rdatas))


@dataclass
class Reply:
    rcode: int = dns.rcode.NOERROR
    answer: list[dns.rrset.RRset] = field(default_factory=list)
    authority: list[dns.rrset.RRset] = field(default_factory=list)
    additional: list[dns.rrset.RRset] = field(default_factory=list)
    aa: bool = False
    tc: bool = False


def build(query_wire: bytes, reply: Reply) -> bytes:
    q = dns.message.from_wire(query_wire)
    r = dns.message.make_response(q)
    r.set_rcode(dns.rcode.Rcode(reply.rcode))
    r.answer = list(reply.answer)
    r.authority = list(reply.authority)
    r.additional = list(reply.additional)
    if reply.aa:
        r.flags |= dns.flags.AA
    if reply.tc:
        r.flags |= dns.flags.TC
        r.answer = []
    return r.to_wire()


# A responder takes the outgoing query and returns the response wire, or None for "lost".
Responder = Callable[[OutgoingQuery], bytes | None]


def resolver_data(qname: dns.name.Name, rdtype: int) -> Reply:
    """What a recursive resolver knows about the example world."""
    name = qname.to_text().lower()
    t = dns.rdatatype.to_text(dns.rdatatype.RdataType(rdtype))
    soa_a = [rr("a.example.", "SOA", SOA_A, ttl=30)]
    soa_b = [rr("b.example.", "SOA", SOA_B, ttl=300)]
    if name == "a.example." and t == "NS":
        return Reply(answer=[rr(name, "NS", "dc.a.example.", ttl=120)],
                     additional=[rr("dc.a.example.", "A", "10.1.0.1")])
    if name == "b.example." and t == "NS":
        return Reply(answer=[rr(name, "NS", "ns1.b.example.", "ns2.b.example.", ttl=200)])
    if name == "ns1.b.example." and t == "A":
        return Reply(answer=[rr(name, "A", "10.2.0.1")])
    if name == "ns2.b.example." and t == "A":
        return Reply(answer=[rr(name, "A", "10.2.0.2")])
    if name.startswith("ns") and name.endswith(".b.example.") and t == "AAAA":
        return Reply(authority=soa_b)
    if name == "www.b.example." and t == "A":
        return Reply(answer=[rr(name, "A", "192.0.2.10", ttl=90)])
    if name == "www.b.example." and t == "AAAA":
        return Reply(answer=[rr(name, "AAAA", "2001:db8::10", ttl=80)])
    if name == "alias.b.example." and t in ("A", "AAAA", "NS"):
        answer = [rr(name, "CNAME", "www.b.example.")]
        if t == "A":
            answer.append(rr("www.b.example.", "A", "192.0.2.10"))
        if t == "AAAA":
            answer.append(rr("www.b.example.", "AAAA", "2001:db8::10"))
        return Reply(answer=answer, authority=soa_b if t == "NS" else [])
    if name in ("mn.a.example.",):
        return Reply(authority=soa_a)
    if name in ("www.b.example.", "noaddr.b.example."):
        return Reply(authority=soa_b)
    return Reply(rcode=dns.rcode.NXDOMAIN, authority=soa_b if name.endswith("b.example.") else soa_a)


def world(
    lost: set[tuple[str, int]] | None = None,
    ns_override: dict[str, Reply] | None = None,
    txt_servers: dict[str, AuthoritativeZone | Reply] | None = None,
) -> tuple[Responder, list[OutgoingQuery]]:
    """A resolver at R1/R2 and authoritative servers reached directly for TXT."""
    lost = lost or set()
    seen: list[OutgoingQuery] = []
    txt_servers = txt_servers if txt_servers is not None else {}

    def respond(q: OutgoingQuery) -> bytes | None:
        seen.append(q)
        if q.dest in lost:
            return None
        msg = dns.message.from_wire(q.wire)
        qname, rdtype = msg.question[0].name, msg.question[0].rdtype
        if q.dest in (R1, R2):
            assert msg.flags & dns.flags.RD
            override = (ns_override or {}).get(q.dest[0])
            return build(q.wire, override or resolver_data(qname, rdtype))
        server = txt_servers.get(q.dest[0])
        if server is None:
            return None
        assert not msg.flags & dns.flags.RD
        if isinstance(server, AuthoritativeZone):
            return server.respond(q.wire, tcp=q.tcp)
        return build(q.wire, server)

    return respond, seen


def dc_zone(marker: str | None = MARKER) -> AuthoritativeZone:
    return AuthoritativeZone(
        "a.example.",
        soa=SoaFields("dc.a.example.", "hostmaster.a.example."),
        nameservers=[NameServer("dc.a.example.", ("10.1.0.1",))],
        marker=marker,
        lookup={dns.name.from_text("mn.a.example."): NodeRecords(a=("198.18.0.5",))}.get,
        ttl=60,
    )


def b_zone_reply() -> Reply:
    return Reply(aa=True, authority=[rr("b.example.", "SOA", SOA_B, ttl=300)])


def drive(d: Discovery, respond: Responder, now: float = 100.0) -> DiscoveryResult:
    """Deliver responses at once; jump the clock to the timer when nothing is pending."""
    for _ in range(1000):
        if d.done:
            return d.result
        out = d.next_queries(now)
        delivered = False
        for q in out:
            wire = respond(q)
            if wire is not None:
                d.receive(q.id, wire, now)
                delivered = True
        if d.done:
            return d.result
        if not delivered and not out:
            timer = d.get_timer()
            assert timer is not None and timer >= now
            now = timer
            d.handle_timer(now)
    raise AssertionError("discovery did not finish")


def test_name_in_a_dc_zone_is_an_ntm_peer_with_the_marker_and_evidence() -> None:
    respond, seen = world(txt_servers={"10.1.0.1": dc_zone()})
    d = Discovery("mn.a.example", [R1], 100.0, ns_port=5300)
    result = drive(d, respond)
    assert result.outcome is Outcome.NTM_PEER
    assert result.marker == DcMarker("192.0.2.53", 4500, KEY)
    ev = result.evidence
    assert ev.zone == "a.example." and ev.ns_names == ("dc.a.example.",)
    assert ev.ns_addresses == ("10.1.0.1",)
    assert ev.txt == (MARKER,) and ev.txt_server == "10.1.0.1:5300"
    assert any("decision: NTM peer" in line for line in ev.lines)
    # TXT went straight to the zone's name server at the NS port, not to the resolver.
    txt = [q for q in seen if dns.message.from_wire(q.wire).question[0].rdtype == dns.rdatatype.TXT]
    assert [q.dest for q in txt] == [("10.1.0.1", 5300)]
    assert result.ttl == 60  # min(NS 120, TXT 60)


def test_name_in_an_ordinary_zone_is_a_general_node_with_a_and_aaaa() -> None:
    respond, seen = world(txt_servers={"10.2.0.1": b_zone_reply(), "10.2.0.2": b_zone_reply()})
    result = drive(Discovery("www.b.example.", [R1], 100.0), respond)
    assert result.outcome is Outcome.GENERAL_NODE
    assert result.a == ("192.0.2.10",) and result.aaaa == ("2001:db8::10",)
    ev = result.evidence
    assert ev.zone == "b.example." and ev.ns_names == ("ns1.b.example.", "ns2.b.example.")
    assert ev.ns_addresses == ("10.2.0.1", "10.2.0.2")
    assert ev.txt == () and ev.a == ("192.0.2.10",) and ev.aaaa == ("2001:db8::10",)
    assert any("decision: general node" in line for line in ev.lines)
    assert result.marker is None
    assert result.ttl == 20  # the NODATA TXT answer's negative TTL min(300, 20)
    # No glue in the NS answer: the NS hosts' addresses came from the resolver.
    assert any(dns.message.from_wire(q.wire).question[0].name.to_text() == "ns1.b.example." for q in seen)


def test_txt_without_a_valid_marker_means_general_node() -> None:
    other = Reply(aa=True, answer=[rr("b.example.", "TXT", '"v=spf1 -all"', '"v=ntm1; dc=nonsense"')])
    respond, _ = world(txt_servers={"10.2.0.1": other})
    result = drive(Discovery("www.b.example.", [R1], 100.0), respond)
    assert result.outcome is Outcome.GENERAL_NODE
    assert sorted(result.evidence.txt) == ["v=ntm1; dc=nonsense", "v=spf1 -all"]


def test_missing_name_is_nxdomain_with_negative_ttl() -> None:
    respond, seen = world()
    result = drive(Discovery("nope.b.example.", [R1], 100.0), respond)
    assert result.outcome is Outcome.NXDOMAIN
    assert result.ttl == 20
    assert len(seen) == 1


def test_existing_name_without_addresses_is_nodata() -> None:
    respond, _ = world(txt_servers={"10.2.0.1": b_zone_reply()})
    result = drive(Discovery("noaddr.b.example.", [R1], 100.0), respond)
    assert result.outcome is Outcome.NODATA


def test_walks_up_labels_when_no_soa_is_given() -> None:
    asked: list[str] = []

    def bare(q: OutgoingQuery) -> bytes | None:
        msg = dns.message.from_wire(q.wire)
        if q.dest == R1 and msg.question[0].rdtype == dns.rdatatype.NS:
            asked.append(msg.question[0].name.to_text())
        name = msg.question[0].name.to_text()
        if q.dest == R1 and msg.question[0].rdtype == dns.rdatatype.NS and name != "a.example.":
            return build(q.wire, Reply())  # NODATA without SOA
        return inner(q)

    inner, _ = world(txt_servers={"10.1.0.1": dc_zone()})
    result = drive(Discovery("x.y.mn.a.example.", [R1], 100.0), bare)
    assert result.outcome is Outcome.NTM_PEER
    assert asked == ["x.y.mn.a.example.", "y.mn.a.example.", "mn.a.example.", "a.example."]


def test_referral_from_an_authoritative_only_server_gives_the_zone_cut_and_glue() -> None:
    referral = Reply(
        authority=[rr("a.example.", "NS", "dc.a.example.")],
        additional=[rr("dc.a.example.", "A", "10.1.0.1")],
    )
    respond, _ = world(ns_override={R1[0]: referral}, txt_servers={"10.1.0.1": dc_zone()})
    result = drive(Discovery("mn.a.example.", [R1], 100.0), respond)
    assert result.outcome is Outcome.NTM_PEER
    assert result.evidence.ns_addresses == ("10.1.0.1",)


def test_alias_is_followed_to_the_target_zone() -> None:
    respond, _ = world(txt_servers={"10.2.0.1": b_zone_reply()})
    result = drive(Discovery("alias.b.example.", [R1], 100.0), respond)
    assert result.outcome is Outcome.GENERAL_NODE
    assert result.evidence.cnames == ("alias.b.example. -> www.b.example.",)
    assert result.a == ("192.0.2.10",)


def test_lost_queries_are_retransmitted_with_backoff_then_the_next_resolver_is_used() -> None:
    respond, seen = world(lost={R1}, txt_servers={"10.1.0.1": dc_zone()})
    d = Discovery("mn.a.example.", [R1, R2], 100.0, timeout=0.5, retries=2, backoff=2.0, deadline=30)
    timers: list[float] = []
    now = 100.0
    while not d.done:
        out = d.next_queries(now)
        for q in out:
            wire = respond(q)
            if wire is not None:
                d.receive(q.id, wire, now)
        if not d.done and all(q.dest == R1 for q in out):
            timer = d.get_timer()
            assert timer is not None
            timers.append(timer - now)
            now = timer
            d.handle_timer(now)
    result = d.result
    assert result.outcome is Outcome.NTM_PEER
    to_r1 = [q for q in seen if q.dest == R1]
    assert len(to_r1) == 3  # first try + 2 retransmissions; later queries start with R2
    assert len({q.wire for q in to_r1}) == 1  # same message (and id) each time
    assert timers[:3] == [0.5, 1.0, 2.0]  # exponential backoff
    assert sum(1 for line in result.evidence.lines if "retransmitting" in line) == 2
    assert d.stats.retransmits == 2


def test_silent_name_server_is_skipped_for_the_next_one() -> None:
    respond, seen = world(lost={("10.2.0.1", 53)}, txt_servers={"10.2.0.2": b_zone_reply()})
    result = drive(Discovery("www.b.example.", [R1], 100.0, retries=1), respond)
    assert result.outcome is Outcome.GENERAL_NODE
    assert result.evidence.txt_server == "10.2.0.2:53"
    txt_dests = [q.dest[0] for q in seen if q.dest not in (R1, R2)]
    assert txt_dests == ["10.2.0.1", "10.2.0.1", "10.2.0.2"]


@pytest.mark.parametrize(
    "bad",
    [Reply(rcode=dns.rcode.REFUSED), Reply(rcode=dns.rcode.SERVFAIL, aa=True),
     Reply(answer=[rr("b.example.", "TXT", '"x"')])],  # not authoritative: lame
    ids=["refused", "servfail", "lame"],
)
def test_bad_name_server_answers_move_to_the_next_server(bad: Reply) -> None:
    respond, _ = world(txt_servers={"10.2.0.1": bad, "10.2.0.2": b_zone_reply()})
    result = drive(Discovery("www.b.example.", [R1], 100.0), respond)
    assert result.outcome is Outcome.GENERAL_NODE
    assert result.evidence.txt_server == "10.2.0.2:53"


def test_resolver_servfail_moves_to_the_next_resolver() -> None:
    respond, _ = world(
        ns_override={R1[0]: Reply(rcode=dns.rcode.SERVFAIL)}, txt_servers={"10.1.0.1": dc_zone()}
    )
    result = drive(Discovery("mn.a.example.", [R1, R2], 100.0), respond)
    assert result.outcome is Outcome.NTM_PEER
    assert any("SERVFAIL" in line for line in result.evidence.lines)


def test_hard_send_failure_moves_on_at_once() -> None:
    respond, _ = world(txt_servers={"10.1.0.1": dc_zone()})
    d = Discovery("mn.a.example.", [R1, R2], 100.0)
    (first,) = d.next_queries(100.0)
    assert first.dest == R1
    d.fail(first.id, "ConnectionRefusedError", 100.0)
    (second,) = d.next_queries(100.0)
    assert second.dest == R2
    wire = respond(second)
    assert wire is not None
    d.receive(second.id, wire, 100.0)
    assert drive(d, respond).outcome is Outcome.NTM_PEER


def test_truncated_answer_is_retried_over_tcp() -> None:
    zone = dc_zone()

    def tc_on_udp(q: OutgoingQuery) -> bytes | None:
        if q.dest[0] == "10.1.0.1" and not q.tcp:
            return build(q.wire, Reply(aa=True, tc=True))
        return respond(q)

    respond, seen = world(txt_servers={"10.1.0.1": zone})
    d = Discovery("mn.a.example.", [R1], 100.0)
    result = drive(d, tc_on_udp)
    assert result.outcome is Outcome.NTM_PEER
    assert [(q.dest[0], q.tcp) for q in seen if q.dest[0] == "10.1.0.1"] == [("10.1.0.1", True)]
    assert d.stats.tcp_fallbacks == 1


def test_no_answer_anywhere_ends_in_servfail_by_the_deadline() -> None:
    respond, seen = world(lost={R1, R2})
    d = Discovery("mn.a.example.", [R1, R2], 100.0, timeout=1.0, retries=10, deadline=3.0)
    result = drive(d, respond)
    assert result.outcome is Outcome.SERVFAIL
    assert "deadline of 3 s exceeded" in result.reason
    assert result.ttl == 1
    assert d.get_timer() is None
    assert d.next_queries(200.0) == []


def test_unreachable_resolvers_give_servfail_once_every_server_was_tried() -> None:
    respond, seen = world(lost={R1, R2})
    d = Discovery("mn.a.example.", [R1, R2], 100.0, timeout=0.2, retries=1, deadline=60.0)
    result = drive(d, respond)
    assert result.outcome is Outcome.SERVFAIL
    assert "no resolver answered" in result.reason
    assert [q.dest for q in seen] == [R1, R1, R2, R2]


def test_mismatched_or_late_responses_are_ignored() -> None:
    respond, _ = world(txt_servers={"10.1.0.1": dc_zone()})
    d = Discovery("mn.a.example.", [R1], 100.0)
    (q,) = d.next_queries(100.0)
    good = respond(q)
    assert good is not None
    wrong_id = bytes([good[0] ^ 0xFF]) + good[1:]
    other = dns.message.make_response(dns.message.make_query("evil.example.", "NS", id=int.from_bytes(good[:2])))
    d.receive(q.id, wrong_id, 100.0)
    d.receive(q.id, other.to_wire(), 100.0)
    d.receive(q.id, b"\x00", 100.0)
    d.receive(9999, good, 100.0)
    d.receive(q.id, q.wire, 100.0)  # a query, not a response
    assert d.stats.ignored == 5 and not d.done
    d.receive(q.id, good, 100.0)
    assert drive(d, respond).outcome is Outcome.NTM_PEER


def test_invalid_name_is_refused_at_construction() -> None:
    with pytest.raises(ValueError):
        Discovery("a" * 64 + ".example.", [R1], 0.0)
    with pytest.raises(ValueError):
        Discovery("ok.example.", [], 0.0)


# -------------------------------------------------------------------------------------- cache


def result(fqdn: str, ttl: int) -> DiscoveryResult:
    return DiscoveryResult(fqdn, Outcome.GENERAL_NODE, ttl, "test", Evidence(), a=("192.0.2.1",))


def test_cache_returns_results_until_their_ttl_runs_out() -> None:
    cache = DiscoveryCache()
    cache.put(result("www.b.example.", 30), now=10.0)
    assert cache.get("WWW.B.Example", now=39.9) is not None
    assert cache.get("www.b.example.", now=40.0) is None
    assert len(cache) == 0
    assert cache.stats.hits == 1 and cache.stats.misses == 1


def test_cache_skips_zero_ttl_and_caps_long_ttls() -> None:
    cache = DiscoveryCache(max_ttl=60)
    cache.put(result("a.example.", 0), now=0.0)
    assert cache.get("a.example.", now=0.0) is None
    cache.put(result("b.example.", 86400), now=0.0)
    assert cache.get("b.example.", now=59.0) is not None
    assert cache.get("b.example.", now=61.0) is None


def test_cache_evicts_least_recently_used() -> None:
    cache = DiscoveryCache(max_entries=2)
    cache.put(result("one.example.", 100), now=0.0)
    cache.put(result("two.example.", 100), now=0.0)
    assert cache.get("one.example.", now=1.0) is not None
    cache.put(result("three.example.", 100), now=1.0)
    assert cache.get("two.example.", now=1.0) is None
    assert cache.get("one.example.", now=1.0) is not None
    assert cache.stats.evictions == 1
    assert cache.purge(now=1000.0) == 2


def test_discovery_results_can_be_cached_by_their_ttl() -> None:
    respond, _ = world(txt_servers={"10.1.0.1": dc_zone()})
    res = drive(Discovery("mn.a.example.", [R1], 100.0), respond)
    cache = DiscoveryCache()
    cache.put(res, now=100.0)
    assert cache.get("mn.a.example", now=100.0 + res.ttl - 0.1) is res
    assert cache.get("mn.a.example", now=100.0 + res.ttl) is None


def test_late_error_from_an_abandoned_server_does_not_skip_the_current_one() -> None:
    respond, _ = world(txt_servers={"10.1.0.1": dc_zone()})
    d = Discovery("mn.a.example.", [R1, R2], 100.0, timeout=0.5, retries=0)
    (first,) = d.next_queries(100.0)
    d.handle_timer(100.5)  # R1 silent: on to R2
    (second,) = d.next_queries(100.5)
    assert second.dest == R2
    d.receive(first.id, build(first.wire, Reply(rcode=dns.rcode.REFUSED)), 100.6)
    assert d.next_queries(100.6) == []  # still waiting for R2, nothing skipped
    wire = respond(second)
    assert wire is not None
    d.receive(second.id, wire, 100.7)
    assert drive(d, respond, now=100.7).outcome is Outcome.NTM_PEER


@settings(max_examples=300)
@given(st.binary(max_size=300), st.booleans())
def test_random_responses_never_raise_and_the_discovery_still_finishes(junk: bytes, keep_id: bool) -> None:
    respond, _ = world(txt_servers={"10.1.0.1": dc_zone()})
    d = Discovery("mn.a.example.", [R1], 100.0)
    (q,) = d.next_queries(100.0)
    data = (q.wire[:2] + junk[2:]) if keep_id and len(junk) >= 2 else junk
    d.receive(q.id, data, 100.0)
    d.fail(q.id + 1, "bogus", 100.0)
    result = drive(d, respond)
    assert result.outcome in (Outcome.NTM_PEER, Outcome.SERVFAIL, Outcome.NXDOMAIN, Outcome.NODATA)


def test_upward_referral_to_the_root_is_not_a_zone_cut() -> None:
    upward = Reply(authority=[rr(".", "NS", "a.root-servers.net.")])
    respond, seen = world(ns_override={R1[0]: upward})
    result = drive(Discovery("mn.a.example.", [R1], 100.0), respond)
    assert result.outcome is Outcome.SERVFAIL
    assert "no zone cut" in result.reason
    assert len(seen) == 4  # mn.a.example., a.example., example., .


def test_cache_lookup_of_an_invalid_name_is_a_miss_not_an_error() -> None:
    cache = DiscoveryCache()
    assert cache.get("a" * 64 + ".example.", now=0.0) is None


@given(st.one_of(st.text(alphabet="abcXYZ019-_.*\\ é", max_size=30),
                 st.lists(st.text(alphabet="abz09-", min_size=1, max_size=70), min_size=1, max_size=5).map(".".join)))
@settings(max_examples=1000)
def test_cache_key_fast_path_gives_what_dnspython_gives(name: str) -> None:
    from ntmobile.core.discovery import cache_key

    try:
        want = dns.name.from_text(name).canonicalize().to_text()
    except Exception:
        want = "invalid:" + name.lower()
    assert cache_key(name) == want
