"""The mailflow benchmark runner: a throwaway Dovecot and an aiosmtpd sink on loopback, the
deterministic corpus, `mailflow run --once` as a subprocess, one line of figures.

    python bench/run.py --n 1000 --runs 3 [--floors] [--scale] [--latency] [--record]

Figures (each the median of --runs runs; see bench/README.md for exactly what is timed):
  backlog   N messages waiting in the INBOX -> all tickets committed and every acknowledgement
            accepted by the SMTP sink: wall time of the `mailflow run --once` process, as msg/s
  floors    the I/O floor and a naive pipeline over the same INBOX (bench/floors.py), and
            mailflow's time as a multiple of each
  scale     the same backlog run against a copy of a data dir holding 100,000 closed (archived)
            tickets (bench/scale.py, cached under bench/out/), and its throughput as a share of
            the empty-database throughput
  latency   `mailflow run` (the IDLE daemon) running: APPEND of one new message -> its
            acknowledgement at the sink, p50 and p95 over --latency-n messages sent one by one
  RSS       peak RSS of each mailflow process: `--once` runs go through a tiny Python wrapper
            that waits for its one child and reports getrusage(RUSAGE_CHILDREN).ru_maxrss (the
            wrapper's only child is mailflow, so that maximum is mailflow's own peak); for the
            daemon, VmHWM from /proc/PID/status read just before SIGTERM.

Every run is checked, not just timed: exit status 0, one ticket per new corpus message and none
quarantined, and one acknowledgement per ticket at the sink, addressed to that ticket's customer. A
failed check prints what went wrong and makes the exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import corpus, scale  # noqa: E402
from tests.support.dovecot import Dovecot  # noqa: E402
from tests.support.smtp_sink import SmtpSink  # noqa: E402

PASSWORD = "secret"
MAILBOX = "support"

# Runs one command, waits for it, and reports the command's own peak RSS. ru_maxrss of
# RUSAGE_CHILDREN is the largest RSS of any waited-for descendant; this process has exactly one.
WRAPPER = r"""
import json, resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.call(sys.argv[2:])
wall = time.perf_counter() - t
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as f:
    json.dump({"rc": rc, "wall": wall, "maxrss_kb": ru.ru_maxrss, "user": ru.ru_utime, "sys": ru.ru_stime}, f)
sys.exit(rc)
"""


class BenchError(Exception):
    pass


class TimedSink(SmtpSink):
    """The test suite's SMTP sink, also noting when each message was accepted (time.monotonic)."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def _record(self, mail_from: str, rcpt_tos: list[str], data: bytes) -> None:
        with self._cond:
            self.times.append(time.monotonic())
            self.messages.append((mail_from, rcpt_tos, data))
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self.messages.clear()
            self.times.clear()

    def count(self) -> int:
        with self._cond:
            return len(self.messages)


# ---- machine --------------------------------------------------------------------------------------

def machine() -> dict:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        cores = os.cpu_count() or 0
    dovecot = ""
    with contextlib.suppress(Exception):
        from tests.support.dovecot import dovecot_version

        dovecot = dovecot_version()
    return {"cpu": cpu, "cores": cores, "python": platform.python_version(), "dovecot": dovecot,
            "kernel": platform.release(), "loadavg": os.getloadavg()[0]}


def git_rev() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "--no-optional-locks", "-C", str(REPO), "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (rev or "?") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


# ---- helpers --------------------------------------------------------------------------------------

def config_head(data_dir: Path, dsn: str | None = None, storage: str = "", by: str = "bench/run.py") -> str:
    """[storage], [company] and [outbound] of every benchmark config (`storage`: more [storage] keys)."""
    pg = f'backend = "postgresql"\ndsn = "{dsn}"\n' if dsn else ""
    return f"""\
# mailflow benchmark config (written by {by})
[storage]
data_dir = "{data_dir}"
{pg}{storage}
[company]
name = "Bench Co."

[outbound]
# the corpus has repeat senders: flood caps would suppress acknowledgements
max_auto_per_hour = 1000000
max_auto_per_ticket = 1000000
"""


