"""The PostgreSQL store's read paths for a large store (issue 16's 1M-ticket benchmark): search's
index and scan paths agree, hot tickets' cached report summaries follow every change, and the
report's SQL filters of archived summaries give the same figures as reading every summary."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from bench.scale import _ticket_and_messages
from mailflow import config as config_mod
from mailflow import report, summary
from mailflow.report_metrics import compute
from mailflow.search import Query
from mailflow.storeapi import open_store
from tests.integration import test_search
from tests.integration.helpers import storage_lines

pytestmark = pytest.mark.usefixtures("backend")

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _pg_only(backend: str) -> None:
    if backend != "postgresql":
        pytest.skip("PostgreSQL's query paths (TinyDB's search and reports have their own tests)")


def _ids(rows: list[dict]) -> list[str]:
    return [r["id"] for r in rows]


QUERIES = [Query(customer="wang@customer.example"), Query(text="增值税 发票"), Query(text="PARCEL depot"),
           Query(customer="wang@customer.example", text="发票"), Query(text="发票", limit=1),
           Query(text="nothing-like-this"), Query(text="arrived"), Query(customer="li@customer.example", text="depot")]


def test_search_index_and_scan_paths_agree(tmp_path, backend, monkeypatch):
    """The first newest-first pages, a word the trigram index narrows, and the same word when it
    counts as common (the probe limit at 1: a scan of every page) give the same tickets in the
    same order."""
    _pg_only(backend)
    cfg = config_mod.load(str(test_search._data(tmp_path)))
    store = open_store(cfg)
    try:
        first = [store.search(q) for q in QUERIES]
        monkeypatch.setattr(type(store), "SEARCH_FIRST_PAGES", 0)  # straight to the indexes
        narrowed = [store.search(q) for q in QUERIES]
        monkeypatch.setattr(type(store), "SEARCH_PROBE", 1)
        scanned = [store.search(q) for q in QUERIES]
    finally:
        store.close()
    assert [(_ids(r), more) for r, more in narrowed] == [(_ids(r), more) for r, more in scanned]
    assert [(_ids(r), more) for r, more in narrowed] == [(_ids(r), more) for r, more in first]
    assert _ids(narrowed[1][0]) == ["CW202611220001", "CW202607010001"]
    assert narrowed[4][1] is True and len(narrowed[4][0]) == 1  # the limit, and "more"
    assert _ids(narrowed[6][0]) == ["CW202608150001"]


def _store_with_history(tmp_path, n: int = 400):
    data = tmp_path / "data"
    path = tmp_path / "mailflow.toml"
    path.write_text(f'[storage]\ndata_dir = "{data}"\n{storage_lines()}', encoding="utf-8")
    cfg = config_mod.load(str(path))
    store = open_store(cfg)
    rng = random.Random(5)
    serials: dict[str, int] = {}
    with store.batch():
        for k in range(n):
            created = NOW - timedelta(days=rng.uniform(0, 330), hours=rng.uniform(0, 24))
            closed = created + timedelta(days=rng.uniform(1, 40)) if k % 5 else None
            if closed is not None and closed > NOW:
                closed = None
            t, msgs = _ticket_and_messages(rng, serials, k, created, closed, "closed" if closed else "open")
            store.add_ticket(t)
            for m in msgs:
                store.add_message(m)
        assert store.archive(3.0, now=NOW, cfg=cfg) > n // 2
    return cfg, store


def test_hot_summaries_cached_until_the_ticket_changes(tmp_path, backend):
    _pg_only(backend)
    cfg, store = _store_with_history(tmp_path, 60)
    try:
        hot = store.all_tickets()
        first = dict(store.hot_summaries(cfg))
        assert first == {t["id"]: summary.summarize(t, cfg) for t in hot}
        assert dict(store.hot_summaries(cfg)) == first  # now read from the rows
        assert store._q1("SELECT count(*) FROM tickets WHERE NOT archived AND summary IS NOT NULL") == len(hot)
        tid = hot[0]["id"]
        with store.batch():
            store.update_ticket(tid, {"priority": "urgent", "tags": ["changed"]})
        assert store._q1("SELECT summary FROM tickets WHERE id = %s", (tid,)) is None
        again = dict(store.hot_summaries(cfg))
        assert again[tid] == summary.summarize(store.ticket(tid), cfg) and again[tid]["prio"] == "urgent"
        assert {k: v for k, v in again.items() if k != tid} == {k: v for k, v in first.items() if k != tid}
    finally:
        store.close()


@pytest.mark.parametrize("which", [{"month": "2026-10"}, {"week": "2026-W46"}, {"month": "2026-11"}])
def test_report_sql_filters_give_the_same_figures(tmp_path, backend, which):
    """report.build (archived summaries filtered and cut down in SQL) == compute over every summary."""
    _pg_only(backend)
    cfg, store = _store_with_history(tmp_path)
    try:
        period = report.parse_period(NOW, report.timezone_of(cfg), which.get("month"), which.get("week"), None, None)
        got = report.build(store, cfg, period, NOW, rows=True)
        every = [summary.summarize(t, cfg) for t in store.all_tickets()]
        every += [summary.summarize(store.archived_ticket(tid)["ticket"], cfg) for tid in
                  [r[0] for r in store._q("SELECT id FROM tickets WHERE archived ORDER BY created_at, id")]]
        want = compute(every, period, NOW, rows=True, locale=cfg.reports.locale or cfg.default_locale,
                       company=cfg.company_name, staff_names={s.email: s.name for s in cfg.staff})
    finally:
        store.close()
    assert got.data == want.data
    assert got.rows == want.rows
