"""What the CLI and the daemon both do, written once: one pass (`run --once`), replaying quarantined
mail, ingesting files, housekeeping, and the status summary.

Each takes a `Runtime` (or just the config, for status) and returns plain data; printing is the
caller's business (`echo` callbacks), so the daemon logs what the CLI prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mailflow.clock import iso
from mailflow.store import OPEN_STATUSES, Store, lock_process

if TYPE_CHECKING:  # the pipeline (rules, templates) costs 0.2 s to import; `tickets show` needs none of it
    from mailflow.runtime import Runtime

# `run --once` exit codes (documented in the README)
EXIT_OK = 0
EXIT_BUSY = 1  # a daemon already runs on this data directory
EXIT_CONFIG = 2  # config, rules or templates are broken
EXIT_UNREACHABLE = 3  # a mailbox or the SMTP server could not be reached (everything else was done)

Echo = Callable[[str], None]


@dataclass
class PassReport:
    exit: int = EXIT_OK
    mailboxes: list[dict] = field(default_factory=list)
    sent: int = 0
    temp: int = 0
    perm: int = 0
    queued: int = 0
    no_smtp: int = 0
    archived: int = 0
    pruned: int = 0


def run_once(rt: Runtime, echo: Echo, err: Echo) -> PassReport:
    """One pass: every mailbox's pending mail, the outbox sent alongside by the daemon's own sender
    thread (rows become visible to it only once their batch is committed), then a last flush of
    everything still due, then housekeeping."""
    from mailflow.daemon import Sender
    from mailflow.fetch import FetchError
    from mailflow.mailboxes import MailboxWorker

    rep = PassReport()
    p = rt.pipeline
    lock = lock_process(p.store.dir)
    if lock is None:
        err(f"a mailflow daemon is running on {p.store.dir}; it already does what --once would")
        rep.exit = EXIT_BUSY
        return rep
    try:
        smtp_timeout = max([s.timeout for s in [rt.cfg.smtp, *(m.smtp for m in rt.cfg.mailboxes)] if s] or [30.0])
        with p.store.mutex:
            p.outbox.fold_journal()  # results of a flush that a crash cut short
        sender = Sender(p.outbox, p.store.mutex, lambda: smtp_timeout, interval=0.5)
        sender.next_housekeeping = float("inf")  # once, below, after the last flush
        sender.start()
        try:
            for mb in rt.cfg.mailboxes:
                w = MailboxWorker(mb, p)
                try:
                    s = w.poll()
                    sender.wake()
                    rep.mailboxes.append({"name": mb.name, "fetched": s.fetched, "new": s.new,
                                          "quarantined": s.quarantined, "error": None})
                    echo(f"{mb.name}: {s.fetched} fetched, {s.new} new tickets, {s.quarantined} quarantined")
                except FetchError as e:
                    w.record_error(e)
                    rep.mailboxes.append({"name": mb.name, "error": e.reason})
                    err(f"{mb.name}: {e}")
                    rep.exit = EXIT_UNREACHABLE
                finally:
                    w.close()
        finally:
            sender.finish()
            sender.thread.join()
        st = sender.totals
        rep.sent, rep.temp, rep.perm, rep.queued, rep.no_smtp = st.sent, st.temp, st.perm, st.queued, st.no_smtp
        if sender.smtp_state == "retrying":
            err(f"smtp: not reachable, {st.queued} mail(s) stay queued (`mailflow outbox list` shows why)")
            rep.exit = EXIT_UNREACHABLE
        rep.archived, rep.pruned = housekeeping(rt)
        if rep.archived or rep.pruned:
            echo(f"housekeeping: {rep.archived} closed tickets archived, {rep.pruned} sent rows pruned")
        line = f"outbox: {st.sent} sent, {st.temp} temporary failures, {st.perm} failed, {st.queued} queued"
        if st.no_smtp:
            line += f" ({st.no_smtp} waiting: no [smtp] configured)"
        echo(line)
        return rep
    finally:
        lock.close()


def housekeeping(rt: Runtime) -> tuple[int, int]:
    """Archive long-closed tickets and drop week-old sent rows, as of the runtime's clock."""
    return rt.pipeline.outbox.housekeeping(now=rt.clock.now())


def replay(rt: Runtime, qid: str):
    """Process a quarantined message again (after fixing rules, templates or the code)."""
    from mailflow.pipeline import Incoming

    p = rt.pipeline
    q = p.store.quarantine_item(qid)
    if q is None:
        return None
    raw = p.spool.read(q["spool"])
    with p.store.batch():  # still failing: the entry it came from absorbs it (same spool reference)
        [r] = p.process([Incoming(raw, q.get("mailbox"), q.get("uid"), q["spool"])])
        if r.kind not in ("quarantined", "spam"):
            p.store.update_quarantine(qid, {"status": "replayed", "replayed_at": iso(rt.clock.now()),
                                            "result": f"{r.kind} {r.ticket_id or ''}".strip()})
    return r


