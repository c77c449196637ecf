"""Business calendars, durations and the SLA policy (mailflow.sla), table-driven where it can be.

The China data comes from the `holidays` package; the 2025/2026 plans of the State Council
(国务院办公厅关于2026年部分节假日安排的通知) are written out here so a package upgrade that changes them
fails loudly instead of silently moving due times.
"""

from __future__ import annotations

import tomllib
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import holidays
import pytest

from mailflow import sla
from mailflow.sla import (
    Calendar,
    CalendarError,
    explain_add,
    make_24x7,
    make_calendar,
    makeup_warnings,
    missing_makeup_years,
    parse_calendars,
    parse_duration,
    parse_sla,
)

SH = ZoneInfo("Asia/Shanghai")
NY = ZoneInfo("America/New_York")
H = 3600.0


def sh(*a) -> datetime:
    return datetime(*a, tzinfo=SH)


def ny(*a, fold=0) -> datetime:
    return datetime(*a, tzinfo=NY, fold=fold)


def days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


CN_9_18 = make_calendar(hours=["09:00-18:00"], timezone="Asia/Shanghai")
CN_LUNCH = make_calendar(hours=["09:00-12:00", "13:30-18:00"], timezone="Asia/Shanghai")
CN_SAT = make_calendar(hours=["09:00-18:00"], hours_by_day={"sat": ["09:00-12:00"]}, timezone="Asia/Shanghai")
PLAIN = make_calendar(hours=["09:00-18:00"], country="", timezone="Asia/Shanghai")
NY_9_17 = make_calendar(hours=["09:00-17:00"], country="", timezone="America/New_York")


# --- the package's China data, pinned -----------------------------------------------------------

# 2026 plan: the official breaks (放假调休, weekend days included) and the make-up workdays (上班).
CN_2026_BREAKS = {
    "New Year's Day": (date(2026, 1, 1), date(2026, 1, 3)),
    "Spring Festival": (date(2026, 2, 15), date(2026, 2, 23)),
    "Tomb-Sweeping Day": (date(2026, 4, 4), date(2026, 4, 6)),
    "Labor Day": (date(2026, 5, 1), date(2026, 5, 5)),
    "Dragon Boat Festival": (date(2026, 6, 19), date(2026, 6, 21)),
    "Mid-Autumn Festival": (date(2026, 9, 25), date(2026, 9, 27)),
    "National Day": (date(2026, 10, 1), date(2026, 10, 7)),
}
CN_2026_MAKEUP = {date(2026, 1, 4), date(2026, 2, 14), date(2026, 2, 28), date(2026, 5, 9), date(2026, 9, 20),
                  date(2026, 10, 10)}
CN_2025_MAKEUP = {date(2025, 1, 26), date(2025, 2, 8), date(2025, 4, 27), date(2025, 9, 28), date(2025, 10, 11)}
# What the package lists as holidays in 2026: the statutory days, observed days and the substituted
# days off (weekend days inside a break are not listed).
CN_2026_PACKAGE_DAYS = {
    date(2026, 1, 1), date(2026, 1, 2),
    date(2026, 2, 16), date(2026, 2, 17), date(2026, 2, 18), date(2026, 2, 19), date(2026, 2, 20),
    date(2026, 2, 23),
    date(2026, 4, 5), date(2026, 4, 6),
    date(2026, 5, 1), date(2026, 5, 2), date(2026, 5, 4), date(2026, 5, 5),
    date(2026, 6, 19),
    date(2026, 9, 25),
    date(2026, 10, 1), date(2026, 10, 2), date(2026, 10, 3), date(2026, 10, 5), date(2026, 10, 6),
    date(2026, 10, 7),
}


def test_package_cn_2026_holidays_and_makeup_days_are_the_state_council_plan():
    h = holidays.country_holidays("CN", years=[2026, 2027])
    assert {d for d in h if d.year == 2026} == CN_2026_PACKAGE_DAYS
    assert {d for d in h.weekend_workdays if d.year == 2026} == CN_2026_MAKEUP
    assert all(d.weekday() >= 5 for d in CN_2026_MAKEUP)  # make-up days are weekend days
    assert date(2026, 9, 20).weekday() == 6  # the Sunday before National Day works
    h25 = holidays.country_holidays("CN", years=[2025, 2026])
    assert {d for d in h25.weekend_workdays if d.year == 2025} == CN_2025_MAKEUP


