"""Ticket summaries for a report: hot tickets summarized on the fly, archived ones from the archive
index, or — without one — streamed from the monthly archive files through a summary cache.

The archive index (`Store.iter_archived_summaries`, when the store has it) keeps `summary.summarize`
of every archived ticket beside it. Without it, `_MonthCache` keeps a compact summary file per month
file and config (`archive/summaries/YYYY-MM.<fingerprint>.jsonl`, one line per ticket:
`id TAB last TAB status TAB json`): archive files are append-only, so only what was appended since the
last report is read and summarized; a changed SLA policy, calendar or VIP list (the fingerprint) or a
rewritten month file starts that month's cache again. Lines are read one by one and the JSON of a
ticket whose whole life lies before the report's oldest period is never parsed, so memory stays flat
however long the history is (one month's ids at a time, for "the newest copy wins").

Month files are named by the UTC month of creation, so the created range bounds which files are read.
A data directory that cannot be written (another user's) is still reported on: the summaries are then
computed in memory and not cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock, Timeout

from mailflow import slaclock, summary
from mailflow.config import Config

try:
    import orjson

    _loads = orjson.loads

    def _dumps(obj) -> bytes:
        return orjson.dumps(obj)
except ImportError:  # pragma: no cover
    _loads = json.loads

    def _dumps(obj) -> bytes:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

log = logging.getLogger("mailflow.report")

CACHE_DIR = "summaries"
OPEN = ("new", "open", "pending")


def fingerprint(cfg: Config) -> str:
    """What a summary depends on besides the ticket: the layout version, the SLA policy and calendars
    (business hours, targets) and the VIP list (the tier). Stable across runs (sets are sorted)."""
    parts = [summary.VERSION, *slaclock.policy_parts(cfg)]
    return hashlib.sha1(json.dumps(parts, default=str).encode()).hexdigest()[:12]


def _utc_month(ts: int) -> tuple[int, int]:
    d = datetime.fromtimestamp(ts, UTC)
    return d.year, d.month


def month_files(archive: Path, created_from: int | None, created_to: int | None) -> list[Path]:
    """Archive month files (`YYYY-MM.jsonl`, UTC creation month) that can hold tickets created in
    [created_from, created_to), oldest first."""
    lo = _utc_month(created_from) if created_from is not None else (0, 0)
    hi = _utc_month(created_to) if created_to is not None else (9999, 12)
    out = []
    for p in sorted(archive.glob("[0-9][0-9][0-9][0-9]-[0-9][0-9].jsonl")):
        y, m = int(p.name[:4]), int(p.name[5:7])
        if lo <= (y, m) <= hi:
            out.append(p)
    return out


def _ticket_of(line: bytes) -> dict | None:
    """The ticket of one archive line, parsing the messages only if the cheap cut fails (they are
    most of the bytes: the store writes `{"ticket": ..., "messages": [...]}` in that order)."""
    i = line.find(b',"messages":[')
    if i > 0:
        try:
            entry = _loads(line[:i] + b"}")
            if isinstance(entry, dict) and isinstance(entry.get("ticket"), dict):
                return entry["ticket"]
        except ValueError:
            pass
    try:
        entry = _loads(line)
    except ValueError:
        return None  # a torn last line (the daemon is appending): the next report reads it
    t = entry.get("ticket") if isinstance(entry, dict) else None
    return t if isinstance(t, dict) and t.get("id") else None


def _cache_line(s: dict) -> bytes:
    return f"{s['id']}\t{s.get('last') or 0}\t{s.get('status') or ''}\t".encode() + _dumps(s) + b"\n"


class _MonthCache:
    """The summaries of one archive month file, kept up to date incrementally."""

    def __init__(self, src: Path, cache_dir: Path, fp: str, cfg: Config):
        self.src, self.cfg = src, cfg
        stem = src.name[:-len(".jsonl")]
        self.stem = stem
        self.cache = cache_dir / f"{stem}.{fp}.jsonl"
        self.state = cache_dir / f"{stem}.{fp}.state"
        self.cache_dir = cache_dir

    def _load_state(self) -> dict:
        try:
            return json.loads(self.state.read_text())
        except (OSError, ValueError):
            return {}

    def _summaries(self, start: int, stop: int) -> Iterator[bytes]:
        with open(self.src, "rb") as f:
            f.seek(start)
            left = stop - start
            for line in f:
                left -= len(line)
                if left < 0:
                    break
                t = _ticket_of(line)
                if t is not None:
                    yield _cache_line(summary.summarize(t, self.cfg))

    def refresh(self) -> int | None:
        """Bring the cache up to the month file's last complete line; the cache's length in bytes
        (read no further: another report may append), or None when it cannot be written (the caller
        then summarizes in memory)."""
        st = os.stat(self.src)
        size = self._complete_size(st.st_size)
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(self.cache_dir / ".lock"), timeout=120)
            lock.acquire()
        except (OSError, Timeout) as e:
            log.debug("report cache not writable (%s): summarizing %s in memory", e, self.src.name)
            return None
        try:
            state = self._load_state()
            same = state.get("ino") == st.st_ino and state.get("src_size", -1) <= size and self.cache.exists()
            if same and state["src_size"] == size:
                return int(state.get("cache_size", 0))
            start = state["src_size"] if same else 0
            if not same:
                for old in self.cache_dir.glob(f"{self.stem}.*"):  # another config's cache of this month
                    old.unlink(missing_ok=True)
            with open(self.cache, "r+b" if same else "wb") as out:
                if same:
                    out.truncate(int(state.get("cache_size", 0)))
                    out.seek(0, os.SEEK_END)
                for line in self._summaries(start, size):
                    out.write(line)
                out.flush()
                os.fsync(out.fileno())
                cache_size = out.tell()
            tmp = self.state.with_suffix(".tmp")
            tmp.write_text(json.dumps({"ino": st.st_ino, "src_size": size, "cache_size": cache_size}))
            os.replace(tmp, self.state)
            return cache_size
        except OSError as e:
            log.warning("report cache %s: %s; summarizing in memory", self.cache, e)
            return None
        finally:
            lock.release()

    def _complete_size(self, size: int) -> int:
        """Bytes up to the last newline (a line still being appended is left for next time)."""
        if size == 0:
            return 0
        with open(self.src, "rb") as f:
            back = min(size, 1 << 16)
            while True:
                f.seek(size - back)
                chunk = f.read(back)
                i = chunk.rfind(b"\n")
                if i >= 0:
                    return size - back + i + 1
                if back >= size:
                    return 0
                back = min(size, back * 4)

    def lines(self) -> Iterator[bytes]:
        """Cache lines (or freshly made ones), the newest copy of each ticket only."""
        length = self.refresh()
        if length is None:
            size = self._complete_size(os.stat(self.src).st_size)
            yield from _newest(list(self._summaries(0, size)))
            return
        with open(self.cache, "rb") as f:
            lines = f.read(length).split(b"\n")  # one month at a time: memory stays flat over the history
        lines.pop()  # the part after the last newline (empty, or a line another report is writing)
        yield from _newest(lines)


def _newest(lines: list[bytes]) -> Iterator[bytes]:
    """The lines of the newest copy of each ticket (the last line with its id)."""
    last = {line[:line.find(b"\t")]: i for i, line in enumerate(lines)}
    if len(last) == len(lines):  # no ticket twice (the usual case)
        yield from lines
        return
    for i, line in enumerate(lines):
        if last[line[:line.find(b"\t")]] == i:
            yield line


def iter_summaries(store, cfg: Config, created_from: int | None = None, created_to: int | None = None, *,
                   skip_before: int | None = None, full_from: int | None = None,
                   on_progress: Callable[[int], None] | None = None) -> Iterator[dict]:
    """Summaries of every hot ticket created before `created_to` (an open ticket of any age is
    backlog) and of every archived ticket created in [created_from, created_to) (epoch seconds;
    None: unbounded); a hot copy beats an archived one, the newest archived copy beats older ones.

    `skip_before`: archived tickets whose last activity came before it may be left out (they cannot
    count in any period that starts later). `full_from`: an archived ticket whose last activity came
    before it may come with only what the CSAT trend's older periods read (report_metrics.compute:
    v, id, created, last, status, team, rat), and not at all without a rating: a store that can
    filter in its query does (PostgreSQL), the others ignore it. `store` may be None (no data
    directory yet)."""
    if store is None:
        return
    hot_ids: set[str] = set()
    n = 0
    for tid, s in _hot_summaries(store, cfg):
        hot_ids.add(tid)
        if s["created"] is not None and (created_to is None or s["created"] < created_to):
            yield s
        n += 1
        if on_progress is not None and n % 1000 == 0:
            on_progress(n)
    indexed = getattr(store, "iter_archived_summaries", None)
    texts = getattr(store, "archived_summary_texts", None)  # PostgreSQL: filtered in SQL, parsed here
    if indexed is not None:
        got = (_from_index(texts, hot_ids, created_from, created_to, last_from=skip_before, full_from=full_from)
               if texts is not None else _from_index(indexed, hot_ids, created_from, created_to))
        first = next(got, None)
        if first is None or first.get("v") == summary.VERSION:
            if first is not None:
                yield first
            for s in got:
                yield s
            return
        log.warning("the archive index holds summaries of layout %s, not %s: reading the month files "
                    "instead (rebuild the index)", first.get("v"), summary.VERSION)
    archive = Path(store.dir) / "archive"
    fp = fingerprint(cfg)
    skip = skip_before or 0
    for path in month_files(archive, created_from, created_to):
        for line in _MonthCache(path, archive / CACHE_DIR, fp, cfg).lines():
            tid, last, status, rest = line.split(b"\t", 3)
            n += 1
            if on_progress is not None and n % 10000 == 0:
                on_progress(n)
            if int(last) < skip and status.decode() not in OPEN:
                continue
            if tid.decode() in hot_ids:
                continue
            s = _loads(rest)
            c = s.get("created")
            if c is None or (created_from is not None and c < created_from) or \
                    (created_to is not None and c >= created_to):
                continue
            yield s


def _hot_summaries(store, cfg: Config) -> Iterator[tuple[str, dict]]:
    """(id, summary) of every hot ticket: the store's cache of them where it keeps one (PostgreSQL:
    `PgStore.hot_summaries`), else summarized here."""
    cached = getattr(store, "hot_summaries", None)
    if cached is not None:
        yield from cached(cfg)
        return
    with store.mutex:  # a snapshot: the daemon's threads replace fields and event lists, never edit them
        hot = [dict(t) for t in store.all_tickets()]
    for t in hot:
        yield t.get("id"), summary.summarize(t, cfg)


def _from_index(indexed, hot_ids: set[str], created_from: int | None, created_to: int | None, **kw
                ) -> Iterator[dict]:
    def iso(ts: int | None) -> str | None:
        return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts is not None else None

    for s in indexed(created_from=iso(created_from), created_to=iso(created_to), **kw):
        if isinstance(s, bytes | str):
            s = _loads(s)
        if s.get("id") in hot_ids:
            continue
        yield s
