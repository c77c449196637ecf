"""Tone benchmark: `features.sentiment` per mail, on the policy corpus and on ~2 KB mixed mails.

`sentiment` runs on every incoming mail (the pipeline scores subject + new text before the rules),
so it must stay far below the rest of the per-message cost (~2-4 ms, bench/RESULTS.md).

    python bench/bench_sentiment.py                  # 20 rounds over each corpus
    python bench/bench_sentiment.py --rounds 50

Prints CPU microseconds per mail (median of the rounds; CPU time, so other load on the machine does
not inflate it) for: the labelled policy corpus
(tests/data/policy, 320 short-to-medium mails as customers write them) and bench_rules'
synthetic 2 KB mixed Chinese/English mails (the worst case: long text, both scripts scanned).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_rules import make_corpus  # noqa: E402
from mailflow.features import sentiment  # noqa: E402

POLICY = Path(__file__).resolve().parent.parent / "tests" / "data" / "policy"


def policy_texts() -> list[str]:
    texts = []
    for path in sorted(POLICY.glob("*.yaml")):
        for m in yaml.safe_load(path.read_text(encoding="utf-8")):
            texts.append(f"{m['subject']}\n{m['body']}")
    return texts


def per_mail_us(texts: list[str], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.process_time()
        for t in texts:
            sentiment(t)
        times.append((time.process_time() - t0) / len(texts))
    return statistics.median(times) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    corpora = {
        "policy corpus": policy_texts(),
        "2 KB mixed": [f"{m['subject']}\n{m['text']}" for m in make_corpus(1000, seed=1)],
    }
    for name, texts in corpora.items():
        size = sum(len(t.encode()) for t in texts) / len(texts)
        print(f"{name:<14} n={len(texts):5}  avg {size:6.0f} B  sentiment {per_mail_us(texts, args.rounds):7.1f} us/mail")


if __name__ == "__main__":
    main()
