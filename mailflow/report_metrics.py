"""Report periods and figures (DESIGN.md section 11) from ticket summaries, in one streaming pass.

`compute` reads each summary once (`mailflow.summary`) and adds it to per-period accumulators; it keeps
no summary, only counters, the hour values the percentiles need and, when asked, one row per ticket of
the report's own period (the CSV). Every figure of a period is computed from what was known at the
period's end (or now, while it runs): events after it are ignored, so a month's figures do not change
when a ticket is reopened later, and the "previous" figures of one report are those the report of the
previous period printed.

Which tickets count where (the README's "Reports" section says the same for users):

- volume (`tickets_new`, by category/priority/mailbox/language/tag, daily): created in the period;
- `backlog_end`: new, open or pending at the period's end;
- response and resolution figures (first reply and full resolution time, SLA attainment, one-touch,
  reopen rate, survey response rate, `handled` per team/agent): tickets whose last resolution up to
  the period's end lies in the period and that were still resolved or closed (not merged or spam) at
  its end. A resolution is a move to resolved, or a close by staff of a ticket that was not resolved;
- CSAT: the last rating in the period of each ticket rated in the period;
- escalations: escalation events in the period.

Breakdowns use the ticket's category, priority, team and assignee as they are now.
"""

from __future__ import annotations

import bisect
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from mailflow.summary import CLOCKS, NOT_RESOLVED, VERSION

OPEN = ("new", "open", "pending")
DIMENSIONS = ("team", "agent", "category", "mailbox", "tag")
_DIM_KEY = {"team": "team", "agent": "agent", "category": "cat", "mailbox": "mb"}
TREND = 6  # periods in the CSAT trend, this one included
# first-reply distribution: bucket edges in business hours
BUCKETS = (0, 1, 2, 4, 8, 16, 24, 48)
NONE = "-"  # the key of tickets without a team, agent, category, mailbox


class PeriodError(ValueError):
    """A period that cannot be reported on (malformed, in the future); the message is one line."""


# ---------------------------------------------------------------------------------------------------
# periods


