"""`mailflow db migrate --from tinydb --to postgresql`: copy a TinyDB data directory's store into
the configured database.

The TinyDB store is opened read-only (`create=False`; nothing is ever written to its files). Rows
go in in transactions of `batch_size` tickets. Idempotent: tickets are keyed by id, outbox rows
and quarantine items keep their TinyDB keys, seen keys, meta keys and checkpoints are keys too; a
ticket's messages are copied in the transaction that copies the ticket, and only then, so a re-run
adds nothing twice. Outgoing mail's bytes are read from outbox/ segments into `outbox.data`; raw
mail, attachments and quarantine bytes stay in data_dir and are used in place. Serial counters
(`serial:<prefix>:<day>` meta) become `serials` rows, mailbox checkpoints (`mailbox:<name>` meta)
`checkpoints` rows; every other meta key (flood cap records, round-robin state, report and
retention ledgers) is copied as it is. The HMAC key and other files stay in data_dir.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from mailflow.store_pg import _j


@dataclass
class Result:
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (TinyDB, PostgreSQL)
    problems: list[str] = field(default_factory=list)
    added: dict[str, int] = field(default_factory=dict)


def _tcols(t: dict) -> tuple:
    return (t.get("status") or "", t.get("customer_email") or "", t.get("created_at") or "", t.get("closed_at"),
            t.get("wake_at") or None, "wake_at" in t or t.get("status") == "closed")


def migrate(cfg: Any, batch_size: int = 500, echo=lambda s: None) -> Result:
    from mailflow import pg_schema
    from mailflow.archive import summary_of
    from mailflow.spool import Segments
    from mailflow.store import Store

    src = Store(cfg.data_dir, create=False)
    res = Result()
    added = {"tickets": 0, "messages": 0, "outbox": 0, "quarantine": 0, "seen": 0, "meta": 0}
    segs = Segments.__new__(Segments)  # a reader only: no directory is made
    segs.root, segs.suffix = cfg.data_dir / "outbox", ".out"
    with psycopg.connect(cfg.pg.conninfo(), autocommit=True) as c:
        pg_schema.check(c)

        # tickets (hot, then archived with their messages), a transaction per batch_size tickets
        todo = list(src.fetch_all("tickets"))
        n_archived = sum(1 for _k, t in todo if "_archived_messages" in t)  # a ticket hot and archived: hot
        hot_msgs: dict[str, list[dict]] = {}
        for _k, m in src.fetch_all("messages"):
            hot_msgs.setdefault(m.get("ticket_id") or "", []).append(m)
        for i in range(0, len(todo), batch_size):
            with c.transaction():
                for _k, t in todo[i:i + batch_size]:
                    archived = "_archived_messages" in t
                    msgs = t.pop("_archived_messages", None) if archived else hot_msgs.get(t["id"], [])
                    row = c.execute(
                        "INSERT INTO tickets (id, status, customer_email, created_at, closed_at, wake_at, scheduled, "
                        "archived, doc, summary) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                        "ON CONFLICT (id) DO NOTHING RETURNING id",
                        (t["id"], *_tcols(t), archived, _j(t), _j(summary_of(t, cfg)) if archived else None)).fetchone()
                    if row is None:
                        continue
                    added["tickets"] += 1
                    for m in msgs or []:
                        _message(c, m, archived)
                        added["messages"] += 1
            echo(f"tickets: {min(i + batch_size, len(todo))} of {len(todo)}")
        with c.transaction():  # hot messages of no ticket (none normally): by Message-ID and hash
            for m in hot_msgs.get("", []):
                if c.execute("SELECT 1 FROM messages WHERE message_id = %s AND hash = %s AND ticket_id IS NULL",
                             (m["message_id"], m.get("hash") or "")).fetchone() is None:
                    _message(c, m, False)
                    added["messages"] += 1

        with c.transaction():
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
                got = c.execute(
                    "INSERT INTO outbox (k, status, ticket_id, next_attempt_at, sent_at, created_at, doc, data) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (k) DO NOTHING RETURNING k",
                    (int(k), r.get("status") or "queued", r.get("ticket_id"), r.get("next_attempt_at"),
                     r.get("sent_at"), r.get("created_at"), _j(doc), data)).fetchone()
                added["outbox"] += got is not None
            c.execute("SELECT setval(pg_get_serial_sequence('outbox', 'k'), greatest((SELECT max(k) FROM outbox), 1))")
            for k, q in src.fetch_all("quarantine"):
                got = c.execute("INSERT INTO quarantine (k, status, hash, spool, doc) VALUES (%s, %s, %s, %s, %s) "
                                "ON CONFLICT (k) DO NOTHING RETURNING k",
                                (int(k), q.get("status"), q.get("hash"), q.get("spool"), _j(q))).fetchone()
                added["quarantine"] += got is not None
            c.execute("SELECT setval(pg_get_serial_sequence('quarantine', 'k'), "
                      "greatest((SELECT max(k) FROM quarantine), 1))")
            for _k, s in src.fetch_all("seen"):
                got = c.execute("INSERT INTO seen (key, outcome, at) VALUES (%s, %s, %s) ON CONFLICT (key) DO NOTHING "
                                "RETURNING key", (s["key"], s.get("outcome"), s.get("at") or "")).fetchone()
                added["seen"] += got is not None
            for _k, m in src.fetch_all("meta"):
                key, value = m["key"], m.get("value")
                if key.startswith("serial:"):
                    _s, prefix, day = key.split(":", 2)
                    c.execute("INSERT INTO serials (prefix, day, n) VALUES (%s, %s, %s) ON CONFLICT (prefix, day) "
                              "DO UPDATE SET n = greatest(serials.n, excluded.n)", (prefix, day, int(value or 0)))
                elif key.startswith("mailbox:"):
                    c.execute("INSERT INTO checkpoints (mailbox, doc) VALUES (%s, %s) ON CONFLICT (mailbox) DO NOTHING",
                              (key[len("mailbox:"):], _j(value or {})))
                else:
                    got = c.execute("INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING "
                                    "RETURNING key", (key, _j(value))).fetchone()
                    added["meta"] += got is not None

        # verify: every TinyDB row has its PostgreSQL row
        have = src.counts()
        n_seen = sum(1 for _ in src.fetch_all("seen"))
        got = dict(zip(("tickets_hot", "tickets_archived", "messages_hot", "outbox_rows", "quarantine", "seen"),
                       c.execute("SELECT (SELECT count(*) FROM tickets WHERE NOT archived), (SELECT count(*) FROM "
                                 "tickets WHERE archived), (SELECT count(*) FROM messages WHERE NOT archived), "
                                 "(SELECT count(*) FROM outbox), (SELECT count(*) FROM quarantine), "
                                 "(SELECT count(*) FROM seen)").fetchone(), strict=True))
        have = {"tickets_hot": len(todo) - n_archived, "tickets_archived": n_archived,
                **{k: have[k] for k in ("messages_hot", "outbox_rows", "quarantine")}, "seen": n_seen}
    src.close()
    for k, n in have.items():
        res.counts[k] = (n, got[k])
        if got[k] < n:
            res.problems.append(f"{k}: {n} in TinyDB but only {got[k]} in PostgreSQL")
    res.added = added
    return res


def _message(c: psycopg.Connection, m: dict, archived: bool) -> None:
    c.execute("INSERT INTO messages (ticket_id, message_id, hash, direction, mailbox, archived, doc) "
              "VALUES (%s, %s, %s, %s, %s, %s, %s)",
              (m.get("ticket_id"), m["message_id"], m.get("hash") or "", m.get("direction") or "in",
               m.get("mailbox"), archived, _j(m)))
