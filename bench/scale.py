"""Data directories that look like long-running installs, and what mailflow costs on them.

Builders (everything written through `mailflow.store.Store`: `add_ticket`, `add_message`,
`add_outbox`, `mark_seen`, and `archive` as the daemon's housekeeping does it):

- `closed-N`  N closed tickets created 40-400 days ago, all archived (`bench/run.py --scale`);
- `archived-1m`  1,000,000 such tickets: a year and more of history, nothing hot;
- `open-50k`  50,000 open tickets (new, open, pending, resolved), hot, with their sent mail;
- `team-1m`  a team answering 1M tickets a year under the hot-set policy: the 1M archived, 82,000
  closed in the last 30 days (housekeeping with `archive_after_days = 3` leaves the last three
  days' ~8,000 hot), 5,000 open, the last 7 days' sent outbox rows and 30 days of idempotency keys.

All timestamps are relative to `SCALE_NOW` (2026-11-23 12:00 UTC) and every measured command runs
with `--now` at that instant, so a cached directory never ages. Shapes follow
`Pipeline._new_ticket` / `_add_message` and `Outbox.enqueue`; customers come from the corpus's
pool (`custNNNNN@<domain>`), so new mail shares customers with old tickets.

    python -m bench.scale build team-1m          # once (cached under bench/out/)
    python -m bench.scale run --runs 3 [--record] [--kinds empty,archived-1m,open-50k,team-1m]

`run` starts one Dovecot and one aiosmtpd sink and measures, per data directory and run (each on
a fresh copy): first-mail start-up (`run --once` with one new mail waiting: interpreter start,
loading the database, the mail's ticket and acknowledgement), the backlog (`run --once` over the
same 1,000-mail corpus as bench/run.py, its throughput as a share of the empty directory's in the
same run) and its peak RSS, the CLI (`tickets list`, `tickets show` hot and archived, `tickets
search --customer`, `status`, `outbox list`, `quarantine list`, each a fresh process) and one
commit (a batch changing one ticket, in-process, median of 20). Every run is checked: exit 0, one
new ticket per new corpus mail and one acknowledgement each.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

VERSION = 2  # bump when the generated shape changes: the cache key includes it
CHUNK = 25_000
TZ = ZoneInfo("Asia/Shanghai")
SCALE_NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
KINDS = ("empty", "archived-1m", "open-50k", "team-1m")

_CATS = [("inquiry", "customer_service", "normal"), ("complaint", "service_supervisor", "high"),
         ("fault", "tech", "urgent"), ("billing", "finance", "normal"), ("suggestion", "product", "low"),
         ("praise", "customer_service", "low")]
_SUBJ = {"zh": ["订单{n}一直没有发货", "退款两周了还没到账", "无法登录账号", "发票抬头开错了"],
         "en": ["Order {n} has not arrived", "Refund still missing", "Cannot log in", "Invoice address wrong"]}
_TEXT = {"zh": "您好，我的订单{n}一直没有收到，已经联系过客服两次了，麻烦尽快帮我查一下是什么原因，谢谢。",
         "en": "Hello, my order {n} has still not arrived and I have contacted support twice already. "
               "Could you please look into it as soon as possible? Thanks."}
_ANSWER = {"zh": "您好，您的问题已经处理完毕：包裹已重新发出，预计三天内送达。如有其他问题请直接回复本邮件。",
           "en": "Hello, we have resolved your request: the parcel was sent again and should arrive within "
                 "three days. Reply to this mail if anything else comes up."}
_DOMAINS = ["customer.example", "mail.example.cn", "qq.example"]
SUPPORT = "support@support.example"


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="seconds")


def _ticket_and_messages(rng: random.Random, serials: dict[str, int], k: int, created: datetime,
                         closed: datetime | None, status: str = "closed"):
    first_resp = created + timedelta(hours=rng.uniform(0.2, 20))
    resolved = None
    if closed is not None:
        resolved = max(first_resp, closed - timedelta(hours=rng.uniform(1, 48)))
    elif status == "resolved":
        resolved = first_resp + timedelta(hours=rng.uniform(1, 24))
    day = created.astimezone(TZ).strftime("%Y%m%d")
    serials[day] = serials.get(day, 0) + 1
    tid = f"CW{day}{serials[day]:04d}"
    lang = "zh" if rng.random() < 0.55 else "en"
    cat, team, prio = rng.choice(_CATS)
    cust = f"cust{rng.randrange(100_000):05d}@{rng.choice(_DOMAINS)}"
    subject = rng.choice(_SUBJ[lang]).replace("{n}", str(k))
    hours = {"urgent": (1, 4), "high": (4, 24), "normal": (24, 72), "low": (48, 336)}[prio]
    rating = rng.choice([None, 3, 4, 5, 5]) if closed is not None else None
    answered = status not in ("new",)
    last = closed or resolved or (first_resp if answered else created)
    events = [{"at": _iso(created), "kind": "created", "actor": "system", "detail": "from mailbox support"},
              {"at": _iso(created), "kind": "rules", "actor": "system", "detail": f"classify/category-{cat}"}]
    if resolved:
        events.append({"at": _iso(resolved), "kind": "status", "actor": "agent", "from": "open", "to": "resolved",
                       "detail": "by agent"})
    if closed:
        events.append({"at": _iso(closed), "kind": "status", "actor": "customer" if rating else "system",
                       "from": "resolved", "to": "closed",
                       "detail": f"satisfaction {rating}/5" if rating else "closed after 7 days"})
    ticket = {
        "id": tid, "status": status, "close_reason": ("confirmed" if rating else "auto") if closed else None,
        "category": cat, "priority": prio, "team": team,
        "assignee": f"agent{rng.randrange(12)}@support.example", "tags": [cat],
        "customer_email": cust, "customer_name": "", "tier": "standard", "subject": subject, "locale": lang,
        "mailbox": "support", "created_at": _iso(created), "updated_at": _iso(last),
        "first_response_at": _iso(first_resp) if answered else None,
        "resolved_at": _iso(resolved) if resolved else None, "closed_at": _iso(closed) if closed else None,
        "participants": [],
        "sla": {"first_response_due": _iso(created + timedelta(hours=hours[0])),
                "resolution_due": _iso(created + timedelta(hours=hours[1])),
                "first_response_hours": float(hours[0]), "resolution_hours": float(hours[1])},
        "rules_fired": [["classify", f"category-{cat}"], ["priority", f"priority-{prio}"]],
        "events": events, "rating": rating, "ratings": [{"at": _iso(closed), "score": rating}] if rating else [],
        "reopen_count": 0, "auto_sent": 2, "failing_addresses": [], "mentioned_staff": [],
    }
    text = _TEXT[lang].replace("{n}", str(k))

    def msg(i: int, direction: str, kind: str, at: datetime, body: str, frm: str, to: list[str]) -> dict:
        return {"ticket_id": tid, "message_id": f"old{k}.{i}.{tid.lower()}@{frm.split('@')[1]}",
                "hash": f"{rng.getrandbits(64):016x}" if direction == "in" else "", "direction": direction,
                "kind": kind, "from": frm, "from_name": "", "to": to, "cc": [], "subject": subject,
                "date": _iso(at), "received_at": _iso(at), "text": body, "language": lang,
                "spool": f"{at:%Y/%m/%d}/{k}-{i}.eml" if direction == "in" else None, "mailbox": "support",
                "uid": k * 4 + i if direction == "in" else None, "attachments": []}

    msgs = [msg(0, "in", "customer", created, text, cust, [SUPPORT]),
            msg(1, "out", "ack", created, f"[{tid}] ack", SUPPORT, [cust])]
    if answered:
        msgs.append(msg(2, "out", "resolved" if resolved else "progress", resolved or first_resp,
                        _ANSWER[lang], SUPPORT, [cust]))
    if rating:
        msgs.append(msg(3, "in", "customer", closed, str(rating), cust, [SUPPORT]))
    return ticket, msgs


def _outbox_row(t: dict, m: dict, file_ref: str) -> dict:
    return {"ticket_id": t["id"], "template": m["kind"], "message_id": m["message_id"], "to": m["to"],
            "sender": SUPPORT, "mailbox": "support", "subject": m["subject"], "status": "sent", "auto": True,
            "attempts": 1, "created_at": m["date"], "next_attempt_at": m["date"], "last_error": None,
            "sent_at": m["date"], "file": file_ref}


class _Writer:
    """Tickets into a Store in big batches; sent rows for mail of the last 7 days."""

    def __init__(self, data_dir: Path, now: datetime, seed: int, log=print):
        from mailflow.store import Store

        self.store = Store(data_dir)
        self.now = now
        self.rng = random.Random(seed)
        self.serials: dict[str, int] = {}
        self.k = 0
        self.log = log
        self.t0 = time.perf_counter()
        self.counts = {"tickets": 0, "messages": 0, "outbox": 0, "archived": 0}
        self.seg = None
        self.sample: dict[str, list[str]] = {"hot": [], "archived": [], "customers": []}

    def _segment_ref(self) -> str:
        """Sent rows point at a real outbox segment (one per 1,000 rows, placeholder bytes)."""
        from mailflow.spool import Segments

        if self.seg is None or self.seg[1] >= 1000:
            name = Segments(self.store.dir / "outbox", ".out").write([b"x" * 2000 * 1000])[0].partition(":")[0]
            self.seg = [name, 0]
        ref = f"{self.seg[0]}:{self.seg[1] * 2000}:2000"
        self.seg[1] += 1
        return ref

    def write(self, n: int, created, closed, status, archive_days: float | None, label: str) -> None:
        week_ago = _iso(self.now - timedelta(days=7))
        for start in range(0, n, CHUNK):
            with self.store.batch():
                for _ in range(start, min(n, start + CHUNK)):
                    c = created(self.rng)
                    cl = closed(self.rng, c)
                    st = status(self.rng) if callable(status) else status
                    t, msgs = _ticket_and_messages(self.rng, self.serials, self.k, c, cl, st)
                    self.k += 1
                    self.store.add_ticket(t)
                    for m in msgs:
                        self.store.add_message(m)
                        if m["direction"] == "out" and m["date"] >= week_ago:
                            self.store.add_outbox(_outbox_row(t, m, self._segment_ref()))
                            self.counts["outbox"] += 1
                    self.counts["tickets"] += 1
                    self.counts["messages"] += len(msgs)
                    if len(self.sample["customers"]) < 20 and self.rng.random() < 0.001:
                        self.sample["customers"].append(t["customer_email"])
                if archive_days is not None:
                    self.counts["archived"] += self.store.archive(archive_days, now=self.now)
            self.log(f"  {label}: {min(n, start + CHUNK)}/{n} written, {self.counts['archived']} archived in all "
                     f"({time.perf_counter() - self.t0:.0f} s)")

    def finish(self, seen: int = 0) -> dict:
        with self.store.batch():
            for day, n in self.serials.items():  # the daily serials a real install has in its meta table
                self.store.set_meta(f"serial:CW:{day}", n)
            for i in range(seen):  # auto-replies and bounces of the last 30 days
                at = self.now - timedelta(days=30 * i / max(seen, 1))
                self.store.mark_seen(f"auto{i}@auto.example", f"{i:016x}", "auto", now=at)
            self.store.storage.dirty = True  # end with a fresh snapshot, as a compaction would
        hot = sorted(t["id"] for t in self.store.all_tickets())
        self.sample["hot"] = hot[:: max(1, len(hot) // 10)][:10]
        self.sample["archived"] = [r[0] for r in self.store.archive_index._query(
            "SELECT ticket_id FROM ticket WHERE rowid % 50000 = 7 LIMIT 10")]
        return {**self.counts, "hot": len(hot), "seconds": round(time.perf_counter() - self.t0),
                "sample": self.sample, "now": _iso(self.now)}


def _old(rng):
    return SCALE_NOW - timedelta(days=rng.uniform(40, 400))


def _closed_after(rng, created):
    return min(created + timedelta(days=rng.uniform(1, 30)), SCALE_NOW - timedelta(days=31))


def make_closed(data_dir: Path, count: int, seed: int = 7, now: datetime | None = None, log=print) -> dict:
    """`count` closed tickets in a fresh data dir, archived as housekeeping would (3 days)."""
    w = _Writer(data_dir, now or SCALE_NOW, seed, log)
    w.write(count, _old, _closed_after, "closed", 3, "closed tickets")
    return w.finish()


def make_open(data_dir: Path, count: int = 50_000, seed: int = 8, log=print) -> dict:
    w = _Writer(data_dir, SCALE_NOW, seed, log)
    w.write(count, lambda r: SCALE_NOW - timedelta(days=r.uniform(0.05, 30)), lambda r, c: None,
            lambda r: r.choice(["new", "open", "open", "open", "pending", "resolved"]), None, "open tickets")
    return w.finish(seen=2_000)


def make_team(data_dir: Path, seed: int = 9, log=print) -> dict:
    """1M archived, 82k closed in the last 30 days (archived after 3), 5k open, as one history."""
    w = _Writer(data_dir, SCALE_NOW, seed, log)
    w.write(1_000_000, _old, _closed_after, "closed", 3, "archived history")

    def recent_created(r):
        return SCALE_NOW - timedelta(days=r.uniform(1.2, 45))

    def recent_closed(r, c):
        lo = max(c + timedelta(hours=6), SCALE_NOW - timedelta(days=30))
        return min(SCALE_NOW - timedelta(hours=1), lo + timedelta(days=r.uniform(0, 5)))

    w.write(82_000, recent_created, recent_closed, "closed", 3, "closed in the last 30 days")
    w.write(5_000, lambda r: SCALE_NOW - timedelta(days=r.uniform(0.05, 14)), lambda r, c: None,
            lambda r: r.choice(["new", "open", "open", "open", "pending", "resolved"]), None, "open tickets")
    return w.finish(seen=2_500)


BUILDERS = {"archived-1m": lambda d, log: make_closed(d, 1_000_000, log=log),
            "open-50k": lambda d, log: make_open(d, log=log),
            "team-1m": lambda d, log: make_team(d, log=log)}


def cached_dir(out: Path, kind: str, log=print) -> tuple[Path, dict]:
    """bench/out/<kind>-v<VERSION>/data, built on first use (a `.done` file holds its facts)."""
    base = out / f"{kind}-v{VERSION}"
    data = base / "data"
    if kind == "empty":
        data.mkdir(parents=True, exist_ok=True)
        return data, {"tickets": 0, "hot": 0, "sample": {"hot": [], "archived": [], "customers": []}}
    if (base / ".done").exists():
        return data, json.loads((base / ".done").read_text())
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    log(f"building {kind} in {data} (once; cached for later runs)")
    info = BUILDERS[kind](data, log)
    (base / ".done").write_text(json.dumps(info))
    return data, info


def cached_closed_dir(out: Path, count: int, log=print) -> Path:
    """bench/out/closed-<count>-v<VERSION>/data (bench/run.py --scale)."""
    base = out / f"closed-{count}-v{VERSION}"
    data = base / "data"
    if (base / ".done").exists():
        return data
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    log(f"building {count} closed tickets in {data} (once; cached for later runs)")
    info = make_closed(data, count, log=log)
    (base / ".done").write_text(json.dumps(info))
    return data


def copy_data_dir(src: Path, dst: Path) -> None:
    """A private copy for one run (the run writes into it). Archive month files and segments are
    never rewritten in place (appends go to the newest months; erase and retention replace files),
    so all but the two newest month files, and every segment, are hard-linked: a 1M-ticket
    directory copies in seconds and shares the page cache."""
    if dst.exists():
        shutil.rmtree(dst)
    months = sorted((src / "archive").glob("[0-9][0-9][0-9][0-9]-[0-9][0-9].jsonl"))
    keep_copy = {p.name for p in months[-2:]}

    def link_or_copy(s: str, d: str) -> None:
        p = Path(s)
        immutable = (p.suffix in (".seg", ".out")) or (p.parent.name == "archive" and p.suffix == ".jsonl"
                                                       and p.name not in keep_copy)
        if immutable:
            try:
                os.link(s, d)
                return
            except OSError:
                pass
        shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link_or_copy,
                    ignore=shutil.ignore_patterns("*.lock", "daemon.lock", "*.tmp"))


# ---- measuring ------------------------------------------------------------------------------------

COMMIT_SCRIPT = r"""
import json, statistics, sys, time
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from mailflow.store import Store
t = time.perf_counter(); s = Store(Path(sys.argv[1])); load = time.perf_counter() - t
tids = [t["id"] for t in s.all_tickets()][:20] or [None]
out = []
for i in range(20):
    t = time.perf_counter()
    with s.batch():
        tid = tids[i % len(tids)]
        if tid:
            s.update_ticket(tid, {"updated_at": "2026-11-23T12:00:00+00:00"})
        s.set_checkpoint("bench-commit", last_uid=i)
    out.append(time.perf_counter() - t)
