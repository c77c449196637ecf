"""Business calendars and SLA clocks, as pure functions.

Why pure: the scheduler, `simulate`, `tickets show`, `sla explain` and the reports must agree on every
due time, so all of them call these functions with plain data (a calendar, a list of clock events, a
``now``) and nothing here reads the clock, the config file or the database.

Calendar
    A time zone (IANA), working hours per weekday (several spans: a lunch break), the public holidays
    and make-up workdays (调休) of a country from the ``holidays`` package, and the config's
    ``extra_holidays`` / ``extra_workdays``. Which calendar day is a working day, first rule that
    applies wins:

    1. in ``extra_workdays``: working, with ``hours``;
    2. in ``extra_holidays``: off (the config beats the country data, both ways);
    3. a make-up workday of the country (a weekend day moved to work, e.g. CN 2026-09-20, a Sunday):
       working, with ``hours``;
    4. a public holiday of the country (including its substituted days off): off; for a country
       that moves days (CN), a weekend day inside a holiday break is off too, which matters only to
       calendars that work weekends (``hours_by_day.sat``): the 2026 Spring Festival break is
       Feb 15-23 whole, though the package lists only Feb 16-20 and 23;
    5. otherwise its weekday: ``hours_by_day[day]`` if given (an empty list makes that weekday a day
       off; a weekday listed there works even if it is missing from ``workdays``), else ``hours`` if
       the weekday is in ``workdays``, else off.

    A make-up or extra workday is a full working day (``hours``), whatever its weekday: the State
    Council's notices say "上班" (work as usual) without naming a shorter day.

    Spans are local wall-clock times turned into UTC instants per local date with zoneinfo, so a
    span is right on DST-change days: a boundary in a spring-forward gap is clipped to the instant of
    the change; on a fall-back day a span starts at the first occurrence of its start and ends at the
    last occurrence of its end (a span that covers the repeated hour gets it twice, as the staff
    working through it do). ``24:00`` is the next day's midnight, so ``00:00-24:00`` days abut and
    the built-in ``24x7`` calendar's business time equals wall-clock time in any zone.

Business time arithmetic: ``add`` walks per local date (never per minute) and gives up with
``CalendarError`` after ``SEARCH_DAYS`` (10 years) without working time; ``between`` takes whole days
from a lazily built per-calendar prefix sum, so a ticket open for a year costs no more than one open
for a day. Each date's spans and each (country, year)'s holidays are computed once and cached. All
arithmetic is on ``timedelta`` (exact microseconds), so ``between(t, add(t, n)) == n`` to the
microsecond, and every instant is compared in UTC.

Durations: a number is business hours; ``"30m"``, ``"4h"``, ``"1.5h"``, ``"3d"``, ``"1d4h"``; ``d``
is N working days of the calendar the clock runs on, each as long as that calendar's ``hours``
(``day_seconds()``: 9 h for the default 09:00-18:00, 7.5 h for 09:00-12:00 + 13:30-18:00, 24 h for
``24x7``).

Clocks: ``compute_clocks`` replays a ticket's ``ClockEvent`` list into three ``Clock`` snapshots
(rules there, states on ``Clock``); ``next_wakeup`` tells the scheduler when to look again,
``timer_facts`` gives the escalation rules their facts, ``to_json``/``from_json`` store clocks.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays as _holidays

__all__ = [
    "CLOCKS", "PRIORITIES", "TIERS", "SEARCH_DAYS", "DEFAULT_SLA", "CalendarError", "Calendar", "DayInfo",
    "make_calendar", "make_24x7", "parse_duration", "parse_calendars", "Duration", "SlaPolicy", "parse_sla",
    "missing_makeup_years", "makeup_warnings", "ClockEvent", "Clock", "compute_clocks", "next_wakeup", "timer_facts",
    "to_json", "from_json", "explain_add", "fmt_duration",
]

CLOCKS = ("first_response", "next_response", "resolution")
PRIORITIES = ("urgent", "high", "normal", "low")
TIERS = ("vip", "standard")
SEARCH_DAYS = 3660  # how far add()/next_working_instant() look for working time: 10 years
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WEEKDAY_NAMES = {**{d: i for i, d in enumerate(WEEKDAYS)},
                  **{n: i for i, n in enumerate(("monday", "tuesday", "wednesday", "thursday", "friday",
                                                 "saturday", "sunday"))}}
_DAY = timedelta(days=1)
_ZERO = timedelta(0)

# DESIGN.md section 1; numbers are business hours, "d" working days of the clock's calendar.
DEFAULT_SLA: dict[str, dict[str, float | str]] = {
    "first_response": {"urgent": 1, "high": 4, "normal": "1d", "low": "2d"},
    "next_response": {"urgent": 4, "high": "1d", "normal": "1d", "low": "5d"},
    "resolution": {"urgent": 4, "high": "1d", "normal": "3d", "low": "10d"},
}


class CalendarError(ValueError):
    """A calendar cannot answer: no working time within SEARCH_DAYS, or bad input."""


Span = tuple[int, int]  # minutes after local midnight, [start, end), end <= 1440


# ---------------------------------------------------------------------------------------------------
# Country data: one lookup per (country, year), cached


@dataclass(frozen=True)
class _CountryYear:
    names: dict[date, str]  # public holidays, English where the package has it
    makeup: frozenset[date]  # weekend days that are working days (调休)
    moved: frozenset[date]  # days off moved from a make-up workday (substituted)
    base: dict[date, str]  # holiday name without "(observed)"; moved days: None


@functools.lru_cache(maxsize=512)
def _country_year(country: str, year: int) -> _CountryYear:
    """Public holidays and make-up workdays of one country and year, looked up once.

    The ``holidays`` package stores a make-up workday as a substituted holiday whose source date is
    a weekend day and records it in ``weekend_workdays`` (documented: "Working days moved to
    weekends"). A make-up day can be announced in the next year's plan (2002's notice moved
    2001-12-29), so the next year is populated too.
    """
    cls = _holidays.country_holidays(country)
    lang = "en_US" if "en_US" in (getattr(cls, "supported_languages", ()) or ()) else None
    h = _holidays.country_holidays(country, years=[year, year + 1], language=lang)
    names = {d: name for d, name in h.items() if d.year == year}
    makeup = frozenset(d for d in h.weekend_workdays if d.year == year)
    moved_re = _label_re(h, "substituted_label")
    observed_re = _label_re(h, "observed_label")
    moved = frozenset(d for d, n in names.items() if moved_re and moved_re.fullmatch(n))
    base = {}
    for d, n in names.items():
        if d in moved:
            continue
        m = observed_re.fullmatch(n) if observed_re else None
        base[d] = m.group(1) if m else n
    return _CountryYear(names, makeup, moved, base)


def _label_re(h, attr: str) -> re.Pattern | None:
    label = getattr(h, attr, None)
    if not label:
        return None
    try:
        text = h.tr(label)
    except Exception:  # a package-internal translation quirk must not break the calendar
        text = label
    return re.compile(re.escape(text).replace("%s", "(.*)"))


@functools.lru_cache(maxsize=512)
def _moves_days(country: str, year: int) -> bool:
    """Whether the country moves weekend days around its holidays (make-up workdays in the year or
    one of the three before): CN does, US never does."""
    return any(_country_year(country, year - k).makeup for k in range(4))


def _country_off(country: str, d: date, weekend: frozenset[int]) -> bool:
    cy = _country_year(country, d.year)
    return d in cy.names or (d.weekday() in weekend and d not in cy.makeup)


@functools.lru_cache(maxsize=1024)
def _weekend_break(country: str, d: date) -> str | None:
    """For a country that moves days: the holiday whose official break a weekend day ``d`` lies in.

    The State Council announces a break as one range ("2月15日至23日放假调休，共9天"), weekend days
    included, but the package lists only the statutory and substituted days. A weekend day inside a
    run of consecutive days off that holds a public holiday is part of that break, so a calendar that
    works Saturdays does not work the Saturday of the Spring Festival.
    """
    weekend = frozenset(getattr(_holidays.country_holidays(country), "weekend", {5, 6}))
    if d.weekday() not in weekend or not _moves_days(country, d.year):
        return None
    found: list[str] = []
    for step in (-1, 1):
        x = d + timedelta(days=step)
        for _ in range(20):
            if not _country_off(country, x, weekend):
                break
            cy = _country_year(country, x.year)
            if x in cy.names:
                found.append(cy.base.get(x) or "")
            x += timedelta(days=step)
    named = [n for n in found if n]
    if named:
        return max(named, key=named.count)  # the break's own holiday, not the moved days around it
    return "holiday" if found else None


@functools.lru_cache(maxsize=1)
def _supported_countries() -> frozenset[str]:
    # list_supported_countries() imports all ~250 country modules (0.2 s on every command that
    # loads the config); the registry names the same codes without importing any
    try:
        from holidays.registry import COUNTRIES

        codes = frozenset(c for v in COUNTRIES.values() for c in v[1:] if c.isupper() and len(c) in (2, 3))
        if "CN" in codes and "US" in codes:
            return codes
    except Exception:  # another layout of the package: ask it the slow way
        pass
    return frozenset(_holidays.list_supported_countries())


# ---------------------------------------------------------------------------------------------------
# Calendar


@dataclass(frozen=True)
class DayInfo:
    """What a local date is: kind is workday | makeup | extra_workday (working) or holiday | moved
    (a day off moved from a make-up workday) | break (a weekend day inside a holiday break) |
    extra_holiday | weekend (off). ``reason``: the holiday's name (English), or what the kind says."""

    day: date
    kind: str
    spans: tuple[Span, ...]
    reason: str = ""

    @property
    def working(self) -> bool:
        return bool(self.spans)


