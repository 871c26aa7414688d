"""Releasing a punched path's relay entry (issue 16): after RELAY_GRACE on DIRECT the node sends a
relay-only Path Release to its DC (its session: authenticated, replay-protected); the DC that directed
the relay tells it to drop the entry (the relay's answer brings its load); the path stays DIRECT. A
later fallback gets back onto a relay (NO_PUNCH re-direction, fresh relay key) without a (key, nonce)
twice. An unauthenticated, replayed, foreign or too early release changes nothing."""

from __future__ import annotations

from typing import Any

import pytest

from ntmobile.core.node.traversal import RELAY_GRACE
from ntmobile.core.timing import RELAY_RELEASE_MIN_AGE
from ntmobile.wire import MessageType, PathMode, PathRelease, parse_signal_header

from .test_dc_peering import World


def _punched() -> tuple[World, bytes]:
    w = World("cone", "cone", traversal=True)
    w.net.run_until(lambda: all(s["nat_class"] == "CONE" for s in w.dca.sessions() if s["name"] == "mn.a.example")
                    and all(s["nat_class"] == "CONE" for s in w.dcb.sessions() if s["name"] == "cn.b.example"),
                    max_time=5)
    ready = w.connect(w.mn, "mn", "cn.b.example")
    pid: bytes = ready.path.path_id  # type: ignore[union-attr]
    w.exchange_data(pid)
    w.net.run_until(lambda: w.mn._paths[pid].mode is PathMode.DIRECT is w.cn._paths[pid].mode, max_time=5)
    return w, pid


def _owner(w: World) -> tuple[Any, str, Any]:
    """The DC whose relay entry the path has, its node's host name and core."""
    (e,) = w.rs.entries()
    return (w.dca, "mn", w.mn) if e.dc_id == w.dca.config.dc_id else (w.dcb, "cn", w.cn)


def _rs_load(dc: Any) -> object:
    return next(s["load"] for s in dc.sessions() if s["name"] == "rs1")


def _releases_sent(w: World, host: str) -> list[bytes]:
    return [d for d in w.net.sent_by[host] if _releases_sent_one(d)]


def test_punched_path_releases_its_relay_entry_after_the_grace() -> None:
    w, pid = _punched()
    dc, host, node = _owner(w)
    assert len(w.rs.entries()) == 1 and _rs_load(dc) == 1
    switched = w.net.now
    w.net.run_until(lambda: w.rs.entries() == [], max_time=RELAY_GRACE + 3)
    took = w.net.now - switched
    assert RELAY_GRACE - 0.5 <= took < RELAY_GRACE + 1.0, took  # (DIRECT came a little before `switched`)
    assert _rs_load(dc) == 0  # the relay's answer brought its load: no keepalive waited for
    assert dc.stats["relay_releases"] == 1 and w.rs.stats["relays_removed"] >= 1
    assert node.stats["relay_release_acked"] == 1
    assert node._paths[pid].traversal.snapshot(0)["relay_leg"] == "released"  # type: ignore[union-attr]
    assert dc.path_table.records[pid].rs is None
    w.exchange_data(pid)  # the path itself stays, DIRECT
    assert w.mn._paths[pid].mode is PathMode.DIRECT is w.cn._paths[pid].mode
    # The other node's release reaches the DC that did not direct the relay: it leaves the relay be.
    other_dc = w.dcb if dc is w.dca else w.dca
    w.net.run_until(lambda: other_dc.stats["relay_release_foreign_relay"] == 1, max_time=3)
    assert other_dc.stats["relay_releases"] == 0 and w.rs.stats["release_not_owner"] == 0


def test_a_fallback_after_the_release_gets_back_onto_a_relay_without_nonce_reuse() -> None:
    from .nonce_ledger import nonce_ledger
    from .test_nonce_safety import wire_repeats

    with nonce_ledger() as led:
        w, pid = _punched()
        w.net.run_until(lambda: w.rs.entries() == [], max_time=RELAY_GRACE + 3)
        w.exchange_data(pid)
        for node in (w.mn, w.cn):  # the direct path black-holed both ways
            path = node._paths[pid]
            node._traversal_do(path, path.traversal._fail("direct silent", w.net.now), w.net.now)
        w.net.run_until(lambda: len(w.rs.entries()) == 1 and w.mn._paths[pid].mode is PathMode.RS_S
                        is w.cn._paths[pid].mode and w.mn.path_info(pid).endpoint == w.cn.path_info(pid).endpoint,
                        max_time=5)
        assert w.mn.stats["traversal_no_punch_requests"] + w.cn.stats["traversal_no_punch_requests"] >= 1
        w.exchange_data(pid)
    assert led.seals > 50 and led.reused == []
    assert wire_repeats(w.net) == []


def _observed(dc: Any, name: str) -> tuple[str, int]:
    ep = next(s["endpoint"] for s in dc.sessions() if s["name"] == name)
    return (ep[0], ep[1])


