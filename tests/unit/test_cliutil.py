"""cliutil: global options anywhere, quiet broken pipes, value formatting, CJK-aware tables, progress."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import textwrap
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import click
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from mailflow.cliutil import (
    ELLIPSIS,
    EMPTY,
    EXIT_BROKEN_PIPE,
    Column,
    GlobalOptionsGroup,
    Progress,
    clean_cell,
    display_width,
    dumps_json,
    fmt_time,
    fmt_value,
    format_table,
    hoist_options,
    json_time,
    truncate,
)

REPO = Path(__file__).resolve().parents[2]
SH = ZoneInfo("Asia/Shanghai")

# ---- global options before or after the subcommand -------------------------------------------


def make_app() -> click.Group:
    """The shape of mailflow's CLI: root options, leaf commands with options and arguments, a nested
    group, and one command with an option of the same name as a global one."""

    @click.group(cls=GlobalOptionsGroup)
    @click.option("--config", "config_path")
    @click.option("--log-level", type=click.Choice(["debug", "info"]))
    @click.option("--now")
    @click.option("-q", "--quiet", is_flag=True)
    @click.version_option("9.9", package_name="mailflow")
    @click.pass_context
    def app(ctx, config_path, log_level, now, quiet):
        ctx.obj = {"config": config_path, "log_level": log_level, "now": now, "quiet": quiet}

    def show(obj, **kw):
        click.echo(json.dumps({**obj, **kw}, sort_keys=True))

    @app.command()
    @click.pass_obj
    def check(obj):
        show(obj, cmd="check")

    @app.command()
    @click.argument("paths", nargs=-1)
    @click.option("--json", "as_json", is_flag=True)
    @click.option("--subject")
    @click.pass_obj
    def simulate(obj, paths, as_json, subject):
        show(obj, cmd="simulate", paths=list(paths), json=as_json, subject=subject)

    @app.command()
    @click.option("--config", "own_config")
    @click.pass_obj
    def export(obj, own_config):
        show(obj, cmd="export", own_config=own_config)

    @app.group()
    def tickets():
        pass

    @tickets.command("list")
    @click.option("--status")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_obj
    def tickets_list(obj, status, as_json):
        show(obj, cmd="tickets list", status=status, json=as_json)

    @tickets.command("show")
    @click.argument("ticket_id")
    @click.pass_obj
    def tickets_show(obj, ticket_id):
        show(obj, cmd="tickets show", id=ticket_id)

    return app


def run(*args: str) -> dict:
    r = CliRunner().invoke(make_app(), list(args), catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


@pytest.mark.parametrize("args", [
    ["--config", "c.toml", "check"],
    ["check", "--config", "c.toml"],
    ["check", "--config=c.toml"],
])
def test_global_option_before_or_after_the_command(args):
    assert run(*args) == {"cmd": "check", "config": "c.toml", "log_level": None, "now": None, "quiet": False}


def test_global_options_after_a_nested_command_and_between_group_and_command():
    a = run("tickets", "list", "--status", "open", "--config", "x.toml", "--log-level", "debug", "--json")
    b = run("tickets", "--config", "x.toml", "list", "--log-level=debug", "--status", "open", "--json")
    c = run("--config", "x.toml", "--log-level", "debug", "tickets", "list", "--status", "open", "--json")
    assert a == b == c
    assert a["config"] == "x.toml" and a["log_level"] == "debug" and a["status"] == "open" and a["json"]


def test_global_options_between_arguments_and_short_flags():
    out = run("simulate", "a.eml", "--now", "2026-12-01T10:00:00+08:00", "b.eml", "-q", "--json")
    assert out["paths"] == ["a.eml", "b.eml"]
    assert out["now"] == "2026-12-01T10:00:00+08:00" and out["quiet"] and out["json"]


def test_a_subcommand_value_is_never_taken_for_a_global_option():
    out = run("simulate", "--subject", "--config", "a.eml")
    assert out["subject"] == "--config" and out["config"] is None and out["paths"] == ["a.eml"]


def test_a_subcommand_option_of_the_same_name_stays_with_the_subcommand():
    out = run("--config", "global.toml", "export", "--config", "own.toml")
    assert out["config"] == "global.toml" and out["own_config"] == "own.toml"


def test_nothing_after_double_dash_moves():
    out = run("simulate", "--", "--config", "x.toml")
    assert out["config"] is None and out["paths"] == ["--config", "x.toml"]


def test_the_last_of_repeated_global_options_wins():
    assert run("--config", "a.toml", "check", "--config", "b.toml")["config"] == "b.toml"


def test_help_version_and_errors_stay_where_they_were_written():
    r = CliRunner().invoke(make_app(), ["tickets", "list", "--help"])
    assert r.exit_code == 0 and "--status" in r.output and "--log-level" not in r.output
    r = CliRunner().invoke(make_app(), ["check", "--version"])
    assert r.exit_code == 0 and "9.9" in r.output
    r = CliRunner().invoke(make_app(), ["nosuch", "--config", "x"])
    assert r.exit_code == 2 and "No such command 'nosuch'" in r.output
    r = CliRunner().invoke(make_app(), ["check", "--config"])  # the value is missing
    assert r.exit_code == 2 and "--config" in r.output
    r = CliRunner().invoke(make_app(), ["check", "--log-level", "loud"])
    assert r.exit_code == 2 and "loud" in r.output


def test_hoist_options_leaves_a_global_first_command_line_alone():
    app = make_app()
    ctx = click.Context(app)
    args = ["--config", "x", "tickets", "list", "--status", "open"]
    assert hoist_options(app, ctx, args) == args
    assert hoist_options(app, ctx, []) == []
    assert hoist_options(app, ctx, ["--help"]) == ["--help"]


_LEAF = st.lists(st.sampled_from([["--status", "open"], ["--json"], ["--status=closed"]]), max_size=3)
_GLOBAL = st.lists(st.sampled_from([["--config", "g.toml"], ["--log-level", "info"], ["--now", "N"], ["-q"],
                                    ["--config=h.toml"]]), max_size=4)


@settings(max_examples=60, deadline=None)
@given(leaf=_LEAF, glob=_GLOBAL, cut=st.integers(0, 10))
def test_global_options_anywhere_mean_the_same_as_global_options_first(leaf, glob, cut):
    leaf_args = [t for opt in leaf for t in opt]
    glob_args = [t for opt in glob for t in opt]
    first = run(*glob_args, "tickets", "list", *leaf_args)
    k = min(cut, len(leaf))  # global options after the k-th leaf option
    anywhere = ["tickets", "list", *[t for o in leaf[:k] for t in o], *glob_args, *[t for o in leaf[k:] for t in o]]
    assert run(*anywhere) == first


# ---- broken pipes -----------------------------------------------------------------------------

PIPE_APP = textwrap.dedent("""
    import sys
    import click
    from mailflow.cliutil import GlobalOptionsGroup

    class LeadGroup(GlobalOptionsGroup):  # like cli._Group: OSError becomes "Error: ..."
        def invoke(self, ctx):
            try:
                return super().invoke(ctx)
            except OSError as e:
                raise click.ClickException(f"{type(e).__name__}: {e}") from None

    @click.group(cls=LeadGroup)
    @click.option("--config")
    def app(config):
        pass

    @app.command()
    def many():
        for i in range(200000):
            click.echo(f"line {i} 中文")

    @app.command("json")
    def as_json():
        print("[" + ",".join(str(i) for i in range(300000)) + "]")

    app(prog_name="mailflow")
