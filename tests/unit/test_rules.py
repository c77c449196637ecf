"""Rules: operators, actions, stop/ordering, check() messages, reload, engine agreement and hygiene."""

from __future__ import annotations

import gc
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailflow import resources, rules
from mailflow.rules import Decision, RuleError, RuleEvalError, RuleSet, StageResult, check_rules


def one_rule(when, then=None, stage="classify") -> RuleSet:
    return RuleSet.from_data({stage: [{"name": "r", "when": when, "then": then or [{"tag": "hit"}]}]})


def fires(when, facts) -> bool:
    rs = one_rule(when)
    got = rs.evaluate("classify", facts)
    assert got == rs.evaluate_pure("classify", facts)
    return got.fired == ["r"]


# ---- operators ----------------------------------------------------------------------------------

@pytest.mark.parametrize("when,facts,expected", [
    # equals: text, case-insensitive; absent never matches
    ({"customer.tier": {"equals": "vip"}}, {"customer.tier": "VIP"}, True),
    ({"customer.tier": {"equals": "vip"}}, {"customer.tier": "standard"}, False),
    ({"customer.tier": {"equals": "vip"}}, {}, False),
    ({"customer.tier": "vip"}, {"customer": {"tier": "vip"}}, True),  # shorthand + nested facts
    ({"subject": {"equals": "退款"}}, {"subject": "退款"}, True),
    # equals on a list field = membership
    ({"tags": {"equals": "vip"}}, {"tags": ["a", "VIP"]}, True),
    ({"tags": {"equals": "vip"}}, {"tags": ["vipx"]}, False),
    ({"to": {"equals": "sales@x.com"}}, {"to": ["support@x.com", "sales@x.com"]}, True),
    # booleans and numbers
    ({"has_attachments": {"equals": True}}, {"has_attachments": True}, True),
    ({"has_attachments": {"equals": False}}, {"has_attachments": True}, False),
    ({"has_attachments": {"equals": False}}, {}, False),
    ({"customer.open_tickets": {"equals": 3}}, {"customer.open_tickets": 3}, True),
    ({"sentiment": {"equals": 0.5}}, {"sentiment": 0.5}, True),
    # in
    ({"language": {"in": ["zh", "en"]}}, {"language": "zh"}, True),
    ({"category": {"in": ["fault", "complaint"]}}, {"category": "inquiry"}, False),
    ({"tags": {"in": ["a", "b"]}}, {"tags": ["c", "b"]}, True),
    ({"tags": {"in": ["a", "b"]}}, {"tags": []}, False),
    # matches: re.search, Unicode, case-insensitive
    ({"text": {"matches": "系统瘫痪|outage"}}, {"text": "今天早上系统瘫痪了"}, True),
    ({"text": {"matches": "系统瘫痪|outage"}}, {"text": "We have an OUTAGE"}, True),
    ({"text": {"matches": "系统瘫痪|outage"}}, {"text": "一切正常"}, False),
    ({"text": {"matches": r"\bdown\b"}}, {"text": "the site is down."}, True),
    ({"text": {"matches": r"\bdown\b"}}, {"text": "download it"}, False),
    ({"text": {"matches": r"^退款"}}, {"text": "退款申请"}, True),
    ({"text": {"matches": r"订单号\s*\d{4}"}}, {"text": "订单号 2026"}, True),
    ({"text": {"matches": ["投诉", "complain"]}}, {"text": "I complain"}, True),
    ({"text": {"matches": {"pattern": "VIP", "case_sensitive": True}}}, {"text": "vip"}, False),
    ({"text": {"matches": {"pattern": "VIP", "case_sensitive": True}}}, {"text": "VIP"}, True),
    ({"to": {"matches": "@sales\\."}}, {"to": ["a@support.x", "b@sales.x"]}, True),
    ({"text": {"matches": "x"}}, {"text": None}, False),
    # contains: any keyword, case-insensitive substring
    ({"text": {"contains": ["投诉", "complaint"]}}, {"text": "我要投诉你们"}, True),
    ({"text": {"contains": ["投诉", "complaint"]}}, {"text": "A COMPLAINT"}, True),
    ({"text": {"contains": "投訴"}}, {"text": "我要投訴"}, True),
    ({"text": {"contains": ["投诉"]}}, {"text": "我要表扬"}, False),
    ({"content": {"contains": "退款"}}, {"subject": "退款", "text": "hi"}, True),  # content = subject+text
    ({"content": {"contains": "hi"}}, {"subject": "退款", "text": "hi"}, True),
    ({"tags": {"contains": ["payment"]}}, {"tags": ["Payment"]}, True),
    ({"tags": {"contains": ["pay"]}}, {"tags": ["payment"]}, False),  # list field: membership
    # exists
    ({"category": {"exists": True}}, {"category": "fault"}, True),
    ({"category": {"exists": True}}, {"category": None}, False),
    ({"category": {"exists": False}}, {}, True),
    ({"tags": {"exists": False}}, {"tags": []}, True),
    ({"sentiment": {"exists": True}}, {"sentiment": 0.0}, True),
    # numeric comparisons
    ({"customer.complaints_30d": {">=": 2}}, {"customer.complaints_30d": 2}, True),
    ({"customer.complaints_30d": {">=": 2}}, {"customer.complaints_30d": 1}, False),
    ({"customer.complaints_30d": {">": 2}}, {"customer.complaints_30d": 2}, False),
    ({"sentiment": {"<=": -0.5}}, {"sentiment": -0.5}, True),
    ({"sentiment": {"<": -0.5}}, {"sentiment": -0.5}, False),
    ({"sentiment": {"<=": -0.5}}, {}, False),
    ({"sentiment": {"<=": -0.5}}, {"sentiment": "bad"}, False),
    ({"hours_since_update": {"gt": 4, "lt": 10}}, {"hours_since_update": 5.5}, True),  # aliases, all of them
    ({"hours_since_update": {"gt": 4, "lt": 10}}, {"hours_since_update": 12}, False),
    ({"priority": {">=": "high"}}, {"priority": "urgent"}, True),
    ({"priority": {">=": "high"}}, {"priority": "normal"}, False),
    ({"priority": {"<": "normal"}}, {"priority": "low"}, True),
    # combinators
    ({"all": [{"text": {"contains": "退款"}}, {"customer.tier": "vip"}]}, {"text": "退款", "customer.tier": "vip"}, True),
    ({"all": [{"text": {"contains": "退款"}}, {"customer.tier": "vip"}]}, {"text": "退款"}, False),
    ({"any": [{"text": {"matches": "系统瘫痪|outage"}}, {"customer.tier": {"equals": "vip"}}]},
     {"text": "hello", "customer.tier": "vip"}, True),
    ({"not": {"category": {"equals": "praise"}}}, {"category": "fault"}, True),
    ({"not": {"category": {"equals": "praise"}}}, {"category": "praise"}, False),
    ({"not": [{"text": {"contains": "a"}}, {"text": {"contains": "b"}}]}, {"text": "a"}, True),  # not all
    ({"text": {"contains": "退款"}, "customer.tier": "vip"}, {"text": "退款", "customer.tier": "standard"}, False),
    ({}, {}, True),
    ({"all": []}, {}, True),
    ({"any": []}, {"text": "x"}, False),
    ({"not": {"any": []}}, {}, True),
    ({"any": [{"not": {"all": [{"sentiment": {"<": 0}}, {"not": {"tags": {"contains": "x"}}}]}}]},
     {"sentiment": -1, "tags": ["y"]}, False),
])
def test_operator(when, facts, expected):
    assert fires(when, facts) is expected


