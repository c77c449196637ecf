"""Routed message -> plan: what should happen, decided from the message and the store, changing nothing.

One function per kind of mail. Every status change comes from `tickets.transition`; staff commands
come from `commands.REGISTRY`; new tickets from the rules (`routing.evaluate_message`). The plan is
applied by `Pipeline.apply`, inside the batch's commit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from mailflow import category_guess, features, routing
from mailflow.clock import iso
from mailflow.commands import (
    REGISTRY,
    STATUS_COMMANDS,
    Context,
    authenticate,
    escalation_targets,
    parse_commands,
    permitted,
    trusted_result,
)
from mailflow.config import Config
from mailflow.intake import Route, lookup
from mailflow.model import Message
from mailflow.plan import Mail, Plan
from mailflow.rules import RuleSet, on_engine
from mailflow.store import Store
from mailflow.tickets import Change, Refusal, event, transition

LOCALES = ("zh", "zh-Hant", "en")
REPLAY_DAYS = 30  # a staff mail identical to one applied this recently is a replay


def staff_digest(msg: Message, who: str, tid: str) -> str:
    """What makes two staff mails the same mail: sender, ticket, the references it answers, its
    commands and its words (whitespace aside). A second [RESOLVE] with new words is a new mail."""
    from mailflow.commands import parse_commands

    refs = sorted({*msg.in_reply_to, *msg.references})
    cmds = sorted(f"{c.name} {c.arg}".strip() for c in parse_commands(msg.subject).commands)
    text = " ".join((msg.new_text or "").split())
    raw = "\x1f".join([who.lower(), tid, ",".join(refs), ",".join(cmds), text])
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass
class Evaluation:
    """What the rules decided for one new message (shared by `run` and `simulate`)."""

    facts: dict
    outcome: routing.Outcome
    mentioned: set[str] = field(default_factory=set)


class Decider:
    def __init__(self, cfg: Config, store: Store, rules: RuleSet, verify_id: Callable[[str, str], str | None],
                 check_ref: Callable[[str, str], tuple[str | None, str]] | None = None):
        self.cfg = cfg
        self.store = store
        self.rules = rules
        self.verify_id = verify_id
        self.check_ref = check_ref
        self.last_eval: Evaluation | None = None

    # ---- entry point --------------------------------------------------------------------------

    def decide(self, msg: Message, r: Route, mailbox: str | None, now: datetime,
               open_counts: dict[str, int]) -> Plan:
        if r.kind == "duplicate":
            return Plan("duplicate", reason=r.reason)
        if r.kind in ("own", "auto", "bounce"):
            return self._no_answer(msg, r, now)
        if r.kind == "new":
            return self._new(msg, mailbox, now, open_counts, reason=r.reason)
        if r.kind == "staff":
            return self._staff(msg, r, now, open_counts)
        return self._customer(msg, r, mailbox, now, open_counts)

    # ---- mail that is never answered ----------------------------------------------------------

    def _no_answer(self, msg: Message, r: Route, now: datetime) -> Plan:
        plan = Plan(r.kind, r.ticket_id, r.reason, seen=r.kind)
        t = self.store.ticket(r.ticket_id) if r.ticket_id else None
        if t is None:  # no ticket, or it is archived: nothing to record it on
            return plan
        if r.kind == "bounce":
            failed = ", ".join(msg.bounce_recipients) or "unknown recipient"
            plan.update(t["id"], {"failing_addresses": sorted({*t.get("failing_addresses", []),
                                                               *msg.bounce_recipients})})
            plan.event(t["id"], event(now, "bounce", "system", f"delivery failed to {failed}"))
        elif r.kind == "auto":
            plan.event(t["id"], event(now, "auto_reply", "system", f"{msg.auto_kind} from {msg.from_addr}"))
        return plan

    # ---- new tickets --------------------------------------------------------------------------

    def evaluate(self, msg: Message, mailbox: str | None, now: datetime,
                 open_counts: dict[str, int] | None = None) -> Evaluation:
        """Rules for a new message against the current database; `simulate` calls exactly this."""
        staff = self.cfg.staff
        text = msg.new_text  # the sender's own words (a forward keeps what it forwards); never a quote
        mentioned = features.mentioned_staff(f"{msg.subject}\n{text}", staff)
        stats = self.store.customer_stats(msg.from_addr, now)
        facts = {
            "subject": msg.clean_subject or msg.subject,
            "text": text,
            "from": msg.from_addr,
            "to": [*msg.to, *msg.cc],
            "mailbox": mailbox or "",
            "language": msg.language,
            "has_attachments": bool(msg.attachments),
            "customer.tier": "vip" if self.cfg.is_vip(msg.from_addr) else "standard",
            "customer.open_tickets": stats["open_tickets"],
            "customer.complaints_30d": stats["complaints_30d"],
            "customer.spam_count": stats["spam_count"],
            "sentiment": features.sentiment(f"{msg.clean_subject}\n{text}"),
            "mentions_staff": bool(mentioned),
            **category_guess.facts(msg.clean_subject or msg.subject, text),
        }
        if open_counts is None:
            open_counts = self.store.open_counts()
        outcome = on_engine(
            routing.evaluate_message, self.rules, facts, routing.TicketFields(None, "normal", None, None, []), staff,
            open_counts, dict(self.store.get_meta("rr_state", {}) or {}), mentioned,
            strategy=self.cfg.routing_strategy, escalation_chain=self.cfg.escalation_chain,
        )
        self.last_eval = Evaluation(facts, outcome, mentioned)
        return self.last_eval

    def _new(self, msg: Message, mailbox: str | None, now: datetime, open_counts: dict[str, int],
             reason: str = "", follows: str | None = None) -> Plan:
        ev = self.evaluate(msg, mailbox, now, open_counts)
        f = ev.outcome.fields
        if "spam" in f.tags:  # the admin's rules say: no ticket at all (kept in quarantine to look at)
            fired = ", ".join(f"{s}/{n}" for s, n in ev.outcome.fired)
            return Plan("spam", reason=f"tagged spam by the rules ({fired})", seen="spam",
                        hold=f"tagged spam by the rules ({fired}); replay it after changing them")
        day = now.astimezone(self.cfg.tz).strftime("%Y%m%d")
        tid, serial_key, serial = self.store.peek_ticket_id(self.cfg.prefix, day)
        at = iso(now)
        ticket = {
            "id": tid, "status": "new", "close_reason": None, "category": f.category, "priority": f.priority,
            "team": f.team, "assignee": f.assignee, "tags": list(f.tags),
            "customer_email": msg.from_addr, "customer_name": msg.from_name,
            "tier": "vip" if self.cfg.is_vip(msg.from_addr) else "standard",
            "subject": msg.clean_subject or msg.subject or "(no subject)",
            "locale": msg.language if msg.language in LOCALES else self.cfg.default_locale,
            "mailbox": mailbox, "created_at": at, "updated_at": at,
            "first_response_at": None, "resolved_at": None, "closed_at": None, "silence_from": None,
            "participants": sorted({a for a in msg.cc if a not in self._support_addresses()}),
            "rules_fired": [list(x) for x in ev.outcome.fired],
            "events": [event(now, "created", "customer", f"from mailbox {mailbox or 'ingest'}",
                             priority=f.priority, category=f.category)],
            "rating": None, "ratings": [], "reopen_count": 0, "auto_sent": 0,
            "failing_addresses": [], "mentioned_staff": sorted(ev.mentioned),
        }
        if follows:
            ticket["follows"] = follows
            ticket["events"].append(event(now, "follows", "customer", f"a follow-up of {follows}", ticket=follows))
        if ev.outcome.fired:
            ticket["events"].append(event(now, "rules", "rules",
                                          ", ".join(f"{s}/{n}" for s, n in ev.outcome.fired)))
        plan = Plan("new", tid, reason, new_ticket=ticket, record=tid,
                    meta={serial_key: serial, "rr_state": ev.outcome.rr_state})
        why = self._untrusted(msg)
        if why:
            plan.event(tid, event(now, "no_ack", "system", why))
        elif not ev.outcome.no_ack:
            plan.mails.append(Mail(tid, ev.outcome.ack_template or "ack", why="acknowledgement"))
        notified = set()
        if f.assignee:
            plan.mails.append(Mail(tid, "staff_notify", to=f.assignee, why="assignee"))
            notified.add(f.assignee)
            plan.assigned = f.assignee
        for to, template in ev.outcome.notify:
            if to not in notified:
                plan.mails.append(Mail(tid, template, to=to, why="rule notify"))
                notified.add(to)
        for to in ev.outcome.escalate:
            plan.mails.append(Mail(tid, "escalation", to=to, extra={"escalation": {"reason": "rule"}},
                                   why="rule escalate"))
        return plan

    # ---- customer replies ---------------------------------------------------------------------

    def _customer(self, msg: Message, r: Route, mailbox: str | None, now: datetime,
                  open_counts: dict[str, int]) -> Plan:
        tid = r.ticket_id
        assert tid is not None and r.event is not None
        t, archived = lookup(self.store, tid)
        assert t is not None
        plan = Plan("reply", tid, r.reason, unarchive=[tid] if archived else [], record=tid)
        why = self._untrusted(msg)
        if why:
            plan.update(tid, {"updated_at": iso(now)})
            plan.event(tid, event(now, "ignored", "system", f"reply {why}: no reopen, rating or mail"))
            plan.notes.append(f"not acted on: {why}")
            return plan
        ch = transition(t, r.event, "customer", now, why=_event_why(r), reopen_within_days=self.cfg.reopen_within_days)
        assert not isinstance(ch, Refusal), ch  # every customer event has an outcome in every status
        if ch.follow_up:
            return self._follow_up(msg, t, archived, ch, mailbox, now, open_counts)
        if r.rating is not None:  # always recorded; a later score replaces the earlier one
            ratings = [*t.get("ratings", []), {"at": iso(now), "score": r.rating}]
            plan.update(tid, {"rating": r.rating, "ratings": ratings})
            plan.event(tid, event(now, "rating", "customer", f"satisfaction {r.rating}/5", score=r.rating))
            plan.route = "rating"
        if ch.record_only:
            plan.notes.append(f"{r.event} on a {t.get('status')} ticket ({t.get('close_reason') or '-'}): "
                              "recorded only")
            return plan
        fields: dict = {"updated_at": iso(now)}
        parts = set(t.get("participants", []))
        parts.update(a for a in msg.cc if a not in self._support_addresses() and a != t.get("customer_email"))
        if sorted(parts) != sorted(t.get("participants", [])):
            fields["participants"] = sorted(parts)
        fields.update(ch.fields)
        plan.update(tid, fields)
        plan.event(tid, event(now, "customer_mail", "customer", "the customer wrote"))  # starts next-response
        for e in ch.events:
            plan.event(tid, e)
        merged = dict(t, **ch.fields)
        reopened = ch.fields.get("reopen_count") is not None
        if reopened:
            plan.route = "reopen"
            plan.mails.append(Mail(tid, "reopened", why="reopened by the customer"))
        elif ch.fields.get("status") == "closed":
            plan.mails.append(Mail(tid, "closed", why="rated: closed as confirmed"))
        elif self.cfg.outbound.ack_replies and r.event != "quote_only":
            plan.mails.append(Mail(tid, "ack", why="[outbound] ack_replies"))
        for who in ch.tell:
            for to in self._tell_targets(merged, who):
                kind = {"rating_bad": "low_rating", "customer_not_fixed": "not_fixed"}.get(r.event, "reply")
                if reopened and kind == "reply":
                    kind = "reopened"
                plan.mails.append(Mail(tid, "staff_update", to=to, why=f"tell {who}",
                                       extra={"update": {"kind": kind, "rating": r.rating,
                                                         "status": merged.get("status")}}))
        return plan

    def _follow_up(self, msg: Message, old: dict, archived: bool, ch: Change, mailbox: str | None,
                   now: datetime, open_counts: dict[str, int]) -> Plan:
        """A reply too long after the close: a new ticket, linked both ways to the old one."""
        plan = self._new(msg, mailbox, now, open_counts, reason=f"follow-up of {old['id']}", follows=old["id"])
        if plan.new_ticket is None:
            return plan
        new_id = plan.new_ticket["id"]
        if archived:
            plan.unarchive.append(old["id"])
        plan.update(old["id"], {"followed_by": [*old.get("followed_by", []), new_id]})
        for e in ch.events:
            plan.event(old["id"], dict(e, detail=f"{e['detail']}: {new_id}", ticket=new_id))
        plan.route = "new"
        return plan

    def _tell_targets(self, t: dict, who: str) -> list[str]:
        if who == "assignee":
            if t.get("assignee"):
                return [t["assignee"]]
            who = "lead"  # nobody owns it: its team's lead hears instead
        if who == "lead":
            leads = [s.email for s in self.cfg.staff if s.role == "lead" and t.get("team") in s.teams]
            return leads or escalation_targets(self.cfg, t)
        return []

    # ---- staff mail and commands ---------------------------------------------------------------

    def _staff(self, msg: Message, r: Route, now: datetime, open_counts: dict[str, int]) -> Plan:
        tid, who = r.ticket_id, msg.from_addr
        assert tid is not None
        t, archived = lookup(self.store, tid)
        assert t is not None
        # a staff command takes effect at most once: a processed Message-ID is never executed again
        # whatever its content, and the same mail under a new Message-ID is a replay too
        digest = staff_digest(msg, who, tid)
        cutoff = iso(now - timedelta(days=REPLAY_DAYS)) or ""
        recent = [d for d in t.get("staff_digests", []) if d[1] >= cutoff]
        if self.store.ticket_of_message_id(msg.message_id) or any(d[0] == digest for d in recent):
            plan = Plan("staff", tid, "a replay of staff mail already processed: not executed", seen="replay",
                        unarchive=[tid] if archived else [])
            plan.event(tid, event(now, "replay", who, "staff mail seen before (same Message-ID, or the same "
                                  "sender, reference, commands and text): ignored, nothing sent"))
            plan.notes.append("replay: nothing applied, nothing sent")
            return plan
        plan = Plan("staff", tid, r.reason, unarchive=[tid] if archived else [], record=tid, record_kind="staff")
        plan.update(tid, {"updated_at": iso(now)})
        how = authenticate(msg, who, tid, self.verify_id, self.cfg.outbound.trusted_authserv_ids)
        if how is None:
            expired = self.check_ref is not None and any(
                self.check_ref(mid, who) == (tid, "expired") for mid in [*msg.in_reply_to, *msg.references])
            if expired:  # a genuine but old reference: say so, and send a fresh one to answer instead
                days = self.cfg.outbound.staff_reference_days
                plan.event(tid, event(now, "command_error", who, f"the notification answered is older than "
                                      f"{days:g} days: nothing applied; a fresh notification was sent"))
                plan.mails.append(Mail(tid, "command_error", to=who, why="expired reference", extra={
                    "error": {"text": f"the notification you answered is older than {days:g} days, so your reply "
                                      "cannot prove it is yours: nothing was changed or sent. Answer the fresh "
                                      "notification that follows this mail."},
                    "commands": []}))
                plan.mails.append(Mail(tid, "staff_notify", to=who, why="fresh signed reference"))
                plan.update(tid, {"staff_digests": [*recent, [digest, iso(now)]]})
                plan.notes.append("expired reference: nothing applied")
                return plan
            plan.event(tid, event(now, "unauthenticated", who, f"staff mail from {who} not authenticated: "
                                  "commands ignored, nothing sent to the customer"))
            plan.notes.append("unauthenticated staff mail")
            return plan
        plan.update(tid, {"staff_digests": [*recent, [digest, iso(now)]]})
        parsed = parse_commands(msg.subject, self.cfg.prefix, t.get("subject") or "")
        errors = list(parsed.errors)
        member = self.cfg.staff_by_email()[who]
        work = dict(t)
        rr = dict(self.store.get_meta("rr_state", {}) or {})
        ctx = Context(self.cfg, self.store, work, who, now, rr, dict(open_counts))
        fields: dict = {}
        events: list[dict] = []
        mails: list[Mail] = []
        others: list[tuple[str, dict, list[dict]]] = []
        customer_template: str | None = None
        ordered = ([c for c in parsed.commands if c.name not in STATUS_COMMANDS]
                   + [c for c in parsed.commands if c.name in STATUS_COMMANDS])
        for c in ordered:
            denied = permitted(self.cfg.permissions, c.name, member.role)
            if denied:
                errors.append(f"[{c.raw}]: {denied}")
                continue
            ch = transition(work, c.name, who, now, why=f"[{c.raw}] by {who}",
                            reopen_within_days=self.cfg.reopen_within_days)
            if isinstance(ch, Refusal):
                errors.append(f"[{c.raw}]: {ch.message()}")
                continue
            spec = REGISTRY[c.name]
            eff = spec.handler(ctx, c)
            if eff.error:
                errors.append(f"[{c.raw}]: {eff.error}")
                continue
            events.append(event(now, "command", who, f"[{c.raw}]", command=c.name, arg=c.arg))
            for upd in (ch.fields, eff.fields):
                work.update(upd)
                fields.update(upd)
            events += ch.events + eff.events
            mails += eff.mails
            others += eff.others
            customer_template = spec.customer_template or customer_template
        if errors:
            plan.event(tid, event(now, "command_error", who, "; ".join(errors)))
            plan.mails.append(Mail(tid, "command_error", to=who, why="refused",
                                   extra={"error": {"text": "\n".join(errors)},
                                          "commands": [f"[{c.raw}]" for c in parsed.commands]}))
            plan.notes.append("refused: nothing applied, nothing sent to the customer")
            return plan
        text = (msg.new_text or "").strip()
        silent = any(REGISTRY[c.name].silent for c in parsed.commands)
        if customer_template is None and text:
            customer_template = "progress"
        if silent:
            customer_template = None
        if customer_template:
            if work.get("status") == t.get("status"):  # a public reply without a status command
                ch = transition(work, "staff_reply", who, now, why=f"answered by {who}")
                assert isinstance(ch, Change)
                work.update(ch.fields)
                fields.update(ch.fields)
                events += ch.events
            if not t.get("first_response_at"):
                fields["first_response_at"] = iso(now)
            events.append(event(now, "public_reply", who, f"{customer_template} mail to the customer"))
            mails.append(Mail(tid, customer_template, auto=False, quote_incoming=False, why=f"written by {who}",
                              extra={"reply": {"text": text},
                                     "staff": {"name": member.name, "email": who}}))
        plan.update(tid, fields)
        for e in events:
            plan.event(tid, e)
        for other, ofields, oevents in others:
            plan.update(other, ofields)
            if self.store.ticket(other) is None:
                plan.unarchive.append(other)
            for e in oevents:
                plan.event(other, e)
        if rr != (self.store.get_meta("rr_state", {}) or {}):
            plan.meta["rr_state"] = rr
        plan.mails += mails
        return plan

    # ---- helpers ------------------------------------------------------------------------------

    def _untrusted(self, msg: Message) -> str | None:
        """Why mail must not be answered (no backscatter to forged senders), or None."""
        if msg.is_spam:
            return "flagged as spam"
        ar = trusted_result(msg, self.cfg.outbound.trusted_authserv_ids)
        if ar is not None and ar.dmarc == "fail":
            return f"DMARC fail at {ar.authserv_id}"
        return None

    def _support_addresses(self) -> set[str]:
        return {mb.address.lower() for mb in self.cfg.mailboxes if mb.address}


def _event_why(r: Route) -> str:
    return {"customer_reply": "the customer answered", "customer_not_fixed": "the customer says it is not fixed",
            "rating_good": f"rated {r.rating}/5", "rating_bad": f"rated {r.rating}/5",
            "quote_only": "a reply with nothing but a quote"}.get(r.event or "", r.event or "")
