"""TinyDB ticket store: atomic, locked, batched; hot database plus monthly archives.

TinyDB's own JSONStorage rewrites the file in place and re-reads it on every call (DESIGN.md 7), so:
- `AtomicStorage` keeps the parsed database in memory; a commit appends the documents it changed
  to a commit log (`mailflow.wal`, one fsync) and the whole snapshot (`mailflow.json`, TinyDB's
  own format: temp file, fsync, `os.replace`, fsync of the directory) is rewritten only when the
  log has grown past a quarter of it, so a commit costs what it changed, not what the database holds;
- `Store.batch()` holds a `filelock` for the whole batch, reloads if another process committed,
  and commits once at the end: one disk write per fetched batch, never one per message;
- TinyDB's `Table.insert`/`update` copy the whole table on every call (measured: ~1 ms per insert
  and ~2 ms per update at 10k documents), so the store writes documents straight into the
  storage's table dicts inside a batch (every change goes through `_insert`, `_changing` or
  `_drop`, which tell the storage which document to log) and keeps its own indexes; TinyDB's
  query API stays available for reads;
- the hot database holds open and recently closed tickets; `archive()` moves long-closed tickets
  with their messages to `archive/YYYY-MM.jsonl`, indexed on disk by `archive/index.sqlite`
  (mailflow/archive.py), so nothing about the history is held in memory.
Message bodies live in the spool; the database keeps metadata and the cleaned text.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import json
import logging
import os
import re
import threading
import zlib
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

from mailflow.archive import ArchiveIndex, append_lines, entry_rows, month_of
from mailflow.clock import iso, parse_iso, utcnow
from mailflow.storeapi import BatchAborted, FileJournal, StoreError, unclosed_by  # noqa: F401 - one class for both stores
from mailflow.tickets import OPEN_STATUSES

log = logging.getLogger("mailflow.store")

__all__ = ["OPEN_STATUSES", "BatchAborted", "Store", "StoreError", "iso", "lock_process", "parse_iso", "utcnow", "write_atomic"]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file + fsync + rename + fsync(dir): a crash leaves the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.{os.urandom(4).hex()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)




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
    """The hot database: a snapshot file plus an append-only commit log beside it.

    Measured (bench/bench_data.py): re-serialising the whole database on every commit cost 0.27 s
    at 13,000 hot tickets and 1.0 s at 50,000 (orjson), and the outbox sender's result fold,
    mailbox checkpoints and idempotency keys each forced such a rewrite. So a commit appends one
    record holding only the documents it changed (`mailflow.wal`, one fsync), and the snapshot
    (`mailflow.json`, TinyDB's own format, written temp file + fsync + rename + fsync(dir)) is
    rewritten only when the log has grown past a quarter of the snapshot (or 8 MB), or when a change
    was not tracked by document (`dirty`). A commit costs what it changed, not what the database
    holds, and loading costs at most 1.25 times the snapshot.

    Crash safety: a record is `<crc32> <json>\n`; a torn or corrupt tail is ignored (that commit
    never returned, so nothing was flagged on the IMAP server) and cut off before the next append.
    Records hold whole documents (or a deletion), so replaying a log on top of a snapshot that
    already contains it gives the same state: a crash between writing a new snapshot and emptying
    the log is harmless.
    """

    LOG_MIN = 8 * 1024 * 1024

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.log_path = self.path.with_suffix(".wal")
        self.data: dict[str, dict[str, Any]] | None = None
        self.stamp: tuple | None = None
        self.dirty = False  # a change not tracked by document: the next commit writes a snapshot
        self.changed: set[tuple[str, str]] = set()
        self.log_end = 0  # end of the last valid record in the log
        self.snap_size = 0
        self.log_tail_bad = False  # a torn/corrupt record follows log_end (cut off at the next append)

    @staticmethod
    def _stat1(p: Path) -> tuple[int, int, int] | None:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _stat(self) -> tuple:
        return (self._stat1(self.path), self._stat1(self.log_path))

    def stale(self) -> bool:
        return self.data is None or self._stat() != self.stamp

    def load(self) -> None:
        with _gc_paused():
            stamp = self._stat()
            self.changed = set()
            if stamp[0] is None:
                self.data, self.snap_size = {}, 0
            else:
                raw = self.path.read_bytes()
            log_raw = self.log_path.read_bytes() if stamp[1] is not None else b""
            if stamp[0] is not None:
                # the log begins with the size and CRC of the snapshot it was started for: when they
                # match, the snapshot is exactly what was written and its documents may stay bytes
                # until read; otherwise (an older snapshot's log after a crash mid-compaction, a file
                # from elsewhere) every document is parsed now, so damage shows at load, not later
                head = snapshot_header(log_raw)
                whole = head is None or head.get("size") != len(raw) or head.get("crc32") != zlib.crc32(raw)
                try:
                    self.data = read_snapshot(raw)
                    if whole:
                        self.data = materialize(self.data)
                except ValueError as e:
                    raise StoreError(f"{self.path}: not valid JSON ({e}); restore it from a backup") from None
                if not isinstance(self.data, dict):
                    raise StoreError(f"{self.path}: not a TinyDB database; restore it from a backup")
                self.snap_size = len(raw)
            self.log_end, self.log_tail_bad = 0, False
            if stamp[1] is not None:
                records, self.log_end = parse_log(log_raw)
                self.log_tail_bad = self.log_end != len(log_raw)
                for rec in records:
                    apply_record(self.data, rec)
            self.stamp = stamp

    def read(self) -> dict[str, dict[str, Any]] | None:
        if self.data is None:
            self.load()
        return self.data

    def write(self, data: dict[str, dict[str, Any]]) -> None:
        self.data = data
        self.dirty = True

    def touch(self, table: str, key: str) -> None:
        """Document `key` of `table` was added, changed or removed in the current batch."""
        self.changed.add((table, key))

    def discard_changes(self) -> None:
        self.dirty = False
        self.changed = set()

    def flush(self) -> None:
        if self.data is None or not (self.dirty or self.changed):
            return
        if self.dirty or self.stamp is None or self.stamp[0] is None:
            self.write_snapshot()
            return
        # keys grow with every insert, so numeric order is insertion order: replaying the ops
        # in it keeps every table in the order it has in memory (messages_of relies on it)
        ops = [[t, k, self.data.get(t, {}).get(k)]
               for t, k in sorted(self.changed, key=lambda tk: (tk[0], len(tk[1]), tk[1]))]
        rec = _dumps({"ops": ops})
        if self.log_end + len(rec) > max(self.LOG_MIN, self.snap_size // 4) or \
                len(rec) > max(self.LOG_MIN // 8, self.snap_size // 2):  # as big as a snapshot: write one
            self.write_snapshot()
            return
        self._append(rec)
        self.changed = set()
        if os.environ.get("MAILFLOW_STORE_CHECK"):  # tests: what is on disk equals what is in memory
            self._check()

    def _append(self, rec: bytes) -> None:
        line = b"%08x " % zlib.crc32(rec) + rec + b"\n"
        new = not self.log_path.exists()
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            if self.log_tail_bad or os.fstat(fd).st_size != self.log_end:
                os.ftruncate(fd, self.log_end)  # a torn record of a commit that never returned
            os.lseek(fd, self.log_end, os.SEEK_SET)
            view = memoryview(line)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if new:
            fsync_dir(self.log_path.parent)
        self.log_end += len(line)
        self.log_tail_bad = False
        self.stamp = self._stat()

    def write_snapshot(self) -> None:
        """The whole database as one TinyDB file (atomically), then an empty log."""
        assert self.data is not None
        raw = snapshot_bytes(self.data)
        write_atomic(self.path, raw)
        self.snap_size = len(raw)
        head = _dumps({"snap": {"size": len(raw), "crc32": zlib.crc32(raw)}})
        line = b"%08x " % zlib.crc32(head) + head + b"\n"
        new = not self.log_path.exists()
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        if new:
            fsync_dir(self.log_path.parent)
        self.log_end, self.log_tail_bad = len(line), False
        self.dirty = False
        self.changed = set()
        self.stamp = self._stat()

    def _check(self) -> None:
        other = AtomicStorage(self.path)
        other.load()
        assert other.data is not None and self.data is not None
        def norm(d):  # table order and empty tables do not matter; document order within a table does
            return {k: list(v.items()) for k, v in sorted(materialize(d).items()) if v}

        if _dumps(norm(other.data)) != _dumps(norm(self.data)):
            diff = sorted(f"{t}/{k}" for t in set(other.data) | set(self.data)
                          for k in set(other.data.get(t, {})) | set(self.data.get(t, {}))
                          if other.data.get(t, {}).get(k) != self.data.get(t, {}).get(k))
            raise StoreError(f"{self.path}: the commit log does not reproduce the database in memory: "
                             f"{', '.join(diff[:5])} changed without Store._changing/_insert/_drop")

    def close(self) -> None:
        pass


def parse_log(raw: bytes) -> tuple[list[dict], int]:
    """The valid records of a commit log and the offset where they end (a torn tail is dropped)."""
    out, pos = [], 0
    while pos < len(raw):
        nl = raw.find(b"\n", pos)
        if nl < 0:
            break
        line = raw[pos:nl]
        crc, _, body = line.partition(b" ")
        try:
            if len(crc) != 8 or int(crc, 16) != zlib.crc32(body):
                break
            rec = _loads(body)
        except ValueError:
            break
        if not isinstance(rec, dict):
            break
        if isinstance(rec.get("ops"), list):
            out.append(rec)
        elif not (pos == 0 and isinstance(rec.get("snap"), dict)):
            break
        pos = nl + 1
    return out, pos


def snapshot_header(raw: bytes) -> dict | None:
    """`{"size", "crc32"}` of the snapshot a commit log was started for (its first line), or None."""
    nl = raw.find(b"\n")
    if nl < 0:
        return None
    crc, _, body = raw[:nl].partition(b" ")
    try:
        if len(crc) != 8 or int(crc, 16) != zlib.crc32(body):
            return None
        rec = _loads(body)
    except ValueError:
        return None
    return rec.get("snap") if isinstance(rec, dict) and isinstance(rec.get("snap"), dict) else None


def apply_record(data: dict, rec: dict) -> None:
    for table, key, doc in rec["ops"]:
        t = data.setdefault(table, {})
        if doc is None:
            if isinstance(t, LazyTable):
                t.discard(key)  # never parse what is being removed
            else:
                t.pop(key, None)
        else:
            t[key] = doc


class LazyTable(dict):
    """A table whose documents stay the snapshot's bytes until something reads them.

    Loading a snapshot only finds where each table's lines are; a table is split into its
    documents' lines when it is first used, and a document is parsed (once) when it is read
    through any mapping method. So `quarantine list` never looks at the tickets, and the daemon
    never builds the messages of tickets nobody writes about (bench/scale.py, 13,600 hot tickets:
    the CLI's `quarantine list` 1.56 s -> 0.5 s, the daemon's peak RSS 460 MB -> 300 MB). Code outside
    the storage never sees bytes: every Python-level access (`[]`, `get`, `in`, `len`, iterating,
    `items`, `values`, `pop`, `setdefault`) works on parsed documents; only `dict.*` called on it
    directly sees what is raw, and the storage itself (`raw_items`) is the only one that does."""

    __slots__ = ("_block", "_raw")

    def __init__(self, block: bytes | None = None):
        super().__init__()
        self._block = block  # '"key":{...}' lines joined by ",\\n", not split yet
        self._raw = 0  # documents still bytes

    def _split(self) -> None:
        block, self._block = self._block, None
        if block:
            lines = block.split(b",\n")
            try:
                keys = [ln[1:ln.index(b'"', 1)].decode() for ln in lines]
            except (ValueError, UnicodeDecodeError):
                raise StoreError("mailflow.json: a damaged document line; restore it from a backup") from None
            dict.update(self, zip(keys, lines, strict=True))
            self._raw = len(lines)

    def discard(self, key) -> None:
        """Remove a document without parsing it."""
        if self._block is not None:
            self._split()
        if type(dict.pop(self, key, None)) is bytes:
            self._raw -= 1

    def raw_items(self):
        """(key, parsed document or its raw line) without parsing anything."""
        if self._block is not None:
            self._split()
        return dict.items(self)

    def __getitem__(self, key):
        if self._block is not None:
            self._split()
        v = dict.__getitem__(self, key)
        if type(v) is bytes:
            v = _parse_line(v)
            dict.__setitem__(self, key, v)
            self._raw -= 1
        return v

    def __setitem__(self, key, value):
        if self._block is not None:
            self._split()
        if type(dict.get(self, key)) is bytes:
            self._raw -= 1
        dict.__setitem__(self, key, value)

    def __delitem__(self, key):
        if self._block is not None:
            self._split()
        if type(dict.get(self, key)) is bytes:
            self._raw -= 1
        dict.__delitem__(self, key)

    def __contains__(self, key):
        if self._block is not None:
            self._split()
        return dict.__contains__(self, key)

    def __len__(self):
        if self._block is not None:
            self._split()
        return dict.__len__(self)

    def __iter__(self):
        if self._block is not None:
            self._split()
        return dict.__iter__(self)

    def keys(self):
        if self._block is not None:
            self._split()
        return dict.keys(self)

    def get(self, key, default=None):
        return self[key] if key in self else default

    def _parse_all(self) -> None:
        """Every document parsed: a table never split is parsed as one JSON object (one call
        instead of one per document), otherwise line by line."""
        with _gc_paused():  # parsing many documents at once: see _gc_paused
            block, self._block = self._block, None
            if block:
                try:
                    dict.update(self, _loads(b"{" + block + b"}"))
                except ValueError:
                    raise StoreError("mailflow.json: a damaged document; restore it from a backup") from None
            elif self._raw:
                for k in list(dict.keys(self)):
                    self[k]
            self._raw = 0

    def items(self):
        if self._block is not None or self._raw:
            self._parse_all()
        return list(dict.items(self))

    def values(self):
        if self._block is not None or self._raw:
            self._parse_all()
        return list(dict.values(self))

    def pop(self, key, *default):
        if self._block is not None:
            self._split()
        v = dict.pop(self, key, *default)
        if type(v) is bytes:
            self._raw -= 1
            return _parse_line(v)
        return v

    def setdefault(self, key, default=None):
        if key in self:
            return self[key]
        dict.__setitem__(self, key, default)
        return default

    def popitem(self):
        if self._block is not None:
            self._split()
        k, v = dict.popitem(self)
        if type(v) is bytes:
            self._raw -= 1
            return k, _parse_line(v)
        return k, v

    def update(self, *a, **kw):
        if self._block is not None:
            self._split()
        dict.update(self, *a, **kw)

    def clear(self):
        self._block, self._raw = None, 0
        dict.clear(self)

    def copy(self):
        return dict(self.items())

    def __eq__(self, other):
        return dict(self.items()) == (dict(other.items()) if isinstance(other, dict) else other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LazyTable({len(self)} documents)"


# a message line as the store writes it: '"<key>":{"ticket_id":"<id>"|null,...', each after ",\n"
_MSG_TICKET = re.compile(rb',\n"(\d+)":\{"ticket_id":(?:"([^"\\\n]*)"|null)')


def _parse_line(line: bytes) -> dict:
    try:
        return _loads(memoryview(line)[line.index(b'":') + 2:])
    except ValueError:
        raise StoreError("mailflow.json: a damaged document; restore it from a backup") from None


def raw_items(table: dict):
    return table.raw_items() if isinstance(table, LazyTable) else table.items()


def materialize(data: dict | None) -> dict:
    """Plain dicts all the way down (every lazy document parsed)."""
    return {name: dict(t.items()) for name, t in (data or {}).items()}


def snapshot_bytes(data: dict) -> bytes:
    """The database as TinyDB JSON, one document per line (valid JSON for any TinyDB tool), so the
    next load can keep each document's bytes until it is read. Tables and documents nobody read
    since the last load are written back as the bytes they were read as."""
    out = [b"{\n"]
    names = list(data)
    for i, name in enumerate(names):
        table = data[name]
        out.append(_dumps(str(name)) + b":{\n")
        block = table._block if isinstance(table, LazyTable) else None
        if block is not None:
            out.append(block)
            out.append(b"\n")
        else:
            lines = [v if type(v) is bytes else _dumps(str(k)) + b":" + _dumps(v) for k, v in raw_items(table)]
            if lines:
                out.append(b",\n".join(lines))
                out.append(b"\n")
        out.append(b"},\n" if i < len(names) - 1 else b"}\n")
    out.append(b"}\n")
    return b"".join(out)


def read_snapshot(raw: bytes) -> dict:
    """Parse a snapshot: one-document-per-line files lazily (see LazyTable), anything else (an
    older file, a TinyDB tool's) as plain JSON. Raises ValueError if it is not valid.

    A raw newline never occurs inside orjson's output (strings escape it), so `,\\n` separates
    documents and a line that is `}` closes a table: only the few table boundaries are looked for
    here; the documents' lines are split when their table is first used."""
    if not raw.startswith(b"{\n") or not raw.endswith(b"}\n}\n"):
        if not raw or raw.isspace():
            return {}
        data = _loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data
    data: dict = {}
    pos, end = 2, len(raw) - 2
    while pos < end:
        hdr = raw.find(b":{\n", pos)
        if hdr < 0:
            raise ValueError("bad table header")
        name = _loads(raw[pos:hdr])
        close = raw.find(b"\n}", hdr + 2)
        if close < 0:
            raise ValueError("truncated")
        data[name] = LazyTable(raw[hdr + 3:close] if close > hdr + 2 else None)
        pos = close + 4  # past "\n}," and the newline after it (or "\n}\n" before the final "}")
    return data


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Parsing a big JSON file creates millions of small objects, and the cyclic collector runs
    again and again while it does (measured: loading 13,000 hot tickets 1.98 s with it, 0.77 s
    without), and then traverses all of them in every full collection afterwards (0.2 s each).
    Documents hold no reference cycles, so the collector is paused while they are built and they
    are moved out of its sight (`gc.freeze`); reference counting still frees them."""
    was = gc.isenabled()
    gc.collect(1)  # the young garbage first (cheap), so that freezing keeps only what is alive
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was:
            gc.enable()


@dataclass
class MsgRef:
    ticket_id: str | None
    direction: str


class Store:
    """The hot database with in-memory indexes. Use `with store.batch():` around every change."""

    TABLES = ("tickets", "messages", "outbox", "meta", "quarantine", "seen")
    backend = "tinydb"
    mail_in_db = False  # outgoing mail is in outbox/ segment files
    max_batch = None  # a commit appends to the commit log and fsyncs: big batches pay off

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
        self._create = create
        self._archive_index: ArchiveIndex | None = None
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

    _INDEX_OF = {"tickets": ("_tid",), "messages": ("_msg", "_msgs_by_ticket"), "seen": ("_seen",),
                 "meta": ("_meta",)}

    def _insert(self, name: str, doc: dict) -> int:
        self._require_batch()
        for attr in self._INDEX_OF.get(name, ()):  # the indexes from before this document, or it counts twice
            getattr(self, attr)
        self._next[name] += 1
        if self._undo is not None:
            self._undo.append((name, str(self._next[name]), None))
        self._table(name)[str(self._next[name])] = doc
        self.storage.touch(name, str(self._next[name]))
        return self._next[name]

    def _drop(self, name: str, key: str) -> dict | None:
        """Remove one document (no savepoint undo: for housekeeping, outside message handling)."""
        self._require_batch()
        self.storage.touch(name, key)
        return self._table(name).pop(key, None)

    # the in-memory indexes, built per group on first use (after every load): a command that never
    # looks at messages never parses them (see LazyTable)
    _LAZY = {"_tid": "tickets", "_cust": "tickets", "_wake_of": "tickets", "_wakes": "tickets",
             "_unscheduled": "tickets",
             "_msg": "messages", "_msgs_by_ticket": "message_tickets", "_seen": "seen", "_meta": "meta"}

    def _build_indexes(self) -> None:
        self._scans = 0
        self.storage.read()
        for name in self._LAZY:
            self.__dict__.pop(name, None)
        # keys only (no document is parsed): the next key of every table
        self._next = _NextKeys(self)

    def __getattr__(self, name: str):
        group = Store._LAZY.get(name)
        if group is None:
            raise AttributeError(name)
        with _gc_paused():
            getattr(self, f"_index_{group}")()
        return self.__dict__[name]

    def _index_tickets(self) -> None:
        tid: dict[str, str] = {}
        cust: dict[str, list[str]] = {}
        wake_of: dict[str, str] = {}
        # tickets from before the scheduler existed (no `wake_at` key yet): looked at on the first pass
        unscheduled: set[str] = set()
        for k, t in self._table("tickets").items():
            tid[t["id"]] = k
            cust.setdefault(t.get("customer_email", ""), []).append(k)
            if t.get("wake_at"):
                wake_of[t["id"]] = t["wake_at"]
            elif "wake_at" not in t and t.get("status") != "closed":
                unscheduled.add(t["id"])
        self._tid, self._cust, self._wake_of, self._unscheduled = tid, cust, wake_of, unscheduled
        self._wakes: list[tuple[str, str]] = sorted((w, tid) for tid, w in wake_of.items())

    def _index_messages(self) -> None:
        """Message-ID -> (hash, ticket, direction) of every hot message (each parsed to index it,
        not kept parsed)."""
        idx: dict[str, list[tuple[str, MsgRef]]] = {}
        for _k, v in raw_items(self._table("messages")):
            m = _parse_line(v) if type(v) is bytes else v
            idx.setdefault(m["message_id"], []).append(
                (m.get("hash", ""), MsgRef(m.get("ticket_id"), m.get("direction", "in"))))
        self._msg = idx

    def _index_message_tickets(self) -> None:
        """Ticket id -> keys of its messages, from the lines as the store writes messages
        (`"<key>":{"ticket_id":"<id>",...`) without parsing them; any other line is parsed."""
        by: dict[str, list[str]] = {}
        table = self._table("messages")
        block = getattr(table, "_block", None)
        if block is not None:  # not split yet: one regex over the block, nothing split or parsed
            found = _MSG_TICKET.findall(b",\n" + block)  # a literal prefix: the regex scans fast
            if len(found) == block.count(b",\n") + 1:
                for k, tid in found:
                    if tid:
                        by.setdefault(tid.decode(), []).append(k.decode())
                self._msgs_by_ticket = by
                return
        for k, v in raw_items(table):
            tid = None
            if type(v) is bytes:
                i = v.find(b'":{"ticket_id":')
                if i >= 0 and i == v.find(b'":'):
                    j = i + 15
                    if v.startswith(b"null", j):
                        continue
                    e = v.find(b'"', j + 1)
                    if v[j:j + 1] == b'"' and e > 0 and b"\\" not in v[j:e]:
                        tid = v[j + 1:e].decode()
                if tid is None:
                    tid = _parse_line(v).get("ticket_id")
            else:
                tid = v.get("ticket_id")
            if tid:
                by.setdefault(tid, []).append(k)
        self._msgs_by_ticket = by

    def _index_seen(self) -> None:
        self._seen: set[str] = {s["key"] for s in self._table("seen").values()}

    def _index_meta(self) -> None:
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
        self._undo, self._undo_idx, next_before = [], [], self._next.copy()
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
        self.storage.touch(name, key)
        return doc

    def _discard(self) -> None:
        self.storage.discard_changes()
        self.storage.load()
        self._build_indexes()

    def _require_batch(self) -> None:
        if not self._in_batch:
            raise StoreError("store change outside a batch")

    def fence(self, name: str, holder: str | None = None, token: int | None = None) -> None:
        """The data-directory lock (`lock_process`) is this backend's fence: nothing to check."""
        self._require_batch()

    def change_stamp(self) -> Any:
        return (self.storage.stamp, self.outbox_journal().stamp())

    def counts(self) -> dict[str, int]:
        return {"tickets_hot": len(self._table("tickets")), "messages_hot": len(self._table("messages")),
                "outbox_rows": len(self._table("outbox")), "quarantine": len(self._table("quarantine")),
                "tickets_archived": self.archived_count(),
                "message_ids_archived": self.archive_index.message_count()}

    def fetch_all(self, table: str) -> Iterator[tuple[str, dict]]:
        """Hot documents of a table by key; for "tickets" then every archived ticket's newest copy
        (key = its id) with `_archived_messages`."""
        yield from list(self._table(table).items())
        if table == "tickets":
            for tid in self.archive_index.ticket_ids():
                if tid in self._tid:
                    continue
                e = self.archived_ticket(tid)
                if e is not None:
                    yield tid, {**e["ticket"], "_archived_messages": e.get("messages") or []}

    def search(self, q: Any) -> tuple[list[dict], bool]:
        from mailflow.search import search_tinydb

        return search_tinydb(self, q)

    def close(self) -> None:
        if self._archive_index is not None:
            self._archive_index.close()
            self._archive_index = None

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
        while f"{prefix}{day}{n:04d}" in self._tid or self.is_archived(f"{prefix}{day}{n:04d}"):
            n += 1
        return f"{prefix}{day}{n:04d}", key, n

    def next_ticket_id(self, prefix: str, day: str) -> str:
        tid, key, n = self.peek_ticket_id(prefix, day)
        self.set_meta(key, n)
        return tid

    # ---- tickets ------------------------------------------------------------------------------

    def ticket(self, tid: str) -> dict | None:
        if "_tid" not in self.__dict__ and self._scans < 3:  # a one-shot lookup: no index needed
            found = self._scan("tickets", "id", tid)
            return found[0] if found else None
        k = self._tid.get(tid)
        return self._table("tickets")[k] if k else None

    def _scan(self, table: str, field: str, value: str) -> list[dict]:
        """Documents whose `field` is `value`, parsing only lines that contain it: what a command
        that looks up one ticket does instead of building an index over all of them. (No change
        can have happened without the index: `_insert` builds it first.)"""
        self._scans += 1  # a few lookups scan; a loop of them builds the index instead
        needle = _dumps(field) + b":" + _dumps(value)
        out = []
        t = self._table(table)
        for k, v in list(raw_items(t)):
            if type(v) is bytes:
                if needle not in v:
                    continue
                v = t[k]
            if v.get(field) == value:
                out.append(v)
        return out

    def hot_ticket_ids(self) -> list[str]:
        """The ids of the hot tickets (from the tickets' lines when none is parsed yet)."""
        if "_tid" in self.__dict__:
            return list(self._tid)
        return [tid for _k, tid in self._ticket_keys()]

    def _ticket_keys(self) -> list[tuple[str, str]]:
        """(document key, ticket id) of every hot ticket, read from the lines without parsing them."""
        out = []
        for k, v in list(raw_items(self._table("tickets"))):
            if type(v) is bytes:  # '"<key>":{"id":"<id>",...' as the store writes tickets, else parse
                i = v.find(b'":{"id":"')
                j = v.find(b'"', i + 9) if i >= 0 else -1
                if i < 0 or i != v.find(b'":') or j < 0 or b"\\" in v[i + 9:j]:
                    out.append((k, _parse_line(v)["id"]))
                else:
                    out.append((k, v[i + 9:j].decode()))
            else:
                out.append((k, v["id"]))
        return out

    def newest_hot_tickets(self, n: int | None) -> tuple[int, list[dict]]:
        """How many tickets are hot, and the last `n` of them by id (all for None), oldest first,
        parsing only those: what a list of the newest few needs (the ticket index parses them all)."""
        if "_tid" in self.__dict__:
            pairs = list(self._tid.items())
        else:
            pairs = [(tid, k) for k, tid in self._ticket_keys()]
        pairs.sort()
        table = self._table("tickets")
        return len(pairs), [table[k] for _tid, k in (pairs if n is None else pairs[len(pairs) - n:] if n else [])]

    def all_tickets(self) -> list[dict]:
        return list(self._table("tickets").values())

    def hot_clock_records(self, at_iso: str) -> list[dict]:
        return [t for t in self._table("tickets").values() if unclosed_by(t, at_iso)]

    def tickets_by_id(self, ids: list[str]) -> list[dict]:
        return [t for t in (self.ticket(i) for i in ids) if t is not None]

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

    def message_count(self, tid: str) -> int:
        """How many hot messages a ticket has (no message is parsed)."""
        return len(self._msgs_by_ticket.get(tid, []))

    def message_counts(self, tids: list[str]) -> dict[str, int]:
        return {tid: self.message_count(tid) for tid in tids}

    def messages_of(self, tid: str) -> list[dict]:
        if "_msgs_by_ticket" not in self.__dict__ and self._scans < 3:  # see _scan
            return self._scan("messages", "ticket_id", tid)
        table = self._table("messages")
        return [table[k] for k in self._msgs_by_ticket.get(tid, []) if k in table]

    def messages_of_mailbox(self, mailbox: str) -> list[dict]:
        """Every hot message that came in through one mailbox (a scan: for rare resyncs only)."""
        return [m for m in self._table("messages").values() if m.get("mailbox") == mailbox]

    def ticket_of_message_id(self, message_id: str) -> str | None:
        for _h, ref in self._msg.get(message_id, []):
            if ref.ticket_id:
                return ref.ticket_id
        return self.archived_ticket_of(message_id)

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
        return self.archived_ticket_of(message_id) is not None

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

    def add_outbox(self, row: dict, data: bytes | None = None) -> str:
        if data is not None:
            raise StoreError("the TinyDB store keeps outgoing mail in outbox/ segment files")
        k = str(self._insert("outbox", row))
        row["row"] = k
        return k

    def outbox_rows(self) -> dict[str, dict]:
        return self._table("outbox")

    def update_outbox(self, k: str, fields: dict) -> None:
        self._changing("outbox", k).update(fields)

    def outbox_row(self, k: str) -> dict | None:
        return self._table("outbox").get(str(k))

    def outbox_due(self, now_iso: str) -> list[tuple[str, dict]]:
        return [(k, dict(r)) for k, r in sorted(self._table("outbox").items(), key=lambda kv: int(kv[0]))
                if r["status"] == "queued" and (r.get("next_attempt_at") or "") <= now_iso]

    def outbox_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self._table("outbox").values():
            out[r["status"]] = out.get(r["status"], 0) + 1
        return out

    def outbox_last_error(self) -> str | None:
        rows = self._table("outbox").values()
        return next((r["last_error"] for r in sorted(rows, key=lambda r: r.get("created_at") or "", reverse=True)
                     if r.get("last_error")), None)

    def outbox_data(self, k: str) -> bytes | None:
        return None

    def outbox_files(self) -> set[str]:
        return {(r.get("file") or "").partition(":")[0] for r in self._table("outbox").values()}

    def outbox_journal(self) -> FileJournal:
        return FileJournal(self.dir / "outbox" / "journal.log")

    def remove_outbox(self, keys: list[str]) -> None:
        self._require_batch()
        for k in keys:
            self._drop("outbox", k)

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

    def quarantine_twin(self, spool: str | None, content_hash: str) -> dict | None:
        for q in self.quarantined():
            if (q.get("spool") == spool or q.get("hash") == content_hash) and q.get("status") in ("held", "spam"):
                return q
        return None

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

    def ticket_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self._table("tickets").values():
            out[t.get("status", "?")] = out.get(t.get("status", "?"), 0) + 1
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
            self._seen.discard(seen[k]["key"])
            self._drop("seen", k)
        meta, hour_ago = self._table("meta"), iso(now - timedelta(hours=1)) or ""
        for key, k in list(self._meta.items()):  # flood-cap records older than the cap's hour
            if not key.startswith("auto:"):
                continue
            recs = meta[k]["value"] or []
            last = max((r if isinstance(r, str) else max(str(x) for x in r[:2]) for r in recs), default="")
            if last < hour_ago:
                self._drop("meta", k)
                self._meta.pop(key)
        out = self._table("outbox")
        drop = [k for k, r in out.items() if r.get("status") == "sent" and (r.get("sent_at") or "") < sent_cut]
        files = [(self._drop("outbox", k) or {}).get("file") for k in drop]
        return [f for f in files if f]

    # ---- archives -----------------------------------------------------------------------------

    @property
    def archive_index(self) -> ArchiveIndex:
        """archive/index.sqlite (mailflow/archive.py), opened on first use."""
        if self._archive_index is None:
            self._archive_index = ArchiveIndex(self.dir / "archive", create=self._create)
        return self._archive_index

    def archived_ticket_of(self, message_id: str) -> str | None:
        """The archived ticket a Message-ID belongs to (a point query on the index)."""
        return self.archive_index.ticket_of(message_id)

    def is_archived(self, tid: str) -> bool:
        """Does the archive hold a copy of `tid`? (It may be hot too: the hot copy wins.)"""
        return self.archive_index.has(tid)

    def archived_ids(self) -> _ArchivedIds:
        """Message-ID -> archived ticket id, as a read-only mapping of point queries (nothing is
        loaded): `.get(mid)`, `mid in ...`. Prefer `archived_ticket_of`."""
        return _ArchivedIds(self)

    def archived_tickets(self) -> _ArchivedTickets:
        """The archived ticket ids, as a set of point queries (`tid in ...`; iterating streams the
        index). Prefer `is_archived`."""
        return _ArchivedTickets(self)

    def archived_count(self) -> int:
        return self.archive_index.count()

    def iter_archived_summaries(self, created_from: str | None = None,
                                created_to: str | None = None) -> Iterator[dict]:
        """The summary stored with every archived ticket created in [created_from, created_to)
        (ISO strings), streamed in creation order: reports over years of history in flat memory."""
        return self.archive_index.iter_summaries(created_from, created_to)

    def _archive_files_for(self, tid: str) -> list[Path]:
        """Month files that may hold `tid` when the index cannot say: by the date in its id (and the
        month before, since the file is named by the UTC creation month)."""
        d = self.dir / "archive"
        m = re.search(r"(\d{4})(\d{2})\d{2}\d{4,}$", tid)
        if not m:
            return []
        y, mo = int(m.group(1)), int(m.group(2))
        prev = (y, mo - 1) if mo > 1 else (y - 1, 12)
        return [p for p in (d / f"{y:04d}-{mo:02d}.jsonl", d / f"{prev[0]:04d}-{prev[1]:02d}.jsonl") if p.exists()]

    def archived_ticket(self, tid: str) -> dict | None:
        """`{"ticket": ..., "messages": [...]}` of an archived ticket (the newest copy), or None: one
        index lookup and one read at the offset it gives."""
        entry = self.archive_index.read(tid)
        if entry is not None or not self.archive_index.has(tid):
            return entry
        # the index points at the wrong place (a month file changed behind its back: `mailflow
        # verify --repair` fixes it): look through the month files the id names
        log.warning("archive index out of date for %s; run `mailflow verify --repair`", tid)
        needle = f'"id":"{tid}"'.encode()
        best = None
        for path in self._archive_files_for(tid):
            with open(path, "rb") as f:
                for line in f:
                    if needle in line:
                        try:
                            e = _loads(line)
                        except ValueError:
                            continue
                        if e.get("ticket", {}).get("id") == tid:
                            best = e
        return best

    def unarchive(self, tid: str) -> dict | None:
        """Bring an archived ticket and its messages back into the hot database (a reply arrived).
        Neither the archive file nor its index is rewritten: the hot copy wins, and a later archive
        appends a newer copy and points the index at it."""
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
        return self.ticket(tid)

    def archive(self, older_than_days: float = 3.0, now: datetime | None = None, cfg: Any = None) -> int:
        """Move tickets closed more than N days ago, with their messages, to the monthly archive
        files. Order: month files appended (fsync), then the index (one sqlite transaction), then
        the tickets leave the hot database at this batch's commit; a crash between the steps leaves
        them hot and archived at once, which the next run repairs by appending a newer copy."""
        self._require_batch()
        cutoff = iso((now or utcnow()) - timedelta(days=older_than_days)) or ""
        moving = [t for t in self._table("tickets").values()
                  if t.get("status") == "closed" and t.get("closed_at") and t["closed_at"] < cutoff]
        if not moving:
            return 0
        by_month: dict[str, list[tuple[dict, bytes]]] = {}
        for t in moving:
            entry = {"ticket": t, "messages": self.messages_of(t["id"])}
            by_month.setdefault(month_of(t), []).append((entry, _dumps(entry) + b"\n"))
        rows = []
        (self.dir / "archive").mkdir(parents=True, exist_ok=True)
        self.archive_index.ensure()
        for month, items in sorted(by_month.items()):  # archive first, then the index, then drop from hot
            placed = append_lines(self.dir / "archive" / month, [line for _e, line in items])
            rows += [entry_rows(e, month, off, n, cfg) for (e, _line), (off, n) in zip(items, placed, strict=True)]
        fsync_dir(self.dir / "archive")
        self.archive_index.add(rows)
        msgs_t = self._table("messages")
        for t in moving:
            for k in self._msgs_by_ticket.pop(t["id"], []):
                m = msgs_t.get(k)
                self._drop("messages", k)
                if m:
                    self._msg.pop(m["message_id"], None)
            k = self._tid.pop(t["id"])
            self._drop("tickets", k)
            self._set_wake(t["id"], None, undo=False)
            cust = self._cust.get(t.get("customer_email", ""), [])
            if k in cust:
                cust.remove(k)
        return len(moving)


class _NextKeys(dict):
    """The highest key of each table, found when the table is first inserted into (counting a
    table's keys splits it: see LazyTable)."""

    def __init__(self, store: Store, *a):
        super().__init__(*a)
        self._store = store

    def __missing__(self, name: str) -> int:
        n = max((int(k) for k in self._store._table(name)), default=0)
        self[name] = n
        return n

    def copy(self) -> _NextKeys:
        return _NextKeys(self._store, self)


class _ArchivedIds:
    """`Store.archived_ids()`: a mapping-like view answering by point queries."""

    def __init__(self, store: Store):
        self._s = store

    def get(self, mid: str, default: str | None = None) -> str | None:
        tid = self._s.archived_ticket_of(mid)
        return default if tid is None else tid

    def __contains__(self, mid: object) -> bool:
        return isinstance(mid, str) and self._s.archived_ticket_of(mid) is not None

    def __getitem__(self, mid: str) -> str:
        tid = self._s.archived_ticket_of(mid)
        if tid is None:
            raise KeyError(mid)
        return tid

    def __len__(self) -> int:
        return self._s.archive_index.message_count()


class _ArchivedTickets:
    """`Store.archived_tickets()`: a set-like view answering by point queries."""

    def __init__(self, store: Store):
        self._s = store

    def __contains__(self, tid: object) -> bool:
        return isinstance(tid, str) and self._s.is_archived(tid)

    def __iter__(self) -> Iterator[str]:
        return self._s.archive_index.ticket_ids()

    def __len__(self) -> int:
        return self._s.archived_count()
