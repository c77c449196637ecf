"""The `mailflow` command: init, check, run, ingest, demo, simulate, tickets, quarantine, outbox, status."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sys
from pathlib import Path

import click

from mailflow import config as config_mod
from mailflow import resources
from mailflow.cliutil import GlobalOptionsGroup
from mailflow.clock import Clock
from mailflow.errors import ProblemsError
from mailflow.privacy import MaskAddresses
from mailflow.spool import Spool
from mailflow.store import Store, StoreError

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

    def store(self) -> Store:
        return Store(self.cfg.data_dir)

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
@click.version_option(package_name="mailflow")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, log_level: str | None, now: str | None) -> None:
    """mailflow: a support team's customer-feedback loop over plain email."""
    ctx.obj = Ctx(config_path, log_level, now)


# ---- init / check -----------------------------------------------------------------------------

@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Overwrite an existing config.")
def init(directory: str, force: bool) -> None:
    """Write DIR/mailflow.toml (data inside DIR) plus copies of the bundled rules and templates."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cfg_path = d / "mailflow.toml"
    if cfg_path.exists() and not force:
        raise click.ClickException(f"{cfg_path} exists (use --force to overwrite)")
    text = (resources.PKG / "example.toml").read_text(encoding="utf-8")
    cfg_path.write_text(text, encoding="utf-8")
    for name, src in (("rules", resources.bundled_rules()), ("templates", resources.bundled_templates())):
        dst = d / name
        if not dst.exists():
            shutil.copytree(src, dst)
    (d / "data").mkdir(exist_ok=True)
    click.echo(f"wrote {cfg_path}, {d / 'rules'}/, {d / 'templates'}/")
    click.echo(f"next: edit it, then `mailflow --config {cfg_path} check`")


@main.command()
@click.pass_obj
def check(obj: Ctx) -> None:
    """Validate the config, compile every rule file and render every template; exit 1 on any error."""
    from mailflow.render import check_templates
    from mailflow.rules import check_rules

    try:
        cfg = config_mod.load(obj.config_path)
    except config_mod.ConfigError as e:
        for p in e.problems:
            click.echo(p, err=True)
        sys.exit(1)
    problems = [*check_rules(cfg.rules_dir), *check_templates(cfg.templates_dir)]
    for p in problems:
        click.echo(p, err=True)
    if problems:
        sys.exit(1)
    click.echo(f"ok: config {obj.config_path or '(embedded defaults)'}, {len(cfg.mailboxes)} mailbox(es), "
               f"rules {cfg.rules_dir}, templates {cfg.templates_dir}")


# ---- running ----------------------------------------------------------------------------------

@main.command()
@click.option("--once", is_flag=True, help="One pass over every mailbox and the outbox, then exit.")
@click.pass_obj
def run(obj: Ctx, once: bool) -> None:
    """Fetch, process and answer mail (IDLE where offered, polling otherwise).

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


