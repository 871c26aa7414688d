"""`ntm dc init DOMAIN`: writes a DC configuration that loads, and prints the delegation (NS and glue)
the parent zone must publish, naming the same name server the DC's own zone answers with."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from ntmobile.core.dnsauth import AuthoritativeZone, NameServer, SoaFields
from ntmobile.runtime.config import DcSettings, load


def ntm(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ntmobile", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "COLUMNS": "200"})


def test_init_writes_a_config_and_prints_the_delegation(tmp_path: Path) -> None:
    p = ntm("dc", "init", "a.example", "--address", "192.0.2.53", "--address6", "2001:db8::53",
            "--database", str(tmp_path / "dc.sqlite"), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    settings = load(tmp_path / "dc.toml", DcSettings)
    assert settings.domain == "a.example" and settings.address == "192.0.2.53"
    records = []
    for ln in p.stdout.splitlines():
        if ln and not ln.startswith(";"):
            name, ttl, rdclass, rdtype, rdata = ln.split(maxsplit=4)
            records.append(dns.rrset.from_text(name, int(ttl), rdclass, rdtype, rdata))
    ns = [r for r in records if r.rdtype == dns.rdatatype.NS]
    glue = {(r.name.to_text(), r.rdtype, r[0].to_text()) for r in records if r.rdtype != dns.rdatatype.NS}
    assert [(r.name.to_text(), r[0].to_text()) for r in ns] == [("a.example.", "dc.a.example.")]
    assert glue == {("dc.a.example.", dns.rdatatype.A, "192.0.2.53"),
                    ("dc.a.example.", dns.rdatatype.AAAA, "2001:db8::53")}
    # The DC's zone, built from the same settings, names the same server at its apex.
    ns_name, addrs = settings.name_server("a.example")
    zone = AuthoritativeZone("a.example.", soa=SoaFields(mname=ns_name + ".", rname="h.a.example.", serial=1),
                             nameservers=[NameServer(ns_name + ".", addrs)], marker="v=ntm1",
                             lookup=lambda name: None)
    answer = zone.respond(dns.message.make_query("a.example.", "NS").to_wire(), tcp=False)
    assert answer is not None
    got = dns.message.from_wire(answer).find_rrset(dns.message.ANSWER, dns.name.from_text("a.example."),
                                                   dns.rdataclass.IN, dns.rdatatype.NS)
    assert [r.to_text() for r in got] == ["dc.a.example."]


def test_init_never_overwrites_and_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "dc.toml").write_text("keep me")
    p = ntm("dc", "init", "a.example", "--address", "192.0.2.53", cwd=tmp_path)
    assert p.returncode == 1
    assert p.stderr.strip() == "ntm: dc.toml exists: pass --force to overwrite it, or --out another file"
    assert (tmp_path / "dc.toml").read_text() == "keep me"
    p = ntm("dc", "init", "a.example", "--address", "nope", "-o", "x.toml", cwd=tmp_path)
    assert p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1 and "address" in p.stderr
    assert not (tmp_path / "x.toml").exists()
