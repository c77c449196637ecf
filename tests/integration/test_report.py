"""Reports end to end: a scenario driven with `--now` over the real Dovecot and SMTP sink across two
months (tickets created, answered, set pending, resolved, rated, reopened, escalated, closed,
archived), then `mailflow report --format json` must give exactly the figures worked out below by
hand from the README's definitions, and the scheduled monthly report mail reaches the sink once.

The scenario runs on its own small rule set (category from the subject, urgent on 紧急, fixed
assignees, one escalation rule) so that changes to the bundled rules do not move its figures.
Calendar: the default (Asia/Shanghai, Mon-Fri 09:00-18:00, CN holidays); normal first response 1 d
(9 h), resolution 3 d; urgent first response 1 h.
"""

from __future__ import annotations

import json
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from mailflow import config, report
from mailflow.clock import Clock
from mailflow.runtime import Runtime
from mailflow.storeapi import open_store
from tests.integration.helpers import REPO, mailflow, parsed, storage_lines
from tests.integration.lifecycle_kit import Scenario

ALICE, BOB, MIA = "alice@support.example", "bob@support.example", "mia@support.example"
SH = ZoneInfo("Asia/Shanghai")

RULES = {
    "classify.yaml": """
- name: fault
  when: {subject: {matches: "故障"}}
  then: [{category: fault}]
- name: inquiry
  when: {not: {subject: {matches: "故障"}}}
  then: [{category: inquiry}]
""",
    "priority.yaml": """
- name: urgent
  when: {subject: {matches: "紧急"}}
  then: [{priority: urgent}]
- name: normal
  when: {not: {subject: {matches: "紧急"}}}
  then: [{priority: normal}]
""",
    "routing.yaml": """
- name: faults
  when: {category: fault}
  then: [{team: tech}, {assignee: "bob@support.example"}]
- name: inquiries
  when: {category: inquiry}
  then: [{team: customer_service}, {assignee: "alice@support.example"}]
""",
    "escalation.yaml": """
- name: first-response-breached
  when: {sla.first_response.breached: true}
  then:
    - escalate: {to: lead}
""",
}


def _scenario(tmp_path, dovecot, sink) -> Scenario:
    rules = tmp_path / "rules"
    rules.mkdir()
    for name, text in RULES.items():
        (rules / name).write_text(text, encoding="utf-8")
    extra = (f'[rules]\ndir = "{rules}"\n'
             '[reports]\nmonthly_to = ["role:manager", "team:tech"]\n')
    return Scenario(tmp_path, dovecot, sink, extra=extra)


def _to(m, addr: str) -> bool:
    return addr in str(m["To"])


def _find(sc: Scenario, tid: str, to: str):
    """The newest mail to `to` about ticket `tid` (its subject carries the tag)."""
    got = [parsed(d) for _f, r, d in sc.sink.messages if to in r]
    got = [m for m in got if tid in str(m["Subject"])]
    assert got, f"no mail to {to} about {tid}"
    return got[-1]


def _new(sc: Scenario, when: str, customer: str, subject: str, text: str) -> str:
    sc.customer(customer, subject, text)
    sc.run(when)
    return next(t["id"] for t in sc.tickets() if t["customer_email"] == customer and t["subject"] == subject)


def _report(sc: Scenario, now: str, *args: str) -> dict:
    return json.loads(mailflow(sc.cfg, "--now", now, "report", "--format", "json", *args).stdout)


