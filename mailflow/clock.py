"""Time as an input: one injectable source of "now" (`mailflow --now ISO`), and the ISO helpers.

Everything that depends on the clock (ticket timestamps, SLA clocks, escalation, auto-close,
archive and retention cut-offs, scheduled reports) asks a `Clock`, so tests and admins can walk
through days in seconds. Datetimes are stored as UTC ISO 8601 strings.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime | None) -> str | None:
    return dt.astimezone(UTC).isoformat(timespec="seconds") if dt else None


def parse_iso(s: str | None) -> datetime | None:
    if not s:
        return None
    try:
        d = datetime.fromisoformat(s)
    except (TypeError, ValueError):
        return None
    return d if d.tzinfo else d.replace(tzinfo=UTC)


class Clock:
    """`now()` is the real time, or the fixed instant given with `--now` (then every timestamp a
    pass writes is that instant, whatever the mail's Date header says)."""

    def __init__(self, fixed: datetime | None = None):
        if fixed is not None and fixed.tzinfo is None:
            raise ValueError("--now needs a time zone offset, e.g. 2026-11-24T12:00+08:00")
        self.fixed = fixed

    def now(self) -> datetime:
        return self.fixed.astimezone(UTC) if self.fixed is not None else utcnow()

    @classmethod
    def parse(cls, value: str | None) -> Clock:
        if not value:
            return cls()
        try:
            d = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"--now: not an ISO 8601 instant: {value!r} "
                             "(e.g. 2026-11-24T12:00+08:00)") from None
        return cls(d)


SYSTEM = Clock()
