"""Key derivation. Every key is 32 bytes and used with AES-256-GCM in one direction only.

Labels (HKDF-SHA256 ``info``) are part of the protocol; docs/security.md lists them.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

RandomBytes = Callable[[int], bytes]

KEY_SIZE = 32


_ZERO_SALT = bytes(32)
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


# CPython's own SHA-256, not hashlib's: hashlib maps the system's libcrypto (about 4 MiB of resident
# memory) beside the OpenSSL that `cryptography` carries, and the relay keeps its memory small
# (docs/dataplane.md). It costs 0.7 µs more per registration (two key schedules, 9.5 against 8.8 µs).
def _pick_sha256() -> Callable[[bytes], Any]:
    for name in ("_sha256", "_sha2"):  # Python 3.11; later Pythons
        try:
            return importlib.import_module(name).sha256  # type: ignore[no-any-return]
        except (ImportError, AttributeError):
            pass
    import hashlib  # pragma: no cover

    return hashlib.sha256  # pragma: no cover


_sha256 = _pick_sha256()


def hmac_sha256(key: bytes, msg: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104) from two hash calls: the key schedule derives six keys per registration,
    and this is about 2.5 times cheaper than ``hmac.digest`` (which looks the digest up by name on
    every call). Same output (tested against ``hmac``)."""
    if len(key) > 64:
        key = _sha256(key).digest()
    k = key.ljust(64, b"\0")
    mac: bytes = _sha256(k.translate(_OPAD) + _sha256(k.translate(_IPAD) + msg).digest()).digest()
    return mac


def hkdf_extract(secret: bytes, salt: bytes) -> bytes:
    """HKDF-Extract with SHA-256 (RFC 5869 §2.2): the pseudorandom key of ``secret``."""
    return hmac_sha256(salt or _ZERO_SALT, secret)


def hkdf_expand(prk: bytes, info: bytes, length: int = KEY_SIZE) -> bytes:
    """HKDF-Expand with SHA-256 (RFC 5869 §2.3)."""
    if length <= KEY_SIZE:
        return hmac_sha256(prk, info + b"\x01")[:length]
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac_sha256(prk, block + info + bytes((i,)))
        out += block
        i += 1
    return out[:length]


def hkdf(secret: bytes, *, salt: bytes, info: bytes, length: int = KEY_SIZE) -> bytes:
    """HKDF-SHA256 (RFC 5869). Written on ``hmac_sha256``: the key schedule runs on every
    registration and path set-up, and this is several times cheaper than building an HKDF object per
    key. Keys derived from one secret share the extract step (``hkdf_extract``)."""
    if length > 255 * KEY_SIZE:
        raise ValueError("HKDF output too long")
    return hkdf_expand(hkdf_extract(secret, salt), info, length)


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A directional pair: ``send`` seals what we send, ``recv`` opens what we receive."""

    send: bytes
    recv: bytes

    def swapped(self) -> KeyPair:
        return KeyPair(self.recv, self.send)


def long_term_keys(psk: bytes, client_id: bytes) -> KeyPair:
    """Keys between an enrolled client (node or RS) and its DC, from the enrolment secret.

    Returned from the client's point of view (send = client→DC); the DC uses ``.swapped()``.
    """
    prk = hkdf_extract(psk, client_id)
    return KeyPair(hkdf_expand(prk, b"ntm1 long-term up"), hkdf_expand(prk, b"ntm1 long-term down"))


def peer_dc_keys(secret: bytes, my_dc_id: bytes, peer_dc_id: bytes) -> KeyPair:
    """Keys between two DCs that share a federation secret; each direction has its own label."""
    send = hkdf(secret, salt=b"", info=b"ntm1 dc-dc " + my_dc_id + peer_dc_id)
    recv = hkdf(secret, salt=b"", info=b"ntm1 dc-dc " + peer_dc_id + my_dc_id)
    return KeyPair(send, recv)


def dc_static_keys(my_secret: bytes, my_public: bytes, peer_public: bytes) -> KeyPair:
    """Keys between two DCs from their static X25519 keys (the marker TXT keys): DH(my secret, peer
    public) through HKDF, one label per direction that names both public keys (sender first).

    Raises ValueError on a malformed or low-order peer key (the DC counts and drops).
    """
    shared = X25519PrivateKey.from_private_bytes(my_secret).exchange(X25519PublicKey.from_public_bytes(peer_public))
    if shared == bytes(32):
        raise ValueError("degenerate X25519 shared secret")
    send = hkdf(shared, salt=b"ntm1 dc-dc static", info=b"ntm1 dc-dc " + my_public + peer_public)
    recv = hkdf(shared, salt=b"ntm1 dc-dc static", info=b"ntm1 dc-dc " + peer_public + my_public)
    return KeyPair(send, recv)


def replica_id(secret: bytes, endpoint: str) -> bytes:
    """The 8-byte sender ID of the DC replica at ``endpoint`` ("address:port") on the replica-to-replica
    channel (issue 17): derived from the domain's shared DC secret, so only a replica can know it."""
    return hkdf(secret, salt=b"ntm1 replica", info=b"ntm1 replica id " + endpoint.encode(), length=8)


