"""TOML config + env overrides -> validated dataclasses.

Every error names the file and the key, because the admin who reads it is looking at that file.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mailflow import resources, sla
from mailflow.errors import ProblemsError

PRIORITIES = ("urgent", "high", "normal", "low")


class ConfigError(ProblemsError):
    """A list of `file: key: reason` problems."""


@dataclass
class Secret:
    """A password/token that is read lazily and never printed."""

    value: str | None = None
    env: str | None = None
    file: str | None = None
    command: str | None = None

    def get(self) -> str:
        if self.value is not None:
            return self.value
        if self.env is not None:
            v = os.environ.get(self.env)
            if v is None:
                raise ConfigError([f"environment: {self.env}: not set"])
            return v
        if self.file is not None:
            # "${CREDENTIALS_DIRECTORY}/imap" works with systemd's LoadCredential=
            missing = [v for v in re.findall(r"\$\{(\w+)\}", self.file) if v not in os.environ]
            if missing:
                raise ConfigError([f"password_file: {self.file}: environment variable {missing[0]} not set"])
            path = re.sub(r"\$\{(\w+)\}", lambda m: os.environ[m.group(1)], self.file)
            try:
                return Path(path).read_text(encoding="utf-8").strip()
            except OSError as e:
                raise ConfigError([f"password_file: {path}: cannot read: {e.strerror or e}"]) from None
        if self.command is not None:
            out = subprocess.run(self.command, shell=True, capture_output=True, text=True, timeout=60)
            if out.returncode != 0:
                raise ConfigError([f"token_command: exited {out.returncode}"])
            return out.stdout.strip()
        return ""

    def __repr__(self) -> str:  # never leak a secret into logs or tracebacks
        return "Secret(***)"


@dataclass
class SmtpConfig:
    host: str = "localhost"
    port: int = 25
    tls: str = "none"  # implicit | starttls | none
    user: str | None = None
    password: Secret = field(default_factory=Secret)
    auth: str = "password"  # password | xoauth2
    token: Secret = field(default_factory=Secret)
    timeout: float = 30.0


@dataclass
class MailboxConfig:
    name: str
    host: str
    port: int = 993
    tls: str = "implicit"  # implicit | starttls | none
    user: str = ""
    password: Secret = field(default_factory=Secret)
    auth: str = "password"  # password | xoauth2
    token: Secret = field(default_factory=Secret)
    folder: str = "INBOX"
    address: str = ""
    from_name: str = ""
    after: str = "seen"  # seen | move:<folder> | keep
    poll_interval: float = 60.0
    idle: bool = True
    timeout: float = 20.0
    batch_size: int = 100
    smtp: SmtpConfig | None = None
    calendar: str = ""  # the business calendar of this mailbox's tickets ("" = the default)


@dataclass
class StaffMember:
    email: str
    name: str
    teams: list[str] = field(default_factory=list)
    role: str = "agent"  # agent | lead | manager


@dataclass
class OutboundConfig:
    ack_replies: bool = False  # acknowledge customer replies to an existing ticket too
    max_auto_per_hour: int = 5  # automatic mails to one address per hour of the mails' own time
    max_auto_burst: int = 30  # ... and per hour of processing, whatever the mails' Date headers say
    max_auto_per_ticket: int = 10  # automatic mails per ticket, ever
    retry_for_hours: float = 48.0  # give up on temporary failures after this long
    backoff_initial: float = 30.0
    backoff_max: float = 3600.0
    trusted_authserv_ids: list[str] = field(default_factory=list)
    hmac_key: Secret = field(default_factory=Secret)
    staff_reference_days: float = 30.0  # a notification's signed Message-ID authenticates replies this long


@dataclass
class ReportsConfig:
    """`[reports]`: who gets the scheduled reports, in which language, and how far back they look."""

    monthly_to: list[str] = field(default_factory=list)  # addresses, "team:NAME", "role:ROLE"
    weekly_to: list[str] = field(default_factory=list)
    locale: str = ""  # "" = [templates] default_locale
    send_at: str = "09:00"  # local time on the first working day of the next period
    calendar: str = "default"  # working days and time zone of the schedule and the periods
    lookback_months: int = 6  # archived tickets created this long before the oldest period still count


@dataclass
class PgConfig:
    """`[storage] backend = "postgresql"`: where the database is (mailflow/store_pg.py)."""

    dsn: str = ""
    password: Secret = field(default_factory=Secret)
    options: dict[str, str] = field(default_factory=dict)  # sslmode, sslrootcert, ...: passed to libpq
    pool_size: int = 4
    lease_seconds: float = 30.0  # a dead daemon's mailboxes are served by another within this time

    def conninfo(self) -> str:
        """The libpq connection string with the password and TLS options (never logged)."""
        from psycopg.conninfo import make_conninfo

        extra = dict(self.options)
        if any((self.password.value, self.password.env, self.password.file)):
            extra["password"] = self.password.get()
        return make_conninfo(self.dsn, **extra)


PG_OPTIONS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl", "connect_timeout", "application_name",
              "target_session_attrs", "options")


@dataclass
class Config:
    path: Path | None
    data_dir: Path
    rules_dir: Path
    templates_dir: Path
    default_locale: str = "zh"
    company_name: str = "Example Co."
    vip: list[str] = field(default_factory=list)
    prefix: str = "CW"
    timezone: str = "Asia/Shanghai"
    calendars: dict[str, sla.Calendar] = field(default_factory=dict)  # "default", "24x7", [calendars.NAME]
    sla: sla.SlaPolicy | None = None  # targets per priority/tier/category, calendar per priority/mailbox
    attachment_max_bytes: int = 10 * 1024 * 1024
    mailboxes: list[MailboxConfig] = field(default_factory=list)
    smtp: SmtpConfig | None = None
    staff: list[StaffMember] = field(default_factory=list)
    outbound: OutboundConfig = field(default_factory=OutboundConfig)
    log_level: str = "info"
    # escalation chain for `escalate` without a target: emails in order
    escalation_chain: list[str] = field(default_factory=list)
    routing_strategy: str = "least_open"  # least_open | round_robin
    reopen_within_days: float = 30.0  # a reply this soon after the close reopens; later: a new linked ticket
    auto_close_days: float = 7.0  # calendar days a resolved ticket waits for the customer
    permissions: dict[str, list[str]] = field(default_factory=dict)  # command -> roles that may use it
    archive_after_days: float = 3.0  # closed tickets leave the hot database after this many days
    reports: ReportsConfig = field(default_factory=ReportsConfig)
    backup_dir: Path | None = None  # `mailflow backup` writes here; None: <data_dir>/../mailflow-backups
    # [retention]: 0 keeps forever; the daemon's housekeeping applies them (mailflow/retention.py)
    raw_mail_days: float = 0.0
    attachments_days: float = 0.0
    closed_tickets_years: float = 0.0
    backend: str = "tinydb"  # [storage] backend: tinydb | postgresql
    pg: PgConfig = field(default_factory=PgConfig)

    @property
    def backup_path(self) -> Path:
        """Where backups go: `[storage] backup_dir`, else `mailflow-backups` beside the data dir."""
        return self.backup_dir or self.data_dir.parent / "mailflow-backups"

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def policy(self) -> sla.SlaPolicy:
        """The SLA policy (built from the defaults on first use when the config had no [sla])."""
        if self.sla is None:
            self.calendars, self.sla = _sla_policy({}, self.timezone, [], "(defaults)")
        return self.sla

    def staff_by_email(self) -> dict[str, StaffMember]:
        return {s.email.lower(): s for s in self.staff}

    def mailbox(self, name: str) -> MailboxConfig | None:
        for mb in self.mailboxes:
            if mb.name == name:
                return mb
        return None

    def smtp_for(self, mailbox: str | None) -> SmtpConfig | None:
        mb = self.mailbox(mailbox) if mailbox else None
        if mb is not None and mb.smtp is not None:
            return mb.smtp
        return self.smtp

    def is_vip(self, addr: str) -> bool:
        a = addr.lower()
        for v in self.vip:
            v = v.lower()
            if v.startswith("@") and a.endswith(v):
                return True
            if a == v:
                return True
        return False


class _Reader:
    """Pulls typed keys out of a TOML table and collects `file: key: reason` problems."""

    def __init__(self, fname: str):
        self.fname = fname
        self.problems: list[str] = []

    def err(self, key: str, reason: str) -> None:
        self.problems.append(f"{self.fname}: {key}: {reason}")

    def get(self, table: dict, key: str, typ: type | tuple, default, prefix: str):
        if key not in table:
            return default
        v = table[key]
        if typ is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if isinstance(v, bool) and typ in (int, float):
            self.err(f"{prefix}{key}", f"expected {typ.__name__}, got boolean")
            return default
        if not isinstance(v, typ):
            name = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
            self.err(f"{prefix}{key}", f"expected {name}, got {type(v).__name__}")
            return default
        return v

    def unknown(self, table: dict, known: set[str], prefix: str) -> None:
        for k in table:
            if k not in known:
                self.err(f"{prefix}{k}", "unknown key")

    def secret(self, table: dict, prefix: str, base: str = "password") -> Secret:
        s = Secret(
            value=self.get(table, base, str, None, prefix),
            env=self.get(table, f"{base}_env", str, None, prefix),
            file=self.get(table, f"{base}_file", str, None, prefix),
        )
        n = sum(x is not None for x in (s.value, s.env, s.file))
        if n > 1:
            self.err(f"{prefix}{base}", f"give only one of {base}, {base}_env, {base}_file")
        return s


_SMTP_KEYS = {"host", "port", "tls", "user", "password", "password_env", "password_file", "auth",
              "token_command", "timeout"}
_MB_KEYS = {"name", "host", "port", "tls", "user", "password", "password_env", "password_file", "auth",
            "token_command", "folder", "address", "from_name", "after", "poll_interval", "idle", "timeout",
            "batch_size", "smtp", "calendar"}


def _smtp(r: _Reader, t: dict, prefix: str) -> SmtpConfig:
    r.unknown(t, _SMTP_KEYS, prefix)
    c = SmtpConfig(
        host=r.get(t, "host", str, "localhost", prefix),
        port=r.get(t, "port", int, 587, prefix),
        tls=r.get(t, "tls", str, "starttls", prefix),
        user=r.get(t, "user", str, None, prefix),
        password=r.secret(t, prefix),
        auth=r.get(t, "auth", str, "password", prefix),
        token=Secret(command=r.get(t, "token_command", str, None, prefix)),
        timeout=r.get(t, "timeout", float, 30.0, prefix),
    )
    if c.tls not in ("implicit", "starttls", "none"):
        r.err(f"{prefix}tls", f"must be implicit, starttls or none, not {c.tls!r}")
    if c.auth not in ("password", "xoauth2"):
        r.err(f"{prefix}auth", f"must be password or xoauth2, not {c.auth!r}")
    if c.auth == "xoauth2" and c.token.command is None:
        r.err(f"{prefix}token_command", "required when auth = \"xoauth2\"")
    if not 0 < c.port < 65536:
        r.err(f"{prefix}port", "must be between 1 and 65535")
    _positive(r, f"{prefix}timeout", c.timeout)
    return c


def _mailbox(r: _Reader, t: dict, i: int) -> MailboxConfig | None:
    prefix = f"mailbox[{i}]."
    if not isinstance(t, dict):
        r.err(f"mailbox[{i}]", "must be a table ([[mailbox]])")
        return None
    r.unknown(t, _MB_KEYS, prefix)
    name = r.get(t, "name", str, None, prefix)
    host = r.get(t, "host", str, None, prefix)
    if not name:
        r.err(f"{prefix}name", "required")
    if not host:
        r.err(f"{prefix}host", "required")
    tls = r.get(t, "tls", str, "implicit", prefix)
    mb = MailboxConfig(
        name=name or f"mailbox{i}",
        host=host or "",
        port=r.get(t, "port", int, 993 if tls == "implicit" else 143, prefix),
        tls=tls,
        user=r.get(t, "user", str, "", prefix),
        password=r.secret(t, prefix),
        auth=r.get(t, "auth", str, "password", prefix),
        token=Secret(command=r.get(t, "token_command", str, None, prefix)),
        folder=r.get(t, "folder", str, "INBOX", prefix),
        address=r.get(t, "address", str, "", prefix),
        from_name=r.get(t, "from_name", str, "", prefix),
        after=r.get(t, "after", str, "seen", prefix),
        poll_interval=r.get(t, "poll_interval", float, 60.0, prefix),
        idle=r.get(t, "idle", bool, True, prefix),
        timeout=r.get(t, "timeout", float, 20.0, prefix),
        batch_size=r.get(t, "batch_size", int, 100, prefix),
        calendar=r.get(t, "calendar", str, "", prefix),
    )
    if "smtp" in t:
        if isinstance(t["smtp"], dict):
            mb.smtp = _smtp(r, t["smtp"], f"{prefix}smtp.")
        else:
            r.err(f"{prefix}smtp", "must be a table")
    if mb.tls not in ("implicit", "starttls", "none"):
        r.err(f"{prefix}tls", f"must be implicit, starttls or none, not {mb.tls!r}")
    if mb.auth not in ("password", "xoauth2"):
        r.err(f"{prefix}auth", f"must be password or xoauth2, not {mb.auth!r}")
    if mb.auth == "xoauth2" and mb.token.command is None:
        r.err(f"{prefix}token_command", "required when auth = \"xoauth2\"")
    if not (mb.after in ("seen", "keep") or (mb.after.startswith("move:") and len(mb.after) > 5)):
        r.err(f"{prefix}after", f"must be seen, keep or move:<folder>, not {mb.after!r}")
    if not 0 < mb.port < 65536:
        r.err(f"{prefix}port", "must be between 1 and 65535")
    _plain_address(r, f"{prefix}address", mb.address)
    if not mb.address and "@" in mb.user:
        mb.address = mb.user
    if mb.batch_size < 1:
        r.err(f"{prefix}batch_size", "must be at least 1")
    for key in ("poll_interval", "timeout"):
        _positive(r, f"{prefix}{key}", getattr(mb, key))
    return mb


def _positive(r: _Reader, key: str, v: float) -> None:
    if not math.isfinite(v) or v <= 0:
        r.err(key, f"must be a positive number, not {v!r}")


def _plain_address(r: _Reader, key: str, v: str) -> None:
    """What goes on From/Reply-To and the SMTP envelope: local@domain, no display name."""
    if v and not re.fullmatch(r"[^\s<>()\[\],;:\\\"@]+@[A-Za-z0-9.-]+\.[A-Za-z0-9-]+", v):
        r.err(key, f"not a plain address like support@example.com: {v!r} (put a display name in from_name)")


def _permissions(r: _Reader, t: dict) -> dict[str, list[str]]:
    """`[permissions]`: COMMAND = ["lead", "manager"]; a command not listed is open to every role."""
    if not t:  # the command registry (and the rule engine it imports) only when there is something to check
        return {}
    from mailflow.commands import ALIASES, REGISTRY

    out: dict[str, list[str]] = {}
    for k, v in t.items():
        name = ALIASES.get(str(k).upper()) or ALIASES.get(str(k))
        if name is None:
            r.err(f"permissions.{k}", f"unknown command (one of {', '.join(sorted(REGISTRY))})")
            continue
        if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
            r.err(f"permissions.{k}", "must be a non-empty list of roles, e.g. [\"lead\", \"manager\"]")
            continue
        bad = [x for x in v if x not in ROLES]
        if bad:
            r.err(f"permissions.{k}", f"unknown role {bad[0]!r} (one of {', '.join(ROLES)})")
            continue
        out[name] = list(v)
    return out


def _sla_policy(data: dict, timezone: str, mailboxes: list[MailboxConfig], fname: str
                ) -> tuple[dict[str, sla.Calendar], sla.SlaPolicy]:
    """[calendar], [calendars.NAME] and [sla] -> (calendars, policy); raises ConfigError."""
    cals, problems = sla.parse_calendars(data.get("calendar"), data.get("calendars"), timezone, fname)
    policy, more = sla.parse_sla(data.get("sla"), cals, {mb.name: mb.calendar for mb in mailboxes}, fname)
    if problems or more:
        raise ConfigError(problems + more)
    return cals, policy


TOP_KEYS = {"storage", "rules", "templates", "company", "customers", "tickets", "mailbox", "smtp", "staff",
            "sla", "outbound", "logging", "routing", "attachments", "permissions", "calendar", "calendars",
            "reports", "retention"}
ROLES = ("agent", "lead", "manager")


def load(path: str | os.PathLike | None = None) -> Config:
    """Load and validate a config file; `None` means the embedded defaults (no mailboxes)."""
    if path is None:
        path = os.environ.get("MAILFLOW_CONFIG") or None
    if path is None:
        return apply_env(defaults())
    p = Path(path).expanduser().resolve()
    fname = str(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError([f"{fname}: -: cannot read: {e.strerror or e}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError([f"{fname}: -: not UTF-8"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{fname}: -: TOML syntax error: {e}"]) from None
    return apply_env(from_dict(data, fname, p.parent, p))


def defaults(base: Path | None = None) -> Config:
    base = base or Path.cwd()
    cfg = Config(
        path=None,
        data_dir=Path(os.environ.get("MAILFLOW_DATA_DIR", str(base / "mailflow-data"))).resolve(),
        rules_dir=resources.bundled_rules(),
        templates_dir=resources.bundled_templates(),
    )
    cfg.calendars, cfg.sla = _sla_policy({}, cfg.timezone, [], "(defaults)")
    return cfg


def from_dict(data: dict, fname: str, base: Path, path: Path | None = None) -> Config:
    r = _Reader(fname)
    r.unknown(data, TOP_KEYS, "")

    def table(name: str) -> dict:
        v = data.get(name, {})
        if not isinstance(v, dict):
            r.err(name, "must be a table")
            return {}
        return v

    def resolve(p: str) -> Path:
        q = Path(p).expanduser()
        return (q if q.is_absolute() else base / q).resolve()

    storage, rules, templates = table("storage"), table("rules"), table("templates")
    company, customers, tickets = table("company"), table("customers"), table("tickets")
    outbound, logging_, routing = table("outbound"), table("logging"), table("routing")
    attachments = table("attachments")
    retention = table("retention")
    r.unknown(storage, {"data_dir", "archive_after_days", "backup_dir", "backend", "dsn", "password",
                        "password_env", "password_file", "pool_size", "lease_seconds", *PG_OPTIONS}, "storage.")
    r.unknown(retention, {"raw_mail_days", "attachments_days", "closed_tickets_years"}, "retention.")
    r.unknown(rules, {"dir"}, "rules.")
    r.unknown(templates, {"dir", "default_locale"}, "templates.")
    r.unknown(company, {"name"}, "company.")
    r.unknown(customers, {"vip"}, "customers.")
    r.unknown(tickets, {"prefix", "timezone", "reopen_within_days", "auto_close_days"}, "tickets.")
    r.unknown(logging_, {"level"}, "logging.")
    r.unknown(routing, {"strategy", "escalation_chain"}, "routing.")
    r.unknown(attachments, {"max_bytes"}, "attachments.")
    r.unknown(outbound, {"ack_replies", "max_auto_per_hour", "max_auto_burst", "max_auto_per_ticket", "retry_for_hours",
                         "backoff_initial", "backoff_max", "trusted_authserv_ids", "hmac_key",
                         "hmac_key_env", "hmac_key_file", "staff_reference_days"}, "outbound.")

    data_dir = r.get(storage, "data_dir", str, None, "storage.")
    rules_dir = r.get(rules, "dir", str, None, "rules.")
    tpl_dir = r.get(templates, "dir", str, None, "templates.")
    cfg = Config(
        path=path,
        data_dir=resolve(data_dir) if data_dir else resolve("mailflow-data"),
        rules_dir=resolve(rules_dir) if rules_dir else resources.bundled_rules(),
        templates_dir=resolve(tpl_dir) if tpl_dir else resources.bundled_templates(),
        default_locale=r.get(templates, "default_locale", str, "zh", "templates."),
        company_name=r.get(company, "name", str, "Example Co.", "company."),
        vip=r.get(customers, "vip", list, [], "customers."),
        prefix=r.get(tickets, "prefix", str, "CW", "tickets."),
        timezone=r.get(tickets, "timezone", str, "Asia/Shanghai", "tickets."),
        attachment_max_bytes=r.get(attachments, "max_bytes", int, 10 * 1024 * 1024, "attachments."),
        log_level=r.get(logging_, "level", str, "info", "logging."),
        routing_strategy=r.get(routing, "strategy", str, "least_open", "routing."),
        escalation_chain=r.get(routing, "escalation_chain", list, [], "routing."),
        reopen_within_days=r.get(tickets, "reopen_within_days", float, 30.0, "tickets."),
        auto_close_days=r.get(tickets, "auto_close_days", float, 7.0, "tickets."),
        permissions=_permissions(r, table("permissions")),
        archive_after_days=r.get(storage, "archive_after_days", float, 3.0, "storage."),
    )
    _storage_backend(r, storage, cfg)
    backup_dir = r.get(storage, "backup_dir", str, None, "storage.")
    if backup_dir:
        cfg.backup_dir = resolve(backup_dir)
        if cfg.backup_dir == cfg.data_dir or cfg.data_dir in cfg.backup_dir.parents:
            r.err("storage.backup_dir", f"must not lie inside the data directory {cfg.data_dir} "
                  "(a backup would back up the backups, and a lost disk would take both)")
    for key in ("raw_mail_days", "attachments_days", "closed_tickets_years"):
        v = r.get(retention, key, float, 0.0, "retention.")
        if not math.isfinite(v) or v < 0:
            r.err(f"retention.{key}", f"must be a number >= 0 (0 keeps forever), not {v!r}")
        else:
            setattr(cfg, key, v)
    if not math.isfinite(cfg.archive_after_days) or cfg.archive_after_days < 0:
        r.err("storage.archive_after_days", f"must be a number of days >= 0, not {cfg.archive_after_days!r}")
    for key in ("reopen_within_days", "auto_close_days"):
        v = getattr(cfg, key)
        if not math.isfinite(v) or v < 0:
            r.err(f"tickets.{key}", f"must be a number of days >= 0, not {v!r}")
    if rules_dir and not cfg.rules_dir.is_dir():
        r.err("rules.dir", f"not a directory: {cfg.rules_dir}")
    if tpl_dir and not cfg.templates_dir.is_dir():
        r.err("templates.dir", f"not a directory: {cfg.templates_dir}")
    if cfg.default_locale not in ("zh", "zh-Hant", "en"):
        r.err("templates.default_locale", f"must be zh, zh-Hant or en, not {cfg.default_locale!r}")
    if not cfg.prefix.isalnum() or not cfg.prefix.isascii() or not cfg.prefix[:1].isalpha():
        r.err("tickets.prefix", f"must be ASCII letters/digits starting with a letter, not {cfg.prefix!r}")
    cfg.prefix = cfg.prefix.upper()
    try:
        ZoneInfo(cfg.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        r.err("tickets.timezone", f"unknown time zone {cfg.timezone!r}")
    for i, v in enumerate(cfg.vip):
        if not isinstance(v, str) or "@" not in v:
            r.err(f"customers.vip[{i}]", f"not an address or @domain: {v!r}")
    if cfg.log_level.lower() not in ("debug", "info", "warning", "error"):
        r.err("logging.level", "must be debug, info, warning or error")
    if cfg.routing_strategy not in ("least_open", "round_robin"):
        r.err("routing.strategy", "must be least_open or round_robin")
    if cfg.attachment_max_bytes < 0:
        r.err("attachments.max_bytes", "must be >= 0")

    ob = OutboundConfig(
        ack_replies=r.get(outbound, "ack_replies", bool, False, "outbound."),
        max_auto_per_hour=r.get(outbound, "max_auto_per_hour", int, 5, "outbound."),
        max_auto_burst=r.get(outbound, "max_auto_burst", int, 30, "outbound."),
        max_auto_per_ticket=r.get(outbound, "max_auto_per_ticket", int, 10, "outbound."),
        retry_for_hours=r.get(outbound, "retry_for_hours", float, 48.0, "outbound."),
        backoff_initial=r.get(outbound, "backoff_initial", float, 30.0, "outbound."),
        backoff_max=r.get(outbound, "backoff_max", float, 3600.0, "outbound."),
        trusted_authserv_ids=r.get(outbound, "trusted_authserv_ids", list, [], "outbound."),
        hmac_key=r.secret(outbound, "outbound.", "hmac_key"),
        staff_reference_days=r.get(outbound, "staff_reference_days", float, 30.0, "outbound."),
    )
    cfg.outbound = ob
    for key in ("retry_for_hours", "backoff_initial", "backoff_max", "staff_reference_days"):
        _positive(r, f"outbound.{key}", getattr(ob, key))
    if ob.backoff_initial > ob.backoff_max:
        r.err("outbound.backoff_initial", "must not exceed backoff_max")
    for key in ("max_auto_per_hour", "max_auto_burst", "max_auto_per_ticket"):
        if getattr(ob, key) < 0:
            r.err(f"outbound.{key}", "must be >= 0")
    for key, values in (("outbound.trusted_authserv_ids", ob.trusted_authserv_ids),
                        ("routing.escalation_chain", cfg.escalation_chain)):
        for i, v in enumerate(values):
            if not isinstance(v, str) or not v:
                r.err(f"{key}[{i}]", f"must be a non-empty string, not {v!r}")
    for i, v in enumerate(cfg.escalation_chain):
        if isinstance(v, str):
            _plain_address(r, f"routing.escalation_chain[{i}]", v)

    mbs = data.get("mailbox", [])
    if isinstance(mbs, dict):
        mbs = [mbs]
    if not isinstance(mbs, list):
        r.err("mailbox", "must be an array of tables ([[mailbox]])")
        mbs = []
    names: set[str] = set()
    for i, t in enumerate(mbs):
        mb = _mailbox(r, t, i)
        if mb is None:
            continue
        if mb.name in names:
            r.err(f"mailbox[{i}].name", f"duplicate mailbox name {mb.name!r}")
        names.add(mb.name)
        cfg.mailboxes.append(mb)
    if "smtp" in data:
        cfg.smtp = _smtp(r, table("smtp"), "smtp.")

    staff = data.get("staff", [])
    if not isinstance(staff, list):
        r.err("staff", "must be an array of tables ([[staff]])")
        staff = []
    seen: set[str] = set()
    for i, t in enumerate(staff):
        prefix = f"staff[{i}]."
        if not isinstance(t, dict):
            r.err(f"staff[{i}]", "must be a table")
            continue
        r.unknown(t, {"email", "name", "teams", "role"}, prefix)
        email = r.get(t, "email", str, "", prefix).strip().lower()
        if "@" not in email:
            r.err(f"{prefix}email", "required: an email address")
            continue
        if email in seen:
            r.err(f"{prefix}email", f"duplicate staff address {email}")
        seen.add(email)
        m = StaffMember(
            email=email,
            name=r.get(t, "name", str, email.split("@")[0], prefix),
            teams=r.get(t, "teams", list, [], prefix),
            role=r.get(t, "role", str, "agent", prefix),
        )
        if not all(isinstance(x, str) and x for x in m.teams):
            r.err(f"{prefix}teams", "must be a list of team names")
            m.teams = [x for x in m.teams if isinstance(x, str) and x]
        if m.role not in ROLES:
            r.err(f"{prefix}role", f"must be agent, lead or manager, not {m.role!r}")
        cfg.staff.append(m)
    tz_ok = not any(p.startswith(f"{fname}: tickets.timezone") for p in r.problems)
    try:
        cfg.calendars, cfg.sla = _sla_policy(data, cfg.timezone if tz_ok else "UTC", cfg.mailboxes, fname)
    except ConfigError as e:
        r.problems.extend(e.problems)
    cfg.reports = _reports(r, table("reports"), cfg)
    if r.problems:
        raise ConfigError(r.problems)
    return cfg


def _storage_backend(r: _Reader, t: dict, cfg: Config) -> None:
    """`[storage] backend`, and for postgresql its dsn, password, TLS options and pool size."""
    cfg.backend = r.get(t, "backend", str, "tinydb", "storage.")
    if cfg.backend not in ("tinydb", "postgresql"):
        r.err("storage.backend", f'must be "tinydb" or "postgresql", not {cfg.backend!r}')
        cfg.backend = "tinydb"
    pg = PgConfig(dsn=r.get(t, "dsn", str, "", "storage."), password=r.secret(t, "storage."),
                  pool_size=r.get(t, "pool_size", int, 4, "storage."),
                  lease_seconds=r.get(t, "lease_seconds", float, 30.0, "storage."))
    for k in PG_OPTIONS:
        v = r.get(t, k, (str, int), None, "storage.")
        if v is not None:
            pg.options[k] = str(v)
    if cfg.backend == "postgresql":
        if not pg.dsn:
            r.err("storage.dsn", 'required with backend = "postgresql" (e.g. "postgresql://mailflow@db.example/mailflow")')
        elif not pg.dsn.startswith(("postgresql://", "postgres://")) and "=" not in pg.dsn:
            r.err("storage.dsn", f"not a PostgreSQL connection string: {pg.dsn!r}")
        if not 2 <= pg.pool_size <= 100:  # a batch holds one; serials and leases need another
            r.err("storage.pool_size", f"must be 2 to 100, not {pg.pool_size}")
        if not 2 <= pg.lease_seconds <= 600:
            r.err("storage.lease_seconds", f"must be 2 to 600 seconds, not {pg.lease_seconds:g}")
    elif pg.dsn:
        r.err("storage.dsn", 'only with backend = "postgresql"')
    cfg.pg = pg


def _reports(r: _Reader, t: dict, cfg: Config) -> ReportsConfig:
    """`[reports]`; recipients are plain addresses, `team:NAME` (a team some staff member is in) or
    `role:ROLE` (every staff member with that role)."""
    p = "reports."
    r.unknown(t, {"monthly_to", "weekly_to", "locale", "send_at", "calendar", "lookback_months"}, p)
    rc = ReportsConfig(
        monthly_to=r.get(t, "monthly_to", list, [], p), weekly_to=r.get(t, "weekly_to", list, [], p),
        locale=r.get(t, "locale", str, "", p) or cfg.default_locale, send_at=r.get(t, "send_at", str, "09:00", p),
        calendar=r.get(t, "calendar", str, "default", p), lookback_months=r.get(t, "lookback_months", int, 6, p),
    )
    teams = {team for s in cfg.staff for team in s.teams}
    for key in ("monthly_to", "weekly_to"):
        for i, v in enumerate(getattr(rc, key)):
            where = f"{p}{key}[{i}]"
            if not isinstance(v, str) or not v.strip():
                r.err(where, f"must be an address, team:NAME or role:ROLE, not {v!r}")
            elif v.startswith("team:"):
                if v[5:] not in teams:
                    r.err(where, f"no [[staff]] member is in team {v[5:]!r}")
            elif v.startswith("role:"):
                if v[5:] not in ROLES:
                    r.err(where, f"unknown role {v[5:]!r} (one of {', '.join(ROLES)})")
            else:
                _plain_address(r, where, v)
    if rc.locale not in ("zh", "zh-Hant", "en"):
        r.err(f"{p}locale", f"must be zh, zh-Hant or en, not {rc.locale!r}")
    if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", rc.send_at):
        r.err(f"{p}send_at", f"must be a time like 09:00, not {rc.send_at!r}")
    if cfg.calendars and rc.calendar not in cfg.calendars:
        r.err(f"{p}calendar", f"unknown calendar {rc.calendar!r} (one of {', '.join(sorted(cfg.calendars))})")
    if not 0 <= rc.lookback_months <= 120:
        r.err(f"{p}lookback_months", f"must be 0 to 120, not {rc.lookback_months}")
    return rc


def apply_env(cfg: Config) -> Config:
    """MAILFLOW_DATA_DIR and MAILFLOW_LOG_LEVEL override the file (handy under systemd)."""
    if os.environ.get("MAILFLOW_DATA_DIR"):
        cfg.data_dir = Path(os.environ["MAILFLOW_DATA_DIR"]).resolve()
    if os.environ.get("MAILFLOW_LOG_LEVEL"):
        cfg.log_level = os.environ["MAILFLOW_LOG_LEVEL"]
    if os.environ.get("MAILFLOW_DSN"):  # the tests' and the benchmarks' PostgreSQL
        cfg.backend, cfg.pg.dsn = "postgresql", os.environ["MAILFLOW_DSN"]
    return cfg
