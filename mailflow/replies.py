"""What a reply really says: the sender's new words, without quotes, attributions, separators or signatures.

Every mail client marks the quoted part of a reply its own way (QQ's `------------------ 原始邮件
------------------`, Mail Master's `---- 回复的原邮件 ----`, Outlook's header block, Gmail's
`... 于2026年11月30日周一 上午10:15写道：`, `>` lines, HTML blockquotes ...). Each way is one named
row of a table below; the row that cut is reported (`Extraction.rule`, `Message.quote_rule`) so that a
wrong cut can be traced to one row and fixed there.

Order of evidence: HTML quote structure first (blockquote, div.gmail_quote, #divRplyFwdMsg, Mail
Master's quote div, ...), because it is what the client itself marked; text heuristics after. When the
plain part says the same thing as the HTML, the plain wording is returned.

What is kept: every unquoted segment the sender wrote, also between and below quoted blocks (inline
and bottom-posted replies). What is cut: the first separator, header block, unquoted attribution,
signature (`-- `, "Sent from my iPhone", "来自网易邮箱大师"), mailing-list footer or disclaimer, and
everything below it. A reply that is only a quote has new text "" -- never the whole body.

False cuts in first mails are guarded against: a header block counts only when it looks like one (an
address or an Outlook "Sent:" line, not `From: PEK` or a pasted `寄件人：李四` shipping block), a
`写道：`/`wrote:` line only when it has the shape of an attribution, and with `is_reply=False` the
thresholds are higher and `>` lines count as quoted only when an attribution introduces them.

Linear time: text is scanned once by one candidate pattern (no nested quantifiers), detailed checks
look at a few lines around a candidate, HTML is capped like `parse.MAX_SCAN`.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser

from mailflow import markup as markup_mod

__all__ = ["Extraction", "Row", "ROWS", "HTML_RULES", "extract", "looks_like_reply", "explain_message"]

MAX_TEXT = 1 << 20  # characters of text analysed; what lies beyond is never new text
MAX_HTML = 256 * 1024  # same cap as parse.MAX_SCAN: html.parser has quadratic corners
MAX_LINE = 2000  # a longer line is ordinary text, never a separator, header or attribution
_BLANKS_BEFORE_QUOTE = 6  # blank lines allowed between an attribution and its quoted block


# --------------------------------------------------------------------------------------------------
# the table


@dataclass(frozen=True)
class Row:
    """One client convention: `name` is what `Extraction.rule` reports when this row cut."""

    name: str
    kind: str  # separator | bare-separator | forward | signature | footer | notification | attribution
    pattern: re.Pattern[str]
    clients: str


def _row(name: str, kind: str, pattern: str, clients: str) -> Row:
    return Row(name, kind, re.compile(pattern, re.I), clients)


# A whole line (stripped, NBSP as space) that starts the quoted part. Order matters: QQ's long dashes
# with spaces before Outlook's five dashes, so the client is named right.
_SEPARATORS = (
    _row("qq-original-zh-CN", "separator", r"-{6,}\s*原始邮件\s*-{6,}", "QQ Mail, Foxmail, Tencent Exmail, WeCom"),
    _row("qq-original-zh-TW", "separator", r"-{6,}\s*原始郵件\s*-{6,}", "QQ Mail, Foxmail (traditional)"),
    _row("qq-original-en", "separator", r"-{6,}\s*original\s*-{6,}", "QQ Mail, Tencent Exmail in English"),
    _row("outlook-original-zh-CN", "separator", r"-{2,}\s*(?:邮件原件|原始邮件)\s*-{2,}",
         "Outlook 2007-2013 zh-CN (-----邮件原件-----), Outlook Express, Android mail"),
    _row("outlook-original-zh-TW", "separator", r"-{2,}\s*(?:郵件原件|原始郵件|原始訊息)\s*-{2,}",
         "Outlook 2007-2013 zh-TW"),
    _row("outlook-original-en", "separator", r"-{2,}\s*original message\s*-{2,}",
         "Outlook 2003-2013, Outlook Express, Yahoo classic, Thunderbird (en)"),
    _row("netease-mailmaster-zh-CN", "separator", r"-{2,}\s*回复的原邮件\s*-{2,}", "NetEase Mail Master (网易邮箱大师)"),
    _row("netease-mailmaster-zh-TW", "separator", r"-{2,}\s*回覆的原郵件\s*-{2,}", "NetEase Mail Master (traditional)"),
    _row("netease-mailmaster-en", "separator", r"-{2,}\s*replied message\s*-{2,}", "NetEase Mail Master in English"),
    _row("thunderbird-original-zh", "separator", r"-{2,}\s*(?:原始信息|原始消息|原邮件|原郵件)\s*-{2,}",
         "Thunderbird zh, Android and HarmonyOS mail"),
    _row("zoho-wrote", "separator", r"-{2,}\s*(?:on .{5,200} wrote|在.{5,200}写道)\s*-{2,}", "Zoho Mail (en, zh)"),
    _row("original-message-eu", "separator",
         r"-{2,}\s*(?:ursprüngliche nachricht|message d'origine|mensaje original|messaggio originale|"
         r"mensagem original|oorspronkelijk bericht)\s*-{2,}", "Outlook de/fr/es/it/pt/nl"),
)

# A bare line that starts the quote only when a header line follows within three lines.
_BARE_SEPARATORS = (
    _row("qq-original-bare", "bare-separator", r"(?:original|原始邮件|原始郵件)",
         "QQ Mail (2023+): an 'Original' line above a From/Sent Time table"),
    _row("blackberry-original", "bare-separator", r"original message", "BlackBerry 10"),
)

# Forwarded mail is content the sender chose to pass on: its header block is not a quote.
_FORWARDS = (
    _row("forward", "forward",
         r"[-=]{2,}\s*(?:forwarded message|转发邮件|轉寄郵件|轉發郵件|转发的邮件|转发的原邮件|转发邮件信息|"
         r"weitergeleitete nachricht|message transf[ée]r[ée])\s*[-=]{2,}|begin forwarded message\s*:|"
         r"开始转发的邮件\s*[:：]|以下是转发的邮件\s*[:：]?",
         "Gmail, Thunderbird, Apple Mail, QQ, NetEase forwards"),
)

# Whole short lines that end the sender's text (and everything below them).
_SIGNATURES = (
    _row("signature-dashdash", "signature", r"--", "RFC 3676 signature delimiter '-- ' (and '--')"),
    _row("mobile-iphone", "signature",
         r"sent from my (?:iphone|ipad|ipod)(?: \w+)?|(?:发自|來自|来自|發自)我的\s*(?:iphone|ipad)(?:\s*\w+)?|"
         r"从我的\s*(?:iphone|ipad)\s*发送|從我的\s*(?:iphone|ipad)\s*傳送", "Apple Mail on iPhone/iPad (en, zh)"),
    _row("mobile-netease", "signature",
         r"(?:来自|發自|发自|來自)(?:网易|網易)(?:邮箱大师|郵箱大師|邮箱|郵箱|手机邮箱|移动邮箱)\S{0,20}|"
         r"sent from netease mail master", "NetEase Mail Master / 163 mobile"),
    _row("mobile-qq", "signature", r"(?:发自|来自|來自|發自)(?:我的)?\s*qq\s*(?:邮箱|郵箱|mail)\S{0,20}",
         "QQ Mail mobile"),
    _row("mobile-dingtalk", "signature", r"(?:发自|来自)钉钉(?:邮箱)?\S{0,10}|sent from dingtalk(?: mail)?",
         "DingTalk mail"),
    _row("mobile-wecom", "signature", r"(?:发自|来自)(?:我的)?企业微信(?:邮箱)?\S{0,10}", "WeCom mail"),
    _row("mobile-outlook", "signature",
         r"(?:get|download) outlook for (?:ios|android)\S*|sent from outlook(?: for \w+)?\S*|"
         r"获取\s*outlook for (?:ios|android)\S*|sent from mail for windows(?: 1[01])?", "Outlook mobile, Windows Mail"),
    _row("mobile-blackberry", "signature", r"sent (?:from my|via|using) blackberry.{0,60}", "BlackBerry"),
    _row("mobile-android", "signature",
         r"sent from (?:my )?(?:android|samsung|galaxy|huawei|xiaomi|oneplus|pixel|htc|sony|moto)\S*(?: [\w-]+){0,4}|"
         r"sent from yahoo mail (?:on|for) \w+|"
         r"(?:发自|来自|來自|發自)我的(?:华为|華為|小米|荣耀|榮耀|vivo|oppo|一加|魅族|三星|手机|手機)\S{0,16}|"
         r"sent from my (?:mobile|phone|smartphone|cell phone|tablet)(?: device)?", "Android, Yahoo and phone vendors"),
)

_FOOTERS = (
    _row("mailing-list-footer", "footer", r".{0,80}\bmailing list\b.{0,40}", "Mailman footers under a '____' rule"),
    _row("disclaimer", "footer",
         r"(?:disclaimer|confidentiality notice|免责声明|免責聲明|保密声明|保密聲明)\s*(?:[:：]\s*(?:\S.{20,})?)?$|"
         r".{0,200}?(?:intended (?:solely )?(?:only )?for (?:the )?(?:sole )?(?:use of )?(?:the )?(?:intended |named )?"
         r"(?:recipient|addressee|individual)|if you are not (?:the|an) intended recipient|"
         r"(?:本|此|该)邮件(?:及其附件)?(?:可能)?(?:包含|含有)(?:保密|机密|秘密)).{0,4000}",
         "corporate disclaimers and confidentiality notices"),
)

# mailflow's own mail, quoted without any marker: the bundled templates' first lines (fallback only).
_NOTIFICATIONS = (
    _row("mailflow-staff-notify", "notification",
         r"工单 \[[A-Z]{1,10}\d{12,}\] 已(?:分配给您|升级)|收到一张新工单，请及时受理。?|您对工单 \[[A-Z]{1,10}\d{12,}\]|"
         r"ticket \[[A-Z]{1,10}\d{12,}\] has been (?:assigned to you|escalated)|a new ticket is waiting to be picked up|"
         r"the command\(s\) you sent for ticket \[", "mailflow staff_notify / escalation / command_error"),
    _row("mailflow-customer-mail", "notification",
         r"感谢您的反馈。我们已收到您的来信|(?:关于)?您的工单 \[[A-Z]{1,10}\d{12,}\]|很抱歉您的问题还没有得到彻底解决|"
         r"thank you for contacting us\. we have received your message|your ticket \[[A-Z]{1,10}\d{12,}\]|"
         r"here is an update on your ticket \[|we are sorry the problem has not been solved yet",
         "mailflow ack / progress / resolved / closed / reopened"),
)

# Attribution lines, named by client; the first matching row names the cut. Shape is checked elsewhere.
_ATTRIBUTIONS = (
    _row("gmail-zh-CN", "attribution", r"于\s*\d{4}\s*年\s*\d{1,2}\s*月\s*\d{1,2}\s*日.*写道", "Gmail zh-CN"),
    _row("gmail-zh-TW", "attribution", r"於\s*\d{4}\s*年\s*\d{1,2}\s*月\s*\d{1,2}\s*日.*寫道", "Gmail / Apple Mail zh-TW"),
    _row("netease-163", "attribution", r"^\s*(?:在|at)\s*\d{4}-\d{2}-\d{2} \d{1,2}:\d{2}(?::\d{2})?\s*[，,]",
         "NetEase 163/126/yeah webmail"),
    _row("yahoo-zh", "attribution", r"^\s*在\s*\d{4}年\d{1,2}月\d{1,2}日\s*星期", "Yahoo Mail zh"),
    _row("apple-mail-zh", "attribution", r"^\s*(?:在\s*)?\d{4}\s*年\s*\d{1,2}\s*月\s*\d{1,2}\s*日.*(?:写道|寫道)",
         "Apple Mail / iPhone zh"),
    _row("thunderbird-zh", "attribution", r"^\s*在\s*\d{4}[/-]\d{1,2}[/-]\d{1,2}", "Thunderbird zh"),
    _row("gmail-date-colon", "attribution", r"^\s*\d{4}-\d{2}-\d{2} \d{1,2}:\d{2} gmt", "Gmail (before 2018)"),
    _row("yahoo-en", "attribution", r"gmt[+-]\d|^\s*-{2,}\s*on\b", "Yahoo Mail"),
    _row("apple-mail-en", "attribution", r"^\s*on .*\d{4}, at \d", "Apple Mail / iPhone"),
    _row("gmail-en", "attribution", r"^\s*on .*(?: at |, )\d{1,2}:\d{2}", "Gmail, Gmail mobile"),
    _row("thunderbird-en", "attribution", r"^\s*on \d{1,4}[/.-]\d{1,2}[/.-]\d{1,4}", "Thunderbird"),
    _row("attribution-fr", "attribution", r"a [ée]crit", "French clients"),
    _row("attribution-de", "attribution", r"schrieb", "German clients"),
    _row("attribution-es", "attribution", r"escribi", "Spanish clients"),
    _row("attribution-it", "attribution", r"ha scritto", "Italian clients"),
    _row("attribution-nordic", "attribution", r"\bskrev\b", "Danish, Norwegian, Swedish clients"),
    _row("attribution-zh", "attribution", r"写道|寫道", "Chinese clients (generic)"),
    _row("attribution-en", "attribution", r"", "'... wrote:' (generic)"),
)

ROWS: tuple[Row, ...] = (_SEPARATORS + _BARE_SEPARATORS + _FORWARDS + _SIGNATURES + _FOOTERS + _NOTIFICATIONS
                         + _ATTRIBUTIONS)

# HTML structure, read before the text: (name, what it means, clients). Matching is in _QuoteHTML.
HTML_RULES: tuple[tuple[str, str, str], ...] = (
    ("html:gmail-quote", "quote", "Gmail blockquote.gmail_quote (div.gmail_attr is the attribution)"),
    ("html:blockquote-cite", "quote", "Apple Mail, iPhone, Thunderbird: blockquote type=cite"),
    ("html:netease-isReplyContent", "quote", "NetEase 163/126 webmail: blockquote#isReplyContent"),
    ("html:netease-mailmaster-quote", "quote", "NetEase Mail Master: div.ntes-mailmaster-quote"),
    ("html:yahoo-quoted", "quote", "Yahoo: div.yahoo_quoted, blockquote.iosymail"),
    ("html:quote-container", "quote", "Proton, Zoho, Tutanota, GMX quote containers"),
    ("html:blockquote", "quote", "any other blockquote with a left border (not Gmail's border:none indent)"),
    ("html:blockquote-plain", "quote", "a bare blockquote: quoted only below an attribution (Thunderbird indents with it)"),
    ("html:outlook-divRplyFwdMsg", "cut", "Outlook 2016+/OWA/new Outlook: #divRplyFwdMsg"),
    ("html:outlook-appendonsend", "cut", "Outlook 2016+/OWA: #appendonsend"),
    ("html:outlook-reference", "cut", "Outlook for Mac: #mail-editor-reference-message-container"),
    ("html:outlook-hr", "cut", "OWA: <hr style=display:inline-block;width:98%> (checked: header below)"),
    ("html:outlook-border-top", "cut", "Outlook 2007+ desktop: border-top div (checked: header below)"),
    ("html:qq-original-content", "cut", "QQ Mail #original-content (checked: header below)"),
    ("html:139-replySplit", "cut", "China Mobile 139 mail: hr#replySplit, #reply139content"),
    ("html:zimbra", "cut", "Zimbra: hr#zwchr (checked: header below)"),
    ("html:gmail-attr", "drop", "Gmail attribution div.gmail_attr"),
    ("html:thunderbird-cite-prefix", "drop", "Thunderbird attribution div.moz-cite-prefix"),
    ("html:signature", "drop", "signature blocks: Gmail, Thunderbird, Apple, Outlook, NetEase #spnEditorSign, cards"),
    ("html:netease-forward", "forward", "NetEase #isForwardContent: forwarded content is kept"),
)


# --------------------------------------------------------------------------------------------------
# patterns behind the rows

_QUOTE_LINE = re.compile(r"^[ \t]*>")
_BLANK = re.compile(r"^[ \t\u3000\u00a0\u200b]*$")
_RULE_LINE = re.compile(r"[-_=—─~*]{3,}")  # a decorative rule (fullmatch on the stripped line)
_CLOSING = re.compile(r"(?:thanks|thank you|many thanks|regards|best regards|kind regards|warm regards|best|cheers|"
                      r"sincerely|br|谢谢|謝謝|多谢|此致|敬礼|祝好|顺祝商祺|顺颂商祺)[\s,，!！.。]*", re.I)
_BANNER = re.compile(r"^\s*(?:\[(?:caution|warning|external|notice)[^\]]{0,20}\]|(?:caution|warning|external(?: email| sender)?|"
                     r"notice)\s*[:：-]|【外部邮件】|\[外部邮件\]|外部邮件\s*[:：])", re.I)
_BANNER_WORDS = re.compile(r"outside|external|外部", re.I)

_ADDR = re.compile(r"[\w.+*-]+@[\w*-]+(?:\.[\w*-]+)+|\[mailto:|<[^<>\s]+@", re.I)
_DATE = re.compile(
    r"\d{4}\s*[-/.年]\s*\d{1,2}\s*[-/.月]\s*\d{1,2}|\d{1,2}\s*[-/.]\s*\d{1,2}\s*[-/.]\s*\d{2,4}|\d{1,2}\s*月\s*\d{1,2}\s*日|"
    r"\b(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?\s+\d{1,2}\b|"
    r"\b\d{1,2}\.?\s+[a-zéä]{3,9}\.?\s+\d{4}\b|"
    r"\b(?:mon|tue|wed|thu|fri|sat|sun)(?:day|s|sday|nesday|rsday|urday)?\b|周[一二三四五六日天]|星期[一二三四五六日天]|週[一二三四五六日]",
    re.I)
_TIME = re.compile(r"(?<![\d:])\d{1,2}[:：]\d{2}(?![\d])|\bkl\.\s*\d{1,2}[.:]\d{2}|\b\d{1,2}\s*(?:am|pm)\b|[上下]午\s*\d{1,2}",
                   re.I)
_WROTE = re.compile(
    r"(?:\bwrote|\bwrites|\bschrieb|\ba [ée]crit|\bescribi[óo]|\bha scritto|\bskrev|\bschreef|\bnapisał|\bescreveu|"
    r"\bkirjoitti|\bнаписал[аи]?|写道|寫道)\s*[:：]\s*$", re.I)
_ATTR_START = re.compile(
    r"^[ \t]*(?:-{2,}\s*)?(?:(?:on|le|am|el|il giorno|em|op|den|dne|w dniu|in data|at)\b|在|於|"
    r"\d{4}\s*[-/.年]\s*\d{1,2}|\d{1,2}[./]\s*\d{1,2}[./]\s*\d{2,4}|\d{1,2}\.\s+[^\W\d_]+\s+\d{4})", re.I)

# Header lines: label, colon (or '|' / tab from tables), value. CJK labels may have spaces inside.
_LABELS = {
    "from": ("from", "发件人", "發件人", "寄件者", "寄件人", "发信人", "de", "von", "da", "van", "od", "från", "fra"),
    "sent": ("sent", "sent time", "发送时间", "發送時間", "发送日期", "發送日期", "寄件日期", "傳送時間", "傳送日期", "发件时间",
             "envoyé", "gesendet", "enviado", "enviada em", "inviato", "verzonden", "skickat", "sendt"),
    "date": ("date", "日期", "时间", "時間", "datum", "data", "fecha", "dato"),
    "to": ("to", "收件人", "收件者", "à", "a", "an", "para", "aan", "per", "till", "til"),
    "cc": ("cc", "抄送", "抄送人", "副本", "抄本", "kopie"),
    "subject": ("subject", "主题", "主題", "主旨", "標題", "标题", "objet", "betreff", "asunto", "assunto", "oggetto",
                "onderwerp", "ämne", "emne"),
    "reply-to": ("reply-to", "reply to", "回复至", "回覆至"),
}


def _label_key(label: str) -> str:
    label = label.strip().lower()
    return " ".join(label.split()) if label.isascii() else "".join(label.split())


_LABEL_FIELD = {_label_key(lab): f for f, labs in _LABELS.items() for lab in labs}
# label (looked up in _LABEL_FIELD, so no big alternation runs per line), separator, value
_LABEL_LINE = re.compile(r"[ \t\u3000>|]*\**[ \t]*([^\n:：|\t*]{1,20}?)[ \t\u3000]*\**[ \t\u3000]*(?:[:：]|\||\t)\**[ \t\u3000]*(.*)")
_INLINE_LABELS = re.compile(r"(?<!\S)(?:from|sent|date|to|subject|cc)\s*:", re.I)

# Lazy passes over "\n" + text yield the lines worth a closer look. Every pattern starts with a literal
# ("\n", ":", "：") so the regex engine jumps between occurrences instead of trying every position
# (measured: ~1 ms per MB against 12-55 ms for a pattern that starts with a class or a group).
_CANDIDATE = re.compile(
    r"\n[ \t\u3000]{0,16}(?:[-_=—─~*|]|[^\n:：|\t]{1,20}[:：|\t]|"
    r"(?i:(?:sent|get|download|begin|original|on|le|am|el|il|at|em|op|den|ticket|a new|the command|"
    r"your ticket|thank you for|here is|we are sorry|caution|warning|external|this (?:e-?mail|message|communication)|"
    r"the information|if you (?:are not|have received))\b|disclaimer|confidential)|"
    r"从我的|從我的|发自|發自|来自|來自|获取|[在於于]\s*\d|原始|工单|收到一张|您对工单|您的工单|关于您的工单|感谢您的反馈|很抱歉|"
    r"免责|免責|保密|[本此该]邮件)")
_COLON_END = (re.compile(r":[ \t]*\n"), re.compile(r"：[ \t]*\n"))  # attributions end in a colon
# Consecutive '>' lines. Android Gmail wraps long quoted lines without '>': one unquoted line between
# two quoted ones, right below a quoted line of 60+ characters that does not end a sentence, is quoted too.
_QUOTE_RUN = re.compile(
    r"\n[ \t]*>[^\n]*(?:\n[ \t]*>[^\n]*|(?<=[^\n]{60})(?<![.?!。？！:：;；\s])\n(?![ \t]*>)(?=[^\n]*\S)[^\n]{1,200}"
    r"(?=\n[ \t]*>))*")
_WRAP_END = frozenset(".?!。？！:：;； \t")
MAX_CANDIDATES = 5000  # candidate lines examined per body: bounds hostile input (a colon on every line)
_RULE_CHARS = frozenset("-—─_=~*")
_MOBILE_FIRST = frozenset("sgd发来從从發來获")
_NOTIFY_FIRST = frozenset("工收您感很关tayhw")  # first letters of the _NOTIFICATIONS rows
_BARE_WORDS = frozenset({"original", "original message", "原始邮件", "原始郵件"})
_FORWARD_HINT = re.compile(r"forward|转发|轉寄|轉發|weitergeleitet|transf", re.I)
_FORWARD_STARTS = ("begin forwarded", "开始转发", "以下是转发")
# a disclaimer paragraph starts with one of these (the candidate pattern has the same words)
_DISCLAIMER_STARTS = ("disclaimer", "confidential", "this e-mail", "this email", "this message", "this communication",
                      "the information", "if you are not", "if you have received", "免责", "免責", "保密", "本邮件",
                      "此邮件", "该邮件")
_GREETING = re.compile(r"您好[：:！!]?\s*$|^(?:hello|dear)\b.*,\s*$", re.I)


def _norm(line: str) -> str:
    return line.replace("\u00a0", " ").replace("\u3000", " ").strip()


def _field(line: str) -> tuple[str, str] | None:
    """(field, value) when the line is a header line such as `发件人: 客服 <a@b>` or `*Sent:* Monday`."""
    if len(line) > MAX_LINE:
        return None
    m = _LABEL_LINE.match(line)
    if not m:
        return None
    f = _LABEL_FIELD.get(_label_key(m.group(1)))
    return (f, m.group(2)) if f else None


# --------------------------------------------------------------------------------------------------
# result


@dataclass
class Extraction:
    """What `extract` found. `new_text` is exactly the sender's new words ("" if none).

    `cut_line` is the 0-based index into `lines` where the final cut starts; `segments` are the kept
    line ranges (start, end exclusive); `notes` say, per line range, what was removed and by which rule.
    """

    new_text: str
    quoted: bool  # a quote, attribution or quote separator was found (signatures alone do not count)
    cut_line: int | None
    rule: str | None  # the row that made the final cut, else the first quote rule applied, else None
    segments: list[tuple[int, int]] = field(default_factory=list)
    source: str = "text"  # "text" or "html": which body was analysed
    lines: list[str] = field(default_factory=list)
    notes: list[tuple[int, int, str, str]] = field(default_factory=list)  # (start, end, action, rule)
    is_reply: bool = True

    def explain(self, limit: int = 400) -> str:
        """The analysed body with a marker column: '+' kept, '>' quoted, '-' dropped, 'x' cut."""
        mark = ["x" if self.cut_line is not None and i >= self.cut_line else "-" for i in range(len(self.lines))]
        for a, b in self.segments:
            for i in range(a, b):
                mark[i] = "+"
        why: dict[int, str] = {}
        for a, b, action, rule in self.notes:
            for i in range(a, min(b, len(self.lines))):
                if action == "quote" and mark[i] == "-":
                    mark[i] = ">"
            if a < len(self.lines):
                why.setdefault(a, f"{action}: {rule}")
        head = (f"source={self.source} is_reply={self.is_reply} quoted={self.quoted} rule={self.rule} "
                f"cut_line={None if self.cut_line is None else self.cut_line + 1}")
        out = [head]
        shown = list(range(min(limit, len(self.lines))))
        if self.cut_line is not None and self.cut_line >= limit:  # a late cut: show its neighbourhood too
            shown += range(max(limit, self.cut_line - 5), min(len(self.lines), self.cut_line + 5))
        prev = -1
        for i in shown:
            if i != prev + 1:
                out.append(f"{'':5} ... {i - prev - 1} lines")
            prev = i
            if self.cut_line is not None and i == self.cut_line:
                out.append(f"{'':5} ✂---- cut here by {self.rule}: this line and everything below is not new text")
            line = self.lines[i]
            text = line if len(line) <= 100 else line[:97] + "..."
            note = f"    <- {why[i]}" if i in why and self.cut_line != i else ""
            out.append(f"{i + 1:4} {mark[i]} | {text}{note}")
        if prev < len(self.lines) - 1:
            out.append(f"{'':5} ... {len(self.lines) - 1 - prev} more lines")
        out.append("---- new_text ----")
        shown_text = self.new_text[:2000]
        if len(self.new_text) > 2000:
            shown_text += f"\n... ({len(self.new_text) - 2000} more characters)"
        out.append(shown_text if self.new_text else "(empty)")
        return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# the line analysis


class _Scan:
    """One analysis of a body's lines: finds the final cut, the attributions to drop and what is quoted.

    Per-line facts (quoted? header field?) are computed on demand and memoised, so a line costs
    something only when a candidate line or an assembled segment looks at it.
    """

    def __init__(self, text: str, lines: list[str], html_quote: dict[int, str], drop: dict[int, str],
                 is_reply: bool, limit: int) -> None:
        self.text = text
        self.lines = lines
        self.n = len(lines)
        self.html_quote = html_quote  # line -> rule, from the HTML structure
        self.drop = drop  # line -> rule: attributions, banners, HTML signatures
        self.is_reply = is_reply
        self.limit = min(limit, self.n)
        self.cut: int | None = None
        self.cut_rule: str | None = None
        self.protected_until = -1  # forwarded header blocks are content
        self.notes: list[tuple[int, int, str, str]] = []
        self.attributed: set[int] = set()  # first lines of quoted blocks that an attribution introduced
        self._q: dict[int, str] = {}
        self._f: dict[int, tuple[str, str] | None] = {}
        self.named = 0
        self.runs = self._quote_runs()
        self.qstarts = {a for a, _, _ in self.runs}

    # -- per-line facts

    def blank(self, i: int) -> bool:
        return _BLANK.match(self.lines[i]) is not None

    def _base_quote(self, i: int) -> str:
        """'>' lines and HTML quotes; a bare blockquote's lines are scanned like text (it may hold a header)."""
        r = self.html_quote.get(i)
        if r and r != _SOFT_BLOCKQUOTE:
            return r
        return "quote:>" if _QUOTE_LINE.match(self.lines[i]) else ""

    def quote_rule(self, i: int) -> str:
        """The rule that makes line i quoted, or "". Android Gmail wraps long quoted lines without '>':
        one unquoted line between two quoted ones, below a long unfinished one, is quoted too."""
        r = self._q.get(i)
        if r is None:
            r = self._base_quote(i)
            if not r and 0 < i < self.n - 1 and len(self.lines[i]) <= 200 and not self.blank(i):
                prev = self.lines[i - 1]
                if len(prev) >= 60 and prev[-1] not in _WRAP_END and self._base_quote(i - 1) \
                        and self._base_quote(i + 1):
                    r = "quote:wrap"  # the same rule as _QUOTE_RUN's second branch
            self._q[i] = r
        return r

    def quoted(self, i: int) -> bool:
        return bool(self.quote_rule(i))

    def field(self, i: int) -> tuple[str, str] | None:
        if i not in self._f:
            self._f[i] = None if self.quoted(i) else _field(self.lines[i])
        return self._f[i]

    def next_nonblank(self, i: int, limit: int = _BLANKS_BEFORE_QUOTE) -> int | None:
        j, seen = i + 1, 0
        while j < self.n and seen <= limit:
            if not self.blank(j):
                return j
            j += 1
            seen += 1
        return None

    def prev_nonblank(self, i: int, limit: int = 3) -> int | None:
        j, seen = i - 1, 0
        while j >= 0 and seen <= limit:
            if not self.blank(j):
                return j
            j -= 1
            seen += 1
        return None

    def set_cut(self, i: int, rule: str, extend: bool = True) -> None:
        if extend:  # rules and bare 'Original' lines right above a header belong to it (DingTalk, OWA, QQ)
            j = i - 1
            while j >= 0 and j > i - 6 and not self.quoted(j):
                s = _norm(self.lines[j])
                if s and not (_RULE_LINE.fullmatch(s) or s.lower() in _BARE_WORDS):
                    break
                if s:
                    i = j
                j -= 1
        self.cut, self.cut_rule = i, rule

    # -- rows

    def header_block(self, i: int) -> bool:
        """Is line i the first line of a mail header block (Outlook, Foxmail, DingTalk, Mail Master...)?"""
        fields: dict[str, str] = {}
        label_lines = 0
        j, cont, blank_skips = i, 0, 0
        last_field = ""
        while j < self.n and j < i + 10:
            f = self.field(j)
            if f is not None:
                fields.setdefault(f[0], f[1])
                last_field = f[0]
                label_lines += 1
            elif self.quoted(j):
                break
            elif self.blank(j):
                if blank_skips or j + 1 >= self.n or self.field(j + 1) is None:
                    break
                blank_skips += 1
            elif last_field in ("to", "cc") and cont < 2:  # a wrapped recipient list
                cont += 1
            else:
                break
            j += 1
        if "from" not in fields:
            return False
        others = sum(1 for k in ("to", "cc", "subject", "reply-to") if k in fields)
        strong_date = "sent" in fields
        weak_date = "date" in fields
        if not (strong_date or weak_date or others >= 2):
            return False
        from_addr = _ADDR.search(fields["from"]) is not None
        prev = self.prev_nonblank(i, 1)
        after_rule = prev is not None and _RULE_LINE.fullmatch(_norm(self.lines[prev])) is not None
        if not (from_addr or strong_date or after_rule):
            return False  # `From: PEK` itineraries, pasted `寄件人：李四` shipping blocks
        date_text = fields.get("sent", "") + " " + fields.get("date", "")
        date_val = bool(_DATE.search(date_text) or _TIME.search(date_text))
        score = 2 * strong_date + weak_date + others + from_addr + date_val + after_rule
        if self.is_reply:
            return score >= 3
        return score >= 4 and label_lines >= 3

    def inline_header(self, i: int) -> bool:
        """`Date: ... From: a@b To: ... Subject: ...` on one line (webmail that lost its line breaks)."""
        line = self.lines[i]
        labels = len(_INLINE_LABELS.findall(line))
        need = 3 if self.is_reply else 4
        return labels >= need and (_ADDR.search(line) is not None or _DATE.search(line) is not None)

    def header_rule(self, i: int) -> str:
        """Name the client of a header block by its labels."""
        text = " ".join(self.lines[i:i + 6])
        if re.search(r"寄件者|寄件日期|收件者|主旨|傳送", text):
            return "outlook-header-zh-TW"
        if re.search(r"发件人|发送时间|收件人|主题|日期", text):
            prev = self.prev_nonblank(i, 1)
            if prev is not None and _RULE_LINE.fullmatch(_norm(self.lines[prev])):
                return "dingtalk-header-zh-CN" if _norm(self.lines[prev]).startswith("-") else "outlook-header-zh-CN"
            return "outlook-header-zh-CN" if "发送时间" in text else "mail-header-zh"
        if re.search(r"(?i)\bsent\s*:", text):
            return "outlook-header-en"
        return "mail-header"

    def header_follows(self, i: int) -> bool:
        j, seen = i + 1, 0
        while j < self.n and seen < 4:
            if not self.blank(j):
                f = self.field(j)
                if f is not None and f[0] in ("from", "sent", "date"):
                    return True
                seen += 1
            j += 1
        return False

    def attribution_block(self, i: int) -> tuple[int, str] | None:
        """(first line, joined text) of an attribution ending at line i, wrapped over up to three lines."""
        k = i
        text = _norm(self.lines[i])
        while k > i - 2 and k > 0:
            m = _ADDR.search(self.lines[k])
            if _ATTR_START.match(self.lines[k]) or (m and k < i and re.search(r"\w", self.lines[k][:m.start()])):
                break  # `On ...`, or `Name <a@b> 于...` (Gmail zh puts the name first)
            above = self.lines[k - 1]
            if self.blank(k - 1) or self.quoted(k - 1) or (k - 1) in self.drop or len(above) > 300:
                break
            fragment = len(text.split()) <= 3 or text[:1] in "<(\"'" or text[:1].islower()
            a = _norm(above)
            joins = (_ATTR_START.match(above) is not None or _DATE.search(a) is not None or _TIME.search(a) is not None
                     or a.count("<") > a.count(">") or a.endswith(("=", "<", "于", "於")) or _ADDR.search(a) is not None)
            if not (joins or (fragment and len(a) < 200)):
                break
            k -= 1
            text = a + " " + text
        if len(text) > 400:
            return None
        return k, text

    def attribution_rule(self, text: str) -> str:
        self.named += 1
        if self.named > 100:  # a hostile body of attributions: naming each one is not worth the time
            return "attribution"
        for row in _ATTRIBUTIONS:
            if row.pattern.search(text):
                return row.name
        return "attribution-en"

    def check_attribution(self, i: int, s: str) -> bool:
        """Drop an attribution above a quoted block, or cut at one that introduces an unquoted quote.

        Returns True when it cut."""
        line = self.lines[i]
        wrote = s[-1] in ":：" and _WROTE.search(line[-48:]) is not None
        nxt = self.before_quote(i)
        before_quote = nxt is not None
        if not wrote and not before_quote:
            return False
        block = self.attribution_block(i)
        if block is None:
            return False
        k, text = block
        has_addr = _ADDR.search(text) is not None
        has_date = _DATE.search(text) is not None
        has_time = _TIME.search(text) is not None
        strong = has_addr or (has_date and has_time)
        starts = _ATTR_START.match(self.lines[k]) is not None
        if before_quote:
            if wrote:
                short = len(text) <= 60 and len(text.split()) <= 8
                ok = strong or has_date or has_time or (self.is_reply and short)
            else:  # `2017-12-22 10:35 GMT-02:00 Name <a@b>:` or a line wrapped into the quote
                ok = has_addr and (has_date or has_time) and (starts or s[-1] in ":：")
            if ok:
                rule = self.attribution_rule(text)
                for j in range(k, i + 1):
                    self.drop[j] = rule
                self.notes.append((k, i + 1, "attribution", rule))
                self.attributed.add(nxt)  # type: ignore[arg-type]
            return False
        if strong or (self.is_reply and starts and (has_date or has_time) and len(text) <= 160):
            self.set_cut(k, self.attribution_rule(text), extend=False)
            return True
        return False

    def check_rule_line(self, i: int) -> bool:
        nxt = self.next_nonblank(i, 1)
        if nxt is not None and not self.quoted(nxt):
            f = self.field(nxt)
            if f is not None and f[0] == "from" and i > self.protected_until:
                self.set_cut(i, "outlook-rule-from")
                return True
            if _FOOTERS[0].pattern.fullmatch(_norm(self.lines[nxt])):
                self.set_cut(i, "mailing-list-footer", extend=False)
                return True
        if i > 0 and _CLOSING.fullmatch(_norm(self.lines[i - 1])):
            self.set_cut(i, "signature-rule", extend=False)
            return True
        return False

    def protect_forward(self, i: int) -> None:
        j = i + 1
        while j < self.n and j < i + 12 and (self.blank(j) or self.field(j) is not None):
            j += 1
        self.protected_until = j - 1
        self.notes.append((i, j, "forward kept", "forward"))

    def cut_notification(self, i: int, rule: str) -> None:
        j = self.prev_nonblank(i, 2)
        if j is not None and _GREETING.search(_norm(self.lines[j])):
            i = j
        self.set_cut(i, rule)

    def cut_disclaimer(self, i: int) -> None:
        j = i
        while j > 0 and j > i - 10 and not self.blank(j - 1) and not self.quoted(j - 1):
            j -= 1  # the paragraph the notice starts
        self.set_cut(j, "disclaimer")

    def check_line(self, i: int) -> bool:
        """Apply the rows to candidate line i; True when one cut."""
        raw = self.lines[i]
        if len(raw) > MAX_LINE:
            return False
        s = _norm(raw)
        if not s:
            return False
        c0 = s[0]
        low = s.lower()
        if c0 in _RULE_CHARS:
            for row in _SEPARATORS:
                if row.pattern.fullmatch(s):
                    self.set_cut(i, row.name)
                    return True
            if raw.rstrip("\r\n") in ("-- ", "--") or s == "--":
                self.set_cut(i, "signature-dashdash", extend=False)
                return True
            if _FORWARD_HINT.search(s) and _FORWARDS[0].pattern.fullmatch(s):
                self.protect_forward(i)
                return False
            if _RULE_LINE.fullmatch(s):
                return self.check_rule_line(i)
        elif low.startswith(_FORWARD_STARTS) and _FORWARDS[0].pattern.fullmatch(s):
            self.protect_forward(i)
            return False
        if i > self.protected_until:
            if low in _BARE_WORDS and self.header_follows(i):
                self.set_cut(i, "qq-original-bare" if low != "original message" else "blackberry-original")
                return True
            if self.field(i) is not None:
                if self.header_block(i):
                    self.set_cut(i, self.header_rule(i))
                    return True
                if self.inline_header(i):
                    self.set_cut(i, "inline-header-line")
                    return True
        if len(s) <= 120 and low[0] in _MOBILE_FIRST:
            bare = re.sub(r"\s*(?:<[^<>]*>|\([^()]*\))$", "", s).rstrip(".。!！ ")
            for row in _SIGNATURES[1:]:
                if row.pattern.fullmatch(bare):
                    self.set_cut(i, row.name, extend=False)
                    return True
        if low[0] in _NOTIFY_FIRST:
            for row in _NOTIFICATIONS:
                if row.pattern.match(s):
                    self.cut_notification(i, row.name)
                    return True
        if low.startswith(_DISCLAIMER_STARTS) and _FOOTERS[1].pattern.match(s):
            self.cut_disclaimer(i)
            return True
        if s[-1] in ":：" or _ATTR_START.match(raw) or self.before_quote(i) is not None:
            return self.check_attribution(i, s)
        return False

    def before_quote(self, i: int) -> int | None:
        """The first line of the quoted block right below line i (blank lines between allowed), or None."""
        for k in range(i + 1, min(i + 2 + _BLANKS_BEFORE_QUOTE, self.n)):
            if k in self.qstarts:
                return k
            if not self.blank(k):
                return None
        return None

    # -- the pass

    def run(self) -> None:
        for i in _candidates(self.text):
            if i >= self.limit:
                break
            if self.quoted(i) or i in self.drop:
                continue
            if self.check_line(i):
                break

    def _quote_runs(self) -> list[tuple[int, int, str]]:
        """Quoted line ranges [a, b) with their rule: '>' runs (one regex, Android's wrapped lines
        included) and the HTML quote marks."""
        runs: list[tuple[int, int, str]] = []
        body = "\n" + self.text
        line, pos = 0, 0
        for m in _QUOTE_RUN.finditer(body):
            line += body.count("\n", pos, m.start())
            pos = m.start()
            runs.append((line, line + m.group().count("\n"), "quote:>"))
        if self.html_quote:
            marks = sorted(self.html_quote)
            html_runs: list[tuple[int, int, str]] = []
            for k in marks:
                rule = self.html_quote[k]
                if html_runs and html_runs[-1][1] == k and html_runs[-1][2] == rule:
                    html_runs[-1] = (html_runs[-1][0], k + 1, rule)
                else:
                    html_runs.append((k, k + 1, rule))
            runs = sorted(runs + html_runs)
        return runs

    def assemble(self, end: int) -> tuple[str, list[tuple[int, int]]]:
        """The kept lines of [0, end) joined; where lines were removed, at most one blank line stays.

        In a first mail (`is_reply=False`) a quoted block counts only when an attribution introduced it."""
        removed: list[tuple[int, int]] = []
        prev_ok, prev_end = False, -1
        for a, b, rule in self.runs:
            if a >= end:
                break
            b = min(b, end)
            if rule == _SOFT_BLOCKQUOTE and a not in self.attributed:
                continue
            if not self.is_reply:
                ok = a in self.attributed or (prev_ok and all(self.blank(x) for x in range(prev_end, a)))
                prev_ok, prev_end = ok, b
                if not ok:
                    continue
            removed.append((a, b))
            self.notes.append((a, b, "quote", rule))
        for k in self.drop:
            if k < end:
                removed.append((k, k + 1))
        removed.sort()
        segments: list[tuple[int, int]] = []
        at = 0
        for a, b in removed:
            if a > at:
                segments.append((at, a))
            at = max(at, b)
        if at < end:
            segments.append((at, end))
        out: list[str] = []  # lines
        for a, b in segments:
            chunk = [line.rstrip(" \t\u3000\u00a0") for line in self.lines[a:b]]
            if out:  # joined across a removed block: at most one blank line at the seam
                lead = 0
                while lead < len(chunk) and not chunk[lead].strip():
                    lead += 1
                if lead == len(chunk):
                    if out[-1].strip():
                        out.append("")
                    continue
                if out[-1].strip() and lead:
                    out.append("")
                chunk = chunk[lead:]
            out.extend(chunk)
        return "\n".join(out).strip(), segments


