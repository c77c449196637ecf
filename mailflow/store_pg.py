"""The PostgreSQL store: the StoreAPI (mailflow/storeapi.py) over psycopg 3 and a connection pool.

Several daemons may share one database (no data-directory lock). One `batch()` is one transaction
on one pooled connection; a nested batch joins it; `savepoint()` is a SAVEPOINT. Inside a batch a
ticket read is `SELECT ... FOR UPDATE`, and the document it returns is the batch's live copy
(`update_ticket` merges into it and writes it through), so two daemons never lose each other's
update: the second waits for the first's commit. A deadlock, a serialization failure or a lost
connection raises BatchAborted: the transaction is rolled back whole and the caller's retry path
runs the batch again, reading everything afresh.

Outgoing mail bytes live in the database (`outbox.data`, bytea, committed with the row): any daemon
can send any row without shared storage. Raw incoming mail, attachments and quarantine bytes stay
in `data_dir` (the spool), which the daemons sharing a database must share too.

Schema: mailflow/pg_schema.py (tables, indexes, migrations, why archived tickets are a flag).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg import errors as pgerr
from psycopg.types.json import Jsonb, set_json_loads
from psycopg_pool import ConnectionPool

from mailflow import pg_schema
from mailflow.clock import iso, parse_iso, utcnow
from mailflow.storeapi import BatchAborted, SchemaError, StoreError, unclosed_by
from mailflow.tickets import OPEN_STATUSES

log = logging.getLogger("mailflow.store_pg")

# a whole batch must be retried: the server chose it as a deadlock victim, a serializable
# transaction conflicted, the connection (or the server) went away
_RETRY = (pgerr.DeadlockDetected, pgerr.SerializationFailure, pgerr.LockNotAvailable, psycopg.OperationalError)


# meta keys written outside the batch: the round-robin position (routing.pick_assignee) is a hint,
# last writer wins; a rolled-back batch may cost one assignee a turn, never a wrong assignment
UNLOCKED_META = frozenset({"rr_state"})


def _configure(conn: psycopg.Connection) -> None:
    """Every pooled connection parses jsonb with orjson (3-4x the stdlib's json: reports read
    hundreds of thousands of summaries, `tickets list --overdue` every hot ticket), and runs
    without JIT (the planner's cost of a scan over a million rows makes it compile for ~0.1-0.5 s
    queries that then stop at a LIMIT or a page)."""
    set_json_loads(orjson.loads, conn)
    conn.execute("SET jit = off")  # compiling a plan costs more than these short queries run

def _j(v: Any) -> Jsonb:
    return Jsonb(v, dumps=lambda o: json.dumps(o, ensure_ascii=False, separators=(",", ":")))


def daemon_host() -> str:
    """This host's name in daemon ids: `$MAILFLOW_HOST_ID` if set (containers that share a hostname
    but not a process table must set it to something unique), else the hostname."""
    return (os.environ.get("MAILFLOW_HOST_ID") or socket.gethostname()).replace(":", "_")


def daemon_id() -> str:
    """host:pid:random: names this process's rows (daemons) and files (spool segments)."""
    return f"{daemon_host()}:{os.getpid()}:{os.urandom(3).hex()}"


def _ticket_cols(t: dict) -> tuple:
    return (t.get("status") or "", (t.get("customer_email") or ""), t.get("created_at") or "",
            t.get("closed_at"), t.get("wake_at") or None)


