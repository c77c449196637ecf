"""Rule regexes cannot stop the daemon: `check`/`RuleSet.load` reject catastrophic shapes, and a
pattern that is slow anyway runs out of its budget and names its rule (issue 15, case 1)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailflow import regexes, resources
from mailflow.rules import RuleError, RuleEvalError, RuleSet, check_rules

CATASTROPHIC = [
    "(a+)+$",
    "(a|a)*",
    r"(\w+\s?)+$",
    "(.*a){20}",
    "(x+x+)+y",
    "(a?a)+",
    r"(\d+)*$",
    "((ab)*)+",
    r"^(([a-z])+.)+[A-Z]([a-z])+$",
    "(?:foo|bar|ba)+!",  # ba and bar start alike
]
SAFE = [
    r"([a-z]+\.)+com",  # every repetition ends with a '.' that [a-z]+ cannot eat
    r"(.*\n)+x",
    r"(\w+\s)+$",
    r"(\d{3}-)+",
    r"\d+(\.\d+)*",
    r"(foo|bar)*baz",
    r"(a|b)+",
    r"(?>a+)+b",  # atomic and possessive bodies are never retried
    r"(a++)+b",
    "希望(能|可以)?(增加|添加|加上)",
    r"\bquality\b|\bdefect(ive|s)?\b|\bfaulty\b",
]


def bundled_patterns() -> list[str]:
    out: list[str] = []

    def walk(x):
        if isinstance(x, dict):
            for k, v in x.items():
                if k == "matches":
                    v = v["pattern"] if isinstance(v, dict) else v
                    out.extend(v if isinstance(v, list) else [v])
                else:
                    walk(v)
        elif isinstance(x, list):
            for i in x:
                walk(i)

    for f in sorted(Path(resources.bundled_rules()).glob("*.yaml")):
        walk(yaml.safe_load(f.read_text(encoding="utf-8")))
    return out


@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_hazard_names_the_catastrophic_shapes(pattern):
    why = regexes.hazard(pattern, re.IGNORECASE)
    assert why and ("repeat" in why or "alternatives" in why), why


@pytest.mark.parametrize("pattern", SAFE)
def test_hazard_accepts_delimited_and_atomic_repeats(pattern):
    assert regexes.hazard(pattern, re.IGNORECASE) is None


def test_bundled_rules_pass_the_shape_check_and_load():
    pats = bundled_patterns()
    assert len(pats) > 20
    assert [p for p in pats if regexes.hazard(p, re.IGNORECASE)] == []
    assert check_rules(resources.bundled_rules()) == []


def _rules_dir(tmp_path: Path, pattern: str) -> Path:
    d = tmp_path / "rules"
    d.mkdir()
    (d / "classify.yaml").write_text(
        f"- name: slow-one\n  when: {{text: {{matches: '{pattern}'}}}}\n  then: [{{tag: x}}]\n", encoding="utf-8")
    return d


@pytest.mark.parametrize("pattern", ["(a+)+$", r"(\w+\s?)+$", "(a|a)*"])
def test_check_and_load_reject_the_same_unsafe_regex(tmp_path, pattern):
    d = _rules_dir(tmp_path, pattern)
    problems = check_rules(d)
    assert len(problems) == 1
    assert problems[0].startswith(f"{d / 'classify.yaml'}: slow-one: when.text.matches: unsafe regex ")
    with pytest.raises(RuleError) as ei:
        RuleSet.load(d)
    assert ei.value.problems == problems  # one function decides for check, start and reload


# a pattern the shape check accepts that is still quadratic in a backtracking engine: the budget stops it
SLOW = r"(?:[a-z]+\.)+com$"
SLOW_TEXT = "a." * 40_000 + "com!"  # "com" gets it past the literal prefilter


def test_a_slow_regex_runs_out_of_its_budget_and_names_the_rule():
    rs = RuleSet.from_data({"classify": [
        {"name": "fine", "when": {"text": {"contains": "a."}}, "then": [{"tag": "a"}]},
        {"name": "domain-names", "when": {"text": {"matches": SLOW}}, "then": [{"tag": "dn"}]},
    ]})
    with pytest.raises(RuleEvalError) as ei:
        rs.evaluate("classify", {"text": SLOW_TEXT})
    e = ei.value
    assert e.rule == "domain-names" and e.stage == "classify"
    assert "regex time budget (100 ms) exceeded" in str(e) and "classify.yaml" in str(e), str(e)
    with pytest.raises(RuleEvalError, match=r"domain-names: regex time budget \(100 ms\) exceeded"):
        rs.evaluate_pure("classify", {"text": SLOW_TEXT})
    # the next message is evaluated normally
    assert rs.evaluate("classify", {"text": "see a.example.com"}).fired == ["fine", "domain-names"]


def test_the_budget_grows_with_the_text():
    assert regexes.budget_for("x") == pytest.approx(regexes.BUDGET, abs=1e-3)
    assert regexes.budget_for("x" * 4_000_000) == pytest.approx(regexes.BUDGET + 4 * regexes.BUDGET_PER_MB)
    assert "for 4.0 M characters" in regexes.describe_budget("x" * 4_000_000)


@pytest.mark.parametrize("pattern,text,expected", [
    (r"\d+", "订单１２３", True),  # fullwidth digits are digits, as in re
    (r"\bquality\b", "品质quality问题", False),  # CJK letters are word characters, as in re
    (r"\bquality\b", "品质 quality 问题", True),
    ("系统瘫痪|outage", "WE HAVE AN OUTAGE", True),
    (r"(?<!not )fixed", "it is not fixed", False),  # lookarounds still work
])
def test_matching_keeps_re_semantics(pattern, text, expected):
    rs = RuleSet.from_data({"classify": [{"name": "r", "when": {"text": {"matches": pattern}}, "then": [{"tag": "t"}]}]})
    assert (rs.evaluate("classify", {"text": text}).fired == ["r"]) is expected
    assert bool(re.search(pattern, text, re.IGNORECASE)) is expected


_PATTERNS = bundled_patterns()
_ALPHABET = sorted({c for p in _PATTERNS for c in p if c.isalnum()} | set(" .,!?\n１２ＡａİıſK"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_PATTERNS), st.text(alphabet=_ALPHABET, max_size=60), st.booleans())
def test_bounded_engine_agrees_with_re_on_bundled_patterns(pattern, text, case_sensitive):
    flags = 0 if case_sensitive else re.IGNORECASE
    rx = regexes.compile_rx(pattern, flags)
    assert regexes.search(rx, text) is (re.search(pattern, text, flags) is not None)
