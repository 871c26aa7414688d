"""tests/unit stays pure and fast: none of its modules opens a socket or runs a subprocess. Those
tests live in tests/local (loopback sockets and subprocesses, no root) or tests/lab (root, network
namespaces)."""

from __future__ import annotations

import ast
from pathlib import Path

UNIT = Path(__file__).resolve().parent
#: Calls that open sockets, start servers or run processes (by their last name).
IO_CALLS = {"socket", "socketpair", "create_connection", "open_connection", "start_server", "serve_dns",
            "serve_control", "StubServer", "create_datagram_endpoint", "run", "Popen", "check_output", "system"}
#: Modules whose calls of those names are I/O (``asyncio.run`` only drives coroutines: allowed).
IO_MODULES = {"socket", "subprocess", "os", "stub", "dns", "control"}


def _io_calls(path: Path) -> list[str]:
    bad = []
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module
                                                     else [])
            if "subprocess" in names:
                bad.append(f"{path.name}:{node.lineno} imports subprocess")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in IO_CALLS:
            owner = node.func.value
            if isinstance(owner, ast.Name) and owner.id in IO_MODULES:
                bad.append(f"{path.name}:{node.lineno} calls {owner.id}.{node.func.attr}")
    return bad


def test_no_unit_test_opens_sockets_or_runs_subprocesses() -> None:
    bad = [b for f in sorted(UNIT.glob("*.py")) for b in _io_calls(f)]
    assert not bad, "\n".join(bad)


def test_the_check_sees_what_it_forbids(tmp_path: Path) -> None:
    f = tmp_path / "x.py"
    f.write_text("import socket\nimport subprocess\ns = socket.socket()\nsubprocess.run(['true'])\n")
    assert len(_io_calls(f)) == 3
