"""A plan: everything handling one message decided should happen, as plain data.

Deciding is separate from applying (DESIGN.md section 2): `decide` looks at the message and the
store and returns a `Plan`; `Pipeline.apply` carries it out inside the batch's commit (ticket
changes, history events, the message record, outgoing mail). `simulate` prints the plan and applies
it to a batch that is rolled back, so what it shows is what `run` does, by construction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Mail:
    """One outgoing mail to render and queue."""

    ticket_id: str
    template: str
    to: str | None = None  # None: the ticket's customer; else a staff address
    auto: bool = True  # automatic (flood caps apply) or written by staff (never capped)
    extra: dict = field(default_factory=dict)  # template context beyond the defaults
    quote_incoming: bool = True  # In-Reply-To the incoming mail (else the customer's last mail)
    why: str = ""

    @property
    def staff(self) -> bool:
        return self.to is not None


@dataclass
class Plan:
    route: str  # what the message was (Result.kind): new, reply, reopen, rating, staff, ...
    ticket_id: str | None = None
    reason: str = ""
    unarchive: list[str] = field(default_factory=list)  # bring back into the hot store first
    new_ticket: dict | None = None
    record: str | None = None  # record the incoming message on this ticket (kind below)
    record_kind: str = "customer"  # customer | staff
    updates: list[tuple[str, dict]] = field(default_factory=list)  # (ticket id, fields), in order
    events: list[tuple[str, dict]] = field(default_factory=list)  # (ticket id, history entry)
    mails: list[Mail] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    seen: str | None = None  # remember the message as processed without a ticket message (outcome)
    hold: str | None = None  # keep the message in quarantine with this reason (e.g. tagged spam)
    assigned: str | None = None  # a new open ticket for this assignee (the batch's open counts)
    notes: list[str] = field(default_factory=list)  # why, for people reading `simulate`

    def update(self, tid: str, fields: dict) -> None:
        if fields:
            self.updates.append((tid, dict(fields)))

    def event(self, tid: str, ev: dict) -> None:
        self.events.append((tid, ev))

    def as_json(self) -> dict:
        """What `simulate --json` shows under "plan"."""
        out = asdict(self)
        if self.new_ticket is not None:
            out["new_ticket"] = {k: v for k, v in self.new_ticket.items() if k not in ("events", "rules_fired")}
        out["updates"] = [{"ticket": t, "fields": f} for t, f in self.updates]
        out["events"] = [{"ticket": t, **e} for t, e in self.events]
        out["mails"] = [{k: v for k, v in asdict(m).items() if k != "extra"} for m in self.mails]
        return out
