"""The processing stage: spooled raw mail -> parse -> intake (route) -> decide (plan) -> apply.

One `process()` call is one batch and one database commit: tickets, messages, outbox rows and the
mailbox checkpoint land together or not at all. A message that fails anywhere is quarantined with
its reason and never blocks the ones behind it. `apply` is the one place a plan takes effect.
"""

from __future__ import annotations

import logging
import os
import re
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from mailflow import slaclock
from mailflow.clock import SYSTEM, Clock, iso
from mailflow.config import Config
from mailflow.decide import Decider, Evaluation
from mailflow.intake import route
from mailflow.model import Message
from mailflow.outbox import Outbox
from mailflow.parse import ParseError, identity, parse_message
from mailflow.plan import Plan
from mailflow.privacy import mask, mask_addresses
from mailflow.render import Templates
from mailflow.rules import RuleSet
from mailflow.spool import Spool
from mailflow.storeapi import BatchAborted, StoreAPI
from mailflow.timers import TimerResult, Timers

log = logging.getLogger("mailflow.pipeline")

_SAFE_NAME = re.compile(r"[^\w.\-]+", re.UNICODE)

__all__ = ["Evaluation", "Incoming", "Pipeline", "Result", "read_paths"]


@dataclass
class Incoming:
    raw: bytes
    mailbox: str | None = None  # None for `ingest`
    uid: int | None = None
    spool_rel: str | None = None  # set once spooled


@dataclass
class Result:
    kind: str  # new | reply | staff | rating | reopen | spam | duplicate | own | auto | bounce | quarantined
    ticket_id: str | None = None
    reason: str = ""
    uid: int | None = None
    mailbox: str | None = None
    plan: Plan | None = None