def test_every_2026_break_is_off_and_the_days_around_it_work():
    for name, (first, last) in CN_2026_BREAKS.items():
        for d in days(first, last):
            assert not CN_9_18.is_working_day(d), (name, d)
            assert not CN_SAT.is_working_day(d), (name, d)  # Saturdays inside a break are off too
        before, after = first - timedelta(days=1), last + timedelta(days=1)
        for d in (before, after):
            if d.weekday() < 5 or d in CN_2026_MAKEUP:
                assert CN_9_18.is_working_day(d), (name, d)
    for d in CN_2026_MAKEUP:
        assert CN_9_18.is_working_day(d) and CN_9_18.day_info(d).kind == "makeup"


def test_mon_fri_calendar_agrees_with_the_package_for_2025_and_2026():
    h = holidays.country_holidays("CN", years=[2025, 2026, 2027])
    for d in days(date(2025, 1, 1), date(2026, 12, 31)):
        assert CN_9_18.is_working_day(d) == h.is_working_day(d), d


def test_day_info_names_and_kinds():
    assert CN_9_18.day_info(date(2026, 10, 1)).reason == "National Day"
    assert CN_9_18.day_info(date(2026, 10, 5)).reason == "National Day"  # "(observed)" stripped
    assert CN_9_18.day_info(date(2026, 10, 6)).kind == "moved"
    assert CN_9_18.day_info(date(2026, 10, 4)).kind == "weekend"  # a Mon-Fri calendar: just a Sunday
    assert CN_SAT.day_info(date(2026, 2, 21)) .kind == "break"
    assert CN_SAT.day_info(date(2026, 2, 21)).reason == "Chinese New Year (Spring Festival)"
    assert CN_SAT.day_info(date(2026, 9, 19)).kind == "workday"  # an ordinary Saturday works 09-12
    assert CN_SAT.spans(date(2026, 9, 19)) == [(sh(2026, 9, 19, 9), sh(2026, 9, 19, 12))]


def test_2027_has_no_makeup_days_yet_and_check_warns():
    have_2027 = bool(holidays.country_holidays("CN", years=[2027, 2028]).weekend_workdays
                     & set(days(date(2027, 1, 1), date(2027, 12, 31))))
    expect = [] if have_2027 else [2027]  # flips to [] once the package carries the 2027 plan
    assert missing_makeup_years(CN_9_18, date(2026, 11, 20)) == expect
    assert missing_makeup_years(CN_9_18, date(2026, 6, 1)) == []  # the next 60 days stay in 2026
    assert missing_makeup_years(PLAIN, date(2026, 11, 20)) == []  # no country
    us = make_calendar(country="US", timezone="America/New_York")
    assert missing_makeup_years(us, date(2026, 11, 20)) == []  # the US never moves days
    covered = make_calendar(extra_workdays=["2027-02-14"])
    assert missing_makeup_years(covered, date(2026, 11, 20)) == []  # the admin supplied the year


# --- arithmetic ---------------------------------------------------------------------------------

