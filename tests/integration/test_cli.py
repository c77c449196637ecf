"""The first hour of a new admin, as the real CLI does it: honest exit codes, `check --connect` against
the test Dovecot, times in the configured zone, quiet pipes, progress only on a terminal, demo that
never touches a configured installation, global options after the subcommand."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.helpers import REPO, mailflow, make_mail, new_user, storage_lines, write_config


def _env(**kw) -> dict:
    e = dict(os.environ, PYTHONPATH=str(REPO))
    e.pop("MAILFLOW_CONFIG", None)
    e.pop("MAILFLOW_DATA_DIR", None)
    return {**e, **kw}


@pytest.mark.usefixtures("backend")
def test_run_once_exits_3_when_a_mailbox_cannot_be_reached(tmp_path, dovecot_server, smtp_sink):
    good = new_user(dovecot_server)
    cfg = write_config(tmp_path, dovecot_server, [good], smtp_sink)
    text = cfg.read_text(encoding="utf-8") + (
        '\n[[mailbox]]\nname = "gone"\nhost = "127.0.0.1"\nport = 1\ntls = "none"\nuser = "x"\npassword = "y"\n'
        'timeout = 2\n')
    cfg.write_text(text, encoding="utf-8")
    dovecot_server.append(good, make_mail(1))
    r = mailflow(cfg, "run", "--once", check=False)
    assert r.returncode == 3, r.stderr
    assert f"{good}: 1 fetched" in r.stdout and "gone:" in r.stderr  # everything else was done
    assert json.loads(mailflow(cfg, "tickets", "list", "--json").stdout)


@pytest.mark.usefixtures("backend")
def test_check_connect_logs_in_and_reports_each_server(tmp_path, dovecot_server, smtp_sink):
    user = new_user(dovecot_server)
    cfg = write_config(tmp_path, dovecot_server, [user], smtp_sink)
    r = mailflow(cfg, "check", "--connect", check=False)
    assert r.returncode == 0, r.stderr
    assert f"mailbox {user}: ok" in r.stdout and "smtp: ok" in r.stdout
    cfg.write_text(cfg.read_text(encoding="utf-8").replace('password = "secret"', 'password = "wrong"'),
                   encoding="utf-8")
    r = mailflow(cfg, "check", "--connect", check=False)
    assert r.returncode == 1
    assert f"mailbox {user}: FAILED" in r.stderr and "secret" not in r.stderr + r.stdout and "wrong" not in r.stderr


@pytest.mark.usefixtures("backend")
def test_times_in_the_configured_zone_and_global_options_anywhere(tmp_path):
    cfg = tmp_path / "mailflow.toml"
    cfg.write_text(f'[storage]\ndata_dir = "{tmp_path / "d"}"\n{storage_lines()}[tickets]\ntimezone = "America/New_York"\n',
                   encoding="utf-8")
    mail = tmp_path / "one.eml"
    mail.write_bytes(make_mail(1, zh=False))
    mailflow(cfg, "--now", "2026-11-24T15:30:00+00:00", "ingest", str(mail))
    r = subprocess.run([sys.executable, "-m", "mailflow", "tickets", "list", "--config", str(cfg)],  # after
                       capture_output=True, text=True, env=_env(), cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "DUE (America/New_York)" in r.stdout
    [tid] = re.findall(r"CW\d{12}", r.stdout)
    shown = mailflow(cfg, "tickets", "show", tid).stdout
    assert "2026-11-24 10:30" in shown  # 15:30 UTC is 10:30 in New York
    assert "None" not in shown and "['" not in shown  # `-` for empty values, lists as a, b
    js = json.loads(mailflow(cfg, "tickets", "show", tid, "--json").stdout)
    assert js["created_at"] == "2026-11-24T15:30:00+00:00"  # ISO 8601 with offset


def test_piping_into_head_ends_quietly(tmp_path):
    data = tmp_path / "d"
    mails = tmp_path / "m"
    mails.mkdir()
    for i in range(60):
        (mails / f"{i:03d}.eml").write_bytes(make_mail(i, sender=f"p{i}@customer.example"))
    env = _env(MAILFLOW_DATA_DIR=str(data))
    subprocess.run([sys.executable, "-m", "mailflow", "ingest", str(mails)], env=env, cwd=REPO,
                   capture_output=True, check=True)
    p = subprocess.run(f"{sys.executable} -m mailflow tickets list | head -2", shell=True, env=env, cwd=REPO,
                       capture_output=True, text=True)
    assert len(p.stdout.splitlines()) == 2
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr and "Error" not in p.stderr


def _under_pty(args: list[str], env: dict, timeout: float = 120) -> str:
    """Run the CLI with its stdout and stderr on a pseudo-terminal; everything it wrote."""
    master, slave = pty.openpty()
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env, cwd=REPO)
    os.close(slave)
    out = b""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r, _, _ = select.select([master], [], [], 0.2)
        if r:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        elif p.poll() is not None:
            break
    p.wait(10)
    os.close(master)
    return out.decode("utf-8", "replace")


def test_progress_only_on_a_terminal(tmp_path):
    mails = tmp_path / "m"
    mails.mkdir()
    for i in range(1500):
        (mails / f"{i:04d}.eml").write_bytes(make_mail(i, sender=f"g{i}@customer.example"))
    tty = _under_pty([sys.executable, "-m", "mailflow", "ingest", str(mails)], _env(MAILFLOW_DATA_DIR=str(tmp_path / "a")))
    assert re.search(r"ingest \[[#.]+\] \d+/1500", tty), tty[-2000:]  # a run of several seconds shows progress
    piped = subprocess.run([sys.executable, "-m", "mailflow", "ingest", str(mails)], capture_output=True, text=True,
                           env=_env(MAILFLOW_DATA_DIR=str(tmp_path / "b")), cwd=REPO)
    assert "[#" not in piped.stdout + piped.stderr and "\r" not in piped.stdout + piped.stderr
    assert len([ln for ln in piped.stdout.splitlines() if ".eml" in ln]) == 1500  # a line per file


def test_demo_never_touches_a_configured_installation(tmp_path):
    live = tmp_path / "live"
    mailflow(None, "init", str(live))
    cfg = live / "mailflow.toml"
    work = tmp_path / "work"
    work.mkdir()
    r = subprocess.run([sys.executable, "-m", "mailflow", "demo"], capture_output=True, text=True, cwd=work,
                       env=_env(MAILFLOW_CONFIG=str(cfg)))
    assert r.returncode == 0, r.stderr
    assert not (live / "data" / "mailflow.json").exists()  # the real data directory is untouched
    assert (work / "mailflow-demo" / "mailflow.json").exists()
    assert "MAILFLOW_DATA_DIR=" in r.stdout and "rm -r" in r.stdout
    plain = tmp_path / "plain"
    plain.mkdir()
    subprocess.run([sys.executable, "-m", "mailflow", "demo"], capture_output=True, text=True, cwd=plain, env=_env(),
                   check=True)
    listed = subprocess.run([sys.executable, "-m", "mailflow", "tickets", "list"], capture_output=True, text=True,
                            cwd=plain, env=_env(), check=True).stdout
    assert len(re.findall(r"CW\d{12}", listed)) == 5  # ./mailflow-data: the embedded default


def test_simulate_on_a_mail_already_processed_says_so(tmp_path):
    mail = tmp_path / "one.eml"
    mail.write_bytes(make_mail(1))
    env = {"MAILFLOW_DATA_DIR": str(tmp_path / "d")}
    mailflow(None, "ingest", str(mail), env=env)
    [out] = json.loads(mailflow(None, "simulate", "--json", str(mail), env=env).stdout)
    assert out["route"] == "new" and "already processed" in out["note"]
    assert Path(tmp_path / "d" / "mailflow.json").exists()


def test_list_tables_show_the_newest_rows_and_say_what_they_left_out(tmp_path):
    data = tmp_path / "d"
    mails = tmp_path / "m"
    mails.mkdir()
    for i in range(12):
        (mails / f"{i:03d}.eml").write_bytes(make_mail(i, sender=f"p{i}@customer.example"))
    env = _env(MAILFLOW_DATA_DIR=str(data))
    subprocess.run([sys.executable, "-m", "mailflow", "ingest", str(mails)], env=env, cwd=REPO,
                   capture_output=True, check=True)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mailflow", *args], env=env, cwd=REPO,
                              capture_output=True, text=True, check=True)

    every = json.loads(run("tickets", "list", "--json").stdout)  # JSON: everything unless asked
    assert len(every) == 12
    r = run("tickets", "list", "--limit", "5")
    shown = re.findall(r"CW\d{12}", r.stdout)
    assert shown == [t["id"] for t in every[-5:]]  # the newest five, still oldest first
    assert "showing the newest 5 of 12 tickets" in r.stderr
    assert len(re.findall(r"CW\d{12}", run("tickets", "list", "--limit", "0").stdout)) == 12
    assert len(json.loads(run("tickets", "list", "--json", "--limit", "3").stdout)) == 3
    assert "showing" not in run("tickets", "list").stderr  # 12 < the default of 100

    sent_or_queued = json.loads(run("outbox", "list", "--json").stdout)
    assert len(sent_or_queued) == 12  # one acknowledgement each, queued (no SMTP server here)
    r = run("outbox", "list", "--limit", "2")
    assert len(set(re.findall(r"CW\d{12}", r.stdout))) == 12  # queued rows are never left out
