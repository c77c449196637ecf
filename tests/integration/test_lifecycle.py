"""The ticket lifecycle end to end over a real Dovecot and SMTP sink: every staff command, every bug
the lifecycle issue listed, asserting both the ticket and the mail that went out (or did not)."""

from __future__ import annotations

import pytest

from tests.integration.lifecycle_kit import Scenario, body

pytestmark = pytest.mark.usefixtures("backend")  # every test on TinyDB and on PostgreSQL

CUST = "wang@customer.example"
ALICE, BOB, MIA = "alice@support.example", "bob@support.example", "mia@support.example"


def _status_events(t: dict) -> list[tuple[str, str]]:
    return [(e["from"], e["to"]) for e in t["events"] if e["kind"] == "status"]


def _new_ticket(sc: Scenario, sender=CUST, subject="退款两周还没到账", text="我的退款两周了还没到账，请尽快处理。"):
    sc.customer(sender, subject, text)
    sc.run()
    t = next(x for x in sc.tickets() if x["customer_email"] == sender and x["status"] == "new")
    return t


def test_the_whole_command_set_on_one_ticket(tmp_path, dovecot_server, smtp_sink):
    sc = Scenario(tmp_path, dovecot_server, smtp_sink)
    t = _new_ticket(sc)
    tid = t["id"]
    assert t["assignee"] == ALICE
    got = sc.mails()
    assert {str(m["To"]).split("<")[-1].rstrip(">") for m in got} >= {CUST, ALICE}
    note = sc.latest(ALICE)

    # field commands and a note: nothing reaches the customer
    sc.staff(note, "[PRIORITY urgent] [TAG refund] [CATEGORY fault] [NOTE]", "客户是老用户，内部备注")
    sc.run("2026-11-23T10:10+08:00")
    shown = sc.ticket(tid)
    assert (shown["priority"], shown["category"], shown["status"]) == ("urgent", "fault", "new")
    assert "refund" in shown["tags"] and any(e["kind"] == "note" for e in shown["events"])
    assert not sc.mails(CUST)

    # [ASSIGN bob]: bob hears about it, the customer does not
    sc.staff(note, "[ASSIGN bob]", "")
    sc.run("2026-11-23T10:20+08:00")
    assert sc.ticket(tid)["assignee"] == BOB
    got = sc.mails()
    assert [str(m["To"]) for m in got] == [BOB]
    bob_note = got[0]

    # [PENDING] with a question: pending, and the customer gets the question as a progress mail
    sc.staff(bob_note, "[PENDING]", "请提供您的订单号。", sender=BOB)
    sc.run("2026-11-23T10:30+08:00")
    shown = sc.ticket(tid)
    assert shown["status"] == "pending" and shown["first_response_at"] == "2026-11-23T02:30:00+00:00"
    [progress] = sc.mails(CUST)
    assert "请提供您的订单号" in body(progress) and tid in str(progress["Subject"])

    # the customer answers: open again
    sc.customer(CUST, f"回复: [{tid}] 退款", "订单号是 20261123-88。", in_reply_to=progress["Message-ID"].strip("<>"))
    sc.run("2026-11-23T11:00+08:00")
    assert sc.ticket(tid)["status"] == "open"

    # [RESOLVE] with the resolution; a second [RESOLVE] is refused and sends the customer nothing
    sc.staff(bob_note, "[RESOLVE]", "已为您重新发起退款，预计1个工作日内到账。", sender=BOB)
    sc.run("2026-11-23T14:00+08:00")
    assert sc.ticket(tid)["status"] == "resolved"
    [resolved] = sc.mails(CUST)
    assert "已为您重新发起退款" in body(resolved) and "quoted notification" not in body(resolved)
    sc.staff(bob_note, "[RESOLVE]", "再说一次：已解决。", sender=BOB)
    sc.run("2026-11-23T14:10+08:00")
    got = sc.mails()
    assert [str(m["To"]) for m in got] == [BOB]
    assert "already resolved" in body(got[0]) and "status resolved" in body(got[0])
    assert sc.ticket(tid)["status"] == "resolved"

    # "2" and "还是没解决": reopened; the customer hears it, the assignee and the team lead too
    sc.customer(CUST, f"回复: [{tid}] 已解决", "2\n还是没解决", in_reply_to=resolved["Message-ID"].strip("<>"))
    sc.run("2026-11-24T09:00+08:00")
    shown = sc.ticket(tid)
    assert shown["status"] == "open" and shown["reopen_count"] == 1 and shown["rating"] == 2
    got = sc.mails()
    to = sorted(str(m["To"]) for m in got)
    assert to == sorted([ALICE, BOB, CUST]), to
    staff_mail = [m for m in got if str(m["To"]) == BOB][0]
    assert "2" in str(staff_mail["Subject"]) and "重新打开" in str(staff_mail["Subject"])

    # [ESCALATE]: the team's lead (and managers of the team) get the escalation mail
    sc.staff(bob_note, "[ESCALATE]", "", sender=BOB)
    sc.run("2026-11-24T09:10+08:00")
    got = sc.mails()
    assert [str(m["To"]) for m in got] == [ALICE]
    assert any(e["kind"] == "escalated" for e in sc.ticket(tid)["events"])

    # [CLOSE]; then [PENDING] and [TAG] on the closed ticket are refused and change nothing
    sc.staff(bob_note, "[CLOSE]", "本工单已关闭，如有问题请随时联系。", sender=BOB)
    sc.run("2026-11-24T10:00+08:00")
    shown = sc.ticket(tid)
    assert shown["status"] == "closed" and shown["close_reason"] == "staff"
    closed_at = shown["closed_at"]
    [closed] = sc.mails(CUST)
    assert "本工单已关闭" in body(closed)
    sc.staff(bob_note, "[PENDING] [TAG later]", "等客户", sender=BOB)
    sc.run("2026-11-24T10:10+08:00")
    shown = sc.ticket(tid)
    assert shown["status"] == "closed" and shown["closed_at"] == closed_at and "later" not in shown["tags"]
    [err] = sc.mails()
    assert str(err["To"]) == BOB and "status closed" in body(err) and "REOPEN" in body(err)

    # [REOPEN] on the closed ticket: open, counted, the customer is told
    sc.staff(bob_note, "[REOPEN]", "我们重新跟进此问题。", sender=BOB)
    sc.run("2026-11-24T10:20+08:00")
    shown = sc.ticket(tid)
    assert shown["status"] == "open" and shown["reopen_count"] == 2 and shown["closed_at"] is None
    assert [str(m["To"]) for m in sc.mails()] == [CUST]
    # [REOPEN] on an open ticket is refused and counts nothing
    sc.staff(bob_note, "[REOPEN]", "", sender=BOB)
    sc.run("2026-11-24T10:30+08:00")
    assert sc.ticket(tid)["reopen_count"] == 2
    assert [str(m["To"]) for m in sc.mails()] == [BOB]
    assert _status_events(sc.ticket(tid)) == [
        ("new", "pending"), ("pending", "open"), ("open", "resolved"), ("resolved", "open"),
        ("open", "closed"), ("closed", "open")]
    # every change is in the timeline with who and when
    tl = sc.ticket(tid)["timeline"]
    assert [x for x in tl if x["type"] == "event" and x["kind"] == "status" and x["actor"] == BOB]
    assert sum(1 for x in tl if x["type"] == "message") == len(sc.ticket(tid)["messages"])


def test_a_staff_mail_is_all_or_nothing(tmp_path, dovecot_server, smtp_sink):
    sc = Scenario(tmp_path, dovecot_server, smtp_sink)
    tid = _new_ticket(sc)["id"]
    note = sc.latest(ALICE)
    sc.mails()
    # one good command, one bad argument, one unknown assignee: nothing applies, one error lists both
    sc.staff(note, "[PRIORITY urgent] [CATEGORY nonsense] [ASSIGN nobody] [RESOLVE]", "这段话不能发给客户")
    sc.run()
    shown = sc.ticket(tid)
    assert shown["priority"] != "urgent" and shown["status"] == "new"
    [err] = sc.mails()
    assert str(err["To"]) == ALICE
    text = body(err)
    assert "nonsense" in text and "nobody" in text
    assert not [m for m in sc.sink.messages if CUST in m[1] and "这段话" in m[2].decode("utf-8", "replace")]


def test_merge_sends_later_replies_to_the_target(tmp_path, dovecot_server, smtp_sink):
    sc = Scenario(tmp_path, dovecot_server, smtp_sink)
    a = _new_ticket(sc, "li@customer.example", "发票开错了", "发票抬头写错了，请重开。")
    ack_a = sc.latest("li@customer.example")
    b = _new_ticket(sc, "li2@customer.example", "发票问题", "同一张发票的问题，请合并处理。")
    note_a = [m for m in sc.mails(ALICE, new=False) if a["id"] in str(m["Subject"])][0]
    sc.mails()
    sc.staff(note_a, f"[MERGE {b['id']}]", "重复工单，合并")
    sc.run()
    src, dst = sc.ticket(a["id"]), sc.ticket(b["id"])
    assert src["status"] == "closed" and src["close_reason"] == "merged" and src["merged_into"] == b["id"]
    assert "li@customer.example" in dst["participants"] and dst["merged_from"] == [a["id"]]
    assert any(e["kind"] == "merged_in" and a["id"] in e["detail"] for e in dst["events"])
    assert not sc.mails()  # nothing to anyone
    # the merged-away customer replies to their old acknowledgement: it lands on the target
    sc.customer("li@customer.example", f"Re: [{a['id']}] 发票开错了", "补充：税号是 9131000.",
                in_reply_to=ack_a["Message-ID"].strip("<>"))
    sc.run()
    src, dst = sc.ticket(a["id"]), sc.ticket(b["id"])
    assert src["status"] == "closed" and src["reopen_count"] == 0
    assert any("税号" in m["text"] for m in dst["messages"])
    assert not [m for m in src["messages"] if "税号" in (m["text"] or "")]
    assert not sc.mails()  # no "reopened" notice to anyone
    # merging into a closed (or missing) ticket is refused
    c = _new_ticket(sc, "li3@customer.example", "另一个问题", "还有一个问题。")
    who = c["assignee"]
    note_c = [m for m in sc.mails(who, new=False) if c["id"] in str(m["Subject"])][0]
    sc.mails()
    sc.staff(note_c, f"[MERGE {a['id']}]", "")
    sc.staff(note_c, "[MERGE CW209901010001]", "")
    sc.run()
    assert sc.ticket(c["id"])["status"] == "new"
    errs = sc.mails()
    assert len(errs) == 2 and all(str(m["To"]) == who for m in errs)
    assert "is closed" in body(errs[0]) and "no ticket CW209901010001" in body(errs[1])


