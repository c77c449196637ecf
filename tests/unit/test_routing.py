"""routing: applying decisions across stages, picking assignees, expanding targets, bundled rules."""

from __future__ import annotations

import pytest

from mailflow import resources
from mailflow.config import StaffMember
from mailflow.features import mentioned_staff, sentiment
from mailflow.routing import (
    Outcome,
    TicketFields,
    apply_priority,
    evaluate_message,
    evaluate_timer,
    pick_assignee,
)
from mailflow.rules import RuleEvalError, RuleSet

STAFF = [
    StaffMember("tina@corp.example", "Tina", ["tech"], "lead"),
    StaffMember("tom@corp.example", "Tom", ["tech"], "agent"),
    StaffMember("ted@corp.example", "Ted", ["tech"], "agent"),
    StaffMember("wang.fang@corp.example", "王芳", ["customer_service"], "agent"),
    StaffMember("zhao@corp.example", "赵静", ["customer_service"], "agent"),
    StaffMember("sue@corp.example", "Sue", ["service_supervisor"], "lead"),
    StaffMember("sam@corp.example", "Sam", ["service_supervisor"], "agent"),
    StaffMember("pat@corp.example", "Pat", ["product"], "agent"),
]
CHAIN = ["head.support@corp.example", "cto@corp.example"]


def new() -> TicketFields:
    return TicketFields(None, "normal", None, None, [])


def run(rs, facts, **kw) -> Outcome:
    args = dict(staff=STAFF, open_counts={}, rr_state={}, mentioned=set(), strategy="least_open",
                escalation_chain=CHAIN)
    args.update(kw)
    return evaluate_message(rs, facts, new(), args.pop("staff"), args.pop("open_counts"), args.pop("rr_state"),
                            args.pop("mentioned"), **args)


@pytest.mark.parametrize("current,value,expected", [
    ("normal", "urgent", "urgent"),
    ("urgent", "low", "low"),
    ("normal", {"raise": 1}, "high"),
    ("high", {"raise": 2}, "urgent"),
    ("urgent", {"raise": 1}, "urgent"),
    ("low", {"raise": -1}, "low"),
    ("high", {"raise": -1}, "normal"),
    ("normal", {"at_least": "high"}, "high"),
    ("urgent", {"at_least": "high"}, "urgent"),
    ("low", {"at_least": "normal"}, "normal"),
])
def test_apply_priority(current, value, expected):
    assert apply_priority(current, value) == expected


def test_stages_see_what_earlier_stages_set_and_later_settings_win():
    rs = RuleSet.from_data({
        "classify": [
            {"name": "fault", "when": {"text": {"contains": "故障"}}, "then": [{"category": "fault"}, {"tag": "t1"}]},
            {"name": "complaint", "when": {"text": {"contains": "投诉"}}, "then": [{"category": "complaint"}]},
        ],
        "priority": [
            {"name": "complaints-high", "when": {"category": {"equals": "complaint"}}, "then": [{"priority": "high"}]},
            {"name": "tagged", "when": {"tags": {"contains": "t1"}}, "then": [{"priority": {"raise": 1}}]},
        ],
        "routing": [
            {"name": "by-priority", "when": {"priority": {">=": "high"}}, "then": [{"team": "tech"}]},
            {"name": "complaint-team", "when": {"category": {"equals": "complaint"}}, "then": [{"team": "service_supervisor"}]},
        ],
    })
    o = run(rs, {"text": "投诉：系统故障"})
    assert o.fields.category == "complaint"  # the later rule won
    assert o.fields.priority == "urgent"  # high, then raised because classify tagged it
    assert o.fields.team == "service_supervisor"
    assert o.fields.tags == ["t1"]
    assert o.fired == [("classify", "fault"), ("classify", "complaint"), ("priority", "complaints-high"),
                       ("priority", "tagged"), ("routing", "by-priority"), ("routing", "complaint-team")]
    assert o.fields.assignee in {"sue@corp.example", "sam@corp.example"}


def test_defaults_and_ack():
    rs = RuleSet.from_data({"classify": [{"name": "vip-ack", "when": {"customer.tier": "vip"},
                                          "then": [{"ack_template": "ack_vip"}]},
                                         {"name": "silent", "when": {"from": {"matches": "^noreply@"}},
                                          "then": [{"no_ack": True}]}]})
    o = run(rs, {"from": "a@b.c"})
    assert (o.fields.priority, o.ack_template, o.no_ack, o.notify, o.escalate) == ("normal", "ack", False, [], [])
    assert o.fields.team is None and o.fields.assignee is None
    o = run(rs, {"from": "noreply@b.c", "customer.tier": "vip"})
    assert (o.ack_template, o.no_ack) == ("ack_vip", True)


