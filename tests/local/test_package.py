"""The package as a user installs it: `python -m build` makes a wheel with the lab topologies and
the `ntm` command inside; installed from that wheel alone, `ntm` runs and finds its topologies."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    wheels = list(out.glob("ntmobile-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def test_the_wheel_holds_the_topologies_and_the_command(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    topologies = sorted(n for n in names if n.startswith("ntmobile/lab/topologies/") and n.endswith(".toml"))
    shipped = sorted(p.name for p in (ROOT / "src/ntmobile/lab/topologies").glob("*.toml"))
    assert [Path(n).name for n in topologies] == shipped and shipped
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "ntm = ntmobile.cli.main:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_ntm_from_the_installed_wheel_runs(wheel: Path, tmp_path: Path) -> None:
    # Installed alone (--no-deps) into a target directory; its dependencies come from this environment.
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check",
                          "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    env = {"PYTHONPATH": f"{target}:{sysconfig.get_paths()['purelib']}", "PATH": "/usr/bin:/bin"}
    code = ("import ntmobile; from ntmobile.lab.topology import BUILTIN_TOPOLOGIES, load_topology; "
            "print(ntmobile.__file__); print(','.join(n for n in BUILTIN_TOPOLOGIES if load_topology(n)))")
    # -S: no site directories, so this environment's editable install of the source tree is not seen.
    out = subprocess.run([sys.executable, "-S", "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith(str(target))
    assert "nat" in out.stdout.splitlines()[1].split(",")
    cli = subprocess.run([sys.executable, "-S", str(target / "bin" / "ntm"), "--help"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0 and "lab" in cli.stdout, cli.stderr