class Pipeline:
    def __init__(self, cfg: Config, store: StoreAPI, rules: RuleSet, templates: Templates, clock: Clock = SYSTEM):
        self.cfg = cfg
        self.store = store
        self.rules = rules
        self.templates = templates
        self.clock = clock
        self.spool = Spool(store.dir / "spool")
        self.outbox = Outbox(cfg, store, templates, dry=lambda: self.dry, clock=clock)
        self.debug = cfg.log_level.lower() == "debug"
        self.dry = False  # simulate: decide everything, write no files (the batch is rolled back)
        self._open_counts: dict[str, int] | None = None
        self._touched: set[str] = set()  # tickets the batch changed: their timers run before the commit
        self._clocks: dict[str, tuple[datetime, dict]] = {}  # clocks apply computed in this batch
        # bench/compare.py measures intake with the SLA clocks off: not a setting for installations
        self.clocks_on = os.environ.get("MAILFLOW_BENCH_NO_CLOCKS") != "1"

    @property
    def decider(self) -> Decider:
        return Decider(self.cfg, self.store, self.rules, self.outbox.verify_id, self.outbox.check_ref)

    @property
    def last_eval(self) -> Evaluation | None:
        return self._last_eval

    _last_eval: Evaluation | None = None

    def _who(self, addr: str) -> str:
        return addr if self.debug else mask(addr)

    # ---- batch entry point ------------------------------------------------------------------

    def process(self, items: list[Incoming], checkpoint: tuple[str, dict] | None = None,
                beat: Callable[[], None] | None = None,
                fence: tuple[str, str, int] | None = None) -> list[Result]:
        """Spool (fsync) every message, then handle all in one commit together with the checkpoint.
        `beat` is called before each message (the mailbox loop's watchdog heartbeat: a long batch of
        slow mail is progress, not a hang). `fence` (lease, holder, token): several daemons share the
        database, and the batch commits only if this one still holds the mailbox's lease."""
        todo = [it for it in items if it.spool_rel is None and not self._known(it)]
        for it, ref in zip(todo, self.spool.write_many([it.raw for it in todo]), strict=True):
            it.spool_rel = ref
        results: list[Result] = []
        now = self.clock.now()
        with self.store.batch():
            if fence is not None:
                self.store.fence(*fence)
            self._open_counts = self.store.open_counts()
            self._touched = set()
            self.outbox.begin()
            try:
                for it in items:
                    if beat is not None:
                        beat()
                    results.append(self._one(it, now))
                self.run_timers(now, sorted(self._touched))  # "at once" rules, in the same commit
                if checkpoint is not None:
                    self.store.set_checkpoint(checkpoint[0], **checkpoint[1])
                self.outbox.commit_pending()  # the mail's bytes are durable before the rows are
            finally:
                self.outbox.abort_pending()
                self._open_counts = None
                self._touched = set()
        for r in results:
            if r.kind not in ("duplicate",):
                log.info("%s ticket=%s mailbox=%s uid=%s %s", r.kind, r.ticket_id or "-", r.mailbox or "-",
                         r.uid if r.uid is not None else "-", r.reason if self.debug else mask_addresses(r.reason))
        return results

    def _known(self, it: Incoming) -> bool:
        """Already processed (a repeat ingest): nothing of it is written again. Mail fetched above a
        mailbox's checkpoint is new by definition (a replay after a crash re-spools at most a batch)."""
        if it.uid is not None:
            return False
        mid, h = identity(it.raw)
        with self.store.mutex:
            self.store.refresh()
            return self.store.already_seen(mid, h)

    def _one(self, it: Incoming, now: datetime) -> Result:
        try:
            msg = parse_message(it.raw, prefix=self.cfg.prefix)
        except ParseError as e:
            return self._quarantine(it, f"cannot parse: {e}", now)
        except Exception as e:  # parse promises not to raise; if it does, keep the mail anyway
            return self._quarantine(it, f"parser crashed: {type(e).__name__}: {e}", now)
        try:
            with self.store.savepoint():  # half a ticket never stays behind
                return self.handle(msg, it, now)
        except BatchAborted:  # a deadlock, a lost connection or lease: the whole batch is retried
            raise
        except Exception as e:
            log.error("processing failed mailbox=%s uid=%s: %s", it.mailbox, it.uid, e)
            log.debug("%s", traceback.format_exc())
            return self._quarantine(it, f"{type(e).__name__}: {e}", now)

    def _quarantine(self, it: Incoming, reason: str, now: datetime, status: str = "held") -> Result:
        h = identity(it.raw)[1]
        q = self.store.quarantine_twin(it.spool_rel, h)  # a replayed batch (crash, resync, ingest) adds no twin
        if q is not None:
            return Result("quarantined", None, f"quarantine id {q['qid']}: {reason}", it.uid, it.mailbox)
        if it.spool_rel is None:  # skipped as known, yet it must be kept: spool it now
            it.spool_rel = self.spool.write_many([it.raw])[0]
        qid = self.store.add_quarantine({
            "at": iso(now), "reason": reason, "spool": it.spool_rel, "mailbox": it.mailbox,
            "uid": it.uid, "status": status, "size": len(it.raw), "hash": h,
        })
        return Result("quarantined", None, f"quarantine id {qid}: {reason}", it.uid, it.mailbox)

    # ---- one message: decide, then apply -------------------------------------------------------

    def decide(self, msg: Message, it: Incoming, now: datetime, ignore_seen: bool = False) -> Plan:
        """What handling `msg` would do, changing nothing (`simulate` shows exactly this)."""
        r = route(msg, self.store, self.cfg, ignore_seen=ignore_seen)
        d = self.decider
        counts = self._open_counts if self._open_counts is not None else self.store.open_counts()
        plan = d.decide(msg, r, it.mailbox, now, counts)
        self._last_eval = d.last_eval
        return plan

    def handle(self, msg: Message, it: Incoming, now: datetime | None = None) -> Result:
        now = now or self.clock.now()
        self._last_eval = None
        plan = self.decide(msg, it, now)
        self.apply(plan, msg, it, now)
        return Result(plan.route, plan.ticket_id, plan.reason, it.uid, it.mailbox, plan)

    def apply(self, plan: Plan, msg: Message | None, it: Incoming | None, now: datetime) -> None:
        """Carry out a plan inside the current batch (the one place where handling writes).
        `msg`/`it` are None for the scheduler's plans (no incoming mail)."""
        st = self.store
        if plan.route == "duplicate":
            return
        for tid in plan.unarchive:
            if st.unarchive(tid) is not None:
                st.append_events(tid, [{"at": iso(now), "kind": "unarchived", "actor": "system",
                                        "detail": "brought back from the archive by new mail"}])
        touched: set[str] = set()
        if plan.new_ticket is not None:
            st.add_ticket(dict(plan.new_ticket))
            touched.add(plan.new_ticket["id"])
        if plan.record and msg is not None and it is not None:
            self._add_message(msg, it, plan.record, plan.record_kind, now)
        for tid, fields in plan.updates:
            if st.ticket(tid) is not None:
                st.update_ticket(tid, fields)
                touched.add(tid)
        by_ticket: dict[str, list[dict]] = {}
        for tid, ev in plan.events:
            by_ticket.setdefault(tid, []).append(ev)
        for tid, evs in by_ticket.items():
            st.append_events(tid, evs)
            touched.add(tid)
        for tid in touched if self.clocks_on else ():  # due times follow every change (priority, answers...)
            t = st.ticket(tid)
            if t is not None:
                clocks = slaclock.clocks_of(t, self.cfg, now)
                self._clocks[tid] = (now, clocks)  # the batch's timers reuse them
                st.update_ticket(tid, {"sla": slaclock.sla_record(t, self.cfg, now, clocks)})
        self._touched |= touched
        for key, value in plan.meta.items():
            st.set_meta(key, value)
        if plan.seen and msg is not None:
            st.mark_seen(msg.message_id, msg.content_hash, plan.seen, now)
        if plan.hold and it is not None:
            self._quarantine(it, plan.hold, now, status="spam")
        for m in plan.mails:
            t = st.ticket(m.ticket_id)
            if t is None:
                continue
            extra = m.extra
            if msg is None and "message" not in extra:  # a timer's mail quotes the customer's last words
                extra = {**extra, "message": self._last_customer_message(m.ticket_id)}
            if m.staff:
                self.outbox.notify_staff(t, m.to or "", msg=msg, now=now, template=m.template, extra=extra)
            elif self.outbox.enqueue(t, m.template, msg=msg if m.quote_incoming else None, auto=m.auto, now=now,
                                     extra=extra, in_reply_to=None if m.quote_incoming and msg is not None
                                     else self._last_customer_message_id(m.ticket_id)):
                # the customer heard from us: the progress-update clock starts over
                t = st.ticket(m.ticket_id) or t
                st.update_ticket(m.ticket_id, {"last_public_at": iso(now),
                                               "public_updates": int(t.get("public_updates") or 0) + 1})
        if plan.assigned and self._open_counts is not None:  # last: nothing after this can fail
            self._open_counts[plan.assigned] = self._open_counts.get(plan.assigned, 0) + 1

    # ---- timers (SLA reminders, escalations, customer updates, auto-close) ----------------------

    @property
    def timers(self) -> Timers:
        if self._timers is None or self._timers.rules is not self.rules:
            self._timers = Timers(self.cfg, self.rules)
        return self._timers

    _timers: Timers | None = None

    def run_timers(self, now: datetime, tids: list[str] | None = None,
                   fence: tuple[str, str, int] | None = None) -> list[TimerResult]:
        """Apply what time has made due, for `tids` (the tickets a batch changed) or for every ticket
        whose wake-up time has come; each ticket in its own savepoint, inside the current batch (or a
        new one). Every ticket looked at gets its next wake-up time. `fence`: as in `process` (the
        scheduler's lease)."""
        out: list[TimerResult] = []
        if not self.clocks_on:
            return out
        with self.store.batch():
            if fence is not None:
                self.store.fence(*fence)
            pairs = [(tid, t) for tid in (self.store.due_tickets(now) if tids is None else tids)
                     if (t := self.store.ticket(tid)) is not None]
            cached = {tid: c for tid, (at, c) in self._clocks.items() if at == now}
            first = self.timers.decide_many([(t, cached.get(tid)) for tid, t in pairs], now) if pairs else []
            for (tid, t), res in zip(pairs, first, strict=True):
                try:
                    with self.store.savepoint():
                        for _round in range(4):  # a firing may change what the rules see (priority...)
                            if isinstance(res, Exception):
                                raise res
                            if not (res.plan.updates or res.plan.events or res.plan.mails):
                                break
                            saved, self._touched = self._touched, set()
                            try:
                                self.apply(res.plan, None, None, now)
                            finally:
                                self._touched = saved
                            out.append(res)
                            t = self.store.ticket(tid) or t
                            res = self.timers.decide(t, now)
                        self.store.update_ticket(tid, {"wake_at": iso(res.wake_at) if res.wake_at else None})
                except BatchAborted:
                    raise
                except Exception as e:  # one ticket's broken rule or template never stops the others
                    log.error("timers failed ticket=%s: %s: %s", tid, type(e).__name__, e)
                    log.debug("%s", traceback.format_exc())
                    self.store.update_ticket(tid, {"wake_at": iso(now + timedelta(minutes=15))})
            self._clocks.clear()
        for r in out:
            if r.fired or r.plan.route == "auto_close":
                log.info("timers ticket=%s %s", r.plan.ticket_id, ", ".join(r.fired) or r.plan.route)
        return out

    # ---- helpers ------------------------------------------------------------------------------

    def _customer_messages(self, tid: str) -> list[dict]:
        return [m for m in self.store.messages_of(tid) if m["direction"] == "in" and m.get("kind") == "customer"]

    def _last_customer_message_id(self, tid: str) -> str | None:
        ins = self._customer_messages(tid)
        return ins[-1]["message_id"] if ins else None

    def _last_customer_message(self, tid: str) -> dict:
        ins = [m for m in self._customer_messages(tid) if (m.get("text") or "").strip()]
        m = ins[-1] if ins else {}
        return {"text": m.get("text", ""), "from": m.get("from", ""), "subject": m.get("subject", "")}

    def _add_message(self, msg: Message, it: Incoming, tid: str, kind: str, now: datetime) -> None:
        atts = []
        for i, a in enumerate(msg.attachments):
            entry = {"filename": a.filename, "content_type": a.content_type, "size": a.size, "path": None}
            if a.size <= self.cfg.attachment_max_bytes and not a.kept:
                entry["skipped"] = "too large to decode while parsing: the raw mail in the spool has it"
            elif a.size <= self.cfg.attachment_max_bytes and not self.dry:
                d = self.store.dir / "attachments" / tid
                d.mkdir(parents=True, exist_ok=True)
                name = _SAFE_NAME.sub("_", a.filename or f"part{i}")[:120] or f"part{i}"
                p = d / f"{msg.content_hash[:8]}-{i}-{name}"
                p.write_bytes(a.data)
                entry["path"] = str(p.relative_to(self.store.dir))
            elif a.size > self.cfg.attachment_max_bytes:
                entry["skipped"] = f"over the {self.cfg.attachment_max_bytes}-byte cap"
            atts.append(entry)
        self.store.add_message({
            "ticket_id": tid, "message_id": msg.message_id, "hash": msg.content_hash,
            "direction": "in", "kind": kind, "from": msg.from_addr, "from_name": msg.from_name,
            "to": msg.to, "cc": msg.cc, "subject": msg.subject,
            "date": iso(msg.date) if msg.date else iso(now), "received_at": iso(now),
            "text": msg.new_text, "language": msg.language, "spool": it.spool_rel,
            "mailbox": it.mailbox, "uid": it.uid, "attachments": atts, "quote_rule": msg.quote_rule,
        })


