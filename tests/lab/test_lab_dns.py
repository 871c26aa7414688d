"""DNS as the internet has it: unmodified nsd (root/TLD, gn.example) and unbound (resolver)."""

from __future__ import annotations

import pytest

from ntmobile.lab import Lab
from tests.lab.conftest import LabFactory

pytestmark = [pytest.mark.root, pytest.mark.lab]


@pytest.fixture
def nat_lab(lab_factory: LabFactory) -> Lab:
    return lab_factory("nat")


def _dig(lab: Lab, host: str, *args: str) -> str:
    return lab.exec(host, ["dig", "+time=2", "+tries=3", *args]).stdout


def test_every_host_resolves_www_gn_example_through_the_delegation_chain(nat_lab: Lab) -> None:
    for h in nat_lab.topology.hosts:
        # glibc's resolver, through the host's own /etc/netns/<ns>/resolv.conf (the lab resolver)
        out = nat_lab.exec(h.name, ["getent", "ahostsv4", "www.gn.example"]).stdout
        assert out.split()[0] == "192.0.2.40", f"{h.name}: {out!r}"
        conf = nat_lab.exec(h.name, ["cat", "/etc/resolv.conf"]).stdout
        assert "nameserver 192.0.2.3" in conf


def test_resolver_answers_the_gn_names(nat_lab: Lab) -> None:
    assert _dig(nat_lab, "mn", "+short", "iperf.gn.example", "A").split() == ["192.0.2.40"]
    assert _dig(nat_lab, "mn", "+short", "ftp.gn.example", "AAAA").split() == ["2001:db8:1::40"]
    assert _dig(nat_lab, "gl", "+short", "v6only.gn.example", "AAAA").split() == ["2001:db8:1::40"]
    assert _dig(nat_lab, "gl", "+short", "v6only.gn.example", "A").split() == []
    assert _dig(nat_lab, "gl", "+short", "down.gn.example", "A").split() == ["192.0.2.99"]
    # the resolver also serves IPv6 clients
    assert _dig(nat_lab, "gl", "+short", "@2001:db8:1::3", "www.gn.example").split() == ["192.0.2.40"]


def test_iterative_walk_from_the_root_follows_the_delegations(nat_lab: Lab) -> None:
    root = _dig(nat_lab, "gl", "+norec", "@192.0.2.2", "www.gn.example", "A")
    assert "status: NOERROR" in root and "ANSWER: 0" in root
    assert "ns.gn.example." in root and "192.0.2.30" in root  # referral with glue
    auth = _dig(nat_lab, "gl", "+norec", "@192.0.2.30", "www.gn.example", "A")
    assert " aa" in auth and "192.0.2.40" in auth
    for zone, ns, glue in (("a.example", "dc.a.example.", "192.0.2.10"),
                           ("b.example", "dc.b.example.", "192.0.2.11")):
        ref = _dig(nat_lab, "gl", "+norec", "@192.0.2.2", f"x.{zone}", "A")
        assert ns in ref and glue in ref, f"{zone} is not delegated to its DC: {ref}"
    # dig +trace from a NATed host: root -> example. -> gn.example
    trace = _dig(nat_lab, "mn", "+trace", "www.gn.example", "A")
    assert "ns.example." in trace and "ns.gn.example." in trace
    assert any(ln.startswith("www.gn.example.") and "192.0.2.40" in ln for ln in trace.splitlines())


def test_resolv_conf_is_configurable_per_host(lab_factory: LabFactory) -> None:
    from ntmobile.lab import load_topology

    topo = load_topology("paper").with_host("mn", resolv=["127.0.0.53"])
    lab = lab_factory(topo)
    assert "nameserver 127.0.0.53" in lab.exec("mn", ["cat", "/etc/resolv.conf"]).stdout
    assert "nameserver 192.0.2.3" in lab.exec("cn", ["cat", "/etc/resolv.conf"]).stdout
