"""The base install pins only what the code imports; matplotlib (the throughput chart) is the
optional extra ``bench``, imported lazily, with one line saying how to get it."""

from __future__ import annotations

import ast
import pathlib
import re
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "ntmobile"
#: Distribution name -> the module it is imported as.
IMPORT_NAME = {"dnspython": "dns", "tomli-w": "tomli_w"}


def project() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]  # type: ignore[no-any-return]


def imports(path: pathlib.Path) -> list[tuple[str, bool]]:
    """Top-level module names a file imports, each with whether the import is inside a function."""
    tree = ast.parse(path.read_text())
    lazy = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
            for n in ast.walk(f)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name.split(".")[0], id(node) in lazy) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module.split(".")[0], id(node) in lazy))
    return out


def dist(requirement: str) -> str:
    return re.split(r"[=<>!~\[ ;]", requirement, maxsplit=1)[0].lower()


def test_every_base_dependency_is_imported_by_the_code() -> None:
    used = {name for p in SRC.rglob("*.py") for name, _ in imports(p)}
    base = [dist(r) for r in project()["dependencies"]]  # type: ignore[attr-defined]
    unused = [d for d in base if IMPORT_NAME.get(d, d.replace("-", "_")) not in used]
    assert unused == []
    assert "matplotlib" not in base and "prometheus-client" not in base


def test_prometheus_client_is_the_tests_parser_and_no_daemon_imports_it() -> None:
    """The daemons render /metrics themselves (runtime/metrics.py): prometheus-client's package loads
    ssl and hashlib, which the relay keeps out of its memory. The tests parse with it (extra dev)."""
    assert "prometheus-client" in [dist(r) for r in project()["optional-dependencies"]["dev"]]  # type: ignore[index]
    assert not [p for p in SRC.rglob("*.py") for name, _ in imports(p) if name == "prometheus_client"]
    tests = ROOT / "tests"
    assert [p for p in tests.rglob("*.py") for name, _ in imports(p) if name == "prometheus_client"]


def test_matplotlib_is_the_bench_extra_imported_lazily_by_the_bench_only() -> None:
    extras = project()["optional-dependencies"]
    assert [dist(r) for r in extras["bench"]] == ["matplotlib"]  # type: ignore[index]
    users = [(p.relative_to(SRC), lazy) for p in SRC.rglob("*.py") for name, lazy in imports(p)
             if name == "matplotlib"]
    assert users and all(p.parts[0] == "bench" and lazy for p, lazy in users)
    assert "-e '.[dev,bench]'" in (ROOT / "scripts" / "setup.sh").read_text()


def test_the_chart_without_matplotlib_says_in_one_line_how_to_get_it(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: pathlib.Path) -> None:
    from ntmobile.bench import throughput

    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(ImportError) as info:
        throughput.plot({"conditions": {}}, tmp_path / "chart.png")
    assert str(info.value) == "matplotlib is not installed: pip install 'ntmobile[bench]'"
    assert not (tmp_path / "chart.png").exists()