def test_spam_silences_the_sender(tmp_path, dovecot_server, smtp_sink):
    sc = Scenario(tmp_path, dovecot_server, smtp_sink)
    spammer = "promo@spam.example"
    t = _new_ticket(sc, spammer, "Cheap watches", "Buy cheap watches now!!! best price")
    ack = sc.latest(spammer)
    note = [m for m in sc.mails(ALICE, new=False) if t["id"] in str(m["Subject"])][0]
    sc.mails()
    sc.staff(note, "[SPAM]", "")
    sc.run()
    shown = sc.ticket(t["id"])
    assert shown["status"] == "closed" and shown["close_reason"] == "spam" and "spam" in shown["tags"]
    assert not sc.mails()
    # the spammer answers on the ticket: recorded, answered by nothing, not reopened
    sc.customer(spammer, f"Re: [{t['id']}] Cheap watches", "Still interested? Reply now!",
                in_reply_to=ack["Message-ID"].strip("<>"))
    sc.run()
    shown = sc.ticket(t["id"])
    assert shown["status"] == "closed" and shown["reopen_count"] == 0 and len(
        [m for m in shown["messages"] if m["from"] == spammer]) == 2
    assert not sc.mails()
    # new mail from them: the bundled rules give it a quiet low-priority ticket, no acknowledgement
    sc.customer(spammer, "Special offer", "Limited offer just for you")
    sc.run()
    new = [x for x in sc.tickets() if x["customer_email"] == spammer and x["id"] != t["id"]]
    assert len(new) == 1 and new[0]["priority"] == "low" and "suspected_spam" in new[0]["tags"]
    assert not sc.mails(spammer)


def test_assign_to_a_team_follows_the_strategy_and_never_the_named_staff(tmp_path, dovecot_server, smtp_sink):
    sc = Scenario(tmp_path, dovecot_server, smtp_sink)
    t = _new_ticket(sc, "angry@customer.example", "投诉客服Bob", "客服Bob态度非常差，我要投诉！")
    assert t["category"] == "complaint" and t["assignee"] != BOB
    note = sc.latest(t["assignee"])
    sc.mails()
    sc.staff(note, "[ASSIGN bob]", "", sender=t["assignee"])
    sc.run()
    assert sc.ticket(t["id"])["assignee"] == t["assignee"]
    [err] = sc.mails()
    assert "names Bob" in body(err)
    sc.staff(note, "[ASSIGN service_supervisor]", "", sender=t["assignee"])
    sc.run()
    assert sc.ticket(t["id"])["assignee"] == ALICE  # Bob is the only other member, and named


def test_permissions_restrict_commands_by_role(tmp_path, dovecot_server, smtp_sink):
    sc = Scenario(tmp_path, dovecot_server, smtp_sink, extra='[permissions]\nSPAM = ["lead", "manager"]\n')
    t = _new_ticket(sc)
    note = sc.latest(ALICE)
    sc.staff(note, "[ASSIGN bob]", "")
    sc.run()
    bob_note = sc.latest(BOB)
    sc.mails()
    sc.staff(bob_note, "[SPAM]", "", sender=BOB)
    sc.run()
    assert sc.ticket(t["id"])["status"] == "new"
    [err] = sc.mails()
    assert str(err["To"]) == BOB and "needs role lead or manager (you are agent)" in body(err)
    sc.staff(note, "[SPAM]", "")
    sc.run()
    assert sc.ticket(t["id"])["close_reason"] == "spam"


