"""The DC's PostgreSQL registry: the store DC replicas share (issue 17).

Same interface and allocation rules as SqliteStore (core.registry.Store plus the extras the DC and
``ntm enroll`` use), selected by ``database = "postgresql://..."`` in the DC's configuration. Every
replica of a domain opens one connection to the same database; what must stay unique across them
is allocated inside a transaction that holds a PostgreSQL advisory lock:

- VIPs (lock VIP_LOCK): the free address is chosen and written under the lock; ``vip4``/``vip6``
  are also UNIQUE, so even a bug could not commit one address twice.
- GN VIPs: per node, the first free one inserted with ON CONFLICT DO NOTHING; the table's keys
  (node, GN address) and (node, VIP) are unique, so of two replicas racing one inserts and the other
  reads the winner's row and tries again (two round trips, no lock, no transaction block).
- enrolments: ``redeem_join`` locks the token's row (SELECT ... FOR UPDATE) and marks it used in
  the transaction that inserts the client; names and client IDs are primary/unique keys.
- replay floors: ``last_seq`` only ever rises (UPDATE ... WHERE last_seq < new; GREATEST in a
  batch), so a registration accepted by one replica can never lower the floor another replica wrote,
  and outside a batch a registration whose sequence number is not above the stored floor fails.
- send counters (and so Path IDs' and nonces' uniqueness under the shared DC key): blocks are
  reserved by one UPDATE ... RETURNING on the ``counters`` row (``DbCounterFloor``); each replica
  takes values only from blocks the database handed to it, committed before the first is used, so
  a replica killed with ``kill -9`` and restarted gets a fresh block above every other.
- path records (``paths``, core.registry.PathStore): any replica re-directs an NTM-peer path; a
  re-direction first takes the row's lease (``claim_path``: one UPDATE that only a free, expired or
  own lease lets through, so of two replicas one wins), its final write gives it back.

Replicas share the domain's DC identity (``dc_id`` and static key in ``settings``): the first
replica to start creates it (INSERT ... ON CONFLICT DO NOTHING), the others read it.

A database that is down or unreachable makes every call raise StoreError (the core answers
STORAGE_ERROR); the next call after it returns reconnects.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from ntmobile.core.registry import ClientRecord, JoinRecord, PathRow, Pools, StoreError, VipPool
from ntmobile.crypto import CounterFloor
from ntmobile.wire import SIGNAL_HEADER_SIZE, CodecError, MessageType, PathMode, Role, SignalFlags

from .store import SeqBatch, is_postgres

__all__ = ["DbCounterFloor", "PgStore", "is_postgres"]

#: Advisory lock keys (first half of the two-int form).
SCHEMA_LOCK = 17_000
VIP_LOCK = 17_001
#: Insert attempts for one GN VIP before giving up (each lost only to another replica's insert).
GN_VIP_ATTEMPTS = 16
#: Nodes whose GN VIP mappings a replica remembers (PgStore.gn_vip).
GN_CACHE = 16384
#: Keys (client ID, name, VIP) of the records a replica keeps for answering while the database is
#: down (PgStore._cache): about 16,000 clients; the others get no answer then (they retry).
RECORD_CACHE = 65536

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS clients (
        client_id BYTEA PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        role INTEGER NOT NULL,
        psk BYTEA NOT NULL,
        vip4 TEXT UNIQUE,
        vip6 TEXT UNIQUE,
        last_seq BIGINT NOT NULL DEFAULT 0,
        enrolled_at TIMESTAMPTZ NOT NULL DEFAULT now())""",
    """CREATE TABLE IF NOT EXISTS gn_vips (
        node_id BYTEA NOT NULL,
        gn_addr TEXT NOT NULL,
        vip TEXT NOT NULL,
        PRIMARY KEY (node_id, gn_addr),
        UNIQUE (node_id, vip))""",
    "CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value BYTEA NOT NULL)",
    """CREATE TABLE IF NOT EXISTS joins (
        token_id BYTEA PRIMARY KEY,
        secret BYTEA NOT NULL,
        name TEXT NOT NULL,
        expires BIGINT NOT NULL,
        used_by BYTEA,
        answer BYTEA)""",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, ceiling BIGINT NOT NULL)",
    # The replica that accepted the client's last registration ("address:port"): where a Peer Query
    # for a path to it goes (written with the registration's sequence number: no round trip more).
    "ALTER TABLE clients ADD COLUMN IF NOT EXISTS holder TEXT",
    # NTM-peer path records (DIRECT, RS-S), so that any replica re-directs a path it did not direct
    # (PathRow; docs/architecture.md "DC replicas"): written once per (re-)direction, never on a
    # registration. ``lease_*``: the re-direction that runs (one at a time across the replicas).
    """CREATE TABLE IF NOT EXISTS paths (
        path_id BYTEA PRIMARY KEY,
        end_a TEXT NOT NULL,
        end_b TEXT NOT NULL,
        role_a SMALLINT NOT NULL,
        inst_a BYTEA,
        inst_b BYTEA,
        mode SMALLINT NOT NULL,
        rs TEXT,
        path_key BYTEA NOT NULL,
        relay_ours BOOLEAN NOT NULL,
        directed_us BIGINT NOT NULL,
        version BIGINT NOT NULL DEFAULT 1,
        updated TIMESTAMPTZ NOT NULL DEFAULT now(),
        lease_owner TEXT,
        lease_until TIMESTAMPTZ)""",
    "CREATE INDEX IF NOT EXISTS paths_rs ON paths (rs) WHERE rs IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS paths_updated ON paths (updated)",
]

