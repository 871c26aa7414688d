"""Host calibration recorded beside every benchmark's figures: the same code has run 2x slower per
operation on another VM of the same kind, so a figure is only comparable across machines together
with what this host does with a fixed pure-Python loop and a fixed AES-GCM loop (µs each, medians)."""

from __future__ import annotations

import statistics
import time
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

#: The pure-Python loop: this many iterations of integer arithmetic and a dict update.
PY_ITERATIONS = 200_000
#: The AES-GCM loop: this many 1,400-byte seals (a capsule's size) with one key.
GCM_ITERATIONS = 5_000
REPEATS = 5


def _python_loop() -> float:
    t = time.perf_counter()
    acc, d = 0, {}
    for i in range(PY_ITERATIONS):
        acc = (acc * 31 + i) & 0xFFFFFFFF
        d[i & 255] = acc
    return (time.perf_counter() - t) * 1e6


def _gcm_loop() -> float:
    aead = AESGCM(bytes(range(32)))
    payload, aad = bytes(1400), bytes(16)
    t = time.perf_counter()
    for i in range(GCM_ITERATIONS):
        aead.encrypt(i.to_bytes(12, "big"), payload, aad)
    return (time.perf_counter() - t) * 1e6


def host_calibration() -> dict[str, Any]:
    """The two loops' medians over REPEATS runs: ``python_loop_us`` (the whole loop) and
    ``aesgcm_seal_us`` (one 1,400-byte seal)."""
    py = statistics.median(_python_loop() for _ in range(REPEATS))
    gcm = statistics.median(_gcm_loop() for _ in range(REPEATS)) / GCM_ITERATIONS
    return {"python_loop_us": round(py, 1), "python_loop_iterations": PY_ITERATIONS,
            "aesgcm_seal_us": round(gcm, 3), "aesgcm_payload_bytes": 1400}


def calibration_markdown(cal: dict[str, Any] | None) -> str:
    if not cal:
        return ""
    return (f"\nHost calibration: pure-Python loop ({cal['python_loop_iterations']:,} iterations) "
            f"{cal['python_loop_us']:,.0f} µs; AES-GCM seal of {cal['aesgcm_payload_bytes']} bytes "
            f"{cal['aesgcm_seal_us']} µs (medians of {REPEATS}).\n")
