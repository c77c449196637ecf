"""`mailflow tickets search`: hot and archived tickets alike, by customer, words, dates, status.

Archived tickets are found through the index (archive/index.sqlite): an address, a date range
and a status are one indexed query each, and no month file is read for them. Words need the
text, so with `--text` the candidates are read: by offset when another filter narrowed them,
else by scanning the month files of the date range (named by creation month) with a bytes
pre-filter before any JSON is parsed. A ticket both hot and archived is shown once, from the
hot copy (which wins everywhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from mailflow.archive import MONTH_GLOB, iter_lines
from mailflow.clock import iso
from mailflow.store import Store, _dumps, _loads, raw_items

NARROW = 5_000  # up to this many index candidates are read by offset; more: scan the month files


@dataclass
class Query:
    customer: str | None = None
    text: str | None = None
    created_from: str | None = None  # ISO UTC, inclusive
    created_to: str | None = None  # ISO UTC, exclusive
    status: str | None = None
    limit: int = 100

    @property
    def words(self) -> list[str]:
        return [w.lower() for w in (self.text or "").split() if w]


def day_bounds(value: str | None, tz: ZoneInfo, end: bool = False) -> str | None:
    """`2026-11-23` (a day in the team's time zone) or a full ISO instant -> ISO UTC. For `--to`
    a bare day means the end of that day."""
    if not value:
        return None
    v = value.strip()
    try:
        d = date.fromisoformat(v)
    except ValueError:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
        return iso(dt if dt.tzinfo else dt.replace(tzinfo=tz))
    start = datetime.combine(d + timedelta(days=1) if end else d, time(0), tzinfo=tz)
    return iso(start)


def _row(t: dict, archived: bool, n_msgs: int | None = None) -> dict:
    return {"id": t["id"], "status": t.get("status"), "close_reason": t.get("close_reason"),
            "category": t.get("category"), "priority": t.get("priority"),
            "customer_email": t.get("customer_email"), "subject": t.get("subject"),
            "created_at": t.get("created_at"), "closed_at": t.get("closed_at"), "team": t.get("team"),
            "assignee": t.get("assignee"), "message_count": n_msgs, "archived": archived}


def _concerns(addr: str, t: dict, msgs: list[dict]) -> bool:
    if (t.get("customer_email") or "").lower() == addr or addr in [p.lower() for p in t.get("participants") or []]:
        return True
    for m in msgs:
        if (m.get("from") or "").lower() == addr or addr in [a.lower() for a in
                                                            [*(m.get("to") or []), *(m.get("cc") or [])]]:
            return True
    return False


def _has_words(words: list[str], t: dict, msgs: list[dict]) -> bool:
    hay = "\n".join([t.get("subject") or "", t.get("customer_name") or "",
                     *[f"{m.get('subject') or ''}\n{m.get('text') or ''}" for m in msgs]]).lower()
    return all(w in hay for w in words)


def _match(q: Query, t: dict, msgs: list[dict]) -> bool:
    c = t.get("created_at") or ""
    if q.created_from and c < q.created_from or q.created_to and c >= q.created_to:
        return False
    if q.status and t.get("status") != q.status:
        return False
    if q.customer and not _concerns(q.customer.lower(), t, msgs):
        return False
    return not q.words or _has_words(q.words, t, msgs)


def _mentions(store: Store, table: str, needles: list[bytes]) -> list[dict]:
    """Documents of a hot table whose JSON holds any needle (lower case), found before any is
    parsed: in a table not yet split (a one-shot command) by searching its bytes as one block and
    parsing only the lines around each hit; else line by line."""
    t = store._table(table)
    block = getattr(t, "_block", None)
    out: list[dict] = []
    if block is not None:
        low = block.lower()
        starts: set[int] = set()
        for n in needles:
            i = low.find(n)
            while i >= 0:
                a = low.rfind(b",\n", 0, i)
                a = 0 if a < 0 else a + 2
                b = low.find(b",\n", i)
                b = len(low) if b < 0 else b
                if a not in starts:
                    starts.add(a)
                    line = block[a:b]
                    out.append(_loads(memoryview(line)[line.index(b'":') + 2:]))
                i = low.find(n, b)
        return out
    for k, v in list(raw_items(t)):
        raw = v if type(v) is bytes else _dumps(v)
        if any(n in raw.lower() for n in needles):
            out.append(t[k])
    return out


def search(store, q: Query) -> tuple[list[dict], bool]:
    """(matching tickets newest first, at most q.limit; whether more matched): the store's own
    query (TinyDB: `search_tinydb`; PostgreSQL: indexed SQL)."""
    return store.search(q)


def search_tinydb(store: Store, q: Query) -> tuple[list[dict], bool]:
    """The TinyDB store's search: hot tables' bytes, then the archive index and month files."""
    out: dict[str, dict] = {}
    hot = set(store.hot_ticket_ids())
    if q.customer or q.words:  # only tickets whose JSON or messages hold the address or a word
        needles = [q.customer.lower().encode()] if q.customer else [w.encode() for w in q.words]
        maybe = {m.get("ticket_id") for m in _mentions(store, "messages", needles)}
        maybe |= {t["id"] for t in _mentions(store, "tickets", needles)}
        for tid in sorted(maybe & hot):
            t = store.ticket(tid)
            if t is not None and _match(q, t, store.messages_of(tid)):
                out[tid] = _row(t, False, None)
    else:
        for t in store.all_tickets():
            if _match(q, t, []):
                out[t["id"]] = _row(t, False, None)
    idx = store.archive_index
    if q.words and not q.customer and not q.status:
        found = _scan_months(store, q, hot)
    else:
        rows = idx.search(q.customer, q.created_from, q.created_to, q.status,
                          limit=None if q.words else q.limit + 1 + len(hot))
        found = []
        if q.words and len(rows) > NARROW:
            found = _scan_months(store, q, hot, only={r["ticket_id"] for r in rows})
        else:
            for r in rows:
                if r["ticket_id"] in hot:
                    continue
                if q.words:
                    e = idx.read(r["ticket_id"])
                    if e is None or not _match(q, e["ticket"], e.get("messages") or []):
                        continue
                    found.append(_row(e["ticket"], True, len(e.get("messages") or [])))
                else:
                    found.append({"id": r["ticket_id"], "status": r["status"], "customer_email": r["customer"],
                                  "subject": r["subject"], "created_at": r["created_at"],
                                  "closed_at": r["closed_at"], "message_count": None, "archived": True})
    for r in found:
        out.setdefault(r["id"], r)
    rows = sorted(out.values(), key=lambda r: (r.get("created_at") or "", r["id"]), reverse=True)
    return rows[: q.limit], len(rows) > q.limit


def _scan_months(store: Store, q: Query, hot: set[str], only: set[str] | None = None) -> list[dict]:
    """Read the month files the date range touches, newest copy of each ticket only."""
    adir = store.dir / "archive"
    lo = (q.created_from or "")[:7]
    hi = (q.created_to or "9999-99")[:7]
    needles = [w.encode() for w in q.words]
    idx = store.archive_index
    out = []
    for path in sorted(adir.glob(MONTH_GLOB), reverse=True):
        month = path.name[:7]
        if month < lo or month > hi:
            continue
        for off, line in iter_lines(path):
            low = line.lower()
            if not all(n in low for n in needles):
                continue
            try:
                e = _loads(line)
                t = e["ticket"]
            except (ValueError, KeyError, TypeError):
                continue
            tid = t.get("id")
            if tid in hot or (only is not None and tid not in only):
                continue
            loc = idx.locate(tid)
            if loc is None or (loc.file, loc.offset) != (path.name, off):
                continue  # an older copy; the newest one is matched where it is
            if _match(q, t, e.get("messages") or []):
                out.append(_row(t, True, len(e.get("messages") or [])))
    return out

