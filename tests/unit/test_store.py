"""The ticket store: atomic writes, batching, rollback, ids that never repeat, archives."""

from __future__ import annotations

import json
import multiprocessing
import os
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailflow.store import Store, StoreError, iso


def _ticket(tid: str, **kw) -> dict:
    return {"id": tid, "status": "new", "customer_email": "a@b.example", "created_at": iso(datetime.now(UTC)),
            **kw}


def test_batch_writes_once_and_survives_reopen(tmp_path):
    s = Store(tmp_path)
    with s.batch():
        for i in range(50):
            tid = s.next_ticket_id("CW", "20261123")
            s.add_ticket(_ticket(tid))
            s.add_message({"ticket_id": tid, "message_id": f"m{i}@x", "hash": f"h{i}", "direction": "in"})
        assert not s.db_path.exists() or json.loads(s.db_path.read_bytes()).get("tickets") is None
    data = json.loads(s.db_path.read_bytes())
    assert len(data["tickets"]) == 50
    s2 = Store(tmp_path)
    assert s2.ticket("CW202611230050") is not None
    assert s2.ticket_of_message_id("m3@x") == "CW202611230004"
    assert s2.already_seen("m3@x", "h3") and not s2.already_seen("m3@x", "other")


def test_failed_batch_leaves_disk_untouched(tmp_path):
    s = Store(tmp_path)
    with s.batch():
        s.add_ticket(_ticket("CW202611230001"))
    with pytest.raises(RuntimeError), s.batch():
        s.add_ticket(_ticket("CW202611230002"))
        raise RuntimeError("boom")
    assert s.ticket("CW202611230002") is None
    assert Store(tmp_path).ticket("CW202611230002") is None


def test_savepoint_undoes_one_message_only(tmp_path):
    s = Store(tmp_path)
    with s.batch():
        s.add_ticket(_ticket("CW202611230001"))
        with pytest.raises(ValueError), s.savepoint():
            s.add_ticket(_ticket("CW202611230002"))
            s.update_ticket("CW202611230001", {"status": "open"})
            raise ValueError("half done")
        s.add_ticket(_ticket("CW202611230003"))
    s2 = Store(tmp_path)
    assert s2.ticket("CW202611230002") is None
    assert s2.ticket("CW202611230001")["status"] == "new"
    assert s2.ticket("CW202611230003") is not None


def test_change_outside_batch_is_refused(tmp_path):
    with pytest.raises(StoreError):
        Store(tmp_path).add_ticket(_ticket("CW202611230001"))


def test_serial_widens_past_9999(tmp_path):
    s = Store(tmp_path)
    with s.batch():
        s.set_meta("serial:CW:20261123", 9998)
        ids = [s.next_ticket_id("CW", "20261123") for _ in range(3)]
    assert ids == ["CW202611239999", "CW2026112310000", "CW2026112310001"]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(["20261122", "20261123", "20261231"]), min_size=1, max_size=40))
