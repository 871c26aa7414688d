"""The DC's SQLite registry (WAL mode): enrolled clients, VIPs, GN VIP mappings, DC identity.

Implements core.registry.Store with the same allocation rules as MemoryStore. Every write is its
own transaction, except registrations' sequence numbers between ``begin_batch`` and ``end_batch``
(group commit: the DC writes them once per batch of datagrams, before it sends the replies); a
failing write raises StoreError (the core turns it into STORAGE_ERROR replies).

With ``background_checkpoint`` (the DC daemon), commits never copy the write-ahead log back into the
database themselves (SQLite's automatic checkpoint, with its fsync, would run on the event loop every
thousand pages): the owner calls ``checkpoint()`` on a thread of its own, which runs a passive
checkpoint on that thread's own connection.

The registry holds every client's secret and the DC's static key: it is created mode 0600 before
SQLite opens it (SQLite gives its -wal, -shm and -journal files the mode of the database), in a
directory nobody else can write, and never through a symbolic link (runtime/private.py).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ntmobile.core.registry import ClientRecord, JoinRecord, Pools, StoreError, VipPool
from ntmobile.wire import Role

from .private import PrivateFileError, check_private_file, create_private

#: Files SQLite keeps next to the database (WAL mode; the rollback journal of older opens).
SIDE_FILES = ("-wal", "-shm", "-journal")

SCHEMA = """
CREATE TABLE IF NOT EXISTS clients (
    client_id BLOB PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role INTEGER NOT NULL,
    psk BLOB NOT NULL,
    vip4 TEXT UNIQUE,
    vip6 TEXT UNIQUE,
    last_seq INTEGER NOT NULL DEFAULT 0,
    enrolled_at REAL NOT NULL DEFAULT (julianday('now'))
);
CREATE TABLE IF NOT EXISTS gn_vips (
    node_id BLOB NOT NULL,
    gn_addr TEXT NOT NULL,
    vip TEXT NOT NULL,
    PRIMARY KEY (node_id, gn_addr),
    UNIQUE (node_id, vip)
);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS joins (
    token_id BLOB PRIMARY KEY,
    secret BLOB NOT NULL,
    name TEXT NOT NULL,
    expires INTEGER NOT NULL,
    used_by BLOB,
    answer BLOB
);
"""


_ROLES = {int(r): r for r in Role}


class SeqBatch:
    """Group commit of registrations' sequence numbers, shared by SqliteStore and PgStore (runtime/
    pgstore.py): from ``begin_batch`` until ``end_batch``, ``set_last_seq`` only collects (the highest
    per client); ``end_batch`` writes them in one transaction. A subclass writes one
    (``_write_seq``) and a batch (``_write_seqs``, rows of (seq, client ID)); both raise StoreError."""

    _batching: bool
    _seqs: dict[bytes, int]

    def _init_batch(self) -> None:
        self._batching = False
        self._seqs = {}

    def begin_batch(self) -> None:
        """From now until ``end_batch``, registrations' sequence numbers (``set_last_seq``) are
        collected and written in one transaction at ``end_batch`` (the DC brackets each batch of
        datagrams it reads with these: one commit per batch instead of one per registration). Other
        writes commit at once, as outside a batch."""
        self._batching = True

    def end_batch(self) -> set[bytes]:
        """Write the batch's sequence numbers. StoreError if that fails (none of them is written).
        Returns the clients whose write lost: the stored floor was already at or above the batch's
        sequence number (another replica accepted that registration, or a later one, since this
        batch read the floor), or the client is gone; the caller undoes their registrations."""
        self._batching = False
        if not self._seqs:
            return set()
        rows = [(seq, cid) for cid, seq in self._seqs.items()]
        self._seqs.clear()
        return self._write_seqs(rows)

    def batch_pending(self) -> bool:
        """The current batch has sequence numbers to write (its answers must wait for end_batch)."""
        return bool(self._seqs)

    def set_last_seq(self, client_id: bytes, seq: int) -> None:
        if self._batching:
            self._seqs[client_id] = max(seq, self._seqs.get(client_id, 0))
            return
        self._write_seq(client_id, seq)

    def _write_seq(self, client_id: bytes, seq: int) -> None:
        raise NotImplementedError

    def _write_seqs(self, rows: list[tuple[int, bytes]]) -> set[bytes]:
        raise NotImplementedError


class SqliteStore(SeqBatch):
    def __init__(self, path: str | Path, pools: Pools, *, background_checkpoint: bool = False) -> None:
        self.path = Path(path)
        self.pools = pools
        self._init_batch()
        self._ckpt: sqlite3.Connection | None = None
        try:
            create_private(self.path)
            for suffix in SIDE_FILES:
                check_private_file(self.path.with_name(self.path.name + suffix))
        except PrivateFileError as exc:
            raise StoreError(f"cannot open the registry database: {exc}") from None
        try:
            # mode=rw: SQLite opens the file made above and never creates one with its own mode
            self._uri = f"file:{quote(str(self.path))}?mode=rw"
            self.db = sqlite3.connect(self._uri, uri=True, isolation_level=None, timeout=5.0)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            if background_checkpoint:
                self.db.execute("PRAGMA wal_autocheckpoint=0")
            self.db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the registry database {self.path}: {exc}") from None

    def checkpoint(self) -> tuple[int, int]:
        """Copy committed pages from the write-ahead log into the database (passive: never waits for
        or blocks the writer). Meant for a thread other than the writer's (one at a time), on a
        connection of its own. Returns (pages in the log, pages copied); StoreError on failure."""
        try:
            if self._ckpt is None:
                self._ckpt = sqlite3.connect(self._uri, uri=True, isolation_level=None, timeout=5.0,
                                             check_same_thread=False)
            _busy, log_pages, copied = self._ckpt.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: checkpoint: {exc}") from None
        return int(log_pages), int(copied)

    def close(self) -> None:
        if self._ckpt is not None:
            self._ckpt.close()
            self._ckpt = None
        try:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass  # e.g. a read-only file: the log stays and is replayed on the next open
        self.db.close()

    # -- group commit (SeqBatch) ------------------------------------------------------------------
    def _write_seqs(self, rows: list[tuple[int, bytes]]) -> set[bytes]:
        """One DC owns the file (no other writer can have raised a floor since the batch read it):
        nothing loses."""
        try:
            self.db.execute("BEGIN")
            self.db.executemany("UPDATE clients SET last_seq = ? WHERE client_id = ?", rows)
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise StoreError(f"{self.path}: {exc}") from None
        return set()

    def _write_seq(self, client_id: bytes, seq: int) -> None:
        self._write("UPDATE clients SET last_seq = ? WHERE client_id = ?", (seq, client_id))

    def _write(self, sql: str, args: tuple[object, ...]) -> None:
        try:
            self.db.execute(sql, args)
        except sqlite3.IntegrityError as exc:
            raise StoreError(str(exc)) from None
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from None

    def _row(self, where: str, args: tuple[object, ...]) -> ClientRecord | None:
        try:
            row = self.db.execute(
                f"SELECT client_id, name, role, psk, vip4, vip6, last_seq FROM clients WHERE {where}", args
            ).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from None
        if row is None:
            return None
        cid = bytes(row[0])
        return ClientRecord(cid, row[1], _ROLES[row[2]], bytes(row[3]), row[4], row[5], self._seqs.get(cid, row[6]))

    # -- Store protocol --------------------------------------------------------------------------
    def get_client(self, client_id: bytes) -> ClientRecord | None:
        return self._row("client_id = ?", (client_id,))

    def client_by_name(self, name: str) -> ClientRecord | None:
        return self._row("name = ?", (name.rstrip(".").lower(),))

    def client_by_vip(self, vip: str) -> ClientRecord | None:
        return self._row("vip4 = ? OR vip6 = ?", (vip, vip))

    def add_client(self, record: ClientRecord) -> None:
        self._write("INSERT INTO clients (client_id, name, role, psk, vip4, vip6, last_seq) VALUES (?,?,?,?,?,?,?)",
                    (record.client_id, record.name, int(record.role), record.psk, record.vip4, record.vip6,
                     record.last_seq))

    def assign_vips(self, client_id: bytes, known: ClientRecord | None = None) -> tuple[str | None, str | None]:
        rec = known if known is not None and known.client_id == client_id else self.get_client(client_id)
        if rec is None:
            raise StoreError("unknown client")
        vip4, vip6 = rec.vip4, rec.vip6
        if (vip4 is not None or not self.pools.vip4) and (vip6 is not None or not self.pools.vip6):
            return vip4, vip6
        if vip4 is None and self.pools.vip4:
            used = {r[0] for r in self.db.execute("SELECT vip4 FROM clients WHERE vip4 IS NOT NULL")}
            vip4 = VipPool.of(self.pools.vip4).first_free(used)
        if vip6 is None and self.pools.vip6:
            used = {r[0] for r in self.db.execute("SELECT vip6 FROM clients WHERE vip6 IS NOT NULL")}
            vip6 = VipPool.of(self.pools.vip6).first_free(used)
        if (vip4, vip6) != (rec.vip4, rec.vip6):
            self._write("UPDATE clients SET vip4 = ?, vip6 = ? WHERE client_id = ?", (vip4, vip6, client_id))
        return vip4, vip6

    def gn_vip(self, node_id: bytes, gn_addr: str) -> str:
        try:
            rows = self.db.execute("SELECT gn_addr, vip FROM gn_vips WHERE node_id = ?", (node_id,)).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from None
        for addr, vip in rows:
            if addr == gn_addr:
                return str(vip)
        v6 = ":" in gn_addr
        vip = VipPool.of(self.pools.gn_vip6 if v6 else self.pools.gn_vip4).first_free({r[1] for r in rows})
        self._write("INSERT INTO gn_vips (node_id, gn_addr, vip) VALUES (?,?,?)", (node_id, gn_addr, vip))
        return vip

    # -- extras --------------------------------------------------------------------------------
    def add_join(self, record: JoinRecord) -> None:
        self._write("INSERT INTO joins (token_id, secret, name, expires) VALUES (?,?,?,?)",
                    (record.token_id, record.secret, record.name, record.expires))

    def get_join(self, token_id: bytes) -> JoinRecord | None:
        try:
            row = self.db.execute("SELECT token_id, secret, name, expires, used_by, answer FROM joins "
                                  "WHERE token_id = ?", (token_id,)).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from None
        if row is None:
            return None
        return JoinRecord(bytes(row[0]), bytes(row[1]), row[2], row[3], None if row[4] is None else bytes(row[4]),
                          None if row[5] is None else bytes(row[5]))

    def redeem_join(self, token_id: bytes, used_by: bytes, client: ClientRecord,
                    answer_for: Callable[[ClientRecord], bytes]) -> bytes:
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from None
        try:
            self.add_client(client)
            client.vip4, client.vip6 = self.assign_vips(client.client_id)
            answer = answer_for(client)
            cur = self.db.execute("UPDATE joins SET used_by = ?, answer = ? WHERE token_id = ? AND used_by IS NULL",
                                  (used_by, answer, token_id))
            if cur.rowcount != 1:
                raise StoreError("join token already used")
            self.db.execute("COMMIT")
        except BaseException as exc:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"{self.path}: {exc}") from None
            raise
        return answer

    def count(self) -> int:
        """Enrolled clients (nodes and relays)."""
        return int(self.db.execute("SELECT COUNT(*) FROM clients").fetchone()[0])

    def clients(self) -> list[ClientRecord]:
        rows = self.db.execute("SELECT client_id FROM clients ORDER BY name").fetchall()
        return [r for (cid,) in rows if (r := self.get_client(bytes(cid))) is not None]

    def setting(self, key: str, make: bytes | None = None) -> bytes | None:
        row = self.db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        if row is not None:
            return bytes(row[0])
        if make is None:
            return None
        self._write("INSERT INTO settings (key, value) VALUES (?, ?)", (key, make))
        return make

    def identity(self) -> tuple[bytes, bytes]:
        """The DC's ID (8 bytes) and static secret key (32 bytes), created on first use."""
        dc_id = self.setting("dc_id", os.urandom(8))
        secret = self.setting("dc_key", os.urandom(32))
        assert dc_id is not None and secret is not None
        return dc_id, secret


def is_postgres(database: str) -> bool:
    """Whether a DC's ``database`` setting names a PostgreSQL database (else it is a SQLite file)."""
    return database.startswith(("postgresql://", "postgres://"))


def open_store(database: str, pools: Pools, *, background_checkpoint: bool = False) -> Any:
    """The registry a DC's ``database`` setting names: a PostgreSQL URI (``postgresql://...``: the
    store DC replicas share, runtime/pgstore.py) or a SQLite file (the default)."""
    if is_postgres(database):
        from .pgstore import PgStore

        return PgStore(database, pools)
    return SqliteStore(database, pools, background_checkpoint=background_checkpoint)
