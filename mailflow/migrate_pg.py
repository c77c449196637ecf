"""`mailflow db migrate --from tinydb --to postgresql`: copy a TinyDB data directory's store into
the configured database.

The TinyDB store is opened read-only (`create=False`; nothing is ever written to its files). Rows
go in with COPY, `batch_size` tickets and their messages per transaction. Into an empty database
the tickets and messages go straight into their tables, with those tables' secondary indexes
dropped first and built once at the end (sorting 4 million Message-IDs once instead of inserting
them one by one into a B-tree: a year of a large team, 1M tickets, loads in minutes instead of
hours); the dropped definitions are kept in meta `migrate:indexes` so that a run that was
interrupted builds them on its re-run. Into a database that already holds tickets (a re-run) they
go through temporary tables and `INSERT ... ON CONFLICT (id) DO NOTHING`, and a ticket's messages
are inserted only with the ticket: idempotent, a re-run adds nothing twice. Outbox rows and
quarantine items keep their TinyDB keys; seen keys, meta keys and checkpoints are keys too.

Archived tickets are read month file by month file, at the offsets `archive/index.sqlite` names
(the newest copy of each ticket; a ticket hot and archived at once is copied from its hot copy),
and their report summary is the one that index stores (what the TinyDB store's reports read), so
reports give the same figures on both stores; a ticket without one gets `summary_of`.

Outgoing mail's bytes are read from outbox/ segments into `outbox.data`; raw mail, attachments and
quarantine bytes stay in data_dir and are used in place. Serial counters (`serial:<prefix>:<day>`
meta) become `serials` rows, mailbox checkpoints (`mailbox:<name>` meta) `checkpoints` rows; every
other meta key (flood cap records, round-robin state, report and retention ledgers) is copied as it
is. The HMAC key and other files stay in data_dir.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg

from mailflow.store_pg import _j


@dataclass
class Result:
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (TinyDB, PostgreSQL)
    problems: list[str] = field(default_factory=list)
    added: dict[str, int] = field(default_factory=dict)


_TCOLS = "id, status, customer_email, created_at, closed_at, wake_at, scheduled, archived, doc, summary"
_MCOLS = "ticket_id, message_id, hash, direction, mailbox, archived, doc"
_INDEX_KEY = "migrate:indexes"


def _tcols(t: dict) -> tuple:
    return (t.get("status") or "", t.get("customer_email") or "", t.get("created_at") or "", t.get("closed_at"),
            t.get("wake_at") or None, "wake_at" in t or t.get("status") == "closed")


def _s(v: Any) -> str:
    return orjson.dumps(v).decode()


def _trow(t: dict, archived: bool, summary: str | None) -> tuple:
    st, cust, created, closed, wake, sched = _tcols(t)
    return (t["id"], st, cust, created, closed, None if archived else wake, sched, archived, _s(t), summary)


def _mrow(m: dict, archived: bool) -> tuple:
    return (m.get("ticket_id"), m["message_id"], m.get("hash") or "", m.get("direction") or "in", m.get("mailbox"),
            archived, _s(m))


class _Loader:
    """Tickets with their messages into PostgreSQL, a transaction per chunk (see the module doc)."""

    def __init__(self, c: psycopg.Connection, direct: bool):
        self.c, self.direct = c, direct
        self.tickets = self.messages = 0
        if not direct:
            c.execute("CREATE TEMP TABLE IF NOT EXISTS mig_t AS SELECT " + _TCOLS + " FROM tickets WITH NO DATA")
            c.execute("CREATE TEMP TABLE IF NOT EXISTS mig_m AS SELECT " + _MCOLS + " FROM messages WITH NO DATA")

    def load(self, chunk: list[tuple[tuple, list[tuple]]]) -> None:
        if not chunk:
            return
        tt, mt = ("tickets", "messages") if self.direct else ("mig_t", "mig_m")
        with self.c.transaction(), self.c.cursor() as cur:
            with cur.copy(f"COPY {tt} ({_TCOLS}) FROM STDIN") as cp:
                for trow, _m in chunk:
                    cp.write_row(trow)
            with cur.copy(f"COPY {mt} ({_MCOLS}) FROM STDIN") as cp:
                for _t, mrows in chunk:
                    for mrow in mrows:
                        cp.write_row(mrow)
            if self.direct:
                self.tickets += len(chunk)
                self.messages += sum(len(m) for _t, m in chunk)
                return
            n_t, n_m = cur.execute(
                f"WITH ins AS (INSERT INTO tickets ({_TCOLS}) SELECT {_TCOLS} FROM mig_t ON CONFLICT (id) DO NOTHING "
                f"RETURNING id), msg AS (INSERT INTO messages ({_MCOLS}) SELECT {_MCOLS} FROM mig_m "
                "WHERE ticket_id IN (SELECT id FROM ins) RETURNING 1) "
                "SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM msg)").fetchone()
            cur.execute("TRUNCATE mig_t, mig_m")
            self.tickets += n_t
            self.messages += n_m


def _chunks(items: Iterable, n: int) -> Iterator[list]:
    chunk: list = []
    for it in items:
        chunk.append(it)
        if len(chunk) >= n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _Summaries:
    """The report summary of an archived ticket, as cheaply as it can be had and never stale: the
    one archive/index.sqlite stores when it is `summary.summarize`'s current layout; else the one
    the reports' month cache (archive/summaries/<month>.<fingerprint of cfg>.jsonl) holds, when
    the cache covers the ticket's line; else `summary_of` (about 0.4 ms a ticket)."""

    def __init__(self, archive: Path, cfg: Any):
        from mailflow import summary

        self.archive, self.cfg = archive, cfg
        self.version = summary.VERSION
        try:
            from mailflow.report_source import CACHE_DIR, fingerprint

            self.cache_dir, self.fp = archive / CACHE_DIR, fingerprint(cfg)
        except Exception:  # noqa: BLE001 - a config the reports cannot fingerprint: no cache
            self.cache_dir, self.fp = None, None
        self.month: dict[bytes, bytes] = {}
        self.covered = 0
        self.computed = 0

    def open_month(self, name: str) -> None:
        """Load the month cache of month file `name` (one month at a time: flat memory)."""
        self.month, self.covered = {}, 0
        if self.cache_dir is None:
            return
        stem = name[:-len(".jsonl")]
        cache, state = self.cache_dir / f"{stem}.{self.fp}.jsonl", self.cache_dir / f"{stem}.{self.fp}.state"
        try:
            st = orjson.loads(state.read_bytes())
            if st.get("ino") != (self.archive / name).stat().st_ino:
                return
            with open(cache, "rb") as f:
                data = f.read(int(st.get("cache_size", 0)))
        except (OSError, ValueError, TypeError):
            return
        for line in data.split(b"\n"):
            tid, _sep, rest = line.partition(b"\t")
            if rest:
                self.month[tid] = rest.split(b"\t", 2)[2]  # id TAB last TAB status TAB json: the last copy wins
        self.covered = int(st.get("src_size", 0))

    def of(self, t: dict, offset: int, length: int, stored: str | None) -> str:
        from mailflow.archive import summary_of

        if stored and stored.startswith('{"v":') and orjson.loads(stored).get("v") == self.version:
            return stored
        if offset + length < self.covered:
            got = self.month.get(t["id"].encode())
            if got is not None:
                return got.decode()
        self.computed += 1
        return _s(summary_of(t, self.cfg))


