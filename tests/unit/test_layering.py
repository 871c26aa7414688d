"""The sans-IO layers import nothing from the I/O layers (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "ntmobile"

FORBIDDEN = {
    "wire": {"asyncio", "socket", "time", "cryptography", "ntmobile.core", "ntmobile.crypto",
             "ntmobile.runtime", "ntmobile.dataplane", "ntmobile.osops", "ntmobile.lab", "ntmobile.cli"},
    "crypto": {"asyncio", "socket", "time", "ntmobile.core", "ntmobile.runtime", "ntmobile.dataplane",
               "ntmobile.osops", "ntmobile.lab", "ntmobile.cli"},
    "core": {"asyncio", "socket", "time", "threading", "selectors", "subprocess", "pyroute2",
             "ntmobile.runtime", "ntmobile.dataplane", "ntmobile.osops", "ntmobile.lab", "ntmobile.cli"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_nothing_from_io_layers(layer: str) -> None:
    files = sorted((SRC / layer).rglob("*.py"))
    assert files, f"layer {layer} has no modules"
    bad = []
    for f in files:
        for name in _imports(f):
            for forbidden in FORBIDDEN[layer]:
                if name == forbidden or name.startswith(forbidden + "."):
                    bad.append(f"{f.relative_to(SRC)} imports {name}")
    assert not bad, "\n".join(bad)


def test_the_relay_loads_neither_tls_nor_a_second_openssl() -> None:
    """`ntm rs run` keeps its resident memory small (docs/dataplane.md: <= 64 MiB with 10,000 paths):
    Python's ssl (TLS) and hashlib's libcrypto (beside the OpenSSL in `cryptography`) would each add
    about 4-6 MiB. This regressed once unnoticed (hashlib came in with a faster HMAC)."""
    import subprocess
    import sys

    code = ("from ntmobile.runtime.lean import without_tls; without_tls()\n"
            "import sys, ntmobile.cli.main, ntmobile.runtime.rs\n"
            "print(sorted(m for m in ('ssl', '_ssl', 'hashlib', '_hashlib') if sys.modules.get(m) is not None))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout
