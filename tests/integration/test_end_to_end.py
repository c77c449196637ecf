"""Mail in, tickets out, answers back: the real CLI against a real Dovecot and a real SMTP sink."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailflow import resources
from tests.integration.helpers import (
    REPO,
    mailflow,
    make_mail,
    new_user,
    parsed,
    ticket,
    tickets,
    write_config,
)

SAMPLES = sorted(resources.samples().glob("*.eml"))
pytestmark = pytest.mark.usefixtures("backend")  # every test on TinyDB and on PostgreSQL


def test_samples_become_tickets_and_customers_get_acks(tmp_path, dovecot_server, smtp_sink):
    user = new_user(dovecot_server)
    cfg = write_config(tmp_path, dovecot_server, [user], smtp_sink)
    dovecot_server.append_many(user, [p.read_bytes() for p in SAMPLES])

    out = mailflow(cfg, "run", "--once").stdout
    assert "outbox:" in out
    ts = tickets(cfg)
    by_customer = {t["customer_email"]: t for t in ts}
    # the out-of-office opens nothing; the reply threads onto the complaint
    assert len(ts) == len(SAMPLES) - 2, [t["subject"] for t in ts]
    for t in ts:
        assert t["id"].startswith("CW") and len(t["id"]) == 14
        assert t["status"] == "new"
    complaint = next(t for t in ts if t["category"] == "complaint")
    assert complaint["message_count"] >= 2
    shown = ticket(cfg, complaint["id"])
    ins = [m for m in shown["messages"] if m["direction"] == "in"]
    assert len(ins) == 2 and all(m["text"] for m in ins)
    assert any(m["direction"] == "out" for m in shown["messages"])
    assert set(by_customer) and all("@" in e for e in by_customer)

    # one acknowledgement per ticket, in the customer's language, with the ticket id
    assert smtp_sink.wait_for(len(ts), timeout=10)
    time.sleep(0.3)
    acks = [parsed(d) for _f, rcpts, d in smtp_sink.messages if not any("support.example" in r for r in rcpts)]
    assert len(acks) == len(ts)
    ids = {t["id"] for t in ts}
    seen_ids = set()
    for m in acks:
        subj = str(m["subject"])
        tid = subj[subj.index("[") + 1: subj.index("]")]
        assert tid in ids
        seen_ids.add(tid)
        assert m["Auto-Submitted"] == "auto-replied"
        assert m["Reply-To"] and user in str(m["Reply-To"])
        assert m["In-Reply-To"]
        rcpt = str(m["To"])
        t = next(t for t in ts if t["id"] == tid)
        assert t["customer_email"] in rcpt
        body = m.get_body(("plain",)).get_content()
        assert tid in body
        if t["locale"] == "zh-Hant":  # the Big5 sample: traditional characters
            assert "工單" in body and "工单" not in body
        elif t["locale"] == "zh":
            assert "工单" in body or "您好" in body
        else:
            assert "ticket" in body.lower()
    assert seen_ids == ids
    # the out-of-office sender got nothing
    ooo = [p for p in SAMPLES if "out-of-office" in p.name][0]
    ooo_from = parsed(ooo.read_bytes())["From"].addresses[0].addr_spec.lower()
    assert all(ooo_from not in rcpts for _f, rcpts, _d in smtp_sink.messages)
    # IMAP: everything processed is flagged \Seen only after the commit
    flags = dovecot_server.messages(user)
    assert len(flags) == len(SAMPLES) and all(b"\\Seen" in f for f in flags.values())

    # a second pass does nothing new
    mailflow(cfg, "run", "--once")
    assert len(tickets(cfg)) == len(ts)
    time.sleep(0.3)
    assert len(smtp_sink.messages) == len(acks) + sum(1 for _f, r, _d in smtp_sink.messages
                                                      if any("support.example" in x for x in r))


def test_same_mail_in_two_mailboxes_makes_one_ticket(tmp_path, dovecot_server):
    a, b = new_user(dovecot_server), new_user(dovecot_server)
    cfg = write_config(tmp_path, dovecot_server, [a, b])
    raw = make_mail(1, zh=True)
    dovecot_server.append(a, b"Received: from mx1.example by a; Mon, 23 Nov 2026\r\nDelivered-To: a\r\n" + raw)
    dovecot_server.append(b, b"Received: from mx2.example by b; Mon, 23 Nov 2026\r\nDelivered-To: b\r\n" + raw)
    mailflow(cfg, "run", "--once")
    assert len(tickets(cfg)) == 1


def test_reply_threads_only_for_participants(tmp_path, dovecot_server):
    user = new_user(dovecot_server)
    cfg = write_config(tmp_path, dovecot_server, [user])
    dovecot_server.append(user, make_mail(1, sender="alice@customer.example", zh=False))
    mailflow(cfg, "run", "--once")
    [t] = tickets(cfg)
    tid = t["id"]
    reply = make_mail(2, sender="alice@customer.example", subject=f"Re: [{tid}] Question", zh=False)
    stranger = make_mail(3, sender="mallory@evil.example", subject=f"Re: [{tid}] Question", zh=False)
    dovecot_server.append_many(user, [reply, stranger])
    mailflow(cfg, "run", "--once")
    ts = tickets(cfg)
    assert len(ts) == 2
    inbound = [m for m in ticket(cfg, tid)["messages"] if m["direction"] == "in"]
    assert len(inbound) == 2
    assert any(x["customer_email"] == "mallory@evil.example" for x in ts)


def test_burst_from_one_sender_is_capped(tmp_path, dovecot_server, smtp_sink):
    user = new_user(dovecot_server)
    cfg = write_config(tmp_path, dovecot_server, [user], smtp_sink,
                       extra="")
    text = cfg.read_text().replace("[outbound]\n", "[outbound]\nmax_auto_per_hour = 3\n")
    cfg.write_text(text)
    dovecot_server.append_many(user, [make_mail(i, sender="flood@customer.example", subject=f"burst {i}")
                                      for i in range(50)])
    mailflow(cfg, "run", "--once")
    assert len(tickets(cfg)) == 50
    time.sleep(0.5)
    to_flood = [d for _f, r, d in smtp_sink.messages if "flood@customer.example" in r]
    assert len(to_flood) == 3
    capped = [t for t in tickets(cfg)]
    notes = [e for t in capped for e in ticket(cfg, t["id"])["events"] if e["kind"] == "not_sent"]
    assert len(notes) == 47


def test_auto_replies_bounces_and_spam_get_no_mail(tmp_path, dovecot_server, smtp_sink):
    user = new_user(dovecot_server)
    cfg = write_config(tmp_path, dovecot_server, [user], smtp_sink)
    dovecot_server.append(user, make_mail(1, sender="bob@customer.example", zh=False))
    mailflow(cfg, "run", "--once")
    assert smtp_sink.wait_for(1)
    [t] = tickets(cfg)
    ack = parsed(smtp_sink.messages[0][2])
    ack_id = ack["Message-ID"].strip("<>")
    bounce = (
        "From: MAILER-DAEMON@mx.customer.example\r\nTo: support@support.example\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <bounce1@mx.customer.example>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=BB\r\n\r\n"
        "--BB\r\nContent-Type: text/plain\r\n\r\nDelivery failed.\r\n"
        "--BB\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.customer.example\r\n\r\n"
        "Final-Recipient: rfc822; bob@customer.example\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        f"--BB\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <{ack_id}>\r\n"
        f"Subject: {ack['Subject']}\r\n\r\n--BB--\r\n").encode()
    ooo = make_mail(2, sender="carol@customer.example", subject="Automatic reply: away",
                    extra_headers="Auto-Submitted: auto-replied\r\n", zh=False)
    spam = make_mail(3, sender="spammer@customer.example", subject="cheap stuff",
                     extra_headers="X-Spam-Flag: YES\r\n", zh=False)
    ours = ack.as_bytes()  # our own acknowledgement coming back in (e.g. a Bcc to the support box)
    dovecot_server.append_many(user, [bounce, ooo, spam, ours])
    mailflow(cfg, "run", "--once")
    ts = tickets(cfg)
    assert len(ts) == 2  # only the spam opened a ticket (unacknowledged)
    time.sleep(0.5)
    assert len(smtp_sink.messages) == 1
    events = ticket(cfg, t["id"])["events"]
    assert any(e["kind"] == "bounce" and "bob@customer.example" in e["detail"] for e in events)
    spam_t = next(x for x in ts if x["customer_email"] == "spammer@customer.example")
    assert any(e["kind"] == "no_ack" for e in ticket(cfg, spam_t["id"])["events"])


def test_smtp_outage_loses_nothing(tmp_path, dovecot_server, smtp_sink):
    user = new_user(dovecot_server)
    cfg = write_config(tmp_path, dovecot_server, [user], smtp_sink)
    smtp_sink.stop()
    n = 12
    dovecot_server.append_many(user, [make_mail(i) for i in range(n)])
    r = mailflow(cfg, "run", "--once", check=False)
    assert r.returncode == 3, r.stderr  # documented: a server could not be reached, the rest was done
    assert f"{n} queued" in r.stdout and "smtp: not reachable" in r.stderr
    assert len(tickets(cfg)) == n
    # restart mailflow with the server back: everything queued goes out, once each
    smtp_sink.start()
    time.sleep(0.1)
    out = mailflow(cfg, "run", "--once").stdout
    assert smtp_sink.wait_for(n)
    time.sleep(0.3)
    ids = [parsed(d)["Message-ID"] for _f, _r, d in smtp_sink.messages]
    assert len(ids) == n and len(set(ids)) == n
    assert "0 queued" in out


def test_kill_9_during_backlog_loses_and_duplicates_nothing(tmp_path, dovecot_server):
    user = new_user(dovecot_server)
    cfg = write_config(tmp_path, dovecot_server, [user], batch_size=20)
    n = 400
    raws = [make_mail(i, sender=f"c{i % 40}@customer.example", subject=f"crash test {i}") for i in range(n)]
    dovecot_server.append_many(user, raws)
    rng = random.Random(7)
    kills = 0
    env = dict(os.environ, PYTHONPATH=str(REPO))
    # the first runs are killed at random points (start-up alone takes ~0.4 s, the backlog ~2 s);
    # then runs are left to finish
    for attempt in range(40):
        p = subprocess.Popen([sys.executable, "-m", "mailflow", "--config", str(cfg), "run", "--once"],
                             env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            p.wait(timeout=rng.uniform(0.3, 1.0) if attempt < 8 else 120)
            if p.returncode == 0:
                break
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
            kills += 1
    else:
        raise AssertionError("never finished")
    mailflow(cfg, "run", "--once")
    ts = tickets(cfg)
    subjects = [t["subject"] for t in ts]
    assert len(subjects) == n, f"{len(subjects)} tickets for {n} mails after {kills} kills"
    assert len(set(subjects)) == n
    assert len({t["id"] for t in ts}) == n
    assert kills >= 1


@pytest.mark.tinydb_only("the config `mailflow init` writes (TinyDB, the default)")
def test_ingest_quarantine_and_replay(tmp_path):
    data = tmp_path / "mf"
    mailflow(None, "init", str(data))
    cfg = data / "mailflow.toml"
    mailflow(cfg, "check")
    bad = tmp_path / "bad.eml"
    bad.write_bytes(b"Subject: no sender at all\r\n\r\nbody\r\n")
    good = tmp_path / "good.eml"
    good.write_bytes(make_mail(5, zh=True))
    out = mailflow(cfg, "ingest", str(bad), str(good)).stdout
    assert "1 new" in out and "1 quarantined" in out
    q = mailflow(cfg, "quarantine", "list").stdout
    assert "cannot parse" in q
    [held] = json.loads(mailflow(cfg, "quarantine", "list", "--json").stdout)
    qid = held["qid"]
    assert "no sender" in mailflow(cfg, "quarantine", "show", qid).stdout
    r = mailflow(cfg, "quarantine", "replay", qid, check=False)
    assert r.returncode == 1  # still unparseable: stays quarantined, nothing else harmed
    assert len(tickets(cfg)) == 1


@pytest.mark.tinydb_only("config validation: no store is opened")
def test_check_reports_file_key_reason(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[tickets]\nprefix = "C W"\ntimezone = "Mars/Base"\n[[mailbox]]\nname = "x"\n'
                   'tls = "sometimes"\nafter = "shred"\n')
    r = mailflow(cfg, "check", check=False)
    assert r.returncode == 1
    err = r.stderr
    assert f"{cfg}: tickets.prefix:" in err
    assert f"{cfg}: tickets.timezone:" in err
    assert f"{cfg}: mailbox[0].host: required" in err
    assert f"{cfg}: mailbox[0].tls:" in err
    assert f"{cfg}: mailbox[0].after:" in err


@pytest.mark.tinydb_only("demo runs on a throwaway TinyDB directory by design")
def test_demo_runs_on_embedded_defaults(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mailflow", "demo"], capture_output=True, text=True, cwd=tmp_path,
                       env={k: v for k, v in os.environ.items() if not k.startswith("MAILFLOW_")}
                       | {"PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    assert "CW" in r.stdout and "complaint" in r.stdout
    assert Path(tmp_path / "mailflow-data" / "mailflow.json").exists()
