"""Issue 16's second pass on search and privacy: words no trigram narrows (one or two Chinese
characters) are found through migration 3's index of CJK characters and pairs with search.py's
matching contract unchanged (both backends give the same tickets, the index path the same as the
scan), and `privacy export` finds through indexes the same documents as reading every one (an
address planted in every kind of field). Migration 3 upgrades a version-2 database with data, and
twice is once."""

from __future__ import annotations

import json
import zipfile
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailflow import config as config_mod
from mailflow import pg_schema, privacy
from mailflow.search import Query
from mailflow.store import iso
from mailflow.storeapi import open_store
from tests.integration.helpers import storage_lines

NOW = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)


def _pg_only(backend: str) -> None:
    if backend != "postgresql":
        pytest.skip("PostgreSQL's indexes (TinyDB reads its files)")


def _t(tid, cust, days_ago, status="closed", subject="", **kw):
    at = iso(NOW - timedelta(days=days_ago))
    return {"id": tid, "status": status, "customer_email": cust, "created_at": at, "subject": subject,
            "closed_at": at if status == "closed" else None, "participants": kw.pop("participants", []), **kw}


def _m(tid, mid, text, frm="c@customer.example", subject="", **kw):
    return {"ticket_id": tid, "message_id": mid, "hash": mid, "direction": "in", "from": frm,
            "to": ["support@support.example"], "cc": [], "subject": subject, "text": text, **kw}


def _cfg(tmp_path):
    cfg = tmp_path / "mailflow.toml"
    cfg.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n{storage_lines()}'
                   '[tickets]\ntimezone = "Asia/Shanghai"\n')
    return config_mod.load(str(cfg))


# ---- words: one and two CJK characters ----------------------------------------------------------

WORDS = ["发霉", "發霉", "霉", "iphone发霉", "退款", "諮詢", "咨询", "发票抬头", "a货", "货", "xyz", "霉了 发霉"]


def _word_data(tmp_path):
    cfg = _cfg(tmp_path)
    s = open_store(cfg)
    with s.batch():
        s.add_ticket(_t("CW202607010001", "a@customer.example", 145, subject="食品有问题"))
        s.add_message(_m("CW202607010001", "a1@x", "收到的面包已经发霉了"))  # rare word, archived
        s.add_ticket(_t("CW202607020001", "b@customer.example", 144, subject="食品問題"))
        s.add_message(_m("CW202607020001", "b1@x", "收到的麵包已經發霉了，想諮詢退款"))  # traditional
        s.add_ticket(_t("CW202607030001", "c@customer.example", 143, subject="退款"))
        # a word across a message boundary (and across subject and text) is in no message
        s.add_message(_m("CW202607030001", "c1@x", "东西坏了，我要退款，都发", subject="退款"))
        s.add_message(_m("CW202607030001", "c2@x", "霉了还不给退", subject="再问一次发"))
        s.add_ticket(_t("CW202607040001", "d@customer.example", 142, subject="iPhone发霉?"))  # mixed, subject
        s.add_message(_m("CW202607040001", "d1@x", "买到A货了，请咨询一下"))
        s.add_ticket(_t("CW202607050001", "e@customer.example", 141, subject="发票抬头开错了"))
        s.add_message(_m("CW202607050001", "e1@x", "请重开发票"))
        assert s.archive(3, now=NOW) == 5
    with s.batch():
        s.add_ticket(_t("CW202611220001", "f@customer.example", 1, status="open", subject="还是霉味"))
        s.add_message(_m("CW202611220001", "f1@x", "包装里有霉味，要求退款"))
    return cfg, s


def _ids(res):
    rows, more = res
    return [r["id"] for r in rows], more


EXPECTED = {  # search.py's contract: each word a substring of one field's lower-case text
    "发霉": ["CW202607040001", "CW202607010001"], "發霉": ["CW202607020001"],
    "霉": ["CW202611220001", "CW202607040001", "CW202607030001", "CW202607020001", "CW202607010001"],
    "iphone发霉": ["CW202607040001"], "退款": ["CW202611220001", "CW202607030001", "CW202607020001"],
    "諮詢": ["CW202607020001"], "咨询": ["CW202607040001"], "发票抬头": ["CW202607050001"],
    "a货": ["CW202607040001"], "货": ["CW202607040001"], "xyz": [], "霉了 发霉": ["CW202607010001"]}