def test_when_true_is_always():
    assert fires(True, {})


# ---- actions ------------------------------------------------------------------------------------

@pytest.mark.parametrize("then,expected", [
    ({"category": "complaint"}, [("category", "complaint")]),
    ({"priority": "urgent"}, [("priority", "urgent")]),
    ({"priority": "HIGH"}, [("priority", "high")]),
    ({"priority": {"raise": 1}}, [("priority", {"raise": 1})]),
    ({"priority": {"raise": -1}}, [("priority", {"raise": -1})]),
    ({"priority": {"at_least": "high"}}, [("priority", {"at_least": "high"})]),
    ({"team": "tech"}, [("team", "tech")]),
    ({"assignee": "Li.Wei@Example.com"}, [("assignee", "li.wei@example.com")]),
    ({"assignee": {"pick": "round_robin"}}, [("assignee", {"pick": "round_robin"})]),
    ({"assignee": {"pick": "least_open"}}, [("assignee", {"pick": "least_open"})]),
    ({"tag": "物流"}, [("tag", "物流")]),
    ({"tag": ["a", "b"]}, [("tag", "a"), ("tag", "b")]),
    ({"notify": {"to": "team:tech", "template": "staff_notify"}}, [("notify", {"to": "team:tech", "template": "staff_notify"})]),
    ({"notify": {"to": "Boss@X.com"}}, [("notify", {"to": "boss@x.com", "template": "staff_notify"})]),
    ({"notify": {"to": "lead"}}, [("notify", {"to": "lead", "template": "staff_notify"})]),
    ({"ack_template": "ack_vip"}, [("ack_template", "ack_vip")]),
    ({"no_ack": True}, [("no_ack", True)]),
    ("no_ack", [("no_ack", True)]),
    ({"escalate": True}, [("escalate", "lead")]),
    ({"escalate": {"to": "chain"}}, [("escalate", "chain")]),
    ({"escalate": {"to": "lead"}}, [("escalate", "lead")]),
    ({"escalate": {"to": "cto@x.com"}}, [("escalate", "cto@x.com")]),
    ({"priority": "high", "tag": "x"}, [("priority", "high"), ("tag", "x")]),  # several keys = several actions
])
def test_action(then, expected):
    rs = one_rule({}, [then])
    res = rs.evaluate("classify", {})
    assert [(d.action, d.value) for d in res.decisions] == expected
    assert all(d.stage == "classify" and d.rule == "r" for d in res.decisions)
    assert isinstance(res.decisions[0], Decision)


