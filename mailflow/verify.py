"""`mailflow verify`: is the data directory whole?

Checks, each problem as `path: what: how to fix`:
- the hot database (snapshot + commit log) parses and every table holds what it should;
- every message's spool reference (hot and archived) points into an existing segment, unless
  retention expired it (`retention:raw_mail_before`) or an erase blanked it (`spool` is null);
- quarantined mail and outbox rows point at existing segments;
- every saved attachment a message lists exists, and no file under `attachments/` is an orphan;
- every archived ticket (newest copy in its month file) is in the index at the right place with
  all its Message-IDs, and every index row points at a ticket that is there; no month file ends
  in a torn entry.

`--repair` rebuilds only what is derivable: the archive index (from intact month files), and a
torn tail left by a crash that no index row needs. It never deletes mail: missing segments,
lost archive entries and orphan attachments are reported with what to do.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mailflow.archive import MONTH_GLOB, ArchiveIndex, iter_lines
from mailflow.store import StoreError, _loads, lock_process

STATUSES = {"new", "open", "pending", "resolved", "closed"}


@dataclass
class Problem:
    path: str
    what: str
    fix: str
    repair: str | None = None  # what --repair does about it, if anything

    def __str__(self) -> str:
        return f"{self.path}: {self.what}: {self.fix}"


class _Segments:
    """Sizes of segment files, looked up once each."""

    def __init__(self, root: Path):
        self.root = root
        self.sizes: dict[str, int | None] = {}
        self.folders: dict[str, set[str]] = {}
        self.mtimes: dict[str, int] = {}  # of each folder listed, taken before its listing

    def size(self, name: str) -> int | None:
        if name not in self.sizes:
            try:
                self.sizes[name] = os.stat(self.root / name).st_size
            except OSError:
                self.sizes[name] = None
        return self.sizes[name]

    def listed(self, name: str) -> bool:
        """Whether `name` is in its folder's listing (each folder listed once: 2M segment files are
        a few hundred listings, not 2M stat calls)."""
        folder, _, base = name.rpartition("/")
        names = self.folders.get(folder)
        if names is None:
            try:  # its mtime first: a file removed after the listing changes it (backup_pg._close_days)
                self.mtimes[folder] = os.stat(self.root / folder).st_mtime_ns
                names = set(os.listdir(self.root / folder))
            except OSError:
                names = set()
            self.folders[folder] = names
        return base in names

    def check(self, ref: str) -> str | None:
        """None if `ref` is readable, else what is wrong."""
        name, sep, rest = ref.partition(":")
        size = self.size(name)
        if size is None:
            return "missing"
        if sep:
            off, _, length = rest.partition(":")
            try:
                if int(off) + int(length) > size:
                    return f"shorter ({size} bytes) than a message needs ({off}+{length})"
            except ValueError:
                return f"unreadable reference {ref!r}"
        return None


class Verifier:
    def __init__(self, data_dir: Path, echo: Callable[[str], None] = lambda s: None, cfg=None):
        self.dir = Path(data_dir)
        self.cfg = cfg  # for the summaries a rebuilt index stores (reports)
        self.echo = echo
        self.problems: list[Problem] = []
        self.spool = _Segments(self.dir / "spool")
        self.outbox = _Segments(self.dir / "outbox")
        self.missing_spool: dict[str, list[str]] = {}  # segment -> tickets whose mail it held
        self.attachments: set[str] = set()
        self.raw_before = ""  # segments dated before this (YYYY/MM/DD) were expired by retention
        self.att_before = ""

    def add(self, path: str, what: str, fix: str, repair: str | None = None) -> None:
        self.problems.append(Problem(path, what, fix, repair))

    # ---- the hot database -------------------------------------------------------------------

    def hot(self) -> dict:
        from mailflow.store import AtomicStorage

        st = AtomicStorage(self.dir / "mailflow.json")
        try:
            st.load()
        except StoreError as e:
            self.add("mailflow.json", f"cannot be read ({e})", "restore the data directory from a backup "
                     "(mailflow restore BACKUP --data-dir DIR)")
            return {}
        if st.log_tail_bad:
            self.add("mailflow.wal", "ends in a torn commit record (a crash during a commit that never "
                     "returned)", "nothing to do: it is ignored and cut off at the next commit")
            self.problems.pop()  # informational: a crash artifact, not damage
        data = st.data or {}
        for name, table in data.items():
            if not isinstance(table, dict) or not all(isinstance(d, dict) for d in table.values()):
                self.add("mailflow.json", f"table {name} is not a TinyDB table", "restore it from a backup")
                return {}
        meta = {m.get("key"): m.get("value") for m in data.get("meta", {}).values()}
        self.raw_before = meta.get("retention:raw_mail_before") or ""
        self.att_before = meta.get("retention:attachments_before") or ""
        for k, t in data.get("tickets", {}).items():
            if not t.get("id") or t.get("status") not in STATUSES:
                self.add("mailflow.json", f"tickets/{k}: not a ticket (id {t.get('id')!r}, status "
                         f"{t.get('status')!r})", "restore the data directory from a backup")
        ids = {t.get("id") for t in data.get("tickets", {}).values()}
        for k, m in data.get("messages", {}).items():
            if not m.get("message_id") or m.get("direction") not in ("in", "out"):
                self.add("mailflow.json", f"messages/{k}: not a message", "restore the data directory from a backup")
                continue
            if m.get("ticket_id") and m["ticket_id"] not in ids:
                self.add("mailflow.json", f"messages/{k}: belongs to ticket {m['ticket_id']}, which is not in "
                         "the hot database", "restore the data directory from a backup")
            self.message(m, "mailflow.json")
        for k, q in data.get("quarantine", {}).items():
            if q.get("spool") and q.get("status") not in ("erased",):
                why = self._spool_ref(q["spool"])
                if why:
                    self.add(f"spool/{q['spool'].partition(':')[0]}", f"{why} (quarantine item {k} refers to it)",
                             "restore the file from a backup; else `mailflow quarantine replay` cannot work")
        for k, r in data.get("outbox", {}).items():
            if r.get("status") not in ("queued", "sent", "failed", "erased"):
                self.add("mailflow.json", f"outbox/{k}: unknown status {r.get('status')!r}",
                         "restore the data directory from a backup")
            f = r.get("file")
            if f and f != "dry-run":
                why = self.outbox.check(f)
                if why and r.get("status") == "queued":
                    self.add(f"outbox/{f.partition(':')[0]}", f"{why} (queued outbox row {k} refers to it)",
                             f"restore the file from a backup, or give up on the row: `mailflow outbox list` "
                             f"shows it ({r.get('ticket_id')})")
                elif why:
                    self.add(f"outbox/{f.partition(':')[0]}", f"{why} ({r.get('status')} outbox row {k} refers to "
                             "it)", "restore the file from a backup if the mail may have to be sent again "
                             "(`mailflow outbox retry --resend`); nothing else needs it")
        return data

    def _spool_ref(self, ref: str) -> str | None:
        name = ref.partition(":")[0]
        if self.raw_before and name[:10] < self.raw_before:
            return None  # expired by [retention] raw_mail_days
        return self.spool.check(ref)

    def message(self, m: dict, where: str) -> None:
        ref = m.get("spool")
        if ref and m.get("direction") == "in":
            why = self._spool_ref(ref)
            if why:
                self.missing_spool.setdefault(f"{ref.partition(':')[0]}\t{why}", []).append(m.get("ticket_id") or "-")
        for a in m.get("attachments") or []:
            p = a.get("path")
            if not p:
                continue
            self.attachments.add(p)
            if not (self.dir / p).is_file() and not (self.att_before and (m.get("received_at") or "") < self.att_before):
                self.add(p, f"missing (an attachment of {m.get('ticket_id')}, listed in {where})",
                         "restore it from a backup; the ticket shows it as listed but not saved until then")

    # ---- the archive -----------------------------------------------------------------------------

    def archive(self, repair: bool = False) -> None:
        adir = self.dir / "archive"
        if not adir.is_dir():
            return
        index = ArchiveIndex(adir, create=repair)
        index.cfg = self.cfg
        try:
            self._archive(index, adir, repair)
        finally:
            index.close()

    def _archive(self, index: ArchiveIndex, adir: Path, repair: bool) -> None:
        files = sorted(adir.glob(MONTH_GLOB))
        if not index.path.exists():
            if not files:
                return
            self.add("archive/index.sqlite", f"missing ({len(files)} month files are not indexed)",
                     "run `mailflow verify --repair` to build it", repair="rebuild")
            if not repair:
                return
            index.rebuild(self.cfg)  # then check the files against it like any other index
        indexed_files = {r[0] for r in index._query("SELECT DISTINCT file FROM ticket")}
        for name in sorted(indexed_files - {p.name for p in files}):
            n = index._query("SELECT count(*) FROM ticket WHERE file=?", (name,))[0][0]
            self.add(f"archive/{name}", f"missing ({n} archived tickets in the index are in it)",
                     "restore the file from a backup (mailflow restore BACKUP --data-dir SCRATCH, then copy it)")
        for path in files:
            self._month(index, path, repair)

    def _month(self, index: ArchiveIndex, path: Path, repair: bool) -> None:
        rel = f"archive/{path.name}"
        newest: dict[str, tuple[int, int, dict]] = {}
        size = path.stat().st_size
        end = 0
        bad = 0
        for off, line in iter_lines(path):
            end = off + len(line) + 1
            try:
                entry = _loads(line)
                tid = entry["ticket"]["id"]
            except (ValueError, KeyError, TypeError):
                bad += 1
                continue
            newest[tid] = (off, len(line), entry)
        if bad:
            self.add(rel, f"{bad} entries are not valid JSON", "restore the file from a backup")
        rows = {r[0]: (r[1], r[2]) for r in
                index._query("SELECT ticket_id, offset, length FROM ticket WHERE file=?", (path.name,))}
        lost = sorted(t for t, (o, n) in rows.items() if o + n > end)
        if end != size:
            if lost:
                self.add(rel, f"truncated: it ends in a torn entry, and {len(lost)} archived tickets the index "
                         f"places in it are cut off ({', '.join(lost[:5])}{'...' if len(lost) > 5 else ''})",
                         "restore the file from a backup (mailflow restore BACKUP --data-dir SCRATCH, then copy "
                         "it); until then those tickets cannot be shown")
            else:
                self.add(rel, f"ends in a torn entry ({size - end} bytes: an append a crash cut short; that "
                         "ticket is still in the hot database)", "run `mailflow verify --repair` to cut it off",
                         repair="cut")
        elif lost:
            self.add(rel, f"{len(lost)} archived tickets the index places in it are not there "
                     f"({', '.join(lost[:5])})", "restore the file from a backup")
        stale = [t for t in newest if t not in rows or rows[t] != newest[t][:2]]
        gone = [t for t in rows if t not in newest and t not in lost]
        for tid in stale[:20]:
            self.add("archive/index.sqlite", f"{tid} ({rel}) is not in the index or points at an older copy",
                     "run `mailflow verify --repair`", repair="reindex")
        if len(stale) > 20:
            self.add("archive/index.sqlite", f"{len(stale) - 20} more tickets of {rel} are not indexed right",
                     "run `mailflow verify --repair`", repair="reindex")
        for tid in gone[:20]:
            self.add("archive/index.sqlite", f"{tid} points into {rel} at an entry that is another ticket",
                     "run `mailflow verify --repair`", repair="reindex")
        placed = rows.keys() - set(stale)
        for tid, (_o, _n, entry) in newest.items():
            mids = [m.get("message_id") for m in entry.get("messages") or [] if m.get("message_id")]
            if mids and tid in placed:  # rightly placed: are all its Message-IDs there too?
                have = {r[0] for r in index._query(
                    f"SELECT message_id FROM msgid WHERE ticket_id=? AND message_id IN ({','.join('?' * len(mids))})",
                    (tid, *mids))}
                missing = [m for m in mids if m not in have]
                if missing:
                    stale.append(tid)
                    self.add("archive/index.sqlite", f"{tid}: Message-ID {missing[0]} is not in the index"
                             f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}",
                             "run `mailflow verify --repair`", repair="reindex")
            for m in entry.get("messages") or []:
                self.message(m, rel)
        if repair:
            self._repair_month(index, path, end, size, lost, bool(stale or gone))

    def _repair_month(self, index: ArchiveIndex, path: Path, end: int, size: int, lost: list[str],
                      reindex: bool) -> None:
        if end != size and not lost:
            with open(path, "rb+") as f:
                f.truncate(end)
                os.fsync(f.fileno())
            reindex = True
        if reindex:
            with index.transaction() as db:
                keep = [r for r in db.execute("SELECT * FROM ticket WHERE file=?", (path.name,))
                        if r[0] in set(lost)]
                index.reindex_file(db, path.name, self.cfg)
                # rows of tickets the file lost stay: they say what a backup must bring back
                db.executemany("INSERT OR IGNORE INTO ticket VALUES(?,?,?,?,?,?,?,?,?,?)", keep)

    # ---- attachments and segments --------------------------------------------------------------

    def files(self) -> None:
        for key, tids in sorted(self.missing_spool.items()):
            name, why = key.split("\t")
            uniq = sorted(set(tids))
            self.add(f"spool/{name}", f"{why} ({len(tids)} messages of {', '.join(uniq[:5])}"
                     f"{'...' if len(uniq) > 5 else ''} refer to it)",
                     "restore the file from a backup (mailflow restore BACKUP --data-dir SCRATCH, then copy it); "
                     "the tickets keep their text, only the raw mail is gone")
        adir = self.dir / "attachments"
        if adir.is_dir():
            for root, _dirs, names in os.walk(adir):
                for n in sorted(names):
                    rel = (Path(root) / n).relative_to(self.dir).as_posix()
                    if rel not in self.attachments:
                        self.add(rel, "orphan attachment (no message, hot or archived, lists it)",
                                 f"delete it if nothing needs it (rm {self.dir / rel}); mailflow never deletes mail "
                                 "on its own")


def verify(data_dir: Path, repair: bool = False, echo: Callable[[str], None] = lambda s: None,
           cfg=None) -> list[Problem]:
    """Every problem of a data directory (after repairing the derivable ones with `repair`)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return [Problem(str(data_dir), "no such directory", "check [storage] data_dir or --data-dir")]
    lock = None
    if repair:
        lock = lock_process(data_dir) if (data_dir / "daemon.lock").exists() else None
    try:
        from filelock import FileLock

        with FileLock(str(data_dir / "mailflow.lock")):  # a consistent view, and no commit mid-repair
            v = Verifier(data_dir, echo, cfg)
            v.hot()
            v.archive(repair)
            v.files()
        if repair and any(p.repair for p in v.problems):
            fixed = [p for p in v.problems if p.repair]
            echo(f"repaired: {len(fixed)} problem(s) ({', '.join(sorted({p.repair or '' for p in fixed}))})")
            return verify(data_dir, repair=False, echo=echo, cfg=cfg)
        return v.problems
    finally:
        if lock is not None:
            lock.close()