@pytest.mark.parametrize("cal, start, hours, due", [
    (PLAIN, sh(2026, 9, 4, 17), 2, sh(2026, 9, 7, 10)),  # Fri 17:00 + 2h -> Mon 10:00 (weekend)
    (PLAIN, sh(2026, 9, 7, 7), 1, sh(2026, 9, 7, 10)),  # before hours: counts from 09:00
    (PLAIN, sh(2026, 9, 7, 20), 1, sh(2026, 9, 8, 10)),  # after hours: next morning
    (PLAIN, sh(2026, 9, 7, 17), 1, sh(2026, 9, 7, 18)),  # runs out at the end of a span: due then
    (PLAIN, sh(2026, 9, 7, 9), 45, sh(2026, 9, 11, 18)),  # 5 working days of 9h
    (CN_LUNCH, sh(2026, 9, 7, 11), 2, sh(2026, 9, 7, 14, 30)),  # lunch break 12:00-13:30
    (CN_LUNCH, sh(2026, 9, 7, 12, 30), 1, sh(2026, 9, 7, 14, 30)),  # starting during lunch
    (CN_9_18, sh(2026, 9, 30, 17), 4, sh(2026, 10, 8, 12)),  # National Day skipped
    (CN_9_18, sh(2026, 10, 9, 17), 3, sh(2026, 10, 10, 11)),  # make-up Saturday Oct 10 works
    (CN_9_18, sh(2026, 9, 18, 17), 2, sh(2026, 9, 20, 10)),  # make-up Sunday Sep 20 works
    (CN_9_18, sh(2026, 2, 13, 17), 10, sh(2026, 2, 14, 18)),  # make-up Saturday Feb 14, to its end
    (CN_9_18, sh(2026, 2, 13, 17), 11, sh(2026, 2, 24, 10)),  # then Spring Festival Feb 15-23
    (CN_9_18, sh(2025, 12, 31, 17), 2, sh(2026, 1, 4, 10)),  # New Year; Sunday Jan 4 works
    (CN_SAT, sh(2026, 9, 18, 17), 3, sh(2026, 9, 19, 11)),  # an ordinary Saturday: 09-12
    (CN_SAT, sh(2026, 10, 9, 17), 8, sh(2026, 10, 10, 16)),  # make-up Saturday: full `hours`
])
def test_add(cal, start, hours, due):
    got = cal.add(start, hours * H)
    assert got == due, (cal.local(got), due)
    assert got.tzinfo is UTC
    assert cal.between(start, got) == hours * H


def test_between_across_national_day_and_weekends():
    assert CN_9_18.between(sh(2026, 9, 30, 9), sh(2026, 10, 8, 18)) == 18 * H  # Sep 30 + Oct 8
    assert CN_9_18.between(sh(2026, 9, 28, 0), sh(2026, 10, 12, 0)) == 6 * 9 * H  # Sep 28-30, Oct 8-10
    assert CN_LUNCH.between(sh(2026, 9, 7, 0), sh(2026, 9, 8, 0)) == 7.5 * H
    assert PLAIN.between(sh(2026, 9, 7, 10), sh(2026, 9, 7, 10)) == 0
    assert PLAIN.between(sh(2026, 9, 8), sh(2026, 9, 7)) == 0  # b before a


def walk_between(cal: Calendar, a: datetime, b: datetime) -> float:
    """The slow oracle: overlap of [a, b) with every span, day by day."""
    total, d = 0.0, a.astimezone(cal.tz).date() - timedelta(days=1)
    while d <= b.astimezone(cal.tz).date():
        for s, e in cal.spans(d):
            total += max(0.0, (min(e, b) - max(s, a)).total_seconds())
        d += timedelta(days=1)
    return total


def test_between_is_right_whatever_was_asked_before():
    cal = make_calendar(hours=["09:00-12:00", "13:30-18:00"])  # a fresh calendar: empty caches
    ranges = [(sh(2027, 6, 7, 10), sh(2027, 6, 9, 15)),  # the index starts here
              (sh(2026, 1, 5, 11), sh(2026, 10, 9, 16)),  # older than its origin: a new index
              (sh(2025, 12, 30, 9), sh(2027, 6, 8, 9)),  # across both
              (sh(2026, 10, 8, 10), sh(2026, 10, 8, 17))]  # within one day
    for a, b in ranges:
        assert cal.between(a, b) == walk_between(cal, a, b), (a, b)


def test_add_zero_and_errors():
    t = sh(2026, 9, 5, 23)  # a Saturday night
    assert PLAIN.add(t, 0) == t
    assert PLAIN.next_working_instant(t) == sh(2026, 9, 7, 9)
    assert PLAIN.next_working_instant(sh(2026, 9, 7, 10)) == sh(2026, 9, 7, 10)
    assert PLAIN.next_working_instant(sh(2026, 9, 7, 18)) == sh(2026, 9, 8, 9)  # span end is outside
    with pytest.raises(CalendarError):
        PLAIN.add(t, -1)
    with pytest.raises(CalendarError, match="naive"):
        PLAIN.add(datetime(2026, 9, 7, 10), 60)
    never = Calendar("never", "UTC", frozenset(), ((540, 1080),))
    with pytest.raises(CalendarError, match="no working time within"):
        never.add(datetime(2026, 1, 1, tzinfo=UTC), 60)


