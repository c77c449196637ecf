"""`mailflow privacy export|erase` over a real pipeline (Dovecot + aiosmtpd): the export holds
everything about the customer; after the erase the address and the customer's words are in no
file under the data directory (compressed ones included), other customers' mail in the same
segments is kept, the counts reports rely on are unchanged, and verify is clean."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from mailflow import config as config_mod
from mailflow.privacy import file_mentions
from mailflow.spool import Spool
from mailflow.store import Store
from mailflow.storeapi import open_store
from tests.integration import helpers
from tests.integration.helpers import mailflow
from tests.integration.lifecycle_kit import Scenario

TARGET = "lin.xiaoyu@customer.example"
WORDS = "紫罗兰仓库XQ7"
OTHER = "zhao.lei@customer.example"
ALICE = "alice@support.example"


def _with_attachments(sc: Scenario, sender: str, subject: str, text: str) -> None:
    gz = gzip.compress(f"order log for {TARGET}\n".encode())
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("note.txt", f"联系人 {TARGET} {WORDS}")
    parts = [("text/plain; charset=utf-8", "8bit", text.encode()),
             ("application/gzip; name=log.gz", "base64", base64.encodebytes(gz)),
             ("application/zip; name=note.zip", "base64", base64.encodebytes(zbuf.getvalue()))]
    body = b"".join(b"--BB\r\nContent-Type: " + ct.encode() + b"\r\nContent-Transfer-Encoding: " + cte.encode()
                    + (b"\r\nContent-Disposition: attachment" if "name=" in ct else b"") + b"\r\n\r\n" + data
                    + b"\r\n" for ct, cte, data in parts) + b"--BB--\r\n"
    from email.header import Header

    raw = (f"From: Lin Xiaoyu <{sender}>\r\nTo: {sc.user}@support.example\r\n"
           f"Subject: {Header(subject, 'utf-8').encode()}\r\nMessage-ID: <att.{os.getpid()}@customer.example>\r\n"
           "Date: Mon, 23 Nov 2026 10:00:00 +0800\r\nMIME-Version: 1.0\r\n"
           "Content-Type: multipart/mixed; boundary=BB\r\n\r\n").encode() + body
    sc.dv.append(sc.user, raw)


def _open(data: Path):
    """The store under test (helpers.PG_DSN: the backend fixture's database)."""
    if helpers.PG_DSN is None:
        return Store(data, create=False)
    cfg = config_mod.defaults(data.parent)
    cfg.data_dir, cfg.backend, cfg.pg.dsn = data, "postgresql", helpers.PG_DSN
    return open_store(cfg, create=False)


def _db_traces(needles: list[bytes]) -> list[str]:
    """PostgreSQL: the tables whose documents (or outgoing mail bytes, report summaries, keys) still
    hold a needle."""
    if helpers.PG_DSN is None:
        return []
    import psycopg

    out = []
    with psycopg.connect(helpers.PG_DSN) as c:
        for n in needles:
            pat = "%" + n.decode().lower() + "%"
            for table, col in (("tickets", "doc::text"), ("tickets", "summary::text"), ("messages", "doc::text"),
                               ("outbox", "doc::text"), ("quarantine", "doc::text"), ("meta", "key || value::text"),
                               ("seen", "key"), ("checkpoints", "doc::text"), ("outbox_results", "doc::text")):
                if c.execute(f"SELECT count(*) FROM {table} WHERE lower({col}) LIKE %s", (pat,)).fetchone()[0]:
                    out.append(f"{table}.{col}")
            if c.execute("SELECT count(*) FROM outbox WHERE position(%s in lower(encode(data, 'escape'))) > 0",
                         (n.decode().lower(),)).fetchone()[0]:
                out.append("outbox.data")
    return sorted(set(out))


def _totals(data: Path) -> dict:
    """What reports count: tickets by status, category, priority, close reason; ratings; customers."""
    s = _open(data)
    rows = [*s.all_tickets(), *s.iter_archived_summaries()]
    return {"n": len(rows), "status": Counter(t.get("status") for t in rows),
            "category": Counter(t.get("category") for t in rows), "priority": Counter(t.get("priority") for t in rows),
            "close": Counter(t.get("close_reason") for t in rows), "rating": Counter(t.get("rating") for t in rows),
            "customers": len({t.get("customer_email") for t in rows})}


def _traces(data: Path, needles: list[bytes]) -> list[str]:
    return sorted(str(p.relative_to(data)) for p in data.rglob("*") if p.is_file() and file_mentions(p, needles)) \
        + _db_traces(needles)


@pytest.mark.usefixtures("backend")
def test_export_then_erase_leaves_no_trace(tmp_path, dovecot_server, smtp_sink):
    sc = Scenario(tmp_path, dovecot_server, smtp_sink)
    data = tmp_path / "data"
    # a first ticket, answered and closed by staff, then archived by housekeeping
    sc.customer(TARGET, f"{WORDS} 退款", f"{WORDS} 的订单退款还没到，我是林小雨。")
    sc.run("2026-11-23T10:00+08:00")
    note = sc.latest(ALICE)
    sc.staff(note, "[CLOSE]", "已为您处理退款。")
    sc.run("2026-11-23T11:00+08:00")
    sc.run("2026-11-27T12:00+08:00")
    first = _open(data)
    assert first.archived_count() == 1
    # a second, hot ticket with attachments naming the address (compressed), another customer's
    # mail Cc'ing the target, and an out-of-office of the target (no ticket: raw mail only)
    _with_attachments(sc, TARGET, "又一个问题", f"{WORDS} 第二次来信。")
    sc.customer(OTHER, "同事的问题", f"请同时回复 {TARGET}，谢谢。我的订单号 ZL-5521。",
                extra_headers=f"Cc: {TARGET}\r\n")
    sc.customer(TARGET, "自动回复: 不在办公室", f"{WORDS} 我这周不在。", extra_headers="Auto-Submitted: auto-replied\r\n")
    sc.run("2026-11-27T13:00+08:00")
    needles = [TARGET.encode(), WORDS.encode()]
    before = _totals(data)
    assert _traces(data, needles), "the scenario must leave traces to erase"
    other = next(t for t in _open(data).all_tickets() if t["customer_email"] == OTHER)

    # export: one zip with data.json and the raw mail
    out = tmp_path / "export.zip"
    r = mailflow(sc.cfg, "privacy", "export", TARGET, "--out", str(out))
    assert "2 tickets" in r.stdout or "3 tickets" in r.stdout, r.stdout
    with zipfile.ZipFile(out) as z:
        doc = json.loads(z.read("data.json"))
        names = z.namelist()
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    mine = [t for t in doc["tickets"] if t["customer_email"] == TARGET]
    assert len(mine) == 2 and {t["archived"] for t in mine} == {True, False}
    assert any(t["id"] == other["id"] for t in doc["tickets"])  # the mail that Cc'd them
    assert any(WORDS in (m.get("text") or "") for t in mine for m in t["messages"])
    assert any(e["kind"] == "status" for t in mine for e in t["events"])
    assert any(n.endswith("-in-customer.eml") for n in names) and any("-out-" in n for n in names)

    # erase
    r = mailflow(sc.cfg, "privacy", "erase", TARGET, "--yes")
    assert "erased-" in r.stdout and "backups still hold" in r.stdout
    assert _traces(data, needles) == []
    assert _totals(data) == before
    assert mailflow(sc.cfg, "verify").returncode == 0
    # the erase is recorded without the address; the tickets live on under the pseudonym
    pseud = r.stdout.split(" as ")[1].split(":")[0]
    s = _open(data)
    assert all(TARGET not in json.dumps(e) for e in s.get_meta("privacy:erasures"))
    hits = json.loads(mailflow(sc.cfg, "tickets", "search", "--customer", pseud, "--json").stdout)
    own = [h for h in hits if h["customer_email"] == pseud]
    assert len(own) == 2 and {h["archived"] for h in own} == {True, False}
    assert {h["id"] for h in hits} - {h["id"] for h in own} == {other["id"]}  # it Cc'd them
    assert json.loads(mailflow(sc.cfg, "tickets", "search", "--customer", TARGET, "--json").stdout) == []
    # the other customer's mail is kept (its raw mail too), the target masked in it
    o = s.ticket(other["id"])
    [m] = [m for m in s.messages_of(other["id"]) if m["direction"] == "in"]
    assert "ZL-5521" in m["text"] and TARGET not in m["text"] and pseud in m["text"]
    raw = Spool(data / "spool").read(m["spool"])
    assert b"ZL-5521" in raw and f"From: Customer <{OTHER}>".encode() in raw
    assert o["customer_email"] == OTHER
    # erasing again finds nothing more
    again = mailflow(sc.cfg, "privacy", "erase", TARGET, "--yes")
    assert again.returncode == 0 and _traces(data, needles) == []


def test_erase_refuses_while_a_daemon_runs(tmp_path):
    from mailflow.store import lock_process

    data = tmp_path / "data"
    Store(data)
    with Store(data).batch() as s:
        s.add_ticket({"id": "CW202611230001", "status": "new", "customer_email": TARGET})
    cfg = tmp_path / "mailflow.toml"
    cfg.write_text(f'[storage]\ndata_dir = "{data}"\n')
    held = lock_process(data)
    try:
        r = mailflow(cfg, "privacy", "erase", TARGET, "--yes", check=False)
        assert r.returncode == 1 and "daemon is running" in r.stderr
    finally:
        held.close()
    assert Store(data).ticket("CW202611230001")["customer_email"] == TARGET
