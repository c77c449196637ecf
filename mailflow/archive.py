"""The on-disk index of the archive: `archive/index.sqlite` beside the monthly archive files.

The month files (`archive/YYYY-MM.jsonl`, one `{"ticket": ..., "messages": [...]}` per line,
appended in time order, the newest copy of a ticket last) stay the source of truth; this index is
derived from them (`rebuild`, `mailflow verify --repair`) and answers, without reading them:

- which archived ticket a Message-ID belongs to (threading, idempotency): table `msgid`;
- where an archived ticket is (month file, byte offset, length) plus the fields `tickets search`
  filters on and a per-ticket summary for reports: table `ticket`;
- which tickets an address appears on (customer, participant, sender or recipient of one of its
  messages): table `customer`, for search, export and erase.

Why sqlite (stdlib) and not a dict or a sorted text file: the old index (`index.jsonl`, read
whole into a dict) cost +770 MB of RAM and seconds of start-up per year of history; a B-tree on
disk answers a point query in microseconds with a page cache of a few MB, takes appends in one
transaction per housekeeping run, and readers in other processes (the CLI while the daemon runs)
see a consistent state (WAL). It is opened lazily: a process that never looks at the archive
never opens it.

Crash order when archiving (Store.archive): month file appended and fsynced, then this index
committed (synchronous=FULL), then the hot database commit drops the tickets. A crash between
any two steps leaves a ticket both archived and hot; the hot copy wins everywhere, and the next
archive run appends a newer copy and points the index at it.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("mailflow.archive")

SCHEMA = 1
INDEX_NAME = "index.sqlite"
MONTH_GLOB = "[0-9][0-9][0-9][0-9]-[0-9][0-9].jsonl"

try:
    import orjson

    def _loads(b: bytes | str) -> Any:
        return orjson.loads(b)

    def _dumps(v: Any) -> bytes:
        return orjson.dumps(v)
except ImportError:  # pragma: no cover - orjson is a declared dependency
    import json

    def _loads(b: bytes | str) -> Any:
        return json.loads(b)

    def _dumps(v: Any) -> bytes:
        return json.dumps(v, ensure_ascii=False, separators=(",", ":")).encode()


_DDL = """
CREATE TABLE IF NOT EXISTS info(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS ticket(
    ticket_id TEXT PRIMARY KEY, file TEXT NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL,
    customer TEXT, created_at TEXT, closed_at TEXT, status TEXT, subject TEXT, summary TEXT);
CREATE INDEX IF NOT EXISTS ticket_created ON ticket(created_at, ticket_id);
CREATE INDEX IF NOT EXISTS ticket_file ON ticket(file);
CREATE TABLE IF NOT EXISTS msgid(message_id TEXT PRIMARY KEY, ticket_id TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS msgid_ticket ON msgid(ticket_id);
CREATE TABLE IF NOT EXISTS customer(addr TEXT NOT NULL, ticket_id TEXT NOT NULL,
    PRIMARY KEY(addr, ticket_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS customer_ticket ON customer(ticket_id);
CREATE TABLE IF NOT EXISTS report_gen(day TEXT PRIMARY KEY, stamp TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS report_cache(key TEXT PRIMARY KEY, at INTEGER NOT NULL, data BLOB NOT NULL);
CREATE TRIGGER IF NOT EXISTS report_gen_ins AFTER INSERT ON ticket BEGIN
    INSERT OR REPLACE INTO report_gen VALUES(coalesce(date(NEW.created_at), '-'), lower(hex(randomblob(8)))); END;
CREATE TRIGGER IF NOT EXISTS report_gen_del AFTER DELETE ON ticket BEGIN
    INSERT OR REPLACE INTO report_gen VALUES(coalesce(date(OLD.created_at), '-'), lower(hex(randomblob(8)))); END;
CREATE TRIGGER IF NOT EXISTS report_gen_upd AFTER UPDATE ON ticket BEGIN
    INSERT OR REPLACE INTO report_gen VALUES(coalesce(date(OLD.created_at), '-'), lower(hex(randomblob(8))));
    INSERT OR REPLACE INTO report_gen VALUES(coalesce(date(NEW.created_at), '-'), lower(hex(randomblob(8)))); END;
"""
# report_gen: a stamp per UTC creation day, new whenever an indexed ticket created that day is added,
# replaced or removed (by any writer: archive, erase, retention, repair, rebuild), so the reports'
# kept parts (report_cache, mailflow/report_cache.py) know when they are stale.
REPORT_CACHE_KEEP = 32  # rows: two a report


@dataclass
class Located:
    ticket_id: str
    file: str
    offset: int
    length: int


def month_of(ticket: dict) -> str:
    """The month file an archived ticket goes to: its UTC creation month."""
    return f"{(ticket.get('created_at') or '0000-00')[:7]}.jsonl"


def addresses_of(ticket: dict, messages: list[dict]) -> set[str]:
    """Every address an archived ticket concerns: requester, participants, senders of its mail and
    recipients of what we sent (not the support mailbox a customer wrote to)."""
    out = {ticket.get("customer_email") or "", *(ticket.get("participants") or [])}
    for m in messages:
        if m.get("direction") == "in":
            out.add(m.get("from") or "")
            out.update(m.get("cc") or [])
        else:
            out.update(m.get("to") or [])
    return {a.lower() for a in out if isinstance(a, str) and "@" in a}


_SUMMARIZE: list = []  # [function or None], looked up once per process


def _summarizer():
    if not _SUMMARIZE:
        try:
            _SUMMARIZE.append(getattr(importlib.import_module("mailflow.summary"), "summarize", None))
        except ImportError:
            _SUMMARIZE.append(None)
    return _SUMMARIZE[0]


def summary_of(ticket: dict, cfg: Any = None) -> dict:
    """What reports need of an archived ticket without reading the month file: `summary.summarize`
    (the reports module) when it is there and the config is known (it needs the SLA calendars),
    else the ticket's top-level fields minus its history (reports then read the month files)."""
    fn = _summarizer() if cfg is not None else None
    if fn is not None:
        try:
            return fn(ticket, cfg)
        except Exception as e:  # a report bug must never stop archiving
            log.warning("summary of %s failed (%s: %s); storing the plain fields", ticket.get("id"),
                        type(e).__name__, e)
    return {k: v for k, v in ticket.items() if k not in ("events", "messages")}


def entry_rows(entry: dict, file: str, offset: int, length: int, cfg: Any = None) -> tuple:
    """(ticket row, msgid rows, customer rows) for one archive line."""
    t, msgs = entry.get("ticket") or {}, entry.get("messages") or []
    tid = t["id"]
    row = (tid, file, offset, length, (t.get("customer_email") or "").lower(), t.get("created_at") or "",
           t.get("closed_at"), t.get("status"), t.get("subject"), _dumps(summary_of(t, cfg)).decode())
    mids = [(m["message_id"], tid) for m in msgs if m.get("message_id")]
    custs = [(a, tid) for a in addresses_of(t, msgs)]
    return row, mids, custs


def iter_lines(path: Path, start: int = 0) -> Iterator[tuple[int, bytes]]:
    """(offset, line without its newline) of every complete line of a month file."""
    with open(path, "rb") as f:
        f.seek(start)
        off = start
        for line in f:
            if not line.endswith(b"\n"):
                return  # a torn last line: an append a crash cut short (its ticket is still hot)
            yield off, line[:-1]
            off += len(line)


def append_lines(path: Path, lines: list[bytes]) -> list[tuple[int, int]]:
    """Append archive lines (each ending in a newline) durably; (offset, length) of each.

    A torn last line left by a crash is cut off first, so it can never swallow the next entry."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        size = os.fstat(fd).st_size
        if size:
            end = size
            while end > 0:  # back to just after the last newline
                step = min(65536, end)
                os.lseek(fd, end - step, os.SEEK_SET)
                chunk = os.read(fd, step)
                i = chunk.rfind(b"\n")
                if i >= 0:
                    end = end - step + i + 1
                    break
                end -= step
            if end != size:
                log.warning("%s: cutting off a torn last line (%d bytes) before appending", path, size - end)
                os.ftruncate(fd, end)
                size = end
        os.lseek(fd, size, os.SEEK_SET)
        out, off = [], size
        data = b"".join(lines)
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        for ln in lines:
            out.append((off, len(ln) - 1))
            off += len(ln)
        os.fsync(fd)
    finally:
        os.close(fd)
    return out


class ArchiveIndex:
    """`archive/index.sqlite`. Thread-safe (one connection, one lock); opened on first use."""

    def __init__(self, archive_dir: Path, create: bool = True):
        self.dir = Path(archive_dir)
        self.path = self.dir / INDEX_NAME
        self.create = create
        self._db: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self.cfg: Any = None  # for summaries; set by whoever knows the config

    # ---- connection -------------------------------------------------------------------------

    def month_files(self) -> list[Path]:
        return sorted(self.dir.glob(MONTH_GLOB))

    def _open(self) -> sqlite3.Connection | None:
        if self._db is not None:
            return self._db
        exists = self.path.exists()
        if not exists and not self.create:
            return None
        if not exists:
            self.dir.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(self.path), timeout=60, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout=60000")
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # derived, but a lost commit would hide tickets
            db.execute("PRAGMA secure_delete=ON")  # privacy erase: deleted rows leave no trace
            db.executescript(_DDL)
            with contextlib.suppress(OSError):
                os.chmod(self.path, 0o600)
        except sqlite3.Error:
            db.close()
            raise
        self._db = db
        built = db.execute("SELECT value FROM info WHERE key='built'").fetchone()
        if built is None:
            self._first_build()
        return db

    def _first_build(self) -> None:
        """An index that was never built (a new data directory, or one from before the index):
        derive it from the month files, then drop the old Message-ID list."""
        files = self.month_files()
        if files:
            log.info("building the archive index from %d month file(s) (once)", len(files))
            self.rebuild()
        else:
            with self.transaction() as db:
                db.execute("INSERT OR REPLACE INTO info VALUES('built', '1'), ('schema', ?)", (str(SCHEMA),))
        legacy = self.dir / "index.jsonl"
        if legacy.exists():
            legacy.unlink()

    def ensure(self) -> None:
        """Open (and on first use build) the index now: before anything is appended to a month
        file, so a first build never indexes what the caller is about to index."""
        with self._lock:
            self._open()

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = self._open()
            assert db is not None
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            db = self._open()
            if db is None:
                return []
            return db.execute(sql, args).fetchall()

    # ---- point queries ----------------------------------------------------------------------

    def ticket_of(self, message_id: str) -> str | None:
        rows = self._query("SELECT ticket_id FROM msgid WHERE message_id=?", (message_id,))
        return rows[0][0] if rows else None

    def has(self, tid: str) -> bool:
        return bool(self._query("SELECT 1 FROM ticket WHERE ticket_id=?", (tid,)))

    def locate(self, tid: str) -> Located | None:
        rows = self._query("SELECT ticket_id, file, offset, length FROM ticket WHERE ticket_id=?", (tid,))
        return Located(*rows[0]) if rows else None

    def read(self, tid: str) -> dict | None:
        """The archived entry of `tid` (its newest copy), read at the offset the index gives."""
        loc = self.locate(tid)
        if loc is None:
            return None
        try:
            with open(self.dir / loc.file, "rb") as f:
                f.seek(loc.offset)
                raw = f.read(loc.length)
            entry = _loads(raw)
        except (OSError, ValueError):
            return None
        return entry if (entry.get("ticket") or {}).get("id") == tid else None

    def count(self) -> int:
        rows = self._query("SELECT count(*) FROM ticket")
        return rows[0][0] if rows else 0

    def message_count(self) -> int:
        rows = self._query("SELECT count(*) FROM msgid")
        return rows[0][0] if rows else 0

    def ticket_ids(self) -> Iterator[str]:
        """Every archived ticket id (streamed in pages, never all in memory)."""
        last = ""
        while True:
            rows = self._query("SELECT ticket_id FROM ticket WHERE ticket_id > ? ORDER BY ticket_id LIMIT 5000",
                               (last,))
            if not rows:
                return
            for (tid,) in rows:
                yield tid
            last = rows[-1][0]

    # ---- searching --------------------------------------------------------------------------

    def search(self, customer: str | None = None, created_from: str | None = None,
               created_to: str | None = None, status: str | None = None, limit: int | None = None
               ) -> list[dict]:
        """Index rows (no month file read) matching every filter given; newest first."""
        where, args = [], []
        sql = "SELECT t.ticket_id, t.file, t.offset, t.length, t.customer, t.created_at, t.closed_at, " \
              "t.status, t.subject FROM ticket t"
        if customer:
            sql += " JOIN customer c ON c.ticket_id = t.ticket_id"
            where.append("c.addr = ?")
            args.append(customer.lower())
        if created_from:
            where.append("t.created_at >= ?")
            args.append(created_from)
        if created_to:
            where.append("t.created_at < ?")
            args.append(created_to)
        if status:
            where.append("t.status = ?")
            args.append(status)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY t.created_at DESC, t.ticket_id DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        keys = ("ticket_id", "file", "offset", "length", "customer", "created_at", "closed_at", "status", "subject")
        return [dict(zip(keys, r, strict=True)) for r in self._query(sql, tuple(args))]

    def tickets_of(self, addr: str) -> list[str]:
        return [r[0] for r in self._query("SELECT ticket_id FROM customer WHERE addr=? ORDER BY ticket_id",
                                          (addr.lower(),))]

    def iter_summaries(self, created_from: str | None = None, created_to: str | None = None
                       ) -> Iterator[dict]:
        """The stored summary of every archived ticket created in [from, to), in creation order,
        streamed in pages of 2,000 rows (memory stays flat over any history)."""
        last_c, last_t = created_from or "", ""
        while True:
            sql = "SELECT created_at, ticket_id, summary FROM ticket WHERE (created_at, ticket_id) > (?, ?)"
            args: list = [last_c, last_t]
            if created_to:
                sql += " AND created_at < ?"
                args.append(created_to)
            sql += " ORDER BY created_at, ticket_id LIMIT 2000"
            rows = self._query(sql, tuple(args))
            if not rows:
                return
            for _c, _tid, s in rows:
                yield _loads(s) if s else {}
            last_c, last_t = rows[-1][0], rows[-1][1]

    # ---- the reports' cache (mailflow/report_cache.py) ---------------------------------------

    def report_day_stamps(self, day_from: str, day_to: str) -> dict[str, str]:
        """{UTC day: stamp} of the creation days in [day_from, day_to] (ISO dates) that have one."""
        return dict(self._query("SELECT day, stamp FROM report_gen WHERE day >= ? AND day <= ?", (day_from, day_to)))

    def report_cache_get(self, key: str) -> bytes | None:
        rows = self._query("SELECT data FROM report_cache WHERE key = ?", (key,))
        return bytes(rows[0][0]) if rows else None

    def report_cache_put(self, key: str, data: bytes) -> None:
        """Keep a report's parts; the oldest beyond REPORT_CACHE_KEEP go."""
        import time

        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO report_cache VALUES(?, ?, ?)", (key, int(time.time()), data))
            db.execute("DELETE FROM report_cache WHERE key NOT IN (SELECT key FROM report_cache ORDER BY at DESC, key "
                       "LIMIT ?)", (REPORT_CACHE_KEEP,))

    def report_cache_keys(self) -> list[str]:
        """The kept rows' keys, the most recently written first."""
        return [k for (k,) in self._query("SELECT key FROM report_cache ORDER BY at DESC, key")]

    def created_of(self, tids: list[str]) -> dict[str, str]:
        """{id: created_at} of those of `tids` that are in the index (hot tickets also archived:
        brought back by a reply, or an interrupted archive run)."""
        out: dict[str, str] = {}
        for i in range(0, len(tids), 500):
            chunk = tids[i:i + 500]
            out.update(self._query(f"SELECT ticket_id, created_at FROM ticket WHERE ticket_id IN "
                                   f"({','.join('?' * len(chunk))})", tuple(chunk)))
        return out

    # ---- writing ----------------------------------------------------------------------------

    def add(self, rows: Iterable[tuple]) -> None:
        """Index archive lines in one transaction: rows from `entry_rows`; a ticket already indexed
        now points at this (newer) copy."""
        rows = list(rows)
        if not rows:
            return
        with self.transaction() as db:
            self._insert(db, rows)

    @staticmethod
    def _insert(db: sqlite3.Connection, rows: list[tuple]) -> None:
        db.executemany("INSERT OR REPLACE INTO ticket VALUES(?,?,?,?,?,?,?,?,?,?)", [r[0] for r in rows])
        db.executemany("INSERT OR REPLACE INTO msgid VALUES(?,?)", [m for r in rows for m in r[1]])
        db.executemany("INSERT OR IGNORE INTO customer VALUES(?,?)", [c for r in rows for c in r[2]])

    def forget(self, db: sqlite3.Connection, tids: Iterable[str]) -> None:
        """Remove tickets (and their Message-IDs and addresses) inside a `transaction()`."""
        for tid in tids:
            db.execute("DELETE FROM ticket WHERE ticket_id=?", (tid,))
            db.execute("DELETE FROM msgid WHERE ticket_id=?", (tid,))
            db.execute("DELETE FROM customer WHERE ticket_id=?", (tid,))

    def reindex_file(self, db: sqlite3.Connection, name: str, cfg: Any = None) -> int:
        """Inside a `transaction()`: point the index at what month file `name` holds now (after it
        was rewritten: offsets moved, tickets gone). Returns the tickets indexed."""
        old = [r[0] for r in db.execute("SELECT ticket_id FROM ticket WHERE file=?", (name,))]
        self.forget(db, old)
        rows = self._rows_of_file(self.dir / name, cfg)
        self._insert(db, rows)
        return len(rows)

    def _rows_of_file(self, path: Path, cfg: Any = None) -> list[tuple]:
        newest: dict[str, tuple] = {}
        if not path.exists():
            return []
        for off, line in iter_lines(path):
            try:
                entry = _loads(line)
                tid = entry["ticket"]["id"]
            except (ValueError, KeyError, TypeError):
                continue  # verify reports it; the index cannot point at it
            newest[tid] = entry_rows(entry, path.name, off, len(line), cfg)
        return list(newest.values())

    def rebuild(self, cfg: Any = None) -> dict[str, int]:
        """Derive the whole index from the month files, in one transaction (readers see the old
        index or the new one). A ticket copied into several files: the file sorted last wins."""
        stats = {"files": 0, "tickets": 0, "messages": 0}
        with self.transaction() as db:
            db.execute("DELETE FROM ticket")
            db.execute("DELETE FROM msgid")
            db.execute("DELETE FROM customer")
            for path in self.month_files():
                rows = self._rows_of_file(path, cfg or self.cfg)
                self._insert(db, rows)  # a later file's copy replaces an earlier one
                stats["files"] += 1
                stats["tickets"] += len(rows)
                stats["messages"] += sum(len(r[1]) for r in rows)
            db.execute("INSERT OR REPLACE INTO info VALUES('built', '1'), ('schema', ?)", (str(SCHEMA),))
        stats["tickets"] = self.count()
        return stats

    def vacuum(self) -> None:
        """After an erase: no freed page keeps old rows, and the WAL is emptied."""
        with self._lock:
            db = self._open()
            if db is None:
                return
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            db.execute("VACUUM")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def pin(self) -> sqlite3.Connection | None:
        """A separate connection holding a read transaction: the index as it is now, whatever is
        committed later (WAL). Taken under the store's lock, copied with `copy_pinned` after it is
        released, so a backup holds the lock for milliseconds, not for the index's size."""
        if not self.path.exists():
            return None
        with self._lock:
            self._open()  # schema and first build done by the main connection
        db = sqlite3.connect(str(self.path), timeout=60, check_same_thread=False, isolation_level=None)
        db.execute("BEGIN")
        db.execute("SELECT count(*) FROM info").fetchone()  # the snapshot starts here
        return db

    @staticmethod
    def copy_pinned(pinned: sqlite3.Connection, dest: Path) -> None:
        """The pinned state as one plain file (sqlite's online backup API), then unpin."""
        out = sqlite3.connect(str(dest))
        try:
            pinned.backup(out)
            out.execute("PRAGMA journal_mode=DELETE")
        finally:
            out.close()
            pinned.execute("COMMIT")
            pinned.close()

    def backup_to(self, dest: Path) -> None:
        """A consistent copy of the index as one plain file."""
        pinned = self.pin()
        if pinned is not None:
            self.copy_pinned(pinned, dest)
