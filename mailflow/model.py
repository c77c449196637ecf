"""Plain data passed between pipeline stages. No stage reaches into another's internals."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass
class Attachment:
    filename: str
    content_type: str
    size: int
    data: bytes  # the decoded payload; the store decides (by the size cap) whether to keep it
    kept: bool = True  # False: too big to decode while parsing (the raw mail in the spool has it)


@dataclass
class AuthResult:
    """One Authentication-Results header, reduced to what sender authentication needs."""

    authserv_id: str
    dmarc: str | None = None  # pass | fail | none | ... (lowercase) or None if absent
    dkim_pass_domains: list[str] = field(default_factory=list)  # header.d / header.i domains with dkim=pass
    spf: str | None = None
    dmarc_domain: str | None = None  # the header.from domain the dmarc result is for (lowercase)


@dataclass
class Message:
    """One parsed mail. Addresses are lowercase; message ids are without angle brackets."""

    message_id: str  # from the header; synthesised from the content hash if missing
    in_reply_to: list[str]
    references: list[str]
    from_addr: str
    from_name: str
    to: list[str]
    cc: list[str]
    reply_to: str | None
    subject: str  # decoded, as sent
    clean_subject: str  # without Re:/回复:/Fw: prefixes and without [CW...] tags
    date: datetime | None  # timezone-aware, or None when missing/unparseable
    text: str  # whole body as text (html turned into text)
    new_text: str  # the part above the quoted reply, the customer's new words
    html: str | None  # original html part, if any
    language: str  # "zh" | "en"
    attachments: list[Attachment]
    ticket_ids: list[str]  # ticket ids found in [PREFIX...] tags in the subject, in order
    auto_kind: str | None  # None | "auto-reply" | "bounce" | "list"
    bounce_message_ids: list[str]  # for bounces: Message-IDs of the mail that bounced
    bounce_recipients: list[str]  # for bounces: recipients that failed
    is_spam: bool  # X-Spam-Flag: YES / X-Spam-Status: Yes
    auth_results: list[AuthResult]
    content_hash: str  # sha256 hex of the raw mail without trace headers
    size: int  # raw size in bytes
    defects: list[str] = field(default_factory=list)  # what was odd but survivable
    headers: dict[str, str] = field(default_factory=dict)  # selected raw headers, decoded, lowercase keys
    quote_rule: str | None = None  # the replies.py row that cut the quote ("qq-original-zh-CN", "html:gmail-quote")
    quoted: bool = False  # a quote was found; with new_text == "" the mail is only a quote
