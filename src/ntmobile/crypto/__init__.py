"""Cryptography: key derivation, sealed signalling channels, data capsules, replay windows.
See docs/security.md."""

from .channel import (
    PROCESS_POOL,
    AuthError,
    CapsuleOpener,
    CapsuleSealer,
    Channel,
    CounterFloor,
    ReassemblyPool,
    ReassemblyRefused,
    ReplayError,
    ReplayWindow,
)
from .keys import (
    Ephemeral,
    KeyPair,
    PathKeys,
    RandomBytes,
    UsedKeys,
    dc_static_keys,
    hkdf,
    long_term_keys,
    path_keys,
    peer_dc_keys,
    relay_leg_keys,
    replica_id,
    replica_keys,
    session_keys,
    x25519_public,
)

__all__ = [
    "PROCESS_POOL", "AuthError", "CapsuleOpener", "CapsuleSealer", "Channel", "CounterFloor", "Ephemeral", "KeyPair",
    "PathKeys", "RandomBytes", "ReassemblyPool", "ReassemblyRefused", "ReplayError", "ReplayWindow", "UsedKeys",
    "dc_static_keys", "hkdf", "long_term_keys", "path_keys", "peer_dc_keys", "relay_leg_keys", "replica_id",
    "replica_keys", "session_keys", "x25519_public",
]