def test_input_fields_are_not_modified():
    rs = RuleSet.from_data({"classify": [{"name": "t", "when": {}, "then": [{"tag": "x"}, {"category": "fault"}]}]})
    fields = TicketFields("inquiry", "normal", None, None, ["a"])
    o = evaluate_message(rs, {}, fields, STAFF, {}, {}, set())
    assert fields == TicketFields("inquiry", "normal", None, None, ["a"])
    assert o.fields.tags == ["a", "x"] and o.fields.category == "fault"


def test_tags_are_kept_once_in_order():
    rs = RuleSet.from_data({"classify": [
        {"name": "a", "when": {}, "then": [{"tag": ["x", "y"]}]},
        {"name": "b", "when": {}, "then": [{"tag": ["y", "z", "x"]}]},
    ]})
    assert run(rs, {}).fields.tags == ["x", "y", "z"]


# ---- assignment ---------------------------------------------------------------------------------

TEAM_RULES = {"routing": [{"name": "tech", "when": {}, "then": [{"team": "tech"}]}]}


def test_round_robin_rotates_and_returns_pointer():
    rs = RuleSet.from_data(TEAM_RULES)
    rr: dict[str, int] = {}
    got = []
    for _ in range(4):
        o = run(rs, {}, rr_state=rr, strategy="round_robin")
        got.append(o.fields.assignee)
        assert rr == {} or o.rr_state != rr
        rr = o.rr_state
    assert got == ["tina@corp.example", "tom@corp.example", "ted@corp.example", "tina@corp.example"]
    assert rr == {"tech": 0}


def test_least_open_picks_fewest_open_with_round_robin_ties():
    rs = RuleSet.from_data(TEAM_RULES)
    o = run(rs, {}, open_counts={"tina@corp.example": 5, "tom@corp.example": 2, "ted@corp.example": 2})
    assert o.fields.assignee == "tom@corp.example"
    o = run(rs, {}, open_counts={"tina@corp.example": 5, "tom@corp.example": 2, "ted@corp.example": 2},
            rr_state=o.rr_state)
    assert o.fields.assignee == "ted@corp.example"  # tie with tom: the next one in turn
    o = run(rs, {}, open_counts={"tina@corp.example": 0, "tom@corp.example": 2, "ted@corp.example": 2})
    assert o.fields.assignee == "tina@corp.example"


def test_never_assign_a_mentioned_staff_member():
    rs = RuleSet.from_data(TEAM_RULES)
    mentioned = {"tina@corp.example", "tom@corp.example"}
    for strategy in ("round_robin", "least_open"):
        o = run(rs, {}, mentioned=mentioned, strategy=strategy, open_counts={"ted@corp.example": 9})
        assert o.fields.assignee == "ted@corp.example"


def test_explicit_assignee_who_is_mentioned_is_replaced_by_a_pick():
    rs = RuleSet.from_data({"routing": [{"name": "r", "when": {},
                                         "then": [{"team": "tech"}, {"assignee": "tom@corp.example"}]}]})
    assert run(rs, {}).fields.assignee == "tom@corp.example"
    o = run(rs, {}, mentioned={"tom@corp.example"})
    assert o.fields.assignee in {"tina@corp.example", "ted@corp.example"}


def test_whole_team_mentioned_leaves_ticket_unassigned():
    rs = RuleSet.from_data({"routing": [{"name": "r", "when": {}, "then": [{"team": "product"}]}]})
    o = run(rs, {}, mentioned={"pat@corp.example"})
    assert o.fields.team == "product" and o.fields.assignee is None


def test_pick_action_uses_final_team_and_its_own_strategy():
    rs = RuleSet.from_data({"routing": [
        {"name": "pick-first", "when": {}, "then": [{"assignee": {"pick": "round_robin"}}]},
        {"name": "team-later", "when": {}, "then": [{"team": "customer_service"}]},
    ]})
    o = run(rs, {}, strategy="least_open", rr_state={"customer_service": 0},
            open_counts={"wang.fang@corp.example": 0, "zhao@corp.example": 10})
    assert o.fields.assignee == "zhao@corp.example"
    assert o.rr_state == {"customer_service": 1}


def test_no_team_no_pick():
    rs = RuleSet.from_data({"classify": [{"name": "c", "when": {}, "then": [{"category": "inquiry"}]}]})
    assert run(rs, {}).fields.assignee is None


def test_pick_assignee_unknown_team():
    assert pick_assignee("nobody", "least_open", STAFF, {}, {}, set()) is None


# ---- notify / escalate --------------------------------------------------------------------------

