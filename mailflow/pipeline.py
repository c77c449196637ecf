"""The processing stage: spooled raw mail -> parse -> intake -> rules -> ticket store + outbox.

One `process()` call is one batch and one database commit: tickets, messages, outbox rows and the
mailbox checkpoint land together or not at all. A message that fails anywhere is quarantined with
its reason and never blocks the ones behind it.
"""

from __future__ import annotations

import logging
import re
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from mailflow import features, routing
from mailflow.commands import authenticate, parse_commands, trusted_result
from mailflow.config import Config
from mailflow.intake import Route, route
from mailflow.model import Message
from mailflow.outbox import Outbox
from mailflow.parse import ParseError, parse_message
from mailflow.privacy import mask, mask_addresses
from mailflow.render import Templates
from mailflow.rules import RuleSet, on_engine
from mailflow.spool import Spool
from mailflow.store import Store, iso, parse_iso, utcnow

log = logging.getLogger("mailflow.pipeline")

_SAFE_NAME = re.compile(r"[^\w.\-]+", re.UNICODE)


@dataclass
class Incoming:
    raw: bytes
    mailbox: str | None = None  # None for `ingest`
    uid: int | None = None
    spool_rel: str | None = None  # set once spooled


@dataclass
class Result:
    kind: str  # new | reply | staff | rating | reopen | duplicate | own | auto | bounce | quarantined
    ticket_id: str | None = None
    reason: str = ""
    uid: int | None = None
    mailbox: str | None = None


@dataclass
class Evaluation:
    """What the rules decided for one new message (shared by `run` and `simulate`)."""

    facts: dict
    outcome: routing.Outcome
    mentioned: set[str] = field(default_factory=set)