def test_extra_holidays_and_workdays():
    cal = make_calendar(extra_holidays=["2026-12-31", "2026-10-10"], extra_workdays=["2026-12-26"])
    assert not cal.is_working_day(date(2026, 12, 31))
    assert not cal.is_working_day(date(2026, 10, 10))  # the config beats the country's make-up day
    assert cal.day_info(date(2026, 12, 26)).kind == "extra_workday"  # a Saturday, with `hours`
    assert cal.spans(date(2026, 12, 26)) == [(sh(2026, 12, 26, 9), sh(2026, 12, 26, 18))]
    assert cal.add(sh(2026, 12, 30, 17), 2 * H) == sh(2027, 1, 4, 10)  # Dec 31 off, Jan 1 holiday


def test_hours_by_day_overrides_and_empty_day():
    cal = make_calendar(country="", hours=["09:00-18:00"], hours_by_day={"fri": [], "sat": ["10:00-12:00"]})
    assert not cal.is_working_day(date(2026, 9, 4))  # Friday off
    assert cal.spans(date(2026, 9, 5)) == [(sh(2026, 9, 5, 10), sh(2026, 9, 5, 12))]
    assert cal.add(sh(2026, 9, 3, 17), 2 * H) == sh(2026, 9, 5, 11)
    assert cal.day_seconds() == 9 * H  # "d" is the length of `hours`


def test_day_seconds():
    assert PLAIN.day_seconds() == 9 * H
    assert CN_LUNCH.day_seconds() == 7.5 * H
    assert make_24x7().day_seconds() == 24 * H


def test_new_york_across_the_2026_dst_changes():
    # spring forward Sun Mar 8 2026 02:00 EST -> 03:00 EDT; fall back Sun Nov 1 02:00 EDT -> 01:00 EST
    assert NY_9_17.add(ny(2026, 3, 6, 16), 2 * H) == ny(2026, 3, 9, 10)
    assert NY_9_17.add(ny(2026, 3, 6, 16), 2 * H) == datetime(2026, 3, 9, 14, tzinfo=UTC)  # EDT
    assert NY_9_17.add(ny(2026, 10, 30, 16), 2 * H) == datetime(2026, 11, 2, 15, tzinfo=UTC)  # EST
    assert NY_9_17.spans(date(2026, 3, 9)) == [(datetime(2026, 3, 9, 13, tzinfo=UTC),
                                                datetime(2026, 3, 9, 21, tzinfo=UTC))]
    allweek = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    night = make_calendar(country="", timezone="America/New_York", workdays=allweek, hours=["01:00-04:00"])
    assert night.spans(date(2026, 3, 8)) == [(datetime(2026, 3, 8, 6, tzinfo=UTC), datetime(2026, 3, 8, 8, tzinfo=UTC))]
    assert night.between(ny(2026, 3, 8, 0), ny(2026, 3, 8, 12)) == 2 * H  # the 02:00 hour never exists
    assert night.between(ny(2026, 11, 1, 0), ny(2026, 11, 1, 12)) == 4 * H  # 01:00-02:00 happens twice
    gap = make_calendar(country="", timezone="America/New_York", workdays=allweek, hours=["02:30-04:00"])
    assert gap.spans(date(2026, 3, 8)) == [(datetime(2026, 3, 8, 7, tzinfo=UTC),  # clipped to the change
                                            datetime(2026, 3, 8, 8, tzinfo=UTC))]
    inside = make_calendar(country="", timezone="America/New_York", workdays=allweek, hours=["02:10-02:50"])
    assert inside.spans(date(2026, 3, 8)) == []  # wholly in the gap: no working time that day
    assert inside.spans(date(2026, 3, 9)) == [(datetime(2026, 3, 9, 6, 10, tzinfo=UTC),
                                               datetime(2026, 3, 9, 6, 50, tzinfo=UTC))]


