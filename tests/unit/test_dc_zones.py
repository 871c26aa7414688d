"""The DC's zones (core/dc/zones.py): one per served domain, the query's zone answers, nodes are
published by their VIPs and relays are not."""

from __future__ import annotations

import dns.message
import dns.rcode

from ntmobile.core.dc import DcZones, rsn_refused
from ntmobile.core.dnsauth import format_marker
from ntmobile.core.registry import ClientRecord, MemoryStore, Pools
from ntmobile.wire import Role

POOLS = Pools("100.64.1.0/24", "fd00:6e74:1::/64", "100.127.0.0/16", "fd00:6e74:ff::/64")


def _zones() -> tuple[DcZones, MemoryStore]:
    store = MemoryStore(POOLS)
    for i, (name, role) in enumerate([("mn.a.example", Role.NODE), ("rs.a.example", Role.RELAY)]):
        rec = ClientRecord(bytes([0xA0 + i]) * 8, name, role, bytes([i]) * 32)
        store.add_client(rec)
        if role is Role.NODE:
            rec.vip4, rec.vip6 = store.assign_vips(rec.client_id, rec)
    zones = DcZones(["a.example", "b.example"], store, ns_name="ns1.a.example", ns_addresses=["192.0.2.10"],
                    marker=format_marker("192.0.2.10", 7410, b"k" * 32), serial=1)
    return zones, store


def _ask(zones: DcZones, name: str, rdtype: str) -> dns.message.Message:
    wire = zones.respond(dns.message.make_query(name, rdtype, use_edns=0, payload=1232).to_wire(), tcp=False)
    assert wire is not None
    return dns.message.from_wire(wire)


def test_each_domain_has_its_zone_and_its_ns_host() -> None:
    zones, _store = _zones()
    assert [z.origin.to_text() for z in zones.zones] == ["a.example.", "b.example."]
    ns_a = _ask(zones, "a.example", "NS").answer[0]
    ns_b = _ask(zones, "b.example", "NS").answer[0]
    assert [r.target.to_text() for r in ns_a] == ["ns1.a.example."]
    assert [r.target.to_text() for r in ns_b] == ["dc.b.example."]  # the second zone answers its own names
    assert _ask(zones, "b.example", "TXT").answer  # the DC marker at every apex


def test_nodes_are_published_by_their_vips_relays_and_strangers_are_not() -> None:
    zones, store = _zones()
    rec = store.client_by_name("mn.a.example")
    assert rec is not None
    a = _ask(zones, "mn.a.example", "A")
    assert [r.address for r in a.answer[0]] == [rec.vip4]
    assert _ask(zones, "rs.a.example", "A").rcode() == dns.rcode.NXDOMAIN
    assert _ask(zones, "x.a.example", "A").rcode() == dns.rcode.NXDOMAIN
    assert _ask(zones, "www.c.example", "A").rcode() == dns.rcode.REFUSED  # outside every zone


def test_a_malformed_query_is_answered_by_the_first_zone() -> None:
    zones, _store = _zones()
    assert zones.respond(b"\x12\x34" + b"\x00" * 3, tcp=False) == zones.zones[0].respond(b"\x12\x34" + b"\x00" * 3,
                                                                                          tcp=False)


def test_rsn_refused_is_the_pools_then_the_dcs_addresses_once_each() -> None:
    assert rsn_refused(("100.64.1.0/24", None, "100.127.0.0/16", ""), ("192.0.2.10", "192.0.2.10", "192.0.2.11")) \
        == ("100.64.1.0/24", "100.127.0.0/16", "192.0.2.10", "192.0.2.11")
