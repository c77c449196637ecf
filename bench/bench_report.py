"""Report benchmark: `mailflow report --month M` over a data directory with a long history.

Builds (once, cached in ``bench/out/report-<N>-<months>m-v<VERSION>/``) a data directory that looks
like an install that has run for ``--months`` months: ``--tickets`` tickets spread evenly over them,
all closed and archived in ``archive/YYYY-MM.jsonl`` (the layout `Store.archive` writes, one line
``{"ticket": ..., "messages": [...]}`` per ticket, by UTC creation month) except ``--hot`` recent
ones still open in the hot database. Tickets carry the lifecycle's own history (status changes,
public answers, customer mail, pending spells, ratings, bad ratings that reopen, escalations) and
three or four messages each, so an archive line is about as big as a real one.

Then it runs the real CLI (``python -m mailflow report --month M --format json``) in a subprocess and
measures wall time and peak RSS (``wait4``):

- ``cold``: no summary cache yet (``archive/summaries/`` removed): every archive line of the months
  the report reads is parsed and summarized, and the cache is written;
- ``warm``: the cache is there (what every later report, and the scheduled mail, does);
- ``append``: the report month's file grows by ``--append`` tickets first (what a day of archiving
  adds); they are cut off again afterwards, so the cached data set stays as built.

The archive index of the data helper (`Store.iter_archived_summaries`) is not used here unless the
store has it; then ``warm`` measures it instead of the cache.

    python bench/bench_report.py                                   # 1,000,000 tickets, 36 months
    python bench/bench_report.py --tickets 100000 --months 12 --runs 1
    python bench/bench_report.py --record                          # ... and a row in bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

try:
    import orjson

    def _dumps(o) -> bytes:
        return orjson.dumps(o)
except ImportError:  # pragma: no cover
    def _dumps(o) -> bytes:
        return json.dumps(o, ensure_ascii=False, separators=(",", ":")).encode()

VERSION = 1
MARKER = "<!-- bench_report rows above -->"  # --record puts its row before this line of RESULTS.md
TZ = ZoneInfo("Asia/Shanghai")
AGENTS = [f"agent{i:02d}@support.example" for i in range(12)]
# category, team, priority weights (urgent, high, normal, low), share, tags
CATS = [("inquiry", "customer_service", (0, 1, 8, 1), 40, ("payment", "logistics")),
        ("complaint", "service_supervisor", (1, 7, 2, 0), 20, ("service_attitude", "after_sales")),
        ("fault", "tech", (3, 6, 1, 0), 25, ("product_quality", "login")),
        ("suggestion", "product", (0, 0, 2, 8), 10, ("feature",)),
        ("praise", "customer_service", (0, 0, 1, 9), 5, ())]
PRIOS = ("urgent", "high", "normal", "low")
TEXT = {"zh": "您好，我的订单{n}一直没有收到，已经联系过客服两次了，麻烦尽快帮我查一下是什么原因，谢谢。",
        "en": "Hello, my order {n} has still not arrived and I have contacted support twice already. "
              "Could you please look into it as soon as possible? Thanks."}
ANSWER = {"zh": "您好，您的问题已经处理完毕：包裹已重新发出，预计三天内送达。如有其他问题请直接回复本邮件。",
          "en": "Hello, we have resolved your request: the parcel was sent again and should arrive within "
                "three days. Reply to this mail if anything else comes up."}


def _iso(d: datetime) -> str:
    return d.astimezone(UTC).isoformat(timespec="seconds")


class _Gen:
    """One ticket's life, as the pipeline records it (status events from the lifecycle table)."""

    def __init__(self, rng: random.Random, tid: str, created: datetime, k: int, close: bool = True):
        self.rng, self.tid, self.k = rng, tid, k
        cat, team, weights, _share, tags = rng.choices(CATS, weights=[c[3] for c in CATS])[0]
        prio = rng.choices(PRIOS, weights=weights)[0]
        self.lang = "zh" if rng.random() < 0.6 else ("en" if rng.random() < 0.8 else "zh-Hant")
        self.cust = f"cust{rng.randrange(200_000):06d}@customer.example"
        self.agent = rng.choice(AGENTS)
        self.now = created
        self.status = "new"
        self.t = {
            "id": tid, "status": "new", "close_reason": None, "category": cat, "priority": prio, "team": team,
            "assignee": self.agent, "tags": [rng.choice(tags)] if tags and rng.random() < 0.7 else [],
            "customer_email": self.cust, "customer_name": "", "tier": "standard",
            "subject": f"订单{k}的问题" if self.lang != "en" else f"About order {k}", "locale": self.lang,
            "mailbox": "support", "created_at": _iso(created), "updated_at": _iso(created),
            "first_response_at": None, "resolved_at": None, "closed_at": None, "silence_from": None,
            "participants": [], "rules_fired": [["classify", f"category-{cat}"]], "rating": None, "ratings": [],
            "reopen_count": 0, "auto_sent": 2, "failing_addresses": [], "mentioned_staff": [],
            "events": [{"at": _iso(created), "kind": "created", "actor": "customer", "detail": "from mailbox support",
                        "priority": prio, "category": cat},
                       {"at": _iso(created), "kind": "rules", "actor": "rules", "detail": f"classify/category-{cat}"}],
        }
        self.msgs: list[dict] = []
        self._msg("in", "customer", created, TEXT["en" if self.lang == "en" else "zh"].replace("{n}", str(k)))
        self._msg("out", "ack", created, f"[{tid}] 我们已收到您的来信")
        self._life(close)

    def _later(self, hours: float) -> datetime:
        self.now += timedelta(hours=self.rng.expovariate(1 / hours))
        return self.now

    def _ev(self, kind: str, actor: str, detail: str = "", **kw) -> None:
        self.t["events"].append({"at": _iso(self.now), "kind": kind, "actor": actor, "detail": detail, **kw})

    def _status(self, to: str, actor: str, reason: str | None = None, reopen: bool = False) -> None:
        ev = {"from": self.status, "to": to}
        if reason:
            ev["reason"] = reason
        if reopen:
            ev["reopen"] = True
        self._ev("status", actor, f"{self.status} -> {to}", **ev)
        self.status = to
        at = _iso(self.now)
        if to == "resolved":
            self.t.update(resolved_at=at, silence_from=at)
        elif to == "closed":
            self.t.update(closed_at=at, close_reason=reason)
        if reopen:
            self.t.update(reopen_count=self.t["reopen_count"] + 1, resolved_at=None, closed_at=None,
                          close_reason=None)

    def _msg(self, direction: str, kind: str, at: datetime, text: str) -> None:
        i = len(self.msgs)
        sup, cust = "support@support.example", self.cust
        self.msgs.append({"ticket_id": self.tid, "message_id": f"b{self.k}.{i}.{self.tid.lower()}@x.example",
                          "hash": f"{self.rng.getrandbits(48):012x}" if direction == "in" else "",
                          "direction": direction, "kind": kind, "from": cust if direction == "in" else sup,
                          "to": [sup] if direction == "in" else [cust], "cc": [], "subject": self.t["subject"],
                          "date": _iso(at), "received_at": _iso(at), "text": text, "language": self.lang,
                          "spool": f"{at:%Y/%m/%d}/{self.k}-{i}.seg:0:2048" if direction == "in" else None,
                          "mailbox": "support", "uid": None, "attachments": []})

    def _public(self, kind: str) -> None:
        if not self.t["first_response_at"]:
            self.t["first_response_at"] = _iso(self.now)
        self._ev("public_reply", self.agent, f"{kind} mail to the customer")
        self._msg("out", kind, self.now, ANSWER["en" if self.lang == "en" else "zh"] if kind == "resolved" else "我们正在处理，请稍候。")

    def _life(self, close: bool) -> None:
        rng = self.rng
        self._later(5)
        if rng.random() < 0.07:
            self._ev("escalated", "scheduler", "to the team lead", to=["lead@support.example"])
        self._status("open", self.agent)
        self._public("progress")
        if rng.random() < 0.25:
            self._later(2)
            self._status("pending", self.agent)
            self._public("progress")
            self._later(20)
            self._ev("customer_mail", "customer", "the customer wrote")
            self._status("open", "customer")
            self._msg("in", "customer", self.now, "订单号是 20261123-88。")
        elif rng.random() < 0.3:
            self._later(10)
            self._ev("customer_mail", "customer", "the customer wrote")
            self._later(6)
            self._public("progress")
        if not close:
            return
        self._later(24)
        self._status("resolved", self.agent)
        self._public("resolved")
        if rng.random() < 0.55:
            self._later(10)
            score = rng.choices((1, 2, 3, 4, 5), weights=(4, 4, 8, 24, 60))[0]
            self.t["ratings"].append({"at": _iso(self.now), "score": score})
            self.t["rating"] = score
            self._ev("rating", "customer", f"satisfaction {score}/5", score=score)
            if score >= 3:
                self._status("closed", "customer", "confirmed")
                return
            self._status("open", "customer", reopen=True)
            self._later(12)
            self._status("resolved", self.agent)
            self._public("resolved")
        self.now += timedelta(days=7)
        self._status("closed", "system", "auto")

    def done(self) -> tuple[dict, list[dict]]:
        self.t["status"] = self.status
        self.t["updated_at"] = _iso(self.now)
        return self.t, self.msgs


