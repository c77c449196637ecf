"""Interleaved runs of the backlog benchmark on two commits: is a change within X% of before?

    python bench/compare.py OLD_REV NEW_REV --runs 5 --n 1000 [--env MAILFLOW_X=1]

Each commit is checked out once into `bench/out/compare-<rev>` (a git worktree), then the two run
`bench/run.py --n N --runs 1 --floors` by turns (old, new, old, new, ...), so machine load drifts onto
both alike. Each run measures mailflow against the naive pipeline over the same INBOX in the same
minute; the figure compared is mailflow's time as a multiple of the naive pipeline's (x naive), whose
median over the runs is printed for both commits with the change in percent (and the same for msg/s).
Also the CPU seconds (user + sys, all threads) of the measured `run --once` process, from each run's
`--json`: on a machine shared with other work the wall clock of both sides varies with the load, the
CPU that mailflow itself spends much less (it still includes contention effects such as cache misses).

`--bytecode` lets both sides write and reuse `__pycache__` (PYTHONDONTWRITEBYTECODE unset, as in an
installed package); without it the runs inherit the environment as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINE = re.compile(r"backlog=([\d.]+) msg/s.*?naive=(\d+) msg/s \(mailflow ([\d.]+)x")


def worktree(rev: str, out: Path) -> Path:
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.strip()
    path = out / f"compare-{sha}"
    if not path.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(path), sha], cwd=REPO, check=True,
                       capture_output=True)
    return path


def one(tree: Path, n: int, env: dict) -> tuple[float, float, float, float] | None:
    """(mailflow msg/s, naive msg/s, mailflow time / naive time, mailflow CPU seconds) of one run."""
    if env.get("PYTHONDONTWRITEBYTECODE"):  # as the environment says: no bytecode left by a --bytecode run
        for d in ("mailflow", "bench", "tests"):
            for cache in (tree / d).rglob("__pycache__"):
                shutil.rmtree(cache, ignore_errors=True)
    raw = tree / "bench" / "out" / "compare-last.json"
    raw.unlink(missing_ok=True)
    p = subprocess.run([sys.executable, "bench/run.py", "--n", str(n), "--runs", "1", "--floors",
                        "--out", str(tree / "bench" / "out"), "--json", str(raw)], cwd=tree, capture_output=True,
                       text=True, env=env, timeout=3600)
    m = LINE.search(p.stdout)
    if p.returncode != 0 or not m:
        print(f"  run failed in {tree.name}: {p.stdout[-500:]} {p.stderr[-1500:]}", file=sys.stderr)
        return None
    try:
        backlog = json.loads(raw.read_text())["runs"][-1]["backlog"]
        cpu = float(backlog["user"]) + float(backlog["sys"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        cpu = float("nan")
    return float(m.group(1)), float(m.group(2)), float(m.group(3)), cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for the new commit's runs")
    ap.add_argument("--old-env", action="append", default=[], help="NAME=VALUE for the old commit's runs "
                    "(compare a commit with itself: `HEAD HEAD --old-env MAILFLOW_BENCH_NO_CLOCKS=1`)")
    ap.add_argument("--bytecode", action="store_true", help="both sides write and reuse __pycache__ "
                    "(unset PYTHONDONTWRITEBYTECODE)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    trees = {"old": worktree(a.old, a.out), "new": worktree(a.new, a.out)}
    base = dict(os.environ)
    if a.bytecode:
        base.pop("PYTHONDONTWRITEBYTECODE", None)
    envs = {"old": {**base, **dict(kv.split("=", 1) for kv in a.old_env)},
            "new": {**base, **dict(kv.split("=", 1) for kv in a.env)}}
    got: dict[str, list[tuple[float, float, float, float]]] = {"old": [], "new": []}
    for i in range(a.runs):
        for side in ("old", "new"):
            r = one(trees[side], a.n, envs[side])
            print(f"[{i + 1}/{a.runs}] {side} {trees[side].name}: {r}", file=sys.stderr, flush=True)
            if r:
                got[side].append(r)
    med = {s: (statistics.median(x[0] for x in v), statistics.median(x[2] for x in v),
               statistics.median(x[3] for x in v)) if v else (None, None, None) for s, v in got.items()}
    (o_rate, o_x, o_cpu), (n_rate, n_x, n_cpu) = med["old"], med["new"]
    if None in (o_rate, n_rate):
        print("not enough successful runs", file=sys.stderr)
        return 1
    print(f"compare n={a.n} runs={a.runs} | old {trees['old'].name}: {o_rate:.1f} msg/s, x naive {o_x:.2f} | "
          f"new {trees['new'].name}: {n_rate:.1f} msg/s, x naive {n_x:.2f} | "
          f"change: {(n_rate / o_rate - 1) * 100:+.1f}% msg/s, {(o_x / n_x - 1) * 100:+.1f}% relative to naive | "
          f"mailflow CPU: old {o_cpu:.2f} s, new {n_cpu:.2f} s ({(n_cpu / o_cpu - 1) * 100:+.1f}%)"
          + (" | bytecode cached" if a.bytecode else ""))
    if a.json:
        a.json.write_text(json.dumps(got, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
