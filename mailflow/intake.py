"""Decide what an incoming message is: a new ticket, a customer's reply (and what it says: a rating,
"not fixed", a quote and nothing else), staff mail, or mail that must never open a ticket nor be
answered (duplicates, our own mail, auto-replies, bounces).

Pure decision: it reads the store's indexes (hot and archived tickets alike) and returns a
`Route`; `decide` turns the route into a plan and the pipeline applies it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mailflow.config import Config
from mailflow.model import Message
from mailflow.store import Store

# a survey answer on its own line: "5", "4分", "3 stars", "评分：5", "Rating: 4/5"
RATING_LINE = re.compile(
    r"^\s*(?:(?:rating|score|评分|評分|打分|满意度|滿意度)\s*[:：]?\s*)?([1-5])\s*"
    r"(?:分|星|颗星|顆星|stars?|points?|/\s*5)?\s*[.!。！,，]?\s*$", re.I)
# a score inside a sentence: "我打2分", "给5星", "rating 4", "3/5" (not "3分钟", "3星期", "13分")
RATING_INLINE = re.compile(
    r"(?:rating|score|评分|評分|打分|满意度|滿意度)\s*(?:[:：]|是|为|為|of)?\s*([1-5])(?![\d.])"
    r"|(?<![\d.])([1-5])\s*(?:分(?![钟鐘])|颗星|顆星|星(?!期)|stars?\b|/\s*5(?!\d))", re.I)
NOT_FIXED_RE = re.compile(
    r"not\s+(?:yet\s+|been\s+|really\s+)?(?:fixed|solved|resolved|working)|"
    r"(?:is|was|isn'?t|wasn'?t)\s+(?:still\s+)?not\s+(?:fixed|solved|resolved)|"
    r"still\s+(?:broken|not\s+working|failing|happening|an\s+issue|a\s+problem|the\s+same|doesn'?t|does\s+not|can'?t|cannot)|"
    r"(?:doesn'?t|does\s+not|didn'?t|did\s+not|won'?t)\s+(?:work|help|fix)|"
    r"(?:same|the)\s+(?:problem|issue|error)\s+(?:again|persists|is\s+back|still)|problem\s+persists|"
    r"happen(?:ed|s|ing)\s+again|please\s+reopen|"
    r"未解决|没有?解决|還?沒有?解決|未解決|还没(?:有)?(?:好|修好|解决)|還沒(?:有)?(?:好|修好)|"
    r"还是不行|還是不行|还是没|還是沒|还是有问题|還是有問題|依然(?:没|沒|不|无|無|存在)|仍然(?:没|沒|不|无|無|存在)|"
    r"问题依旧|問題依舊|没修好|沒修好|没有修好|沒有修好|不起作用|并没有|並沒有|重新打开|重新打開|又出现|又出現",
    re.I)


@dataclass
class Route:
    kind: str  # duplicate | own | bounce | auto | staff | customer | new
    ticket_id: str | None = None
    event: str | None = None  # customer mail: the lifecycle event (tickets.CUSTOMER_EVENTS)
    rating: int | None = None
    reason: str = ""
    archived: bool = False  # the ticket lives in the archive and must come back first
    merged_via: list[str] = field(default_factory=list)  # merged-away tickets followed to the target


def parse_rating(text: str) -> int | None:
    """A 1-5 satisfaction score in the customer's words, or None."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    m = RATING_LINE.match(lines[0])
    if m:
        return int(m.group(1))
    m = RATING_INLINE.search(" ".join(lines[:3])[:500])
    return int(m.group(1) or m.group(2)) if m else None


def customer_event(msg: Message, status: str) -> tuple[str, int | None]:
    """What a customer's reply says, as a lifecycle event (and the score, if it rates)."""
    text = (msg.new_text or "").strip()
    if not text and not msg.attachments:
        return "quote_only", None
    not_fixed = bool(NOT_FIXED_RE.search(text[:5000]))
    if status in ("resolved", "closed"):
        score = parse_rating(text)
        if score is not None:
            return ("rating_bad" if score <= 2 or not_fixed else "rating_good"), score
    return ("customer_not_fixed" if not_fixed else "customer_reply"), None


def lookup(store: Store, tid: str) -> tuple[dict | None, bool]:
    """(ticket, archived?) for a ticket id, hot first."""
    t = store.ticket(tid)
    if t is not None:
        return t, False
    entry = store.archived_ticket(tid)
    return (entry["ticket"], True) if entry else (None, False)


def find_ticket(msg: Message, store: Store) -> str | None:
    """The ticket a message belongs to: by [CW...] tag first, then In-Reply-To/References."""
    for tid in msg.ticket_ids:
        if store.ticket(tid) is not None or store.is_archived(tid):
            return tid
    for mid in [*msg.in_reply_to, *reversed(msg.references)]:
        tid = store.ticket_of_message_id(mid)
        if tid and (store.ticket(tid) is not None or store.is_archived(tid)):
            return tid
    return None


def follow_merges(store: Store, tid: str) -> tuple[str, list[str]]:
    """A merged-away ticket's mail goes to the ticket it was merged into (following a chain)."""
    via: list[str] = []
    while len(via) < 20:
        t, _ = lookup(store, tid)
        target = (t or {}).get("merged_into")
        if not target or (t or {}).get("close_reason") != "merged" or target in via or target == tid:
            break
        via.append(tid)
        tid = target
    return tid, via


def route(msg: Message, store: Store, cfg: Config, ignore_seen: bool = False) -> Route:
    if not ignore_seen and store.already_seen(msg.message_id, msg.content_hash):
        return Route("duplicate", reason="message already processed")
    if store.is_own_message_id(msg.message_id):
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
    if tid is None:
        return Route("new")
    if msg.from_addr in cfg.staff_by_email():  # staff act on the ticket they name, merged or not
        t, archived = lookup(store, tid)
        return Route("staff", tid, archived=archived) if t is not None else Route("new")
    tid, via = follow_merges(store, tid)
    t, archived = lookup(store, tid)
    if t is None:
        return Route("new")
    allowed = {t.get("customer_email", ""), *t.get("participants", [])}
    if msg.from_addr not in allowed:
        return Route("new", reason=f"{msg.from_addr} is not a participant of {tid}")
    event, score = customer_event(msg, t.get("status") or "new")
    return Route("customer", tid, event=event, rating=score, archived=archived, merged_via=via,
                 reason=f"via merged {', '.join(via)}" if via else "")
