"""Secrets at rest (issue 14 §4): the registry, its WAL/SHM files and credential files are mode 0600
from the first byte, never written through a symlink, and live in a directory nobody else can write."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ntmobile.core.registry import ClientRecord, Pools, StoreError
from ntmobile.runtime.config import ConfigError, Credentials, dump, load
from ntmobile.runtime.store import SqliteStore
from ntmobile.wire import Role

POOLS = Pools("100.64.1.0/24", "fd00:6e74:1::/64", "100.127.0.0/16", "fd00:6e74:ff::/64")
CREDS = Credentials(name="mn.a.example", role="node", client_id="0102030405060708", secret="A" * 43 + "=",
                    dc_id="0807060504030201", dc_address="192.0.2.1", domain="a.example")


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """umask 0: whatever mode a file gets comes from the code that creates it, not from the umask."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_registry_and_its_wal_and_shm_are_0600_in_a_new_0700_directory(tmp_path: Path,
                                                                          permissive_umask: None) -> None:
    db = tmp_path / "state" / "dc.sqlite"
    store = SqliteStore(db, POOLS)
    store.identity()  # the DC's static secret goes into the registry
    store.add_client(ClientRecord(b"\x01" * 8, "mn.a.example", Role.NODE, b"\x11" * 32))
    wal, shm = Path(f"{db}-wal"), Path(f"{db}-shm")
    assert wal.exists() and shm.exists()
    assert (mode(db.parent), mode(db), mode(wal), mode(shm)) == (0o700, 0o600, 0o600, 0o600)
    store.close()
    again = SqliteStore(db, POOLS)  # the side files come back with the database's mode
    assert mode(Path(f"{db}-wal")) == 0o600
    again.close()


def test_an_existing_registry_with_a_loose_mode_is_tightened(tmp_path: Path) -> None:
    db = tmp_path / "dc.sqlite"
    SqliteStore(db, POOLS).close()
    db.chmod(0o644)
    SqliteStore(db, POOLS).close()
    assert mode(db) == 0o600


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"])
def test_a_symlink_planted_at_the_registry_or_its_side_files_is_not_followed(tmp_path: Path, suffix: str) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"")
    db = tmp_path / "dc.sqlite"
    if suffix:
        SqliteStore(db, POOLS).close()
    Path(f"{db}{suffix}").symlink_to(victim)
    with pytest.raises(StoreError, match="symbolic link"):
        SqliteStore(db, POOLS)
    assert victim.read_bytes() == b""


def test_a_group_or_world_writable_registry_directory_is_refused_in_one_line(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(StoreError) as err:
        SqliteStore(shared / "dc.sqlite", POOLS)
    assert "world-writable" in str(err.value) and "\n" not in str(err.value)
    assert not (shared / "dc.sqlite").exists()


def test_credentials_are_0600_from_the_first_byte(tmp_path: Path, permissive_umask: None) -> None:
    """Every file that appears in the directory while the credentials are written is already 0600
    (an audit hook looks at the directory before each file operation of the write)."""
    out = tmp_path / "creds" / "mn.toml"
    seen: list[tuple[str, int]] = []
    watching = [True]

    def hook(event: str, _args: Any) -> None:
        if watching[0] and out.parent.is_dir() and event in ("open", "os.chmod", "os.rename", "os.replace",
                                                             "os.remove"):
            for p in out.parent.iterdir():
                seen.append((p.name, mode(p)))

    sys.addaudithook(hook)
    try:
        dump(CREDS, out)
        watching[0] = False
        assert mode(out) == 0o600 and mode(out.parent) == 0o700
        assert load(out, Credentials) == CREDS
        dump(CREDS, out)  # over an existing file: the same
        assert mode(out) == 0o600
    finally:
        watching[0] = False
    assert seen and all(m == 0o600 for _name, m in seen), seen
    assert [p.name for p in out.parent.iterdir()] == ["mn.toml"]  # no temporary file left


def test_a_symlink_planted_at_the_credentials_path_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    out = tmp_path / "mn.toml"
    out.symlink_to(victim)
    dump(CREDS, out)
    assert victim.read_text() == "precious\n" and mode(victim) == 0o644
    assert not out.is_symlink() and mode(out) == 0o600
    assert load(out, Credentials) == CREDS


def test_credentials_in_a_world_writable_directory_are_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(ConfigError, match="world-writable"):
        dump(CREDS, shared / "mn.toml")
    assert not list(shared.iterdir())
