"""The SLA scheduler with 50,000 open tickets whose clocks run: what a wake-up costs.

    python bench/bench_scheduler.py [--tickets 50000] [--due 0,10,100]

Builds (once, cached under bench/out/) a data directory with N open tickets spread over the last 30
working days, every one with its SLA record and wake-up time computed the way the pipeline does, then
measures in one process, like the daemon:

* start-up: loading the store and building the wake-up index, and the RSS it adds;
* a wake-up with nothing due: asking the index for the earliest instant and the due tickets;
* a wake-up with K tickets due: deciding their timers (clocks, facts, escalation rules), in ms, and
  separately the batch commit that writes them (the commit rewrites the hot database: that part
  is the store's cost, not the scheduler's);
* the scheduler's own memory: RSS before and after building the index and running passes.
"""

from __future__ import annotations

import argparse
import gc
import random
import resource
import shutil
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailflow import config, slaclock  # noqa: E402
from mailflow.clock import iso  # noqa: E402
from mailflow.store import Store  # noqa: E402

NOW = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)  # Tuesday 11:00 Shanghai
CATS = [("fault", "high", "tech"), ("inquiry", "normal", "customer_service"),
        ("complaint", "high", "service_supervisor"), ("suggestion", "low", "product")]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(path: Path, n: int, cfg: config.Config) -> None:
    rng = random.Random(5)
    store = Store(path)
    with store.batch():
        for i in range(n):
            cat, prio, team = CATS[i % len(CATS)]
            created = NOW - timedelta(hours=rng.uniform(0.1, 30 * 24))
            tid = f"CW{created:%Y%m%d}{i:06d}"
            t = {"id": tid, "status": "open" if i % 3 else "new", "category": cat, "priority": prio, "team": team,
                 "assignee": f"agent{i % 20}@support.example", "tags": [], "customer_email": f"c{i}@x.example",
                 "customer_name": "", "tier": "standard", "subject": f"ticket {i}", "locale": "zh", "mailbox": None,
                 "created_at": iso(created), "updated_at": iso(created), "first_response_at": None,
                 "events": [{"at": iso(created), "kind": "created", "actor": "customer", "priority": prio,
                             "category": cat}], "sla_fired": [], "public_updates": 1, "last_public_at": iso(created)}
            if i % 3:
                answered = created + timedelta(minutes=rng.uniform(10, 300))
                t["first_response_at"] = iso(answered)
                t["events"].append({"at": iso(answered), "kind": "public_reply", "actor": "agent"})
            clocks = slaclock.clocks_of(t, cfg, NOW)  # as a running daemon keeps them: as of now
            t["sla"] = slaclock.sla_record(t, cfg, NOW, clocks)
            wake = slaclock.next_wake(t, cfg, clocks, NOW, {"days_pending": {3.0}})
            t["wake_at"] = iso(wake) if wake else None
            store.add_ticket(t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tickets", type=int, default=50_000)
    ap.add_argument("--due", default="0,10,100")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    a = ap.parse_args()
    cfg = config.defaults(a.out)
    cache = a.out / f"sched-{a.tickets}-v2"
    if not (cache / "mailflow.json").exists():
        t0 = time.perf_counter()
        shutil.rmtree(cache, ignore_errors=True)
        build(cache, a.tickets, cfg)
        print(f"built {a.tickets} open tickets in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    work = a.out / "sched-work"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(cache, work)

    from mailflow.runtime import Runtime

    gc.collect()
    base = rss_mb()
    t0 = time.perf_counter()
    cfg.data_dir = work
    rt = Runtime.load(cfg)
    p = rt.pipeline
    load_s = time.perf_counter() - t0
    after_load = rss_mb()
    wakes = len(rt.store._wakes)
    print(f"load: {load_s:.2f} s, RSS {base:.0f} -> {after_load:.0f} MB (store with {a.tickets} tickets, "
          f"{wakes} in the wake-up index)")

    # the index alone: what the scheduler asks on every wake-up
    t0 = time.perf_counter()
    for _ in range(1000):
        rt.store.next_wake()
        rt.store.due_tickets(NOW - timedelta(days=400))
    idx_us = (time.perf_counter() - t0) / 1000 * 1e6
    print(f"wake-up, nothing due: {idx_us:.1f} us (next_wake + due_tickets over the index)")

    p.timers.decide_many([(rt.store.ticket(rt.store._wakes[-1][1]), None)], NOW)  # warm the calendars
    for k in (int(x) for x in a.due.split(",") if x):
        # the instant at which exactly the next k tickets are due
        at = datetime.fromisoformat(rt.store._wakes[k - 1][0]) if k else NOW
        due = rt.store.due_tickets(at)
        tickets = [rt.store.ticket(t) for t in due]
        gc.collect()
        before = rss_mb()
        t0 = time.perf_counter()
        found = rt.store.due_tickets(at)
        decided = p.timers.decide_many([(t, None) for t in tickets], at) if tickets else []
        decide_ms = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        res = p.run_timers(at)
        pass_ms = (time.perf_counter() - t0) * 1000
        fired = sum(len(r.fired) for r in res)
        print(f"wake-up with {len(found)} due: index + decide {decide_ms:.1f} ms; the whole pass including its "
              f"batch commit {pass_ms:.0f} ms ({fired} firings); RSS {before:.0f} -> {rss_mb():.0f} MB "
              f"({len(decided)} decided)")
    print(f"scheduler RSS over the loaded store: {rss_mb() - after_load:+.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
