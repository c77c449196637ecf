"""The bundled rules against the default priority policy (DESIGN.md section 1, issue 13).

The corpus in tests/data/policy/ (see its README) is labelled by the policy table; every mail is
turned into real MIME bytes in its charset, parsed by `parse.parse_message`, and evaluated the way
`Pipeline.evaluate` does it (same facts, same features, `routing.evaluate_message` on the engine
thread).

The halves were held out one after the other, and each was scored once before it was used for
tuning (category / priority agreement at its first scoring; the corpus README has the details):
`a` development; `b` written before any rule changed, never run while tuning `a` (95.0% / 96.9%,
optimistic: the same author wrote the rules); `c` written after the first freeze, in new domains
(68.8% / 70.8%); `d` written after the second freeze, in new domains again (60.4% / 62.5%). The
original rules scored 45.8% / 31.2% on `c` and 37.5% / 25.0% on `d`. `e` and `f` were written
together by a second author before reading the rules: the rules of that time scored 77.3% / 84.7% on
`e` and 77.3% / 80.7% on `f`; `e` then became the tuning set of a second pass that generalised the
rules by semantic field, and `f` stayed held out: 87.3% / 89.3% after that pass. `g` (48 mails in new
domains: smart home, courses, car rental, printing, pharmacy, tickets, gyms, cloud storage, freight) was
written and scored once with those rules (79.2% / 81.2%); then a third pass tuned on `f`'s misses
(devices that keep going offline, mail that bounces, lag, missing columns, paid-but-unpaid orders, mail
not sent; an unreachable hotline, a promise not kept; lasting support as praise): `f` 94.7% / 94.7%, and
`g`, held out, 81.2% / 83.3%. `g` was then looked at for one rule and is tuning data now. `h` (48
mails, written blind to the rules by a helper, in new domains and mostly implicit wording) scored
60.4% / 68.8% with the rules alone, 91.7% / 87.5% with the learned guess (mailflow/category_guess.py,
trained on a-g; how it is combined was chosen on h, so that figure is slightly optimistic). `h` is guarded at a lower floor than
the tuning halves, must not be tuned on, and stays out of the guess's training set.

Also runnable as a script to print the agreement of any rules directory with the corpus:

    PYTHONPATH=. python3 tests/unit/test_policy.py [--half a|b|c|d|e|f|g] [RULES_DIR]
"""

from __future__ import annotations

import base64
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from mailflow import category_guess, features, resources, routing
from mailflow.config import StaffMember
from mailflow.parse import parse_message
from mailflow.routing import apply_priority
from mailflow.rules import PRIORITIES, RuleError, RuleSet, on_engine

CORPUS = Path(__file__).resolve().parent.parent / "data" / "policy"
LANGS = ("zh-cn", "zh-tw", "en")
CATEGORIES = ("complaint", "fault", "inquiry", "suggestion", "praise")
CATEGORY_FLOOR = 0.90
PRIORITY_FLOOR = 0.85
HALVES = ("a", "b", "c", "d", "e", "f", "g")  # tuning data: each must meet the floors
HELD_OUT = ("h",)  # never tuned on: guarded against regressions below its first score
HELD_OUT_FLOOR = 0.78

STAFF = [
    StaffMember("tina@corp.example", "Tina", ["tech"], "lead"),
    StaffMember("ted@corp.example", "Ted", ["tech"], "agent"),
    StaffMember("wang.fang@corp.example", "王芳", ["customer_service", "service_supervisor"], "agent"),
    StaffMember("zhao@corp.example", "赵静", ["customer_service"], "agent"),
    StaffMember("sue@corp.example", "Sue", ["service_supervisor"], "lead"),
    StaffMember("sam@corp.example", "Sam", ["service_supervisor"], "agent"),
    StaffMember("tom@corp.example", "Tom", ["service_supervisor"], "agent"),
    StaffMember("li.ming@corp.example", "李明", ["service_supervisor"], "agent"),
    StaffMember("pat@corp.example", "Pat", ["product"], "agent"),
]
CHAIN = ["head.support@corp.example"]


@dataclass(frozen=True)
class Mail:
    id: str
    half: str
    lang: str
    subject: str
    body: str
    category: str
    priority: str
    charset: str = "utf-8"
    tier: str = "standard"
    complaints_30d: int = 0
    note: str = ""


@dataclass(frozen=True)
class Result:
    mail: Mail
    category: str | None
    priority: str
    team: str | None
    assignee: str | None
    mentioned: frozenset[str]
    fired: tuple[tuple[str, str], ...]
    sentiment: float