def _candidates(text: str) -> Iterable[int]:
    """Line numbers of candidate lines, ascending, lazily (the scan stops at the first cut)."""
    body = "\n" + text

    def starts() -> Iterable[int]:
        line, pos = 0, 0
        for m in _CANDIDATE.finditer(body):
            line += body.count("\n", pos, m.start())
            pos = m.start()
            yield line

    def colons(pattern: re.Pattern[str]) -> Iterable[int]:
        line, pos = -1, 0
        for m in pattern.finditer(body + "\n"):
            line += body.count("\n", pos, m.start())
            pos = m.start()
            yield line

    last = -1
    for n, i in enumerate(heapq.merge(starts(), *(colons(p) for p in _COLON_END))):
        if n > MAX_CANDIDATES:
            return
        if i != last:
            last = i
            yield i


def _banner(lines: list[str], drop: dict[int, str], notes: list[tuple[int, int, str, str]]) -> None:
    """A gateway's 'CAUTION: This email originated from outside...' paragraph on top is not the sender's."""
    i = 0
    while i < len(lines) and i < 20 and _BLANK.match(lines[i]):
        i += 1
    if i >= len(lines) or len(lines[i]) > MAX_LINE or not _BANNER.match(lines[i]):
        return
    j = i
    while j < len(lines) and not _BLANK.match(lines[j]) and j < i + 6:
        j += 1
    para = " ".join(lines[i:j])
    if len(para) <= 500 and _BANNER_WORDS.search(para) and any(not _BLANK.match(x) for x in lines[j:j + 50]):
        for k in range(i, j):
            drop[k] = "external-banner"
        notes.append((i, j, "banner", "external-banner"))