def test_notify_targets_expand():
    rs = RuleSet.from_data({"routing": [{"name": "n", "when": {}, "then": [
        {"team": "tech"},
        {"notify": {"to": "team:product"}},
        {"notify": {"to": "team", "template": "urgent_notify"}},
        {"notify": {"to": "lead"}},
        {"notify": {"to": "Boss@Corp.Example"}},
        {"notify": {"to": "team:product"}},  # duplicate, kept once
    ]}]})
    o = run(rs, {})
    assert o.notify == [
        ("pat@corp.example", "staff_notify"),
        ("tina@corp.example", "urgent_notify"), ("tom@corp.example", "urgent_notify"), ("ted@corp.example", "urgent_notify"),
        ("tina@corp.example", "staff_notify"),
        ("boss@corp.example", "staff_notify"),
    ]


def test_escalate_targets_expand():
    rs = RuleSet.from_data({"escalation": [{"name": "e", "when": {}, "then": [
        {"escalate": True}, {"escalate": {"to": "chain"}}, {"escalate": {"to": "x@corp.example"}}]}]})
    o = evaluate_timer(rs, {}, TicketFields(None, "high", "tech", None, []), STAFF, escalation_chain=CHAIN)
    assert o.escalate == ["tina@corp.example", *CHAIN, "x@corp.example"]
    # a team without a lead escalates to the chain
    o = evaluate_timer(rs, {}, TicketFields(None, "high", "product", None, []), STAFF, escalation_chain=CHAIN)
    assert o.escalate == [*CHAIN, "x@corp.example"]


def test_rule_eval_error_propagates(monkeypatch):
    from mailflow import rules

    rs = RuleSet.from_data({"priority": [{"name": "bad", "when": {}, "then": [{"priority": "high"}]}]})
    monkeypatch.setattr(rules, "_record", lambda c, i: 1 / 0)
    with pytest.raises(RuleEvalError) as ei:
        run(rs, {})
    assert (ei.value.stage, ei.value.rule) == ("priority", "bad")


# ---- the bundled rules --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bundled():
    return RuleSet.load(resources.bundled_rules())


def facts_for(subject: str, text: str, tier: str = "standard", complaints: int = 0, language: str = "zh") -> dict:
    return {"subject": subject, "text": text, "from": "customer@example.com", "to": ["support@corp.example"],
            "mailbox": "support", "language": language, "has_attachments": False,
            "customer.tier": tier, "customer.open_tickets": 0, "customer.complaints_30d": complaints,
            "sentiment": sentiment(f"{subject}\n{text}"), "mentions_staff": False}


@pytest.mark.parametrize("subject,text,kw,category,priority,team,tags", [
    ("投诉：客服态度恶劣", "第二次接电话的客服态度非常差，直接挂了电话，退款两周还没到账。", {},
     "complaint", "high", "service_supervisor", {"service_attitude", "payment"}),
    ("投诉：快递未送达", "快递一个星期还没到，请尽快处理。", {},
     "complaint", "high", "service_supervisor", {"logistics"}),
    ("快递太慢", "我要投诉，快递太慢了，非常失望！", {},
     "complaint", "high", "service_supervisor", {"logistics", "negative_tone"}),
    ("系统瘫痪", "从早上开始系统瘫痪，所有用户都无法登录！", {},
     "fault", "urgent", "tech", {"urgent"}),
    ("URGENT: outage", "Nobody can log in to the portal, all users are affected.", {"language": "en"},
     "fault", "urgent", "tech", {"urgent"}),
    ("App crashes", "The app crashes when I open the orders page. Please fix this bug.", {"language": "en"},
     "fault", "high", "tech", set()),
    ("諮詢：可以開立發票嗎？", "請問上個月的訂單可以開立公司發票嗎？謝謝", {},
     "inquiry", "normal", "customer_service", {"payment"}),
    ("Question about pricing", "Hello, how much does the annual plan cost?", {"language": "en"},
     "inquiry", "normal", "customer_service", set()),
    ("建议：增加夜间模式", "希望增加夜间模式，整体很好用。", {},
     "suggestion", "low", "product", set()),
    ("表扬客服王芳", "王芳非常耐心，服务周到，点赞！", {},
     "praise", "low", "customer_service", set()),
    ("Thank you!", "Great job, kudos to your support team.", {"language": "en"},
     "praise", "low", "customer_service", set()),
    ("VIP：请问发票", "请问发票什么时候寄出？", {"tier": "vip"},
     "inquiry", "high", "customer_service", {"vip", "payment"}),
    ("又是质量问题", "我要投诉，又收到了次品。", {"complaints": 2},
     "complaint", "high", "service_supervisor", {"product_quality", "repeat_complaint"}),
    ("Terrible service", "I want to complain: your agent was rude and this is unacceptable.", {"language": "en"},
     "complaint", "high", "service_supervisor", {"service_attitude", "negative_tone"}),
    ("售後維修", "請問保修期內的維修怎麼申請？", {},
     "inquiry", "normal", "customer_service", {"after_sales"}),
])
def test_bundled_rules_examples(bundled, subject, text, kw, category, priority, team, tags):
    f = facts_for(subject, text, tier=kw.get("tier", "standard"), complaints=kw.get("complaints", 0),
                  language=kw.get("language", "zh"))
    o = evaluate_message(bundled, f, new(), STAFF, {}, {}, set(), escalation_chain=CHAIN)
    assert (o.fields.category, o.fields.priority, o.fields.team) == (category, priority, team), o.fired
    assert tags <= set(o.fields.tags), o.fields.tags
    assert o.fields.assignee is not None
    for stage in ("classify", "priority", "routing"):
        assert bundled.evaluate(stage, f) == bundled.evaluate_pure(stage, f)


