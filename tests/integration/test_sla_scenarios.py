"""The SLA clock walked through time with `--now` over a real Dovecot and SMTP sink: the exact
reminder, escalation, customer-progress, pending-reminder and auto-close mails, each once; a kill -9
in the middle changes nothing; a 3-day downtime catches up with one mail per breach.

Calendar: the default (Mon-Fri 09:00-18:00, CN holidays, Asia/Shanghai). 2026-11-23 is a Monday.
A fault is `high`: first response 4 h, next response 1 d (9 h), resolution 1 d (9 h).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tests.integration.helpers import REPO, parsed
from tests.integration.lifecycle_kit import Scenario, body

pytestmark = pytest.mark.usefixtures("backend")  # every test on TinyDB and on PostgreSQL

CUST = "li.na@customer.example"
ALICE, MIA, CHIEF = "alice@support.example", "mia@support.example", "chief@support.example"
EXTRA = f'escalation_chain = ["{CHIEF}"]\n'


def _got(sc: Scenario) -> list[tuple[str, str]]:
    """(recipient, template) of the mail the sink accepted since the last look, sorted."""
    return sorted((str(m["To"]), str(m["X-Mailflow-Template"])) for m in sc.mails())


def _fault(sc: Scenario, sender: str = CUST, n: int = 1) -> str:
    sc.customer(sender, f"系统报错 {n}", f"导出报表时一直报错，无法导出（第{n}次）。")
    sc.run()
    [t] = [t for t in sc.tickets() if t["customer_email"] == sender and t["subject"].endswith(str(n))]
    assert t["priority"] == "high" and t["category"] == "fault"
    return t["id"]


def test_reminders_escalations_progress_and_auto_close_each_once(tmp_path, dovecot_server, smtp_sink):
    sc = Scenario(tmp_path, dovecot_server, smtp_sink, extra=EXTRA)
    sc.now = "2026-11-23T10:00+08:00"
    tid = _fault(sc)
    assert _got(sc) == sorted([(CUST, "ack"), (ALICE, "staff_notify")])
    t = sc.ticket(tid)
    assert t["sla"]["first_response_due"] == "2026-11-23T06:00:00+00:00"  # 14:00 Shanghai
    assert t["sla"]["resolution_due"] == "2026-11-24T02:00:00+00:00"  # Tue 10:00: 8 h Mon + 1 h Tue

    sc.run("2026-11-23T12:00+08:00")  # 50%: nothing
    assert _got(sc) == []
    sc.run("2026-11-23T13:15+08:00")  # 81%: the assignee is reminded
    assert _got(sc) == [(ALICE, "sla_reminder")]
    sc.run("2026-11-23T13:40+08:00")
    assert _got(sc) == []  # once
    sc.run("2026-11-23T14:05+08:00")  # breached: the team lead (alice leads the team)
    assert _got(sc) == [(ALICE, "escalation")]
    sc.run("2026-11-23T17:00+08:00")
    assert _got(sc) == []
    sc.run("2026-11-23T18:30+08:00")  # twice the target (8 h) came at 18:00, after hours: it waits
    assert _got(sc) == []
    sc.run("2026-11-24T09:01+08:00")  # working hours again: the manager
    assert _got(sc) == [(MIA, "escalation")]
    sc.run("2026-11-24T10:05+08:00")  # resolution due Tue 10:00; 9 h without news for the customer
    assert _got(sc) == sorted([(CHIEF, "escalation"), (CUST, "progress")])
    shown = sc.ticket(tid)
    assert {e["rule"] for e in shown["events"] if e["kind"] == "timer_rule"} == {
        "first-response-reminder", "first-response-breached", "first-response-twice-the-target",
        "resolution-breached", "progress-update"}
    assert sum(1 for e in shown["events"] if e["kind"] == "escalated") == 3

    # staff answer and resolve; the customer stays silent: closed by itself after 7 days, once
    note = sc.latest(ALICE)
    sc.staff(note, "[RESOLVE]", "已修复导出功能，请重试。")
    sc.run("2026-11-24T11:00+08:00")
    assert _got(sc) == [(CUST, "resolved")]
    assert sc.ticket(tid)["first_response_at"] == "2026-11-24T03:00:00+00:00"
    sc.run("2026-11-30T11:00+08:00")
    assert _got(sc) == [] and sc.ticket(tid)["status"] == "resolved"
    sc.run("2026-12-01T11:05+08:00")
    shown = sc.ticket(tid)
    assert (shown["status"], shown["close_reason"]) == ("closed", "auto")
    assert _got(sc) == [(CUST, "closed")]
    sc.run("2026-12-02T11:05+08:00")
    assert _got(sc) == []


def test_pending_reminder_after_three_working_days(tmp_path, dovecot_server, smtp_sink):
    sc = Scenario(tmp_path, dovecot_server, smtp_sink, extra=EXTRA)
    sc.now = "2026-11-25T10:00+08:00"  # Wednesday
    tid = _fault(sc)
    sc.mails()
    sc.staff(sc.latest(ALICE), "[PENDING]", "请提供出错时的截图。")
    sc.run("2026-11-25T10:30+08:00")
    assert _got(sc) == [(CUST, "progress")] and sc.ticket(tid)["status"] == "pending"
    sc.run("2026-11-30T10:00+08:00")  # Wed 10:30 -> Mon 10:00: 2.9 working days
    assert _got(sc) == []
    sc.run("2026-11-30T10:45+08:00")  # 3 working days (27 h) came at Mon 10:30
    assert _got(sc) == [(CUST, "pending_reminder")]
    sc.run("2026-12-03T10:45+08:00")
    assert _got(sc) == []  # once per pending spell
    assert not [e for e in sc.ticket(tid)["events"] if e["kind"] == "escalated"]  # pending pauses resolution


def test_kill_9_mid_pass_and_downtime_send_each_mail_once(tmp_path, dovecot_server, smtp_sink):
    sc = Scenario(tmp_path, dovecot_server, smtp_sink, extra=EXTRA)
    sc.now = "2026-11-25T10:00+08:00"  # Wednesday
    ids = [_fault(sc, f"c{i}@customer.example", i) for i in range(6)]
    sc.mails()
    # three days of downtime, then a pass that is killed at random moments before one completes
    later = "2026-11-30T10:30+08:00"  # Monday
    env = dict(os.environ, PYTHONPATH=str(REPO))
    rng = random.Random(3)
    for _ in range(4):
        p = subprocess.Popen([sys.executable, "-m", "mailflow", "--config", str(sc.cfg), "--now", later, "run",
                              "--once"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=REPO)
        time.sleep(rng.uniform(0.5, 2.5))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait()
    sc.run(later)
    sc.run(later)
    got = _got(sc)
    # per ticket: first-response breach -> lead, resolution breach -> chain, twice the target of both
    # -> the manager (one mail naming both), one "still on it" to the customer; no 80% reminder for a
    # clock long past its due time
    for i, tid in enumerate(ids):
        mine = [x for x in got if x[0] == f"c{i}@customer.example"]
        assert mine == [(f"c{i}@customer.example", "progress")], (tid, mine)
    counts: dict[tuple[str, str], int] = {}
    for x in got:
        counts[x] = counts.get(x, 0) + 1
    assert counts == {(ALICE, "escalation"): 6, (MIA, "escalation"): 6, (CHIEF, "escalation"): 6,
                      **{(f"c{i}@customer.example", "progress"): 1 for i in range(6)}}, counts
    to_mia = [body(parsed(d)) for _f, r, d in sc.sink.messages if MIA in r]
    assert len(to_mia) == 6
    assert all("first-response-twice-the-target" in b and "resolution-twice-the-target" in b for b in to_mia)
    for tid in ids:
        fired = sc.ticket(tid)["sla_fired"]
        assert len(fired) == len(set(fired)) == 5, fired  # 4 escalation rules + the progress update
    sc.run("2026-11-30T10:45+08:00")
    assert _got(sc) == []


def test_the_daemon_scheduler_wakes_for_a_due_clock(tmp_path, dovecot_server, smtp_sink):
    """The real daemon: it sleeps until the earliest wake-up, reminds at 80% and escalates at 100% of a
    (tiny, round-the-clock) first-response target, once each, and keeps the watchdog fed meanwhile."""
    from tests.integration.test_daemon import Notify, daemon

    sla = ('[sla]\nfirst_response_hours = { urgent = "0.005h", high = "0.005h", normal = "0.005h", '
           'low = "0.005h" }\ncalendar = { urgent = "24x7", high = "24x7", normal = "24x7", low = "24x7" }\n')
    sc = Scenario(tmp_path, dovecot_server, smtp_sink, extra=EXTRA + sla)  # 18 s of first-response time
    notify = Notify()
    try:
        with daemon(sc.cfg, notify) as d:
            notify.wait("READY", "1", timeout=30)
            sc.customer(CUST, "系统报错", "导出报表时一直报错。")
            d.wait_log(r"new ticket=CW", timeout=30)
            t0 = time.monotonic()
            d.wait_log(r"timers ticket=CW\S+ first_response:1:first-response-reminder", timeout=40)
            d.wait_log(r"timers ticket=CW\S+ first_response:1:first-response-breached", timeout=40)
            assert time.monotonic() - t0 > 5  # it waited for the clock, it did not fire at once
            assert smtp_sink.wait_for(4, timeout=20)  # ack, staff_notify, sla_reminder, escalation
            time.sleep(1.0)
            got = sorted((str(parsed(x[2])["To"]), str(parsed(x[2])["X-Mailflow-Template"]))
                         for x in smtp_sink.messages)
            assert got == sorted([(CUST, "ack"), (ALICE, "staff_notify"), (ALICE, "sla_reminder"),
                                  (ALICE, "escalation")]), got
            assert d.count("withholding the watchdog ping") == 0
    finally:
        notify.close()
