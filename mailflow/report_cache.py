"""The archived tickets' part of a past period's report, kept per creation month (DESIGN.md 11).

Every figure of a period is computed from what was known at its end, and an archived ticket no
longer changes: so once a period has ended, what the archived tickets created in one month add to
its report (a `report_metrics.Tally`) changes only when that set of archived tickets changes. A
report of an ended period therefore feeds the hot tickets live (thousands) and merges, for each
local month of creation in its range, the archived part kept from an earlier report when it is
still valid, else computes it from the archived summaries of that month alone and keeps it.

Valid means: the store's stamps of the UTC creation days the month covers (one day more on each
side, for creation times written with an offset) are those the part was made with. The stores
change a day's stamp in the same transaction as any change to an archived ticket created that day
(PostgreSQL: `PgStore._touch_report_days` from archive, unarchive, retention and privacy erase; the
TinyDB archive index: sqlite triggers on its `ticket` table, so every writer of it is covered).
The cache key holds the period, `now`'s cut, the team filter, the summary layout and the config
fingerprint, so a changed SLA policy or calendar starts again. Parts of months whose tickets all
lie before the oldest period's start are empty and cost nothing to keep.

A TinyDB ticket can be hot and archived at once (brought back by a reply; the index keeps the old
copy until it is archived again): the hot copy wins, so the month holding its archived copy is
made without it, and the ids left out are part of that month's stamp.

Not cached (the straight pass, `report_source.iter_summaries` into `compute`): a running period,
the CSV (it lists every ticket) and a store without stamps.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

from mailflow import summary
from mailflow.report_metrics import TREND, Period, Tally, _add_months

log = logging.getLogger("mailflow.report")

FORMAT = 2  # of the kept parts (report_metrics.Tally.dump); part of the key


def _loads(b):
    import orjson

    return orjson.loads(b)


def _dumps(v) -> bytes:
    import orjson

    return orjson.dumps(v)


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _utc_days(lo: int, hi: int) -> list[str]:
    """UTC dates from the day before instant `lo` to the day after instant `hi - 1`."""
    a = datetime.fromtimestamp(lo, UTC).date() - timedelta(days=1)
    b = datetime.fromtimestamp(max(lo, hi - 1), UTC).date() + timedelta(days=1)
    return [(a + timedelta(days=i)).isoformat() for i in range((b - a).days + 1)]


def months(period: Period, created_from: int, created_to: int) -> list[tuple[str, int, int]]:
    """(label, from, to) of each local creation month (in the period's time zone) in
    [created_from, created_to), clipped to it."""
    tz = period.tz
    first = datetime.fromtimestamp(created_from, tz).date().replace(day=1)
    out = []
    while True:
        lo = int(datetime.combine(first, datetime.min.time(), tzinfo=tz).timestamp())
        nxt = _add_months(first, 1)
        hi = int(datetime.combine(nxt, datetime.min.time(), tzinfo=tz).timestamp())
        lo, hi = max(lo, created_from), min(hi, created_to)
        if lo >= created_to:
            break
        if lo < hi:
            out.append((f"{first:%Y-%m}", lo, hi))
        first = nxt
    return out


def cache_key(fp: str, period: Period, cut: int, team: str | None) -> str:
    parts = [FORMAT, summary.VERSION, TREND, fp, sys.byteorder, period.kind, period.first.isoformat(),
             period.last.isoformat(), period.timezone, cut, team]
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:20]


class _Backend:
    """What the cache needs of a store: day stamps, archived summaries of a creation range, and a
    place for the kept parts. None when the store has none of that."""

    def stamps(self, days: list[str]) -> dict[str, str]: ...
    def summaries(self, created_from: int, created_to: int, last_from: int, full_from: int) -> Iterator[dict]: ...
    def get(self, key: str) -> bytes | None: ...
    def put(self, key: str, data: bytes) -> None: ...
    def archived_among(self, ids: list[str]) -> dict[str, str]: ...
    def hot(self, cfg, created_to: int) -> Iterator[tuple[str, dict]]: ...


class _Pg(_Backend):
    def __init__(self, store):
        self.store = store

    def stamps(self, days):
        return self.store.report_day_stamps(days[0], days[-1])

    def summaries(self, created_from, created_to, last_from, full_from):
        for text in self.store.archived_summary_texts(_iso(created_from), _iso(created_to), last_from=last_from,
                                                      full_from=full_from):
            yield _loads(text)

    def get(self, key):
        return self.store.report_cache_get(key)

    def put(self, key, data):
        self.store.report_cache_put(key, data)

    def archived_among(self, ids):
        return {}  # one row per ticket: hot or archived, never both

    def hot(self, cfg, created_to):
        # created_at is compared as text: a day's margin covers any offset it was written with;
        # Tally.feed then applies the exact bound
        return self.store.hot_summaries(cfg, created_before=_iso(created_to + 86400))


class _Tiny(_Backend):
    def __init__(self, store):
        self.store, self.index = store, store.archive_index

    def stamps(self, days):
        return self.index.report_day_stamps(days[0], days[-1])

    def summaries(self, created_from, created_to, last_from, full_from):
        return self.index.iter_summaries(_iso(created_from), _iso(created_to))

    def get(self, key):
        return self.index.report_cache_get(key)

    def put(self, key, data):
        self.index.report_cache_put(key, data)

    def archived_among(self, ids):
        return self.index.created_of(ids)

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
                 team: str | None, on_progress: Callable[[int], None] | None = None) -> Tally | None:
    """The report's Tally: hot tickets fed live, archived ones merged from the kept parts (made
    and kept where missing or stale). None when this report cannot use the cache (see the module
    docstring): the caller then makes it the straight way."""
    from mailflow.report_source import fingerprint

    be = backend_of(store)
    tally = Tally(period, now, team=team)
    if be is None or not tally.complete:
        return None
    oldest_start = tally.earliest
    full_from = tally.accs[-2].start
    key = cache_key(fingerprint(cfg), period, tally.main.cut, team)
    try:
        stamps = be.stamps(_utc_days(created_from, created_to))
        kept = _loads(be.get(key) or b"{}")
    except Exception as e:  # a cache that cannot be read is only a miss
        log.debug("report cache unreadable (%s): the straight pass", e)
        return None
    if not isinstance(kept, dict) or kept.get("key") != key:
        kept = {"key": key, "parts": {}}
    # hot tickets first (their ids: a TinyDB ticket both hot and archived means the straight pass)
    n = 0
    hot_ids: list[str] = []
    for tid, s in be.hot(cfg, created_to):
        hot_ids.append(tid)
        if s["created"] is not None and s["created"] < created_to:
            tally.feed(s)
        n += 1
        if on_progress is not None and n % 1000 == 0:
            on_progress(n)
    both = be.archived_among(hot_ids)  # TinyDB: the hot copy wins, so their archived copies are left out
    parts = kept["parts"]
    changed = False
    spans = months(period, created_from, created_to)
    wanted = {label for label, _lo, _hi in spans}
    for label, lo, hi in spans:
        a, b = _iso(lo), _iso(hi)  # the index compares created_at as text, so do we
        skip = sorted(tid for tid, c in both.items() if a <= (c or "") < b)
        skip_ids = set(skip)
        stamp = hashlib.sha1(repr((sorted((d, stamps.get(d, "")) for d in _utc_days(lo, hi)), skip)).encode()
                             ).hexdigest()
        part = Tally(period, now, team=team)
        got = parts.get(label)
        ok = False
        if got is not None and got.get("stamp") == stamp:
            try:
                part.load(got["tally"])
                ok = True
            except (ValueError, KeyError, TypeError, IndexError) as e:  # damaged: made again
                log.debug("report cache part %s unreadable (%s)", label, e)
                part = Tally(period, now, team=team)
        if not ok:
            first = True
            for s in be.summaries(lo, hi, oldest_start, full_from):
                if first and s.get("v") != summary.VERSION:
                    log.warning("the archive index holds summaries of layout %s, not %s: report without "
                                "the cache", s.get("v"), summary.VERSION)
                    return None
                first = False
                if skip and s.get("id") in skip_ids:
                    continue
                part.feed(s)
                n += 1
                if on_progress is not None and n % 10000 == 0:
                    on_progress(n)
            parts[label] = {"stamp": stamp, "tally": part.dump()}
            changed = True
        tally.merge(part)
    for label in [x for x in parts if x not in wanted]:
        del parts[label]  # a month this report no longer reads
    if changed:
        try:
            be.put(key, _dumps(kept))
        except Exception as e:  # a read-only store, a busy one: the next report computes it again
            log.debug("report cache not written (%s)", e)
    return tally
