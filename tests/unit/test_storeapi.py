"""The store contract (mailflow/storeapi.py) on both backends: TinyDB's behaviour is the spec, and
PgStore (a real PostgreSQL, tests/support/postgres.py) must do the same; plus what only a shared
database has to guarantee (two connections, two processes)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailflow import config as config_mod
from mailflow.storeapi import BatchAborted, SchemaError, StoreAPI, StoreError, open_store


def _cfg(tmp_path, dsn: str | None = None):
    cfg = config_mod.defaults(tmp_path)
    cfg.data_dir = tmp_path / "data"
    if dsn:
        cfg.backend, cfg.pg.dsn = "postgresql", dsn
    return cfg


@pytest.fixture(params=["tinydb", "postgresql"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def cfg(backend, tmp_path, request):
    if backend == "postgresql":
        return _cfg(tmp_path, request.getfixturevalue("pg_dsn"))
    return _cfg(tmp_path)


@pytest.fixture
def store(cfg):
    s = open_store(cfg)
    yield s
    s.close()


def _t(tid: str, **kw) -> dict:
    return {"id": tid, "status": "new", "customer_email": "a@b.example",
            "created_at": kw.pop("created_at", "2026-11-23T01:00:00Z"), **kw}


def _m(tid: str | None, mid: str, h: str = "h", direction: str = "in", **kw) -> dict:
    return {"ticket_id": tid, "message_id": mid, "hash": h, "direction": direction, **kw}


def test_is_the_interface(store):
    assert isinstance(store, StoreAPI)


def test_batch_commits_and_another_store_sees_it(store, cfg):
    with store.batch():
        tid = store.next_ticket_id("CW", "20261123")
        store.add_ticket(_t(tid))
        store.add_message(_m(tid, "m1@x", "h1"))
        store.set_meta("k", {"a": [1, 2]})
        store.set_checkpoint("mb", last_uid=7, uidvalidity=3)
    assert tid == "CW202611230001"
    other = open_store(cfg, create=False)
    try:
        assert other.ticket(tid)["status"] == "new"
        assert other.ticket_of_message_id("m1@x") == tid
        assert other.already_seen("m1@x", "h1") and not other.already_seen("m1@x", "h2")
        assert other.get_meta("k") == {"a": [1, 2]}
        assert other.checkpoint("mb") == {"last_uid": 7, "uidvalidity": 3}
        assert [m["message_id"] for m in other.messages_of(tid)] == ["m1@x"]
        assert other.message_count(tid) == 1
    finally:
        other.close()


def test_failed_batch_commits_nothing(store):
    with store.batch():
        store.add_ticket(_t("CW202611230001"))
    with pytest.raises(RuntimeError), store.batch():
        store.add_ticket(_t("CW202611230002"))
        store.update_ticket("CW202611230001", {"status": "open"})
        store.set_checkpoint("mb", last_uid=9)
        raise RuntimeError("boom")
    store.refresh()
    assert store.ticket("CW202611230002") is None
    assert store.ticket("CW202611230001")["status"] == "new"
    assert store.checkpoint("mb") == {}


def test_change_outside_a_batch_is_refused(store):
    with pytest.raises(StoreError):
        store.add_ticket(_t("CW202611230001"))


def test_nested_batch_joins_the_outer(store):
    with pytest.raises(RuntimeError), store.batch():
        with store.batch():
            store.add_ticket(_t("CW202611230001"))
        assert store.ticket("CW202611230001") is not None
        raise RuntimeError("outer fails")
    assert store.ticket("CW202611230001") is None


def test_savepoint_undoes_one_message_only(store):
    with store.batch():
        store.add_ticket(_t("CW202611230001"))
        live = store.ticket("CW202611230001")
        with pytest.raises(ValueError), store.savepoint():
            store.add_ticket(_t("CW202611230002"))
            store.update_ticket("CW202611230001", {"status": "open"})
            store.add_message(_m("CW202611230002", "m2@x"))
            raise ValueError("half done")
        assert store.ticket("CW202611230001")["status"] == "new"
        assert live["id"] == "CW202611230001"
        store.add_ticket(_t("CW202611230003"))
    assert store.ticket("CW202611230002") is None
    assert store.ticket("CW202611230001")["status"] == "new"
    assert store.ticket("CW202611230003") is not None
    assert store.ticket_of_message_id("m2@x") is None


def test_live_ticket_in_a_batch(store):
    with store.batch():
        store.add_ticket(_t("CW202611230001"))
    with store.batch():
        t = store.ticket("CW202611230001")
        store.update_ticket("CW202611230001", {"status": "open", "assignee": "li"})
        assert t["status"] == "open"  # the caller's copy is the live document
        store.add_event("CW202611230001", "note", "hello")
    t = store.ticket("CW202611230001")
    assert t["status"] == "open" and t["events"][-1]["detail"] == "hello"
    assert store.open_counts() == {"li": 1}
    assert store.ticket_counts() == {"open": 1}


def test_newest_hot_tickets(store):
    with store.batch():
        ids = [store.next_ticket_id("CW", day) for day in ("20261124",) * 4 + ("20261123",) * 4]
        for tid in ids:
            store.add_ticket(_t(tid))
    want = sorted(ids)
    total, newest = store.newest_hot_tickets(3)
    assert total == 8 and [t["id"] for t in newest] == want[-3:]
    assert [t["id"] for t in store.newest_hot_tickets(None)[1]] == want
    assert store.newest_hot_tickets(0) == (8, [])


def test_serials_widen_and_never_repeat(store):
    with store.batch():
        ids = [store.next_ticket_id("CW", "20261123") for _ in range(3)]
        for tid in ids:
            store.add_ticket(_t(tid))
    assert ids == ["CW202611230001", "CW202611230002", "CW202611230003"]
    with store.batch():
        store.set_meta("serial:CW:20261124", 9999)
        assert store.next_ticket_id("CW", "20261124") == "CW2026112410000"


def test_peek_then_meta_is_what_the_pipeline_does(store):
    with store.batch():
        tid, key, n = store.peek_ticket_id("CW", "20261123")
        store.add_ticket(_t(tid))
        store.set_meta(key, n)
    with store.batch():
        tid2, key2, n2 = store.peek_ticket_id("CW", "20261123")
        store.add_ticket(_t(tid2))
        store.set_meta(key2, n2)
    assert (tid, tid2) == ("CW202611230001", "CW202611230002")
    assert store.get_meta(key) == 2


def test_wake_index(store):
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    with store.batch():
        store.add_ticket(_t("CW202611230001", wake_at="2026-11-23T11:00:00Z"))
        store.add_ticket(_t("CW202611230002", wake_at="2026-11-23T13:00:00Z"))
        store.add_ticket(_t("CW202611230003"))
    assert store.next_wake() == "2026-11-23T11:00:00Z"
    assert store.due_tickets(now) == ["CW202611230001"]
    with store.batch():
        store.update_ticket("CW202611230002", {"wake_at": "2026-11-23T10:00:00Z"})
    assert store.due_tickets(now) == ["CW202611230002", "CW202611230001"]
    assert store.due_tickets(now, limit=1) == ["CW202611230002"]
    with store.batch():
        store.update_ticket("CW202611230002", {"wake_at": None})
        store.update_ticket("CW202611230001", {"wake_at": None})
    assert store.next_wake() is None and store.due_tickets(now) == []


def test_customer_stats(store):
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    with store.batch():
        store.add_ticket(_t("CW202611230001", customer_email="x@y.example", category="complaint",
                            created_at="2026-11-20T00:00:00Z"))
        store.add_ticket(_t("CW202611230002", customer_email="x@y.example", status="closed", close_reason="spam"))
    assert store.customer_stats("X@y.example", now) == {"open_tickets": 1, "complaints_30d": 1, "spam_count": 1}


def test_seen_and_own_messages(store):
    with store.batch():
        store.mark_seen("a@x", "h", "auto_reply")
        store.mark_seen("a@x", "h", "auto_reply")  # twice is once
        store.add_ticket(_t("CW202611230001"))
        store.add_message(_m("CW202611230001", "out@x", direction="out"))
    assert store.already_seen("a@x", "h") and not store.already_seen("a@x", "g")
    assert store.is_own_message_id("out@x") and not store.is_own_message_id("a@x")


def test_outbox_rows(store):
    data = b"Subject: hi\r\n\r\nbody\r\n"
    with store.batch():
        row = {"ticket_id": "CW202611230001", "status": "queued", "to": ["a@b.example"], "attempts": 0,
               "created_at": "2026-11-23T01:00:00Z", "next_attempt_at": "2026-11-23T01:00:00Z",
               "file": None if store.mail_in_db else "seg-1.out:0:10"}
        k = store.add_outbox(row, data if store.mail_in_db else None)
        k2 = store.add_outbox(dict(row, next_attempt_at="2026-11-24T00:00:00Z",
                                   file=None if store.mail_in_db else "seg-1.out:10:10"),
                              data if store.mail_in_db else None)
    assert row["row"] == k and store.outbox_row(k)["row"] == k
    assert [key for key, _r in store.outbox_due("2026-11-23T02:00:00Z")] == [k]
    assert store.outbox_counts() == {"queued": 2}
    if store.mail_in_db:
        assert store.outbox_data(k) == data
    with store.batch():
        store.update_outbox(k, {"status": "sent", "sent_at": "2026-11-23T01:00:05Z"})
        store.update_outbox(k2, {"last_error": "451 later"})
    assert store.outbox_counts() == {"queued": 1, "sent": 1}
    assert store.outbox_last_error() == "451 later"
    assert set(store.outbox_rows()) == {k, k2}
    with store.batch():
        store.prune(now=datetime(2026, 12, 30, tzinfo=UTC))
    assert set(store.outbox_rows()) == {k2}
    with store.batch():
        store.remove_outbox([k2])
    assert store.outbox_counts() == {}


def test_outbox_journal(store):
    with store.batch():
        k = store.add_outbox({"ticket_id": "T", "status": "queued", "to": [], "attempts": 0,
                              "created_at": "2026-11-23T01:00:00Z", "file": "x"},
                             b"x" if store.mail_in_db else None)
    j = store.outbox_journal()
    j.append([{"row": k, "status": "temp", "at": "a"}])
    j.append([{"row": k, "status": "sent", "at": "b"}])
    assert j.read()[k]["status"] == "sent"
    if getattr(j, "in_batch", False):
        with store.batch():
            j.clear(j.read())
    else:
        j.clear(j.read())
    assert j.read() == {}


def test_quarantine(store):
    with store.batch():
        qid = store.add_quarantine({"status": "held", "spool": "s/1", "hash": "h1", "reason": "bad"})
    assert store.quarantine_item(qid)["reason"] == "bad"
    assert store.quarantine_twin("s/1", "zz")["qid"] == qid
    assert store.quarantine_twin("s/2", "h1")["qid"] == qid
    with store.batch():
        store.update_quarantine(qid, {"status": "replayed"})
    assert store.quarantine_twin("s/1", "h1") is None
    assert [q["qid"] for q in store.quarantined()] == [qid]


def test_archive_and_back(store, cfg):
    now = datetime(2026, 11, 30, tzinfo=UTC)
    with store.batch():
        store.add_ticket(_t("CW202611230001", status="closed", closed_at="2026-11-24T00:00:00Z",
                            created_at="2026-11-23T01:00:00Z"))
        store.add_message(_m("CW202611230001", "old@x", "h9"))
        store.add_ticket(_t("CW202611230002"))
    with store.batch():
        assert store.archive(3.0, now=now, cfg=cfg) == 1
    assert store.ticket("CW202611230001") is None and store.is_archived("CW202611230001")
    assert store.archived_count() == 1
    assert store.ticket_of_message_id("old@x") == "CW202611230001"
    assert store.archived_ticket_of("old@x") == "CW202611230001"
    assert store.already_seen("old@x", "other-hash")  # archived mail's ids still count
    e = store.archived_ticket("CW202611230001")
    assert e["ticket"]["id"] == "CW202611230001" and [m["message_id"] for m in e["messages"]] == ["old@x"]
    summaries = list(store.iter_archived_summaries("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"))
    assert len(summaries) == 1
    assert list(store.iter_archived_summaries("2026-12-01T00:00:00Z", None)) == []
    c = store.counts()
    assert (c["tickets_hot"], c["tickets_archived"]) == (1, 1)
    keys = [k for k, _d in store.fetch_all("tickets")]
    assert "CW202611230001" in keys or any(d.get("id") == "CW202611230001" for _k, d in store.fetch_all("tickets"))
    with store.batch():
        t = store.unarchive("CW202611230001")
        assert t is not None and t["id"] == "CW202611230001"
    assert store.ticket("CW202611230001") is not None
    assert [m["message_id"] for m in store.messages_of("CW202611230001")] == ["old@x"]


def test_search(store):
    from mailflow.search import Query

    with store.batch():
        store.add_ticket(_t("CW202611230001", subject="Refund please", customer_email="x@y.example"))
        store.add_message(_m("CW202611230001", "s1@x", text="我要退款 order 42", **{"from": "x@y.example"}))
        store.add_ticket(_t("CW202611230002", subject="Hello", created_at="2026-11-23T02:00:00Z"))
    rows, more = store.search(Query(text="退款"))
    assert [r["id"] for r in rows] == ["CW202611230001"] and not more
    rows, _ = store.search(Query(customer="X@Y.example"))
    assert [r["id"] for r in rows] == ["CW202611230001"]
    rows, more = store.search(Query(limit=1))
    assert [r["id"] for r in rows] == ["CW202611230002"] and more


# ---- what only PostgreSQL must guarantee ----------------------------------------------------------

@pytest.fixture
def pg_cfg(tmp_path, pg_dsn):
    return _cfg(tmp_path, pg_dsn)


def test_pg_refuses_an_unknown_schema(tmp_path, pg_server):
    import psycopg

    empty = pg_server.new_database(migrated=False)
    with pytest.raises(SchemaError, match="mailflow db upgrade"):
        open_store(_cfg(tmp_path, empty))
    from mailflow import pg_schema

    assert pg_schema.upgrade(empty) == (0, pg_schema.VERSION)
    assert pg_schema.upgrade(empty) == (pg_schema.VERSION, pg_schema.VERSION)  # twice is once
    open_store(_cfg(tmp_path, empty)).close()
    with psycopg.connect(empty, autocommit=True) as c:
        c.execute("INSERT INTO schema_version (version) VALUES (%s)", (pg_schema.VERSION + 1,))
    with pytest.raises(SchemaError, match="newer"):
        open_store(_cfg(tmp_path, empty))


def test_pg_concurrent_upgrades_are_serialised(pg_server):
    from mailflow import pg_schema

    dsn = pg_server.new_database(migrated=False)
    out: list = []
    ths = [threading.Thread(target=lambda: out.append(pg_schema.upgrade(dsn))) for _ in range(3)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    v = pg_schema.VERSION
    assert sorted(out) == [(0, v), (v, v), (v, v)]


def test_pg_two_connections_updating_one_ticket_lose_nothing(pg_cfg):
    a, b = open_store(pg_cfg), open_store(pg_cfg)
    try:
        with a.batch():
            a.add_ticket(_t("CW202611230001", n=0))
        errors: list = []

        def bump(s, times):
            for _ in range(times):
                try:
                    with s.batch():
                        t = s.ticket("CW202611230001")
                        s.update_ticket("CW202611230001", {"n": t["n"] + 1})
                except Exception as e:  # noqa: BLE001
                    errors.append(e)
        ths = [threading.Thread(target=bump, args=(s, 25)) for s in (a, b)]
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        assert not errors
        assert a.ticket("CW202611230001")["n"] == 50
    finally:
        a.close()
        b.close()


def test_pg_deadlock_aborts_the_whole_batch_and_a_retry_succeeds(pg_cfg):
    a, b = open_store(pg_cfg), open_store(pg_cfg)
    try:
        with a.batch():
            a.add_ticket(_t("CW202611230001"))
            a.add_ticket(_t("CW202611230002"))
        barrier = threading.Barrier(2)
        results: dict = {}

        def run(s, first, second, name):
            for attempt in range(3):
                try:
                    with s.batch():
                        s.set_checkpoint(name, last_uid=attempt)
                        s.update_ticket(first, {"by": name})
                        if attempt == 0:
                            barrier.wait(timeout=10)
                        s.update_ticket(second, {"by": name})
                    results[name] = attempt
                    return
                except BatchAborted:
                    results.setdefault("aborted", []).append(name)
        ta = threading.Thread(target=run, args=(a, "CW202611230001", "CW202611230002", "a"))
        tb = threading.Thread(target=run, args=(b, "CW202611230002", "CW202611230001", "b"))
        ta.start()
        tb.start()
        ta.join(30)
        tb.join(30)
        assert len(results["aborted"]) == 1  # one victim, retried once
        victim = results["aborted"][0]
        assert results[victim] == 1
        assert a.checkpoint(victim) == {"last_uid": 1}  # the aborted attempt moved nothing
    finally:
        a.close()
        b.close()


def _alloc(dsn: str, data_dir: str, n: int, q) -> None:
    from pathlib import Path

    cfg = _cfg(Path(data_dir), dsn)
    s = open_store(cfg)
    got = []
    for _ in range(n):
        while True:
            try:
                with s.batch():
                    tid = s.next_ticket_id("CW", "20261123")
                    s.add_ticket(_t(tid))
                got.append(tid)
                break
            except BatchAborted:
                continue
    s.close()
    q.put(got)


def test_pg_two_processes_allocate_distinct_serials(pg_cfg, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    ps = [ctx.Process(target=_alloc, args=(pg_cfg.pg.dsn, str(tmp_path / f"p{i}"), 30, q)) for i in range(2)]
    for p in ps:
        p.start()
    got = [q.get(timeout=120) for _ in ps]
    for p in ps:
        p.join(30)
    ids = got[0] + got[1]
    assert len(set(ids)) == 60
    assert sorted(ids) == [f"CW20261123{n:04d}" for n in range(1, 61)]


def test_pg_a_batch_allocating_serials_never_waits_for_another_daemons_batch(pg_cfg):
    """Two daemons creating tickets at once: the serial counter is not locked until either commits
    (measured before: two daemons' batches queued 26 s of 47 behind that one row)."""
    import threading

    a, b = open_store(pg_cfg), open_store(pg_cfg)
    got: list[str] = []
    try:
        with a.batch():
            ta = a.next_ticket_id("CW", "20261123")
            a.add_ticket(_t(ta))

            def other() -> None:
                with b.batch():
                    tb = b.next_ticket_id("CW", "20261123")
                    b.add_ticket(_t(tb))
                got.append(tb)

            t = threading.Thread(target=other)
            t.start()
            t.join(10)
            assert got == ["CW202611230002"]  # committed while a's batch is still open
        assert ta == "CW202611230001" and a.ticket(ta) and a.ticket(got[0])
        with pytest.raises(RuntimeError), a.batch():  # not the top one any more after b's: a gap
            a.next_ticket_id("CW", "20261123")
            with b.batch():
                b.add_ticket(_t(b.next_ticket_id("CW", "20261123")))
            raise RuntimeError("rolled back")
        with a.batch():
            assert a.next_ticket_id("CW", "20261123") == "CW202611230005"
    finally:
        a.close()
        b.close()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["CW", "HK"]), st.sampled_from(["20261123", "20261124"]),
                          st.booleans()), min_size=1, max_size=12))