@pytest.mark.usefixtures("backend")
def test_two_months_of_tickets_give_exactly_the_expected_figures(tmp_path, dovecot_server, smtp_sink):
    sc = _scenario(tmp_path, dovecot_server, smtp_sink)
    c1, c2, c3, c4, c5, c6 = (f"c{i}@customer.example" for i in range(1, 7))

    # --- October -------------------------------------------------------------------------------
    # T1: an inquiry, Mon Oct 26 10:00; resolved at once 11:00 (first reply 1 h); rated 5 the next day
    t1 = _new(sc, "2026-10-26T10:00+08:00", c1, "咨询发票抬头", "请问发票抬头怎么修改？")
    sc.staff(_find(sc, t1, ALICE), "[RESOLVE]", "已为您修改发票抬头。")
    sc.run("2026-10-26T11:00+08:00")
    sc.customer(c1, f"回复: [{t1}] 已解决", "5", in_reply_to=_find(sc, t1, c1)["Message-ID"].strip("<>"))
    sc.run("2026-10-27T10:00+08:00")
    assert sc.ticket(t1)["status"] == "closed"
    # T2: a fault, Fri Oct 30 17:00, spans the month boundary
    t2 = _new(sc, "2026-10-30T17:00+08:00", c2, "打印机故障", "打印机无法连接。")

    # --- November ------------------------------------------------------------------------------
    note2 = _find(sc, t2, BOB)
    sc.staff(note2, "", "我们正在排查。")  # first reply Mon 09:30: 1 h Friday + 0.5 h = 1.5 h
    sc.run("2026-11-02T09:30+08:00")
    sc.staff(note2, "[PENDING]", "请提供打印机型号。")
    sc.run("2026-11-02T10:00+08:00")
    sc.customer(c2, f"回复: [{t2}] 打印机故障", "型号是 X1。", in_reply_to=_find(sc, t2, c2)["Message-ID"].strip("<>"))
    sc.run("2026-11-03T10:00+08:00")
    sc.staff(note2, "[RESOLVE]", "已远程修复。")
    sc.run("2026-11-03T11:00+08:00")
    sc.customer(c2, f"回复: [{t2}] 已解决", "2\n还是不行", in_reply_to=_find(sc, t2, c2)["Message-ID"].strip("<>"))
    sc.run("2026-11-03T14:00+08:00")
    assert sc.ticket(t2)["status"] == "open" and sc.ticket(t2)["reopen_count"] == 1
    sc.staff(note2, "[RESOLVE]", "已更换硬件。")
    sc.run("2026-11-04T10:00+08:00")
    sc.customer(c2, f"回复: [{t2}] 已解决", "4", in_reply_to=_find(sc, t2, c2)["Message-ID"].strip("<>"))
    sc.run("2026-11-04T11:00+08:00")
    assert sc.ticket(t2)["status"] == "closed"
    october = _report(sc, "2026-11-05T10:00+08:00", "--month", "2026-10")  # kept, T2 still hot
    # T3: an inquiry Mon Nov 9 10:00, resolved 12:00 with one answer, never rated
    sc.customer(c3, "咨询退款时间", "退款多久到账？")
    r = sc.run("2026-11-09T10:00+08:00")
    t3 = next(t["id"] for t in sc.tickets() if t["customer_email"] == c3)
    assert sc.ticket(t1)["archived"] and sc.ticket(t2)["archived"]  # housekeeping: closed > 3 days
    # archiving T2 (created Oct 30) marked its day: the kept October report is made again, the same
    assert "kept reports made again" not in r.stderr  # `run --once` leaves that to the next report
    again = _report(sc, "2026-11-09T10:05+08:00", "--month", "2026-10")
    assert {**again, "generated_at": None} == {**october, "generated_at": None}
    sc.staff(_find(sc, t3, ALICE), "[RESOLVE]", "三个工作日内到账。")
    sc.run("2026-11-09T12:00+08:00")
    # T4: urgent fault Tue Nov 10 10:00, escalated by staff at 10:30, first answer 11:30 (1.5 h > 1 h:
    # the escalation rule fires too); still open at the month's end.  T6: a fault closed by staff.
    sc.customer(c4, "紧急：系统故障", "系统完全无法登录。")
    sc.customer(c6, "扫描仪故障", "扫描仪不工作。")
    sc.run("2026-11-10T10:00+08:00")
    ids = {t["customer_email"]: t["id"] for t in sc.tickets()}
    t4, t6 = ids[c4], ids[c6]
    sc.staff(_find(sc, t4, BOB), "[ESCALATE]", "")
    sc.run("2026-11-10T10:30+08:00")
    sc.staff(_find(sc, t4, BOB), "", "正在处理。")
    sc.staff(_find(sc, t6, BOB), "[CLOSE]", "已处理完毕。")
    sc.run("2026-11-10T11:30+08:00")
    # T5: an inquiry Wed Nov 11 10:00, never answered
    t5 = _new(sc, "2026-11-11T10:00+08:00", c5, "咨询会员", "会员怎么续费？")
    shown = {t: sc.ticket(t) for t in (t3, t4, t5, t6)}
    assert [shown[t]["priority"] for t in (t3, t4, t5, t6)] == ["normal", "urgent", "normal", "normal"]
    assert shown[t6]["status"] == "closed" and shown[t6]["close_reason"] == "staff"
    assert sum(1 for e in shown[t4]["events"] if e["kind"] == "escalated") == 2

    # --- December 1st: the report -----------------------------------------------------------------
    now = "2026-12-01T09:30+08:00"
    sc.run(now)
    d = _report(sc, now, "--month", "2026-11")
    assert d["period"] == {"from": "2026-11-01", "to": "2026-11-30", "timezone": "Asia/Shanghai", "kind": "month",
                           "label": "2026-11"}
    # created in November: T3 T4 T5 T6; new/open/pending at its end: T4 T5
    assert (d["tickets_new"], d["backlog_end"]) == (4, 2)
    assert d["by_category"] == {"fault": 2, "inquiry": 2}
    assert d["by_priority"] == {"urgent": 1, "normal": 3}
    assert d["by_language"] == {"zh": 4} and sum(d["by_mailbox"].values()) == 4
    # resolved in November: T2 (last resolve Nov 4 10:00), T3, T6 (closed by staff)
    assert d["tickets_resolved"] == 3
    # first reply: T2 1.5 h, T3 2 h, T6 1.5 h -> median 1.5, p90 1.5 + 0.8 * 0.5
    assert d["first_reply_hours"] == {"median": 1.5, "p90": 1.9, "count": 3}
    # full resolution: T2 Fri 1 + Mon 9 + Tue 9 + Wed 1 = 20 h (pending included), T3 2 h, T6 1.5 h
    assert d["resolution_hours"] == {"median": 2.0, "p90": 16.4, "count": 3}
    assert d["sla"]["first_response"] == {"achieved": 3, "breached": 0, "pct": 100.0}
    assert d["sla"]["resolution"] == {"achieved": 3, "breached": 0, "pct": 100.0}
    assert d["sla"]["next_response"] == {"achieved": 2, "breached": 0, "pct": 100.0}  # T2's two customer mails
    assert (d["one_touch_pct"], d["reopen_rate_pct"], d["escalations"]) == (66.7, 33.3, 2)
    # rated in November: T2 (2, then 4: the last counts); T1's 5 was in October
    assert d["csat"] == {"pct": 100.0, "mean": 4.0, "ratings": 1, "response_rate_pct": 33.3,
                         "by_score": {"1": 0, "2": 0, "3": 0, "4": 1, "5": 0}}
    assert d["by_team"]["tech"]["handled"] == 2 and d["by_team"]["customer_service"]["handled"] == 1
    assert d["by_agent"][BOB]["name"] == "Bob" and d["by_agent"][BOB]["tickets_new"] == 2
    p = d["previous"]  # October: T1 and T2 created, T2 still new at its end, T1 resolved and rated 5
    assert (p["tickets_new"], p["backlog_end"], p["tickets_resolved"]) == (2, 1, 1)
    assert p["first_reply_hours"]["median"] == 1.0 and p["csat"]["mean"] == 5.0
    assert d["change"]["tickets_new"] == 2 and d["change"]["csat"]["mean"] == -1.0
    assert [x["ratings"] for x in d["csat_trend"]][-2:] == [1, 1]
    tech = _report(sc, now, "--month", "2026-11", "--team", "tech")
    assert (tech["tickets_new"], tech["tickets_resolved"], tech["backlog_end"]) == (2, 2, 1)
    assert tech["breakdown"]["by"] == "category" and list(tech["breakdown"]["rows"]) == ["fault"]

    # --- the scheduled monthly mail: the 09:30 pass queued it, once per recipient list ------------------
    cfg = config.load(sc.cfg)
    rt = Runtime.load(cfg, Clock(datetime(2026, 12, 1, 9, 40, tzinfo=SH)))
    assert report.send_due(rt.store, rt.pipeline.outbox, cfg, datetime(2026, 12, 1, 9, 40, tzinfo=SH)) == []
    sc.run("2026-12-01T09:31+08:00")
    sc.run("2026-12-01T10:31+08:00")
    reports = [m for m in sc.latest_all() if m.get("X-Mailflow-Report") and "2026-11" in str(m["Subject"])]
    assert len(reports) == 2, [str(m["Subject"]) for m in reports]
    whole = next(m for m in reports if _to(m, MIA))
    team = next(m for m in reports if _to(m, BOB))
    assert _to(team, ALICE) and not _to(whole, BOB)
    for m in (whole, team):
        assert m.get_content_type() == "multipart/mixed" and "[CW" not in str(m["Subject"])
        assert m["Auto-Submitted"] == "auto-generated" and "2026-11" in str(m["Subject"])
        [att] = list(m.iter_attachments())
        assert att.get_content_type() == "text/html"
        assert "<svg" in att.get_content() and "http://" not in att.get_content().replace("http://www.w3.org", "")
    assert [a.get_filename() for a in whole.iter_attachments()] == ["mailflow-report-2026-11.html"]
    assert [a.get_filename() for a in team.iter_attachments()] == ["mailflow-report-2026-11-tech.html"]
    text = whole.get_body(("plain",)).get_content()
    assert "新工单：4" in text and "c1@customer.example" not in text
    assert "新工单：2" in team.get_body(("plain",)).get_content()  # the tech team's own tickets
    rows = json.loads(mailflow(sc.cfg, "outbox", "list", "--json").stdout)
    assert sorted(r["status"] for r in rows if r["template"] == "report") == ["sent", "sent"]


