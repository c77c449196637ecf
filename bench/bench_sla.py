"""SLA clock benchmark: compute_clocks + next_wakeup for N synthetic tickets, and the memory of their
stored clock dicts.

Tickets are generated from a fixed seed: created in the four weeks before ``now`` (2026-11-30, so
some run over weekends and, with ``--holidays``, over the 2026 National Day week), priority and
targets from the default SLA policy on the default CN calendar (09:00-12:00, 13:30-18:00), then a
realistic mix of first answers, customer replies, pending spells, resolutions, reopens, closes and
priority changes (6-7 events a ticket on average). Figures, medians of ``--runs``:

- ``compute``: ``compute_clocks(events, now, calendar)`` + ``next_wakeup(clocks, now)`` per ticket;
- ``stored``: ``from_json`` of the three stored clock dicts + ``next_wakeup`` (the scheduler's path
  when it wakes from the database instead of replaying history);
- ``long-open``: the same compute for tickets open for a year (between() walks every day);
- memory: ``tracemalloc`` of N tickets' ``{clock: to_json(clock)}`` dicts, and their JSON size.

    python bench/bench_sla.py                  # 50,000 tickets, 3 runs
    python bench/bench_sla.py -n 10000 --runs 5 --holidays
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailflow.sla import (  # noqa: E402
    ClockEvent,
    compute_clocks,
    from_json,
    next_wakeup,
    parse_calendars,
    parse_sla,
    to_json,
)

NOW = datetime(2026, 11, 30, 15, 0, tzinfo=UTC)
PRIORITIES = ("urgent", "high", "normal", "low")


def synth(n: int, seed: int, policy, days_back: float, start: datetime) -> list[list[ClockEvent]]:
    """N tickets' clock events, deterministic for (n, seed)."""
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        t = start - timedelta(seconds=rnd.uniform(0, days_back * 86400))
        prio = rnd.choices(PRIORITIES, weights=(1, 3, 5, 2))[0]
        cal = policy.calendar_for(prio)
        evs = [ClockEvent(t, "created", targets=policy.targets(prio, rnd.choice((None, "vip"))), calendar=cal)]

        def later(hours: float) -> datetime:
            nonlocal t
            t = t + timedelta(hours=rnd.expovariate(1 / hours))
            return t

        if rnd.random() < 0.15:
            evs.append(ClockEvent(later(2), "targets", targets=policy.targets(rnd.choice(PRIORITIES))))
        if rnd.random() < 0.9:
            evs.append(ClockEvent(later(5), "staff_public"))
            for _ in range(rnd.choice((0, 1, 1, 2, 3))):
                evs.append(ClockEvent(later(8), "customer_mail"))
                if rnd.random() < 0.3:
                    evs.append(ClockEvent(later(3), "pending_on"))
                    evs.append(ClockEvent(later(20), "pending_off"))
                if rnd.random() < 0.8:
                    evs.append(ClockEvent(later(6), "staff_public"))
            if rnd.random() < 0.7:
                evs.append(ClockEvent(later(10), "resolved"))
                if rnd.random() < 0.1:
                    evs.append(ClockEvent(later(24), "reopened"))
                    evs.append(ClockEvent(later(2), "customer_mail"))
                    evs.append(ClockEvent(later(6), "staff_public"))
                    evs.append(ClockEvent(later(10), "resolved"))
                if rnd.random() < 0.5:
                    evs.append(ClockEvent(later(48), "closed"))
        out.append(evs)
    return out


def timed(fn, runs: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``runs`` calls (CPU time is the steadier figure on a shared
    machine: other processes' time slices do not count)."""
    wall, cpu = [], []
    for _ in range(runs):
        gc.collect()
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=50_000, help="tickets (default 50,000)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--holidays", action="store_true", help="end the creation window at 2026-10-10 instead "
                    "(tickets run over the National Day week and its make-up days)")
    args = ap.parse_args(argv)

    cals, problems = parse_calendars({"hours": ["09:00-12:00", "13:30-18:00"]}, None, "Asia/Shanghai", "bench")
    policy, p2 = parse_sla({"calendar": {"urgent": "24x7"}}, cals, {}, "bench")
    assert not problems and not p2, problems + p2
    now = datetime(2026, 10, 10, 15, tzinfo=UTC) if args.holidays else NOW
    default = cals["default"]

    print(f"generating {args.n:,} tickets ...", file=sys.stderr)
    tickets = synth(args.n, args.seed, policy, 28, now)
    n_events = sum(len(e) for e in tickets)
    long_n = max(1, args.n // 10)
    long_open = [[ClockEvent(now - timedelta(days=365), "created", targets=policy.targets("low"))]
                 for _ in range(long_n)]

    t0 = time.perf_counter()
    compute_clocks(tickets[0], now, default)  # holiday data for the years touched, once
    cold = time.perf_counter() - t0

    computed: list[dict] = []
    wakeups = 0

    def compute_all() -> None:
        nonlocal wakeups
        computed.clear()
        w = 0
        for evs in tickets:
            clocks = compute_clocks(evs, now, default)
            if next_wakeup(clocks, now) is not None:
                w += 1
            computed.append(clocks)
        wakeups = w

    print("compute_clocks + next_wakeup ...", file=sys.stderr)
    t_compute = timed(compute_all, args.runs)

    stored = [{k: to_json(c) for k, c in clocks.items()} for clocks in computed]
    cal_by_name = dict(cals)

    def stored_all() -> None:
        for d in stored:
            clocks = {k: from_json(v, cal_by_name) for k, v in d.items()}
            next_wakeup(clocks, now)

    print("from_json + next_wakeup ...", file=sys.stderr)
    t_stored = timed(stored_all, args.runs)

    def long_all() -> None:
        for evs in long_open:
            next_wakeup(compute_clocks(evs, now, default), now)

    print("long-open tickets ...", file=sys.stderr)
    t_long = timed(long_all, args.runs)

    # memory of the stored clock dicts, built fresh under tracemalloc (strings included)
    del stored
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    stored = [{k: to_json(c) for k, c in clocks.items()} for clocks in computed]
    mem = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    json_bytes = sum(len(json.dumps(d, separators=(",", ":"))) for d in stored)

    states: dict[str, int] = {}
    for clocks in computed:
        for c in clocks.values():
            states[c.state] = states.get(c.state, 0) + 1
    def us(t: tuple[float, float], n: int) -> str:
        return f"{t[0] / n * 1e6:.1f} us/ticket (cpu {t[1] / n * 1e6:.1f})"

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"mailflow-sla-bench n={args.n} runs={args.runs} events/ticket={n_events / args.n:.1f} | "
          f"compute+wakeup={us(t_compute, args.n)}, {t_compute[0]:.2f} s, first call {cold * 1e3:.0f} ms | "
          f"stored+wakeup={us(t_stored, args.n)} | "
          f"long-open(365d)={us(t_long, long_n)} | "
          f"stored clocks={mem / 2**20:.1f} MiB ({mem / args.n:.0f} B/ticket), json {json_bytes / args.n:.0f} B/ticket | "
          f"wakeups={wakeups} states={dict(sorted(states.items()))} | "
          f"cpu={platform.processor() or platform.machine()} cores={os.cpu_count()} load={load:.1f} "
          f"python={platform.python_version()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
