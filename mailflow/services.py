"""What the CLI and the daemon both do, written once: one pass (`run --once`), replaying quarantined
mail, ingesting files, housekeeping, and the status summary.

Each takes a `Runtime` (or just the config, for status) and returns plain data; printing is the
caller's business (`echo` callbacks), so the daemon logs what the CLI prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from mailflow.clock import iso
from mailflow.storeapi import StoreAPI
from mailflow.tickets import OPEN_STATUSES

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
    timers: int = 0


def join_cluster(store: StoreAPI, cfg, *, greedy: bool = False, info: dict | None = None):
    """PostgreSQL: this process's `cluster.Leases`, started (its own lease taken, a first share of
    mailboxes and perhaps the scheduler); None on TinyDB (one daemon per data directory)."""
    if store.backend == "tinydb":
        return None
    from mailflow.cluster import Leases

    leases = Leases(store, [mb.name for mb in cfg.mailboxes], cfg.pg.lease_seconds, greedy=greedy, info=info)
    leases.start()
    return leases


def run_once(rt: Runtime, echo: Echo, err: Echo) -> PassReport:
    """One pass: every mailbox's pending mail, the outbox sent alongside by the daemon's own sender
    thread (rows become visible to it only once their batch is committed), then a last flush of
    everything still due, then housekeeping. On PostgreSQL with daemons running it does only what
    no daemon holds a lease for (mailboxes, the scheduler), and sends only the rows it claims."""
    from mailflow.cluster import SCHEDULER, mailbox_lease
    from mailflow.daemon import Sender
    from mailflow.fetch import FetchError
    from mailflow.mailboxes import MailboxWorker

    rep = PassReport()
    p = rt.pipeline
    lock = process_lock(p.store)
    if lock is None:
        err(f"a mailflow daemon is running on {p.store.dir}; it already does what --once would")
        rep.exit = EXIT_BUSY
        return rep
    leases = join_cluster(p.store, rt.cfg, greedy=True, info={"mode": "run --once"})
    try:
        mine = [mb for mb in rt.cfg.mailboxes if leases is None or leases.holds(mailbox_lease(mb.name))]
        scheduler = leases is None or leases.holds(SCHEDULER)
        if leases is not None and rt.cfg.mailboxes and not mine:
            err("a mailflow daemon is running on the database and works every mailbox; it already does "
                "what --once would")
            rep.exit = EXIT_BUSY
            return rep
        for mb in rt.cfg.mailboxes:
            if mb not in mine:
                echo(f"{mb.name}: skipped, another daemon works it (`mailflow status` shows which)")
        smtp_timeout = max([s.timeout for s in [rt.cfg.smtp, *(m.smtp for m in rt.cfg.mailboxes)] if s] or [30.0])
        with p.store.mutex:
            p.outbox.fold_journal()  # results of a flush that a crash cut short
        p.outbox.claimer = None if leases is None else leases.me
        sender = Sender(p.outbox, p.store.mutex, lambda: smtp_timeout, interval=0.5)
        sender.next_housekeeping = float("inf")  # once, below, after the last flush
        sender.start()
        try:
            for mb in mine:
                w = MailboxWorker(mb, p, leases)
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
            if scheduler:
                rep.timers = timers_pass(rt, None if leases is None else leases.fence(SCHEDULER))
            if rep.timers:
                echo(f"timers: {rep.timers} ticket(s) or report(s) with reminders, escalations, auto-close "
                     "or scheduled mail")
                sender.wake()
        finally:
            sender.finish()
            sender.thread.join()
        st = sender.totals
        rep.sent, rep.temp, rep.perm, rep.queued, rep.no_smtp = st.sent, st.temp, st.perm, st.queued, st.no_smtp
        if sender.smtp_state == "retrying":
            err(f"smtp: not reachable, {st.queued} mail(s) stay queued (`mailflow outbox list` shows why)")
            rep.exit = EXIT_UNREACHABLE
        if scheduler:
            rep.archived, rep.pruned = housekeeping(rt)
        if rep.archived or rep.pruned:
            echo(f"housekeeping: {rep.archived} closed tickets archived, {rep.pruned} sent rows pruned")
        line = f"outbox: {st.sent} sent, {st.temp} temporary failures, {st.perm} failed, {st.queued} queued"
        if st.no_smtp:
            line += f" ({st.no_smtp} waiting: no [smtp] configured)"
        echo(line)
        return rep
    finally:
        if leases is not None:
            p.outbox.release_claims()
            leases.stop()
        lock.close()


class _NoLock:
    def close(self) -> None:
        pass


def process_lock(store: StoreAPI):
    """One daemon (or `run --once`) per TinyDB data directory (`lock_process`); None if another
    holds it. PostgreSQL: nothing to hold, several daemons share the database through leases
    (mailflow/cluster.py)."""
    if store.backend != "tinydb":
        return _NoLock()
    from mailflow.store import lock_process

    return lock_process(store.dir)


def timers_pass(rt: Runtime, fence: tuple[str, str, int] | None = None) -> int:
    """Everything time has made due (reminders, escalations, customer updates, auto-close, scheduled
    reports), as of the runtime's clock; returns how many tickets and reports had something fire.
    `fence`: the scheduler's lease (several daemons), checked in the timers' batch."""
    from mailflow import report_mail

    now = rt.clock.now()
    res = rt.pipeline.run_timers(now, fence=fence)
    reports = report_mail.send_due(rt.store, rt.pipeline.outbox, rt.cfg, now)
    return sum(1 for r in res if r.fired or r.plan.route == "auto_close") + len(reports)


def next_wake(rt: Runtime) -> datetime | None:
    """When the scheduler must look again: the earliest ticket wake-up or the next report."""
    from mailflow import report_mail
    from mailflow.clock import parse_iso

    with rt.store.mutex:
        nxt = rt.store.next_wake()
    ticket = parse_iso(nxt) if nxt and nxt != "0000" else (rt.clock.now() if nxt else None)
    report = report_mail.next_send(rt.cfg, rt.clock.now())
    return min((t for t in (ticket, report) if t is not None), default=None)


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


INGEST_BATCH_BYTES = 32 * 1024 * 1024  # raw mail held per ingest batch (memory follows it, not the input)


def ingest(rt: Runtime, paths: list[Path], on_result: Callable | None = None, batch: int = 100) -> list:
    """The pipeline over local files, streamed: at most `batch` mails or INGEST_BATCH_BYTES per commit."""
    from mailflow.pipeline import Incoming, iter_paths

    p = rt.pipeline
    batch = min(batch, p.store.max_batch or batch)  # PostgreSQL: store_pg.PgStore.max_batch
    results = []
    part: list[tuple[str, bytes]] = []
    size = 0

    def flush() -> None:
        got = p.process([Incoming(raw) for _label, raw in part])
        for (label, _raw), r in zip(part, got, strict=True):
            results.append((label, r))
            if on_result is not None:
                on_result(label, r)
        part.clear()

    for label, raw in iter_paths(paths):
        if part and (len(part) >= batch or size + len(raw) > INGEST_BATCH_BYTES):
            flush()
            size = 0
        part.append((label, raw))
        size += len(raw)
    if part:
        flush()
    return results


def counts(store: StoreAPI, outbox=None) -> tuple[int, int, int]:
    """(open tickets, queued outbox rows, quarantine held): the daemon's status line and `status`."""
    open_n = sum(v for k, v in store.ticket_counts().items() if k in OPEN_STATUSES)
    if outbox is not None:
        queued = outbox.pending_count()
    else:
        queued = store.outbox_counts().get("queued", 0)
    held = sum(1 for q in store.quarantined() if q.get("status") == "held")
    return open_n, queued, held


