"""`mailflow simulate`: decide a mail's plan and apply it inside a batch that is then rolled back.

Because the plan comes from the very code `run` executes and is applied by the same `apply` (not a
re-implementation), the result agrees with `run` exactly, for new mail, replies, ratings and staff
mail alike; `dry` only skips the files `run` would write (spool, attachments, outbox .eml).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from mailflow.parse import ParseError, parse_message
from mailflow.pipeline import Incoming, Pipeline


class _Rollback(Exception):
    pass


def simulate_raw(p: Pipeline, raw: bytes, label: str = "", mailbox: str | None = None,
                 now: datetime | None = None, explain: bool = False) -> dict:
    out: dict = {"file": label}
    try:
        msg = parse_message(raw, prefix=p.cfg.prefix)
    except ParseError as e:
        return {**out, "route": "quarantined", "error": f"cannot parse: {e}"}
    out["parsed"] = {
        "from": msg.from_addr, "to": msg.to, "subject": msg.subject, "clean_subject": msg.clean_subject,
        "language": msg.language, "message_id": msg.message_id, "auto_kind": msg.auto_kind,
        "ticket_ids": msg.ticket_ids, "attachments": [a.filename for a in msg.attachments],
        "is_spam": msg.is_spam, "text": msg.new_text[:500], "quote_rule": msg.quote_rule,
    }
    if explain:
        from mailflow.replies import explain_message

        out["explain"] = explain_message(msg)
    now = now or p.clock.now()
    it = Incoming(raw, mailbox)
    p.dry = True
    try:
        with p.store.batch():
            before = set(p.store.outbox_rows())
            p._open_counts = p.store.open_counts()
            try:
                plan = p.decide(msg, it, now)
                if plan.route == "duplicate":
                    known = p.store.ticket_of_message_id(msg.message_id)
                    plan = p.decide(msg, it, now, ignore_seen=True)
                    out["note"] = (f"already processed{' (ticket ' + known + ')' if known else ''}: "
                                   "evaluated as if it were new")
                p._touched = set()
                p.apply(plan, msg, it, now)
                timers = p.run_timers(now, sorted(p._touched))  # what run does before its commit
            except Exception as e:
                out.update(route="quarantined", error=f"{type(e).__name__}: {e}")
                raise _Rollback() from None
            out["route"] = plan.route
            out["ticket_id"] = plan.ticket_id
            if plan.reason:
                out["reason"] = plan.reason
            t = p.store.ticket(plan.ticket_id) if plan.ticket_id else None
            if t is not None:
                out.update({k: t.get(k) for k in ("status", "category", "priority", "team", "assignee", "tags")})
                out["sla"] = t.get("sla")
            ev = p.last_eval
            if ev is not None:
                out["features"] = {k: v for k, v in ev.facts.items() if k not in ("text", "subject")}
                out["fired"] = [list(x) for x in ev.outcome.fired]
            rows = p.store.outbox_rows()
            out["mails"] = [{"template": rows[k]["template"], "to": rows[k]["to"], "subject": rows[k]["subject"]}
                            for k in rows if k not in before]
            out["plan"] = plan.as_json()
            out["timers"] = [{"ticket_id": r.plan.ticket_id, "fired": r.fired, "deferred": r.deferred,
                              "wake_at": r.wake_at.isoformat() if r.wake_at else None}
                             for r in timers if r.fired or r.deferred or r.plan.route == "auto_close"]
            raise _Rollback()
    except _Rollback:
        pass
    finally:
        p.dry = False
        p._open_counts = None
        p._touched = set()
    return out


def simulate_files(p: Pipeline, files: list[Path], now: datetime | None = None,
                   explain: bool = False) -> list[dict]:
    return [simulate_raw(p, f.read_bytes(), str(f), now=now, explain=explain) for f in files]
