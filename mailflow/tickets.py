"""The ticket lifecycle (DESIGN.md section 9): statuses, closure reasons, the transition table as
data, and one pure function that turns (ticket, event, actor, now) into a change or a refusal.

Nothing else in mailflow writes `status`, `resolved_at`, `closed_at`, `close_reason`,
`reopen_count` or `silence_from`: every status change anyone sees went through `transition`, and
each applied change carries the event that records it (who, when, from -> to, why).

The table is keyed by event, then by the ticket's current status. A cell is either a plain outcome
(stay, move to a status, close with a reason, reopen, refuse) or a named guard that `transition`
resolves with the ticket's own fields (a closed ticket's reply depends on how and when it closed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from mailflow.clock import iso, parse_iso

NEW, OPEN, PENDING, RESOLVED, CLOSED = "new", "open", "pending", "resolved", "closed"
STATUSES = (NEW, OPEN, PENDING, RESOLVED, CLOSED)
OPEN_STATUSES = (NEW, OPEN, PENDING)
CLOSE_REASONS = ("confirmed", "staff", "auto", "merged", "spam")

# who may cause each event (documented in the README's table)
CUSTOMER_EVENTS = ("customer_reply", "customer_not_fixed", "rating_good", "rating_bad", "quote_only")
STAFF_EVENTS = ("staff_reply", "RESOLVE", "PENDING", "REOPEN", "CLOSE", "MERGE", "SPAM", "ASSIGN",
                "PRIORITY", "CATEGORY", "TAG", "ESCALATE", "NOTE")
SYSTEM_EVENTS = ("auto_close",)
EVENTS = CUSTOMER_EVENTS + STAFF_EVENTS + SYSTEM_EVENTS


@dataclass(frozen=True)
class Cell:
    """One cell of the table: what `event` does to a ticket in one status."""

    to: str | None = None  # the status afterwards; None: unchanged
    close_reason: str | None = None  # with to=closed
    reopen: bool = False  # counts a reopen (resolved/closed -> open)
    refuse: str | None = None  # the event is refused, with this reason
    record_only: bool = False  # the mail is recorded on the ticket; nothing else happens
    tell: tuple[str, ...] = ()  # who hears about it: "assignee", "lead"
    guard: str | None = None  # resolved by `transition` from the ticket's fields
    restart_silence: bool = False  # a resolved ticket waits auto_close_days again
    text: str = ""  # the README wording of this cell


STAY = Cell(text="stays")
RECORD = Cell(record_only=True, text="recorded")
TEXT_ONLY = Cell(text="as a reply")  # a rating where no survey was asked is just words


def _to(status: str) -> Cell:
    return Cell(to=status, text=status)


def _close(reason: str) -> Cell:
    return Cell(to=CLOSED, close_reason=reason, text=f"closed `{reason}`")


def _refuse(why: str) -> Cell:
    return Cell(refuse=why, text=f"refused: {why}")


_REOPEN = Cell(to=OPEN, reopen=True, text="open (reopen)")
_ALLOWED = Cell(text="allowed")
_NOT_ON_CLOSED = _refuse("the ticket is closed")

TABLE: dict[str, dict[str, Cell]] = {
    # ---- customer mail ------------------------------------------------------------------------
    "customer_reply": {
        NEW: STAY, OPEN: STAY, PENDING: _to(OPEN),
        RESOLVED: Cell(tell=("assignee",), restart_silence=True,
                       text="stays resolved; assignee told; silence timer restarts"),
        CLOSED: Cell(guard="closed_reply", text="within `reopen_within_days`: open (reopen); later: a new "
                                                "linked ticket; closed `spam`: recorded only"),
    },
    "customer_not_fixed": {
        NEW: STAY, OPEN: STAY, PENDING: _to(OPEN),
        RESOLVED: Cell(to=OPEN, reopen=True, tell=("assignee",), text="open (reopen); assignee told"),
        CLOSED: Cell(guard="closed_reply", text="as a reply to a closed ticket"),
    },
    "rating_good": {  # 3-5 on its own
        NEW: TEXT_ONLY, OPEN: TEXT_ONLY, PENDING: Cell(to=OPEN, text="open (as a reply)"),
        RESOLVED: _close("confirmed"),
        CLOSED: Cell(guard="closed_rating", text="recorded, replaces the old score"),
    },
    "rating_bad": {  # 1-2, or a score beside words saying it is not fixed
        NEW: TEXT_ONLY, OPEN: TEXT_ONLY, PENDING: Cell(to=OPEN, text="open (as a reply)"),
        RESOLVED: Cell(to=OPEN, reopen=True, tell=("assignee", "lead"),
                       text="open (reopen); assignee and team lead told"),
        CLOSED: Cell(guard="closed_rating", text="recorded, replaces the old score"),
    },
    "quote_only": {s: RECORD for s in STATUSES},
    # ---- staff ---------------------------------------------------------------------------------
    "staff_reply": {
        NEW: _to(OPEN), OPEN: STAY, PENDING: STAY, RESOLVED: STAY,
        CLOSED: Cell(text="stays closed (a follow-up)"),
    },
    "RESOLVE": {NEW: _to(RESOLVED), OPEN: _to(RESOLVED), PENDING: _to(RESOLVED),
                RESOLVED: _refuse("already resolved"), CLOSED: _NOT_ON_CLOSED},
    "PENDING": {NEW: _to(PENDING), OPEN: _to(PENDING), PENDING: _refuse("already pending"),
                RESOLVED: _refuse("the ticket is resolved"), CLOSED: _NOT_ON_CLOSED},
    "REOPEN": {NEW: _refuse("the ticket is not resolved or closed"),
               OPEN: _refuse("the ticket is not resolved or closed"),
               PENDING: _refuse("the ticket is not resolved or closed"),
               RESOLVED: _REOPEN, CLOSED: _REOPEN},
    "CLOSE": {**{s: _close("staff") for s in OPEN_STATUSES + (RESOLVED,)}, CLOSED: _refuse("already closed")},
    "MERGE": {**{s: _close("merged") for s in OPEN_STATUSES + (RESOLVED,)}, CLOSED: _refuse("already closed")},
    "SPAM": {**{s: _close("spam") for s in OPEN_STATUSES + (RESOLVED,)}, CLOSED: _refuse("already closed")},
    **{cmd: {**{s: _ALLOWED for s in OPEN_STATUSES + (RESOLVED,)}, CLOSED: _NOT_ON_CLOSED}
       for cmd in ("ASSIGN", "PRIORITY", "CATEGORY", "TAG", "ESCALATE")},
    "NOTE": {s: _ALLOWED for s in STATUSES},
    # ---- the scheduler -------------------------------------------------------------------------
    "auto_close": {**{s: Cell(refuse="only a resolved ticket closes by itself", text="-") for s in STATUSES},
                   RESOLVED: _close("auto")},
}


@dataclass
class Change:
    """What an allowed event does: fields to set on the ticket, and the events that record it."""

    event: str
    fields: dict = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)
    tell: tuple[str, ...] = ()
    record_only: bool = False
    follow_up: bool = False  # a reply too late to reopen: the caller opens a new, linked ticket

    @property
    def status_changed(self) -> bool:
        return "status" in self.fields


@dataclass
class Refusal:
    event: str
    status: str
    reason: str

    def message(self) -> str:
        return f"{self.event} is not possible: {self.reason} (status {self.status}; allowed now: " \
               f"{', '.join(allowed(self.status)) or 'nothing'})"


def allowed(status: str) -> list[str]:
    """The staff commands the table allows in `status` (for refusals: say what would work)."""
    return [e for e in STAFF_EVENTS if e != "staff_reply" and TABLE[e][status].refuse is None]


def transition(ticket: dict, event: str, actor: str, now: datetime, *, why: str = "",
               reopen_within_days: float = 30) -> Change | Refusal:
    """The one place a ticket's status changes: (ticket, event, actor, now) -> Change | Refusal.

    Pure: reads `ticket`, returns what to write. `actor` is who caused it (`customer`,
    a staff address, `system`); `why` is recorded with the status change."""
    status = ticket.get("status") or NEW
    if event not in TABLE:
        raise ValueError(f"unknown lifecycle event {event!r}")
    cell = TABLE[event][status]
    if cell.guard == "closed_reply":
        cell = _closed_reply(ticket, now, reopen_within_days)
        if cell is None:
            return Change(event, follow_up=True, events=[_ev(now, "follow_up", actor,
                                                             "too late to reopen: a new ticket follows")])
    elif cell.guard == "closed_rating":
        cell = RECORD
    if cell.refuse:
        return Refusal(event, status, cell.refuse)
    ch = Change(event, tell=cell.tell, record_only=cell.record_only)
    at = iso(now) or ""
    if cell.to is not None and cell.to != status:
        ch.fields["status"] = cell.to
        ev = _ev(now, "status", actor, why or event, **{"from": status, "to": cell.to})
        if cell.to == RESOLVED:
            ch.fields.update(resolved_at=at, silence_from=at)
        elif cell.to == CLOSED:
            ch.fields.update(closed_at=at, close_reason=cell.close_reason)
            ev["reason"] = cell.close_reason
        if cell.reopen:
            ch.fields.update(reopen_count=int(ticket.get("reopen_count") or 0) + 1, resolved_at=None,
                             closed_at=None, close_reason=None, silence_from=None)
            ev["reopen"] = True
        if cell.to == OPEN and status == PENDING:
            ev["detail"] = why or "the customer answered"
        ch.events.append(ev)
    if cell.restart_silence:
        ch.fields["silence_from"] = at
    return ch


def _closed_reply(ticket: dict, now: datetime, within_days: float) -> Cell | None:
    """A customer's reply to a closed ticket: recorded (spam), reopened (recent), or None (too late)."""
    reason = ticket.get("close_reason")
    if reason == "spam":
        return Cell(record_only=True, text="recorded (closed as spam)")
    closed = parse_iso(ticket.get("closed_at"))
    if closed is None or now - closed <= timedelta(days=within_days):
        return Cell(to=OPEN, reopen=True, tell=("assignee",), text="open (reopen)")
    return None


