"""The whole loop over real servers: new mail -> ack + staff notification -> staff [RESOLVE] reply ->
customer gets the resolution and rates it -> closed; forged staff mail changes nothing."""

from __future__ import annotations

import time

import pytest

from tests.integration.helpers import mailflow, make_mail, new_user, parsed, ticket, tickets, write_config

pytestmark = pytest.mark.usefixtures("backend")  # every test on TinyDB and on PostgreSQL

STAFF = '''
[[staff]]
email = "alice@support.example"
name = "Alice"
teams = ["tech", "customer_service", "service_supervisor", "product"]
role = "lead"
'''


def _mail_to(sink, addr):
    return [parsed(d) for _f, r, d in sink.messages if addr in r]


def _staff_reply(notify, tid, subject_cmds, body, sender="alice@support.example"):
    """What a mail client sends: "Re: " + the notification's own subject, commands added."""
    from email.header import Header

    mid = notify["Message-ID"]
    subject = Header(f"Re: {notify['Subject']} {subject_cmds}", "utf-8").encode()
    assert tid in str(notify["Subject"])
    return (f"From: Alice <{sender}>\r\nTo: support@support.example\r\n"
            f"Subject: {subject}\r\nMessage-ID: <staff{time.time_ns()}@support.example>\r\n"
            f"In-Reply-To: {mid}\r\nReferences: {mid}\r\nDate: Mon, 23 Nov 2026 12:00:00 +0800\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            f"{body}\r\n\r\n> quoted notification text\r\n").encode()


def test_resolve_rate_close(tmp_path, dovecot_server, smtp_sink):
    user = new_user(dovecot_server)
    cfg = write_config(tmp_path, dovecot_server, [user], smtp_sink, staff=STAFF)
    dovecot_server.append(user, make_mail(1, sender="wang@customer.example", zh=True,
                                          subject="投诉：退款两周还没到账", body="我的退款两周了还没到账，非常不满意！"))
    mailflow(cfg, "run", "--once")
    [t] = tickets(cfg)
    tid = t["id"]
    assert smtp_sink.wait_for(2)
    [notify] = _mail_to(smtp_sink, "alice@support.example")
    assert tid in str(notify["Subject"]) and notify["Auto-Submitted"] == "auto-generated"

    dovecot_server.append(user, _staff_reply(notify, tid, "[RESOLVE]", "已为您重新发起退款，预计1个工作日内到账。"))
    mailflow(cfg, "run", "--once")
    assert smtp_sink.wait_for(3)
    time.sleep(0.2)
    to_customer = _mail_to(smtp_sink, "wang@customer.example")
    assert len(to_customer) == 2
    resolved = to_customer[-1]
    body = resolved.get_body(("plain",)).get_content()
    assert "已为您重新发起退款" in body and "quoted notification" not in body
    assert tid in str(resolved["Subject"])
    assert ticket(cfg, tid)["status"] == "resolved"

    reply = make_mail(2, sender="wang@customer.example", subject=f"回复: [{tid}] 已解决", body="5", zh=True)
    dovecot_server.append(user, reply)
    mailflow(cfg, "run", "--once")
    shown = ticket(cfg, tid)
    assert shown["status"] == "closed" and shown["rating"] == 5


def test_forged_and_bad_commands_change_nothing(tmp_path, dovecot_server, smtp_sink):
    user = new_user(dovecot_server)
    cfg = write_config(tmp_path, dovecot_server, [user], smtp_sink, staff=STAFF)
    dovecot_server.append(user, make_mail(1, sender="li@customer.example", zh=False,
                                          subject="Cannot export invoices", body="The export button fails."))
    mailflow(cfg, "run", "--once")
    [t] = tickets(cfg)
    tid = t["id"]
    assert smtp_sink.wait_for(2)
    [notify] = _mail_to(smtp_sink, "alice@support.example")
    n_before = len(smtp_sink.messages)

    # forged: right From, but no signed reference and no trusted authentication -> ignored
    forged = (f"From: Alice <alice@support.example>\r\nTo: support@support.example\r\n"
              f"Subject: Re: [{tid}] [CLOSE]\r\nMessage-ID: <forged1@evil.example>\r\n"
              "Date: Mon, 23 Nov 2026 12:00:00 +0800\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
              "closing this, bye\r\n").encode()
    # a typo'd command from the real staff member -> error reply to her, ticket unchanged
    typo = _staff_reply(notify, tid, "[RESOLV]", "Fixed it.")
    dovecot_server.append_many(user, [forged, typo])
    mailflow(cfg, "run", "--once")
    time.sleep(0.3)
    shown = ticket(cfg, tid)
    assert shown["status"] == "new"
    assert len(tickets(cfg)) == 1
    assert any(e["kind"] == "unauthenticated" for e in shown["events"])
    new_mail = smtp_sink.messages[n_before:]
    assert len(new_mail) == 1
    err = parsed(new_mail[0][2])
    assert "alice@support.example" in str(err["To"]) and "RESOLV" in err.get_body(("plain",)).get_content()

    # a note stays internal; priority and assignment take effect
    dovecot_server.append(user, _staff_reply(notify, tid, "[NOTE] [PRIORITY urgent] [TAG vip]", "internal only"))
    mailflow(cfg, "run", "--once")
    time.sleep(0.3)
    shown = ticket(cfg, tid)
    assert shown["priority"] == "urgent" and "vip" in shown["tags"]
    assert not [m for m in smtp_sink.messages[n_before + 1:] if "li@customer.example" in m[1]]
