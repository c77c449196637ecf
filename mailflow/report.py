"""Reports (DESIGN.md section 11): the last stage of the loop, "analyse and improve".

    summaries (hot + archived, streamed)  ->  compute: one Metrics  ->  text | JSON | CSV | HTML
                                                                    ->  the scheduled report mail

This module is the entry point the CLI and the scheduler use; the work is in
`mailflow.summary` (one compact record per ticket), `mailflow.report_source` (where the records come
from: the archive index, or the month files through a cache), `mailflow.report_metrics` (periods and
figures), `mailflow.report_render` (the four formats) and `mailflow.report_mail` (which reports are
due, the mail, queueing it exactly once).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from mailflow.config import Config
from mailflow.report_mail import (
    ReportMail,
    build_mail,
    due_mails,
    next_send,
    recipients_by_scope,
    send_due,
    send_time,
)
from mailflow.report_metrics import (
    DIMENSIONS,
    TREND,
    Metrics,
    Period,
    PeriodError,
    _add_months,
    compute,
    last_complete,
    month_period,
    parse_period,
    week_period,
)
from mailflow.report_render import (
    check_report_templates,
    render_csv,
    render_html,
    render_json,
    render_mail_parts,
    render_text,
)
from mailflow.report_source import iter_summaries
from mailflow.storeapi import StoreAPI, has_data
from mailflow.storeapi import open_store as _open

__all__ = [
    "DIMENSIONS", "Metrics", "Period", "PeriodError", "ReportMail", "build", "build_mail", "calendar_of",
    "check_report_templates", "compute", "due_mails", "iter_summaries", "last_complete", "month_period",
    "next_send", "open_store", "parse_period", "recipients_by_scope", "render_csv", "render_html", "render_json",
    "render_mail_parts", "render_text", "send_due", "send_time", "timezone_of", "week_period",
]


def calendar_of(cfg: Config):
    """The calendar of the schedule and the periods (`[reports] calendar`, default the default one)."""
    _ = cfg.policy  # builds cfg.calendars when the config had no [sla]
    return cfg.calendars.get(cfg.reports.calendar) or cfg.calendars["default"]


def timezone_of(cfg: Config) -> str:
    return calendar_of(cfg).timezone


def open_store(cfg: Config) -> StoreAPI | None:
    """The store to read, without creating anything (None on a brand-new install: nothing to count)."""
    if not has_data(cfg):
        return None
    return _open(cfg, create=False)


def created_range(cfg: Config, period: Period, now: datetime) -> tuple[int, int]:
    """The creation instants [from, to) of the tickets a report of `period` reads."""
    first = _add_months(period.shifted(-(TREND - 1)).first, -cfg.reports.lookback_months)
    return (int(Period("range", first, first, period.timezone).start.timestamp()),
            min(int(period.end.timestamp()), int(now.timestamp()) + 1))


def build(store: StoreAPI | None, cfg: Config, period: Period, now: datetime, *, team: str | None = None,
          by: str | None = None, rows: bool = False, locale: str | None = None,
          on_progress: Callable[[int], None] | None = None) -> Metrics:
    """The Metrics of `period` as of `now`, over hot and archived tickets.

    Archived tickets are read back to `[reports] lookback_months` before the oldest period the report
    shows (the CSAT trend's first), by creation date; every hot ticket is read (an open ticket of any
    age is backlog)."""
    oldest = period.shifted(-(TREND - 1))
    created_from, created_to = created_range(cfg, period, now)
    names = {s.email: s.name for s in cfg.staff}
    kw = {"by": by, "locale": locale or cfg.reports.locale or cfg.default_locale, "company": cfg.company_name,
          "staff_names": names}
    if not rows:  # a past period: the archived tickets' part from the cache (mailflow/report_cache.py)
        from mailflow.report_cache import cached_tally

        tally = cached_tally(store, cfg, period, now, created_from, created_to, team=team, on_progress=on_progress)
        if tally is not None:
            return tally.metrics(**kw)
    summaries = iter_summaries(store, cfg, created_from, created_to, skip_before=int(oldest.start.timestamp()),
                               full_from=int(period.shifted(-1).start.timestamp()), on_progress=on_progress)
    return compute(summaries, period, now, team=team, rows=rows, **kw)
