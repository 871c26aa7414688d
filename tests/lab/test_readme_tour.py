"""The README's five-minute tour, run as a stranger would: each line as typed, in a fresh shell whose
PATH is the system's (no virtualenv), after `scripts/setup.sh`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ntmobile.lab import teardown

from .conftest import new_prefix

pytestmark = [pytest.mark.root, pytest.mark.lab]

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def tour_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    start = text.index("A five-minute tour")
    block = re.search(r"```sh\n(.*?)```", text[start:], re.S)
    assert block is not None, "README.md: the tour's ```sh block is missing"
    return [ln for ln in block.group(1).splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_ntm_is_on_every_shells_path() -> None:
    found = shutil.which("ntm", path=SYSTEM_PATH)
    assert found is not None, "ntm is not on the system PATH: scripts/setup.sh links it into /usr/local/bin"
    here = Path(sys.executable).parent / "ntm"
    assert Path(found).resolve() == here.resolve(), (
        f"{found} is another checkout's ntm; run scripts/setup.sh in this one")
    out = subprocess.run(["bash", "-c", "ntm --help"], env={"PATH": SYSTEM_PATH, "HOME": "/root"},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "lab" in out.stdout


def test_the_readme_tour_works_as_typed() -> None:
    lines = tour_lines()
    assert lines[0].startswith("ntm lab up") and lines[-1].startswith("ntm lab down")
    name = new_prefix()
    env = {"PATH": SYSTEM_PATH, "HOME": "/root", "NTM_LAB": name, "TERM": "dumb"}
    outputs: list[str] = []
    try:
        for line in lines:
            out = subprocess.run(["bash", "-c", f"set -o pipefail; {line}"], env=env, capture_output=True,
                                 text=True, timeout=240)
            assert out.returncode == 0, (f"README tour line failed (rc {out.returncode}): {line}\n"
                                         f"{out.stdout}\n{out.stderr}")
            outputs.append(out.stdout)
    finally:
        teardown(name)
    by_line = dict(zip(lines, outputs, strict=True))
    curl = next(o for ln, o in by_line.items() if "curl" in ln)
    assert re.match(r"[0-9a-f]{64}\s", curl), curl
    status = next(o for ln, o in by_line.items() if ln.split("--", 1)[-1].strip().startswith("ntm status"))
    assert "RS_N" in status, status
    left = [ns for ns in os.listdir("/run/netns")] if os.path.isdir("/run/netns") else []
    assert not [ns for ns in left if ns.startswith(name)], "`ntm lab down` left namespaces behind"
