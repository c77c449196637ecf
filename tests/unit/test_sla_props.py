"""Property tests for business-time arithmetic: add and between are inverse, monotonic, additive,
and add never lands outside working hours, on calendars chosen to be awkward (holidays and make-up
days, a lunch break, DST changes, spans in the repeated and missing hours, 24x7)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailflow.sla import ClockEvent, compute_clocks, make_24x7, make_calendar

SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ALL = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]

CALENDARS = [
    make_calendar(name="cn-lunch", hours=["09:00-12:00", "13:30-18:00"], timezone="Asia/Shanghai"),
    make_calendar(name="cn-sat", hours=["09:00-18:00"], hours_by_day={"sat": ["09:00-12:00"]},
                  extra_holidays=["2026-12-31"], extra_workdays=["2026-12-27"], timezone="Asia/Shanghai"),
    make_calendar(name="us-ny", hours=["09:00-17:00"], country="US", timezone="America/New_York"),
    # boundaries inside New York's missing (Mar 8) and repeated (Nov 1) hours
    make_calendar(name="ny-night", hours=["00:30-01:30", "02:15-03:00", "22:00-24:00"], workdays=ALL,
                  country="", timezone="America/New_York"),
    make_24x7("America/New_York"),
    make_24x7("UTC"),
]

calendars = st.sampled_from(CALENDARS)
# instants from late 2025 to early 2027, to the second, with DST days well represented
_BASE = datetime(2025, 12, 1, tzinfo=UTC)
_DST = [datetime(2026, 3, 8, 4, tzinfo=UTC), datetime(2026, 11, 1, 3, tzinfo=UTC),
        datetime(2026, 9, 30, 0, tzinfo=UTC)]
instants = st.one_of(
    st.integers(0, 420 * 86400).map(lambda s: _BASE + timedelta(seconds=s)),
    st.tuples(st.sampled_from(_DST), st.integers(0, 2 * 86400)).map(lambda p: p[0] + timedelta(seconds=p[1])),
)
amounts = st.one_of(st.integers(0, 40 * 3600), st.integers(0, 30 * 86400), st.floats(0, 100 * 3600))


@SETTINGS
@given(calendars, instants, amounts)
def test_between_inverts_add(cal, t, n):
    r = cal.add(t, n)
    assert r >= t
    assert abs(cal.between(t, r) - n) < 1.0


@SETTINGS
@given(calendars, instants, amounts, amounts)
def test_add_is_monotonic(cal, t, n1, n2):
    lo, hi = sorted((n1, n2))
    assert cal.add(t, lo) <= cal.add(t, hi)


@SETTINGS
@given(calendars, instants, amounts.filter(lambda n: n > 0))
def test_add_lands_inside_or_at_the_end_of_a_span(cal, t, n):
    r = cal.add(t, n)
    local = r.astimezone(cal.tz).date()
    spans = cal.spans(local - timedelta(days=1)) + cal.spans(local)
    assert any(s <= r <= e for s, e in spans), (cal.name, t, n, r)


@SETTINGS
@given(calendars, instants, st.integers(0, 20 * 86400), st.integers(0, 20 * 86400))
def test_between_is_additive_and_bounded_by_wall_time(cal, a, d1, d2):
    b = a + timedelta(seconds=d1)
    c = b + timedelta(seconds=d2)
    ab, bc, ac = cal.between(a, b), cal.between(b, c), cal.between(a, c)
    assert ab + bc == ac
    assert 0 <= ac <= (c - a).total_seconds()
    if cal.name == "24x7":
        assert ac == (c - a).total_seconds()


@SETTINGS
@given(calendars, instants)
def test_spans_are_ordered_disjoint_and_inside_their_day(cal, t):
    d = t.astimezone(cal.tz).date()
    prev_end = None
    for day in (d, d + timedelta(days=1)):
        for s, e in cal.spans(day):
            assert s < e
            assert prev_end is None or prev_end <= s
            assert s.astimezone(cal.tz).date() == day
            prev_end = e


@SETTINGS
@given(calendars, instants, st.integers(0, 200 * 86400))
def test_between_matches_a_walk_over_spans(cal, a, d):
    b = a + timedelta(seconds=d)
    total, day = 0.0, a.astimezone(cal.tz).date() - timedelta(days=1)
    while day <= b.astimezone(cal.tz).date():
        for s, e in cal.spans(day):
            total += max(0.0, (min(e, b) - max(s, a)).total_seconds())
        day += timedelta(days=1)
    assert cal.between(a, b) == total


kinds = st.sampled_from(["staff_public", "customer_mail", "pending_on", "pending_off", "resolved", "reopened",
                         "closed", "targets"])


@SETTINGS
@given(calendars, instants, st.lists(st.tuples(st.integers(0, 10 * 86400), kinds), max_size=12),
       st.integers(0, 12 * 86400))
def test_clock_invariants(cal, t0, steps, later):
    events = [ClockEvent(t0, "created", targets={"first_response": 3600, "next_response": 4 * 3600,
                                                 "resolution": 9 * 3600})]
    for offset, kind in steps:
        targets = {"resolution": 4 * 3600, "next_response": 3600} if kind == "targets" else None
        events.append(ClockEvent(t0 + timedelta(seconds=offset), kind, targets=targets))
    now = t0 + timedelta(seconds=later)
    clocks = compute_clocks(events, now, cal)
    for c in clocks.values():
        assert c.elapsed_seconds >= 0
        assert c.elapsed_seconds <= max(0.0, (now - t0).total_seconds()) + 1e-6
        if c.target_seconds is not None and c.state != "idle":
            assert abs(c.remaining_seconds - (c.target_seconds - c.elapsed_seconds)) < 1e-6
        if c.state in ("running", "overdue"):
            assert c.due is not None and c.breached == (c.due <= now)
            assert c.breached == (c.state == "overdue")
        if c.state == "paused":
            assert c.due is None
        if c.state in ("met", "missed"):
            assert c.stopped_at is not None and c.breached == (c.state == "missed")
        if c.breached:
            assert c.elapsed_seconds >= c.target_seconds - 1e-6
        assert all(b is None or a <= b for a, b in c.paused_spans)
    assert clocks["first_response"].cycle <= 1
