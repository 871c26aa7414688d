"""Files that hold secrets: created mode 0600 from the first byte, never through a symlink, in a
directory nobody else can write.

The DC registry (enrolment secrets, the DC's static key) and the credential files `ntm dc enroll`
writes go through here (docs/security.md, "Secrets at rest"). Every failure is a ``PrivateFileError``
with one line naming the path and what to do.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

#: The mode of every file holding a secret, and of the directories created for them.
FILE_MODE = 0o600
DIR_MODE = 0o700
_NEW = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class PrivateFileError(Exception):
    """A secret's file or its directory is unsafe or cannot be made (message: one line)."""


def private_dir(path: Path) -> None:
    """Make ``path`` a directory (mode 0700 when created here), or check the existing one: it must
    belong to root or to us and must not be group- or world-writable (whoever can write it can swap
    the files in it)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            pass  # created meanwhile: checked below like any existing one
        except OSError as exc:
            raise PrivateFileError(f"{path}: cannot create the directory: {exc.strerror}") from None
        st = os.stat(path)
    except OSError as exc:
        raise PrivateFileError(f"{path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise PrivateFileError(f"{path}: not a directory")
    if st.st_uid not in (0, os.geteuid()):
        raise PrivateFileError(f"{path}: the directory belongs to uid {st.st_uid}; use one owned by root or by "
                               "this user")
    if st.st_mode & 0o022:
        raise PrivateFileError(f"{path}: the directory is group- or world-writable (mode "
                               f"{stat.S_IMODE(st.st_mode):04o}); run chmod go-w on it or choose another directory")


def check_private_file(path: Path) -> bool:
    """An existing file that will hold secrets: refuse a symlink, anything but a regular file, or a file
    of another user; tighten a looser mode to 0600. False if there is no such file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise PrivateFileError(f"{path}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise PrivateFileError(f"{path}: is a symbolic link; refusing to follow it for a file holding secrets")
    if not stat.S_ISREG(st.st_mode):
        raise PrivateFileError(f"{path}: not a regular file")
    if st.st_uid != os.geteuid():
        raise PrivateFileError(f"{path}: belongs to uid {st.st_uid}, not to this user")
    if stat.S_IMODE(st.st_mode) & 0o077:
        try:
            os.chmod(path, FILE_MODE, follow_symlinks=False)
        except OSError as exc:
            raise PrivateFileError(f"{path}: cannot make it mode 0600: {exc.strerror}") from None
    return True


def create_private(path: Path) -> None:
    """Create the empty file ``path``, mode 0600, unless it exists (checked as above). The directory
    is made or checked first."""
    private_dir(path.parent)
    if check_private_file(path):
        return
    try:
        os.close(os.open(path, os.O_RDWR | _NEW, FILE_MODE))
    except FileExistsError:
        check_private_file(path)  # created meanwhile (e.g. by another enrolment): the same checks
    except OSError as exc:
        raise PrivateFileError(f"{path}: cannot create it: {exc.strerror}") from None


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` with a file holding ``data``: written to a new mode-0600 file in the same
    directory (exclusive create, no symlink followed), flushed, then renamed over ``path`` (a symlink
    there is replaced, never followed)."""
    private_dir(path.parent)
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            raise PrivateFileError(f"{path}: is a directory")
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | _NEW, FILE_MODE)
    except OSError as exc:
        raise PrivateFileError(f"{path}: cannot create a file in {path.parent}: {exc.strerror}") from None
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise PrivateFileError(f"{path}: cannot write it: {exc.strerror}") from None