def test_the_cli_on_an_empty_install_and_its_one_line_errors(tmp_path):
    cfg = tmp_path / "mailflow.toml"
    cfg.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n', encoding="utf-8")
    r = mailflow(cfg, "--now", "2026-12-01T10:00+08:00", "report")
    assert "本期没有工单。" in r.stdout and "2026-11" in r.stdout
    assert not (tmp_path / "data").exists()  # a report writes nothing on a new install
    d = json.loads(mailflow(cfg, "--now", "2026-12-01T10:00+08:00", "report", "--format", "json").stdout)
    assert d["tickets_new"] == 0 and d["empty"] and d["previous"]["tickets_new"] == 0
    html = mailflow(cfg, "report", "--month", "2026-11", "--format", "html", "--now", "2026-12-01T10:00+08:00").stdout
    assert "<!DOCTYPE html>" in html and "本期没有工单" in html
    for args, msg in ((["--month", "2099-01"], "is in the future"), (["--month", "2026-1x"], "not a month"),
                      (["--from", "2026-11-31", "--to", "2026-12-01"], "not a date"),
                      (["--week", "2026-W48", "--month", "2026-11"], "only one")):
        r = mailflow(cfg, "--now", "2026-12-01T10:00+08:00", "report", *args, check=False)
        assert r.returncode == 1 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert r.stdout == ""


