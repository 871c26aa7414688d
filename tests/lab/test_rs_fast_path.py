"""The RS-S kernel fast path in the real relay daemon (docs/dataplane.md, "RS-S in the kernel").

Topology: the `nat` lab, one DC and one relay (rs1); mn (behind NAT A) and cn (behind NAT B) talk
through RS-S, mn also talks to the general node gn through RS-N on the same relay.

- A busy RS-S path moves into the kernel within seconds; checksum-verified TCP (inner IPv4 and
  IPv6, echoed: both directions) then passes the relay without its daemon reading the data, and
  the Relay Table's counters still account for it.
- A second path on mn's endpoint (RS-N to gn) takes the RS-S path out of the kernel before its
  own data can flow; transfers stay correct, relayed by the daemon again.
- Stopping the relay removes its fast-path table.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

import pytest

from ntmobile.lab import Lab

from .conftest import LabFactory, wait_for
from .test_dataplane_e2e import DPCHECK, TCP_PORT, curl_sha, start_servers, status, tcp, topology

pytestmark = [pytest.mark.root, pytest.mark.lab]


def rs_s_entry(rs: dict[str, Any]) -> dict[str, Any]:
    [e] = [e for e in rs["entries"] if e["rs_type"] == "S"]
    return e


def relayed_by_daemon(lab: Lab) -> int:
    """Datagrams the relay daemon has read from its sockets."""
    return int(status(lab, "rs1")["dataplane"]["rx_datagrams"])


def test_busy_rs_s_path_is_forwarded_by_the_kernel_until_its_endpoint_is_shared(lab_factory: LabFactory) -> None:
    lab = lab_factory(topology(dict.fromkeys(("mn", "gl", "cn", "rs1"), True)), bare=False)
    start_servers(lab, ("cn", "gn"))
    # Bulk through the daemon until the relay moves the path into the kernel (it looks once a second).
    def promoted() -> bool:
        assert tcp(lab, "cn", 8 << 20, 4)["ok"]
        return bool(status(lab, "rs1")["fast_path"]["paths"])
    wait_for(promoted, 30, "the RS-S path in the kernel")
    rs = status(lab, "rs1")
    fp = rs["fast_path"]
    pid = rs_s_entry(rs)["path_id"]
    assert fp["enabled"] and fp["paths"] == [pid] and fp["promoted"] == 1
    table = lab.exec("rs1", ["nft", "-j", "list", "table", "inet", "ntm_rs_fast"]).stdout
    assert pid in table
    shown = lab.exec("rs1", ["env", "COLUMNS=250", sys.executable, "-m", "ntmobile", "rs", "status"]).stdout
    assert "1 path(s) in the kernel" in shown and "S (kernel)" in shown, shown

    # In the kernel: checked transfers both ways, inner IPv4 and IPv6; the daemon reads only
    # signalling (keepalives), the entry's byte counters follow the kernel's.
    rx0 = relayed_by_daemon(lab)
    bytes0 = rs_s_entry(rs)["bytes_i2r"] + rs_s_entry(rs)["bytes_r2i"]
    for fam in (4, 6):
        r = tcp(lab, "cn", 16 << 20, fam)
        assert r["ok"] and (":" in r["peer"]) == (fam == 6), r
    rx1 = relayed_by_daemon(lab)
    assert rx1 - rx0 < 200, (rx0, rx1)  # 2 x 32 MiB would be over 45,000 datagrams
    def counted() -> bool:
        e = rs_s_entry(status(lab, "rs1"))
        return bool(e["bytes_i2r"] + e["bytes_r2i"] - bytes0 >= 2 * 2 * (16 << 20))
    wait_for(counted, 5, "the kernel's counters in the Relay Table")
    mn = status(lab, "mn")
    assert mn["dataplane"]["rx_auth"] == 0 and mn["dataplane"]["rx_spoofed"] == 0

    # mn now also reaches the GN through the same relay, from the same socket: the RS-S path
    # leaves the kernel (a coalesced packet would carry both paths' data under one rewrite).
    big = lab.state.big_file
    assert big is not None
    assert curl_sha(lab, 4) == big.sha256
    rs = status(lab, "rs1")
    assert rs["fast_path"]["paths"] == [] and rs["fast_path"]["demoted"] == 1, rs["fast_path"]
    rx2 = relayed_by_daemon(lab)
    r = tcp(lab, "cn", 8 << 20, 4)
    assert r["ok"], r
    assert relayed_by_daemon(lab) - rx2 > 5000  # relayed by the daemon again
    assert status(lab, "rs1")["fast_path"]["paths"] == []  # and kept there while shared
    assert curl_sha(lab, 6) == big.sha256

    # Stopping the relay takes its table with it.
    [rec] = [p for p in lab.state.processes if p.host == "rs1" and p.name.startswith("rs")]
    lab.stop(rec)
    tables = json.loads(lab.exec("rs1", ["nft", "-j", "list", "tables"]).stdout)["nftables"]
    assert not [t for t in tables if "table" in t and t["table"]["name"].startswith("ntm_rs")], tables


def test_a_dead_relay_daemon_leaves_no_kernel_forwarding_behind(lab_factory: LabFactory) -> None:
    """SIGKILL gives the daemon no chance to delete its table; the rules forward only while a socket
    is bound to the relay's port, so the path goes dead as a whole (and its nodes can move it)."""
    lab = lab_factory(topology(dict.fromkeys(("mn", "gl", "cn", "rs1"), True)), bare=False)
    start_servers(lab, ("cn",))

    def promoted() -> bool:
        assert tcp(lab, "cn", 8 << 20, 4)["ok"]
        return bool(status(lab, "rs1")["fast_path"]["paths"])
    wait_for(promoted, 30, "the RS-S path in the kernel")
    [rec] = [p for p in lab.state.processes if p.host == "rs1" and p.name.startswith("rs")]
    os.kill(rec.pid, signal.SIGKILL)
    wait_for(lambda: not os.path.exists(f"/proc/{rec.pid}/status") or "zombie" in open(
        f"/proc/{rec.pid}/status").read(), 10, "the relay daemon to die")

    def forwarded() -> int:
        table = json.loads(lab.exec("rs1", ["nft", "-j", "list", "table", "inet", "ntm_rs_fast"]).stdout)
        return sum(int(i["counter"]["packets"]) for i in table["nftables"] if "counter" in i)
    before = forwarded()
    cp = lab.exec("mn", [sys.executable, DPCHECK, "tcp-client", "cn.a.example", str(TCP_PORT), str(1 << 20), "4"],
                  check=False, timeout=90)
    assert '"ok": true' not in cp.stdout
    assert forwarded() == before
