"""A real PostgreSQL server for DC replicas (issue 17): Debian's ``postgresql`` package, run as the
``postgres`` user with its data in a directory of ours, optionally inside a lab namespace.

The server is started as ``postgres -D DATA`` itself (no pg_ctl, no wrapper left between us and
it), so the PID we hold is the postmaster's: stopping it is SIGINT (fast shutdown) to that PID,
then SIGKILL if it has not exited in time; it never touches another PostgreSQL on the machine.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

PG_BINDIR_CANDIDATES = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin")
USER = "postgres"
DBNAME = "ntmobile"


class PostgresError(RuntimeError):
    pass


def pg_bindir() -> Path | None:
    for d in PG_BINDIR_CANDIDATES:
        if Path(d, "postgres").exists():
            return Path(d)
    return None


class PostgresServer:
    """One PostgreSQL cluster in ``data`` (created on first start), listening on ``listen`` (TCP,
    empty: none) and on a Unix socket in ``data``/sock; ``netns`` runs it inside that namespace."""

    def __init__(self, data: Path, *, listen: str = "", port: int = 5432, netns: str | None = None) -> None:
        bindir = pg_bindir()
        if bindir is None:
            raise PostgresError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bindir = bindir
        self.data = Path(data)
        self.listen = listen
        self.port = port
        self.netns = netns
        self.proc: subprocess.Popen[bytes] | None = None
        pw = pwd.getpwnam(USER)
        self.uid, self.gid = pw.pw_uid, grp.getgrnam(USER).gr_gid

    @property
    def sockdir(self) -> Path:
        return self.data / "sock"

    @property
    def pgdata(self) -> Path:
        return self.data / "pgdata"

    def dsn(self, host: str | None = None) -> str:
        """A libpq URI for the lab's database: TCP to ``host`` or, by default, the Unix socket."""
        if host is not None:
            return f"postgresql://{USER}@{host}:{self.port}/{DBNAME}"
        return f"postgresql://{USER}@/{DBNAME}?host={self.sockdir}&port={self.port}"

    def _run_as_postgres(self, argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
        if self.netns is not None:
            argv = ["nsenter", f"--net=/run/netns/{self.netns}", f"--setuid={self.uid}", f"--setgid={self.gid}",
                    *argv]
            return subprocess.Popen(argv, **kw)  # type: ignore[call-overload,no-any-return]
        return subprocess.Popen(argv, user=self.uid, group=self.gid, extra_groups=[],  # type: ignore[call-overload,no-any-return]
                                **kw)

    def init(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        self.data.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data, 0o711)
        # every directory above must be traversable by the postgres user
        for parent in self.data.resolve().parents:
            if parent.stat().st_mode & 0o001 == 0:
                os.chmod(parent, parent.stat().st_mode | 0o001)
        for d in (self.pgdata, self.sockdir):
            d.mkdir(mode=0o700, exist_ok=True)
            os.chown(d, self.uid, self.gid)
        p = self._run_as_postgres([str(self.bindir / "initdb"), "-D", str(self.pgdata), "-U", USER,
                                   "--auth=trust", "-E", "UTF8", "--no-instructions"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd="/")
        out, _ = p.communicate(timeout=120)
        if p.returncode != 0:
            raise PostgresError(f"initdb failed: {out.decode(errors='replace')[-2000:]}")
        # trust for the lab's networks too (the lab is closed: only its namespaces reach it)
        with open(self.pgdata / "pg_hba.conf", "a") as f:
            f.write("host all all 0.0.0.0/0 trust\nhost all all ::/0 trust\n")

    def start(self, timeout: float = 60.0) -> None:
        self.init()
        log = open(self.data / "postgres.log", "ab")  # noqa: SIM115 - kept by the child
        try:
            self.proc = self._run_as_postgres(
                self.argv(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd="/")
        finally:
            log.close()
        self._wait_ready(timeout)
        self._ensure_db()

    def argv(self) -> list[str]:
        """The postmaster's command line (run as the postgres user): what `start` runs, for a caller
        that runs it itself (the lab's ``postgres`` daemon kind, lab/ntm.py)."""
        return [str(self.bindir / "postgres"), "-D", str(self.pgdata), "-k", str(self.sockdir),
                "-h", self.listen, "-p", str(self.port), "-c", "max_connections=200",
                "-c", "shared_buffers=32MB", "-c", "synchronous_commit=on"]

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until a server (started by whoever) answers on our socket, then create the database."""
        self._wait_ready(timeout)
        self._ensure_db()

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise PostgresError(f"postgres exited ({self.proc.returncode}): {self.log_tail()}")
            try:
                with psycopg.connect(f"postgresql://{USER}@/postgres?host={self.sockdir}&port={self.port}",
                                     connect_timeout=2):
                    return
            except psycopg.Error as exc:
                last = str(exc)
            time.sleep(0.1)
        raise PostgresError(f"postgres not ready in {timeout:.0f} s: {last}")

    def _ensure_db(self) -> None:
        import psycopg

        with psycopg.connect(f"postgresql://{USER}@/postgres?host={self.sockdir}&port={self.port}",
                             autocommit=True) as c:
            if c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DBNAME,)).fetchone() is None:
                c.execute(f"CREATE DATABASE {DBNAME}")

    def log_tail(self) -> str:
        try:
            return (self.data / "postgres.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown of our postmaster (by its PID), SIGKILL if it outlives ``timeout``."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.data, ignore_errors=True)