def test_24x7_is_wall_clock_time_even_across_dst():
    for cal in (make_24x7(), make_24x7("America/New_York"), make_24x7("Asia/Shanghai")):
        for a, b in [(ny(2026, 3, 7, 12), ny(2026, 3, 8, 12)), (ny(2026, 10, 31, 12), ny(2026, 11, 1, 12)),
                     (ny(2026, 11, 1, 1, 30), ny(2026, 11, 1, 1, 30, fold=1))]:
            assert cal.between(a, b) == (b.astimezone(UTC) - a.astimezone(UTC)).total_seconds()
        t = ny(2026, 3, 7, 20)
        assert cal.add(t, 36 * H) == t.astimezone(UTC) + timedelta(hours=36)
    ny7 = make_24x7("America/New_York")
    assert ny7.between(ny(2026, 3, 8, 0), ny(2026, 3, 9, 0)) == 23 * H
    assert ny7.between(ny(2026, 11, 1, 0), ny(2026, 11, 2, 0)) == 25 * H


# --- explain ------------------------------------------------------------------------------------

def test_explain_add_over_national_day_to_a_makeup_saturday():
    lines = explain_add(CN_LUNCH, sh(2026, 9, 30, 17), 9 * H)
    assert lines == [
        "start 2026-09-30 17:00 (Asia/Shanghai), Wed",
        "business time to add: 9h (calendar default)",
        "2026-09-30 Wed: 1h (17:00-18:00)",
        "2026-10-01..2026-10-07 (7 days): public holiday (National Day) + weekend"
        " + days off moved from make-up workdays skipped",
        "2026-10-08 Thu: 7h30m (09:00-12:00, 13:30-18:00)",
        "2026-10-09 Fri: 30m (09:00-09:30)",
        "due 2026-10-09 09:30 (Asia/Shanghai), Fri",
    ]
    assert CN_LUNCH.add(sh(2026, 9, 30, 17), 9 * H) == sh(2026, 10, 9, 9, 30)
    lines = CN_LUNCH.explain_add(sh(2026, 10, 9, 17), 2 * H)
    assert "2026-10-10 Sat: make-up workday 1h (09:00-10:00)" in lines
    assert lines[-1] == "due 2026-10-10 10:00 (Asia/Shanghai), Sat"


def test_explain_add_weekend_and_24x7():
    lines = explain_add(PLAIN, sh(2026, 9, 4, 17), 2 * H)
    assert lines[2:] == ["2026-09-04 Fri: 1h (17:00-18:00)",
                         "2026-09-05..2026-09-06 (2 days): weekend skipped",
                         "2026-09-07 Mon: 1h (09:00-10:00)",
                         "due 2026-09-07 10:00 (Asia/Shanghai), Mon"]
    lines = explain_add(make_24x7("Asia/Shanghai"), sh(2026, 9, 4, 17), 8 * H)
    assert lines[2:] == ["2026-09-04 Fri: 7h (17:00-24:00)", "2026-09-05 Sat: 1h (00:00-01:00)",
                         "due 2026-09-05 01:00 (Asia/Shanghai), Sat"]


def test_fmt_duration():
    assert [sla.fmt_duration(s) for s in (0, 60, 3600, 5400, 90, 27000, -1800)] == \
        ["0m", "1m", "1h", "1h30m", "1m30s", "7h30m", "-30m"]


# --- durations ----------------------------------------------------------------------------------

@pytest.mark.parametrize("value, seconds", [
    (4, 4 * H), (1.5, 1.5 * H), ("30m", 1800), ("4h", 4 * H), ("1.5h", 1.5 * H), ("3d", 3 * 9 * H),
    ("1d4h", 13 * H), ("2h30m", 2.5 * H), (" 4H ", 4 * H),
])
def test_parse_duration(value, seconds):
    assert parse_duration(value, 9 * H) == seconds


@pytest.mark.parametrize("value", ["", "4", "h", "-1h", "4x", "1h1h", "0h", 0, -2, True, None, [], float("inf")])
def test_parse_duration_rejects(value):
    with pytest.raises(ValueError):
        parse_duration(value, 9 * H)


# --- parse_calendars ----------------------------------------------------------------------------