def test_decision_values_are_fresh_copies():
    rs = one_rule({}, [{"notify": {"to": "team:tech"}}])
    rs.evaluate("classify", {}).decisions[0].value["to"] = "changed"
    assert rs.evaluate("classify", {}).decisions[0].value["to"] == "team:tech"


# ---- order, later settings win, stop ------------------------------------------------------------

def _rules(*specs):
    out = []
    for name, when, then, stop in specs:
        r = {"name": name, "when": when, "then": then}
        if stop is not None:
            r["stop"] = stop
        out.append(r)
    return out


def test_all_matching_rules_fire_in_file_order_and_later_settings_win():
    rs = RuleSet.from_data({"classify": _rules(
        ("c", {}, [{"category": "inquiry"}], None),
        ("b", {"text": {"contains": "bug"}}, [{"category": "fault"}], None),
        ("a", {"text": {"contains": "投诉"}}, [{"category": "complaint"}], None),
        ("z", {"text": {"contains": "nothing-here"}}, [{"category": "praise"}], None),
    )})
    res = rs.evaluate("classify", {"text": "投诉这个bug"})
    assert res.fired == ["c", "b", "a"]
    assert [d.value for d in res.decisions] == ["inquiry", "fault", "complaint"]
    assert res == rs.evaluate_pure("classify", {"text": "投诉这个bug"})


def test_stop_ends_the_stage():
    rs = RuleSet.from_data({"priority": _rules(
        ("first", {}, [{"tag": "1"}], False),
        ("urgent", {"text": {"matches": "outage"}}, [{"priority": "urgent"}], True),
        ("later", {}, [{"priority": "low"}], None),
    )})
    res = rs.evaluate("priority", {"text": "outage!"})
    assert res.fired == ["first", "urgent"]
    assert [(d.action, d.value) for d in res.decisions] == [("tag", "1"), ("priority", "urgent")]
    # a stop rule that does not match does not stop anything
    res = rs.evaluate("priority", {"text": "all fine"})
    assert res.fired == ["first", "later"]


def test_stop_rule_without_actions():
    rs = RuleSet.from_data({"classify": _rules(
        ("skip", {"from": {"matches": "noreply"}}, [], True),
        ("tag", {}, [{"tag": "x"}], None),
    )})
    assert rs.evaluate("classify", {"from": "noreply@x.com"}) == StageResult(["skip"], [])
    assert rs.evaluate("classify", {"from": "a@x.com"}).fired == ["tag"]


def test_or_rule_with_several_true_branches_fires_once():
    rs = one_rule({"any": [{"text": {"contains": "a"}}, {"text": {"contains": "b"}}, {"text": {"contains": "c"}}]})
    assert rs.evaluate("classify", {"text": "abc"}).fired == ["r"]


def test_missing_stage_file_is_an_empty_stage(tmp_path):
    (tmp_path / "classify.yaml").write_text("- {name: a, when: {}, then: [{category: fault}]}\n")
    rs = RuleSet.load(tmp_path)
    assert rs.evaluate("routing", {}) == StageResult([], [])
    assert rs.evaluate("escalation", {}) == StageResult([], [])
    assert set(rs.files) == {"classify"}
    with pytest.raises(ValueError):
        rs.evaluate("nope", {})


def test_empty_rule_file_is_fine(tmp_path):
    (tmp_path / "routing.yaml").write_text("# nothing yet\n")
    assert check_rules(tmp_path) == []
    assert RuleSet.load(tmp_path).evaluate("routing", {}).fired == []


# ---- check(): every kind of mistake, all of them ------------------------------------------------

def _problems(tmp_path: Path, name: str, text: str) -> list[str]:
    (tmp_path / name).write_text(text, encoding="utf-8")
    return check_rules(tmp_path)


def _one(problems: list[str], file: Path, rule: str, *needles: str) -> str:
    prefix = f"{file}: {rule}: "
    hits = [p for p in problems if p.startswith(prefix) and all(n in p for n in needles)]
    assert hits, f"no problem {prefix}{needles} in {problems}"
    return hits[0]


def test_check_unknown_field(tmp_path):
    p = _problems(tmp_path, "classify.yaml", "- name: r1\n  when: {custmer.tier: {equals: vip}}\n  then: [{tag: x}]\n")
    msg = _one(p, tmp_path / "classify.yaml", "r1", "unknown field 'custmer.tier'")
    assert "did you mean 'customer.tier'" in msg


def test_check_unknown_operator(tmp_path):
    p = _problems(tmp_path, "classify.yaml", "- name: r1\n  when: {text: {match: 'x'}}\n  then: [{tag: x}]\n")
    assert "did you mean 'matches'" in _one(p, tmp_path / "classify.yaml", "r1", "unknown operator 'match'")


