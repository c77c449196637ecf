"""Raw mail bytes -> `Message`.

Built on the stdlib parser with the `compat32` policy (DESIGN.md 7: ~9x faster than `policy.default`);
headers, parameters, charsets and transfer encodings are decoded here, because Chinese mail breaks the
stdlib's assumptions (GB2312 really meaning GBK/GB18030, raw 8-bit headers, split multi-byte encoded
words, mislabeled parts). Anything odd but survivable lands in `Message.defects`; the only exception
that leaves `parse_message` is `ParseError`.
"""

from __future__ import annotations

import binascii
import codecs
import hashlib
import html as htmlmod
import io
import re
import unicodedata
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import errors as email_errors
from email.generator import BytesGenerator
from email.message import Message as EmailMessage
from email.parser import BytesHeaderParser, BytesParser
from email.policy import compat32
from email.utils import getaddresses, parsedate_to_datetime
from functools import lru_cache
from html.parser import HTMLParser
from typing import TypeVar

from mailflow import markup as markup_mod
from mailflow import replies
from mailflow.model import Attachment, AuthResult, Message

__all__ = ["ParseError", "parse_message", "html_to_text", "extract_new_text", "clean_subject",
           "find_ticket_ids", "detect_language", "content_hash", "decode_header_value", "decode_bytes",
           "parse_auth_results"]

T = TypeVar("T")


class ParseError(Exception):
    """The mail has no usable sender or no content at all; the caller should quarantine it."""


# --------------------------------------------------------------------------------------------------
# charsets

# Labels mail clients use for what is really a superset charset; decoding with the superset is lossless.
_CHARSET_ALIASES = {
    **dict.fromkeys(("gb2312", "gbk", "x-gbk", "gb_2312-80", "gb2312-80", "euc-cn", "x-euc-cn", "cp936",
                     "ms936", "windows-936", "csgb2312", "chinese", "gb18030", "x-gb18030"), "gb18030"),
    **dict.fromkeys(("big5", "big5-hkscs", "x-big5", "cn-big5", "csbig5", "cp950", "x-x-big5",
                     "big5hkscs", "ms950", "windows-950"), "cp950"),
    **dict.fromkeys(("us-ascii", "ascii", "ansi_x3.4-1968", "unknown-8bit"), ""),
    "utf8": "utf-8",
}
# Codecs that are not a charset a mail could be written in (decoding attacker data with them is odd).
_CODEC_DENY = frozenset({"idna", "punycode", "unicode-escape", "raw-unicode-escape", "undefined"})
_NOT_ASCII_COMPATIBLE = ("utf-16", "utf-32", "utf-7", "cp037", "cp500", "cp1026")
_FALLBACK_CHAIN = ("utf-8", "gb18030", "cp950", "big5hkscs")
_SIBLINGS = {"cp950": ("big5hkscs",)}  # a "big5" label may well be HKSCS (Hong Kong)


@lru_cache(maxsize=256)
def _codec(label: str | None) -> str | None:
    """Map a MIME charset label to a Python codec name; None when absent, ASCII or unknown."""
    if not label:
        return None
    name = label.strip().strip("\"'").lower()[:64]
    name = _CHARSET_ALIASES.get(name, name)
    if not name:
        return None
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError, TypeError):
        return None
    codec_name = info.name.replace("_", "-")
    if not getattr(info, "_is_text_encoding", True) or codec_name in _CODEC_DENY:
        return None
    return codec_name


def _try_decode(data: bytes, codec: str) -> str | None:
    try:
        return data.decode(codec)
    except (UnicodeError, LookupError):
        return None


def decode_8bit(data: bytes) -> str:
    """Decode bytes with no trustworthy label: utf-8, then gb18030, then big5 (cp950), then latin-1."""
    for codec in ("utf-8", "gb18030", "cp950"):
        text = _try_decode(data, codec)
        if text is not None:
            return text
    return data.decode("latin-1")


def decode_bytes(data: bytes, label: str | None) -> tuple[str, str | None]:
    """Decode a text payload declared as `label`; returns (text, defect or None). Never raises.

    Valid UTF-8 wins over an ASCII-compatible label: GB18030 accepts most UTF-8 byte sequences without
    error (as mojibake), so a "gb2312" part that is really UTF-8 can only be caught this way, and real
    GBK/Big5 text of any length almost never happens to be valid UTF-8.
    """
    if not data:
        return "", None
    codec = _codec(label)
    ascii_ok = codec is None or not codec.startswith(_NOT_ASCII_COMPATIBLE)
    if ascii_ok and data.isascii():
        return data.decode("ascii"), None
    if codec is None:
        defect = f"unknown charset {label!r}" if label and _CHARSET_ALIASES.get(label.lower()) != "" else None
        return decode_8bit(data), defect
    if ascii_ok and codec != "utf-8":
        text = _try_decode(data, "utf-8")
        # only real CJK (U+0800 and up) overrides the label: short GB2312 text such as 谢谢
        # (d0bb d0bb) is also valid UTF-8, as Cyrillic "лл"
        if text is not None and any(ord(ch) >= 0x800 for ch in text):
            return text, f"charset {label} mislabeled: decoded as utf-8"
    text = _try_decode(data, codec)
    if text is not None:
        return text, None
    for alt in (*_SIBLINGS.get(codec, ()), *_FALLBACK_CHAIN):
        if alt != codec:
            text = _try_decode(data, alt)
            if text is not None:
                return text, f"charset {label} mislabeled: decoded as {alt}"
    try:
        text = data.decode(codec, errors="replace")
    except (UnicodeError, LookupError):  # a codec without "replace" support
        text = data.decode("latin-1")
    return text, f"charset {label}: undecodable bytes replaced"


# --------------------------------------------------------------------------------------------------
# headers

_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([QqBb])\?([^?\s]*)\?=")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_WS = re.compile(r"\s+")