@pytest.mark.usefixtures("backend")
def test_formats_and_out_files(tmp_path):
    from tests.unit.test_report_metrics import contract_tickets

    data = tmp_path / "data"
    cfg = tmp_path / "mailflow.toml"
    cfg.write_text(f'[storage]\ndata_dir = "{data}"\n{storage_lines()}[reports]\nlocale = "en"\n', encoding="utf-8")
    st = open_store(config.load(cfg))
    with st.batch():
        for k in contract_tickets():
            st.add_ticket(k.t)
    now = "2026-12-01T10:00+08:00"
    out = mailflow(cfg, "--now", now, "report", "--by", "agent").stdout
    assert "Support report 2026-11" in out and "New tickets" in out and "bob@support.example" in out
    r = mailflow(cfg, "--now", now, "report", "--format", "csv", "--out", str(tmp_path / "r.csv"))
    raw = (tmp_path / "r.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbfid,created_at,") and b"w***@customer.example" in raw
    assert "r.csv" in r.stderr and r.stdout == ""
    unmasked = mailflow(cfg, "--now", now, "report", "--format", "csv", "--unmask").stdout
    assert "wang@customer.example" in unmasked and len(unmasked.strip().splitlines()) == 4
    mailflow(cfg, "--now", now, "report", "--format", "html", "--locale", "zh", "--out", str(tmp_path / "r.html"))
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert 'lang="zh-CN"' in page and "每日工单量" in page and "Daily volume" in page
    week = json.loads(mailflow(cfg, "--now", now, "report", "--week", "2026-W45", "--format", "json").stdout)
    assert week["period"]["label"] == "2026-W45" and week["tickets_new"] == 3
    rng = json.loads(mailflow(cfg, "--now", now, "report", "--from", "2026-11-03", "--to", "2026-11-04",
                              "--format", "json").stdout)
    assert rng["tickets_new"] == 1 and rng["previous"]["period"]["from"] == "2026-11-01"