def test_check_unknown_action(tmp_path):
    p = _problems(tmp_path, "routing.yaml", "- name: r1\n  when: {}\n  then: [{assign: a@x.com}]\n")
    _one(p, tmp_path / "routing.yaml", "r1", "unknown action 'assign'")


def test_check_bad_regex(tmp_path):
    p = _problems(tmp_path, "classify.yaml", "- name: 坏正则\n  when: {text: {matches: '系统(瘫痪'}}\n  then: [{tag: x}]\n")
    _one(p, tmp_path / "classify.yaml", "坏正则", "bad regex", "missing )")


def test_check_backspace_from_double_quotes(tmp_path):
    p = _problems(tmp_path, "classify.yaml", '- name: r1\n  when: {text: {matches: "\\bdown\\b"}}\n  then: [{tag: x}]\n')
    _one(p, tmp_path / "classify.yaml", "r1", "control character", "single quotes")


@pytest.mark.parametrize("then,needle", [
    ("[{priority: critical}]", "unknown priority 'critical'"),
    ("[{priority: {raise: many}}]", "raise"),
    ("[{priority: {at_least: top}}]", "unknown priority 'top'"),
    ("[{priority: {lower: 1}}]", "unknown key 'lower'"),
    ("[{assignee: bob}]", "not an email address"),
    ("[{assignee: {pick: random}}]", "unknown strategy 'random'"),
    ("[{tag: []}]", "tag"),
    ("[{notify: {to: somebody}}]", "not an address"),
    ("[{notify: {to: 'team:'}}]", "needs a team name"),
    ("[{notify: {to: a@x.com, tmpl: x}}]", "unknown key"),
    ("[{no_ack: 'yes please'}]", "true or false"),
    ("[{escalate: boss}]", "lead|chain|manager|EMAIL"),
    ("[{category: ''}]", "needs a name"),
    ("[priority]", "an action is a mapping"),
    ("{category: x}", None),  # a single mapping is accepted
    ("category", "must be a list of actions"),
])
def test_check_bad_action_values(tmp_path, then, needle):
    p = _problems(tmp_path, "priority.yaml", f"- name: r1\n  when: {{}}\n  then: {then}\n")
    if needle is None:
        assert p == []
    else:
        _one(p, tmp_path / "priority.yaml", "r1", needle)


@pytest.mark.parametrize("when,needle", [
    ("{priority: {equals: critical}}", "unknown priority 'critical'"),
    ("{customer.tier: {equals: gold}}", "unknown value for 'customer.tier' 'gold'"),
    ("{status: {in: [open, done]}}", "'done'"),
    ("{sentiment: {'<=': low}}", "needs a number"),
    ("{text: {'>': 3}}", "compares numbers"),
    ("{has_attachments: {matches: x}}", "works on text fields"),
    ("{sentiment: {contains: x}}", "works on text fields"),
    ("{has_attachments: {equals: maybe}}", "true/false"),
    ("{customer.open_tickets: {equals: three}}", "is a number"),
    ("{category: {exists: maybe}}", "true or false"),
    ("{category: {in: []}}", "non-empty list"),
    ("{text: {contains: []}}", "non-empty list"),
    ("{text: {}}", "no operator"),
    ("{text: [a, b]}", "give an operator"),
    ("{any: {text: {contains: x}}}", "must be a list"),
    ("[a]", "must be a mapping"),
    ("{text: {matches: {pattern: x, flags: i}}}", "unknown key"),
])
def test_check_bad_condition_values(tmp_path, when, needle):
    p = _problems(tmp_path, "classify.yaml", f"- name: r1\n  when: {when}\n  then: [{{tag: x}}]\n")
    _one(p, tmp_path / "classify.yaml", "r1", needle)


def test_check_missing_parts_and_duplicates(tmp_path):
    text = (
        "- when: {}\n  then: [{tag: x}]\n"                  # #1 no name
        "- name: no-when\n  then: [{tag: x}]\n"             # no when
        "- name: no-then\n  when: {}\n"                     # no then
        "- name: twice\n  when: {}\n  then: [{tag: x}]\n"
        "- name: twice\n  when: {}\n  then: [{tag: y}]\n"   # duplicate
        "- name: extra\n  when: {}\n  then: [{tag: x}]\n  stopp: true\n"
        "- name: badstop\n  when: {}\n  then: [{tag: x}]\n  stop: sometimes\n"
        "- name: empty\n  when: {}\n  then: []\n"
        "- just a string\n"
    )
    f = tmp_path / "classify.yaml"
    p = _problems(tmp_path, "classify.yaml", text)
    _one(p, f, "#1", "missing 'name'")
    _one(p, f, "no-when", "missing 'when'")
    _one(p, f, "no-then", "missing 'then'")
    _one(p, f, "twice", "duplicate rule name", "#4")
    assert "did you mean 'stop'" in _one(p, f, "extra", "unknown key 'stopp'")
    _one(p, f, "badstop", "stop: must be true or false")
    _one(p, f, "empty", "no actions")
    _one(p, f, "#9", "a rule is a mapping")


