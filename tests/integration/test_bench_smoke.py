"""The benchmark must not rot: a tiny run of bench/run.py (N = 50) with every figure switched on,
checked from the outside (tickets in the data dir, mail at the sink, the figures line)."""

from __future__ import annotations

import email
import re
import subprocess
import sys
import time
from collections import Counter
from email import policy

import pytest

from bench import corpus
from tests.integration.helpers import REPO, tickets
from tests.support.dovecot import available

N = 50
SEED = 1

pytestmark = pytest.mark.skipif(not available(), reason="dovecot not installed")


def test_corpus_is_deterministic_and_mixed():
    a, b = corpus.build(N, SEED), corpus.build(N, SEED)
    assert [m.raw for m in a] == [m.raw for m in b] == corpus.generate(N, SEED)
    assert [m.raw for m in corpus.build(N, SEED + 1)] != [m.raw for m in a]
    c = corpus.counts(a)
    assert c["reply"] == N // 5 and c["auto"] >= 1 and c["bounce"] >= 1
    assert c["new"] == N - c["reply"] - c["auto"] - c["bounce"]
    assert len({m.message_id for m in a}) == N
    big = corpus.build(1000, SEED)
    assert {m.charset for m in big} >= {"utf-8", "gb2312", "gbk", "big5"}
    assert {m.cte for m in big} >= {"quoted-printable", "base64"}
    assert {m.structure for m in big} >= {"plain", "html", "alternative", "attachment"}
    assert {m.lang for m in big} == {"en", "zh", "zh-hant"}
    ids = {m.message_id: i for i, m in enumerate(big)}
    for i, m in enumerate(big):
        if m.kind == "reply":  # the same sender, answering an earlier corpus message
            orig = big[ids[m.thread_of]]
            assert ids[m.thread_of] < i and orig.sender == m.sender and orig.kind == "new"
            parsed = email.message_from_bytes(m.raw, policy=policy.default)
            assert parsed["In-Reply-To"].strip("<>") in m.refs and str(parsed["Subject"]).startswith(
                ("Re: ", "回复", "回覆"))


def test_bench_smoke_run(tmp_path):
    keep = tmp_path / "keep"
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--n", str(N), "--runs", "1", "--seed", str(SEED),
         "--floors", "--scale", "--scale-tickets", "300", "--latency", "--latency-n", "5",
         "--out", str(tmp_path / "out"), "--keep", str(keep), "--json", str(tmp_path / "figures.json")],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    elapsed = time.monotonic() - t0
    assert p.returncode == 0, f"{p.stdout}\n{p.stderr[-4000:]}"
    assert elapsed < 60, f"the smoke run took {elapsed:.0f} s"

    # the figures line: every figure present and numeric
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("mailflow-bench ")]
    assert len(lines) == 1, p.stdout
    line = lines[0]
    assert "FAILED" not in line
    assert re.search(r"backlog=\d+(\.\d+)? msg/s \(\d+\.\d+ s, rss \d+ MB", line), line
    assert re.search(r"io-floor=\d+ msg/s \(mailflow \d+\.\d+x", line), line
    assert re.search(r"naive=\d+ msg/s \(mailflow \d+\.\d+x", line), line
    assert re.search(r"closed-300=\d+(\.\d+)? msg/s \(\d+% of empty, rss \d+ MB\)", line), line
    assert re.search(r"idle-ack p50=\d+ ms p95=\d+ ms", line), line
    assert re.search(r'cpu=".+" cores=\d+ python=3\.\d+', line), line

    # every new corpus message is a ticket; replies, auto-replies and bounces made none
    mails = corpus.build(N, SEED)
    c = corpus.counts(mails)
    expected = N - c["auto"] - c["bounce"] - c["reply"]
    ts = tickets(keep / "mailflow.toml")
    assert len(ts) == expected
    new_mails = [m for m in mails if m.kind == "new"]
    assert Counter(t["customer_email"] for t in ts) == Counter(m.sender for m in new_mails)
    # the replies threaded onto their tickets: every inbound message is stored on a ticket
    from mailflow.store import Store

    st = Store(keep / "data")
    inbound = [m for t in ts for m in st.messages_of(t["id"]) if m["direction"] == "in"]
    assert len(inbound) == c["new"] + c["reply"]
    assert {m["message_id"] for m in inbound} == {m.message_id for m in mails if m.kind in ("new", "reply")}
    assert not st.quarantined()

    # the sink received exactly one acknowledgement per ticket, to that ticket's customer
    acks = [email.message_from_bytes(f.read_bytes(), policy=policy.default)
            for f in sorted((keep / "acks").glob("*.eml"))]
    assert len(acks) == len(ts)
    by_id = {t["id"]: t for t in ts}
    seen = Counter()
    new_ids = {m.message_id for m in new_mails}
    for a in acks:
        tid = str(a["X-Mailflow-Ticket"])
        assert tid in by_id and f"[{tid}]" in str(a["Subject"])
        assert a["To"].addresses[0].addr_spec == by_id[tid]["customer_email"]
        assert str(a["In-Reply-To"]).strip("<>") in new_ids
        assert a["Auto-Submitted"] == "auto-replied"
        seen[tid] += 1
    assert set(seen) == set(by_id) and set(seen.values()) == {1}
