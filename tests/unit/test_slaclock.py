"""A ticket's recorded history as the SLA clocks see it: pending pauses, reopens resume, a priority
change recomputes every running clock, internal notes stop nothing; next wake-ups and rule facts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mailflow import config, slaclock
from mailflow.clock import iso
from mailflow.tickets import transition

SH = timedelta(hours=8)  # Asia/Shanghai
MON = datetime(2026, 11, 23, 10, 0, tzinfo=UTC) - SH  # Monday 10:00 Shanghai


def at(hours: float, day: int = 0) -> datetime:
    return MON + timedelta(days=day, hours=hours)


def cfg() -> config.Config:
    return config.defaults()


def ticket(priority: str = "high", **kw) -> dict:
    return {"id": "CW202611230001", "status": "new", "priority": priority, "category": "fault",
            "customer_email": "a@customer.example", "created_at": iso(MON), "mailbox": None,
            "events": [{"at": iso(MON), "kind": "created", "actor": "customer", "priority": priority,
                        "category": "fault"}], **kw}


def apply(t: dict, event: str, when: datetime, actor: str = "alice@support.example") -> dict:
    ch = transition(t, event, actor, when)
    t = dict(t, **ch.fields)
    t["events"] = [*t["events"], *ch.events]
    return t


def add(t: dict, kind: str, when: datetime, **extra) -> dict:
    return dict(t, events=[*t["events"], {"at": iso(when), "kind": kind, "actor": "x", **extra}])


def test_due_times_in_business_hours():
    c = slaclock.clocks_of(ticket(), cfg(), MON)
    assert c["first_response"].due == at(4)  # 14:00
    assert c["resolution"].due == at(24)  # Tue 10:00: 8 h on Monday, 1 h on Tuesday
    assert c["next_response"].state == "idle"


def test_first_answer_stops_first_response_and_notes_stop_nothing():
    t = add(ticket(), "note", at(1))
    assert slaclock.clocks_of(t, cfg(), at(2))["first_response"].running
    t = add(t, "public_reply", at(2))
    fr = slaclock.clocks_of(t, cfg(), at(3))["first_response"]
    assert fr.state == "met" and fr.stopped_at == at(2) and abs(fr.elapsed_seconds - 7200) < 1


def test_pending_pauses_resolution_and_a_customer_reply_resumes_it():
    t = add(ticket(), "public_reply", at(1))
    t = apply(t, "PENDING", at(2))
    paused = slaclock.clocks_of(t, cfg(), at(5))["resolution"]
    assert paused.state == "paused" and abs(paused.elapsed_seconds - 2 * 3600) < 1
    t = add(t, "customer_mail", at(6))
    t = apply(t, "customer_reply", at(6), actor="customer")
    rs = slaclock.clocks_of(t, cfg(), at(7))["resolution"]
    assert rs.running and abs(rs.elapsed_seconds - 3 * 3600) < 1  # 2 h before the pause + 1 h after
    assert rs.paused_spans == ((at(2), at(6)),)
    assert rs.due == at(4, day=1)  # 7 h left at 16:00: 2 h on Monday, 5 h on Tuesday -> Tue 14:00
    nr = slaclock.clocks_of(t, cfg(), at(7))["next_response"]
    assert nr.running and nr.started_at == at(6)  # the customer's mail wants an answer


def test_reopen_resumes_resolution_with_the_time_already_used():
    t = add(ticket(), "public_reply", at(1))
    t = apply(t, "RESOLVE", at(3))
    done = slaclock.clocks_of(t, cfg(), at(4))["resolution"]
    assert done.state == "met" and done.cycle == 1
    t = add(t, "customer_mail", at(5))
    t = apply(t, "customer_not_fixed", at(5), actor="customer")
    rs = slaclock.clocks_of(t, cfg(), at(6))["resolution"]
    assert rs.running and rs.cycle == 2 and abs(rs.elapsed_seconds - 4 * 3600) < 1


def test_a_priority_change_recomputes_running_clocks():
    t = add(ticket("normal"), "priority", at(1), **{"from": "normal", "to": "urgent"})
    t["priority"] = "urgent"
    c = slaclock.clocks_of(t, cfg(), at(1))
    assert c["first_response"].target_seconds == 3600 and c["first_response"].due == at(1)  # used up
    c = slaclock.clocks_of(t, cfg(), at(1.5))
    assert c["first_response"].breached and c["resolution"].due == at(4)


def test_next_wake_and_facts_follow_the_rules_numbers():
    t = ticket()
    c = cfg()
    clocks = slaclock.clocks_of(t, c, MON)
    assert slaclock.next_wake(t, c, clocks, MON, {}) == at(3.2)  # 80% of 4 h
    assert slaclock.next_wake(t, c, clocks, at(3.5), {}) == at(4)  # the breach
    facts = slaclock.timer_facts(t, c, slaclock.clocks_of(t, c, at(5)), at(5))
    assert facts["sla.first_response.breached"] is True and facts["sla.first_response_breached"] is True
    assert facts["sla.first_response.elapsed_ratio"] == 1.25 and facts["hours_since_customer"] == 5.0
    pend = apply(add(t, "public_reply", at(1)), "PENDING", at(2))
    wake = slaclock.next_wake(pend, c, slaclock.clocks_of(pend, c, at(2)), at(2), {"days_pending": {3.0}})
    assert wake == at(2, day=3)  # 3 working days of 9 h: Thursday 12:00


def test_auto_close_is_due_after_silence():
    t = apply(add(ticket(), "public_reply", at(1)), "RESOLVE", at(2))
    assert slaclock.auto_close_at(t, cfg()) == at(2, day=7)
    assert slaclock.auto_close_at(dict(t, status="open"), cfg()) is None


def test_ledger_clock_and_cycle_of_a_rule():
    assert slaclock.rule_clock({"sla.resolution.breached", "status"}) == "resolution"
    assert slaclock.rule_clock({"sla.first_response_breached"}) == "first_response"
    assert slaclock.rule_clock({"days_pending", "status"}) == "pending"
    assert slaclock.rule_clock({"category", "mentions_staff"}) == "ticket"
    t = apply(add(ticket(), "public_reply", at(1)), "PENDING", at(2))
    assert slaclock.cycle_of(t, "pending", {}) == 1