def test_pg_serials_are_unique_and_rolled_back_serials_come_back(pg_server, tmp_path, plan):
    """Any mix of committed and failed allocations by one process: committed ids are unique and dense
    per day (a rolled-back batch gives its serials back while nobody allocated after it)."""
    s = open_store(_cfg(tmp_path, pg_server.new_database()))
    try:
        committed: list[str] = []
        for prefix, day, ok in plan:
            try:
                with s.batch():
                    tid = s.next_ticket_id(prefix, day)
                    s.add_ticket(_t(tid))
                    if not ok:
                        raise RuntimeError("rolled back")
                committed.append(tid)
            except RuntimeError:
                pass
        assert len(set(committed)) == len(committed)
        for prefix in ("CW", "HK"):
            for day in ("20261123", "20261124"):
                mine = sorted(t for t in committed if t.startswith(prefix + day))
                assert mine == [f"{prefix}{day}{n:04d}" for n in range(1, len(mine) + 1)]
    finally:
        s.close()


_CRASH = """
import os, sys, time
sys.path.insert(0, {repo!r})
from pathlib import Path
from mailflow import config
from mailflow.storeapi import open_store
cfg = config.defaults(Path({tmp!r}))
cfg.data_dir = Path({tmp!r}) / "data"
if {dsn!r}:
    cfg.backend, cfg.pg.dsn = "postgresql", {dsn!r}
s = open_store(cfg)
with s.batch():
    for i in range(5):
        s.add_ticket({{"id": "CW2026112300%02d" % (i + 1), "status": "new", "customer_email": "a@b",
                      "created_at": "2026-11-23T00:00:00Z"}})
    s.set_checkpoint("mb", last_uid=99)
    print("inside", flush=True)
    time.sleep(60)
"""


