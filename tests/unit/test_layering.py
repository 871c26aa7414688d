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
