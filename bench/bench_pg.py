"""Issue 16's benchmark: the 1M-tickets-a-year data set on PostgreSQL.

    python bench/bench_pg.py [--n 1000] [--runs 3] [--cli-runs 5] [--skip-backlog] [--skip-cli]

1. A private cluster (tests/support/postgres.py's settings, tuned for a bulk load) in
   `--out/pg-team-1m-v2/` (default bench/out/), kept: a rerun starts it on its existing directory
   (`pg_ctl start`) and skips the load.
2. The load: `mailflow db migrate --from tinydb --to postgresql` from the TinyDB team data set
   (bench/scale.py's 1M-ticket team, `--data`, default ../data/bench/out/team-1m-v2/data; made by
   `python -m bench.scale team-1m` if missing), timed, into database `team1m`; then
   `mailflow db upgrade` (the migrations after 1, on a full database), timed.
3. Backlog: bench/run.py's corpus of N mails through a throwaway Dovecot and the aiosmtpd sink,
   `mailflow run --once`, per run i against (a) a fresh empty database and (b) the 1M database,
   with corpus seed = seed + i for both (the 1M database keeps what each run adds, so every run
   needs new Message-IDs), alternating the order; checked like run.py (one ticket and one
   acknowledgement per new mail, none quarantined). A first, unmeasured run against the 1M
   database lets the scheduler catch up on the data set's timers (it was generated for
   2026-11-23). Reported: msg/s of each, the 1M share of empty (per run, then the median), peak RSS.
4. CLI: every command a user runs, against the 1M database, `--cli-runs` times each after one warm-up:
   wall time of the whole process (interpreter start-up included), the median and the maximum.

`--daemons 2` is the hook for the two-daemon scaling figure (not implemented here: cluster
operation is part 2's).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import corpus  # noqa: E402
from bench.run import (  # noqa: E402
    BenchError,
    TimedSink,
    config_head,
    fill_mailbox,
    machine,
    mailbox_toml,
    mailflow_env,
    run_measured,
    smtp_toml,
)
from tests.support.dovecot import Dovecot  # noqa: E402
from tests.support.postgres import Postgres, find_bin  # noqa: E402

DB = "team1m"
DEFAULT_DATA = REPO.parent / "data" / "bench" / "out" / "team-1m-v2" / "data"

# a bulk load and then a small server's settings; fsync off as in the test cluster (the figure
# compares two databases of the same cluster)
CONF = ("shared_buffers = 512MB\nmaintenance_work_mem = 512MB\nwork_mem = 16MB\nmax_wal_size = 8GB\n"
        "checkpoint_timeout = 30min\nwal_level = minimal\nmax_wal_senders = 0\neffective_cache_size = 4GB\n")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class KeptPostgres(Postgres):
    """A cluster whose directory stays: started on it if it exists, stopped without removing it."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        if (self.data / "PG_VERSION").exists():
            self.sock.mkdir(parents=True, exist_ok=True)
            if self.as_user is not None:
                os.chown(self.sock, *self.as_user)
            r = self._run([find_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "300",
                           "-o", f"-p {self.port} -k {self.sock}", "start"])
            if r.returncode != 0:
                raise RuntimeError(f"pg_ctl start failed: {r.stderr}")
            self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
            return
        super().start()
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(CONF)
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.pid is None:
            return
        self._run([find_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "300", "stop"])
        self.pid = None


def write_config(path: Path, data_dir: Path, dsn: str, dv: Dovecot | None = None, user: str = "",
                 sink: TimedSink | None = None, mailbox: str = "bench", batch_size: int = 100) -> Path:
    text = config_head(data_dir, dsn, by="bench/bench_pg.py")
    if dv is not None:
        text += mailbox_toml(dv, user, mailbox, batch_size) + smtp_toml(sink)
    path.write_text(text, encoding="utf-8")
    return path


def mailflow(cfg: Path, *args: str, timeout: float = 3600) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    cmd = [sys.executable, "-m", "mailflow", "--config", str(cfg), *args]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=mailflow_env(), cwd=REPO, timeout=timeout)
    except subprocess.TimeoutExpired:
        p = subprocess.CompletedProcess(cmd, -9, "", f"killed after {timeout:.0f} s")
    return time.perf_counter() - t, p


# ---- the load -------------------------------------------------------------------------------------