def mailbox_toml(dv: Dovecot, user: str, name: str | None = None, batch_size: int | None = None) -> str:
    """One [[mailbox]] on the benchmark's Dovecot (`batch_size` None: mailflow's default)."""
    batch = f"batch_size = {batch_size}\n" if batch_size is not None else ""
    return f"""
[[mailbox]]
name = "{name or user}"
host = "{dv.host}"
port = {dv.port}
tls = "none"
user = "{user}"
password = "{PASSWORD}"
address = "support@support.example"
after = "seen"
{batch}timeout = 60
"""


def smtp_toml(sink: SmtpSink) -> str:
    return f"""
[smtp]
host = "{sink.host}"
port = {sink.port}
tls = "none"
timeout = 60
"""


def write_config(path: Path, data_dir: Path, dv: Dovecot, user: str, sink: SmtpSink, batch_size: int,
                 dsn: str | None = None) -> Path:
    path.write_text(config_head(data_dir, dsn) + mailbox_toml(dv, user, MAILBOX, batch_size) + smtp_toml(sink),
                    encoding="utf-8")
    return path


def mailflow_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("MAILFLOW_CONFIG", None)
    env.pop("MAILFLOW_DATA_DIR", None)
    # as an installed package runs: with its compiled .pyc (pip writes them at install); without
    # them every command recompiles mailflow first (0.25-0.4 s of each CLI figure on this machine)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run_measured(cmd: list[str], workdir: Path, label: str, timeout: float) -> dict:
    """Run cmd under the RSS wrapper; stdout/stderr to files. Returns the wrapper's figures."""
    res = workdir / f"{label}.rusage.json"
    with open(workdir / f"{label}.stdout", "wb") as out, open(workdir / f"{label}.stderr", "wb") as err:
        p = subprocess.run([sys.executable, "-c", WRAPPER, str(res), *cmd], stdout=out, stderr=err,
                           env=mailflow_env(), cwd=REPO, timeout=timeout)
    if not res.exists():
        raise BenchError(f"{label}: the wrapper wrote no result (exit {p.returncode})")
    r = json.loads(res.read_text())
    r["stdout"] = (workdir / f"{label}.stdout").read_text(errors="replace")
    r["stderr_tail"] = "\n".join((workdir / f"{label}.stderr").read_text(errors="replace").splitlines()[-25:])
    return r


def fill_mailbox(dv: Dovecot, user: str, raws: list[bytes]) -> None:
    """A fresh user whose INBOX holds `raws` in order, unseen, indexed and in the page cache."""
    dv.add_user(user, PASSWORD)
    # APPEND keeps the order (replies after what they answer); deliver() into Maildir/new would
    # be faster but Dovecot numbers new/ files in directory order, not name order
    dv.append_many(user, raws)
    c = dv.client(user)
    try:
        c.select_folder("INBOX", readonly=True)
        uids = sorted(c.search(["ALL"]))
        if len(uids) != len(raws):
            raise BenchError(f"INBOX of {user} holds {len(uids)} messages, expected {len(raws)}")
        for i in range(0, len(uids), 500):  # warm Dovecot's index cache and the page cache
            c.fetch(uids[i:i + 500], ["BODY.PEEK[]"])
    finally:
        c.logout()


def store_counts(data_dir: Path, cfg_path: Path | None = None) -> dict:
    from mailflow import config
    from mailflow.store import Store
    from mailflow.storeapi import open_store

    st = open_store(config.load(str(cfg_path))) if cfg_path is not None else Store(data_dir)
    tickets = st.all_tickets()
    out = Counter(r.get("status") for r in st.outbox_rows().values())
    return {"tickets": len(tickets), "customers": Counter(t["customer_email"] for t in tickets),
            "ids": {t["id"] for t in tickets},
            "quarantined": sum(q.get("status") == "held" for q in st.quarantined()),
            "outbox": dict(out)}