@pytest.mark.usefixtures("backend")
def test_short_cjk_words_contract_on_both_backends(tmp_path):
    """The same tickets on TinyDB and PostgreSQL: simplified and traditional are different words,
    a mixed word is one word, a word split across two messages (or subject and text) matches
    nothing, one character matches anywhere."""
    _cfg_, s = _word_data(tmp_path)
    try:
        for w in WORDS:
            assert _ids(s.search(Query(text=w))) == (EXPECTED[w], False), w
    finally:
        s.close()


def test_short_cjk_words_through_the_index(tmp_path, backend, monkeypatch):
    """Straight to the indexes (no first pages): each CJK word is narrowed by the CJK index, a
    word split across messages by none of its candidates, and the result is the scan's."""
    _pg_only(backend)
    _cfg_, s = _word_data(tmp_path)
    try:
        scanned = {w: _ids(s.search(Query(text=w))) for w in WORDS}
        monkeypatch.setattr(type(s), "SEARCH_FIRST_PAGES", 0)
        for w in WORDS:
            assert _ids(s.search(Query(text=w))) == scanned[w] == (EXPECTED[w], False), w
        assert s._word_tickets("发霉") == {"CW202607010001", "CW202607040001"}  # not the split one
        assert s._word_tickets("發霉") == {"CW202607020001"}
        assert s._word_tickets("霉") == set(EXPECTED["霉"])
        assert s._word_tickets("a货") == {"CW202607040001"}
        assert s._word_tickets("xyz") == set()  # the trigram index
        assert s._word_tickets("!!") is None  # nothing narrows punctuation: every page is read
        monkeypatch.setattr(type(s), "SEARCH_PROBE", 1)  # every word common: the page-by-page scan
        assert {w: _ids(s.search(Query(text=w))) for w in WORDS} == scanned
        with s.pool.connection() as c:  # a pair is an index lookup (on a table of a few rows too)
            c.execute("SET enable_seqscan = off")
            plan = "\n".join(r[0] for r in c.execute(
                "EXPLAIN SELECT ticket_id FROM messages WHERE mailflow_cjk_grams(mailflow_text(doc)) @> "
                "ARRAY['发霉']::text[] LIMIT 5000").fetchall())
        assert "messages_cjk" in plan
    finally:
        s.close()


CJK_ALPHABET = "发霉發了吗中文字a B1!，。 \n\u3040\u30ff\u3400\u4dbf\u4e00\u9fff\uac00\ud7af\uf900\ufaff" \
               "\u303f\u3100\u33ff\u4dc0\ua000\uabff\ud7b0\uf8ff\ufb00\U00020000\U0002fa1f\U0002fa20\U0001ffff"


@pytest.fixture(scope="module")
def pg_conn(pg_server):
    with psycopg.connect(pg_server.new_database(), autocommit=True) as c:
        yield c


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=CJK_ALPHABET, max_size=30), a=st.integers(0, 30), n=st.integers(1, 6))
def test_a_substring_grams_are_the_documents(pg_conn, text, a, n):
    """Whatever the text: the grams store_pg asks for, for any word cut out of it, are among the
    grams the SQL function indexes for it (so the index never loses a match), and both sides
    classify each character alike (the ranges' edges included)."""
    from mailflow.store_pg import _is_cjk, cjk_grams

    word = text[a:a + n].lower()
    got = set(pg_conn.execute("SELECT mailflow_cjk_grams(lower(%s))", (text,)).fetchone()[0])
    assert set(cjk_grams(word)) <= got
    for ch in set(text):
        assert (pg_conn.execute("SELECT mailflow_cjk_grams(%s)", (ch,)).fetchone()[0] == [ch]) == _is_cjk(ch), ch


# ---- migration 3 on a version-2 database with data ----------------------------------------------