def test_check_yaml_syntax_error_has_line(tmp_path):
    p = _problems(tmp_path, "priority.yaml", "- name: ok\n  when: {}\n  then: [{tag: x}]\n- name: broken\n  when: {text: {contains: [a, b}\n  then: []\n")
    msg = _one(p, tmp_path / "priority.yaml", "-", "YAML syntax error at line 5")
    assert "column" in msg


def test_check_duplicate_yaml_key(tmp_path):
    p = _problems(tmp_path, "priority.yaml", "- name: r1\n  when: {}\n  when: {text: {contains: x}}\n  then: [{tag: x}]\n")
    _one(p, tmp_path / "priority.yaml", "-", "duplicate key 'when'", "line 3")


def test_check_top_level_not_a_list(tmp_path):
    p = _problems(tmp_path, "routing.yaml", "name: r1\nwhen: {}\nthen: [{tag: x}]\n")
    _one(p, tmp_path / "routing.yaml", "-", "a rule file is a list of rules")


def test_check_unknown_stage_file_and_missing_dir(tmp_path):
    p = _problems(tmp_path, "clasify.yaml", "[]\n")
    assert "did you mean 'classify.yaml'" in _one(p, tmp_path / "clasify.yaml", "-", "not a stage file")
    assert check_rules(tmp_path / "nope") == [f"{tmp_path / 'nope'}: -: not a directory"]


def test_check_collects_all_errors_across_files(tmp_path):
    (tmp_path / "classify.yaml").write_text(
        "- name: a\n  when: {txt: {contains: x}}\n  then: [{category: fault}, {priority: critical}]\n"
        "- name: b\n  when: {text: {matches: '(('}}\n  then: [{tagg: x}]\n", encoding="utf-8")
    (tmp_path / "routing.yaml").write_text("- name: c\n  when: {team: {equals: [x]}}\n  then: [{team: tech}]\n")
    (tmp_path / "escalation.yaml").write_text("- name: d\n  when: {}\n  then: [{escalate: {to: nobody}}]\n  - bad\n")
    p = check_rules(tmp_path)
    assert len(p) >= 6, p
    _one(p, tmp_path / "classify.yaml", "a", "unknown field 'txt'")
    _one(p, tmp_path / "classify.yaml", "a", "unknown priority 'critical'")
    _one(p, tmp_path / "classify.yaml", "b", "bad regex")
    _one(p, tmp_path / "classify.yaml", "b", "unknown action 'tagg'")
    _one(p, tmp_path / "routing.yaml", "c", "'team' is text, got a list", "use 'in'")
    _one(p, tmp_path / "escalation.yaml", "-", "YAML syntax error")
    with pytest.raises(RuleError) as ei:
        RuleSet.load(tmp_path)
    assert ei.value.problems == p


def test_bundled_rules_check_clean():
    assert check_rules(resources.bundled_rules()) == []
    rs = RuleSet.load(resources.bundled_rules())
    assert set(rs.files) == {"classify", "priority", "routing", "escalation"}


# ---- reload ------------------------------------------------------------------------------------

V1 = "- name: v1\n  when: {text: {contains: 投诉}}\n  then: [{category: complaint}]\n"
V2 = "- name: v2\n  when: {text: {contains: 投诉}}\n  then: [{category: fault}]\n"


def test_reload_keeps_old_rules_when_new_ones_are_broken(tmp_path):
    d1, bad, d2 = tmp_path / "v1", tmp_path / "bad", tmp_path / "v2"
    for d in (d1, bad, d2):
        d.mkdir()
    (d1 / "classify.yaml").write_text(V1, encoding="utf-8")
    (bad / "classify.yaml").write_text(V2 + "- name: broken\n  when: {text: {matches: '('}}\n  then: [{tag: x}]\n",
                                       encoding="utf-8")
    (d2 / "classify.yaml").write_text(V2, encoding="utf-8")

    live = RuleSet.load(d1)
    assert live.evaluate("classify", {"text": "我要投诉"}).decisions[0].value == "complaint"
    with pytest.raises(RuleError) as ei:
        live = RuleSet.load(bad)
    assert any("broken" in p and "bad regex" in p for p in ei.value.problems)
    # the old set is still the live one and still evaluates
    assert live.evaluate("classify", {"text": "我要投诉"}).decisions[0].value == "complaint"
    new = RuleSet.load(d2)
    assert new.version > live.version
    live = new
    assert live.evaluate("classify", {"text": "我要投诉"}).fired == ["v2"]
    assert live.evaluate("classify", {"text": "我要投诉"}).decisions[0].value == "fault"


