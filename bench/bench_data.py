"""What keeping the data safe costs, measured in-process (no mail servers):

- one commit at 1,000 / 13,000 / 50,000 hot tickets: appending the changed documents to the
  commit log (now) versus re-serialising the whole database (before), and loading the database
  with the cyclic GC running (before) and paused (now);
- the archive index on a 100,000-ticket history (`bench/scale.py`'s `closed-100000`): point
  queries (Message-ID -> ticket, ticket id -> entry) and the peak RSS of a process doing them;
- backup throughput (MB of data per second) at gzip levels 1, 3 and 6, and the lock time;
- restore, verify and a privacy erase on that directory.

    python -m bench.bench_data [--record] [--out bench/out]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import scale  # noqa: E402


def _hot(data: Path, n: int) -> None:
    from mailflow.store import Store

    rng = random.Random(n)
    s = Store(data)
    serials: dict[str, int] = {}
    with s.batch():
        for k in range(n):
            created = scale.SCALE_NOW - timedelta(days=rng.uniform(0.1, 30))
            t, msgs = scale._ticket_and_messages(rng, serials, k, created, None, "open")
            s.add_ticket(t)
            for m in msgs:
                s.add_message(m)


def commit_costs(work: Path) -> list[dict]:
    from mailflow.store import Store, _loads, materialize

    rows = []
    for n in (1_000, 13_000, 50_000):
        d = work / f"hot{n}"
        _hot(d, n)
        with Store(d).batch() as s0:
            s0.storage.dirty = True  # a snapshot in today's format
        gc.collect()
        t = time.perf_counter()
        s = Store(d)
        load_lazy = time.perf_counter() - t  # what a command that reads one table pays
        t = time.perf_counter()
        s.all_tickets()
        _ = s._msg, s._msgs_by_ticket, s._seen, s._meta
        materialize(s.storage.data)
        load_all = load_lazy + time.perf_counter() - t  # what a daemon ends up parsing
        raw = s.db_path.read_bytes()
        gc.collect()
        t = time.perf_counter()
        old = _loads(raw)  # before: one parse with the collector running, then every index
        idx = {}
        for k, m in old.get("messages", {}).items():
            idx.setdefault(m["message_id"], []).append((m.get("hash"), m.get("ticket_id"), k))
        load_before = time.perf_counter() - t
        del old, idx
        tids = [t["id"] for t in s.all_tickets()]
        append = []
        for i in range(20):
            t = time.perf_counter()
            with s.batch():
                s.update_ticket(tids[i * 7 % len(tids)], {"updated_at": f"2026-11-23T12:{i:02d}:00+00:00"})
                s.set_checkpoint("support", last_uid=i)
            append.append(time.perf_counter() - t)
        full = []
        for _ in range(3):
            t = time.perf_counter()
            s.storage.write_snapshot()
            full.append(time.perf_counter() - t)
        rows.append({"hot": n, "db_mb": s.db_path.stat().st_size / 1e6, "commit_ms": statistics.median(append) * 1000,
                     "full_rewrite_ms": statistics.median(full) * 1000, "load_lazy_s": load_lazy,
                     "load_all_s": load_all, "load_before_s": load_before})
        shutil.rmtree(d)
    return rows


LOOKUPS = r"""
import json, random, sys, time
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from mailflow.store import Store
t = time.perf_counter(); s = Store(Path(sys.argv[1]), create=False); opened = time.perf_counter() - t
idx = s.archive_index
ids = [r[0] for r in idx._query("SELECT ticket_id FROM ticket ORDER BY random() LIMIT 2000")]
mids = [r[0] for r in idx._query("SELECT message_id FROM msgid ORDER BY random() LIMIT 2000")]
t = time.perf_counter(); [s.archived_ticket_of(m) for m in mids]; mid_us = (time.perf_counter() - t) / len(mids) * 1e6
t = time.perf_counter(); [s.already_seen(m + "x", "h") for m in mids]; miss_us = (time.perf_counter() - t) / len(mids) * 1e6
t = time.perf_counter(); [s.archived_ticket(i) for i in ids]; read_us = (time.perf_counter() - t) / len(ids) * 1e6
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec
hwm = [int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:")][0]
print(json.dumps({"open_s": opened, "msgid_us": mid_us, "miss_us": miss_us, "read_us": read_us,
                  "rss_mb": hwm / 1024}))
"""


def index_costs(data: Path) -> dict:
    p = subprocess.run([sys.executable, "-c", LOOKUPS, str(data), str(REPO)], capture_output=True, text=True,
                       timeout=600)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-2000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def data_costs(src: Path, work: Path) -> dict:
    from mailflow import config as config_mod
    from mailflow.backup import backup, restore, verify_backup
    from mailflow.privacy import erase
    from mailflow.verify import verify

    out: dict = {"data_mb": sum(p.stat().st_size for p in src.rglob("*") if p.is_file()) / 1e6}
    d = work / "data"
    scale.copy_data_dir(src, d)
    out["backup"] = []
    for level in (1, 3, 6):
        b = work / f"b{level}"
        r = backup(d, b, level=level)
        out["backup"].append({"level": level, "mb_per_s": r.mb_per_s, "seconds": r.seconds,
                              "size_mb": r.size / 1e6, "locked_ms": r.locked_seconds * 1000})
        if level != 3:
            shutil.rmtree(b)
    [bk] = list((work / "b3").glob("*.tar.gz"))
    t = time.perf_counter()
    assert not verify_backup(bk).problems
    out["verify_backup_s"] = time.perf_counter() - t
    t = time.perf_counter()
    restore(bk, work / "restored")
    out["restore_s"] = time.perf_counter() - t
    shutil.rmtree(work / "restored")
    t = time.perf_counter()
    problems = verify(d)
    out["verify_s"] = time.perf_counter() - t
    out["verify_problems"] = len(problems)
    cfg = config_mod.defaults()
    cfg.data_dir = d
    cust = json.loads((src.parent / ".done").read_text())["sample"]["customers"][0]
    t = time.perf_counter()
    r = erase(cfg, cust)
    out["erase_s"] = time.perf_counter() - t
    out["erase_changed"] = {k: v for k, v in r.changed.items() if v}
    shutil.rmtree(d)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    ap.add_argument("--record", nargs="?", const=REPO / "bench" / "RESULTS.md", type=Path, default=None)
    ap.add_argument("--tickets", type=int, default=100_000, help="history size for the index/backup figures")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-data-", dir=a.out))
    try:
        print("commit costs ...", file=sys.stderr, flush=True)
        commits = commit_costs(work)
        src = scale.cached_closed_dir(a.out, a.tickets, log=lambda m: print(m, file=sys.stderr))
        print("index ...", file=sys.stderr, flush=True)
        idx = index_costs(src)
        print("backup, restore, verify, erase ...", file=sys.stderr, flush=True)
        dc = data_costs(src, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = ["| hot tickets | database | one commit (log append) | one commit before (whole rewrite) | open (lazy) "
             "| open + parse everything (GC paused) | parse everything before (GC running) |",
             "|---|---|---|---|---|---|---|"]
    for r in commits:
        lines.append(f"| {r['hot']:,} | {r['db_mb']:.0f} MB | {r['commit_ms']:.1f} ms | {r['full_rewrite_ms']:.0f} ms "
                     f"| {r['load_lazy_s']:.2f} s | {r['load_all_s']:.2f} s | {r['load_before_s']:.2f} s |")
    lines += ["", f"Archive index, {a.tickets:,} archived tickets: Message-ID -> ticket {idx['msgid_us']:.0f} µs "
              f"(a miss {idx['miss_us']:.0f} µs), ticket id -> entry read {idx['read_us']:.0f} µs, process peak RSS "
              f"{idx['rss_mb']:.0f} MB.", "",
              "| gzip level | backup MB/s | seconds | backup size | store locked |", "|---|---|---|---|---|"]
    for b in dc["backup"]:
        lines.append(f"| {b['level']} | {b['mb_per_s']:.0f} | {b['seconds']:.1f} | {b['size_mb']:.0f} MB "
                     f"| {b['locked_ms']:.0f} ms |")
    lines += ["", f"Data directory {dc['data_mb']:.0f} MB: verify --backup {dc['verify_backup_s']:.1f} s, restore "
              f"{dc['restore_s']:.1f} s, verify {dc['verify_s']:.1f} s ({dc['verify_problems']} problems: the "
              f"generated history has no raw mail files), privacy erase of one customer {dc['erase_s']:.1f} s "
              f"({dc['erase_changed']})."]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.record:
        from bench.run import git_rev, machine
        from bench.scale import record

        m = machine()
        record(a.record, f"### bench/bench_data.py, {datetime.now(UTC):%Y-%m-%d}, commit {git_rev()}, {m['cpu']}, "
               f"{m['cores']} cores, load {m['loadavg']:.1f}\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
