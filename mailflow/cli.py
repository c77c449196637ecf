"""The `mailflow` command: init, check, run, ingest, demo, simulate, tickets, quarantine, outbox, status."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sys
from pathlib import Path

import click

from mailflow import __version__, cli_data, cli_db, cli_report, resources
from mailflow import config as config_mod
from mailflow.cliutil import GlobalOptionsGroup
from mailflow.clock import Clock, iso
from mailflow.errors import ProblemsError
from mailflow.privacy import MaskAddresses
from mailflow.spool import Spool
from mailflow.storeapi import StoreAPI, StoreError, has_data, open_store

log = logging.getLogger("mailflow")


class _Redact(logging.Filter):
    """Belt and braces: a log line never carries a configured password."""

    secrets: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            msg = record.getMessage()
            for s in self.secrets:
                if s and s in msg:
                    record.msg, record.args = msg.replace(s, "***"), ()
        return True


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not sys.stderr.isatty() and "JOURNAL_STREAM" not in __import__("os").environ:
        fmt = "%(asctime)s " + fmt
    handler.setFormatter(logging.Formatter(fmt))
    handler.addFilter(_Redact())
    handler.addFilter(MaskAddresses())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class Ctx:
    def __init__(self, config_path: str | None, log_level: str | None, now: str | None = None):
        self.config_path = config_path
        self.log_level = log_level
        self._cfg: config_mod.Config | None = None
        try:
            self.clock = Clock.parse(now)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--now") from None

    @property
    def cfg(self) -> config_mod.Config:
        if self._cfg is None:
            try:
                self._cfg = config_mod.load(self.config_path)
            except config_mod.ConfigError as e:
                for p in e.problems:
                    click.echo(p, err=True)
                sys.exit(2)
            setup_logging(self.log_level or self._cfg.log_level)
            c = self._cfg
            smtps = [c.smtp, *(mb.smtp for mb in c.mailboxes)]
            literal = [mb.password.value for mb in c.mailboxes] + [s.password.value for s in smtps if s] \
                + [c.outbound.hmac_key.value]
            _Redact.secrets = [x for x in literal if x and len(x) >= 4]  # "x" would mangle every line
        return self._cfg

    def store(self) -> StoreAPI:
        return open_store(self.cfg)

    def runtime(self):
        from mailflow.runtime import LoadError, Runtime

        try:
            return Runtime.load(self.cfg, self.clock, config_path=self.config_path)
        except LoadError as e:
            for p in e.problems:
                click.echo(p, err=True)
            sys.exit(2)

    def pipeline(self):
        return self.runtime().pipeline


class _Group(GlobalOptionsGroup):
    """Expected failures (a damaged data file, a missing spool file, a broken rule) end in one
    clear line and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (StoreError, ProblemsError, OSError) as e:
            if isinstance(e, ProblemsError):
                for p in e.problems:
                    click.echo(p, err=True)
                raise SystemExit(2) from None
            raise click.ClickException(f"{type(e).__name__}: {e}") from None


