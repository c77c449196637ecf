"""Staff subject-line commands (DESIGN.md section 5): a registry, parsing, permissions, authentication.

`[RESOLVE]`, `[CLOSE]`, `[REOPEN]`, `[PENDING]`, `[ASSIGN name|team]`, `[PRIORITY level]`,
`[CATEGORY name]`, `[TAG x]`, `[NOTE]`, `[ESCALATE]`, `[MERGE CW...]`, `[SPAM]`, any number, any case,
with Chinese aliases. Each command is one `CommandSpec` in `REGISTRY`: its name and aliases, how its
argument is read, and a handler that returns what the command changes (an `Effect`). Whether the
command is possible at all in the ticket's status is the lifecycle's call (`tickets.transition`);
handlers never write `status`. Adding a command is adding one entry (and its row in the table).

The From header proves nothing: a command counts only when the sender is in the staff directory AND
the mail references a Message-ID mailflow minted (HMAC-signed) for that staff member and ticket, or a
trusted server's Authentication-Results shows DMARC pass / aligned DKIM pass for the sender's domain.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mailflow import routing
from mailflow.model import AuthResult, Message
from mailflow.plan import Mail
from mailflow.tickets import event

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


@dataclass
class Context:
    """What a handler may look at: the ticket as the mail's earlier commands left it (`work`)."""

    cfg: Any  # config.Config
    store: Any  # store.Store (read only)
    work: dict
    actor: str  # the staff member's address
    now: datetime
    rr_state: dict[str, int]
    open_counts: dict[str, int]


@dataclass
class Effect:
    """What one command changes besides the status (the lifecycle decides the status)."""

    fields: dict = field(default_factory=dict)  # on this ticket
    events: list[dict] = field(default_factory=list)  # on this ticket
    others: list[tuple[str, dict, list[dict]]] = field(default_factory=list)  # (ticket, fields, events)
    mails: list[Mail] = field(default_factory=list)
    error: str | None = None  # the command cannot be carried out (the whole mail is refused)


@dataclass(frozen=True)
class CommandSpec:
    name: str
    aliases: tuple[str, ...]
    parse: Callable[[str, str], tuple[str, str | None]] | None  # (arg, prefix) -> (value, error); None: no arg
    example: str
    handler: Callable[[Context, Command], Effect]
    customer_template: str | None = None  # the mail the customer gets with it (with or without text)
    silent: bool = False  # nothing goes to the customer, even the staff member's text
    help: str = ""
    argname: str = ""  # how the README writes the argument

    def syntax(self, word: str | None = None) -> str:
        w = word or self.name
        return f"[{w} {self.argname}]" if self.argname else f"[{w}]"


# ---- argument parsers -------------------------------------------------------------------------

def _text_arg(arg: str, prefix: str) -> tuple[str, str | None]:
    return arg.strip(), None


def _priority_arg(arg: str, prefix: str) -> tuple[str, str | None]:
    v = PRIORITY_WORDS.get(arg.strip().lower())
    return (v, None) if v else ("", f"unknown priority {arg!r} (urgent, high, normal, low)")


def _category_arg(arg: str, prefix: str) -> tuple[str, str | None]:
    v = CATEGORY_WORDS.get(arg.strip().lower())
    known = ", ".join(sorted(set(CATEGORY_WORDS.values())))
    return (v, None) if v else ("", f"unknown category {arg!r} ({known})")


def _ticket_arg(arg: str, prefix: str) -> tuple[str, str | None]:
    v = arg.strip().upper()
    if re.fullmatch(rf"{re.escape(prefix)}\d{{12,}}", v, re.I):
        return v, None
    return "", f"MERGE needs a ticket id like {prefix}202611230001"


# ---- handlers ---------------------------------------------------------------------------------

def _nothing(ctx: Context, cmd: Command) -> Effect:
    return Effect()


def escalation_targets(cfg: Any, t: dict) -> list[str]:
    """The team's leads and managers, else the first of the escalation chain, else every manager."""
    leads = [s.email for s in cfg.staff if s.role in ("lead", "manager")
             and (not t.get("team") or t["team"] in s.teams)]
    return leads or list(cfg.escalation_chain[:1]) or [s.email for s in cfg.staff if s.role == "manager"]


