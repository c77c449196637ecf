"""A throwaway Dovecot IMAP server for integration tests and benchmarks.

No pytest dependency: benchmarks import it too.

    with Dovecot(tmp_path) as dv:
        dv.append("support", raw)
        cfg = dv.mailbox_config("support")

Facts this relies on (Debian dovecot-imapd 2.3, see DESIGN.md section 7): the server is started
in the foreground (`dovecot -F -c CONF`) with a private base_dir/state_dir/log, a passwd-file
passdb and a static userdb running mail processes as `nobody` (uid 0 is refused).

Layout: the config and the log go to `root`. Everything the server's unprivileged processes
must reach -- base_dir (unix sockets: paths are limited to ~100 bytes), the passwd file (read by
the auth process as user `dovecot`), the users' homes (owned by `nobody`) -- lives in a short,
world-traversable `/tmp/dvXXXXXXXX` directory (`self.work`), because pytest's tmp_path sits under
0700 directories that `nobody` cannot cross. cleanup()/__exit__ delete that directory.

Every started server is also registered for an atexit kill, and on Linux the server gets
PR_SET_PDEATHSIG so that it dies with the test process even if that is SIGKILLed.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from imapclient import IMAPClient

from mailflow.config import MailboxConfig, Secret

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
DEFAULT_USERS = {"support": "secret", "sales": "secret"}

_live: set[Dovecot] = set()  # started and not stopped: killed at exit
_workdirs: set[Path] = set()  # deleted at exit


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def available() -> bool:
    """Is a dovecot binary installed (tests skip without one)?"""
    return os.access(DOVECOT, os.X_OK)


def dovecot_version() -> str:
    out = subprocess.run([DOVECOT, "--version"], capture_output=True, text=True, timeout=10)
    return out.stdout.strip()


def _pdeathsig() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Dovecot:
    host: str = "127.0.0.1"

    def __init__(self, root: Path, users: dict[str, str] | None = None, port: int = 0,
                 precreate: bool = True):
        """`precreate`: create each user's Maildir (cur/new/tmp, owned by the mail uid) before the
        server starts, instead of letting Dovecot create it at first login."""
        self.root = Path(root).resolve()
        self.users: dict[str, str] = dict(DEFAULT_USERS if users is None else users)
        self.port = port or free_port()
        self.precreate = precreate
        self.proc: subprocess.Popen | None = None
        self.work = Path(tempfile.mkdtemp(prefix="dv", dir="/tmp"))
        os.chmod(self.work, 0o755)
        _workdirs.add(self.work)
        self.base_dir = self.work / "run"
        self.home = self.work / "home"
        self.passwd = self.work / "passwd"
        self.conf = self.root / "dovecot.conf"
        self.log = self.root / "dovecot.log"
        if os.geteuid() == 0:
            pw = pwd.getpwnam("nobody")
            self.mail_uid, self.mail_gid = pw.pw_uid, grp.getgrnam("nogroup").gr_gid
            self._mail_user, self._mail_group = "nobody", "nogroup"
        else:  # unprivileged: everything runs as ourselves (best effort; tests here run as root)
            self.mail_uid, self.mail_gid = os.getuid(), os.getgid()
            self._mail_user = pwd.getpwuid(self.mail_uid).pw_name
            self._mail_group = grp.getgrgid(self.mail_gid).gr_name

    # -- lifecycle -------------------------------------------------------------------------
    def _write_config(self) -> None:
        self.work.mkdir(mode=0o755, exist_ok=True)
        _workdirs.add(self.work)
        self.home.mkdir(exist_ok=True)
        os.chown(self.home, self.mail_uid, self.mail_gid)
        (self.work / "state").mkdir(exist_ok=True)
        self._write_passwd()
        if self.precreate:
            for u in self.users:
                self.maildir(u)
        unpriv = ""
        if os.geteuid() != 0:
            me = self._mail_user
            unpriv = (f"default_login_user = {me}\ndefault_internal_user = {me}\n"
                      "service anvil {\n  chroot =\n}\nservice imap-login {\n  chroot =\n}\n")
        self.conf.write_text(f"""\
