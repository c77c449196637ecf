"""Decisions -> rendered mail in a persistent outbox, and the outbox -> SMTP.

A mail is an outbox row (plus its .eml file, fsynced) in the same commit as the ticket change that
caused it, before it is ever a network call. The sender appends each result to a journal (one
fsync per chunk, never a database rewrite per mail) and folds the journal into the database once
per flush. Delivery is at-least-once with a stable Message-ID per row.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import random
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from mailflow.clock import SYSTEM, Clock, iso, parse_iso
from mailflow.config import Config, SmtpConfig
from mailflow.model import Message
from mailflow.privacy import mask_addresses
from mailflow.render import CATEGORY_LABELS, PRIORITY_LABELS, STATUS_LABELS, Templates, build_mail
from mailflow.spool import Segments
from mailflow.storeapi import StoreAPI

log = logging.getLogger("mailflow.outbox")


CLAIM_ROWS = 200  # outbox rows one sender claims at a time (several daemons)
# a claim outlives its sender's crash only until that daemon's lease runs out; this bounds it for a
# sender that is alive but wedged (its watchdog restarts it long before)
CLAIM_SECONDS = 3600.0

LOOP_MINUTES = 10  # the same subject or words again this soon (mail time) ...
LOOP_REPEATS = 2  # ... after this many automatic answers: a loop, not a customer


def mail_time(msg: Message | None, now: datetime) -> datetime:
    """The mail's own time for the flood cap: its Date, but never after it arrived (a backlog after an
    outage, or a migration of old mail, keeps the hours the customer wrote in; a forged Date in the
    past only reaches the processing-time backstop)."""
    d = msg.date if msg is not None else None
    return now if d is None else min(d, now)


def _loop_keys(msg: Message | None) -> tuple[str, str]:
    """(normalised subject, hash of the words) that a loop repeats; "" when unknown."""
    if msg is None:
        return "", ""
    subj = " ".join((msg.clean_subject or msg.subject or "").split()).casefold()[:200]
    words = " ".join((msg.new_text or "").split())
    return subj, (hashlib.sha256(words.encode("utf-8", "surrogatepass")).hexdigest()[:16] if words else "")


def _entry(e) -> tuple[str, str, str, str]:
    """(mail time, processing time, subject key, words key) of one capped-mail record (an older
    record is just the processing time)."""
    if isinstance(e, str):
        return e, e, "", ""
    return (str(e[0]), str(e[1]), str(e[2]), str(e[3])) if len(e) >= 4 else (str(e[0]), str(e[0]), "", "")


class OutboxError(Exception):
    pass


@dataclass
class FlushStats:
    sent: int = 0
    temp: int = 0
    perm: int = 0
    queued: int = 0  # still queued after the flush
    no_smtp: int = 0


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if not n:
            return out


def _secret_key(cfg: Config, data_dir: Path) -> bytes:
    """The HMAC key for minted Message-IDs: from config, else generated once into the data dir."""
    if any((cfg.outbound.hmac_key.value, cfg.outbound.hmac_key.env, cfg.outbound.hmac_key.file)):
        return cfg.outbound.hmac_key.get().encode()
    p = data_dir / "secret.key"
    if not p.exists():
        # two daemons starting at once on one data directory (PostgreSQL) must agree on one key:
        # each writes its own temporary file and links it into place; only the first link succeeds
        tmp = p.with_name(f"secret.key.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, p)
            except FileExistsError:
                pass
        finally:
            tmp.unlink(missing_ok=True)
    return p.read_text().strip().encode()


class Outbox:
    def __init__(self, cfg: Config, store: StoreAPI, templates: Templates, dry=lambda: False, clock: Clock = SYSTEM):
        self.cfg = cfg
        self.clock = clock
        self.dry = dry
        self.store = store
        self.templates = templates
        self.dir = store.dir / "outbox"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.journal = store.outbox_journal()  # TinyDB: outbox/journal.log; PG: a table any daemon folds
        self.segments = Segments(self.dir, ".out")
        self._pending: list[bytes] | None = None  # mail of the batch being built, written at its end
        self._pending_name = ""
        self._pending_size = 0
        self.key = _secret_key(cfg, store.dir)
        # several daemons share the database: rows are claimed by this id before they are sent
        # (`claim_outbox`, FOR UPDATE SKIP LOCKED), so no two senders send the same row
        self.claimer: str | None = None

    # ---- message ids ------------------------------------------------------------------------

    def _domain(self, mailbox: str | None) -> str:
        mb = self.cfg.mailbox(mailbox) if mailbox else None
        addr = mb.address if mb and mb.address else (self.cfg.mailboxes[0].address if self.cfg.mailboxes
                                                     and self.cfg.mailboxes[0].address else "")
        return addr.partition("@")[2] or "mailflow.invalid"

    def _mac(self, tid: str, recipient: str, rand: str) -> str:
        return hmac.new(self.key, f"{tid}|{recipient.lower()}|{rand}".encode(), hashlib.sha256).hexdigest()[:16]

    def mint_id(self, tid: str, recipient: str, mailbox: str | None, now: datetime | None = None) -> str:
        """`<tid>.<minute>.<rand>.<hmac>@domain`: only recipients of our mail can quote a valid one,
        and the signed minute lets a reference expire (`[outbound] staff_reference_days`)."""
        minute = _b36(int((now or self.clock.now()).timestamp() // 60))
        rand = secrets.token_hex(6)
        return f"{tid}.{minute}.{rand}.{self._mac(tid, recipient, minute + '.' + rand)}@{self._domain(mailbox)}"

    def check_ref(self, message_id: str, recipient: str, now: datetime | None = None) -> tuple[str | None, str]:
        """(ticket id, "ok" | "expired") for a Message-ID mailflow minted for `recipient`, else
        (None, "bad"). References of the old unsigned-time form count as expired."""
        parts = message_id.partition("@")[0].split(".")
        if len(parts) == 3:  # before references carried their minting time: genuine but ageless
            tid, rand, mac = parts
            return (tid, "expired") if hmac.compare_digest(self._mac(tid, recipient, rand), mac) else (None, "bad")
        if len(parts) != 4:
            return None, "bad"
        tid, minute, rand, mac = parts
        if not hmac.compare_digest(self._mac(tid, recipient, minute + "." + rand), mac):
            return None, "bad"
        try:
            minted = datetime.fromtimestamp(int(minute, 36) * 60, UTC)
        except ValueError:
            return None, "bad"
        age = (now or self.clock.now()) - minted
        return tid, "ok" if age <= timedelta(days=self.cfg.outbound.staff_reference_days) else "expired"

    def verify_id(self, message_id: str, recipient: str) -> str | None:
        """The ticket id a minted Message-ID was made for `recipient`, if genuine and not expired."""
        tid, state = self.check_ref(message_id, recipient)
        return tid if state == "ok" else None

    # ---- context ----------------------------------------------------------------------------

    def context(self, ticket: dict, locale: str, msg: Message | None, extra: dict | None = None) -> dict:
        tz = ZoneInfo(self.cfg.timezone)

        def local(s: str | None) -> datetime | None:
            d = parse_iso(s)
            return d.astimezone(tz) if d else None

        sla = ticket.get("sla", {})
        staff = self.cfg.staff_by_email()
        assignee = ticket.get("assignee")
        ctx = {
            "company": {"name": self.cfg.company_name},
            "ticket": {
                **{k: ticket.get(k) for k in ("id", "subject", "status", "category", "priority", "team",
                                              "assignee", "customer_email", "customer_name", "locale")},
                "tags": list(ticket.get("tags", [])),
                "priority_label": PRIORITY_LABELS.get(locale, PRIORITY_LABELS["en"]).get(
                    ticket.get("priority") or "normal", ticket.get("priority")),
                "category_label": CATEGORY_LABELS.get(locale, CATEGORY_LABELS["en"]).get(
                    ticket.get("category") or "", ticket.get("category") or ""),
                "status_label": STATUS_LABELS.get(locale, STATUS_LABELS["en"]).get(
                    ticket.get("status") or "", ticket.get("status") or ""),
                "assignee_name": staff[assignee].name if assignee in staff else (assignee or ""),
                "created_at": local(ticket.get("created_at")),
            },
            "sla": {
                "first_response_due": local(sla.get("first_response_due")),
                "resolution_due": local(sla.get("resolution_due")),
                "first_response_hours": sla.get("first_response_hours"),
                "resolution_hours": sla.get("resolution_hours"),
            },
            "message": {
                "text": msg.new_text if msg else "",
                "from": msg.from_addr if msg else "",
                "subject": msg.subject if msg else "",
            },
            "staff": {"name": "", "email": ""},
            "reply": {"text": ""},
            "error": {"text": ""},
            "commands": [],
            "escalation": {"reason": ""},
            "update": {"kind": "", "rating": None, "status": ticket.get("status")},
        }
        for k, v in (extra or {}).items():
            ctx[k] = v
        return ctx

    # ---- enqueue ----------------------------------------------------------------------------

    def _capped(self, ticket: dict, to: str, now: datetime, msg: Message | None = None) -> str | None:
        """Flood protection for automatic mail to one customer address (the policy, in the README):

        * a loop answers itself: the same subject or the same words from the address again within
          LOOP_MINUTES of mail time, after LOOP_REPEATS automatic answers to them -> stop;
        * at most `max_auto_per_hour` automatic mails per hour of the *mails' own time* (their Date,
          bounded by when they arrived): a backlog of requests written over a day is answered
          request by request even if it arrives in one minute;
        * a backstop of `max_auto_burst` per hour of processing time (forged Dates cannot open the
          gate), and `max_auto_per_ticket` per ticket.
        Staff and the escalation chain are never capped (they reply to the signed Message-ID)."""
        ob = self.cfg.outbound
        if to in self.cfg.staff_by_email() or to in {a.lower() for a in self.cfg.escalation_chain}:
            return None
        if ticket.get("auto_sent", 0) >= ob.max_auto_per_ticket:
            return f"per-ticket cap of {ob.max_auto_per_ticket} automatic mails reached"
        when = mail_time(msg, now)
        subj, words = _loop_keys(msg)
        key = f"auto:{to}"
        entries = [_entry(e) for e in (self.store.get_meta(key, []) or [])]
        entries = [e for e in entries if e[0] >= (iso(min(when, now) - timedelta(hours=1)) or "")]
        w_iso, n_iso = iso(when) or "", iso(now) or ""
        loop_from = iso(when - timedelta(minutes=LOOP_MINUTES)) or ""
        same = [e for e in entries if loop_from <= e[0] <= w_iso and ((subj and e[2] == subj) or (words and e[3] == words))]
        if len(same) >= LOOP_REPEATS:
            return (f"looks like a mail loop: the same subject or text from this address again within "
                    f"{LOOP_MINUTES} minutes, after {LOOP_REPEATS} automatic answers")
        hour_from = iso(when - timedelta(hours=1)) or ""
        if sum(1 for e in entries if hour_from < e[0] <= w_iso) >= ob.max_auto_per_hour:
            return f"cap of {ob.max_auto_per_hour} automatic mails per hour to this address reached"
        burst_from = iso(now - timedelta(hours=1)) or ""
        if sum(1 for e in entries if e[1] > burst_from) >= ob.max_auto_burst:
            return f"backstop of {ob.max_auto_burst} automatic mails per hour of processing to this address reached"
        entries.append((w_iso, n_iso, subj, words))
        self.store.set_meta(key, [list(e) for e in entries])
        return None

    def enqueue(self, ticket: dict, template: str, *, msg: Message | None, auto: bool, now: datetime,
                to: list[str] | None = None, extra: dict | None = None, locale: str | None = None,
                in_reply_to: str | None = None) -> str | None:
        """Render one mail to the customer (or `to`) and queue it; returns the outbox row key."""
        recipients = [a.lower() for a in (to or [ticket["customer_email"]])]
        recipients = [a for a in recipients if a and a not in ticket.get("failing_addresses", [])] or recipients
        tid = ticket["id"]
        if auto:
            why = self._capped(ticket, recipients[0], now, msg)
            if why:
                self.store.add_event(tid, "not_sent", f"{template} to {recipients[0]}: {why}", at=now)
                log.warning("auto mail suppressed ticket=%s template=%s: %s", tid, template, why)
                return None
        locale = locale or ticket.get("locale") or self.cfg.default_locale
        rendered = self.templates.render(locale, template, self.context(ticket, locale, msg, extra))
        mb = self.cfg.mailbox(ticket.get("mailbox") or "") or (self.cfg.mailboxes[0] if self.cfg.mailboxes else None)
        from_addr = (mb.address if mb and mb.address else f"support@{self._domain(None)}")
        from_name = (mb.from_name if mb and mb.from_name else self.cfg.company_name)
        mid = self.mint_id(tid, recipients[0], ticket.get("mailbox"), now)
        refs: list[str] = [in_reply_to] if in_reply_to else []
        if msg is not None:
            refs = [*msg.references[-10:], msg.message_id]
            in_reply_to = msg.message_id
        data = build_mail(
            rendered, from_addr=from_addr, from_name=from_name, to=recipients, reply_to=from_addr,
            message_id=mid, in_reply_to=in_reply_to, references=refs,
            auto_submitted="auto-generated" if to is not None else "auto-replied",  # staff: generated
            extra_headers={"X-Mailflow-Ticket": tid, "X-Mailflow-Template": template}, date=now,
        )
        ref = "db" if self.store.mail_in_db else self._store_mail(data)
        row = {
            "ticket_id": tid, "template": template, "message_id": mid, "to": recipients,
            "sender": from_addr, "mailbox": ticket.get("mailbox"), "subject": rendered.subject,
            "status": "queued", "auto": auto, "attempts": 0, "created_at": iso(now),
            "next_attempt_at": iso(now), "last_error": None, "sent_at": None, "file": ref,
        }
        key = self.store.add_outbox(row, data if self.store.mail_in_db and not self.dry() else None)
        self.store.add_message({
            "ticket_id": tid, "message_id": mid, "hash": "", "direction": "out", "kind": template,
            "from": from_addr, "to": recipients, "cc": [], "subject": rendered.subject, "date": iso(now),
            "received_at": iso(now), "text": rendered.text, "language": locale, "spool": None,
            "mailbox": ticket.get("mailbox"), "uid": None, "attachments": [], "outbox": key,
        })
        if auto:
            t = self.store.ticket(tid)
            if t is not None:
                self.store.update_ticket(tid, {"auto_sent": t.get("auto_sent", 0) + 1})
        return key

    # ---- the mail's bytes: one segment file per batch ----------------------------------------

    def begin(self) -> None:
        """Collect the mail of one batch; `commit_pending` writes it (one file, one fsync)."""
        self._pending, self._pending_name, self._pending_size = [], self.segments.new_name(), 0

    def _store_mail(self, data: bytes) -> str:
        if self.dry():
            return "dry-run"
        if self._pending is None:
            return self.segments.write([data])[0]
        ref = f"{self._pending_name}:{self._pending_size}:{len(data)}"
        self._pending.append(data)
        self._pending_size += len(data)
        return ref

    def commit_pending(self) -> None:
        """Make the batch's mail durable; called inside the batch, before the database commit."""
        if self._pending:
            self.segments.write(self._pending, self._pending_name)
        self._pending = None

    def abort_pending(self) -> None:
        self._pending = None

    def notify_staff(self, ticket: dict, to: str, *, msg: Message | None, now: datetime,
                     template: str = "staff_notify", extra: dict | None = None) -> str | None:
        staff = self.cfg.staff_by_email().get(to.lower())
        ctx = {"staff": {"name": staff.name if staff else to, "email": to}, **(extra or {})}
        return self.enqueue(ticket, template, msg=msg, auto=True, now=now, to=[to], extra=ctx,
                            locale=self.cfg.default_locale)

    # ---- sending ----------------------------------------------------------------------------

    def _journal_state(self) -> dict[str, dict]:
        return self.journal.read()  # a torn last line from a crash is ignored: that mail is simply resent

    def _append_journal(self, entries: list[dict]) -> None:
        self.journal.append(entries)

    def read_mail(self, k: str, row: dict) -> bytes:
        """The bytes of a queued row (the database's, or its segment file's); OSError if gone."""
        if self.store.mail_in_db and (row.get("file") or "db") == "db":
            data = self.store.outbox_data(k)
            if data is None:
                raise OSError(f"outbox row {k} has no mail")
            return data
        return self.segments.read(row["file"])

    def fold_journal(self) -> None:
        """Apply journaled results to the database in one commit, then empty the journal. PostgreSQL:
        the results are taken (deleted) inside that commit, so two daemons folding at once never
        apply one result twice."""
        take = getattr(self.journal, "take", None)
        state = {} if take is not None else self._journal_state()
        if not state and (take is None or not self.journal.stamp()):
            return
        now = self.clock.now()
        ob = self.cfg.outbound
        with self.store.batch():
            if take is not None:
                state = take()
            for k, e in state.items():
                row = self.store.outbox_row(k)
                if row is None or row["status"] != "queued":
                    continue
                tid, attempts = row["ticket_id"], row["attempts"] + 1
                if e["status"] == "sent":
                    self.store.update_outbox(k, {"status": "sent", "sent_at": e["at"], "last_error": None,
                                                 "attempts": attempts})
                    for rcpt, why in (e.get("refused") or {}).items():
                        self._record_failure(tid, rcpt, why)
                    for rcpt, why in (e.get("deferred") or {}).items():
                        self.store.add_event(tid, "send_deferred", f"{rcpt}: {why} (other recipients accepted)",
                                             at=self.clock.now())
                elif e["status"] == "perm":
                    self.store.update_outbox(k, {"status": "failed", "last_error": e["detail"],
                                                 "attempts": attempts})
                    self._record_failure(tid, ", ".join(row["to"]), e["detail"])
                else:
                    delay = min(ob.backoff_max, ob.backoff_initial * 2.0 ** min(attempts - 1, 30))
                    delay *= random.uniform(0.8, 1.2)
                    created = parse_iso(row["created_at"]) or now
                    if now - created > timedelta(hours=ob.retry_for_hours):
                        self.store.update_outbox(k, {"status": "failed", "attempts": attempts,
                                                     "last_error": f"gave up after {attempts} tries: {e['detail']}"})
                        self._record_failure(tid, ", ".join(row["to"]), f"gave up: {e['detail']}")
                    else:
                        self.store.update_outbox(k, {"attempts": attempts, "last_error": e["detail"],
                                                     "next_attempt_at": iso(now + timedelta(seconds=delay))})
            if getattr(self.journal, "in_batch", False) and take is None:
                self.journal.clear(state)  # the folded results go in the same commit
        # committed: the journal is spent (a crash before this line refolds harmlessly: rows that
        # are no longer queued are skipped)
        if not getattr(self.journal, "in_batch", False):
            self.journal.clear(state)

    def release_claims(self) -> None:
        """A stopping sender gives back the rows it claimed but did not send."""
        if self.claimer is not None:
            try:
                self.store.release_claims(self.claimer)
            except Exception as e:  # noqa: BLE001 - the claims run out with our daemon lease
                log.warning("cannot give back claimed outbox rows: %s", e)

    def _record_failure(self, tid: str, rcpt: str, why: str) -> None:
        t = self.store.ticket(tid)
        if t is None:
            return
        self.store.add_event(tid, "send_failed", f"{rcpt}: {why}", at=self.clock.now())
        log.warning("delivery failed ticket=%s: %s", tid, mask_addresses(why))

    def due(self, now: datetime | None = None) -> list[tuple[str, dict]]:
        """Queued rows whose time has come; under the store's lock so a batch still being built
        (rows not yet committed) is never seen, let alone sent."""
        now_s = iso(now or self.clock.now()) or ""
        if self.claimer is not None:
            return self.store.claim_outbox(now_s, self.claimer, CLAIM_ROWS, CLAIM_SECONDS)
        done = self._journal_state()
        with self.store.mutex:
            self.store.refresh()
            return [(k, r) for k, r in self.store.outbox_due(now_s) if k not in done]

    def pending_count(self) -> int:
        done = self._journal_state()
        with self.store.mutex:
            self.store.refresh()
            return self.store.outbox_counts().get("queued", 0) - sum(
                1 for k in done if (self.store.outbox_row(k) or {}).get("status") == "queued")

    async def flush(self, chunk: int = 50, now: datetime | None = None) -> FlushStats:
        """Try every due row once over one connection per SMTP server; journal each result."""
        stats = FlushStats()
        tried: set[str] = set()
        while True:  # one pass of due rows; with claims, until no new row can be claimed
            rows = [(k, r) for k, r in self.due(now) if k not in tried]
            if not rows:
                break
            tried.update(k for k, _r in rows)
            await self._send_rows(rows, chunk, stats)
            if self.claimer is None:
                break
        self.fold_journal()
        stats.queued = self.pending_count()
        return stats

    async def _send_rows(self, due: list[tuple[str, dict]], chunk: int, stats: FlushStats) -> None:
        from mailflow.send import OutMail, SendResult, SmtpSender

        groups: dict[int, tuple[SmtpConfig, list[tuple[str, dict]]]] = {}
        for k, row in due:
            smtp = self.cfg.smtp_for(row.get("mailbox"))
            if smtp is None:
                stats.no_smtp += 1
                continue
            groups.setdefault(id(smtp), (smtp, []))[1].append((k, row))
        for smtp, rows in groups.values():
            sender = SmtpSender(smtp)
            try:
                mails = []
                for k, row in rows:
                    try:
                        data = self.read_mail(k, row)
                    except OSError as e:
                        self._append_journal([{"row": k, "status": "perm", "at": iso(self.clock.now()),
                                               "detail": f"outbox file missing: {e}"}])
                        stats.perm += 1
                        continue
                    mails.append(OutMail(k, row["sender"], row["to"], data))

                def journal(r, stats=stats) -> None:
                    # one fsynced line per result before the next mail goes out: a crash re-sends at
                    # most the one mail the server accepted but the journal had not yet recorded
                    self._append_journal([{"row": r.key, "status": r.status, "at": iso(self.clock.now()),
                                           "detail": r.detail, "refused": r.refused,
                                           "deferred": getattr(r, "deferred", {})}])
                    setattr(stats, r.status, getattr(stats, r.status) + 1)
                    if r.status != "sent":
                        log.info("send %s row=%s: %s", r.status, r.key, mask_addresses(r.detail))

                for i in range(0, len(mails), chunk):  # chunks bound how long one step holds the lock
                    got = await sender.send_many(mails[i:i + chunk], on_result=journal)
                    if got and all(r.status == "temp" and r.detail.startswith("cannot connect") for r in got):
                        for m in mails[i + chunk:]:  # the server is away: the rest waits for the backoff
                            journal(SendResult(m.key, "temp", got[-1].detail))
                        break
            finally:
                await sender.close()

    def housekeeping(self, archive_days: float | None = None, now: datetime | None = None, *,
                     refresh_reports: bool = False) -> tuple[int, int]:
        """Archive long-closed tickets and drop week-old sent rows; (archived, pruned). With
        `refresh_reports` (the daemon's, every HOUSEKEEPING_EVERY; not `run --once`, which cron may run
        every minute) the kept reports whose days the archive touched are made again."""
        days = self.cfg.archive_after_days if archive_days is None else archive_days
        with self.store.batch():
            archived = self.store.archive(days, now=now, cfg=self.cfg)
            dropped = self.store.prune(now=now)
            still = self.store.outbox_files()
        for f in {Segments.file_of(ref) for ref in dropped} - still:
            (self.dir / f).unlink(missing_ok=True)
        from mailflow import retention  # [retention] limits (nothing unless configured)

        retention.apply(self.store, self.cfg, now or self.clock.now())
        if refresh_reports:
            self._refresh_reports(now or self.clock.now())
        return archived, len(dropped)

    def _refresh_reports(self, now: datetime) -> None:
        """Archiving marked days of the kept reports stale: make them again here, off the CLI's path
        (mailflow/report_cache.py). A failure costs only the next report's speed."""
        from mailflow import report_cache

        t0 = time.monotonic()
        try:
            n = report_cache.refresh(self.store, self.cfg, now)
        except Exception as e:
            log.warning("report cache not refreshed: %s: %s", type(e).__name__, e)
            return
        if n:
            log.info("report cache: %d kept reports made again in %.1f s", n, time.monotonic() - t0)

    def retry(self, key: str, resend: bool = False) -> bool:
        """Queue a row for an immediate new attempt. A delivered row is refused (it would reach the
        recipient twice) unless `resend` says that is what the admin wants."""
        self.fold_journal()
        with self.store.batch():
            row = self.store.outbox_row(key)
            if row is None:
                return False
            delivered = row.get("status") == "sent"
            if delivered and not resend:
                raise OutboxError(f"row {key} was delivered at {row.get('sent_at') or 'the last flush'}: "
                                  "use --resend to send it again")
            self.store.update_outbox(key, {"status": "queued", "next_attempt_at": iso(self.clock.now()),
                                           "attempts": 0, "created_at": iso(self.clock.now())})
        return True