def ingest(rt: Runtime, paths: list[Path], on_result: Callable | None = None, batch: int = 100) -> list:
    from mailflow.pipeline import Incoming, read_paths

    p = rt.pipeline
    labelled = read_paths(paths)
    results = []
    for i in range(0, len(labelled), batch):
        part = labelled[i:i + batch]
        got = p.process([Incoming(raw) for _label, raw in part])
        for (label, _raw), r in zip(part, got, strict=True):
            results.append((label, r))
            if on_result is not None:
                on_result(label, r)
    return results


def counts(store: Store, outbox=None) -> tuple[int, int, int]:
    """(open tickets, queued outbox rows, quarantine held): the daemon's status line and `status`."""
    open_n = sum(1 for t in store.all_tickets() if t.get("status") in OPEN_STATUSES)
    if outbox is not None:
        queued = outbox.pending_count()
    else:
        queued = sum(1 for r in store.outbox_rows().values() if r["status"] == "queued")
    held = sum(1 for q in store.quarantined() if q.get("status") == "held")
    return open_n, queued, held


def status(cfg, store: Store) -> dict:
    """Mailboxes and their last poll, tickets by status, outbox depth, quarantine size, last error."""
    by_status: dict[str, int] = {}
    for t in store.all_tickets():
        by_status[t.get("status", "?")] = by_status.get(t.get("status", "?"), 0) + 1
    rows = store.outbox_rows().values()
    return {
        "data_dir": str(cfg.data_dir),
        "mailboxes": [{"name": mb.name, **{k: store.checkpoint(mb.name).get(k) for k in
                                           ("last_poll", "last_uid", "uidvalidity", "last_error")}}
                      for mb in cfg.mailboxes],
        "tickets": by_status,
        "open_tickets": sum(v for k, v in by_status.items() if k in OPEN_STATUSES),
        "outbox": {"queued": sum(r["status"] == "queued" for r in rows),
                   "failed": sum(r["status"] == "failed" for r in rows),
                   "sent": sum(r["status"] == "sent" for r in rows)},
        "quarantine": sum(q.get("status") == "held" for q in store.quarantined()),
        "outbox_last_error": next((r["last_error"] for r in sorted(rows, key=lambda r: r.get("created_at") or "",
                                                                   reverse=True) if r.get("last_error")), None),
    }


def find_ticket(store: Store, tid: str) -> tuple[dict | None, list[dict], bool]:
    """(ticket, its messages, archived?) from the hot store or the archive."""
    tid = tid.strip().upper()
    t = store.ticket(tid)
    if t is not None:
        return t, store.messages_of(tid), False
    entry = store.archived_ticket(tid)
    if entry is None:
        return None, [], False
    return entry["ticket"], entry.get("messages", []), True


def timeline(t: dict, messages: list[dict]) -> list[dict]:
    """Every message both ways and every history entry (status changes with who/when/why, commands,
    rule hits, ratings, SLA stamps), in time order; messages before events at the same instant."""
    out: list[dict] = []
    for m in messages:
        out.append({"at": m.get("received_at") or m.get("date"), "type": "message", "direction": m["direction"],
                    "kind": m.get("kind"), "from": m.get("from"), "to": m.get("to", []),
                    "subject": m.get("subject"), "text": m.get("text", ""),
                    "attachments": m.get("attachments", []), "message_id": m.get("message_id")})
    for e in t.get("events", []):
        out.append({"type": "event", **e})
    order = {"message": 0, "event": 1}
    return sorted(out, key=lambda x: (x.get("at") or "", order[x["type"]]))


def ticket_view(store: Store, tid: str) -> dict | None:
    """What `tickets show --json` prints: the ticket, its conversation and its timeline."""
    t, msgs, archived = find_ticket(store, tid)
    if t is None:
        return None
    msgs = sorted(msgs, key=lambda m: m.get("received_at") or "")
    out = {
        "id": t["id"], "status": t.get("status"), "category": t.get("category"), "priority": t.get("priority"),
        "customer_email": t.get("customer_email"), "subject": t.get("subject"), "created_at": t.get("created_at"),
        "message_count": len(msgs), "team": t.get("team"), "assignee": t.get("assignee"),
        "tags": t.get("tags", []), "updated_at": t.get("updated_at"), "locale": t.get("locale"),
        "mailbox": t.get("mailbox"),
    }
    out.update({k: t.get(k) for k in ("sla", "rules_fired", "events", "rating", "participants",
                                      "first_response_at", "resolved_at", "closed_at", "customer_name")})
    out.update({k: t.get(k) for k in ("close_reason", "reopen_count", "ratings", "merged_into", "merged_from",
                                      "follows", "followed_by", "silence_from", "tier")})
    out["archived"] = archived
    out["messages"] = [{"direction": m["direction"], "from": m["from"], "to": m.get("to", []),
                        "date": m.get("date"), "subject": m.get("subject"), "text": m.get("text", ""),
                        "kind": m.get("kind"), "message_id": m["message_id"],
                        "attachments": m.get("attachments", [])} for m in msgs]
    out["timeline"] = timeline(t, msgs)
    return out