def check_acks(sink: TimedSink, expected_customers: Counter, ticket_ids: set[str] | None = None) -> None:
    """One acknowledgement per ticket, to the ticket's customer, naming a ticket (once each)."""
    import email
    from email import policy

    msgs = list(sink.messages)
    got = Counter(r.lower() for _f, rcpts, _d in msgs for r in rcpts)
    if got != expected_customers:
        missing = expected_customers - got
        extra = got - expected_customers
        raise BenchError(f"sink has {len(msgs)} mails, expected {sum(expected_customers.values())}: "
                         f"missing {sum(missing.values())} ({list(missing)[:3]}), "
                         f"unexpected {sum(extra.values())} ({list(extra)[:3]})")
    if ticket_ids is not None:
        seen = Counter()
        for _f, _r, data in msgs:
            m = email.message_from_bytes(data, policy=policy.compat32)
            seen[m.get("X-Mailflow-Ticket", "")] += 1
        if set(seen) != ticket_ids or any(v != 1 for v in seen.values()):
            raise BenchError(f"acknowledgements do not match tickets one to one: {len(seen)} ticket ids in "
                             f"{len(msgs)} mails for {len(ticket_ids)} tickets")


# ---- one measured mailflow --once run -----------------------------------------------------------------

class Bench:
    def __init__(self, a: argparse.Namespace):
        self.a = a
        self.out: Path = a.out
        self.mails = corpus.build(a.n, a.seed)
        self.raws = [m.raw for m in self.mails]
        self.kinds = corpus.counts(self.mails)
        self.expected = self.kinds["new"]
        self.customers = Counter(m.sender.lower() for m in self.mails if m.kind == "new")
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="work-", dir=self.out))
        self.dv = Dovecot(self.work / "dovecot", users={})
        self.sink = TimedSink()
        self.errors: list[str] = []
        self.users = 0
        self.pg = None  # --backend postgresql: a private cluster, a fresh database per run

    def log(self, msg: str) -> None:
        if not self.a.quiet:
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def new_user(self, prefix: str) -> str:
        self.users += 1
        return f"{prefix}{self.users}"

    def start(self) -> None:
        self.dv.start()
        self.sink.start()
        if self.a.backend == "postgresql":
            from tests.support.postgres import Postgres

            self.pg = Postgres()  # its own temp dir: the cluster runs as an unprivileged user when root
            self.pg.start()
            self.pg.make_template()

    def stop(self) -> None:
        if self.pg is not None:
            with contextlib.suppress(Exception):
                self.pg.stop()
        with contextlib.suppress(Exception):
            self.sink.stop()
        with contextlib.suppress(Exception):
            self.dv.cleanup()
        if not self.a.keep_work:
            shutil.rmtree(self.work, ignore_errors=True)

    def mailflow_once(self, label: str, user: str, data_dir: Path, expect: int,
                      customers: Counter | None, profile: Path | None = None) -> dict:
        """`mailflow run --once` on `user`'s INBOX into `data_dir`; checked; sink cleared after."""
        dsn = self.pg.new_database() if self.pg is not None else None
        cfg = write_config(self.work / f"{label}.toml", data_dir, self.dv, user, self.sink, self.a.batch_size, dsn)
        self.sink.clear()
        cmd = [sys.executable]
        if profile is not None:
            cmd += ["-m", "cProfile", "-o", str(profile)]
        cmd += ["-m", "mailflow", "--config", str(cfg), "run", "--once"]
        # write back what filling the INBOX or copying a data dir left dirty, so that the kernel's
        # writeback does not compete with mailflow's fsyncs during the measured run
        os.sync()
        r = run_measured(cmd, self.work, label, timeout=max(300.0, self.a.n * 0.5))
        try:
            if r["rc"] != 0:
                raise BenchError(f"{label}: mailflow run --once exited {r['rc']}\n{r['stdout']}\n{r['stderr_tail']}")
            c = store_counts(data_dir, cfg if dsn else None)
            if c["tickets"] != expect or c["quarantined"]:
                raise BenchError(f"{label}: {c['tickets']} tickets (expected {expect}), {c['quarantined']} "
                                 f"quarantined\n{r['stdout']}\n{r['stderr_tail']}")
            if customers is not None:
                check_acks(self.sink, customers, c["ids"])
            if self.sink.count() != expect:
                raise BenchError(f"{label}: the sink received {self.sink.count()} mails for {expect} tickets")
        finally:
            r["acks"] = self.sink.count()
            if self.a.keep is not None and label.startswith("backlog"):
                self.keep(cfg, data_dir)
            self.sink.clear()
        r["rate"] = self.a.n / r["wall"]
        return r

    def keep(self, cfg: Path, data_dir: Path) -> None:
        """--keep DIR: the last backlog run's config, data dir and the mail the sink received."""
        k: Path = self.a.keep
        if k.exists():
            shutil.rmtree(k)
        (k / "acks").mkdir(parents=True)
        shutil.copytree(data_dir, k / "data")
        text = cfg.read_text(encoding="utf-8").replace(f'data_dir = "{data_dir}"', f'data_dir = "{k / "data"}"')
        (k / "mailflow.toml").write_text(text, encoding="utf-8")
        for i, (_f, _r, data) in enumerate(list(self.sink.messages), 1):
            (k / "acks" / f"{i:05d}.eml").write_bytes(data)
        (k / "corpus.json").write_text(json.dumps({"n": self.a.n, "seed": self.a.seed, **self.kinds}))

    def floor(self, mode: str, user: str) -> dict:
        self.sink.clear()
        os.sync()  # as before mailflow's runs
        cmd = [sys.executable, "-m", "bench.floors", mode, "--host", self.dv.host, "--port", str(self.dv.port),
               "--user", user, "--password", PASSWORD, "--smtp-host", self.sink.host,
               "--smtp-port", str(self.sink.port), "--n", str(self.a.n), "--seed", str(self.a.seed)]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=mailflow_env(),
                           timeout=max(300.0, self.a.n * 0.5))
        try:
            if p.returncode != 0:
                raise BenchError(f"floor {mode} exited {p.returncode}: {p.stderr[-2000:]}")
            r = json.loads(p.stdout.strip().splitlines()[-1])
            if r["fetched"] != self.a.n or r["sent"] != self.expected or self.sink.count() != self.expected:
                raise BenchError(f"floor {mode}: fetched {r['fetched']}/{self.a.n}, sent {r['sent']}, sink has "
                                 f"{self.sink.count()}, expected {self.expected}")
        finally:
            self.sink.clear()
        r["rate"] = self.a.n / r["seconds"]
        return r

    # ---- the figures --------------------------------------------------------------------------

    def one_run(self, i: int) -> dict:
        a = self.a
        res: dict = {"run": i}
        user = self.new_user("bench")
        self.log(f"run {i}: loading {a.n} messages into the INBOX of {user}")
        fill_mailbox(self.dv, user, self.raws)
        if a.floors:
            for mode in ("io", "naive"):
                self.log(f"run {i}: {mode} floor")
                try:
                    res[mode] = self.floor(mode, user)
                    self.log(f"run {i}: {mode} floor {res[mode]['seconds']:.2f} s = {res[mode]['rate']:.0f} msg/s")
                except (BenchError, subprocess.SubprocessError, OSError, ValueError) as e:
                    self.fail(f"run {i} {mode} floor: {e}")
        # start-up cost: the same command on an empty INBOX
        empty = self.new_user("empty")
        self.dv.add_user(empty, PASSWORD)
        try:
            res["startup"] = self.mailflow_once(f"startup{i}", empty, self.work / f"startup{i}-data", 0, None)
            self.log(f"run {i}: start-up (empty INBOX) {res['startup']['wall']:.2f} s")
        except (BenchError, subprocess.SubprocessError, OSError) as e:
            self.fail(f"run {i} start-up: {e}")
        data = self.work / f"backlog{i}-data"
        self.log(f"run {i}: mailflow run --once, empty data dir")
        try:
            res["backlog"] = self.mailflow_once(f"backlog{i}", user, data, self.expected, self.customers,
                                                profile=a.profile if i == a.runs else None)
            b = res["backlog"]
            self.log(f"run {i}: backlog {b['wall']:.2f} s = {b['rate']:.1f} msg/s, "
                     f"peak RSS {b['maxrss_kb'] / 1024:.0f} MB, cpu {b['user'] + b['sys']:.1f} s")
        except (BenchError, subprocess.SubprocessError, OSError) as e:
            self.fail(f"run {i} backlog: {e}")
        if not a.keep_work:
            shutil.rmtree(data, ignore_errors=True)
        if a.scale:
            src = scale.cached_closed_dir(self.out, a.scale_tickets, log=self.log)
            user2 = self.new_user("scale")
            fill_mailbox(self.dv, user2, self.raws)
            data2 = self.work / f"scale{i}-data"
            scale.copy_data_dir(src, data2)
            self.log(f"run {i}: mailflow run --once, data dir with {a.scale_tickets} closed tickets")
            try:
                res["scale"] = self.mailflow_once(
                    f"scale{i}", user2, data2, self.expected, self.customers,
                    profile=a.profile.with_name(a.profile.stem + "-scale" + a.profile.suffix)
                    if a.profile and i == a.runs else None)
                s = res["scale"]
                self.log(f"run {i}: scale {s['wall']:.2f} s = {s['rate']:.1f} msg/s, "
                         f"peak RSS {s['maxrss_kb'] / 1024:.0f} MB")
            except (BenchError, subprocess.SubprocessError, OSError) as e:
                self.fail(f"run {i} scale: {e}")
            if not a.keep_work:
                shutil.rmtree(data2, ignore_errors=True)
        if a.latency:
            try:
                res["latency"] = self.latency(i)
                lat = res["latency"]
                self.log(f"run {i}: IDLE ack latency p50 {lat['p50'] * 1000:.0f} ms, p95 {lat['p95'] * 1000:.0f} ms")
            except (BenchError, subprocess.SubprocessError, OSError) as e:
                self.fail(f"run {i} latency: {e}")
        return res

    def fail(self, msg: str) -> None:
        self.errors.append(msg)
        print(f"ERROR {msg}", file=sys.stderr, flush=True)

    def latency(self, i: int) -> dict:
        """The daemon on IDLE; one new message at a time; APPEND -> ack accepted by the sink."""
        a = self.a
        warm = 3
        msgs = [m.raw for m in corpus.build(max(40, 2 * (a.latency_n + warm)), a.seed + 1000 + i)
                if m.kind == "new"][: a.latency_n + warm]
        if len(msgs) < a.latency_n + warm:
            raise BenchError("latency corpus too small")
        user = self.new_user("idle")
        self.dv.add_user(user, PASSWORD)
        data = self.work / f"latency{i}-data"
        cfg = write_config(self.work / f"latency{i}.toml", data, self.dv, user, self.sink, a.batch_size)
        self.sink.clear()
        log = open(self.work / f"latency{i}.log", "wb")
        os.sync()
        proc = subprocess.Popen([sys.executable, "-m", "mailflow", "--config", str(cfg), "run"], stdout=log,
                                stderr=subprocess.STDOUT, env=mailflow_env(), cwd=REPO)
        lat: list[float] = []
        hwm_kb = 0
        client = None
        try:
            client = self.dv.client(user)
            for k, raw in enumerate(msgs):
                if k and a.latency_gap:
                    time.sleep(a.latency_gap)
                t0 = time.monotonic()
                client.append("INBOX", raw)
                # a missed IDLE notification still arrives by Dovecot's 30 s mailbox_idle_check_interval:
                # wait long enough to count such a message instead of failing the run
                if not self.sink.wait_for(k + 1, timeout=90):
                    raise BenchError(f"no acknowledgement {k + 1} within 90 s (daemon "
                                     f"{'running' if proc.poll() is None else f'exited {proc.returncode}'}):\n"
                                     + (self.work / f"latency{i}.log").read_text(errors="replace")[-2000:])
                if k >= warm:  # the first ones also wait for the daemon to come up
                    lat.append(self.sink.times[k] - t0)
                    if lat[-1] > 5:
                        self.log(f"run {i}: latency message {k - warm + 1}: acknowledged after {lat[-1]:.1f} s")
            hwm_kb = vm_hwm_kb(proc.pid)
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    client.logout()
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            log.close()
            self.sink.clear()
            if not a.keep_work:
                shutil.rmtree(data, ignore_errors=True)
        if proc.returncode not in (0, -signal.SIGTERM):
            self.fail(f"run {i} latency: daemon exited {proc.returncode} after SIGTERM")
        lat.sort()
        floor = self.idle_floor(msgs[:10])
        return {"n": len(lat), "p50": pct(lat, 50), "p95": pct(lat, 95), "max": lat[-1],
                "over_5s": sum(v > 5 for v in lat),
                "rss_kb": hwm_kb, "all": lat, "idle_notify_p50": pct(floor, 50), "idle_notify": floor}

    def idle_floor(self, raws: list[bytes]) -> list[float]:
        """How long Dovecot itself takes to tell an IDLE client about an APPEND (no mailflow)."""
        user = self.new_user("idlefloor")
        self.dv.add_user(user, PASSWORD)
        watcher, writer = self.dv.client(user), self.dv.client(user)
        out = []
        try:
            watcher.select_folder("INBOX")
            for raw in raws:
                watcher.idle()
                t0 = time.monotonic()
                writer.append("INBOX", raw)
                deadline = t0 + 10
                while time.monotonic() < deadline:
                    resps = watcher.idle_check(timeout=max(0.01, deadline - time.monotonic()))
                    if any(isinstance(r, tuple) and len(r) >= 2 and r[1] == b"EXISTS" for r in resps):
                        out.append(time.monotonic() - t0)
                        break
                watcher.idle_done()
        finally:
            for c in (watcher, writer):
                with contextlib.suppress(Exception):
                    c.logout()
        return sorted(out)


