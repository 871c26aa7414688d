"""`ntm status` in an 80-column terminal: every peer's name and mode whole (a long name wraps, never an
ellipsis), no line wider than the terminal; --wide shows every column."""

from __future__ import annotations

from typing import Any

import pytest

from ntmobile.cli.node import human_bytes, render_status

PEERS = [("cn.b.example", "RS_S", "rs1", 123456789), ("www.gn.example", "RS_N", "rs2", 5_000),
         ("gl.a.example", "DIRECT", None, 0), ("c2.b.example", "RS_S", "rs2", 10), ("c3.b.example", "DIRECT", None, 1),
         ("a-rather-long-host-name-of-forty-chars.subdomain.example", "RS_N", "rs1", 10**12)]


#: NAT traversal (issue 16): a path trying a candidate, one relayed with its reason, one punched.
TRAVERSAL: dict[str, dict[str, Any]] = {
    "cn.b.example": {"state": "probing", "reason": "punch offered", "candidate": ["192.0.2.101", 7412]},
    "c2.b.example": {"state": "relayed", "reason": "punch failed", "candidate": None},
    "c3.b.example": {"state": "direct", "reason": "direct", "candidate": ["192.0.2.101", 7412]},
}
SHOWN = {"cn.b.example": "RS_S via rs1 (trying 192.0.2.101:7412)", "c2.b.example": "RS_S via rs2 (punch failed)",
         "c3.b.example": "DIRECT (punched)"}


def node_status() -> dict[str, Any]:
    paths = [{"path_id": f"{i:016x}", "peer": peer, "peer_vip4": f"100.64.2.{i}", "peer_vip6": f"fd00:6e74:2::{i}",
              "mode": mode, "role": "INITIATOR", "rs": rs, "endpoint": ["192.0.2.20", 7411] if rs else
              ["192.0.2.50", 7412], "established": i != 2, "tx_packets": 1, "tx_bytes": n, "rx_packets": 1,
              "rx_bytes": n // 3, "age": 12.3, "traversal": TRAVERSAL.get(peer)}
             for i, (peer, mode, rs, n) in enumerate(PEERS)]
    return {"name": "mn.a.example", "registered": True,
            "dc": {"address": "192.0.2.10", "port": 7410, "domain": "a.example"}, "vip4": "100.64.1.1",
            "vip6": "fd00:6e74:1::1", "observed": ["192.0.2.100", 7412], "nat": "CONE", "keepalive": 15,
            "tun": "ntm0", "paths": paths, "error": None, "driver": {"handler_errors": 2,
                                                                    "last_handler_error": "on_event(X): KeyError: 1"},
            "metrics": {"error": None}}


def test_at_80_columns_every_peer_and_mode_is_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    text = render_status(node_status())
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80, text
    assert "…" not in text
    # The table: a row starts where the mode column has text; a wrapped name continues below it.
    head = next(i for i, line in enumerate(lines) if line.startswith("peer "))
    col = lines[head].index("mode")
    rows: list[list[str]] = []
    for line in lines[head + 1:]:
        if line[col:].strip():
            rows.append([line[:col].strip(), line[col:].split("  ")[0].strip()])
        else:
            rows[-1][0] += line[:col].strip()
    want = [[peer, SHOWN.get(peer) or (f"{mode} via {rs}" if rs else mode)] for peer, mode, rs, _ in PEERS]
    assert rows == want, text
    assert "123M" in text and "2 handler error(s)" in text and "setting up" in text


def test_wide_shows_every_column() -> None:
    text = render_status(node_status(), wide=True, width=80)
    for peer, *_ in PEERS:
        assert peer in text
    assert "fd00:6e74:2::1" in text and "192.0.2.20:7411" in text and "123456789" in text


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (0, 999, 1000, 123456, 123456789, 10**12, 10**16)] == [
        "0", "999", "1.0k", "123k", "123M", "1.0T", "10000T"]


def test_a_punched_path_shows_its_relay_as_standby_leg_not_as_its_route() -> None:
    """Issue 16: a DIRECT path punched from RS-S keeps its relay leg for the grace period; `--wide`
    says so, the narrow table says `DIRECT (punched)` without a relay, `ntm ping` names no relay."""
    from ntmobile.cli.node import _probe_line

    st = node_status()
    p = dict(st["paths"][0])
    p |= {"mode": "DIRECT", "rs": "rs1", "traversal": {"state": "direct", "relay_leg": "standby"}}
    st["paths"] = [p]
    assert "DIRECT (punched)" in render_status(st, width=80)
    wide = render_status(st, wide=True)
    assert "DIRECT (punched)" in wide and "rs1 (standby)" in wide
    p["traversal"]["relay_leg"] = "released"
    assert "rs1 (released)" in render_status(st, wide=True)
    line = _probe_line(1, {"name": "cn.b.example", "mode": "DIRECT", "rs": "rs1", "endpoint": ["192.0.2.101", 7412],
                           "rtt_ms": 0.8, "peer_vip4": "100.64.2.1"})
    assert "via" not in line and "DIRECT 192.0.2.101:7412" in line
