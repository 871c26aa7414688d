"""The host's resolver settings: pointing a host's name resolution at the node's DNS stub and putting it back.

Two mechanisms, chosen by ``detect`` (docs/operations.md, "The host's DNS"):

- **systemd-resolved** (``ResolvedLink``): the stub becomes the DNS server of the node's TUN link, with
  the routing domains the node tunnels (``~.`` for everything), through ``resolvectl``; LLMNR and mDNS
  are switched off on that link (they would multicast into the tunnel). ``revert`` drops the link's
  settings (resolved also forgets them when the TUN goes away).
- **/etc/resolv.conf** (``ResolvConf``): the file is saved next to the node's state (``backup``) and
  replaced by one naming the stub, keeping the original's ``search`` and ``options`` lines; ``revert``
  puts the original back (a symlink as a symlink). Every write is atomic (a temporary file renamed
  over the target) except where the target is a mount point (containers, ``ip netns exec``), where it
  is rewritten in place. A node that died without reverting leaves the backup behind: the next start
  restores it first (``recover``), so the original is never lost and never saved over.

Every failure is a ``ResolverError`` whose message is one line saying what to fix.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: Where systemd-resolved keeps its runtime files; it is in charge when resolv.conf points in here.
RESOLVED_RUN = Path("/run/systemd/resolve")
#: The first line of every resolv.conf this module writes.
MARKER = "# written by ntm node (its DNS stub); the original is restored when the node stops"


class ResolverError(Exception):
    """The host's resolver could not be changed or restored (message: one line)."""


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.ntm-tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        if exc.errno != errno.EBUSY:
            raise
        # The target is a mount point (a bind-mounted file): only an in-place write can change it.
        with open(path, "r+b") as f:
            f.write(data)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
    try:
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


@dataclass
class ResolvConf:
    """/etc/resolv.conf (``path``) pointed at the stub, the original kept in ``backup``."""

    path: Path
    backup: Path

    def recover(self) -> bool:
        """A backup left by a node that did not stop cleanly: put the original back. True if it did."""
        if not self.backup.exists():
            return False
        self._restore()
        return True

    def apply(self, servers: Sequence[str]) -> None:
        self.recover()
        try:
            text = self.path.read_text() if self.path.exists() else ""
            if self.path.is_symlink():
                saved = {"symlink": os.readlink(self.path)}
            else:
                saved = {"text": text} if self.path.exists() else {"absent": "1"}
            _atomic_write(self.backup, json.dumps(saved).encode())
        except OSError as exc:
            raise ResolverError(f"cannot save {self.path} to {self.backup}: {exc.strerror or exc}") from None
        kept = [ln for ln in text.splitlines() if ln.split()[:1] in (["search"], ["domain"], ["options"])]
        new = "\n".join([MARKER, *(f"nameserver {s}" for s in servers), *kept]) + "\n"
        try:
            if self.path.is_symlink():
                self.path.unlink()  # (a symlink into resolved's or NetworkManager's files: replaced, not followed)
            _atomic_write(self.path, new.encode())
        except OSError as exc:
            self._restore()
            raise ResolverError(f"cannot write {self.path}: {exc.strerror or exc}; the original is back") from None

    def revert(self) -> None:
        if self.backup.exists():
            self._restore()

    def _restore(self) -> None:
        try:
            saved = json.loads(self.backup.read_text())
        except (OSError, ValueError) as exc:
            raise ResolverError(f"{self.backup}: unreadable backup of {self.path} ({exc}); restore {self.path} "
                                f"by hand, then delete the backup") from None
        try:
            if "symlink" in saved:
                tmp = self.path.with_name(f".{self.path.name}.ntm-link")
                if tmp.is_symlink() or tmp.exists():
                    tmp.unlink()
                os.symlink(saved["symlink"], tmp)
                os.replace(tmp, self.path)
            elif "text" in saved:
                _atomic_write(self.path, saved["text"].encode())
            elif self.path.exists() and self.path.read_text().startswith(MARKER):
                self.path.unlink()
            self.backup.unlink()
        except OSError as exc:
            raise ResolverError(f"cannot restore {self.path} from {self.backup}: {exc.strerror or exc}") from None


@dataclass
class ResolvedLink:
    """systemd-resolved's per-link DNS settings for the node's link ``ifname``."""

    ifname: str
    resolvectl: str = "resolvectl"

    def _run(self, *args: str) -> None:
        try:
            p = subprocess.run([self.resolvectl, *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ResolverError(f"resolvectl {' '.join(args)}: {exc}") from None
        if p.returncode != 0:
            why = (p.stderr.strip() or p.stdout.strip()).splitlines()[-1:] or [f"exit status {p.returncode}"]
            raise ResolverError(f"resolvectl {' '.join(args)}: {why[0]}")

    def apply(self, servers: Sequence[str], domains: Sequence[str]) -> None:
        """``domains``: the routing domains the node tunnels, "." meaning every name."""
        routing = ["~." if d in (".", "") else "~" + d.strip(".") for d in domains] or ["~."]
        self._run("dns", self.ifname, *servers)
        self._run("domain", self.ifname, *routing)
        self._run("default-route", self.ifname, "yes" if "~." in routing else "no")
        self._run("llmnr", self.ifname, "no")
        self._run("mdns", self.ifname, "no")

    def revert(self) -> None:
        """Drop the link's settings; a link that is gone already has none (resolved forgot them with it)."""
        if not Path("/sys/class/net", self.ifname).exists():
            return
        self._run("revert", self.ifname)


def resolved_in_charge(resolv_conf: Path = Path("/etc/resolv.conf"), resolvectl: str = "resolvectl") -> bool:
    """systemd-resolved runs and the host's resolv.conf leads to it (its stub file or its 127.0.0.53)."""
    if shutil.which(resolvectl) is None:
        return False
    if not ((RESOLVED_RUN / "io.systemd.Resolve").exists() or (RESOLVED_RUN / "stub-resolv.conf").exists()):
        return False
    try:
        if resolv_conf.is_symlink() and Path(os.path.realpath(resolv_conf)).parent == RESOLVED_RUN:
            return True
        text = resolv_conf.read_text()
    except OSError:
        return False
    return any(ln.split()[:2] in (["nameserver", "127.0.0.53"], ["nameserver", "127.0.0.54"])
               for ln in text.splitlines())