def _ev(now: datetime, kind: str, actor: str, detail: str, **extra) -> dict:
    return {"at": iso(now) or "", "kind": kind, "actor": actor, "detail": detail, **extra}


def event(now: datetime, kind: str, actor: str, detail: str = "", **extra) -> dict:
    """A history entry for anything else worth recording (commands, ratings, notes, links...)."""
    return _ev(now, kind, actor, detail, **extra)


def readme_table() -> str:
    """The transition table as the README shows it (kept in step by a test)."""
    cols = STATUSES
    rows = ["| event | who | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    who = {**{e: "customer" for e in CUSTOMER_EVENTS}, **{e: "staff" for e in STAFF_EVENTS},
           **{e: "scheduler" for e in SYSTEM_EVENTS}}
    names = {"customer_reply": "reply", "customer_not_fixed": "reply saying it is not fixed",
             "rating_good": "rating 3-5", "rating_bad": "rating 1-2 (or a score with \"not fixed\")",
             "quote_only": "reply that is only a quote", "staff_reply": "public reply (no status command)",
             "auto_close": "resolved and silent `auto_close_days`"}
    for e in EVENTS:
        label = names.get(e, f"`[{e}]`")
        rows.append(f"| {label} | {who[e]} | " + " | ".join(TABLE[e][s].text for s in cols) + " |")
    return "\n".join(rows)
