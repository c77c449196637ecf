r"""Jinja2 email templates -> subject/text/html, and the bytes of the outgoing mail.

Templates live in ``<templates_dir>/<locale>/<name>.<part>.j2`` where part is ``subject``, ``txt``
(both required) or ``html`` (optional; the mail then becomes multipart/alternative). Files whose name
starts with ``_`` are partials for ``{% include %}`` and are not template names. Templates run in an
immutable Jinja2 sandbox with ``StrictUndefined``: a misspelt variable is an error, never an empty
string. HTML templates are autoescaped; subject and text templates are not (they are plain text).
Customer text is only ever passed in as data, never compiled as a template.

Template context
----------------

Every template receives the same context (the outbox builds it; ``sample_context(locale)`` gives a
complete example). Datetimes are timezone-aware and already in the customer's time zone.

| variable | meaning |
|---|---|
| `company.name` | the company name from the config |
| `ticket.id` | `CW202611220001`; every subject carries `[{{ ticket.id }}]` |
| `ticket.subject` | the ticket subject (customer-controlled text) |
| `ticket.status` | `new` \| `open` \| `pending` \| `resolved` \| `closed` |
| `ticket.category` | `complaint` \| `fault` \| `inquiry` \| `suggestion` \| `praise` |
| `ticket.category_label` | the category in the mail's language (投诉, Complaint, ...) |
| `ticket.priority` | `urgent` \| `high` \| `normal` \| `low` |
| `ticket.priority_label` | the priority in the mail's language (紧急/高/普通/低, Urgent/High/Normal/Low) |
| `ticket.team` | routing team, or `None` |
| `ticket.assignee` | assignee email, or `None` |
| `ticket.assignee_name` | assignee display name, or `None` |
| `ticket.tags` | list of str |
| `ticket.customer_email` | requester address |
| `ticket.customer_name` | requester display name (may be empty) |
| `ticket.created_at` | datetime |
| `ticket.locale` | `zh` \| `en` |
| `sla.first_response_due` | datetime the first answer is due |
| `sla.resolution_due` | datetime the resolution is due |
| `sla.first_response_hours` | float, business hours allowed for the first answer |
| `sla.resolution_hours` | float, business hours allowed for the resolution |
| `message.text` | the new text of the message that triggered this mail (customer-controlled) |
| `message.from` | its sender address |
| `message.subject` | its subject |
| `staff.name`, `staff.email` | for mails to staff: the recipient |
| `reply.text` | what staff wrote (progress, resolved, closed; may be empty) |
| `error.text` | why a staff command failed (command_error) |
| `commands` | list of str: the subject commands of the staff mail, as written (command_error) |
| `escalation.reason` | why the ticket was escalated (escalation) |

Filters besides Jinja2's own: ``datefmt`` (``{{ sla.first_response_due|datefmt }}`` ->
``2026-11-23 17:00 (Asia/Shanghai)``; optional strftime format argument) and ``hours``
(``24.0`` -> ``24``, ``1.5`` -> ``1.5``).

Template names: ``REQUIRED`` below; ``check_templates`` compiles and renders every template with
``sample_context`` and reports problems as ``file:line: reason``.

Outgoing mail
-------------

``build_mail`` writes the RFC 5322 bytes directly instead of going through ``EmailMessage`` and the
header registry (3.3 ms per message, DESIGN.md 7); it takes a few tens of microseconds. Every
header value has CR, LF and other control characters removed, so customer-controlled text (the
subject) cannot add headers. Non-ASCII header text is RFC 2047 base64 encoded words. Bodies are
``7bit`` when they are pure ASCII with short lines and ``base64`` otherwise: base64 is 7-bit clean
(no 8BITMIME needed from the server, no 998-octet line limit to break on long Chinese paragraphs)
and for Chinese text it is smaller than quoted-printable (4/3 vs 3x of the UTF-8 size).
"""

from __future__ import annotations

import binascii
import contextlib
import functools
import hashlib
import os
import re
import secrets
import sys
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
from jinja2 import FileSystemLoader, StrictUndefined, select_autoescape
from jinja2.bccache import Bucket, FileSystemBytecodeCache

from mailflow.errors import ProblemsError
from mailflow.idn import idna_domain
from mailflow.regexes import cache_dir, prune_stale
from mailflow.sandbox import BudgetedEnvironment, BudgetError