def iter_paths(paths: list[Path]) -> Iterator[tuple[str, bytes]]:
    """.eml files, mbox files and Maildir folders -> (label, raw bytes) in a stable order, one mail at
    a time (a migration's 10 GB mbox never sits in memory)."""
    import mailbox as mbx

    for p in paths:
        if p.is_dir() and (p / "cur").is_dir() and (p / "new").is_dir():
            md = mbx.Maildir(str(p), factory=None, create=False)
            for key in sorted(md.keys()):
                yield f"{p}:{key}", md.get_bytes(key)
        elif p.is_dir():
            for q in sorted(p.rglob("*.eml")):
                yield str(q), q.read_bytes()
        else:
            with open(p, "rb") as f:
                head = f.read(5)
            if head == b"From ":
                mb = mbx.mbox(str(p), factory=None, create=False)
                for key in mb.keys():
                    yield f"{p}:{key}", mb.get_bytes(key)
            else:
                yield str(p), p.read_bytes()


def count_paths(paths: list[Path]) -> int | None:
    """How many mails `iter_paths` will give (for a progress bar), without reading them; None for mbox
    files (counting them means reading them)."""
    n = 0
    for p in paths:
        if p.is_dir() and (p / "cur").is_dir() and (p / "new").is_dir():
            n += sum(1 for sub in ("cur", "new") for q in (p / sub).iterdir() if not q.name.startswith("."))
        elif p.is_dir():
            n += sum(1 for _ in p.rglob("*.eml"))
        else:
            with open(p, "rb") as f:
                if f.read(5) == b"From ":
                    return None
            n += 1
    return n


def read_paths(paths: list[Path]) -> list[tuple[str, bytes]]:
    return list(iter_paths(paths))