def test_old_and_new_sets_live_side_by_side_and_old_is_dropped_when_unused(tmp_path):
    a = RuleSet.from_data({"classify": [{"name": "a", "when": {}, "then": [{"tag": "a"}]}]})
    b = RuleSet.from_data({"classify": [{"name": "b", "when": {}, "then": [{"tag": "b"}]}]})
    assert a.evaluate("classify", {}).fired == ["a"]
    assert b.evaluate("classify", {}).fired == ["b"]
    name = a._stages["classify"].engine_name
    assert name != b._stages["classify"].engine_name
    del a
    gc.collect()
    rules._ENGINE.call(lambda: None)  # let the engine thread process the drop
    assert name not in rules._ENGINE.call(lambda: dict(rules._ENGINE.host._ruleset_directory))
    assert b.evaluate("classify", {}).fired == ["b"]


# ---- engine hygiene -----------------------------------------------------------------------------

def test_one_engine_thread_for_any_number_of_rule_sets():
    one_rule({}).evaluate("classify", {})
    before = threading.active_count()
    for _ in range(20):
        one_rule({}).evaluate("classify", {})
    assert threading.active_count() == before
    names = [t.name for t in threading.enumerate()]
    assert names.count("mailflow-rules") == 1


def test_facts_never_pile_up():
    rs = RuleSet.load(resources.bundled_rules())
    for i in range(300):
        rs.evaluate("classify", {"subject": f"投诉 {i}", "text": "系统瘫痪 bug 退款" if i % 2 else "hello"})
        rs.evaluate("priority", {"text": "x", "sentiment": -1, "category": "complaint"})
    assert rs._engine_facts_left("classify") == []
    assert rs._engine_facts_left("priority") == []


def test_evaluate_from_many_threads_agrees():
    rs = RuleSet.load(resources.bundled_rules())
    texts = ["我要投诉快递太慢", "系统瘫痪，所有用户无法登录", "请问发票怎么开？", "建议增加夜间模式",
             "Great job, kudos to the team!", "The app crashes on start", "hello"] * 30
    expected = [rs.evaluate_pure("classify", {"text": t}) for t in texts]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda t: rs.evaluate("classify", {"text": t}), texts))
    assert got == expected


def test_action_failure_raises_rule_eval_error(monkeypatch):
    rs = RuleSet.from_data({"classify": _rules(
        ("fine", {}, [{"tag": "a"}], None),
        ("explodes", {}, [{"tag": "b"}], None),
    )})

    real = rules._record

    def record(c, index):
        if index == 1:
            raise RuntimeError("boom")
        real(c, index)

    monkeypatch.setattr(rules, "_record", record)
    with pytest.raises(RuleEvalError) as ei:
        rs.evaluate("classify", {})
    assert ei.value.rule == "explodes" and ei.value.stage == "classify"
    assert "boom" in str(ei.value)
    monkeypatch.setattr(rules, "_record", real)
    assert rs.evaluate("classify", {}).fired == ["fine", "explodes"]  # no stale actions afterwards
    assert rs._engine_facts_left("classify") == []


def test_engine_error_raises_rule_eval_error():
    rs = one_rule({})
    rules._ENGINE.call(rules._ENGINE.drop, [rs._stages["classify"].engine_name])
    with pytest.raises(RuleEvalError) as ei:
        rs.evaluate("classify", {})
    assert ei.value.stage == "classify"


def test_many_rules_all_matching_stay_within_engine_limits():
    # 200 rules that all match at once: beyond the engine's 64-entry alpha stack for one fact
    n = 200
    rs = RuleSet.from_data({"classify": [
        {"name": f"r{i}", "when": {"any": [{"text": {"contains": f"w{i % 7}"}}, {"not": {"tags": {"contains": f"t{i}"}}}]},
         "then": [{"tag": f"x{i}"}]} for i in range(n)]})
    assert rs._chunks("classify") > 1
    res = rs.evaluate("classify", {"text": "w0 w1 w2 w3 w4 w5 w6", "tags": []})
    assert res.fired == [f"r{i}" for i in range(n)]
    assert res == rs.evaluate_pure("classify", {"text": "w0 w1 w2 w3 w4 w5 w6", "tags": []})


def test_huge_condition_is_collapsed_but_correct():
    leaves = [{"text": {"contains": f"k{i}"}} for i in range(80)]
    rs = RuleSet.from_data({"classify": [
        {"name": "big-any", "when": {"any": leaves}, "then": [{"tag": "any"}]},
        {"name": "big-all", "when": {"all": [{"any": leaves[i:i + 4]} for i in range(0, 80, 4)]}, "then": [{"tag": "all"}]},
    ]})
    for text in ["k79", "nothing", " ".join(f"k{i}" for i in range(0, 80, 4)), "k1 k5"]:
        assert rs.evaluate("classify", {"text": text}) == rs.evaluate_pure("classify", {"text": text})
    assert rs.evaluate("classify", {"text": "k79"}).fired == ["big-any"]


# ---- agreement: durable-rules == pure Python -----------------------------------------------------