REQUIRED = ("ack", "progress", "resolved", "closed", "reopened", "staff_notify", "staff_update", "escalation",
            "command_error", "sla_reminder", "pending_reminder")
PARTS = ("subject", "txt", "html")
# "zh" is simplified Chinese, "zh-Hant" traditional (Taiwan phrasing, templates/zh-Hant/ is made from
# templates/zh/ by tools/make_zh_hant.py). LOCALES[0] is where check reports a missing template.
LOCALES = ("zh", "en", "zh-Hant")
# tried right after the locale itself when it lacks a template: traditional readers read simplified
# better than English (a templates dir made by an older `mailflow init` has no zh-Hant/)
FALLBACK = {"zh-Hant": ("zh",)}

PRIORITY_LABELS = {
    "zh": {"urgent": "紧急", "high": "高", "normal": "普通", "low": "低"},
    "en": {"urgent": "Urgent", "high": "High", "normal": "Normal", "low": "Low"},
    "zh-Hant": {"urgent": "緊急", "high": "高", "normal": "普通", "low": "低"},
}
CATEGORY_LABELS = {
    "zh": {"complaint": "投诉", "fault": "故障", "inquiry": "咨询", "suggestion": "建议", "praise": "表扬"},
    "en": {"complaint": "Complaint", "fault": "Fault", "inquiry": "Inquiry", "suggestion": "Suggestion",
           "praise": "Praise"},
    "zh-Hant": {"complaint": "投訴", "fault": "故障", "inquiry": "諮詢", "suggestion": "建議", "praise": "表揚"},
}
STATUS_LABELS = {
    "zh": {"new": "待受理", "open": "处理中", "pending": "等待客户回复", "resolved": "已解决", "closed": "已关闭"},
    "en": {"new": "New", "open": "Open", "pending": "Pending", "resolved": "Resolved", "closed": "Closed"},
    "zh-Hant": {"new": "待受理", "open": "處理中", "pending": "等待客戶回覆", "resolved": "已解決",
                "closed": "已關閉"},
}


class TemplateError(ProblemsError):
    """One or more template problems, each ``file:line: reason``."""


@dataclass
class Rendered:
    subject: str
    text: str
    html: str | None


# --------------------------------------------------------------------------------------------------
# filters


