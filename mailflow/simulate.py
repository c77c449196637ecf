"""`mailflow simulate`: run the real pipeline on a mail inside a batch that is then rolled back.

Because it is the very code `run` executes (not a re-implementation), the result agrees with
`run` exactly; `dry` only skips the files `run` would write (spool, attachments, outbox .eml).
"""

from __future__ import annotations

from pathlib import Path

from mailflow.parse import ParseError, parse_message
from mailflow.pipeline import Incoming, Pipeline


class _Rollback(Exception):
    pass


def simulate_raw(p: Pipeline, raw: bytes, label: str = "", mailbox: str | None = None) -> dict:
    out: dict = {"file": label}
    try:
        msg = parse_message(raw, prefix=p.cfg.prefix)
    except ParseError as e:
        return {**out, "route": "quarantined", "error": f"cannot parse: {e}"}
    out["parsed"] = {
        "from": msg.from_addr, "to": msg.to, "subject": msg.subject, "clean_subject": msg.clean_subject,
        "language": msg.language, "message_id": msg.message_id, "auto_kind": msg.auto_kind,
        "ticket_ids": msg.ticket_ids, "attachments": [a.filename for a in msg.attachments],
        "is_spam": msg.is_spam, "text": (msg.new_text or msg.text)[:500],
    }
    p.dry = True
    p.last_eval = None
    try:
        with p.store.batch():
            before = set(p.store.outbox_rows())
            p._open_counts = p.store.open_counts()
            try:
                res = p.handle(msg, Incoming(raw, mailbox))
            except Exception as e:
                out.update(route="quarantined", error=f"{type(e).__name__}: {e}")
                raise _Rollback() from None
            out["route"] = res.kind
            out["ticket_id"] = res.ticket_id
            if res.reason:
                out["reason"] = res.reason
            t = p.store.ticket(res.ticket_id) if res.ticket_id else None
            if t is not None:
                out.update({k: t.get(k) for k in ("status", "category", "priority", "team", "assignee", "tags")})
                out["sla"] = t.get("sla")
            if p.last_eval is not None:
                out["features"] = {k: v for k, v in p.last_eval.facts.items() if k not in ("text", "subject")}
                out["fired"] = [list(x) for x in p.last_eval.outcome.fired]
            rows = p.store.outbox_rows()
            out["mails"] = [{"template": rows[k]["template"], "to": rows[k]["to"], "subject": rows[k]["subject"]}
                            for k in rows if k not in before]
            raise _Rollback()
    except _Rollback:
        pass
    finally:
        p.dry = False
    return out


def simulate_files(p: Pipeline, files: list[Path]) -> list[dict]:
    return [simulate_raw(p, f.read_bytes(), str(f)) for f in files]