def status(cfg, store: StoreAPI) -> dict:
    """Mailboxes and their last poll, tickets by status, outbox depth, quarantine size, last error."""
    by_status = store.ticket_counts()
    ob = store.outbox_counts()
    return {
        "data_dir": str(cfg.data_dir),
        "backend": store.backend,
        "mailboxes": [{"name": mb.name, **{k: store.checkpoint(mb.name).get(k) for k in
                                           ("last_poll", "last_uid", "uidvalidity", "last_error")}}
                      for mb in cfg.mailboxes],
        "tickets": by_status,
        "open_tickets": sum(v for k, v in by_status.items() if k in OPEN_STATUSES),
        "outbox": {"queued": ob.get("queued", 0), "failed": ob.get("failed", 0), "sent": ob.get("sent", 0)},
        "quarantine": sum(q.get("status") == "held" for q in store.quarantined()),
        "outbox_last_error": store.outbox_last_error(),
        "daemon": daemon_status(store.dir) if store.backend == "tinydb" else store.daemons(),
        **({} if store.backend == "tinydb" else {"leases": [x for x in store.leases() if x["live"]]}),
    }


def daemon_status(data_dir: Path) -> dict | None:
    """The running daemon's own report (`daemon-status.json`), with `running` telling whether a
    daemon still holds the data directory; None if no daemon ever ran here."""
    import fcntl
    import json

    try:
        doc = json.loads((data_dir / "daemon-status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    running = False
    try:
        with open(data_dir / "daemon.lock", "a+") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            except OSError:
                running = True
    except OSError:
        pass
    return {**doc, "running": running}


def find_ticket(store: StoreAPI, tid: str) -> tuple[dict | None, list[dict], bool]:
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


def ticket_view(store: StoreAPI, tid: str, cfg=None, now=None) -> dict | None:
    """What `tickets show --json` prints: the ticket, its conversation, its timeline and (with `cfg`)
    every SLA clock as of `now`."""
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
                                      "follows", "followed_by", "silence_from", "tier", "sla_fired", "wake_at",
                                      "last_public_at", "public_updates")})
    out["archived"] = archived
    out["messages"] = [{"direction": m["direction"], "from": m["from"], "to": m.get("to", []),
                        "date": m.get("date"), "subject": m.get("subject"), "text": m.get("text", ""),
                        "kind": m.get("kind"), "message_id": m["message_id"],
                        "attachments": m.get("attachments", [])} for m in msgs]
    out["timeline"] = timeline(t, msgs)
    if cfg is not None and now is not None:
        out["sla"] = dict(out.get("sla") or {}, clocks=clock_views(t, cfg, now))
    return out


