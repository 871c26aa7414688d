"""The DC's SQLite registry: group commit of replay floors, and checkpoints on a thread of their own."""

from __future__ import annotations

import threading
from pathlib import Path

from ntmobile.core.registry import ClientRecord, Pools
from ntmobile.runtime.store import SqliteStore
from ntmobile.wire import Role

POOLS = Pools("100.64.1.0/24", "fd00:6e74:1::/64", "100.127.0.0/16", "fd00:6e74:ff::/64")


def _enrol(store: SqliteStore, n: int) -> list[bytes]:
    ids = []
    for i in range(n):
        cid = i.to_bytes(8, "big")
        store.add_client(ClientRecord(cid, f"n{i}.a.example", Role.NODE, bytes(32)))
        ids.append(cid)
    return ids


def test_group_commit_writes_the_batch_floors_once_and_they_survive_a_reopen(tmp_path: Path) -> None:
    db = tmp_path / "dc.sqlite"
    store = SqliteStore(db, POOLS)
    ids = _enrol(store, 3)
    store.begin_batch()
    for k, cid in enumerate(ids):
        store.set_last_seq(cid, 1000 + k)
        # inside the batch the store already answers with the pending floor
        rec = store.get_client(cid)
        assert rec is not None and rec.last_seq == 1000 + k
    store.end_batch()
    store.close()
    again = SqliteStore(db, POOLS)
    assert [r.last_seq for cid in ids if (r := again.get_client(cid)) is not None] == [1000, 1001, 1002]
    again.close()


def test_background_checkpoint_copies_the_log_on_another_thread_and_close_empties_it(tmp_path: Path) -> None:
    db = tmp_path / "dc.sqlite"
    store = SqliteStore(db, POOLS, background_checkpoint=True)
    ids = _enrol(store, 200)
    for cid in ids:  # many commits: without an automatic checkpoint they all stay in the log
        store.begin_batch()
        store.set_last_seq(cid, 7)
        store.end_batch()
    wal = Path(str(db) + "-wal")
    assert wal.stat().st_size > 0
    result: list[tuple[int, int]] = []
    t = threading.Thread(target=lambda: result.append(store.checkpoint()))
    t.start()
    t.join(10)
    log_pages, copied = result[0]
    assert log_pages > 0 and copied == log_pages  # nobody else was reading: everything was copied
    # the writer goes on after the checkpoint; close() checkpoints and truncates the log
    store.set_last_seq(ids[0], 8)
    store.close()
    assert not wal.exists() or wal.stat().st_size == 0
    again = SqliteStore(db, POOLS)
    rec = again.get_client(ids[0])
    assert rec is not None and rec.last_seq == 8
    assert all((r := again.get_client(cid)) is not None and r.last_seq == 7 for cid in ids[1:])
    again.close()
