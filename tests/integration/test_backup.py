"""`mailflow backup` while the daemon works through a backlog over Dovecot and aiosmtpd, `restore`
into a fresh directory (the state at the snapshot, consistent at a batch boundary), a restored
install that resumes intake without duplicate tickets or re-sent mail, and damaged backups that
are refused before anything is written."""

from __future__ import annotations

import json
import os
import tarfile
import threading
import time
from pathlib import Path

import pytest

from mailflow import backup as backup_mod
from mailflow.backup import BackupError, backup, list_backups
from mailflow.store import Store, lock_process
from tests.integration.helpers import mailflow, make_mail, parsed
from tests.integration.test_daemon import config, daemon, mailbox_toml, notify, user  # noqa: F401 - fixture

N = 600


def _inbound(s: Store) -> set[str]:
    return {m["message_id"] for m in s._table("messages").values() if m["direction"] == "in"}


def _sent_rows(data: Path, s: Store) -> set[str]:
    """Outbox rows delivered as far as this directory knows (database or journal)."""
    sent = {k for k, r in s.outbox_rows().items() if r["status"] == "sent"}
    j = data / "outbox" / "journal.log"
    if j.exists():
        for line in j.read_text().splitlines():
            e = json.loads(line)
            if e.get("status") == "sent":
                sent.add(e["row"])
    return sent


def test_backup_while_the_daemon_runs_then_restore_and_resume(tmp_path, dovecot_server, smtp_sink, notify):  # noqa: F811
    src = tmp_path / "src"
    src.mkdir()
    u = user(dovecot_server)
    cfg = config(src, [mailbox_toml(u, dovecot_server.port, extra="batch_size = 10")], smtp_sink.port)
    mails = [make_mail(i, sender=f"cust{i}@customer.example") for i in range(2 * N)]
    mids = [parsed(m)["Message-ID"].strip("<>") for m in mails]
    dovecot_server.append_many(u, mails[:N])
    out = tmp_path / "backups"
    with daemon(cfg, notify) as run:
        run.wait_log(r"new ticket=", n=30, timeout=60)
        # more mail keeps arriving while the backup runs, so the snapshot falls mid-backlog even when
        # the daemon is fast and the backup command slow to start (a loaded machine)
        more = threading.Thread(target=dovecot_server.append_many, args=(u, mails[N:]))
        more.start()
        b = mailflow(cfg, "backup", "--out", str(out))
        more.join()
        assert "store locked" in b.stdout
        run.wait_log(r"new ticket=", n=2 * N, timeout=240)
        assert smtp_sink.wait_for(2 * N, timeout=120)
        assert run.stop() == 0
    [bk] = list_backups(out)
    assert oct(bk.stat().st_mode & 0o777) == "0o600"
    with tarfile.open(bk) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("MANIFEST.json").read())
    assert names[-1] == "MANIFEST.json" and "data/secret.key" in names and "config/mailflow.toml" in names
    assert any(n.startswith("config/rules/") for n in names) and any(n.startswith("config/templates/") for n in names)
    assert {f["path"] for f in manifest["files"]} == set(names) - {"MANIFEST.json"}
    assert manifest["schema_version"] == backup_mod.SCHEMA_VERSION and manifest["mailflow_version"]
    assert mailflow(cfg, "verify", "--backup", str(bk)).returncode == 0

    # restore into a fresh directory: the state at the snapshot, at a batch boundary
    dst = tmp_path / "restored" / "data"
    r = mailflow(cfg, "restore", str(bk), "--data-dir", str(dst))
    assert "verify: ok" in r.stdout, r.stdout + r.stderr
    assert (dst / "restored-config" / "mailflow.toml").read_text() == cfg.read_text()
    rs, ss = Store(dst), Store(src / "data")
    last = rs.checkpoint(u)["last_uid"]
    assert 0 < last < 2 * N, f"the backup was not taken mid-backlog (checkpoint {last})"
    assert _inbound(rs) == set(mids[:last])  # every mail up to the checkpoint, none after it
    assert manifest["counts"]["tickets_hot"] == len(rs.all_tickets()) == last
    for t in rs.all_tickets():  # tickets and conversations as the source had them
        assert ss.ticket(t["id"]) == t
        assert rs.messages_of(t["id"]) == ss.messages_of(t["id"])
    for k, row in rs.outbox_rows().items():  # the same rows; only delivery results moved on since
        other = ss.outbox_rows()[k]
        moved = {"status", "sent_at", "attempts", "last_error", "next_attempt_at"}
        assert {f: v for f, v in row.items() if f not in moved} == {f: v for f, v in other.items() if f not in moved}
    sent_then = _sent_rows(dst, rs)
    sent_tickets = {rs.outbox_rows()[k]["ticket_id"] for k in sent_then}

    # the restored install resumes: what arrived after the snapshot, once, and no mail sent twice
    late = [make_mail(2 * N + i, sender=f"late{i}@customer.example") for i in range(5)]
    dovecot_server.append_many(u, late)
    smtp_sink.clear()
    cfg2 = config(tmp_path / "restored", [mailbox_toml(u, dovecot_server.port, extra="batch_size = 50")],
                  smtp_sink.port)
    mailflow(cfg2, "run", "--once", timeout=300)
    time.sleep(0.3)
    rs = Store(dst)
    ins = [m["message_id"] for m in rs._table("messages").values() if m["direction"] == "in"]
    assert sorted(ins) == sorted(mids + [parsed(m)["Message-ID"].strip("<>") for m in late])  # no duplicates
    assert len(rs.all_tickets()) == 2 * N + 5
    got = [str(parsed(d)["X-Mailflow-Ticket"]) for _f, _r, d in smtp_sink.messages]
    assert not set(got) & sent_tickets, "a mail delivered before the snapshot went out again"
    assert len(got) == len(set(got)) == 2 * N + 5 - len(sent_tickets)


