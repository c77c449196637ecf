"""TinyDB ticket store: atomic, locked, batched; hot database plus monthly archives.

TinyDB's own JSONStorage rewrites the file in place and re-reads it on every call (DESIGN.md 7), so:
- `AtomicStorage` keeps the parsed database in memory and writes a temp file, fsyncs, `os.replace`s
  and fsyncs the directory;
- `Store.batch()` holds a `filelock` for the whole batch, reloads if another process replaced the
  file, and writes once at the end: one disk write per fetched batch, never one per message;
- TinyDB's `Table.insert`/`update` copy the whole table on every call (measured: ~1 ms per insert
  and ~2 ms per update at 10k documents), so the store writes documents straight into the
  storage's table dicts (TinyDB's own file format, readable by any TinyDB tool) inside a batch and
  keeps its own indexes; TinyDB's query API stays available for reads;
- the hot database holds open and recently closed tickets; `archive()` moves long-closed tickets
  with their messages to `archive/YYYY-MM.json` and their message ids to an append-only index.
Message bodies live in the spool; the database keeps metadata and the cleaned text.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from filelock import FileLock
from tinydb import TinyDB
from tinydb.storages import Storage

try:  # orjson is ~10x faster for the whole-file dump; plain json works too
    import orjson

    def _dumps(data: Any) -> bytes:
        return orjson.dumps(data)

    def _loads(b: bytes) -> Any:
        return orjson.loads(b)
except ImportError:  # pragma: no cover
    def _dumps(data: Any) -> bytes:
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def _loads(b: bytes) -> Any:
        return json.loads(b)

from mailflow.clock import iso, parse_iso, utcnow
from mailflow.tickets import OPEN_STATUSES

__all__ = ["OPEN_STATUSES", "Store", "StoreError", "iso", "lock_process", "parse_iso", "utcnow", "write_atomic"]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file + fsync + rename + fsync(dir): a crash leaves the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class StoreError(Exception):
    pass


def lock_process(data_dir: Path):
    """One sender per data directory (the daemon, or `run --once`): an exclusive, non-blocking
    flock held for the life of the process. Returns the open file, or None if another holds it."""
    import fcntl

    f = open(Path(data_dir) / "daemon.lock", "a+")  # noqa: SIM115 - kept open while the process runs
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


class AtomicStorage(Storage):
    """In-memory copy of the database, written atomically and only when the store commits."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.data: dict[str, dict[str, Any]] | None = None
        self.stamp: tuple[int, int, int] | None = None
        self.dirty = False

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def stale(self) -> bool:
        return self.data is None or self._stat() != self.stamp

    def load(self) -> None:
        stamp = self._stat()
        if stamp is None:
            self.data, self.stamp = {}, None
            return
        raw = self.path.read_bytes()
        try:
            self.data = _loads(raw) if raw.strip() else {}
        except ValueError as e:
            raise StoreError(f"{self.path}: not valid JSON ({e}); restore it from a backup") from None
        self.stamp = stamp

    def read(self) -> dict[str, dict[str, Any]] | None:
        if self.data is None:
            self.load()
        return self.data

    def write(self, data: dict[str, dict[str, Any]]) -> None:
        self.data = data
        self.dirty = True

    def flush(self) -> None:
        if not self.dirty or self.data is None:
            return
        write_atomic(self.path, _dumps(self.data))
        self.stamp = self._stat()
        self.dirty = False

    def close(self) -> None:
        pass


@dataclass
class MsgRef:
    ticket_id: str | None
    direction: str