def test_a_replayed_release_does_nothing() -> None:
    """The release captured and sent again after the path is back on a relay: the session's replay
    window drops it; the new entry stays."""
    w, pid = _punched()
    dc, host, node = _owner(w)
    w.net.run_until(lambda: w.rs.entries() == [], max_time=RELAY_GRACE + 3)
    (captured,) = _releases_sent(w, host)
    path = node._paths[pid]
    node._traversal_do(path, path.traversal._fail("direct silent", w.net.now), w.net.now)
    w.net.run_until(lambda: len(w.rs.entries()) == 1, max_time=5)
    w.net.run_for(RELAY_RELEASE_MIN_AGE + 1)  # old enough: only the replay window stands in the way
    before = dc.stats["drop_replay"]
    dc.receive_datagram(captured, _observed(dc, node.config.name), w.net.now)
    w.net.run_for(1.0)
    assert dc.stats["drop_replay"] == before + 1
    assert len(w.rs.entries()) == 1 and dc.stats["relay_releases"] == 1


def test_an_unauthenticated_release_does_nothing() -> None:
    """A release with a forged tag (the genuine one, one byte flipped, before the DC saw it) and one
    of garbage: dropped and counted, nothing released; the genuine one then works."""
    w, pid = _punched()
    dc, host, node = _owner(w)
    held: list[bytes] = []
    w.net.drop = lambda src, dst, data: (src == host and dst.startswith("dc") and bool(_releases_sent_one(data))
                                         and (held.append(data) or True))
    w.net.run_until(lambda: bool(held), max_time=RELAY_GRACE + 3)
    w.net.drop = None
    forged = bytearray(held[0])
    forged[-1] ^= 1
    before = dc.stats["drop_auth"]
    dc.receive_datagram(bytes(forged), _observed(dc, node.config.name), w.net.now)
    dc.receive_datagram(held[0][:24] + bytes(40), _observed(dc, node.config.name), w.net.now)
    w.net.run_for(0.2)
    assert dc.stats["drop_auth"] >= before + 1 and dc.stats["relay_releases"] == 0
    assert len(w.rs.entries()) == 1 and w.rs.stats["relays_removed"] == 0
    dc.receive_datagram(held[0], _observed(dc, node.config.name), w.net.now)
    w.net.run_until(lambda: w.rs.entries() == [], max_time=2)


def _releases_sent_one(data: bytes) -> bool:
    try:
        return parse_signal_header(data).type is MessageType.PATH_RELEASE
    except Exception:  # noqa: BLE001 - data capsules and other framings
        return False


@pytest.mark.parametrize("who", ["relay", "stranger"])
def test_only_a_node_of_the_path_may_release_it(who: str) -> None:
    """A node may release only its own paths, and a relay none: NOT_AUTHORIZED, the entry stays."""
    w, pid = _punched()
    dc, host, node = _owner(w)
    w.net.run_for(RELAY_RELEASE_MIN_AGE + 0.5)
    rec = dc.path_table.records[pid]
    if who == "stranger":
        # The same authenticated node session, but the path is another pair's here.
        rec.initiator, rec.peer = "x.a.example", "y.b.example"
        core, session, dest = node, node._dc.session, node.config.dc_endpoint
    else:
        link = w.rs._dcs[dc.config.dc_id]
        core, session, dest = w.rs, link.session, link.endpoint
    core._request(session, PathRelease(path_id=pid, relay_only=1), 0x5A5A, dest, w.net.now, timeout=2.0)
    w.net.run_for(1.0)
    assert dc.stats["path_release_not_owner"] >= 1 and dc.stats["relay_releases"] == 0
    assert len(w.rs.entries()) == 1 and w.rs.stats["relays_removed"] == 0


def test_release_of_a_just_redirected_path_is_ignored() -> None:
    """A relay-only release for a path (re-)directed less than RELAY_RELEASE_MIN_AGE ago is a late
    duplicate for its previous leg: counted, the entry stays."""
    w, pid = _punched()
    dc, host, node = _owner(w)
    dc.path_table.records[pid].created = w.net.now
    node._request(node._dc.session, PathRelease(path_id=pid, relay_only=1), 0x5A5B, node.config.dc_endpoint,
                  w.net.now, timeout=2.0)
    w.net.run_for(0.5)
    assert dc.stats["relay_release_too_early"] == 1 and len(w.rs.entries()) == 1


def test_release_wire_layout() -> None:
    from ntmobile import wire

    assert wire.encode_body(PathRelease(path_id=b"12345678", relay_only=1)) == b"\x0b\x00\x0812345678\x30\x00\x01\x01"
    assert wire.encode_body(wire.PathReleaseAck(path_id=b"12345678", load=3)) == (
        b"\x0b\x00\x0812345678\x1a\x00\x04\x00\x00\x00\x03")
