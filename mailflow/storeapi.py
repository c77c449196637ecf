"""The one store interface: what the pipeline, the scheduler, the outbox, reports and the CLI need.

Two implementations: `mailflow.store.Store` (TinyDB: a JSON snapshot plus a commit log, the
embedded default) and `mailflow.store_pg.PgStore` (PostgreSQL, several daemons may share it).
`open_store(cfg)` is the only place that picks one; nothing outside the two stores reaches into
their internals. The TinyDB behaviour is the spec; each contract is stated on its method.

Backend-specific calls, made only after checking `store.backend` (they have no TinyDB meaning):
the cluster calls of mailflow/cluster.py (`lease_acquire()` / `lease_renew()` / `lease_release()` /
`leases()` / `live_daemons()`, `claim_outbox()` / `release_claims()`, the journal's `take()`), `write_daemon_status()` /
`daemons()` (what `status` shows; TinyDB writes `daemon-status.json`), `forget_archived()`
(retention), `docs_mentioning()` / `put_doc()` / `outbox_mail_items()` / `set_outbox_data()` /
`spool_refs()` / `drop_seen_mentioning()` / `meta_items()` / `drop_meta()` (privacy erase and
export), `messages_of_any()`; TinyDB's `archive_index`, `lock`, `storage` stay TinyDB-only (backup,
verify, privacy and retention use them on that branch only).

Documents are plain dicts (TinyDB's documents): a ticket has an `id`, a message a `message_id`,
`ticket_id` and `direction`, an outbox row a `status` (queued | sent | failed | erased). Times are
ISO 8601 UTC strings (`clock.iso`), compared as strings.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from mailflow.config import Config


class StoreError(Exception):
    """Damaged or unreachable storage, a wrong schema: one line for the admin."""


class BatchAborted(StoreError):
    """The whole batch must be retried: a deadlock or serialization failure, a lost connection, a
    lost lease. Never caught per message (that would quarantine good mail): it leaves the batch
    with nothing committed, and the caller's normal retry path (the mailbox loop's reconnect and
    backoff, the scheduler's next pass, the sender's next flush) runs it again."""


class SchemaError(StoreError):
    """The database schema is older or newer than this mailflow knows (`mailflow db upgrade`)."""


@runtime_checkable
class StoreAPI(Protocol):
    """Every method a caller may use. Changes only inside `with store.batch():`."""

    backend: str  # "tinydb" | "postgresql"
    # most mails one batch should hold (None: as many as pay off); every mail is a savepoint
    max_batch: int | None
    dir: Path  # the data directory: spool, attachments, quarantine bytes, the HMAC key
    mutex: threading.RLock  # serialises this process's threads (mailbox loops, scheduler, sender)

    # ---- transactions ------------------------------------------------------------------------
    def batch(self) -> contextlib.AbstractContextManager[StoreAPI]:
        """One atomic commit: tickets, messages, outbox rows, meta and the checkpoint together, or
        nothing (an exception inside drops every change). A nested batch joins the outer one."""

    def savepoint(self) -> contextlib.AbstractContextManager[None]:
        """Inside a batch: an exception undoes only what happened inside (one message's changes);
        BatchAborted passes through and dooms the whole batch."""

    def refresh(self) -> None:
        """See what other processes committed (TinyDB: reload if the files changed; PG: nothing)."""

    def fence(self, name: str, holder: str | None = None, token: int | None = None) -> None:
        """Inside a batch: raise BatchAborted unless `holder` still holds lease `name` with
        `token` (mailflow/cluster.py's leases; TinyDB's data-directory lock is its fence: no-op)."""

    def change_stamp(self) -> Any:
        """Something that changes whenever a commit happened (for cached counts); None: unknown."""

    # ---- meta and serials ---------------------------------------------------------------------
    def get_meta(self, key: str, default: Any = None) -> Any: ...
    def set_meta(self, key: str, value: Any) -> None: ...
    def peek_ticket_id(self, prefix: str, day: str) -> tuple[str, str, int]:
        """(ticket id, serial meta key, serial) of the next `<prefix><YYYYMMDD><serial>`: 4 digits,
        widening past 9999, never reused, unique across daemons (PG: allocated in the batch)."""

    def next_ticket_id(self, prefix: str, day: str) -> str: ...

    # ---- tickets ------------------------------------------------------------------------------
    def ticket(self, tid: str) -> dict | None:
        """The hot ticket (None if absent or archived). Inside a batch it is the live document
        (PG: locked FOR UPDATE until the commit); change it only through update_ticket."""

    def all_tickets(self) -> list[dict]: ...
    def hot_clock_records(self, at_iso: str) -> list[dict]:
        """Each hot ticket not closed by `at_iso` (open, or closed after it; closing stops every
        SLA clock), cut to what `slaclock.record_holds` reads: id, status, updated_at, sla and
        `events` holding only the last event (a store may return whole documents). What
        `tickets list --overdue` reads instead of every document with its history."""
    def tickets_by_id(self, ids: list[str]) -> list[dict]:
        """The hot tickets of `ids` that exist, in no particular order."""
    def hot_ticket_ids(self) -> list[str]: ...
    def newest_hot_tickets(self, n: int | None) -> tuple[int, list[dict]]:
        """How many tickets are hot, and the last `n` by id (all for None, none for 0), oldest
        first, reading only those (a list of the newest few)."""
    def add_ticket(self, t: dict) -> None: ...
    def update_ticket(self, tid: str, fields: dict) -> None:
        """Merge `fields` into the ticket (top-level keys); `wake_at` also moves the wake index."""

    def add_event(self, tid: str, kind: str, detail: str = "", at: datetime | None = None,
                  actor: str = "system") -> None: ...
    def append_events(self, tid: str, events: list[dict]) -> None: ...
    def customer_stats(self, email: str, now: datetime) -> dict[str, int]:
        """open_tickets, complaints_30d, spam_count of one customer address (hot tickets)."""

    def open_counts(self) -> dict[str, int]:
        """Open hot tickets per assignee."""

    def ticket_counts(self) -> dict[str, int]:
        """Hot tickets per status."""

    # ---- the scheduler's wake index -------------------------------------------------------------
    def next_wake(self) -> str | None:
        """The earliest wake-up (ISO) of any hot ticket, "0000" when some ticket was never looked
        at, None when nothing is scheduled."""

    def due_tickets(self, now: datetime, limit: int | None = None) -> list[str]: ...

    # ---- messages -----------------------------------------------------------------------------
    def add_message(self, m: dict) -> None: ...
    def messages_of(self, tid: str) -> list[dict]:
        """A hot ticket's messages in the order they were added."""

    def message_count(self, tid: str) -> int: ...
    def message_counts(self, tids: list[str]) -> dict[str, int]:
        """message_count of each of `tids`, at once (a listing's column)."""
    def messages_of_mailbox(self, mailbox: str) -> list[dict]: ...
    def ticket_of_message_id(self, message_id: str) -> str | None:
        """The ticket (hot, else archived) a Message-ID belongs to."""

    def is_own_message_id(self, message_id: str) -> bool: ...

    # ---- idempotency --------------------------------------------------------------------------
    def already_seen(self, message_id: str, content_hash: str) -> bool: ...
    def mark_seen(self, message_id: str, content_hash: str, outcome: str, now: datetime | None = None) -> None: ...

    # ---- mailbox checkpoints --------------------------------------------------------------------
    def checkpoint(self, mailbox: str) -> dict: ...
    def set_checkpoint(self, mailbox: str, **fields: Any) -> None:
        """Merge fields into the checkpoint, in the batch (committed with its tickets)."""

    # ---- outbox -------------------------------------------------------------------------------
    mail_in_db: bool  # outgoing mail bytes live in the store (PG) rather than in outbox/ segments

    def add_outbox(self, row: dict, data: bytes | None = None) -> str:
        """Queue a row (and, with mail_in_db, its bytes); returns its key, also set as row["row"]."""

    def outbox_rows(self) -> Mapping[str, dict]:
        """Every row by key (a full read: prefer the queries below)."""

    def outbox_row(self, k: str) -> dict | None: ...
    def outbox_due(self, now_iso: str) -> list[tuple[str, dict]]:
        """Queued rows whose next attempt has come, oldest key first."""

    def outbox_counts(self) -> dict[str, int]:
        """Rows per status."""

    def outbox_last_error(self) -> str | None: ...
    def outbox_data(self, k: str) -> bytes | None:
        """The mail's bytes when mail_in_db, else None (read the row's `file` from the segments)."""

    def outbox_files(self) -> set[str]:
        """The segment files rows still refer to."""

    def update_outbox(self, k: str, fields: dict) -> None: ...
    def remove_outbox(self, keys: list[str]) -> None: ...
    def outbox_journal(self) -> Any:
        """Where the sender records each result before the fold (`append`, `read`, `clear`)."""

    # ---- quarantine ---------------------------------------------------------------------------
    def add_quarantine(self, q: dict) -> str: ...
    def quarantined(self) -> list[dict]:
        """Every item with its `qid`."""

    def quarantine_item(self, qid: str) -> dict | None: ...
    def quarantine_twin(self, spool: str | None, content_hash: str) -> dict | None:
        """A held or spam item of the same spool reference or content (a replay adds no twin)."""

    def update_quarantine(self, qid: str, fields: dict) -> None: ...

    # ---- housekeeping and the archive -----------------------------------------------------------
    def prune(self, now: datetime | None = None, seen_days: int = 30, sent_days: int = 7) -> list[str]:
        """Drop old idempotency keys, flood-cap records and sent rows; the segment refs of the
        dropped rows (deleted by the caller after the commit)."""

    def archive(self, older_than_days: float = 3.0, now: datetime | None = None, cfg: Any = None) -> int:
        """Tickets closed longer ago leave the hot set (with a summary for reports); how many."""

    def unarchive(self, tid: str) -> dict | None: ...
    def archived_ticket(self, tid: str) -> dict | None:
        """`{"ticket": ..., "messages": [...]}` of an archived ticket, or None."""

    def archived_ticket_of(self, message_id: str) -> str | None: ...
    def is_archived(self, tid: str) -> bool: ...
    def archived_count(self) -> int: ...
    def iter_archived_summaries(self, created_from: str | None = None,
                                created_to: str | None = None) -> Iterator[dict]:
        """summary.summarize of every archived ticket created in [from, to), in creation order."""

    def search(self, q: Any) -> tuple[list[dict], bool]:
        """`tickets search`: (rows newest first, more?) over hot and archived tickets."""

    def counts(self) -> dict[str, int]:
        """tickets_hot, tickets_archived, messages_hot, outbox_rows, quarantine (backup, verify)."""

    def fetch_all(self, table: str) -> Iterator[tuple[str, dict]]:
        """(key, document) of every row of a table (tickets also archived ones): export, migrate."""

    def close(self) -> None: ...


def unclosed_by(t: dict, at_iso: str) -> bool:
    """Whether ticket `t` was not yet closed at `at_iso` (UTC ISO): what `hot_clock_records` keeps."""
    return t.get("status") != "closed" or not t.get("closed_at") or t["closed_at"] > at_iso


def open_store(cfg: Config, create: bool = True, check_schema: bool = True) -> StoreAPI:
    """The store `[storage] backend` names. `create=False` is for readers (`status`, reports): it
    leaves no directory behind. PG: refuses (SchemaError) a schema this mailflow does not know."""
    if cfg.backend == "postgresql":
        from mailflow.store_pg import PgStore

        return PgStore(cfg, create=create, check_schema=check_schema)
    from mailflow.store import Store

    return Store(cfg.data_dir, create=create)


def has_data(cfg: Config) -> bool:
    """Is there anything to read yet (a TinyDB data directory; PG: always, the database is it)?"""
    return cfg.backend == "postgresql" or cfg.data_dir.is_dir()


class FileJournal:
    """The sender's result journal as a file (TinyDB: `outbox/journal.log`): one fsynced JSON line
    per result; a torn last line (a crash) is ignored and that mail is simply resent."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, entries: list[dict]) -> None:
        import json
        import os

        with open(self.path, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> dict[str, dict]:
        """The last result per row key."""
        import json

        out: dict[str, dict] = {}
        if self.path.exists():
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        e = json.loads(line)
                    except ValueError:
                        continue
                    out[e["row"]] = e
        return out

    def clear(self, rows: Any = None) -> None:
        """After the fold committed (a crash before this refolds harmlessly)."""
        self.path.unlink(missing_ok=True)

    def stamp(self) -> Any:
        try:
            return self.path.stat().st_mtime_ns
        except OSError:
            return None
