"""The scheduled report mail: which reports are due, the mail itself, and queueing it exactly once.

`[reports] monthly_to` / `weekly_to` name the recipients: plain addresses and `role:ROLE` (every staff
member with that role) get the whole report; `team:NAME` means that team's members get that team's
own report (its tickets only, broken down by category: the department's problem report).

A period's report is due from `send_at` (09:00) on the first working day after the period, in the
time zone of `[reports] calendar`, and never before the period has ended. Only the latest complete
period of each kind is ever due: after downtime it goes out at the next pass; a report missed for a
whole period is not sent late (`mailflow report --month ...` makes it by hand).

Exactly once per period and recipient: the store's meta table keeps a ledger entry per
(kind, period, scope) — `report:monthly:2026-11:all`, `report:weekly:2026-W48:team:tech` — listing the
addresses the report was queued for; it is written in the same batch as the outbox row, so a crash,
a replay or a second pass never queues it twice, and a recipient added later gets it alone. The
rows have no ticket (`ticket_id` None) and go through the normal outbox (retries, journal); they are
not automatic answers to anyone, so the flood cap does not count them.
"""

from __future__ import annotations

import email.policy
import logging
import secrets
import time as _time
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, formataddr

from mailflow.clock import iso
from mailflow.config import Config
from mailflow.report_metrics import Period, last_complete

log = logging.getLogger("mailflow.report")

KINDS = {"monthly": "month", "weekly": "week"}
RETRY_AFTER = 900.0  # seconds before a report that failed to build (a broken template) is tried again
_failed: dict[str, float] = {}  # ledger key -> monotonic time of the last failure, in this process


@dataclass(frozen=True)
class ReportMail:
    """One report mail that is due: the period, whose report (`scope`), to whom (not yet sent)."""

    kind: str  # monthly | weekly
    period: Period
    scope: str  # "all" | "team:NAME"
    recipients: tuple[str, ...]
    ledger_key: str
    locale: str

    @property
    def team(self) -> str | None:
        return self.scope[5:] if self.scope.startswith("team:") else None

    @property
    def filename(self) -> str:
        team = f"-{_safe(self.team)}" if self.team else ""
        return f"mailflow-report-{self.period.file_label}{team}.html"


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in s) or "team"


def recipients_by_scope(cfg: Config, targets: list[str]) -> dict[str, list[str]]:
    """{"all": [...], "team:NAME": [...]} from `monthly_to`/`weekly_to` entries (lowercased, each once,
    in the order given)."""
    out: dict[str, list[str]] = {}

    def add(scope: str, addr: str) -> None:
        lst = out.setdefault(scope, [])
        if addr.lower() not in lst:
            lst.append(addr.lower())

    for t in targets:
        if t.startswith("team:"):
            for s in cfg.staff:
                if t[5:] in s.teams:
                    add(t, s.email)
            out.setdefault(t, [])
        elif t.startswith("role:"):
            for s in cfg.staff:
                if s.role == t[5:]:
                    add("all", s.email)
        else:
            add("all", t)
    return {k: v for k, v in out.items() if v}


def send_time(cfg: Config, period: Period) -> datetime:
    """`send_at` on the first working day after `period` (in the schedule calendar's time zone)."""
    from mailflow.report import calendar_of

    cal = calendar_of(cfg)
    d: date = period.last + timedelta(days=1)
    for _ in range(400):
        if cal.is_working_day(d):
            break
        d += timedelta(days=1)
    h, m = (int(x) for x in cfg.reports.send_at.split(":"))
    return datetime.combine(d, time(h, m), tzinfo=cal.tz)


def next_send(cfg: Config, now: datetime) -> datetime | None:
    """The next instant after `now` at which a report can become due (for the scheduler's sleep);
    None when `[reports]` mails nothing."""
    from mailflow.report import timezone_of

    tz = timezone_of(cfg)
    out = []
    for kind, targets in (("monthly", cfg.reports.monthly_to), ("weekly", cfg.reports.weekly_to)):
        if not targets:
            continue
        period = last_complete(KINDS[kind], now, tz)
        when = send_time(cfg, period)
        out.append(when if when > now else send_time(cfg, period.shifted(1)))
    return min(out) if out else None


def _sent(store, key: str) -> set[str]:
    v = store.get_meta(key) if store is not None else None
    return set((v or {}).get("sent", [])) if isinstance(v, dict) else set()