def _archived_entries(data_dir: Path, hot: set[str], cfg: Any, skip: list[int], sums: _Summaries
                      ) -> Iterator[tuple[tuple, list]]:
    """(ticket row, message rows) of every archived ticket, month file by month file, read at the
    offsets the archive index names (the newest copy), with its report summary (`_Summaries`)."""
    from mailflow.archive import iter_lines

    path = data_dir / "archive" / "index.sqlite"
    if not path.exists():
        return
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        files = [r[0] for r in db.execute("SELECT DISTINCT file FROM ticket ORDER BY file")]
        for name in files:
            where = {off: (tid, length, summary) for tid, off, length, summary in
                     db.execute("SELECT ticket_id, offset, length, summary FROM ticket WHERE file = ?", (name,))}
            if not (data_dir / "archive" / name).exists():
                skip.extend([1] * len(where))
                continue
            sums.open_month(name)
            for off, line in iter_lines(data_dir / "archive" / name):
                got = where.pop(off, None)
                if got is None:
                    continue  # an older copy of a ticket archived again later
                tid, length, stored = got
                if tid in hot:
                    continue
                try:
                    e = orjson.loads(line)
                    t = e["ticket"]
                except (ValueError, KeyError, TypeError):
                    skip.append(1)
                    continue
                if t.get("id") != tid:
                    skip.append(1)
                    continue
                yield (_trow(t, True, sums.of(t, off, length, stored)),
                       [_mrow(m, True) for m in e.get("messages") or []])
            skip.extend([1] * len(where))  # named by the index but not found where it says
    finally:
        db.close()


def _drop_indexes(c: psycopg.Connection) -> None:
    """Before a bulk load into empty tables: drop the secondary indexes of tickets and messages,
    keeping their definitions in meta (a re-run after an interruption builds them)."""
    with c.transaction():
        defs = c.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() AND "
                         "tablename IN ('tickets', 'messages', 'ticket_search') AND indexname NOT LIKE '%%_pkey' "
                         "ORDER BY indexname").fetchall()
        if not defs:
            return
        c.execute("INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = "
                  "meta.value || excluded.value", (_INDEX_KEY, _j(dict(defs))))
        for name, _d in defs:
            c.execute(f'DROP INDEX "{name}"')