LEAVES = [
    {"text": {"contains": ["投诉", "complaint"]}},
    {"text": {"matches": "故障|bug|outage"}},
    {"subject": {"equals": "hi"}},
    {"customer.tier": {"equals": "vip"}},
    {"sentiment": {"<=": -0.5}},
    {"customer.open_tickets": {">": 2}},
    {"tags": {"contains": "x"}},
    {"has_attachments": {"equals": True}},
    {"priority": {">=": "high"}},
    {"language": {"in": ["zh"]}},
    {"category": {"exists": True}},
    {"to": {"equals": "sales@x.com"}},
]

leaf_st = st.sampled_from(LEAVES)
cond_st = st.recursive(
    leaf_st,
    lambda kids: st.one_of(
        st.lists(kids, min_size=0, max_size=4).map(lambda xs: {"all": xs}),
        st.lists(kids, min_size=0, max_size=4).map(lambda xs: {"any": xs}),
        kids.map(lambda x: {"not": x}),
        st.tuples(kids, kids).map(lambda t: {**t[0], **t[1]} if not (t[0].keys() & t[1].keys()) else {"all": list(t)}),
    ),
    max_leaves=10,
)
rule_st = st.tuples(cond_st, st.booleans(), st.integers(0, 4))
facts_st = st.fixed_dictionaries({}, optional={
    "text": st.sampled_from(["我要投诉", "系统故障", "all fine", "a COMPLAINT about an outage", ""]),
    "subject": st.sampled_from(["hi", "HI", "hello"]),
    "customer.tier": st.sampled_from(["vip", "standard"]),
    "sentiment": st.floats(-1, 1),
    "customer.open_tickets": st.integers(0, 5),
    "tags": st.lists(st.sampled_from(["x", "y"]), max_size=2),
    "has_attachments": st.booleans(),
    "priority": st.sampled_from(["low", "normal", "high", "urgent"]),
    "language": st.sampled_from(["zh", "en"]),
    "category": st.sampled_from(["fault", None]),
    "to": st.lists(st.sampled_from(["sales@x.com", "support@x.com"]), max_size=2),
})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(rule_st, min_size=1, max_size=40), st.lists(facts_st, min_size=1, max_size=8))
def test_engine_agrees_with_pure_python(rule_specs, facts_list):
    data = [{"name": f"r{i}", "when": cond, "then": [{"tag": f"t{i}"}, {"priority": ["low", "normal", "high", "urgent", "normal"][p]}],
             "stop": stop and i % 3 == 0}
            for i, (cond, stop, p) in enumerate(rule_specs)]
    rs = RuleSet.from_data({"classify": data})
    for facts in facts_list:
        assert rs.evaluate("classify", facts) == rs.evaluate_pure("classify", facts)


def test_engine_agrees_with_pure_python_on_large_random_sets():
    rnd = random.Random(20261123)

    def cond(depth):
        if depth == 0 or rnd.random() < 0.3:
            return rnd.choice(LEAVES)
        k = rnd.choice(["all", "any", "not"])
        if k == "not":
            return {"not": cond(depth - 1)}
        return {k: [cond(depth - 1) for _ in range(rnd.randint(0, 4))]}

    for _ in range(3):
        data = [{"name": f"r{i}", "when": cond(4), "then": [{"tag": f"t{i}"}], "stop": rnd.random() < 0.03}
                for i in range(rnd.randint(50, 150))]
        rs = RuleSet.from_data({"routing": data})
        for _ in range(150):
            facts = {
                "text": rnd.choice(["我要投诉", "系统故障", "fine", "complaint outage"]),
                "subject": rnd.choice(["hi", "x"]), "customer.tier": rnd.choice(["vip", "standard"]),
                "sentiment": rnd.uniform(-1, 1), "customer.open_tickets": rnd.randint(0, 4),
                "tags": rnd.sample(["x", "y"], rnd.randint(0, 2)), "has_attachments": rnd.random() < 0.5,
                "priority": rnd.choice(["low", "normal", "high", "urgent"]), "language": rnd.choice(["zh", "en"]),
                "category": rnd.choice(["fault", None]), "to": ["sales@x.com"] if rnd.random() < 0.5 else [],
            }
            assert rs.evaluate("routing", facts) == rs.evaluate_pure("routing", facts)


