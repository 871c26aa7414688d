"""Cryptography: key derivation, sealed signalling channels, data capsules, replay windows.
See docs/security.md."""

from .channel import AuthError, CapsuleOpener, CapsuleSealer, Channel, ReplayWindow
from .keys import (
    Ephemeral,
    KeyPair,
    PathKeys,
    RandomBytes,
    hkdf,
    long_term_keys,
    path_keys,
    peer_dc_keys,
    relay_leg_keys,
    session_keys,
)

__all__ = [
    "AuthError", "CapsuleOpener", "CapsuleSealer", "Channel", "Ephemeral", "KeyPair", "PathKeys", "RandomBytes",
    "ReplayWindow", "hkdf", "long_term_keys", "path_keys", "peer_dc_keys", "relay_leg_keys", "session_keys",
]
