"""RS-N conntrack helpers: names checked at start-up, each helper on its standard port (issue 20)."""

from __future__ import annotations

import pytest

from ntmobile.osops import cthelpers
from ntmobile.osops.nft import RsNatTable
from ntmobile.runtime.config import RsSettings


def test_default_is_ftp_and_tftp_on_their_ports_both_families() -> None:
    t = RsNatTable("ntm_rs", "ntmrs0", ["100.64.0.0/10"], ["fd00:6e74::/32"])
    text = t.render()
    assert 'ct helper ftp-tcp {\n\t\ttype "ftp" protocol tcp\n\t\tl3proto inet' in text
    assert 'ct helper tftp-udp {\n\t\ttype "tftp" protocol udp\n\t\tl3proto inet' in text
    # only for connections translated to a path's GN (ct status dnat): expectations stay with it
    assert 'iifname "ntmrs0" ct status dnat meta l4proto tcp tcp dport 21 ct state new ct helper set "ftp-tcp"' in text
    assert 'iifname "ntmrs0" ct status dnat meta l4proto udp udp dport 69 ct state new ct helper set "tftp-udp"' in text


def test_every_known_helper_renders_and_none_means_no_chain() -> None:
    text = RsNatTable("ntm_rs", "ntmrs0", helpers=sorted(cthelpers.HELPERS)).render()
    for hs in cthelpers.HELPERS.values():
        for h in hs:
            assert f"ct helper {h.obj} {{" in text and f'ct helper set "{h.obj}"' in text
    assert 'type "Q.931" protocol tcp' in text and 'type "RAS" protocol udp' in text
    assert "chain helpers" not in RsNatTable("ntm_rs", "ntmrs0", helpers=()).render()


def test_unknown_helper_fails_with_one_line_naming_the_valid_ones() -> None:
    with pytest.raises(ValueError) as exc:
        cthelpers.check_names(["ftp", "gopher"])
    msg = str(exc.value)
    assert "\n" not in msg and "'gopher'" in msg and "tftp" in msg and "sip" in msg
    with pytest.raises(ValueError):
        RsSettings(name="rs", credentials=[], address="192.0.2.1", helpers=["nope"])
    assert RsSettings(name="rs", credentials=[], address="192.0.2.1").helpers == ["ftp", "tftp"]
    assert cthelpers.check_names(["tftp", "ftp", "tftp"]) == ["tftp", "ftp"]
