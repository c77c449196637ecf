"""`mailflow run` as systemd runs it: a subprocess with a NOTIFY_SOCKET this test listens on.

READY once every mailbox is connected or retrying, WATCHDOG while healthy, STATUS lines, RELOADING
on SIGHUP (a broken rule file is rejected and the old rules keep classifying), STOPPING and exit 0
on SIGTERM with nothing lost; `mailflow status` against the running daemon; the watchdog decision
itself (a loop that makes no progress stops the pings).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from mailflow import config as config_mod
from mailflow import resources
from mailflow.daemon import Daemon, _Stepped, wedged
from mailflow.mailboxes import MailboxWorker
from tests.integration.helpers import REPO, mailflow, make_mail, parsed, storage_lines, ticket, tickets

PASSWORD = "pw-Zq8x-never-logged"
_n = itertools.count(1)


# ---- harness (also used by test_faults.py) -------------------------------------------------------

class Notify:
    """An AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="mfn", dir="/tmp"))
        self.path = str(self.dir / "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.events: list[tuple[float, str, str]] = []  # (monotonic, KEY, value)
        self._cond = threading.Condition()
        self._closed = False
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            with self._cond:
                for line in data.decode("utf-8", "replace").splitlines():
                    k, _, v = line.partition("=")
                    self.events.append((now, k, v))
                self._cond.notify_all()

    def wait(self, key: str, value: str | None = None, *, after: float = 0.0, timeout: float = 30.0,
             match: str | None = None) -> tuple[float, str, str]:
        """The first KEY(=value) event at or after `after` (a monotonic time)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for ev in self.events:
                    if ev[0] >= after and ev[1] == key and (value is None or ev[2] == value) and \
                            (match is None or re.search(match, ev[2])):
                        return ev
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {key}={value or match or '*'} within {timeout}s; got "
                                         f"{[(k, v) for _t, k, v in self.events][-15:]}")
                self._cond.wait(left)

    def count(self, key: str, since: float = 0.0, until: float | None = None) -> int:
        with self._cond:
            return sum(1 for t, k, _v in self.events if k == key and t >= since and (until is None or t <= until))

    def keys(self) -> list[str]:
        with self._cond:
            return [k for _t, k, _v in self.events]

    def statuses(self, since: float = 0.0) -> list[str]:
        with self._cond:
            return [v for t, k, v in self.events if k == "STATUS" and t >= since]

    def close(self) -> None:
        self._closed = True
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Run:
    """`mailflow --config CFG run` as a subprocess, its stderr collected line by line."""

    def __init__(self, cfg: Path, notify: Notify, watchdog_usec: int | None = 2_000_000,
                 log_level: str | None = None):
        env = dict(os.environ, PYTHONPATH=str(REPO), NOTIFY_SOCKET=notify.path)
        env.pop("WATCHDOG_PID", None)
        env.pop("MAILFLOW_CONFIG", None)
        if watchdog_usec:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        else:
            env.pop("WATCHDOG_USEC", None)
        args = [sys.executable, "-m", "mailflow", "--config", str(cfg)]
        if log_level:
            args += ["--log-level", log_level]
        self.proc = subprocess.Popen([*args, "run"], env=env, cwd=REPO, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    @property
    def log(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def count(self, pattern: str) -> int:
        with self._cond:
            return sum(1 for ln in self.lines if re.search(pattern, ln))

    def wait_log(self, pattern: str, n: int = 1, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while sum(1 for ln in self.lines if re.search(pattern, ln)) < n:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None and not self._t.is_alive():
                    raise AssertionError(f"{n} x {pattern!r} not logged within {timeout}s:\n" +
                                         "\n".join(self.lines[-40:]))
                self._cond.wait(min(left, 0.5))

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("mailflow run did not stop on SIGTERM:\n" + self.log[-4000:]) from None
        self._t.join(5)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def daemon(cfg: Path, notify: Notify, **kw):
    r = Run(cfg, notify, **kw)
    try:
        yield r
    finally:
        r.kill()
        if r._t.is_alive():
            r._t.join(5)


@pytest.fixture
def notify():
    n = Notify()
    yield n
    n.close()


def user(dovecot, password: str = PASSWORD) -> str:
    u = f"d{next(_n)}x{os.getpid()}"
    dovecot.add_user(u, password)
    return u


def mailbox_toml(name: str, port: int, *, user: str | None = None, password: str | None = PASSWORD,
                 password_file: Path | None = None, timeout: float = 5, extra: str = "") -> str:
    secret = f'password_file = "{password_file}"' if password_file else f'password = "{password}"'
    return (f'[[mailbox]]\nname = "{name}"\nhost = "127.0.0.1"\nport = {port}\ntls = "none"\n'
            f'user = "{user or name}"\n{secret}\naddress = "{name}@support.example"\n'
            f'timeout = {timeout}\n{extra}\n')


def config(tmp: Path, mailboxes: list[str], smtp_port: int | None = None, *, smtp_timeout: float = 5,
           extra: str = "") -> Path:
    parts = [f'[storage]\ndata_dir = "{tmp / "data"}"\n{storage_lines()}', '[company]\nname = "Test Co."\n',
             '[outbound]\nbackoff_initial = 0.01\nbackoff_max = 0.05\n', *mailboxes]
    if smtp_port is not None:
        parts.append(f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_port}\ntls = "none"\ntimeout = {smtp_timeout}\n')
    parts.append(extra)
    p = tmp / "mailflow.toml"
    p.write_text("\n".join(parts), encoding="utf-8")
    return p


def acks(sink) -> dict[str, list[str]]:
    """ticket id -> Message-IDs of the mails the sink received for it."""
    out: dict[str, list[str]] = {}
    for _f, _r, data in list(sink.messages):
        m = parsed(data)
        out.setdefault(str(m["X-Mailflow-Ticket"]), []).append(str(m["Message-ID"]))
    return out


def wait_until(cond, timeout: float = 30.0, what: str = "condition", step: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(step)


# ---- tests ---------------------------------------------------------------------------------------------

@pytest.mark.usefixtures("backend")
def test_ready_watchdog_status_and_clean_stop(tmp_path, dovecot_server, smtp_sink, notify):
    a, b = user(dovecot_server), user(dovecot_server)
    cred = tmp_path / "cred"
    cred.mkdir(mode=0o700)
    (cred / "imap").write_text(PASSWORD + "\n")
    cfg = config(tmp_path, [mailbox_toml(a, dovecot_server.port),
                            mailbox_toml(b, dovecot_server.port, password_file=cred / "imap")], smtp_sink.port)
    with daemon(cfg, notify) as run:
        t_ready, _, _ = notify.wait("READY", "1")
        # READY comes once both mailboxes are connected (or retrying), and it says so
        assert run.count(r"mailbox \S+: connected") == 2, run.log
        status = notify.wait("STATUS", after=t_ready, match="mailbox")[2]
        assert status.startswith("2 mailboxes") and "open tickets" in status and "outbox 0" in status, status

        dovecot_server.append(a, make_mail(1, sender="alice.wong@customer.example", zh=False))
        dovecot_server.append(b, make_mail(2, sender="li.lei@customer.example", zh=True))
        run.wait_log(r"new ticket=CW\d+ mailbox=", n=2)
        assert smtp_sink.wait_for(2, timeout=20)
        notify.wait("STATUS", match=r"^2 mailboxes, 2 open tickets, outbox 0$", timeout=20)

        # pings keep coming while healthy (WatchdogSec=2: one every 0.5 s)
        t0 = time.monotonic()
        notify.wait("WATCHDOG", "1", after=t0 + 1.5, timeout=10)
        assert notify.count("WATCHDOG", since=t0) >= 3
        assert "withholding" not in run.log

        # `mailflow status` reads the data directory while the daemon runs
        st = wait_until(lambda: (lambda x: x if x["outbox"]["sent"] == 2 else None)(
            json.loads(mailflow(cfg, "status", "--json").stdout)), 20, "2 sent in status")
        assert [m["name"] for m in st["mailboxes"]] == [a, b]
        assert all(m["last_poll"] and m["last_error"] is None and m["last_uid"] == 1 for m in st["mailboxes"]), st
        assert st["tickets"] == {"new": 2} and st["open_tickets"] == 2
        assert st["outbox"]["queued"] == 0 and st["outbox"]["sent"] == 2 and st["quarantine"] == 0
        text = mailflow(cfg, "status").stdout
        assert f"mailbox {a}: last poll" in text and "tickets: new 2" in text

        t_term = time.monotonic()
        rc = run.stop()
    assert rc == 0, run.log
    notify.wait("STOPPING", "1", after=t_term, timeout=1)
    log = run.log
    # one line per event; no password, no message body, no full customer address at info level
    assert PASSWORD not in log
    assert "has not arrived yet" not in log and "退款" not in log
    assert "alice.wong@customer.example" not in log and "li.lei@customer.example" not in log
    assert re.search(r"new ticket=CW\d{12} mailbox=" + re.escape(a), log)
    assert "Traceback" not in log
    # all mail processed once, every customer answered once
    ts = tickets(cfg)
    assert len(ts) == 2
    got = acks(smtp_sink)
    assert sorted(got) == sorted(t["id"] for t in ts) and all(len(v) == 1 for v in got.values())
    assert all(b"\\Seen" in f for u in (a, b) for f in dovecot_server.messages(u).values())


def test_customer_addresses_are_masked_unless_debug(tmp_path, dovecot_server, notify):
    a = user(dovecot_server)
    cfg = config(tmp_path, [mailbox_toml(a, dovecot_server.port)])
    dovecot_server.append(a, make_mail(1, sender="bob.owner@customer.example", subject="Hello", zh=False))
    with daemon(cfg, notify) as run:
        run.wait_log(r"new ticket=")
        tid = re.search(r"new ticket=(CW\d+)", run.log).group(1)
        # a stranger quoting the ticket id opens a new ticket; the log says who, masked
        dovecot_server.append(a, make_mail(2, sender="mallory.one@evil.example", subject=f"Re: [{tid}] Hello",
                                           zh=False))
        run.wait_log(r"new ticket=", n=2)
        # one daemon per data directory: two would both send the outbox
        second = mailflow(cfg, "run", check=False, timeout=60)
        assert second.returncode == 2 and "another mailflow daemon is running" in second.stderr, second.stderr
        assert run.stop() == 0
    assert "m***@evil.example" in run.log and "mallory.one@evil.example" not in run.log, run.log
    assert "bob.owner@customer.example" not in run.log
    with daemon(cfg, notify, log_level="debug") as run:
        notify.wait("READY", "1")
        dovecot_server.append(a, make_mail(3, sender="mallory.two@evil.example", subject=f"Re: [{tid}] Hi",
                                           zh=False))
        run.wait_log(r"new ticket=")
        assert run.stop() == 0
    assert "mallory.two@evil.example" in run.log
    assert PASSWORD not in run.log


def test_ready_waits_for_mailboxes_connected_or_retrying(tmp_path, dovecot_server, notify):
    """A mailbox whose server never answers (slow) delays READY only until its connect times out;
    it is then `retrying`, its error shows in STATUS and in `mailflow status`, and the pings go on."""
    a = user(dovecot_server)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts (the kernel does) but never says a word: no IMAP greeting
    port = silent.getsockname()[1]
    try:
        cfg = config(tmp_path, [mailbox_toml(a, dovecot_server.port),
                                mailbox_toml("slow", port, timeout=0.5)])
        with daemon(cfg, notify) as run:
            t_ready, _, ready_status = notify.wait("READY", "1")
            assert run.count(r"mailbox=slow .*timed out") >= 1, run.log
            st = notify.wait("STATUS", match="slow retrying")[2]
            assert st.startswith("2 mailboxes (1 ok, slow retrying)"), st
            # the healthy mailbox works while the other one keeps timing out
            dovecot_server.append(a, make_mail(3, zh=False))
            run.wait_log(r"new ticket=CW\d+ mailbox=" + re.escape(a))
            t0 = time.monotonic()
            notify.wait("WATCHDOG", "1", after=t0 + 2.0, timeout=10)
            assert notify.count("WATCHDOG", since=t0) >= 4
            assert run.count(r"mailbox=slow .*timed out") >= 2
            assert "withholding" not in run.log
            st = json.loads(mailflow(cfg, "status", "--json").stdout)
            slow = next(m for m in st["mailboxes"] if m["name"] == "slow")
            assert "timed out" in (slow["last_error"] or "") and slow["last_poll"] is None
            assert run.stop() == 0
    finally:
        silent.close()


def _rules_copy(tmp: Path) -> Path:
    d = tmp / "rules"
    shutil.copytree(resources.bundled_rules(), d)
    return d


MARKER_RULE = """
- name: test-marker
  when: {subject: {matches: 'ZZMARK'}}
  then:
    - tag: zzmark
"""


def _own_rules_setup(tmp_path, dovecot_server):
    """A mailbox user and a config whose rules dir is a copy we may edit: (user, cfg, classify.yaml, its text)."""
    a = user(dovecot_server)
    rules = _rules_copy(tmp_path)
    cfg = config(tmp_path, [mailbox_toml(a, dovecot_server.port)], extra=f'[rules]\ndir = "{rules}"\n')
    classify = rules / "classify.yaml"
    return a, cfg, classify, classify.read_text(encoding="utf-8")


def test_sighup_reloads_rules_and_rejects_a_broken_set(tmp_path, dovecot_server, notify):
    a, cfg, classify, good = _own_rules_setup(tmp_path, dovecot_server)
    with daemon(cfg, notify) as run:
        notify.wait("READY", "1")
        # a good change goes live on SIGHUP
        classify.write_text(good + MARKER_RULE, encoding="utf-8")
        t0 = time.monotonic()
        run.signal(signal.SIGHUP)
        t_rel = notify.wait("RELOADING", "1", after=t0)[0]
        notify.wait("READY", "1", after=t_rel)
        run.wait_log(r"reloaded \(SIGHUP\)")
        dovecot_server.append(a, make_mail(1, subject="ZZMARK first", zh=False))
        run.wait_log(r"new ticket=", n=1)

        # a broken rule file: the reload is rejected (RELOADING ... READY all the same) and the
        # running rules keep working
        classify.write_text(good + MARKER_RULE + "\n- name: [unclosed\n", encoding="utf-8")
        t1 = time.monotonic()
        run.signal(signal.SIGHUP)
        t_rel = notify.wait("RELOADING", "1", after=t1, match=None)[0]
        notify.wait("READY", "1", after=t_rel)
        run.wait_log(r"reload \(SIGHUP\) rejected.*classify\.yaml")
        notify.wait("STATUS", after=t_rel, match="last reload rejected")
        dovecot_server.append(a, make_mail(2, subject="ZZMARK second, how do I pay an invoice?", zh=False))
        run.wait_log(r"new ticket=", n=2)
        # a broken template is rejected the same way, and every problem is listed
        tpl = tmp_path / "templates"
        shutil.copytree(resources.bundled_templates(), tpl)
        (tpl / "en" / "ack.txt.j2").write_text("{% if %}\n", encoding="utf-8")
        cfg.write_text(cfg.read_text() + f'[templates]\ndir = "{tpl}"\n', encoding="utf-8")
        t2 = time.monotonic()
        run.signal(signal.SIGHUP)
        notify.wait("READY", "1", after=notify.wait("RELOADING", "1", after=t2)[0])
        run.wait_log(r"reload \(SIGHUP\) rejected.*classify\.yaml.*; .*ack\.txt\.j2")
        # fixing the files brings the status back to normal
        classify.write_text(good + MARKER_RULE, encoding="utf-8")
        shutil.rmtree(tpl)
        cfg.write_text(cfg.read_text().replace(f'[templates]\ndir = "{tpl}"\n', ""), encoding="utf-8")
        t3 = time.monotonic()
        run.signal(signal.SIGHUP)
        notify.wait("READY", "1", after=notify.wait("RELOADING", "1", after=t3)[0])
        run.wait_log(r"reloaded \(SIGHUP\)", n=2)
        assert run.stop() == 0
    ts = sorted(tickets(cfg), key=lambda t: t["id"])
    assert len(ts) == 2
    for t in ts:
        assert "zzmark" in t["tags"], t
        assert t["category"], t
    assert ts[1]["category"] == "inquiry"
    fired = ticket(cfg, ts[1]["id"])["rules_fired"]
    assert ["classify", "test-marker"] in fired, fired
    assert "Traceback" not in run.log


def test_rule_file_change_reloads_without_a_signal(tmp_path, dovecot_server, notify):
    a, cfg, classify, good = _own_rules_setup(tmp_path, dovecot_server)
    with daemon(cfg, notify) as run:
        notify.wait("READY", "1")
        classify.write_text(good + "\n- name: [unclosed\n", encoding="utf-8")  # broken: kept out
        run.wait_log(r"reload \(.*\) rejected.*classify\.yaml")
        classify.write_text(good + MARKER_RULE, encoding="utf-8")  # fixed: goes live, no SIGHUP
        run.wait_log(r"reloaded \(", n=1)
        dovecot_server.append(a, make_mail(1, subject="ZZMARK via file watch", zh=False))
        run.wait_log(r"new ticket=", n=1)
        assert run.stop() == 0
    [t] = tickets(cfg)
    assert "zzmark" in t["tags"]


@pytest.mark.usefixtures("backend")
def test_sigterm_finishes_the_batch_and_loses_nothing(tmp_path, dovecot_server, smtp_sink, notify):
    a = user(dovecot_server)
    n = 40
    cfg = config(tmp_path, [mailbox_toml(a, dovecot_server.port, extra="batch_size = 4")], smtp_sink.port)
    dovecot_server.append_many(a, [make_mail(i, subject=f"term test {i}", zh=bool(i % 2)) for i in range(n)])
    with daemon(cfg, notify) as run:
        notify.wait("READY", "1")
        run.wait_log(r"new ticket=", n=1)  # in the middle of the backlog
        t_term = time.monotonic()
        run.signal(signal.SIGTERM)
        rc = run.stop()
    assert rc == 0, run.log
    notify.wait("STOPPING", "1", after=t_term, timeout=1)
    assert "stopping: finishing the batch in hand" in run.log
    first = tickets(cfg)
    assert 1 <= len(first) <= n
    # every committed ticket's acknowledgement was either delivered or is still queued
    queued = json.loads(mailflow(cfg, "outbox", "list", "--status", "queued", "--json").stdout)
    time.sleep(0.2)
    assert len(acks(smtp_sink)) + len(queued) == len(first)
    # what was committed was also flagged on the server (commit, then flag)
    seen = sum(1 for f in dovecot_server.messages(a).values() if b"\\Seen" in f)
    assert seen == len(first)
    # the next start takes over where this one stopped: every mail once, every answer once
    with daemon(cfg, notify) as run2:
        run2.wait_log(r"new ticket=", n=n - len(first), timeout=60)
        assert smtp_sink.wait_for(n, timeout=30)
        wait_until(lambda: "0 queued" in mailflow(cfg, "status").stdout, 20, "outbox empty")
        assert run2.stop() == 0
    ts = tickets(cfg)
    assert len(ts) == n and len({t["subject"] for t in ts}) == n
    got = acks(smtp_sink)
    assert len(got) == n and all(len(v) == 1 for v in got.values()), got
    assert all(b"\\Seen" in f for f in dovecot_server.messages(a).values())


# ---- the watchdog decision (unit level) ----------------------------------------------------------------

def test_wedged_decision():
    now = 1000.0
    fresh = ("mailbox a", now - 0.2, 15.0, True)
    slow_step = ("mailbox b", now - 12.0, 15.0, True)  # inside a connect that may take 15 s
    stuck = ("mailbox c", now - 40.0, 15.0, True)
    dead = ("outbox sender", now, 15.0, False)
    assert wedged(now, [fresh, slow_step], floor=1.0) == []
    assert wedged(now, [fresh, stuck], floor=1.0) == ["mailbox c (no progress for 40s)"]
    assert wedged(now, [stuck], floor=60.0) == []  # half of a 120 s WatchdogSec is not over yet
    assert wedged(now, [fresh, dead], floor=1.0) == ["outbox sender (not running)"]


class _Thread:
    def __init__(self, alive: bool = True):
        self.alive = alive

    def is_alive(self) -> bool:
        return self.alive


def test_daemon_withholds_the_ping_while_a_loop_is_wedged(tmp_path, notify, monkeypatch, caplog):
    cfg = config_mod.from_dict(
        {"storage": {"data_dir": str(tmp_path / "data")},
         "mailbox": [{"name": "wedgy", "host": "127.0.0.1", "port": 1, "tls": "none", "timeout": 0.5}]},
        "test.toml", tmp_path)
    monkeypatch.setenv("NOTIFY_SOCKET", notify.path)
    d = Daemon(cfg, None)
    d.watchdog = 2.0
    d.threads = [_Thread()]
    d.sender.thread = _Thread()  # type: ignore[assignment]
    [w] = d.workers
    now = time.monotonic()
    w.beat, w.allowance, d.sender.beat = now, 3.0, now
    t0 = time.monotonic()
    assert d.check_alive(now)
    notify.wait("WATCHDOG", "1", after=t0, timeout=5)
    # the mailbox loop made no progress for longer than its step allows: no ping, and it says why
    t1 = time.monotonic()
    assert not d.check_alive(now + 3.5)
    assert not d.check_alive(now + 4.0)
    time.sleep(0.3)
    assert notify.count("WATCHDOG", since=t1) == 0
    assert "mailbox wedgy (no progress" in caplog.text and "withholding the watchdog ping" in caplog.text
    assert "WEDGED: mailbox wedgy" in d.status_line()
    # a dead mailbox thread is just as bad; progress again brings the pings back
    d.threads = [_Thread(alive=False)]
    assert not d.check_alive(now + 0.1)
    d.threads = [_Thread()]
    t2 = time.monotonic()
    assert d.check_alive(now + 0.1)
    notify.wait("WATCHDOG", "1", after=t2, timeout=5)


def test_worker_heartbeat_while_idle_and_when_wedged(tmp_path, dovecot_server, monkeypatch):
    """The real mailbox loop: idling in IDLE it beats about once a second; stuck in processing
    for longer than that step may take, the watchdog decision calls it wedged."""
    import mailflow.mailboxes as mailboxes
    from mailflow.daemon import load_all
    from mailflow.pipeline import Pipeline
    from mailflow.store import Store

    a, b = user(dovecot_server), user(dovecot_server)
    cfg = config_mod.from_dict({"storage": {"data_dir": str(tmp_path / "data")}}, "t.toml", tmp_path)
    pipe = Pipeline(cfg, Store(cfg.data_dir), *load_all(cfg))
    mb_a = dovecot_server.mailbox_config(a)
    mb_a.password.value = PASSWORD
    mb_b = dovecot_server.mailbox_config(b)
    mb_b.password.value = PASSWORD
    cfg.mailboxes = [mb_a, mb_b]
    release = threading.Event()
    real = pipe.process

    def process(items, **kw):
        if any(it.mailbox == b for it in items):
            release.wait(30)  # wedged in processing (a stuck rule engine, say)
        return real(items, **kw)

    monkeypatch.setattr(pipe, "process", process)
    monkeypatch.setattr(mailboxes, "PROCESS_ALLOWANCE", 1.0)
    wa, wb = MailboxWorker(mb_a, pipe), MailboxWorker(mb_b, pipe)
    stop = threading.Event()
    threads = [threading.Thread(target=w.run, args=(stop,), daemon=True) for w in (wa, wb)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: wa.settled and wb.settled and wa.step == "wait" and wb.step == "wait", 20, "idle")
        time.sleep(2.5)
        now = time.monotonic()
        loops = [(w.name, w.beat, w.allowance, True) for w in (wa, wb)]
        assert wedged(now, loops, floor=1.0) == []  # idling for 2.5 s, beating all along
        dovecot_server.append(b, make_mail(7, zh=False))
        wait_until(lambda: wb.step == "process", 20, "processing")
        time.sleep(2.0)
        now = time.monotonic()
        loops = [(w.name, w.beat, w.allowance, True) for w in (wa, wb)]
        assert [x.split(" ")[0] for x in wedged(now, loops, floor=1.0)] == [b]
        release.set()
        wait_until(lambda: wb.step == "wait", 20, "back to waiting")
        time.sleep(1.5)
        now = time.monotonic()
        assert wedged(now, [(w.name, w.beat, w.allowance, True) for w in (wa, wb)], floor=1.0) == []
    finally:
        release.set()
        stop.set()
        for t in threads:
            t.join(15)
    assert wa.state == wb.state == "stopped"


def test_flush_steps_never_overlap_a_batch():
    """Each step of a flush runs under the store lock, so it never sees a half-built batch."""
    import asyncio

    lock = threading.RLock()
    seen: list[bool] = []
    steps = []

    def owned() -> bool:  # is the lock held by this thread right now?
        return lock._is_owned()  # type: ignore[attr-defined]

    async def flush():
        for _ in range(3):
            seen.append(owned())
            await asyncio.sleep(0.01)
        seen.append(owned())
        return "done"

    async def main():
        return await _Stepped(flush(), lock, steps.append)

    assert asyncio.run(main()) == "done"
    assert seen == [True] * 4 and steps == ["lock", "step"] * 4
    assert not owned()

    async def cancelled():
        t = asyncio.ensure_future(_run_stepped(lock))
        await asyncio.sleep(0.015)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
    asyncio.run(cancelled())
    assert not owned()


async def _run_stepped(lock):
    import asyncio

    async def slow():
        try:
            await asyncio.sleep(10)
        finally:
            assert lock._is_owned()  # type: ignore[attr-defined]  # cleanup runs under the lock too

    return await _Stepped(slow(), lock, lambda _phase: None)