def vm_hwm_kb(pid: int) -> int:
    """Peak resident set of a running process (VmHWM), in kB."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def pct(sorted_vals: list[float], p: float) -> float:
    """Percentile with linear interpolation between closest ranks."""
    if not sorted_vals:
        return float("nan")
    k = (len(sorted_vals) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (k - lo)


# ---- summary --------------------------------------------------------------------------------------

def med(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summarise(runs: list[dict], n: int) -> dict:
    def col(key: str, field: str) -> list[float]:
        return [r[key][field] for r in runs if key in r]

    s: dict = {}
    s["backlog_s"] = med(col("backlog", "wall"))
    s["backlog_rate"] = n / s["backlog_s"] if s["backlog_s"] else None
    s["backlog_rss_mb"] = med([v / 1024 for v in col("backlog", "maxrss_kb")])
    s["backlog_cpu_s"] = med([r["backlog"]["user"] + r["backlog"]["sys"] for r in runs if "backlog" in r])
    s["startup_s"] = med(col("startup", "wall"))
    for mode in ("io", "naive"):
        secs = med(col(mode, "seconds"))
        s[f"{mode}_s"] = secs
        s[f"{mode}_rate"] = n / secs if secs else None
        # mailflow's time as a multiple of the floor's, per run (same INBOX, same minute), then the median
        s[f"{mode}_ratio"] = med([r["backlog"]["wall"] / r[mode]["seconds"] for r in runs
                                  if "backlog" in r and mode in r])
    s["scale_s"] = med(col("scale", "wall"))
    s["scale_rate"] = n / s["scale_s"] if s["scale_s"] else None
    s["scale_share"] = med([r["backlog"]["wall"] / r["scale"]["wall"] for r in runs
                            if "backlog" in r and "scale" in r])
    s["scale_rss_mb"] = med([v / 1024 for v in col("scale", "maxrss_kb")])
    s["p50_ms"] = med([v * 1000 for v in col("latency", "p50")])
    s["p95_ms"] = med([v * 1000 for v in col("latency", "p95")])
    s["daemon_rss_mb"] = med([v / 1024 for v in col("latency", "rss_kb")])
    s["latency_max_ms"] = max([v * 1000 for v in col("latency", "max")], default=None)
    s["latency_over_5s"] = sum(col("latency", "over_5s"))
    s["idle_notify_ms"] = med([v * 1000 for v in col("latency", "idle_notify_p50")])
    return s


def _count(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def _f(v, fmt: str, dash: str = "-") -> str:
    return dash if v is None else format(v, fmt)


def figures_line(a: argparse.Namespace, s: dict, m: dict, ok: bool) -> str:
    parts = [f"mailflow-bench n={a.n} runs={a.runs}",
             f"backlog={_f(s['backlog_rate'], '.1f')} msg/s ({_f(s['backlog_s'], '.2f')} s, "
             f"rss {_f(s['backlog_rss_mb'], '.0f')} MB, start-up {_f(s['startup_s'], '.2f')} s)"]
    if a.floors:
        for mode, name in (("io", "io-floor"), ("naive", "naive")):
            r = s[f"{mode}_ratio"]
            parts.append(f"{name}={_f(s[f'{mode}_rate'], '.0f')} msg/s (mailflow {_f(r, '.2f')}x its time"
                         f" = {_f(1 / r * 100 if r else None, '.0f')}%)")
    if a.scale:
        parts.append(f"closed-{_count(a.scale_tickets)}={_f(s['scale_rate'], '.1f')} msg/s "
                     f"({_f(s['scale_share'] * 100 if s['scale_share'] else None, '.0f')}% of empty, "
                     f"rss {_f(s['scale_rss_mb'], '.0f')} MB)")
    if a.latency:
        parts.append(f"idle-ack p50={_f(s['p50_ms'], '.0f')} ms p95={_f(s['p95_ms'], '.0f')} ms "
                     f"max={_f(s['latency_max_ms'], '.0f')} ms "
                     f"(n={a.latency_n}, rss {_f(s['daemon_rss_mb'], '.0f')} MB; Dovecot's own IDLE "
                     f"notification p50={_f(s['idle_notify_ms'], '.0f')} ms)")
    parts.append(f'cpu="{m["cpu"]}" cores={m["cores"]} python={m["python"]}')
    if not ok:
        parts.append("FAILED")
    return " | ".join(parts)


RESULTS_HEADER = ("| date | commit | machine | N | runs | backlog msg/s | wall s | RSS MB | I/O floor msg/s "
                  "| × I/O floor | naive msg/s | × naive | 100k-closed msg/s | % of empty | 100k RSS MB "
                  "| IDLE p50 ms | IDLE p95 ms | daemon RSS MB | start-up s |")


def record_row(a: argparse.Namespace, s: dict, m: dict, ok: bool) -> str:
    share = s["scale_share"] * 100 if s["scale_share"] else None
    cells = [dt.date.today().isoformat(), git_rev(), f'{m["cpu"]}, {m["cores"]} cores, py {m["python"]}, load {m["loadavg"]:.1f}',
             f"{a.n:,}", str(a.runs), _f(s["backlog_rate"], ".1f"), _f(s["backlog_s"], ".2f"),
             _f(s["backlog_rss_mb"], ".0f"), _f(s["io_rate"], ".0f"), _f(s["io_ratio"], ".2f"),
             _f(s["naive_rate"], ".0f"), _f(s["naive_ratio"], ".2f"), _f(s["scale_rate"], ".1f"),
             _f(share, ".0f"), _f(s["scale_rss_mb"], ".0f"), _f(s["p50_ms"], ".0f"), _f(s["p95_ms"], ".0f"),
             _f(s["daemon_rss_mb"], ".0f"), _f(s["startup_s"], ".2f")]
    if not ok:
        cells[1] += " FAILED"
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="corpus size (messages waiting in the INBOX)")
    ap.add_argument("--runs", type=int, default=3, help="runs per figure; the median is reported")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--floors", action="store_true", help="also the I/O floor and the naive pipeline")
    ap.add_argument("--scale", action="store_true", help="also against a data dir with closed tickets")
    ap.add_argument("--scale-tickets", type=int, default=100_000, help="closed tickets for --scale")
    ap.add_argument("--latency", action="store_true", help="also the IDLE acknowledgement latency")
    ap.add_argument("--latency-n", type=int, default=100, help="messages per latency run")
    ap.add_argument("--latency-gap", type=float, default=0.0,
                    help="seconds to wait after each acknowledgement before the next APPEND (default 0)")
    ap.add_argument("--batch-size", type=int, default=100, help="mailflow [[mailbox]] batch_size")
    ap.add_argument("--backend", choices=["tinydb", "postgresql"], default="tinydb",
                    help="the store: postgresql runs a private cluster (tests/support/postgres.py), a fresh "
                         "database per run (--scale and --latency are TinyDB only)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out",
                    help="work and cache folder (default bench/out, git-ignored)")
    ap.add_argument("--record", nargs="?", const=REPO / "bench" / "RESULTS.md", type=Path, default=None,
                    metavar="FILE", help="append a markdown row to FILE (default bench/RESULTS.md)")
    ap.add_argument("--json", type=Path, help="write every raw figure to this file")
    ap.add_argument("--keep", type=Path, help="keep the last backlog run's config, data and received mail here")
    ap.add_argument("--keep-work", action="store_true", help="keep data dirs and logs under --out")
    ap.add_argument("--profile", type=Path, help="run the last backlog run under cProfile, writing this file (and "
                    "the last --scale run, writing FILE-scale)")
    ap.add_argument("--quiet", action="store_true", help="no progress on stderr")
    a = ap.parse_args(argv)
    if a.n < 1 or a.runs < 1:
        ap.error("--n and --runs must be at least 1")
    a.out = a.out.resolve()

    m = machine()
    b = Bench(a)
    b.log(f"corpus n={a.n} seed={a.seed}: {b.kinds} -> expecting {b.expected} tickets and acknowledgements")
    runs: list[dict] = []

    def on_term(signum, frame):  # clean up Dovecot and the work dir on SIGTERM as on Ctrl-C
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        b.start()
        for i in range(1, a.runs + 1):
            runs.append(b.one_run(i))
    except KeyboardInterrupt:
        b.fail("interrupted")
    except (BenchError, subprocess.SubprocessError, OSError, RuntimeError) as e:
        b.fail(str(e))
    finally:
        signal.signal(signal.SIGTERM, old)
        b.stop()
    s = summarise(runs, a.n)
    ok = not b.errors
    print(figures_line(a, s, m, ok), flush=True)
    if a.json:
        for r in runs:
            for v in r.values():
                if isinstance(v, dict):
                    v.pop("stdout", None)
        a.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()}, "machine": m,
                                      "corpus": b.kinds, "summary": s, "runs": runs, "errors": b.errors},
                                     indent=1, default=str))
    if a.record is not None and not any(k in r for r in runs for k in ("backlog", "latency")):
        print(f"nothing measured: no row appended to {a.record}", file=sys.stderr)
    elif a.record is not None:
        existing = a.record.read_text(encoding="utf-8") if a.record.exists() else ""
        with open(a.record, "a", encoding="utf-8") as f:
            if existing and not existing.endswith("\n"):
                f.write("\n")
            if RESULTS_HEADER not in existing:
                f.write("\n" + RESULTS_HEADER + "\n" + "|---" * (RESULTS_HEADER.count("|") - 1) + "|\n")
            f.write(record_row(a, s, m, ok) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