def test_yaml_roundtrip_of_generated_rules(tmp_path):
    """What the property test feeds from_data also loads from a file (the same compiler)."""
    data = [{"name": "r0", "when": {"any": LEAVES[:4]}, "then": [{"tag": "t"}]}]
    (tmp_path / "classify.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    rs = RuleSet.load(tmp_path)
    assert rs.evaluate("classify", {"text": "我要投诉"}).fired == ["r0"]


# ---- regex prefilter: may say "maybe" wrongly, never "no" wrongly ----------------------------------

ALPHABET = "aksiKSIİıſK中文投诉 .-ßé"
atom_st = st.one_of(
    st.sampled_from(list(ALPHABET)).map(lambda c: "\\." if c == "." else "\\-" if c == "-" else c),
    st.sampled_from([".", "\\b", "\\w", "\\s", "[ak]", "[投诉]", "[^a]", "^", "$"]),
)
regex_st = st.recursive(
    st.lists(atom_st, min_size=1, max_size=4).map("".join),
    lambda inner: st.one_of(
        st.lists(inner, min_size=2, max_size=3).map("|".join),
        inner.map(lambda x: f"(?:{x})"),
        inner.map(lambda x: f"({x})"),
        st.tuples(inner, st.sampled_from(["?", "*", "+", "{1,2}", "{0,3}", "+?"])).map(lambda t: f"(?:{t[0]}){t[1]}"),
        st.tuples(inner, inner).map("".join),
        inner.map(lambda x: f"(?-i:{x})"),
    ),
    max_leaves=6,
)


@settings(max_examples=400, deadline=None)
@given(regex_st, st.text(alphabet=ALPHABET, max_size=30), st.booleans())
def test_prefilter_never_rejects_a_match(pattern, text, case_sensitive):
    import re

    flags = 0 if case_sensitive else re.IGNORECASE
    rx = re.compile(pattern, flags)
    pf = rules._prefilter(pattern, flags)
    if pf is not None and rx.search(text):
        assert rules._FRAGMENTS.matches(pf, rules._pf_fold(text)), (pattern, text)


def test_prefilter_handles_case_aliases():
    import re

    for pattern, text in [("kite", "\u212aITE"), ("ski", "\u017fKI"), ("pin", "P\u0130N"), ("pin", "p\u0131n")]:
        assert re.search(pattern, text, re.I)
        assert rules._FRAGMENTS.matches(rules._prefilter(pattern, re.I), rules._pf_fold(text))


def test_regex_fallback_prefilter_decides_like_the_automaton(tmp_path, monkeypatch):
    """Without pyahocorasick the per-leaf alternations must give the bundled rules' exact decisions."""
    from datetime import UTC, datetime

    from bench.corpus import generate
    from mailflow import config
    from mailflow.parse import parse_message
    from mailflow.runtime import Runtime

    msgs = [parse_message(r[1] if isinstance(r, tuple) else r) for r in generate(120, 7)]
    now = datetime(2026, 11, 24, 10, tzinfo=UTC)

    def decisions(sub: str) -> list:
        rt = Runtime.load(config.defaults(tmp_path / sub))
        return [repr(rt.pipeline.decider.evaluate(m, None, now, {}).outcome) for m in msgs]

    with_automaton = decisions("ac")
    monkeypatch.setattr(rules, "_ahocorasick", None)
    assert decisions("re") == with_automaton


def test_engine_answers_are_remembered_per_chunk_and_agree(monkeypatch):
    rs = RuleSet.load(resources.bundled_rules())
    texts = ["我要投诉快递太慢", "系统瘫痪，所有用户无法登录", "请问发票怎么开？", "hello"]
    first = [rs.evaluate("classify", {"text": t}) for t in texts]
    memo = rs._stages["classify"].memo
    assert memo and all(ci < rs._chunks("classify") for ci, _ in memo)
    calls = []
    real_run = rules._ENGINE.run
    monkeypatch.setattr(rules._ENGINE, "run", lambda *a: calls.append(a) or real_run(*a))
    again = [rs.evaluate("classify", {"text": t}) for t in texts]
    assert again == first == [rs.evaluate_pure("classify", {"text": t}) for t in texts]
    assert calls == []  # every chunk's booleans were seen before: the engine was not asked again
    assert rs._engine_facts_left("classify") == []


def test_engine_memo_is_bounded(monkeypatch):
    monkeypatch.setattr(rules, "_ENGINE_MEMO_MAX", 3)
    rs = RuleSet.from_data({"classify": [
        {"name": f"r{i}", "when": {"text": {"contains": f"w{i}"}}, "then": [{"tag": f"t{i}"}]} for i in range(6)]})
    for i in range(20):
        text = " ".join(f"w{j}" for j in range(6) if (i >> j) & 1)
        assert rs.evaluate("classify", {"text": text}) == rs.evaluate_pure("classify", {"text": text})
        assert len(rs._stages["classify"].memo) <= 3


def test_a_new_prefilter_group_of_known_fragments_is_seen_in_texts_evaluated_before():
    """A rule set whose prefilter groups reuse fragments other rules registered earlier: the groups
    found in a text cached before it was loaded must not hide its groups (same text, both sets)."""
    text = "zqxfoo and zqxbar here"
    first = RuleSet.from_data({"classify": [{"name": "either", "when": {"text": {"matches": "zqxfoo|zqxbar"}},
                                             "then": [{"tag": "a"}]}]})
    assert first.evaluate("classify", {"text": text}).fired == ["either"]
    # its prefilter needs one of {zqx, bar}: a new group, of fragments the first set registered
    second = RuleSet.from_data({"classify": [{"name": "one", "when": {"text": {"matches": "zqx|bar"}},
                                              "then": [{"tag": "b"}]}]})
    assert second.evaluate("classify", {"text": text}).fired == ["one"]
    assert second.evaluate("classify", {"text": text}) == second.evaluate_pure("classify", {"text": text})
