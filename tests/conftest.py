"""Shared pytest configuration.

Root-only tests carry `@pytest.mark.root`. They are skipped when not running as root, except under
CI=true, where a missing privilege is a failure, never a silent skip.
"""

from __future__ import annotations

import os

import pytest


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") is None or os.geteuid() == 0:
        return
    if _in_ci():
        pytest.fail("this test needs root and CI=true is set: CI must run as root", pytrace=False)
    pytest.skip("needs root (run as root; CI does)")
