"""The DC's flow state machines (core/dc/flows.py): every state of every table is reachable from NEW
and can reach an end, a move the table lacks raises, and a real direction leaves its flows in their
final states."""

from __future__ import annotations

import dataclasses
from collections import deque
from typing import Any

import pytest

from ntmobile.core.dc.flows import (
    FINAL,
    FLOWS,
    Asked,
    IllegalTransition,
    LocalPeerDirection,
    MovedTag,
    PeerQueryTag,
    ProbeTag,
    RelayTag,
    RouteTag,
    S,
    State,
    _Flow,
    move,
)
from ntmobile.core.node import PathFailed, PathReady
from ntmobile.wire import Status

from .harness import Net
from .test_cores_local import enroll, make_dc, make_node


def _reachable(table: dict[State, frozenset[State]]) -> set[State]:
    seen, todo = {S.NEW}, deque([S.NEW])
    while todo:
        for nxt in table.get(todo.popleft(), frozenset()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.__name__)
def test_every_state_of_a_table_is_reachable_and_can_end(flow: type[_Flow]) -> None:
    table = flow.TRANSITIONS
    named = set(table) | {s for targets in table.values() for s in targets}
    assert _reachable(table) == named, f"{flow.__name__}: unreachable {named - _reachable(table)}"
    assert not FINAL & set(table), f"{flow.__name__}: a final state has moves"
    for state in named - FINAL:  # every live state can still end
        ends = _reachable({S.NEW: frozenset({state}), **table}) & FINAL
        assert ends, f"{flow.__name__}: {state.name} never ends"
    assert S.DONE in named or S.HANDED_ON in named
    assert S.FAILED in named


def _asked() -> Asked:
    return Asked(None, 1, "x.example", 0.0)  # type: ignore[arg-type]  # (no session needed to move it)


def test_a_legal_move_changes_the_state() -> None:
    f = _asked()
    assert f.state is S.NEW and not f.finished
    move(f, S.RESOLVING)
    assert f.state is S.RESOLVING
    move(f, S.HANDED_ON)
    assert f.finished


@pytest.mark.parametrize("path", [(S.DONE,), (S.RELAYING,), (S.RESOLVING, S.RESOLVING), (S.FAILED, S.RESOLVING)])
def test_an_illegal_move_raises_and_leaves_the_state(path: tuple[State, ...]) -> None:
    f = _asked()
    *legal, illegal = path
    for s in legal:
        move(f, s)
    before = f.state
    with pytest.raises(IllegalTransition, match=f"Asked: no transition {before.name} -> {illegal.name}"):
        move(f, illegal)
    assert f.state is before


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.__name__)
def test_no_move_leaves_a_final_state(flow: type[_Flow]) -> None:
    for final in FINAL:
        for to in State:
            assert to not in flow.TRANSITIONS.get(final, frozenset())


@pytest.mark.parametrize("tag", [ProbeTag, RelayTag, RouteTag, PeerQueryTag, MovedTag])
def test_request_tags_are_frozen_dataclasses(tag: type[Any]) -> None:
    params = tag.__dataclass_params__  # type: ignore[attr-defined]
    assert dataclasses.is_dataclass(tag) and params.frozen


def test_a_direction_between_two_nodes_of_one_dc_ends_in_done_and_a_bad_one_in_failed() -> None:
    net = Net()
    dc, store = make_dc(net)
    mn = make_node(net, enroll(store, "mn.a.example", 1), "mn", ("192.0.2.60", 7412))
    cn = make_node(net, enroll(store, "cn.a.example", 2), "cn", ("192.0.2.61", 7412), seed=3)
    net.run_until(lambda: mn.registered and cn.registered)
    mn.request_path("cn.a.example", net.now)
    net.run_until(lambda: bool(net.events_of("mn", PathReady)))
    [flow] = dc.directions.flows()
    assert isinstance(flow, LocalPeerDirection) and flow.state is S.DONE and flow.reply
    mn.request_path("nobody.a.example", net.now)
    net.run_until(lambda: bool(net.events_of("mn", PathFailed)))
    failed = [f for f in dc.directions.flows() if f is not flow]
    assert [(type(f), f.state) for f in failed] == [(Asked, S.FAILED)]
    assert net.events_of("mn", PathFailed)[0].status is Status.NXDOMAIN
