"""The archived tickets' part of a past period's report, kept per creation day (DESIGN.md 11).

Every figure of a period is computed from what was known at its end, and an archived ticket no
longer changes: so once a period has ended, what the archived tickets created on one day add to
its report (a `report_metrics.Tally`) changes only when that set of archived tickets changes. A
report of an ended period therefore feeds the hot tickets live (thousands) and adds the archived
tickets' Tally, kept in two rows per report:

- `KEY:sum`, the merged Tally of every day, with the stamp of all days: the warm path reads this
  row only (its hour values are one sorted run each, so the percentiles are a selection between
  that run and the hot tickets' values, `report_metrics.Sample`);
- `KEY:parts`, one Tally per local creation day with that day's stamp: when some days changed
  (the daily archive moves tickets of a few dozen days), only those days are read from the
  archive again, and both rows are written anew.

A day's part is valid while the store's stamps of the UTC creation days it covers (one day more on
each side, for creation times written with an offset) are those it was made with. The stores
change a day's stamp in the same transaction as any change to an archived ticket created that day
(PostgreSQL: `PgStore._touch_report_days` from archive, unarchive, retention and privacy erase; the
TinyDB archive index: sqlite triggers on its `ticket` table, so every writer of it is covered).
The cache key holds the period, `now`'s cut, the team filter, the summary layout and the config
fingerprint, so a changed SLA policy or calendar starts again. A day none of whose archived tickets
counts is kept as null.

A TinyDB ticket can be hot and archived at once (brought back by a reply; the index keeps the old
copy until it is archived again): the hot copy wins, so the day holding its archived copy is made
without it, and the ids left out are part of that day's stamp.

Not cached (the straight pass, `report_source.iter_summaries` into `compute`): a running period,
the CSV (it lists every ticket) and a store without stamps.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta

from mailflow import summary
from mailflow.report_metrics import TREND, Floats, Period, Tally

log = logging.getLogger("mailflow.report")

FORMAT = 3  # of what is kept (report_metrics.Tally.dump, Floats.pack); part of the key


def _loads(b):
    import orjson

    return orjson.loads(b)


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _utc_days(lo: int, hi: int) -> list[str]:
    """UTC dates from the day before instant `lo` to the day after instant `hi - 1`."""
    a = datetime.fromtimestamp(lo, UTC).date() - timedelta(days=1)
    b = datetime.fromtimestamp(max(lo, hi - 1), UTC).date() + timedelta(days=1)
    return [(a + timedelta(days=i)).isoformat() for i in range((b - a).days + 1)]


def days(period: Period, created_from: int, created_to: int) -> list[tuple[str, int, int]]:
    """(label, from, to) of each local creation day (in the period's time zone) in
    [created_from, created_to), clipped to it."""
    tz = period.tz
    first = datetime.fromtimestamp(created_from, tz).date()
    out = []
    while True:
        lo = int(datetime.combine(first, datetime.min.time(), tzinfo=tz).timestamp())
        nxt = first + timedelta(days=1)
        hi = int(datetime.combine(nxt, datetime.min.time(), tzinfo=tz).timestamp())
        lo, hi = max(lo, created_from), min(hi, created_to)
        if lo >= created_to:
            break
        if lo < hi:
            out.append((first.isoformat(), lo, hi))
        first = nxt
    return out


def cache_key(fp: str, period: Period, cut: int, team: str | None) -> str:
    parts = [FORMAT, summary.VERSION, TREND, fp, sys.byteorder, period.kind, period.first.isoformat(),
             period.last.isoformat(), period.timezone, cut, team]
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:20]


class _Backend:
    """What the cache needs of a store: day stamps, archived summaries of a creation range, and a
    place for the kept rows (`where`: the store, or TinyDB's archive index). None when the store
    has none of that."""

    def __init__(self, store, where):
        self.store, self.where = store, where

    def stamps(self, days: list[str]) -> dict[str, str]:
        return self.where.report_day_stamps(days[0], days[-1])

    def get(self, key: str) -> bytes | None:
        return self.where.report_cache_get(key)

    def put(self, key: str, data: bytes) -> None:
        self.where.report_cache_put(key, data)

    def keys(self) -> list[str]:
        return self.where.report_cache_keys()

    def summaries(self, created_from: int, created_to: int, last_from: int, full_from: int) -> Iterator[dict]: ...
    def archived_among(self, ids: list[str]) -> dict[str, str]: ...
    def hot(self, cfg, created_to: int) -> Iterator[tuple[str, dict]]: ...


class _Pg(_Backend):
    def __init__(self, store):
        super().__init__(store, store)

    def summaries(self, created_from, created_to, last_from, full_from):
        for text in self.store.archived_summary_texts(_iso(created_from), _iso(created_to), last_from=last_from,
                                                      full_from=full_from):
            yield _loads(text)

    def archived_among(self, ids):
        return {}  # one row per ticket: hot or archived, never both

    def hot(self, cfg, created_to):
        # created_at is compared as text: a day's margin covers any offset it was written with;
        # Tally.feed then applies the exact bound
        return self.store.hot_summaries(cfg, created_before=_iso(created_to + 86400))


class _Tiny(_Backend):
    def __init__(self, store):
        super().__init__(store, store.archive_index)

    def summaries(self, created_from, created_to, last_from, full_from):
        return self.where.iter_summaries(_iso(created_from), _iso(created_to))

    def archived_among(self, ids):
        return self.where.created_of(ids)

    def hot(self, cfg, created_to):
        from mailflow.report_source import _hot_summaries

        return _hot_summaries(self.store, cfg)


def backend_of(store) -> _Backend | None:
    if store is None:
        return None
    if hasattr(store, "report_day_stamps") and hasattr(store, "archived_summary_texts"):
        return _Pg(store)
    index = getattr(store, "archive_index", None)
    if index is not None and hasattr(index, "report_day_stamps") and index.path.exists():
        return _Tiny(store)
    return None


def cached_tally(store, cfg, period: Period, now: datetime, created_from: int, created_to: int, *,
                 team: str | None, on_progress: Callable[[int], None] | None = None,
                 remade: list | None = None) -> Tally | None:
    """The report's Tally: hot tickets fed live, archived ones merged from what is kept (made and
    kept where missing or stale; then the report's key is appended to `remade`). None when this
    report cannot use the cache (see the module docstring): the caller then makes it the straight way."""
    from mailflow.report_source import fingerprint

    be = backend_of(store)
    tally = Tally(period, now, team=team)
    if be is None or not tally.complete:
        return None
    key = cache_key(fingerprint(cfg), period, tally.main.cut, team)
    try:
        stamps = be.stamps(_utc_days(created_from, created_to))
    except Exception as e:  # a cache that cannot be read is only a miss
        log.debug("report cache unreadable (%s): the straight pass", e)
        return None
    # hot tickets first (their ids: a TinyDB ticket both hot and archived is counted by its hot copy)
    prog = _Progress(on_progress)
    hot_ids: list[str] = []
    for tid, s in be.hot(cfg, created_to):
        hot_ids.append(tid)
        if s["created"] is not None and s["created"] < created_to:
            tally.feed(s)
        prog.step(1000)
    # TinyDB: the hot copy wins, so archived copies of hot tickets are left out, in the day they lie in
    skip = {tid: _epoch(c) for tid, c in be.archived_among(hot_ids).items()}
    spans = days(period, created_from, created_to)
    stamp_of = {label: _part_stamp(lo, hi, stamps, sorted(t for t, at in skip.items() if lo <= at < hi))
                for label, lo, hi in spans}
    whole = hashlib.sha1(repr(sorted(stamp_of.items())).encode()).hexdigest()
    archived = _load_sum(be, key, whole, period, now, team)
    if archived is None:
        archived = _remake(be, key, whole, spans, stamp_of, set(skip), period, now, team, tally, prog)
        if archived is None:
            return None
        if remade is not None:
            remade.append(key)
    tally.merge(archived)
    return tally


REFRESH = 4  # kept reports brought up to date after housekeeping, the most recently made first


def refresh(store, cfg, now: datetime, *, limit: int = REFRESH) -> int:
    """Bring the most recently made kept reports up to date: the daemon's housekeeping calls this
    after each pass (archiving marks the archived tickets' creation days), so the next report of
    those periods reads one valid row instead of re-reading the days that changed (2-3 s on the 1M
    set); a report still valid costs its hot tickets' feed. The number of reports made again; a
    report of another config is left to age out."""
    from mailflow.report import created_range
    from mailflow.report_source import fingerprint

    be = backend_of(store)
    if be is None:
        return 0
    fp, remade = fingerprint(cfg), []
    for key in [k[:-4] for k in be.keys() if k.endswith(":sum")][:limit]:
        try:
            doc, _sample = Floats.unpack(be.get(key + ":sum") or b"")
            kind, first, last, tz = doc["period"]
            team = doc.get("team")
            period = Period(kind, date.fromisoformat(first), date.fromisoformat(last), tz)
        except Exception as e:  # an older layout, a row dropped meanwhile: nothing to refresh
            log.debug("report cache row %s not refreshed (%s)", key, e)
            continue
        tally = Tally(period, now, team=team)
        if not tally.complete or cache_key(fp, period, tally.main.cut, team) != key:
            continue
        created_from, created_to = created_range(cfg, period, now)
        cached_tally(store, cfg, period, now, created_from, created_to, team=team, remade=remade)
    return len(remade)


class _Progress:
    def __init__(self, on_progress: Callable[[int], None] | None):
        self.on_progress, self.n = on_progress, 0

    def step(self, every: int) -> None:
        self.n += 1
        if self.on_progress is not None and self.n % every == 0:
            self.on_progress(self.n)


def _epoch(text: str | None) -> int:
    """Epoch seconds of a stored created_at (ISO, UTC when it names no offset); -1 when unreadable."""
    try:
        d = datetime.fromisoformat(text or "")
    except ValueError:
        return -1
    return int((d if d.tzinfo else d.replace(tzinfo=UTC)).timestamp())


def _part_stamp(lo: int, hi: int, stamps: dict[str, str], skip: list[str]) -> str:
    return hashlib.sha1(repr((sorted((d, stamps.get(d, "")) for d in _utc_days(lo, hi)), skip)).encode()).hexdigest()


def _load_sum(be: _Backend, key: str, whole: str, period: Period, now: datetime, team: str | None) -> Tally | None:
    """The archived tickets' merged Tally when kept and still valid (the warm path: one row)."""
    try:
        data = be.get(key + ":sum")
        if not data:
            return None
        doc, sample = Floats.unpack(data)
        if doc.get("key") != key or doc.get("stamp") != whole:
            return None
        t = Tally(period, now, team=team)
        t.load(doc["tally"], sample)
        return t
    except Exception as e:  # unreadable or damaged: made again from the parts
        log.debug("report cache sum of %s unreadable (%s)", key, e)
        return None


def _remake(be: _Backend, key: str, whole: str, spans: list[tuple[str, int, int]], stamp_of: dict[str, str],
            skip: set[str], period: Period, now: datetime, team: str | None, tally: Tally,
            prog: _Progress) -> Tally | None:
    """The merged Tally from the kept day parts, the stale or missing ones made again from the
    archived summaries of their days; both kept for the next report."""
    parts: dict[str, Tally | None] = {}  # None: no archived ticket of that day counts
    try:
        data = be.get(key + ":parts")
        if data:
            doc, sample = Floats.unpack(data)
            if doc.get("key") == key:
                for label, got in doc["parts"].items():
                    if stamp_of.get(label) != got["stamp"]:
                        continue
                    if got["tally"] is None:
                        parts[label] = None
                    else:
                        t = Tally(period, now, team=team)
                        t.load(got["tally"], sample)
                        parts[label] = t
    except Exception as e:  # unreadable or damaged: every day made again
        log.debug("report cache parts of %s unreadable (%s)", key, e)
        parts = {}
    data = None  # the loaded parts hold copies of their values
    stale = [(label, lo, hi) for label, lo, hi in spans if label not in parts]
    edges = [lo for _label, lo, _hi in spans]
    for run in _runs(stale):
        lo, hi = run[0][1], run[-1][2]
        made: dict[str, Tally] = {}
        # the store compares created_at as text: a day's margin on each side finds every ticket of
        # the run's days whatever offset it was written with; each is kept by its instant
        for s in be.summaries(max(lo - 86400, 0), hi + 86400, tally.earliest, tally.accs[-2].start):
            if s.get("v") != summary.VERSION:
                log.warning("the archive index holds summaries of layout %s, not %s: report without the "
                            "cache", s.get("v"), summary.VERSION)
                return None
            at = s.get("created")
            if at is None or not lo <= at < hi or s.get("id") in skip:
                continue
            label = spans[bisect.bisect_right(edges, at) - 1][0]
            t = made.get(label)
            if t is None:
                t = made[label] = Tally(period, now, team=team)
            t.feed(s)
            prog.step(10000)
        for label, _lo, _hi in run:
            parts[label] = made.get(label)
    archived = Tally(period, now, team=team)
    for t in parts.values():
        if t is not None:
            archived.merge(t)
    floats = Floats()
    keep = {"key": key, "parts": {label: {"stamp": stamp_of[label],
                                          "tally": None if parts[label] is None else parts[label].dump(floats)}
                                  for label, _lo, _hi in spans}}
    try:
        be.put(key + ":parts", floats.pack(keep))
        keep = parts = None  # type: ignore[assignment]  # the sum shares their runs until it is settled
        floats = Floats()
        be.put(key + ":sum", floats.pack({"key": key, "stamp": whole, "tally": archived.dump(floats), "team": team,
                                          "period": [period.kind, period.first.isoformat(), period.last.isoformat(),
                                                     period.timezone]}))
    except Exception as e:  # a read-only store, a busy one: the next report computes it again
        log.debug("report cache not written (%s)", e)
    return archived


def _runs(spans: list[tuple[str, int, int]]) -> list[list[tuple[str, int, int]]]:
    """Adjacent spans grouped (one query a run of stale days)."""
    out: list[list[tuple[str, int, int]]] = []
    for sp in spans:
        if out and out[-1][-1][2] == sp[1]:
            out[-1].append(sp)
        else:
            out.append([sp])
    return out