def _months(last: date, n: int) -> list[date]:
    out, d = [], last.replace(day=1)
    for _ in range(n):
        out.append(d)
        d = (d - timedelta(days=1)).replace(day=1)
    return out[::-1]


def generate(data: Path, tickets: int, months: int, report_month: date, hot: int, seed: int = 11, log=print) -> dict:
    """Write the data directory: archive month files, then the hot tickets through the Store."""
    from mailflow.store import Store

    rng = random.Random(seed)
    archive = data / "archive"
    archive.mkdir(parents=True, exist_ok=True)
    month_list = _months(report_month, months)
    per = tickets // len(month_list)
    serials: dict[str, int] = {}
    files: dict[str, object] = {}
    t0 = time.perf_counter()
    written = 0
    try:
        for mi, m0 in enumerate(month_list):
            nxt = (m0 + timedelta(days=32)).replace(day=1)
            start = datetime.combine(m0, datetime.min.time(), tzinfo=TZ)
            span = (datetime.combine(nxt, datetime.min.time(), tzinfo=TZ) - start).total_seconds()
            count = per + (tickets - per * len(month_list) if mi == len(month_list) - 1 else 0)
            offsets = sorted(rng.uniform(0, span) for _ in range(count))
            for off in offsets:
                created = start + timedelta(seconds=off)
                day = created.strftime("%Y%m%d")
                serials[day] = serials.get(day, 0) + 1
                tid = f"CW{day}{serials[day]:04d}"
                t, msgs = _Gen(rng, tid, created, written).done()
                key = t["created_at"][:7]
                f = files.get(key)
                if f is None:
                    f = files[key] = open(archive / f"{key}.jsonl", "ab")  # noqa: SIM115
                f.write(_dumps({"ticket": t, "messages": msgs}) + b"\n")
                written += 1
            log(f"  {m0:%Y-%m}: {count} tickets ({written}/{tickets}, {time.perf_counter() - t0:.0f} s)")
    finally:
        for f in files.values():
            f.close()
    store = Store(data)
    nxt = datetime.combine((report_month + timedelta(days=32)).replace(day=1), datetime.min.time(), tzinfo=TZ)
    with store.batch():
        for i in range(hot):  # still open when the report runs (the day after the month): backlog
            created = nxt - timedelta(days=rng.uniform(0, 25))
            day = created.strftime("%Y%m%d")
            serials[day] = serials.get(day, 0) + 1
            t, msgs = _Gen(rng, f"CW{day}{serials[day]:04d}", created, tickets + i, close=False).done()
            store.add_ticket(t)
            for m in msgs:
                store.add_message(m)
        for day, n in serials.items():
            store.set_meta(f"serial:CW:{day}", n)
    return {"tickets": tickets, "hot": hot, "months": months, "seconds": round(time.perf_counter() - t0, 1)}