def ensure_loaded(pg: KeptPostgres, data: Path, work: Path) -> dict:
    """The 1M database, loaded once; the figures of the load (from its marker file on a rerun)."""
    import psycopg

    marker = pg.root / "loaded.json"
    if marker.exists():
        return json.loads(marker.read_text())
    if not (data / "mailflow.json").exists():
        raise BenchError(f"no TinyDB data set in {data}: make it with `python -m bench.scale team-1m`")
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {DB}")
        c.execute(f"CREATE DATABASE {DB}")
    cfg = write_config(work / "migrate.toml", data, pg.dsn(DB))
    # migration 1 only, as an installation migrating from TinyDB with the first PostgreSQL release
    from mailflow import pg_schema

    with psycopg.connect(pg.dsn(DB), autocommit=True) as c:
        c.execute("CREATE TABLE schema_version (version integer PRIMARY KEY, applied_at timestamptz NOT NULL "
                  "DEFAULT now(), mailflow text)")
        c.execute(pg_schema.MIGRATIONS[0])
        c.execute("INSERT INTO schema_version (version, mailflow) VALUES (1, 'bench')")
    figures: dict = {}
    if pg_schema.VERSION > 1:
        # migrate checks the schema is current: an upgrade first (on the empty database)...
        secs, p = mailflow(cfg, "db", "upgrade")
        if p.returncode:
            raise BenchError(f"db upgrade: {p.stderr}")
    log("db migrate --from tinydb --to postgresql (the 1M data set) ...")
    t = time.perf_counter()
    with open(work / "migrate.log", "w") as out:
        p = subprocess.run([sys.executable, "-m", "mailflow", "--config", str(cfg), "db", "migrate", "--from",
                            "tinydb", "--to", "postgresql"], stdout=out, stderr=subprocess.STDOUT,
                           env=mailflow_env(), cwd=REPO, timeout=6 * 3600)
    figures["migrate_s"] = time.perf_counter() - t
    text = (work / "migrate.log").read_text()
    if p.returncode:
        raise BenchError(f"db migrate exited {p.returncode}:\n{text[-3000:]}")
    figures["migrate_out"] = text.strip().splitlines()[-8:]
    log(f"migrated in {figures['migrate_s']:.0f} s")
    with psycopg.connect(pg.dsn(DB), autocommit=True) as c:
        figures["db_size"] = c.execute("SELECT pg_size_pretty(pg_database_size(current_database()))").fetchone()[0]
        figures["counts"] = dict(zip(("tickets", "archived", "messages"), c.execute(
            "SELECT (SELECT count(*) FROM tickets), (SELECT count(*) FROM tickets WHERE archived), "
            "(SELECT count(*) FROM messages)").fetchone(), strict=True))
    marker.write_text(json.dumps(figures, indent=1))
    return figures


def upgrade(pg: KeptPostgres, work: Path) -> dict:
    """`mailflow db upgrade` on the loaded database (the migrations after 1), timed."""
    cfg = write_config(work / "upgrade.toml", work / "upgrade-data", pg.dsn(DB))
    import psycopg

    secs, p = mailflow(cfg, "db", "upgrade")
    if p.returncode:
        raise BenchError(f"db upgrade: {p.stdout}{p.stderr}")
    with psycopg.connect(pg.dsn(DB), autocommit=True) as c:  # what each search index costs on disk
        sizes = dict(c.execute("SELECT indexrelname, pg_size_pretty(pg_relation_size(indexrelid)) FROM "
                               "pg_stat_user_indexes WHERE relname IN ('tickets', 'messages') ORDER BY 1").fetchall())
        db_size = c.execute("SELECT pg_size_pretty(pg_database_size(current_database()))").fetchone()[0]
    return {"upgrade_s": secs, "upgrade_out": p.stdout.strip(), "index_sizes": sizes, "db_size": db_size}


# ---- backlog --------------------------------------------------------------------------------------

