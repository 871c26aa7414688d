"""RS-N targets (issue 14 §3, docs/security.md "RS-N targets"): the DC directs RS-N paths only to
globally routable unicast addresses (or allow-listed ones), the relay checks again before it
installs a mapping, and the node's application gets REFUSED for a name no relay may reach."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from pathlib import Path

import dns.rcode
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntmobile.core.dc import DcCore, DirectionDecision, ResolveRequest
from ntmobile.core.discovery import DiscoveryResult, Outcome
from ntmobile.core.node import PathFailed, PathReady
from ntmobile.core.rs import ProbeRequest, RelayAdded
from ntmobile.core.stubpolicy import failure_rcode
from ntmobile.core.targets import SPECIAL4, SPECIAL6, TargetPolicy, special
from ntmobile.runtime.config import ConfigError, DcSettings, RsSettings, load
from ntmobile.wire import MessageType, RelayProbe, Status

from .harness import TEST_NETS
from .test_rs_core import GN_VIP, NODE_VIP, RS_OBSERVED, direct, events, make_rs, rs_n_direction
from .test_rsn_sequence import DC_EP, GN, POOLS, RS_EP, World

#: Every internal target the review found installed as a DNAT target (issue 14 §3), and more.
INTERNAL4 = ["127.0.0.1", "127.1.2.3", "169.254.169.254", "10.1.0.1", "172.16.5.5", "192.168.1.1", "0.0.0.0",
             "0.1.2.3", "224.0.0.1", "239.255.255.250", "255.255.255.255", "100.64.1.5", "100.127.0.9",
             "192.0.0.9", "198.18.0.1", "240.0.0.1", "192.0.2.40", "198.51.100.1", "203.0.113.1"]
INTERNAL6 = ["::1", "::", "fd00::1", "fd00:6e74:ffff::5", "fe80::1", "ff02::1", "::ffff:127.0.0.1",
             "::ffff:10.1.0.1", "::ffff:8.8.8.8", "64:ff9b::7f00:1", "64:ff9b::a01:1", "64:ff9b:1::1",
             "2002:7f00:1::1", "2001::1", "2001:db8::1", "3fff::1", "fec0::1", "100::1", "::127.0.0.1"]
GLOBAL = ["8.8.8.8", "1.1.1.1", "93.184.215.14", "192.31.196.1", "2606:4700::1111", "2a00:1450:4001::1",
          "64:ff9b::808:808", "2001:4:112::1", "2001:3::1"]


# -- the classifier ---------------------------------------------------------------------------------

@pytest.mark.parametrize("addr", INTERNAL4 + INTERNAL6)
def test_internal_addresses_are_refused(addr: str) -> None:
    why = TargetPolicy().refusal(addr)
    assert why is not None and "not a globally routable unicast address" in why


@pytest.mark.parametrize("addr", GLOBAL)
def test_global_unicast_addresses_are_accepted(addr: str) -> None:
    assert TargetPolicy().refusal(addr) is None


def test_own_addresses_pools_and_garbage_are_refused_whatever_the_allow_list() -> None:
    everything = ["0.0.0.0/0", "::/0"]
    p = TargetPolicy(allow=everything, refuse=["100.64.1.0/24", "fd00:6e74:1::/64", "192.0.2.10"])
    assert p.refusal("100.64.1.7") is not None  # a node VIP (pool)
    assert p.refusal("fd00:6e74:1::7") is not None
    assert p.refusal("192.0.2.10") is not None  # the DC's own address
    assert p.refusal("192.0.2.20", ["192.0.2.20"]) is not None  # a relay's own address
    assert p.refusal("2001:db8::20", ["2001:db8:0::20"]) is not None  # the same address, other spelling
    for bad in ("", "localhost", "10.0.0.1/8", "1.2.3.4.5", "fe80::1%eth0"):
        assert p.refusal(bad) is not None


def test_the_allow_list_opens_private_prefixes_but_never_fixed_ones() -> None:
    p = TargetPolicy(allow=["10.9.0.0/16", "fd12:3456::/32", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4",
                            "::ffff:0:0/96"])
    assert p.refusal("10.9.1.1") is None and p.refusal("fd12:3456::1") is None
    assert p.refusal("10.8.0.1") is not None and p.refusal("fd12:3457::1") is not None
    for fixed in ("127.0.0.1", "169.254.169.254", "224.0.0.1", "::ffff:10.9.1.1", "::1", "fe80::1"):
        assert p.refusal(fixed) is not None, fixed
    # NAT64: the embedded IPv4 address is judged with the same policy.
    assert p.refusal("64:ff9b::a09:101") is None and p.refusal("64:ff9b::7f00:1") is not None


def test_the_table_is_the_registry_with_every_deviation_explained() -> None:
    for s in (*SPECIAL4, *SPECIAL6):
        net = ipaddress.ip_network(s.prefix)  # strict: a prefix with host bits set raises
        assert s.rfc.startswith("RFC "), s
        assert s.ok == bool(s.registry) or s.note, f"{s.prefix}: decision differs from the registry without a note"
        assert not (s.fixed and s.ok), s
        assert special(net.network_address) is not None
    # (Python's ipaddress.is_global is no substitute: e.g. it calls 192.0.0.8, the IPv4 dummy address, global.)


def _edges() -> list[str]:
    out = []
    for s in (*SPECIAL4, *SPECIAL6):
        n = ipaddress.ip_network(s.prefix)
        for a in (int(n.network_address) - 1, int(n.network_address), int(n.broadcast_address),
                  int(n.broadcast_address) + 1):
            if 0 <= a < 2 ** n.max_prefixlen:
                out.append(str(ipaddress.ip_address(a) if n.version == 4 else ipaddress.IPv6Address(a)))
    return out


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.sampled_from(_edges()), st.ip_addresses().map(str),
                 st.integers(0, 2 ** 32 - 1).map(lambda v: str(ipaddress.IPv6Address((0x64FF9B << 96) | v)))),
       st.sampled_from([(), ("10.9.0.0/16", "2001:db8::/32"), TEST_NETS, ("0.0.0.0/0", "::/0")]))
def test_the_nft_prefixes_refuse_exactly_what_the_classifier_refuses(addr: str, allow: tuple[str, ...]) -> None:
    """What the relay's kernel drops after translation is the core's decision, prefix for prefix."""
    p = TargetPolicy(allow=allow, refuse=["100.64.0.0/10", "fd00:6e74::/32"])
    a = ipaddress.ip_address(addr)
    in_nft = any(a in n for n in p.refused_networks(a.version))
    assert in_nft == (p.refusal(addr) is not None), (addr, p.refusal(addr))


def test_a_bad_allow_list_prefix_is_one_clear_line(tmp_path: Path) -> None:
    dc = tmp_path / "dc.toml"
    dc.write_text('domain = "a.example"\naddress = "192.0.2.10"\nrsn_allow = ["10.9.0.0/16", "10.9.0.1/16"]\n')
    with pytest.raises(ConfigError) as exc:
        load(dc, DcSettings)
    msg = str(exc.value)
    assert "\n" not in msg and "rsn_allow" in msg and "10.9.0.1/16" in msg
    rs = tmp_path / "rs.toml"
    rs.write_text('name = "rs1"\ncredentials = []\naddress = "192.0.2.20"\nrsn_allow = ["intranet"]\n')
    with pytest.raises(ConfigError, match="rsn_allow.*intranet"):
        load(rs, RsSettings)
    rs.write_text('name = "rs1"\ncredentials = []\naddress = "192.0.2.20"\nrsn_allow = ["10.9.0.0/16"]\n')
    assert load(rs, RsSettings).rsn_allow == ["10.9.0.0/16"]
    assert DcSettings(domain="a.example", address="192.0.2.10").rsn_allow == []  # the default opens nothing


# -- the DC --------------------------------------------------------------------------------------------

def _ask(w: World, *, a: tuple[str, ...] = (), aaaa: tuple[str, ...] = ()) -> PathFailed | PathReady:
    rid = w.mn.request_path("www.gn.example", w.net.now)

    def answered() -> PathFailed | PathReady | None:
        for ev in list(w.net.hosts["dc"].events):
            if isinstance(ev, ResolveRequest):
                w.net.hosts["dc"].events.remove(ev)
                w.dc.resolution_result(ev.token, DiscoveryResult(ev.fqdn, Outcome.GENERAL_NODE, a=a, aaaa=aaaa),
                                       w.net.now)
        for ev in list(w.net.hosts["rs"].events):
            if isinstance(ev, ProbeRequest):
                w.net.hosts["rs"].events.remove(ev)
                w.rs.probe_result(ev.token, 1, 250, w.net.now)
        done = [*w.net.events_of("mn", PathFailed), *w.net.events_of("mn", PathReady)]
        return next((e for e in done if rid in e.request_ids), None)

    w.net.run_until(lambda: answered() is not None, max_time=10)
    got = answered()
    assert got is not None
    return got


def _relay_directions(w: World) -> int:
    return sum(1 for _, src, dst, _ in w.net.log if (src, dst) == ("dc", "rs"))


@pytest.mark.parametrize("target", INTERNAL4 + ["RELAY", "DC", "VIP", "GNVIP"])
def test_a_gn_name_resolving_to_an_internal_address_gets_no_rs_n_path(target: str) -> None:
    w = World()
    # The defaults (no allow-list) for the registry's ranges. For the deployment's own addresses, as the
    # daemon configures it (the pools and the DC's address refused) with the harness's internet
    # (documentation space) and, to show the VIP check holds by itself, the VIP ranges allow-listed.
    own = target.isupper()
    w.dc.config = dataclasses.replace(w.dc.config, rsn_allow=(*TEST_NETS, "100.64.0.0/10") if own else (),
                                      rsn_refuse=(DC_EP[0],))
    addr = {"RELAY": RS_EP[0], "DC": DC_EP[0], "VIP": w.mn.registration.vip4,  # type: ignore[union-attr]
            "GNVIP": "100.127.0.1"}.get(target, target)
    if target == "GNVIP":
        w.dc.config = dataclasses.replace(w.dc.config, rsn_refuse=(DC_EP[0], POOLS.gn_vip4 or ""))
    before = _relay_directions(w)
    got = _ask(w, a=(addr,))
    assert isinstance(got, PathFailed) and got.status is Status.ADDRESS_REFUSED, got
    assert _relay_directions(w) == before  # no Relay Direction (nor probe) left the DC
    assert not w.net.events_of("rs", RelayAdded) and not w.dc.paths
    decision = w.net.events_of("dc", DirectionDecision)[-1]
    assert decision.status is Status.ADDRESS_REFUSED and any(addr in line for line in decision.evidence)
    assert w.dc.stats["rsn_targets_refused"] == 1
    # What the application gets for it: REFUSED (never the internal address).
    assert failure_rcode(got.status) == dns.rcode.REFUSED


@pytest.mark.parametrize("addr", INTERNAL6)
def test_internal_ipv6_addresses_get_no_rs_n_path(addr: str) -> None:
    w = World()
    w.dc.config = dataclasses.replace(w.dc.config, rsn_allow=())
    got = _ask(w, aaaa=(addr,))
    assert isinstance(got, PathFailed) and got.status is Status.ADDRESS_REFUSED
    assert not w.net.events_of("rs", RelayAdded)


def test_the_first_acceptable_address_is_used_and_the_refused_ones_never() -> None:
    w = World()
    got = _ask(w, a=("127.0.0.1", "10.1.0.1", GN), aaaa=("fd00::1",))
    assert isinstance(got, PathReady)
    added = w.net.events_of("rs", RelayAdded)
    assert [m[2] for m in added[0].entry.nat_mappings()] == [GN]
    assert w.dc.stats["rsn_targets_refused"] == 3


def test_a_relay_that_refuses_the_target_is_not_asked_again_and_the_node_gets_refused() -> None:
    w = World()
    w.dc.config = dataclasses.replace(w.dc.config, rsn_allow=("10.9.0.0/16",))  # the relay's list is narrower
    before = _relay_directions(w)
    got = _ask(w, a=("10.9.1.1",))
    assert isinstance(got, PathFailed) and got.status is Status.ADDRESS_REFUSED
    assert w.rs.stats["relay_direction_target_refused"] == 1 and not w.net.events_of("rs", RelayAdded)
    # one probe and one Relay Direction; no second round to the relay that refused
    assert _relay_directions(w) - before == 2


# -- the relay -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("gn", ["127.0.0.1", "169.254.169.254", "10.1.0.1", "0.0.0.0", "224.0.0.1",
                                RS_OBSERVED[0], NODE_VIP, "::1", "fd00::1", "::ffff:127.0.0.1", "fe80::1"])
def test_the_relay_refuses_a_relay_direction_to_an_internal_target(gn: str) -> None:
    core, dc = make_rs(rsn_refuse=("100.64.0.0/10", "fd00:6e74::/32"))
    v6 = ":" in gn
    msg = (rs_n_direction(os.urandom(8), os.urandom(32), node_vip4=None, peer_vip4=None, gn_addr4=None,
                          node_vip6="fd00:6e74::2", peer_vip6="fd00:6e74:ffff::5", gn_addr6=gn)
           if v6 else rs_n_direction(os.urandom(8), os.urandom(32), gn_addr4=gn))
    evs, hdr, _reply = direct(core, dc, msg, txid=9)
    assert hdr.type is MessageType.DIRECTION_RESPONSE and hdr.status == Status.ADDRESS_REFUSED
    assert not any(isinstance(e, RelayAdded) for e in evs) and core.entries() == []
    assert core.stats["relay_direction_target_refused"] == 1
    # ... and does not measure the distance to it either
    _evs, hdr, _ = direct(core, dc, RelayProbe(gn_addr4=None if v6 else gn, gn_addr6=gn if v6 else None), txid=10)
    assert hdr.status == Status.ADDRESS_REFUSED and not any(isinstance(e, ProbeRequest) for e in events(core))


def test_the_relay_allow_list_opens_a_private_network() -> None:
    core, dc = make_rs(rsn_allow=("10.9.0.0/16",))
    evs, hdr, _ = direct(core, dc, rs_n_direction(b"A" * 8, os.urandom(32), gn_addr4="10.9.0.5"), txid=3)
    assert hdr.status == Status.OK and any(isinstance(e, RelayAdded) for e in evs)
    assert core.entries()[0].nat_mappings() == [(NODE_VIP, GN_VIP, "10.9.0.5")]


def test_a_bad_relay_allow_list_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="bad relay configuration.*10.9.0.0/33"):
        make_rs(rsn_allow=("10.9.0.0/33",))


def test_a_bad_dc_allow_list_is_refused_at_construction_not_on_input() -> None:
    w = World()
    with pytest.raises(ValueError, match="allow-list.*10.9.0.0/33"):
        DcCore(dataclasses.replace(w.dc.config, rsn_allow=("10.9.0.0/33",)), w.store, 0.0, seq_base=1)


def test_a_gn_address_is_looked_up_as_a_vip_once_and_a_vip_of_an_earlier_pool_stays_refused() -> None:
    """The VIP check of an RS-N target asks the registry once per address that is no VIP (a DC on
    PostgreSQL would otherwise pay a round trip per set-up); an address that is a VIP, here one
    assigned under an earlier pool configuration (outside today's pools, which the policy refuses),
    is looked up and refused every time; the remembered addresses are bounded."""
    from ntmobile.core.dc import direction as dcdirection

    w = World()
    vip = w.mn.registration.vip4  # type: ignore[union-attr]
    assert vip is not None
    # the pools moved: the old VIP range is no longer refused by the policy, only the look-up finds it
    w.dc.config = dataclasses.replace(w.dc.config, rsn_allow=(*TEST_NETS, "100.64.0.0/10"), rsn_refuse=(DC_EP[0],))
    store = w.dc.store
    looked: list[str] = []
    real = store.client_by_vip

    def counted(addr: str) -> object:
        looked.append(addr)
        return real(addr)
    store.client_by_vip = counted  # type: ignore[method-assign]
    d = w.dc.directions
    for _ in range(3):
        refused: list[str] = []
        assert d._rsn_target((GN,), refused) == GN and refused == []
        assert d._rsn_target((vip,), refused) is None and refused == [f"{vip} is the VIP of {w.mn.config.name}"]
    assert looked == [GN] + [vip] * 3
    for i in range(dcdirection.NOT_VIP_CACHE + 10):
        d._not_vip(f"2001:db8::{i:x}")
    assert len(d._not_vips) == dcdirection.NOT_VIP_CACHE