def clock_views(t: dict, cfg, now) -> dict[str, dict]:
    """Each SLA clock as `tickets show` lists it, as of `now`: state, due, business time used and
    allowed (hours), paused spans, met/breached."""
    from mailflow import slaclock

    out = {}
    for name, c in slaclock.clocks_of(t, cfg, now).items():
        out[name] = {
            "state": c.state, "cycle": c.cycle, "calendar": c.calendar.name if c.calendar else None,
            "started_at": iso(c.started_at), "due": iso(c.due), "stopped_at": iso(c.stopped_at),
            "target_hours": round((c.target_seconds or 0) / 3600, 2),
            "elapsed_hours": round(c.elapsed_seconds / 3600, 2),
            "paused": [[iso(a), iso(b)] for a, b in c.paused_spans],
            "breached": c.breached, "met": c.state == "met",
        }
    return out


def explain_sla(t: dict, cfg, now) -> list[str]:
    """`mailflow sla explain ID`: step by step how each due time was computed."""
    from mailflow import sla, slaclock

    cal = slaclock.calendar_of(t, cfg)
    lines = [f"ticket {t['id']}: priority {t.get('priority')}, tier {slaclock.tier_of(t, cfg)}, "
             f"category {t.get('category') or '-'}, calendar {cal.name} ({cal.tz.key})"]
    targets = cfg.policy.targets(t.get("priority"), slaclock.tier_of(t, cfg), t.get("category"), t.get("mailbox"))
    lines.append("targets (business time): " + ", ".join(f"{k} {sla.fmt_duration(v)}" for k, v in targets.items()))
    lines.append("history the clocks follow:")
    for ev in slaclock.clock_events(t, cfg):
        lines.append(f"  {ev.at.astimezone(cal.tz):%Y-%m-%d %H:%M}  {ev.kind}")
    for name, c in slaclock.clocks_of(t, cfg, now).items():
        lines.append("")
        lines.append(f"{name}: {c.state}" + (f", cycle {c.cycle}" if c.cycle > 1 else ""))
        if c.started_at is None or not c.target_seconds:
            lines.append("  not started")
            continue
        for a, b in c.paused_spans:
            lines.append(f"  paused {a.astimezone(cal.tz):%Y-%m-%d %H:%M} -> "
                         f"{b.astimezone(cal.tz):%Y-%m-%d %H:%M}" if b else
                         f"  paused since {a.astimezone(cal.tz):%Y-%m-%d %H:%M}")
        ccal = c.calendar or cal
        if c.paused_spans:
            last = max((b for _a, b in c.paused_spans if b), default=None)
            used = c.target_seconds - (c.remaining_seconds if c.remaining_seconds is not None else 0)
            lines.append(f"  {sla.fmt_duration(max(0.0, used))} used so far; "
                         f"{sla.fmt_duration(max(0.0, c.remaining_seconds or 0))} left when counting resumed")
            steps = ccal.explain_add(last, max(0.0, c.remaining_seconds or 0)) if last else []
        else:
            steps = ccal.explain_add(c.started_at, c.target_seconds)
        lines += [f"  {s}" for s in steps]
        if c.stopped_at:
            lines.append(f"  stopped {c.stopped_at.astimezone(cal.tz):%Y-%m-%d %H:%M} by {c.stopped_by}: "
                         f"{'met' if c.state == 'met' else 'breached'}")
    return lines