def _analyse(text: str, lines: list[str], html_quote: dict[int, str], drop: dict[int, str], is_reply: bool,
             source: str, hard_cut: tuple[int, str] | None) -> Extraction:
    notes: list[tuple[int, int, str, str]] = []
    _banner(lines, drop, notes)
    limit = hard_cut[0] if hard_cut else len(lines)
    scan = _Scan(text, lines, html_quote, drop, is_reply, limit)
    scan.notes = notes
    scan.run()
    cut, rule = scan.cut, scan.cut_rule
    if hard_cut and (cut is None or hard_cut[0] <= cut):
        cut, rule = hard_cut
    if cut is not None:
        cut = min(cut, len(lines))
    new_text, segments = scan.assemble(cut if cut is not None else len(lines))
    notes.sort()
    quote_rules = [r for _, _, act, r in notes if act in ("quote", "attribution")]
    quoted = bool(quote_rules) or (rule is not None and not _is_non_quote_rule(rule))
    if rule is None and quote_rules:
        rule = quote_rules[0]
    return Extraction(new_text=new_text, quoted=quoted, cut_line=cut, rule=rule, segments=segments, source=source,
                      lines=lines, notes=notes, is_reply=is_reply)


_NON_QUOTE_RULES = frozenset({"signature-rule", "mailing-list-footer", "external-banner", "disclaimer", "html:signature"}
                             | {r.name for r in ROWS if r.kind in ("signature", "footer")})