@click.group(cls=_Group)
@click.option("--config", "config_path", envvar="MAILFLOW_CONFIG", type=click.Path(dir_okay=False),
              help="TOML config file (default: $MAILFLOW_CONFIG, else the embedded defaults).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None)
@click.option("--now", "now", metavar="ISO", default=None,
              help="Run as of this instant (ISO 8601 with offset, e.g. 2026-11-24T12:00+08:00): every "
                   "timestamp, SLA clock and schedule uses it. For tests and for trying rules.")
@click.version_option(version=__version__, prog_name="mailflow")  # works from a checkout too
@click.pass_context
def main(ctx: click.Context, config_path: str | None, log_level: str | None, now: str | None) -> None:
    """mailflow: a support team's customer-feedback loop over plain email.

    \b
    First steps:
      mailflow demo                      the samples through the real pipeline, no server needed
      mailflow init ~/mailflow           an example config with copies of the rules and templates
      mailflow --config ~/mailflow/mailflow.toml check --connect
      mailflow --config ~/mailflow/mailflow.toml run --once
    Global options (--config, --log-level, --now) may also follow the subcommand."""
    ctx.obj = Ctx(config_path, log_level, now)


# ---- init / check -----------------------------------------------------------------------------

@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Overwrite an existing config.")
def init(directory: str, force: bool) -> None:
    """Write DIR/mailflow.toml (data inside DIR) plus copies of the bundled rules and templates.

    Example: `mailflow init ~/mailflow`, then edit ~/mailflow/mailflow.toml."""
    _require_resources()
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cfg_path = d / "mailflow.toml"
    if cfg_path.exists() and not force:
        raise click.ClickException(f"{cfg_path} exists (use --force to overwrite)")
    text = resources.example_config().read_text(encoding="utf-8")
    cfg_path.write_text(text, encoding="utf-8")
    for name, src in (("rules", resources.bundled_rules()), ("templates", resources.bundled_templates())):
        dst = d / name
        if not dst.exists():
            shutil.copytree(src, dst)
    (d / "data").mkdir(exist_ok=True)
    click.echo(f"wrote {cfg_path}, {d / 'rules'}/, {d / 'templates'}/")
    click.echo(f"next: edit it, then `mailflow --config {cfg_path} check`")


def _require_resources() -> None:
    """A package built without its rules or templates says so in one line (exit 2)."""
    missing = resources.missing()
    if missing:
        for m in missing:
            click.echo(m, err=True)
        sys.exit(2)


@main.command()
@click.option("--connect", is_flag=True, help="Also log in to every mailbox and SMTP server and report each.")
@click.pass_obj
def check(obj: Ctx, connect: bool) -> None:
    """Validate the config, compile every rule file and render every template; exit 1 on any error.

    Warnings (exit status unchanged) name holiday data that is missing for the coming weeks and SLA
    numbers that now mean business hours. Example: `mailflow check --connect`."""
    from mailflow import sla
    from mailflow.render import TemplateError, Templates, check_templates
    from mailflow.rules import RuleError, RuleSet, check_rules

    try:
        cfg = config_mod.load(obj.config_path)
    except config_mod.ConfigError as e:
        for p in e.problems:
            click.echo(p, err=True)
        sys.exit(1)
    fname = obj.config_path or "(embedded defaults)"
    from mailflow.report_render import check_report_templates

    problems = [*check_rules(cfg.rules_dir), *check_templates(cfg.templates_dir),
                *check_report_templates(cfg.templates_dir)]
    if not problems:  # every template a rule names must exist
        try:
            names = Templates.load(cfg.templates_dir).names()
            for file, rule, template in RuleSet.load(cfg.rules_dir).templates_used():
                if template not in names:
                    problems.append(f"{file}: {rule}: template {template!r} does not exist in {cfg.templates_dir}")
        except (RuleError, TemplateError) as e:
            problems += e.problems
    for p in problems:
        click.echo(p, err=True)
    today = obj.clock.now().astimezone(cfg.tz).date()
    for w in sla.makeup_warnings(cfg.calendars, today, fname):
        click.echo(f"warning: {w}", err=True)
    if cfg.policy.plain_numbers:
        day = cfg.policy.calendar_for("normal").day_seconds() / 3600
        click.echo(f"warning: {fname}: sla: a plain number is a number of business hours now (not wall-clock "
                   f'hours; one working day is {day:g} h): write "3d" for three working days', err=True)
    failed = _check_database(cfg) + (_check_connections(cfg) if connect else 0)
    if problems or failed:
        sys.exit(1)
    click.echo(f"ok: config {fname}, {len(cfg.mailboxes)} mailbox(es), "
               f"rules {cfg.rules_dir}, templates {cfg.templates_dir}")


def _check_database(cfg: config_mod.Config) -> int:
    """PostgreSQL: connect, report the server version and the schema state (1 if unusable)."""
    if cfg.backend != "postgresql":
        return 0
    from mailflow.store_pg import connect_check

    r = connect_check(cfg)
    if not r["ok"]:
        click.echo(f"database {r['where']}: FAILED: {r['problem']}", err=True)
        return 1
    line = f"database {r['where']}: PostgreSQL {r['server']}, schema version {r['schema']}"
    if r["problem"]:
        click.echo(f"{line}: {r['problem']}", err=True)
        return 1
    click.echo(f"{line} (current)")
    return 0


def _check_connections(cfg: config_mod.Config) -> int:
    """Log in to every mailbox (IMAP) and every SMTP server once; one line each. Returns failures."""
    import asyncio as aio

    from mailflow.fetch import FetchError, ImapSource
    from mailflow.send import SmtpSender

    failed = 0
    for mb in cfg.mailboxes:
        src = ImapSource(mb)
        try:
            src.connect()
            click.echo(f"mailbox {mb.name}: ok ({mb.user}@{mb.host}:{mb.port}, {mb.folder}, "
                       f"uidvalidity {src.uidvalidity})")
        except (FetchError, config_mod.ConfigError) as e:
            failed += 1
            why = e.reason if isinstance(e, FetchError) else "; ".join(e.problems)
            click.echo(f"mailbox {mb.name}: FAILED: {why}", err=True)
        finally:
            src.close()
    servers = {id(s): (name, s) for name, s in [("smtp", cfg.smtp), *((f"mailbox {m.name} smtp", m.smtp)
                                                                        for m in cfg.mailboxes)] if s}

    async def one(s) -> str | None:
        sender = SmtpSender(s)
        try:
            return await sender._connect()
        finally:
            await sender.close()

    for name, s in servers.values():
        why = aio.run(one(s))
        if why:
            failed += 1
            click.echo(f"{name}: FAILED: {s.host}:{s.port}: {why}", err=True)
        else:
            click.echo(f"{name}: ok ({s.host}:{s.port}, tls {s.tls}{', user ' + s.user if s.user else ''})")
    if not cfg.smtp and not any(m.smtp for m in cfg.mailboxes):
        click.echo("smtp: not configured (answers wait in the outbox)")
    return failed


# ---- running ----------------------------------------------------------------------------------

@main.command()
@click.option("--once", is_flag=True, help="One pass over every mailbox and the outbox, then exit.")
@click.pass_obj
def run(obj: Ctx, once: bool) -> None:
    """Fetch, process and answer mail (IDLE where offered, polling otherwise): the daemon, or one pass.

    Example: `mailflow run --once` from cron, `systemctl start mailflow` for the daemon.

    `run --once` exits 0 when everything was done, 1 when a daemon already runs on the data
    directory, 2 on a broken config, rule or template, 3 when a mailbox or the SMTP server could
    not be reached (everything else was still done)."""
    from mailflow import services

    cfg = obj.cfg
    if once:
        rep = services.run_once(obj.runtime(), click.echo, lambda m: click.echo(m, err=True))
        sys.exit(rep.exit)
    if obj.clock.fixed is not None:
        raise click.UsageError("--now is for `run --once` and the other one-shot commands, not the daemon")
    from mailflow.daemon import Daemon

    try:
        d = Daemon(cfg, obj.config_path)
    except Exception as e:
        for p in getattr(e, "problems", [str(e)]):
            click.echo(p, err=True)
        click.echo("refusing to start: fix the errors above (`mailflow check` lists them all)", err=True)
        sys.exit(2)
    sys.exit(asyncio.run(d.main()))


def _ingest(obj: Ctx, paths: list[Path], echo=None, progress: bool = False) -> list:
    from mailflow import services
    from mailflow.cliutil import Progress
    from mailflow.pipeline import count_paths

    rt = obj.runtime()
    with Progress(total=count_paths(paths) if progress else None, label="ingest", enabled=progress) as bar:
        def each(label: str, r) -> None:
            bar.advance()
            if echo is not None:
                echo(label, r, bar.echo)
        results = services.ingest(rt, paths, on_result=each)
    return [r for _label, r in results]


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.pass_obj
def ingest(obj: Ctx, paths: tuple[Path, ...]) -> None:
    """Run the pipeline on local .eml files, mbox files or Maildir folders: one line per message, a
    progress line on a terminal. Mail already processed is skipped and writes nothing.

    Example: `mailflow ingest old-helpdesk-export.mbox` (a migration) or `mailflow ingest ~/Maildir`."""
    def line(label: str, r, out=click.echo) -> None:
        out(f"{r.kind:12} {r.ticket_id or '-':16} {label}{'  ' + r.reason if r.reason else ''}")

    results = _ingest(obj, list(paths), echo=line, progress=True)
    counts: dict[str, int] = {}
    for r in results:
        counts[r.kind] = counts.get(r.kind, 0) + 1
    click.echo(", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "nothing to ingest")


@main.command()
@click.pass_obj
@click.pass_context
def demo(ctx: click.Context, obj: Ctx) -> None:
    """Run the real pipeline over the bundled sample mails (no mail server needed), then list the tickets.

    It never touches a configured installation: with no config it uses the embedded default
    ./mailflow-data (so a plain `mailflow tickets list` there shows its tickets); when --config,
    MAILFLOW_CONFIG or MAILFLOW_DATA_DIR is set it ignores them and uses ./mailflow-demo."""
    import os

    _require_resources()
    configured = obj.config_path or os.environ.get("MAILFLOW_CONFIG") or os.environ.get("MAILFLOW_DATA_DIR")
    data = Path.cwd() / ("mailflow-demo" if configured else "mailflow-data")
    cfg = config_mod.defaults()
    cfg.data_dir = data.resolve()
    obj._cfg = cfg
    setup_logging(obj.log_level or "warning")
    look = f"MAILFLOW_DATA_DIR={data} mailflow" if configured else "mailflow"
    if configured:
        click.echo(f"demo: ignoring your configuration ({obj.config_path or 'environment'}); "
                   f"sample data goes to {data}")
    samples = sorted(resources.samples().glob("*.eml"))
    click.echo(f"data directory: {data}")
    click.echo(f"ingesting {len(samples)} sample mails from {resources.samples()}")
    _ingest(obj, samples, echo=lambda label, r, out: out(f"  {r.kind:12} {r.ticket_id or '-':16} "
                                                         f"{Path(label).name}"))
    click.echo("")
    ctx.invoke(tickets_list, status=None, overdue=False, due_within=None, breached=None, as_json=False)
    click.echo(f"\noutbox: {len(_outbox_rows(obj))} mails rendered and queued; they go out once [smtp] is "
               "configured")
    click.echo(f"look around: `{look} tickets show ID`, `{look} outbox list`, `{look} simulate FILE.eml`")
    click.echo(f"start over: `rm -r {data}`")


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table (keys documented in the README).")
@click.option("--explain", is_flag=True, help="Also show the body and where the quoted part was cut, by which rule.")
@click.pass_obj
def simulate(obj: Ctx, files: tuple[Path, ...], as_json: bool, explain: bool) -> None:
    """Show what mailflow would do with each mail, without touching the database or sending.

    Example: `mailflow simulate --explain reply.eml` (as of another time: `mailflow --now
    2026-11-24T12:00+08:00 simulate some.eml`)."""
    from mailflow.simulate import simulate_files

    out = simulate_files(obj.pipeline(), list(files), now=obj.clock.now(), explain=explain)
    if as_json:
        click.echo(json.dumps(out, ensure_ascii=False, indent=2, default=str))
        return
    for r in out:
        click.echo(f"== {r['file']}")
        if r.get("note"):
            click.echo(f"  note: {r['note']}")
        for k in ("route", "ticket_id", "status", "category", "priority", "team", "assignee", "tags", "error"):
            if r.get(k) not in (None, [], ""):
                click.echo(f"  {k}: {r[k]}")
        feats = r.get("features") or {}
        if feats:
            click.echo("  features: " + ", ".join(f"{k}={v}" for k, v in feats.items()))
        for s, n in r.get("fired", []):
            click.echo(f"  fired: {s}/{n}")
        plan = r.get("plan") or {}
        for u in plan.get("updates", []):
            click.echo(f"  would change {u['ticket']}: " + ", ".join(f"{k}={v}" for k, v in u["fields"].items()
                                                                    if k != "updated_at"))
        for e in plan.get("events", []):
            click.echo(f"  would record on {e['ticket']}: {e['kind']}: {e.get('detail', '')}")
        for n in plan.get("notes", []):
            click.echo(f"  note: {n}")
        for m in r.get("mails", []):
            click.echo(f"  would send: {m['template']} to {', '.join(m['to'])}: {m['subject']}")
        for tm in r.get("timers", []):
            click.echo(f"  timers: {', '.join(tm['fired']) or '-'}" + (f" (waiting for working hours: "
                       f"{', '.join(tm['deferred'])})" if tm["deferred"] else ""))
        if r.get("explain"):
            click.echo("  body (where the quote was cut):")
            for line in r["explain"].splitlines():
                click.echo(f"    {line}")


# ---- tickets ----------------------------------------------------------------------------------

TABLE_LIMIT = 100  # rows a `list` table shows unless --limit says otherwise


def _newest(rows: list, limit: int | None, as_json: bool, what: str) -> list:
    """The last `limit` of `rows` (they are oldest first); says on stderr what was left out, so a
    table never silently hides rows and a pipe of JSON gets everything unless it asked for less."""
    n = (None if as_json else TABLE_LIMIT) if limit is None else (limit or None)
    if n is None or len(rows) <= n:
        return rows
    click.echo(f"showing the newest {n:,} of {len(rows):,} {what} (--limit N, --limit 0 for all)", err=True)
    return rows[-n:]


def _ticket_summary(t: dict, message_count: int) -> dict:
    return {
        "id": t["id"], "status": t.get("status"), "category": t.get("category"), "priority": t.get("priority"),
        "customer_email": t.get("customer_email"), "subject": t.get("subject"), "created_at": t.get("created_at"),
        "message_count": message_count,
        "team": t.get("team"), "assignee": t.get("assignee"), "tags": t.get("tags", []),
        "updated_at": t.get("updated_at"), "locale": t.get("locale"), "mailbox": t.get("mailbox"),
    }


@main.group()
def tickets() -> None:
    """List and show tickets: `tickets list [--overdue]`, `tickets show ID`."""


def _duration(value: str) -> float:
    """`--due-within 2h` / `30m` / `1d` (wall-clock) -> seconds."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([mhd])\s*", value or "")
    if not m:
        raise click.BadParameter(f"{value!r}: give a duration like 30m, 2h or 1d", param_hint="--due-within")
    return float(m.group(1)) * {"m": 60, "h": 3600, "d": 86400}[m.group(2)]


@tickets.command("list")
@click.option("--status", type=click.Choice(["new", "open", "pending", "resolved", "closed"]))
@click.option("--overdue", is_flag=True, help="Only tickets with a running SLA clock past its due time.")
@click.option("--due-within", "due_within", metavar="DURATION",
              help="Only tickets with a running SLA clock due within this time (30m, 2h, 1d).")
@click.option("--breached", type=click.Choice(["first_response", "next_response", "resolution"]),
              help="Only tickets whose clock breached its target (running or stopped).")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table (keys documented in the README).")
@click.option("--limit", type=click.IntRange(min=0), default=None, metavar="N",
              help=f"Show the newest N matching tickets (table default {TABLE_LIMIT}, JSON default all; 0: all).")
@click.pass_obj
def tickets_list(obj: Ctx, status: str | None, overdue: bool, due_within: str | None, breached: str | None,
                 as_json: bool, limit: int | None) -> None:
    """Hot tickets (open and recently closed), oldest id first; filters combine. The table shows the
    newest matching tickets only (a big team has thousands hot); `--limit 0` shows all.

    Example: `mailflow tickets list --overdue` or `mailflow tickets list --due-within 2h --json`."""
    from mailflow import slaclock
    from mailflow.cliutil import Column, echo_table

    store = obj.store()
    now = obj.clock.now()
    horizon = _duration(due_within) if due_within else None
    rows = []
    unfiltered = status is None and not overdue and horizon is None and not breached
    holding: set[str] | None = None  # ids whose stored SLA record holds, where they were asked
    if unfiltered and (not as_json or limit):  # the newest few: parse only the tickets shown
        n = TABLE_LIMIT if limit is None else limit or None
        total, everything = store.newest_hot_tickets(n)
        if n is not None and total > n:
            click.echo(f"showing the newest {n:,} of {total:,} tickets (--limit N, --limit 0 for all)", err=True)
    elif (overdue or horizon is not None) and not breached and status != "closed":
        # running clocks are wanted: read the stored SLA records, not every history (closed tickets
        # waiting for the archive have none running); replay only where a record no longer holds
        light = store.hot_clock_records(iso(now))
        holding = {t["id"] for t in light if slaclock.record_holds(t, obj.cfg, now)}
        stale = [t["id"] for t in light if t["id"] not in holding]
        whole = {t["id"]: t for t in store.tickets_by_id(stale)} if stale else {}
        everything = sorted((whole.get(t["id"], t) for t in light), key=lambda t: t["id"])
    else:
        everything = sorted(store.all_tickets(), key=lambda t: t["id"])
    for t in everything:
        if status is not None and t.get("status") != status:
            continue
        if overdue or horizon is not None:  # the stored record where it holds
            running = slaclock.running_clocks(t, obj.cfg, now, None if holding is None else t["id"] in holding)
            if overdue and not any(late for late, _due in running):
                continue
            if horizon is not None and not any(due and 0 <= (due - now).total_seconds() <= horizon
                                               for _late, due in running):
                continue
        if breached and not slaclock.sla_clocks(t, obj.cfg, now)[breached].breached:
            continue
        rows.append(t)
    if not unfiltered or (as_json and not limit):
        rows = _newest(rows, limit, as_json, "tickets")
    cut = [t["id"] for t in rows if "created_at" not in t]  # light records (hot_clock_records)
    if cut:
        whole = {t["id"]: t for t in store.tickets_by_id(cut)}
        rows = [whole.get(t["id"], t) for t in rows]
        everything = rows
    counts = store.message_counts([t["id"] for t in rows])  # one query, not one a row
    rows = [_ticket_summary(t, counts[t["id"]]) for t in rows]
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    shown = {t["id"]: t for t in everything}
    for r in rows:
        t = shown[r["id"]]
        r["due"] = (t.get("sla") or {}).get("first_response_due" if not t.get("first_response_at") else "resolution_due")
    echo_table(rows, [Column("id", "ID"), Column("status", "STATUS"), Column("priority", "PRIORITY"),
                      Column("category", "CATEGORY"), Column("assignee", "ASSIGNEE", shrink=True),
                      Column("due", "DUE", kind="time"), Column("message_count", "MSGS", kind="number"),
                      Column("customer_email", "CUSTOMER", shrink=True), Column("subject", "SUBJECT", shrink=True)],
               tz=obj.cfg.tz, empty="no tickets")


@tickets.command("show")
@click.argument("ticket_id")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table (keys documented in the README).")
@click.pass_obj
def tickets_show(obj: Ctx, ticket_id: str, as_json: bool) -> None:
    """One ticket (hot or archived): fields, every SLA clock, and its timeline of messages and changes.

    Example: `mailflow tickets show CW202611240001` (times in [tickets] timezone; --json for tools)."""
    from mailflow import services

    out = services.ticket_view(obj.store(), ticket_id, obj.cfg, obj.clock.now())
    if out is None:
        raise click.ClickException(f"no ticket {ticket_id}")
    if as_json:
        click.echo(json.dumps(out, ensure_ascii=False, indent=2))
        return
    tz = obj.cfg.tz
    status = out["status"] + (f" ({out['close_reason']})" if out.get("close_reason") else "")
    click.echo(f"{out['id']}  [{status}] {out['subject']}{'  (archived)' if out['archived'] else ''}")
    click.echo(f"customer: {out['customer_name'] or ''} <{out['customer_email']}>")
    click.echo(f"category: {out['category'] or '-'}  priority: {out['priority']}  team: {out['team'] or '-'}  "
               f"assignee: {out['assignee'] or '-'}  tags: {', '.join(out['tags']) or '-'}")
    sla = out.get("sla") or {}
    click.echo(f"first response due: {_local(sla.get('first_response_due'), tz)}  "
               f"resolution due: {_local(sla.get('resolution_due'), tz)}")
    for name, c in (sla.get("clocks") or {}).items():
        if c["state"] == "idle":
            continue
        paused = "; paused " + ", ".join(f"{_local(a, tz)}-{_local(b, tz) if b else 'now'}"
                                        for a, b in c["paused"]) if c["paused"] else ""
        verdict = "breached" if c["breached"] else "met" if c["met"] else "in time"
        click.echo(f"  {name.replace('_', ' ')}: {c['state']}, due {_local(c['due'], tz)}, "
                   f"{c['elapsed_hours']:g} of {c['target_hours']:g} business hours ({verdict}){paused}")
    extra = [f"{k.replace('_', ' ')}: {v if not isinstance(v, list) else ', '.join(map(str, v))}"
             for k, v in (("rating", out.get("rating")), ("reopen_count", out.get("reopen_count")),
                          ("merged_into", out.get("merged_into")), ("merged_from", out.get("merged_from")),
                          ("follows", out.get("follows")), ("followed_by", out.get("followed_by")))
             if v not in (None, [], 0)]
    if extra:
        click.echo("  ".join(extra))
    click.echo(f"\ntimeline ({tz.key}):")
    for x in out["timeline"]:
        when = _local(x.get("at"), tz)
        if x["type"] == "message":
            arrow = "<-" if x["direction"] == "in" else "->"
            who = x["from"] if x["direction"] == "in" else ", ".join(x["to"])
            click.echo(f"\n{when}  {arrow} {x['kind']}  {who}\n   {x['subject']}")
            for line in (x["text"] or "").splitlines()[:40]:
                click.echo(f"   | {line}")
            for a in x["attachments"]:
                skipped = " " + a["skipped"] if a.get("skipped") else ""
                click.echo(f"   [attachment] {a['filename']} ({a['size']} bytes){skipped}")
        else:
            change = f" {x['from']} -> {x['to']}" if x.get("kind") == "status" else ""
            click.echo(f"{when}  * {x['kind']}{change}  {x.get('actor') or '-'}: {x.get('detail') or ''}")


def _local(s: str | None, tz) -> str:
    from mailflow.clock import parse_iso

    d = parse_iso(s)
    return d.astimezone(tz).strftime("%Y-%m-%d %H:%M") if d else "-"


# ---- sla --------------------------------------------------------------------------------------

@main.group("sla")
def sla_group() -> None:
    """SLA clocks: how due times are computed."""


@sla_group.command("explain")
@click.argument("ticket_id")
@click.pass_obj
def sla_explain(obj: Ctx, ticket_id: str) -> None:
    """Step by step how each due time of a ticket was computed: calendar, holidays skipped, pauses.

    Example: `mailflow sla explain CW202611240001` (as of another time: `--now 2026-11-25T09:00+08:00`)."""
    from mailflow import services

    t, _msgs, _arch = services.find_ticket(obj.store(), ticket_id)
    if t is None:
        raise click.ClickException(f"no ticket {ticket_id}")
    for line in services.explain_sla(t, obj.cfg, obj.clock.now()):
        click.echo(line)


# ---- quarantine -------------------------------------------------------------------------------

@main.group()
def quarantine() -> None:
    """Mail that could not be processed (or that a rule tagged spam): list, show, replay."""


@quarantine.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include replayed items.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table (keys documented in the README).")
@click.pass_obj
def quarantine_list(obj: Ctx, show_all: bool, as_json: bool) -> None:
    """Mail held back (cannot be parsed or processed, or tagged spam by a rule), with the reason.

    Example: `mailflow quarantine list`, then `mailflow quarantine show 3` and `quarantine replay 3`."""
    from mailflow.cliutil import Column, echo_table

    items = [q for q in obj.store().quarantined() if show_all or q.get("status") in ("held", "spam")]
    if as_json:
        click.echo(json.dumps(items, ensure_ascii=False, indent=2))
        return
    for q in items:
        q["where"] = f"{q.get('mailbox') or 'ingest'}:{q.get('uid') or '-'}"
    echo_table(items, [Column("qid", "ID", kind="number"), Column("at", "AT", kind="time"), Column("where", "FROM"),
                       Column("status", "STATUS"), Column("reason", "REASON", shrink=True, min_width=20)],
               tz=obj.cfg.tz, empty="quarantine is empty")


@quarantine.command("show")
@click.argument("qid")
@click.option("--raw", is_flag=True, help="Print the raw message.")
@click.pass_obj
def quarantine_show(obj: Ctx, qid: str, raw: bool) -> None:
    """One quarantined mail: why, where it came from, its headers (or the whole raw mail with --raw).

    Example: `mailflow quarantine show 3 --raw > held.eml`, then `mailflow simulate --explain held.eml`."""
    store = obj.store()
    q = store.quarantine_item(qid)
    if q is None:
        raise click.ClickException(f"no quarantined item {qid}")
    data = Spool(store.dir / "spool").read(q["spool"]) if q.get("spool") else b""
    if raw:
        sys.stdout.buffer.write(data)
        return
    for k in ("qid", "at", "status", "mailbox", "uid", "reason", "spool", "size"):
        click.echo(f"{k}: {q.get(k)}")
    head = data.split(b"\n\n", 1)[0].decode("utf-8", "replace")
    click.echo("headers:\n" + "\n".join("  " + h for h in head.splitlines()[:30]))


@quarantine.command("replay")
@click.argument("qid")
@click.pass_obj
def quarantine_replay(obj: Ctx, qid: str) -> None:
    """Process a quarantined message again (after fixing rules, templates or the code).

    Example: `mailflow quarantine replay 3`; exit 1 if it is still refused."""
    from mailflow import services

    r = services.replay(obj.runtime(), qid)
    if r is None:
        raise click.ClickException(f"no quarantined item {qid}")
    click.echo(f"{r.kind} {r.ticket_id or ''} {r.reason}".strip())
    if r.kind == "quarantined":
        sys.exit(1)


# ---- outbox -----------------------------------------------------------------------------------

def _outbox_rows(obj: Ctx) -> list[dict]:
    store = obj.store()
    return [dict(r, row=k) for k, r in sorted(store.outbox_rows().items(), key=lambda kv: int(kv[0]))]


@main.group()
def outbox() -> None:
    """Queued, sent and failed outgoing mail: `outbox list`, `outbox retry ROW`."""


@outbox.command("list")
@click.option("--status", type=click.Choice(["queued", "sent", "failed"]))
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table (keys documented in the README).")
@click.option("--limit", type=click.IntRange(min=0), default=None, metavar="N",
              help=f"At most N sent rows, the newest (table default {TABLE_LIMIT}, JSON default all; 0: all). "
                   "Queued and failed rows are always shown.")
@click.pass_obj
def outbox_list(obj: Ctx, status: str | None, as_json: bool, limit: int | None) -> None:
    """Outgoing mail: queued (and when it is tried next), sent, failed (and why). The table shows every
    queued and failed row but only the newest sent ones; `--limit 0` shows all.

    Example: `mailflow outbox list --status failed`, then `mailflow outbox retry ROW`."""
    from mailflow.cliutil import Column, echo_table

    rows = [r for r in _outbox_rows(obj) if status is None or r["status"] == status]
    sent = set(map(id, _newest([r for r in rows if r["status"] == "sent"], limit, as_json, "sent rows")))
    rows = [r for r in rows if r["status"] != "sent" or id(r) in sent]
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    for r in rows:
        r["when"] = r.get("sent_at") if r["status"] == "sent" else r.get("next_attempt_at")
    echo_table(rows, [Column("row", "ROW", kind="number"), Column("status", "STATUS"), Column("ticket_id", "TICKET"),
                      Column("template", "TEMPLATE"), Column("to", "TO", kind="list", shrink=True),
                      Column("when", "SENT/NEXT TRY", kind="time"), Column("attempts", "TRIES", kind="number"),
                      Column("subject", "SUBJECT", shrink=True), Column("last_error", "LAST ERROR", shrink=True)],
               tz=obj.cfg.tz, empty="outbox is empty")


@outbox.command("retry")
@click.argument("row")
@click.option("--resend", is_flag=True, help="Also queue a row that was already delivered (it arrives twice).")
@click.pass_obj
def outbox_retry(obj: Ctx, row: str, resend: bool) -> None:
    """Queue a failed (or queued) row for an immediate new attempt, e.g. `mailflow outbox retry 12`."""
    from mailflow.outbox import OutboxError

    p = obj.pipeline()
    try:
        ok = p.outbox.retry(row, resend=resend)
    except OutboxError as e:
        raise click.ClickException(str(e)) from None
    if not ok:
        raise click.ClickException(f"no outbox row {row}")
    click.echo(f"row {row} queued; `mailflow run --once` or the daemon sends it")


# ---- status -----------------------------------------------------------------------------------

@main.command()
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table (keys documented in the README).")
@click.pass_obj
def status(obj: Ctx, as_json: bool) -> None:
    """Mailboxes and their last poll, tickets by status, outbox depth, quarantine size, last error, and
    the running daemon's own state (its last reload and why it was rejected). Safe while it runs.

    Example: `mailflow status` or `mailflow status --json` for monitoring."""
    from mailflow import services

    store = open_store(obj.cfg, create=False) if has_data(obj.cfg) else None
    if store is None:
        raise click.ClickException(f"no data directory at {obj.cfg.data_dir} (mailflow has not run yet)")
    out = services.status(obj.cfg, store)
    by_status = out["tickets"]
    if as_json:
        click.echo(json.dumps(out, ensure_ascii=False, indent=2))
        return
    if out["backend"] == "postgresql":
        from mailflow.store_pg import _where

        click.echo(f"data: {out['data_dir']} (database: {_where(obj.cfg.pg.dsn)})")
    else:
        click.echo(f"data: {out['data_dir']}")
    for m in out["mailboxes"]:
        click.echo(f"mailbox {m['name']}: last poll {m['last_poll'] or 'never'}, last uid {m['last_uid']}"
                   f"{', error: ' + m['last_error'] if m['last_error'] else ''}")
    click.echo("tickets: " + (", ".join(f"{k} {v}" for k, v in sorted(by_status.items())) or "none"))
    click.echo(f"outbox: {out['outbox']['queued']} queued, {out['outbox']['failed']} failed, "
               f"{out['outbox']['sent']} sent")
    click.echo(f"quarantine: {out['quarantine']} held")
    if out["outbox_last_error"]:
        click.echo(f"last SMTP error: {out['outbox_last_error']}")
    d = out.get("daemon")
    if d:
        click.echo(f"daemon: {'running (pid ' + str(d['pid']) + ')' if d['running'] else 'not running'}; "
                   f"{d.get('status') or '-'} (as of {d.get('at')})")
        rl = d.get("last_reload")
        if rl and not rl.get("ok"):
            click.echo(f"last reload REJECTED at {rl['at']} ({rl['reason']}): {rl['error']}")
        elif rl:
            click.echo(f"last reload: ok at {rl['at']} ({rl['reason']})")
    if "leases" in out:  # PostgreSQL: several daemons may share the work
        live = [x for x in out["leases"] if x["name"].startswith("daemon:")]
        click.echo(f"cluster: {len(live)} daemon(s) live" + "".join(
            f"\n  daemon {x['holder']} (since {x['acquired_at']})" for x in live))
        for x in out["leases"]:
            if not x["name"].startswith("daemon:"):
                click.echo(f"  {x['name']}: held by {x['holder']} (token {x['token']}, until {x['expires_at']})")
        from mailflow.cluster import mailbox_lease

        held = {x["name"] for x in out["leases"]}
        for m in out["mailboxes"]:
            if mailbox_lease(m["name"]) not in held:
                click.echo(f"  mailbox:{m['name']}: nobody works it now")


cli_report.register(main)
cli_data.register(main)  # backup, restore, verify, tickets search, privacy
cli_db.register(main)  # db upgrade, db migrate (PostgreSQL)

if __name__ == "__main__":  # pragma: no cover
    main()
