"""Helpers for the `mailflow` command line: global options anywhere, quiet broken pipes, value
formatting, aligned tables that count CJK characters as two columns, and a progress line.

Kept apart from cli.py so they are plain functions with unit tests; cli.py wires them in.

- ``GlobalOptionsGroup``: a click Group whose own options (``--config``, ``--log-level``, ...) may
  also come after the subcommand, at any depth: ``mailflow tickets list --config X`` is
  ``mailflow --config X tickets list``.
- Broken pipes: ``mailflow tickets list | head`` ends quietly, the way ``git log | head`` does:
  no traceback, no ``Error: BrokenPipeError``, exit status 141 (128 + SIGPIPE, what a shell reports
  for git there under ``set -o pipefail``; the pipeline's own status is head's).
- ``fmt_value``/``fmt_time``/``json_time``/``dumps_json``: times in the configured zone
  (``2026-12-01 19:19``, the zone named once in the column header, or per value), ISO 8601 with
  offset in JSON, ``-`` for empty values, ``a, b`` for lists, ``yes``/``no``.
- ``format_table``/``echo_table``: columns aligned by display width (``unicodedata``'s East Asian
  width: wide and fullwidth characters take two columns), control characters from customer text
  neutralised, long cells cut with ``…`` to fit the terminal (never when piped).
- ``Progress``: a progress line on stderr, only when stderr is a terminal, not for ``--json``, and
  only once a run has taken longer than ``delay`` (2 s).

``rich`` would do tables and progress bars too, but it brings markdown-it-py, mdurl and pygments
for the few hundred lines needed here, and its automatic markup/highlighting is a hazard for
customer-controlled text (subjects with ``[brackets]``) that would need turning off everywhere.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from typing import IO, Any, NoReturn

import click

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what `git log | head` exits with
EMPTY = "-"
ELLIPSIS = "…"

# --------------------------------------------------------------------------------------------------
# global options before or after the subcommand


def _option_table(cmd: click.Command, ctx: click.Context) -> dict[str, click.Option]:
    table: dict[str, click.Option] = {}
    for p in cmd.get_params(ctx):
        if isinstance(p, click.Option):
            for o in (*p.opts, *p.secondary_opts):
                table[o] = p
    return table


def _takes(p: click.Option) -> int:
    """How many following tokens an option consumes when given as a bare ``--name``."""
    if p.is_flag or p.count:
        return 0
    return max(1, p.nargs)


def _lookup(table: Mapping[str, click.Option], tok: str) -> tuple[click.Option, int] | None:
    """(option, tokens it consumes after this one) when ``tok`` names an option of ``table``."""
    if tok in table:
        return table[tok], _takes(table[tok])
    if tok.startswith("--") and "=" in tok:
        p = table.get(tok.split("=", 1)[0])
        return (p, 0) if p is not None and _takes(p) else None
    if len(tok) > 2 and tok[0] == "-" and tok[1] != "-":
        p = table.get(tok[:2])  # -cVALUE
        return (p, 0) if p is not None and _takes(p) else None
    return None


def hoist_options(group: click.Group, ctx: click.Context, args: Sequence[str]) -> list[str]:
    """``args`` with ``group``'s own options moved from after its subcommands to the front.

    Walks the command path (nested groups too) knowing each command's own options and how many
    values they take, so a subcommand's option value is never mistaken for a global option, and a
    subcommand that has an option of the same name keeps it. Nothing after ``--`` moves. Hoisted
    options keep their order and come after those already in front, so on repeats the one written
    last still wins.
    """
    own = _option_table(group, ctx)
    args = list(args)
    front: list[str] = []
    i = 0
    while i < len(args):  # the group's own segment: its options, up to the subcommand name
        tok = args[i]
        hit = _lookup(own, tok) if tok != "--" else None
        if hit is None:
            break
        front += args[i:i + 1 + hit[1]]
        i += 1 + hit[1]
    if i >= len(args) or args[i] == "--" or args[i].startswith("-"):
        return args  # no subcommand (or something click will report): nothing to do
    hoisted: list[str] = []
    kept: list[str] = []
    cmd: click.Command = group
    local = own
    while i < len(args):
        tok = args[i]
        if tok == "--":
            kept += args[i:]
            break
        if isinstance(cmd, click.Group) and not tok.startswith("-"):
            sub = cmd.get_command(ctx, tok)
            if sub is None and ctx.token_normalize_func is not None:
                sub = cmd.get_command(ctx, ctx.token_normalize_func(tok))
            kept.append(tok)
            i += 1
            if sub is None:  # click reports the unknown command; leave the rest alone
                kept += args[i:]
                break
            cmd = sub
            local = _option_table(cmd, ctx)
            continue
        hit = _lookup(local, tok)
        if hit is not None:
            kept += args[i:i + 1 + hit[1]]
            i += 1 + hit[1]
            continue
        hit = _lookup(own, tok)
        if hit is not None and i + hit[1] < len(args):  # a value missing at the end: let click say so
            hoisted += args[i:i + 1 + hit[1]]
            i += 1 + hit[1]
            continue
        kept.append(tok)
        i += 1
    return front + hoisted + kept


class GlobalOptionsGroup(click.Group):
    """A click Group whose own options also work after its subcommands, at any depth, and whose
    commands end quietly (exit 141) when stdout is a pipe that was closed (``| head``).

    Use it as ``@click.group(cls=GlobalOptionsGroup)`` for the root; nested groups need nothing.
    A subclass that overrides ``invoke`` to turn ``OSError`` into an error message should call
    ``super().invoke`` inside its ``try``: the broken pipe is handled before it gets there.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_options(self, ctx, args))

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            quiet_broken_pipe()

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().main(*args, **kwargs)
        except BrokenPipeError:  # output written outside invoke (help, usage errors)
            quiet_broken_pipe()


