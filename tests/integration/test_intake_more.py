"""More of the intake and outbound contract: mbox/Maildir ingest, UIDVALIDITY resync, attachment cap,
permanent SMTP failures, DMARC backscatter protection, broken templates."""

from __future__ import annotations

import json
import mailbox
import time

import pytest

from mailflow import config
from mailflow.store import iso, utcnow
from mailflow.storeapi import open_store
from tests.integration.helpers import mailflow, make_mail, new_user, ticket, tickets, write_config


def test_ingest_mbox_and_maildir(tmp_path):
    mbox_path = tmp_path / "old.mbox"
    mb = mailbox.mbox(str(mbox_path))
    for i in range(3):
        mb.add(make_mail(i))
    mb.flush()
    md = mailbox.Maildir(str(tmp_path / "Maildir"), create=True)
    for i in range(3, 5):
        md.add(make_mail(i))
    env = {"MAILFLOW_DATA_DIR": str(tmp_path / "d")}
    out = mailflow(None, "ingest", str(mbox_path), str(tmp_path / "Maildir"), env=env).stdout
    assert "5 new" in out
    # ingesting the same files again creates nothing (idempotent intake)
    out = mailflow(None, "ingest", str(mbox_path), str(tmp_path / "Maildir"), env=env).stdout
    assert "5 duplicate" in out
    assert len(tickets_env(env)) == 5


def tickets_env(env):
    import json
    return json.loads(mailflow(None, "tickets", "list", "--json", env=env).stdout)


@pytest.mark.usefixtures("backend")
def test_uidvalidity_change_resyncs_without_duplicates(tmp_path, dovecot_server):
    user = new_user(dovecot_server)
    cfg = write_config(tmp_path, dovecot_server, [user])
    dovecot_server.append_many(user, [make_mail(i) for i in range(60)])
    mailflow(cfg, "run", "--once")
    assert len(tickets(cfg)) == 60
    store = open_store(config.load(str(cfg)))
    with store.batch():  # as if the server had renumbered the folder
        store.set_checkpoint(user, uidvalidity=1, last_uid=999)
    dovecot_server.append(user, make_mail(99))
    r = mailflow(cfg, "run", "--once")
    # the newest 50 processed mails are found by Message-ID: only they are read again (and skipped)
    assert "UIDVALIDITY changed" in r.stderr and "resuming after new UID 10" in r.stderr
    assert f"{user}: 51 fetched, 1 new tickets" in r.stdout
    assert len(tickets(cfg)) == 61


def test_attachment_cap(tmp_path):
    data = tmp_path / "mf"
    mailflow(None, "init", str(data))
    cfg = data / "mailflow.toml"
    cfg.write_text(cfg.read_text().replace("max_bytes = 10485760", "max_bytes = 1000"))
    raw = (b"From: a@customer.example\r\nTo: s@support.example\r\nSubject: files\r\nMessage-ID: <att@x>\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\n"
           b"Content-Type: text/plain\r\n\r\nsee attached\r\n--XX\r\nContent-Type: text/plain; name=small.txt\r\n"
           b"Content-Disposition: attachment; filename=small.txt\r\n\r\nsmall\r\n--XX\r\n"
           b"Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=big.bin\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\n" + (b"QUFB" * 19 + b"\r\n") * 40 + b"--XX--\r\n")
    f = tmp_path / "a.eml"
    f.write_bytes(raw)
    mailflow(cfg, "ingest", str(f))
    [t] = tickets(cfg)
    [m] = [m for m in ticket(cfg, t["id"])["messages"] if m["direction"] == "in"]
    atts = {a["filename"]: a for a in m["attachments"]}
    assert atts["small.txt"]["path"] and (data / "data" / atts["small.txt"]["path"]).read_bytes().strip() == b"small"
    assert atts["big.bin"]["path"] is None and "cap" in atts["big.bin"]["skipped"]


@pytest.mark.usefixtures("backend")
def test_permanent_failure_is_recorded_on_the_ticket(tmp_path, dovecot_server, smtp_sink):
    user = new_user(dovecot_server)
    cfg = write_config(tmp_path, dovecot_server, [user], smtp_sink)
    smtp_sink.refuse_rcpt["gone@customer.example"] = 550
    dovecot_server.append_many(user, [make_mail(1, sender="gone@customer.example"), make_mail(2)])
    out = mailflow(cfg, "run", "--once").stdout
    assert "1 sent" in out and "1 failed" in out
    t = next(t for t in tickets(cfg) if t["customer_email"] == "gone@customer.example")
    assert any(e["kind"] == "send_failed" and "550" in e["detail"] for e in ticket(cfg, t["id"])["events"])
    failed = mailflow(cfg, "outbox", "list", "--status", "failed").stdout
    assert t["id"] in failed
    [row] = [r["row"] for r in json.loads(mailflow(cfg, "outbox", "list", "--status", "failed", "--json").stdout)]
    mailflow(cfg, "outbox", "retry", row)
    smtp_sink.refuse_rcpt.clear()
    out = mailflow(cfg, "run", "--once").stdout
    assert "1 sent" in out and "0 queued" in out


