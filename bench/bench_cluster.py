"""Two `mailflow run` daemons against one against the same backlog: does a second daemon help?

    python bench/bench_cluster.py --n 2000 --runs 3

A private PostgreSQL cluster, a throwaway Dovecot and the SMTP sink on loopback (as bench/run.py).
Each run gets a fresh database and two fresh IMAP users; the corpus (bench/corpus.py) is split
between the two mailboxes by customer, so a conversation stays in one mailbox. The daemons are
started first and left to share out their leases (one daemon: both mailboxes; two: one each); then
the whole backlog is COPYed from a staging folder into both INBOXes in one IMAP command each, and
the clock runs from the COPY until every ticket is committed and every acknowledgement accepted by
the sink. Runs alternate (one, two, one, two ...); the figures are medians.

What bounds it: the CPU seconds each process group used during the timed part (mailflow daemons,
the PostgreSQL server's processes, Dovecot's), read from /proc before and after, against the
wall time and the machine's cores.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import corpus  # noqa: E402
from bench.run import (  # noqa: E402
    PASSWORD,
    TimedSink,
    config_head,
    git_rev,
    machine,
    mailbox_toml,
    mailflow_env,
    smtp_toml,
)
from tests.support.dovecot import Dovecot  # noqa: E402
from tests.support.postgres import Postgres  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_of(pids: list[int]) -> dict[int, float]:
    """pid -> user + system CPU seconds of it (and its waited-for children)."""
    out = {}
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[pid] = sum(int(x) for x in f[11:15]) / TICK
    return out


def used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between the two readings (a process that started meanwhile: all of it;
    one that ended meanwhile is lost, so short-lived IMAP processes count low)."""
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


def pids_named(*names: str) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                if (d / "comm").read_text().strip() in names:
                    out.append(int(d.name))
    return out


def config(path: Path, data: Path, dsn: str, dv: Dovecot, users: list[str], sink: TimedSink) -> Path:
    path.write_text(config_head(data, dsn, storage="lease_seconds = 6\n", by="bench/bench_cluster.py")
                    + "".join(mailbox_toml(dv, u) for u in users) + smtp_toml(sink), encoding="utf-8")
    return path


def count(dsn: str) -> int:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as c:
        return c.execute("SELECT count(*) FROM tickets").fetchone()[0]


def holders(dsn: str) -> dict[str, str]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as c:
        return dict(c.execute("SELECT name, holder FROM leases WHERE expires_at > now()").fetchall())