def test_kill_9_mid_batch_leaves_nothing(cfg, tmp_path):
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = _CRASH.format(repo=repo, tmp=str(tmp_path), dsn=cfg.pg.dsn if cfg.backend == "postgresql" else "")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "inside"
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.wait(30)
    time.sleep(0.2)
    s = open_store(cfg)
    try:
        assert s.ticket("CW202611230001") is None
        assert s.ticket_counts() == {}
        assert s.checkpoint("mb") == {}
        if cfg.backend == "postgresql":  # the server noticed the dead client: the row locks are gone
            with s.batch():
                s.add_ticket(_t("CW202611230001"))
    finally:
        s.close()


def test_pg_lost_connection_is_batch_aborted(pg_cfg):
    import psycopg

    s = open_store(pg_cfg)
    try:
        with pytest.raises(BatchAborted), s.batch():
            s.add_ticket(_t("CW202611230001"))
            pid = s._conn.info.backend_pid
            with psycopg.connect(pg_cfg.pg.dsn, autocommit=True) as c:
                c.execute("SELECT pg_terminate_backend(%s)", (pid,))
            s.add_ticket(_t("CW202611230002"))
        assert s.ticket("CW202611230001") is None  # and the pool hands out a working connection again
    finally:
        s.close()


def test_pg_daemon_status_rows(pg_cfg):
    s = open_store(pg_cfg)
    try:
        assert s.daemons() is None
        s.write_daemon_status({"pid": os.getpid(), "at": "now", "status": "ok"})
        d = s.daemons()
        assert d["running"] and d["status"] == "ok" and len(d["all"]) == 1
    finally:
        s.close()


