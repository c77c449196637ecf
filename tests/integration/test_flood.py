"""The flood cap stops loops, not customers: a backlog of one customer's requests written over a day
gets one acknowledgement per request however it arrives, while a mail loop (the same subject or text
again and again from one address) is stopped within a handful of mails."""

from __future__ import annotations

import time
import zlib
from datetime import UTC, datetime, timedelta
from email.header import Header
from email.utils import format_datetime

import pytest

from tests.integration.helpers import mailflow, new_user, tickets, write_config

pytestmark = pytest.mark.usefixtures("backend")  # every test on TinyDB and on PostgreSQL


def _mail(i: int, sender: str, subject: str, body: str, date: str) -> bytes:
    return (f"From: <{sender}>\r\nTo: support@support.example\r\nSubject: {Header(subject, 'utf-8').encode()}\r\n"
            f"Message-ID: <f{i}.{zlib.crc32(body.encode())}@customer.example>\r\nDate: {date}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            f"{body}\r\n").encode()


def test_a_backlog_of_one_customers_requests_gets_every_acknowledgement(tmp_path, dovecot_server, smtp_sink):
    user = new_user(dovecot_server)
    cfg = write_config(tmp_path, dovecot_server, [user], smtp_sink)
    topics = ["订单1001未发货", "发票抬头错误", "退款进度查询", "App 登录报错", "地址修改", "优惠券无法使用",
              "商品破损", "客服电话打不通"]
    start = datetime.now(UTC) - timedelta(hours=12)
    raws = [_mail(i, "busy@customer.example", t, f"{t}，请帮忙处理（{i}）。",
                  format_datetime(start + timedelta(minutes=i * 95))) for i, t in enumerate(topics)]
    dovecot_server.append_many(user, raws)  # written over eleven hours, arriving in one minute
    mailflow(cfg, "run", "--once")
    assert len(tickets(cfg)) == 8
    time.sleep(0.5)
    acks = [d for _f, r, d in smtp_sink.messages if "busy@customer.example" in r]
    assert len(acks) == 8


def test_a_mail_loop_is_stopped(tmp_path, dovecot_server, smtp_sink):
    user = new_user(dovecot_server)
    cfg = write_config(tmp_path, dovecot_server, [user], smtp_sink)
    # a broken autoresponder: no Auto-Submitted, no references, the same text every time
    raws = [_mail(100 + i, "bot@partner.example", "Your message was received", "Thank you for your mail.",
                  "Mon, 23 Nov 2026 10:00:00 +0800") for i in range(20)]
    dovecot_server.append_many(user, raws)
    mailflow(cfg, "run", "--once")
    time.sleep(0.5)
    to_bot = [d for _f, r, d in smtp_sink.messages if "bot@partner.example" in r]
    assert len(to_bot) == 2  # stopped at the second repeat
    shown = [t for t in tickets(cfg) if t["customer_email"] == "bot@partner.example"]
    assert len(shown) == 20  # recorded, all of it, but not answered
