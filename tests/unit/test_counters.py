"""Send counters under keys that outlive a process (long-term, DC-to-DC static): reserved in blocks in a
file before use (runtime/counters.py, crypto CounterFloor), never taken from the clock after the first
start, so neither a restart nor a clock stepped back repeats a (key, nonce) pair (docs/security.md §3)."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from ntmobile.crypto import Channel, CounterFloor, KeyPair
from ntmobile.runtime import counters
from ntmobile.runtime.config import ConfigError
from ntmobile.wire import CodecError, Keepalive

KEYS = KeyPair(b"\x01" * 32, b"\x02" * 32)


def _seqs(ch: Channel, n: int) -> list[int]:
    return [int.from_bytes(ch.seal(Keepalive(), txid=i)[16:24], "big") for i in range(n)]


def test_every_value_is_reserved_on_disk_before_it_is_used(tmp_path: Path) -> None:
    path = tmp_path / "node.counter"
    floor = counters.counter_floor(path, block=4)
    ch = Channel(KEYS, b"N" * 8, counter=floor)
    for seq in _seqs(ch, 10):
        assert seq <= counters.read_ceiling(path)  # type: ignore[operator]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_restart_with_the_clock_stepped_back_starts_above_everything_sealed(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "dc.sqlite.counter"
    first = Channel(KEYS, b"D" * 8, counter=counters.counter_floor(path, block=4))
    used = _seqs(first, 7)
    assert used[0] >= time.time_ns() // 1000 - 10_000_000  # first start: from the clock (no file yet)
    # The process dies (no clean shutdown); the clock is set back a year; the daemon starts again.
    monkeypatch.setattr(time, "time_ns", lambda: (time.time() - 365 * 86400) * 10**9)
    again = Channel(KEYS, b"D" * 8, counter=counters.counter_floor(path, block=4))
    assert min(_seqs(again, 5)) > max(used)
    # Two channels under the same floor (two clients' long-term keys) never share a value either.
    a, b = (Channel(KEYS, b"D" * 8, counter=again._counter) for _ in range(2))
    assert not set(_seqs(a, 5)) & set(_seqs(b, 5))


def test_a_failing_reservation_seals_nothing() -> None:
    def broken(ceiling: int) -> None:
        raise OSError(28, "No space left on device")

    ch = Channel(KEYS, b"N" * 8, counter=CounterFloor(100, broken, block=4))
    with pytest.raises(CodecError, match="reserve"):
        ch.seal(Keepalive(), txid=1)
    assert ch._counter is not None and ch._counter.next == 100  # nothing handed out


def test_bad_or_unwritable_counter_files_give_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "node.counter"
    bad.write_text("not a number\n")
    with pytest.raises(ConfigError) as exc:
        counters.counter_floor(bad)
    assert "\n" not in str(exc.value) and str(bad) in str(exc.value)
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(ConfigError):
            counters.counter_floor(ro / "x.counter")


def test_the_counter_file_is_not_written_through_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("keep\n")
    path = tmp_path / "node.counter"
    (tmp_path / "node.counter.tmp").symlink_to(target)
    with pytest.raises(ConfigError):
        counters.counter_floor(path)
    assert target.read_text() == "keep\n"
