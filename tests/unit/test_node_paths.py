"""core.node.paths: the path lifecycle's transition table refuses illegal moves."""

from __future__ import annotations

import pytest

from ntmobile.core.node import PATH_TRANSITIONS, PathState, PathStateError
from ntmobile.core.node.paths import _Path
from ntmobile.crypto import CapsuleOpener, CapsuleSealer, Channel, path_keys
from ntmobile.wire import PathMode, PathRole, RouteDirection

PID = bytes(range(8))
KEY = bytes(32)


def _path() -> _Path:
    sig_keys, data_keys = path_keys(KEY, PID).for_initiator()
    rd = RouteDirection(path_id=PID, path_role=int(PathRole.INITIATOR), mode=int(PathMode.DIRECT), path_key=KEY)
    return _Path(PID, PathRole.INITIATOR, PathMode.DIRECT, rd, Channel(sig_keys, PID),
                 CapsuleSealer(data_keys.send, PID, 0), CapsuleOpener(data_keys.recv), data_keys, [])


def test_the_lifecycle() -> None:
    p = _path()
    assert p.state is PathState.ESTABLISHING and not p.established
    p.move(PathState.ESTABLISHED)
    assert p.established
    p.move(PathState.CLOSED)
    assert p.state is PathState.CLOSED and not p.established


@pytest.mark.parametrize(("moves", "bad"), [
    ((PathState.ESTABLISHED,), PathState.ESTABLISHED),  # established twice
    ((PathState.ESTABLISHED,), PathState.ESTABLISHING),  # never back
    ((PathState.CLOSED,), PathState.ESTABLISHED),  # closed is final
    ((PathState.ESTABLISHED, PathState.CLOSED), PathState.CLOSED),
])
def test_illegal_moves_raise(moves: tuple[PathState, ...], bad: PathState) -> None:
    p = _path()
    for m in moves:
        p.move(m)
    with pytest.raises(PathStateError, match=f"{p.state.name} -> {bad.name}"):
        p.move(bad)
    assert p.state is moves[-1]


def test_every_state_has_a_row_and_closed_is_final() -> None:
    assert set(PATH_TRANSITIONS) == set(PathState)
    assert PATH_TRANSITIONS[PathState.CLOSED] == frozenset()
