"""osops.resolver's resolv.conf mode and runtime.hostdns: the host's resolver is pointed at the stub and
always comes back as it was, also after a node that died without reverting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ntmobile.osops.resolver import MARKER, ResolvConf, ResolverError
from ntmobile.runtime.hostdns import take_host_dns

ORIGINAL = "# from DHCP\nnameserver 192.0.2.1\nnameserver 2001:db8::1\nsearch corp.example\noptions edns0 trust-ad\n"


def rc(tmp_path: Path) -> ResolvConf:
    (tmp_path / "state").mkdir(exist_ok=True)
    return ResolvConf(tmp_path / "resolv.conf", tmp_path / "state" / "resolv.conf.ntm-backup")


def test_apply_points_at_the_stub_keeps_search_and_options_and_revert_restores_every_byte(tmp_path: Path) -> None:
    r = rc(tmp_path)
    r.path.write_text(ORIGINAL)
    r.apply(["127.0.0.153"])
    text = r.path.read_text()
    assert text.splitlines() == [MARKER, "nameserver 127.0.0.153", "search corp.example", "options edns0 trust-ad"]
    assert r.backup.exists()
    r.revert()
    assert r.path.read_text() == ORIGINAL and not r.backup.exists()
    r.revert()  # idempotent
    assert r.path.read_text() == ORIGINAL


def test_a_symlinked_resolv_conf_comes_back_as_the_same_symlink(tmp_path: Path) -> None:
    r = rc(tmp_path)
    (tmp_path / "stub-resolv.conf").write_text("nameserver 127.0.0.53\noptions edns0\n")
    r.path.symlink_to("stub-resolv.conf")
    r.apply(["127.0.0.153"])
    assert not r.path.is_symlink() and "nameserver 127.0.0.153" in r.path.read_text()
    assert (tmp_path / "stub-resolv.conf").read_text().startswith("nameserver 127.0.0.53")  # never followed
    r.revert()
    assert r.path.is_symlink() and os.readlink(r.path) == "stub-resolv.conf"


def test_after_a_crash_the_next_start_restores_the_original_first_and_never_saves_its_own_file(
        tmp_path: Path) -> None:
    r = rc(tmp_path)
    r.path.write_text(ORIGINAL)
    r.apply(["127.0.0.153"])
    # The node is killed here (no revert). The next one:
    again = rc(tmp_path)
    again.apply(["127.0.0.153"])
    assert again.path.read_text().startswith(MARKER)
    again.revert()
    assert again.path.read_text() == ORIGINAL
    # recover() alone (what every start does first, whatever the mode) puts it back too.
    r.apply(["127.0.0.153"])
    assert rc(tmp_path).recover() and r.path.read_text() == ORIGINAL and not r.backup.exists()


def test_no_resolv_conf_before_means_none_after(tmp_path: Path) -> None:
    r = rc(tmp_path)
    r.apply(["127.0.0.153"])
    assert r.path.read_text().startswith(MARKER)
    r.revert()
    assert not r.path.exists()


def test_a_corrupt_backup_is_one_clear_line_and_nothing_is_overwritten(tmp_path: Path) -> None:
    r = rc(tmp_path)
    r.path.write_text(MARKER + "\nnameserver 127.0.0.153\n")
    r.backup.write_text("{not json")
    with pytest.raises(ResolverError) as exc:
        r.apply(["127.0.0.153"])
    assert "restore" in str(exc.value) and "\n" not in str(exc.value)
    assert r.backup.read_text() == "{not json"


def test_host_dns_modes_and_the_upstream_they_leave_the_stub(tmp_path: Path) -> None:
    (tmp_path / "resolv.conf").write_text(ORIGINAL)
    host = take_host_dns("resolv.conf", stub="127.0.0.153", tun="ntm0", domains=["."],
                         resolv_conf=tmp_path / "resolv.conf", state_dir=tmp_path)
    assert host.mode == "resolv.conf" and host.upstream == ["192.0.2.1", "2001:db8::1"]
    # A second node start after a crash: the upstream is still the original's, never the stub itself.
    host2 = take_host_dns("resolv.conf", stub="127.0.0.153", tun="ntm0", domains=["."],
                          resolv_conf=tmp_path / "resolv.conf", state_dir=tmp_path)
    assert host2.upstream == ["192.0.2.1", "2001:db8::1"]
    host2.revert()
    assert (tmp_path / "resolv.conf").read_text() == ORIGINAL
    none = take_host_dns("none", stub="127.0.0.153", tun="ntm0", domains=["."],
                         resolv_conf=tmp_path / "resolv.conf", state_dir=tmp_path)
    assert none.mode == "none" and none.upstream == ["192.0.2.1", "2001:db8::1"]
    with pytest.raises(ResolverError):
        take_host_dns("bogus", stub="127.0.0.153", tun="ntm0", domains=["."],
                      resolv_conf=tmp_path / "resolv.conf", state_dir=tmp_path)
