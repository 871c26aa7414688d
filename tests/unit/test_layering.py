"""The import rules of docs/architecture.md ("Import rules"), every one of them, over absolute and
relative imports (``from .x import y`` counts as ``ntmobile.<package>.x``), top-level or not:

- ``wire`` imports only the standard library;
- ``crypto`` imports ``wire``, ``cryptography`` and the standard library;
- ``core`` imports ``wire``, ``crypto``, the standard library and dnspython's pure message classes;
  never ``asyncio``, ``socket``, ``time`` (nor threads, selectors, subprocesses), ``runtime``,
  ``dataplane``, ``osops``, ``lab``;
- ``dataplane`` runs no commands and does no netlink (``subprocess``, ``pyroute2``: that is ``osops``),
  and imports none of ``runtime``, ``osops``, ``lab``;
- ``runtime``, ``dataplane``, ``osops``, ``lab`` never import ``cli``.
"""

from __future__ import annotations

import ast
import sys
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
    # The hot path does no OS configuration (that is osops) and no control logic (that is core / runtime).
    "dataplane": {"subprocess", "pyroute2", "ntmobile.runtime", "ntmobile.osops", "ntmobile.lab",
                  "ntmobile.cli"},
}


def _imports(path: Path, source: str | None = None) -> set[str]:
    """Absolute names of every module ``path`` (or ``source``, as if it were there) imports,
    relative imports resolved."""
    tree = ast.parse(path.read_text() if source is None else source)
    rel = path.relative_to(SRC.parent).with_suffix("")
    package = list(rel.parts[:-1])  # the package the module is in (an __init__ is its package)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                assert node.module is not None
                names.add(node.module)
                continue
            base = package[:len(package) - (node.level - 1)]
            if node.module:
                names.add(".".join([*base, node.module]))
            else:  # from . import x, y: each is a module or a name of the package
                names.update(".".join([*base, a.name]) for a in node.names)
    return names


def _layer_files(layer: str) -> list[Path]:
    files = sorted((SRC / layer).rglob("*.py"))
    assert files, f"layer {layer} has no modules"
    return files


def _top(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_nothing_from_io_layers(layer: str) -> None:
    files = _layer_files(layer)
    bad = []
    for f in files:
        for name in _imports(f):
            for forbidden in FORBIDDEN[layer]:
                if name == forbidden or name.startswith(forbidden + "."):
                    bad.append(f"{f.relative_to(SRC)} imports {name}")
    assert not bad, "\n".join(bad)


#: What each sans-IO layer may import besides the standard library (prefixes of module names).
ALLOWED = {
    "wire": ("ntmobile.wire",),
    "crypto": ("ntmobile.wire", "ntmobile.crypto", "cryptography"),
    "core": ("ntmobile.wire", "ntmobile.crypto", "ntmobile.core", "dns"),
}
#: dnspython modules that do I/O (sockets, threads, asyncio): not for core, which may use its message classes.
DNS_IO = ("dns.query", "dns.asyncquery", "dns.resolver", "dns.asyncresolver", "dns.asyncbackend",
          "dns._asyncio_backend", "dns._trio_backend", "dns.quic", "dns.nameserver", "dns.xfr")


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_sans_io_layer_imports_only_what_the_architecture_allows(layer: str) -> None:
    bad = []
    for f in _layer_files(layer):
        for name in _imports(f):
            stdlib = _top(name) in sys.stdlib_module_names
            if not stdlib and not any(_under(name, p) for p in ALLOWED[layer]):
                bad.append(f"{f.relative_to(SRC)} imports {name}")
            if layer == "core" and any(_under(name, p) for p in DNS_IO):
                bad.append(f"{f.relative_to(SRC)} imports {name} (dnspython I/O)")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("layer", ["runtime", "dataplane", "osops", "lab"])
def test_io_layers_never_import_the_cli(layer: str) -> None:
    bad = [f"{f.relative_to(SRC)} imports {name}" for f in _layer_files(layer) for name in _imports(f)
           if _under(name, "ntmobile.cli")]
    assert not bad, "\n".join(bad)


def test_relative_imports_are_checked_like_absolute_ones() -> None:
    """The rules see through ``from .x import``, ``from .. import`` and ``from . import`` alike."""
    source = ("from ..runtime import driver\nfrom . import common\nfrom .dc import DcCore\n"
              "def f():\n    from ...elsewhere import x\n")
    names = _imports(SRC / "core" / "probe.py", source)
    assert names == {"ntmobile.runtime", "ntmobile.core.common", "ntmobile.core.dc", "elsewhere"}
    assert _imports(SRC / "runtime" / "dc.py") >= {"ntmobile.runtime.config", "ntmobile.runtime.dnsclasses"}
