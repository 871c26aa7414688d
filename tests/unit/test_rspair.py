"""RS-N pair configuration text (osops.rspair) and the relay's SNAT to the shared address (issue 20)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ntmobile.osops.nft import RsNatTable
from ntmobile.osops.rspair import PairMember, conntrackd_conf, keepalived_conf
from ntmobile.runtime.config import RsSettings


def member(tmp: Path) -> PairMember:
    return PairMember(interface="eth0", address="192.0.2.20", peer="192.0.2.21", priority=150,
                      shared4="192.0.2.25/24", relay_pidfile=str(tmp / "rs.pid"), workdir=str(tmp))


def test_keepalived_conf_has_the_measured_choices(tmp_path: Path) -> None:
    text = keepalived_conf(member(tmp_path))
    assert "vrrp_version 3" in text and "advert_int 0.1" in text
    assert "track_script" in text and "track_process" not in text  # track_process is not netns-aware
    assert "192.0.2.25/24 dev eth0" in text and "unicast_peer" in text


def test_conntrackd_conf_is_ftfw_without_external_cache(tmp_path: Path) -> None:
    text = conntrackd_conf(member(tmp_path))
    assert "Mode FTFW" in text and "DisableExternalCache On" in text and "ExpectationSync on" in text
    assert "IPv4_Destination_Address 192.0.2.21" in text


def test_bad_member_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        PairMember(interface="eth0; rm", address="192.0.2.20", peer="192.0.2.21", priority=150,
                   shared4="192.0.2.25/24", relay_pidfile=str(tmp_path / "rs.pid"), workdir=str(tmp_path))


def test_relay_snats_to_the_shared_address_when_configured() -> None:
    masq = RsNatTable("t", "ntmrs0", ["100.64.0.0/10"], ["fd00::/8"]).render()
    assert "masquerade" in masq and "snat" not in masq
    pair = RsNatTable("t", "ntmrs0", ["100.64.0.0/10"], ["fd00::/8"], snat4="192.0.2.25",
                      snat6="2001:db8:1::25").render()
    assert "snat ip to 192.0.2.25" in pair and "snat ip6 to 2001:db8:1::25" in pair and "masquerade" not in pair


def test_rs_settings_check_the_snat_addresses() -> None:
    base = {"name": "rs1", "credentials": ["/x.toml"], "address": "192.0.2.20"}
    assert RsSettings(**base, snat4="192.0.2.25").snat4 == "192.0.2.25"
    assert RsSettings(**base).snat4 is None
    with pytest.raises(ValueError):
        RsSettings(**base, snat4="not-an-address")


def test_holds_address_tells_a_local_address_from_another() -> None:
    from ntmobile.osops.rspair import holds_address, nonlocal_bind

    assert holds_address("127.0.0.1")
    if not nonlocal_bind("192.0.2.199"):
        assert not holds_address("192.0.2.199")  # (TEST-NET-1: on no host of this machine)


def test_standby_relay_refuses_new_rsn_paths_and_the_dc_takes_the_other() -> None:
    """The pair's standby (its shared address at the other relay) answers an RS-N Relay Direction BUSY:
    the GN's answers to the shared address would reach the active relay, which would have no such path.
    The DC tries the next relay; once the standby becomes active it takes paths again."""
    from .test_relay_failure import TwoRelays

    w = TwoRelays()
    w.rs.standby = True  # rs1 (the DC's first choice) is the standby
    first = w.setup_path().path
    assert first.rs_name == "rs2" and w.rs.stats["relay_direction_standby"] == 1 and w.rs.entries() == []
    w.rs.standby, w.rs2.standby = False, True  # the address moved to rs1
    other = w.path("mn", "ftp.gn.example").path  # (another name of the world's GN address: the path again)
    assert other.rs_name == "rs1" and w.rs2.stats["relay_direction_standby"] == 1


def test_the_shared_ipv6_address_moves_with_the_ipv4_one_without_dad(tmp_path: Path) -> None:
    """One VRRP instance for both families: the IPv6 address is an excluded address of the IPv4
    instance. keepalived adds IPv6 VIPs with nodad unless told ``-nodad`` (which turns DAD back on):
    never rendered. conntrackd leaves the relays' own IPv6 addresses out of the sync."""
    m = PairMember(interface="eth0", address="192.0.2.20", peer="192.0.2.21", priority=150,
                   shared4="192.0.2.25/24", relay_pidfile=str(tmp_path / "rs.pid"), workdir=str(tmp_path),
                   shared6="2001:db8:1::25/128", address6="2001:db8:1::20", peer6="2001:db8:1::21")
    text = keepalived_conf(m)
    assert text.count("vrrp_instance") == 1
    assert "virtual_ipaddress_excluded {\n        2001:db8:1::25/128 dev eth0\n" in text and "nodad" not in text
    ct = conntrackd_conf(m)
    assert all(f"IPv6_address {a}" in ct for a in ("::1", "2001:db8:1::20", "2001:db8:1::21"))
    with pytest.raises(ValueError):
        PairMember(interface="eth0", address="192.0.2.20", peer="192.0.2.21", priority=150, shared4="192.0.2.25/24",
                   relay_pidfile=str(tmp_path / "rs.pid"), workdir=str(tmp_path), address6="192.0.2.20")