def _is_non_quote_rule(rule: str) -> bool:
    return rule in _NON_QUOTE_RULES


def _text_extraction(text: str, is_reply: bool) -> Extraction:
    text = text.replace("\r\n", "\n").replace("\r", "\n")[:MAX_TEXT]
    return _analyse(text, text.split("\n"), {}, {}, is_reply, "text", None)


# --------------------------------------------------------------------------------------------------
# HTML quote structure

_HTML_SKIP = frozenset({"script", "style", "head", "title", "template", "noscript"})
_HTML_BLOCK = frozenset({"p", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol",
                         "blockquote", "pre", "hr", "section", "article", "header", "footer", "dl", "dt",
                         "dd", "address", "center", "form", "fieldset", "nav", "figure", "body", "tbody"})
_HTML_VOID = frozenset({"br", "hr", "img", "meta", "link", "input", "wbr", "area", "base", "col", "embed", "source",
                        "track", "param"})
_SELF_CLOSING_SIBLINGS = frozenset({"p", "li", "td", "th", "tr", "option", "dt", "dd"})
_QUOTE_CLASSES = {"yahoo_quoted": "html:yahoo-quoted", "iosymail": "html:yahoo-quoted",
                  "protonmail_quote": "html:quote-container", "zmail_extra": "html:quote-container",
                  "tutanota_quote": "html:quote-container", "ntes-mailmaster-quote": "html:netease-mailmaster-quote"}