class PgJournal:
    """The sender's results as rows of `outbox_results` (each `append` commits on its own, so a
    result survives a crash before the fold); the fold deletes them in its own batch."""

    in_batch = True  # outbox.fold_journal: clear() inside the fold's batch

    def __init__(self, store: PgStore):
        self.s = store

    def append(self, entries: list[dict]) -> None:
        if not entries:
            return
        with self.s.pool.connection() as c, c.cursor() as cur:
            cur.executemany("INSERT INTO outbox_results (row_k, doc) VALUES (%s, %s)",
                            [(int(e["row"]), _j(e)) for e in entries])

    def read(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for k, doc in self.s._q("SELECT k, doc FROM outbox_results ORDER BY k"):
            out[doc["row"]] = {**doc, "_k": k}
        return out

    def take(self) -> dict[str, dict]:
        """Inside the fold's batch: remove and return every result (DELETE ... RETURNING). Two
        daemons folding at once never fold one result twice: the second waits for the first's
        rows, finds them gone and skips them."""
        out: dict[str, dict] = {}
        for k, doc in sorted(self.s._x("DELETE FROM outbox_results RETURNING k, doc").fetchall()):
            out[doc["row"]] = {**doc, "_k": k}
        return out

    def clear(self, rows: Any = None) -> None:
        if not rows:
            return
        last = max(e.get("_k", 0) for e in rows.values())
        self.s._x("DELETE FROM outbox_results WHERE row_k = ANY(%s) AND k <= %s",
                  ([int(r) for r in rows], last))

    def stamp(self) -> Any:
        return self.s._q1("SELECT max(k) FROM outbox_results")


class PgStore:
    """The StoreAPI on PostgreSQL (see the module docstring)."""

    backend = "postgresql"
    mail_in_db = True
    # every mail of a batch is a savepoint, a subtransaction once it writes; PostgreSQL keeps 64
    # subtransaction ids per backend in shared memory, and past that every other session's snapshot
    # looks them up in pg_subtrans. A commit costs little here (TinyDB's batches grow to 1,000 to
    # spare its commit log), so a batch stays under that
    max_batch = 60

    def __init__(self, cfg: Any, create: bool = True, check_schema: bool = True):
        self.cfg = cfg
        self.dir = Path(cfg.data_dir)
        if create:
            for sub in ("spool", "quarantine", "attachments", "outbox"):
                (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.mutex = threading.RLock()
        self.daemon = daemon_id()
        self._conninfo = cfg.pg.conninfo()
        self.pool = ConnectionPool(self._conninfo, min_size=1, max_size=max(1, cfg.pg.pool_size),
                                   kwargs={"autocommit": True}, open=False, name="mailflow",
                                   configure=_configure)
        try:
            self.pool.open(wait=True, timeout=float(cfg.pg.options.get("connect_timeout") or 15))
        except Exception as e:
            self.pool.close()
            raise StoreError(f"cannot connect to the database ({_where(cfg.pg.dsn)}): {_why(e)}") from None
        self._conn: psycopg.Connection | None = None  # the batch's connection
        self._owner: int | None = None  # the thread running the batch
        self._depth = 0
        self._live: dict[str, dict] = {}  # tickets read in this batch (locked), by id
        self._dirty: dict[str, bool] = {}  # live tickets changed since written (-> wake_at was set)
        self._sp = 0
        self._serials: list[tuple[str, str, int]] = []  # allocated in the running batch
        if check_schema:
            with self.pool.connection() as c:
                pg_schema.check(c)

    # ---- connections ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _cursor(self, binary: bool = False) -> Iterator[psycopg.Cursor]:
        """The batch's cursor in the batch's thread, else one from the pool (autocommit reads).
        `binary`: results in binary format (a bytea as is, not hex text)."""
        if self._conn is not None and self._owner == threading.get_ident():
            with self._conn.cursor(binary=binary) as cur:
                yield cur
            return
        with self.pool.connection() as c, c.cursor(binary=binary) as cur:
            yield cur

    def _x(self, sql: str, args: Any = None) -> psycopg.Cursor:
        """Execute in the batch (a change: outside one it is an error)."""
        self._require_batch()
        if self._dirty and "tickets" in sql:
            self._flush()
        cur = self._conn.cursor()
        try:
            return cur.execute(sql, args)
        except _RETRY as e:
            raise BatchAborted(f"database: {_why(e)}") from e

    def _q(self, sql: str, args: Any = None, binary: bool = False) -> list[tuple]:
        if self._dirty and "tickets" in sql and self._in_my_batch():
            self._flush()  # a query of the tickets sees every change of the batch so far
        try:
            with self._cursor(binary) as cur:
                return cur.execute(sql, args).fetchall()
        except _RETRY as e:
            if self._in_my_batch():
                raise BatchAborted(f"database: {_why(e)}") from e
            raise StoreError(f"database: {_why(e)}") from e

    def _q1(self, sql: str, args: Any = None, binary: bool = False) -> Any:
        rows = self._q(sql, args, binary)
        return rows[0][0] if rows else None

    def _in_my_batch(self) -> bool:
        return self._conn is not None and self._owner == threading.get_ident()

    def _require_batch(self) -> None:
        if not self._in_my_batch():
            raise StoreError("store change outside a batch")

    # ---- transactions ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def batch(self) -> Iterator[PgStore]:
        with self.mutex:
            if self._depth:
                self._depth += 1
                try:
                    yield self
                finally:
                    self._depth -= 1
                return
            try:
                conn = self.pool.getconn()
            except Exception as e:
                raise BatchAborted(f"cannot get a database connection: {_why(e)}") from e
            ok = False
            try:
                conn.execute("BEGIN")
                self._conn, self._owner, self._depth, self._live = conn, threading.get_ident(), 1, {}
                self._dirty, self._serials = {}, []
                try:
                    yield self
                    self._flush()
                    ok = True
                finally:
                    self._depth, self._live, self._dirty = 0, {}, {}
                    self._conn = self._owner = None
                    if ok:
                        try:
                            conn.execute("COMMIT")
                        except _RETRY as e:
                            ok = False
                            raise BatchAborted(f"commit failed: {_why(e)}") from e
                        except Exception:
                            ok = False
                            raise
                    if not ok:
                        with contextlib.suppress(Exception):
                            conn.execute("ROLLBACK")
                        self._give_back_serials()
                    self._serials = []
            except _RETRY as e:
                raise BatchAborted(f"database: {_why(e)}") from e
            finally:
                self.pool.putconn(conn)

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        self._require_batch()
        self._sp += 1
        name = f"sp{self._sp}"
        self._flush()  # what the savepoint goes back to is what is written
        self._x(f"SAVEPOINT {name}")
        live_before = {k: dict(v) for k, v in self._live.items()}
        serials_before = len(self._serials)
        try:
            yield
        except BatchAborted:
            raise
        except BaseException:
            try:
                self._conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
            except _RETRY as e:
                raise BatchAborted(f"database: {_why(e)}") from e
            self._give_back_serials(serials_before)
            # the live documents go back to what they were (as TinyDB's savepoint restores them)
            self._live, self._dirty = {}, {}
            for tid, doc in live_before.items():
                self._live[tid] = doc
            raise
        else:
            self._x(f"RELEASE SAVEPOINT {name}")

    def refresh(self) -> None:
        """Nothing to reload: every read sees what other daemons committed."""

    def fence(self, name: str, holder: str | None = None, token: int | None = None) -> None:
        """Abort the batch unless `holder` still holds lease `name` with `token`. The lease row stays
        share-locked until the commit, so no other daemon can take the lease while this batch may
        still commit (its `lease_acquire` waits for the commit). Without a holder: nothing to check."""
        self._require_batch()
        if holder is None:
            return
        row = self._x("SELECT holder, token FROM leases WHERE name = %s AND expires_at > now() FOR SHARE",
                      (name,)).fetchone()
        if row is None or row[0] != holder or (token is not None and row[1] != token):
            raise BatchAborted(f"lease {name} lost")

    def change_stamp(self) -> Any:
        return None  # other daemons commit too: always recount

    def close(self) -> None:
        self.pool.close()

    # ---- meta and serials -------------------------------------------------------------------------

    def get_meta(self, key: str, default: Any = None) -> Any:
        if key.startswith("serial:"):
            _s, prefix, day = key.split(":", 2)
            n = self._q1("SELECT n FROM serials WHERE prefix = %s AND day = %s", (prefix, day))
            return default if n is None else n
        rows = self._q("SELECT value FROM meta WHERE key = %s", (key,))
        return rows[0][0] if rows else default

    def set_meta(self, key: str, value: Any) -> None:
        self._require_batch()
        if key.startswith("serial:"):
            _s, prefix, day = key.split(":", 2)
            if any((p, d) == (prefix, day) and m >= int(value) for p, d, m in self._serials):
                return  # allocated by peek_ticket_id in this batch already
            # raised at once, outside the batch (the counter row is never locked until a commit:
            # peek_ticket_id allocates from it in statements of their own); it only ever grows
            self._auto("INSERT INTO serials (prefix, day, n) VALUES (%s, %s, %s) ON CONFLICT (prefix, day) "
                       "DO UPDATE SET n = greatest(serials.n, excluded.n)", (prefix, day, int(value)))
            return
        if key in UNLOCKED_META:
            # a hint every new ticket moves: in its own statement, or the row lock held until the
            # batch commits would queue every daemon's batches behind each other's
            self._auto("INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = "
                       "excluded.value WHERE meta.value IS DISTINCT FROM excluded.value", (key, _j(value)))
            return
        self._x("INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = "
                "excluded.value", (key, _j(value)))

    def peek_ticket_id(self, prefix: str, day: str) -> tuple[str, str, int]:
        """In a batch the serial is allocated here, in a statement of its own: the counter row is
        locked only for that statement, never until the batch commits, so daemons creating tickets
        at once do not queue behind each other's batches. Unique across daemons; a batch that rolls
        back gives its serials back when nobody allocated after it (one daemon: the ids stay dense;
        a crash, or another daemon's ticket in between, leaves a number unused)."""
        key = f"serial:{prefix}:{day}"
        if not self._in_my_batch():
            n = (self.get_meta(key, 0) or 0) + 1
            while self._q1("SELECT 1 FROM tickets WHERE id = %s", (f"{prefix}{day}{n:04d}",)):
                n += 1
            return f"{prefix}{day}{n:04d}", key, n
        n = self._auto("INSERT INTO serials (prefix, day, n) VALUES (%s, %s, 1) ON CONFLICT (prefix, day) "
                       "DO UPDATE SET n = serials.n + 1 RETURNING n", (prefix, day))[0][0]
        self._serials.append((prefix, day, n))
        while self._q1("SELECT 1 FROM tickets WHERE id = %s", (f"{prefix}{day}{n:04d}",)):
            # a ticket made before the counter existed (a migration): skip past it
            n = self._auto("UPDATE serials SET n = n + 1 WHERE prefix = %s AND day = %s RETURNING n",
                           (prefix, day))[0][0]
            self._serials.append((prefix, day, n))
        return f"{prefix}{day}{n:04d}", key, n

    def _give_back_serials(self, since: int = 0) -> None:
        """A rolled-back batch (or savepoint: the serials allocated after `since`): return them,
        newest first, while each is still the top one."""
        back, self._serials = self._serials[since:], self._serials[:since]
        for prefix, day, n in sorted(back, key=lambda x: -x[2]):
            try:
                if not self._auto("UPDATE serials SET n = n - 1 WHERE prefix = %s AND day = %s AND n = %s "
                                  "RETURNING n", (prefix, day, n)):
                    continue  # someone allocated after us: this number stays unused
            except StoreError:
                return  # the database is away: the numbers stay unused

    def next_ticket_id(self, prefix: str, day: str) -> str:
        tid, key, n = self.peek_ticket_id(prefix, day)
        self.set_meta(key, n)
        return tid

    # ---- tickets ------------------------------------------------------------------------------

    def ticket(self, tid: str) -> dict | None:
        if self._in_my_batch():
            t = self._live.get(tid)
            if t is not None:
                return t
            row = self._x("SELECT doc FROM tickets WHERE id = %s AND NOT archived FOR UPDATE", (tid,)).fetchone()
            if row is None:
                return None
            self._live[tid] = row[0]
            return row[0]
        rows = self._q("SELECT doc FROM tickets WHERE id = %s AND NOT archived", (tid,))
        return rows[0][0] if rows else None

    def all_tickets(self) -> list[dict]:
        rows = [r[0] for r in self._q("SELECT doc FROM tickets WHERE NOT archived ORDER BY created_at, id")]
        if self._in_my_batch():
            return [self._live.get(t["id"], t) for t in rows]
        return rows

    def hot_clock_records(self, at_iso: str) -> list[dict]:
        """Three fields of each document, not the document (a ticket's history is most of it), the
        record as text for orjson: the 7,199 unclosed hot tickets of the 1M-ticket set in ~0.35 s
        on a loaded machine, against 0.7-0.9 s for their whole documents."""
        if self._in_my_batch():
            return [t for t in self.all_tickets() if unclosed_by(t, at_iso)]
        rows = self._q("SELECT id, status, doc->>'updated_at', (doc->'sla')::text, doc->'events'->-1->>'at' "
                       "FROM tickets WHERE NOT archived AND (status <> 'closed' OR closed_at IS NULL OR "
                       "closed_at = '' OR closed_at > %s)", (at_iso,))
        return [{"id": tid, "status": status, "updated_at": updated, "sla": orjson.loads(rec) if rec else None,
                 "events": [{"at": last}]} for tid, status, updated, rec, last in rows]

    def tickets_by_id(self, ids: list[str]) -> list[dict]:
        if self._in_my_batch():
            return [t for t in (self.ticket(i) for i in ids) if t is not None]
        out: list[dict] = []
        for i in range(0, len(ids), 5000):
            out += [r[0] for r in self._q("SELECT doc FROM tickets WHERE id = ANY(%s) AND NOT archived",
                                          (list(ids[i:i + 5000]),))]
        return out

    def hot_ticket_ids(self) -> list[str]:
        return [r[0] for r in self._q("SELECT id FROM tickets WHERE NOT archived ORDER BY created_at, id")]

    def newest_hot_tickets(self, n: int | None) -> tuple[int, list[dict]]:
        total = self._q("SELECT count(*) FROM tickets WHERE NOT archived")[0][0]
        if n == 0:
            return total, []
        sql = "SELECT doc FROM tickets WHERE NOT archived ORDER BY id DESC"
        rows = [r[0] for r in (self._q(sql + " LIMIT %s", (n,)) if n is not None else self._q(sql))]
        rows.reverse()
        if self._in_my_batch():
            rows = [self._live.get(t["id"], t) for t in rows]
        return total, rows

    def add_ticket(self, t: dict) -> None:
        try:
            self._x("INSERT INTO tickets (id, status, customer_email, created_at, closed_at, wake_at, doc) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s)", (t["id"], *_ticket_cols(t), _j(t)))
        except pgerr.UniqueViolation as e:
            raise StoreError(f"ticket {t['id']} exists") from e
        self._live[t["id"]] = t

    def update_ticket(self, tid: str, fields: dict) -> None:
        t = self.ticket(tid)
        if t is None:
            raise KeyError(tid)
        self._require_batch()
        t.update(fields)
        self._dirty[tid] = self._dirty.get(tid, False) or "wake_at" in fields

    def _flush(self) -> None:
        """Write the changed live tickets: one UPDATE per ticket however often a message changed it
        (before a savepoint, a query, the commit)."""
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, {}
        rows = [(*_ticket_cols(self._live[tid]), _j(self._live[tid]), sched, tid) for tid, sched in dirty.items()
                if tid in self._live]
        try:
            self._conn.cursor().executemany(
                "UPDATE tickets SET status = %s, customer_email = %s, created_at = %s, closed_at = %s, wake_at = %s, "
                "doc = %s, scheduled = scheduled OR %s, summary = CASE WHEN archived THEN summary END WHERE id = %s",
                rows)
        except _RETRY as e:
            raise BatchAborted(f"database: {_why(e)}") from e

    def add_event(self, tid: str, kind: str, detail: str = "", at: datetime | None = None,
                  actor: str = "system") -> None:
        self.append_events(tid, [{"at": iso(at or utcnow()), "kind": kind, "actor": actor, "detail": detail}])

    def append_events(self, tid: str, events: list[dict]) -> None:
        t = self.ticket(tid)
        if t is None or not events:
            return
        self.update_ticket(tid, {"events": [*t.get("events", []), *events]})

    def customer_stats(self, email: str, now: datetime) -> dict[str, int]:
        cutoff = iso(now - timedelta(days=30)) or ""
        row = self._q(
            "SELECT count(*) FILTER (WHERE status = ANY(%s)), "
            "count(*) FILTER (WHERE doc->>'category' = 'complaint' AND created_at >= %s), "
            "count(*) FILTER (WHERE doc->>'close_reason' = 'spam') "
            "FROM tickets WHERE customer_email = %s AND NOT archived",
            (list(OPEN_STATUSES), cutoff, email.lower()))[0]
        return {"open_tickets": row[0], "complaints_30d": row[1], "spam_count": row[2]}

    def open_counts(self) -> dict[str, int]:
        return dict(self._q("SELECT doc->>'assignee', count(*) FROM tickets WHERE NOT archived AND status = ANY(%s) "
                            "AND coalesce(doc->>'assignee', '') <> '' GROUP BY 1", (list(OPEN_STATUSES),)))

    def ticket_counts(self) -> dict[str, int]:
        return dict(self._q("SELECT status, count(*) FROM tickets WHERE NOT archived GROUP BY 1"))

    # ---- the scheduler's wake index -------------------------------------------------------------

    def next_wake(self) -> str | None:
        if self._q1("SELECT 1 FROM tickets WHERE NOT scheduled AND NOT archived LIMIT 1"):
            return "0000"
        return self._q1("SELECT min(wake_at) FROM tickets WHERE wake_at IS NOT NULL AND NOT archived")

    def due_tickets(self, now: datetime, limit: int | None = None) -> list[str]:
        out = [r[0] for r in self._q("SELECT id FROM tickets WHERE NOT scheduled AND NOT archived ORDER BY id "
                                     "LIMIT %s", (limit,))]
        if limit is not None and len(out) >= limit:
            return out
        out += [r[0] for r in self._q(
            "SELECT id FROM tickets WHERE wake_at IS NOT NULL AND NOT archived AND wake_at <= %s "
            "ORDER BY wake_at, id LIMIT %s", (iso(now) or "", None if limit is None else limit - len(out)))]
        return out

    # ---- messages -----------------------------------------------------------------------------

    def add_message(self, m: dict) -> None:
        self._x("INSERT INTO messages (ticket_id, message_id, hash, direction, mailbox, doc) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                (m.get("ticket_id"), m["message_id"], m.get("hash") or "", m.get("direction") or "in",
                 m.get("mailbox"), _j(m)))

    def messages_of(self, tid: str) -> list[dict]:
        return [r[0] for r in self._q("SELECT doc FROM messages WHERE ticket_id = %s AND NOT archived ORDER BY k",
                                      (tid,))]

    def message_count(self, tid: str) -> int:
        return self._q1("SELECT count(*) FROM messages WHERE ticket_id = %s AND NOT archived", (tid,))

    def message_counts(self, tids: list[str]) -> dict[str, int]:
        got = dict(self._q("SELECT ticket_id, count(*) FROM messages WHERE ticket_id = ANY(%s) AND NOT archived "
                           "GROUP BY ticket_id", (list(tids),))) if tids else {}
        return {tid: got.get(tid, 0) for tid in tids}

    def messages_of_mailbox(self, mailbox: str) -> list[dict]:
        return [r[0] for r in self._q("SELECT doc FROM messages WHERE mailbox = %s AND NOT archived ORDER BY k",
                                      (mailbox,))]

    def ticket_of_message_id(self, message_id: str) -> str | None:
        return self._q1("SELECT ticket_id FROM messages WHERE message_id = %s AND ticket_id IS NOT NULL "
                        "ORDER BY archived, k LIMIT 1", (message_id,))

    def is_own_message_id(self, message_id: str) -> bool:
        return bool(self._q1("SELECT 1 FROM messages WHERE message_id = %s AND direction = 'out' AND NOT archived "
                             "LIMIT 1", (message_id,)))

    # ---- idempotency --------------------------------------------------------------------------

    @staticmethod
    def seen_key(message_id: str, content_hash: str) -> str:
        return f"{message_id}\x1f{content_hash}"

    def already_seen(self, message_id: str, content_hash: str) -> bool:
        # a hot message with this content, a remembered key, or any archived message with this id
        return bool(self._q1(
            "SELECT 1 FROM messages WHERE message_id = %s AND ((hash = %s AND NOT archived) OR archived) "
            "UNION ALL SELECT 1 FROM seen WHERE key = %s LIMIT 1",
            (message_id, content_hash, self.seen_key(message_id, content_hash))))

    def mark_seen(self, message_id: str, content_hash: str, outcome: str, now: datetime | None = None) -> None:
        self._x("INSERT INTO seen (key, outcome, at) VALUES (%s, %s, %s) ON CONFLICT (key) DO NOTHING",
                (self.seen_key(message_id, content_hash), outcome, iso(now or utcnow())))

    # ---- mailbox checkpoints --------------------------------------------------------------------

    def checkpoint(self, mailbox: str) -> dict:
        return dict(self._q1("SELECT doc FROM checkpoints WHERE mailbox = %s", (mailbox,)) or {})

    def set_checkpoint(self, mailbox: str, **fields: Any) -> None:
        self._x("INSERT INTO checkpoints (mailbox, doc) VALUES (%s, %s) ON CONFLICT (mailbox) DO UPDATE "
                "SET doc = checkpoints.doc || excluded.doc", (mailbox, _j(fields)))

    # ---- outbox -------------------------------------------------------------------------------

    def add_outbox(self, row: dict, data: bytes | None = None) -> str:
        self._require_batch()
        k = str(self._x("SELECT nextval(pg_get_serial_sequence('outbox', 'k'))").fetchone()[0])
        row["row"] = k
        if data is not None:
            row.setdefault("file", "db")
        self._x("INSERT INTO outbox (k, status, ticket_id, next_attempt_at, sent_at, created_at, doc, data) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (int(k), row.get("status") or "queued", row.get("ticket_id"), row.get("next_attempt_at"),
                 row.get("sent_at"), row.get("created_at"), _j(row), data))
        return k

    def outbox_rows(self) -> Mapping[str, dict]:
        return {str(k): d for k, d in self._q("SELECT k, doc FROM outbox ORDER BY k")}

    def outbox_row(self, k: str) -> dict | None:
        try:
            return self._q1("SELECT doc FROM outbox WHERE k = %s", (int(k),))
        except ValueError:
            return None

    def outbox_due(self, now_iso: str) -> list[tuple[str, dict]]:
        return [(str(k), d) for k, d in self._q(
            "SELECT k, doc FROM outbox WHERE status = 'queued' AND coalesce(next_attempt_at, '') <= %s ORDER BY k",
            (now_iso,))]

    def outbox_counts(self) -> dict[str, int]:
        return dict(self._q("SELECT status, count(*) FROM outbox GROUP BY 1"))

    def outbox_last_error(self) -> str | None:
        return self._q1("SELECT doc->>'last_error' FROM outbox WHERE coalesce(doc->>'last_error', '') <> '' "
                        "ORDER BY created_at DESC NULLS LAST LIMIT 1")

    def outbox_data(self, k: str) -> bytes | None:
        d = self._q1("SELECT data FROM outbox WHERE k = %s", (int(k),))
        return bytes(d) if d is not None else None

    def outbox_files(self) -> set[str]:
        return {(f or "").partition(":")[0] for (f,) in self._q("SELECT doc->>'file' FROM outbox")} - {"db"}

    def update_outbox(self, k: str, fields: dict) -> None:
        self._x("UPDATE outbox SET doc = doc || %s::jsonb WHERE k = %s", (_j(fields), int(k)))
        self._x("UPDATE outbox SET status = doc->>'status', next_attempt_at = doc->>'next_attempt_at', "
                "sent_at = doc->>'sent_at', claimed_by = NULL, claim_until = NULL WHERE k = %s", (int(k),))

    def remove_outbox(self, keys: list[str]) -> None:
        ks = [int(k) for k in keys]
        self._x("DELETE FROM outbox WHERE k = ANY(%s)", (ks,))
        self._x("DELETE FROM outbox_results WHERE row_k = ANY(%s)", (ks,))

    def outbox_journal(self) -> PgJournal:
        return PgJournal(self)

    # ---- quarantine ---------------------------------------------------------------------------

    def add_quarantine(self, q: dict) -> str:
        return str(self._x("INSERT INTO quarantine (status, hash, spool, doc) VALUES (%s, %s, %s, %s) RETURNING k",
                           (q.get("status"), q.get("hash"), q.get("spool"), _j(q))).fetchone()[0])

    def quarantined(self) -> list[dict]:
        return [dict(d, qid=str(k)) for k, d in self._q("SELECT k, doc FROM quarantine ORDER BY k")]

    def quarantine_item(self, qid: str) -> dict | None:
        try:
            d = self._q1("SELECT doc FROM quarantine WHERE k = %s", (int(qid),))
        except ValueError:
            return None
        return dict(d, qid=str(qid)) if d is not None else None

    def quarantine_twin(self, spool: str | None, content_hash: str) -> dict | None:
        rows = self._q("SELECT k, doc FROM quarantine WHERE (spool = %s OR hash = %s) AND status IN ('held', 'spam') "
                       "ORDER BY k LIMIT 1", (spool, content_hash))
        return dict(rows[0][1], qid=str(rows[0][0])) if rows else None

    def update_quarantine(self, qid: str, fields: dict) -> None:
        self._x("UPDATE quarantine SET doc = doc || %s::jsonb WHERE k = %s", (_j(fields), int(qid)))
        self._x("UPDATE quarantine SET status = doc->>'status', hash = doc->>'hash', spool = doc->>'spool' "
                "WHERE k = %s", (int(qid),))

    # ---- housekeeping and the archive -----------------------------------------------------------

    def prune(self, now: datetime | None = None, seen_days: int = 30, sent_days: int = 7) -> list[str]:
        self._require_batch()
        now = now or utcnow()
        self._x("DELETE FROM seen WHERE at < %s", (iso(now - timedelta(days=seen_days)) or "",))
        hour_ago = iso(now - timedelta(hours=1)) or ""
        for key, recs in self._x("SELECT key, value FROM meta WHERE key LIKE 'auto:%%'").fetchall():
            last = max((r if isinstance(r, str) else max(str(x) for x in r[:2]) for r in recs or []), default="")
            if last < hour_ago:
                self._x("DELETE FROM meta WHERE key = %s", (key,))
        gone = self._x("DELETE FROM outbox WHERE status = 'sent' AND coalesce(sent_at, '') < %s RETURNING k, "
                       "doc->>'file'", (iso(now - timedelta(days=sent_days)) or "",)).fetchall()
        if gone:
            self._x("DELETE FROM outbox_results WHERE row_k = ANY(%s)", ([k for k, _f in gone],))
        # every start of a daemon leaves a status row and a daemon lease: keep a week of them
        self._x("DELETE FROM daemons WHERE seen_at < now() - interval '7 days'")
        self._x("DELETE FROM leases WHERE name LIKE 'daemon:%%' AND expires_at < now() - interval '7 days'")
        return [f for _k, f in gone if f and f != "db"]

    def archive(self, older_than_days: float = 3.0, now: datetime | None = None, cfg: Any = None) -> int:
        """Closed tickets leave the hot set: one UPDATE each (flag + report summary); their
        messages stay where they are, flagged too."""
        from mailflow.archive import summary_of

        self._require_batch()
        cutoff = iso((now or utcnow()) - timedelta(days=older_than_days)) or ""
        moving = self._x("SELECT id, doc FROM tickets WHERE NOT archived AND status = 'closed' AND closed_at IS NOT "
                         "NULL AND closed_at < %s FOR UPDATE", (cutoff,)).fetchall()
        for tid, t in moving:
            self._x("UPDATE tickets SET archived = true, wake_at = NULL, summary = %s WHERE id = %s",
                    (_j(summary_of(t, cfg if cfg is not None else self.cfg)), tid))
            self._live.pop(tid, None)
        if moving:
            self._x("UPDATE messages SET archived = true WHERE ticket_id = ANY(%s)", ([tid for tid, _t in moving],))
            self._touch_report_days([t.get("created_at") for _tid, t in moving])
        return len(moving)

    def unarchive(self, tid: str) -> dict | None:
        self._require_batch()
        t = self.ticket(tid)
        if t is not None:
            return t
        row = self._x("UPDATE tickets SET archived = false, summary = NULL WHERE id = %s AND archived RETURNING "
                      "created_at", (tid,)).fetchone()
        if row is None:
            return None
        self._touch_report_days([row[0]])
        self._x("UPDATE messages SET archived = false WHERE ticket_id = %s", (tid,))
        return self.ticket(tid)

    def forget_archived(self, closed_before: str) -> list[dict]:
        """Retention (`closed_tickets_years`): delete archived tickets closed before the cutoff and
        their messages, in the batch; their `{"ticket", "messages"}` so the caller can blank the
        raw mail and remove the attachments they refer to."""
        gone = self._x("DELETE FROM tickets WHERE archived AND status = 'closed' AND closed_at IS NOT NULL AND "
                       "closed_at <> '' AND closed_at < %s RETURNING id, doc", (closed_before,)).fetchall()
        if not gone:
            return []
        self._touch_report_days([t.get("created_at") for _tid, t in gone])
        ids = [tid for tid, _t in gone]
        msgs: dict[str, list[dict]] = {}
        for tid, m in self._x("DELETE FROM messages WHERE ticket_id = ANY(%s) RETURNING ticket_id, doc",
                              (ids,)).fetchall():
            msgs.setdefault(tid, []).append(m)
        return [{"ticket": t, "messages": msgs.get(tid, [])} for tid, t in gone]

    def archived_ticket(self, tid: str) -> dict | None:
        t = self._q1("SELECT doc FROM tickets WHERE id = %s AND archived", (tid,))
        if t is None:
            return None
        msgs = [r[0] for r in self._q("SELECT doc FROM messages WHERE ticket_id = %s ORDER BY k", (tid,))]
        return {"ticket": t, "messages": msgs}

    def archived_ticket_of(self, message_id: str) -> str | None:
        return self._q1("SELECT ticket_id FROM messages WHERE message_id = %s AND archived AND ticket_id IS NOT NULL "
                        "ORDER BY k LIMIT 1", (message_id,))

    def is_archived(self, tid: str) -> bool:
        return bool(self._q1("SELECT 1 FROM tickets WHERE id = %s AND archived", (tid,)))

    def archived_count(self) -> int:
        return self._q1("SELECT count(*) FROM tickets WHERE archived")

    def iter_archived_summaries(self, created_from: str | None = None,
                                created_to: str | None = None) -> Iterator[dict]:
        """Streamed with a server-side cursor over (archived, created_at, id): flat memory."""
        for text in self.archived_summary_texts(created_from, created_to):
            yield orjson.loads(text)

    def archived_summary_texts(self, created_from: str | None = None, created_to: str | None = None, *,
                               last_from: int | None = None, full_from: int | None = None) -> Iterator[str]:
        """The JSON text of each archived ticket's summary (reports parse it with orjson, without
        the driver's work), created in [created_from, created_to), in creation order, streamed with
        a server-side cursor: flat memory.

        Pushed into SQL for reports (report_source passes them): `last_from` leaves out tickets
        whose last activity (`last`, epoch seconds) came before it (they count in no period of the
        report; archived tickets are never open); `full_from`: a ticket whose last activity came
        before it is only in the older periods of the CSAT trend, which read its ratings only, so
        it comes as {v, id, created, last, status, team, rat}, and not at all without a rating."""
        where, args = ["archived", "created_at >= %s"], [created_from or ""]
        if created_to:
            where.append("created_at < %s")
            args.append(created_to)
        if last_from is not None:
            where.append("(summary IS NULL OR (summary->>'last')::bigint >= %s)")
            args.append(last_from)
        col = "coalesce(summary, doc - 'events')::text"
        if full_from is not None:
            col = ("CASE WHEN summary IS NULL OR (summary->>'last')::bigint >= %s THEN coalesce(summary, doc - 'events')"
                   "::text ELSE jsonb_build_object('v', summary->'v', 'id', summary->'id', 'created', summary->'created', "
                   "'last', summary->'last', 'status', summary->'status', 'team', summary->'team', 'rat', "
                   "summary->'rat')::text END")
            where.append("(summary IS NULL OR (summary->>'last')::bigint >= %s OR summary->'rat' <> '[]'::jsonb)")
            args = [full_from, *args, full_from]
        with self.pool.connection() as c, c.transaction(), c.cursor(name="summaries") as cur:
            cur.itersize = 5000
            cur.execute(f"SELECT {col} FROM tickets WHERE {' AND '.join(where)} ORDER BY created_at, id", args)
            for (text,) in cur:
                yield text

    # ---- the reports' cache (mailflow/report_cache.py) -----------------------------------------
    # A stamp per UTC creation day of archived tickets (meta `rcache:gen:YYYY-MM-DD`), changed in the
    # transaction that changes any archived ticket created that day; what reports keep in table
    # report_cache (migration 4), written outside any batch.

    REPORT_CACHE_KEEP = 96  # kept rows (two a report: period x team x config); the least recently written go

    def _touch_report_days(self, created: list[str | None]) -> None:
        days = sorted({d.astimezone(UTC).date().isoformat() for d in map(parse_iso, created) if d is not None})
        if days:
            self._x("INSERT INTO meta (key, value) SELECT 'rcache:gen:' || d, to_jsonb(%s::text) FROM unnest(%s::text[]) d "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (secrets.token_hex(8), days))

    def report_day_stamps(self, day_from: str, day_to: str) -> dict[str, str]:
        """{UTC day: stamp} of the days in [day_from, day_to] (ISO dates) that have one."""
        rows = self._q("SELECT substr(key, 12), value #>> '{}' FROM meta WHERE key >= %s AND key <= %s",
                       (f"rcache:gen:{day_from}", f"rcache:gen:{day_to}"))
        return dict(rows)

    def report_cache_get(self, key: str) -> bytes | None:
        data = self._q1("SELECT data FROM report_cache WHERE key = %s", (key,), binary=True)  # 20 MB: not as hex
        return bytes(data) if data is not None else None

    def report_cache_keys(self) -> list[str]:
        """The kept rows' keys, the most recently written first."""
        return [k for (k,) in self._q("SELECT key FROM report_cache ORDER BY at DESC, key")]

    def report_cache_put(self, key: str, data: bytes) -> None:
        """Keep a report's row (its own statement: a report never holds a lock in a batch; the bytes
        go in binary, never as hex text); the oldest beyond REPORT_CACHE_KEEP are dropped."""
        self._auto("INSERT INTO report_cache (key, at, data) VALUES (%s, extract(epoch FROM clock_timestamp())::bigint, %b) "
                   "ON CONFLICT (key) DO UPDATE SET at = excluded.at, data = excluded.data", (key, data))
        self._auto("DELETE FROM report_cache WHERE key NOT IN (SELECT key FROM report_cache ORDER BY at DESC, key "
                   "LIMIT %s)", (self.REPORT_CACHE_KEEP,))

    def hot_summaries(self, cfg: Any, created_before: str | None = None) -> Iterator[tuple[str, dict]]:
        """(id, `summary.summarize(ticket, cfg)`) of every hot ticket, for reports. A hot ticket's
        summary is kept in its `summary` column with the config fingerprint it was made with
        (`_fp`); every write of the ticket clears it (`_flush`), so a report summarizes only what
        changed since the last one (0.4 ms a ticket: 13,566 hot tickets were 5.4 s a report) and
        writes those back, each only if the row is still the version it read (`xmin`).
        `created_before` (ISO): only tickets created before it (a past period's report)."""
        from mailflow import summary
        from mailflow.report_source import fingerprint

        fp = fingerprint(cfg)
        stale: list[str] = []
        where, args = "NOT archived", ()
        if created_before is not None:
            where, args = "NOT archived AND created_at < %s", (created_before,)
        for tid, text in self._q(f"SELECT id, summary::text FROM tickets WHERE {where} ORDER BY created_at, id", args):
            s = orjson.loads(text) if text is not None else None
            if s is not None and s.pop("_fp", None) == fp:
                yield tid, s
            else:
                stale.append(tid)
        for i in range(0, len(stale), 1000):
            fresh = []
            for tid, xmin, doc in self._q("SELECT id, xmin::text, doc FROM tickets WHERE id = ANY(%s) AND NOT archived",
                                          (stale[i:i + 1000],)):
                s = summary.summarize(doc, cfg)
                fresh.append((_j({**s, "_fp": fp}), tid, xmin))
                yield tid, s
            if fresh and not self._in_my_batch():
                # a row a daemon's batch holds is left for next time, not waited for: a report
                # never waits on the daemon (lock_timeout), and a failed write-back is only a miss
                with contextlib.suppress(psycopg.Error), self.pool.connection() as c, c.transaction(), \
                        c.cursor() as cur:
                    cur.execute("SET LOCAL lock_timeout = '200ms'")
                    cur.executemany("UPDATE tickets SET summary = %s WHERE id = %s AND xmin::text = %s AND NOT archived",
                                    fresh)

    SEARCH_PROBE = 5_000  # tickets named by an index before a word counts as common (see search)
    SEARCH_FIRST_PAGES = 5  # pages of 1,000 newest tickets read before the indexes are asked

    def search(self, q: Any) -> tuple[list[dict], bool]:
        """Hot and archived tickets, newest first; search.py's exact match (`_match`) decides, the
        SQL only narrows. An address is looked up in the address indexes of tickets and messages
        (migration 2's `mailflow_addrs`). Words: the newest 5,000 tickets are read first, a page of
        1,000 at a time with the words matched in SQL, which is all a common word needs to reach
        the limit; if that does not, each word is looked up in an index, and when the index names
        fewer than SEARCH_PROBE tickets (counted in rows of each table), only those are read: a
        word with CJK characters in migration 3's index of CJK characters and pairs
        (`mailflow_cjk_grams`: a one- or two-character Chinese word has no trigram), else or if
        that does not narrow it, a word of three or more letters or digits in the trigram indexes
        of the text (`mailflow_text`, `mailflow_ticket_text`). A word no index narrows (a common
        one, or punctuation) is matched page by page through the whole history."""
        base, args = [], []
        if q.status:
            base.append("t.status = %s")
            args.append(q.status)
        if q.created_from:
            base.append("t.created_at >= %s")
            args.append(q.created_from)
        if q.created_to:
            base.append("t.created_at < %s")
            args.append(q.created_to)
        cands: set[str] | None = None
        if q.customer:
            a = q.customer.lower()
            cands = {r[0] for r in self._q(
                "SELECT id FROM ticket_search WHERE mailflow_addrs(doc) @> ARRAY[%s] UNION "
                "SELECT ticket_id FROM messages WHERE mailflow_addrs(doc) @> ARRAY[%s] AND ticket_id IS NOT NULL",
                (a, a))}
        words = q.words
        if cands is None and words:
            out, more, done, last = self._search_pages(q, base, args, None, self.SEARCH_FIRST_PAGES)
            if done:
                return out, more
            for w in words:
                got = self._word_tickets(w)
                if got is not None:
                    cands = got if cands is None else cands & got
            if cands is None:  # no index narrows: on through the history from where the first pages ended
                out, more, _done, _last = self._search_pages(q, base, args, None, None, after=last, out=out)
                return out, more
        out, more, _done, _last = self._search_pages(q, base, args, cands, None)
        return out, more

    def _word_tickets(self, w: str) -> set[str] | None:
        """The tickets whose text (a message's or the ticket's own) may hold the word, from an
        index; None if no index narrows it below SEARCH_PROBE rows of each table."""
        grams = cjk_grams(w)
        if grams:
            got = self._probe("mailflow_cjk_grams(mailflow_ticket_text(doc)) @> %s::text[]",
                              "mailflow_cjk_grams(mailflow_text(doc)) @> %s::text[]", grams)
            if got is not None:
                return got
        if _trigrams(w):
            pat = "%" + w.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            return self._probe("mailflow_ticket_text(doc) LIKE %s", "mailflow_text(doc) LIKE %s", pat)
        return None

    def _probe(self, ticket_cond: str, message_cond: str, arg: Any) -> set[str] | None:
        """Ticket ids of the tickets and messages matching the conditions, if fewer than
        SEARCH_PROBE rows of each (so that none was left out by the LIMIT); else None."""
        n = self.SEARCH_PROBE
        rows = self._q(f"SELECT id FROM ticket_search WHERE {ticket_cond} LIMIT %s", (arg, n))  # migration 5
        if len(rows) >= n:
            return None
        msgs = self._q(f"SELECT ticket_id FROM messages WHERE {message_cond} AND ticket_id IS NOT NULL LIMIT %s",
                       (arg, n))
        if len(msgs) >= n:
            return None
        return {r[0] for r in rows} | {r[0] for r in msgs}

    def _search_pages(self, q: Any, base: list[str], args: list, cands: set[str] | None,
                      max_pages: int | None, *, after: tuple[str, str] | None = None,
                      out: list[dict] | None = None) -> tuple[list[dict], bool, bool, tuple[str, str] | None]:
        """(rows, more, finished, the last ticket read as (created_at, id)): tickets newest first
        (older than `after`, adding to `out`), a page of ids at a time, the words matched in SQL by
        position() (which no index answers, so each page's messages are read through
        messages_ticket), then `_match`. Not finished: max_pages were read before the limit."""
        from mailflow.search import _match, _row

        where = list(base)
        wargs = list(args)
        if after is not None:
            where.append("(t.created_at, t.id) < (%s, %s)")
            wargs.extend(after)
        if cands is not None:
            where.append("t.id = ANY(%s)")
            wargs.append(list(cands))
        # tickets.id is COLLATE "C", messages.ticket_id is not: without the COLLATE the comparison
        # cannot use messages_ticket (a sequential scan of every message per ticket)
        word_sql = "".join(" AND (position(%s in mailflow_ticket_text(t.doc)) > 0 OR EXISTS (SELECT 1 FROM messages m "
                           "WHERE m.ticket_id = t.id COLLATE \"default\" AND position(%s in mailflow_text(m.doc)) > 0))"
                           for _w in q.words)
        word_args = [x for w in q.words for x in (w, w)]
        out = [] if out is None else out
        more = False
        pages = 0
        last = after
        with self.pool.connection() as c, c.transaction(), c.cursor(name="search") as cur:
            cur.itersize = 1000
            cur.execute("SELECT t.id, t.created_at FROM tickets t" + (f" WHERE {' AND '.join(where)}" if where else "")
                        + " ORDER BY t.created_at DESC, t.id DESC", wargs)
            while not more:
                if max_pages is not None and pages >= max_pages:
                    return out, more, False, last
                got = cur.fetchmany(1000 if q.words else 200)
                pages += 1
                if not got:
                    break
                page = [r[0] for r in got]
                last = (got[-1][1], got[-1][0])
                rows = c.execute("SELECT t.doc, t.archived FROM tickets t WHERE t.id = ANY(%s)" + word_sql
                                 + " ORDER BY t.created_at DESC, t.id DESC", [page, *word_args]).fetchall()
                need = [t["id"] for t, archived in rows if q.customer or q.words or archived]
                by_ticket: dict[str, list[dict]] = {tid: [] for tid in need}
                if need:  # one query a page, not one a ticket
                    for tid, m in c.execute("SELECT ticket_id, doc FROM messages WHERE ticket_id = ANY(%s) ORDER BY k",
                                            (need,)):
                        by_ticket[tid].append(m)
                for t, archived in rows:
                    msgs = by_ticket.get(t["id"], [])
                    if not _match(q, t, msgs):
                        continue
                    if len(out) >= q.limit:
                        more = True
                        break
                    out.append(_row(t, archived, len(msgs) if archived else None))
        return out, more, True, last

    def messages_of_any(self, tid: str) -> list[dict]:
        return [r[0] for r in self._q("SELECT doc FROM messages WHERE ticket_id = %s ORDER BY k", (tid,))]

    def counts(self) -> dict[str, int]:
        row = self._q("SELECT (SELECT count(*) FROM tickets WHERE NOT archived), (SELECT count(*) FROM tickets "
                      "WHERE archived), (SELECT count(*) FROM messages WHERE NOT archived), (SELECT count(*) FROM "
                      "outbox), (SELECT count(*) FROM quarantine), (SELECT count(*) FROM messages WHERE archived)")[0]
        return dict(zip(("tickets_hot", "tickets_archived", "messages_hot", "outbox_rows", "quarantine",
                         "message_ids_archived"), row, strict=True))

    _FETCH = {"tickets": "SELECT id, doc, archived FROM tickets ORDER BY archived, created_at, id",
              "messages": "SELECT k, doc FROM messages WHERE NOT archived ORDER BY k",
              "outbox": "SELECT k, doc FROM outbox ORDER BY k",
              "quarantine": "SELECT k, doc FROM quarantine ORDER BY k",
              "seen": "SELECT key, json_build_object('key', key, 'outcome', outcome, 'at', at) FROM seen ORDER BY key",
              "meta": "SELECT key, json_build_object('key', key, 'value', value) FROM meta ORDER BY key"}

    def fetch_all(self, table: str) -> Iterator[tuple[str, dict]]:
        if table not in self._FETCH:
            raise StoreError(f"no table {table}")
        for row in self._q(self._FETCH[table]):
            k, doc = str(row[0]), row[1]
            if table == "tickets" and row[2]:
                doc = {**doc, "_archived_messages": self.messages_of_any(k)}
            yield k, doc

    # ---- privacy (export / erase: mailflow/privacy.py) --------------------------------------------

    _DOCS = {"tickets": ("id", "SELECT id, doc, archived FROM tickets"),
             "messages": ("k", "SELECT k, doc, archived FROM messages"),
             "outbox": ("k", "SELECT k, doc, data IS NOT NULL FROM outbox"),
             "quarantine": ("k", "SELECT k, doc, false FROM quarantine")}

    # where, besides the text indexes, an address may be in a document (migration 3's `mailflow_at_text`;
    # a ticket's are in ticket_search, migration 5)
    _AT = {"tickets": ("mailflow_ticket_text(doc)", "(doc->>'at')"),
           "messages": ("mailflow_text(doc)", "mailflow_at_text(doc - 'subject' - 'text')")}

    def docs_mentioning(self, table: str, needles: list[str], tickets: list[str] = ()) -> list[tuple[str, dict, bool]]:
        """(key, document, flag) of rows whose document holds any needle (case-insensitive:
        `doc::text ILIKE`), or that belong to one of `tickets` (flag: archived; outbox: has its
        mail's bytes). Tickets and messages: a needle with an @ (an address) is looked up in the
        trigram indexes of the text fields and of every other string holding an @ (the only
        places it can be), then checked as before; a needle without one (a name, for erase) can
        be in any field and is matched by reading every row. Outbox and quarantine are small
        tables (pruned after days) and always read whole."""
        _key, sql = self._DOCS[table]

        def pat(n: str) -> str:
            return "%" + n.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"

        def part(n: str) -> str:
            """What the indexes look up of an address: its local part and the @ (a domain such as
            customer.example or qq.com is in most documents, and its trigrams' posting lists are read
            whole: 0.2-0.4 s against 0.04 s on the 1M set); the domain when the local part is short."""
            local, _, domain = n.partition("@")
            return f"{local}@" if len(local) >= 3 or len(domain) < 3 else f"@{domain}"

        pats = [pat(n) for n in needles]
        cond = "doc::text ILIKE ANY(%s)"
        args: list = [pats]
        if table in self._AT and needles and all("@" in n for n in needles):
            text, at = self._AT[table]  # ILIKE is lower(x) LIKE lower(pattern): so are these
            found = " OR ".join(f"{text} LIKE lower(%s) OR {at} LIKE lower(%s)" for _n in needles)
            found_args = [x for n in needles for x in (pat(part(n)), pat(part(n)))]
            if table == "tickets":  # the ids from ticket_search, and `tickets` among them (an OR beside
                # an IN (subquery) is a scan of every ticket: 0.5 s on the 1M set)
                ids = f"SELECT id FROM ticket_search WHERE {found}"
                if tickets:
                    ids += " UNION ALL SELECT unnest(%s::text[])"
                    found_args.append(list(tickets))
                    cond = f"({cond} OR id = ANY(%s))"
                    args.append(list(tickets))
                    tickets = ()
                found = f"id IN ({ids})"
            cond = f"({found}) AND {cond}"  # the indexes narrow, the whole needle decides
            args = found_args + args
        if tickets and table != "quarantine":
            cond = f"({cond}) OR {'id' if table == 'tickets' else 'ticket_id'} = ANY(%s)"
            args.append(list(tickets))
        return [(str(k), d, bool(f)) for k, d, f in self._q(f"{sql} WHERE {cond} ORDER BY 1", args)]

    def put_doc(self, table: str, key: str, doc: dict) -> None:
        """Replace one document whole (privacy erase), with the columns beside it; an archived
        ticket's report summary is made again from the new document."""
        if table == "tickets":
            before = self._x("SELECT created_at FROM tickets WHERE id = %s AND archived", (key,)).fetchone()
            if before is not None:  # the reports' kept parts of both creation days are stale
                self._touch_report_days([before[0], doc.get("created_at")])
            self._x("UPDATE tickets SET status = %s, customer_email = %s, created_at = %s, closed_at = %s, "
                    "wake_at = CASE WHEN archived THEN NULL ELSE %s END, doc = %s, summary = CASE WHEN archived THEN "
                    "summary END WHERE id = %s",
                    (*_ticket_cols(doc), _j(doc), key))
            if self._x("SELECT archived FROM tickets WHERE id = %s", (key,)).fetchone()[0]:
                from mailflow.archive import summary_of

                self._x("UPDATE tickets SET summary = %s WHERE id = %s", (_j(summary_of(doc, self.cfg)), key))
            self._live.pop(key, None)
        elif table == "messages":
            self._x("UPDATE messages SET message_id = %s, hash = %s, mailbox = %s, doc = %s WHERE k = %s",
                    (doc["message_id"], doc.get("hash") or "", doc.get("mailbox"), _j(doc), int(key)))
        elif table == "outbox":
            self._x("UPDATE outbox SET status = %s, next_attempt_at = %s, sent_at = %s, doc = %s WHERE k = %s",
                    (doc.get("status"), doc.get("next_attempt_at"), doc.get("sent_at"), _j(doc), int(key)))
        elif table == "quarantine":
            self._x("UPDATE quarantine SET status = %s, hash = %s, spool = %s, doc = %s WHERE k = %s",
                    (doc.get("status"), doc.get("hash"), doc.get("spool"), _j(doc), int(key)))
        else:
            raise StoreError(f"no table {table}")

    def outbox_mail_items(self) -> Iterator[tuple[str, bytes]]:
        """(row key, bytes) of every outbox row that holds its mail (privacy scans them)."""
        for k, d in self._q("SELECT k, data FROM outbox WHERE data IS NOT NULL ORDER BY k"):
            yield str(k), bytes(d)

    def set_outbox_data(self, k: str, data: bytes | None) -> None:
        self._x("UPDATE outbox SET data = %s WHERE k = %s", (data, int(k)))

    def spool_refs(self) -> list[str]:
        """The spool reference of every incoming message, hot or archived."""
        return [r[0] for r in self._q("SELECT doc->>'spool' FROM messages WHERE direction = 'in' AND "
                                      "doc->>'spool' IS NOT NULL")]

    def drop_seen_mentioning(self, needle: str) -> int:
        return len(self._x("DELETE FROM seen WHERE position(%s in lower(key)) > 0 RETURNING key",
                           (needle.lower(),)).fetchall())

    def meta_items(self) -> list[tuple[str, Any]]:
        return self._q("SELECT key, value FROM meta ORDER BY key")

    def drop_meta(self, key: str) -> None:
        self._x("DELETE FROM meta WHERE key = %s", (key,))

    # ---- daemons (`mailflow status`) ------------------------------------------------------------

    def write_daemon_status(self, doc: dict) -> None:
        with self.pool.connection() as c:
            c.execute("INSERT INTO daemons (id, host, pid, started_at, seen_at, doc) VALUES (%s, %s, %s, now(), "
                      "now(), %s) ON CONFLICT (id) DO UPDATE SET seen_at = now(), doc = excluded.doc",
                      (self.daemon, socket.gethostname(), os.getpid(), _j(doc)))

    def daemons(self) -> dict | None:
        """The most recently seen daemon's report (as `daemon-status.json`), `running` if it wrote
        within two minutes, and `all`: every daemon's id, host, pid, last seen, running."""
        rows = self._q("SELECT id, host, pid, seen_at, doc, seen_at > now() - interval '2 minutes' FROM daemons "
                       "ORDER BY seen_at DESC LIMIT 50")
        if not rows:
            return None
        first = rows[0]
        return {**first[4], "running": first[5], "id": first[0],
                "all": [{"id": r[0], "host": r[1], "pid": r[2], "seen_at": r[3].isoformat(timespec="seconds"),
                         "running": r[5]} for r in rows]}

    # ---- cluster: leases and outbox claims (mailflow/cluster.py) ---------------------------------
    # Lease expiry is the database server's clock (now()), so daemons on hosts whose clocks differ
    # agree on it. A lease row is never deleted: its token only grows, so a batch fenced with an
    # old token can never commit after the lease moved on.

    def _auto(self, sql: str, args: Any = None) -> list[tuple]:
        """One statement in its own (autocommit) transaction, never in the caller's batch."""
        try:
            with self.pool.connection() as c, c.cursor() as cur:
                cur.execute(sql, args)
                return cur.fetchall() if cur.description else []
        except psycopg.Error as e:
            raise StoreError(f"database: {_why(e)}") from e

    def lease_acquire(self, name: str, holder: str, seconds: float, info: dict | None = None) -> int | None:
        """Take `name` if nobody holds it (or its holder let it expire): its new fencing token, else
        None. A lease row that a batch has fenced (share-locked) is skipped, never waited for."""
        rows = self._auto("INSERT INTO leases (name, holder, token, acquired_at, expires_at, info) VALUES "
                          "(%s, %s, 1, now(), now() + make_interval(secs => %s), %s) ON CONFLICT (name) DO NOTHING "
                          "RETURNING token", (name, holder, float(seconds), _j(info or {})))
        if not rows:
            rows = self._auto(
                "UPDATE leases SET holder = %s, token = token + 1, acquired_at = now(), expires_at = now() + "
                "make_interval(secs => %s), info = %s WHERE name IN (SELECT name FROM leases WHERE name = %s AND "
                "expires_at <= now() FOR UPDATE SKIP LOCKED) RETURNING token",
                (holder, float(seconds), _j(info or {}), name))
        return int(rows[0][0]) if rows else None

    def lease_renew(self, held: Mapping[str, int], holder: str, seconds: float,
                    daemon_less: float = 0.0) -> tuple[set[str], set[str]]:
        """Extend every lease in `held` (name -> token) that is still ours by `seconds` (a `daemon:`
        lease by `daemon_less` less): (renewed, still ours but not renewed this time because a batch
        of ours has it fenced). A name in neither is lost."""
        if not held:
            return set(), set()
        names = list(held)
        tokens = [int(held[n]) for n in names]
        renewed = {r[0] for r in self._auto(
            "UPDATE leases l SET expires_at = now() + make_interval(secs => %s - CASE WHEN l.name LIKE "
            "'daemon:%%' THEN %s ELSE 0 END) FROM unnest(%s::text[], %s::bigint[]) AS h(name, token) WHERE "
            "l.name = h.name AND l.token = h.token AND l.holder = %s AND l.expires_at > now() AND l.name IN "
            "(SELECT name FROM leases WHERE name = ANY(%s) FOR NO KEY UPDATE SKIP LOCKED) RETURNING l.name",
            (float(seconds), float(daemon_less), names, tokens, holder, names))}
        rest = [n for n in names if n not in renewed]
        kept = {r[0] for r in self._q(
            "SELECT l.name FROM leases l JOIN unnest(%s::text[], %s::bigint[]) AS h(name, token) ON "
            "l.name = h.name AND l.token = h.token WHERE l.holder = %s AND l.expires_at > now()",
            (rest, [int(held[n]) for n in rest], holder))} if rest else set()
        return renewed, kept

    def lease_release(self, name: str, holder: str, token: int) -> None:
        """Let `name` go now (another daemon may take it at once)."""
        self._auto("UPDATE leases SET expires_at = now() WHERE name = %s AND holder = %s AND token = %s "
                   "AND expires_at > now()", (name, holder, int(token)))

    def lease_reap(self, holder: str) -> int:
        """Let every lease of `holder` run out now (a daemon known to be dead); how many were live."""
        return len(self._auto("UPDATE leases SET expires_at = now() WHERE holder = %s AND expires_at > now() "
                              "RETURNING name", (holder,)))

    def leases(self) -> list[dict]:
        """Every lease: who holds it (or held it last), its token and whether it is still live."""
        return [{"name": r[0], "holder": r[1], "token": r[2], "acquired_at": r[3].isoformat(timespec="seconds"),
                 "expires_at": r[4].isoformat(timespec="seconds"), "live": r[5], "info": r[6] or {}}
                for r in self._q("SELECT name, holder, token, acquired_at, expires_at, expires_at > now(), info "
                                 "FROM leases ORDER BY name")]

    def live_daemons(self) -> list[str]:
        """The daemons whose own lease (`daemon:ID`) is live, oldest first."""
        return [r[0] for r in self._q("SELECT holder FROM leases WHERE name LIKE 'daemon:%%' AND "
                                      "expires_at > now() ORDER BY acquired_at, holder")]

    def claim_outbox(self, now_iso: str, holder: str, limit: int, seconds: float) -> list[tuple[str, dict]]:
        """Claim up to `limit` due rows for `holder` (`FOR UPDATE SKIP LOCKED`: two senders never
        claim the same row). A row is free when unclaimed, claimed by `holder` itself, its claim ran
        out, or its claimer's daemon lease is gone (it died: its rows are sent by whoever is left);
        a row with a sender's result not yet folded is never claimed again."""
        rows = self._auto(
            "UPDATE outbox o SET claimed_by = %(me)s, claim_until = now() + make_interval(secs => %(secs)s) "
            "WHERE o.k IN (SELECT q.k FROM outbox q WHERE q.status = 'queued' AND "
            "coalesce(q.next_attempt_at, '') <= %(now)s AND (q.claimed_by IS NULL OR q.claimed_by = %(me)s "
            "OR q.claim_until < now() OR NOT EXISTS (SELECT 1 FROM leases l WHERE l.name = 'daemon:' || "
            "q.claimed_by AND l.expires_at > now())) AND NOT EXISTS (SELECT 1 FROM outbox_results r "
            "WHERE r.row_k = q.k) ORDER BY q.k LIMIT %(n)s FOR UPDATE OF q SKIP LOCKED) RETURNING o.k, o.doc",
            {"me": holder, "secs": float(seconds), "now": now_iso, "n": int(limit)})
        return sorted(((str(k), d) for k, d in rows), key=lambda kd: int(kd[0]))

    def release_claims(self, holder: str) -> int:
        """Give back the rows `holder` claimed but did not send (a stopping daemon)."""
        return len(self._auto("UPDATE outbox SET claimed_by = NULL, claim_until = NULL WHERE claimed_by = %s "
                              "AND status = 'queued' RETURNING k", (holder,)))

    # ---- `mailflow check` -------------------------------------------------------------------------

    def server_info(self) -> dict:
        """Server version, schema version and state (None: usable), for `mailflow check`."""
        with self.pool.connection() as c:
            v, why = pg_schema.state(c)
            return {"server": c.execute("SHOW server_version").fetchone()[0], "schema": v,
                    "known": pg_schema.VERSION, "problem": why}