def _run_tickets(dsn: str, mailbox: str) -> dict[str, str]:
    """id -> customer of the tickets a run made (each run has a mailbox of its own)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as c:
        return dict(c.execute("SELECT id, customer_email FROM tickets WHERE NOT archived AND doc->>'mailbox' = %s",
                              (mailbox,)).fetchall())


def _quarantined(dsn: str) -> int:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as c:
        return c.execute("SELECT count(*) FROM quarantine WHERE status = 'held'").fetchone()[0]


def _check_acks(sink: TimedSink, made: dict[str, str]) -> int:
    """One acknowledgement per ticket the run made, to its customer; mail about other tickets (the
    1M data set's own timers firing) is counted, not failed. Returns that count."""
    import email
    from email import policy

    got: Counter = Counter()
    other = 0
    for _f, rcpts, data in list(sink.messages):
        tid = email.message_from_bytes(data, policy=policy.compat32).get("X-Mailflow-Ticket", "")
        if tid not in made:
            other += 1
            continue
        got[tid] += 1
        if [r.lower() for r in rcpts] != [made[tid]]:
            raise BenchError(f"acknowledgement of {tid} went to {rcpts}, not {made[tid]}")
    if set(got) != set(made) or any(v != 1 for v in got.values()):
        raise BenchError(f"{sum(got.values())} acknowledgements for {len(got)} of {len(made)} tickets")
    return other


def backlog(pg: KeptPostgres, a: argparse.Namespace, work: Path) -> dict:
    """Run i (0: warm-up on the 1M database only): seed + i's corpus into the empty database and
    into the 1M one, in alternating order; see the module doc."""
    import psycopg

    from mailflow import pg_schema

    dv = Dovecot(work / "dovecot", users={})
    sink = TimedSink()
    dv.start()
    sink.start()
    runs: list[dict] = []
    try:
        for i in range(0 if a.warmup else 1, a.runs + 1):
            mails = corpus.build(a.n, a.seed + i)
            raws = [m.raw for m in mails]
            expected = corpus.counts(mails)["new"]
            res: dict = {"run": i, "seed": a.seed + i}
            for which in (["1m"] if i == 0 else ["empty", "1m"] if i % 2 else ["1m", "empty"]):
                user, mailbox = f"{which}{i}", f"bench{a.seed + i}"  # a rerun (new seeds) counts only its own
                fill_mailbox(dv, user, raws)
                if which == "1m":
                    dsn = pg.dsn(DB)
                else:
                    name = f"empty{i}"
                    with psycopg.connect(pg.dsn(), autocommit=True) as c:
                        c.execute(f"DROP DATABASE IF EXISTS {name}")
                        c.execute(f"CREATE DATABASE {name}")
                    dsn = pg.dsn(name)
                    pg_schema.upgrade(dsn)
                data = work / f"{which}{i}-data"
                shutil.rmtree(data, ignore_errors=True)
                cfg = write_config(work / f"{which}{i}.toml", data, dsn, dv, user, sink, mailbox, a.batch_size)
                q0 = _quarantined(dsn)
                sink.clear()
                os.sync()
                label = f"backlog-{which}{i}"
                log(f"run {i} {which}: mailflow run --once, {a.n} mails ...")
                r = run_measured([sys.executable, "-m", "mailflow", "--config", str(cfg), "run", "--once"], work,
                                 label, timeout=max(600.0, a.n * 1.0))
                if r["rc"] != 0:
                    raise BenchError(f"{label}: exited {r['rc']}\n{r['stderr_tail']}")
                made = _run_tickets(dsn, mailbox)
                if len(made) != expected or _quarantined(dsn) != q0:
                    raise BenchError(f"{label}: {len(made)} tickets (expected {expected}), "
                                     f"{_quarantined(dsn) - q0} quarantined\n{r['stderr_tail']}")
                other = _check_acks(sink, made)
                r.pop("stdout", None)
                r["rate"] = a.n / r["wall"]
                r["other_mail"] = other
                res[which] = r
                log(f"run {i} {which}: {r['rate']:.1f} msg/s ({r['wall']:.2f} s, peak RSS "
                    f"{r['maxrss_kb'] / 1024:.0f} MB, {other} other mails)")
                if which == "empty":
                    with psycopg.connect(pg.dsn(), autocommit=True) as c:
                        c.execute(f"DROP DATABASE IF EXISTS empty{i}")
            if i:
                res["share"] = res["empty"]["wall"] / res["1m"]["wall"]
            runs.append(res)
    finally:
        with contextlib.suppress(Exception):
            sink.stop()
        with contextlib.suppress(Exception):
            dv.cleanup()
    measured = [r for r in runs if r["run"]]
    out = {"runs": runs}
    if measured:
        out.update({"empty_rate": statistics.median(r["empty"]["rate"] for r in measured),
                    "1m_rate": statistics.median(r["1m"]["rate"] for r in measured),
                    "share": statistics.median(r["share"] for r in measured),
                    "empty_rss_mb": statistics.median(r["empty"]["maxrss_kb"] / 1024 for r in measured),
                    "1m_rss_mb": max(r["1m"]["maxrss_kb"] / 1024 for r in runs)})
    return out


# ---- CLI ------------------------------------------------------------------------------------------

def cli_commands(sample: dict, term: str, terms: list[str] = ()) -> list[tuple[str, list[str]]]:
    hot, archived, cust = sample["hot"][-1], sample["archived"][0], sample["customers"][0]
    return [("tickets list", ["tickets", "list"]),
            ("tickets list --overdue", ["tickets", "list", "--overdue"]),
            ("tickets show (hot)", ["tickets", "show", hot]),
            ("tickets show (archived)", ["tickets", "show", archived]),
            *[(f"tickets search --text {w}", ["tickets", "search", "--text", w]) for w in [term, *terms]],
            ("tickets search --customer", ["tickets", "search", "--customer", cust]),
            ("report (last month)", ["report"]),
            ("report --month 2026-10", ["report", "--month", "2026-10"]),
            ("report --week 2026-W47", ["report", "--week", "2026-W47"]),
            ("status", ["status"]),
            ("check", ["check"]),
            ("outbox list", ["outbox", "list"]),
            ("quarantine list", ["quarantine", "list"]),
            ("privacy export", ["privacy", "export", cust, "--out", "{work}/export.zip"]),
            ("verify", ["verify"])]


def cli(pg: KeptPostgres, a: argparse.Namespace, work: Path) -> list[dict]:
    """Every command a user runs against the 1M database (and, with --cli-empty, against an empty
    one: what start-up, imports and the config cost): one warm-up, then --cli-runs timed."""
    import psycopg

    from mailflow import pg_schema

    sample = json.loads((a.data.parent / ".done").read_text())["sample"]
    data = work / "cli-data"
    data.mkdir(exist_ok=True)
    cfgs = {"1m": write_config(work / "cli.toml", data, pg.dsn(DB))}
    if a.cli_empty:
        with psycopg.connect(pg.dsn(), autocommit=True) as c:
            c.execute("DROP DATABASE IF EXISTS cli_empty")
            c.execute("CREATE DATABASE cli_empty")
        pg_schema.upgrade(pg.dsn("cli_empty"))
        (work / "cli-empty-data").mkdir(exist_ok=True)
        cfgs["empty"] = write_config(work / "cli-empty.toml", work / "cli-empty-data", pg.dsn("cli_empty"))
    out = []
    for label, args in cli_commands(sample, a.term, [w for w in a.terms.split(",") if w]):
        if a.only and a.only not in label:
            continue
        args = [x.replace("{work}", str(work)) for x in args]
        r: dict = {"command": label}
        for which, cfg in cfgs.items():
            times, rc, tail = [], 0, ""
            for i in range(a.cli_runs + 1):
                secs, p = mailflow(cfg, *args, timeout=a.cli_timeout)
                rc = rc or p.returncode
                tail = (p.stderr or p.stdout).strip().splitlines()[-1:] if p.returncode else tail
                if i:
                    times.append(secs)
                if secs > a.cli_timeout / 2:
                    break  # one slow run is the figure
            r[which] = {"median_s": statistics.median(times or [secs]), "max_s": max(times or [secs]), "rc": rc,
                        "err": tail, "loadavg": os.getloadavg()[0]}
            log(f"cli {label} [{which}]: {r[which]['median_s']:.2f} s (max {r[which]['max_s']:.2f}, load "
                f"{r[which]['loadavg']:.1f})"
                f"{f' rc={rc} {tail}' if rc else ''}")
        out.append(r)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--cli-runs", type=int, default=5)
    ap.add_argument("--term", default="退款", help="the word `tickets search TEXT` looks for")
    ap.add_argument("--only", help="CLI: only commands whose label contains this")
    ap.add_argument("--cli-empty", action="store_true", help="CLI: also against an empty database")
    ap.add_argument("--cli-timeout", type=float, default=300.0, help="CLI: seconds before a command is killed")
    ap.add_argument("--terms", default="订单,1000023,parcel", help="more words for `tickets search --text`")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the TinyDB 1M data set")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    ap.add_argument("--load-only", action="store_true")
    ap.add_argument("--skip-backlog", action="store_true")
    ap.add_argument("--skip-cli", action="store_true")
    ap.add_argument("--daemons", type=int, default=1, help="2: the two-daemon figure (part 2; not yet here)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--no-warmup", dest="warmup", action="store_false",
                    help="skip the unmeasured first run against the 1M database")
    a = ap.parse_args(argv)
    if a.daemons != 1:
        ap.error("--daemons 2 needs cluster operation (mailbox leases, outbox claims): part 2")
    a.out = a.out.resolve()
    work = a.out / "pg1m-work"
    work.mkdir(parents=True, exist_ok=True)
    pg = KeptPostgres(a.out / "pg-team-1m-v2")
    res: dict = {"machine": machine()}
    try:
        pg.start()
        res["load"] = ensure_loaded(pg, a.data.resolve(), work)
        res["upgrade"] = upgrade(pg, work)
        log(f"upgrade: {res['upgrade']}")
        if a.load_only:
            return 0
        if not a.skip_backlog:
            res["backlog"] = backlog(pg, a, work)
            b = res["backlog"]
            if "share" in b:
                log(f"backlog: empty {b['empty_rate']:.1f} msg/s, 1M {b['1m_rate']:.1f} msg/s = {b['share']:.0%} "
                    f"of empty; peak RSS {b['1m_rss_mb']:.0f} MB")
        if not a.skip_cli:
            res["cli"] = cli(pg, a, work)
    finally:
        pg.stop()
    if a.json:
        a.json.write_text(json.dumps(res, indent=1, default=str))
    print(json.dumps({k: v for k, v in res.items() if k != "backlog"} | {"backlog": {
        k: v for k, v in res.get("backlog", {}).items() if k != "runs"}}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