protocols = imap
listen = 127.0.0.1
base_dir = {self.base_dir}
state_dir = {self.work / "state"}
log_path = {self.log}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
mail_location = maildir:~/Maildir
mail_fsync = never
first_valid_uid = 1
shutdown_clients = yes
namespace inbox {{
  inbox = yes
  separator = /
}}
passdb {{
  driver = passwd-file
  args = {self.passwd}/%u
}}
userdb {{
  driver = static
  args = uid={self._mail_user} gid={self._mail_group} home={self.home}/%u
}}
protocol imap {{
  mail_max_userip_connections = 1000
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
{unpriv}""")

    def _write_passwd(self) -> None:
        # one file per user: Dovecot re-stats a passwd-file at most once a second, so a user
        # added to a shared file could be unknown for up to a second; a new file is read at once
        self.passwd.mkdir(mode=0o755, exist_ok=True)
        for u, pw in self.users.items():
            p = self.passwd / u
            line = f"{u}:{{PLAIN}}{pw}\n"
            if not p.exists() or p.read_text() != line:
                tmp = self.passwd / f".{u}.tmp"
                tmp.write_text(line)
                os.chmod(tmp, 0o644)
                os.replace(tmp, p)

    def start(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        if not available():
            raise RuntimeError(f"dovecot not found at {DOVECOT} (Debian: apt-get install dovecot-imapd)")
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_config()
        main_thread = threading.current_thread() is threading.main_thread()
        with open(self.root / "dovecot.stdout", "ab") as out:
            self.proc = subprocess.Popen(
                [DOVECOT, "-F", "-c", str(self.conf)], stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
                # PDEATHSIG fires when the *thread* that forked exits: only safe from the main thread
                preexec_fn=_pdeathsig if main_thread else None,
            )
        _live.add(self)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                self.proc = None
                _live.discard(self)
                raise RuntimeError(f"dovecot ({dovecot_version()}) exited with {rc} at start; this config is "
                                   f"for 2.3:\n{self.log_tail()}\n{self._stdout_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0) as s:
                    if s.recv(256).startswith(b"* OK"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"dovecot gave no greeting on port {self.port} within {timeout}s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.02)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        _live.discard(self)
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        # the master kills its children (shutdown_clients = yes); make sure of it: they are in
        # the session we created for it, whose id is the master's pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        # wait until the port is free again so restart() can bind it
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
            except OSError:
                break
            time.sleep(0.02)

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """stop() and delete the server's data (`self.work`; root is the caller's)."""
        self.stop()
        shutil.rmtree(self.work, ignore_errors=True)
        _workdirs.discard(self.work)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> Dovecot:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def _stdout_tail(self) -> str:
        try:
            return (self.root / "dovecot.stdout").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    # -- users and mail -----------------------------------------------------------------------
    def add_user(self, user: str, password: str = "secret", precreate: bool | None = None) -> None:
        """Add (or change) a user; works while the server runs."""
        self.users[user] = password
        if self.precreate if precreate is None else precreate:
            self.maildir(user)
        self._write_passwd()

    def maildir(self, user: str, folder: str = "INBOX") -> Path:
        """The user's Maildir folder on disk (maildir++ layout), created with cur/new/tmp."""
        home = self.home / user
        d = home / "Maildir"
        if folder.upper() != "INBOX":
            d = d / ("." + folder.replace("/", "."))
        for p in (home, home / "Maildir", d, d / "cur", d / "new", d / "tmp"):
            if not p.exists():
                p.mkdir(parents=True, exist_ok=True)
                os.chown(p, self.mail_uid, self.mail_gid)
        return d

    def deliver(self, user: str, raws: list[bytes], folder: str = "INBOX") -> None:
        """Write messages straight into the Maildir's new/ (like an MDA): the fastest way to fill a
        mailbox with thousands of messages. Works with the server stopped or running."""
        d = self.maildir(user, folder)
        host = socket.gethostname().replace("/", "_").replace(":", "_")
        base = f"{time.time_ns()}.P{os.getpid()}"
        for i, raw in enumerate(raws):
            name = f"{base}Q{i}.{host}"
            tmp = d / "tmp" / name
            tmp.write_bytes(raw)
            os.chown(tmp, self.mail_uid, self.mail_gid)
            os.rename(tmp, d / "new" / name)

    def kick(self, user: str) -> None:
        """Disconnect the user's sessions the way an admin would (`doveadm kick`): the server
        sends `* BYE` and closes."""
        subprocess.run([shutil.which("doveadm") or "/usr/bin/doveadm", "-c", str(self.conf), "kick", user],
                       check=True, capture_output=True, timeout=10)

    def client(self, user: str) -> IMAPClient:
        c = IMAPClient(self.host, self.port, ssl=False, timeout=30)
        c.login(user, self.users[user])
        return c

    def _ensure_folder(self, c: IMAPClient, folder: str) -> None:
        if folder.upper() != "INBOX" and not c.folder_exists(folder):
            c.create_folder(folder)

    def append(self, user: str, raw: bytes, folder: str = "INBOX", flags=()) -> None:
        c = self.client(user)
        try:
            self._ensure_folder(c, folder)
            c.append(folder, raw, flags=flags)
        finally:
            c.logout()

    def append_many(self, user: str, raws: list[bytes], folder: str = "INBOX", chunk: int = 500) -> None:
        """Append over one connection; MULTIAPPEND (RFC 3502, in imapclient >= 3) in chunks when the
        server has it, else one APPEND per message."""
        c = self.client(user)
        try:
            self._ensure_folder(c, folder)
            if c.has_capability("MULTIAPPEND"):
                for i in range(0, len(raws), chunk):
                    typ, data = c.multiappend(folder, raws[i:i + chunk])
                    if typ != "OK":
                        raise RuntimeError(f"MULTIAPPEND failed: {typ} {data!r}")
            else:
                for raw in raws:
                    c.append(folder, raw)
        finally:
            c.logout()

    def messages(self, user: str, folder: str = "INBOX") -> dict[int, set[bytes]]:
        """uid -> flags (without \\Recent, which depends on who looked first)."""
        c = self.client(user)
        try:
            if not c.folder_exists(folder):
                return {}
            c.select_folder(folder, readonly=True)
            uids = c.search(["ALL"])
            out: dict[int, set[bytes]] = {}
            for i in range(0, len(uids), 1000):  # imapclient 4.1 cannot fetch "1:*"
                for uid, d in c.fetch(uids[i:i + 1000], ["FLAGS"]).items():
                    out[uid] = set(d[b"FLAGS"]) - {b"\\Recent"}
            return out
        finally:
            c.logout()

    def mailbox_config(self, user: str, name: str | None = None, **overrides) -> MailboxConfig:
        cfg = MailboxConfig(
            name=name or user, host=self.host, port=self.port, tls="none", user=user,
            password=Secret(value=self.users[user]), address=f"{user}@example.com", timeout=10.0,
        )
        return replace(cfg, **overrides) if overrides else cfg


@atexit.register
def _kill_leftovers() -> None:
    for dv in list(_live):
        with contextlib.suppress(Exception):
            dv.cleanup()
    for d in list(_workdirs):
        shutil.rmtree(d, ignore_errors=True)