def _tzname(dt: datetime) -> str:
    tz = dt.tzinfo
    key = getattr(tz, "key", None)  # ZoneInfo
    if key:
        return key
    off = dt.utcoffset()
    if off is None:
        return ""
    if off == timedelta(0):
        return "UTC"
    total = int(off.total_seconds() // 60)
    sign = "+" if total >= 0 else "-"
    total = abs(total)
    return f"UTC{sign}{total // 60:02d}:{total % 60:02d}"


def datefmt(value: Any, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """``2026-11-23 17:00 (Asia/Shanghai)``. The customer's tz is already applied by the caller."""
    if value is None or value == "":
        return "-"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if not isinstance(value, datetime):
        return str(value)
    name = _tzname(value)
    out = value.strftime(fmt)
    return f"{out} ({name})" if name else out


def hours(value: Any) -> str:
    """``24.0`` -> ``24``; ``1.5`` -> ``1.5``."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(int(f)) if f == int(f) else f"{f:g}"


# --------------------------------------------------------------------------------------------------
# templates


class _QuietBytecodeCache(FileSystemBytecodeCache):
    """Jinja's file bytecode cache, where a failure to read or write only means compiling again."""

    def load_bytecode(self, bucket: Bucket) -> None:
        try:
            super().load_bytecode(bucket)
        except Exception:  # noqa: BLE001 - a cache: any failure means compiling
            bucket.reset()

    def dump_bytecode(self, bucket: Bucket) -> None:
        try:
            super().dump_bytecode(bucket)
        except Exception:  # noqa: BLE001 - not writing it only costs the next start-up
            pass


@functools.lru_cache(maxsize=2)
def _bytecode_cache(kind: str = "templates", sources: tuple[str, ...] = ("render.py", "sandbox.py")
                    ) -> _QuietBytecodeCache | None:
    """Compiled templates kept between runs: compiling the bundled templates is ~0.2 s of every start
    (the report's HTML templates ~0.4 s of `mailflow check`). Jinja keys each entry by template
    name, file name and a SHA-1 of the source; the directory adds a digest of the Python and Jinja
    versions and of the modules in `sources`, which decide how a template compiles (the sandbox's
    loop budget is compiled in; report_render.py makes the report's environment), so no other
    environment's code is ever loaded. Under `regexes.cache_dir()` (created 0700); none when that
    is off or not creatable."""
    root = cache_dir()
    if root is None:
        return None
    h = hashlib.sha256(f"{sys.version}|{jinja2.__version__}".encode())
    here = Path(__file__).resolve().parent
    try:
        for name in sources:
            h.update((here / name).read_bytes())
        d = root / f"{kind}-{h.hexdigest()[:20]}"
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        _prune(d, _BYTECODE_KEEP)
        prune_stale(root, f"{kind}-*", d)
    except OSError:
        return None
    return _QuietBytecodeCache(str(d), "%s.jinja")


_BYTECODE_KEEP = 2000  # cached templates kept (entries are per template file: tests make many dirs)


def _prune(d: Path, keep: int) -> None:
    """Delete all but the `keep` most recently written entries (once per process)."""
    with os.scandir(d) as it:
        entries = [e for e in it if e.name.endswith(".jinja")]
    if len(entries) <= keep:
        return
    entries.sort(key=lambda e: e.stat().st_mtime, reverse=True)
    for e in entries[keep:]:
        with contextlib.suppress(OSError):
            os.unlink(e.path)


def _env(templates_dir: Path) -> BudgetedEnvironment:
    env = BudgetedEnvironment(
        bytecode_cache=_bytecode_cache(),
        loader=FileSystemLoader(str(templates_dir)),
        undefined=StrictUndefined,
        autoescape=select_autoescape(enabled_extensions=("html.j2", "htm.j2"), default_for_string=False,
                                     default=False),
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.add_filter("datefmt", datefmt)
    env.add_filter("hours", hours)
    return env


def _where(exc: BaseException, files: dict[str, str], fallback: str) -> str:
    """``file:line`` of the innermost template frame in a render traceback."""
    if isinstance(exc, jinja2.TemplateSyntaxError):
        fn = exc.filename or fallback
        return f"{files.get(fn, fn)}:{exc.lineno or 0}"
    where = f"{fallback}:0"
    for fr in traceback.extract_tb(exc.__traceback__):
        if fr.filename in files:
            where = f"{files[fr.filename]}:{fr.lineno}"
    return where


def _reason(exc: BaseException) -> str:
    if isinstance(exc, BudgetError):
        return f"render budget exceeded: {exc}"
    if isinstance(exc, RecursionError):
        return "render budget exceeded: recursion too deep"
    if isinstance(exc, MemoryError):
        return "render budget exceeded: out of memory"
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return f"syntax error: {exc.message}"
    if isinstance(exc, jinja2.UndefinedError):
        return f"undefined: {exc.message}"
    if isinstance(exc, jinja2.TemplateError):
        return f"{type(exc).__name__}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


_WS = re.compile(r"\s+")
_CTRL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _one_line(s: str) -> str:
    return _WS.sub(" ", _CTRL.sub("", s)).strip()


def _text(s: str) -> str:
    s = s.replace("\r\n", "\n").replace("\r", "\n")
    if s and not s.endswith("\n"):
        s += "\n"
    return s


class Templates:
    """All templates of a directory, compiled once. Reload = ``Templates.load`` again."""

    def __init__(self, templates_dir: Path, env: BudgetedEnvironment,
                 compiled: dict[tuple[str, str, str], jinja2.Template], files: dict[str, str]):
        self.templates_dir = templates_dir
        self._env = env
        self._t = compiled  # (locale, name, part) -> Template
        self._files = files  # filename jinja reports -> display path
        self._locales = sorted({loc for loc, _, _ in compiled}, key=lambda x: (x not in LOCALES, x))

    @classmethod
    def load(cls, templates_dir: Path) -> Templates:
        """Compile and check every template exactly as `check_templates` does (`_checked`: the sample
        render of every template and locale under the render budget, subjects carry the ticket id,
        required names exist); TemplateError lists every problem, so nothing `check` refuses goes live."""
        templates_dir = Path(templates_dir)
        tpl, problems, env, files = _checked(templates_dir)
        if problems:
            raise TemplateError(problems)
        return cls(templates_dir, env, tpl, files)

    def names(self) -> set[str]:
        return {name for _, name, part in self._t if part == "txt"}

    def locales(self) -> list[str]:
        return list(self._locales)

    def _pick(self, locale: str, name: str) -> str | None:
        """The locale whose ``name`` template is used: ``locale``, its FALLBACK (zh-Hant -> zh), then
        LOCALES in order (zh, en), then whatever else the directory has."""
        order = [locale, *FALLBACK.get(locale, ()), *LOCALES, *self._locales]
        for loc in order:
            if (loc, name, "txt") in self._t and (loc, name, "subject") in self._t:
                return loc
        return None

    def render(self, locale: str, name: str, context: dict) -> Rendered:
        loc = self._pick(locale, name)
        if loc is None:
            raise TemplateError([f"{self.templates_dir / locale / (name + '.txt.j2')}:0: no such template"])
        out = _render_mail(self._env, self._t, self._files, self.templates_dir, loc, name, cap_context(context),
                           stop_at_first=True)
        if isinstance(out, list):
            raise TemplateError(out)
        return Rendered(subject=_one_line(out["subject"] or ""), text=_text(out["txt"] or ""),
                        html=out["html"])


def _scan(templates_dir: Path) -> tuple[list[tuple[str, str, str, str]], list[str], list[str]]:
    """-> [(locale, name, part, loader_name)], partials (loader names), problems."""
    found: list[tuple[str, str, str, str]] = []
    partials: list[str] = []
    problems: list[str] = []
    if not templates_dir.is_dir():
        return found, partials, [f"{templates_dir}:0: not a directory"]
    for locdir in sorted(p for p in templates_dir.iterdir() if p.is_dir()):
        loc = locdir.name
        if loc.startswith((".", "_")):
            for f in sorted(locdir.rglob("*.j2")):
                partials.append(f.relative_to(templates_dir).as_posix())
            continue
        for f in sorted(locdir.rglob("*.j2")):
            rel = f.relative_to(templates_dir).as_posix()
            if f.name.startswith("_") or f.parent != locdir:
                partials.append(rel)
                continue
            stem = f.name[: -len(".j2")]
            name, _, part = stem.rpartition(".")
            if not name or part not in PARTS:
                problems.append(f"{f}:0: unknown template file (expected <name>.subject.j2, <name>.txt.j2 "
                                f"or <name>.html.j2)")
                continue
            found.append((loc, name, part, rel))
    have = {(loc, name, part) for loc, name, part, _ in found}
    for loc, name in sorted({(loc, name) for loc, name, _, _ in found}):
        for need in ("subject", "txt"):
            if (loc, name, need) not in have:
                problems.append(f"{templates_dir / loc / f'{name}.{need}.j2'}:0: missing (every template "
                                f"needs {name}.subject.j2 and {name}.txt.j2)")
    return found, partials, sorted(set(problems), key=problems.index)


def _compile(templates_dir: Path):
    env = _env(templates_dir)
    found, partials, problems = _scan(templates_dir)
    files: dict[str, str] = {}
    compiled: dict[tuple[str, str, str], jinja2.Template] = {}
    for rel in partials + [r for *_, r in found]:
        files[str(templates_dir / rel)] = str(templates_dir / rel)
        try:
            src = env.loader.get_source(env, rel)  # type: ignore[union-attr]
            files[src[1]] = str(templates_dir / rel)  # the filename jinja puts into tracebacks
        except jinja2.TemplateNotFound:
            pass
    for rel in partials:
        try:
            env.get_template(rel)
        except jinja2.TemplateSyntaxError as e:
            problems.append(f"{_where(e, files, str(templates_dir / rel))}: {_reason(e)}")
        except (OSError, UnicodeDecodeError) as e:
            problems.append(f"{templates_dir / rel}:0: cannot read: {e}")
    for loc, name, part, rel in found:
        try:
            compiled[(loc, name, part)] = env.get_template(rel)
        except jinja2.TemplateSyntaxError as e:
            problems.append(f"{_where(e, files, str(templates_dir / rel))}: {_reason(e)}")
        except (OSError, UnicodeDecodeError) as e:
            problems.append(f"{templates_dir / rel}:0: cannot read: {e}")
    return compiled, problems, env, files


def _render_mail(env: BudgetedEnvironment, compiled: dict, files: dict[str, str], templates_dir: Path, loc: str,
                 name: str, ctx: dict, stop_at_first: bool) -> dict[str, str | None] | list[str]:
    """Every part of one mail under one render budget: {part: text or None}, or the problems."""
    out: dict[str, str | None] = {}
    problems: list[str] = []
    with env.budget():
        for part in PARTS:
            t = compiled.get((loc, name, part))
            if t is None:
                out[part] = None
                continue
            try:
                out[part] = env.render_capped(t, ctx)
            except Exception as e:  # noqa: BLE001 - any failure inside a template is a template problem
                fallback = str(templates_dir / loc / f"{name}.{part}.j2")
                problems.append(f"{_where(e, files, fallback)}: {_reason(e)}")
                if stop_at_first or isinstance(e, BudgetError | RecursionError | MemoryError):
                    break  # this mail's budget is spent: its other parts would only fail for that
    return problems or out


def _checked(templates_dir: Path):
    """Compile every template and render each mail (template x locale) with ``sample_context`` under
    the same budget as a real render: (compiled, problems, env, files). The one check behind both
    `check_templates` (``mailflow check``) and `Templates.load` (start and reload)."""
    compiled, problems, env, files = _compile(templates_dir)
    for loc, name in sorted({(loc, name) for loc, name, _ in compiled}):
        ctx = sample_context(loc)
        out = _render_mail(env, compiled, files, templates_dir, loc, name, ctx, stop_at_first=False)
        if isinstance(out, list):
            problems.extend(out)
            continue
        subject = out.get("subject")
        if subject is not None and f"[{ctx['ticket']['id']}]" not in subject:
            problems.append(f"{templates_dir / loc / f'{name}.subject.j2'}:1: subject does not carry "
                            f"[{{{{ ticket.id }}}}] (replies would not thread onto the ticket)")
    names = {name for _, name, part in compiled if part == "txt"}
    names |= {n for _, n, p, _ in _scan(templates_dir)[0] if p == "txt"}  # present but broken
    for name in REQUIRED:
        if name not in names:
            problems.append(f"{templates_dir / LOCALES[0] / (name + '.txt.j2')}:0: missing required template "
                            f"{name!r} (in no locale)")
    return compiled, problems, env, files


def check_templates(templates_dir: Path) -> list[str]:
    """Every problem `Templates.load` would raise, as ``file:line: reason`` ([] if the set is good)."""
    return _checked(Path(templates_dir))[1]


CONTEXT_TEXT_MAX = 64 * 1024  # characters of one context string (customer text...) a template sees


def cap_context(ctx: Any) -> Any:
    """The context with every string longer than CONTEXT_TEXT_MAX cut there (marked ``[…]``): a long
    customer mail quoted by a template cannot push the mail over the output budget."""
    if isinstance(ctx, str):
        return ctx if len(ctx) <= CONTEXT_TEXT_MAX else ctx[:CONTEXT_TEXT_MAX] + " […]"
    if isinstance(ctx, dict):
        return {k: cap_context(v) for k, v in ctx.items()}
    if isinstance(ctx, list | tuple):
        return type(ctx)(cap_context(v) for v in ctx)
    return ctx


# --------------------------------------------------------------------------------------------------
# sample context


def sample_context(locale: str) -> dict:
    """A complete context with every documented variable, for ``check`` and tests."""
    loc = locale if locale in LOCALES else "en"
    zh = loc == "zh"
    tz = ZoneInfo("Asia/Shanghai" if zh else "America/New_York")
    created = datetime(2026, 11, 22, 9, 30, tzinfo=tz)
    return {
        "company": {"name": "示例科技有限公司" if zh else "Example Co."},
        "ticket": {
            "id": "CW202611220001",
            "subject": "系统无法登录，请尽快处理" if zh else "Cannot log in to the dashboard",
            "status": "open",
            "category": "fault",
            "category_label": CATEGORY_LABELS[loc]["fault"],
            "status_label": STATUS_LABELS[loc]["open"],
            "priority": "high",
            "priority_label": PRIORITY_LABELS[loc]["high"],
            "team": "tech-support",
            "assignee": "li.lei@example.com",
            "assignee_name": "李雷" if zh else "Lei Li",
            "tags": ["login", "after-sales"],
            "customer_email": "wang.fang@customer.example",
            "customer_name": "王芳" if zh else "Fang Wang",
            "created_at": created,
            "locale": loc,
        },
        "sla": {
            "first_response_due": created + timedelta(hours=4),
            "resolution_due": created + timedelta(hours=24),
            "first_response_hours": 4.0,
            "resolution_hours": 24.0,
        },
        "message": {
            "text": ("您好，从今天上午开始我们公司所有账号都无法登录后台，提示“密码错误”。\n请尽快处理，谢谢！"
                     if zh else "Hello, since this morning none of our accounts can log in.\n"
                                "It says 'wrong password'. Please help <urgent>."),
            "from": "wang.fang@customer.example",
            "subject": "系统无法登录，请尽快处理" if zh else "Cannot log in to the dashboard",
        },
        "staff": {"name": "李雷" if zh else "Lei Li", "email": "li.lei@example.com"},
        "reply": {"text": ("我们已定位到问题原因，是认证服务器证书过期，已完成更换。请您重新登录试试。"
                           if zh else "We found the cause (an expired certificate on the login server) "
                                      "and replaced it. Please try logging in again.")},
        "error": {"text": "未知指令 [FOO]" if zh else "unknown command [FOO]"},
        "commands": ["[ASSIGN bob]", "[FOO]"],
        "escalation": {"reason": ("首次响应已超时 2 小时" if zh else "first response overdue by 2 hours")},
        "update": {"kind": "low_rating", "rating": 2, "status": "open"},
    }


# --------------------------------------------------------------------------------------------------
# building the outgoing mail


_HNAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 field-name
_BAD_ADDR = re.compile(r"[\s<>,;:\"()\[\]\\]")
_ID_JUNK = re.compile(r"[^A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.@]")  # keep RFC 5322 atext, "." and "@"
_OWN = frozenset(("from", "to", "cc", "bcc", "reply-to", "subject", "date", "message-id", "in-reply-to",
                  "references", "auto-submitted", "mime-version", "content-type", "content-transfer-encoding",
                  "x-auto-response-suppress"))
_TSPECIALS = re.compile(r'[()<>@,;:\\".\[\]]')


def _clean(v: str) -> str:
    """A header value on one line: CR/LF, tabs and other controls become spaces."""
    return _WS.sub(" ", _CTRL.sub("", v)).strip()


def _ew(s: str, first: int) -> str:
    """RFC 2047 base64 encoded words, folded; ``first`` = chars already used on the first line.

    Words never split a UTF-8 sequence (RFC 2047 5.3) and fit a 76-char line with the fold space.
    """
    words: list[str] = []
    chunk: list[str] = []
    size = 0
    # 45 bytes -> 60 base64 chars + 12 of =?utf-8?b??= = 72; the first word is shorter by `first`
    limit = max(9, (75 - 12 - first) // 4 * 3)
    for ch in s:
        b = len(ch.encode("utf-8"))
        if size + b > limit and chunk:
            words.append("".join(chunk))
            chunk, size, limit = [], 0, 45
        chunk.append(ch)
        size += b
    if chunk:
        words.append("".join(chunk))
    enc = ["=?utf-8?b?" + binascii.b2a_base64(w.encode("utf-8"), newline=False).decode("ascii") + "?="
           for w in words]
    return "\r\n ".join(enc) if enc else ""


def _hval(name: str, value: str) -> str:
    """``Name: value`` for unstructured text: ASCII as is (folded at spaces), else encoded words."""
    value = _clean(value)
    if value.isascii() and "=?" not in value:
        line = _fold(f"{name}: {value}")
        if all(len(x) <= 990 for x in line.split("\r\n")):
            return line
    return f"{name}: {_ew(value, len(name) + 2)}"


def _fold(line: str, width: int = 78) -> str:
    if len(line) <= width:
        return line
    out: list[str] = []
    cur = ""
    for word in line.split(" "):
        if cur and len(cur) + 1 + len(word) > width:
            out.append(cur)
            cur = word
        else:
            cur = f"{cur} {word}" if cur else word
    out.append(cur)
    return "\r\n ".join(out)


def _addr(a: str) -> str:
    """The address as it goes into a header. A Unicode domain with an ASCII local part is punycoded
    (the mail stays 7-bit and needs no SMTPUTF8); with a UTF-8 local part (RFC 6531) the address is
    written in UTF-8 as it is (an RFC 6532 header: sending it needs SMTPUTF8, see send.py)."""
    a = _clean(a)
    if a.startswith("<") and a.endswith(">"):
        a = a[1:-1]
    if not a or a.count("@") != 1 or _BAD_ADDR.search(a):
        raise ValueError(f"not a plain email address: {a!r}")
    local, _, domain = a.partition("@")
    if not local or not domain:
        raise ValueError(f"not a plain email address: {a!r}")
    if local.isascii() and not domain.isascii():
        domain = idna_domain(domain) or domain
    return f"{local}@{domain}"


def _display(name: str, addr: str) -> str:
    name = _clean(name)
    if not name:
        return addr
    if not name.isascii() or "=?" in name:
        return f"{_ew(name, 6)} <{addr}>"
    if _TSPECIALS.search(name):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{addr}>"


def _msgid(i: str) -> str:
    i = _ID_JUNK.sub("", i)
    if not i:
        raise ValueError("empty message id")
    return f"<{i}>"


def _body(text: str, subtype: str) -> bytes:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if text and not text.endswith("\n"):
        text += "\n"
    if text.isascii() and all(len(line) <= 990 for line in text.split("\n")) and "\x00" not in text:
        return (f"Content-Type: text/{subtype}; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
                + text.replace("\n", "\r\n")).encode("ascii")
    raw = text.replace("\n", "\r\n").encode("utf-8")  # canonical CRLF form before base64 (RFC 2046 4.1.1)
    b64 = binascii.b2a_base64(raw, newline=False)
    lines = b"\r\n".join(b64[i:i + 76] for i in range(0, len(b64), 76))
    return (f"Content-Type: text/{subtype}; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            .encode("ascii") + lines + b"\r\n")


def build_mail(rendered: Rendered, *, from_addr: str, from_name: str, to: list[str], reply_to: str,
               message_id: str, in_reply_to: str | None, references: list[str], auto_submitted: str,
               extra_headers: dict[str, str] | None = None, date: datetime | None = None) -> bytes:
    """The RFC 5322 bytes of one outgoing mail (CRLF line ends, 7-bit clean unless an address has a
    UTF-8 local part: then the headers are RFC 6532 UTF-8 and the mail needs SMTPUTF8 to go out).

    Message ids may be given with or without angle brackets. Addresses must be plain
    ``local@domain`` (``ValueError`` otherwise). ``extra_headers`` may not repeat a header this
    function writes (``ValueError``). When ``auto_submitted`` is not ``no``,
    ``X-Auto-Response-Suppress: All`` asks Exchange not to answer with out-of-office mail.
    """
    if not to:
        raise ValueError("no recipients")
    h: list[str] = [
        f"From: {_display(from_name, _addr(from_addr))}",
        _fold("To: " + ", ".join(_addr(a) for a in to)),
    ]
    if reply_to:
        h.append(f"Reply-To: {_addr(reply_to)}")
    h.append(_hval("Subject", rendered.subject))
    d = date if date is not None else datetime.now(UTC)
    if d.tzinfo is None:
        d = d.replace(tzinfo=UTC)
    h.append(f"Date: {format_datetime(d)}")
    h.append(f"Message-ID: {_msgid(message_id)}")
    if in_reply_to:
        h.append(f"In-Reply-To: {_msgid(in_reply_to)}")
    refs = [_msgid(r) for r in references if _ID_JUNK.sub("", r)]
    if refs:
        h.append("References: " + "\r\n ".join(refs))
    auto = _clean(auto_submitted) or "auto-generated"
    h.append(f"Auto-Submitted: {auto}")
    if auto.lower() != "no":
        h.append("X-Auto-Response-Suppress: All")
    for k, v in (extra_headers or {}).items():
        k = k.strip()
        if not _HNAME.match(k):
            raise ValueError(f"invalid header name: {k!r}")
        if k.lower() in _OWN:
            raise ValueError(f"header {k} is set by build_mail")
        h.append(_hval(k, str(v)))
    h.append("MIME-Version: 1.0")
    head = "\r\n".join(h) + "\r\n"
    if rendered.html is None:
        return head.encode("utf-8") + _body(rendered.text, "plain")
    boundary = "=_mf_" + secrets.token_hex(12)
    b = boundary.encode("ascii")
    head += f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'
    return b"".join((
        head.encode("utf-8"),
        b"This is a multi-part message in MIME format.\r\n",
        b"--", b, b"\r\n", _body(rendered.text, "plain"),
        b"--", b, b"\r\n", _body(rendered.html, "html"),
        b"--", b, b"--\r\n",
    ))
