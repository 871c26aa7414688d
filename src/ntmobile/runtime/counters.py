"""The persisted send counter of a daemon's long-lived keys (long-term keys to and from the DC, the
DC's static DC-to-DC keys): a small file holding the highest counter reserved so far.

``core``'s CounterFloor calls ``persist(ceiling)`` before it hands out a counter above the last
reservation; this module makes that durable (write a temporary file, fsync, rename, fsync the
directory) before returning, so a daemon restarted after a crash, a power cut or a clock step
starts above everything it ever sealed (docs/security.md §3). Only the very first start (no file)
takes the wall clock in microseconds as its starting point: above the counters of an earlier
version that used the clock, and a better guess than 1 should the file ever be lost.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ntmobile.crypto import CounterFloor

from .config import ConfigError

#: Counters reserved per write: a node or relay seals a few long-term messages per registration; a
#: busy DC (6,000 registrations/s, two long-term seals each) writes about once every 90 s.
BLOCK = 1 << 16
DC_BLOCK = 1 << 20


def read_ceiling(path: Path) -> int | None:
    """The reserved ceiling in ``path`` (None: no file). ConfigError (one line) if unreadable."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the send counter file: {exc.strerror}") from None
    try:
        value = int(text.strip())
    except ValueError:
        value = -1
    if not 0 <= value < 1 << 64:
        raise ConfigError(f"{path}: not a send counter (a decimal number); restore it or remove it to start "
                          f"from the clock") from None
    return value


def write_ceiling(path: Path, value: int) -> None:
    """Durably record ``value`` as the highest reserved counter (atomic replace, fsync)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, f"{value}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def counter_floor(path: Path, *, block: int = BLOCK) -> CounterFloor:
    """The process's CounterFloor backed by ``path``; its first reservation is written at once, so
    a daemon that cannot write its counter file says so at start-up (ConfigError), not at its first
    registration."""
    ceiling = read_ceiling(path)
    start = ceiling + 1 if ceiling is not None else max(time.time_ns() // 1000, 1)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_ceiling(path, start + block - 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write the send counter file: {exc.strerror}") from None
    floor = CounterFloor(start, lambda c: write_ceiling(path, c), block=block)
    floor.ceiling = start + block - 1
    return floor
