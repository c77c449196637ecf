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
import itertools
import math
import re
import sys
from array import array
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


def percentile(values: list[float], q: float, *, is_sorted: bool = False) -> float | None:
    """The q-quantile with linear interpolation between the closest ranks (numpy's default)."""
    v = values if is_sorted else sorted(values)
    return _interpolate(len(v), q, v.__getitem__)


def _interpolate(n: int, q: float, kth) -> float | None:
    """The q-quantile of n values whose k-th smallest is `kth(k)`: the two closest ranks, linearly."""
    if not n:
        return None
    pos = (n - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    v_lo = kth(lo)
    v_hi = v_lo if hi == lo else kth(hi)
    return v_lo + (v_hi - v_lo) * (pos - lo)


def _r(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(x, nd)


def pct(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 1) if whole else None


def _hours(values: Sample) -> dict:
    return {"median": _r(values.percentile(0.5)), "p90": _r(values.percentile(0.9)), "count": len(values)}


def _attain(ab: list[int]) -> dict:
    return {"achieved": ab[0], "breached": ab[1], "pct": pct(ab[0], ab[0] + ab[1])}


def _csat(scores: Counter) -> dict:
    """Of a Counter of scores (score -> how many ratings)."""
    c = scores
    n = sum(c.values())
    good = sum(k for s, k in c.items() if s >= 4)
    return {"pct": pct(good, n), "mean": _r(sum(s * k for s, k in c.items()) / n) if n else None, "ratings": n}


def _sorted_counts(c: Counter) -> dict:
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], str(kv[0]))))


# ---------------------------------------------------------------------------------------------------
# accumulators


class Sample:
    """The hour values of one figure: sorted runs (kept parts, loaded as `array`s without making
    a Python float of each value) and the values added since (unsorted). The figures need only a
    count, two ranks and a few counts below an edge, so a percentile over a kept run and a few
    hundred new values is a selection, not a sort of everything (report_cache's warm path)."""

    __slots__ = ("runs", "new")

    def __init__(self, values: Iterable[float] = ()) -> None:
        self.runs: list[array] = []
        self.new: list[float] = list(values)

    def append(self, x: float) -> None:
        self.new.append(x)

    def merge(self, o: Sample) -> None:
        """Add `o`'s values (its runs are shared, never changed in place)."""
        self.runs += o.runs
        self.new += o.new

    def __len__(self) -> int:
        return sum(map(len, self.runs)) + len(self.new)

    def settle(self) -> array:
        """One sorted run of every value (merging sorted runs, timsort is nearly linear)."""
        if self.new or len(self.runs) > 1:
            merged = array("d", sorted([*itertools.chain.from_iterable(self.runs), *self.new]))
            self.runs, self.new = [merged], []
        return self.runs[0] if self.runs else array("d")

    def _two(self) -> tuple[array, list]:
        """(one sorted run, the sorted rest): the rest is sorted in place, the runs merged if many."""
        if len(self.runs) > 1:
            rest = self.new
            self.new = []
            self.settle()
            self.new = rest
        self.new.sort()
        return (self.runs[0] if self.runs else array("d")), self.new

    def kth(self, k: int) -> float:
        """The k-th smallest value (0-based), by selection between the run and the rest."""
        a, b = self._two()
        lo, hi = max(0, k + 1 - len(b)), min(k + 1, len(a))  # how many of the k + 1 smallest are a's
        while lo < hi:
            i = (lo + hi) // 2
            if a[i] < b[k - i]:  # a's i-th is below b's (k - i)-th: more of them come from a
                lo = i + 1
            else:
                hi = i
        i, j = lo, k + 1 - lo
        return max(a[i - 1] if i else -math.inf, b[j - 1] if j else -math.inf)

    def count_below(self, x: float) -> int:
        a, b = self._two()
        return bisect.bisect_left(a, x) + bisect.bisect_left(b, x)

    def percentile(self, q: float) -> float | None:
        """As `percentile` of the values."""
        return _interpolate(len(self), q, self.kth)


