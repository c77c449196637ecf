"""`mailflow verify [--repair]` finds each injected fault — a deleted spool segment, a truncated
archive, an orphan attachment, an index missing an id — prints `path: what: how to fix`, exits
1, and `--repair` fixes the derivable ones (the index) without deleting mail."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from mailflow.store import Store, iso
from tests.integration.helpers import attachment_mail, mailflow, make_mail


def _setup(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "data"
    cfg = tmp_path / "mailflow.toml"
    cfg.write_text(f'[storage]\ndata_dir = "{data}"\n[company]\nname = "Test Co."\n')
    mails = tmp_path / "mails"
    mails.mkdir()
    for i in range(12):
        (mails / f"{i:02d}.eml").write_bytes(make_mail(i, sender=f"c{i}@customer.example"))
    (mails / "att.eml").write_bytes(attachment_mail())
    mailflow(cfg, "ingest", str(mails))
    s = Store(data)
    old = iso(datetime.now(UTC) - timedelta(days=40))
    with s.batch():  # half of them closed long ago, then housekeeping archives them
        for t in sorted(s.all_tickets(), key=lambda t: t["id"])[:6]:
            s.update_ticket(t["id"], {"status": "closed", "closed_at": old, "close_reason": "staff"})
        assert s.archive(3) == 6
    return cfg, data


def _problems(cfg: Path, *args: str) -> tuple[int, list[str]]:
    r = mailflow(cfg, "verify", *args, check=False)
    return r.returncode, [ln for ln in r.stderr.splitlines() if ": " in ln and "problem(s)" not in ln]


def test_a_clean_data_directory_verifies(tmp_path):
    cfg, data = _setup(tmp_path)
    r = mailflow(cfg, "verify")
    assert r.returncode == 0 and r.stdout.startswith("ok: ")


def test_each_injected_fault_is_found_and_the_derivable_ones_repaired(tmp_path):
    cfg, data = _setup(tmp_path)
    s = Store(data)
    hot = sorted(s.all_tickets(), key=lambda t: t["id"])
    # 1. a deleted spool segment (the raw mail of the hot tickets' batch)
    seg = s.messages_of(hot[0]["id"])[0]["spool"].partition(":")[0]
    (data / "spool" / seg).unlink()
    # 2. a truncated archive file (cut in the middle of its last entry)
    [month] = sorted((data / "archive").glob("2*.jsonl"))
    raw = month.read_bytes()
    last_start = raw[:-1].rfind(b"\n") + 1
    month.write_bytes(raw[: last_start + (len(raw) - last_start) // 2])
    # 3. an orphan attachment
    orphan = data / "attachments" / "CW209901010001" / "stray.bin"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"nobody lists me")
    # 4. the index misses an archived ticket and a Message-ID
    idx = s.archive_index
    tids = [r[0] for r in idx._query("SELECT ticket_id FROM ticket ORDER BY ticket_id")]
    first_entry = idx.read(tids[0])
    with idx.transaction() as db:
        db.execute("DELETE FROM ticket WHERE ticket_id=?", (tids[1],))
        db.execute("DELETE FROM msgid WHERE message_id=?", (first_entry["messages"][0]["message_id"],))
    idx.close()

    rc, lines = _problems(cfg)
    assert rc == 1
    text = "\n".join(lines)
    assert any(ln.startswith(f"spool/{seg}: missing") and "restore the file from a backup" in ln for ln in lines), text
    assert any(ln.startswith(f"archive/{month.name}: truncated") for ln in lines), text
    assert any(ln.startswith("attachments/CW209901010001/stray.bin: orphan attachment") for ln in lines), text
    assert any(ln.startswith("archive/index.sqlite: ") and tids[1] in ln for ln in lines), text
    assert any(ln.startswith("archive/index.sqlite: ") and first_entry["messages"][0]["message_id"] in ln
               for ln in lines), text
    assert all(len(ln.split(": ")) >= 3 for ln in lines), text  # path: what: how to fix

    rc, after = _problems(cfg, "--repair")
    assert rc == 1  # what cannot be derived is still there ...
    assert not any(ln.startswith("archive/index.sqlite") for ln in after), "\n".join(after)
    assert any(ln.startswith(f"spool/{seg}: missing") for ln in after)
    assert any(ln.startswith(f"archive/{month.name}: truncated") for ln in after)
    assert orphan.exists()  # ... and nothing was deleted
    s2 = Store(data)
    assert s2.archived_ticket(tids[1])["ticket"]["id"] == tids[1]
    assert s2.archived_ticket_of(first_entry["messages"][0]["message_id"]) == tids[0]


def test_repair_rebuilds_a_missing_index_and_cuts_a_crash_leftover(tmp_path):
    cfg, data = _setup(tmp_path)
    Store(data).archive_index.close()
    for p in (data / "archive").glob("index.sqlite*"):
        p.unlink()
    [month] = sorted((data / "archive").glob("2*.jsonl"))
    with open(month, "ab") as f:
        f.write(b'{"ticket":{"id":"CW2026')  # an append a crash cut short
    rc, lines = _problems(cfg)
    assert rc == 1 and any(ln.startswith("archive/index.sqlite: missing") for ln in lines), lines
    rc, lines = _problems(cfg, "--repair")
    assert rc == 0, lines
    assert month.read_bytes().endswith(b"}\n")
    assert len(Store(data).archived_tickets()) == 6


def test_retention_applied_by_housekeeping_leaves_a_clean_directory(tmp_path):
    cfg, data = _setup(tmp_path)
    s = Store(data)
    hot_before = sorted(t["id"] for t in s.all_tickets())
    assert len(s.archived_tickets()) == 6 and list((data / "attachments").rglob("*.pdf"))
    segments = list((data / "spool").rglob("*.seg"))
    assert segments
    text = cfg.read_text() + "[retention]\nraw_mail_days = 30\nattachments_days = 30\nclosed_tickets_years = 5\n"
    cfg.write_text(text)
    later = (datetime.now(UTC) + timedelta(days=6 * 366)).isoformat(timespec="minutes")
    r = mailflow(cfg, "--now", later, "run", "--once")
    assert r.returncode == 0, r.stderr
    s = Store(data)
    assert len(s.archived_tickets()) == 0  # closed more than 5 years before "now"
    assert not list((data / "spool").rglob("*.seg")) and not list((data / "attachments").rglob("*.pdf"))
    assert sorted(t["id"] for t in s.all_tickets()) == hot_before  # open tickets keep their text
    assert all(m.get("text") for t in s.all_tickets() for m in s.messages_of(t["id"]) if m["direction"] == "in")
    assert [x["tickets"] for x in s.get_meta("retention:log")] == [6]
    [month] = sorted((data / "archive").glob("2*.jsonl"))
    assert month.read_bytes() == b""
    assert mailflow(cfg, "verify").returncode == 0
