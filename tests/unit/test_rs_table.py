"""The Relay Table's structure (``core.rs.table``): one entry type per mode, each entry's explicit
state and its transition table, and the idle heap skipping removed entries by their state."""

from __future__ import annotations

import os

import pytest

from ntmobile.core.rs import (
    EntryState,
    RelayRemoved,
    RelayStateError,
    RelayTable,
    RsnEntry,
    RssEntry,
)
from ntmobile.core.rs.table import new_entry
from ntmobile.wire import Keepalive, PathRelease, RelayDirection, RsType

from .test_rs_core import DC_EP, NODE_A, NODE_B, direct, events, make_rs, rs_n_direction, setup_rs_n, setup_rs_s


def rss_direction(pid: bytes = b"S" * 8) -> RelayDirection:
    return RelayDirection(path_id=pid, rs_type=RsType.S, idle_timeout=10, relay_key=os.urandom(32),
                          node_vip4="100.64.0.2", peer_vip4="100.64.0.3")


def test_one_entry_type_per_mode() -> None:
    s = new_entry(b"D" * 8, rss_direction(), 10.0, 1.0)
    n = new_entry(b"D" * 8, rs_n_direction(b"P" * 8, os.urandom(32)), 10.0, 1.0)
    assert isinstance(s, RssEntry) and s.rs_type is RsType.S and len(s.legs()) == 2
    assert isinstance(n, RsnEntry) and n.rs_type is RsType.N and n.legs() == (n.initiator,)
    assert not hasattr(s, "opener") and not hasattr(s, "data_keys")  # an RS-S holds no data key
    assert not hasattr(n, "responder") and n.nat_mappings() and s.nat_mappings() == []
    assert s.state is n.state is EntryState.WAITING


def test_illegal_moves_are_internal_errors() -> None:
    e = new_entry(b"D" * 8, rss_direction(), 10.0, 1.0)
    with pytest.raises(RelayStateError, match="waiting -> waiting"):
        e.move(EntryState.WAITING)
    e.move(EntryState.ACTIVE)
    with pytest.raises(RelayStateError, match="active -> waiting"):
        e.move(EntryState.WAITING)
    e.move(EntryState.REMOVED)
    for to in EntryState:
        with pytest.raises(RelayStateError):
            e.move(to)


def test_rs_s_entry_is_active_once_both_legs_announced_themselves() -> None:
    core, dc, ini, resp = setup_rs_s()
    e = core.entry(b"S" * 8)
    assert isinstance(e, RssEntry) and e.state is EntryState.WAITING
    core.receive_datagram(ini.request(100), NODE_A, 2.0)
    assert e.state is EntryState.WAITING  # the responder leg is still unknown
    core.receive_datagram(resp.request(200, Keepalive()), NODE_B, 2.1)
    assert e.state is EntryState.ACTIVE and e.info()["state"] == "active"
    core.receive_datagram(ini.request(101), ("198.51.100.9", 4000), 2.2)  # a leg moves: still ACTIVE
    assert e.state is EntryState.ACTIVE
    events(core)
    core.datagrams_to_send()
    evs, _, _ = direct(core, dc, PathRelease(path_id=e.path_id), txid=9, now=3.0)
    assert [type(ev) for ev in evs] == [RelayRemoved] and e.state is EntryState.REMOVED


def test_rs_n_entry_is_active_once_its_node_announced_itself() -> None:
    core, _dc, _node = setup_rs_n()
    [e] = core.entries()
    assert isinstance(e, RsnEntry) and e.state is EntryState.ACTIVE


def test_idle_heap_skips_removed_entries_and_reschedules_refreshed_ones() -> None:
    table = RelayTable()
    a = new_entry(b"D" * 8, rss_direction(b"A" * 8), 10.0, 0.0)
    b = new_entry(b"D" * 8, rss_direction(b"B" * 8), 10.0, 0.0)
    table.install(a)
    table.install(b)
    assert len(table) == 2 and set(table.rs_s) == {b"A" * 8, b"B" * 8}
    assert table.remove(a) and not table.remove(a) and a.state is EntryState.REMOVED
    b.last_active = 5.0  # traffic since: due at 15
    assert table.expire(10.0) == [] and table.next_expiry() == 15.0 and b.state is EntryState.WAITING
    assert table.expire(15.0) == [b] and len(table) == 0 and b.state is EntryState.REMOVED


def test_an_unexpected_dc_message_is_counted_and_dropped() -> None:
    core, dc = make_rs()
    core.receive_datagram(dc.seal(Keepalive(), 3), DC_EP, 1.0)
    assert core.stats["drop_unexpected"] == 1 and core.datagrams_to_send() == []