class Floats:
    """The hour values of a kept Tally, outside its JSON: `put` appends a Sample's sorted values and
    returns [offset, count] for the JSON; `pack` is JSON and values as one bytes (doubles, little-
    endian), read back with a memory copy per run (a base64 text in JSON cost 0.16 s a report)."""

    MAGIC = b"MFT2"

    def __init__(self) -> None:
        self.runs: list[array] = []
        self.n = 0

    def put(self, sample: Sample) -> list[int]:
        run = sample.settle()
        self.runs.append(run)
        self.n += len(run)
        return [self.n - len(run), len(run)]

    def pack(self, doc) -> bytes:
        """One buffer (a bytearray: the values are copied once, 19 MB a report on the 1M set)."""
        import orjson

        head = orjson.dumps(doc)
        head += b" " * (-(len(head) + 8) % 8)  # the values start 8-aligned
        out = bytearray(self.MAGIC + len(head).to_bytes(4, "little") + head)
        for r in self.runs:
            if sys.byteorder != "little":  # pragma: no cover
                r = array("d", r)
                r.byteswap()
            out += memoryview(r).cast("B")
        self.runs = []
        return out

    @classmethod
    def unpack(cls, data: bytes):
        """(the JSON document, a function [offset, count] -> Sample)."""
        import orjson

        if data[:4] != cls.MAGIC:
            raise ValueError("not a kept tally")
        n = int.from_bytes(data[4:8], "little")
        doc = orjson.loads(data[8:8 + n])
        view = memoryview(data)[8 + n:]
        if len(view) % 8:
            raise ValueError("a kept tally cut short")

        def sample(ref: list[int]) -> Sample:
            off, cnt = ref
            if off < 0 or cnt < 0 or (off + cnt) * 8 > len(view):
                raise ValueError("a kept tally cut short")
            s = Sample()
            if cnt:
                run = array("d")
                run.frombytes(view[off * 8:(off + cnt) * 8])
                if sys.byteorder != "little":  # pragma: no cover
                    run.byteswap()
                s.runs.append(run)
            return s

        return doc, sample