def _raw_to_str(value: str) -> tuple[str, bool]:
    """Header values from a bytes parse carry 8-bit bytes as surrogates; decode those bytes properly."""
    if value.isascii():
        return value, False
    try:
        data = value.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        return value, False  # already real text (not from a bytes parse)
    return decode_8bit(data), True


def _b_decode(text: str) -> bytes:
    """Base64 of one encoded word, tolerating missing padding and stray characters."""
    data = re.sub(r"[^A-Za-z0-9+/]", "", text)
    rem = len(data) % 4
    if rem == 1:
        data = data[:-1]
    elif rem:
        data += "=" * (4 - rem)
    return binascii.a2b_base64(data)


def _decode_word(enc: str, payload: str) -> bytes:
    if enc in "Bb":
        return _b_decode(payload)
    return binascii.a2b_qp(payload.encode("ascii", "replace"), header=True)


def _decode_encoded_words(text: str) -> str:
    """RFC 2047: adjacent words are joined before decoding (clients split GBK characters across words)."""
    out: list[str] = []
    pending: list[bytes] = []
    pending_cs: str | None = None
    pos = 0

    def flush() -> None:
        nonlocal pending, pending_cs
        if pending:
            out.append(decode_bytes(b"".join(pending), pending_cs)[0])
        pending, pending_cs = [], None

    for m in _ENCODED_WORD.finditer(text):
        between = text[pos:m.start()]
        if between and (not pending or between.strip()):
            flush()
            out.append(between)
        charset = m.group(1).split("*", 1)[0]  # RFC 2231 language suffix
        try:
            data = _decode_word(m.group(2), m.group(3))
        except (binascii.Error, ValueError):
            flush()
            out.append(m.group(0))
            pos = m.end()
            continue
        # compare codecs, not labels: "gbk" and "GB2312" words may split one character
        if pending and (_codec(charset) or charset.lower()) != (_codec(pending_cs or "") or (pending_cs or "").lower()):
            flush()
        pending.append(data)
        pending_cs = charset
        pos = m.end()
    flush()
    out.append(text[pos:])
    return "".join(out)


def decode_header_value(value: str) -> tuple[str, bool]:
    """Unfold and decode one raw header value (8-bit bytes and RFC 2047); returns (text, was_8bit)."""
    text, eight_bit = _raw_to_str(value)
    text = _FOLD.sub("", text).replace("\r", "").replace("\n", " ")
    if "=?" in text:
        text = _decode_encoded_words(text)
    return text.strip(), eight_bit


_PARAM = re.compile(r';\s*([^\s=;"]+)\s*=\s*("(?:[^"\\]|\\.)*"?|[^;]*)')
_RFC2231_PART = re.compile(r"^(.+?)\*(\d+)?(\*)?$")


def _parse_params(value: str) -> dict[str, str]:
    """Content-Type / Content-Disposition parameters, with RFC 2231 continuations and charsets decoded."""
    plain: dict[str, str] = {}
    ext: dict[str, list[tuple[int, bool, str]]] = {}
    for m in _PARAM.finditer(value):
        name, raw = m.group(1).lower(), m.group(2).strip()
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1] if raw.endswith('"') and len(raw) > 1 else raw[1:])
        pm = _RFC2231_PART.match(name)
        if pm:
            index = int((pm.group(2) or "0")[:6])  # int() refuses absurdly long digit strings
            ext.setdefault(pm.group(1), []).append((index, bool(pm.group(3) or not pm.group(2)), raw))
        else:
            plain.setdefault(name, raw)
    for name, pieces in ext.items():
        plain[name] = _join_rfc2231(sorted(pieces, key=lambda p: p[0]))
    return plain


def _join_rfc2231(pieces: list[tuple[int, bool, str]]) -> str:
    charset: str | None = None
    data = b""
    for i, (_, encoded, raw) in enumerate(pieces):
        if encoded and i == 0 and raw.count("'") >= 2:
            charset, _lang, raw = raw.split("'", 2)
        if encoded:
            data += urllib.parse.unquote_to_bytes(raw)
        else:
            data += raw.encode("utf-8", "surrogateescape")
    return decode_bytes(data, charset or "utf-8")[0]


# --------------------------------------------------------------------------------------------------
# addresses, ids, dates

_BRACKETED_ID = re.compile(r"<([^<>\s]+)>")
_ADDR_FALLBACK = re.compile(r"<([^<>@\s]+@[^<>\s]+)>|([\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+)")
_SYSTEM_SENDERS = frozenset({"mailer-daemon", "postmaster"})


_IDEO_DOTS = re.compile("[\u3002\uff0e\uff61]")  # 。．｡: IDNA reads them as "." (RFC 3490 3.1)


def _norm_addr(addr: str) -> str:
    """One spelling per mailbox: lowercase, NFC, and an internationalised domain in Unicode whether it
    came as Unicode (RFC 6531/6532 mail), with ideographic dots, or as punycode (``xn--``)."""
    addr = unicodedata.normalize("NFC", addr.strip().strip("<>")).lower()
    local, at, domain = addr.rpartition("@")
    if not at or not domain or domain.isascii() and "xn--" not in domain:
        return addr
    domain = _IDEO_DOTS.sub(".", domain)
    if "xn--" in domain and domain.isascii():
        try:
            domain = domain.encode("ascii").decode("idna").lower()
        except UnicodeError:  # not valid punycode: keep it as written
            pass
    return f"{local}@{domain}"


def _addresses(values: Iterable[str]) -> list[tuple[str, str]]:
    """(decoded display name, lowercase address) pairs; names are decoded after splitting so that
    an encoded comma inside a name cannot split an address. Non-ASCII addresses (RFC 6531: a UTF-8
    local part and/or a Unicode domain, or the domain in punycode) come out in one normal form
    (`_norm_addr`), so the same customer is recognised whichever way their client wrote it."""
    vals = [v for v in values if v]
    if not vals:
        return []
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, addr in getaddresses(vals):
        addr = _norm_addr(addr)
        if not addr or addr in seen or any(c.isspace() for c in addr):
            continue
        seen.add(addr)
        out.append((decode_header_value(name)[0].strip().strip('"').strip(), addr))
    return out