def load_corpus(directory: Path = CORPUS) -> list[Mail]:
    mails = []
    for path in sorted(directory.glob("*.yaml")):
        half, lang = path.stem.split("-", 1)
        for entry in yaml.safe_load(path.read_text(encoding="utf-8")):
            mails.append(Mail(half=half, lang=lang, **entry))
    return mails


def _word(text: str, charset: str) -> str:
    return f"=?{charset}?B?{base64.b64encode(text.encode(charset)).decode('ascii')}?="


def raw_mail(m: Mail) -> bytes:
    """The mail as a client would send it: encoded-word subject, base64 body in its charset."""
    charset = m.charset if not m.body.isascii() or m.charset != "utf-8" else "us-ascii"
    body = base64.encodebytes(m.body.replace("\n", "\r\n").encode(charset)).decode("ascii")
    head = [
        f"From: Customer <customer.{m.id}@example.com>",
        "To: support@helpdesk.example",
        f"Subject: {m.subject if m.subject.isascii() else _word(m.subject, m.charset)}",
        "Date: Mon, 23 Nov 2026 09:15:00 +0800",
        f"Message-ID: <{m.id}@corpus.example>",
        "MIME-Version: 1.0",
        f'Content-Type: text/plain; charset="{charset}"',
        "Content-Transfer-Encoding: base64",
    ]
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode("ascii")


def facts_for(m: Mail, staff: list[StaffMember]) -> tuple[dict, set[str]]:
    """What `Pipeline.evaluate` builds for a new message (customer stats come from the corpus)."""
    msg = parse_message(raw_mail(m))
    text = msg.new_text or msg.text
    mentioned = features.mentioned_staff(f"{msg.subject}\n{text}", staff)
    facts = {
        "subject": msg.clean_subject or msg.subject,
        "text": text,
        "from": msg.from_addr,
        "to": [*msg.to, *msg.cc],
        "mailbox": "support",
        "language": msg.language,
        "has_attachments": bool(msg.attachments),
        "customer.tier": m.tier,
        "customer.open_tickets": 0,
        "customer.complaints_30d": m.complaints_30d,
        "sentiment": features.sentiment(f"{msg.clean_subject}\n{text}"),
        "mentions_staff": bool(mentioned),
        **category_guess.facts(msg.clean_subject or msg.subject, text),
    }
    return facts, mentioned


def evaluate(rules: RuleSet, m: Mail, staff: list[StaffMember] = STAFF) -> Result:
    facts, mentioned = facts_for(m, staff)
    o = on_engine(routing.evaluate_message, rules, facts, routing.TicketFields(None, "normal", None, None, []),
                  staff, {}, {}, mentioned, strategy="least_open", escalation_chain=CHAIN)
    return Result(m, o.fields.category, o.fields.priority, o.fields.team, o.fields.assignee,
                  frozenset(mentioned), tuple(o.fired), facts["sentiment"])


def _rate(results: list[Result], key: str) -> float:
    return sum(getattr(r, key) == getattr(r.mail, key) for r in results) / len(results) if results else 1.0


def summary(results: list[Result]) -> str:
    """Agreement overall / per half / per language, the confusion pairs and the disagreeing mails."""
    lines = [f"{'slice':<14}{'n':>5}{'category':>10}{'priority':>10}"]
    halves = sorted({r.mail.half for r in results})
    slices = [("all", results)] + [(f"half {h}", [r for r in results if r.mail.half == h]) for h in halves]
    slices += [(lang, [r for r in results if r.mail.lang == lang]) for lang in LANGS]
    slices += [(f"{h}/{lang}", [r for r in results if r.mail.half == h and r.mail.lang == lang])
               for h in halves for lang in LANGS]
    for name, rs in slices:
        lines.append(f"{name:<14}{len(rs):>5}{_rate(rs, 'category'):>10.1%}{_rate(rs, 'priority'):>10.1%}")
    for key in ("category", "priority"):
        pairs = Counter((getattr(r.mail, key), getattr(r, key)) for r in results if getattr(r, key) != getattr(r.mail, key))
        lines.append(f"{key} confusion (expected -> got): "
                     + (", ".join(f"{a}->{b} x{n}" for (a, b), n in pairs.most_common()) or "none"))
    for r in results:
        if (r.category, r.priority) != (r.mail.category, r.mail.priority):
            lines.append(f"  {r.mail.id}: expected {r.mail.category}/{r.mail.priority}, got {r.category}/{r.priority}"
                         f" (sentiment {r.sentiment:+.2f}) {r.mail.subject!r}")
    return "\n".join(lines)