_DROP_CLASSES = {"gmail_attr": "html:gmail-attr", "moz-cite-prefix": "html:thunderbird-cite-prefix",
                 "gmail_signature": "html:signature", "moz-signature": "html:signature"}
_DROP_IDS = {"spneditorsign": "html:signature", "divneteasemailcard": "html:signature",
             "diveditorgraphsign": "html:signature", "applemailsignature": "html:signature",
             "signature": "html:signature", "ms-outlook-mobile-signature": "html:signature",
             "signcontainer": "html:signature"}
_CUT_IDS = {"divrplyfwdmsg": ("html:outlook-divRplyFwdMsg", False), "appendonsend": ("html:outlook-appendonsend", False),
            "mail-editor-reference-message-container": ("html:outlook-reference", False),
            "replysplit": ("html:139-replySplit", False), "reply139content": ("html:139-replySplit", False),
            "original-content": ("html:qq-original-content", True), "zwchr": ("html:zimbra", True)}
_MAX_STACK = 512
# a blockquote without a quoting attribute: quoted only when an attribution line introduces it
_SOFT_BLOCKQUOTE = "html:blockquote-plain"


class _Stop(Exception):
    """Raised inside the parser once a cut point is known: nothing below it can be new text."""


class _QuoteHTML(HTMLParser):
    """Mail HTML to lines, remembering which lines sit in a quote, a dropped block or after a cut point.

    With `stop=True` parsing ends at the first cut point a reply trusts without checking (or a dozen
    lines below one that needs checking): a reply's long quoted HTML is never walked."""

    def __init__(self, is_reply: bool = True, stop: bool = True) -> None:
        super().__init__(convert_charrefs=True)
        self.is_reply = is_reply
        self.stop = stop
        self._stop_at: int | None = None
        self.lines: list[str] = []
        self.quote: dict[int, str] = {}
        self.dropped: dict[int, str] = {}
        self.cuts: list[tuple[int, str, bool]] = []  # (line, rule, needs a header below to count)
        self.forward = False
        self._cur: list[str] = []
        self._cur_role: tuple[str, str] | None = None
        self._stack: list[str] = []
        self._open: dict[str, int] = {}  # open elements per tag name
        self._roles: list[tuple[str, str] | None] = [None]  # effective role per stack depth
        self._skip = 0

    def _flush(self) -> None:
        raw = "".join(self._cur)
        self._cur = []
        text = "\t".join(" ".join(cell.split()) for cell in raw.split("\t")).strip(" \t")
        if text:
            i = len(self.lines)
            self.lines.append(text)
            if self._cur_role:
                (self.quote if self._cur_role[0] == "quote" else self.dropped)[i] = self._cur_role[1]
        if self._stop_at is not None and len(self.lines) >= self._stop_at:
            raise _Stop

    def _cut(self, rule: str, verify: bool) -> None:
        self._flush()
        self.cuts.append((len(self.lines), rule, verify))
        if self.stop and self._stop_at is None:
            self._stop_at = len(self.lines) + (12 if verify or not self.is_reply else 0)
            if self._stop_at == len(self.lines):
                raise _Stop

    def _newline(self, blank: bool = False) -> None:
        self._flush()
        if blank and self.lines and self.lines[-1] != "":
            self.lines.append("")

    def _role_for(self, tag: str, attrs: list[tuple[str, str | None]]) -> tuple[str, str] | None:
        if not attrs:
            return ("quote", _SOFT_BLOCKQUOTE) if tag == "blockquote" else None
        a = {k: (v or "") for k, v in attrs}
        classes = a.get("class", "").lower().split()
        ident = a.get("id", "").lower().strip()
        style = re.sub(r"\s+", "", a.get("style", "").lower())
        if ident in _CUT_IDS:
            self._cut(*_CUT_IDS[ident])
        if tag == "hr" and "display:inline-block" in style and "width:98%" in style:
            self._cut("html:outlook-hr", True)
        if tag == "div" and "border-top:" in style and ("#e1e1e1" in style or "#b5c4df" in style):
            self._cut("html:outlook-border-top", True)
        if ident == "isforwardcontent":
            self.forward = True
            return None
        if ident in ("isreplycontent", "orimsghtmlseperator"):
            return ("quote", "html:netease-isReplyContent")
        if ident in _DROP_IDS:
            return ("drop", _DROP_IDS[ident])
        for c in classes:
            if c in _QUOTE_CLASSES:
                return ("quote", _QUOTE_CLASSES[c])
            if c in _DROP_CLASSES:
                return ("drop", _DROP_CLASSES[c])
        if a.get("name", "").lower() == "quote":
            return ("quote", "html:quote-container")
        if tag == "blockquote":
            if "gmail_quote" in classes:
                return ("quote", "html:gmail-quote")
            if a.get("type", "").lower() == "cite":
                return ("quote", "html:blockquote-cite")
            if "border:none" in style and "border-left" not in style:
                return None  # Gmail's "indent more"
            if "border-left" in style:
                return ("quote", "html:blockquote")
            return ("quote", _SOFT_BLOCKQUOTE)  # Thunderbird's "indent" makes these too
        return None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            self._skip = 0
        if tag in _HTML_SKIP:
            self._skip += 1
            return
        role = self._role_for(tag, attrs)
        if tag == "br":
            if self._cur:
                self._flush()
            elif self.lines and self.lines[-1] != "":
                self.lines.append("")
            return
        if tag in _HTML_BLOCK:
            self._newline(blank=tag in ("p", "blockquote", "table"))
        elif tag in ("td", "th") and self._cur:
            self._cur.append("\t")
        if tag in _HTML_VOID:
            return
        if tag in _SELF_CLOSING_SIBLINGS and self._stack and self._stack[-1] == tag:
            self._pop_to(len(self._stack) - 1)
        if len(self._stack) < _MAX_STACK:
            self._stack.append(tag)
            self._open[tag] = self._open.get(tag, 0) + 1
            self._roles.append(role or self._roles[-1])

    def _pop_to(self, depth: int) -> None:
        for tag in self._stack[depth:]:
            self._open[tag] -= 1
        del self._stack[depth:]
        del self._roles[depth + 1:]

    def handle_endtag(self, tag: str) -> None:
        if tag in _HTML_SKIP:
            self._skip = max(0, self._skip - 1)
            return
        if tag in _HTML_VOID:
            return
        if tag in _HTML_BLOCK:
            self._newline(blank=tag in ("p", "blockquote", "table"))
        if not self._open.get(tag):
            return  # nothing to close (stray end tags are common in mail HTML)
        for depth in range(len(self._stack) - 1, max(-1, len(self._stack) - 65), -1):
            if self._stack[depth] == tag:
                self._pop_to(depth)
                break

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if not self._cur:
            if not data.strip():
                return
            self._cur_role = self._roles[-1]
        self._cur.append(data.replace("\t", " "))

    def close(self) -> None:
        super().close()
        self._flush()
        while self.lines and self.lines[-1] == "":
            self.lines.pop()