""")


@pytest.mark.parametrize("command", [["many"], ["json", "--config", "x"]])
def test_a_closed_pipe_ends_quietly_like_git(command):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.Popen([sys.executable, "-c", PIPE_APP, *command], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    assert p.stdout.read(10)  # what `head -c 10` reads before it closes the pipe
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == EXIT_BROKEN_PIPE
    assert err == ""  # no traceback, no "Error: BrokenPipeError", no "Exception ignored"


def test_a_shell_pipeline_into_head_exits_zero():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run(["sh", "-c", f'"{sys.executable}" -c "$APP" many | head -n 2'], env={**env, "APP": PIPE_APP},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == "line 0 中文\nline 1 中文\n" and r.stderr == ""


# ---- values -----------------------------------------------------------------------------------


def test_times_in_the_configured_zone():
    assert fmt_time("2026-12-01T11:19:00+00:00", SH) == "2026-12-01 19:19"
    assert fmt_time("2026-12-01T11:19:00+00:00", SH, zone=True) == "2026-12-01 19:19 (Asia/Shanghai)"
    assert fmt_time(datetime(2026, 12, 1, 11, 19), SH) == "2026-12-01 19:19"  # naive is UTC
    assert fmt_time("2026-12-01T11:19:00Z") == "2026-12-01 11:19"
    assert fmt_time(None, SH) == EMPTY and fmt_time("", SH) == EMPTY
    assert fmt_time("not a time", SH) == "not a time"
    ny = ZoneInfo("America/New_York")  # DST: the offset comes from the zone on that date
    assert fmt_time("2026-07-01T12:00:00+00:00", ny) == "2026-07-01 08:00"
    assert fmt_time("2026-12-01T12:00:00+00:00", ny) == "2026-12-01 07:00"


def test_json_times_carry_the_offset():
    assert json_time("2026-12-01T11:19:00+00:00", SH) == "2026-12-01T19:19:00+08:00"
    assert json_time(datetime(2026, 12, 1, 11, 19, tzinfo=UTC)) == "2026-12-01T11:19:00+00:00"
    assert json_time(None) is None
    out = json.loads(dumps_json({"id": "CW1", "created_at": "2026-12-01T11:19:00+00:00", "subject": "中文",
                                 "due": datetime(2026, 12, 2, 1, 0, tzinfo=UTC), "tags": {"b", "a"},
                                 "events": [{"at": "2026-12-01T00:00:00+00:00"}]},
                                SH, time_keys={"created_at", "at"}))
    assert out == {"id": "CW1", "created_at": "2026-12-01T19:19:00+08:00", "subject": "中文",
                   "due": "2026-12-02T09:00:00+08:00", "tags": ["a", "b"],
                   "events": [{"at": "2026-12-01T08:00:00+08:00"}]}
    assert "中文" in dumps_json({"s": "中文"})  # not \\u escapes


@pytest.mark.parametrize("value, shown", [
    (None, "-"), ("", "-"), ([], "-"), ({}, "-"), (True, "yes"), (False, "no"), (24.0, "24"), (1.5, "1.5"),
    (["login", "after-sales"], "login, after-sales"), ({"b", "a"}, "a, b"), (3, "3"), ("投诉", "投诉"),
    ([None, "x"], "-, x"), ({"k": 1}, "k=1"),
])
def test_values_for_humans(value, shown):
    assert fmt_value(value) == shown


def test_fixed_offset_zone_is_named_by_its_offset():
    tz = timezone(timedelta(hours=8))
    assert fmt_time("2026-12-01T00:00:00+00:00", tz, zone=True) == "2026-12-01 08:00 (UTC+08:00)"


# ---- widths and tables ------------------------------------------------------------------------


def test_display_width_counts_wide_characters_twice():
    assert display_width("abc") == 3
    assert display_width("中文") == 4
    assert display_width("諮詢：訂單") == 10  # fullwidth colon too
    assert display_width("ＡＢ") == 4
    assert display_width("e\u0301") == 1  # combining accent
    assert display_width("a\u200bb") == 2  # zero width space
    assert display_width("한국어") == 6


def test_clean_cell_neutralises_terminal_control():
    assert clean_cell("a\x1b[2Jb") == "a?[2Jb"
    assert clean_cell("line1\nline2\tx") == "line1 line2 x"
    assert clean_cell("abc\u202edcba") == "abcdcba"
    assert clean_cell("\x9b31m") == "?31m"  # C1 CSI
    assert clean_cell("中文") == "中文"


def test_truncate_keeps_within_the_width_and_marks_the_cut():
    assert truncate("hello", 10) == "hello"
    assert truncate("hello world", 6) == "hello" + ELLIPSIS
    assert truncate("中文中文中文", 7) == "中文中" + ELLIPSIS
    assert truncate("中文中文中文", 6) == "中文" + ELLIPSIS  # a wide char never straddles the edge
    assert truncate("abc", 0) == ""


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("ab 中文ＡＢ\u0301é한")), max_size=30), width=st.integers(1, 30))
def test_truncate_property(text, width):
    out = truncate(text, width)
    assert display_width(out) <= width
    if display_width(text) <= width:
        assert out == text
    else:
        assert out.endswith(ELLIPSIS) and text.startswith(out[:-1])


def column_starts(line: str) -> list[int]:
    """Display columns where each cell (separated by 2+ spaces) starts."""
    starts, col, prev_space, run = [], 0, True, 0
    for ch in line:
        if ch == " ":
            run += 1
        else:
            if prev_space and (run >= 2 or col == 0):
                starts.append(col)
            run = 0
        prev_space = ch == " "
        col += display_width(ch)
    return starts


COLS = [Column("id", "ID"), Column("status", "STATUS"), Column("created_at", "CREATED", kind="time"),
        Column("msgs", "MSGS", kind="number"), Column("tags", "TAGS", kind="list"),
        Column("subject", "SUBJECT", shrink=True)]
ROWS = [
    {"id": "CW202612010001", "status": "new", "created_at": "2026-12-01T11:19:00+00:00", "msgs": 3,
     "tags": ["refund", "attitude"], "subject": "投诉：客服态度恶劣，退款两周了还没到账"},
    {"id": "CW202612010002", "status": "open", "created_at": None, "msgs": 12, "tags": [],
     "subject": "URGENT: outage - cannot log in, all users affected"},
    {"id": "CW202612010003", "status": "resolved", "created_at": "2026-12-01T03:00:00+00:00", "msgs": 1,
     "tags": ["invoice"], "subject": "諮詢：上個月的訂單可以開立發票嗎？\x1b[31m"},
]


def test_table_aligns_cjk_by_display_width():
    lines = format_table(ROWS, COLS, tz=SH)
    assert lines[0].split() == ["ID", "STATUS", "CREATED", "(Asia/Shanghai)", "MSGS", "TAGS", "SUBJECT"]
    assert "2026-12-01 19:19" in lines[1] and "2026-12-01 11:00" in lines[3]
    assert lines[2].split()[2] == "-"  # empty values are "-"
    assert "refund, attitude" in lines[1]
    assert "\x1b" not in lines[3]
    subject_col = column_starts(lines[0])[-1]
    for ln in lines[1:]:
        assert column_starts(ln)[-1] == subject_col, ln
        assert ln == ln.rstrip()
    # numbers are right-aligned: their last digits end in the same column
    ends = [display_width(ln[:ln.index(str(r["msgs"]) + "  ")]) + len(str(r["msgs"]))
            for ln, r in zip(lines[1:], ROWS, strict=True)]
    assert len(set(ends)) == 1


def test_table_cuts_long_cells_to_the_terminal_width():
    full = format_table(ROWS, COLS, tz=SH)
    cut = format_table(ROWS, COLS, tz=SH, width=90)
    assert all(display_width(ln) <= 90 for ln in cut), cut
    assert any(ln.endswith(ELLIPSIS) for ln in cut)
    assert [ln.split()[0] for ln in cut] == [ln.split()[0] for ln in full]  # ids are never cut
    assert format_table(ROWS, COLS, tz=SH, width=1000) == full


def test_table_from_sequences_and_without_rows():
    lines = format_table([("a", 1), ("中文", 22)], [Column("n", "NAME"), Column("c", "COUNT", kind="number")])
    assert lines == ["NAME  COUNT", "a         1", "中文     22"]
    assert format_table([], [Column("n", "NAME")]) == ["NAME"]


# ---- progress ---------------------------------------------------------------------------------


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_progress_waits_two_seconds_before_showing():
    clock, out = Clock(), FakeTTY()
    p = Progress(total=1000, label="ingest", stream=out, clock=clock)
    for _ in range(10):
        clock.t += 0.19
        p.advance(50)
    assert out.getvalue() == ""  # 1.9 s: a short run never shows a bar
    clock.t += 0.2
    p.advance(50)
    shown = out.getvalue()
    assert shown.startswith("\ringest [") and "550/1000" in shown and "55%" in shown and "left" in shown
    p.finish()
    assert out.getvalue().endswith("\r\x1b[K")  # erased: the command's own output stays clean
    before = out.getvalue()
    p.advance(1)
    assert out.getvalue() == before


def test_progress_is_silent_when_piped_or_for_json():
    clock = Clock()
    piped, tty = io.StringIO(), FakeTTY()
    with Progress(total=10, stream=piped, clock=clock) as a, Progress(total=10, stream=tty, enabled=False,
                                                                         clock=clock) as b:
        clock.t += 10
        a.advance(5)
        b.advance(5)
    assert piped.getvalue() == "" and tty.getvalue() == ""


def test_progress_without_total_and_redraw_interval():
    clock, out = Clock(), FakeTTY()
    p = Progress(label="scan", stream=out, clock=clock, interval=0.5)
    clock.t += 3
    p.advance(300)
    p.advance(1)  # same instant: not redrawn
    assert out.getvalue().count("\r") == 1 and "300 done" in out.getvalue()
    clock.t += 1
    p.advance(1)
    assert out.getvalue().count("\r") == 2 and "302 done" in out.getvalue()


PROGRESS_APP = textwrap.dedent("""
    import sys
    from mailflow.cliutil import Progress, Column, echo_table
    with Progress(total=3, label="work", delay=0.0, interval=0.0) as p:
        for _ in range(3):
            p.advance()
    sys.stderr.write("after\\n")
    echo_table([{"s": "投诉：客服态度恶劣，退款两周了还没到账 " * 3}], [Column("s", "SUBJECT", shrink=True)])