def test_parse_calendars_defaults():
    cals, problems = parse_calendars(None, None, "Asia/Shanghai", "m.toml")
    assert problems == []
    assert set(cals) == {"default", "24x7"}
    d = cals["default"]
    assert (d.timezone, d.country, d.workdays, d.hours) == ("Asia/Shanghai", "CN", frozenset(range(5)), ((540, 1080),))
    assert cals["24x7"].timezone == "Asia/Shanghai" and cals["24x7"].day_seconds() == 86400


def test_parse_calendars_full_table():
    table = {"timezone": "Asia/Shanghai", "country": "CN", "workdays": ["mon", "tue", "wed", "thu", "fri"],
             "hours": ["09:00-12:00", "13:30-18:00"], "extra_holidays": ["2026-12-31"],
             "extra_workdays": [date(2026, 12, 26)], "hours_by_day": {"sat": ["09:00-12:00"]}}
    named = {"hk": {"timezone": "Asia/Hong_Kong", "country": "HK"}, "us": {"timezone": "America/New_York",
                                                                         "country": "US"}}
    cals, problems = parse_calendars(table, named, "UTC", "m.toml")
    assert problems == []
    assert set(cals) == {"default", "24x7", "hk", "us"}
    assert cals["default"].day_seconds() == 7.5 * H
    assert cals["default"].extra_workdays == {date(2026, 12, 26)}
    assert cals["hk"].country == "HK" and cals["hk"].hours == ((540, 1080),)  # built-in defaults
    assert not cals["us"].is_working_day(date(2026, 11, 26))  # Thanksgiving


@pytest.mark.parametrize("table, problem", [
    ({"hourz": []}, "m.toml: calendar.hourz: unknown key"),
    ({"timezone": "Mars/Base"}, "m.toml: calendar.timezone: unknown time zone 'Mars/Base'"),
    ({"timezone": ""}, "m.toml: calendar.timezone: must be an IANA time zone name"),
    ({"workdays": ["mon", "funday"]}, "m.toml: calendar.workdays[1]: unknown weekday 'funday'"),
    ({"workdays": "mon"}, "m.toml: calendar.workdays: must be a list"),
    ({"hours": ["09:00-12:00", "11:00-18:00"]}, "m.toml: calendar.hours[1]: overlaps another span"),
    ({"hours": ["09:00-12:00", "18:00-13:00"]}, "m.toml: calendar.hours[1]: ends before it starts"),
    ({"hours": ["9-12"]}, 'm.toml: calendar.hours[0]: expected "HH:MM-HH:MM"'),
    ({"hours": ["09:00-24:30"]}, "m.toml: calendar.hours[0]: not a time of day"),
    ({"hours": []}, "m.toml: calendar.hours: must list at least one span"),
    ({"extra_holidays": ["2026-13-01"]}, "m.toml: calendar.extra_holidays[0]: not an ISO date"),
    ({"extra_holidays": [datetime(2026, 1, 1)]}, "m.toml: calendar.extra_holidays[0]: a date, not a date and time"),
    ({"extra_holidays": ["2026-12-31"], "extra_workdays": ["2026-12-31"]},
     "m.toml: calendar.extra_workdays: 2026-12-31 is also in extra_holidays"),
    ({"workdays": []}, "m.toml: calendar.workdays: no working time"),
    ({"workdays": ["mon"], "hours_by_day": {"mon": []}}, "m.toml: calendar.workdays: no working time"),
    ({"country": "XX"}, "m.toml: calendar.country: unknown country 'XX'"),
    ({"hours_by_day": {"caturday": ["09:00-12:00"]}}, "m.toml: calendar.hours_by_day.caturday: unknown weekday"),
    ({"hours_by_day": {"sat": "09:00-12:00"}}, "m.toml: calendar.hours_by_day.sat: must be a list"),
])
def test_parse_calendars_problems(table, problem):
    cals, problems = parse_calendars(table, None, "Asia/Shanghai", "m.toml")
    assert any(p.startswith(problem) for p in problems), problems
    assert "default" in cals and "24x7" in cals  # still usable for collecting further problems


