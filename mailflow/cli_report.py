"""`mailflow report`: weekly, monthly or any period's report as text, JSON, CSV or HTML.

Kept out of cli.py (which only calls `register(main)`): parsing the options, one-line errors (exit 1)
for a malformed or future period, and writing the chosen format to stdout or `--out`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mailflow.cliutil import Progress, terminal_width
from mailflow.store import write_atomic


def register(main: click.Group) -> None:
    main.add_command(report_cmd)


def _fail(msg: str) -> None:
    click.echo(f"mailflow report: {msg}", err=True)
    sys.exit(1)


@click.command("report")
@click.option("--month", metavar="YYYY-MM", help="A calendar month, e.g. 2026-11 (default: last month).")
@click.option("--week", metavar="YYYY-Www", help="An ISO week, e.g. 2026-W48 (Monday to Sunday).")
@click.option("--from", "date_from", metavar="DATE", help="First day of a period of your own (with --to).")
@click.option("--to", "date_to", metavar="DATE", help="Last day of it (included).")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "csv", "html"]), default="text",
              show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write to this file, not stdout.")
@click.option("--by", type=click.Choice(["team", "agent", "category", "mailbox", "tag"]),
              help="Add a breakdown by this (team and agent tables are always there).")
@click.option("--team", metavar="NAME", help="Only this team's tickets: the department's own report.")
@click.option("--locale", type=click.Choice(["zh", "zh-Hant", "en"]),
              help="Language of labels (default: [reports] locale, else [templates] default_locale).")
@click.option("--unmask", is_flag=True, help="CSV: full customer addresses (masked by default).")
@click.pass_obj
def report_cmd(obj, month, week, date_from, date_to, fmt, out, by, team, locale, unmask) -> None:
    """Volume, categories, SLA attainment, handling times and satisfaction for a period, with the
    change from the period before; every figure covers hot and archived tickets alike.

    Periods are in the time zone of [reports] calendar; times are business hours (README: Reports)."""
    from mailflow import report

    cfg = obj.cfg
    now = obj.clock.now()
    try:
        period = report.parse_period(now, report.timezone_of(cfg), month, week, date_from, date_to)
    except report.PeriodError as e:
        _fail(str(e))
    if team is not None and not team.strip():
        _fail("--team: give a team name")
    store = report.open_store(cfg)
    with Progress(label="report: tickets read", enabled=fmt == "text" and out is None) as prog:
        m = report.build(store, cfg, period, now, team=team, by=by or ("category" if team else None),
                         rows=fmt == "csv", locale=locale, on_progress=prog.update)
    if fmt == "json":
        text = report.render_json(m)
    elif fmt == "csv":
        text = report.render_csv(m, unmask=unmask)
    elif fmt == "html":
        text = report.render_html(m, cfg.templates_dir)
    else:
        text = report.render_text(m, width=None if out else terminal_width())
    if out is None:
        click.echo(text, nl=False)
        return
    data = text.encode("utf-8")
    if fmt == "csv":
        data = b"\xef\xbb\xbf" + data  # a BOM: spreadsheets then open the UTF-8 file as UTF-8
    try:
        write_atomic(out.resolve(), data)
    except OSError as e:
        _fail(f"--out {out}: {e.strerror or e}")
    rows = f", {len(m.rows)} rows" if fmt == "csv" else ""
    click.echo(f"{out}: the {fmt} report of {period.label}{rows}", err=True)