def cached_dir(out: Path, tickets: int, months: int, report_month: date, hot: int, log=print) -> Path:
    base = out / f"report-{tickets}-{months}m-{report_month:%Y%m}-v{VERSION}"
    if (base / ".done").exists():
        return base
    shutil.rmtree(base, ignore_errors=True)
    (base / "data").mkdir(parents=True)
    log(f"building {tickets} tickets over {months} months in {base} (once; cached for later runs)")
    info = generate(base / "data", tickets, months, report_month, hot, log=log)
    (base / "mailflow.toml").write_text(
        f'[storage]\ndata_dir = "{base / "data"}"\n[company]\nname = "Bench Co."\n'
        + "".join(f'[[staff]]\nemail = "{a}"\nname = "Agent {i}"\nteams = ["{CATS[i % 5][1]}"]\n'
                  for i, a in enumerate(AGENTS)), encoding="utf-8")
    (base / ".done").write_text(json.dumps(info) + "\n")
    return base


def run_report(base: Path, month: str, now: str) -> dict:
    """One `mailflow report` in a subprocess: wall seconds, peak RSS (MB), the JSON it printed."""
    cmd = [sys.executable, "-m", "mailflow", "--config", str(base / "mailflow.toml"), "--now", now, "report",
           "--month", month, "--format", "json"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out = p.stdout.read()
    err = p.stderr.read()
    _pid, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"report failed ({status}): {err.decode(errors='replace')[-2000:]}")
    return {"seconds": wall, "rss_mb": usage.ru_maxrss / 1024, "cpu": usage.ru_utime + usage.ru_stime,
            "data": json.loads(out)}


