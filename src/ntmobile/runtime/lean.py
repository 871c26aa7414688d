"""Keep a daemon's memory small: the relay never speaks TLS, so it does not load Python's `ssl`
module (OpenSSL's TLS library: about 6 MiB of resident memory). asyncio works without it.

Call ``without_tls()`` before asyncio is imported (the relay's CLI entry point and its memory bench do).
"""

from __future__ import annotations

import sys


def without_tls() -> bool:
    """Make ``import ssl`` fail in this process (asyncio then runs without TLS support).
    Returns False when ssl is already loaded (nothing saved)."""
    if "ssl" in sys.modules:
        return sys.modules["ssl"] is None
    sys.modules["ssl"] = None  # type: ignore[assignment]
    return True
