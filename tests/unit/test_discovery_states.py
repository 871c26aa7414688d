"""core.discovery: the machine's explicit states and their transition table."""

from __future__ import annotations

import pytest

from ntmobile.core.discovery import TRANSITIONS, Discovery, DiscoveryState, DiscoveryStateError, Outcome

RESOLVER = ("127.0.0.1", 5353)


def test_every_state_has_a_row_and_done_is_final() -> None:
    assert set(TRANSITIONS) == set(DiscoveryState)
    assert TRANSITIONS[DiscoveryState.DONE] == frozenset()
    assert all(DiscoveryState.DONE in TRANSITIONS[s] for s in DiscoveryState if s is not DiscoveryState.DONE)


def test_a_discovery_starts_at_the_zone_cut_and_a_deadline_ends_it() -> None:
    d = Discovery("www.b.example", [RESOLVER], 0.0, deadline=2.0)
    assert d.state is DiscoveryState.ZONE_CUT and not d.done
    assert d.next_queries(0.0)  # NS? www.b.example
    d.handle_timer(2.0)
    assert d.state is DiscoveryState.DONE and d.done
    assert d.result.outcome is Outcome.SERVFAIL
    assert "while finding the zone cut" in d.result.reason


@pytest.mark.parametrize("to", [DiscoveryState.TXT, DiscoveryState.ADDRESSES, DiscoveryState.ZONE_CUT])
def test_illegal_moves_raise(to: DiscoveryState) -> None:
    d = Discovery("www.b.example", [RESOLVER], 0.0)
    with pytest.raises(DiscoveryStateError, match=f"ZONE_CUT -> {to.name}"):
        d._move(to)
    assert d.state is DiscoveryState.ZONE_CUT


def test_nothing_leaves_done() -> None:
    d = Discovery("www.b.example", [RESOLVER], 0.0, deadline=1.0)
    d.handle_timer(1.0)
    for to in DiscoveryState:
        with pytest.raises(DiscoveryStateError):
            d._move(to)