def _add_months(d: date, n: int) -> date:
    m = d.year * 12 + d.month - 1 + n
    return date(m // 12, m % 12 + 1, 1)


@dataclass(frozen=True)
class Period:
    """Local dates `first`..`last` (inclusive) in `timezone`; instants are [first 00:00, last+1 00:00)."""

    kind: str  # month | week | range
    first: date
    last: date
    timezone: str

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def label(self) -> str:
        if self.kind == "month":
            return f"{self.first:%Y-%m}"
        if self.kind == "week":
            y, w, _ = self.first.isocalendar()
            return f"{y}-W{w:02d}"
        return f"{self.first.isoformat()}..{self.last.isoformat()}"

    @property
    def file_label(self) -> str:
        return self.label.replace("..", "_")

    def _midnight(self, d: date) -> datetime:
        return datetime.combine(d, time(0), tzinfo=self.tz)

    @property
    def start(self) -> datetime:
        return self._midnight(self.first)

    @property
    def end(self) -> datetime:
        return self._midnight(self.last + timedelta(days=1))

    @property
    def days(self) -> list[date]:
        return [self.first + timedelta(days=i) for i in range((self.last - self.first).days + 1)]

    def shifted(self, n: int) -> Period:
        """The period `n` periods later (negative: earlier), of the same kind and length."""
        if self.kind == "month":
            first = _add_months(self.first, n)
            return Period("month", first, _add_months(first, 1) - timedelta(days=1), self.timezone)
        length = (self.last - self.first).days + 1
        step = timedelta(days=7 * n if self.kind == "week" else length * n)
        return Period(self.kind, self.first + step, self.last + step, self.timezone)

    def previous(self) -> Period:
        return self.shifted(-1)

    def to_json(self) -> dict:
        return {"from": self.first.isoformat(), "to": self.last.isoformat(), "timezone": self.timezone,
                "kind": self.kind, "label": self.label}


def month_period(year: int, month: int, timezone: str) -> Period:
    first = date(year, month, 1)
    return Period("month", first, _add_months(first, 1) - timedelta(days=1), timezone)


def week_period(year: int, week: int, timezone: str) -> Period:
    first = date.fromisocalendar(year, week, 1)
    return Period("week", first, first + timedelta(days=6), timezone)


def last_complete(kind: str, now: datetime, timezone: str) -> Period:
    """The latest month or ISO week that has ended as of `now` (in `timezone`)."""
    today = now.astimezone(ZoneInfo(timezone)).date()
    if kind == "month":
        prev = _add_months(today.replace(day=1), -1)
        return month_period(prev.year, prev.month, timezone)
    monday = today - timedelta(days=today.weekday())
    y, w, _ = (monday - timedelta(days=7)).isocalendar()
    return week_period(y, w, timezone)


_MONTH = re.compile(r"(\d{4})-(\d{1,2})")
_WEEK = re.compile(r"(\d{4})-?[Ww](\d{1,2})")


def _date(value: str, opt: str) -> date:
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise PeriodError(f"{opt}: not a date like 2026-11-01: {value!r}") from None


def parse_period(now: datetime, timezone: str, month: str | None = None, week: str | None = None,
                 date_from: str | None = None, date_to: str | None = None) -> Period:
    """The period the `report` options name (default: last month as of `now`); PeriodError (one line)
    for malformed values, more than one kind of period, or a period that has not started yet."""
    given = [o for o, v in (("--month", month), ("--week", week), ("--from/--to", date_from or date_to)) if v]
    if len(given) > 1:
        raise PeriodError(f"give only one of --month, --week or --from/--to (got {' and '.join(given)})")
    if month:
        m = _MONTH.fullmatch(month.strip())
        if not m or not 1 <= int(m.group(2)) <= 12:
            raise PeriodError(f"--month: not a month like 2026-11: {month!r}")
        period = month_period(int(m.group(1)), int(m.group(2)), timezone)
        what = f"--month {period.label}"
    elif week:
        m = _WEEK.fullmatch(week.strip())
        try:
            period = week_period(int(m.group(1)), int(m.group(2)), timezone) if m else None
        except ValueError:
            period = None
        if period is None:
            raise PeriodError(f"--week: not an ISO week like 2026-W48: {week!r}")
        what = f"--week {period.label}"
    elif date_from or date_to:
        if not (date_from and date_to):
            raise PeriodError("--from and --to go together (both dates are included)")
        a, b = _date(date_from, "--from"), _date(date_to, "--to")
        if a > b:
            raise PeriodError(f"--from {a} is after --to {b}")
        if (b - a).days > 3660:
            raise PeriodError(f"--from {a} --to {b}: at most 10 years")
        period = Period("range", a, b, timezone)
        what = f"--from {a}"
    else:
        return last_complete("month", now, timezone)
    today = now.astimezone(ZoneInfo(timezone)).date()
    if period.first > today:
        raise PeriodError(f"{what} is in the future (today is {today} in {timezone})")
    return period


# ---------------------------------------------------------------------------------------------------
# statistics


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile with linear interpolation between the closest ranks (numpy's default)."""
    if not values:
        return None
    v = sorted(values)
    pos = (len(v) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def _r(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(x, nd)


def pct(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 1) if whole else None


def _hours(values: list[float]) -> dict:
    return {"median": _r(percentile(values, 0.5)), "p90": _r(percentile(values, 0.9)), "count": len(values)}


def _attain(ab: list[int]) -> dict:
    return {"achieved": ab[0], "breached": ab[1], "pct": pct(ab[0], ab[0] + ab[1])}


def _csat(scores: list[int]) -> dict:
    good = sum(1 for s in scores if s >= 4)
    return {"pct": pct(good, len(scores)), "mean": _r(sum(scores) / len(scores)) if scores else None,
            "ratings": len(scores)}


def _sorted_counts(c: Counter) -> dict:
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], str(kv[0]))))


# ---------------------------------------------------------------------------------------------------
# accumulators