""")


def run_with(stdout_tty: bool, stderr_tty: bool) -> tuple[str, str]:
    """Run PROGRESS_APP with stdout and/or stderr on a 40-column pseudo-terminal, else on pipes."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("COLUMNS", None)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 40, 0, 0))
    p = subprocess.Popen([sys.executable, "-c", PROGRESS_APP], env=env, stdin=subprocess.DEVNULL,
                         stdout=slave if stdout_tty else subprocess.PIPE,
                         stderr=slave if stderr_tty else subprocess.PIPE)
    os.close(slave)
    tty = b""
    while True:
        r, _, _ = select.select([master], [], [], 30)
        if not r:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        tty += chunk
    os.close(master)
    out = p.stdout.read() if p.stdout else b""
    err = p.stderr.read() if p.stderr else b""
    assert p.wait(timeout=30) == 0, err
    return tty.decode(), (out + err).decode()


def test_progress_and_tables_under_a_real_terminal_and_piped():
    tty, _piped = run_with(stdout_tty=True, stderr_tty=True)
    assert "\rwork [" in tty and "3/3" in tty and "\r\x1b[K" in tty
    table = [ln for ln in tty.replace("\r\n", "\n").split("\n") if ln.startswith("投诉")]
    assert table and all(display_width(ln) <= 40 for ln in table) and table[0].endswith(ELLIPSIS)
    tty, piped = run_with(stdout_tty=False, stderr_tty=False)
    assert tty == "" and "work" not in piped and "after" in piped
    assert ELLIPSIS not in piped and ("投诉：客服态度恶劣，退款两周了还没到账 " * 3).strip() in piped  # never cut when piped
