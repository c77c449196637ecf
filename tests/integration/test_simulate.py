"""`simulate` is the real pipeline rolled back, so it must agree with `run` exactly, and touch nothing."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailflow import config, resources
from mailflow.daemon import load_all
from mailflow.pipeline import Incoming, Pipeline
from mailflow.simulate import simulate_raw
from mailflow.store import Store
from tests.integration.helpers import mailflow, make_mail

STAFF = [config.StaffMember("alice@support.example", "Alice", ["tech"], "lead"),
         config.StaffMember("bob@support.example", "Bob", ["tech", "customer_service"], "agent"),
         config.StaffMember("carol@support.example", "Carol", ["service_supervisor", "product"], "agent")]

TEXTS = [
    ("投诉：客服Bob态度很差", "你们的客服Bob态度非常恶劣，我要投诉！"),
    ("系统瘫痪", "系统瘫痪了，所有用户都无法登录，数据丢失！"),
    ("Outage", "Total outage, all users cannot log in. Data loss suspected."),
    ("咨询发票", "请问如何开具发票？"),
    ("Suggestion", "I suggest adding a dark mode, would be great."),
    ("Thanks", "Thank you, excellent service, very happy!"),
    ("退款", "退款还没到账，很失望，非常不满意"),
    ("Question", "How do I change my password?"),
]


def _pipeline(tmp: Path) -> Pipeline:
    cfg = config.defaults(tmp)
    cfg.data_dir = tmp / "data"
    cfg.staff = list(STAFF)
    cfg.vip = ["@vip.example"]
    rules, templates = load_all(cfg)
    return Pipeline(cfg, Store(cfg.data_dir), rules, templates)


def _summary(p: Pipeline, tid: str) -> dict:
    t = p.store.ticket(tid)
    rows = [r for r in p.store.outbox_rows().values() if r["ticket_id"] == tid]
    return {"category": t["category"], "priority": t["priority"], "team": t["team"], "assignee": t["assignee"],
            "tags": t["tags"], "fired": t["rules_fired"],
            "mails": sorted((r["template"], tuple(r["to"]), r["subject"]) for r in rows)}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, len(TEXTS) - 1), st.sampled_from(
    ["a@customer.example", "b@customer.example", "boss@vip.example"])), min_size=1, max_size=8))
def test_simulate_agrees_with_run(tmp_path_factory, seq):
    p = _pipeline(tmp_path_factory.mktemp("sim"))
    for i, (k, sender) in enumerate(seq):
        subject, body = TEXTS[k]
        raw = make_mail(i, sender=sender, subject=f"{subject} {i}", body=body)
        before = p.store.db_path.read_bytes() if p.store.db_path.exists() else b""
        sim = simulate_raw(p, raw)
        after = p.store.db_path.read_bytes() if p.store.db_path.exists() else b""
        assert before == after, "simulate wrote to the database"
        [res] = p.process([Incoming(raw)])
        assert res.kind == sim["route"] == "new"
        real = _summary(p, res.ticket_id)
        assert sim["ticket_id"] == res.ticket_id
        for k2 in ("category", "priority", "team", "assignee", "tags", "fired"):
            assert sim[k2] == real[k2], k2
        assert sorted((m["template"], tuple(m["to"]), m["subject"]) for m in sim["mails"]) == real["mails"]


REPLIES = ["谢谢，收到了。", "5", "2\n还是没解决", "> quoted only", "Still not fixed, sorry.", "4分 很满意",
           "补充一下：订单号 123"]
COMMANDS = ["[RESOLVE]", "[PENDING]", "[REOPEN]", "[CLOSE]", "[NOTE]", "[PRIORITY urgent]", "[TAG x]",
            "[ASSIGN bob]", "[ASSIGN tech]", "[ESCALATE]", "[SPAM]", "[RESOLVE] [RESOLVE]", "[BOGUS]",
            "[CATEGORY fault] [PENDING]", ""]


def _reply(i: int, sender: str, tid: str, text: str) -> bytes:
    return make_mail(1000 + i, sender=sender, subject=f"Re: [{tid}] follow-up {i}", body=text)


def _staff(p: Pipeline, i: int, who: str, tid: str, cmds: str, text: str) -> bytes:
    mid = p.outbox.mint_id(tid, who, None)
    return (f"From: Staff <{who}>\r\nTo: support@support.example\r\nSubject: Re: [{tid}] {cmds}\r\n"
            f"Message-ID: <staff{i}@support.example>\r\nIn-Reply-To: <{mid}>\r\nReferences: <{mid}>\r\n"
            "Date: Mon, 23 Nov 2026 12:00:00 +0800\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Transfer-Encoding: 8bit\r\n\r\n{text}\r\n").encode()


_STEP = st.one_of(
    st.tuples(st.just("new"), st.integers(0, len(TEXTS) - 1), st.sampled_from(["a@customer.example",
                                                                               "boss@vip.example"])),
    st.tuples(st.just("reply"), st.integers(0, 20), st.integers(0, len(REPLIES) - 1)),
    st.tuples(st.just("staff"), st.integers(0, 20), st.integers(0, len(COMMANDS) - 1)),
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_STEP, min_size=1, max_size=12))
def test_simulate_agrees_with_run_on_replies_ratings_and_staff_mail(tmp_path_factory, seq):
    """Unseen sequences mixing new mail, customer replies, ratings and staff commands: what simulate
    says (route, ticket fields, mails) is what run then does, and simulate writes nothing."""
    p = _pipeline(tmp_path_factory.mktemp("simmix"))
    made: list[tuple[str, str]] = []  # (ticket id, customer)
    for i, step in enumerate(seq):
        if step[0] == "new" or not made:
            k, sender = (step[1], step[2]) if step[0] == "new" else (0, "a@customer.example")
            subject, text = TEXTS[k]
            raw = make_mail(i, sender=sender, subject=f"{subject} {i}", body=text)
        elif step[0] == "reply":
            tid, sender = made[step[1] % len(made)]
            raw = _reply(i, sender, tid, REPLIES[step[2]])
        else:
            tid, _ = made[step[1] % len(made)]
            raw = _staff(p, i, "alice@support.example", tid, COMMANDS[step[2]], "我们正在处理" if step[2] % 2 else "")
        before = p.store.db_path.read_bytes() if p.store.db_path.exists() else b""
        sim = simulate_raw(p, raw)
        after = p.store.db_path.read_bytes() if p.store.db_path.exists() else b""
        assert before == after, "simulate wrote to the database"
        rows_before = set(p.store.outbox_rows())
        [res] = p.process([Incoming(raw)])
        assert res.kind == sim["route"], (res.kind, sim)
        assert res.ticket_id == sim["ticket_id"]
        if res.kind == "new":
            made.append((res.ticket_id, p.store.ticket(res.ticket_id)["customer_email"]))
        t = p.store.ticket(res.ticket_id) if res.ticket_id else None
        if t is not None:
            for k in ("status", "category", "priority", "team", "assignee", "tags"):
                assert sim[k] == t[k], (k, sim[k], t[k])
        rows = p.store.outbox_rows()
        real = sorted((rows[k]["template"], tuple(rows[k]["to"]), rows[k]["subject"]) for k in rows
                      if k not in rows_before)
        assert sorted((m["template"], tuple(m["to"]), m["subject"]) for m in sim["mails"]) == real
        assert sim["plan"]["route"] == res.kind


def test_simulate_cli_json(tmp_path):
    sample = sorted(resources.samples().glob("02-*.eml"))[0]
    r = mailflow(None, "simulate", "--json", str(sample), env={"MAILFLOW_DATA_DIR": str(tmp_path / "d")})
    [out] = json.loads(r.stdout)
    assert out["route"] == "new" and out["priority"] == "urgent" and out["category"] == "fault"
    assert out["team"] == "tech"
    assert any(stage == "priority" for stage, _name in out["fired"])
    assert out["features"]["language"] == "en"
    assert [m["template"] for m in out["mails"]] == ["ack"]
    assert not (tmp_path / "d" / "mailflow.json").exists()


def test_check_reports_rule_errors(tmp_path):
    mailflow(None, "init", str(tmp_path / "mf"))
    cfg = tmp_path / "mf" / "mailflow.toml"
    (tmp_path / "mf" / "rules" / "priority.yaml").write_text(
        "- name: broken\n  when: {text: {matches: '(unclosed'}}\n  then: [{priority: urgent}]\n"
        "- name: bad-action\n  when: {subject: {contains: [x]}}\n  then: [{launch: rockets}]\n")
    r = mailflow(cfg, "check", check=False)
    assert r.returncode == 1
    assert "priority.yaml: broken:" in r.stderr and "regex" in r.stderr.lower()
    assert "priority.yaml: bad-action:" in r.stderr