# Substrings (lowercase) of every structure _QuoteHTML reacts to: HTML without any of them has no quote
# structure, so it is not parsed a second time (parse already turned it into text).
_STRUCTURE_HINTS = ("blockquote", "gmail_", "divrplyfwdmsg", "appendonsend", "mail-editor-reference", "inline-block",
                    "border-top", "replysplit", "reply139content", "isreplycontent", "orimsghtmlseperator",
                    "isforwardcontent", "spneditor", "neteasemailcard", "editorgraphsign", "mailmaster-quote",
                    "yahoo_quoted", "iosymail", "moz-cite", "moz-signature", "protonmail_quote", "zmail_extra",
                    "tutanota_quote", "quote", "signature", "original-content", "zwchr", "signcontainer")


def _has_structure(markup: str) -> bool:
    low = markup[:MAX_HTML].lower()
    return any(h in low for h in _STRUCTURE_HINTS)


def _html_lines(markup: str, is_reply: bool, stop: bool = True) -> _QuoteHTML | None:
    parser = _QuoteHTML(is_reply, stop)
    try:
        try:
            parser.feed(markup_mod.safe(markup, MAX_HTML))
            parser.close()
        except _Stop:
            parser.stop = False
            parser._stop_at = None
            parser._flush()
    except Exception:  # html.parser has raised AssertionError on junk; the text path remains
        return None
    return parser