def test_upgrade_2_to_3_with_data_then_again(pg_server):
    dsn = pg_server.new_database(migrated=False)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE schema_version (version integer PRIMARY KEY, applied_at timestamptz NOT NULL "
                  "DEFAULT now(), mailflow text)")
        for v in (0, 1):
            c.execute(pg_schema.MIGRATIONS[v])
            c.execute("INSERT INTO schema_version (version) VALUES (%s)", (v + 1,))
        t = _t("CW202611010001", "x@customer.example", 20, subject="面包发霉", events=[
            {"at": "2026-11-01T00:00:00+00:00", "kind": "note", "detail": "cc'd Other@Elsewhere.example"}])
        c.execute("INSERT INTO tickets (id, status, customer_email, created_at, doc) VALUES (%s, 'closed', %s, %s, %s)",
                  (t["id"], t["customer_email"], t["created_at"], json.dumps(t)))
        c.execute("INSERT INTO messages (ticket_id, message_id, direction, doc) VALUES (%s, 'm1@x', 'in', %s)",
                  (t["id"], json.dumps(_m(t["id"], "m1@x", "还要咨询", frm="x@customer.example"))))
    assert pg_schema.upgrade(dsn) == (2, pg_schema.VERSION)
    assert pg_schema.upgrade(dsn) == (pg_schema.VERSION, pg_schema.VERSION)  # twice is once
    with psycopg.connect(dsn, autocommit=True) as c:
        assert c.execute("SELECT count(*) FROM schema_version").fetchone()[0] == pg_schema.VERSION
        assert c.execute("SELECT id FROM tickets WHERE mailflow_cjk_grams(mailflow_ticket_text(doc)) @> "
                         "ARRAY['发霉']").fetchall() == [("CW202611010001",)]
        assert c.execute("SELECT ticket_id FROM messages WHERE mailflow_cjk_grams(mailflow_text(doc)) @> "
                         "ARRAY['咨询']").fetchall() == [("CW202611010001",)]
        assert c.execute("SELECT id FROM tickets WHERE mailflow_at_text(doc - 'subject' - 'customer_name') "
                         "LIKE '%other@elsewhere.example%'").fetchall() == [("CW202611010001",)]
        # migration 5: the ticket's searched fields moved to ticket_search, indexed there, kept by a trigger
        assert c.execute("SELECT id FROM ticket_search WHERE mailflow_cjk_grams(mailflow_ticket_text(doc)) @> "
                         "ARRAY['发霉'] AND doc->>'at' LIKE '%other@elsewhere.example%'").fetchall() == [
            ("CW202611010001",)]
        c.execute("UPDATE tickets SET doc = jsonb_set(doc, '{subject}', '\"面包过期\"') WHERE id = 'CW202611010001'")
        assert c.execute("SELECT doc->>'subject' FROM ticket_search").fetchall() == [("面包过期",)]
        c.execute("DELETE FROM messages")
        c.execute("DELETE FROM tickets")
        assert c.execute("SELECT count(*) FROM ticket_search").fetchone()[0] == 0
        idx = {r[0] for r in c.execute("SELECT indexname FROM pg_indexes WHERE tablename IN ('tickets', 'messages', "
                                       "'ticket_search')")}
        assert {"messages_cjk", "ticket_search_cjk", "messages_at", "ticket_search_at"} <= idx
        assert not {"tickets_cjk", "tickets_at", "tickets_text", "tickets_addrs"} & idx


# ---- privacy export: an address in any field ------------------------------------------------------

ADDR = "wang.fang@customer.example"


