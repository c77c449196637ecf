"""`mailflow tickets search` and `tickets show` find hot and archived tickets alike (the CLI, as
users run it): by customer, words (Chinese and English), creation dates and status; a ticket both
hot and archived is shown once, from the hot copy."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from mailflow import config as config_mod
from mailflow.store import iso
from mailflow.storeapi import open_store
from tests.integration.helpers import mailflow, storage_lines

pytestmark = pytest.mark.usefixtures("backend")  # every test on TinyDB and on PostgreSQL

NOW = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)


def _t(tid, cust, days_ago, status="closed", subject="", **kw):
    at = iso(NOW - timedelta(days=days_ago))
    return {"id": tid, "status": status, "customer_email": cust, "created_at": at, "subject": subject,
            "closed_at": at if status == "closed" else None, "participants": kw.pop("participants", []), **kw}


def _m(tid, mid, frm, text, direction="in", to=("support@support.example",)):
    return {"ticket_id": tid, "message_id": mid, "hash": mid, "direction": direction, "from": frm, "to": list(to),
            "cc": [], "subject": "", "text": text}


def _data(tmp_path):
    data = tmp_path / "data"
    cfg = tmp_path / "mailflow.toml"
    cfg.write_text(f'[storage]\ndata_dir = "{data}"\n{storage_lines()}[tickets]\ntimezone = "Asia/Shanghai"\n')
    s = open_store(config_mod.load(str(cfg)))
    with s.batch():
        s.add_ticket(_t("CW202607010001", "wang@customer.example", 145, subject="发票抬头开错了"))
        s.add_message(_m("CW202607010001", "a1@x", "wang@customer.example", "发票抬头写错了，请重开增值税发票"))
        s.add_ticket(_t("CW202608150001", "li@customer.example", 100, subject="Parcel missing",
                        participants=["wang@customer.example"]))
        s.add_message(_m("CW202608150001", "b1@x", "li@customer.example", "The parcel never arrived at the depot"))
        s.add_ticket(_t("CW202609200001", "wang@customer.example", 64, subject="退款"))
        s.add_message(_m("CW202609200001", "c1@x", "wang@customer.example", "退款两周还没到账"))
        assert s.archive(3, now=NOW) == 3
    with s.batch():  # hot: one open ticket of wang's, and one archived ticket back in the hot store
        s.add_ticket(_t("CW202611220001", "wang@customer.example", 1, status="open", subject="还是没收到发票"))
        s.add_message(_m("CW202611220001", "d1@x", "wang@customer.example", "增值税发票还是没收到"))
        s.unarchive("CW202609200001")
        s.update_ticket("CW202609200001", {"status": "open", "closed_at": None, "subject": "退款 (reopened)"})
    return cfg


def _search(cfg, *args):
    return json.loads(mailflow(cfg, "tickets", "search", *args, "--json").stdout)


def test_search_by_customer_words_dates_and_status(tmp_path):
    cfg = _data(tmp_path)
    got = _search(cfg, "--customer", "WANG@customer.example")
    assert [(r["id"], r["archived"]) for r in got] == [
        ("CW202611220001", False), ("CW202609200001", False), ("CW202608150001", True), ("CW202607010001", True)]
    assert got[1]["subject"] == "退款 (reopened)"  # the hot copy wins, shown once
    assert [r["id"] for r in _search(cfg, "--text", "增值税 发票")] == ["CW202611220001", "CW202607010001"]
    assert [r["id"] for r in _search(cfg, "--text", "PARCEL depot")] == ["CW202608150001"]
    assert [r["id"] for r in _search(cfg, "--customer", "wang@customer.example", "--text", "发票")] == [
        "CW202611220001", "CW202607010001"]
    assert [r["id"] for r in _search(cfg, "--from", "2026-08-01", "--to", "2026-09-30")] == [
        "CW202609200001", "CW202608150001"]
    assert [r["id"] for r in _search(cfg, "--status", "closed")] == ["CW202608150001", "CW202607010001"]
    assert [r["id"] for r in _search(cfg, "--status", "open", "--customer", "wang@customer.example")] == [
        "CW202611220001", "CW202609200001"]
    assert _search(cfg, "--text", "nothing-like-this") == []
    text = mailflow(cfg, "tickets", "search", "--customer", "wang@customer.example", "--limit", "2").stdout
    assert "CW202611220001" in text and "CW202607010001" not in text and "raise --limit" in text


def test_show_finds_archived_tickets(tmp_path):
    cfg = _data(tmp_path)
    shown = json.loads(mailflow(cfg, "tickets", "show", "CW202607010001", "--json").stdout)
    assert shown["archived"] is True and shown["messages"][0]["text"].startswith("发票抬头")
    assert "(archived)" in mailflow(cfg, "tickets", "show", "CW202608150001").stdout
    r = mailflow(cfg, "tickets", "show", "CW202601010009", check=False)
    assert r.returncode == 1 and "no ticket" in r.stderr