@pytest.mark.usefixtures("backend")
def test_dmarc_fail_at_trusted_server_gets_no_ack(tmp_path, dovecot_server, smtp_sink):
    user = new_user(dovecot_server)
    cfg = write_config(tmp_path, dovecot_server, [user], smtp_sink)
    cfg.write_text(cfg.read_text().replace("[outbound]\n", '[outbound]\ntrusted_authserv_ids = ["mx.support.example"]\n'))
    forged = make_mail(1, sender="ceo@bank.example", extra_headers=(
        "Authentication-Results: mx.support.example; dmarc=fail (p=reject) header.from=bank.example\r\n"))
    untrusted = make_mail(2, sender="x@bank.example", extra_headers=(
        "Authentication-Results: evil.example; dmarc=fail header.from=bank.example\r\n"))
    dovecot_server.append_many(user, [forged, untrusted])
    mailflow(cfg, "run", "--once")
    time.sleep(0.3)
    assert len(tickets(cfg)) == 2
    rcpts = [r for _f, rs, _d in smtp_sink.messages for r in rs]
    assert rcpts == ["x@bank.example"]


def test_broken_template_keeps_daemon_from_starting(tmp_path):
    mailflow(None, "init", str(tmp_path / "mf"))
    cfg = tmp_path / "mf" / "mailflow.toml"
    (tmp_path / "mf" / "templates" / "en" / "ack.txt.j2").write_text("Hello {{ ticket.id }\n")
    r = mailflow(cfg, "check", check=False)
    assert r.returncode == 1 and "en/ack.txt.j2:1:" in r.stderr
    r = mailflow(cfg, "run", check=False, timeout=30)
    assert r.returncode != 0 and "ack.txt.j2:1" in r.stderr


@pytest.mark.usefixtures("backend")
def test_spam_reply_does_not_reopen_and_gets_nothing(tmp_path, dovecot_server, smtp_sink):
    user = new_user(dovecot_server)
    cfg = write_config(tmp_path, dovecot_server, [user], smtp_sink)
    dovecot_server.append(user, make_mail(1, sender="eve@customer.example", zh=False))
    mailflow(cfg, "run", "--once")
    [t] = tickets(cfg)
    store = open_store(config.load(str(cfg)))
    with store.batch():
        store.update_ticket(t["id"], {"status": "closed", "closed_at": iso(utcnow())})
    n = len(smtp_sink.messages)
    spam = make_mail(2, sender="eve@customer.example", subject=f"Re: [{t['id']}] buy now", zh=False,
                     extra_headers="X-Spam-Flag: YES\r\n")
    dovecot_server.append(user, spam)
    mailflow(cfg, "run", "--once")
    time.sleep(0.3)
    shown = ticket(cfg, t["id"])
    assert shown["status"] == "closed" and len(smtp_sink.messages) == n
    assert any(e["kind"] == "ignored" for e in shown["events"])


def test_corrupt_database_is_a_clear_error(tmp_path):
    env = {"MAILFLOW_DATA_DIR": str(tmp_path / "d")}
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "mailflow.json").write_text('{"tickets": {"1": ')
    r = mailflow(None, "tickets", "list", env=env, check=False)
    assert r.returncode == 1 and "not valid JSON" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.usefixtures("backend")
def test_a_backlog_is_committed_in_batches_the_store_can_hold(tmp_path, dovecot_server, smtp_sink, monkeypatch):
    """A 130-mail backlog: TinyDB takes it in batches of `batch_size` (its commit log pays for
    every commit); PostgreSQL in batches of at most PgStore.max_batch (60: each mail's savepoint
    is a subtransaction, and past 64 in one transaction PostgreSQL's snapshots overflow). Every
    mail becomes one ticket either way."""
    from mailflow.mailboxes import MailboxWorker
    from mailflow.pipeline import Pipeline
    from mailflow.runtime import Runtime

    user = new_user(dovecot_server)
    cfg = config.load(str(write_config(tmp_path, dovecot_server, [user], smtp_sink)))
    dovecot_server.append_many(user, [make_mail(i, sender=f"b{i}@customer.example") for i in range(130)])
    rt = Runtime.load(cfg)
    sizes: list[int] = []
    real = Pipeline.process

    def counted(self, items, *a, **kw):
        sizes.append(len(items))
        return real(self, items, *a, **kw)

    monkeypatch.setattr(Pipeline, "process", counted)
    stats = MailboxWorker(cfg.mailboxes[0], rt.pipeline, None).poll()
    cap = rt.store.max_batch or cfg.mailboxes[0].batch_size
    assert sum(sizes) == 130 and max(sizes) <= cap and stats.new == 130, sizes
    assert len(sizes) == -(-130 // cap)
    assert sum(rt.store.ticket_counts().values()) == 130
    rt.store.close()