def _privacy_data(tmp_path):
    """One ticket per place the address can be (and near misses), hot and archived."""
    cfg = _cfg(tmp_path)
    s = open_store(cfg)
    A = ADDR.upper()  # noqa: N806 -- case does not matter
    planted = {  # ticket id -> (ticket fields, message fields): the address in one field each
        "CW202608010001": ({"customer_email": ADDR}, {}),
        "CW202608010002": ({"participants": ["li@customer.example", A]}, {}),
        "CW202608010003": ({"subject": f"about {A}"}, {}),
        "CW202608010004": ({"customer_name": f"Wang <{ADDR}>"}, {}),
        "CW202608010005": ({"events": [{"at": "2026-08-01T00:00:00+00:00", "kind": "send_failed",
                                         "detail": f"{ADDR}: 550 mailbox full"}]}, {}),
        "CW202608010006": ({"notes": [{"by": "agent1@support.example", "text": f"call back, or mail {A}"}]}, {}),
        "CW202608010007": ({"failing_addresses": [ADDR], "sla": {"nested": {"deep": [f"x {ADDR} y"]}}}, {}),
        "CW202608010008": ({}, {"from": ADDR}),
        "CW202608010009": ({}, {"cc": [A]}),
        "CW202608010010": ({}, {"text": f"请联系我的同事{ADDR}，谢谢"}),
        "CW202608010011": ({}, {"subject": f"Fwd: from {ADDR}"}),
        "CW202608010012": ({}, {"from_name": ADDR}),
        "CW202608010013": ({}, {"attachments": [{"filename": f"{ADDR}.vcf", "path": None}]}),
        "CW202608010014": ({}, {"message_id": f"<x.{ADDR}>"}),
        "CW202608010015": ({}, {"quoted": {"headers": [f"Reply-To: {A}"]}}),
        "CW202608010016": ({"customer_email": "x" + ADDR}, {}),  # a longer address: a substring too
        "CW202608010017": ({"customer_email": "wang.fang@customer.example.cn"}, {}),  # so is this
        "CW202608010018": ({"subject": "wang.fang at customer.example"}, {"text": "wang.fang@customer"}),  # no
        "CW202608010019": ({"customer_email": "wang_fang@customer.example"}, {}),  # no: _ is not a wildcard
    }
    with s.batch():
        for i, (tid, (tf, mf)) in enumerate(sorted(planted.items())):
            t = _t(tid, tf.pop("customer_email", f"other{i}@customer.example"), 100 - i, **tf)
            s.add_ticket(t)
            s.add_message(_m(tid, mf.pop("message_id", f"m{i}@x"), mf.pop("text", "你好"), **mf))
        assert s.archive(3, now=NOW) == len(planted)
    with s.batch():  # hot ones, one in an event added later, one back from the archive
        s.add_ticket(_t("CW202611220001", "zhao@customer.example", 1, status="open"))
        s.add_event("CW202611220001", "note", f"forwarded to {ADDR}")
        s.add_ticket(_t("CW202611220002", "qian@customer.example", 1, status="open"))
        s.add_message(_m("CW202611220002", "h2@x", "no mention"))
        s.unarchive("CW202608010012")
    s.close()
    expected = {tid for tid in planted if tid <= "CW202608010017"} | {"CW202611220001"}
    return cfg, expected


@pytest.mark.usefixtures("backend")
def test_export_finds_the_address_in_every_field(tmp_path):
    cfg, expected = _privacy_data(tmp_path)
    out = tmp_path / "export.zip"
    privacy.export(cfg, ADDR, out)
    with zipfile.ZipFile(out) as z:
        doc = json.loads(z.read("data.json"))
    assert {t["id"] for t in doc["tickets"]} == expected


def test_indexed_lookup_is_the_full_scan(tmp_path, backend):
    """PostgreSQL: docs_mentioning (indexes, then the check) returns what `doc::text ILIKE` over
    every row returns, for the address, its upper case, a part of it; and the indexes are used."""
    _pg_only(backend)
    cfg, _expected = _privacy_data(tmp_path)
    s = open_store(cfg)
    try:
        for needle in (ADDR, ADDR.upper(), "fang@customer.example", "@customer.example.cn", "g_f@"):
            pat = "%" + needle.replace("_", "\\_") + "%"
            for table, key in (("tickets", "id"), ("messages", "k")):
                want = [str(r[0]) for r in s._q(f"SELECT {key} FROM {table} WHERE doc::text ILIKE %s ORDER BY 1",
                                                 (pat,))]
                assert [k for k, _d, _f in s.docs_mentioning(table, [needle])] == want, (needle, table)
        with s.pool.connection() as c:
            c.execute("SET enable_seqscan = off")  # a 20-row table: the plan the 1M set gets
            plan = "\n".join(r[0] for r in c.execute(
                "EXPLAIN SELECT k FROM messages WHERE (mailflow_text(doc) LIKE lower(%s) OR "
                "mailflow_at_text(doc - 'subject' - 'text') LIKE lower(%s)) AND doc::text ILIKE %s",
                ("%" + ADDR + "%",) * 3).fetchall())
        assert "messages_text" in plan and "messages_at" in plan and "Seq Scan" not in plan
    finally:
        s.close()
