"""SLA clocks from a ticket's clock events (mailflow.sla.compute_clocks and friends).

Calendar for most tests: Asia/Shanghai, Mon-Fri 09:00-18:00, no country (so only weekends are off);
2026-09-07 is a Monday.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from mailflow.sla import (
    ClockEvent,
    compute_clocks,
    from_json,
    make_24x7,
    make_calendar,
    next_wakeup,
    timer_facts,
    to_json,
)

SH = ZoneInfo("Asia/Shanghai")
H = 3600.0
CAL = make_calendar(hours=["09:00-18:00"], country="", timezone="Asia/Shanghai")
CN = make_calendar(hours=["09:00-18:00"], country="CN", timezone="Asia/Shanghai")
T24 = make_24x7("Asia/Shanghai")
TARGETS = {"first_response": 1 * H, "next_response": 4 * H, "resolution": 9 * H}


def t(day: int, hour: float, month: int = 9) -> datetime:
    return datetime(2026, month, day, int(hour), round((hour % 1) * 60), tzinfo=SH)


def ev(at: datetime, kind: str, **kw) -> ClockEvent:
    return ClockEvent(at, kind, **kw)


def created(at: datetime, targets=None, calendar=None) -> ClockEvent:
    return ClockEvent(at, "created", targets=dict(targets or TARGETS), calendar=calendar)


def run(events, now, cal=CAL):
    return compute_clocks(events, now, cal)


# --- first response -----------------------------------------------------------------------------

def test_first_response_met_and_missed():
    c = run([created(t(7, 10)), ev(t(7, 10.5), "staff_public")], t(7, 12))["first_response"]
    assert (c.state, c.cycle, c.breached, c.elapsed_seconds, c.stopped_by) == ("met", 1, False, 1800, "staff_public")
    assert c.stopped_at == t(7, 10.5) and c.due == t(7, 11)  # the due it would have had
    c = run([created(t(7, 10)), ev(t(7, 12), "staff_public")], t(7, 13))["first_response"]
    assert (c.state, c.breached, c.elapsed_seconds, c.remaining_seconds) == ("missed", True, 2 * H, -1 * H)
    assert c.breached_at == t(7, 11) == c.due


def test_first_response_running_then_overdue_over_a_weekend():
    evs = [created(t(4, 17.5))]  # Friday 17:30, 1h target -> due Monday 09:30
    c = run(evs, t(5, 12))["first_response"]
    assert (c.state, c.elapsed_seconds, c.due) == ("running", 1800, t(7, 9.5))
    c = run(evs, t(7, 9.5))["first_response"]
    assert (c.state, c.breached, c.breached_at) == ("overdue", True, t(7, 9.5))  # due is the deadline
    c = run(evs + [ev(t(7, 9.5), "staff_public")], t(7, 10))["first_response"]
    assert (c.state, c.breached) == ("met", False)  # an answer at the due instant is in time


def test_stopping_after_hours_past_due_is_missed_though_no_business_time_passed():
    evs = [created(t(7, 17)), ev(t(7, 18.5), "staff_public")]  # due 18:00, answered 18:30
    c = run(evs, t(7, 19))["first_response"]
    assert c.elapsed_seconds == 1 * H and c.state == "missed" and c.breached_at == t(7, 18)


def test_pending_does_not_pause_first_response():
    evs = [created(t(7, 10)), ev(t(7, 10.25), "pending_on")]
    c = run(evs, t(7, 12))
    assert c["first_response"].state == "overdue" and c["first_response"].elapsed_seconds == 2 * H
    assert c["resolution"].state == "paused"


# --- next response ------------------------------------------------------------------------------

def test_next_response_cycles():
    evs = [created(t(7, 9)), ev(t(7, 9.5), "staff_public"),
           ev(t(7, 10), "customer_mail"), ev(t(7, 11), "customer_mail"),  # the oldest unanswered counts
           ev(t(7, 13), "staff_public"),
           ev(t(8, 9), "customer_mail")]
    c = run(evs[:4], t(7, 12))["next_response"]
    assert (c.cycle, c.state, c.started_at, c.elapsed_seconds, c.due) == (1, "running", t(7, 10), 2 * H, t(7, 14))
    c = run(evs[:5], t(7, 17))["next_response"]
    assert (c.cycle, c.state, c.elapsed_seconds, c.stopped_at) == (1, "met", 3 * H, t(7, 13))
    c = run(evs, t(8, 14))["next_response"]
    assert (c.cycle, c.state, c.started_at, c.breached) == (2, "overdue", t(8, 9), True)
    assert c.elapsed_seconds == 5 * H and c.breached_at == t(8, 13)


def test_next_response_idle_until_a_reply_after_the_first_response():
    evs = [created(t(7, 9)), ev(t(7, 9.2), "customer_mail")]  # a follow-up before anyone answered
    c = run(evs, t(7, 12))
    assert c["next_response"].state == "idle" and c["next_response"].cycle == 0
    assert c["next_response"].target_seconds == 4 * H and c["next_response"].due is None
    assert c["first_response"].state == "overdue"  # the unanswered mail is first_response's business
    c = run(evs + [ev(t(7, 12), "staff_public")], t(7, 13))
    assert c["next_response"].state == "idle"  # one answer covers both mails


def test_next_response_paused_by_pending_and_started_paused():
    evs = [created(t(7, 9)), ev(t(7, 9.5), "staff_public"), ev(t(7, 10), "customer_mail"),
           ev(t(7, 11), "pending_on")]
    c = run(evs, t(8, 12))["next_response"]
    assert (c.state, c.elapsed_seconds, c.remaining_seconds, c.due) == ("paused", 1 * H, 3 * H, None)
    assert c.paused_spans == ((t(7, 11), None),)
    c = run(evs + [ev(t(8, 9), "pending_off")], t(8, 10))["next_response"]
    assert (c.state, c.elapsed_seconds, c.due) == ("running", 2 * H, t(8, 12))
    assert c.paused_spans == ((t(7, 11), t(8, 9)),)
    # a customer mail while pending (no pending_off mapped): the new cycle starts paused
    evs2 = [created(t(7, 9)), ev(t(7, 9.5), "staff_public"), ev(t(7, 10), "pending_on"),
            ev(t(7, 11), "customer_mail")]
    c = run(evs2, t(7, 15))["next_response"]
    assert (c.cycle, c.state, c.elapsed_seconds, c.paused_spans) == (1, "paused", 0, ((t(7, 11), None),))


def test_customer_mail_on_a_resolved_ticket_starts_nothing_unless_it_reopens():
    base = [created(t(7, 9)), ev(t(7, 9.5), "staff_public"), ev(t(7, 10), "resolved")]
    c = run(base + [ev(t(7, 11), "customer_mail")], t(7, 15))
    assert c["next_response"].state == "idle" and c["resolution"].state == "met"
    for order in (["customer_mail", "reopened"], ["reopened", "customer_mail"]):
        c = run(base + [ev(t(7, 11), k) for k in order], t(7, 13))
        assert c["next_response"].state == "running" and c["next_response"].started_at == t(7, 11), order
        assert c["resolution"].state == "running" and c["resolution"].cycle == 2


# --- resolution ---------------------------------------------------------------------------------

def test_resolution_pause_resume_and_met():
    evs = [created(t(7, 9)), ev(t(7, 10), "staff_public"), ev(t(7, 11), "pending_on"),
           ev(t(9, 9), "pending_off"), ev(t(9, 12), "resolved")]
    c = run(evs[:3], t(8, 12))["resolution"]
    assert (c.state, c.elapsed_seconds, c.remaining_seconds, c.due, c.breached) == ("paused", 2 * H, 7 * H, None, False)
    c = run(evs[:4], t(9, 10))["resolution"]
    assert (c.state, c.elapsed_seconds, c.due) == ("running", 3 * H, t(9, 16))
    c = run(evs, t(10, 10))["resolution"]
    assert (c.state, c.elapsed_seconds, c.stopped_by, c.breached) == ("met", 5 * H, "resolved", False)
    assert c.paused_spans == ((t(7, 11), t(9, 9)),)


def test_reopen_resumes_with_time_used_as_a_new_cycle():
    evs = [created(t(7, 9)), ev(t(7, 9.5), "staff_public"), ev(t(7, 16), "resolved"),  # 7h used
           ev(t(10, 9), "reopened")]
    c = run(evs, t(10, 10))["resolution"]
    assert (c.cycle, c.state, c.elapsed_seconds, c.started_at) == (2, "running", 8 * H, t(7, 9))
    assert c.due == t(10, 11) and c.stopped_at is None
    c = run(evs, t(10, 12))["resolution"]
    assert (c.state, c.breached, c.breached_at) == ("overdue", True, t(10, 11))
    c = run(evs + [ev(t(10, 12), "resolved"), ev(t(11, 9), "reopened")], t(11, 10))["resolution"]
    assert (c.cycle, c.state, c.elapsed_seconds) == (3, "overdue", 11 * H)


def test_closed_stops_every_clock():
    evs = [created(t(7, 9)), ev(t(7, 9.5), "staff_public"), ev(t(7, 10), "customer_mail"),
           ev(t(7, 11), "closed")]
    c = run(evs, t(8, 12))
    assert {k: v.state for k, v in c.items()} == {"first_response": "met", "next_response": "met",
                                                   "resolution": "met"}
    assert all(v.stopped_by in ("staff_public", "closed") for v in c.values())
    assert c["resolution"].stopped_by == "closed" and c["resolution"].elapsed_seconds == 2 * H
    spam = run([created(t(7, 9)), ev(t(7, 15), "closed")], t(8, 12))["first_response"]
    assert (spam.state, spam.stopped_by) == ("missed", "closed")  # closed without an answer, late


def test_resolved_while_pending_closes_the_pause():
    evs = [created(t(7, 9)), ev(t(7, 10), "pending_on"), ev(t(8, 10), "resolved")]
    c = run(evs, t(9, 10))["resolution"]
    assert (c.state, c.elapsed_seconds, c.paused_spans) == ("met", 1 * H, ((t(7, 10), t(8, 10)),))


# --- targets changes ----------------------------------------------------------------------------

def test_priority_change_recomputes_running_clocks_and_keeps_stopped_outcomes():
    evs = [created(t(7, 9), {"first_response": 4 * H, "next_response": 4 * H, "resolution": 27 * H}),
           ev(t(7, 10), "staff_public"),
           ev(t(7, 12), "targets", targets={"first_response": 0.5 * H, "next_response": 1 * H,
                                            "resolution": 9 * H})]
    c = run(evs, t(7, 13))
    assert c["first_response"].state == "met" and c["first_response"].target_seconds == 4 * H
    r = c["resolution"]
    assert (r.target_seconds, r.elapsed_seconds, r.due, r.state) == (9 * H, 4 * H, t(7, 18), "running")
    # lowered below the time already used: overdue at once; due/breached_at is when it ran out
    evs2 = evs + [ev(t(7, 14), "targets", targets={"resolution": 2 * H})]
    r = run(evs2, t(7, 15))["resolution"]
    assert (r.state, r.breached, r.due, r.breached_at, r.remaining_seconds) == \
        ("overdue", True, t(7, 11), t(7, 11), -4 * H)
    # raised again: no longer breached (the clock follows the target in force)
    r = run(evs2 + [ev(t(7, 16), "targets", targets={"resolution": 27 * H})], t(7, 17))["resolution"]
    assert (r.state, r.breached) == ("running", False)
    # later cycles use the new target
    evs3 = evs + [ev(t(7, 14), "customer_mail")]
    n = run(evs3, t(7, 14.5))["next_response"]
    assert n.target_seconds == 1 * H and n.due == t(7, 15)


def test_targets_event_can_switch_to_a_24x7_calendar():
    evs = [created(t(4, 17), {"first_response": 1 * H, "next_response": 4 * H, "resolution": 4 * H}),
           ev(t(4, 18), "targets", targets={"resolution": 4 * H}, calendar=T24)]  # urgent from Fri 18:00
    r = run(evs, t(4, 20))["resolution"]
    assert r.elapsed_seconds == 3 * H  # 1h business (17-18) + 2h wall (18-20)
    assert r.due == t(4, 21) and r.calendar is T24


def test_created_with_a_calendar_and_holidays():
    evs = [created(t(30, 17), calendar=CN)]  # Wed Sep 30 17:00, National Day ahead
    c = run(evs, t(5, 12, month=10), CAL)
    assert c["resolution"].due == t(8, 17, month=10) and c["resolution"].elapsed_seconds == 1 * H


# --- scheduler support --------------------------------------------------------------------------

def test_next_wakeup_thresholds():
    evs = [created(t(7, 9))]  # first_response 1h, resolution 9h
    now = t(7, 9)
    c = run(evs, now)
    assert next_wakeup(c, now) == t(7, 9.8)  # 80% of first_response
    now = t(7, 9.9)
    assert next_wakeup(run(evs, now), now) == t(7, 10)  # its due
    now = t(7, 10.5)
    assert next_wakeup(run(evs, now), now) == t(7, 11)  # twice its target
    now = t(7, 11.5)
    assert next_wakeup(run(evs, now), now) == t(7, 16.2)  # resolution's 80% (7.2h)
    assert next_wakeup(run(evs, now), now, thresholds=[1.0]) == t(7, 18)


def test_next_wakeup_crosses_a_weekend_and_ignores_paused_and_stopped():
    evs = [created(t(4, 17.5)), ev(t(4, 17.6), "staff_public")]
    now = t(4, 20)  # Friday night: resolution 80% = 7.2h -> 0.5h Friday (17:30-18:00) + 6.7h Monday
    assert next_wakeup(run(evs, now), now) == t(7, 15.7)
    paused = evs + [ev(t(4, 17.7), "pending_on")]
    assert next_wakeup(run(paused, now), now) is None
    done = evs + [ev(t(4, 17.7), "resolved")]
    assert next_wakeup(run(done, now), now) is None
    assert next_wakeup({}, now) is None


def test_next_wakeup_from_stored_clocks_later():
    evs = [created(t(7, 9))]
    stored = {k: from_json(json.loads(json.dumps(to_json(v))), {"default": CAL})
              for k, v in run(evs, t(7, 9)).items()}
    assert next_wakeup(stored, t(7, 10.5)) == t(7, 11)


def test_timer_facts():
    evs = [created(t(7, 9)), ev(t(7, 11), "staff_public"), ev(t(7, 12), "customer_mail")]
    f = timer_facts(run(evs, t(7, 13)), t(7, 13))
    assert f["sla.first_response.breached"] is True and f["sla.first_response_breached"] is True
    assert f["sla.first_response.running"] is False and f["sla.first_response.breached_hours"] == 1.0
    assert f["sla.first_response.elapsed_ratio"] == 2.0 and f["sla.first_response.cycle"] == 1
    assert f["sla.next_response.running"] is True and f["sla.next_response.cycle"] == 1
    assert f["sla.next_response.remaining_hours"] == 3.0 and f["sla.next_response.elapsed_ratio"] == 0.25
    assert f["sla.resolution.remaining_hours"] == 5.0 and f["sla.resolution_breached"] is False
    assert f["sla.resolution.breached_hours"] == 0.0
    later = timer_facts(run(evs, t(7, 13)), t(7, 17))  # facts advance stored clocks to now
    assert later["sla.next_response.breached"] is True and later["sla.next_response.breached_hours"] == 1.0
    assert later["sla.resolution.elapsed_ratio"] == round(8 / 9, 4)
    assert set(f) == {f"sla.{c}.{k}" for c in ("first_response", "next_response", "resolution")
                      for k in ("breached", "running", "cycle", "remaining_hours", "elapsed_ratio",
                                "breached_hours")} | {"sla.first_response_breached",
                                                      "sla.next_response_breached", "sla.resolution_breached"}


# --- JSON and edge cases ------------------------------------------------------------------------

def test_json_round_trip_and_advance():
    evs = [created(t(7, 9)), ev(t(7, 9.5), "staff_public"), ev(t(7, 10), "customer_mail"),
           ev(t(7, 11), "pending_on"), ev(t(7, 12), "pending_off")]
    clocks = run(evs, t(7, 13))
    for c in clocks.values():
        d = to_json(c)
        text = json.dumps(d)
        assert "+00:00" in text and d["calendar"] == "default"
        back = from_json(json.loads(text), {"default": CAL})
        assert back == c
    later = run(evs, t(8, 15))
    for k, c in clocks.items():
        assert from_json(to_json(c), {"default": CAL}).at(t(8, 15)) == later[k]


def test_events_after_now_are_ignored_and_order_is_by_time():
    evs = [ev(t(7, 9.5), "staff_public"), created(t(7, 9)), ev(t(7, 20), "resolved")]
    c = run(evs, t(7, 12))
    assert c["first_response"].state == "met" and c["resolution"].state == "running"


def test_no_created_event_means_idle_clocks_and_bad_kinds_raise():
    c = run([ev(t(7, 10), "staff_public")], t(7, 12))
    assert all(v.state == "idle" and v.cycle == 0 for v in c.values())
    with pytest.raises(ValueError, match="unknown clock event kind"):
        run([created(t(7, 9)), ev(t(7, 10), "replied")], t(7, 12))


def test_a_clock_without_target_never_breaches():
    c = run([created(t(7, 9), {"first_response": 1 * H})], t(9, 12))
    assert c["resolution"].target_seconds is None and c["resolution"].due is None
    assert c["resolution"].state == "running" and not c["resolution"].breached
    assert next_wakeup(c, t(9, 12)) is None  # first_response is past 2x already


def test_mixed_time_zones_and_fold_are_compared_as_instants():
    ny = ZoneInfo("America/New_York")
    a = datetime(2026, 11, 1, 1, 30, tzinfo=ny)  # first 01:30 (EDT)
    b = datetime(2026, 11, 1, 1, 30, tzinfo=ny, fold=1)  # an hour later (EST)
    c = compute_clocks([ClockEvent(a, "created", targets={"resolution": 2 * H}), ClockEvent(b, "resolved")],
                       b + timedelta(hours=1), make_24x7("America/New_York"))["resolution"]
    assert c.elapsed_seconds == 1 * H and c.stopped_at == b.astimezone(UTC)