def resolve_assignee(ctx: Context, arg: str) -> tuple[str | None, str | None, str | None]:
    """[ASSIGN x]: (team, assignee, error). A staff member by email, name or mailbox name; or a team,
    picked by the configured routing strategy, never a staff member a complaint names."""
    a = arg.strip().lower()
    mentioned = {m.lower() for m in ctx.work.get("mentioned_staff", [])}
    for s in ctx.cfg.staff:
        if a in (s.email, s.name.lower(), s.email.split("@")[0]):
            if s.email in mentioned and ctx.work.get("category") == "complaint":
                return None, None, f"the complaint names {s.name}: assign someone else"
            team = ctx.work.get("team") if ctx.work.get("team") in s.teams else (s.teams[0] if s.teams else None)
            return team, s.email, None
    teams = {x.lower(): x for s in ctx.cfg.staff for x in s.teams}
    if a not in teams:
        return None, None, f"no staff member or team called {arg!r}"
    team = teams[a]
    pick = routing.pick_assignee(team, ctx.cfg.routing_strategy, ctx.cfg.staff, ctx.open_counts,
                                 ctx.rr_state, mentioned)
    if pick is None:
        return None, None, f"team {team} has nobody who may take this ticket"
    return team, pick, None


def _assign(ctx: Context, cmd: Command) -> Effect:
    team, who, err = resolve_assignee(ctx, cmd.arg)
    if err:
        return Effect(error=err)
    eff = Effect(fields={"team": team or ctx.work.get("team"), "assignee": who},
                 events=[event(ctx.now, "assigned", ctx.actor, f"to {who}" + (f" (team {team})" if team else ""),
                               assignee=who, team=team)])
    if who and who != ctx.actor:
        eff.mails.append(Mail(ctx.work["id"], "staff_notify", to=who, why=f"assigned by {ctx.actor}"))
    return eff


def _priority(ctx: Context, cmd: Command) -> Effect:
    old = ctx.work.get("priority")
    return Effect(fields={"priority": cmd.arg},
                  events=[event(ctx.now, "priority", ctx.actor, f"{old} -> {cmd.arg}", **{"from": old, "to": cmd.arg})])


def _category(ctx: Context, cmd: Command) -> Effect:
    old = ctx.work.get("category")
    return Effect(fields={"category": cmd.arg},
                  events=[event(ctx.now, "category", ctx.actor, f"{old} -> {cmd.arg}", **{"from": old, "to": cmd.arg})])


def _tag(ctx: Context, cmd: Command) -> Effect:
    tags = list(ctx.work.get("tags", []))
    if cmd.arg not in tags:
        tags.append(cmd.arg)
    return Effect(fields={"tags": tags}, events=[event(ctx.now, "tag", ctx.actor, cmd.arg)])


def _note(ctx: Context, cmd: Command) -> Effect:
    return Effect(events=[event(ctx.now, "note", ctx.actor, "internal note")])


def _escalate(ctx: Context, cmd: Command) -> Effect:
    targets = escalation_targets(ctx.cfg, ctx.work)
    return Effect(events=[event(ctx.now, "escalated", ctx.actor, f"to {', '.join(targets) or 'nobody'}",
                                to=targets)],
                  mails=[Mail(ctx.work["id"], "escalation", to=to,
                              extra={"escalation": {"reason": f"escalated by {ctx.actor}"}}) for to in targets])


def _merge(ctx: Context, cmd: Command) -> Effect:
    tid, target = ctx.work["id"], cmd.arg
    if target == tid:
        return Effect(error="a ticket cannot be merged into itself")
    t = ctx.store.ticket(target)
    if t is None:
        entry = ctx.store.archived_ticket(target)
        t = entry["ticket"] if entry else None
    if t is None:
        return Effect(error=f"no ticket {target}")
    if t.get("status") == "closed":
        return Effect(error=f"{target} is closed: merge into an open ticket")
    src = ctx.work
    parts = sorted({*t.get("participants", []), src.get("customer_email", ""), *src.get("participants", [])}
                   - {t.get("customer_email", ""), ""})
    merged_from = [*t.get("merged_from", []), tid]
    return Effect(fields={"merged_into": target},
                  events=[event(ctx.now, "merged", ctx.actor, f"merged into {target}", into=target)],
                  others=[(target, {"participants": parts, "merged_from": merged_from},
                           [event(ctx.now, "merged_in", ctx.actor,
                                  f"{tid} merged into this ticket ({src.get('subject', '')})", ticket=tid)])])


def _spam(ctx: Context, cmd: Command) -> Effect:
    tags = list(ctx.work.get("tags", []))
    if "spam" not in tags:
        tags.append("spam")
    return Effect(fields={"tags": tags})


