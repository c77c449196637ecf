"""CLI commands that keep the data safe: backup, restore, verify, tickets search, privacy.

`register(main)` adds them to the `mailflow` group (cli.py calls it once at import).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


def _obj(ctx: click.Context):
    return ctx.find_root().obj


def register(main: click.Group) -> None:
    main.add_command(backup_cmd)
    main.add_command(restore_cmd)
    main.add_command(verify_cmd)
    main.add_command(privacy)
    tickets = main.commands.get("tickets")
    if isinstance(tickets, click.Group):
        tickets.add_command(tickets_search)


# ---- backup / restore / verify --------------------------------------------------------------------

@click.command("backup")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the backup (created if missing; default [storage] backup_dir).")
@click.option("--keep", type=click.IntRange(min=1), default=None,
              help="After a good backup, delete all but the newest N in that folder.")
@click.pass_context
def backup_cmd(ctx: click.Context, out: Path | None, keep: int | None) -> None:
    """A consistent snapshot of the data directory (safe while the daemon runs) as one new
    mailflow-backup-<time>.tar.gz, with the config, rules and templates. Mode 0600: it holds
    secrets (the HMAC key, any password in the config)."""
    from mailflow.backup import BackupError, backup

    cfg = _obj(ctx).cfg
    dest = out or cfg.backup_path
    try:
        if cfg.backend == "postgresql":  # the data directory's files + a consistent pg_dump
            from mailflow import backup_pg

            r = backup_pg.backup(cfg, dest, keep=keep)
        else:
            r = backup(cfg.data_dir, dest, config_path=cfg.path, rules_dir=cfg.rules_dir,
                       templates_dir=cfg.templates_dir, keep=keep)
    except BackupError as e:
        raise click.ClickException(str(e)) from None
    c = r.counts
    click.echo(f"backup {r.path} ({r.size / 1e6:.1f} MB, {r.files} files, {r.data_bytes / 1e6:.1f} MB of data in "
               f"{r.seconds:.1f} s = {r.mb_per_s:.0f} MB/s; store locked {r.locked_seconds * 1000:.0f} ms)")
    click.echo(f"  tickets {c['tickets_hot']} hot + {c['tickets_archived']} archived, messages {c['messages_hot']} "
               f"hot, outbox rows {c['outbox_rows']}")
    for p in r.removed:
        click.echo(f"  removed old backup {p.name}")


@click.command("restore")
@click.argument("backup_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--data-dir", "data_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to restore (default: the config's data directory).")
@click.option("--force", is_flag=True, help="Replace what a non-empty data directory holds.")
@click.pass_context
def restore_cmd(ctx: click.Context, backup_file: Path, data_dir: Path | None, force: bool) -> None:
    """Check every checksum of BACKUP (a damaged one writes nothing), restore it, then verify.
    The backup's config, rules and templates go to DIR/restored-config/, never over the live ones."""
    from mailflow.backup import BackupError, restore
    from mailflow.verify import verify

    cfg = _obj(ctx).cfg
    target = data_dir or cfg.data_dir
    try:
        if cfg.backend == "postgresql":  # the files into data_dir, the dump into [storage] dsn
            from mailflow import backup_pg

            if data_dir is not None:
                cfg.data_dir = data_dir
            r = backup_pg.restore(backup_file, cfg, force=force, echo=click.echo)
        else:
            r = restore(backup_file, target, force=force, echo=click.echo)
    except BackupError as e:
        raise click.ClickException(str(e)) from None
    m = r.manifest
    click.echo(f"restored {r.files} files of {backup_file.name} (made {m.get('created_at')} by mailflow "
               f"{m.get('mailflow_version')}) into {r.data_dir}" + (" (replacing what was there)" if r.replaced else ""))
    if r.config_dir:
        click.echo(f"  its config, rules and templates: {r.config_dir} (compare them with the live ones)")
    if cfg.backend == "postgresql":
        problems = backup_pg.verify(cfg, full=True)
    else:
        problems = verify(r.data_dir)
    for p in problems:
        click.echo(str(p), err=True)
    if problems:
        click.echo(f"verify: {len(problems)} problem(s) in the restored data", err=True)
        sys.exit(1)
    click.echo("verify: ok")


@click.command("verify")
@click.option("--repair", is_flag=True, help="Rebuild what is derivable (the archive index); never deletes mail.")
@click.option("--backup", "backup_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Check a backup file instead (checksums, manifest, database), without restoring it.")
@click.option("--data-dir", "data_dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--full", is_flag=True, help="PostgreSQL: read every message row again (otherwise only the rows added "
              "since the last verify; the files earlier rows need are checked either way).")