# ---- the corpus itself --------------------------------------------------------------------------

MAILS = load_corpus()


def test_corpus_is_big_mixed_and_well_formed():
    assert len(MAILS) >= 300
    assert len({m.id for m in MAILS}) == len(MAILS)
    share = Counter(m.lang for m in MAILS)
    assert 0.40 <= share["zh-cn"] / len(MAILS) <= 0.50
    assert 0.12 <= share["zh-tw"] / len(MAILS) <= 0.18
    assert 0.35 <= share["en"] / len(MAILS) <= 0.45
    assert {m.half for m in MAILS} == set(HALVES) | set(HELD_OUT)
    for m in MAILS:
        assert m.category in CATEGORIES, m.id
        assert m.priority in PRIORITIES, m.id
        assert m.tier in ("vip", "standard"), m.id
        assert m.subject and m.body.strip(), m.id
        m.body.encode(m.charset)  # every mail is representable in the charset it claims


def test_corpus_parses_back_to_what_was_written():
    for m in MAILS[::7]:
        msg = parse_message(raw_mail(m))
        assert msg.subject == m.subject, m.id
        assert msg.text.strip() == m.body.strip(), m.id
        assert msg.language == {"en": "en", "zh-tw": "zh-Hant"}.get(m.lang, "zh"), m.id


# ---- the bundled rules on the corpus ------------------------------------------------------------

@pytest.fixture(scope="module")
def bundled() -> RuleSet:
    return RuleSet.load(resources.bundled_rules())


@pytest.fixture(scope="module")
def results(bundled) -> list[Result]:
    return [evaluate(bundled, m) for m in MAILS]


def test_bundled_rules_follow_the_policy(results):
    report = summary(results)
    print(report)
    assert _rate(results, "category") >= CATEGORY_FLOOR, report
    assert _rate(results, "priority") >= PRIORITY_FLOOR, report


@pytest.mark.parametrize(("half", "category_floor", "priority_floor"),
                         [(h, CATEGORY_FLOOR, PRIORITY_FLOOR) for h in HALVES]
                         + [(h, HELD_OUT_FLOOR, HELD_OUT_FLOOR) for h in HELD_OUT])
def test_every_half_follows_the_policy(results, half, category_floor, priority_floor):
    """Tuning halves meet the floors; the held-out half is the unseen-mail estimate, so a rule change
    that loses it is a regression even if the tuning halves pass."""
    part = [r for r in results if r.mail.half == half]
    report = summary(part)
    assert _rate(part, "category") >= category_floor, report
    assert _rate(part, "priority") >= priority_floor, report


def test_a_named_staff_member_is_never_assigned(results):
    named = [r for r in results if r.mentioned]
    assert len(named) >= 3
    for r in results:
        assert r.assignee not in r.mentioned, r.mail.id
        assert r.assignee is not None or r.team is None, r.mail.id
    for r in named:
        if r.category == "complaint":
            assert r.team == "service_supervisor", r.mail.id


def test_raises_alone_never_reach_urgent(bundled):
    """The same mail from a VIP repeat complainer is urgent only when it is urgent anyway."""
    for m in MAILS[::3]:
        base = evaluate(bundled, m.__class__(**{**m.__dict__, "tier": "standard", "complaints_30d": 0}))
        raised = evaluate(bundled, m.__class__(**{**m.__dict__, "tier": "vip", "complaints_30d": 5}))
        assert (raised.priority == "urgent") == (base.priority == "urgent"), m.id
        assert PRIORITIES.index(raised.priority) >= PRIORITIES.index(base.priority), m.id
        assert raised.priority != "low", m.id  # a VIP mail is raised at least once


def test_base_levels_of_the_policy(bundled):
    """One plain mail per category, standard sender, neutral tone: the table's base levels."""
    plain = {
        "complaint": ("投诉：快递员态度差", "快递员把包裹扔在门口就走了，我要投诉。"),
        "fault": ("App crashes", "The app crashes when I open the orders page."),
        "inquiry": ("請問發票", "請問可以開立公司發票嗎？"),
        "suggestion": ("建议", "建议增加夜间模式。"),
        "praise": ("Thanks", "Kudos to Emma, she was very helpful."),
    }
    expected = {"complaint": "high", "fault": "high", "inquiry": "normal", "suggestion": "low", "praise": "low"}
    for cat, (subject, body) in plain.items():
        r = evaluate(bundled, Mail("t", "t", "x", subject, body, cat, expected[cat]))
        assert (r.category, r.priority) == (cat, expected[cat]), (r.fired, r.sentiment)