def test_ratings_thanks_and_quotes_on_a_resolved_ticket(tmp_path, dovecot_server, smtp_sink):
    sc = Scenario(tmp_path, dovecot_server, smtp_sink)
    tid = _new_ticket(sc)["id"]
    note = sc.latest(ALICE)
    sc.staff(note, "[RESOLVE]", "已处理。")
    sc.run("2026-11-23T11:00+08:00")
    resolved = sc.latest(CUST)
    sc.mails()
    ref = resolved["Message-ID"].strip("<>")
    # thanks: stays resolved, the assignee hears, the silence timer restarts
    sc.customer(CUST, f"回复: [{tid}]", "谢谢，已经收到退款了！", in_reply_to=ref)
    sc.run("2026-11-24T09:00+08:00")
    shown = sc.ticket(tid)
    assert shown["status"] == "resolved" and shown["silence_from"] == "2026-11-24T01:00:00+00:00"
    assert [str(m["To"]) for m in sc.mails()] == [ALICE]
    # a reply that is nothing but the quote: recorded, changes nothing
    sc.customer(CUST, f"回复: [{tid}]", "> 已处理。\n> 请对本次服务评分", in_reply_to=ref)
    sc.run("2026-11-24T10:00+08:00")
    shown = sc.ticket(tid)
    assert shown["status"] == "resolved" and shown["silence_from"] == "2026-11-24T01:00:00+00:00"
    assert not sc.mails()
    # 5: closed as confirmed, with the closing mail
    sc.customer(CUST, f"回复: [{tid}]", "5分", in_reply_to=ref)
    sc.run("2026-11-24T11:00+08:00")
    shown = sc.ticket(tid)
    assert (shown["status"], shown["close_reason"], shown["rating"]) == ("closed", "confirmed", 5)
    assert [str(m["To"]) for m in sc.mails()] == [CUST]
    # a later rating on the closed ticket replaces the score and reopens nothing
    sc.customer(CUST, f"回复: [{tid}]", "3", in_reply_to=ref)
    sc.run("2026-11-24T12:00+08:00")
    shown = sc.ticket(tid)
    assert (shown["status"], shown["rating"], shown["reopen_count"]) == ("closed", 3, 0)
    assert [r["score"] for r in shown["ratings"]] == [5, 3]
    assert not sc.mails()


def test_archived_tickets_come_back_and_late_replies_open_a_linked_ticket(tmp_path, dovecot_server, smtp_sink):
    sc = Scenario(tmp_path, dovecot_server, smtp_sink)
    tid = _new_ticket(sc)["id"]
    note = sc.latest(ALICE)
    sc.staff(note, "[CLOSE]", "已关闭。")
    sc.run("2026-11-23T11:00+08:00")
    closed = sc.latest(CUST)
    sc.run("2026-11-27T12:00+08:00")  # 4 days later: housekeeping archives it (archive_after_days = 3)
    assert tid not in [t["id"] for t in sc.tickets()]
    assert sc.ticket(tid)["archived"] is True
    sc.mails()
    raw = sc.customer(CUST, f"回复: [{tid}]", "问题又出现了，请再看看。", in_reply_to=closed["Message-ID"].strip("<>"))
    sc.run("2026-11-28T09:00+08:00")
    shown = sc.ticket(tid)
    assert shown["archived"] is False and shown["status"] == "open" and shown["reopen_count"] == 1
    assert any(e["kind"] == "unarchived" for e in shown["events"])
    got = sc.mails()
    assert sorted(str(m["To"]) for m in got) == sorted([CUST, ALICE])
    # the same mail delivered again changes nothing and sends nothing
    sc.dv.append(sc.user, raw)
    sc.run("2026-11-28T09:30+08:00")
    assert sc.ticket(tid)["reopen_count"] == 1 and not sc.mails()

    # closed again, and a reply long after the reopen window: a new ticket, linked both ways
    sc.staff(note, "[CLOSE]", "再次关闭。")
    sc.run("2026-11-28T10:00+08:00")
    sc.mails()
    sc.customer(CUST, f"回复: [{tid}]", "三个月后又坏了。", in_reply_to=closed["Message-ID"].strip("<>"))
    sc.run("2027-03-01T10:00+08:00")
    old = sc.ticket(tid)
    assert old["status"] == "closed" and old["reopen_count"] == 1
    [new_id] = old["followed_by"]
    new = sc.ticket(new_id)
    assert new["follows"] == tid and new["status"] == "new"
    assert any("三个月后" in m["text"] for m in new["messages"])
    assert new_id.startswith("CW20270301")
    assert [str(m["To"]) for m in sc.mails() if str(m["To"]) == CUST]  # the new ticket's acknowledgement
