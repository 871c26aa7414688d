"""Topology files, NAT rulesets and DNS zone generation (pure, no root needed)."""

from __future__ import annotations

import pytest

from ntmobile.lab import BUILTIN_TOPOLOGIES, NAT_PROFILES, TopologyError, load_topology, parse_topology
from ntmobile.lab.dns import root_server_zones, static_zones
from ntmobile.lab.nft import loss_ruleset, nat_ruleset


@pytest.mark.parametrize("name", BUILTIN_TOPOLOGIES)
def test_builtin_topology_parses_with_the_documented_hosts(name: str) -> None:
    t = load_topology(name)
    names = {h.name for h in t.hosts}
    assert {"mn", "cn", "gn", "dnsgn", "dca", "rs1", "root", "resolver"} <= names
    assert "mn.a.example" in t.host("mn").dns_names
    assert "cn.b.example" in t.host("cn").dns_names
    gn = t.host("gn")
    assert {"www.gn.example", "iperf.gn.example", "ftp.gn.example"} <= set(gn.dns_names)
    assert {"iperf3", "http", "ftp", "ssh"} <= set(gn.services) <= {"iperf3", "http", "ftp", "ssh", "tftp"}
    assert str(gn.initial_link.ipv4) == "192.0.2.40"
    assert t.dns is not None and t.dns.root == "root" and t.dns.resolver == "resolver"


def test_nat_and_handover_addresses_follow_the_address_plan() -> None:
    nat = load_topology("nat")
    assert str(nat.host("mn").initial_link.ipv4) == "10.1.0.10"
    assert str(nat.host("cn").initial_link.ipv4) == "10.2.0.10"
    assert str(nat.host("gl").initial_link.ipv4) == "192.0.2.50"
    assert nat.host("nata").nat is not None and nat.host("natb").nat is not None
    ho = load_topology("handover")
    mn = ho.host("mn")
    assert [ln.ifname for ln in mn.links] == ["neta", "netb", "global"]
    assert str(mn.link("global").ipv4) == "192.0.2.60" and str(mn.link("global").ipv6) == "2001:db8:1::60"


def test_bad_file_gives_one_line_naming_the_field() -> None:
    bad = """
name = "x"
[[networks]]
name = "internet"
ipv4 = "192.0.2.0/24"
[[hosts]]
name = "mn"
links = [{ network = "internet", ipv4 = "192.0.2.999" }]
"""
    with pytest.raises(TopologyError) as e:
        parse_topology(bad, "bad.toml")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("bad.toml: hosts.mn.links.") and "ipv4" in msg
    wrong_net = bad.replace('ipv4 = "192.0.2.999"', 'ipv4 = "10.0.0.1"')
    with pytest.raises(TopologyError, match=r"hosts\.mn\.links\.internet\.ipv4: 10\.0\.0\.1 is not in"):
        parse_topology(wrong_net, "bad.toml")
    with pytest.raises(TopologyError, match=r"bad\.toml: hosts\.mn\.colour: Extra inputs"):
        parse_topology(bad.replace('name = "mn"', 'name = "mn"\ncolour = "red"').replace("999", "9"),
                       "bad.toml")


def test_overrides_from_code_return_validated_copies() -> None:
    t = load_topology("nat")
    t2 = t.with_nat("nata", "symmetric", udp_timeout=5).with_links(rate_mbit=100, loss_percent=1.5)
    nat = t2.host("nata").nat
    assert nat is not None and nat.profile == "symmetric" and nat.udp_timeout == 5
    assert t2.link_defaults.rate_mbit == 100 and t2.link_defaults.loss_percent == 1.5
    orig = t.host("nata").nat
    assert orig is not None and orig.profile == "port_restricted"
    with pytest.raises(TopologyError, match="not a router"):
        t.with_nat("mn", "symmetric")


@pytest.mark.parametrize("profile", NAT_PROFILES)
def test_nat_ruleset_matches_profile(profile: str) -> None:
    nat = load_topology("nat").with_nat("nata", profile).host("nata").nat  # type: ignore[arg-type]
    assert nat is not None
    text = nat_ruleset("t_nat", nat, wan="wan", lan="lan")
    assert 'ct helper set "ftp-standard"' in text and "policy drop" in text
    assert ("fully-random" in text) == (profile == "symmetric")
    assert ("masquerade" in text) == (profile not in ("none",))
    assert ("meta l4proto udp drop" in text) == (profile == "udp_blocked")
    assert ("dnat to 10.1.0.10" in text) == (profile == "one_to_one")


def test_loss_ruleset_uses_numgen_per_direction() -> None:
    text = loss_ruleset("t_loss", [("eth0", 2.5)])
    assert 'iifname "eth0" numgen random mod 10000 < 250 drop' in text
    assert 'oifname "eth0" numgen random mod 10000 < 250 drop' in text
    assert loss_ruleset("t_loss", [("eth0", 0.0)]) == ""
    assert 'iifname "eth0" drop' in loss_ruleset("t_loss", [("eth0", 100.0)])


def test_root_zones_delegate_to_dcs_and_dnsgn_with_glue() -> None:
    t = load_topology("nat")
    assert t.dns is not None

    def addr_of(h: str) -> tuple[str, str | None]:
        ln = t.host(h).initial_link
        return str(ln.ipv4), str(ln.ipv6) if ln.ipv6 else None

    zones = root_server_zones(t.dns, addr_of)
    assert set(zones) == {".", "example."}
    assert "example. IN NS ns.example." in zones["."]
    ex = zones["example."]
    assert "a.example. IN NS dc.a.example." in ex and "dc.a.example. IN A 192.0.2.10" in ex
    assert "b.example. IN NS dc.b.example." in ex and "dc.b.example. IN A 192.0.2.11" in ex
    assert "gn.example. IN NS ns.gn.example." in ex and "ns.gn.example. IN A 192.0.2.30" in ex
    gn = static_zones(t.dns, "dnsgn", addr_of)["gn.example."]
    assert "www     A     192.0.2.40" in gn and "v6only  AAAA  2001:db8:1::40" in gn