def _verified_cut(p: _QuoteHTML, is_reply: bool) -> tuple[int, str] | None:
    """The first HTML cut point that counts: unchecked ids in a reply; else a header or separator below."""
    for line, rule, verify in sorted(p.cuts):
        if is_reply and not verify:
            return line, rule
        seen = 0
        for j in range(line, min(len(p.lines), line + 12)):
            s = _norm(p.lines[j])
            if not s:
                continue
            seen += 1
            f = _field(p.lines[j])
            if (f is not None and f[0] in ("from", "sent", "date")) or _WROTE.search(s) \
                    or any(r.pattern.fullmatch(s) for r in _SEPARATORS + _BARE_SEPARATORS):
                return line, rule
            if seen >= 4:
                break
    return None


def _html_extraction(markup: str, is_reply: bool) -> tuple[Extraction, bool] | None:
    """(extraction, whether the HTML had quote structure); None when the HTML could not be read."""
    p = _html_lines(markup, is_reply)
    if p is None:
        return None
    hard = _verified_cut(p, is_reply)
    if hard is None and p.cuts:  # stopped below a cut point that did not check out: read it all
        p = _html_lines(markup, is_reply, stop=False)
        if p is None:
            return None
        hard = _verified_cut(p, is_reply)
    structure = bool(p.quote or p.dropped or hard or p.forward)
    ex = _analyse("\n".join(p.lines), p.lines, dict(p.quote), dict(p.dropped), is_reply, "html", hard)
    for i, rule in p.dropped.items():
        ex.notes.append((i, i + 1, "dropped", rule))
    ex.notes.sort()
    return ex, structure