_ = timedelta


def test_retention_forgets_old_archived_tickets(store, cfg):
    from mailflow import retention

    with store.batch():
        store.add_ticket(_t("CW201901020001", status="closed", closed_at="2019-01-03T00:00:00Z",
                            created_at="2019-01-02T00:00:00Z"))
        store.add_message(_m("CW201901020001", "gone@x"))
        store.add_ticket(_t("CW202611230001", status="closed", closed_at="2026-11-24T00:00:00Z"))
    with store.batch():
        assert store.archive(3.0, now=datetime(2026, 12, 30, tzinfo=UTC), cfg=cfg) == 2
    assert retention.expire_closed(store, datetime(2025, 1, 1, tzinfo=UTC), cfg) == 1
    assert not store.is_archived("CW201901020001") and store.is_archived("CW202611230001")
    assert store.archived_count() == 1
    assert store.get_meta("retention:log")[-1]["tickets"] == 1


def test_pg_leases_tokens_grow_and_a_fenced_batch_blocks_the_takeover(pg_cfg):
    """A lease is taken only when free, renewed only by its holder with its token, and a batch
    fenced on it keeps every other daemon from taking it until the commit (mailflow/cluster.py)."""
    import time

    from mailflow.storeapi import BatchAborted

    a, b = open_store(pg_cfg), open_store(pg_cfg)
    try:
        t1 = a.lease_acquire("mailbox:x", "A", 0.5)
        assert t1 == 1 and b.lease_acquire("mailbox:x", "B", 30) is None
        assert a.lease_renew({"mailbox:x": t1}, "A", 0.5) == ({"mailbox:x"}, set())
        assert b.lease_renew({"mailbox:x": t1}, "B", 30) == (set(), set())  # not B's
        time.sleep(0.7)
        t2 = b.lease_acquire("mailbox:x", "B", 30)
        assert t2 == 2  # expired: B takes it, with a new token
        assert a.lease_renew({"mailbox:x": t1}, "A", 30) == (set(), set())  # A learns it is lost
        with pytest.raises(BatchAborted, match="lease mailbox:x lost"), a.batch():
            a.fence("mailbox:x", "A", t1)
        b.lease_release("mailbox:x", "B", t2)
        with b.batch():
            b.set_checkpoint("x", n=1)
        t3 = a.lease_acquire("mailbox:x", "A", 30)
        assert t3 == 3
        with a.batch():
            a.fence("mailbox:x", "A", t3)
            assert b.lease_acquire("mailbox:x", "B", 30) is None  # fenced: skipped, never waited for
            assert b.lease_renew({"mailbox:x": t3}, "A", 30) == (set(), {"mailbox:x"})  # ours, locked
        assert {x["name"]: (x["holder"], x["token"], x["live"]) for x in b.leases()} == {"mailbox:x": ("A", 3, True)}
    finally:
        a.close()
        b.close()


