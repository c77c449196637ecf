"""Helpers for end-to-end tests: write a config for the fixtures, run the real `mailflow` CLI."""

from __future__ import annotations

import email
import itertools
import json
import os
import subprocess
import sys
import zlib
from email import policy
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_users = itertools.count(1)
# set by the `backend` fixture (tests/conftest.py) for a postgresql run: write_config points
# [storage] at this fresh database
PG_DSN: str | None = None


def storage_lines() -> str:
    """The [storage] keys that pick the backend under test (nothing for TinyDB)."""
    return f'backend = "postgresql"\ndsn = "{PG_DSN}"\n' if PG_DSN else ""


def new_user(dovecot, prefix: str = "u") -> str:
    """A fresh IMAP user per test on the shared Dovecot server, so tests never see each other's mail."""
    user = f"{prefix}{next(_users)}x{os.getpid()}"
    dovecot.add_user(user, "secret")
    return user


def write_config(tmp: Path, dovecot=None, users: list[str] = (), smtp=None, extra: str = "",
                 staff: str = "", batch_size: int = 100) -> Path:
    parts = [f'[storage]\ndata_dir = "{tmp / "data"}"\n{storage_lines()}', '[company]\nname = "Test Co."\n',
             '[outbound]\nbackoff_initial = 0.01\nbackoff_max = 0.05\n']
    for u in users:
        parts.append(f'''[[mailbox]]
name = "{u}"
host = "127.0.0.1"
port = {dovecot.port}
tls = "none"
user = "{u}"
password = "secret"
address = "{u}@support.example"
after = "seen"
batch_size = {batch_size}
timeout = 10
''')
    if smtp is not None:
        parts.append(f'[smtp]\nhost = "127.0.0.1"\nport = {smtp.port}\ntls = "none"\ntimeout = 5\n')
    parts.append(staff)
    parts.append(extra)
    p = tmp / "mailflow.toml"
    # [outbound] may be extended by `extra`; merge duplicate tables by simple concatenation rules
    text = "\n".join(parts)
    p.write_text(text, encoding="utf-8")
    return p


def mailflow(cfg: Path | None, *args: str, check: bool = True, timeout: float = 120,
             env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mailflow"]
    if cfg is not None:
        cmd += ["--config", str(cfg)]
    e = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    r = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, env=e, cwd=REPO)
    if check and r.returncode != 0:
        raise AssertionError(f"mailflow {' '.join(args)} exited {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def tickets(cfg: Path) -> list[dict]:
    return json.loads(mailflow(cfg, "tickets", "list", "--json").stdout)


def ticket(cfg: Path, tid: str) -> dict:
    return json.loads(mailflow(cfg, "tickets", "show", tid, "--json").stdout)


def parsed(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=policy.default)


def make_mail(i: int, sender: str | None = None, subject: str | None = None, body: str | None = None,
              extra_headers: str = "", zh: bool | None = None) -> bytes:
    zh = (i % 2 == 0) if zh is None else zh
    sender = sender or f"cust{i}@customer.example"
    if subject is None:
        subject = f"订单{i}的退款问题" if zh else f"Question about order {i}"
    if body is None:
        body = (f"您好，我的订单{i}一直没有收到退款，请尽快处理。" if zh
                else f"Hello, my order {i} has not arrived yet. Can you check please?")
    from email.header import Header
    return (f"From: Customer {i} <{sender}>\r\nTo: support@support.example\r\n"
            f"Subject: {Header(subject, 'utf-8').encode()}\r\n"
            f"Message-ID: <m{i}.{zlib.crc32(subject.encode())}@customer.example>\r\n"
            f"Date: Mon, 23 Nov 2026 10:00:00 +0800\r\nMIME-Version: 1.0\r\n{extra_headers}"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            f"{body}\r\n").encode()


def attachment_mail() -> bytes:
    """A customer's mail with one PDF attachment (att@customer.example, "invoice")."""
    import base64

    att = base64.encodebytes(b"%PDF-1.4 invoice").decode()
    return ("From: A <att@customer.example>\r\nTo: support@support.example\r\nSubject: invoice\r\n"
            "Message-ID: <att1@customer.example>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0800\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
            "--B\r\nContent-Type: application/pdf; name=inv.pdf\r\nContent-Disposition: attachment; filename=inv.pdf\r\n"
            f"Content-Transfer-Encoding: base64\r\n\r\n{att}--B--\r\n").encode()