def test_parse_calendars_named_problems():
    named = {"default": {}, "24x7": {}, "bad name": {}, "ny": {"timezone": "America/NewYork"}, "x": "no"}
    _, problems = parse_calendars(None, named, "Asia/Shanghai", "m.toml")
    assert "m.toml: calendars.default: reserved name (use [calendar] for the default)" in problems
    assert any(p.startswith("m.toml: calendars.24x7: reserved name") for p in problems)
    assert any(p.startswith("m.toml: calendars.bad name: names are") for p in problems)
    assert "m.toml: calendars.ny.timezone: unknown time zone 'America/NewYork'" in problems
    assert "m.toml: calendars.x: must be a table" in problems


def test_make_calendar_raises_with_every_problem():
    with pytest.raises(CalendarError, match=r"workdays\[0\].*hours\[0\]"):
        make_calendar(workdays=["noday"], hours=["x"])


# --- parse_sla / SlaPolicy ----------------------------------------------------------------------

CALS, _ = parse_calendars({"hours": ["09:00-12:00", "13:30-18:00"]}, {"hk": {"timezone": "Asia/Hong_Kong"}},
                          "Asia/Shanghai", "m.toml")


def test_sla_defaults_are_the_design_table_in_business_time():
    policy, problems = parse_sla(None, CALS, {}, "m.toml")
    assert problems == [] and not policy.plain_numbers
    day = 7.5 * H  # the default calendar's `hours`
    assert policy.targets("urgent") == {"first_response": 1 * H, "next_response": 4 * H, "resolution": 4 * H}
    assert policy.targets("high") == {"first_response": 4 * H, "next_response": day, "resolution": day}
    assert policy.targets("normal") == {"first_response": day, "next_response": day, "resolution": 3 * day}
    assert policy.targets("low") == {"first_response": 2 * day, "next_response": 5 * day, "resolution": 10 * day}
    assert policy.targets("bogus") == policy.targets("normal")


def test_sla_overrides_precedence_category_beats_tier_beats_default():
    table = {"first_response_hours": {"high": 3}, "resolution_hours": {"high": "2d"},
             "vip": {"first_response_hours": {"high": 2}, "resolution_hours": {"high": "1d"}},
             "category": {"complaint": {"first_response_hours": {"high": "30m"}}}}
    policy, problems = parse_sla(table, CALS, {}, "m.toml")
    assert problems == [] and policy.plain_numbers
    day = 7.5 * H
    assert policy.targets("high")["first_response"] == 3 * H
    assert policy.targets("high", "vip")["first_response"] == 2 * H
    assert policy.targets("high", "vip", "complaint")["first_response"] == 1800
    assert policy.targets("high", "vip", "complaint")["resolution"] == day  # category has none: tier's
    assert policy.targets("high", None, "complaint")["resolution"] == 2 * day
    assert policy.targets("high", "standard", "inquiry")["next_response"] == day


def test_sla_calendar_precedence_and_day_length():
    table = {"calendar": {"urgent": "24x7"}, "resolution_hours": {"urgent": "1d", "high": "1d"}}
    policy, problems = parse_sla(table, CALS, {"hk-support": "hk", "main": ""}, "m.toml")
    assert problems == []
    assert policy.calendar_for("urgent", "hk-support").name == "24x7"  # priority beats mailbox
    assert policy.calendar_for("high", "hk-support").name == "hk"  # mailbox beats default
    assert policy.calendar_for("high", "main").name == "default"
    assert policy.calendar_for("high", None).name == "default"
    assert policy.targets("urgent")["resolution"] == 24 * H  # "1d" of the 24x7 calendar
    assert policy.targets("high", mailbox="hk-support")["resolution"] == 9 * H  # hk: 09:00-18:00
    assert policy.targets("high")["resolution"] == 7.5 * H