def _ingest(obj: Ctx, paths: list[Path], echo=None) -> list:
    from mailflow import services

    results = services.ingest(obj.runtime(), paths, on_result=echo)
    return [r for _label, r in results]


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.pass_obj
def ingest(obj: Ctx, paths: tuple[Path, ...]) -> None:
    """Run the pipeline on local .eml files, mbox files or Maildir folders (one line per message)."""
    def line(label: str, r) -> None:
        click.echo(f"{r.kind:12} {r.ticket_id or '-':16} {label}{'  ' + r.reason if r.reason else ''}")

    results = _ingest(obj, list(paths), echo=line)
    counts: dict[str, int] = {}
    for r in results:
        counts[r.kind] = counts.get(r.kind, 0) + 1
    click.echo(", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "nothing to ingest")


@main.command()
@click.pass_obj
@click.pass_context
def demo(ctx: click.Context, obj: Ctx) -> None:
    """Ingest the bundled sample mails (no mail server needed) and list the tickets they made."""
    samples = sorted(resources.samples().glob("*.eml"))
    click.echo(f"data directory: {obj.cfg.data_dir}")
    click.echo(f"ingesting {len(samples)} sample mails from {resources.samples()}")
    _ingest(obj, samples, echo=lambda label, r: click.echo(f"  {r.kind:12} {r.ticket_id or '-':16} "
                                                           f"{Path(label).name}"))
    ctx.invoke(tickets_list, status=None, as_json=False)
    click.echo(f"outbox: {len(_outbox_rows(obj))} mails rendered and queued (see `mailflow outbox list`; "
               "they go out once [smtp] is configured)")


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def simulate(obj: Ctx, files: tuple[Path, ...], as_json: bool) -> None:
    """Show what mailflow would do with each mail, without touching the database or sending."""
    from mailflow.simulate import simulate_files

    out = simulate_files(obj.pipeline(), list(files), now=obj.clock.now())
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


# ---- tickets ----------------------------------------------------------------------------------

def _ticket_summary(t: dict, store: Store) -> dict:
    return {
        "id": t["id"], "status": t.get("status"), "category": t.get("category"), "priority": t.get("priority"),
        "customer_email": t.get("customer_email"), "subject": t.get("subject"), "created_at": t.get("created_at"),
        "message_count": store.message_count(t["id"]),
        "team": t.get("team"), "assignee": t.get("assignee"), "tags": t.get("tags", []),
        "updated_at": t.get("updated_at"), "locale": t.get("locale"), "mailbox": t.get("mailbox"),
    }


@main.group()
def tickets() -> None:
    """List and show tickets."""


@tickets.command("list")
@click.option("--status", type=click.Choice(["new", "open", "pending", "resolved", "closed"]))
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def tickets_list(obj: Ctx, status: str | None, as_json: bool) -> None:
    store = obj.store()
    rows = [_ticket_summary(t, store) for t in sorted(store.all_tickets(), key=lambda t: t["id"])
            if status is None or t.get("status") == status]
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    if not rows:
        click.echo("no tickets")
        return
    click.echo(f"{'ID':16} {'STATUS':8} {'PRIORITY':8} {'CATEGORY':10} {'TEAM':18} {'MSGS':>4}  CUSTOMER / SUBJECT")
    for r in rows:
        click.echo(f"{r['id']:16} {r['status']:8} {r['priority'] or '-':8} {r['category'] or '-':10} "
                   f"{r['team'] or '-':18} {r['message_count']:>4}  {r['customer_email']}: {r['subject']}")


@tickets.command("show")
@click.argument("ticket_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def tickets_show(obj: Ctx, ticket_id: str, as_json: bool) -> None:
    """One ticket (hot or archived): fields, SLA, and its timeline of messages and changes."""
    from mailflow import services

    out = services.ticket_view(obj.store(), ticket_id)
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


# ---- quarantine -------------------------------------------------------------------------------

@main.group()
def quarantine() -> None:
    """Mail that could not be processed: list, show, replay."""


@quarantine.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include replayed items.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def quarantine_list(obj: Ctx, show_all: bool, as_json: bool) -> None:
    items = [q for q in obj.store().quarantined() if show_all or q.get("status") == "held"]
    if as_json:
        click.echo(json.dumps(items, ensure_ascii=False, indent=2))
        return
    if not items:
        click.echo("quarantine is empty")
    for q in items:
        click.echo(f"{q['qid']:>5}  {q['at']}  {q.get('mailbox') or 'ingest'}:{q.get('uid') or '-'}  "
                   f"{q['status']}  {q['reason']}")


@quarantine.command("show")
@click.argument("qid")
@click.option("--raw", is_flag=True, help="Print the raw message.")
@click.pass_obj
def quarantine_show(obj: Ctx, qid: str, raw: bool) -> None:
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
    """Process a quarantined message again (after fixing rules, templates or the code)."""
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
    """Queued, sent and failed outgoing mail."""


@outbox.command("list")
@click.option("--status", type=click.Choice(["queued", "sent", "failed"]))
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def outbox_list(obj: Ctx, status: str | None, as_json: bool) -> None:
    rows = [r for r in _outbox_rows(obj) if status is None or r["status"] == status]
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    if not rows:
        click.echo("outbox is empty")
    for r in rows:
        click.echo(f"{r['row']:>6} {r['status']:7} {r['ticket_id']:16} {r['template']:13} "
                   f"{','.join(r['to'])}  tries={r['attempts']}  {r['last_error'] or ''}")


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
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def status(obj: Ctx, as_json: bool) -> None:
    """Mailboxes and their last poll, tickets by status, outbox depth, quarantine size, last error."""
    from mailflow import services

    store = Store(obj.cfg.data_dir, create=False) if obj.cfg.data_dir.is_dir() else None
    if store is None:
        raise click.ClickException(f"no data directory at {obj.cfg.data_dir} (mailflow has not run yet)")
    out = services.status(obj.cfg, store)
    by_status = out["tickets"]
    if as_json:
        click.echo(json.dumps(out, ensure_ascii=False, indent=2))
        return
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


from mailflow import cli_data  # noqa: E402 - backup, restore, verify, tickets search, privacy

cli_data.register(main)

if __name__ == "__main__":  # pragma: no cover
    main()