class Run:
    def __init__(self, a: argparse.Namespace):
        self.a = a
        mails = corpus.build(a.n, a.seed)
        self.split: list[list[bytes]] = [[], []]
        for m in mails:
            self.split[zlib.crc32(m.sender.lower().encode()) % 2].append(m.raw)
        self.expected = sum(1 for m in mails if m.kind == "new")
        self.acks = self.expected
        a.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="cluster-", dir=a.out))
        self.dv = Dovecot(self.work / "dovecot", users={})
        self.sink = TimedSink()
        self.pg = Postgres(extra_conf="shared_preload_libraries = 'pg_stat_statements'" if a.statements else "")
        self.n_users = 0

    def start(self) -> None:
        self.dv.start()
        self.sink.start()
        self.pg.start()
        self.pg.make_template()

    def stop(self) -> None:
        for f in (self.pg.stop, self.sink.stop, self.dv.cleanup):
            with contextlib.suppress(Exception):
                f()
        shutil.rmtree(self.work, ignore_errors=True)

    def pg_pids(self) -> list[int]:
        """Our cluster's postmaster and its children (not another PostgreSQL on the machine)."""
        out = [self.pg.pid]
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == self.pg.pid:
                        out.append(int(d.name))
        return out

    def statements(self, dsn: str, top: int = 15) -> None:
        """The statements that took the server's time in this run (pg_stat_statements)."""
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            rows = c.execute("SELECT calls, total_exec_time, rows, left(regexp_replace(query, '\\s+', ' ', 'g'), 150) "
                             "FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = "
                             "current_database()) ORDER BY total_exec_time DESC LIMIT %s", (top,)).fetchall()
        for calls, ms, n, q in rows:
            print(f"  {ms:9.0f} ms {calls:7d} calls {n:8d} rows  {q}", file=sys.stderr)

    def _users(self) -> list[str]:
        out = []
        for part in self.split:
            self.n_users += 1
            u = f"c{self.n_users}"
            self.dv.add_user(u, PASSWORD)
            self.dv.append_many(u, part, folder="Staging")
            out.append(u)
        return out

    def once(self, daemons: int, i: int) -> dict:
        dsn = self.pg.new_database()
        users = self._users()
        cfg = config(self.work / f"r{i}.toml", self.work / f"data{i}", dsn, self.dv, users, self.sink)
        self.sink.clear()
        procs = []
        for d in range(daemons):
            log = open(self.work / f"r{i}-d{d}.log", "wb")
            procs.append(subprocess.Popen([sys.executable, "-m", "mailflow", "--config", str(cfg), "run"],
                                          env=mailflow_env(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
        try:
            end = time.monotonic() + 60
            while time.monotonic() < end:  # settled: every mailbox held, by `daemons` distinct daemons
                h = holders(dsn)
                mb = {v for k, v in h.items() if k.startswith("mailbox:")}
                if len([k for k in h if k.startswith("mailbox:")]) == 2 and len(mb) == daemons:
                    break
                time.sleep(0.2)
            else:
                raise RuntimeError(f"leases did not settle: {holders(dsn)}")
            pg_pids, dv_pids = self.pg_pids(), pids_named("dovecot", "imap", "imap-login")
            mf_pids = [p.pid for p in procs]
            c0 = (cpu_of(mf_pids), cpu_of(pg_pids), cpu_of(dv_pids))
            t0 = time.monotonic()
            for u in users:
                c = self.dv.client(u)
                try:
                    c.select_folder("Staging")
                    c.copy(c.search(["ALL"]), "INBOX")
                finally:
                    c.logout()
            deadline = t0 + 900
            while time.monotonic() < deadline:  # the sink first: counting tickets costs the server
                if self.sink.count() >= self.acks and count(dsn) >= self.expected:
                    break
                time.sleep(0.05)
            else:
                raise RuntimeError(f"run {i}: {count(dsn)} of {self.expected} tickets, {self.sink.count()} acks")
            wall = time.monotonic() - t0
            c1 = (cpu_of(mf_pids), cpu_of(self.pg_pids()), cpu_of(pids_named("dovecot", "imap", "imap-login")))
            rss = [int(line.split()[1]) for p in mf_pids for line in Path(f"/proc/{p}/status").read_text().splitlines()
                   if line.startswith("VmHWM:")]
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
        if self.a.statements:
            self.statements(dsn)
        return {"daemons": daemons, "wall": wall, "msgs": self.a.n, "msg_s": self.a.n / wall,
                "tickets": count(dsn), "cpu_mailflow": used(c0[0], c1[0]), "cpu_pg": used(c0[1], c1[1]),
                "cpu_dovecot": used(c0[2], c1[2]), "rss_mb": max(rss) / 1024 if rss else 0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="mails in the backlog, both mailboxes together")
    ap.add_argument("--runs", type=int, default=3, help="runs of each (interleaved)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    ap.add_argument("--statements", action="store_true",
                    help="print the statements that took the database's time in each run (pg_stat_statements)")
    a = ap.parse_args(argv)
    r = Run(a)
    r.start()
    res: dict[int, list[dict]] = {1: [], 2: []}
    try:
        for _ in range(a.runs):
            for d in (1, 2):
                x = r.once(d, len(res[1]) + len(res[2]))
                res[d].append(x)
                print(f"[{time.strftime('%H:%M:%S')}] {d} daemon(s): {x['msg_s']:.1f} msg/s ({x['wall']:.1f} s); "
                      f"CPU s mailflow {x['cpu_mailflow']:.1f}, postgres {x['cpu_pg']:.1f}, dovecot "
                      f"{x['cpu_dovecot']:.1f}; peak RSS {x['rss_mb']:.0f} MB", file=sys.stderr, flush=True)
    finally:
        r.stop()
    m = machine()
    one = statistics.median(x["msg_s"] for x in res[1])
    two = statistics.median(x["msg_s"] for x in res[2])

    def share(d: int, k: str) -> float:
        return statistics.median(x[k] / x["wall"] for x in res[d])

    print(f"| {time.strftime('%Y-%m-%d')} | {git_rev()} | {m['cores']} cores, load {m['loadavg']:.1f} | {a.n} | "
          f"{a.runs} | {one:.1f} | {two:.1f} | {two / one:.2f}x | "
          + " | ".join(f"{share(d, 'cpu_mailflow'):.2f} / {share(d, 'cpu_pg'):.2f} / {share(d, 'cpu_dovecot'):.2f}"
                       for d in (1, 2)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