class _Group:
    """Figures of one team, agent, category, mailbox or tag within a period."""

    __slots__ = ("new", "handled", "backlog", "fr", "rs", "ok", "bad", "scores")

    def __init__(self) -> None:
        self.new = self.handled = self.backlog = self.ok = self.bad = 0
        self.fr: list[float] = []
        self.rs: list[float] = []
        self.scores: list[int] = []

    def figures(self) -> dict:
        c = _csat(self.scores)
        return {"tickets_new": self.new, "handled": self.handled, "backlog_end": self.backlog,
                "first_reply_median": _r(percentile(self.fr, 0.5)),
                "resolution_median": _r(percentile(self.rs, 0.5)),
                "sla_pct": pct(self.ok, self.ok + self.bad), "csat_pct": c["pct"], "csat_mean": c["mean"],
                "ratings": c["ratings"]}


@dataclass
class _Acc:
    """Every figure of one period, as counters and lists."""

    period: Period
    cut: int  # the period's end, or now + 1 s while it runs: events before it count
    full: bool = True  # False: only CSAT (older periods of the trend)
    new: int = 0
    by_category: Counter = field(default_factory=Counter)
    by_priority: Counter = field(default_factory=Counter)
    by_mailbox: Counter = field(default_factory=Counter)
    by_language: Counter = field(default_factory=Counter)
    tags: Counter = field(default_factory=Counter)
    backlog: int = 0
    resolved: int = 0
    fr: list[float] = field(default_factory=list)
    rs: list[float] = field(default_factory=list)
    sla: dict = field(default_factory=lambda: {c: [0, 0] for c in CLOCKS})
    sla_prio: dict = field(default_factory=dict)
    one_touch: int = 0
    reopened: int = 0
    resolved_rated: int = 0
    escalations: int = 0
    scores: list[int] = field(default_factory=list)
    groups: dict = field(default_factory=lambda: {d: {} for d in DIMENSIONS})
    day_edges: list[int] = field(default_factory=list)
    daily_new: list[int] = field(default_factory=list)
    daily_res: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.start = int(self.period.start.timestamp())
        self.end = int(self.period.end.timestamp())
        tz = self.period.tz
        self.day_edges = [int(datetime.combine(d, time(0), tzinfo=tz).timestamp()) for d in self.period.days]
        self.daily_new = [0] * len(self.day_edges)
        self.daily_res = [0] * len(self.day_edges)

    def day(self, ts: int) -> int:
        return bisect.bisect_right(self.day_edges, ts) - 1

    def group(self, dim: str, key: str) -> _Group:
        g = self.groups[dim].get(key)
        if g is None:
            g = self.groups[dim][key] = _Group()
        return g


@dataclass(slots=True)
class _State:
    """A ticket as it stood at a cut-off: status, resolution counted there, reopens, last rating."""

    status: str | None
    note: str
    status_at: int | None
    reopens: int
    resolution: list | None  # the `res` entry counted at the cut-off, or None
    rating: list | None  # [at, score] of the last rating before the cut-off


def state_at(s: dict, cut: int) -> _State:
    status, note, at, reopens = None, "", None, 0
    for h_at, h_status, h_note in s["hist"]:
        if h_at >= cut:
            break
        status, note, at = h_status, h_note, h_at
        if h_note == "reopen":
            reopens += 1
    resolution = None
    if status == "resolved" or (status == "closed" and note not in NOT_RESOLVED):
        for r in s["res"]:
            if r[0] >= cut:
                break
            resolution = r
    rating = None
    for r in s["rat"]:
        if r[0] >= cut:
            break
        rating = r
    return _State(status, note, at, reopens, resolution, rating)


def _keys(s: dict, dim: str) -> list[str]:
    if dim == "tag":
        return list(dict.fromkeys(s.get("tags") or []))
    return [s.get(_DIM_KEY[dim]) or NONE]