def quiet_broken_pipe(code: int = EXIT_BROKEN_PIPE) -> NoReturn:
    """The reader of stdout went away: point stdout at /dev/null (so the interpreter's final flush
    cannot fail and print "Exception ignored ... BrokenPipeError") and exit with ``code``."""
    for stream in (sys.stdout, sys.__stdout__):
        try:
            fd = stream.fileno() if stream is not None else None
        except (OSError, ValueError, AttributeError):
            fd = None
        if fd is not None:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)
            break
    raise SystemExit(code)


# --------------------------------------------------------------------------------------------------
# values


def as_datetime(value: Any) -> datetime | None:
    """A datetime from a datetime or an ISO 8601 string (the store's format); naive means UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def zone_name(tz: tzinfo | None) -> str:
    if tz is None:
        return "UTC"
    return getattr(tz, "key", None) or datetime.now(tz).tzname() or str(tz)


def fmt_time(value: Any, tz: tzinfo | None = None, *, zone: bool = False) -> str:
    """``2026-12-01 19:19`` in ``tz`` (UTC when None), with `` (Asia/Shanghai)`` when ``zone``;
    ``-`` when empty; a string that is not a time is shown as it is."""
    dt = as_datetime(value)
    if dt is None:
        return EMPTY if value in (None, "") else str(value)
    local = dt.astimezone(tz or UTC)
    out = local.strftime("%Y-%m-%d %H:%M")
    return f"{out} ({zone_name(tz)})" if zone else out


def json_time(value: Any, tz: tzinfo | None = None) -> str | None:
    """ISO 8601 with the offset, in ``tz`` (UTC when None): ``2026-12-01T19:19:00+08:00``."""
    dt = as_datetime(value)
    if dt is None:
        return None if value in (None, "") else str(value)
    return dt.astimezone(tz or UTC).isoformat(timespec="seconds")


def fmt_value(value: Any, tz: tzinfo | None = None) -> str:
    """One value for a human: ``-`` when empty, ``a, b`` for lists, ``yes``/``no``, whole floats
    without ``.0``, datetimes in ``tz``."""
    if value is None or value == "" or value == [] or value == () or value == {}:
        return EMPTY
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return fmt_time(value, tz)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:g}"
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return ", ".join(fmt_value(v, tz) for v in items) or EMPTY
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={fmt_value(v, tz)}" for k, v in value.items())
    return str(value)


def json_ready(obj: Any, tz: tzinfo | None = None, time_keys: Iterable[str] = ()) -> Any:
    """``obj`` with datetimes, and strings under ``time_keys`` (the store keeps ISO strings in UTC),
    turned into ISO 8601 with the offset of ``tz``; sets become sorted lists."""
    keys = frozenset(time_keys)

    def conv(v: Any, key: str | None = None) -> Any:
        if isinstance(v, datetime) or (key in keys and isinstance(v, str)):
            return json_time(v, tz)
        if isinstance(v, Mapping):
            return {k: conv(x, k) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [conv(x, key) for x in v]
        if isinstance(v, set | frozenset):
            return sorted((conv(x) for x in v), key=str)
        if isinstance(v, date):
            return v.isoformat()
        return v

    return conv(obj)


def dumps_json(obj: Any, tz: tzinfo | None = None, time_keys: Iterable[str] = ()) -> str:
    """JSON for ``--json``: UTF-8 text as is (no ``\\u`` escapes), indented, times with offsets."""
    return json.dumps(json_ready(obj, tz, time_keys), ensure_ascii=False, indent=2, default=str)


# --------------------------------------------------------------------------------------------------
# display width


_BIDI = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


@functools.lru_cache(maxsize=1 << 16)  # a table of Chinese subjects asks for the same few thousand characters
def char_width(ch: str) -> int:
    """Terminal columns of one character: 2 for East Asian wide/fullwidth, 0 for combining marks
    and format characters, else 1."""
    if ch.isascii():
        return 1 if ch.isprintable() else 0
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def display_width(text: str) -> int:
    if text.isascii() and text.isprintable():
        return len(text)
    return sum(char_width(c) for c in text)


def clean_cell(text: str) -> str:
    """One line of harmless text: tabs and line breaks become spaces, other control characters
    (ESC sequences from a customer's subject would drive the admin's terminal) become ``?``, and
    bidi overrides are dropped."""
    if text.isascii() and text.isprintable():
        return text
    out = []
    for ch in text:
        if ch in "\t\n\r\v\f":
            out.append(" ")
        elif ch in _BIDI:
            continue
        elif unicodedata.category(ch) == "Cc":
            out.append("?")
        else:
            out.append(ch)
    return "".join(out)


def truncate(text: str, width: int) -> str:
    """``text`` cut to at most ``width`` columns, ending in ``…`` when cut."""
    if display_width(text) <= width:
        return text
    if width <= 0:
        return ""
    room = width - display_width(ELLIPSIS)
    out, used = [], 0
    for ch in text:
        w = char_width(ch)
        if used + w > room:
            break
        out.append(ch)
        used += w
    return "".join(out) + ELLIPSIS


def pad(text: str, width: int, right: bool = False) -> str:
    space = " " * max(0, width - display_width(text))
    return space + text if right else text + space


# --------------------------------------------------------------------------------------------------
# tables


@dataclass(frozen=True)
class Column:
    """One table column. ``kind``: ``text``, ``time`` (shown in the table's zone, named once in the
    header), ``number`` (right-aligned) or ``list``. ``shrink`` columns are the ones cut with ``…``
    when the table is wider than the terminal, widest first, down to ``min_width``."""

    key: str
    header: str
    kind: str = "text"
    shrink: bool = False
    min_width: int = 8


def _cell(row: Mapping[str, Any] | Sequence[Any], col: Column, index: int, tz: tzinfo | None) -> str:
    value = row.get(col.key) if isinstance(row, Mapping) else row[index]
    return clean_cell(fmt_time(value, tz) if col.kind == "time" else fmt_value(value, tz))


def format_table(rows: Iterable[Mapping[str, Any] | Sequence[Any]], columns: Sequence[Column], *,
                 tz: tzinfo | None = None, width: int | None = None, gap: int = 2) -> list[str]:
    """Lines of an aligned table with a header. ``rows`` are mappings (by ``Column.key``) or
    sequences (by position). ``width``: cut ``shrink`` columns to fit it (None: never cut). Lines
    carry no trailing spaces."""
    headers = [f"{c.header} ({zone_name(tz)})" if c.kind == "time" else c.header for c in columns]
    cells = [[_cell(r, c, i, tz) for i, c in enumerate(columns)] for r in rows]
    widths = [max([display_width(h), *(display_width(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    if width is not None:
        over = sum(widths) + gap * (len(widths) - 1) - width
        while over > 0:
            cands = [i for i, c in enumerate(columns) if c.shrink and widths[i] > max(c.min_width,
                                                                                      display_width(headers[i]))]
            if not cands:
                break
            i = max(cands, key=lambda k: widths[k])
            floor = max(columns[i].min_width, display_width(headers[i]))
            others = sorted((widths[k] for k in cands if k != i), reverse=True)
            target = max(floor, widths[i] - over, others[0] if others else floor)
            if target >= widths[i]:
                target = widths[i] - 1
            over -= widths[i] - target
            widths[i] = target
    sep = " " * gap

    def line(values: Sequence[str]) -> str:
        parts = []
        for i, (v, c) in enumerate(zip(values, columns, strict=True)):
            v = truncate(v, widths[i])
            last = i == len(columns) - 1
            parts.append(pad(v, widths[i], right=c.kind == "number") if not last or c.kind == "number" else v)
        return sep.join(parts).rstrip()

    return [line(headers), *(line(r) for r in cells)]


def terminal_width(stream: IO[str] | None = None) -> int | None:
    """Columns of the terminal ``stream`` (stdout) writes to; None when it is not a terminal (piped
    output is never cut)."""
    stream = stream or sys.stdout
    try:
        if not stream.isatty():
            return None
    except (AttributeError, ValueError):
        return None
    return shutil.get_terminal_size().columns


def echo_table(rows: Iterable[Mapping[str, Any] | Sequence[Any]], columns: Sequence[Column], *,
               tz: tzinfo | None = None, file: IO[str] | None = None, empty: str | None = None) -> None:
    """Print ``format_table`` fitted to the terminal; ``empty`` (e.g. "no tickets") instead of a
    lone header when there are no rows."""
    rows = list(rows)
    if not rows and empty is not None:
        click.echo(empty, file=file)
        return
    for ln in format_table(rows, columns, tz=tz, width=terminal_width(file)):
        click.echo(ln, file=file)


# --------------------------------------------------------------------------------------------------
# progress


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Progress:
    """A one-line progress report on stderr for long runs (ingest of a big mbox, a report).

    Shown only when the stream is a terminal, ``enabled`` (pass ``not as_json``) and the run has
    lasted ``delay`` seconds; redrawn at most every ``interval`` seconds, from ``advance``/``update``
    calls (no thread: a single step that takes long shows nothing new until it ends); erased by
    ``finish`` (or leaving the ``with`` block), so what stays on screen is the command's output.
    """

    def __init__(self, total: int | None = None, label: str = "", *, stream: IO[str] | None = None,
                 enabled: bool = True, delay: float = 2.0, interval: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.active = enabled and _isatty(self.stream)
        self.delay = delay
        self.interval = interval
        self.clock = clock
        self.start = clock()
        self.done = 0
        self.shown = False
        self._last = float("-inf")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

    def advance(self, n: int = 1) -> None:
        self.update(self.done + n)

    def update(self, done: int) -> None:
        self.done = done
        if not self.active:
            return
        now = self.clock()
        if now - self.start < self.delay or now - self._last < self.interval:
            return
        self._last = now
        self._draw(now)

    def line(self, now: float | None = None, width: int = 80) -> str:
        """The text of the progress line (without the carriage return)."""
        elapsed = max(1e-9, (self.clock() if now is None else now) - self.start)
        rate = self.done / elapsed
        head = f"{self.label} " if self.label else ""
        if self.total:
            frac = min(1.0, self.done / self.total)
            eta = (self.total - self.done) / rate if rate > 0 else None
            tail = f" {self.done}/{self.total} {frac:4.0%}  {rate:.0f}/s"
            if eta is not None and self.done < self.total:
                tail += f"  {int(eta) // 60}:{int(eta) % 60:02d} left"
            bar_w = max(10, min(40, width - display_width(head) - len(tail) - 3))
            fill = int(frac * bar_w)
            text = f"{head}[{'#' * fill}{'.' * (bar_w - fill)}]{tail}"
        else:
            text = f"{head}{self.done} done  {rate:.0f}/s  {int(elapsed)} s"
        return truncate(clean_cell(text), width - 1)

    def _draw(self, now: float) -> None:
        try:
            width = os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            width = shutil.get_terminal_size().columns
        if width < 20:  # a terminal that reports no size (a fresh pseudo-terminal): assume 80
            width = 80
        try:
            self.stream.write("\r" + self.line(now, width) + "\x1b[K")
            self.stream.flush()
        except OSError:
            self.active = False
            return
        self.shown = True

    def echo(self, text: str) -> None:
        """Print a line of the command's own output (stdout) without tearing the progress line:
        erase it, print, draw it again."""
        shown = self.shown
        if shown:
            try:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
            except OSError:
                self.active = False
        click.echo(text)
        if shown and self.active:
            self._draw(self.clock())

    def finish(self) -> None:
        """Erase the line if one was drawn; later calls draw nothing."""
        if self.shown:
            try:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
            except OSError:
                pass
        self.shown = False
        self.active = False
