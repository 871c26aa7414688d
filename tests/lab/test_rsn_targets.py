"""Issue 14 §3 end to end: an RS-N is never a gateway into its own network (docs/security.md, "RS-N
targets"). Names in the general node's zone that resolve to internal addresses (the relay's own
address and loopback, a LAN, cloud metadata, a DC, multicast, IPv6 loopback and ULA) are answered
REFUSED by the node's stub and never become NAT mappings; and should a mapping to the relay itself
or to a refused range exist anyway, the relay's nft table drops the translated traffic."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from ntmobile.lab import Lab, load_topology
from ntmobile.lab.topology import Topology

from .conftest import LabFactory, probe_udp, start_reflector, wait_for

pytestmark = [pytest.mark.root, pytest.mark.lab]

NTM = [sys.executable, "-m", "ntmobile"]
#: (name, type, address): every one must be REFUSED. 192.0.2.20/21 are the relays, 192.0.2.10 the DC.
INTERNAL = [("lo", "A", "127.0.0.1"), ("relay", "A", "192.0.2.20"), ("relay2", "A", "192.0.2.21"),
            ("dc", "A", "192.0.2.10"), ("lan", "A", "10.1.0.1"), ("meta", "A", "169.254.169.254"),
            ("zero", "A", "0.0.0.0"), ("mcast", "A", "224.0.0.1"), ("vip", "A", "100.64.1.1"),
            ("lo6", "AAAA", "::1"), ("ula6", "AAAA", "fd00::1"), ("relay6", "AAAA", "2001:db8:1::20"),
            ("mapped6", "AAAA", "::ffff:127.0.0.1")]


def status(lab: Lab, host: str, *cmd: str) -> dict[str, Any]:
    cp = lab.exec(host, [*NTM, *cmd, "status", "--json"], check=False, timeout=10)
    return json.loads(cp.stdout) if cp.returncode == 0 else {}


def guard_counters(lab: Lab, rs: str) -> list[int]:
    """Packets dropped by each rule of the relay's guard chain (local, refused4, refused6)."""
    out = json.loads(lab.exec(rs, ["nft", "-j", "list", "chain", "inet", "ntm_rs", "guard"]).stdout)
    return [next(e["counter"]["packets"] for e in i["rule"]["expr"] if "counter" in e)
            for i in out["nftables"] if "rule" in i]


def dig(lab: Lab, qtype: str, name: str) -> str:
    return lab.exec("mn", ["dig", "+tries=1", "+time=8", qtype, name], timeout=20).stdout


def test_internal_gn_addresses_are_refused_and_the_relay_drops_translated_traffic_to_itself(
        lab_factory: LabFactory) -> None:
    topo = load_topology("nat").model_dump()
    zone = next(z for z in topo["dns"]["zones"] if z["zone"] == "gn.example")
    zone["records"] = [*zone["records"], *(f"{n} {t} {a}" for n, t, a in INTERNAL), "mixed A 127.0.0.1",
                       "mixed A 192.0.2.40"]
    lab = lab_factory(Topology.model_validate(topo), bare=False)
    wait_for(lambda: status(lab, "mn").get("registered"), 15, "mn registered")
    # The relays' own services, on every address of theirs (loopback too): nothing may reach them via RS-N.
    on_relay = {rs: start_reflector(lab, rs, 7001) for rs in ("rs1", "rs2")}
    on_gn = start_reflector(lab, "gn", 7001)

    for name, qtype, addr in INTERNAL:
        out = dig(lab, qtype, f"{name}.gn.example")
        answer = out.split("ANSWER SECTION:")[1].split("\n\n")[0] if "ANSWER SECTION:" in out else ""
        assert "status: REFUSED" in out and addr not in answer, (name, out)
    cp = lab.exec("mn", ["curl", "-sS", "-m", "10", "http://relay.gn.example:7001/"], check=False, timeout=20)
    assert cp.returncode != 0
    decisions = status(lab, "dca", "dc")["decisions"]
    refused = [d for d in decisions if d.get("status") == "ADDRESS_REFUSED"]
    assert len(refused) >= min(len(INTERNAL), 20), decisions
    # A name with one internal and one global address gets the global one only.
    vip = dig(lab, "A", "mixed.gn.example").split("ANSWER SECTION:")[1].split()[4]
    assert vip.startswith("100.127.")
    for rs in ("rs1", "rs2"):
        for e in status(lab, rs, "rs").get("entries", []):
            assert e["gn_addr4"] in (None, "192.0.2.40") and e["gn_addr6"] in (None, "2001:db8:1::40"), e

    # The kernel's own check, on the relay of the path. Through the path's mapping the GN answers (the
    # control) ...
    mn_vip = status(lab, "mn")["vip4"]
    [path] = [p for p in status(lab, "mn")["paths"] if p["peer_vip4"] == vip]
    rs = path["rs"]
    own = lab.addr(rs, 4)
    got = probe_udp(lab, "mn", sport=41001, to=[f"{vip}:7001"], payload="control", expect=1, timeout=5)
    assert got and got[0]["data"].startswith("seen")

    def remap(target: str) -> None:  # as a bug or a hostile DC would have it
        lab.exec(rs, ["nft", "-f", "-"], input=(f"delete element inet ntm_rs dnat4 {{ {mn_vip} . {vip} }}\n"
                                                f"add element inet ntm_rs dnat4 {{ {mn_vip} . {vip} : {target} }}\n"))

    # ... pointed at the relay's own address (where its reflector listens), nothing gets through;
    before = guard_counters(lab, rs)
    remap(own)
    assert probe_udp(lab, "mn", sport=41002, to=[f"{vip}:7001"], payload="to-relay", expect=1, timeout=3) == []
    # ... nor to an address in a refused range that the relay routes to the GN host (listening there).
    lab.exec("gn", ["ip", "addr", "add", "10.99.0.40/32", "dev", "lo"])
    lab.exec(rs, ["ip", "route", "add", "10.99.0.40/32", "via", "192.0.2.40"])
    remap("10.99.0.40")
    assert probe_udp(lab, "mn", sport=41003, to=[f"{vip}:7001"], payload="to-lan", expect=1, timeout=3) == []
    after = guard_counters(lab, rs)
    assert after[0] >= before[0] + 1 and after[1] >= before[1] + 1, (before, after)
    seen = [e.get("data") for r in (*on_relay.values(), on_gn) for e in r.events()]
    assert "control" in seen and "to-relay" not in seen and "to-lan" not in seen, seen


def test_the_lab_allow_lists_only_its_documentation_internet(lab_factory: LabFactory) -> None:
    lab = lab_factory("nat", bare=False)
    wait_for(lambda: status(lab, "rs1", "rs").get("dcs"), 15, "rs1 up")
    table = lab.exec("rs1", ["nft", "list", "table", "inet", "ntm_rs"]).stdout
    refused4 = table.split("set refused4")[1].split("}")[0]
    for must in ("10.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "100.64.0.0/10", "224.0.0.0/3"):
        assert must in refused4, refused4
    assert "192.0.2.0/24" not in refused4 and "fib daddr type { local, broadcast, multicast } counter" in table
    toml = (lab.host_workdir("dca") / "dc.toml").read_text()
    assert "rsn_allow" in toml and "192.0.2.0/24" in toml