class Store:
    """The hot database with in-memory indexes. Use `with store.batch():` around every change."""

    TABLES = ("tickets", "messages", "outbox", "meta", "quarantine", "seen")

    def __init__(self, data_dir: Path, create: bool = True):
        """`create=False` is for readers (`status`) that must not leave directories behind."""
        self.dir = Path(data_dir)
        if create:
            for sub in ("spool", "quarantine", "attachments", "archive", "outbox"):
                (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.db_path = self.dir / "mailflow.json"
        self.lock = FileLock(str(self.dir / "mailflow.lock"))
        self.storage = AtomicStorage(self.db_path)
        self._in_batch = 0
        self.mutex = threading.RLock()
        self.index_path = self.dir / "archive" / "index.jsonl"
        self._archived_ids: dict[str, str] | None = None
        self._archived_tids: set[str] | None = None
        self._undo: list[tuple[str, str, dict | None]] | None = None
        self._undo_idx: list | None = None
        self._build_indexes()

    def tinydb(self) -> TinyDB:
        """A TinyDB view of the same data, for ad-hoc queries (reads only)."""
        return TinyDB(storage=lambda: self.storage)  # type: ignore[arg-type]

    # ---- loading and batching ---------------------------------------------------------------

    def _table(self, name: str) -> dict[str, dict]:
        data = self.storage.read()
        assert data is not None
        return data.setdefault(name, {})

    def _insert(self, name: str, doc: dict) -> int:
        self._require_batch()
        self._next[name] += 1
        if self._undo is not None:
            self._undo.append((name, str(self._next[name]), None))
        self._table(name)[str(self._next[name])] = doc
        self.storage.dirty = True
        return self._next[name]

    def _build_indexes(self) -> None:
        self.storage.read()
        self._next = {n: max((int(k) for k in self._table(n)), default=0) for n in self.TABLES}
        self._tid: dict[str, str] = {}
        self._cust: dict[str, list[str]] = {}
        for k, t in self._table("tickets").items():
            self._tid[t["id"]] = k
            self._cust.setdefault(t.get("customer_email", ""), []).append(k)
        self._msg: dict[str, list[tuple[str, MsgRef]]] = {}
        self._msgs_by_ticket: dict[str, list[str]] = {}
        for k, m in self._table("messages").items():
            self._index_message(k, m)
        self._seen: set[str] = {s["key"] for s in self._table("seen").values()}
        self._wake_of: dict[str, str] = {t["id"]: t["wake_at"] for t in self._table("tickets").values()
                                         if t.get("wake_at")}
        self._wakes: list[tuple[str, str]] = sorted((w, tid) for tid, w in self._wake_of.items())
        # tickets from before the scheduler existed (no `wake_at` key yet): looked at on the first pass
        self._unscheduled: set[str] = {t["id"] for t in self._table("tickets").values()
                                       if "wake_at" not in t and t.get("status") != "closed"}
        self._meta: dict[str, str] = {m["key"]: k for k, m in self._table("meta").items()}

    def _index_message(self, doc_id: str, m: dict) -> None:
        self._msg.setdefault(m["message_id"], []).append(
            (m.get("hash", ""), MsgRef(m.get("ticket_id"), m.get("direction", "in"))))
        if m.get("ticket_id"):
            self._msgs_by_ticket.setdefault(m["ticket_id"], []).append(doc_id)

    def refresh(self) -> None:
        """Reload if another process replaced the file (a cheap stat otherwise)."""
        with self.mutex:
            if self.storage.stale():
                self.storage.load()
                self._build_indexes()

    @contextlib.contextmanager
    def batch(self) -> Iterator[Store]:
        """Hold the file lock, work on a fresh copy, write once at the end (all or nothing)."""
        with self.mutex:
            if self._in_batch:
                self._in_batch += 1
                try:
                    yield self
                finally:
                    self._in_batch -= 1
                return
            with self.lock:
                self.refresh()
                self._in_batch = 1
                ok = False
                try:
                    yield self
                    ok = True
                finally:
                    self._in_batch = 0
                    if ok:
                        try:
                            self.storage.flush()
                        except BaseException:  # disk full...: the batch never happened
                            self._discard()
                            raise
                    else:  # drop the half-done batch: what is on disk is the truth
                        self._discard()

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        """Undo one message's changes if handling it fails, so the rest of the batch still commits.

        Rows and index entries are undone one by one (rebuilding every index instead took 1.5 s
        at 50k tickets: a batch of failing mail must not become a watchdog restart)."""
        self._require_batch()
        self._undo, self._undo_idx, next_before = [], [], dict(self._next)
        try:
            yield
        except BaseException:
            table_of = self._table
            for name, key, old in reversed(self._undo):
                if old is None:
                    table_of(name).pop(key, None)
                else:
                    table_of(name)[key] = old
            for undo in reversed(self._undo_idx):
                undo()
            self._next = next_before
            raise
        finally:
            self._undo = self._undo_idx = None

    def _index_undo(self, fn) -> None:
        if self._undo_idx is not None:
            self._undo_idx.append(fn)

    def _changing(self, name: str, key: str) -> dict:
        """The document about to change, after recording its old version for `savepoint`."""
        self._require_batch()
        doc = self._table(name)[key]
        if self._undo is not None:
            self._undo.append((name, key, dict(doc)))
        self.storage.dirty = True
        return doc

    def _discard(self) -> None:
        self.storage.dirty = False
        self.storage.load()
        self._build_indexes()
        self._archived_tids = None  # an unarchive in the dropped batch never happened

    def _require_batch(self) -> None:
        if not self._in_batch:
            raise StoreError("store change outside a batch")

    # ---- meta ---------------------------------------------------------------------------------

    def get_meta(self, key: str, default: Any = None) -> Any:
        k = self._meta.get(key)
        return self._table("meta")[k]["value"] if k else default

    def set_meta(self, key: str, value: Any) -> None:
        self._require_batch()
        k = self._meta.get(key)
        if k is None:
            self._meta[key] = str(self._insert("meta", {"key": key, "value": value}))
            self._index_undo(lambda: self._meta.pop(key, None))
        else:
            self._changing("meta", k)["value"] = value

    def peek_ticket_id(self, prefix: str, day: str) -> tuple[str, str, int]:
        """The next `<prefix><YYYYMMDD><serial>` (4 digits, widening past 9999, never reused):
        (ticket id, serial meta key, serial) — the serial is committed with the ticket."""
        key = f"serial:{prefix}:{day}"
        n = self.get_meta(key, 0) + 1
        while f"{prefix}{day}{n:04d}" in self._tid or f"{prefix}{day}{n:04d}" in self.archived_tickets():
            n += 1
        return f"{prefix}{day}{n:04d}", key, n

    def next_ticket_id(self, prefix: str, day: str) -> str:
        tid, key, n = self.peek_ticket_id(prefix, day)
        self.set_meta(key, n)
        return tid

    # ---- tickets ------------------------------------------------------------------------------

    def ticket(self, tid: str) -> dict | None:
        k = self._tid.get(tid)
        return self._table("tickets")[k] if k else None

    def all_tickets(self) -> list[dict]:
        return list(self._table("tickets").values())

    def add_ticket(self, t: dict) -> None:
        k = str(self._insert("tickets", t))
        self._tid[t["id"]] = k
        cust = self._cust.setdefault(t.get("customer_email", ""), [])
        cust.append(k)
        self._index_undo(lambda: (self._tid.pop(t["id"], None), cust.remove(k)))
        self._set_wake(t["id"], t.get("wake_at"))

    def update_ticket(self, tid: str, fields: dict) -> None:
        self._changing("tickets", self._tid[tid]).update(fields)
        if "wake_at" in fields:
            self._set_wake(tid, fields["wake_at"])

    # ---- the scheduler's index: when each ticket must be looked at again -------------------------

    def _set_wake(self, tid: str, when: str | None, undo: bool = True) -> None:
        self._unscheduled.discard(tid)
        old = self._wake_of.get(tid)
        if old == when:
            return
        if old is not None:
            i = bisect.bisect_left(self._wakes, (old, tid))
            if i < len(self._wakes) and self._wakes[i] == (old, tid):
                del self._wakes[i]
            del self._wake_of[tid]
        if when:
            bisect.insort(self._wakes, (when, tid))
            self._wake_of[tid] = when
        if undo:
            self._index_undo(lambda: self._set_wake(tid, old, undo=False))

    def next_wake(self) -> str | None:
        """The earliest instant (ISO) any hot ticket's timers need looking at, or None."""
        if self._unscheduled:
            return "0000"
        return self._wakes[0][0] if self._wakes else None

    def due_tickets(self, now: datetime, limit: int | None = None) -> list[str]:
        """Tickets whose wake-up time has come, earliest first (an index, not a scan of every ticket)."""
        cut = iso(now) or ""
        out = sorted(self._unscheduled)[:limit]
        for w, tid in self._wakes:
            if w > cut or (limit is not None and len(out) >= limit):
                break
            out.append(tid)
        return out

    def add_event(self, tid: str, kind: str, detail: str = "", at: datetime | None = None,
                  actor: str = "system") -> None:
        """Append to a ticket's history (who did what, which rules fired, bounces, caps hit)."""
        self.append_events(tid, [{"at": iso(at or utcnow()), "kind": kind, "actor": actor, "detail": detail}])

    def append_events(self, tid: str, events: list[dict]) -> None:
        t = self.ticket(tid)
        if t is None or not events:
            return
        self.update_ticket(tid, {"events": [*t.get("events", []), *events]})

    # ---- messages -----------------------------------------------------------------------------

    def add_message(self, m: dict) -> None:
        k = str(self._insert("messages", m))
        self._index_message(k, m)
        self._index_undo(lambda: self._unindex_message(k, m))

    def _unindex_message(self, k: str, m: dict) -> None:
        refs = self._msg.get(m["message_id"], [])
        if refs:
            refs.pop()
            if not refs:
                self._msg.pop(m["message_id"], None)
        by_t = self._msgs_by_ticket.get(m.get("ticket_id") or "", [])
        if k in by_t:
            by_t.remove(k)

    def messages_of(self, tid: str) -> list[dict]:
        table = self._table("messages")
        return [table[k] for k in self._msgs_by_ticket.get(tid, []) if k in table]

    def messages_of_mailbox(self, mailbox: str) -> list[dict]:
        """Every hot message that came in through one mailbox (a scan: for rare resyncs only)."""
        return [m for m in self._table("messages").values() if m.get("mailbox") == mailbox]

    def ticket_of_message_id(self, message_id: str) -> str | None:
        for _h, ref in self._msg.get(message_id, []):
            if ref.ticket_id:
                return ref.ticket_id
        return self.archived_ids().get(message_id)

    def is_own_message_id(self, message_id: str) -> bool:
        return any(ref.direction == "out" for _h, ref in self._msg.get(message_id, []))

    # ---- idempotency --------------------------------------------------------------------------

    @staticmethod
    def seen_key(message_id: str, content_hash: str) -> str:
        return f"{message_id}\x1f{content_hash}"

    def already_seen(self, message_id: str, content_hash: str) -> bool:
        if any(h == content_hash for h, _ref in self._msg.get(message_id, [])):
            return True
        if self.seen_key(message_id, content_hash) in self._seen:
            return True
        # archived tickets keep only Message-IDs: a replay of their mail is still a duplicate
        return message_id in self.archived_ids()

    def mark_seen(self, message_id: str, content_hash: str, outcome: str, now: datetime | None = None) -> None:
        """Remember a message that made no ticket message (auto-reply, own mail...) so replays skip it."""
        key = self.seen_key(message_id, content_hash)
        if key not in self._seen:
            self._insert("seen", {"key": key, "outcome": outcome, "at": iso(now or utcnow())})
            self._seen.add(key)
            self._index_undo(lambda: self._seen.discard(key))

    # ---- mailbox checkpoints ------------------------------------------------------------------

    def checkpoint(self, mailbox: str) -> dict:
        return dict(self.get_meta(f"mailbox:{mailbox}", {}) or {})

    def set_checkpoint(self, mailbox: str, **fields: Any) -> None:
        cp = self.checkpoint(mailbox)
        cp.update(fields)
        self.set_meta(f"mailbox:{mailbox}", cp)

    # ---- outbox rows --------------------------------------------------------------------------

    def add_outbox(self, row: dict) -> str:
        k = str(self._insert("outbox", row))
        row["row"] = k
        return k

    def outbox_rows(self) -> dict[str, dict]:
        return self._table("outbox")

    def update_outbox(self, k: str, fields: dict) -> None:
        self._changing("outbox", k).update(fields)

    def remove_outbox(self, keys: list[str]) -> None:
        self._require_batch()
        table = self._table("outbox")
        for k in keys:
            table.pop(k, None)
        self.storage.dirty = True

    # ---- quarantine ---------------------------------------------------------------------------

    def add_quarantine(self, q: dict) -> str:  # no index: quarantine is scanned (it stays small)
        return str(self._insert("quarantine", q))

    def quarantined(self) -> list[dict]:
        return [dict(q, qid=k) for k, q in self._table("quarantine").items()]

    def quarantine_item(self, qid: str) -> dict | None:
        q = self._table("quarantine").get(str(qid))
        return dict(q, qid=str(qid)) if q else None

    def update_quarantine(self, qid: str, fields: dict) -> None:
        self._changing("quarantine", str(qid)).update(fields)

    # ---- customers ----------------------------------------------------------------------------

    def customer_stats(self, email: str, now: datetime) -> dict[str, int]:
        """Facts about one customer address: open tickets, complaints in the last 30 days, tickets
        staff closed as spam."""
        cutoff = iso(now - timedelta(days=30)) or ""
        out = {"open_tickets": 0, "complaints_30d": 0, "spam_count": 0}
        for k in self._cust.get(email.lower(), []):
            t = self._table("tickets").get(k)
            if t is None:
                continue
            if t.get("status") in OPEN_STATUSES:
                out["open_tickets"] += 1
            if t.get("category") == "complaint" and (t.get("created_at") or "") >= cutoff:
                out["complaints_30d"] += 1
            if t.get("close_reason") == "spam":
                out["spam_count"] += 1
        return out

    def open_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self._table("tickets").values():
            if t.get("status") in OPEN_STATUSES and t.get("assignee"):
                out[t["assignee"]] = out.get(t["assignee"], 0) + 1
        return out

    # ---- housekeeping -------------------------------------------------------------------------

    def prune(self, now: datetime | None = None, seen_days: int = 30, sent_days: int = 7) -> list[str]:
        """Drop old idempotency keys and sent outbox rows so the hot database stays small.

        Returns the outbox files of the dropped rows (the caller deletes them after the commit).
        """
        self._require_batch()
        now = now or utcnow()
        seen_cut = iso(now - timedelta(days=seen_days)) or ""
        sent_cut = iso(now - timedelta(days=sent_days)) or ""
        seen = self._table("seen")
        for k in [k for k, v in seen.items() if (v.get("at") or "") < seen_cut]:
            self._seen.discard(seen.pop(k)["key"])
        meta, hour_ago = self._table("meta"), iso(now - timedelta(hours=1)) or ""
        for key, k in list(self._meta.items()):  # flood-cap records older than the cap's hour
            if not key.startswith("auto:"):
                continue
            recs = meta[k]["value"] or []
            last = max((r if isinstance(r, str) else max(str(x) for x in r[:2]) for r in recs), default="")
            if last < hour_ago:
                meta.pop(k, None)
                self._meta.pop(key)
        out = self._table("outbox")
        drop = [k for k, r in out.items() if r.get("status") == "sent" and (r.get("sent_at") or "") < sent_cut]
        files = [out.pop(k).get("file") for k in drop]
        self.storage.dirty = True
        return [f for f in files if f]

    # ---- archives -----------------------------------------------------------------------------

    def archived_ids(self) -> dict[str, str]:
        """Message-ID -> ticket id of archived tickets, so replies to old tickets still thread."""
        if self._archived_ids is None:
            ids: dict[str, str] = {}
            if self.index_path.exists():
                with open(self.index_path, encoding="utf-8", errors="replace") as f:
                    for line in f:
                        mid, _, tid = line.rstrip("\n").partition("\t")
                        if tid:
                            ids[mid] = tid
            self._archived_ids = ids
        return self._archived_ids

    def archived_tickets(self) -> set[str]:
        if self._archived_tids is None:
            self._archived_tids = set(self.archived_ids().values())
        return self._archived_tids

    def _archive_files_for(self, tid: str) -> list[Path]:
        """Month files that may hold `tid`: by the date in its id (and the month before, since the
        file is named by the UTC creation month), else every file."""
        d = self.dir / "archive"
        m = re.search(r"(\d{4})(\d{2})\d{2}\d{4,}$", tid)
        if m:
            y, mo = int(m.group(1)), int(m.group(2))
            prev = (y, mo - 1) if mo > 1 else (y - 1, 12)
            cands = [d / f"{y:04d}-{mo:02d}.jsonl", d / f"{prev[0]:04d}-{prev[1]:02d}.jsonl"]
            found = [p for p in cands if p.exists()]
            if found:
                return found
        return sorted(d.glob("[0-9][0-9][0-9][0-9]-[0-9][0-9].jsonl"))

    def archived_ticket(self, tid: str) -> dict | None:
        """`{"ticket": ..., "messages": [...]}` of an archived ticket (the newest copy), or None."""
        if tid not in self.archived_tickets():
            return None
        needle = f'"id":"{tid}"'.encode()
        best = None
        for path in self._archive_files_for(tid):
            with open(path, "rb") as f:
                for line in f:
                    if needle in line:
                        try:
                            entry = _loads(line)
                        except ValueError:
                            continue
                        if entry.get("ticket", {}).get("id") == tid:
                            best = entry
        return best

    def unarchive(self, tid: str) -> dict | None:
        """Bring an archived ticket and its messages back into the hot database (a reply arrived).
        The archive file is not rewritten: the hot copy wins, and a later archive appends anew."""
        self._require_batch()
        if self.ticket(tid) is not None:
            return self.ticket(tid)
        entry = self.archived_ticket(tid)
        if entry is None:
            return None
        t = dict(entry["ticket"])
        self.add_ticket(t)
        for m in entry.get("messages", []):
            self.add_message(dict(m))
        tids = self.archived_tickets()
        tids.discard(tid)
        self._index_undo(lambda: tids.add(tid))
        return self.ticket(tid)

    def archive(self, older_than_days: float = 3.0, now: datetime | None = None) -> int:
        """Move tickets closed more than N days ago, with their messages, to monthly archive files."""
        self._require_batch()
        cutoff = iso((now or utcnow()) - timedelta(days=older_than_days)) or ""
        moving = [t for t in self._table("tickets").values()
                  if t.get("status") == "closed" and t.get("closed_at") and t["closed_at"] < cutoff]
        if not moving:
            return 0
        by_month: dict[str, list[bytes]] = {}
        index_lines = []
        for t in moving:
            msgs = self.messages_of(t["id"])
            by_month.setdefault((t.get("created_at") or "0000-00")[:7], []).append(
                _dumps({"ticket": t, "messages": msgs}) + b"\n")
            index_lines += [f"{m['message_id']}\t{t['id']}\n" for m in msgs]
        for month, lines in by_month.items():  # archive first, then the index, then drop from hot
            with open(self.dir / "archive" / f"{month}.jsonl", "ab") as f:
                f.writelines(lines)
                f.flush()
                os.fsync(f.fileno())
        with open(self.index_path, "a", encoding="utf-8") as f:
            f.writelines(index_lines)
            f.flush()
            os.fsync(f.fileno())
        arch = self.archived_ids()
        for line in index_lines:
            mid, _, tid = line.rstrip("\n").partition("\t")
            arch[mid] = tid
        self.archived_tickets().update(t["id"] for t in moving)
        msgs_t, tickets_t = self._table("messages"), self._table("tickets")
        for t in moving:
            for k in self._msgs_by_ticket.pop(t["id"], []):
                m = msgs_t.pop(k, None)
                if m:
                    self._msg.pop(m["message_id"], None)
            k = self._tid.pop(t["id"])
            tickets_t.pop(k, None)
            self._set_wake(t["id"], None, undo=False)
            cust = self._cust.get(t.get("customer_email", ""), [])
            if k in cust:
                cust.remove(k)
        self.storage.dirty = True
        return len(moving)