def test_bundled_urgent_notifies_the_team(bundled):
    o = evaluate_message(bundled, facts_for("系统瘫痪", "系统瘫痪了"), new(), STAFF, {}, {}, set())
    assert o.fields.priority == "urgent"
    assert {r for r, _ in o.notify} == {"tina@corp.example", "tom@corp.example", "ted@corp.example"}


def test_bundled_attitude_complaint_never_goes_to_the_named_agent(bundled):
    staff = [*STAFF, StaffMember("li.ming@corp.example", "李明", ["service_supervisor"], "agent")]
    text = "客服李明态度很差，我要投诉。"
    mentioned = mentioned_staff(text, staff)
    assert mentioned == {"li.ming@corp.example"}
    for rr in range(3):
        o = evaluate_message(bundled, facts_for("投诉", text), new(), staff,
                             {"sue@corp.example": 9, "sam@corp.example": 9}, {"service_supervisor": rr}, mentioned)
        assert o.fields.team == "service_supervisor"
        assert o.fields.assignee in {"sue@corp.example", "sam@corp.example"}
    assert ("sue@corp.example", "staff_notify") in o.notify  # the lead reviews attitude complaints


FR = "sla.first_response."


@pytest.mark.parametrize("facts,fields,escalate,notify", [
    # 80% of the first-response time: the assignee is reminded, nobody is escalated to
    ({FR + "running": True, FR + "elapsed_ratio": 0.85, "status": "new"},
     TicketFields("fault", "high", "tech", "tom@corp.example", []), [], [("tom@corp.example", "sla_reminder")]),
    # the breach: the team's lead; twice the target: the managers too (the chain, with no manager)
    ({FR + "running": True, FR + "breached": True, FR + "elapsed_ratio": 1.1, "status": "new"},
     TicketFields("fault", "high", "tech", "tom@corp.example", []), ["tina@corp.example"], []),
    ({FR + "running": True, FR + "breached": True, FR + "elapsed_ratio": 2.0, "status": "new"},
     TicketFields("fault", "high", "tech", "tom@corp.example", []), ["tina@corp.example", *CHAIN], []),
    ({"sla.resolution.breached": True, "sla.resolution.elapsed_ratio": 1.2, "status": "open"},
     TicketFields("fault", "high", "tech", "tom@corp.example", []), CHAIN, []),
    # nothing due
    ({FR + "running": True, FR + "elapsed_ratio": 0.5, "status": "open"},
     TicketFields("fault", "urgent", "tech", "tom@corp.example", []), [], []),
    # a complaint naming a staff member: the lead, at once
    ({"category": "complaint", "mentions_staff": True, "status": "new"},
     TicketFields("complaint", "high", "tech", "tom@corp.example", []), [], [("tina@corp.example", "staff_notify")]),
])
def test_bundled_escalation(bundled, facts, fields, escalate, notify):
    o = evaluate_timer(bundled, facts, fields, STAFF, escalation_chain=CHAIN)
    assert o.escalate == escalate
    assert o.notify == notify
    assert o.fields.assignee == "tom@corp.example"


def test_bundled_customer_updates(bundled):
    f = TicketFields("inquiry", "normal", "customer_service", "zhao@corp.example", [])
    o = evaluate_timer(bundled, {"status": "open", "sla.update.breached": True}, f, STAFF)
    assert o.customer_updates == ["progress"] and not o.escalate
    o = evaluate_timer(bundled, {"status": "pending", "days_pending": 3.2}, f, STAFF)
    assert o.customer_updates == ["pending_reminder"]
    o = evaluate_timer(bundled, {"status": "pending", "days_pending": 2.5, "sla.update.breached": True}, f, STAFF)
    assert o.customer_updates == []