@pytest.mark.parametrize("month,expected", [("2026-09", "2026-10-08T09:00:00+08:00"),  # after National Day
                                            ("2026-11", "2026-12-01T09:00:00+08:00"),
                                            ("2026-12", "2027-01-04T09:00:00+08:00")])
def test_send_time_is_the_first_working_day_from_send_at(month, expected):
    cfg = config.from_dict({}, "t.toml", REPO)
    y, m = map(int, month.split("-"))
    assert report.send_time(cfg, report.month_period(y, m, "Asia/Shanghai")).isoformat() == expected


@pytest.mark.usefixtures("backend")
def test_due_mails_ledger_weekly_and_recipients(tmp_path):
    from mailflow.outbox import Outbox
    from mailflow.render import Templates

    staff = ''.join(f'[[staff]]\nemail = "{e}"\nname = "{n}"\nteams = {t}\nrole = "{r}"\n' for e, n, t, r in (
        (ALICE, "Alice", '["tech"]', "lead"), (BOB, "Bob", '["tech"]', "agent"), (MIA, "Mia", "[]", "manager")))
    p = tmp_path / "c.toml"
    p.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n{storage_lines()}{staff}'
                 '[reports]\nmonthly_to = ["role:manager", "boss@example.com"]\nweekly_to = ["team:tech"]\n',
                 encoding="utf-8")
    cfg = config.load(p)
    assert report.recipients_by_scope(cfg, cfg.reports.monthly_to) == {"all": [MIA, "boss@example.com"]}
    st = open_store(cfg)
    box = Outbox(cfg, st, Templates.load(cfg.templates_dir))
    mon = datetime(2026, 11, 30, 9, 0, tzinfo=SH)  # Monday: last week's report is due, and October's
    due = report.due_mails(cfg, st, mon)           # (the latest month, never sent: a catch-up)
    assert [(rm.kind, rm.period.label, rm.scope, rm.recipients) for rm in due] == [
        ("monthly", "2026-10", "all", (MIA, "boss@example.com")), ("weekly", "2026-W48", "team:tech", (ALICE, BOB))]
    assert not report.due_mails(cfg, st, datetime(2026, 11, 30, 8, 59, tzinfo=SH))[1:]  # weekly: from 09:00
    assert len(report.send_due(st, box, cfg, mon)) == 2 and not report.send_due(st, box, cfg, mon)
    assert report.next_send(cfg, mon).isoformat() == "2026-12-01T09:00:00+08:00"  # November's, then W49's
    assert report.next_send(cfg, datetime(2026, 12, 1, 9, 0, tzinfo=SH)).isoformat() == "2026-12-07T09:00:00+08:00"
    tue = datetime(2026, 12, 1, 9, 0, tzinfo=SH)
    assert [(rm.kind, rm.period.label) for rm in report.due_mails(cfg, st, tue)] == [("monthly", "2026-11")]
    report.send_due(st, box, cfg, tue)
    # a recipient added later gets it alone; a removed one nothing
    p.write_text(p.read_text().replace('"boss@example.com"]', '"boss@example.com", "cfo@example.com"]'))
    cfg2 = config.load(p)
    [late] = report.due_mails(cfg2, st, tue)
    assert late.recipients == ("cfo@example.com",) and late.period.label == "2026-11"
    rows = [r for r in st.outbox_rows().values() if r["template"] == "report"]
    assert sorted((r["report"], tuple(r["to"])) for r in rows) == [
        ("report:monthly:2026-10:all", (MIA, "boss@example.com")),
        ("report:monthly:2026-11:all", (MIA, "boss@example.com")),
        ("report:weekly:2026-W48:team:tech", (ALICE, BOB))]
    assert all(r["ticket_id"] is None and r["auto"] is False for r in rows)
    assert st.get_meta("report:monthly:2026-11:all")["sent"] == sorted([MIA, "boss@example.com"])
    assert st.get_meta("auto:boss@example.com") is None  # not counted by the flood cap


