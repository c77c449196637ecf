"""A small scenario kit for lifecycle tests over the real Dovecot and the aiosmtpd sink: customers
write, staff reply to the notifications they received, `mailflow run --once --now ...` runs a pass,
and the sink tells what went out to whom."""

from __future__ import annotations

import itertools
import time
import zlib
from email.header import Header
from pathlib import Path

from tests.integration.helpers import mailflow, new_user, parsed, ticket, tickets, write_config

STAFF = '''
[[staff]]
email = "alice@support.example"
name = "Alice"
teams = ["tech", "customer_service", "service_supervisor", "product"]
role = "lead"

[[staff]]
email = "bob@support.example"
name = "Bob"
teams = ["tech", "customer_service", "service_supervisor", "product"]
role = "agent"

[[staff]]
email = "mia@support.example"
name = "Mia"
teams = []
role = "manager"
'''

_seq = itertools.count(1)


class Scenario:
    def __init__(self, tmp: Path, dovecot, sink, extra: str = ""):
        self.dv, self.sink = dovecot, sink
        self.user = new_user(dovecot)
        self.cfg = write_config(tmp, dovecot, [self.user], sink, staff=STAFF,
                                extra='[routing]\nstrategy = "round_robin"\n' + extra)
        self.now = "2026-11-23T10:00+08:00"
        self.seen = 0  # sink messages already looked at

    # ---- driving it ---------------------------------------------------------------------------

    def run(self, now: str | None = None, check: bool = True):
        self.now = now or self.now
        r = mailflow(self.cfg, "--now", self.now, "run", "--once", check=check)
        time.sleep(0.2)  # the sink thread records what it accepted
        return r

    def customer(self, sender: str, subject: str, body: str, in_reply_to: str | None = None,
                 extra_headers: str = "", message_id: str | None = None) -> bytes:
        mid = message_id or f"c{next(_seq)}.{zlib.crc32(body.encode())}@customer.example"
        refs = f"In-Reply-To: <{in_reply_to}>\r\nReferences: <{in_reply_to}>\r\n" if in_reply_to else ""
        raw = (f"From: Customer <{sender}>\r\nTo: {self.user}@support.example\r\n"
               f"Subject: {Header(subject, 'utf-8').encode()}\r\nMessage-ID: <{mid}>\r\n{refs}{extra_headers}"
               "Date: Mon, 23 Nov 2026 10:00:00 +0800\r\nMIME-Version: 1.0\r\n"
               "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
               f"{body}\r\n").encode()
        self.dv.append(self.user, raw)
        return raw

    def staff(self, notification, commands: str, body: str, sender: str | None = None,
              message_id: str | None = None) -> bytes:
        """A staff member's client answering one of our notifications: "Re: " + its subject + commands."""
        to = sender or _addr(notification["To"])
        mid = notification["Message-ID"]
        subject = Header(f"Re: {notification['Subject']} {commands}", "utf-8").encode()
        raw = (f"From: Staff <{to}>\r\nTo: {self.user}@support.example\r\nSubject: {subject}\r\n"
               f"Message-ID: <{message_id or f'staff{next(_seq)}.{time.time_ns()}@support.example'}>\r\n"
               f"In-Reply-To: {mid}\r\nReferences: {mid}\r\nDate: Mon, 23 Nov 2026 12:00:00 +0800\r\n"
               "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
               "Content-Transfer-Encoding: 8bit\r\n\r\n"
               f"{body}\r\n\r\n> quoted notification text\r\n").encode()
        self.dv.append(self.user, raw)
        return raw

    # ---- looking at it ------------------------------------------------------------------------

    def tickets(self) -> list[dict]:
        return tickets(self.cfg)

    def ticket(self, tid: str) -> dict:
        return ticket(self.cfg, tid)

    def mails(self, to: str | None = None, new: bool = True) -> list:
        """Mail the sink accepted (since the last call with new=True), optionally to one address."""
        msgs = self.sink.messages[self.seen:] if new else self.sink.messages
        if new:
            self.seen = len(self.sink.messages)
        return [parsed(d) for _f, rcpts, d in msgs if to is None or to in rcpts]

    def latest_all(self) -> list:
        """Every mail the sink accepted so far, parsed."""
        return [parsed(d) for _f, _r, d in self.sink.messages]

    def latest(self, to: str, template: str | None = None):
        """The newest mail to `to` so far (optionally of one template: X-Mailflow-Template)."""
        got = [parsed(d) for _f, r, d in self.sink.messages if to in r]
        assert got, f"no mail to {to}"
        return got[-1]


def body(m) -> str:
    return m.get_body(("plain",)).get_content()


def _addr(v) -> str:
    s = str(v)
    return s[s.index("<") + 1:s.index(">")] if "<" in s else s.strip()