def test_pg_outbox_claims_never_overlap_and_a_dead_claimer_frees_its_rows(pg_cfg):
    """Two senders claim disjoint rows; a row whose claimer's daemon lease is gone (it died) is
    free again; a row with a result not yet folded is never claimed; two folds never apply one
    result twice."""
    a, b = open_store(pg_cfg), open_store(pg_cfg)
    try:
        with a.batch():
            keys = [a.add_outbox({"ticket_id": "T", "status": "queued", "to": ["x@y.example"], "attempts": 0,
                                  "next_attempt_at": "2026-11-23T00:00:00Z", "created_at": "2026-11-23T00:00:00Z"},
                                 b"mail") for _ in range(10)]
        assert a.lease_acquire("daemon:A", "A", 30) and b.lease_acquire("daemon:B", "B", 30)
        now = "2026-11-24T00:00:00Z"
        ca = [k for k, _r in a.claim_outbox(now, "A", 6, 3600)]
        cb = [k for k, _r in b.claim_outbox(now, "B", 6, 3600)]
        assert len(ca) == 6 and len(cb) == 4 and set(ca) | set(cb) == set(keys)
        assert b.claim_outbox(now, "B", 6, 3600) == [(k, r) for k, r in b.claim_outbox(now, "B", 6, 3600)]
        a.outbox_journal().append([{"row": ca[0], "status": "sent", "at": now, "detail": "250 ok"}])
        a.lease_release("daemon:A", "A", 1)  # A is gone: its unsent claims are free, its result is not
        again = {k for k, _r in b.claim_outbox(now, "B", 20, 3600)}
        assert again == (set(ca) - {ca[0]}) | set(cb)
        import threading

        other: list[dict] = []

        def fold_b() -> None:
            with b.batch():
                other.append(b.outbox_journal().take())

        with a.batch():
            taken = a.outbox_journal().take()
            t = threading.Thread(target=fold_b)
            t.start()  # another daemon folding at the same moment waits for this commit ...
            t.join(0.5)
            assert t.is_alive()
        t.join(10)
        assert list(taken) == [ca[0]] and other == [{}]  # ... and finds nothing left to fold
        assert b.release_claims("B") == 9
    finally:
        a.close()
        b.close()


def test_changes_before_a_failed_savepoint_stay(store):
    with store.batch():
        store.add_ticket(_t("CW202611230001"))
    with store.batch():
        store.update_ticket("CW202611230001", {"status": "open", "n": 1})
        with pytest.raises(ValueError), store.savepoint():
            store.update_ticket("CW202611230001", {"n": 2, "wake_at": "2026-11-23T05:00:00Z"})
            assert store.ticket_counts() == {"open": 1}  # a query inside sees the batch's changes
            raise ValueError("undo n=2")
        assert store.ticket("CW202611230001")["n"] == 1
        store.update_ticket("CW202611230001", {"n": 3})
        assert store.customer_stats("a@b.example", datetime(2026, 11, 23, tzinfo=UTC))["open_tickets"] == 1
    t = store.ticket("CW202611230001")
    assert (t["status"], t["n"]) == ("open", 3) and store.next_wake() is None