# the characters migration 3's `mailflow_cjk_grams` indexes (its regular expression: the same ranges)
_CJK = ((0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xAC00, 0xD7AF), (0xF900, 0xFAFF),
        (0x20000, 0x2FA1F))


def _is_cjk(ch: str) -> bool:
    o = ord(ch)
    return any(a <= o <= b for a, b in _CJK)


def cjk_grams(word: str) -> list[str]:
    """What a document holding `word` (lower case) must have in `mailflow_cjk_grams`: each pair of
    adjacent CJK characters of the word, and each CJK character that has no CJK neighbour (a
    pair implies its characters). Empty: no CJK character, nothing to look up. Sorted, distinct."""
    out: set[str] = set()
    for i, ch in enumerate(word):
        if not _is_cjk(ch):
            continue
        nxt = i + 1 < len(word) and _is_cjk(word[i + 1])
        if nxt:
            out.add(word[i:i + 2])
        elif not (i and _is_cjk(word[i - 1])):
            out.add(ch)
    return sorted(out)


def _trigrams(word: str) -> bool:
    """Whether pg_trgm can narrow a LIKE on `word`: three letters or digits in a row."""
    run = 0
    for ch in word:
        run = run + 1 if ch.isalnum() else 0
        if run >= 3:
            return True
    return False


def _where(dsn: str) -> str:
    """The dsn without any password, for messages."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        d = conninfo_to_dict(dsn)
    except Exception:  # noqa: BLE001
        return "the configured dsn"
    return f"{d.get('host') or 'localhost'}:{d.get('port') or 5432}/{d.get('dbname') or ''}"


def _why(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


def connect_check(cfg: Any) -> dict:
    """Connect once (no pool, no schema check) and report server and schema state: `check --connect`."""
    try:
        with psycopg.connect(cfg.pg.conninfo(), autocommit=True,
                             connect_timeout=int(cfg.pg.options.get("connect_timeout") or 10)) as c:
            v, why = pg_schema.state(c)
            return {"ok": True, "server": c.execute("SHOW server_version").fetchone()[0], "schema": v,
                    "known": pg_schema.VERSION, "problem": why, "where": _where(cfg.pg.dsn)}
    except psycopg.Error as e:
        return {"ok": False, "problem": _why(e), "where": _where(cfg.pg.dsn)}


__all__ = ["PgStore", "SchemaError", "connect_check", "daemon_id"]