def test_ticket_ids_never_repeat(tmp_path_factory, days):
    s = Store(tmp_path_factory.mktemp("ids"))
    seen = set()
    for chunk in (days[: len(days) // 2], days[len(days) // 2:]):
        with s.batch():
            for d in chunk:
                tid = s.next_ticket_id("CW", d)
                s.add_ticket(_ticket(tid))
                assert tid not in seen
                seen.add(tid)
        s = Store(s.dir)  # reopen between batches, as after a restart


def test_torn_write_is_impossible(tmp_path):
    """The file on disk is always the old or the new complete JSON: no temp file left behind."""
    s = Store(tmp_path)
    with s.batch():
        s.add_ticket(_ticket("CW202611230001"))
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    json.loads(s.db_path.read_bytes())


def _writer(path, n, prefix):
    s = Store(path)
    for _ in range(n):
        with s.batch():
            s.add_ticket(_ticket(s.next_ticket_id(prefix, "20261123")))


def test_two_processes_never_corrupt_each_other(tmp_path):
    ps = [multiprocessing.Process(target=_writer, args=(tmp_path, 40, "CW")) for _ in range(2)]
    for p in ps:
        p.start()
    for p in ps:
        p.join(60)
    s = Store(tmp_path)
    assert len(s.all_tickets()) == 80
    assert len({t["id"] for t in s.all_tickets()}) == 80


def test_archive_moves_old_closed_tickets_and_keeps_threading(tmp_path):
    s = Store(tmp_path)
    old = iso(datetime.now(UTC) - timedelta(days=60))
    with s.batch():
        s.add_ticket(_ticket("CW202609010001", status="closed", closed_at=old, created_at=old))
        s.add_message({"ticket_id": "CW202609010001", "message_id": "old@x", "hash": "h", "direction": "in"})
        s.add_ticket(_ticket("CW202611230001"))
        assert s.archive(30) == 1
    s2 = Store(tmp_path)
    assert s2.ticket("CW202609010001") is None
    assert s2.ticket_of_message_id("old@x") == "CW202609010001"
    assert (tmp_path / "archive").glob("*.jsonl")
    with s2.batch():  # an archived id is never handed out again
        s2.set_meta("serial:CW:20260901", 0)
        assert s2.next_ticket_id("CW", "20260901") == "CW202609010002"
    assert os.path.getsize(s2.db_path) > 0


def test_prune_drops_old_seen_keys_and_sent_rows(tmp_path):
    s = Store(tmp_path)
    old = iso(datetime.now(UTC) - timedelta(days=40))
    with s.batch():
        s.mark_seen("a@x", "h", "auto")
        s.add_outbox({"status": "sent", "sent_at": old, "file": "f1.eml", "ticket_id": "T"})
        s.add_outbox({"status": "queued", "sent_at": None, "file": "f2.eml", "ticket_id": "T"})
    with s.batch():
        for v in s._table("seen").values():
            v["at"] = old
        assert s.prune() == ["f1.eml"]
    s2 = Store(tmp_path)
    assert not s2.already_seen("a@x", "h")
    assert [r["file"] for r in s2.outbox_rows().values()] == ["f2.eml"]


def test_replay_of_archived_mail_is_still_a_duplicate(tmp_path):
    s = Store(tmp_path)
    old = iso(datetime.now(UTC) - timedelta(days=60))
    with s.batch():
        s.add_ticket(_ticket("CW202609010001", status="closed", closed_at=old, created_at=old))
        s.add_message({"ticket_id": "CW202609010001", "message_id": "old@x", "hash": "h", "direction": "in"})
        s.archive(30)
    assert Store(tmp_path).already_seen("old@x", "h")


def test_a_failed_commit_leaves_nothing_in_memory(tmp_path, monkeypatch):
    import mailflow.store as store_mod

    s = Store(tmp_path)
    with s.batch():
        s.add_ticket(_ticket("CW202611230001"))

    def full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_mod, "write_atomic", full)
    monkeypatch.setattr(store_mod.AtomicStorage, "_append", lambda self, rec: full(None, rec))  # the commit log
    with pytest.raises(OSError), s.batch():
        s.add_ticket(_ticket("CW202611230002"))
        s.add_outbox({"status": "queued", "ticket_id": "CW202611230002"})
    assert s.ticket("CW202611230002") is None and s.outbox_rows() == {}
    assert s.ticket("CW202611230001") is not None


def test_savepoint_undoes_indexes_too(tmp_path):
    s = Store(tmp_path)
    now = datetime.now(UTC)
    with s.batch():
        with pytest.raises(ValueError), s.savepoint():
            s.add_ticket(_ticket("CW202611230001", category="complaint"))
            s.add_message({"ticket_id": "CW202611230001", "message_id": "m@x", "hash": "h", "direction": "in"})
            s.mark_seen("a@x", "h2", "auto")
            s.set_meta("k", 1)
            raise ValueError
        assert s.ticket_of_message_id("m@x") is None and not s.already_seen("m@x", "h")
        assert not s.already_seen("a@x", "h2") and s.get_meta("k") is None
        assert s.customer_stats("a@b.example", now) == {"open_tickets": 0, "complaints_30d": 0, "spam_count": 0}
        s.add_ticket(_ticket("CW202611230002"))
    assert [t["id"] for t in Store(tmp_path).all_tickets()] == ["CW202611230002"]


def test_prune_drops_stale_flood_cap_rows(tmp_path):
    s = Store(tmp_path)
    with s.batch():
        s.set_meta("auto:old@x", [iso(datetime.now(UTC) - timedelta(hours=2))])
        s.set_meta("auto:new@x", [iso(datetime.now(UTC))])
        s.prune()
    s2 = Store(tmp_path)
    assert s2.get_meta("auto:old@x") is None and s2.get_meta("auto:new@x")


def test_newest_hot_tickets_parses_only_what_it_returns(tmp_path):
    s = Store(tmp_path)
    with s.batch():
        for day in ("20261124", "20261123"):  # inserted out of id order
            for _ in range(30):
                s.add_ticket(_ticket(s.next_ticket_id("CW", day)))
    everything = sorted(t["id"] for t in Store(tmp_path).all_tickets())
    fresh = Store(tmp_path)
    total, newest = fresh.newest_hot_tickets(5)
    assert total == 60 and [t["id"] for t in newest] == everything[-5:]
    assert "_tid" not in fresh.__dict__  # no index was built, so not every ticket was parsed
    assert [t["id"] for t in fresh.newest_hot_tickets(None)[1]] == everything
    assert fresh.newest_hot_tickets(0) == (60, [])
    fresh.ticket("CW202611240001"), fresh.ticket("CW202611240002"), fresh.ticket("CW202611240003")
    fresh.ticket("CW202611240004")  # the index is built now: the same answer from it
    assert "_tid" in fresh.__dict__
    assert [t["id"] for t in fresh.newest_hot_tickets(5)[1]] == everything[-5:]
