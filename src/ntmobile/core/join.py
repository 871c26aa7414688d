"""The DC's side of joining with a token (wire/join.py): a Join Request in, a Join Response (or nothing) out.

Nothing is allocated for a request before its MAC checks under the token's secret: a request for an
unknown token, or with a bad MAC, is counted and dropped without an answer (no oracle for token IDs).
A valid request for an unused token, before its expiry, enrols the node under the token's name with a
fresh client ID and secret, in one store transaction that also marks the token used; the answer seals
those credentials under a one-time key (crypto/join.py). The same request again (a retransmission:
same node ephemeral) gets the stored answer byte for byte; any other request for a used token gets
TOKEN_USED, for an expired one TOKEN_EXPIRED (11-byte answers, smaller than the request).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from ntmobile.crypto import Ephemeral
from ntmobile.crypto.join import join_answer_key, join_mac_ok, seal_answer
from ntmobile.wire import CodecError, Role, Status
from ntmobile.wire.join import (
    JoinCredentials,
    join_request_signed_part,
    join_response_head,
    pack_credentials,
    parse_join_request,
)

from .registry import ClientRecord, Store, StoreError


@dataclass(frozen=True, slots=True)
class JoinDeskConfig:
    dc_id: bytes
    dc_address: str
    dc_port: int
    domain: str
    #: The DC's other replicas ("address:port"), carried in the credentials (issue 17).
    replicas: tuple[str, ...] = ()


class JoinDesk:
    def __init__(self, config: JoinDeskConfig, store: Store, random_bytes: Callable[[int], bytes], *,
                 stats: Counter[str] | None = None) -> None:
        """``stats``: the counters to count in (the DC core's own, so they show in its status)."""
        self.config = config
        self.store = store
        self._rand = random_bytes
        self.stats: Counter[str] = stats if stats is not None else Counter()

    def receive(self, data: bytes, wall: int) -> bytes | None:
        """A Join Request; ``wall``: the wall clock in Unix seconds. Returns the answer to send, if any."""
        try:
            token_id, node_eph, mac = parse_join_request(data)
        except CodecError:
            self.stats["join_malformed"] += 1
            return None
        try:
            rec = self.store.get_join(token_id)
        except StoreError:
            self.stats["join_store_error"] += 1
            return None
        if rec is None or not join_mac_ok(rec.secret, token_id, join_request_signed_part(token_id, node_eph), mac):
            self.stats["join_refused_auth"] += 1
            return None
        if rec.used_by is not None:
            if rec.used_by == node_eph and rec.answer is not None:
                self.stats["join_answer_resent"] += 1
                return rec.answer
            self.stats["join_token_used"] += 1
            return join_response_head(token_id, Status.TOKEN_USED)
        if wall > rec.expires:
            self.stats["join_token_expired"] += 1
            return join_response_head(token_id, Status.TOKEN_EXPIRED)
        dc_eph = Ephemeral(self._rand)
        try:
            shared = dc_eph.exchange(node_eph)
        except ValueError:
            self.stats["join_refused_auth"] += 1
            return None
        c = self.config

        def answer_for(client: ClientRecord) -> bytes:
            head = join_response_head(token_id, Status.OK, dc_eph.public)
            creds = JoinCredentials(client.client_id, client.psk, c.dc_id, c.dc_address, c.dc_port, c.domain,
                                    client.name, c.replicas)
            key = join_answer_key(rec.secret, shared, token_id, node_eph, dc_eph.public)
            return head + seal_answer(key, head, pack_credentials(creds))

        client_id = self._client_id()
        try:
            answer = self.store.redeem_join(token_id, node_eph, ClientRecord(client_id, rec.name, Role.NODE,
                                                                             self._rand(32)), answer_for)
        except StoreError:
            self.stats["join_store_error"] += 1
            return join_response_head(token_id, Status.STORAGE_ERROR)
        self.stats["joins"] += 1
        return answer

    def _client_id(self) -> bytes:
        while True:
            candidate = self._rand(8)
            if candidate != self.config.dc_id and self.store.get_client(candidate) is None:
                return candidate