def test_a_damaged_backup_is_refused_before_anything_is_written(tmp_path):
    data = tmp_path / "data"
    with Store(data).batch() as s:
        for i in range(30):
            s.add_ticket({"id": f"CW20261123{i:04d}", "status": "new", "customer_email": f"c{i}@x.example",
                          "subject": "x" * 400})
    bk = backup(data, tmp_path / "b").path
    raw = bytearray(bk.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit flipped
    bad = tmp_path / "b" / "mailflow-backup-20990101T000000Z.tar.gz"
    bad.write_bytes(bytes(raw))
    cfg = tmp_path / "mailflow.toml"
    cfg.write_text(f'[storage]\ndata_dir = "{data}"\n')
    target = tmp_path / "fresh"
    r = mailflow(cfg, "restore", str(bad), "--data-dir", str(target), check=False)
    assert r.returncode == 1 and "nothing was written" in r.stderr, r.stderr
    assert not target.exists() or list(target.iterdir()) == []
    v = mailflow(cfg, "verify", "--backup", str(bad), check=False)
    assert v.returncode == 1 and "damaged" in v.stderr
    # a manifest that does not match its files is refused too
    with tarfile.open(bk) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    forged = tmp_path / "b" / "mailflow-backup-20990101T000001Z.tar.gz"
    with tarfile.open(forged, "w:gz") as t:
        for m, content in members:
            if m.name == "data/mailflow.json":
                content = content.replace(b"c1@x.example", b"c9@x.example")
            m.size = len(content)
            import io

            t.addfile(m, io.BytesIO(content))
    r = mailflow(cfg, "restore", str(forged), "--data-dir", str(target), check=False)
    assert r.returncode == 1 and "SHA-256 does not match" in r.stderr
    assert not target.exists() or list(target.iterdir()) == []


def test_keep_mode_failures_and_refusals(tmp_path, monkeypatch):
    data = tmp_path / "data"
    with Store(data).batch() as s:
        s.add_ticket({"id": "CW202611230001", "status": "new", "customer_email": "a@x.example"})
    out = tmp_path / "backups"
    made = [backup(data, out, keep=2).path for _ in range(3)]
    assert list_backups(out) == made[1:]
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in made[1:])
    # a failed backup leaves no half file, and --keep removes nothing then
    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(backup_mod, "_write_tar", boom)
    with pytest.raises(OSError):
        backup(data, out, keep=1)
    assert list_backups(out) == made[1:] and not [p for p in out.iterdir() if p.name.startswith(".")]
    monkeypatch.undo()
    with pytest.raises(BackupError, match="inside the data directory"):
        backup(data, data / "b")
    cfg = tmp_path / "mailflow.toml"
    cfg.write_text(f'[storage]\ndata_dir = "{data}"\nbackup_dir = "{data}/backups"\n')
    r = mailflow(cfg, "backup", check=False)
    assert r.returncode == 2 and "storage.backup_dir: must not lie inside the data directory" in r.stderr
    # restore refuses a non-empty directory without --force, and a directory a daemon holds
    cfg.write_text(f'[storage]\ndata_dir = "{data}"\n')
    r = mailflow(cfg, "restore", str(made[-1]), check=False)
    assert r.returncode == 1 and "not empty" in r.stderr
    held = lock_process(data)
    try:
        r = mailflow(cfg, "restore", str(made[-1]), "--force", check=False)
        assert r.returncode == 1 and "daemon is running" in r.stderr
    finally:
        held.close()
    with Store(data).batch() as s:
        s.add_ticket({"id": "CW202611230002", "status": "new", "customer_email": "b@x.example"})
    r = mailflow(cfg, "restore", str(made[-1]), "--force")
    assert "replacing what was there" in r.stdout and "verify: ok" in r.stdout
    assert [t["id"] for t in Store(data).all_tickets()] == ["CW202611230001"]
    assert not [p for p in data.iterdir() if p.name.startswith((".restore-", ".replaced-"))]
    assert os.path.exists(data / "restored-config") is False or (data / "restored-config").is_dir()


def test_the_nightly_backup_units_pass_systemd_analyze(tmp_path):
    import shutil
    import subprocess

    from tests.integration.helpers import REPO
    from tests.integration.test_systemd import directives, installed_mailflow

    analyze = shutil.which("systemd-analyze")
    svc = (REPO / "systemd" / "mailflow-backup.service").read_text()
    timer = (REPO / "systemd" / "mailflow-backup.timer").read_text()
    d = directives(svc)
    assert d["Type"] == ["oneshot"] and d["User"] == ["mailflow"] and "--keep" in d["ExecStart"][0]
    assert "/var/lib/mailflow-backups" in d["ReadWritePaths"][0] and d["UMask"] == ["0077"]
    assert directives(timer)["Persistent"] == ["true"] and directives(timer)["OnCalendar"]
    if analyze is None:
        return
    (tmp_path / "mailflow-backup.service").write_text(svc.replace("/opt/mailflow/bin/mailflow", installed_mailflow()))
    (tmp_path / "mailflow-backup.timer").write_text(timer)
    r = subprocess.run([analyze, "verify", str(tmp_path / "mailflow-backup.service"),
                        str(tmp_path / "mailflow-backup.timer")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "mailflow-backup" not in r.stdout + r.stderr, r.stdout + r.stderr