def _add(acc: _Acc, s: dict, st: _State) -> bool:
    """Add one ticket to a full period; True if it counts anywhere in it."""
    start, cut = acc.start, acc.cut
    created = s["created"]
    is_new = start <= created < cut
    backlog = created < cut and st.status in OPEN
    res = st.resolution if st.resolution is not None and st.resolution[0] >= start else None
    rated = st.rating if st.rating is not None and st.rating[0] >= start else None
    esc = sum(1 for a in s["esc"] if start <= a < cut)
    if not (is_new or backlog or res or rated or esc):
        return False
    groups = [acc.group(d, k) for d in DIMENSIONS for k in _keys(s, d)]
    if is_new:
        acc.new += 1
        acc.by_category[s.get("cat") or NONE] += 1
        acc.by_priority[s.get("prio") or NONE] += 1
        acc.by_mailbox[s.get("mb") or NONE] += 1
        acc.by_language[s.get("lang") or NONE] += 1
        for tag in dict.fromkeys(s.get("tags") or []):
            acc.tags[tag] += 1
        acc.daily_new[acc.day(created)] += 1
        for g in groups:
            g.new += 1
    if backlog:
        acc.backlog += 1
        for g in groups:
            g.backlog += 1
    if res is not None:
        at, hours, touches, fr_ok, rs_ok = res
        acc.resolved += 1
        acc.daily_res[acc.day(at)] += 1
        fr = s["fr"]
        fr_h = fr[1] if fr is not None and fr[0] <= at else None
        if fr_h is not None:
            acc.fr.append(fr_h)
        acc.rs.append(hours)
        if touches == 1:
            acc.one_touch += 1
        if st.reopens:
            acc.reopened += 1
        if st.rating is not None and st.rating[0] >= at:  # the survey of this resolution was answered
            acc.resolved_rated += 1
        prio = acc.sla_prio.setdefault(s.get("prio") or NONE, {c: [0, 0] for c in CLOCKS})
        outcomes = [("first_response", fr_ok), ("resolution", rs_ok),
                    *(("next_response", ok) for n_at, ok in s["nr"] if n_at <= at)]
        ok = bad = 0
        for clock, o in outcomes:
            if o is None:
                continue
            i = 0 if o else 1
            acc.sla[clock][i] += 1
            prio[clock][i] += 1
            if clock != "next_response":
                ok, bad = ok + (1 - i), bad + i
        for g in groups:
            g.handled += 1
            if fr_h is not None:
                g.fr.append(fr_h)
            g.rs.append(hours)
            g.ok += ok
            g.bad += bad
    if rated is not None:
        acc.scores.append(rated[1])
        for g in groups:
            g.scores.append(rated[1])
    acc.escalations += esc
    return True


# ---------------------------------------------------------------------------------------------------
# the result


