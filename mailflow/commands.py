"""Staff subject-line commands: parsing and authorisation (DESIGN.md section 5).

`[RESOLVE]`, `[CLOSE]`, `[REOPEN]`, `[PENDING]`, `[ASSIGN name|team]`, `[PRIORITY level]`,
`[CATEGORY name]`, `[TAG x]`, `[NOTE]`, `[ESCALATE]`, `[MERGE CW...]`, `[SPAM]`, any number, any case,
with Chinese aliases. Parsing is pure; the pipeline applies the commands.

The From header proves nothing: a command counts only when the sender is in the staff directory AND
the mail references a Message-ID mailflow minted (HMAC-signed) for that staff member and ticket, or a
trusted server's Authentication-Results shows DMARC pass / aligned DKIM pass for the sender's domain.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from mailflow.model import AuthResult, Message

ALIASES = {
    "RESOLVE": "RESOLVE", "RESOLVED": "RESOLVE", "解决": "RESOLVE", "已解决": "RESOLVE", "解決": "RESOLVE",
    "CLOSE": "CLOSE", "关闭": "CLOSE", "關閉": "CLOSE",
    "REOPEN": "REOPEN", "重开": "REOPEN", "重新打开": "REOPEN",
    "PENDING": "PENDING", "待定": "PENDING", "等待": "PENDING", "等待客户": "PENDING",
    "ASSIGN": "ASSIGN", "分配": "ASSIGN", "指派": "ASSIGN", "转交": "ASSIGN",
    "PRIORITY": "PRIORITY", "优先级": "PRIORITY", "優先級": "PRIORITY",
    "CATEGORY": "CATEGORY", "分类": "CATEGORY", "類別": "CATEGORY",
    "TAG": "TAG", "标签": "TAG", "標籤": "TAG",
    "NOTE": "NOTE", "备注": "NOTE", "內部": "NOTE", "内部": "NOTE",
    "ESCALATE": "ESCALATE", "升级": "ESCALATE", "升級": "ESCALATE",
    "MERGE": "MERGE", "合并": "MERGE", "合併": "MERGE",
    "SPAM": "SPAM", "垃圾": "SPAM", "垃圾邮件": "SPAM",
}
NEEDS_ARG = {"ASSIGN", "PRIORITY", "CATEGORY", "TAG", "MERGE"}
PRIORITY_WORDS = {"urgent": "urgent", "紧急": "urgent", "緊急": "urgent", "high": "high", "高": "high",
                  "normal": "normal", "普通": "normal", "中": "normal", "medium": "normal",
                  "low": "low", "低": "low"}
CATEGORY_WORDS = {"complaint": "complaint", "投诉": "complaint", "投訴": "complaint",
                  "fault": "fault", "bug": "fault", "故障": "fault",
                  "inquiry": "inquiry", "question": "inquiry", "咨询": "inquiry", "諮詢": "inquiry",
                  "suggestion": "suggestion", "建议": "suggestion", "建議": "suggestion",
                  "praise": "praise", "表扬": "praise", "表揚": "praise"}
# bracketed words that mail systems put into subjects; never mistaken for a command attempt
IGNORED = {"EXTERNAL", "EXT", "CAUTION", "WARNING", "SUSPICIOUS", "SECURE", "ENCRYPT", "SIGNED", "FWD",
           "FW", "RE", "BULK", "URGENT", "HIGH", "NORMAL", "LOW", "ESCALATED", "NEW"}
_BRACKET = re.compile(r"[\[【]([^\[\]【】]{1,80})[\]】]")


@dataclass
class Command:
    name: str  # canonical, e.g. "ASSIGN"
    arg: str  # "" when none
    raw: str  # as written, for error replies


@dataclass
class Parsed:
    commands: list[Command]
    errors: list[str]


def parse_commands(subject: str, prefix: str = "CW", ticket_subject: str = "") -> Parsed:
    """All commands in a subject; unknown or malformed ones become errors (and change nothing).

    The ticket's own subject (customer text, quoted in every notification's subject) is cut out
    first: a customer's "[URGENT] help" is not a staff member's command."""
    if ticket_subject and len(ticket_subject) >= 3:
        subject = subject.replace(ticket_subject, " ")
    cmds: list[Command] = []
    errors: list[str] = []
    tag = re.compile(rf"^{re.escape(prefix)}\d{{12,}}$", re.I)
    for m in _BRACKET.finditer(subject):
        raw = m.group(1).strip()
        if not raw or tag.match(raw):
            continue
        parts = re.split(r"[\s:：=]+", raw, maxsplit=1)
        word = parts[0]
        arg = parts[1].strip() if len(parts) > 1 else ""
        name = ALIASES.get(word.upper()) or ALIASES.get(word)
        if name is None:
            if word.upper() in IGNORED or not re.fullmatch(r"[A-Za-z]+", word):
                continue  # not an attempt at a command: "[External]", "[外部邮件]"
            errors.append(f"[{raw}]: unknown command (known: {', '.join(sorted(set(ALIASES.values())))})")
            continue
        if name in NEEDS_ARG and not arg:
            errors.append(f"[{raw}]: {name} needs an argument, e.g. [{name} {_example(name)}]")
            continue
        if name == "PRIORITY" and arg.lower() not in PRIORITY_WORDS:
            errors.append(f"[{raw}]: unknown priority {arg!r} (urgent, high, normal, low)")
            continue
        if name == "CATEGORY" and arg.lower() not in CATEGORY_WORDS:
            errors.append(f"[{raw}]: unknown category {arg!r} ({', '.join(sorted(set(CATEGORY_WORDS.values())))})")
            continue
        if name == "MERGE" and not tag.match(arg.strip()):
            errors.append(f"[{raw}]: MERGE needs a ticket id like {prefix}202611230001")
            continue
        if name not in NEEDS_ARG and arg:
            errors.append(f"[{raw}]: {name} takes no argument")
            continue
        if name == "PRIORITY":
            arg = PRIORITY_WORDS[arg.lower()]
        elif name == "CATEGORY":
            arg = CATEGORY_WORDS[arg.lower()]
        elif name == "MERGE":
            arg = arg.strip().upper()
        cmds.append(Command(name, arg, raw))
    return Parsed(cmds, errors)


def _example(name: str) -> str:
    return {"ASSIGN": "alice", "PRIORITY": "urgent", "CATEGORY": "fault", "TAG": "refund",
            "MERGE": "CW202611230001"}.get(name, "")


def trusted_result(msg: Message, trusted_authserv_ids: list[str]) -> AuthResult | None:
    """The topmost Authentication-Results header from a trusted server, or None.

    Our own MTA prepends its header, so it is the first with its authserv-id; anything further
    down with the same id came with the message and may be forged (RFC 8601 section 5)."""
    trusted = {t.lower() for t in trusted_authserv_ids}
    for ar in msg.auth_results:  # header order: topmost first
        if ar.authserv_id in trusted:
            return ar
    return None


def authenticate(msg: Message, staff_email: str, ticket_id: str, verify_id: Callable[[str, str], str | None],
                 trusted_authserv_ids: list[str]) -> str | None:
    """How the staff sender proved who they are, or None (then commands are ignored and logged)."""
    for mid in [*msg.in_reply_to, *msg.references]:
        if verify_id(mid, staff_email) == ticket_id:
            return "signed reference"
    domain = staff_email.rpartition("@")[2].lower()
    ar = trusted_result(msg, trusted_authserv_ids)
    if ar is None or ar.dmarc in ("fail", "quarantine", "reject"):
        return None
    if ar.dmarc == "pass" and (ar.dmarc_domain or domain) == domain:
        return f"DMARC pass at {ar.authserv_id}"
    if domain in ar.dkim_pass_domains:
        return f"aligned DKIM pass at {ar.authserv_id}"
    return None