def replica_keys(secret: bytes, my_id: bytes, peer_id: bytes) -> KeyPair:
    """Keys between two replicas of one DC (they share its static ``secret``): one per direction, each
    naming the sender's replica ID first, so a replica's datagram reflected back to it never opens."""
    if my_id == peer_id:
        raise ValueError("a replica has no channel to itself")
    send = hkdf(secret, salt=b"ntm1 replica", info=b"ntm1 replica-replica " + my_id + peer_id)
    recv = hkdf(secret, salt=b"ntm1 replica", info=b"ntm1 replica-replica " + peer_id + my_id)
    return KeyPair(send, recv)


def x25519_public(secret: bytes) -> bytes:
    """The X25519 public key of a 32-byte secret."""
    return X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes_raw()


class Ephemeral:
    """An X25519 ephemeral key for one registration handshake."""

    __slots__ = ("_private", "public")

    def __init__(self, random_bytes: RandomBytes = os.urandom) -> None:
        self._private = X25519PrivateKey.from_private_bytes(random_bytes(32))
        self.public = self._private.public_key().public_bytes_raw()

    def exchange(self, peer_public: bytes) -> bytes:
        shared = self._private.exchange(X25519PublicKey.from_public_bytes(peer_public))
        if shared == bytes(32):
            raise ValueError("degenerate X25519 shared secret")
        return shared


def session_keys(psk: bytes, shared: bytes, client_id: bytes, client_eph: bytes, server_eph: bytes) -> KeyPair:
    """Session keys after a registration handshake, from the client's point of view.

    Mixing the enrolment secret (salt) and the ephemeral DH output gives mutual authentication and
    forward secrecy: a later leak of the enrolment secret does not open recorded sessions.
    """
    transcript = client_id + client_eph + server_eph
    prk = hkdf_extract(shared, psk)
    return KeyPair(hkdf_expand(prk, b"ntm1 session up" + transcript),
                   hkdf_expand(prk, b"ntm1 session down" + transcript))


@dataclass(frozen=True, slots=True)
class PathKeys:
    """Keys of one path, derived from the path key the DC made.

    ``data_*`` seal data capsules, ``sig_*`` seal tunnel signalling (Tunnel Request/Response, path
    keepalives); ``i2r`` is initiator → responder (an RS-N is the responder of its paths).
    """

    data_i2r: bytes
    data_r2i: bytes
    sig_i2r: bytes
    sig_r2i: bytes

    def for_initiator(self) -> tuple[KeyPair, KeyPair]:
        """(signalling keys, data keys) as the initiator uses them."""
        return KeyPair(self.sig_i2r, self.sig_r2i), KeyPair(self.data_i2r, self.data_r2i)

    def for_responder(self) -> tuple[KeyPair, KeyPair]:
        return KeyPair(self.sig_r2i, self.sig_i2r), KeyPair(self.data_r2i, self.data_i2r)


def path_keys(path_key: bytes, path_id: bytes) -> PathKeys:
    prk = hkdf_extract(path_key, path_id)
    return PathKeys(
        data_i2r=hkdf_expand(prk, b"ntm1 data i2r"),
        data_r2i=hkdf_expand(prk, b"ntm1 data r2i"),
        sig_i2r=hkdf_expand(prk, b"ntm1 tsig i2r"),
        sig_r2i=hkdf_expand(prk, b"ntm1 tsig r2i"),
    )


def relay_leg_keys(relay_key: bytes, path_id: bytes, *, responder_leg: bool) -> KeyPair:
    """Keys between one node and an RS-S for one leg of a path, from the node's point of view.

    The RS-S holds the relay key, never the path key, so it authenticates each leg's signalling
    (and learns each leg's address from it) but cannot read or forge the end-to-end data.
    """
    leg = b"r" if responder_leg else b"i"
    prk = hkdf_extract(relay_key, path_id)
    return KeyPair(hkdf_expand(prk, b"ntm1 relay up " + leg), hkdf_expand(prk, b"ntm1 relay down " + leg))


class UsedKeys:
    """The keys one process has made sealers under (the newest ``size``), so it never makes a second
    sealer, whose counter would start again, under any of them: whatever a DC sends, a (key, nonce)
    pair is sealed once per process. Across processes the DC's key rule holds (docs/security.md §3)."""

    __slots__ = ("size", "_keys")

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._keys: dict[bytes, None] = {}

    def claim(self, key: bytes) -> bool:
        """Take ``key`` for a new sealer; False if it was taken before."""
        keys = self._keys
        if key in keys:
            return False
        keys[key] = None
        if len(keys) > self.size:
            del keys[next(iter(keys))]
        return True

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)
