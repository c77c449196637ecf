"""A private PostgreSQL cluster for the tests: `initdb` + `pg_ctl start` in a temp dir, on a free
loopback port, trust auth on 127.0.0.1 only, run as an unprivileged user when the tests run as root
(postgres refuses root), stopped by its postmaster pid (also when a test fails).

Each test gets a fresh database: `CREATE DATABASE x TEMPLATE mailflow_template` copies a database
that `mailflow.pg_schema` has already migrated (a few ms), instead of migrating per test.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

TEST_USER = "mailflow-test"
TEMPLATE = "mailflow_template"
_dbs = itertools.count(1)


def find_bin(name: str) -> str | None:
    """`name` from the newest /usr/lib/postgresql/*/bin (Debian), else from PATH."""
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]) if
                    p.split("/")[-2].isdigit() else 0, reverse=True):
        if os.access(os.path.join(d, name), os.X_OK):
            return os.path.join(d, name)
    return shutil.which(name)


def available() -> bool:
    return find_bin("initdb") is not None and find_bin("pg_ctl") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ensure_user() -> tuple[int, int]:
    try:
        pw = pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER],
                       check=True, capture_output=True)
        pw = pwd.getpwnam(TEST_USER)
    return pw.pw_uid, pw.pw_gid


class Postgres:
    def __init__(self, root: Path | None = None, extra_conf: str = ""):
        self.extra_conf = extra_conf  # more postgresql.conf lines (a benchmark's pg_stat_statements)
        self.root = Path(root or tempfile.mkdtemp(prefix="mfpg"))
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.port = _free_port()
        self.pid: int | None = None
        self.as_user: tuple[int, int] | None = _ensure_user() if os.geteuid() == 0 else None

    def _run(self, args: list[str], **kw) -> subprocess.CompletedProcess:
        if self.as_user is not None:
            uid, gid = self.as_user

            def demote() -> None:
                os.setgid(gid)
                os.setgroups([])
                os.setuid(uid)

            kw["preexec_fn"] = demote
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C.UTF-8", LANG="C.UTF-8", TZ="UTC")
        return subprocess.run(args, capture_output=True, text=True, env=env, cwd=str(self.root), **kw)

    def start(self) -> None:
        self.sock.mkdir(parents=True, exist_ok=True)
        if self.as_user is not None:
            os.chown(self.root, *self.as_user)
            os.chown(self.sock, *self.as_user)
        r = self._run([find_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                       "--locale=C.UTF-8", "--no-sync"])
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed: {r.stderr}")
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.sock}'\n"
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n"
                    "shared_buffers = 64MB\nlog_min_messages = warning\ndeadlock_timeout = 200ms\n" + self.extra_conf + "\n")
        with open(self.data / "pg_hba.conf", "w") as f:
            f.write("local all all trust\nhost all all 127.0.0.1/32 trust\n")
        r = self._run([find_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "60",
                       "start"])
        if r.returncode != 0:
            log = (self.root / "log").read_text(errors="replace") if (self.root / "log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {r.stderr}\n{log[-2000:]}")
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        self.psql("postgres", "CREATE ROLE mailflow LOGIN SUPERUSER")

    def dsn(self, db: str = "postgres", user: str = "mailflow") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{db}"

    def psql(self, db: str, sql: str) -> str:
        r = subprocess.run([find_bin("psql") or "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At",
                            "-d", self.dsn(db, "postgres"), "-c", sql], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"psql {sql!r}: {r.stderr}")
        return r.stdout

    def make_template(self) -> None:
        """The template every test database is copied from: created and migrated once."""
        import psycopg

        from mailflow import pg_schema

        with psycopg.connect(self.dsn(), autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
            c.execute(f"CREATE DATABASE {TEMPLATE}")
        pg_schema.upgrade(self.dsn(TEMPLATE))

    def new_database(self, migrated: bool = True) -> str:
        """A fresh database (migrated from the template, or empty); returns its dsn."""
        import psycopg

        name = f"t{os.getpid()}_{next(_dbs)}"
        with psycopg.connect(self.dsn(), autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}" + (f" TEMPLATE {TEMPLATE}" if migrated else ""))
        return self.dsn(name)

    def stop(self) -> None:
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signal.SIGINT)  # fast shutdown
        except ProcessLookupError:
            self.pid = None
        end = time.monotonic() + 30
        while self.pid is not None and time.monotonic() < end:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            if self.pid is not None:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.pid = None
        shutil.rmtree(self.root, ignore_errors=True)
