"""The keys of a join (wire/join.py): the Join Request's MAC under the token's secret, and the one-time key
that seals the DC's answer.

The answer key comes from an X25519 exchange between the node's ephemeral (in the request) and a fresh
ephemeral of the DC's for every answer it seals, salted with the join secret; it seals exactly one
message, so its nonce can be the constant 0 without any (key, nonce) ever repeating (security.md §3.1).
A retransmitted request gets the stored bytes of the first answer, never a second seal.
"""

from __future__ import annotations

import hmac

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ntmobile.wire.join import MAC_SIZE

from .channel import AuthError
from .keys import hkdf, hmac_sha256

_NONCE = bytes(12)


def join_mac(secret: bytes, token_id: bytes, signed: bytes) -> bytes:
    key = hkdf(secret, salt=token_id, info=b"ntm1 join mac")
    return hmac_sha256(key, signed)[:MAC_SIZE]


def join_mac_ok(secret: bytes, token_id: bytes, signed: bytes, mac: bytes) -> bool:
    return hmac.compare_digest(join_mac(secret, token_id, signed), mac)


def join_answer_key(secret: bytes, shared: bytes, token_id: bytes, node_eph: bytes, dc_eph: bytes) -> bytes:
    return hkdf(shared, salt=secret, info=b"ntm1 join answer" + token_id + node_eph + dc_eph)


def seal_answer(key: bytes, aad: bytes, plaintext: bytes) -> bytes:
    return AESGCM(key).encrypt(_NONCE, plaintext, aad)


def open_answer(key: bytes, aad: bytes, sealed: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(_NONCE, sealed, aad)
    except InvalidTag:
        raise AuthError("join answer: authentication failed") from None