print(json.dumps({"load": load, "commit": statistics.median(out)}))
"""

CLI = [("tickets list", ["tickets", "list"]), ("status", ["status"]), ("outbox list", ["outbox", "list"]),
       ("quarantine list", ["quarantine", "list"]), ("tickets show hot", ["tickets", "show", "{hot}"]),
       ("tickets show archived", ["tickets", "show", "{archived}"]),
       ("tickets search --customer", ["tickets", "search", "--customer", "{customer}"])]


def _config(path: Path, data_dir: Path, dv, user: str, sink) -> Path:
    from bench.run import config_head, mailbox_toml, smtp_toml

    path.write_text(config_head(data_dir, by="bench/scale.py") + mailbox_toml(dv, user, batch_size=100)
                    + smtp_toml(sink), encoding="utf-8")
    return path


class Scale:
    def __init__(self, a: argparse.Namespace):
        from bench import corpus
        from bench.run import TimedSink
        from tests.support.dovecot import Dovecot

        self.a = a
        self.out = a.out
        self.mails = corpus.build(a.n, a.seed)
        self.expected = corpus.counts(self.mails)["new"]
        self.first = [m.raw for m in corpus.build(40, a.seed + 500) if m.kind == "new"]
        self.work = Path(tempfile.mkdtemp(prefix="scale-", dir=self.out))
        self.dv = Dovecot(self.work / "dovecot", users={})
        self.sink = TimedSink()
        self.users = 0
        self.errors: list[str] = []
        self.now = _iso(SCALE_NOW)

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def user(self, raws: list[bytes]) -> str:
        from bench.run import PASSWORD, fill_mailbox

        self.users += 1
        u = f"scale{self.users}"
        if raws:
            fill_mailbox(self.dv, u, raws)
        else:
            self.dv.add_user(u, PASSWORD)
        return u

    def mailflow(self, cfg: Path, args: list[str], label: str, timeout: float = 1800) -> dict:
        from bench.run import run_measured

        os.sync()
        r = run_measured([sys.executable, "-m", "mailflow", "--config", str(cfg), "--now", self.now, *args],
                         self.work, label, timeout)
        if r["rc"] != 0:
            raise RuntimeError(f"{label}: exit {r['rc']}\n{r['stdout'][-2000:]}\n{r['stderr_tail']}")
        return r

    def once(self, kind: str, i: int, data: Path, raws: list[bytes], expect: int, label: str) -> dict:
        from mailflow.store import Store

        before = len(Store(data).all_tickets())
        u = self.user(raws)
        cfg = _config(self.work / f"{label}.toml", data, self.dv, u, self.sink)
        self.sink.clear()
        r = self.mailflow(cfg, ["run", "--once"], label)
        after = len(Store(data).all_tickets())
        if after - before != expect or self.sink.count() != expect:
            raise RuntimeError(f"{label}: {after - before} new tickets, {self.sink.count()} acknowledgements, "
                               f"expected {expect} of each\n{r['stderr_tail']}")
        self.sink.clear()
        r["cfg"] = cfg
        return r

    def measure(self, kind: str, i: int) -> dict:
        src, info = cached_dir(self.out, kind, self.log)
        data = self.work / f"{kind}-{i}"
        t = time.perf_counter()
        copy_data_dir(src, data)
        self.log(f"run {i} {kind}: copied in {time.perf_counter() - t:.1f} s")
        res: dict = {"kind": kind}
        first = self.once(kind, i, data, self.first[i % len(self.first):][:1], 1, f"{kind}-{i}-first")
        res["first_s"] = first["wall"]
        b = self.once(kind, i, data, [m.raw for m in self.mails], self.expected, f"{kind}-{i}-backlog")
        res.update(backlog_s=b["wall"], rss_mb=b["maxrss_kb"] / 1024, cpu_s=b["user"] + b["sys"])
        self.log(f"run {i} {kind}: first mail {res['first_s']:.2f} s, backlog {b['wall']:.2f} s "
                 f"({self.a.n / b['wall']:.0f} msg/s), peak RSS {res['rss_mb']:.0f} MB")
        sample = info.get("sample", {})
        fill = {"hot": (sample.get("hot") or ["-"])[0], "archived": (sample.get("archived") or ["-"])[0],
                "customer": (sample.get("customers") or ["cust00001@customer.example"])[0]}
        res["cli"] = {}
        for name, argv in CLI:
            if ("{hot}" in argv and fill["hot"] == "-") or ("{archived}" in argv and fill["archived"] == "-"):
                continue
            argv = [x.format(**fill) for x in argv]
            r = self.mailflow(first["cfg"], argv, f"{kind}-{i}-{name.replace(' ', '_')}")
            res["cli"][name] = {"s": r["wall"], "rss_mb": r["maxrss_kb"] / 1024}
        p = subprocess.run([sys.executable, "-c", COMMIT_SCRIPT, str(data), str(REPO)], capture_output=True,
                           text=True, timeout=1800)
        if p.returncode != 0:
            raise RuntimeError(f"commit timing failed: {p.stderr[-2000:]}")
        res.update({f"commit_{k}": v for k, v in json.loads(p.stdout.strip().splitlines()[-1]).items()})
        self.log(f"run {i} {kind}: cli " + ", ".join(f"{k} {v['s']:.2f}s" for k, v in res["cli"].items())
                 + f"; one commit {res['commit_commit'] * 1000:.0f} ms (store load {res['commit_load']:.2f} s)")
        if not self.a.keep_work:
            shutil.rmtree(data, ignore_errors=True)
        return res

    def run(self) -> list[dict]:
        runs = []
        self.dv.start()
        self.sink.start()
        try:
            for i in range(1, self.a.runs + 1):
                row = {}
                for kind in self.a.kinds:
                    try:
                        row[kind] = self.measure(kind, i)
                    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                        self.errors.append(f"run {i} {kind}: {e}")
                        self.log(f"ERROR run {i} {kind}: {e}")
                runs.append(row)
        finally:
            self.sink.stop()
            self.dv.cleanup()
            if not self.a.keep_work:
                shutil.rmtree(self.work, ignore_errors=True)
        return runs


def summarise(runs: list[dict], n: int) -> dict[str, dict]:
    out: dict[str, dict] = {}
    kinds = {k for r in runs for k in r}
    for kind in kinds:
        rs = [r[kind] for r in runs if kind in r]

        def med(f, rs=rs):
            vals = [f(x) for x in rs]
            vals = [v for v in vals if v is not None]
            return statistics.median(vals) if vals else None

        s = {"first_s": med(lambda x: x["first_s"]), "rss_mb": med(lambda x: x["rss_mb"]),
             "backlog_s": med(lambda x: x["backlog_s"]), "commit_ms": med(lambda x: x["commit_commit"] * 1000),
             "load_s": med(lambda x: x["commit_load"])}
        s["rate"] = n / s["backlog_s"] if s["backlog_s"] else None
        s["share"] = None  # below
        names = {c for x in rs for c in x.get("cli", {})}
        s["cli"] = {c: med(lambda x, c=c: x.get("cli", {}).get(c, {}).get("s")) for c in sorted(names)}
        s["cli_max"] = max([v for v in s["cli"].values() if v is not None], default=None)
        out[kind] = s
    for kind, s in out.items():  # backlog as a share of the empty directory's, per run, then the median
        shares = [r["empty"]["backlog_s"] / r[kind]["backlog_s"] for r in runs if "empty" in r and kind in r]
        s["share"] = statistics.median(shares) if shares else None
    return out


def table(summary: dict[str, dict], n: int) -> str:
    head = ("| data directory | first-mail start-up | peak RSS | backlog (share of empty) | `tickets list` | "
            "slowest CLI command | one commit |\n|---|---|---|---|---|---|---|\n")
    rows = []
    for kind in KINDS:
        s = summary.get(kind)
        if not s:
            continue
        slowest = max(s["cli"].items(), key=lambda kv: kv[1] or 0) if s["cli"] else ("-", None)
        rows.append(f"| {kind} | {s['first_s']:.2f} s | {s['rss_mb']:.0f} MB | {s['rate']:.0f} msg/s "
                    f"({(s['share'] or 0):.2f}) | {s['cli'].get('tickets list', 0):.2f} s | "
                    f"{slowest[1] or 0:.2f} s ({slowest[0]}) | {s['commit_ms']:.0f} ms |")
    return head + "\n".join(rows) + "\n"


def record(path: Path, section: str) -> None:
    """Add a section to RESULTS.md before its "## Results" table (bench/run.py --record appends rows to
    that table, which must stay last)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    mark = "\n## Results\n"
    if mark in text:
        i = text.index(mark)
        text = text[:i].rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n" + text[i:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build (and cache) one data directory")
    b.add_argument("kind", choices=[k for k in KINDS if k != "empty"])
    r = sub.add_parser("run", help="measure")
    r.add_argument("--runs", type=int, default=3)
    r.add_argument("--n", type=int, default=1000, help="backlog size (the bench/run.py corpus)")
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--kinds", default=",".join(KINDS))
    r.add_argument("--record", nargs="?", const=REPO / "bench" / "RESULTS.md", type=Path, default=None)
    r.add_argument("--json", type=Path)
    r.add_argument("--keep-work", action="store_true")
    for p in (b, r):
        p.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    a = ap.parse_args(argv)
    a.out = a.out.resolve()
    a.out.mkdir(parents=True, exist_ok=True)
    if a.cmd == "build":
        _path, info = cached_dir(a.out, a.kind)
        print(json.dumps({k: v for k, v in info.items() if k != "sample"}))
        return 0
    a.kinds = [k.strip() for k in a.kinds.split(",") if k.strip()]
    if "empty" not in a.kinds:
        a.kinds.insert(0, "empty")
    for kind in a.kinds:  # build what is missing before any clock starts
        cached_dir(a.out, kind)
    # bytecode as an installed package has it (pip compiles at install; PYTHONDONTWRITEBYTECODE, set in
    # some environments, would otherwise make every measured command compile mailflow first)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "mailflow")], check=False,
                   stdout=subprocess.DEVNULL)
    sc = Scale(a)
    runs = sc.run()
    summary = summarise(runs, a.n)
    text = table(summary, a.n)
    print(text)
    for kind in a.kinds:
        s = summary.get(kind)
        if s:
            print(f"{kind}: " + ", ".join(f"{k} {v:.2f} s" for k, v in s["cli"].items() if v is not None))
    if a.json:
        a.json.write_text(json.dumps({"runs": runs, "summary": summary, "errors": sc.errors}, indent=1, default=str))
    if a.record and not sc.errors:
        from bench.run import git_rev, machine

        m = machine()
        record(a.record, f"### bench/scale.py, {datetime.now(UTC):%Y-%m-%d}, commit {git_rev()}, {m['cpu']}, "
               f"{m['cores']} cores, load {m['loadavg']:.1f}, N = {a.n}, medians of {a.runs}\n\n" + text)
    for e in sc.errors:
        print(f"ERROR {e}", file=sys.stderr)
    return 1 if sc.errors else 0


if __name__ == "__main__":
    sys.exit(main())