class _Group:
    """Figures of one team, agent, category, mailbox or tag within a period."""

    __slots__ = ("new", "handled", "backlog", "fr", "rs", "ok", "bad", "scores")

    def __init__(self) -> None:
        self.new = self.handled = self.backlog = self.ok = self.bad = 0
        self.fr = Sample()
        self.rs = Sample()
        self.scores: Counter = Counter()  # score -> ratings

    def merge(self, o: _Group) -> None:
        self.new += o.new
        self.handled += o.handled
        self.backlog += o.backlog
        self.ok += o.ok
        self.bad += o.bad
        self.fr.merge(o.fr)
        self.rs.merge(o.rs)
        self.scores += o.scores

    def dump(self, floats: Floats) -> list:
        return [self.new, self.handled, self.backlog, self.ok, self.bad, floats.put(self.fr), floats.put(self.rs),
                list(self.scores.items())]

    @classmethod
    def load(cls, d: list, sample) -> _Group:
        g = cls()
        g.new, g.handled, g.backlog, g.ok, g.bad = d[:5]
        g.fr, g.rs, g.scores = sample(d[5]), sample(d[6]), Counter(dict(d[7]))
        return g

    def figures(self) -> dict:
        c = _csat(self.scores)
        return {"tickets_new": self.new, "handled": self.handled, "backlog_end": self.backlog,
                "first_reply_median": _r(self.fr.percentile(0.5)),
                "resolution_median": _r(self.rs.percentile(0.5)),
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
    fr: Sample = field(default_factory=Sample)
    rs: Sample = field(default_factory=Sample)
    sla: dict = field(default_factory=lambda: {c: [0, 0] for c in CLOCKS})
    sla_prio: dict = field(default_factory=dict)
    one_touch: int = 0
    reopened: int = 0
    resolved_rated: int = 0
    escalations: int = 0
    scores: Counter = field(default_factory=Counter)  # score -> ratings
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

    _COUNTERS = ("by_category", "by_priority", "by_mailbox", "by_language", "tags")
    _INTS = ("new", "backlog", "resolved", "one_touch", "reopened", "resolved_rated", "escalations")

    def merge(self, o: _Acc) -> None:
        """Add `o` (the same period and cut, other tickets): counters add, value lists concatenate
        (every figure made of them is order-free: percentiles sort, sums are of integers)."""
        for k in self._INTS:
            setattr(self, k, getattr(self, k) + getattr(o, k))
        for k in self._COUNTERS:
            getattr(self, k).update(getattr(o, k))
        self.fr.merge(o.fr)
        self.rs.merge(o.rs)
        self.scores += o.scores
        for c in CLOCKS:
            self.sla[c][0] += o.sla[c][0]
            self.sla[c][1] += o.sla[c][1]
        for p, v in o.sla_prio.items():
            mine = self.sla_prio.setdefault(p, {c: [0, 0] for c in CLOCKS})
            for c in CLOCKS:
                mine[c][0] += v[c][0]
                mine[c][1] += v[c][1]
        for dim, groups in o.groups.items():
            for key, g in groups.items():
                self.group(dim, key).merge(g)
        self.daily_new = [a + b for a, b in zip(self.daily_new, o.daily_new, strict=True)]
        self.daily_res = [a + b for a, b in zip(self.daily_res, o.daily_res, strict=True)]

    def dump(self, floats: Floats) -> dict:
        """A JSON-able copy of the figures, the hour values put in `floats` (keys of counters and
        groups kept as [key, value] pairs: a JSON object would turn every key into a string)."""
        return {"ints": [getattr(self, k) for k in self._INTS],
                "counters": [list(getattr(self, k).items()) for k in self._COUNTERS],
                "fr": floats.put(self.fr), "rs": floats.put(self.rs), "scores": list(self.scores.items()),
                "sla": [self.sla[c] for c in CLOCKS],
                "sla_prio": [[p, [v[c] for c in CLOCKS]] for p, v in self.sla_prio.items()],
                "groups": [[d, [[k, g.dump(floats)] for k, g in self.groups[d].items()]] for d in DIMENSIONS],
                "daily": [self.daily_new, self.daily_res]}

    def load(self, d: dict, sample) -> None:
        """Replace the figures with a `dump` of the same period and cut (`sample`: Floats.unpack's)."""
        for k, v in zip(self._INTS, d["ints"], strict=True):
            setattr(self, k, v)
        for k, items in zip(self._COUNTERS, d["counters"], strict=True):
            setattr(self, k, Counter(dict(items)))
        self.fr, self.rs, self.scores = sample(d["fr"]), sample(d["rs"]), Counter(dict(d["scores"]))
        self.sla = {c: list(v) for c, v in zip(CLOCKS, d["sla"], strict=True)}
        self.sla_prio = {p: {c: list(x) for c, x in zip(CLOCKS, v, strict=True)} for p, v in d["sla_prio"]}
        self.groups = {dim: {k: _Group.load(g, sample) for k, g in items} for dim, items in d["groups"]}
        if len(d["daily"][0]) != len(self.day_edges):
            raise ValueError("a dump of another period")
        self.daily_new, self.daily_res = list(d["daily"][0]), list(d["daily"][1])

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
        acc.scores[rated[1]] += 1
        for g in groups:
            g.scores[rated[1]] += 1
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


def _distribution(values: Sample) -> list[dict]:
    """A negative value counts in the first bucket."""
    edges = list(BUCKETS)
    n = len(values)
    at_least = [n - values.count_below(e) for e in edges[1:]] + [0]  # values >= each next edge
    counts = [n - at_least[0]] + [at_least[i] - at_least[i + 1] for i in range(len(edges) - 1)]
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
    fr, rs, scores = acc.fr, acc.rs, acc.scores
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
        "first_reply_hours": _hours(fr),
        "resolution_hours": _hours(rs),
        "first_reply_distribution": _distribution(fr),
        "sla": {c: _attain(acc.sla[c]) for c in CLOCKS},
        "sla_by_priority": {p: {c: _attain(v[c]) for c in CLOCKS}
                            for p, v in sorted(acc.sla_prio.items(), key=lambda kv: _prio_rank(kv[0]))},
        "one_touch": acc.one_touch,
        "one_touch_pct": pct(acc.one_touch, resolved),
        "reopened": acc.reopened,
        "reopen_rate_pct": pct(acc.reopened, resolved),
        "escalations": acc.escalations,
        "csat": {**_csat(scores), "response_rate_pct": pct(acc.resolved_rated, resolved),
                 "by_score": {str(k): scores.get(k, 0) for k in range(1, 6)}},
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


class Tally:
    """The accumulators of one report (`period` and the one before it in full, the CSAT of the
    older periods of the trend) as of `now`: `feed` adds one summary, `merge` adds another tally of
    the same report over other tickets, `dump`/`load` keep one (report_cache: the archived
    tickets' part of a past period, per creation month), `metrics` makes the figures.

    Feeding the tickets to several tallies and merging them gives exactly the figures of feeding
    them all to one (the cache's contract; tests/integration/test_report_cache.py checks it)."""

    def __init__(self, period: Period, now: datetime, *, team: str | None = None, rows: bool = False):
        self.period, self.now, self.team, self.rows = period, now, team, rows
        self.now_ts = int(now.timestamp()) + 1  # an event at `now` itself has happened
        periods = [period.shifted(k - TREND + 1) for k in range(TREND)]
        self.accs = [_Acc(p, min(int(p.end.timestamp()), self.now_ts), full=k >= TREND - 2)
                     for k, p in enumerate(periods)]
        self.full = [a for a in self.accs if a.full]
        self.light = [a for a in self.accs if not a.full]
        self.main = self.accs[-1]
        self.earliest = self.accs[0].start
        self.starts = [a.start for a in self.light]
        self.light_end = self.light[-1].cut if self.light else 0
        self.out_rows: list[dict] = []

    @property
    def complete(self) -> bool:
        """The period has ended as of `now`: its figures depend only on the tickets."""
        return self.main.cut == self.main.end

    def feed(self, s: dict) -> None:
        created = s.get("created")
        main = self.main
        if created is None or created >= main.cut or s.get("v") != VERSION:
            return
        if self.team is not None and s.get("team") != self.team:
            return
        last_at, still_open = s["last"], s.get("status") in OPEN
        if last_at < self.earliest and not still_open:
            return  # everything about it happened before the oldest period
        light = self.light
        if light and s["rat"]:  # the older periods of the trend: the last rating in each
            earliest, light_end, starts = self.earliest, self.light_end, self.starts
            seen: dict[int, int] = {}
            for at, score in s["rat"]:
                if earliest <= at < light_end:
                    seen[bisect.bisect_right(starts, at) - 1] = score
            for i, score in seen.items():
                light[i].scores[score] += 1
        for acc in self.full:
            if created >= acc.cut or (last_at < acc.start and not still_open):
                continue  # created after it, or settled before it began
            st = state_at(s, acc.cut)
            if _add(acc, s, st) and self.rows and acc is main:
                self.out_rows.append(_row(s, st, acc))

    def merge(self, other: Tally) -> None:
        for mine, theirs in zip(self.accs, other.accs, strict=True):
            if (mine.period, mine.cut) != (theirs.period, theirs.cut):
                raise ValueError("tallies of different reports")
            if mine.full:
                mine.merge(theirs)
            else:
                mine.scores += theirs.scores
        self.out_rows += other.out_rows

    def dump(self, floats: Floats) -> list:
        """The accumulators (not the CSV rows) as JSON-able data, the hour values in `floats`."""
        return [a.dump(floats) if a.full else list(a.scores.items()) for a in self.accs]

    def load(self, d: list, sample) -> None:
        """Replace the accumulators with a `dump` (`sample`: of `Floats.unpack`, for its values)."""
        if len(d) != len(self.accs):
            raise ValueError("a dump of another report")
        for a, x in zip(self.accs, d, strict=True):
            if a.full:
                a.load(x, sample)
            else:
                a.scores = Counter(dict(x))

    def metrics(self, *, by: str | None = None, locale: str = "en", company: str = "",
                staff_names: dict[str, str] | None = None) -> Metrics:
        if by is not None and by not in DIMENSIONS:
            raise ValueError(f"by must be one of {', '.join(DIMENSIONS)}")
        accs, period, now = self.accs, self.period, self.now
        names = dict(staff_names or {})
        data = _figures(self.main, names)
        prev = _figures(accs[-2], names)
        groups, _ = data.pop("_groups"), prev.pop("_groups")
        data["categories_growth"] = _growth(data["by_category"], prev["by_category"])
        data["csat_trend"] = [{"period": a.period.label, "from": a.period.first.isoformat(),
                               "to": a.period.last.isoformat(), **_csat(a.scores)} for a in accs]
        data["change"] = {k: _diff(data[k], prev[k]) for k in _CHANGE_KEYS}
        data["previous"] = prev
        data["team"] = self.team
        data["generated_at"] = now.isoformat(timespec="seconds")
        data["running"] = self.now_ts < int(period.end.timestamp())
        if by is not None:
            data["breakdown"] = {"by": by, "rows": data["by_team"] if by == "team" else data["by_agent"]
                                 if by == "agent" else groups[by]}
        out_rows = sorted(self.out_rows, key=lambda r: r["created"])
        return Metrics(data, out_rows, period, locale, company, self.team, by, names)


def compute(summaries: Iterable[dict], period: Period, now: datetime, *, team: str | None = None,
            by: str | None = None, rows: bool = False, locale: str = "en", company: str = "",
            staff_names: dict[str, str] | None = None) -> Metrics:
    """Every figure of `period` and of the period before it, and the CSAT of the last TREND periods,
    from one pass over `summaries` (any iterable: a generator streaming the archives is the point).

    `team`: only tickets of that team (a department's own report). `by`: one of DIMENSIONS, added as
    `breakdown`. `rows`: keep one row per ticket of `period` (for the CSV)."""
    if by is not None and by not in DIMENSIONS:
        raise ValueError(f"by must be one of {', '.join(DIMENSIONS)}")
    tally = Tally(period, now, team=team, rows=rows)
    feed = tally.feed
    for s in summaries:
        feed(s)
    return tally.metrics(by=by, locale=locale, company=company, staff_names=staff_names)


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