def _msg_ids(value: str) -> list[str]:
    ids = _BRACKETED_ID.findall(value)
    if not ids:
        ids = [t.strip("<>") for t in value.split()]
    return [i for i in dict.fromkeys(ids) if i]


def _parse_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        dt = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if dt is None:
        return None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


# --------------------------------------------------------------------------------------------------
# subject, language, quoted text

_SUBJECT_PREFIX = re.compile(
    r"^\s*(?:re|fwd?|aw|wg|antw|回复|回覆|答复|答覆|转发|轉寄|转寄|轉發)\s*(?:\[\d+\]|\(\d+\))?\s*[:：]\s*", re.I)


@lru_cache(maxsize=32)
def _tag_re(prefix: str) -> re.Pattern[str]:
    return re.compile(r"\[\s*(" + re.escape(prefix) + r"\d{12,})\s*\]", re.I)


def find_ticket_ids(subject: str, prefix: str = "CW") -> list[str]:
    """Ticket ids in `[PREFIX...]` tags, uppercased, in order of appearance, without duplicates."""
    return list(dict.fromkeys(tid.upper() for tid in _tag_re(prefix).findall(subject)))


def clean_subject(subject: str, prefix: str = "CW") -> str:
    """Subject without reply/forward prefixes and ticket tags, so threads compare equal."""
    s = _tag_re(prefix).sub(" ", subject)
    while True:
        stripped = _SUBJECT_PREFIX.sub("", s, count=1)
        if stripped == s:
            break
        s = stripped
    return _WS.sub(" ", s).strip()


_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_ASCII_LETTER = re.compile(r"[A-Za-z]")


def detect_language(text: str, charset: str | None = None) -> str:
    """'zh' (simplified) or 'zh-Hant' (traditional) when CJK ideographs are at least ~10% of the
    letters (Chinese packs a word into one char), else 'en'.

    Traditional when more of its distinct characters exist only in traditional form than only in
    simplified form (發/发, 這/这, 國/国; mailflow.hanzi). Text of shared characters only (你好, 可以) says
    nothing; then a Big5 ``charset`` of the body (Big5, Big5-HKSCS, cp950 and their aliases), which
    cannot carry simplified text, decides.
    """
    from mailflow.hanzi import script_counts

    sample = text[:20000]
    cjk = len(_CJK.findall(sample))
    if not cjk:
        return "en"
    latin = len(_ASCII_LETTER.findall(sample))
    if cjk / (cjk + latin) < 0.10:
        return "en"
    hans, hant = script_counts(sample)
    if hans != hant:
        return "zh-Hant" if hant > hans else "zh"
    return "zh-Hant" if charset and _codec(charset) in ("cp950", "big5hkscs", "big5") else "zh"


def extract_new_text(text: str, html: str | None = None, is_reply: bool = True) -> str:
    """The sender's own words (thin wrapper over `replies.extract`, kept for old callers): "" when the
    mail is only a quote. `is_reply=True` keeps the old, eager cutting for callers that pass text only."""
    return replies.extract(text, html, is_reply).new_text


# --------------------------------------------------------------------------------------------------
# html -> text

_HTML_SKIP = frozenset({"script", "style", "head", "title", "template", "noscript"})
_HTML_BLOCK = frozenset({"p", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol",
                         "blockquote", "pre", "hr", "section", "article", "header", "footer", "dl", "dt",
                         "dd", "address", "center", "form", "fieldset", "nav", "figure", "body"})
_HTML_PARA = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "blockquote"})