@dataclass(frozen=True, eq=False)
class Calendar:
    """A business calendar; build it with ``make_calendar`` or ``parse_calendars`` (they validate).

    Equality is identity: calendars carry per-date caches and are shared, not compared.
    """

    name: str
    timezone: str
    workdays: frozenset[int]  # 0 = Monday
    hours: tuple[Span, ...]
    hours_by_day: tuple[tuple[int, tuple[Span, ...]], ...] = ()
    country: str = ""
    extra_holidays: frozenset[date] = frozenset()
    extra_workdays: frozenset[date] = frozenset()
    _tz: ZoneInfo = field(init=False, repr=False)
    _week: tuple[tuple[Span, ...], ...] = field(init=False, repr=False)
    _cache: dict = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_tz", ZoneInfo(self.timezone))
        by_day = dict(self.hours_by_day)
        week = tuple(by_day[i] if i in by_day else (self.hours if i in self.workdays else ())
                     for i in range(7))
        object.__setattr__(self, "_week", week)

    # -- days ------------------------------------------------------------------------------------
    @property
    def tz(self) -> ZoneInfo:
        return self._tz

    def day_info(self, d: date) -> DayInfo:
        """Classify one local date (rules in the module docstring)."""
        if d in self.extra_workdays:
            return DayInfo(d, "extra_workday", self.hours, "extra workday")
        if d in self.extra_holidays:
            return DayInfo(d, "extra_holiday", (), "extra holiday")
        if self.country:
            cy = _country_year(self.country, d.year)
            if d in cy.makeup:
                return DayInfo(d, "makeup", self.hours, "make-up workday")
            if d in cy.moved:
                return DayInfo(d, "moved", (), cy.names[d])
            if d in cy.names:
                return DayInfo(d, "holiday", (), cy.base[d])
            if self._week[d.weekday()] and (brk := _weekend_break(self.country, d)) is not None:
                return DayInfo(d, "break", (), brk)
        spans = self._week[d.weekday()]
        return DayInfo(d, "workday", spans) if spans else DayInfo(d, "weekend", (), "weekend")

    def is_working_day(self, d: date) -> bool:
        return bool(self._day(d))

    def day_seconds(self) -> float:
        """Length of one working day for "d" durations: the sum of ``hours`` (nominal, not DST-bent)."""
        return float(sum(e - s for s, e in self.hours) * 60)

    # -- spans -----------------------------------------------------------------------------------
    def spans(self, d: date) -> list[tuple[datetime, datetime]]:
        """The working spans of local date ``d`` as aware UTC datetimes, ascending, disjoint."""
        return list(self._day(d))

    def _day(self, d: date) -> tuple[tuple[datetime, datetime], ...]:
        key = d.toordinal()
        hit = self._cache.get(key)
        if hit is None:
            if len(self._cache) > 20000:  # ~55 years of dates: a long-running daemon stays bounded
                cum = self._cache.get("cum")
                self._cache.clear()
                if cum is not None:
                    self._cache["cum"] = cum
            hit = self._cache[key] = self._build_day(d)
        return hit

    def _build_day(self, d: date) -> tuple[tuple[datetime, datetime], ...]:
        info = self.day_info(d)
        out: list[list[datetime]] = []
        for s, e in info.spans:
            a, b = self._wall(d, s, end=False), self._wall(d, e, end=True)
            if a >= b:  # wholly inside a DST gap
                continue
            if out and a <= out[-1][1]:
                out[-1][1] = max(out[-1][1], b)
            else:
                out.append([a, b])
        return tuple((a, b) for a, b in out)

    def _wall(self, d: date, minutes: int, end: bool) -> datetime:
        """Local wall time on date d -> UTC instant (gap: the instant of the change; fold: see docstring)."""
        if minutes >= 1440:  # 24:00 is the next day's 00:00, resolved as that day's start is
            d, minutes, end = d + _DAY, minutes - 1440, False
        naive = datetime.combine(d, time(minutes // 60, minutes % 60))
        tz = self._tz
        u = naive.replace(tzinfo=tz, fold=1 if end else 0).astimezone(UTC)
        if self.timezone == "UTC" or u.astimezone(tz).replace(tzinfo=None) == naive:
            return u
        # In a gap: fold=1 reads it with the offset after the change (earlier instant), fold=0 with
        # the one before (later instant); the change lies between them. Bisect to the second.
        lo = naive.replace(tzinfo=tz, fold=1).astimezone(UTC)
        hi = naive.replace(tzinfo=tz, fold=0).astimezone(UTC)
        if lo > hi:
            lo, hi = hi, lo
        target = hi.astimezone(tz).utcoffset()
        while hi - lo > timedelta(seconds=1):
            mid = lo + (hi - lo) / 2
            mid = mid.replace(microsecond=0)
            if mid <= lo:
                break
            if mid.astimezone(tz).utcoffset() == target:
                hi = mid
            else:
                lo = mid
        return hi

    # -- arithmetic ------------------------------------------------------------------------------
    def _local_date(self, t: datetime) -> date:
        return t.astimezone(self._tz).date()

    def next_working_instant(self, t: datetime) -> datetime:
        """``t`` (in UTC) if it lies in a working span, else the start of the next span."""
        t = _utc(t)
        d = self._local_date(t)
        for i in range(SEARCH_DAYS):
            for s, e in self._day(d + timedelta(days=i)):
                if e > t:
                    return max(s, t)
        raise CalendarError(f"calendar {self.name}: no working time within {SEARCH_DAYS} days of {t.date()}")

    def add(self, start: datetime, seconds: float) -> datetime:
        """The instant (UTC) at which ``seconds`` of business time have elapsed after ``start``.

        Counting begins at ``start`` or, outside working hours, at the next span start. ``seconds == 0``
        returns ``start`` itself (nothing to wait for); for ``seconds > 0`` the result lies inside a
        span or exactly at its end (a target that runs out at 18:00 is due at 18:00, not at the next
        morning's 09:00).
        """
        if seconds < 0 or math.isnan(seconds):
            raise CalendarError(f"cannot add {seconds!r} seconds")
        if seconds == 0:
            return _utc(start)
        return self._add_td(_utc(start), _td(seconds))

    def _add_td(self, t: datetime, left: timedelta) -> datetime:
        """``add`` for a UTC ``t`` and an exact timedelta."""
        d = self._local_date(t)
        for i in range(SEARCH_DAYS):
            for s, e in self._day(d + timedelta(days=i)):
                if e <= t:
                    continue
                a = max(s, t)
                avail = e - a
                if left <= avail:
                    return a + left
                left -= avail
        raise CalendarError(f"calendar {self.name}: no working time within {SEARCH_DAYS} days of {t.date()}")

    def between(self, a: datetime, b: datetime) -> float:
        """Business seconds in [a, b); 0 if b <= a."""
        return self._between_td(_utc(a), _utc(b)).total_seconds()

    def _between_td(self, a: datetime, b: datetime) -> timedelta:
        """``between`` for UTC instants, exact: whole days from the prefix sums, the two ends by hand.

        Spans of a local date lie within that date, so [a, b) = the days da..db-1 in full, less the
        part of da before a, plus the part of db before b.
        """
        if b <= a:
            return _ZERO
        da, db = self._local_date(a), self._local_date(b)
        if da == db:
            return self._before(db, b) - self._before(da, a)
        return self._days_between(da, db) + self._before(db, b) - self._before(da, a)

    def _before(self, d: date, t: datetime) -> timedelta:
        """Business time of date d's spans before instant t."""
        total = _ZERO
        for s, e in self._day(d):
            if s >= t:
                break
            total += (e if e < t else t) - s
        return total

    def _days_between(self, da: date, db: date) -> timedelta:
        """Business time of the whole local dates da..db-1, from one prefix-sum index.

        The index (origin ordinal, cumulative business time at the start of each date) is built
        lazily and replaced, never changed in place, so threads sharing a calendar (pipeline and
        scheduler) only ever see a consistent one; both ends are read from the same index.
        """
        oa, ob = da.toordinal(), db.toordinal()
        idx = self._cache.get("cum")
        if idx is None or oa < idx[0] or ob - idx[0] > 40000:
            idx = (oa - 90, (_ZERO,))  # room for older tickets; an even older date starts a new index
        origin, vals = idx
        if ob - origin >= len(vals):
            grown = list(vals)
            while origin + len(grown) - 1 < ob:
                day = date.fromordinal(origin + len(grown) - 1)
                grown.append(grown[-1] + sum((e - s for s, e in self._day(day)), _ZERO))
            vals = tuple(grown)
            idx = (origin, vals)
        if self._cache.get("cum") is not idx:
            self._cache["cum"] = idx
        return vals[ob - origin] - vals[oa - origin]

    def local(self, t: datetime) -> datetime:
        return t.astimezone(self._tz)

    def explain_add(self, start: datetime, seconds: float) -> list[str]:
        """Human steps of ``add(start, seconds)``; see the module function ``explain_add``."""
        return explain_add(self, start, seconds)


def _td(seconds: float) -> timedelta:
    return timedelta(microseconds=round(seconds * 1_000_000))


def _utc(t: datetime) -> datetime:
    """Aware -> UTC. Everything is compared in UTC: two datetimes sharing a ZoneInfo compare by wall
    time and ignore ``fold`` (PEP 495), which is wrong inside a repeated hour."""
    if t.tzinfo is None or t.utcoffset() is None:
        raise CalendarError(f"naive datetime {t.isoformat()}: give an aware one")
    return t.astimezone(UTC)


def make_24x7(timezone: str = "UTC", name: str = "24x7") -> Calendar:
    """Every day 00:00-24:00, no holidays: business time is wall-clock time (the zone only affects
    how explain output shows times)."""
    return Calendar(name=name, timezone=timezone, workdays=frozenset(range(7)), hours=((0, 1440),))


def make_calendar(name: str = "default", **table) -> Calendar:
    """A validated calendar from config-style values (keys as in a ``[calendar]`` table, plus
    ``timezone``); raises ``CalendarError`` listing every problem. Handy for tests and tools."""
    tz = table.pop("timezone", "Asia/Shanghai")
    cal, problems = _parse_calendar(name, {**table, "timezone": tz}, tz, "calendar", "<calendar>")
    if problems or cal is None:
        raise CalendarError("; ".join(problems))
    return cal


# ---------------------------------------------------------------------------------------------------
# Parsing calendars

_CAL_KEYS = {"timezone", "country", "workdays", "hours", "hours_by_day", "extra_holidays", "extra_workdays"}
_SPAN_RE = re.compile(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*")


def _parse_spans(value, key: str, err) -> tuple[Span, ...] | None:
    if not isinstance(value, list):
        err(key, 'must be a list of "HH:MM-HH:MM" spans')
        return None
    spans: list[Span] = []
    ok = True
    for i, item in enumerate(value):
        k = f"{key}[{i}]"
        m = _SPAN_RE.fullmatch(item) if isinstance(item, str) else None
        if not m:
            err(k, f'expected "HH:MM-HH:MM", got {item!r}')
            ok = False
            continue
        h1, m1, h2, m2 = map(int, m.groups())
        if h1 > 23 or m1 > 59 or h2 > 24 or m2 > 59 or (h2 == 24 and m2):
            err(k, f"not a time of day: {item!r} (00:00 to 24:00)")
            ok = False
            continue
        s, e = h1 * 60 + m1, h2 * 60 + m2
        if e <= s:
            err(k, f"ends before it starts: {item!r}")
            ok = False
            continue
        spans.append((s, e))
    if not ok:
        return None
    spans.sort()
    merged: list[Span] = []
    for i, (s, e) in enumerate(spans):
        if merged and s < merged[-1][1]:
            err(f"{key}[{i}]", f"overlaps another span: {_fmt_span((s, e))} and {_fmt_span(merged[-1])}")
            return None
        if merged and s == merged[-1][1]:  # touching spans are one span
            merged[-1] = (merged[-1][0], e)
        else:
            merged.append((s, e))
    return tuple(merged)


def _fmt_min(m: int) -> str:
    return f"{m // 60:02d}:{m % 60:02d}"


def _fmt_span(s: Span) -> str:
    return f"{_fmt_min(s[0])}-{_fmt_min(s[1])}"


def _parse_dates(value, key: str, err) -> frozenset[date]:
    if not isinstance(value, list):
        err(key, 'must be a list of dates ("2026-12-31" or 2026-12-31)')
        return frozenset()
    out = set()
    for i, item in enumerate(value):
        if isinstance(item, datetime):
            err(f"{key}[{i}]", f"a date, not a date and time: {item.isoformat()}")
        elif isinstance(item, date):
            out.add(item)
        elif isinstance(item, str):
            try:
                out.add(date.fromisoformat(item.strip()))
            except ValueError:
                err(f"{key}[{i}]", f"not an ISO date (YYYY-MM-DD): {item!r}")
        else:
            err(f"{key}[{i}]", f"not a date: {item!r}")
    return frozenset(out)


def _parse_weekday(name, key: str, err) -> int | None:
    i = _WEEKDAY_NAMES.get(name.strip().casefold()) if isinstance(name, str) else None
    if i is None:
        err(key, f"unknown weekday {name!r} (mon tue wed thu fri sat sun)")
    return i


def _parse_calendar(name: str, t: dict | None, default_tz: str, prefix: str, fname: str
                    ) -> tuple[Calendar | None, list[str]]:
    """One calendar table -> (Calendar or None, problems). Defaults: Mon-Fri 09:00-18:00, CN."""
    problems: list[str] = []

    def err(key: str, reason: str) -> None:
        problems.append(f"{fname}: {prefix}.{key}: {reason}")

    if t is None:
        t = {}
    if not isinstance(t, dict):
        return None, [f"{fname}: {prefix}: must be a table"]
    for k in t:
        if k not in _CAL_KEYS:
            err(k, f"unknown key (known: {', '.join(sorted(_CAL_KEYS))})")

    tz = t.get("timezone", default_tz)
    if not isinstance(tz, str) or not tz.strip():
        err("timezone", f"must be an IANA time zone name like Asia/Shanghai, got {tz!r}")
        tz = None
    else:
        tz = tz.strip()
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            err("timezone", f"unknown time zone {tz!r}")
            tz = None

    country = t.get("country", "CN")
    if not isinstance(country, str):
        err("country", f'must be a country code like "CN", or "" for none, got {country!r}')
        country = ""
    country = country.strip().upper()
    if country and country not in _supported_countries():
        err("country", f"unknown country {country!r} for the holidays package (e.g. CN, HK, TW, US)")
        country = ""

    workdays = frozenset(range(5))
    if "workdays" in t:
        v = t["workdays"]
        if not isinstance(v, list):
            err("workdays", 'must be a list of weekdays like ["mon", "tue"]')
        else:
            days = [_parse_weekday(x, f"workdays[{i}]", err) for i, x in enumerate(v)]
            workdays = frozenset(x for x in days if x is not None)

    hours: tuple[Span, ...] | None = ((9 * 60, 18 * 60),)
    if "hours" in t:
        hours = _parse_spans(t["hours"], "hours", err)
        if hours is not None and not hours:
            err("hours", "must list at least one span (make-up workdays use it)")
            hours = None

    by_day: dict[int, tuple[Span, ...]] = {}
    if "hours_by_day" in t:
        v = t["hours_by_day"]
        if not isinstance(v, dict):
            err("hours_by_day", 'must be a table like {sat = ["09:00-12:00"]}')
        else:
            for k, spans in v.items():
                i = _parse_weekday(k, f"hours_by_day.{k}", err)
                parsed = _parse_spans(spans, f"hours_by_day.{k}", err)
                if i is not None and parsed is not None:
                    by_day[i] = parsed

    extra_h = _parse_dates(t.get("extra_holidays", []), "extra_holidays", err)
    extra_w = _parse_dates(t.get("extra_workdays", []), "extra_workdays", err)
    for d in sorted(extra_h & extra_w):
        err("extra_workdays", f"{d.isoformat()} is also in extra_holidays")

    if tz is None or hours is None:
        return None, problems
    cal = Calendar(name=name, timezone=tz, workdays=workdays, hours=hours,
                   hours_by_day=tuple(sorted(by_day.items())), country=country,
                   extra_holidays=extra_h, extra_workdays=extra_w)
    if not any(cal._week):
        err("workdays", "no working time: no weekday has working hours")
        return None, problems
    return cal, problems


def parse_calendars(calendar_table: dict | None, calendars_table: dict | None, default_tz: str,
                    fname: str) -> tuple[dict[str, Calendar], list[str]]:
    """``[calendar]`` and ``[calendars.NAME]`` -> ({"default", "24x7", NAME...: Calendar}, problems).

    Every named calendar starts from the same defaults as ``[calendar]`` (Mon-Fri 09:00-18:00, CN,
    the [tickets] time zone), not from the ``[calendar]`` table. ``24x7`` is built in (in the
    default time zone, which only changes how its times are shown). A calendar with problems is
    replaced by the defaults so the caller can go on collecting problems; it must not run on it.
    """
    problems: list[str] = []
    default, p = _parse_calendar("default", calendar_table, default_tz, "calendar", fname)
    problems += p
    fallback_tz = default_tz
    try:
        ZoneInfo(default_tz)
    except (ZoneInfoNotFoundError, ValueError):
        fallback_tz = "UTC"
    if default is None:
        default = Calendar("default", fallback_tz, frozenset(range(5)), ((540, 1080),), country="CN")
    out: dict[str, Calendar] = {"default": default, "24x7": make_24x7(default.timezone)}
    if calendars_table is not None and not isinstance(calendars_table, dict):
        problems.append(f"{fname}: calendars: must be a table of [calendars.NAME] tables")
        calendars_table = None
    for name, t in (calendars_table or {}).items():
        if name in ("default", "24x7"):
            problems.append(f"{fname}: calendars.{name}: reserved name (use [calendar] for the default)")
            continue
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            problems.append(f"{fname}: calendars.{name}: names are letters, digits, _ . -")
            continue
        cal, p = _parse_calendar(name, t, default_tz, f"calendars.{name}", fname)
        problems += p
        out[name] = cal if cal is not None else Calendar(name, fallback_tz, frozenset(range(5)),
                                                         ((540, 1080),), country="CN")
    return out, problems


def missing_makeup_years(calendar: Calendar, today: date, horizon_days: int = 60) -> list[int]:
    """Years within [today, today + horizon_days] for which the country moves weekend days (it did in
    one of the three years before) but the package has no make-up workdays yet, and the config gives
    no ``extra_workdays`` in that year either. ``check`` warns about them (CN 2027 as of 2026-11)."""
    if not calendar.country:
        return []
    years = sorted({today.year, (today + timedelta(days=horizon_days)).year})
    out = []
    for y in years:
        if _country_year(calendar.country, y).makeup or any(d.year == y for d in calendar.extra_workdays):
            continue
        if _moves_days(calendar.country, y - 1):
            out.append(y)
    return out


def makeup_warnings(calendars: Mapping[str, Calendar], today: date, fname: str,
                    horizon_days: int = 60) -> list[str]:
    """``check``'s warnings (exit status unchanged) for ``missing_makeup_years``, one per calendar
    and year, in the ``file: key: reason`` form."""
    out = []
    for name, cal in calendars.items():
        key = "calendar" if name == "default" else f"calendars.{name}"
        for y in missing_makeup_years(cal, today, horizon_days):
            out.append(f"{fname}: {key}.country: the holidays package has no {cal.country} make-up workdays "
                       f"for {y} yet: weekend days that become working days will count as days off; "
                       f"list them in {key}.extra_workdays once the plan is published (or upgrade holidays)")
    return out


# ---------------------------------------------------------------------------------------------------
# Durations and the SLA policy

_DUR_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([dhm])")


@dataclass(frozen=True)
class Duration:
    """A target as configured: fixed business seconds plus N working days (sized by the calendar)."""

    seconds: float = 0.0
    days: float = 0.0
    plain_number: bool = False  # given as a bare number (business hours)

    def to_seconds(self, day_seconds: float) -> float:
        return self.seconds + self.days * day_seconds


def _parse_duration(value) -> Duration:
    if isinstance(value, bool):
        raise ValueError(f"expected hours or a duration like \"4h\", \"30m\", \"3d\", got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"must be positive, got {value!r}")
        return Duration(seconds=float(value) * 3600, plain_number=True)
    if not isinstance(value, str):
        raise ValueError(f"expected hours or a duration like \"4h\", \"30m\", \"3d\", got {value!r}")
    s = value.strip().lower().replace(" ", "")
    parts = _DUR_RE.findall(s)
    if not s or "".join(a + u for a, u in parts) != s:
        raise ValueError(f"not a duration: {value!r} (a number of business hours, or like \"30m\", "
                         "\"4h\", \"1.5h\", \"3d\", \"1d4h\")")
    units = [u for _, u in parts]
    if len(set(units)) != len(units):
        raise ValueError(f"unit given twice in {value!r}")
    secs = sum(float(a) * (3600 if u == "h" else 60) for a, u in parts if u != "d")
    days = sum(float(a) for a, u in parts if u == "d")
    if secs + days <= 0:
        raise ValueError(f"must be positive, got {value!r}")
    return Duration(seconds=secs, days=days)


def parse_duration(value, day_seconds: float) -> float:
    """A configured duration -> business seconds: a number is hours; "30m", "4h", "1.5h", "3d"
    (d = ``day_seconds`` each), "1d4h". Raises ``ValueError`` with the reason."""
    return _parse_duration(value).to_seconds(day_seconds)


def _default_durations() -> dict[str, dict[str, Duration]]:
    out = {c: {p: _parse_duration(v) for p, v in t.items()} for c, t in DEFAULT_SLA.items()}
    # the built-in table's numbers are not the admin's: they never raise the "numbers" warning
    return {c: {p: Duration(d.seconds, d.days) for p, d in t.items()} for c, t in out.items()}


@dataclass(frozen=True)
class SlaPolicy:
    """Targets per clock and priority with tier and category overrides, and the calendar per clock.

    Precedence for one (clock, priority): ``[sla.category.C]`` beats ``[sla.TIER]`` beats ``[sla]``
    beats the built-in defaults; each override table may name only some clocks and priorities.
    Calendar: ``[sla] calendar`` for the priority beats the mailbox's ``calendar`` beats the default.
    An unknown priority is treated as ``normal``.
    """

    defaults: dict[str, dict[str, Duration]]
    tiers: dict[str, dict[str, dict[str, Duration]]] = field(default_factory=dict)
    categories: dict[str, dict[str, dict[str, Duration]]] = field(default_factory=dict)
    priority_calendars: dict[str, str] = field(default_factory=dict)
    mailbox_calendars: dict[str, str] = field(default_factory=dict)
    calendars: dict[str, Calendar] = field(default_factory=dict)
    plain_numbers: bool = False  # the config used a bare number somewhere ("now business hours")

    def calendar_for(self, priority: str | None, mailbox: str | None = None) -> Calendar:
        p = _priority(priority)
        name = self.priority_calendars.get(p) or self.mailbox_calendars.get(mailbox or "") or "default"
        return self.calendars.get(name) or self.calendars["default"]

    def duration(self, clock: str, priority: str | None, tier: str | None = None,
                 category: str | None = None) -> Duration:
        p = _priority(priority)
        for table in (self.categories.get(category or ""), self.tiers.get(tier or "")):
            if table and p in table.get(clock, {}):
                return table[clock][p]
        return self.defaults[clock][p]

    def targets(self, priority: str | None, tier: str | None = None, category: str | None = None,
                mailbox: str | None = None) -> dict[str, float]:
        """Business seconds per clock; "d" is sized by ``calendar_for(priority, mailbox)``."""
        day = self.calendar_for(priority, mailbox).day_seconds()
        return {c: self.duration(c, priority, tier, category).to_seconds(day) for c in CLOCKS}


def _priority(p: str | None) -> str:
    p = (p or "normal").casefold()
    return p if p in PRIORITIES else "normal"


_CLOCK_KEYS = {f"{c}_hours": c for c in CLOCKS}


def parse_sla(sla_table: dict | None, calendars: Mapping[str, Calendar], mailbox_calendars: Mapping[str, str],
              fname: str, tiers: Iterable[str] = TIERS) -> tuple[SlaPolicy, list[str]]:
    """``[sla]`` (with ``[sla.TIER]`` and ``[sla.category.NAME]``) -> (SlaPolicy, problems).

    ``mailbox_calendars`` maps a mailbox name to the calendar name its ``calendar`` key gives; an
    unknown one is reported as ``mailbox.NAME.calendar``.
    """
    problems: list[str] = []
    tiers = tuple(tiers)
    plain = False

    def err(key: str, reason: str) -> None:
        problems.append(f"{fname}: {key}: {reason}")

    def clock_tables(t: dict, prefix: str, allowed_extra: set[str]) -> dict[str, dict[str, Duration]]:
        nonlocal plain
        out: dict[str, dict[str, Duration]] = {}
        for k, v in t.items():
            if k in allowed_extra:
                continue
            clock = _CLOCK_KEYS.get(k)
            if clock is None:
                err(f"{prefix}{k}", f"unknown key (known: {', '.join(sorted(set(_CLOCK_KEYS) | allowed_extra))})")
                continue
            if not isinstance(v, dict):
                err(f"{prefix}{k}", 'must be a table of priority = duration, like { high = "4h" }')
                continue
            for p, dur in v.items():
                if p not in PRIORITIES:
                    err(f"{prefix}{k}.{p}", f"unknown priority (one of {', '.join(PRIORITIES)})")
                    continue
                try:
                    d = _parse_duration(dur)
                except ValueError as e:
                    err(f"{prefix}{k}.{p}", str(e))
                    continue
                plain = plain or d.plain_number
                out.setdefault(clock, {})[p] = d
        return out

    t = sla_table or {}
    if not isinstance(t, dict):
        err("sla", "must be a table")
        t = {}
    extra = {"calendar", "category", *tiers}
    base = clock_tables(t, "sla.", extra)
    defaults = _default_durations()
    for c, per in base.items():
        defaults[c].update(per)

    tier_tables: dict[str, dict[str, dict[str, Duration]]] = {}
    for tier in tiers:
        if tier in t:
            if not isinstance(t[tier], dict):
                err(f"sla.{tier}", "must be a table ([sla.TIER])")
            else:
                tier_tables[tier] = clock_tables(t[tier], f"sla.{tier}.", set())

    cat_tables: dict[str, dict[str, dict[str, Duration]]] = {}
    cats = t.get("category", {})
    if not isinstance(cats, dict):
        err("sla.category", "must be a table of [sla.category.NAME] tables")
    else:
        for name, ct in cats.items():
            if not isinstance(ct, dict):
                err(f"sla.category.{name}", "must be a table ([sla.category.NAME])")
            else:
                cat_tables[name.casefold()] = clock_tables(ct, f"sla.category.{name}.", set())

    pcal: dict[str, str] = {}
    pc = t.get("calendar", {})
    if not isinstance(pc, dict):
        err("sla.calendar", 'must be a table of priority = calendar name, like { urgent = "24x7" }')
    else:
        for p, name in pc.items():
            if p not in PRIORITIES:
                err(f"sla.calendar.{p}", f"unknown priority (one of {', '.join(PRIORITIES)})")
            elif not isinstance(name, str) or name not in calendars:
                err(f"sla.calendar.{p}", f"unknown calendar {name!r} (defined: {', '.join(calendars)})")
            else:
                pcal[p] = name
    mcal: dict[str, str] = {}
    for mb, name in (mailbox_calendars or {}).items():
        if not name:
            continue
        if name not in calendars:
            err(f"mailbox.{mb}.calendar", f"unknown calendar {name!r} (defined: {', '.join(calendars)})")
        else:
            mcal[mb] = name
    policy = SlaPolicy(defaults=defaults, tiers=tier_tables, categories=cat_tables, priority_calendars=pcal,
                       mailbox_calendars=mcal, calendars=dict(calendars), plain_numbers=plain)
    return policy, problems


# ---------------------------------------------------------------------------------------------------
# Explain


def fmt_duration(seconds: float) -> str:
    """3600 -> "1h", 5400 -> "1h30m", 90 -> "1m30s", 0 -> "0m"."""
    neg = seconds < 0
    s = round(abs(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    out = (f"{h}h" if h else "") + (f"{m}m" if m or (not h and not sec) else "") + (f"{sec}s" if sec else "")
    return ("-" if neg else "") + out


def _hm(cal: Calendar, t: datetime, day: date) -> str:
    lt = t.astimezone(cal.tz)
    return "24:00" if lt.date() > day else lt.strftime("%H:%M")


def explain_add(calendar: Calendar, start: datetime, seconds: float) -> list[str]:
    """Human steps of ``calendar.add(start, seconds)`` for ``mailflow sla explain``: the days that
    count, the days skipped and why, and the due time, in the calendar's local time."""
    cal = calendar
    ls = cal.local(start)
    lines = [f"start {ls:%Y-%m-%d %H:%M} ({cal.timezone}), {ls:%a}",
             f"business time to add: {fmt_duration(seconds)} (calendar {cal.name})"]
    if seconds <= 0:
        lines.append(f"due {ls:%Y-%m-%d %H:%M} ({cal.timezone}), {ls:%a}")
        return lines
    left = _td(seconds)
    t = _utc(start)
    d = ls.date()
    off: list[DayInfo] = []

    def flush_off() -> None:
        if not off:
            return
        first, last = off[0].day, off[-1].day
        rng = f"{first} {first:%a}" if first == last else f"{first}..{last} ({len(off)} days)"
        names: list[str] = []
        for info in off:
            if info.kind in ("holiday", "break") and info.reason not in names:
                names.append(info.reason)
        kinds = {info.kind for info in off}
        parts = [f"public holiday ({', '.join(names)})"] if names else []
        parts += [label for kind, label in (("extra_holiday", "extra holiday"), ("weekend", "weekend"),
                                            ("moved", "days off moved from make-up workdays"))
                  if kind in kinds]
        lines.append(f"{rng}: {' + '.join(parts)} skipped")
        off.clear()

    for _ in range(SEARCH_DAYS):
        info = cal.day_info(d)
        spans = cal._day(d)
        if not spans:
            off.append(info)
            d += _DAY
            continue
        used: list[str] = []
        got = _ZERO
        due = None
        for s, e in spans:
            if e <= t:
                continue
            a = max(s, t)
            take = min(e - a, left)
            used.append(f"{_hm(cal, a, d)}-{_hm(cal, a + take, d)}")
            got += take
            left -= take
            if left <= _ZERO:
                due = a + take
                break
        if used:
            flush_off()
            kind = {"makeup": "make-up workday ", "extra_workday": "extra workday "}.get(info.kind, "")
            lines.append(f"{d} {d:%a}: {kind}{fmt_duration(got.total_seconds())} ({', '.join(used)})")
        if due is not None:
            ld = cal.local(due)
            lines.append(f"due {ld:%Y-%m-%d %H:%M} ({cal.timezone}), {ld:%a}")
            return lines
        d += _DAY
    raise CalendarError(f"calendar {cal.name}: no working time within {SEARCH_DAYS} days of {start.date()}")


# ---------------------------------------------------------------------------------------------------
# Clocks

EVENT_KINDS = ("created", "staff_public", "customer_mail", "pending_on", "pending_off", "resolved",
               "reopened", "closed", "targets")
STATES = ("idle", "running", "overdue", "paused", "met", "missed")


@dataclass(frozen=True)
class ClockEvent:
    """One thing that happened to a ticket, as the clocks see it (the lead maps ticket history to these).

    ``targets``: business seconds per clock name, for ``created`` and ``targets`` (priority, tier or
    category changed). ``calendar``: the calendar from then on (optional; else the previous one).
    """

    at: datetime
    kind: str
    targets: dict[str, float] | None = None
    calendar: Calendar | None = None


@dataclass(frozen=True)
class Clock:
    """One SLA clock as of ``as_of``.

    state:
      idle     never started (next_response before the first customer reply after a first response)
      running  counting, not yet due
      overdue  counting and past due (breached)
      paused   not counting (pending); ``breached`` tells whether it was already past due
      met      stopped at or before due
      missed   stopped after due (breached)
    ``breached``: the due instant came while the clock ran (now, or before it stopped or paused).
    ``due``: when the target runs out; for a breached clock the instant it ran out (in the past,
    possibly before a ``targets`` event that lowered the target); ``None`` while paused (the
    remaining time is frozen) and for idle clocks. A met clock keeps the due it would have had.
    ``elapsed_seconds``/``remaining_seconds``/``target_seconds``: business seconds; remaining may
    be negative. ``cycle``: 0 idle, then 1, 2, ...; resolution's cycle grows with every reopen while
    its elapsed time keeps accumulating, so the escalation ledger key (ticket, clock, cycle, rule)
    fires once per reopen. ``stopped_by``: the event kind that stopped it (staff_public, resolved,
    closed).
    """

    name: str
    cycle: int
    state: str
    started_at: datetime | None
    due: datetime | None
    target_seconds: float | None
    elapsed_seconds: float
    remaining_seconds: float | None
    paused_spans: tuple[tuple[datetime, datetime | None], ...]
    stopped_at: datetime | None
    stopped_by: str | None
    breached: bool
    breached_at: datetime | None
    as_of: datetime
    calendar: Calendar | None = field(default=None, compare=False, repr=False)

    @property
    def running(self) -> bool:
        """Counting business time now (running or overdue)."""
        return self.state in ("running", "overdue")

    def at(self, now: datetime) -> Clock:
        """The same clock advanced to ``now`` (no events in between): only counting clocks change."""
        now = _utc(now)
        if now <= self.as_of:
            return self
        if not self.running:
            return replace(self, as_of=now)
        if self.calendar is None:
            raise CalendarError(f"clock {self.name}: no calendar to advance it (from_json needs calendars)")
        elapsed = self.elapsed_seconds + self.calendar.between(self.as_of, now)
        breached = self.breached or (self.due is not None and self.due <= now)
        rem = None if self.target_seconds is None else self.target_seconds - elapsed
        return Clock(self.name, self.cycle, "overdue" if breached else "running", self.started_at, self.due,
                     self.target_seconds, elapsed, rem, self.paused_spans, None, None, breached,
                     self.due if breached else None, now, self.calendar)


class _ClockState:
    """Mutable bookkeeping of one clock while compute_clocks replays the events."""

    __slots__ = ("name", "cycle", "target", "policy_target", "closed", "done", "open_start", "open_cal",
                 "started_at", "stopped_at", "stopped_by", "paused", "active")

    def __init__(self, name: str):
        self.name = name
        self.cycle = 0
        self.target: timedelta | None = None  # of the current cycle
        self.policy_target: timedelta | None = None  # in force now, for future cycles
        self.closed = _ZERO  # elapsed in closed segments
        self.done: list[tuple[datetime, datetime, Calendar, timedelta]] = []  # closed segments
        self.open_start: datetime | None = None
        self.open_cal: Calendar | None = None
        self.started_at: datetime | None = None
        self.stopped_at: datetime | None = None
        self.stopped_by: str | None = None
        self.paused: list[list] = []  # [start, end | None]
        self.active = False  # started and not stopped

    # segments
    def _open(self, t: datetime, cal: Calendar) -> None:
        self.open_start, self.open_cal = t, cal

    def _close(self, t: datetime) -> None:
        if self.open_start is not None:
            el = self.open_cal._between_td(self.open_start, t)
            if t > self.open_start:
                self.done.append((self.open_start, t, self.open_cal, el))
            self.closed += el
            self.open_start = self.open_cal = None

    # transitions
    def start(self, t: datetime, cal: Calendar, paused: bool, fresh: bool) -> None:
        self.cycle += 1
        if fresh:
            self.closed, self.done, self.paused = _ZERO, [], []
            self.started_at = t
        self.target = self.policy_target
        self.stopped_at = self.stopped_by = None
        self.active = True
        if paused:
            self.paused.append([t, None])
        else:
            self._open(t, cal)

    def pause(self, t: datetime) -> None:
        if self.active and self.open_start is not None:
            self._close(t)
            self.paused.append([t, None])

    def resume(self, t: datetime, cal: Calendar) -> None:
        if self.active and self.open_start is None:
            if self.paused and self.paused[-1][1] is None:
                self.paused[-1][1] = t
            self._open(t, cal)

    def stop(self, t: datetime, by: str) -> None:
        if not self.active:
            return
        self._close(t)
        if self.paused and self.paused[-1][1] is None:
            self.paused[-1][1] = t
        self.active = False
        self.stopped_at, self.stopped_by = t, by

    def recalendar(self, t: datetime, cal: Calendar) -> None:
        if self.open_start is not None and self.open_cal is not cal:
            self._close(t)
            self._open(t, cal)

    def set_target(self, target: timedelta | None) -> None:
        self.policy_target = target
        if self.active or self.cycle == 0:
            self.target = target

    # output
    def _instant_at(self, x: timedelta) -> datetime | None:
        """When the clock's elapsed business time reached (or will reach, if counting) ``x``."""
        cum = _ZERO
        for s, _e, cal, el in self.done:
            if cum + el >= x:
                return cal._add_td(s, x - cum) if x > cum else s
            cum += el
        if self.open_start is not None:
            return self.open_cal._add_td(self.open_start, x - cum) if x > cum else self.open_start
        return None

    def snapshot(self, now: datetime, cal: Calendar) -> Clock:
        paused_spans = tuple((a, b) for a, b in self.paused)
        if self.cycle == 0:
            tgt = None if self.target is None else self.target.total_seconds()
            return Clock(self.name, 0, "idle", None, None, tgt, 0.0, tgt, (), None, None, False, None, now, cal)
        elapsed = self.closed
        if self.open_start is not None:
            elapsed += self.open_cal._between_td(self.open_start, now)
        tgt = self.target
        due = breached_at = None
        breached = False
        if tgt is not None:
            crossing = self._instant_at(tgt)
            if self.open_start is not None:  # counting
                due = crossing
                breached = crossing is not None and crossing <= now
            else:  # paused or stopped: breached only if it ran out before the clock stopped counting
                end = self.done[-1][1] if self.done else None
                breached = crossing is not None and end is not None and crossing < end
                if not self.active:
                    if crossing is not None and (breached or crossing == end):
                        due = crossing
                    else:  # met: the due it had when it last counted
                        base = end or self.started_at
                        base_cal = self.done[-1][2] if self.done else cal
                        if base is not None:
                            due = base_cal._add_td(base, tgt - elapsed)
            breached_at = crossing if breached else None
        if self.active:
            counting = self.open_start is not None
            state = ("overdue" if breached else "running") if counting else "paused"
        else:
            state = "missed" if breached else "met"
        clock_cal = self.open_cal or (self.done[-1][2] if self.done else cal)
        return Clock(self.name, self.cycle, state, self.started_at, due,
                     None if tgt is None else tgt.total_seconds(), elapsed.total_seconds(),
                     None if tgt is None else (tgt - elapsed).total_seconds(), paused_spans,
                     self.stopped_at, self.stopped_by, breached, breached_at, now, clock_cal)


def _target(targets: dict[str, float] | None, name: str, old: timedelta | None) -> timedelta | None:
    if not targets or name not in targets or targets[name] is None:
        return old
    return _td(float(targets[name]))


def compute_clocks(events: list[ClockEvent], now: datetime, default_calendar: Calendar) -> dict[str, Clock]:
    """Replay a ticket's clock events up to ``now`` into its three clocks.

    - first_response: starts at ``created``, stopped by the first ``staff_public``; one cycle; nothing
      pauses it (as Zendesk and Freshdesk do: waiting for the customer does not excuse the first reply).
    - next_response: a ``customer_mail`` starts a cycle when none is running, the first response has
      been given (before that, the first_response clock covers the unanswered mail: no double
      escalation) and the ticket is not resolved or closed (a "thanks" on a resolved ticket asks for
      nothing; a ``reopened`` at the same instant as the mail starts it after all). A running cycle
      keeps its start (the oldest unanswered mail counts); the next ``staff_public`` stops it.
      Pending pauses it.
    - resolution: starts at ``created``; pending pauses it; ``resolved`` stops it; ``reopened`` resumes
      it as a new cycle with the time already used still counting.
    - ``closed`` stops every clock (met or missed by its elapsed time; ``stopped_by`` says closed).
    - ``targets`` gives running clocks their new target (elapsed kept; the due follows); stopped
      clocks keep their outcome; later cycles use the new targets. A ``calendar`` on ``created`` or
      ``targets`` applies from that instant on (time before it stays measured by the old one).

    Events after ``now`` are ignored; events are taken in time order (stable for equal times).
    """
    for ev in events:
        if ev.kind not in EVENT_KINDS:
            raise ValueError(f"unknown clock event kind {ev.kind!r} (one of {', '.join(EVENT_KINDS)})")
    now = _utc(now)
    evs = sorted(((_utc(e.at), e) for e in events), key=lambda p: p[0])
    fr, nr, rs = _ClockState("first_response"), _ClockState("next_response"), _ClockState("resolution")
    clocks = (fr, nr, rs)
    cal = default_calendar
    created = False
    status = "open"  # open | resolved | closed
    pending = False
    ignored_mail_at: datetime | None = None
    for t, ev in evs:
        if t > now:
            break
        k = ev.kind
        if k == "created":
            if created:
                continue
            created = True
            cal = ev.calendar or cal
            for c in clocks:
                c.set_target(_target(ev.targets, c.name, None))
            fr.start(t, cal, paused=False, fresh=True)
            rs.start(t, cal, paused=False, fresh=True)
            continue
        if not created:
            continue
        if k == "targets":
            if ev.calendar is not None and ev.calendar is not cal:
                cal = ev.calendar
                for c in clocks:
                    c.recalendar(t, cal)
            for c in clocks:
                c.set_target(_target(ev.targets, c.name, c.policy_target))
        elif k == "staff_public":
            fr.stop(t, k)
            nr.stop(t, k)
        elif k == "customer_mail":
            if status != "open":
                ignored_mail_at = t
            elif not nr.active and not fr.active:
                nr.start(t, cal, paused=pending, fresh=True)
        elif k == "pending_on":
            if status == "open" and not pending:
                pending = True
                nr.pause(t)
                rs.pause(t)
        elif k == "pending_off":
            if pending:
                pending = False
                nr.resume(t, cal)
                rs.resume(t, cal)
        elif k in ("resolved", "closed"):
            pending = False
            rs.stop(t, k)
            nr.stop(t, k)
            if k == "closed":
                fr.stop(t, k)
            status = "resolved" if k == "resolved" else "closed"
        elif k == "reopened":
            if status == "open":
                continue
            status = "open"
            if not rs.active and rs.cycle:
                rs.start(t, cal, paused=False, fresh=False)
            if ignored_mail_at == t and not nr.active and not fr.active:
                nr.start(t, cal, paused=False, fresh=True)
    return {c.name: c.snapshot(now, cal) for c in clocks}


def next_wakeup(clocks: Mapping[str, Clock] | Iterable[Clock], now: datetime,
                thresholds: Iterable[float] = (0.8, 1.0, 2.0)) -> datetime | None:
    """The earliest instant after ``now`` at which a counting clock's elapsed/target reaches one of
    ``thresholds`` (80% reminder, breach at due, twice the target); None if no clock will."""
    items = clocks.values() if isinstance(clocks, Mapping) else clocks
    now = _utc(now)
    best: datetime | None = None
    ths = sorted(set(thresholds))
    for c in items:
        if not c.running or not c.target_seconds or c.calendar is None:
            continue
        c = c.at(now) if now > c.as_of else c
        for r in ths:
            left = r * c.target_seconds - c.elapsed_seconds
            if left <= 0:
                continue
            t = c.calendar.add(now, left)
            if best is None or t < best:
                best = t
            break  # higher thresholds come later for this clock
    return best


def timer_facts(clocks: Mapping[str, Clock], now: datetime) -> dict[str, object]:
    """Rule facts per clock, in business hours: ``sla.<clock>.breached|running|cycle|remaining_hours|
    elapsed_ratio|breached_hours``, plus the flat ``sla.<clock>_breached`` aliases of milestone 1.

    Non-counting clocks report their frozen values (idle: remaining = the full target), so rules
    about remaining time should also test ``sla.<clock>.running``.
    """
    out: dict[str, object] = {}
    now = _utc(now)
    for name in CLOCKS:
        c = clocks.get(name)
        if c is None:
            continue
        c = c.at(now) if c.running and now > c.as_of else c
        tgt = c.target_seconds
        p = f"sla.{name}."
        out[p + "breached"] = c.breached
        out[p + "running"] = c.running
        out[p + "cycle"] = c.cycle
        out[p + "remaining_hours"] = round((c.remaining_seconds or 0.0) / 3600, 4) if tgt else 0.0
        out[p + "elapsed_ratio"] = round(c.elapsed_seconds / tgt, 4) if tgt else 0.0
        out[p + "breached_hours"] = round(max(0.0, c.elapsed_seconds - tgt) / 3600, 4) if tgt else 0.0
        out[f"sla.{name}_breached"] = c.breached
    return out


# ---------------------------------------------------------------------------------------------------
# JSON: ISO 8601 with offset (UTC), business time in seconds (floats)


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat()


def _dt(s: str | None) -> datetime | None:
    return None if s is None else datetime.fromisoformat(s)


def to_json(clock: Clock) -> dict:
    """A clock as a compact JSON-able dict: datetimes as ISO 8601 in UTC with offset, business time
    in seconds (floats). Keys whose value is None, False or empty are left out, and
    ``remaining_seconds`` (target - elapsed) is not stored: ``from_json`` restores them."""
    d = {
        "name": clock.name, "cycle": clock.cycle, "state": clock.state,
        "started_at": _iso(clock.started_at), "due": _iso(clock.due),
        "target_seconds": clock.target_seconds, "elapsed_seconds": clock.elapsed_seconds,
        "paused_spans": [[_iso(a), _iso(b)] for a, b in clock.paused_spans],
        "stopped_at": _iso(clock.stopped_at), "stopped_by": clock.stopped_by,
        "breached": clock.breached, "breached_at": _iso(clock.breached_at),
        "as_of": _iso(clock.as_of), "calendar": clock.calendar.name if clock.calendar else None,
    }
    return {k: v for k, v in d.items() if v is not None and v is not False and v != []}


def from_json(d: Mapping, calendars: Mapping[str, Calendar] | None = None) -> Clock:
    """Inverse of ``to_json``; ``calendars`` resolves the calendar name (needed to advance a
    running clock with ``Clock.at``; an unknown name leaves ``calendar`` None)."""
    cal = (calendars or {}).get(d.get("calendar") or "")
    target = d.get("target_seconds")
    elapsed = float(d.get("elapsed_seconds") or 0.0)
    return Clock(
        name=d["name"], cycle=int(d.get("cycle") or 0), state=d["state"], started_at=_dt(d.get("started_at")),
        due=_dt(d.get("due")), target_seconds=target, elapsed_seconds=elapsed,
        remaining_seconds=None if target is None else target - elapsed,
        paused_spans=tuple((_dt(a), _dt(b)) for a, b in d.get("paused_spans") or ()),
        stopped_at=_dt(d.get("stopped_at")), stopped_by=d.get("stopped_by"), breached=bool(d.get("breached")),
        breached_at=_dt(d.get("breached_at")), as_of=_dt(d["as_of"]), calendar=cal,
    )