def _append(base: Path, n: int, month: date) -> None:
    """What a day of archiving adds: n more closed tickets at the end of the report month's file."""
    rng = random.Random(99)
    start = datetime.combine(month, datetime.min.time(), tzinfo=TZ) + timedelta(days=20)
    with open(base / "data" / "archive" / f"{month:%Y-%m}.jsonl", "ab") as f:
        for i in range(n):
            created = start + timedelta(minutes=i)
            t, msgs = _Gen(rng, f"CWX{i:07d}", created, 10_000_000 + i).done()
            f.write(_dumps({"ticket": t, "messages": msgs}) + b"\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tickets", type=int, default=1_000_000)
    ap.add_argument("--months", type=int, default=36)
    ap.add_argument("--hot", type=int, default=2000)
    ap.add_argument("--month", default="2026-11", help="the report's month (the history ends with it)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--append", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    ap.add_argument("--record", nargs="?", const=str(ROOT / "bench" / "RESULTS.md"), default=None)
    a = ap.parse_args()
    y, m = (int(x) for x in a.month.split("-"))
    month = date(y, m, 1)
    base = cached_dir(a.out, a.tickets, a.months, month, a.hot, log=lambda s: print(s, file=sys.stderr))
    nxt = (month + timedelta(days=32)).replace(day=1)
    now = f"{nxt.isoformat()}T10:00+08:00"
    cache = base / "data" / "archive" / "summaries"
    cold, warm = [], []
    for i in range(a.runs):
        shutil.rmtree(cache, ignore_errors=True)
        cold.append(run_report(base, a.month, now))
        print(f"  cold run {i + 1}: {cold[-1]['seconds']:.1f} s, {cold[-1]['rss_mb']:.0f} MB", file=sys.stderr)
        warm.append(run_report(base, a.month, now))
        print(f"  warm run {i + 1}: {warm[-1]['seconds']:.2f} s, {warm[-1]['rss_mb']:.0f} MB", file=sys.stderr)
    month_file = base / "data" / "archive" / f"{month:%Y-%m}.jsonl"
    size = month_file.stat().st_size
    _append(base, a.append, month)
    try:
        appended = run_report(base, a.month, now)
    finally:  # back to the cached data set (the cache of that month is made again next time)
        with open(month_file, "r+b") as f:
            f.truncate(size)
    d = warm[-1]["data"]
    assert d == cold[-1]["data"] | {"generated_at": d["generated_at"]}, "cold and warm reports differ"
    assert appended["data"]["tickets_new"] == d["tickets_new"] + a.append, "the appended tickets are missing"
    med = statistics.median
    line = (f"mailflow-bench-report tickets={a.tickets:,} months={a.months} hot={a.hot} month={a.month} "
            f"| cold={med(r['seconds'] for r in cold):.1f} s rss {max(r['rss_mb'] for r in cold):.0f} MB "
            f"| warm={med(r['seconds'] for r in warm):.2f} s rss {max(r['rss_mb'] for r in warm):.0f} MB "
            f"cpu {med(r['cpu'] for r in warm):.2f} s "
            f"| +{a.append} appended={appended['seconds']:.2f} s "
            f"| month: {d['tickets_new']} new, {d['tickets_resolved']} resolved, {d['csat']['ratings']} ratings "
            f"| load {os.getloadavg()[0]:.1f} python={platform.python_version()} cores={os.cpu_count()}")
    print(line)
    if a.record:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=ROOT).stdout.strip()
        row = (f"| {datetime.now(UTC):%Y-%m-%d} | {commit} | {platform.python_version()}, {os.cpu_count()} cores, "
               f"load {os.getloadavg()[0]:.1f} | {a.tickets:,} | {a.months} | {a.runs} "
               f"| {med(r['seconds'] for r in cold):.1f} | {max(r['rss_mb'] for r in cold):.0f} "
               f"| {med(r['seconds'] for r in warm):.2f} | {med(r['cpu'] for r in warm):.2f} "
               f"| {max(r['rss_mb'] for r in warm):.0f} | {appended['seconds']:.2f} |\n")
        path = Path(a.record)
        text = path.read_text(encoding="utf-8")
        if MARKER not in text:
            raise SystemExit(f"{path}: no {MARKER} line to put the row before")
        path.write_text(text.replace(MARKER, row + MARKER, 1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
