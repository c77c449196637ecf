"""`mailflow db upgrade` and `mailflow db migrate`: the PostgreSQL backend's schema and moving a
TinyDB data directory into it."""

from __future__ import annotations

import sys

import click


def register(main: click.Group) -> None:
    main.add_command(db)


@click.group()
def db() -> None:
    """The PostgreSQL database ([storage] backend = "postgresql"): schema and migration."""


def _pg_cfg(obj):
    cfg = obj.cfg
    if cfg.backend != "postgresql":
        raise click.ClickException('[storage] backend is "tinydb": these commands are for "postgresql"')
    return cfg


@db.command("upgrade")
@click.pass_obj
def db_upgrade(obj) -> None:
    """Create the schema in an empty database, or migrate it to this mailflow's version.

    Idempotent (a second run finds nothing to do) and safe to run from several hosts at once (an
    advisory lock serialises the runs). Example: `mailflow db upgrade` after installing mailflow."""
    import psycopg

    from mailflow import pg_schema
    from mailflow.store_pg import _where, _why
    from mailflow.storeapi import SchemaError

    cfg = _pg_cfg(obj)
    try:
        before, after = pg_schema.upgrade(cfg.pg.conninfo(), echo=click.echo)
    except SchemaError as e:
        click.echo(str(e), err=True)
        sys.exit(1)
    except psycopg.Error as e:
        click.echo(f"database {_where(cfg.pg.dsn)}: {_why(e)}", err=True)
        sys.exit(1)
    if before == after:
        click.echo(f"schema is up to date (version {after})")
    else:
        click.echo(f"schema upgraded from version {before} to {after}")


@db.command("migrate")
@click.option("--from", "src", type=click.Choice(["tinydb"]), required=True, help="Where the data is now.")
@click.option("--to", "dst", type=click.Choice(["postgresql"]), required=True, help="Where it goes.")
@click.option("--batch-size", default=5000, show_default=True, help="Tickets per transaction.")
@click.pass_obj
def db_migrate(obj, src: str, dst: str, batch_size: int) -> None:
    """Copy the TinyDB store in [storage] data_dir (hot and archived tickets, messages, outbox rows
    and their mail, quarantine, checkpoints, seen keys, meta) into the configured database.

    Idempotent: a re-run adds nothing twice. The TinyDB files are only read; spool, attachments and
    quarantine bytes are used where they are. Counts are verified and printed at the end. Run
    `mailflow db upgrade` first, and stop the TinyDB daemon. Example:
    `mailflow db migrate --from tinydb --to postgresql`."""
    from mailflow.migrate_pg import migrate

    cfg = _pg_cfg(obj)
    if not cfg.data_dir.is_dir() or not (cfg.data_dir / "mailflow.json").exists() and not (
            cfg.data_dir / "mailflow.wal").exists():
        raise click.ClickException(f"no TinyDB store in {cfg.data_dir}")
    res = migrate(cfg, batch_size=batch_size, echo=click.echo)
    for k, (have, copied) in res.counts.items():
        click.echo(f"{k}: {have} in TinyDB, {copied} in PostgreSQL")
    if res.problems:
        for p in res.problems:
            click.echo(f"MISMATCH: {p}", err=True)
        sys.exit(1)
    click.echo("migrated: counts match")