REGISTRY: dict[str, CommandSpec] = {s.name: s for s in (
    CommandSpec("RESOLVE", ("RESOLVED", "解决", "已解决", "解決", "已解決"), None, "", _nothing,
                customer_template="resolved",
                help="status `resolved`; the reply text goes to the customer as the resolution with the 1-5 "
                     "satisfaction question"),
    CommandSpec("CLOSE", ("关闭", "關閉"), None, "", _nothing, customer_template="closed",
                help="closed (reason `staff`); the customer gets the `closed` mail"),
    CommandSpec("REOPEN", ("重开", "重新打开", "重開", "重新打開"), None, "", _nothing,
                customer_template="reopened", help="a resolved or closed ticket is `open` again (counts a reopen)"),
    CommandSpec("PENDING", ("待定", "等待", "等待客户", "等待客戶"), None, "", _nothing,
                help="status `pending` (waiting for the customer); their next reply sets it back to `open`"),
    CommandSpec("ASSIGN", ("分配", "指派", "转交", "轉交"), _text_arg, "alice", _assign,
                argname="name|team",
                help="assign to a staff member (email, name or mailbox name) or to a team (picked by "
                     "`[routing] strategy`, never a staff member a complaint names); the assignee is notified"),
    CommandSpec("PRIORITY", ("优先级", "優先級"), _priority_arg, "urgent", _priority,
                argname="level",
                help="`urgent`, `high`, `normal`, `low` (紧急/高/普通/低); SLA due times are recomputed"),
    CommandSpec("CATEGORY", ("分类", "類別", "分類"), _category_arg, "fault", _category,
                argname="name",
                help="`complaint`, `fault`, `inquiry`, `suggestion`, `praise` (投诉/故障/咨询/建议/表扬)"),
    CommandSpec("TAG", ("标签", "標籤"), _text_arg, "refund", _tag, argname="x",
                help="add a tag"),
    CommandSpec("NOTE", ("备注", "內部", "内部", "備註"), None, "", _note, silent=True,
                help="internal: the text stays on the ticket, nothing goes to the customer"),
    CommandSpec("ESCALATE", ("升级", "升級"), None, "", _escalate,
                help="escalation mail to the team's leads (or the escalation chain)"),
    CommandSpec("MERGE", ("合并", "合併"), _ticket_arg, "CW202611230001", _merge, silent=True,
                argname="CW...",
                help="close this ticket as merged into another open one; the customer's later replies go "
                     "there, and they become a participant of it"),
    CommandSpec("SPAM", ("垃圾", "垃圾邮件", "垃圾郵件"), None, "", _spam, silent=True,
                help="close as spam and tag `spam`; nothing is sent, now or to that sender's later mail "
                     "on this ticket"),
)}
ALIASES: dict[str, str] = {**{n: n for n in REGISTRY}, **{a: s.name for s in REGISTRY.values() for a in s.aliases}}
STATUS_COMMANDS = ("RESOLVE", "CLOSE", "REOPEN", "PENDING", "MERGE", "SPAM")  # applied after the others


def readme_table() -> str:
    """The staff command reference as the README shows it (kept in step by a test)."""
    rows = ["| command | Chinese | effect |", "|---|---|---|"]
    for spec in REGISTRY.values():
        zh = " ".join(f"`{spec.syntax(a)}`" for a in spec.aliases if not a.isascii())
        rows.append(f"| `{spec.syntax()}` | {zh} | {spec.help} |".replace("name|team", "name\\|team"))
    return "\n".join(rows)


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
            errors.append(f"[{raw}]: unknown command (known: {', '.join(sorted(REGISTRY))})")
            continue
        spec = REGISTRY[name]
        if spec.parse is None:
            if arg:
                errors.append(f"[{raw}]: {name} takes no argument")
                continue
        else:
            if not arg:
                errors.append(f"[{raw}]: {name} needs an argument, e.g. [{name} {spec.example}]")
                continue
            arg, err = spec.parse(arg, prefix)
            if err:
                errors.append(f"[{raw}]: {err}")
                continue
        cmds.append(Command(name, arg, raw))
    return Parsed(cmds, errors)


def permitted(permissions: dict[str, list[str]], name: str, role: str) -> str | None:
    """None if `role` may use command `name` (`[permissions]`; unlisted commands are open to all),
    else why not."""
    roles = permissions.get(name)
    if roles is None or role in roles:
        return None
    return f"needs role {' or '.join(roles)} (you are {role})"


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
