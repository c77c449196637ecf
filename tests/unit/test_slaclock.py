"""A ticket's recorded history as the SLA clocks see it: pending pauses, reopens resume, a priority
change recomputes every running clock, internal notes stop nothing; next wake-ups and rule facts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

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


# ---- the stored record stands in for a replay -----------------------------------------------------

_STEPS = ("reply", "pending", "customer", "resolve", "reopen", "priority", "note")


def _step(t: dict, kind: str, when: datetime) -> dict:
    """One thing happening to the ticket at `when`, as the pipeline records it (the tests above)."""
    status = t["status"]
    if kind == "reply":
        return add(t, "public_reply", when)
    if kind == "pending" and status in ("new", "open"):
        return apply(t, "PENDING", when)
    if kind == "customer" and status not in ("closed",):
        t = add(t, "customer_mail", when)
        return apply(t, "customer_reply", when, actor="customer") if status == "pending" else t
    if kind == "resolve" and status in ("new", "open", "pending"):
        return apply(t, "RESOLVE", when)
    if kind == "reopen" and status == "resolved":
        t = add(t, "customer_mail", when)
        return apply(t, "customer_not_fixed", when, actor="customer")
    if kind == "priority":
        new = {"urgent": "low", "low": "high", "high": "normal", "normal": "urgent"}[t["priority"]]
        t = add(t, "priority", when, **{"from": t["priority"], "to": new})
        t["priority"] = new
        return t
    return add(t, "note", when)


def _same(a, b) -> None:
    for name in a:
        x, y = a[name], b[name]
        assert (x.state, x.cycle, x.due, x.breached, x.breached_at, x.started_at, x.stopped_at, x.target_seconds) == \
            (y.state, y.cycle, y.due, y.breached, y.breached_at, y.started_at, y.stopped_at, y.target_seconds), name
        assert abs(x.elapsed_seconds - y.elapsed_seconds) < 0.01, name


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_STEPS), st.floats(0.1, 30)), max_size=8),
       st.floats(0, 200), st.sampled_from(("urgent", "high", "normal", "low")))
def test_the_stored_record_gives_what_a_replay_gives(steps, later, priority):
    """`sla_clocks` from the record a change stored, advanced to a later `now`, equals the replay of
    the whole history at that `now` (what `tickets list --overdue` relies on)."""
    c = cfg()
    t = ticket(priority)
    when = MON
    t["sla"] = slaclock.sla_record(t, c, when)
    for kind, hours in steps:
        when = when + timedelta(hours=hours)
        t = _step(t, kind, when)
        t["updated_at"] = iso(when)
        t["sla"] = slaclock.sla_record(t, c, when)
    now = when + timedelta(hours=later)
    _same(slaclock.sla_clocks(t, c, now), sla_compute(t, c, now))
    assert slaclock.record_holds(t, c, now)  # the record was used, not a replay
    assert slaclock.running_clocks(t, c, now) == [(x.breached, x.due) for x in sla_compute(t, c, now).values()
                                                  if x.running]


def sla_compute(t: dict, c, now):
    return {k: v for k, v in slaclock.clocks_of(t, c, now).items() if k != "update"}


def test_a_record_that_no_longer_holds_is_replayed():
    c = cfg()
    t = ticket("normal")
    t["sla"] = slaclock.sla_record(t, c, MON)
    t = add(t, "priority", at(1), **{"from": "normal", "to": "urgent"})  # changed, record not rewritten
    t["priority"] = "urgent"
    _same(slaclock.sla_clocks(t, c, at(2)), sla_compute(t, c, at(2)))
    assert not slaclock.record_holds(t, c, at(2))
    assert slaclock.sla_clocks(t, c, at(2))["first_response"].breached
    old = dict(ticket(), sla=dict(slaclock.sla_record(ticket(), c, MON), fp="other config"))
    _same(slaclock.sla_clocks(old, c, at(3)), sla_compute(old, c, at(3)))
    past = dict(ticket(), sla=slaclock.sla_record(ticket(), c, at(5)))  # a --now before the record
    _same(slaclock.sla_clocks(past, c, at(1)), sla_compute(past, c, at(1)))
    assert not slaclock.record_holds(old, c, at(3)) and not slaclock.record_holds(past, c, at(1))