@dataclass
class Metrics:
    """One report: `data` is what `--format json` prints (every renderer reads only this and `rows`)."""

    data: dict
    rows: list[dict]
    period: Period
    locale: str
    company: str = ""
    team: str | None = None
    by: str | None = None
    staff_names: dict[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return bool(self.data.get("empty"))


def _distribution(values: list[float]) -> list[dict]:
    edges = list(BUCKETS)
    counts = [0] * len(edges)
    for v in values:
        counts[bisect.bisect_right(edges, v) - 1 if v >= 0 else 0] += 1
    out = []
    for i, lo in enumerate(edges):
        hi = edges[i + 1] if i + 1 < len(edges) else None
        out.append({"from": lo, "to": hi, "label": f"{lo}-{hi}" if hi is not None else f"{lo}+",
                    "count": counts[i]})
    return out


def _figures(acc: _Acc, names: dict[str, str]) -> dict:
    def groups(dim: str) -> dict:
        items = sorted(acc.groups[dim].items(), key=lambda kv: (-(kv[1].handled + kv[1].new), str(kv[0])))
        out = {}
        for k, g in items:
            f = g.figures()
            if dim == "agent":
                f = {"name": names.get(k, k) if k != NONE else NONE, **f}
            out[k] = f
        return out

    resolved = acc.resolved
    return {
        "period": acc.period.to_json(),
        "tickets_new": acc.new,
        "tickets_resolved": resolved,
        "backlog_end": acc.backlog,
        "by_category": _sorted_counts(acc.by_category),
        "by_priority": dict(sorted(acc.by_priority.items(), key=lambda kv: _prio_rank(kv[0]))),
        "by_mailbox": _sorted_counts(acc.by_mailbox),
        "by_language": _sorted_counts(acc.by_language),
        "daily": [{"date": d.isoformat(), "new": n, "resolved": r}
                  for d, n, r in zip(acc.period.days, acc.daily_new, acc.daily_res, strict=True)],
        "first_reply_hours": _hours(acc.fr),
        "resolution_hours": _hours(acc.rs),
        "first_reply_distribution": _distribution(acc.fr),
        "sla": {c: _attain(acc.sla[c]) for c in CLOCKS},
        "sla_by_priority": {p: {c: _attain(v[c]) for c in CLOCKS}
                            for p, v in sorted(acc.sla_prio.items(), key=lambda kv: _prio_rank(kv[0]))},
        "one_touch": acc.one_touch,
        "one_touch_pct": pct(acc.one_touch, resolved),
        "reopened": acc.reopened,
        "reopen_rate_pct": pct(acc.reopened, resolved),
        "escalations": acc.escalations,
        "csat": {**_csat(acc.scores), "response_rate_pct": pct(acc.resolved_rated, resolved),
                 "by_score": {str(k): sum(1 for s in acc.scores if s == k) for k in range(1, 6)}},
        "top_tags": [{"tag": t, "count": n} for t, n in sorted(acc.tags.items(), key=lambda kv: (-kv[1], kv[0]))[:10]],
        "by_team": groups("team"),
        "by_agent": groups("agent"),
        "_groups": {d: groups(d) for d in ("category", "mailbox", "tag")},
        "empty": not (acc.new or resolved or acc.backlog or acc.scores or acc.escalations),
    }


_PRIO_ORDER = {"urgent": 0, "high": 1, "normal": 2, "low": 3}


def _prio_rank(p: str) -> tuple[int, str]:
    return (_PRIO_ORDER.get(p, 9), p)


def _diff(now, before):
    """`now - before` for the same shape of figures (None where either is missing)."""
    if isinstance(now, dict) and isinstance(before, dict):
        return {k: _diff(v, before.get(k)) for k, v in now.items()}
    if isinstance(now, bool) or isinstance(before, bool):
        return None
    if isinstance(now, int | float) and isinstance(before, int | float):
        return round(now - before, 2)
    return None


_CHANGE_KEYS = ("tickets_new", "tickets_resolved", "backlog_end", "first_reply_hours", "resolution_hours",
                "sla", "one_touch_pct", "reopen_rate_pct", "escalations", "csat")


def _growth(now: dict, before: dict, n: int = 5) -> list[dict]:
    rows = []
    for cat in {*now, *before}:
        a, b = now.get(cat, 0), before.get(cat, 0)
        if a > b:
            rows.append({"category": cat, "now": a, "previous": b, "change": a - b,
                         "change_pct": pct(a - b, b) if b else None})
    rows.sort(key=lambda r: (-r["change"], r["category"]))
    return rows[:n]


def compute(summaries: Iterable[dict], period: Period, now: datetime, *, team: str | None = None,
            by: str | None = None, rows: bool = False, locale: str = "en", company: str = "",
            staff_names: dict[str, str] | None = None) -> Metrics:
    """Every figure of `period` and of the period before it, and the CSAT of the last TREND periods,
    from one pass over `summaries` (any iterable: a generator streaming the archives is the point).

    `team`: only tickets of that team (a department's own report). `by`: one of DIMENSIONS, added as
    `breakdown`. `rows`: keep one row per ticket of `period` (for the CSV)."""
    if by is not None and by not in DIMENSIONS:
        raise ValueError(f"by must be one of {', '.join(DIMENSIONS)}")
    now_ts = int(now.timestamp()) + 1  # an event at `now` itself has happened
    periods = [period.shifted(k - TREND + 1) for k in range(TREND)]
    accs = [_Acc(p, min(int(p.end.timestamp()), now_ts), full=k >= TREND - 2) for k, p in enumerate(periods)]
    full = [a for a in accs if a.full]
    light = [a for a in accs if not a.full]
    main = accs[-1]
    earliest = accs[0].start
    out_rows: list[dict] = []
    starts = [a.start for a in light]
    light_end = light[-1].cut if light else 0
    for s in summaries:
        created = s.get("created")
        if created is None or created >= main.cut or s.get("v") != VERSION:
            continue
        if team is not None and s.get("team") != team:
            continue
        last_at, still_open = s["last"], s.get("status") in OPEN
        if last_at < earliest and not still_open:
            continue  # everything about it happened before the oldest period
        if light and s["rat"]:  # the older periods of the trend: the last rating in each
            seen: dict[int, int] = {}
            for at, score in s["rat"]:
                if earliest <= at < light_end:
                    seen[bisect.bisect_right(starts, at) - 1] = score
            for i, score in seen.items():
                light[i].scores.append(score)
        for acc in full:
            if created >= acc.cut or (last_at < acc.start and not still_open):
                continue  # created after it, or settled before it began
            st = state_at(s, acc.cut)
            if _add(acc, s, st) and rows and acc is main:
                out_rows.append(_row(s, st, acc))
    names = dict(staff_names or {})
    data = _figures(main, names)
    prev = _figures(accs[-2], names)
    groups, _ = data.pop("_groups"), prev.pop("_groups")
    data["categories_growth"] = _growth(data["by_category"], prev["by_category"])
    data["csat_trend"] = [{"period": a.period.label, "from": a.period.first.isoformat(),
                           "to": a.period.last.isoformat(), **_csat(a.scores)} for a in accs]
    data["change"] = {k: _diff(data[k], prev[k]) for k in _CHANGE_KEYS}
    data["previous"] = prev
    data["team"] = team
    data["generated_at"] = now.isoformat(timespec="seconds")
    data["running"] = now_ts < int(period.end.timestamp())
    if by is not None:
        data["breakdown"] = {"by": by, "rows": data["by_team"] if by == "team" else data["by_agent"]
                             if by == "agent" else groups[by]}
    out_rows.sort(key=lambda r: r["created"])
    return Metrics(data, out_rows, period, locale, company, team, by, names)


# ---------------------------------------------------------------------------------------------------
# one CSV row


def _outcome(ok: int | None) -> str:
    return NONE if ok is None else ("met" if ok else "breached")


def _row(s: dict, st: _State, acc: _Acc) -> dict:
    cut, start = acc.cut, acc.start
    res = st.resolution
    fr = s["fr"] if s["fr"] is not None and s["fr"][0] < cut else None
    if res is not None:
        nr = [ok for at, ok in s["nr"] if at <= res[0]]
        sla = {"first_response": _outcome(res[3]), "resolution": _outcome(res[4]),
               "next_response": _outcome(None if not nr else int(all(nr)))}
    else:
        sla = {}
        for clock in CLOCKS:
            state, due = (s.get("fin") or {}).get(clock, [None, None])
            if state == "met":
                sla[clock] = "met"
            elif state == "missed" or state == "overdue" or (due is not None and due < cut):
                sla[clock] = "breached"
            elif state in ("running", "paused"):
                sla[clock] = "open"
            else:
                sla[clock] = NONE
    closed_at = st.status_at if st.status == "closed" else None
    return {
        "id": s["id"], "created": s["created"], "first_reply_at": fr[0] if fr else None,
        "resolved_at": res[0] if res else None, "closed_at": closed_at, "status": st.status,
        "close_reason": st.note if st.status == "closed" else "", "category": s.get("cat"),
        "priority": s.get("prio"), "team": s.get("team"), "assignee": s.get("agent"), "mailbox": s.get("mb"),
        "language": s.get("lang"), "tags": list(s.get("tags") or []), "customer": s.get("cust") or "",
        "first_reply_hours": fr[1] if fr else None, "resolution_hours": res[1] if res else None,
        "sla": sla, "rating": st.rating[1] if st.rating else None, "rated_at": st.rating[0] if st.rating else None,
        "reopen_count": st.reopens, "escalations": sum(1 for a in s["esc"] if a < cut),
        "created_in_period": start <= s["created"] < cut,
        "resolved_in_period": res is not None and res[0] >= start,
        "rated_in_period": st.rating is not None and st.rating[0] >= start,
        "open_at_end": st.status in OPEN,
    }
