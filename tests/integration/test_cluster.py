"""Several `mailflow run` daemons on one PostgreSQL database and one Dovecot (issue 16's cluster
operation): mailboxes shared out by lease, the outbox drained by all without a row sent twice, one
scheduler across the cluster, `status` showing who holds what, and failover after kill -9."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from tests.integration.helpers import REPO, mailflow, make_mail, new_user, parsed

LEASE = 3.0  # seconds: a dead daemon's mailboxes are served again within this


def _config(tmp: Path, dsn: str, dovecot, users: list[str], smtp=None, lease: float = LEASE,
            batch_size: int = 50, extra: str = "") -> Path:
    parts = [f'[storage]\ndata_dir = "{tmp / "data"}"\nbackend = "postgresql"\ndsn = "{dsn}"\n'
             f'lease_seconds = {lease}\n', '[company]\nname = "Test Co."\n',
             '[outbound]\nbackoff_initial = 0.01\nbackoff_max = 0.05\n']
    for u in users:
        parts.append(f'[[mailbox]]\nname = "{u}"\nhost = "127.0.0.1"\nport = {dovecot.port}\ntls = "none"\n'
                     f'user = "{u}"\npassword = "secret"\naddress = "{u}@support.example"\nafter = "seen"\n'
                     f'batch_size = {batch_size}\ntimeout = 10\npoll_interval = 1\n')
    if smtp is not None:
        parts.append(f'[smtp]\nhost = "127.0.0.1"\nport = {smtp.port}\ntls = "none"\ntimeout = 5\n')
    parts.append(extra)
    p = tmp / "mailflow.toml"
    p.write_text("\n".join(parts), encoding="utf-8")
    return p


class Daemon:
    """One `mailflow run` subprocess, its log in a file."""

    def __init__(self, cfg: Path, tag: str, host: str | None = None):
        self.cfg, self.tag, self.host = cfg, tag, host  # host: as if on a machine of that name
        self.logs: list[Path] = []
        self.p: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        log = self.cfg.parent / f"daemon-{self.tag}-{len(self.logs)}.log"
        self.logs.append(log)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        env.pop("NOTIFY_SOCKET", None)
        if self.host:
            env["MAILFLOW_HOST_ID"] = self.host
        with open(log, "wb") as f:
            self.p = subprocess.Popen([sys.executable, "-m", "mailflow", "--config", str(self.cfg),
                                       "--log-level", "info", "run"], env=env, cwd=REPO,
                                      stdout=f, stderr=subprocess.STDOUT)

    def kill9(self) -> None:
        self.p.send_signal(signal.SIGKILL)
        self.p.wait(10)

    def stop(self) -> int:
        # a daemon restarted a moment ago may still be importing (SIGTERM before its handler is
        # installed just ends it): let it reach "ready" first
        end = time.monotonic() + 30
        while self.p.poll() is None and "ready:" not in self.logs[-1].read_text(errors="replace") \
                and time.monotonic() < end:
            time.sleep(0.1)
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                return self.p.wait(40)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
                return -9
        return self.p.returncode

    @property
    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())


def _q(dsn: str, sql: str, args=None) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as c:
        return c.execute(sql, args).fetchall()


def _holders(dsn: str) -> dict[str, str]:
    return dict(_q(dsn, "SELECT name, holder FROM leases WHERE expires_at > now()"))


def _wait(cond, timeout: float, step: float = 0.2, what: str = "") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what or cond}")


def _ticket_count(dsn: str) -> int:
    return _q(dsn, "SELECT count(*) FROM tickets")[0][0]


def test_a_dead_daemon_of_this_host_is_taken_over_at_once(tmp_path, pg_dsn, dovecot_server):
    """kill -9 of a daemon (or of `run --once`): on the same host its leases end at the next check of
    whoever looks, not after lease_seconds; `run --once` right after the crash goes on."""
    u = new_user(dovecot_server, "k")
    cfg = _config(tmp_path, pg_dsn, dovecot_server, [u], lease=60)
    a = Daemon(cfg, "a")
    try:
        _wait(lambda: f"mailbox:{u}" in _holders(pg_dsn), 30, what="a holds the mailbox")
        a.kill9()
        dovecot_server.append(u, make_mail(1, subject="after the crash"))
        t0 = time.monotonic()
        r = mailflow(cfg, "run", "--once")
        assert "1 new tickets" in r.stdout, r.stdout
        assert time.monotonic() - t0 < 30 and "is gone" in r.stderr, r.stderr
    finally:
        a.stop()


def _pids(holders: dict[str, str]) -> dict[str, int]:
    """lease name -> pid of its holder (daemon ids are host:pid:random)."""
    return {n: int(h.split(":")[-2]) for n, h in holders.items()}


def test_two_daemons_share_mailboxes_outbox_and_one_scheduler(tmp_path, pg_dsn, dovecot_server, smtp_sink):
    users = [new_user(dovecot_server, "c"), new_user(dovecot_server, "c")]
    cfg = _config(tmp_path, pg_dsn, dovecot_server, users, smtp_sink)
    a, b = Daemon(cfg, "a"), Daemon(cfg, "b")
    try:
        # each daemon ends up with one mailbox (the one that started first hands one back)
        _wait(lambda: len({h for n, h in _holders(pg_dsn).items() if n.startswith("mailbox:")}) == 2, 30,
              what="the two mailboxes held by two daemons")
        hold = _holders(pg_dsn)
        assert {_pids(hold)[f"mailbox:{u}"] for u in users} == {a.p.pid, b.p.pid}
        assert _pids(hold)["scheduler"] in (a.p.pid, b.p.pid)
        n = 60
        for j, u in enumerate(users):
            dovecot_server.append_many(u, [make_mail(1000 * j + i, subject=f"cluster {j}-{i}") for i in range(n)])
        _wait(lambda: _ticket_count(pg_dsn) == 2 * n, 90, what=f"{2 * n} tickets")
        assert smtp_sink.wait_for(2 * n, timeout=60)
        time.sleep(1.0)
        ids = Counter(parsed(d)["Message-ID"] for _f, _r, d in smtp_sink.messages)
        assert len(ids) == 2 * n and max(ids.values()) == 1, ids.most_common(3)  # one ack each, none twice
        sent_by = Counter(_q(pg_dsn, "SELECT doc->>'status' FROM outbox"))
        assert sent_by == Counter({("sent",): 2 * n}), sent_by
        # both daemons worked, each its own mailbox
        assert "new ticket=" in a.log and "new ticket=" in b.log, (a.log[-2000:], b.log[-2000:])
        st = mailflow(cfg, "status").stdout
        assert "cluster: 2 daemon(s) live" in st, st
        for u in users:
            assert re.search(rf"mailbox:{u}: held by \S+:({a.p.pid}|{b.p.pid}):", st), st
        assert re.search(r"scheduler: held by ", st), st
        js = json.loads(mailflow(cfg, "status", "--json").stdout)
        assert {x["name"] for x in js["leases"]} >= {f"mailbox:{u}" for u in users} | {"scheduler"}
        # run --once while both daemons work everything: it refuses, as with TinyDB
        r = mailflow(cfg, "run", "--once", check=False)
        assert r.returncode == 1 and "works every mailbox" in r.stderr, r.stderr
    finally:
        ra, rb = a.stop(), b.stop()
    assert ra == 0 and rb == 0, (a.log[-3000:], b.log[-3000:])
    # a clean stop hands every lease back at once
    assert _holders(pg_dsn) == {}


def test_a_stopped_daemon_hands_over_at_once_and_a_lost_lease_fences_the_batch(tmp_path, pg_dsn, dovecot_server):
    """SIGTERM: the other daemon takes the mailbox at its next check. And a batch fenced with a
    lease that moved on commits nothing (BatchAborted), however late it runs."""
    from mailflow import config
    from mailflow.storeapi import BatchAborted, open_store

    u = new_user(dovecot_server, "h")
    cfg = _config(tmp_path, pg_dsn, dovecot_server, [u], lease=30)
    a = Daemon(cfg, "a")
    try:
        _wait(lambda: f"mailbox:{u}" in _holders(pg_dsn), 30, what="a holds the mailbox")
        b = Daemon(cfg, "b")
        try:
            _wait(lambda: len([n for n in _holders(pg_dsn) if n.startswith("daemon:")]) == 2, 30,
                  what="b joined")
            assert _pids(_holders(pg_dsn))[f"mailbox:{u}"] == a.p.pid  # one mailbox: a keeps it
            t0 = time.monotonic()
            assert a.stop() == 0
            _wait(lambda: _pids(_holders(pg_dsn)).get(f"mailbox:{u}") == b.p.pid, 15, what="b takes over")
            assert time.monotonic() - t0 < 15  # not the 30 s lease: a handed it back
            dovecot_server.append(u, make_mail(1, subject="after the hand-over"))
            _wait(lambda: _ticket_count(pg_dsn) == 1, 30, what="b serves the mailbox")
        finally:
            b.stop()
    finally:
        a.stop()
    s = open_store(config.load(str(cfg)))
    try:
        token = s.lease_acquire(f"mailbox:{u}", "me", 30)
        assert token is not None
        with pytest.raises(BatchAborted):
            with s.batch():
                s.fence(f"mailbox:{u}", "me", token - 1)  # an older holder's token
        assert s.lease_acquire(f"mailbox:{u}", "someone else", 30) is None  # held: not taken
        with s.batch():
            s.fence(f"mailbox:{u}", "me", token)
            s.set_checkpoint(u, fenced=True)
        assert s.checkpoint(u)["fenced"] is True
    finally:
        s.close()


def _failover_mail(n_new: int, n_replies: int, users: list[str]) -> dict[str, list[bytes]]:
    """n_new new requests and n_replies replies that quote their request's subject ticket-less: the
    replies thread by In-Reply-To onto the customer's mail (Message-ID) once its ticket exists."""
    per: dict[str, list[bytes]] = {u: [] for u in users}
    for i in range(n_new):
        per[users[i % len(users)]].append(make_mail(i, sender=f"fo{i}@customer.example", subject=f"failover {i}"))
    for j in range(n_replies):
        i = j * (n_new // max(1, n_replies))
        mid = re.search(rb"Message-ID: (<[^>]+>)", make_mail(i, sender=f"fo{i}@customer.example",
                                                             subject=f"failover {i}")).group(1).decode()
        per[users[i % len(users)]].append(make_mail(
            100000 + j, sender=f"fo{i}@customer.example", subject=f"Re: failover {i}",
            body="Any news? I am still waiting for an answer.",
            extra_headers=f"In-Reply-To: {mid}\r\nReferences: {mid}\r\n"))
    return per


def test_failover_kill_9_two_daemons_1000_mails(tmp_path, pg_dsn, dovecot_server, smtp_sink):
    """Issue 16's failover check: two daemons, one PostgreSQL, one Dovecot, a backlog of 1,000 mails
    (900 new requests and 100 replies); a daemon killed with -9 at random moments, 6 times,
    restarted each time: exactly one ticket per new mail, every reply threaded, no outbox row sent
    twice except inside the crash window (a mail the SMTP server accepted just before the kill, at
    most one per kill), and every mailbox served again within the lease time after each kill."""
    users = [new_user(dovecot_server, "f"), new_user(dovecot_server, "f")]
    cfg = _config(tmp_path, pg_dsn, dovecot_server, users, smtp_sink, batch_size=25)
    n_new, n_replies = 900, 100
    per = _failover_mail(n_new, n_replies, users)
    # as on two machines: neither can see the other's process die, so each kill is taken over only
    # when the victim's leases run out (a restart on its own "machine" ends its predecessor's at once)
    daemons = [Daemon(cfg, "a", host="host-a"), Daemon(cfg, "b", host="host-b")]
    rng = random.Random(16)
    kills, takeovers = 0, []
    try:
        _wait(lambda: len({h for n, h in _holders(pg_dsn).items() if n.startswith("mailbox:")}) == 2, 30,
              what="two daemons, one mailbox each")
        # the new requests first, then the replies (each thread's request is older than its reply)
        for u in users:
            dovecot_server.append_many(u, [m for m in per[u] if b"Re: failover" not in m])
        for u in users:
            dovecot_server.append_many(u, [m for m in per[u] if b"Re: failover" in m])
        while kills < 6:
            time.sleep(rng.uniform(0.5, 2.5))
            hold = _pids(_holders(pg_dsn))
            mb = [n for n in hold if n.startswith("mailbox:")]
            if not mb:
                continue
            victim_pid = hold[rng.choice(mb)]
            victim = next(d for d in daemons if d.p.pid == victim_pid)
            lost = [n for n, pid in hold.items() if pid == victim_pid and n.startswith("mailbox:")]
            victim.kill9()
            t_kill = time.monotonic()
            kills += 1
            _wait(lambda lost=lost, pid=victim_pid: all(
                (p := _pids(_holders(pg_dsn)).get(n)) is not None and p != pid for n in lost),
                LEASE + 5, step=0.05, what=f"{lost} taken over after kill {kills}")
            takeovers.append(time.monotonic() - t_kill)
            victim.start()
        _wait(lambda: _ticket_count(pg_dsn) >= n_new and _q(pg_dsn, "SELECT count(*) FROM messages WHERE "
                                                              "direction = 'in'")[0][0] >= n_new + n_replies,
              240, step=0.5, what="every mail processed")
        _wait(lambda: _q(pg_dsn, "SELECT count(*) FROM outbox WHERE status = 'queued'")[0][0] == 0, 120,
              step=0.5, what="the outbox drained")
    finally:
        codes = [d.stop() for d in daemons]
    logs = "\n".join(d.log for d in daemons)
    assert codes == [0, 0], logs[-5000:]
    assert "Traceback" not in logs, logs[logs.index("Traceback") - 2000:][:6000]
    # exactly one ticket per new mail, every reply threaded onto its request's ticket
    rows = _q(pg_dsn, "SELECT doc->>'subject', count(*) FROM tickets GROUP BY 1")
    subjects = Counter({s: c for s, c in rows})
    assert len(rows) == n_new and max(subjects.values()) == 1, subjects.most_common(3)
    threaded = _q(pg_dsn, "SELECT count(*) FROM messages m JOIN tickets t ON t.id = m.ticket_id WHERE "
                          "m.direction = 'in' AND m.doc->>'subject' LIKE 'Re: failover %%' AND "
                          "t.doc->>'subject' = substr(m.doc->>'subject', 5)")[0][0]
    assert threaded == n_replies
    # every mailbox served again within the lease time of each kill
    assert len(takeovers) == 6 and max(takeovers) <= LEASE + 0.5, takeovers
    # one mail per outbox row, but for at most one in flight per kill
    sent = Counter(parsed(d)["Message-ID"] for _f, _r, d in smtp_sink.messages)
    rows_n = _q(pg_dsn, "SELECT count(*) FROM outbox")[0][0]
    assert len(sent) == rows_n, (len(sent), rows_n)
    twice = sum(c - 1 for c in sent.values())
    assert twice <= kills, sent.most_common(5)
    print(f"failover: {kills} kills, takeover {min(takeovers):.2f}-{max(takeovers):.2f}s, "
          f"{twice} mail(s) sent twice, {rows_n} outbox rows")


def test_timers_fire_once_across_processes_that_run_at_the_same_moment(tmp_path, pg_dsn, dovecot_server,
                                                                       smtp_sink, monkeypatch):
    """Three `run --once` at the same `--now` on one database: whichever holds the scheduler lease
    runs the timers, the others leave them (and the mailbox) alone: each reminder and escalation
    reaches its recipient once."""
    from tests.integration import helpers
    from tests.integration.lifecycle_kit import Scenario

    monkeypatch.setattr(helpers, "PG_DSN", pg_dsn)
    sc = Scenario(tmp_path, dovecot_server, smtp_sink)
    n = 12
    for i in range(n):
        sc.customer(f"t{i}@customer.example", f"系统报错 {i}", f"导出报表时一直报错，无法导出（第{i}次）。")
    sc.run("2026-11-23T10:00+08:00")
    assert len([t for t in sc.tickets() if t["priority"] == "high"]) == n
    sc.mails()  # the acknowledgements and assignment mail
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for now, template in (("2026-11-23T13:15+08:00", "sla_reminder"), ("2026-11-23T14:05+08:00", "escalation")):
        ps = [subprocess.Popen([sys.executable, "-m", "mailflow", "--config", str(sc.cfg), "--now", now, "run",
                                "--once"], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
              for _ in range(3)]
        outs = [p.communicate(timeout=120)[0].decode() for p in ps]
        assert all(p.returncode in (0, 1) for p in ps), outs
        time.sleep(0.5)
        got = Counter(str(m["X-Mailflow-Template"]) for m in sc.mails())
        assert got == Counter({template: n}), (got, outs)
