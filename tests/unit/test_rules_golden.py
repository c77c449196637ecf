"""The bundled rules decide exactly what they decided before the rules' performance work (perf13).

`tests/data/rules_golden.json` holds, for ~2,700 mails, a digest of everything the message stages
decided (`routing.Outcome`: fields, fired rules, notifications, acknowledgement, escalations and
every decision in order), written by the rules code before the caches and prefilter shortcuts. The
mails: the policy corpus (tests/data/policy, parsed from MIME like `test_policy`), the rule
benchmark's generated corpus (`bench/bench_rules.py`, with features), and the backlog benchmark's
MIME corpus (`bench/corpus.py`). They are evaluated with the rules compiled afresh, twice (the
engine's remembered answers: asked, then replayed), and with the rules rebuilt from the pattern
cache asking the engine every time.

Regenerate only when the rules are meant to decide differently (a rules change, not a perf change):

    PYTHONPATH=. python3 tests/unit/test_rules_golden.py --write
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from mailflow import category_guess, features, regexes, resources, routing, rules
from mailflow.parse import parse_message
from mailflow.rules import RuleSet, on_engine

ROOT = Path(__file__).resolve().parent.parent.parent
GOLDEN = ROOT / "tests" / "data" / "rules_golden.json"
sys.path.insert(0, str(ROOT))

from bench import bench_rules, corpus  # noqa: E402
from tests.unit import test_policy  # noqa: E402


def _mime_facts(raw: bytes, staff) -> tuple[dict, set[str]]:
    msg = parse_message(raw)
    text = msg.new_text
    mentioned = features.mentioned_staff(f"{msg.subject}\n{text}", staff)
    return {
        "subject": msg.clean_subject or msg.subject, "text": text, "from": msg.from_addr,
        "to": [*msg.to, *msg.cc], "mailbox": "support", "language": msg.language,
        "has_attachments": bool(msg.attachments), "customer.tier": "standard", "customer.open_tickets": 1,
        "customer.complaints_30d": 0, "customer.spam_count": 0,
        "sentiment": features.sentiment(f"{msg.clean_subject}\n{text}"), "mentions_staff": bool(mentioned),
        **category_guess.facts(msg.clean_subject or msg.subject, text),
    }, mentioned


def cases() -> list[tuple[str, dict, set[str], list]]:
    """(id, facts, mentioned staff, staff list) for every mail of the three corpora."""
    out = []
    for m in test_policy.MAILS:
        facts, mentioned = test_policy.facts_for(m, test_policy.STAFF)
        out.append((f"policy/{m.id}", facts, mentioned, test_policy.STAFF))
    for i, m in enumerate(bench_rules.make_corpus(2000, 20261123)):
        text = f"{m['subject']}\n{m['text']}"
        mentioned = features.mentioned_staff(text, bench_rules.STAFF)
        facts = dict(m, sentiment=features.sentiment(text), mentions_staff=bool(mentioned),
                     **category_guess.facts(m["subject"], m["text"]))
        out.append((f"bench_rules/{i}", facts, mentioned, bench_rules.STAFF))
    for i, raw in enumerate(corpus.generate(300, seed=1)):
        facts, mentioned = _mime_facts(raw, bench_rules.STAFF)
        out.append((f"corpus/{i}", facts, mentioned, bench_rules.STAFF))
    return out


def digest(o: routing.Outcome) -> str:
    f = o.fields
    text = repr((f.category, f.priority, f.team, f.assignee, list(f.tags), o.fired, o.notify, o.ack_template,
                 o.no_ack, o.escalate, sorted(o.rr_state.items()),
                 [(d.stage, d.rule, d.action, repr(d.value)) for d in o.decisions]))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def outcomes(rules: RuleSet) -> dict[str, list]:
    got = {}
    for cid, facts, mentioned, staff in cases():
        o = on_engine(routing.evaluate_message, rules, facts, routing.TicketFields(None, "normal", None, None, []),
                      staff, {}, {}, mentioned, strategy="least_open", escalation_chain=test_policy.CHAIN)
        got[cid] = [o.fields.category, o.fields.priority, digest(o)]
    return got


def _compare(got: dict[str, list], want: dict[str, list]) -> list[str]:
    assert set(got) == set(want)
    return [f"{k}: expected {want[k]}, got {got[k]}" for k in want if got[k] != want[k]]


def test_golden_file_covers_the_three_corpora():
    want = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert len(want) >= 2600
    assert {k.split("/")[0] for k in want} == {"policy", "bench_rules", "corpus"}
    assert len({v[0] for v in want.values()}) >= 5  # every category occurs


def test_bundled_rules_decide_as_before(tmp_path, monkeypatch):
    """Compiled afresh (empty pattern cache), through the engine's remembered answers: the first
    pass asks the engine, the second replays it."""
    monkeypatch.setenv("MAILFLOW_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(regexes, "_CACHES", {})
    want = json.loads(GOLDEN.read_text(encoding="utf-8"))
    rs = RuleSet.load(resources.bundled_rules())
    for _ in range(2):
        bad = _compare(outcomes(rs), want)
        assert not bad, f"{len(bad)} mails decided differently:\n" + "\n".join(bad[:20])
    assert 0 < len(rs._stages["classify"].memo) < 1000  # the replay was used (and stays small)


def test_bundled_rules_decide_as_before_from_the_pattern_cache_asking_the_engine_every_time(tmp_path, monkeypatch):
    monkeypatch.setenv("MAILFLOW_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(regexes, "_CACHES", {})
    RuleSet.load(resources.bundled_rules())  # writes the cache
    monkeypatch.setattr(regexes, "_CACHES", {})  # as a new process: read from the file
    monkeypatch.setattr(regexes, "compile_rx", lambda *a: pytest.fail("compiled although cached"))
    monkeypatch.setattr(rules, "_ENGINE_MEMO_MAX", 0)
    want = json.loads(GOLDEN.read_text(encoding="utf-8"))
    rs = RuleSet.load(resources.bundled_rules())
    bad = _compare(outcomes(rs), want)
    assert not bad, f"{len(bad)} mails decided differently:\n" + "\n".join(bad[:20])
    assert not rs._stages["classify"].memo


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: test_rules_golden.py --write")
    res = outcomes(RuleSet.load(resources.bundled_rules()))
    lines = [f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in sorted(res.items())]
    GOLDEN.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")
    print(f"wrote {len(res)} outcomes to {GOLDEN}")
