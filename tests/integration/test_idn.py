"""Customers with internationalised addresses (RFC 6531, e.g. 用户@例子.中国) get a ticket and an answer
(issue 15, case 5): UTF-8 local parts go out with SMTPUTF8 when the server offers it and are a
permanent failure saying why when it does not; a Unicode domain alone goes out punycoded."""

from __future__ import annotations

import asyncio
import email
import json
from email import policy

import pytest

from mailflow.config import SmtpConfig
from mailflow.idn import envelope_address, idna_domain
from mailflow.parse import parse_message
from mailflow.render import Rendered, build_mail
from mailflow.send import OutMail, SmtpSender
from tests.integration.helpers import mailflow, new_user, ticket, tickets, write_config
from tests.support.smtp_sink import SmtpSink

IDN = "用户@例子.中国"
ASCII_LOCAL = "wang@例子.中国"
PUNY = "xn--fsqu00a.xn--fiqs8s"


def _mail(to: str, sender: str = "support@support.example") -> bytes:
    return build_mail(Rendered("[CW202611220001] 我们已收到", "您好\n", None), from_addr=sender, from_name="支持",
                      to=[to], reply_to=sender, message_id="a1@support.example", in_reply_to="x1@例子.中国",
                      references=[], auto_submitted="auto-replied")


def test_address_forms():
    assert idna_domain("例子.中国") == PUNY
    assert idna_domain("a" * 70 + ".例子") is None  # a label over 63 octets has no ASCII form
    assert envelope_address(ASCII_LOCAL) == f"wang@{PUNY}"
    assert envelope_address(IDN) == IDN  # a UTF-8 local part has no ASCII form
    assert envelope_address("a@example.com") == "a@example.com"


def test_build_mail_punycodes_a_unicode_domain_and_writes_a_utf8_local_part_as_is():
    seven_bit = _mail(ASCII_LOCAL)
    assert seven_bit.isascii()
    assert f"To: wang@{PUNY}\r\n".encode() in seven_bit
    utf8 = _mail(IDN)
    head = utf8.split(b"\r\n\r\n", 1)[0]
    assert f"To: {IDN}\r\n".encode() in head  # RFC 6532 header
    m = email.message_from_bytes(utf8, policy=policy.SMTPUTF8)
    assert str(m["To"]) == IDN and m.get_content().strip() == "您好"


@pytest.mark.parametrize("raw_from,expected", [
    ("用户 <用户@例子.中国>", IDN),
    ("=?utf-8?b?55So5oi3?= <用户@xn--fsqu00a.xn--fiqs8s>", IDN),  # punycode domain: the same customer
    ("用户@例子。中国", IDN),  # ideographic full stop
    ("Wang <WANG@例子.中国>", ASCII_LOCAL),
])
def test_parse_gives_one_form_per_address(raw_from, expected):
    raw = (f"From: {raw_from}\r\nTo: support@support.example\r\nSubject: hi\r\nMessage-ID: <x1@例子.中国>\r\n"
           "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n你好\r\n").encode()
    assert parse_message(raw).from_addr == expected


def _send(sink: SmtpSink, data: bytes, to: str) -> list:
    cfg = SmtpConfig(host=sink.host, port=sink.port, tls="none", timeout=5)

    async def go():
        async with SmtpSender(cfg, local_hostname="test.local") as s:
            return await s.send_many([OutMail("k1", "support@support.example", [to], data)])
    return asyncio.run(go())


def test_send_uses_smtputf8_when_offered():
    with SmtpSink() as sink:
        [r] = _send(sink, _mail(IDN), IDN)
        assert r.status == "sent", r
        assert sink.wait_for(1)
        _from, rcpts, data = sink.messages[0]
        assert rcpts == [IDN]
        assert f"To: {IDN}".encode() in data
        # an ASCII local part goes out punycoded, no SMTPUTF8 needed
        [r] = _send(sink, _mail(ASCII_LOCAL), ASCII_LOCAL)
        assert r.status == "sent" and sink.wait_for(2)
        assert sink.messages[1][1] == [f"wang@{PUNY}"]


def test_send_without_smtputf8_is_a_permanent_failure_that_says_why():
    with SmtpSink(smtputf8=False) as sink:
        [r] = _send(sink, _mail(IDN), IDN)
        assert r.status == "perm"
        assert "cannot be answered" in r.detail and "does not offer SMTPUTF8" in r.detail, r.detail
        # the punycoded domain still goes out through this server
        [r] = _send(sink, _mail(ASCII_LOCAL), ASCII_LOCAL)
        assert r.status == "sent", r
        assert sink.wait_for(1) and sink.messages[0][1] == [f"wang@{PUNY}"]


def _customer_mail(i: int, sender: str) -> bytes:
    return (f"From: 用户{i} <{sender}>\r\nTo: support@support.example\r\nSubject: 订单{i}没有收到\r\n"
            f"Message-ID: <idn{i}@customer.example>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0800\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            f"您好，我的订单{i}一直没有收到，请尽快处理。\r\n").encode()


def test_idn_customer_gets_a_ticket_and_an_ack(tmp_path, dovecot_server, smtp_sink):
    user = new_user(dovecot_server)
    cfg = write_config(tmp_path, dovecot_server, [user], smtp_sink)
    dovecot_server.append(user, _customer_mail(1, IDN))
    dovecot_server.append(user, _customer_mail(2, ASCII_LOCAL))
    mailflow(cfg, "run", "--once")
    ts = {t["customer_email"]: t for t in tickets(cfg)}
    assert set(ts) == {IDN, ASCII_LOCAL}, ts
    assert json.loads(mailflow(cfg, "quarantine", "list", "--json", check=False).stdout or "[]") == []
    assert smtp_sink.wait_for(2)
    rcpts = sorted(r for _f, rs, _d in smtp_sink.messages for r in rs)
    assert rcpts == sorted([IDN, f"wang@{PUNY}"])


def test_idn_customer_without_smtputf8_gets_a_ticket_and_the_failure_is_recorded(tmp_path, dovecot_server):
    with SmtpSink(smtputf8=False) as sink:
        user = new_user(dovecot_server)
        cfg = write_config(tmp_path, dovecot_server, [user], sink)
        dovecot_server.append(user, _customer_mail(3, IDN))
        mailflow(cfg, "run", "--once")
        [t] = tickets(cfg)
        assert t["customer_email"] == IDN
        shown = ticket(cfg, t["id"])
        failures = [e for e in shown["events"] if "SMTPUTF8" in json.dumps(e, ensure_ascii=False)]
        assert failures, shown["events"]
        failed = json.loads(mailflow(cfg, "outbox", "list", "--status", "failed", "--json").stdout)
        assert len(failed) == 1 and "does not offer SMTPUTF8" in json.dumps(failed, ensure_ascii=False)
        assert sink.messages == []