# --------------------------------------------------------------------------------------------------
# entry points


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def extract(text: str, html: str | None = None, is_reply: bool = True) -> Extraction:
    """The sender's new words in a mail body. Never raises on any input; "" when only a quote was sent.

    `text` is the plain body (or the HTML turned into text), `html` the HTML part if there is one,
    `is_reply` whether the mail is a reply (In-Reply-To/References, Re:/回复: subject; see
    `looks_like_reply`): a first mail is cut less eagerly.
    """
    text = text or ""
    if html and html.strip() and (_has_structure(html) or not text.strip()):
        found = _html_extraction(html, is_reply)
        if found is not None:
            hex_, structure = found
            if structure or not text.strip():
                if text.strip():
                    tex = _text_extraction(text, is_reply)
                    if _squash(tex.new_text) == _squash(hex_.new_text):
                        return tex  # the same words: keep the plain part's wording
                return hex_
    return _text_extraction(text, is_reply)


_REPLY_PREFIX = re.compile(r"^\s*(?:re|aw|antw|sv|vs|odp|回复|回覆|答复|答覆)\s*(?:\[\d+\]|\(\d+\))?\s*[:：]", re.I)


def looks_like_reply(subject: str, in_reply_to: Sequence[str] = (), references: Sequence[str] = ()) -> bool:
    """A reply by its headers: In-Reply-To or References, or a Re:/回复:/答复: subject (not Fw:/转发:)."""
    return bool(in_reply_to) or bool(references) or _REPLY_PREFIX.match(subject or "") is not None


def explain_message(msg: object) -> str:
    """`--explain` for a parsed `Message`: the same extraction parse ran, as a readable report."""
    subject = getattr(msg, "subject", "")
    reply = looks_like_reply(subject, getattr(msg, "in_reply_to", ()), getattr(msg, "references", ()))
    return extract(getattr(msg, "text", ""), getattr(msg, "html", None), reply).explain()