class Pipeline:
    def __init__(self, cfg: Config, store: Store, rules: RuleSet, templates: Templates):
        self.cfg = cfg
        self.store = store
        self.rules = rules
        self.templates = templates
        self.spool = Spool(store.dir / "spool")
        self.outbox = Outbox(cfg, store, templates, dry=lambda: self.dry)
        self.debug = cfg.log_level.lower() == "debug"
        self.dry = False  # simulate: decide everything, write no files (the batch is rolled back)
        self.last_eval: Evaluation | None = None

    def _who(self, addr: str) -> str:
        return addr if self.debug else mask(addr)

    # ---- batch entry point ------------------------------------------------------------------

    def process(self, items: list[Incoming], checkpoint: tuple[str, dict] | None = None) -> list[Result]:
        """Spool (fsync) every message, then handle all in one commit together with the checkpoint."""
        todo = [it for it in items if it.spool_rel is None]
        for it, ref in zip(todo, self.spool.write_many([it.raw for it in todo]), strict=True):
            it.spool_rel = ref
        results: list[Result] = []
        with self.store.batch():
            self._open_counts = self.store.open_counts()
            self.outbox.begin()
            try:
                for it in items:
                    results.append(self._one(it))
                if checkpoint is not None:
                    self.store.set_checkpoint(checkpoint[0], **checkpoint[1])
                self.outbox.commit_pending()  # the mail's bytes are durable before the rows are
            finally:
                self.outbox.abort_pending()
        for r in results:
            if r.kind not in ("duplicate",):
                log.info("%s ticket=%s mailbox=%s uid=%s %s", r.kind, r.ticket_id or "-", r.mailbox or "-",
                         r.uid if r.uid is not None else "-", r.reason if self.debug else mask_addresses(r.reason))
        return results

    def _one(self, it: Incoming) -> Result:
        try:
            msg = parse_message(it.raw, prefix=self.cfg.prefix)
        except ParseError as e:
            return self._quarantine(it, f"cannot parse: {e}")
        except Exception as e:  # parse promises not to raise; if it does, keep the mail anyway
            return self._quarantine(it, f"parser crashed: {type(e).__name__}: {e}")
        try:
            with self.store.savepoint():  # half a ticket never stays behind
                return self.handle(msg, it)
        except Exception as e:
            log.error("processing failed mailbox=%s uid=%s: %s", it.mailbox, it.uid, e)
            log.debug("%s", traceback.format_exc())
            return self._quarantine(it, f"{type(e).__name__}: {e}")

    def _quarantine(self, it: Incoming, reason: str) -> Result:
        for q in self.store.quarantined():  # a replayed batch (crash, UIDVALIDITY resync) adds no twin
            if q.get("spool") == it.spool_rel and q.get("status") == "held":
                return Result("quarantined", None, f"quarantine id {q['qid']}: {reason}", it.uid, it.mailbox)
        qid = self.store.add_quarantine({
            "at": iso(utcnow()), "reason": reason, "spool": it.spool_rel, "mailbox": it.mailbox,
            "uid": it.uid, "status": "held", "size": len(it.raw),
        })
        return Result("quarantined", None, f"quarantine id {qid}: {reason}", it.uid, it.mailbox)

    # ---- one message ------------------------------------------------------------------------

    def handle(self, msg: Message, it: Incoming) -> Result:
        r = route(msg, self.store, self.cfg)
        res = Result(r.kind, r.ticket_id, r.reason, it.uid, it.mailbox)
        if r.kind == "duplicate":
            return res
        now = utcnow()
        if r.kind in ("own", "auto", "bounce"):
            self.store.mark_seen(msg.message_id, msg.content_hash, r.kind)
            if r.ticket_id and self.store.ticket(r.ticket_id) is None:
                pass  # the ticket is archived: nothing to record it on
            elif r.ticket_id and r.kind == "bounce":
                failed = ", ".join(msg.bounce_recipients) or "unknown recipient"
                t = self.store.ticket(r.ticket_id) or {}
                failing = sorted({*t.get("failing_addresses", []), *msg.bounce_recipients})
                self.store.update_ticket(r.ticket_id, {"failing_addresses": failing})
                self.store.add_event(r.ticket_id, "bounce", f"delivery failed to {failed}")
            elif r.ticket_id and r.kind == "auto":
                self.store.add_event(r.ticket_id, "auto_reply", f"{msg.auto_kind} from {msg.from_addr}")
            return res
        if r.kind == "new":
            tid = self._new_ticket(msg, it, now)
            res.ticket_id = tid
            return res
        assert r.ticket_id is not None
        self._thread(msg, it, r, now)
        return res

    def _thread(self, msg: Message, it: Incoming, r: Route, now: datetime) -> None:
        tid = r.ticket_id
        assert tid is not None
        t = self.store.ticket(tid)
        assert t is not None
        kind = "staff" if r.kind == "staff" else "customer"
        self._add_message(msg, it, tid, kind, now)
        upd: dict = {"updated_at": iso(now)}
        if kind == "customer":
            parts = set(t.get("participants", []))
            parts.update(a for a in msg.cc if a not in self._support_addresses())
            upd["participants"] = sorted(parts)
        self.store.update_ticket(tid, upd)
        t = self.store.ticket(tid) or t
        why = self._untrusted(msg) if r.kind != "staff" else None
        if why:
            self.store.add_event(tid, "ignored", f"reply {why}: no reopen, rating or mail")
            return
        if r.kind == "staff":
            self._staff_mail(msg, t, now)
        elif r.kind == "rating":
            self.store.update_ticket(tid, {"rating": r.rating, "status": "closed", "closed_at": iso(now)})
            self.store.add_event(tid, "rated", f"satisfaction {r.rating}/5; closed")
            self.outbox.enqueue(self.store.ticket(tid) or t, "closed", msg=msg, auto=True, now=now)
        elif r.kind == "reopen":
            self.store.update_ticket(tid, {"status": "open", "reopen_count": t.get("reopen_count", 0) + 1,
                                           "resolved_at": None, "closed_at": None})
            self.store.add_event(tid, "reopened", r.reason)
            self.outbox.enqueue(self.store.ticket(tid) or t, "reopened", msg=msg, auto=True, now=now)
            if t.get("assignee"):
                self.outbox.notify_staff(self.store.ticket(tid) or t, t["assignee"], msg=msg, now=now)
        elif r.kind == "reply":
            if t.get("status") == "pending":
                self.store.update_ticket(tid, {"status": "open"})
            if self.cfg.outbound.ack_replies:
                self.outbox.enqueue(self.store.ticket(tid) or t, "ack", msg=msg, auto=True, now=now)

    # ---- staff mail and commands -------------------------------------------------------------

    def _staff_mail(self, msg: Message, t: dict, now: datetime) -> None:
        """Apply an authenticated staff member's commands and relay their text to the customer."""
        tid, who = t["id"], msg.from_addr
        how = authenticate(msg, who, tid, self.outbox.verify_id, self.cfg.outbound.trusted_authserv_ids)
        if how is None:
            self.store.add_event(tid, "unauthenticated", f"staff mail from {who} not authenticated: "
                                 "commands ignored, nothing sent to the customer")
            log.warning("ticket=%s unauthenticated staff mail from %s: ignored", tid, self._who(who))
            return
        parsed = parse_commands(msg.subject, self.cfg.prefix, t.get("subject") or "")
        bad = [f"[{c.raw}]: no staff member or team called {c.arg!r}" for c in parsed.commands
               if c.name == "ASSIGN" and self._resolve_assignee(c.arg) is None]
        bad += [f"[{c.raw}]: no other ticket {c.arg}" for c in parsed.commands
                if c.name == "MERGE" and (c.arg == tid or self.store.ticket(c.arg) is None)]
        if bad:
            parsed.errors = bad
        if parsed.errors:
            self.store.add_event(tid, "command_error", "; ".join(parsed.errors))
            self.outbox.notify_staff(t, who, msg=msg, now=now, template="command_error",
                                     extra={"error": {"text": "\n".join(parsed.errors)},
                                            "commands": [f"[{c.raw}]" for c in parsed.commands]})
            return
        text = (msg.new_text or "").strip()
        names = {c.name for c in parsed.commands}
        upd: dict = {}
        customer_template: str | None = "progress" if text else None
        for c in parsed.commands:
            detail = f"{c.name} {c.arg}".strip() + f" by {who}"
            if c.name == "RESOLVE":
                upd.update(status="resolved", resolved_at=iso(now))
                customer_template = "resolved"
            elif c.name == "CLOSE":
                upd.update(status="closed", closed_at=iso(now))
                customer_template = "closed"
            elif c.name == "REOPEN":
                upd.update(status="open", resolved_at=None, closed_at=None,
                           reopen_count=t.get("reopen_count", 0) + 1)
                customer_template = "reopened"
            elif c.name == "PENDING":
                upd["status"] = "pending"
            elif c.name == "ASSIGN":
                team, assignee = self._resolve_assignee(c.arg) or (None, None)
                upd.update(team=team or t.get("team"), assignee=assignee)
            elif c.name == "PRIORITY":
                upd["priority"] = c.arg
                upd["sla"] = self._sla(t.get("created_at"), c.arg)
            elif c.name == "CATEGORY":
                upd["category"] = c.arg
            elif c.name == "TAG":
                upd["tags"] = sorted({*t.get("tags", []), *upd.get("tags", []), c.arg})
            elif c.name == "MERGE":
                upd.update(status="closed", closed_at=iso(now), merged_into=c.arg)
                self.store.add_event(c.arg, "merged", f"{tid} merged into this ticket by {who}")
            elif c.name == "SPAM":
                upd.update(status="closed", closed_at=iso(now),
                           tags=sorted({*t.get("tags", []), "spam"}))
            self.store.add_event(tid, "command", detail)
        if names & {"NOTE", "SPAM", "MERGE"}:
            customer_template = None
        if t.get("status") == "new" and "status" not in upd and customer_template:
            upd["status"] = "open"
        if customer_template and not t.get("first_response_at"):
            upd["first_response_at"] = iso(now)
        if upd:
            self.store.update_ticket(tid, upd)
        t = self.store.ticket(tid) or t
        if "ESCALATE" in names:
            for to in self._escalation_targets(t):
                self.outbox.notify_staff(t, to, msg=msg, now=now, template="escalation",
                                         extra={"escalation": {"reason": f"escalated by {who}"}})
        if "ASSIGN" in names and t.get("assignee") and t["assignee"] != who:
            self.outbox.notify_staff(t, t["assignee"], msg=msg, now=now)
        if "NOTE" in names:
            self.store.add_event(tid, "note", f"internal note by {who}")
        if customer_template:
            staff = self.cfg.staff_by_email().get(who)
            self.outbox.enqueue(t, customer_template, msg=None, auto=False, now=now,
                                extra={"reply": {"text": text},
                                       "staff": {"name": staff.name if staff else who, "email": who}},
                                in_reply_to=self._last_customer_message_id(tid))

    def _resolve_assignee(self, arg: str) -> tuple[str | None, str | None] | None:
        """[ASSIGN x]: a staff member by email, name or mailbox name; or a team (least open tickets)."""
        a = arg.strip().lower()
        for s in self.cfg.staff:
            if a in (s.email, s.name.lower(), s.email.split("@")[0]):
                return (s.teams[0] if s.teams else None, s.email)
        members = [s for s in self.cfg.staff if a in [x.lower() for x in s.teams]]
        if not members:
            return None
        counts = self.store.open_counts()
        pick = min(members, key=lambda s: (counts.get(s.email, 0), s.email))
        return (a, pick.email)

    def _escalation_targets(self, t: dict) -> list[str]:
        leads = [s.email for s in self.cfg.staff if s.role in ("lead", "manager")
                 and (not t.get("team") or t["team"] in s.teams)]
        return leads or list(self.cfg.escalation_chain[:1]) or [s.email for s in self.cfg.staff
                                                                if s.role == "manager"]

    def _last_customer_message_id(self, tid: str) -> str | None:
        ins = [m for m in self.store.messages_of(tid) if m["direction"] == "in" and m.get("kind") == "customer"]
        return ins[-1]["message_id"] if ins else None

    def _sla(self, created_at: str | None, priority: str) -> dict:
        created = parse_iso(created_at) or utcnow()
        first_h = self.cfg.first_response_hours.get(priority, 24.0)
        res_h = self.cfg.resolution_hours.get(priority, 72.0)
        return {"first_response_due": iso(created + timedelta(hours=first_h)),
                "resolution_due": iso(created + timedelta(hours=res_h)),
                "first_response_hours": first_h, "resolution_hours": res_h}

    def _support_addresses(self) -> set[str]:
        return {mb.address.lower() for mb in self.cfg.mailboxes if mb.address}

    # ---- new tickets ------------------------------------------------------------------------

    def evaluate(self, msg: Message, mailbox: str | None, now: datetime) -> Evaluation:
        """Rules for a new message against the current database; `simulate` calls exactly this."""
        staff = self.cfg.staff
        text = msg.new_text or msg.text
        mentioned = features.mentioned_staff(f"{msg.subject}\n{text}", staff)
        opened, complaints = self.store.customer_stats(msg.from_addr, now)
        facts = {
            "subject": msg.clean_subject or msg.subject,
            "text": text,
            "from": msg.from_addr,
            "to": [*msg.to, *msg.cc],
            "mailbox": mailbox or "",
            "language": msg.language,
            "has_attachments": bool(msg.attachments),
            "customer.tier": "vip" if self.cfg.is_vip(msg.from_addr) else "standard",
            "customer.open_tickets": opened,
            "customer.complaints_30d": complaints,
            "sentiment": features.sentiment(f"{msg.clean_subject}\n{text}"),
            "mentions_staff": bool(mentioned),
        }
        open_counts = getattr(self, "_open_counts", None)
        if open_counts is None:
            open_counts = self.store.open_counts()
        outcome = on_engine(
            routing.evaluate_message, self.rules, facts, routing.TicketFields(None, "normal", None, None, []), staff,
            open_counts, dict(self.store.get_meta("rr_state", {}) or {}), mentioned,
            strategy=self.cfg.routing_strategy, escalation_chain=self.cfg.escalation_chain,
        )
        self.last_eval = Evaluation(facts, outcome, mentioned)
        return self.last_eval

    def _new_ticket(self, msg: Message, it: Incoming, now: datetime) -> str:
        ev = self.evaluate(msg, it.mailbox, now)
        f = ev.outcome.fields
        day = now.astimezone(self.cfg.tz).strftime("%Y%m%d")
        tid = self.store.next_ticket_id(self.cfg.prefix, day)
        ticket = {
            "id": tid, "status": "new", "category": f.category, "priority": f.priority,
            "team": f.team, "assignee": f.assignee, "tags": list(f.tags),
            "customer_email": msg.from_addr, "customer_name": msg.from_name,
            "subject": msg.clean_subject or msg.subject or "(no subject)",
            "locale": msg.language if msg.language in ("zh", "en") else self.cfg.default_locale,
            "mailbox": it.mailbox, "created_at": iso(now), "updated_at": iso(now),
            "first_response_at": None, "resolved_at": None, "closed_at": None,
            "participants": sorted({a for a in msg.cc if a not in self._support_addresses()}),
            "sla": self._sla(iso(now), f.priority),
            "rules_fired": [list(x) for x in ev.outcome.fired],
            "events": [{"at": iso(now), "kind": "created",
                        "detail": f"from mailbox {it.mailbox or 'ingest'}"}],
            "rating": None, "reopen_count": 0, "auto_sent": 0,
            "failing_addresses": [], "mentioned_staff": sorted(ev.mentioned),
        }
        if ev.outcome.fired:
            ticket["events"].append({"at": iso(now), "kind": "rules",
                                     "detail": ", ".join(f"{s}/{n}" for s, n in ev.outcome.fired)})
        self.store.add_ticket(ticket)
        self._add_message(msg, it, tid, "customer", now)
        self.store.set_meta("rr_state", ev.outcome.rr_state)

        if self._may_acknowledge(msg, tid) and not ev.outcome.no_ack:
            self.outbox.enqueue(ticket, ev.outcome.ack_template or "ack", msg=msg, auto=True, now=now)
        notified = set()
        if f.assignee:
            self.outbox.notify_staff(ticket, f.assignee, msg=msg, now=now)
            notified.add(f.assignee)
        for to, template in ev.outcome.notify:
            if to not in notified:
                self.outbox.notify_staff(ticket, to, msg=msg, now=now, template=template)
                notified.add(to)
        for to in ev.outcome.escalate:
            self.outbox.notify_staff(ticket, to, msg=msg, now=now, template="escalation",
                                     extra={"escalation": {"reason": "rule"}})
        if f.assignee:  # last: nothing after this can fail and roll the ticket back
            self._open_counts[f.assignee] = self._open_counts.get(f.assignee, 0) + 1
        return tid

    def _untrusted(self, msg: Message) -> str | None:
        """Why mail must not be answered (no backscatter to forged senders), or None."""
        if msg.is_spam:
            return "flagged as spam"
        ar = trusted_result(msg, self.cfg.outbound.trusted_authserv_ids)
        if ar is not None and ar.dmarc == "fail":
            return f"DMARC fail at {ar.authserv_id}"
        return None

    def _may_acknowledge(self, msg: Message, tid: str) -> bool:
        why = self._untrusted(msg)
        if why:
            self.store.add_event(tid, "no_ack", why)
        return why is None

    def _add_message(self, msg: Message, it: Incoming, tid: str, kind: str, now: datetime) -> None:
        atts = []
        for i, a in enumerate(msg.attachments):
            entry = {"filename": a.filename, "content_type": a.content_type, "size": a.size, "path": None}
            if a.size <= self.cfg.attachment_max_bytes and not self.dry:
                d = self.store.dir / "attachments" / tid
                d.mkdir(parents=True, exist_ok=True)
                name = _SAFE_NAME.sub("_", a.filename or f"part{i}")[:120] or f"part{i}"
                p = d / f"{msg.content_hash[:8]}-{i}-{name}"
                p.write_bytes(a.data)
                entry["path"] = str(p.relative_to(self.store.dir))
            else:
                entry["skipped"] = f"over the {self.cfg.attachment_max_bytes}-byte cap"
            atts.append(entry)
        self.store.add_message({
            "ticket_id": tid, "message_id": msg.message_id, "hash": msg.content_hash,
            "direction": "in", "kind": kind, "from": msg.from_addr, "from_name": msg.from_name,
            "to": msg.to, "cc": msg.cc, "subject": msg.subject,
            "date": iso(msg.date) if msg.date else iso(now), "received_at": iso(now),
            "text": msg.new_text or msg.text, "language": msg.language, "spool": it.spool_rel,
            "mailbox": it.mailbox, "uid": it.uid, "attachments": atts,
        })


def read_paths(paths: list[Path]) -> list[tuple[str, bytes]]:
    """.eml files, mbox files and Maildir folders -> (label, raw bytes) in a stable order."""
    import mailbox as mbx

    out: list[tuple[str, bytes]] = []
    for p in paths:
        if p.is_dir() and (p / "cur").is_dir() and (p / "new").is_dir():
            md = mbx.Maildir(str(p), factory=None, create=False)
            for key in sorted(md.keys()):
                out.append((f"{p}:{key}", md.get_bytes(key)))
        elif p.is_dir():
            for q in sorted(p.rglob("*.eml")):
                out.append((str(q), q.read_bytes()))
        else:
            head = p.read_bytes()[:5]
            if head == b"From ":
                mb = mbx.mbox(str(p), factory=None, create=False)
                for key in mb.keys():
                    out.append((f"{p}:{key}", mb.get_bytes(key)))
            else:
                out.append((str(p), p.read_bytes()))
    return out
