"""Outages while the daemon runs: IMAP servers that go away (stopped, restarted, a session kicked
mid-IDLE, a server that never answers) and SMTP servers that refuse or time out. Each mailbox
retries on its own, the others keep working, the state shows in STATUS=, the watchdog keeps
pinging, and in the end every mail made exactly one ticket and every answer arrived exactly once.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.integration.helpers import mailflow, make_mail, tickets
from tests.integration.test_daemon import (
    PASSWORD,
    acks,
    config,
    daemon,
    mailbox_toml,
    notify,  # noqa: F401 - fixture
    user,
    wait_until,
)
from tests.support.dovecot import Dovecot

pytestmark = pytest.mark.usefixtures("backend")  # every test on TinyDB and on PostgreSQL


class Silent:
    """A TCP server on loopback that accepts connections and never says a word."""

    def __init__(self, port: int = 0):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._stop = False
        self._t = threading.Thread(target=self._accept, daemon=True)
        self._t.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.conns.append(c)

    def close(self) -> None:
        self._stop = True
        self._t.join(2)
        for c in self.conns:
            c.close()
        self.sock.close()


def _exactly_once(cfg: Path, sink, n: int) -> None:
    ts = tickets(cfg)
    assert len(ts) == n, [t["subject"] for t in ts]
    assert len({t["subject"] for t in ts}) == n
    got = acks(sink)
    assert sorted(got) == sorted(t["id"] for t in ts), (sorted(got), sorted(t["id"] for t in ts))
    dup = {k: v for k, v in got.items() if len(v) != 1}
    assert not dup, dup


def test_imap_server_stopped_restarted_and_kicked(tmp_path, dovecot_server, smtp_sink, notify):  # noqa: F811
    """Mailbox `a` lives on a private Dovecot that is kicked mid-IDLE, stopped (mail keeps arriving
    into its Maildir) and started again; mailbox `b` on another server never notices."""
    root = Path(tempfile.mkdtemp(prefix="mfdv", dir="/tmp"))
    dv = Dovecot(root, users={"alpha": PASSWORD})
    dv.start()
    b = user(dovecot_server)
    try:
        cfg = config(tmp_path, [mailbox_toml("alpha", dv.port, timeout=2),
                                mailbox_toml(b, dovecot_server.port)], smtp_sink.port)
        sent = 0

        def mail(to: str, via_maildir: bool = False) -> None:
            nonlocal sent
            sent += 1
            raw = make_mail(sent, subject=f"fault {sent} for {to}", zh=bool(sent % 2))
            if via_maildir:
                dv.deliver("alpha", [raw])
            elif to == "alpha":
                dv.append("alpha", raw)
            else:
                dovecot_server.append(b, raw)

        with daemon(cfg, notify) as run:
            notify.wait("READY", "1")
            mail("alpha")
            mail(b)
            run.wait_log(r"new ticket=", n=2)

            # dropped mid-IDLE: the admin kicks the session; the server says BYE and closes
            time.sleep(0.3)
            dv.kick("alpha")
            run.wait_log(r"mailbox=alpha .*(closed the connection|connection lost).*reconnecting")
            mail("alpha")
            run.wait_log(r"new ticket=", n=3)

            # the server goes away (refused while it is down); mail keeps arriving on disk
            dv.stop()
            run.wait_log(r"mailbox=alpha .*reconnecting", n=2)
            for _ in range(3):
                mail("alpha", via_maildir=True)
            notify.wait("STATUS", match="alpha retrying", timeout=15)
            # the other mailbox keeps working, and so does the watchdog
            t0 = time.monotonic()
            mail(b)
            run.wait_log(r"new ticket=CW\d+ mailbox=" + re.escape(b), n=2)
            run.wait_log(r"mailbox=alpha .*refused.*reconnecting")
            st = json.loads(mailflow(cfg, "status", "--json").stdout)
            alpha = next(m for m in st["mailboxes"] if m["name"] == "alpha")
            assert "refused" in (alpha["last_error"] or "") or "lost" in (alpha["last_error"] or ""), alpha
            notify.wait("WATCHDOG", "1", after=t0 + 1.0, timeout=10)
            assert "withholding" not in run.log

            # back again: alpha catches up on its own
            dv.start()
            run.wait_log(r"new ticket=", n=sent, timeout=30)
            notify.wait("STATUS", match=r"^2 mailboxes, \d+ open tickets", after=time.monotonic(), timeout=15)
            assert smtp_sink.wait_for(sent, timeout=20)
            assert run.stop() == 0
        assert "withholding" not in run.log and "Traceback" not in run.log
        _exactly_once(cfg, smtp_sink, sent)
        assert all(b"\\Seen" in f for f in dv.messages("alpha").values())
        assert len(dv.messages("alpha")) == 5
    finally:
        dv.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def test_smtp_refusing_and_timing_out(tmp_path, dovecot_server, smtp_sink, notify):  # noqa: F811
    """SMTP refuses connections, then accepts them and never answers: tickets keep being made, the
    mail waits in the outbox, STATUS says so, the watchdog keeps pinging; once the server is back
    every answer arrives exactly once."""
    a = user(dovecot_server)
    cfg = config(tmp_path, [mailbox_toml(a, dovecot_server.port)], smtp_sink.port, smtp_timeout=1)
    port = smtp_sink.port
    n = 0

    def mail() -> None:
        nonlocal n
        n += 1
        dovecot_server.append(a, make_mail(n, subject=f"smtp fault {n}", zh=bool(n % 2)))

    with daemon(cfg, notify) as run:
        notify.wait("READY", "1")
        mail()
        assert smtp_sink.wait_for(1, timeout=20)

        # refused
        smtp_sink.stop()
        mail()
        mail()
        run.wait_log(r"new ticket=", n=3)
        run.wait_log(r"smtp 127\.0\.0\.1:\d+ cannot connect")
        notify.wait("STATUS", match=r"outbox [1-9]\d* \(smtp retrying\)", timeout=20)

        # timing out: something accepts the connection and never greets
        silent = Silent(port)
        try:
            mail()
            run.wait_log(r"new ticket=", n=4)
            run.wait_log(r"smtp 127\.0\.0\.1:\d+ cannot connect.*(imed out|imeout)", timeout=20)
            t0 = time.monotonic()
            notify.wait("WATCHDOG", "1", after=t0 + 1.5, timeout=10)
            assert notify.count("WATCHDOG", since=t0) >= 3
            assert "withholding" not in run.log
        finally:
            silent.close()

        # back: everything queued goes out, once
        smtp_sink.start()
        assert smtp_sink.port == port
        mail()
        assert smtp_sink.wait_for(n, timeout=30), len(smtp_sink.messages)
        wait_until(lambda: "outbox 0" in (notify.statuses()[-1:] or [""])[0], 20, "outbox 0 in STATUS")
        assert run.stop() == 0
    assert "Traceback" not in run.log
    time.sleep(0.2)
    _exactly_once(cfg, smtp_sink, n)
