"""`mailflow verify` on PostgreSQL remembers what it read: the next run reads only the message rows
added since, and still finds a spool segment or an attachment of an earlier row that went missing
or was cut short; `--full`, a retention run or a privacy erase make it read every row again."""

from __future__ import annotations

import json

from mailflow import backup_pg, config
from tests.integration.helpers import attachment_mail, mailflow, make_mail


def _cfg(tmp, dsn):
    p = tmp / "pg.toml"
    p.write_text(f'[storage]\ndata_dir = "{tmp / "data"}"\nbackend = "postgresql"\ndsn = "{dsn}"\n'
                 '[company]\nname = "Test Co."\n', encoding="utf-8")
    return p


def _mails(d, first: int, n: int, attachment: bool = False):
    d.mkdir(exist_ok=True)
    for i in range(first, first + n):
        (d / f"{i:03d}.eml").write_bytes(make_mail(i, sender=f"c{i}@customer.example"))
    if attachment:
        (d / "att.eml").write_bytes(attachment_mail())
    return d


def _verify(cfgp, full: bool = False) -> tuple[list[str], list[str]]:
    said: list[str] = []
    problems = backup_pg.verify(config.load(cfgp), echo=said.append, full=full)
    return [str(p) for p in problems], said


def test_verify_reads_new_rows_and_still_checks_the_files_of_old_ones(tmp_path, pg_dsn, monkeypatch):
    monkeypatch.setattr(backup_pg, "REREAD", 0)  # no re-read margin: the counts below are exact
    cfg = _cfg(tmp_path, pg_dsn)
    mailflow(cfg, "ingest", str(_mails(tmp_path / "a", 0, 6, attachment=True)))
    problems, said = _verify(cfg)
    assert problems == [] and "message rows read: 14" in said and any("every message row" in s for s in said)
    assert "ok:" in mailflow(cfg, "verify").stdout  # the command, as an admin runs it

    mailflow(cfg, "ingest", str(_mails(tmp_path / "b", 10, 3)))
    problems, said = _verify(cfg)
    assert problems == [] and any(s.startswith("message rows read: 6 ") for s in said)  # only the new ones (3 mails, 3 acknowledgements)

    data = tmp_path / "data"
    [att] = [p for p in (data / "attachments").rglob("*") if p.is_file()]
    att.unlink()  # an attachment of a row read long ago
    segs = sorted(p for p in (data / "spool").rglob("*") if p.is_file())
    first = segs[0]
    size = first.stat().st_size
    with open(first, "r+b") as f:  # an old segment cut short
        f.truncate(size // 2)
    assert len(segs) >= 2
    gone = segs[-1]
    gone.unlink()  # and another one lost
    problems, said = _verify(cfg)
    assert any(s.startswith("message rows read: 0") for s in said)
    assert any(p.startswith(att.relative_to(data).as_posix()) and "missing" in p for p in problems), problems
    assert any(p.startswith("spool/") and "shorter" in p and "earlier verify" in p for p in problems), problems
    assert any(p.startswith("spool/") and "missing" in p and "earlier verify" in p for p in problems), problems
    # --full reads every row and names the tickets
    full, said = _verify(cfg, full=True)
    assert any(s.startswith("message rows read: 20") for s in said)
    assert any("shorter" in p and "CW" in p for p in full), full
    assert any(p.startswith(f"spool/{gone.relative_to(data / 'spool').as_posix()}") and "missing" in p and "CW" in p
               for p in full), full
    r = mailflow(cfg, "verify", "--full", check=False)
    assert r.returncode == 1 and "problem(s)" in r.stderr


def test_a_privacy_erase_makes_the_next_verify_read_everything(tmp_path, pg_dsn, monkeypatch):
    monkeypatch.setattr(backup_pg, "REREAD", 0)
    cfg = _cfg(tmp_path, pg_dsn)
    mailflow(cfg, "ingest", str(_mails(tmp_path / "a", 0, 4, attachment=True)))
    assert _verify(cfg)[0] == []
    out = mailflow(cfg, "privacy", "erase", "att@customer.example", "--yes", check=False)
    assert out.returncode == 0, out.stderr
    problems, said = _verify(cfg)
    assert problems == [] and any("every message row" in s for s in said)  # its attachment went on purpose
    assert json.loads(mailflow(cfg, "tickets", "list", "--json").stdout)


def test_a_closed_day_folder_is_remembered_by_its_mtime_and_a_lost_segment_found(tmp_path, pg_dsn, monkeypatch):
    """Day folders whose day is past are remembered as one entry each (a daemon on IDLE writes a
    segment per mail), and a segment removed from one is still found without reading its rows."""
    monkeypatch.setattr(backup_pg, "REREAD", 0)
    monkeypatch.setattr(backup_pg, "CLOSED_AFTER_DAYS", -1)  # today's folder counts as closed
    cfg = _cfg(tmp_path, pg_dsn)
    mailflow(cfg, "ingest", str(_mails(tmp_path / "a", 0, 3)))
    mailflow(cfg, "ingest", str(_mails(tmp_path / "b", 10, 3)))
    assert _verify(cfg)[0] == []
    import psycopg

    with psycopg.connect(pg_dsn) as c:
        state = c.execute("SELECT value FROM meta WHERE key = 'verify:checked'").fetchone()[0]
    assert state["segments"] == {} and len(state["days"]) == 1  # one folder, not one entry per segment
    problems, said = _verify(cfg)
    assert problems == [] and any(s.startswith("message rows read: 0") for s in said)
    data = tmp_path / "data"
    segs = sorted(p for p in (data / "spool").rglob("*") if p.is_file())
    assert len(segs) >= 2
    segs[0].unlink()
    problems, _said = _verify(cfg)
    assert any("segment files are gone" in p for p in problems), problems
