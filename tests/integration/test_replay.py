"""A staff command takes effect at most once: a captured reply re-delivered under a new Message-ID, or
under its own Message-ID with the subject edited to [SPAM], changes nothing and sends nothing; a signed
reference expires, and then the sender gets an error and a fresh notification to answer instead."""

from __future__ import annotations

import re

import pytest

from tests.integration.lifecycle_kit import Scenario, body

pytestmark = pytest.mark.usefixtures("backend")  # every test on TinyDB and on PostgreSQL

CUST = "zhao@customer.example"
ALICE = "alice@support.example"


def _new(sc: Scenario) -> str:
    sc.customer(CUST, "发票抬头错误", "发票抬头写错了，请帮忙重开。")
    sc.run()
    [t] = sc.tickets()
    sc.mails()
    return t["id"]


def test_a_replayed_staff_reply_changes_nothing(tmp_path, dovecot_server, smtp_sink):
    sc = Scenario(tmp_path, dovecot_server, smtp_sink)
    tid = _new(sc)
    note = sc.latest(ALICE)
    raw = sc.staff(note, "[PENDING]", "请提供正确的抬头和税号。")
    sc.run("2026-11-23T10:10+08:00")
    assert sc.ticket(tid)["status"] == "pending"
    [progress] = sc.mails()
    assert str(progress["To"]) == CUST
    sc.customer(CUST, f"回复: [{tid}]", "抬头：某某科技有限公司", in_reply_to=progress["Message-ID"].strip("<>"))
    sc.run("2026-11-23T10:20+08:00")
    assert sc.ticket(tid)["status"] == "open"
    sc.mails()

    # the same reply under a new Message-ID: a replay
    again = re.sub(rb"Message-ID: <[^>]+>", b"Message-ID: <replayed-1@attacker.example>", raw)
    sc.dv.append(sc.user, again)
    # the same Message-ID, the subject edited to [SPAM]
    mid = re.search(rb"Message-ID: <([^>]+)>", raw).group(1).decode()
    sc.staff(note, "[SPAM]", "请提供正确的抬头和税号。", message_id=mid)
    sc.run("2026-11-23T10:30+08:00")
    shown = sc.ticket(tid)
    assert shown["status"] == "open" and shown["close_reason"] is None
    assert sum(1 for e in shown["events"] if e["kind"] == "replay") == 2
    assert not sc.mails()

    # the same staff member's new words with the same command still apply (a second [PENDING] later)
    sc.staff(note, "[PENDING]", "还需要您提供营业执照照片。")
    sc.run("2026-11-23T10:40+08:00")
    assert sc.ticket(tid)["status"] == "pending"
    assert [str(m["To"]) for m in sc.mails()] == [CUST]


def test_an_expired_reference_gets_an_error_and_a_fresh_notification(tmp_path, dovecot_server, smtp_sink):
    sc = Scenario(tmp_path, dovecot_server, smtp_sink)  # [outbound] staff_reference_days = 30 (default)
    tid = _new(sc)
    note = sc.latest(ALICE)
    sc.staff(note, "[RESOLVE]", "已重开发票。")
    sc.run("2026-12-24T10:00+08:00")  # 31 days after the notification was minted
    shown = sc.ticket(tid)
    assert shown["status"] == "new"
    # (a month without an answer also fired the escalation rules: look at this mail's answer only)
    got = [m for m in sc.mails() if str(m["X-Mailflow-Template"]) in ("command_error", "staff_notify")]
    assert sorted(str(m["X-Mailflow-Template"]) for m in got) == ["command_error", "staff_notify"]
    assert all(str(m["To"]) == ALICE for m in got)
    err = next(m for m in got if str(m["X-Mailflow-Template"]) == "command_error")
    assert "30 days" in body(err)
    fresh = next(m for m in got if str(m["X-Mailflow-Template"]) == "staff_notify")
    sc.staff(fresh, "[RESOLVE]", "已重开发票，请查收。")
    sc.run("2026-12-24T10:30+08:00")
    assert sc.ticket(tid)["status"] == "resolved"
    assert [str(m["X-Mailflow-Template"]) for m in sc.mails() if str(m["To"]) == CUST] == ["resolved"]