def test_report_rows_without_a_ticket_survive_refusal_and_list(tmp_path, smtp_sink):
    from mailflow.outbox import Outbox
    from mailflow.render import Templates
    from mailflow.store import Store
    from tests.integration.helpers import write_config

    p = write_config(tmp_path, smtp=smtp_sink, staff=f'[[staff]]\nemail = "{MIA}"\nname = "Mia"\nrole = "manager"\n',
                     extra='[reports]\nmonthly_to = ["role:manager"]\n')
    cfg = config.load(p)
    st = Store(cfg.data_dir)
    now = datetime(2026, 12, 1, 9, 30, tzinfo=SH)
    [(rm, row)] = report.send_due(st, Outbox(cfg, st, Templates.load(cfg.templates_dir)), cfg, now)
    smtp_sink.fail_code = 550
    r = mailflow(p, "--now", "2026-12-01T09:31+08:00", "run", "--once", check=False)
    assert r.returncode == 0, r.stderr
    listed = mailflow(p, "outbox", "list").stdout
    assert "failed" in listed and "report" in listed and f"{row:>6}" in listed
    assert st.get_meta(rm.ledger_key)["sent"] == [MIA]  # queued once: a refusal is not a reason to resend


def test_a_broken_report_template_is_logged_and_not_retried_at_once(tmp_path, caplog):
    import shutil

    from mailflow import report_mail
    from mailflow.outbox import Outbox
    from mailflow.render import Templates
    from mailflow.store import Store

    tpl = tmp_path / "templates"
    shutil.copytree(REPO / "templates", tpl)
    page = tpl / "report" / "html" / "report.html.j2"
    page.write_text(page.read_text(encoding="utf-8").replace("{{ title }}", "{{ report.no_such_figure }}", 1))
    p = tmp_path / "c.toml"
    p.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n[templates]\ndir = "{tpl}"\n'
                 '[reports]\nmonthly_to = ["boss@example.com"]\n', encoding="utf-8")
    cfg = config.load(p)
    st = Store(cfg.data_dir)
    box = Outbox(cfg, st, Templates.load(cfg.templates_dir))  # `check` accepts it: it only fails on real data
    now = datetime(2026, 12, 1, 9, 30, tzinfo=SH)
    report_mail._failed.clear()
    assert report.send_due(st, box, cfg, now) == []
    assert "report monthly 2026-11 (all) not sent" in caplog.text and "no_such_figure" in caplog.text
    assert report.due_mails(cfg, st, now)  # still due (nothing queued, nothing in the ledger) ...
    caplog.clear()
    assert report.send_due(st, box, cfg, now) == [] and "not sent" not in caplog.text  # ... but not rebuilt now
    report_mail._failed.clear()