@click.pass_context
def verify_cmd(ctx: click.Context, repair: bool, backup_file: Path | None, data_dir: Path | None,
               full: bool) -> None:
    """Check the data directory: database, spool and outbox references, archive and index,
    attachments. Prints `path: what: how to fix` per problem; exit 1 on any."""
    if backup_file is not None:
        from mailflow.backup import verify_backup

        checked = verify_backup(backup_file)
        for p in checked.problems:
            click.echo(p, err=True)
        if checked.problems:
            sys.exit(1)
        m = checked.manifest or {}
        c = m.get("counts", {})
        click.echo(f"ok: {backup_file} ({len(m.get('files', []))} files, made {m.get('created_at')} by mailflow "
                   f"{m.get('mailflow_version')}; tickets {c.get('tickets_hot')} hot + {c.get('tickets_archived')} "
                   f"archived, outbox rows {c.get('outbox_rows')})")
        return
    from mailflow.verify import verify

    cfg = _obj(ctx).cfg
    d = data_dir or cfg.data_dir
    if cfg.backend == "postgresql":  # rows that name files, the schema, the data directory's files
        from mailflow import backup_pg

        if data_dir is not None:
            cfg.data_dir = data_dir
        problems = backup_pg.verify(cfg, echo=click.echo, full=full)
    else:
        problems = verify(d, repair=repair, echo=click.echo, cfg=cfg)
    for p in problems:
        click.echo(str(p), err=True)
    if problems:
        click.echo(f"{len(problems)} problem(s) in {d}", err=True)
        sys.exit(1)
    click.echo(f"ok: {d}")


# ---- tickets search ---------------------------------------------------------------------------------

@click.command("search")
@click.option("--customer", metavar="EMAIL", help="Tickets this address is on (requester, participant, sender, recipient).")
@click.option("--text", metavar="WORDS", help="Every word must appear in the subject or a message.")
@click.option("--from", "date_from", metavar="DATE", help="Created on or after (YYYY-MM-DD in [tickets] timezone, or ISO).")
@click.option("--to", "date_to", metavar="DATE", help="Created on or before (that whole day).")
@click.option("--status", type=click.Choice(["new", "open", "pending", "resolved", "closed"]))
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def tickets_search(ctx: click.Context, customer, text, date_from, date_to, status, limit, as_json) -> None:
    """Hot and archived tickets alike, newest first."""
    from mailflow.search import Query, day_bounds, search
    from mailflow.storeapi import has_data, open_store

    cfg = _obj(ctx).cfg
    try:
        q = Query(customer=customer, text=text, created_from=day_bounds(date_from, cfg.tz),
                  created_to=day_bounds(date_to, cfg.tz, end=True), status=status, limit=limit)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    if not has_data(cfg):
        raise click.ClickException(f"no data directory at {cfg.data_dir}")
    rows, more = search(open_store(cfg, create=False), q)
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    if not rows:
        click.echo("no tickets")
        return
    click.echo(f"{'ID':16} {'STATUS':8} {'CREATED':10}  {'':1} CUSTOMER / SUBJECT")
    for r in rows:
        click.echo(f"{r['id']:16} {r['status'] or '-':8} {(r['created_at'] or '')[:10]:10}  "
                   f"{'A' if r['archived'] else ' '} {r['customer_email']}: {r['subject']}")
    click.echo(f"{len(rows)} ticket(s){' (more: raise --limit)' if more else ''}; A = archived")


# ---- privacy ----------------------------------------------------------------------------------------

@click.group()
def privacy() -> None:
    """A customer's data: export a copy, or erase it (PIPL, GDPR)."""


@privacy.command("export")
@click.argument("email")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Zip file to write (default: ./mailflow-export-<address>.zip).")
@click.pass_context
def privacy_export(ctx: click.Context, email: str, out: Path | None) -> None:
    """Everything held about EMAIL (tickets, messages, ratings, events, raw mail) as one zip:
    data.json plus the raw .eml files."""
    from mailflow.privacy import export

    cfg = _obj(ctx).cfg
    out = out or Path.cwd() / f"mailflow-export-{email.replace('@', '_at_')}.zip"
    r = export(cfg, email, out)
    click.echo(f"wrote {out}: {r['tickets']} tickets, {r['messages']} messages, {r['raw']} raw mails")


@privacy.command("erase")
@click.argument("email")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def privacy_erase(ctx: click.Context, email: str, yes: bool) -> None:
    """Erase EMAIL everywhere in the data directory (messages, raw mail, attachments, outbox,
    quarantine, archives, indexes); tickets keep their counts under a stable pseudonym. Stop the
    daemon first. Existing backups still hold the data until they expire."""
    from mailflow.privacy import EraseError, erase

    cfg = _obj(ctx).cfg
    if not yes:
        click.confirm(f"erase every trace of {email} from {cfg.data_dir}? This cannot be undone", abort=True)
    try:
        r = erase(cfg, email)
    except EraseError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"erased {email} as {r.pseudonym}:")
    for k, v in r.changed.items():
        if v:
            click.echo(f"  {k}: {v}")
    click.echo("existing backups still hold this data until they expire (see `mailflow backup --keep`)")
