"""The DC's registry: enrolled clients (nodes and relay servers), VIP pools, GN VIP mappings.

The DC core talks to a ``Store`` (a repository interface). ``MemoryStore`` keeps everything in
memory (tests, the in-memory harness); the runtime's SQLite store persists the same records.
Allocation rules live here, so both stores hand out VIPs identically.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ntmobile.wire import Role


class StoreError(Exception):
    """The store cannot be read or written (e.g. the database is read-only or full)."""


@dataclass(slots=True)
class ClientRecord:
    client_id: bytes
    name: str
    role: Role
    psk: bytes
    vip4: str | None = None
    vip6: str | None = None
    last_seq: int = 0


@dataclass(slots=True)
class JoinRecord:
    """A join token the DC issued (wire/join.py): who may join with it, until when, and how it was used."""

    token_id: bytes
    secret: bytes
    name: str
    expires: int
    #: The node ephemeral of the join that used it (None: unused), and the answer sent to that join.
    used_by: bytes | None = None
    answer: bytes | None = None


@dataclass(slots=True)
class PathRow:
    """A path record as the shared registry of DC replicas stores it (docs/architecture.md, "DC
    replicas"): what any replica needs to re-direct an NTM-peer path it did not direct. The two ends
    in name order (``end_a`` < ``end_b``), so that the replica of each end writes its own node's
    process instance into the same row; ``role_a``: the PathRole of ``end_a``. No relay key: every
    re-direction through a relay makes a fresh one (docs/security.md §3)."""

    path_id: bytes
    end_a: str
    end_b: str
    role_a: int
    #: The process instance of each end that got the path key (None: not known here, e.g. a node of
    #: another DC, or the row of the replica that holds only the other end so far).
    inst_a: bytes | None
    inst_b: bytes | None
    mode: int
    rs: str | None
    path_key: bytes
    #: A relay of this domain (some replica) sent the relay its Relay Direction.
    relay_ours: bool
    #: Wall clock (µs) of the path's last (re-)direction.
    directed_us: int
    #: Bumped by every write and every claim (a re-direction's lease).
    version: int = 0


class PathStore(Protocol):
    """What a registry shared by DC replicas offers for path records (runtime/pgstore.py). A store
    has it when its ``shares_paths`` is True; the DC core then keeps its NTM-peer path records there
    too (core/dc/paths.py)."""

    shares_paths: bool

    def save_path(self, row: PathRow, owner: str) -> None:
        """Insert or update ``row`` (never a row of another path under the same ID: its key differs);
        the instances it does not know are kept; a re-direction lease ``owner`` holds is released."""
        ...

    def load_path(self, path_id: bytes) -> PathRow | None: ...

    def claim_path(self, path_id: bytes, owner: str, lease: float) -> tuple[bool, PathRow | None]:
        """Take the path's re-direction lease for ``lease`` seconds (the database's clock), if nobody
        else holds one that is still running: (won, the row as claimed or as it is); (False, None):
        no such path."""
        ...

    def unclaim_path(self, path_id: bytes, owner: str) -> None: ...
    def drop_path(self, path_id: bytes) -> None: ...
    def paths_via(self, rs: str) -> list[PathRow]:
        """The relayed (RS-S) paths through relay ``rs``."""
        ...

    def expire_paths(self, ttl: float) -> int:
        """Delete the rows not written for ``ttl`` seconds; how many."""
        ...


class Store(Protocol):
    def get_client(self, client_id: bytes) -> ClientRecord | None: ...
    def client_by_name(self, name: str) -> ClientRecord | None: ...
    def client_by_vip(self, vip: str) -> ClientRecord | None: ...
    def add_client(self, record: ClientRecord) -> None: ...
    def set_last_seq(self, client_id: bytes, seq: int) -> None: ...
    def assign_vips(self, client_id: bytes, known: ClientRecord | None = None) -> tuple[str | None, str | None]:
        """The client's VIPs, assigning missing ones from the pools. ``known``: the client's record as
        just read from this store (saves a read when it already has its VIPs)."""
        ...
    def gn_vip(self, node_id: bytes, gn_addr: str) -> str: ...
    def add_join(self, record: JoinRecord) -> None: ...
    def get_join(self, token_id: bytes) -> JoinRecord | None: ...
    def redeem_join(self, token_id: bytes, used_by: bytes, client: ClientRecord,
                    answer_for: Callable[[ClientRecord], bytes]) -> bytes:
        """In one transaction: enrol ``client``, give it its VIPs, mark the token used by ``used_by`` with
        the answer ``answer_for(client)`` returns (stored for retransmissions), and return that answer.
        StoreError (and nothing written) if any step fails."""
        ...


class VipPool:
    """Hands out host addresses of a prefix in order, skipping those in use."""

    def __init__(self, cidr: str | None) -> None:
        self.net = ipaddress.ip_network(cidr) if cidr else None

    @staticmethod
    @functools.cache
    def of(cidr: str | None) -> VipPool:
        """The pool of ``cidr``, parsed once (pools are few and fixed by the configuration)."""
        return VipPool(cidr)

    def first_free(self, used: set[str]) -> str:
        if self.net is None:
            raise StoreError("no pool configured for this address family")
        for host in self.net.hosts():
            s = str(host)
            if s not in used:
                return s
        raise StoreError(f"VIP pool {self.net} is exhausted")


@dataclass(frozen=True, slots=True)
class Pools:
    vip4: str | None
    vip6: str | None
    gn_vip4: str | None
    gn_vip6: str | None


class MemoryStore:
    """Store in memory; same allocation rules as the SQLite store."""

    def __init__(self, pools: Pools) -> None:
        self.pools = pools
        self._clients: dict[bytes, ClientRecord] = {}
        self._gn: dict[tuple[bytes, str], str] = {}
        self._joins: dict[bytes, JoinRecord] = {}
        self.fail_writes = False

    def _check_write(self) -> None:
        if self.fail_writes:
            raise StoreError("store is read-only")

    def get_client(self, client_id: bytes) -> ClientRecord | None:
        return self._clients.get(client_id)

    def client_by_name(self, name: str) -> ClientRecord | None:
        name = name.rstrip(".").lower()
        return next((c for c in self._clients.values() if c.name == name), None)

    def client_by_vip(self, vip: str) -> ClientRecord | None:
        return next((c for c in self._clients.values() if vip in (c.vip4, c.vip6)), None)

    def add_client(self, record: ClientRecord) -> None:
        self._check_write()
        if record.client_id in self._clients or self.client_by_name(record.name) is not None:
            raise StoreError(f"{record.name} is already enrolled")
        self._clients[record.client_id] = record

    def set_last_seq(self, client_id: bytes, seq: int) -> None:
        self._check_write()
        self._clients[client_id].last_seq = seq

    def assign_vips(self, client_id: bytes, known: ClientRecord | None = None) -> tuple[str | None, str | None]:
        rec = self._clients[client_id]
        if (rec.vip4 is None and self.pools.vip4) or (rec.vip6 is None and self.pools.vip6):
            self._check_write()
            if rec.vip4 is None and self.pools.vip4:
                rec.vip4 = VipPool.of(self.pools.vip4).first_free({c.vip4 for c in self._clients.values() if c.vip4})
            if rec.vip6 is None and self.pools.vip6:
                rec.vip6 = VipPool.of(self.pools.vip6).first_free({c.vip6 for c in self._clients.values() if c.vip6})
        return rec.vip4, rec.vip6

    def gn_vip(self, node_id: bytes, gn_addr: str) -> str:
        key = (node_id, gn_addr)
        if key not in self._gn:
            self._check_write()
            v6 = ipaddress.ip_address(gn_addr).version == 6
            pool = VipPool.of(self.pools.gn_vip6 if v6 else self.pools.gn_vip4)
            used = {v for (n, _), v in self._gn.items() if n == node_id}
            self._gn[key] = pool.first_free(used)
        return self._gn[key]

    def add_join(self, record: JoinRecord) -> None:
        self._check_write()
        if record.token_id in self._joins:
            raise StoreError("join token id in use")
        self._joins[record.token_id] = record

    def get_join(self, token_id: bytes) -> JoinRecord | None:
        return self._joins.get(token_id)

    def redeem_join(self, token_id: bytes, used_by: bytes, client: ClientRecord,
                    answer_for: Callable[[ClientRecord], bytes]) -> bytes:
        self._check_write()
        rec = self._joins[token_id]
        if rec.used_by is not None:
            raise StoreError("join token already used")
        self.add_client(client)
        try:
            self.assign_vips(client.client_id)
            answer = answer_for(client)
        except BaseException:
            del self._clients[client.client_id]
            raise
        rec.used_by, rec.answer = used_by, answer
        return answer

