"""Clear errors (issue 8): a bad config gives one line naming the field; running without root, a
port in use or a missing system package gives one line that says what to do. Each case runs
`python -m ntmobile ...` as a subprocess and checks its exit code and its whole stderr."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

NOBODY = 65534
UNSHARE = shutil.which("unshare") or "unshare"


def ntm(*args: str, cwd: Path, as_nobody: bool = False, env: dict[str, str] | None = None,
        wrap: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "ntmobile", *args]
    if as_nobody and os.geteuid() == 0:
        cmd = [shutil.which("setpriv") or "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd]
    if wrap:
        cmd = [*wrap, *cmd]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def one_line(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 1, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("ntm: ")
    return lines[0]


def free_port() -> int:
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
            u.bind(("127.0.0.1", 0))
            port: int = u.getsockname()[1]
            try:
                t.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


@pytest.fixture
def cfgdir() -> Iterator[Path]:
    # Under /tmp directly (pytest's tmp_path sits in a root-only directory): the non-root runs
    # must read the files too (not write: credentials go only into directories nobody else can write).
    d = Path(tempfile.mkdtemp(prefix="ntm-clierr-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def dc_toml(d: Path, **over: object) -> Path:
    port, dns, probe = free_port(), free_port(), free_port()
    fields: dict[str, object] = {"domain": "a.example", "address": "127.0.0.1", "database": str(d / "dc.sqlite"),
                                 "listen4": "127.0.0.1", "port": port, "dns_port": dns, "probe_port": probe,
                                 "control": f"ntm-clierr-{os.getpid()}-{port}"}
    fields.update(over)
    body = "".join(f"{k} = {v!r}\n".replace("'", '"') if isinstance(v, str) else f"{k} = {v}\n"
                   for k, v in fields.items())
    p = d / "dc.toml"
    p.write_text(body)
    return p


def enrol(d: Path, cfg: Path, name: str, role: str = "node") -> Path:
    out = d / f"{name}.cred"
    r = ntm("dc", "enroll-rs" if role == "relay" else "enroll", name, "-c", str(cfg), "-o", str(out), cwd=d)
    assert r.returncode == 0, r.stderr
    out.chmod(0o644)
    return out


def test_bad_config_value_names_the_field(cfgdir: Path) -> None:
    (cfgdir / "dc.toml").write_text('domain = "a.example"\naddress = "127.0.0.1"\nport = "x"\n')
    line = one_line(ntm("dc", "run", "-c", "dc.toml", cwd=cfgdir))
    assert line.startswith("ntm: dc.toml: port: ") and "integer" in line


def test_unknown_or_missing_field_is_named(cfgdir: Path) -> None:
    (cfgdir / "dc.toml").write_text('domain = "a.example"\naddress = "127.0.0.1"\nbogus = 1\n')
    assert one_line(ntm("dc", "run", "-c", "dc.toml", cwd=cfgdir)).startswith("ntm: dc.toml: bogus: ")
    (cfgdir / "dc.toml").write_text('domain = "a.example"\n')
    assert one_line(ntm("dc", "run", "-c", "dc.toml", cwd=cfgdir)).startswith("ntm: dc.toml: address: ")
    (cfgdir / "dc.toml").write_text('domain = "a.example"\naddress = "not-an-ip"\n')
    assert one_line(ntm("dc", "run", "-c", "dc.toml", cwd=cfgdir)).startswith("ntm: dc.toml: address: ")


def test_missing_or_invalid_files_are_named(cfgdir: Path) -> None:
    assert one_line(ntm("dc", "run", "-c", "nope.toml", cwd=cfgdir)) == "ntm: nope.toml: no such file"
    (cfgdir / "dc.toml").write_text("domain = [\n")
    assert one_line(ntm("dc", "run", "-c", "dc.toml", cwd=cfgdir)).startswith("ntm: dc.toml: not valid TOML: ")
    (cfgdir / "node.toml").write_text('credentials = "mn.cred"\n')
    assert one_line(ntm("node", "run", "-c", "node.toml", cwd=cfgdir)) == f"ntm: {cfgdir / 'mn.cred'}: no such file"


def test_node_with_relay_credentials_is_told_which_to_use(cfgdir: Path) -> None:
    cfg = dc_toml(cfgdir)
    enrol(cfgdir, cfg, "rs1", role="relay")
    (cfgdir / "node.toml").write_text('credentials = "rs1.cred"\n')
    line = one_line(ntm("node", "run", "-c", "node.toml", cwd=cfgdir))
    assert "relay credentials" in line and "ntm dc enroll" in line


def test_port_in_use_says_which_and_what_to_do(cfgdir: Path) -> None:
    cfg = dc_toml(cfgdir)
    port = int(next(x.split("=")[1] for x in cfg.read_text().splitlines() if x.startswith("port ")))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))
        line = one_line(ntm("dc", "run", "-c", str(cfg), cwd=cfgdir))
    assert "already in use" in line and f"port {port}" in line and "stop the other service" in line


@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("setpriv") is None, reason="setpriv (util-linux) missing")
def test_without_root_each_daemon_says_to_use_root(cfgdir: Path) -> None:
    cfg = dc_toml(cfgdir, dns_port=53)
    line = one_line(ntm("dc", "run", "-c", str(cfg), cwd=cfgdir, as_nobody=True))
    assert line == "ntm: binding ports below 1024 needs root (network namespaces, TUN devices, nftables): " \
                   "run it with sudo or as root"
    cred = enrol(cfgdir, cfg, "mn")
    rs_cred = enrol(cfgdir, cfg, "rs1", role="relay")
    (cfgdir / "node.toml").write_text(f'credentials = "{cred}"\n')
    (cfgdir / "rs.toml").write_text(f'name = "rs1"\ncredentials = ["{rs_cred}"]\naddress = "127.0.0.1"\n')
    for kind in ("node", "rs"):
        line = one_line(ntm(kind, "run", "-c", f"{kind}.toml", cwd=cfgdir, as_nobody=True))
        assert line.startswith(f"ntm: ntm {kind} run needs root") and "run it with sudo or as root" in line


@pytest.mark.root
@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) missing")
def test_missing_system_package_says_what_to_install(cfgdir: Path) -> None:
    """The relay run in a throw-away network namespace (``unshare --net``) with a PATH that lacks
    `ip`, then one that has `ip` but no `nft`."""
    cfg = dc_toml(cfgdir)
    rs_cred = enrol(cfgdir, cfg, "rs1", role="relay")
    (cfgdir / "rs.toml").write_text(f'name = "rs1"\ncredentials = ["{rs_cred}"]\naddress = "127.0.0.1"\n'
                                    f'control = "ntm-clierr-rs-{os.getpid()}"\n')
    empty = cfgdir / "bin-empty"
    empty.mkdir()
    line = one_line(ntm("rs", "run", "-c", "rs.toml", cwd=cfgdir, env={"PATH": str(empty)},
                        wrap=[UNSHARE, "--net", "--"]))
    assert line == "ntm: `ip` not found: install iproute2 (apt-get install iproute2)"
    only_ip = cfgdir / "bin-ip"
    only_ip.mkdir()
    ip = shutil.which("ip")
    assert ip is not None
    (only_ip / "ip").symlink_to(ip)
    line = one_line(ntm("rs", "run", "-c", "rs.toml", cwd=cfgdir, env={"PATH": str(only_ip)},
                        wrap=[UNSHARE, "--net", "--"]))
    assert line == "ntm: cannot start the relay: nft: command not found: install nftables (apt-get install nftables)"