# ---- the capped raise: priority {raise: N, max: LEVEL} ------------------------------------------

@pytest.mark.parametrize("current,value,expected", [
    ("low", {"raise": 1, "max": "high"}, "normal"),
    ("normal", {"raise": 1, "max": "high"}, "high"),
    ("high", {"raise": 1, "max": "high"}, "high"),  # capped
    ("urgent", {"raise": 1, "max": "high"}, "urgent"),  # a capped raise never lowers
    ("low", {"raise": 3, "max": "high"}, "high"),
    ("low", {"raise": 2, "max": "normal"}, "normal"),
    ("normal", {"raise": 1, "max": "normal"}, "normal"),
    ("high", {"raise": 1, "max": "urgent"}, "urgent"),  # max: urgent is the plain raise
])
def test_capped_raise(current, value, expected):
    assert apply_priority(current, value) == expected


@given(st.lists(st.sampled_from(PRIORITIES[:3]), min_size=1, max_size=1).map(lambda x: x[0]),
       st.lists(st.integers(1, 3), max_size=6))
def test_capped_raises_stay_below_urgent(start, raises):
    """Any number of capped raises from below urgent: one level each, never above high, never down."""
    level = start
    for n in raises:
        new = apply_priority(level, {"raise": n, "max": "high"})
        assert PRIORITIES.index(level) <= PRIORITIES.index(new) <= PRIORITIES.index("high")
        assert PRIORITIES.index(new) <= PRIORITIES.index(level) + n
        level = new
    assert level != "urgent"


def _load_priority_rule(tmp_path: Path, action: str) -> RuleSet:
    (tmp_path / "priority.yaml").write_text(f"- name: r\n  when: {{}}\n  then:\n    - priority: {action}\n",
                                            encoding="utf-8")
    return RuleSet.load(tmp_path)


def test_capped_raise_validates(tmp_path):
    rs = _load_priority_rule(tmp_path, "{raise: 1, max: HIGH}")
    [d] = rs.evaluate("priority", {"priority": "normal"}).decisions
    assert d.value == {"raise": 1, "max": "high"}
    for bad, why in [("{raise: 1, max: extreme}", "unknown priority"), ("{raise: -1, max: high}", "raise"),
                     ("{max: high}", "raise"), ("{at_least: high, max: high}", "max"),
                     ("{raise: 1, max: 2}", "unknown priority"), ("{raise: 1, cap: high}", "give a level")]:
        d = tmp_path / bad.strip("{}").replace(":", "").replace(",", "").replace(" ", "_")
        d.mkdir()
        with pytest.raises(RuleError) as ei:
            _load_priority_rule(d, bad)
        assert why in str(ei.value), (bad, str(ei.value))


# ---- tone ---------------------------------------------------------------------------------------

def test_sentiment_separates_angry_from_neutral_on_the_corpus(results):
    """Angry complaints mostly reach the raise threshold; inquiries and praise almost never do."""
    neutral = [r for r in results if r.mail.category in ("inquiry", "praise") and r.mail.priority in ("low", "normal")
               and r.mail.tier == "standard" and r.mail.complaints_30d < 2]
    assert sum(r.sentiment <= -0.5 for r in neutral) <= len(neutral) * 0.03, \
        [r.mail.id for r in neutral if r.sentiment <= -0.5]
    praise = [r for r in results if r.mail.category == "praise" and r.mail.tier == "standard"]
    tuned = [r for r in praise if r.mail.half in HALVES[:6]]  # every praise mail of the halves tuned on
    assert all(r.sentiment > 0 for r in tuned), [(r.mail.id, r.sentiment) for r in tuned if r.sentiment <= 0]
    # thanks told inside a story of what went wrong (zc-h-017: an emergency at night) may read negative
    assert sum(r.sentiment > 0 for r in praise) >= 0.95 * len(praise), \
        [(r.mail.id, r.sentiment) for r in praise if r.sentiment <= 0]


if __name__ == "__main__":  # pragma: no cover - the measuring script
    args = sys.argv[1:]
    half = None
    if args[:1] == ["--half"]:
        half, args = args[1], args[2:]
    rules_dir = Path(args[0]) if args else resources.bundled_rules()
    print(f"rules: {rules_dir}" + (f", half {half} only" if half else ""))
    rs = RuleSet.load(rules_dir)
    print(summary([evaluate(rs, m) for m in MAILS if half is None or m.half == half]))