@pytest.mark.parametrize("table, mailboxes, problem", [
    ({"first_response_hours": {"hihg": 4}}, {}, "m.toml: sla.first_response_hours.hihg: unknown priority"),
    ({"first_response_hours": {"high": "4 hours"}}, {}, "m.toml: sla.first_response_hours.high: not a duration"),
    ({"first_response_hours": {"high": 0}}, {}, "m.toml: sla.first_response_hours.high: must be positive"),
    ({"first_response_hours": 4}, {}, "m.toml: sla.first_response_hours: must be a table"),
    ({"reply_hours": {}}, {}, "m.toml: sla.reply_hours: unknown key"),
    ({"calendar": {"urgent": "nope"}}, {}, "m.toml: sla.calendar.urgent: unknown calendar 'nope'"),
    ({"calendar": {"soon": "24x7"}}, {}, "m.toml: sla.calendar.soon: unknown priority"),
    ({}, {"support": "nope"}, "m.toml: mailbox.support.calendar: unknown calendar 'nope'"),
    ({"vip": {"first_response_hours": {"high": "x"}}}, {}, "m.toml: sla.vip.first_response_hours.high: not a duration"),
    ({"vip": {"calendar": {}}}, {}, "m.toml: sla.vip.calendar: unknown key"),
    ({"category": {"complaint": {"resolution_hours": {"high": "-2d"}}}}, {},
     "m.toml: sla.category.complaint.resolution_hours.high: not a duration"),
    ({"category": "complaint"}, {}, "m.toml: sla.category: must be a table"),
])
def test_parse_sla_problems(table, mailboxes, problem):
    _, problems = parse_sla(table, CALS, mailboxes, "m.toml")
    assert any(p.startswith(problem) for p in problems), problems


def test_parse_sla_string_durations_do_not_raise_the_numbers_flag():
    policy, _ = parse_sla({"first_response_hours": {"high": "4h"}}, CALS, {}, "m.toml")
    assert not policy.plain_numbers


ISSUE_TOML = """
[tickets]
timezone = "Asia/Shanghai"

[calendar]
timezone = "Asia/Shanghai"
country = "CN"
workdays = ["mon", "tue", "wed", "thu", "fri"]
hours = ["09:00-12:00", "13:30-18:00"]
extra_holidays = ["2026-12-31"]
extra_workdays = []
[calendar.hours_by_day]
sat = ["09:00-12:00"]

[calendars.hk]
timezone = "Asia/Hong_Kong"
country = "HK"
extra_holidays = [2026-12-24]

[sla]
first_response_hours = { urgent = 1, high = 4, normal = "1d", low = "2d" }
next_response_hours = { urgent = 4, high = "1d", normal = "1d", low = "5d" }
resolution_hours = { urgent = 4, high = "1d", normal = "3d", low = "10d" }
calendar = { urgent = "24x7" }
[sla.vip]
first_response_hours = { high = 2 }
[sla.category.complaint]
resolution_hours = { high = "2d" }
"""


def test_the_issue_config_shape_parses_from_toml():
    doc = tomllib.loads(ISSUE_TOML)
    cals, problems = parse_calendars(doc.get("calendar"), doc.get("calendars"), doc["tickets"]["timezone"], "m.toml")
    assert problems == []
    policy, problems = parse_sla(doc.get("sla"), cals, {"hk-queue": "hk"}, "m.toml")
    assert problems == [] and policy.plain_numbers
    assert cals["hk"].extra_holidays == {date(2026, 12, 24)}  # a bare TOML date
    assert not cals["default"].is_working_day(date(2026, 12, 31))
    assert cals["default"].spans(date(2026, 9, 19)) == [(sh(2026, 9, 19, 9), sh(2026, 9, 19, 12))]
    assert policy.targets("high", "vip", "complaint") == {"first_response": 2 * H, "next_response": 7.5 * H,
                                                          "resolution": 15 * H}
    assert policy.calendar_for("urgent", "hk-queue").name == "24x7"
    assert policy.targets("normal", mailbox="hk-queue")["resolution"] == 27 * H  # 3 x hk's 9h day
    warnings = makeup_warnings(cals, date(2026, 11, 20), "m.toml")
    if not missing_makeup_years(cals["default"], date(2026, 11, 20)):
        assert warnings == []  # the package has the 2027 plan by now
    else:
        assert warnings[0].startswith("m.toml: calendar.country: the holidays package has no CN make-up "
                                      "workdays for 2027 yet")
        assert all("calendars.hk" not in w for w in warnings)  # Hong Kong does not move days
