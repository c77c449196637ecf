"""Decide what an incoming message is: a new ticket, a reply, staff mail, a survey answer, or mail
that must never open a ticket nor be answered (duplicates, our own mail, auto-replies, bounces).

Pure decision: it reads the store's indexes and returns a `Route`; the pipeline applies it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailflow.config import Config
from mailflow.model import Message
from mailflow.store import Store

# A customer who answers the satisfaction question with a bare digit (or "5分", "5 stars").
RATING_RE = re.compile(r"^\s*(?:rating[:：]?\s*)?([1-5])\s*(?:分|星|stars?|/\s*5)?\s*[.!。！]?\s*$", re.I)
NOT_FIXED_RE = re.compile(
    r"not\s+(?:yet\s+)?(?:fixed|solved|resolved)|still\s+(?:broken|not\s+working|failing|happening)|"
    r"doesn'?t\s+work|未解决|没有?解决|沒有?解決|未解決|还是不行|還是不行|仍然|依然|问题依旧|重新打开",
    re.I,
)


@dataclass
class Route:
    kind: str  # duplicate | own | bounce | auto | staff | reply | rating | reopen | new
    ticket_id: str | None = None
    rating: int | None = None
    reason: str = ""


def find_ticket(msg: Message, store: Store) -> str | None:
    """The ticket a message belongs to: by [CW...] tag first, then In-Reply-To/References."""
    for tid in msg.ticket_ids:
        if store.ticket(tid) is not None:
            return tid
    for mid in [*msg.in_reply_to, *reversed(msg.references)]:
        tid = store.ticket_of_message_id(mid)
        if tid and store.ticket(tid) is not None:
            return tid
    return None


def is_own(msg: Message, store: Store) -> bool:
    return store.is_own_message_id(msg.message_id)


def route(msg: Message, store: Store, cfg: Config) -> Route:
    if store.already_seen(msg.message_id, msg.content_hash):
        return Route("duplicate", reason="message already processed")
    if is_own(msg, store):
        return Route("own", reason="mail mailflow sent itself")
    if msg.auto_kind == "bounce":
        tid = None
        for mid in msg.bounce_message_ids:
            tid = store.ticket_of_message_id(mid)
            if tid:
                break
        return Route("bounce", tid, reason="delivery status notification")
    if msg.auto_kind is not None:
        return Route("auto", find_ticket(msg, store), reason=msg.auto_kind)

    tid = find_ticket(msg, store)
    staff = cfg.staff_by_email()
    if tid is not None and msg.from_addr in staff:
        return Route("staff", tid)
    if tid is not None:
        t = store.ticket(tid) or {}
        allowed = {t.get("customer_email", ""), *t.get("participants", [])}
        if msg.from_addr not in allowed:
            return Route("new", reason=f"{msg.from_addr} is not a participant of {tid}")
        text = msg.new_text or msg.text
        status = t.get("status")
        if status == "resolved":
            m = RATING_RE.match(text.strip().splitlines()[0] if text.strip() else "")
            if m:
                return Route("rating", tid, rating=int(m.group(1)))
            if NOT_FIXED_RE.search(text):
                return Route("reopen", tid, reason="customer says it is not fixed")
            return Route("reply", tid)
        if status == "closed":
            return Route("reopen", tid, reason="customer wrote on a closed ticket")
        return Route("reply", tid)
    return Route("new")