def _build_indexes(c: psycopg.Connection, echo) -> None:
    row = c.execute("SELECT value FROM meta WHERE key = %s", (_INDEX_KEY,)).fetchone()
    if row is None:
        return
    c.execute("SET maintenance_work_mem = '256MB'")
    for name, d in sorted(row[0].items()):
        echo(f"building index {name}")
        c.execute(d.replace("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ", 1).replace(
            "CREATE UNIQUE INDEX ", "CREATE UNIQUE INDEX IF NOT EXISTS ", 1))
    c.execute("DELETE FROM meta WHERE key = %s", (_INDEX_KEY,))
    c.execute("RESET maintenance_work_mem")


def migrate(cfg: Any, batch_size: int = 5000, echo=lambda s: None) -> Result:
    from mailflow import pg_schema
    from mailflow.spool import Segments
    from mailflow.store import Store

    src = Store(cfg.data_dir, create=False)
    res = Result()
    added = {"tickets": 0, "messages": 0, "outbox": 0, "quarantine": 0, "seen": 0, "meta": 0}
    segs = Segments.__new__(Segments)  # a reader only: no directory is made
    segs.root, segs.suffix = cfg.data_dir / "outbox", ".out"
    batch_size = max(1, batch_size)
    with psycopg.connect(cfg.pg.conninfo(), autocommit=True) as c:
        pg_schema.check(c)
        direct = c.execute("SELECT NOT EXISTS (SELECT 1 FROM tickets) AND NOT EXISTS (SELECT 1 FROM messages)"
                           ).fetchone()[0]
        if direct:
            _drop_indexes(c)
        loader = _Loader(c, direct)

        # hot tickets and their messages (the hot tables come first in fetch_all; archived ones then)
        hot_docs = []
        for _k, t in src.fetch_all("tickets"):
            if "_archived_messages" in t:
                break
            hot_docs.append(t)
        hot = {t["id"] for t in hot_docs}
        hot_msgs: dict[str, list[dict]] = {}
        for _k, m in src.fetch_all("messages"):
            hot_msgs.setdefault(m.get("ticket_id") or "", []).append(m)
        for chunk in _chunks(((_trow(t, False, None), [_mrow(m, False) for m in hot_msgs.get(t["id"], [])])
                              for t in hot_docs), batch_size):
            loader.load(chunk)
        echo(f"hot tickets: {len(hot_docs)}")
        with c.transaction():  # hot messages of no ticket (none normally): by Message-ID and hash
            for m in hot_msgs.get("", []):
                if c.execute("SELECT 1 FROM messages WHERE message_id = %s AND hash = %s AND ticket_id IS NULL",
                             (m["message_id"], m.get("hash") or "")).fetchone() is None:
                    _message(c, m, False)
                    added["messages"] += 1
        del hot_docs, hot_msgs

        skipped: list[int] = []
        n_archived = 0
        sums = _Summaries(cfg.data_dir / "archive", cfg)
        for chunk in _chunks(_archived_entries(cfg.data_dir, hot, cfg, skipped, sums), batch_size):
            loader.load(chunk)
            n_archived += len(chunk)
            if n_archived % (batch_size * 20) < batch_size:
                echo(f"archived tickets: {n_archived}")
        echo(f"archived tickets: {n_archived} ({sums.computed} report summaries computed, the others read)")
        if skipped:
            res.problems.append(f"{len(skipped)} archived tickets named by archive/index.sqlite were not found "
                                "in their month files (run `mailflow verify --repair` on the TinyDB store)")
        added["tickets"] += loader.tickets
        added["messages"] += loader.messages
        _build_indexes(c, echo)

        with c.transaction(), c.cursor() as cur:
            before = c.execute("SELECT count(*) FROM outbox").fetchone()[0]
            rows = []
            for k, r in src.fetch_all("outbox"):
                data = None
                doc = dict(r, row=str(k))
                if r.get("file") and r.get("file") != "db":
                    try:
                        data = segs.read(r["file"])
                        doc["file"] = "db"
                    except OSError as e:
                        if r.get("status") == "queued":
                            res.problems.append(f"outbox row {k}: queued but its mail is unreadable ({e})")
                rows.append((int(k), r.get("status") or "queued", r.get("ticket_id"), r.get("next_attempt_at"),
                             r.get("sent_at"), r.get("created_at"), _j(doc), data))
            cur.executemany("INSERT INTO outbox (k, status, ticket_id, next_attempt_at, sent_at, created_at, doc, data) "
                            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (k) DO NOTHING", rows)
            added["outbox"] = c.execute("SELECT count(*) FROM outbox").fetchone()[0] - before
            c.execute("SELECT setval(pg_get_serial_sequence('outbox', 'k'), greatest((SELECT max(k) FROM outbox), 1))")
            before = c.execute("SELECT count(*) FROM quarantine").fetchone()[0]
            cur.executemany("INSERT INTO quarantine (k, status, hash, spool, doc) VALUES (%s, %s, %s, %s, %s) "
                            "ON CONFLICT (k) DO NOTHING",
                            [(int(k), q.get("status"), q.get("hash"), q.get("spool"), _j(q))
                             for k, q in src.fetch_all("quarantine")])
            added["quarantine"] = c.execute("SELECT count(*) FROM quarantine").fetchone()[0] - before
            c.execute("SELECT setval(pg_get_serial_sequence('quarantine', 'k'), "
                      "greatest((SELECT max(k) FROM quarantine), 1))")
            before = c.execute("SELECT count(*) FROM seen").fetchone()[0]
            cur.executemany("INSERT INTO seen (key, outcome, at) VALUES (%s, %s, %s) ON CONFLICT (key) DO NOTHING",
                            [(s["key"], s.get("outcome"), s.get("at") or "") for _k, s in src.fetch_all("seen")])
            added["seen"] = c.execute("SELECT count(*) FROM seen").fetchone()[0] - before
            serials, checkpoints, meta = [], [], []
            for _k, m in src.fetch_all("meta"):
                key, value = m["key"], m.get("value")
                if key.startswith("serial:"):
                    _s0, prefix, day = key.split(":", 2)
                    serials.append((prefix, day, int(value or 0)))
                elif key.startswith("mailbox:"):
                    checkpoints.append((key[len("mailbox:"):], _j(value or {})))
                else:
                    meta.append((key, _j(value)))
            cur.executemany("INSERT INTO serials (prefix, day, n) VALUES (%s, %s, %s) ON CONFLICT (prefix, day) "
                            "DO UPDATE SET n = greatest(serials.n, excluded.n)", serials)
            cur.executemany("INSERT INTO checkpoints (mailbox, doc) VALUES (%s, %s) ON CONFLICT (mailbox) DO NOTHING",
                            checkpoints)
            before = c.execute("SELECT count(*) FROM meta").fetchone()[0]
            cur.executemany("INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING", meta)
            added["meta"] = c.execute("SELECT count(*) FROM meta").fetchone()[0] - before
            # rows were added under them: the reports' kept parts and what `verify` remembers are stale
            c.execute("DELETE FROM meta WHERE key LIKE 'rcache:%' OR key = 'verify:checked'")
            c.execute("DELETE FROM report_cache")
        if direct:
            echo("analyzing")
            c.execute("ANALYZE")

        # verify: every TinyDB row has its PostgreSQL row
        have = src.counts()
        n_seen = sum(1 for _ in src.fetch_all("seen"))
        got = dict(zip(("tickets_hot", "tickets_archived", "messages_hot", "outbox_rows", "quarantine", "seen"),
                       c.execute("SELECT (SELECT count(*) FROM tickets WHERE NOT archived), (SELECT count(*) FROM "
                                 "tickets WHERE archived), (SELECT count(*) FROM messages WHERE NOT archived), "
                                 "(SELECT count(*) FROM outbox), (SELECT count(*) FROM quarantine), "
                                 "(SELECT count(*) FROM seen)").fetchone(), strict=True))
        n_hot = len(hot)
        have = {"tickets_hot": n_hot, "tickets_archived": have["tickets_archived"] - len(hot & _archived_ids(src)),
                **{k: have[k] for k in ("messages_hot", "outbox_rows", "quarantine")}, "seen": n_seen}
    src.close()
    for k, n in have.items():
        res.counts[k] = (n, got[k])
        if got[k] < n:
            res.problems.append(f"{k}: {n} in TinyDB but only {got[k]} in PostgreSQL")
    res.added = added
    return res


def _archived_ids(src: Any) -> set[str]:
    """Archived ticket ids that are hot too (a crash between archiving steps): counted once, hot."""
    return {tid for tid in src.hot_ticket_ids() if src.is_archived(tid)}


def _message(c: psycopg.Connection, m: dict, archived: bool) -> None:
    c.execute("INSERT INTO messages (ticket_id, message_id, hash, direction, mailbox, archived, doc) "
              "VALUES (%s, %s, %s, %s, %s, %s, %s)",
              (m.get("ticket_id"), m["message_id"], m.get("hash") or "", m.get("direction") or "in",
               m.get("mailbox"), archived, _j(m)))