def due_mails(cfg: Config, store, now: datetime) -> list[ReportMail]:
    """The report mails due at `now` and not yet queued (per the ledger in the store's meta)."""
    from mailflow.report import timezone_of

    out = []
    tz = timezone_of(cfg)
    for kind, targets in (("monthly", cfg.reports.monthly_to), ("weekly", cfg.reports.weekly_to)):
        if not targets:
            continue
        period = last_complete(KINDS[kind], now, tz)
        if now < send_time(cfg, period):
            continue
        for scope, addrs in recipients_by_scope(cfg, targets).items():
            key = f"report:{kind}:{period.label}:{scope}"
            sent = _sent(store, key)
            todo = tuple(a for a in addrs if a not in sent)
            if todo:
                out.append(ReportMail(kind, period, scope, todo, key, cfg.reports.locale or cfg.default_locale))
    return out


def _sender(cfg: Config) -> tuple[str, str, str | None]:
    """(From address, display name, mailbox name) of report mail: the first mailbox with an address."""
    for mb in cfg.mailboxes:
        if mb.address:
            return mb.address, mb.from_name or cfg.company_name, mb.name
    return "support@mailflow.invalid", cfg.company_name, cfg.mailboxes[0].name if cfg.mailboxes else None


def build_mail(cfg: Config, store, rm: ReportMail, now: datetime, metrics=None) -> tuple[bytes, str, str]:
    """(bytes, subject, Message-ID) of one report mail: multipart/mixed with a short text/plain summary
    and the HTML report as a `text/html` attachment (`mailflow-report-2026-11.html`); no ticket tag in
    the subject; `Auto-Submitted: auto-generated`."""
    from mailflow.report import build
    from mailflow.report_render import render_html, render_mail_parts

    if metrics is None:
        metrics = build(store, cfg, rm.period, now, team=rm.team, by="category" if rm.team else None,
                        locale=rm.locale)
    html = render_html(metrics, cfg.templates_dir)
    subject, text = render_mail_parts(metrics, cfg.templates_dir)
    from_addr, from_name, _mb = _sender(cfg)
    domain = from_addr.partition("@")[2] or "mailflow.invalid"
    mid = f"report-{rm.kind}-{rm.period.file_label}-{secrets.token_hex(6)}@{domain}"
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = formataddr((from_name, from_addr))
    msg["To"] = ", ".join(rm.recipients)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = f"<{mid}>"
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Auto-Response-Suppress"] = "All"
    msg["X-Mailflow-Report"] = f"{rm.kind} {rm.period.label} {rm.scope}"
    msg.set_content(text, charset="utf-8", cte="base64")
    msg.add_attachment(html.encode("utf-8"), maintype="text", subtype="html", filename=rm.filename)
    return msg.as_bytes(), subject, mid


def send_due(store, outbox, cfg: Config, now: datetime) -> list[tuple[ReportMail, str]]:
    """Queue every due report mail through the outbox and mark it in the ledger in the same batch;
    [(ReportMail, outbox row)] of what was queued. Safe to call on every pass (the scheduler's)."""
    due = [rm for rm in due_mails(cfg, store, now)
           if _time.monotonic() - _failed.get(rm.ledger_key, -RETRY_AFTER) >= RETRY_AFTER]
    built = []
    for rm in due:
        try:
            built.append((rm, *build_mail(cfg, store, rm, now)))
        except Exception as e:  # noqa: BLE001 - a broken report template must not stop the scheduler
            _failed[rm.ledger_key] = _time.monotonic()
            log.error("report %s %s (%s) not sent: %s: %s; trying again in %d min", rm.kind, rm.period.label,
                      rm.scope, type(e).__name__, e, RETRY_AFTER // 60)
    if not built:
        return []
    in_db = getattr(store, "mail_in_db", False)  # PG: the bytes go into the row, in the same commit
    refs = ["db"] * len(built) if in_db else outbox.segments.write([data for _rm, data, _s, _m in built])
    from_addr, _name, mailbox = _sender(cfg)
    queued = []
    with store.batch():
        for (rm, data, subject, mid), ref in zip(built, refs, strict=True):
            sent = _sent(store, rm.ledger_key)
            todo = [a for a in rm.recipients if a not in sent]
            if not todo:  # another process queued it meanwhile
                continue
            row = {"ticket_id": None, "template": "report", "message_id": mid, "to": todo, "sender": from_addr,
                   "mailbox": mailbox, "subject": subject, "status": "queued", "auto": False, "attempts": 0,
                   "created_at": iso(now), "next_attempt_at": iso(now), "last_error": None, "sent_at": None,
                   "file": ref, "report": rm.ledger_key}
            key = store.add_outbox(row, data if in_db else None)
            store.set_meta(rm.ledger_key, {"sent": sorted(sent | set(todo)), "at": iso(now)})
            queued.append((rm, key))
    for rm, key in queued:
        log.info("report %s %s (%s) queued: row=%s, %d recipient(s)", rm.kind, rm.period.label, rm.scope, key,
                 len(rm.recipients))
    return queued
