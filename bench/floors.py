"""Two floors for the backlog figure: what the same job costs without mailflow's ticket logic.

- `io`: the I/O floor. One imapclient connection fetches every message of the folder with
  BODY.PEEK[] in batches of 100; one aiosmtplib connection then sends prebuilt acknowledgements
  (built before the clock starts), one per message that gets a ticket.
- `naive`: the same I/O, plus parsing each fetched message with
  `email.message_from_bytes(policy=policy.default)` and building each acknowledgement as an
  `EmailMessage` (9 headers + `set_content`), sent with `send_message`. Which messages get one is
  read from the headers (no In-Reply-To, no Auto-Submitted, not from MAILER-DAEMON): that gives
  exactly the corpus's new messages, with no ticket logic.

Both run in their own process (the runner starts `python -m bench.floors ...`) so that the SMTP sink,
which lives in the runner, never shares a GIL with them; the clock runs from before the IMAP
connect to after the last SMTP reply and excludes interpreter start-up and imports. Prints one JSON
object: {"mode", "seconds", "fetch_seconds", "fetched", "sent", ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import json
import sys
import time
from email import policy
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import aiosmtplib
from imapclient import IMAPClient

BATCH = 100
SUPPORT = "Support <support@support.example>"
SUPPORT_ADDR = "support@support.example"

ACK_ZH = """{name}您好：

我们已经收到您的来信，工单编号为 {tid}，优先级：普通。
我们会在 24 小时内答复您。回复本邮件即可补充信息，请保留主题中的工单编号。

您的问题：{subject}

此邮件由系统自动发送。
Example Co. 客户服务中心
"""
ACK_EN = """Hello {name},

We have received your message. Your ticket number is {tid}, priority: normal.
You can expect an answer within 24 hours. Reply to this mail to add information, and please keep
the ticket number in the subject.

Your request: {subject}

This mail was sent automatically.
Example Co. Customer Service
"""


def _is_cjk(s: str) -> bool:
    return any("\u4e00" <= c <= "\u9fff" for c in s)


def wants_ack(msg: email.message.Message) -> bool:
    """New request (not a reply, an auto-reply or a bounce), decided from headers alone."""
    if msg.get("In-Reply-To") or msg.get("Auto-Submitted"):
        return False
    return "mailer-daemon" not in str(msg.get("From", "")).lower()


def build_ack(msg: email.message.Message, serial: int) -> EmailMessage:
    """An acknowledgement the way a naive pipeline builds one: an EmailMessage, header by header."""
    subject = str(msg.get("Subject", ""))
    frm = msg["From"]
    name = frm.addresses[0].display_name if getattr(frm, "addresses", None) else ""
    tid = f"BN2026112{serial:05d}"
    ack = EmailMessage()
    ack["From"] = SUPPORT
    ack["To"] = str(frm)
    ack["Subject"] = f"[{tid}] " + ("我们已收到您的问题：" if _is_cjk(subject) else "We have received your request: ") \
        + subject
    ack["Date"] = formatdate(localtime=True)
    ack["Message-ID"] = make_msgid(domain="support.example")
    ack["In-Reply-To"] = str(msg.get("Message-ID", ""))
    ack["References"] = str(msg.get("Message-ID", ""))
    ack["Reply-To"] = SUPPORT
    ack["Auto-Submitted"] = "auto-replied"
    ack.set_content((ACK_ZH if _is_cjk(subject) else ACK_EN).format(name=name or "", tid=tid, subject=subject))
    return ack


def prebuilt_acks(n: int, seed: int) -> list[tuple[str, bytes]]:
    """(recipient, bytes) for every new message of the corpus: the I/O floor's ready-made mail."""
    from bench.corpus import build

    out = []
    for i, m in enumerate(x for x in build(n, seed) if x.kind == "new"):
        msg = email.message_from_bytes(m.raw, policy=policy.default)
        out.append((m.sender, build_ack(msg, i).as_bytes()))
    return out


def _fetch(host: str, port: int, user: str, password: str, folder: str, batch: int):
    """Yield lists of raw messages, `batch` per FETCH, over one connection."""
    c = IMAPClient(host, port, ssl=False, timeout=60)
    try:
        c.login(user, password)
        c.select_folder(folder, readonly=True)
        uids = sorted(c.search(["ALL"]))
        for i in range(0, len(uids), batch):
            chunk = uids[i:i + batch]
            resp = c.fetch(chunk, ["BODY.PEEK[]"])
            yield [resp[u][b"BODY[]"] for u in chunk if u in resp]
    finally:
        c.logout()


async def _smtp(host: str, port: int) -> aiosmtplib.SMTP:
    s = aiosmtplib.SMTP(hostname=host, port=port, use_tls=False, start_tls=False, timeout=60)
    await s.connect()
    return s


async def io_floor(a: argparse.Namespace) -> dict:
    acks = prebuilt_acks(a.n, a.seed)  # before the clock
    t0 = time.perf_counter()
    fetched = 0
    for raws in _fetch(a.host, a.port, a.user, a.password, a.folder, a.batch):
        fetched += len(raws)
    t1 = time.perf_counter()
    s = await _smtp(a.smtp_host, a.smtp_port)
    for rcpt, data in acks:
        await s.sendmail(SUPPORT_ADDR, [rcpt], data)
    await s.quit()
    t2 = time.perf_counter()
    return {"mode": "io", "seconds": t2 - t0, "fetch_seconds": t1 - t0, "send_seconds": t2 - t1,
            "fetched": fetched, "sent": len(acks)}


async def naive(a: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    s = await _smtp(a.smtp_host, a.smtp_port)
    fetched = sent = 0
    fetch_s = parse_s = build_s = send_s = 0.0
    tf = time.perf_counter()
    for raws in _fetch(a.host, a.port, a.user, a.password, a.folder, a.batch):
        t = time.perf_counter()
        fetch_s += t - tf
        fetched += len(raws)
        for raw in raws:
            t = time.perf_counter()
            msg = email.message_from_bytes(raw, policy=policy.default)
            t2 = time.perf_counter()
            parse_s += t2 - t
            if not wants_ack(msg):
                continue
            ack = build_ack(msg, sent)
            t3 = time.perf_counter()
            build_s += t3 - t2
            await s.send_message(ack)  # serialises (as_bytes) and sends
            send_s += time.perf_counter() - t3
            sent += 1
        tf = time.perf_counter()
    await s.quit()
    t_end = time.perf_counter()
    return {"mode": "naive", "seconds": t_end - t0, "fetch_seconds": fetch_s, "parse_seconds": parse_s,
            "build_seconds": build_s, "send_seconds": send_s, "fetched": fetched, "sent": sent}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="I/O floor and naive pipeline for the mailflow benchmark.")
    ap.add_argument("mode", choices=["io", "naive"])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", default="secret")
    ap.add_argument("--folder", default="INBOX")
    ap.add_argument("--smtp-host", default="127.0.0.1")
    ap.add_argument("--smtp-port", type=int, required=True)
    ap.add_argument("--n", type=int, required=True, help="corpus size (for the prebuilt acknowledgements)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch", type=int, default=BATCH)
    a = ap.parse_args(argv)
    res = asyncio.run(io_floor(a) if a.mode == "io" else naive(a))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
