"""Relative paths in a configuration file are relative to that file's directory, never to the daemon's
working directory: a joined node's `credentials = "x.cred.toml"` (what `ntm node join` writes) keeps its
long-term counter beside the credentials wherever `ntm node run -c` is started from."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ntmobile.runtime.config import DcSettings, NodeSettings, RsSettings, load


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    old = os.getcwd()
    os.chdir(cwd)
    yield cwd
    os.chdir(old)


def test_relative_paths_are_anchored_at_the_config_file(tmp_path: Path, elsewhere: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "node.toml").write_text('credentials = "n.cred.toml"\nstate_dir = "state"\n')
    node = load(etc / "node.toml", NodeSettings)
    assert node.credentials == str(etc / "n.cred.toml") and node.state_dir == str(etc / "state")
    assert node.resolv_conf == "/etc/resolv.conf"  # absolute: untouched
    (etc / "rs.toml").write_text('name = "rs1"\naddress = "192.0.2.1"\ncredentials = ["a.cred.toml", "/abs/b.toml"]\n')
    rs = load(etc / "rs.toml", RsSettings)
    assert rs.credentials == [str(etc / "a.cred.toml"), "/abs/b.toml"] and rs.state_dir is None
    (etc / "dc.toml").write_text('domain = "a.example"\naddress = "192.0.2.2"\ndatabase = "dc.sqlite"\n')
    assert load(etc / "dc.toml", DcSettings).database == str(etc / "dc.sqlite")
    # A path given relative to the working directory is resolved from it, once.
    assert load(Path("..") / "etc" / "node.toml", NodeSettings).credentials == str(etc / "n.cred.toml")
    assert not list(elsewhere.iterdir())