class _HTMLText(HTMLParser):
    """Readable text from mail HTML: block tags become line breaks, blockquotes become '> ' lines."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self._cur: list[str] = []
        self._skip = 0
        self._quote = 0
        self._line_quote = 0

    def _flush(self) -> None:
        text = _WS.sub(" ", "".join(self._cur)).strip()
        self._cur = []
        if text:
            self.lines.append("> " * self._line_quote + text)

    def _newline(self, blank: bool = False) -> None:
        self._flush()
        if blank:
            self.lines.append("")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            self._skip = 0  # a <head> that was never closed must not hide the body
        if tag in _HTML_SKIP:
            self._skip += 1
        elif tag == "br":
            if self._cur:
                self._flush()
            else:
                self.lines.append("")
        elif tag in _HTML_BLOCK:
            self._newline(blank=tag in _HTML_PARA)
            if tag == "blockquote":
                self._quote += 1
        elif tag in ("td", "th"):
            self._cur.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _HTML_SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag in _HTML_BLOCK:
            self._newline(blank=tag in _HTML_PARA)
            if tag == "blockquote":
                self._quote = max(0, self._quote - 1)

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if not self._cur:
            self._line_quote = self._quote
        self._cur.append(data)

    def text(self) -> str:
        self._flush()
        return re.sub(r"\n{3,}", "\n\n", "\n".join(self.lines)).strip()


MAX_SCAN = 256 * 1024  # text scanned by patterns and HTML turned into text: bounds hostile input


def html_to_text(markup: str) -> str:
    """HTML to plain text with the stdlib parser; falls back to stripping tags if the parser chokes.

    Input is capped at MAX_SCAN characters after dropping comments: Python's HTML parser has
    quadratic cases, and one hostile mail must not stall a batch for minutes."""
    markup = markup_mod.safe(markup, MAX_SCAN)
    parser = _HTMLText()
    try:
        parser.feed(markup)
        parser.close()
        return parser.text()
    except Exception:  # HTMLParser has raised AssertionError/AttributeError on junk
        stripped = re.sub(r"(?is)<(script|style|head)\b.*?</\1\s*>|<[^>]*>", " ", markup)
        return _WS.sub(" ", htmlmod.unescape(stripped)).strip()


# --------------------------------------------------------------------------------------------------
# trace-free content hash

_TRACE_HEADERS = frozenset({
    b"received", b"delivered-to", b"return-path", b"x-original-to", b"x-received", b"authentication-results",
    b"received-spf", b"x-delivered-to", b"status", b"x-status", b"x-keywords", b"x-uid", b"x-sieve",
    b"x-forefront-antispam-report", b"x-rspamd-queue-id", b"x-rspamd-server", b"x-rspamd-action",
    b"x-greylist", b"lines", b"content-length", b"x-imapbase", b"x-original-arrival-time",
})
_TRACE_PREFIXES = (b"arc-", b"x-spam-", b"x-virus-", b"x-envelope-", b"x-ms-exchange-organization-",
                   b"x-microsoft-antispam", b"x-rspamd-")
_WS_BYTES = re.compile(rb"[ \t\r\n]+")


def _header_lines(head: bytes) -> Iterator[bytes]:
    """Unfolded header lines of a header block (continuations joined to their header)."""
    current: list[bytes] = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and current:
            current.append(line)
            continue
        if current:
            yield b" ".join(current)
        current = [line]
    if current:
        yield b" ".join(current)


_HEAD_END = re.compile(rb"\n\r?\n")  # where the header block ends once CRLF became LF
_HASH_STEP = 1 << 20  # body bytes hashed per step


def content_hash(raw: bytes) -> str:
    """sha256 of the mail without trace headers, so one mail delivered to two mailboxes (or fetched
    twice, with CRLF or LF line ends) hashes the same. Exactly the hash of: CRLF -> LF, without an mbox
    "From " line, the unfolded header lines minus trace headers, a blank line, the body without trailing
    newlines; computed in chunks, so a 30 MB mail is never copied whole."""
    pos = 0
    if raw.startswith(b"From "):  # mbox separator line
        nl = raw.find(b"\n")
        pos = len(raw) if nl < 0 else nl + 1
    m = _HEAD_END.search(raw, pos)
    if m is None:
        head_raw, body_start = raw[pos:], len(raw)
    else:
        head_raw, body_start = raw[pos:m.start()], m.end()
        if head_raw.endswith(b"\r"):
            head_raw = head_raw[:-1]  # the CR of the CRLF whose LF ends the headers
    head = head_raw.replace(b"\r\n", b"\n")
    h = hashlib.sha256()
    for line in _header_lines(head):
        name, colon, value = line.partition(b":")
        lname = name.strip().lower()
        if colon and (lname in _TRACE_HEADERS or lname.startswith(_TRACE_PREFIXES)):
            continue
        h.update(lname + colon + _WS_BYTES.sub(b" ", value).strip() + b"\n" if colon else line + b"\n")
    h.update(b"\n")
    pending = 0  # newlines not hashed yet: only hashed if more body follows (the body is rstripped)
    carry = b""
    step = _HASH_STEP
    for i in range(body_start, len(raw), step):
        chunk = carry + raw[i:i + step]
        carry = b""
        if chunk.endswith(b"\r") and i + step < len(raw):
            chunk, carry = chunk[:-1], b"\r"
        chunk = chunk.replace(b"\r\n", b"\n")
        stripped = chunk.rstrip(b"\n")
        if stripped:
            if pending:
                h.update(b"\n" * pending)
            h.update(stripped)
            pending = len(chunk) - len(stripped)
        else:
            pending += len(chunk)
    if carry:
        if pending:
            h.update(b"\n" * pending)
        h.update(carry)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# authentication results

_COMMENT = re.compile(r"\([^()]*\)")
_RESULT = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*=\s*([A-Za-z0-9_-]+)")
_PROP = re.compile(r"([A-Za-z0-9_-]+\.[A-Za-z0-9_.-]+)\s*=\s*(\"[^\"]*\"|[^\s;]+)")


def parse_auth_results(value: str) -> AuthResult | None:
    """One Authentication-Results header (RFC 8601), comments ignored; None if it has no authserv-id."""
    text = value
    for _ in range(8):  # nested comments: peel the innermost level each round
        stripped = _COMMENT.sub(" ", text)
        if stripped == text:
            break
        text = stripped
    parts = text.split(";")
    head = parts[0].split()
    if not head:
        return None
    res = AuthResult(authserv_id=head[0].lower())
    for seg in parts[1:]:
        m = _RESULT.match(seg)
        if not m:
            continue
        method, result = m.group(1).lower(), m.group(2).lower()
        props = {k.lower(): v.strip('"').lower() for k, v in _PROP.findall(seg[m.end():])}
        if method == "dmarc" and res.dmarc is None:
            res.dmarc = result
            res.dmarc_domain = props.get("header.from") or None
        elif method == "dkim" and result == "pass":
            domain = props.get("header.d") or props.get("header.i", "").rpartition("@")[2]
            if domain and domain not in res.dkim_pass_domains:
                res.dkim_pass_domains.append(domain)
        elif method == "spf" and res.spf is None:
            res.spf = result
    return res


# --------------------------------------------------------------------------------------------------
# MIME walking

_MAX_DEPTH = 40
_REPORT_PARTS = frozenset({"message/delivery-status", "text/rfc822-headers", "message/disposition-notification",
                           "message/feedback-report", "message/global-delivery-status", "text/rfc822-header"})
_EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/gif": ".gif", "image/webp": ".webp",
               "application/pdf": ".pdf", "message/rfc822": ".eml", "text/plain": ".txt", "text/html": ".html",
               "text/calendar": ".ics", "text/csv": ".csv", "application/zip": ".zip"}
_B64_JUNK = re.compile(rb"[^A-Za-z0-9+/=]")


def _first_headers(part: EmailMessage) -> dict[str, str]:
    """Raw header values of a part by lowercase name, first occurrence (avoids compat32's Header objects)."""
    out: dict[str, str] = {}
    for name, value in part.raw_items():
        out.setdefault(name.lower(), value if isinstance(value, str) else str(value))
    return out


def _b64_decode(payload: bytes) -> bytes:
    """Decode base64 that the stdlib could not, keeping whatever decodes."""
    out = []
    for seg in re.split(rb"=+", _B64_JUNK.sub(b"", payload)):  # '=' mid-stream: concatenated blocks
        rem = len(seg) % 4
        seg = seg[:-1] if rem == 1 else seg + b"=" * ((4 - rem) % 4)
        if seg:
            out.append(binascii.a2b_base64(seg))
    return b"".join(out)


# ---- big parts: cut out of the mail before the stdlib parse -------------------------------------
# email.parser holds about nine times a part's size while it parses and decodes it (a 30 MB attachment
# peaked at 280 MB). Bodies of non-text leaf parts over SLIM_OVER are therefore cut out of a copy of
# the mail first (their headers stay, marked with _SLIM_HEADER) and decoded straight from the raw
# bytes afterwards, if they are small enough to be kept at all.

SLIM_OVER = 512 * 1024  # a leaf body bigger than this is cut out before parsing
KEEP_DECODED = 16 * 1024 * 1024  # decoded size up to which a cut-out part is decoded (kept)
_SLIM_HEADER = "x-mailflow-slim"
_BOUNDARY = re.compile(rb'boundary\s*=\s*(?:"([^"]{1,200})"|([^\s;"]{1,200}))', re.I)


def _split_head(b: bytes, start: int, end: int) -> tuple[int, int] | None:
    """(end of the header block, start of the body) of the entity b[start:end], or None."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = b.find(sep, start, end)
        if i >= 0:
            return i, i + len(sep)
    return None


def _entity_headers(head: bytes) -> dict[str, str]:
    msg = BytesParser(policy=compat32).parsebytes(head + b"\n\n", headersonly=True)
    return {k.lower(): str(v) for k, v in msg.items()}


def _slim(raw: bytes) -> tuple[bytes, dict[str, tuple[int, int, str]]]:
    """(a copy of `raw` without its big leaf bodies, {marker: (start, end, transfer encoding)})."""
    if len(raw) <= 2 * SLIM_OVER:
        return raw, {}
    cuts: list[tuple[int, int, int, str]] = []  # (insert-at, body start, body end, encoding)

    def entity(start: int, end: int, depth: int) -> None:
        split = _split_head(raw, start, end)
        if split is None or depth > 20:
            return
        head_end, body = split
        try:
            h = _entity_headers(raw[start:head_end])
        except Exception:  # noqa: BLE001 - leave it to the real parse
            return
        ctype = h.get("content-type", "text/plain").split(";", 1)[0].strip().lower()
        if ctype.startswith("multipart/"):
            m = _BOUNDARY.search(h.get("content-type", "").encode("latin-1", "replace"))
            if not m:
                return
            delim = b"--" + (m.group(1) or m.group(2))
            pos = raw.find(delim, body, end)
            while 0 <= pos < end:
                nxt = raw.find(b"\n" + delim, pos + len(delim), end)
                line_end = raw.find(b"\n", pos, end)
                if raw[pos + len(delim):pos + len(delim) + 2] == b"--" or line_end < 0:
                    break  # the closing delimiter
                part_end = nxt if nxt >= 0 else end
                if part_end > 0 and raw[part_end - 1:part_end] == b"\r":
                    part_end -= 1
                entity(line_end + 1, part_end, depth + 1)
                if nxt < 0:
                    break
                pos = nxt + 1
            return
        if ctype.startswith("message/") or end - body <= SLIM_OVER:
            return
        disposition = h.get("content-disposition", "").split(";", 1)[0].strip().lower()
        if ctype in ("text/plain", "text/html") and disposition != "attachment":
            return  # body text: the parser needs it
        cuts.append((head_end, body, end, h.get("content-transfer-encoding", "").strip().lower()))

    top = _split_head(raw, 0, len(raw))
    if top is None:
        return raw, {}
    entity(0, len(raw), 0)
    if not cuts:
        return raw, {}
    out, marks, last = [], {}, 0
    for i, (head_end, body, end, enc) in enumerate(sorted(cuts)):
        key = f"p{i}"
        out += [raw[last:head_end], f"\r\n{_SLIM_HEADER}: {key}".encode(), raw[head_end:body]]
        marks[key] = (body, end, enc)
        last = end
    out.append(raw[last:])
    return b"".join(out), marks


def _slim_payload(raw: bytes, slim: tuple[int, int, str], defects: list[str]) -> tuple[bytes, int, bool]:
    """(data, decoded size, kept) of a cut-out body, decoded from the raw mail when small enough."""
    start, end, enc = slim
    n = end - start
    size = n * 3 // 4 if enc == "base64" else n
    if size > KEEP_DECODED:
        return b"", size, False
    body = raw[start:end]
    if enc == "base64":
        data = _b64_decode(body)
    elif enc == "quoted-printable":
        import quopri

        data = quopri.decodestring(body)
    else:
        data = body
    return data, len(data), True


def _payload_bytes(part: EmailMessage, defects: list[str]) -> bytes:
    """The decoded payload of a leaf part (base64/quoted-printable/8bit/uuencode).

    `get_payload(decode=True)` is the only public way to the raw 8-bit bytes (without `decode`,
    compat32 decodes them with the declared charset and errors="replace", losing mislabeled text).
    """
    before = len(part.defects)
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return b""
    new = part.defects[before:]
    if new and str(part.get("content-transfer-encoding", "")).strip().lower() == "base64":
        if any(isinstance(d, email_errors.InvalidBase64LengthDefect) for d in new):
            data = _b64_decode(data)  # compat32 gave up and returned the encoded text
        defects.append(f"broken base64 in {part.get_content_type()} part")
    return data


def _rfc822_bytes(inner: EmailMessage) -> bytes:
    buf = io.BytesIO()
    BytesGenerator(buf, mangle_from_=False, policy=compat32).flatten(inner)
    return buf.getvalue()


def _safe_filename(name: str, ctype: str, index: int) -> str:
    """Last path component only and no control characters: the name ends up on a disk somewhere."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = re.sub(r"[\x00-\x1f\x7f]", "", name).strip()
    if name in ("", ".", ".."):
        name = f"attachment-{index}{_EXTENSIONS.get(ctype, '.bin')}"
    return name[:255]


@dataclass
class _Parts:
    """What a walk over the MIME tree found."""

    plain: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    inner: list[EmailMessage] = field(default_factory=list)
    dsn: list[EmailMessage] = field(default_factory=list)
    rfc822_headers: list[bytes] = field(default_factory=list)
    charsets: list[str] = field(default_factory=list)  # of the text body parts, in order


class _Walker:
    """Sorts every leaf of a MIME tree into body text, attachments and bounce-report parts."""

    def __init__(self, defects: list[str], raw: bytes = b"",
                 slimmed: dict[str, tuple[int, int, str]] | None = None) -> None:
        self.defects = defects
        self.found = _Parts()
        self.raw = raw
        self.slimmed = slimmed or {}

    def walk(self, part: EmailMessage, depth: int = 0) -> None:
        if depth > _MAX_DEPTH:
            self.defects.append("MIME nesting too deep; inner parts ignored")
            return
        ctype = part.get_content_type()
        if not part.is_multipart():
            # never get_payload() without decode here: compat32 would decode 8-bit text with the
            # declared charset, and some "charsets" (idna, undefined) raise instead of replacing
            self._leaf(part, ctype)
            return
        children = part.get_payload()
        if ctype == "message/rfc822" or (ctype.startswith("message/") and ctype not in _REPORT_PARTS):
            self._message(part, children)
        elif ctype in ("message/delivery-status", "message/global-delivery-status"):
            self.found.dsn.append(part)
        else:
            for sub in children:
                if isinstance(sub, EmailMessage):
                    self.walk(sub, depth + 1)

    def _message(self, part: EmailMessage, payload: object) -> None:
        inner = payload[0] if isinstance(payload, list) and payload else None
        if not isinstance(inner, EmailMessage):
            self._leaf(part, "message/rfc822")
            return
        self.found.inner.append(inner)
        given = _filename(_first_headers(part))
        name = given or decode_header_value(_first_headers(inner).get("subject", ""))[0]
        try:
            data = _rfc822_bytes(inner)
        except Exception as exc:  # the generator chokes on some broken trees
            self.defects.append(f"could not re-serialise attached message: {type(exc).__name__}")
            data = b""
        fname = _safe_filename(name, "message/rfc822", len(self.found.attachments) + 1)
        if not given and not fname.lower().endswith(".eml"):
            fname += ".eml"
        self.found.attachments.append(Attachment(fname, "message/rfc822", len(data), data))

    def _leaf(self, part: EmailMessage, ctype: str) -> None:
        hdrs = _first_headers(part)
        fname = _filename(hdrs)
        disposition = hdrs.get("content-disposition", "").split(";", 1)[0].strip().lower()
        if ctype.startswith("multipart/"):
            self.defects.append(f"{ctype} without usable boundary; treated as text")
            ctype = "text/plain"
        slim = self.slimmed.get(hdrs.get(_SLIM_HEADER, "").strip()) if self.slimmed else None
        if slim is not None:  # a big body cut out before the stdlib parse: decoded from the raw mail
            index = len(self.found.attachments) + 1
            data, size, kept = _slim_payload(self.raw, slim, self.defects)
            self.found.attachments.append(Attachment(_safe_filename(fname, ctype, index), ctype, size, data, kept))
            return
        data = _payload_bytes(part, self.defects)
        if ctype in ("text/plain", "text/html") and disposition != "attachment" and not fname:
            charset = _parse_params(hdrs.get("content-type", "")).get("charset")
            if charset:
                self.found.charsets.append(charset.strip().lower())
            text, defect = decode_bytes(data, charset)
            if defect:
                self.defects.append(defect)
            text = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
            (self.found.plain if ctype == "text/plain" else self.found.html).append(text)
        elif ctype in ("text/rfc822-headers", "text/rfc822-header") and not fname:
            self.found.rfc822_headers.append(data)
        elif ctype in _REPORT_PARTS and not fname and disposition != "attachment":
            pass  # machine-readable report parts; their content is read elsewhere
        else:
            index = len(self.found.attachments) + 1
            self.found.attachments.append(Attachment(_safe_filename(fname, ctype, index), ctype, len(data), data))


def _filename(hdrs: dict[str, str]) -> str:
    """Attachment name from Content-Disposition filename or Content-Type name (RFC 2231/2047/8-bit)."""
    for header, param in (("content-disposition", "filename"), ("content-type", "name")):
        value = hdrs.get(header)
        if not value:
            continue
        text = _raw_to_str(value)[0]
        name = _parse_params(_FOLD.sub("", text).replace("\r", "").replace("\n", " ")).get(param)
        if name:
            return decode_header_value(name)[0] if "=?" in name else name.strip()
    return ""


# --------------------------------------------------------------------------------------------------
# auto-replies, bounces, lists, spam

# after any number of Re:/Fw: prefixes and brackets (【自动回复】, [Auto-Reply], Re:自动回复)
_OOF_SUBJECT = re.compile(
    r"^(?:\s*(?:re|aw|fw|fwd|回复|答复|转发)\s*[:：]|\s*[\[【(（])*\s*"
    r"(?:auto\s*:|automatic reply|auto[- ]?reply|autoreply|auto[- ]?response|out of (?:the )?office|"
    r"自动回复|自动答复|自動回覆|自動回复|自动应答|自動答覆|系统自动回复|abwesenheitsnotiz|automatische antwort|"
    r"r[ée]ponse automatique|absence du bureau|respuesta autom[áa]tica|fuera de la oficina|"
    r"automatisch antwoord|risposta automatica|resposta autom[áa]tica|自動応答)", re.I)
_AUTO_HEADERS = ("x-autoreply", "x-autorespond", "x-autoresponder", "x-autogenerated", "x-loop")


def _auto_kind(h: dict[str, list[str]], from_addr: str, subject: str, parts: _Parts,
               report_type: str | None) -> str | None:
    """RFC 3834 and the common de-facto markers; bounce > auto-reply > list."""
    first = {k: v[0].strip().lower() for k, v in h.items() if v}
    local = from_addr.split("@", 1)[0]
    empty_return_path = "return-path" in first and first["return-path"].strip("<> \t") == ""
    if report_type == "delivery-status" or local in _SYSTEM_SENDERS or (empty_return_path and parts.dsn):
        return "bounce"
    auto_submitted = first.get("auto-submitted", "").split(";", 1)[0].strip()
    precedence = first.get("precedence", "") or first.get("x-precedence", "")
    if (auto_submitted and auto_submitted != "no") or any(k in first for k in _AUTO_HEADERS) \
            or precedence == "auto_reply" or report_type is not None or _OOF_SUBJECT.match(subject) \
            or empty_return_path:  # RFC 3834: never answer a null reverse-path
        return "auto-reply"
    if precedence in ("bulk", "junk", "list") or "list-id" in first or "list-unsubscribe" in first:
        return "list"
    return None


def _bounce_recipients(parts: _Parts, h: dict[str, list[str]]) -> list[str]:
    """Recipients the DSN says failed (Action: failed, or no Action); delays are not failures."""
    out: list[str] = []
    for dsn in parts.dsn:
        blocks = dsn.get_payload() if dsn.is_multipart() else []
        for block in blocks:
            fields = _first_headers(block)
            action = fields.get("action", "failed").strip().lower()
            if not action.startswith("failed"):
                continue
            for key in ("final-recipient", "original-recipient"):
                addr = fields.get(key, "").rpartition(";")[2].strip().strip("<>").lower()
                if addr and addr not in out:
                    out.append(addr)
    for value in h.get("x-failed-recipients", []):
        for _, addr in _addresses([value]):
            if addr not in out:
                out.append(addr)
    return out


# [ \t]* rather than \s*: \s spans newlines, which made a body of blank lines quadratic
_BODY_MSGID = re.compile(r"^[ \t]*message-id[ \t]*:[ \t]*<([^<>\s]+)>", re.I | re.M)


def _bounce_message_ids(parts: _Parts, text: str) -> list[str]:
    """Message-IDs of the bounced mail: attached message, its headers part, or as a last resort the text."""
    ids: list[str] = []
    for inner in parts.inner:
        ids += _msg_ids(_first_headers(inner).get("message-id", ""))
    for data in parts.rfc822_headers:
        hdrs = BytesHeaderParser(policy=compat32).parsebytes(data.lstrip())
        ids += _msg_ids(_first_headers(hdrs).get("message-id", ""))
    if not ids:
        ids = _BODY_MSGID.findall(text[:MAX_SCAN])
    return list(dict.fromkeys(ids))


def _is_spam(h: dict[str, list[str]]) -> bool:
    flag = any(v.strip().upper().startswith("YES") for v in h.get("x-spam-flag", []))
    return flag or any(v.strip().lower().startswith("yes") for v in h.get("x-spam-status", []))


# --------------------------------------------------------------------------------------------------
# the parser

_SELECTED = ("subject", "from", "to", "cc", "date", "auto-submitted", "precedence", "x-mailer", "content-type",
             "list-id", "return-path", "x-spam-flag", "x-spam-status", "x-mailflow-ticket")
_JOINED = frozenset({"to", "cc"})


class _Parse:
    """One parse; each step degrades on its own so one bad header cannot cost the whole mail."""

    def __init__(self, raw: bytes, prefix: str) -> None:
        self.raw = raw
        self.prefix = prefix
        self.defects: list[str] = []
        self.slimmed: dict[str, tuple[int, int, str]] = {}
        self.msg = self._email()
        self.h: dict[str, list[str]] = {}
        for name, value in self.msg.raw_items():
            self.h.setdefault(name.lower(), []).append(value if isinstance(value, str) else str(value))

    def _email(self) -> EmailMessage:
        try:
            slim, self.slimmed = _slim(self.raw)
            return BytesParser(policy=compat32).parsebytes(slim)
        except Exception as exc:  # e.g. RecursionError on absurd nesting
            self.defects.append(f"MIME structure unparseable ({type(exc).__name__}); body kept as text")
            msg = BytesParser(policy=compat32).parsebytes(self.raw, headersonly=True)
            del msg["content-type"]
            return msg

    def guard(self, what: str, fn: Callable[[], T], default: T) -> T:
        try:
            return fn()
        except Exception as exc:  # degrade this field, keep the mail
            self.defects.append(f"internal error in {what}: {type(exc).__name__}: {exc}"[:200])
            return default

    def header(self, name: str) -> str:
        values = self.h.get(name)
        if not values:
            return ""
        text, eight_bit = decode_header_value(values[0])
        if eight_bit:
            self.defects.append(f"raw 8-bit {name} header")
        return text

    def sender(self) -> tuple[str, str]:
        values = self.h.get("from", [])
        if any(not v.isascii() for v in values):
            self.defects.append("raw 8-bit from header")
        pairs = self.guard("from", lambda: _addresses([_raw_to_str(v)[0] for v in values]), [])
        for name, addr in pairs:
            if "@" in addr or addr in _SYSTEM_SENDERS:
                return addr, name
        # only tokens with an "@" and of sane length: the pattern is quadratic on a long run of
        # address characters without one (100 KB took 13 s)
        text = " ".join(t for v in values for t in _raw_to_str(v)[0][:4096].split() if "@" in t and len(t) < 512)
        m = _ADDR_FALLBACK.search(text)
        if m:
            self.defects.append("From header malformed; address found by pattern")
            return (m.group(1) or m.group(2)).lower(), ""
        raise ParseError("no usable From address" if values else "no From header")

    def addrs(self, name: str) -> list[str]:
        values = [_raw_to_str(v)[0] for v in self.h.get(name, [])]
        return [a for _, a in self.guard(name, lambda: _addresses(values), []) if "@" in a]

    def ids(self, name: str) -> list[str]:
        return _msg_ids(" ".join(_raw_to_str(v)[0] for v in self.h.get(name, [])))

    def compat_defects(self) -> None:
        seen: set[str] = set()
        for part in self.msg.walk():
            for d in getattr(part, "defects", []):
                seen.add(type(d).__name__)
        self.defects.extend(sorted(seen))

    def body(self, parts: _Parts) -> tuple[str, str | None]:
        plain = "\n".join(p for p in parts.plain).strip()
        html = "\n".join(parts.html) if parts.html else None
        if plain or html is None:
            return plain, html
        return html_to_text(html), html

    def body_parts(self) -> _Parts:
        """Walk the tree; a mail whose only content is an attached message gets that message's body."""
        walker = _Walker(self.defects, self.raw, self.slimmed)
        self.guard("mime", lambda: walker.walk(self.msg), None)
        parts = walker.found
        if not parts.plain and not parts.html and parts.inner:
            inner = _Walker(self.defects)
            self.guard("inner body", lambda: inner.walk(parts.inner[0]), None)
            parts.plain, parts.html = inner.found.plain, inner.found.html
        return parts

    def report_type(self) -> str | None:
        if self.msg.get_content_type() != "multipart/report":
            return None
        params = _parse_params(_raw_to_str(self.h.get("content-type", [""])[0])[0])
        return params.get("report-type", "").strip().lower() or "unknown"

    def run(self) -> Message:
        from_addr, from_name = self.sender()
        subject = self.guard("subject", lambda: self.header("subject"), "")
        chash = content_hash(self.raw)
        msg_ids = self.guard("message-id", lambda: self.ids("message-id"), [])
        if not msg_ids:
            self.defects.append("missing Message-ID; synthesised")
        parts = self.body_parts()
        text, html = self.guard("body", lambda: self.body(parts), ("", None))
        in_reply_to = self.guard("in-reply-to", lambda: self.ids("in-reply-to"), [])
        references = self.guard("references", lambda: self.ids("references"), [])
        # an extraction that fails keeps nothing: leaking a quoted staff notification is worse than ""
        quote = self.guard("new_text", lambda: replies.extract(
            text, html, replies.looks_like_reply(subject, in_reply_to, references)), None)
        new_text = quote.new_text if quote else ""
        report_type = self.guard("report-type", self.report_type, None)
        auto = self.guard("auto_kind", lambda: _auto_kind(self.h, from_addr, subject, parts, report_type), None)
        bounced = auto == "bounce"
        reply_to = self.addrs("reply-to")
        fields = {
            "in_reply_to": in_reply_to,
            "references": references,
            "date": self.guard("date", lambda: _parse_date(self.header("date")), None),
            "bounce_message_ids": self.guard("bounce ids", lambda: _bounce_message_ids(parts, text), [])
            if bounced else [],
            "bounce_recipients": self.guard("bounce recipients", lambda: _bounce_recipients(parts, self.h), [])
            if bounced else [],
            "auth_results": self.guard("authentication-results", self.auth_results, []),
            "headers": self.guard("headers", self.selected_headers, {}),
        }
        self.guard("defects", self.compat_defects, None)
        return Message(
            message_id=msg_ids[0] if msg_ids else "mailflow-synth-" + chash[:32],
            from_addr=from_addr,
            from_name=from_name,
            to=self.addrs("to"),
            cc=self.addrs("cc"),
            reply_to=reply_to[0] if reply_to else None,
            subject=subject,
            clean_subject=clean_subject(subject, self.prefix),
            text=text,
            new_text=new_text,
            quote_rule=quote.rule if quote else None,
            quoted=quote.quoted if quote else False,
            html=html,
            language=detect_language(subject + "\n" + (new_text or text),
                                     charset=parts.charsets[0] if parts.charsets else None),
            attachments=parts.attachments,
            ticket_ids=find_ticket_ids(subject, self.prefix),
            auto_kind=auto,
            is_spam=_is_spam(self.h),
            content_hash=chash,
            size=len(self.raw),
            defects=list(dict.fromkeys(self.defects)),
            **fields,
        )

    def auth_results(self) -> list[AuthResult]:
        out = []
        for value in self.h.get("authentication-results", []):
            res = parse_auth_results(decode_header_value(value)[0])
            if res is not None:
                out.append(res)
        return out

    def selected_headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name in _SELECTED:
            values = self.h.get(name)
            if values:
                decoded = [decode_header_value(v)[0] for v in (values if name in _JOINED else values[:1])]
                out[name] = ", ".join(decoded)
        return out


def parse_message(raw: bytes, prefix: str = "CW") -> Message:
    """Parse one raw mail. Raises ParseError (only) when it has no usable From address or is empty."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise ParseError(f"expected bytes, got {type(raw).__name__}")
    raw = bytes(raw)
    if not raw.strip():
        raise ParseError("empty message")
    try:
        return _Parse(raw, prefix).run()
    except ParseError:
        raise
    except Exception as exc:  # the contract: quarantine, never crash the batch
        raise ParseError(f"unparseable message: {type(exc).__name__}: {exc}") from exc


def identity(raw: bytes) -> tuple[str, str]:
    """(Message-ID, content hash) exactly as `parse_message` gives them, from the header block alone:
    cheap enough to skip spooling mail that was already processed (a repeat `ingest`, a replay)."""
    h = content_hash(raw)
    try:
        pos = raw.find(b"\n") + 1 if raw.startswith(b"From ") else 0
        m = _HEAD_END.search(raw, pos)
        head = raw[pos:m.start() if m else len(raw)].replace(b"\r\n", b"\n")
        msg = BytesParser(policy=compat32).parsebytes(head + b"\n\n", headersonly=True)
        values = [v if isinstance(v, str) else str(v) for k, v in msg.raw_items() if k.lower() == "message-id"]
        ids = _msg_ids(" ".join(_raw_to_str(v)[0] for v in values))
    except Exception:  # noqa: BLE001 - the full parse decides what this mail is
        ids = []
    return (ids[0] if ids else "mailflow-synth-" + h[:32]), h