_ROLES = {int(r): r for r in Role}
_COLS = "client_id, name, role, psk, vip4, vip6, last_seq"
_PATH_COLS = "path_id, end_a, end_b, role_a, inst_a, inst_b, mode, rs, path_key, relay_ours, directed_us, version"


def _path_row(row: tuple[Any, ...]) -> PathRow:
    return PathRow(bytes(row[0]), row[1], row[2], int(row[3]), None if row[4] is None else bytes(row[4]),
                   None if row[5] is None else bytes(row[5]), int(row[6]), row[7], bytes(row[8]), bool(row[9]),
                   int(row[10]), int(row[11]))



class PgStore(SeqBatch):
    """One replica's connection to the shared registry."""

    #: NTM-peer path records live here too (core.registry.PathStore), shared by the replicas.
    shares_paths = True

    def __init__(self, dsn: str, pools: Pools, *, connect_timeout: float = 3.0) -> None:
        self.dsn = dsn
        self.pools = pools
        self.connect_timeout = connect_timeout
        self._conn: psycopg.Connection[Any] | None = None
        self._init_batch()
        #: This replica's "address:port": recorded as the holder of every registration it accepts.
        self.holder: str | None = None
        #: Records read so far (client ID, name, VIP -> record): answers when the database is
        #: unreachable, so that the DC can still seal a STORAGE_ERROR reply to a known client.
        #: At most RECORD_CACHE keys (least recently read dropped first).
        self._cache: OrderedDict[object, ClientRecord] = OrderedDict()
        #: Statements sent to the server (the bench's round trips per registration).
        self.round_trips = 0
        #: Transaction blocks (and savepoints) opened: each adds two round trips (BEGIN/COMMIT).
        self.transactions = 0
        #: One connection: callers on several threads take turns (the DC itself uses one thread).
        self._lock = threading.RLock()
        #: Rows looked up ahead for the current read batch (``prefetch``), cleared at its end.
        self._ahead: dict[bytes, tuple[Any, ...] | None] = {}
        #: GN VIP mappings read or made here, by node (gn_vip): they never change once made.
        self._gn: OrderedDict[bytes, dict[str, str]] = OrderedDict()
        with self._tx() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s, 0)", (SCHEMA_LOCK,))
            for stmt in SCHEMA:
                cur.execute(stmt)

    # -- connection ------------------------------------------------------------------------------
    def _db(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            try:
                self._conn = psycopg.connect(self.dsn, autocommit=True,
                                             connect_timeout=max(1, int(self.connect_timeout)))
            except psycopg.Error as exc:
                raise StoreError(f"registry database unreachable ({_one_line(exc)[:80]})") from None
        return self._conn

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Cursor[Any]]:
        """A cursor inside a transaction (a savepoint when nested); psycopg errors become StoreError."""
        self.transactions += 1
        try:
            with self._lock, self._db().transaction() as tx, tx.connection.cursor() as cur:
                yield _Counted(cur, self)  # type: ignore[misc]
        except psycopg.errors.UniqueViolation as exc:
            raise StoreError(_one_line(exc)) from None
        except psycopg.Error as exc:
            raise StoreError(f"registry database: {_one_line(exc)[:120]}") from None

    def _one(self, sql: str, args: tuple[object, ...]) -> tuple[Any, ...] | None:
        with self._tx() as cur:
            cur.execute(sql, args)
            return cur.fetchone()

    def _rows(self, sql: str, args: tuple[object, ...], *, one: bool = False) -> list[tuple[Any, ...]]:
        """One statement, one round trip: in autocommit it is its own transaction (no BEGIN/COMMIT
        around it; a single statement is atomic); inside a caller's transaction block it is part of
        that. Its rows (``one``: at most the first)."""
        try:
            with self._lock:
                conn = self._db()
                self.round_trips += 1
                cur = conn.execute(sql, args)
                if cur.description is None:
                    return []
                row = cur.fetchone() if one else None
                return ([] if row is None else [row]) if one else cur.fetchall()
        except psycopg.Error as exc:
            raise StoreError(f"registry database: {_one_line(exc)[:120]}") from None

    def _read(self, sql: str, args: tuple[object, ...]) -> tuple[Any, ...] | None:
        """``_rows`` for one row (or None)."""
        rows = self._rows(sql, args, one=True)
        return rows[0] if rows else None

    def prefetch(self, datagrams: list[bytes]) -> None:
        """Look up, in one query, the clients that the batch's long-term signalling datagrams
        (Registration Requests) name as sender: the core's ``get_client`` for them then needs no
        round trip of its own. Only clients the core would look up anyway (a long-term datagram's
        sender), read at the batch's start; the batch's own replay floors still apply (``_seqs``)."""
        ids = {d[4:12] for d in datagrams
               if len(d) >= SIGNAL_HEADER_SIZE and d[1] != MessageType.DATA and d[2] & SignalFlags.LONG_TERM}
        self._ahead.clear()
        if not ids:
            return
        try:
            with self._lock:
                conn = self._db()
                self.round_trips += 1
                rows = conn.execute(f"SELECT {_COLS} FROM clients WHERE client_id = ANY(%s)", (list(ids),)).fetchall()
        except (psycopg.Error, StoreError):
            return  # the core's own look-ups report the failure
        self._ahead = dict.fromkeys(ids)
        for row in rows:
            self._ahead[bytes(row[0])] = row

    def end_batch(self) -> set[bytes]:
        self._ahead.clear()
        return super().end_batch()

    def _all(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with self._tx() as cur:
            cur.execute(sql, args)
            return cur.fetchall()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def checkpoint(self) -> tuple[int, int]:
        """Nothing to copy (the server checkpoints itself); the DC daemon calls it for SQLite."""
        return 0, 0

    # -- group commit (SeqBatch) ----------------------------------------------------------------
    def _write_seqs(self, rows: list[tuple[int, bytes]]) -> set[bytes]:
        """A batch's replay floors in one statement: in autocommit a single UPDATE is its own
        transaction (all rows or none), one round trip with no BEGIN/COMMIT around it. A row is
        written only where the stored floor is still below the batch's sequence number (row locks
        serialise two replicas' updates of one client: of a registration accepted at both, only the
        first commit wins); the clients whose row was not written are returned (their registrations
        are undone: the floor was read before another replica's commit, or the client was removed)."""
        # In client-ID order: the plan (a nested loop over the list) then locks the rows in that order
        # at every replica, so two replicas' batches do not deadlock (a deadlock would fail one batch
        # with STORAGE_ERROR, which its nodes retry).
        rows = sorted(rows, key=lambda r: r[1])
        # (Arrays cost the replica about 60 µs more CPU per statement than one packed bytea unpacked
        # by the server, measured; but the server then spends more, and its CPU is what replicas on
        # several machines share: docs/operations.md, "DC replicas on PostgreSQL".)
        won = self._rows("UPDATE clients AS c SET last_seq = v.seq, holder = %s "
                         "FROM unnest(%s::bigint[], %s::bytea[]) AS v(seq, cid) "
                         "WHERE c.client_id = v.cid AND c.last_seq < v.seq RETURNING c.client_id",
                         (self.holder, [seq for seq, _ in rows], [cid for _, cid in rows]))
        if len(won) == len(rows):
            return set()
        return {cid for _, cid in rows} - {bytes(r[0]) for r in won}

    def _write_seq(self, client_id: bytes, seq: int) -> None:
        with self._tx() as cur:
            cur.execute("UPDATE clients SET last_seq = %s, holder = %s WHERE client_id = %s AND last_seq < %s",
                        (seq, self.holder, client_id, seq))
            if cur.rowcount != 1:
                raise StoreError("sequence number not above the stored floor (replayed at another replica?)")

    # -- Store protocol --------------------------------------------------------------------------
    def _record(self, row: tuple[Any, ...] | None) -> ClientRecord | None:
        if row is None:
            return None
        cid = bytes(row[0])
        rec = ClientRecord(cid, row[1], _ROLES[row[2]], bytes(row[3]), row[4], row[5], self._seqs.get(cid, row[6]))
        for key in (("id", cid), ("name", rec.name), ("vip", rec.vip4), ("vip", rec.vip6)):
            if key[1] is not None:
                self._cache[key] = rec
                self._cache.move_to_end(key)
        while len(self._cache) > RECORD_CACHE:
            self._cache.popitem(last=False)
        return rec

    def _lookup(self, key: tuple[str, object], sql: str, args: tuple[object, ...]) -> ClientRecord | None:
        try:
            return self._record(self._read(f"SELECT {_COLS} FROM clients WHERE {sql}", args))
        except StoreError:
            cached = self._cache.get(key)
            if cached is None:
                raise
            return ClientRecord(cached.client_id, cached.name, cached.role, cached.psk, cached.vip4, cached.vip6,
                                self._seqs.get(cached.client_id, cached.last_seq))

    def get_client(self, client_id: bytes) -> ClientRecord | None:
        if client_id in self._ahead:
            return self._record(self._ahead[client_id])
        return self._lookup(("id", client_id), "client_id = %s", (client_id,))

    def not_clients(self, ids: list[bytes]) -> list[bytes]:
        """Those of ``ids`` that are no enrolled client's ID (one query; the DC's Path ID candidates)."""
        taken = {bytes(r[0]) for r in self._rows("SELECT client_id FROM clients WHERE client_id = ANY(%s)", (ids,))}
        return [i for i in ids if i not in taken]

    def client_by_name(self, name: str) -> ClientRecord | None:
        name = name.rstrip(".").lower()
        return self._lookup(("name", name), "name = %s", (name,))

    def client_by_vip(self, vip: str) -> ClientRecord | None:
        return self._lookup(("vip", vip), "vip4 = %s OR vip6 = %s", (vip, vip))

    def add_client(self, record: ClientRecord) -> None:
        with self._tx() as cur:
            cur.execute(f"INSERT INTO clients ({_COLS}) VALUES (%s,%s,%s,%s,%s,%s,%s)",
                        (record.client_id, record.name, int(record.role), record.psk, record.vip4, record.vip6,
                         record.last_seq))

    def holder_of(self, client_id: bytes) -> str | None:
        """The replica ("address:port") that accepted the client's last registration (None: none yet)."""
        row = self._one("SELECT holder FROM clients WHERE client_id = %s", (client_id,))
        return row[0] if row is not None else None

    def assign_vips(self, client_id: bytes, known: ClientRecord | None = None) -> tuple[str | None, str | None]:
        rec = known if known is not None and known.client_id == client_id else self.get_client(client_id)
        if rec is None:
            raise StoreError("unknown client")
        if (rec.vip4 is not None or not self.pools.vip4) and (rec.vip6 is not None or not self.pools.vip6):
            return rec.vip4, rec.vip6
        with self._tx() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s, 0)", (VIP_LOCK,))
            cur.execute("SELECT vip4, vip6 FROM clients WHERE client_id = %s", (client_id,))
            row = cur.fetchone()
            if row is None:
                raise StoreError("unknown client")
            vip4, vip6 = row[0], row[1]
            old = (vip4, vip6)
            if vip4 is None and self.pools.vip4:
                cur.execute("SELECT vip4 FROM clients WHERE vip4 IS NOT NULL")
                vip4 = VipPool.of(self.pools.vip4).first_free({r[0] for r in cur.fetchall()})
            if vip6 is None and self.pools.vip6:
                cur.execute("SELECT vip6 FROM clients WHERE vip6 IS NOT NULL")
                vip6 = VipPool.of(self.pools.vip6).first_free({r[0] for r in cur.fetchall()})
            if (vip4, vip6) != old:
                cur.execute("UPDATE clients SET vip4 = %s, vip6 = %s WHERE client_id = %s", (vip4, vip6, client_id))
        self._record((client_id, rec.name, int(rec.role), rec.psk, vip4, vip6, rec.last_seq))  # the cache
        return vip4, vip6

    def gn_vip(self, node_id: bytes, gn_addr: str) -> str:
        """The node's VIP for ``gn_addr``, made on first use. Optimistic, no transaction block:
        mappings are never changed or removed once made, so those this replica has read or made are
        remembered (``_gn``, at most GN_CACHE nodes) and answered with no round trip; a new one is
        first tried with one INSERT of the first VIP free among the node's mappings known here (ON
        CONFLICT DO NOTHING: the table's keys make (node, GN address) and (node, VIP) unique, so a
        mapping made meanwhile by another replica, or one not known here, makes it insert nothing).
        Then, and for a node not known here, the loop: read the node's mappings; if none is for
        ``gn_addr``, insert the first free VIP; a replica that lost a race (nothing inserted) reads
        again and gets the winner's mapping, or the next free VIP."""
        pool = VipPool.of(self.pools.gn_vip6 if ":" in gn_addr else self.pools.gn_vip4)
        known = self._gn.get(node_id)
        if known is not None:
            self._gn.move_to_end(node_id)
            vip = known.get(gn_addr)
            if vip is not None:
                return vip
            vip = pool.first_free(set(known.values()))
            if self._insert_gn(node_id, gn_addr, vip, known):
                return vip
        for _ in range(GN_VIP_ATTEMPTS):
            rows = self._rows("SELECT gn_addr, vip FROM gn_vips WHERE node_id = %s", (node_id,))
            known = self._remember_gn(node_id, {str(a): str(v) for a, v in rows})
            if gn_addr in known:
                return known[gn_addr]
            vip = pool.first_free(set(known.values()))
            if self._insert_gn(node_id, gn_addr, vip, known):
                return vip
        raise StoreError(f"no GN VIP for {gn_addr}: {GN_VIP_ATTEMPTS} races lost in a row")

    def _insert_gn(self, node_id: bytes, gn_addr: str, vip: str, known: dict[str, str]) -> bool:
        """Insert the mapping unless its node already has one for ``gn_addr`` or ``vip`` (then False)."""
        if self._read("INSERT INTO gn_vips (node_id, gn_addr, vip) VALUES (%s,%s,%s) ON CONFLICT DO NOTHING "
                      "RETURNING vip", (node_id, gn_addr, vip)) is None:
            return False
        known[gn_addr] = vip
        return True

    def _remember_gn(self, node_id: bytes, mappings: dict[str, str]) -> dict[str, str]:
        self._gn[node_id] = mappings
        self._gn.move_to_end(node_id)
        if len(self._gn) > GN_CACHE:
            self._gn.popitem(last=False)
        return mappings

    # -- extras ----------------------------------------------------------------------------------
    def add_join(self, record: JoinRecord) -> None:
        with self._tx() as cur:
            cur.execute("INSERT INTO joins (token_id, secret, name, expires) VALUES (%s,%s,%s,%s)",
                        (record.token_id, record.secret, record.name, record.expires))

    def get_join(self, token_id: bytes) -> JoinRecord | None:
        row = self._one("SELECT token_id, secret, name, expires, used_by, answer FROM joins WHERE token_id = %s",
                        (token_id,))
        if row is None:
            return None
        return JoinRecord(bytes(row[0]), bytes(row[1]), row[2], row[3], None if row[4] is None else bytes(row[4]),
                          None if row[5] is None else bytes(row[5]))

    def redeem_join(self, token_id: bytes, used_by: bytes, client: ClientRecord,
                    answer_for: Callable[[ClientRecord], bytes]) -> bytes:
        with self._tx() as cur:
            cur.execute("SELECT used_by FROM joins WHERE token_id = %s FOR UPDATE", (token_id,))
            row = cur.fetchone()
            if row is None or row[0] is not None:
                raise StoreError("join token already used")
            self.add_client(client)
            client.vip4, client.vip6 = self.assign_vips(client.client_id)
            answer = answer_for(client)
            cur.execute("UPDATE joins SET used_by = %s, answer = %s WHERE token_id = %s AND used_by IS NULL",
                        (used_by, answer, token_id))
            if cur.rowcount != 1:
                raise StoreError("join token already used")
        return answer

    def count(self) -> int:
        row = self._one("SELECT COUNT(*) FROM clients", ())
        return int(row[0]) if row else 0

    def clients(self) -> list[ClientRecord]:
        rows = self._all(f"SELECT {_COLS} FROM clients ORDER BY name")
        return [r for row in rows if (r := self._record(row)) is not None]

    def setting(self, key: str, make: bytes | None = None) -> bytes | None:
        with self._tx() as cur:
            if make is not None:
                cur.execute("INSERT INTO settings (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
                            (key, make))
            cur.execute("SELECT value FROM settings WHERE key = %s", (key,))
            row = cur.fetchone()
        return None if row is None else bytes(row[0])

    def identity(self) -> tuple[bytes, bytes]:
        """The domain's DC ID and static key, shared by every replica (the first one creates them)."""
        dc_id = self.setting("dc_id", os.urandom(8))
        secret = self.setting("dc_key", os.urandom(32))
        assert dc_id is not None and secret is not None
        return dc_id, secret

    # -- path records (core.registry.PathStore): one statement, one round trip each --------------
    def save_path(self, row: PathRow, owner: str) -> None:
        """Upsert: another path's row under the same ID (its key differs) is never touched; an
        instance the writer does not know (NULL) keeps the stored one; ``owner``'s lease ends."""
        self._rows(
            f"INSERT INTO paths ({_PATH_COLS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,1) "
            "ON CONFLICT (path_id) DO UPDATE SET end_a = EXCLUDED.end_a, end_b = EXCLUDED.end_b, "
            "role_a = EXCLUDED.role_a, inst_a = COALESCE(EXCLUDED.inst_a, paths.inst_a), "
            "inst_b = COALESCE(EXCLUDED.inst_b, paths.inst_b), mode = EXCLUDED.mode, rs = EXCLUDED.rs, "
            "relay_ours = EXCLUDED.relay_ours, directed_us = EXCLUDED.directed_us, "
            "version = paths.version + 1, updated = now(), "
            "lease_until = CASE WHEN paths.lease_owner = %s THEN NULL ELSE paths.lease_until END, "
            "lease_owner = CASE WHEN paths.lease_owner = %s THEN NULL ELSE paths.lease_owner END "
            "WHERE paths.path_key = EXCLUDED.path_key",
            (row.path_id, row.end_a, row.end_b, row.role_a, row.inst_a, row.inst_b, row.mode, row.rs, row.path_key,
             row.relay_ours, row.directed_us, owner, owner))

    def load_path(self, path_id: bytes) -> PathRow | None:
        row = self._read(f"SELECT {_PATH_COLS} FROM paths WHERE path_id = %s", (path_id,))
        return None if row is None else _path_row(row)

    def claim_path(self, path_id: bytes, owner: str, lease: float) -> tuple[bool, PathRow | None]:
        """One statement: the UPDATE takes the lease if it is free, expired or ``owner``'s own (a
        replica restarted under the same name: its flows died with it); of two replicas racing, the
        second UPDATE waits for the first's row lock and then re-checks the lease (READ COMMITTED),
        so exactly one wins. Otherwise the row as it is (False), or nothing (no such path)."""
        rows = self._rows(
            f"WITH c AS (UPDATE paths SET lease_owner = %s, lease_until = now() + make_interval(secs => %s), "
            "version = version + 1 WHERE path_id = %s AND (lease_owner IS NULL OR lease_owner = %s "
            f"OR lease_until < now()) RETURNING {_PATH_COLS}) "
            f"SELECT {_PATH_COLS}, TRUE FROM c UNION ALL "
            f"SELECT {_PATH_COLS}, FALSE FROM paths WHERE path_id = %s AND NOT EXISTS (SELECT 1 FROM c)",
            (owner, lease, path_id, owner, path_id))
        if not rows:
            return False, None
        return bool(rows[0][-1]), _path_row(rows[0])

    def unclaim_path(self, path_id: bytes, owner: str) -> None:
        self._rows("UPDATE paths SET lease_owner = NULL, lease_until = NULL WHERE path_id = %s AND lease_owner = %s",
                   (path_id, owner))

    def drop_path(self, path_id: bytes) -> None:
        self._rows("DELETE FROM paths WHERE path_id = %s", (path_id,))

    def paths_via(self, rs: str) -> list[PathRow]:
        return [_path_row(r) for r in self._rows(f"SELECT {_PATH_COLS} FROM paths WHERE rs = %s AND mode = %s",
                                                  (rs, int(PathMode.RS_S)))]

    def expire_paths(self, ttl: float) -> int:
        rows = self._rows("WITH d AS (DELETE FROM paths WHERE updated < now() - make_interval(secs => %s) "
                          "RETURNING 1) SELECT COUNT(*) FROM d", (ttl,))
        return int(rows[0][0]) if rows else 0

    # -- send counters ---------------------------------------------------------------------------
    def reserve_counters(self, name: str, block: int) -> tuple[int, int]:
        """Reserve ``block`` fresh counter values (lo, hi inclusive), above every block any replica
        ever got, committed before this returns."""
        start = max(time.time_ns() // 1000, 1)
        row = self._one("INSERT INTO counters (name, ceiling) VALUES (%s, %s) ON CONFLICT (name) DO UPDATE "
                        "SET ceiling = counters.ceiling + %s RETURNING ceiling",
                        (name, start + block - 1, block))
        assert row is not None
        hi = int(row[0])
        return hi - block + 1, hi

    def counter_floor(self, name: str = "dc", *, block: int = 1 << 20) -> DbCounterFloor:
        return DbCounterFloor(self, name, block)


class DbCounterFloor(CounterFloor):
    """A CounterFloor whose blocks come from the shared database (disjoint between replicas)."""

    __slots__ = ("_store", "_name")

    def __init__(self, store: PgStore, name: str, block: int) -> None:
        lo, hi = store.reserve_counters(name, block)
        super().__init__(lo, block=block)
        self.ceiling = hi
        self._store = store
        self._name = name

    def advance_past(self, floor: int) -> bool:
        """A fresh block is above every block any replica ever got, so above anything a client can have
        accepted from us or another replica: take one (once per call; a floor above it is bogus)."""
        if floor < self.next:
            return True
        try:
            lo, hi = self._store.reserve_counters(self._name, self.block)
        except Exception:  # the database is away: answer from the current block (the client retries)
            return False
        self.next, self.ceiling = lo, hi
        return floor < lo

    def take(self) -> int:
        if self.next > self.ceiling:
            try:
                lo, hi = self._store.reserve_counters(self._name, self.block)
            except Exception as exc:
                raise CodecError(f"cannot reserve send counters: {exc}") from exc
            self.next, self.ceiling = lo, hi
        n = self.next
        self.next = n + 1
        return n


class _Counted:
    """A cursor that counts the statements it sends (round trips)."""

    def __init__(self, cur: psycopg.Cursor[Any], store: PgStore) -> None:
        self._cur = cur
        self._store = store

    def execute(self, sql: str, args: tuple[object, ...] = ()) -> None:
        self._store.round_trips += 1
        self._cur.execute(sql, args)

    def executemany(self, sql: str, rows: list[tuple[object, ...]]) -> None:
        self._store.round_trips += 1
        self._cur.executemany(sql, rows)

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._cur.fetchone()

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._cur.fetchall()

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
