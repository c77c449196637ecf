"""The archive index (archive/index.sqlite) and the hot database's commit log: point queries
instead of a dict of every Message-ID, the newest copy wins, crash windows replay harmlessly, and
what is on disk always reproduces the last commit."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailflow import archive as archive_mod
from mailflow.store import AtomicStorage, Store, iso, materialize, parse_log

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _closed(tid: str, days_ago: float = 60, cust: str = "a@b.example", **kw) -> dict:
    at = iso(NOW - timedelta(days=days_ago))
    return {"id": tid, "status": "closed", "customer_email": cust, "created_at": at, "closed_at": at,
            "subject": f"subject of {tid}", "participants": [], **kw}


def _msg(tid: str, mid: str, frm: str = "a@b.example", direction: str = "in", **kw) -> dict:
    return {"ticket_id": tid, "message_id": mid, "hash": f"h-{mid}", "direction": direction, "from": frm,
            "to": ["support@x.example"], "cc": [], "text": "hello", **kw}


def _archive_one(s: Store, tid: str, mids: list[str], **kw) -> None:
    with s.batch():
        s.add_ticket(_closed(tid, **kw))
        for mid in mids:
            s.add_message(_msg(tid, mid))
        assert s.archive(3, now=NOW) == 1


# ---- the index ----------------------------------------------------------------------------------

def test_archived_tickets_are_found_by_point_queries(tmp_path):
    s = Store(tmp_path)
    _archive_one(s, "CW202609010001", ["a@x", "b@x"])
    s2 = Store(tmp_path)
    assert s2.ticket("CW202609010001") is None
    assert s2.is_archived("CW202609010001") and not s2.is_archived("CW202609010002")
    assert s2.archived_ticket_of("b@x") == "CW202609010001" and s2.archived_ticket_of("c@x") is None
    assert s2.ticket_of_message_id("a@x") == "CW202609010001"
    assert s2.already_seen("a@x", "anything")  # a replay of archived mail is a duplicate
    entry = s2.archived_ticket("CW202609010001")
    assert [m["message_id"] for m in entry["messages"]] == ["a@x", "b@x"]
    # the compatibility views answer by point queries too
    assert "CW202609010001" in s2.archived_tickets() and s2.archived_ids().get("b@x") == "CW202609010001"
    assert list(s2.archived_tickets()) == ["CW202609010001"] and len(s2.archived_ids()) == 2
    # nothing about the history is held in memory
    assert not any(isinstance(v, dict) and "a@x" in v for v in vars(s2).values())
    assert (tmp_path / "archive" / "index.sqlite").exists()
    assert not (tmp_path / "archive" / "index.jsonl").exists()


def test_unarchived_then_archived_again_the_newest_copy_wins(tmp_path):
    s = Store(tmp_path)
    _archive_one(s, "CW202609010001", ["a@x"])
    with s.batch():
        s.unarchive("CW202609010001")
        s.update_ticket("CW202609010001", {"status": "open", "closed_at": None})
        s.add_message(_msg("CW202609010001", "reply@x"))
    assert Store(tmp_path).ticket("CW202609010001")["status"] == "open"  # hot wins while hot
    with s.batch():
        s.update_ticket("CW202609010001", {"status": "closed", "closed_at": iso(NOW - timedelta(days=10)),
                                           "subject": "second copy"})
        assert s.archive(3, now=NOW) == 1
    lines = (tmp_path / "archive" / "2026-09.jsonl").read_bytes().splitlines()
    assert len(lines) == 2  # append-only: the old copy stays
    s2 = Store(tmp_path)
    e = s2.archived_ticket("CW202609010001")
    assert e["ticket"]["subject"] == "second copy" and len(e["messages"]) == 2
    assert s2.archived_ticket_of("reply@x") == "CW202609010001"


def test_a_crash_after_indexing_before_the_hot_commit_replays_harmlessly(tmp_path):
    s = Store(tmp_path)
    with s.batch():
        s.add_ticket(_closed("CW202609010001"))
        s.add_message(_msg("CW202609010001", "a@x"))
    with pytest.raises(RuntimeError), s.batch():
        s.archive(3, now=NOW)
        raise RuntimeError("killed before the commit")
    s2 = Store(tmp_path)
    assert s2.ticket("CW202609010001") is not None  # still hot: the hot copy wins
    assert s2.is_archived("CW202609010001")
    with s2.batch():
        s2.update_ticket("CW202609010001", {"subject": "newer"})
        assert s2.archive(3, now=NOW) == 1
    s3 = Store(tmp_path)
    assert s3.ticket("CW202609010001") is None
    assert s3.archived_ticket("CW202609010001")["ticket"]["subject"] == "newer"
    assert s3.archive_index.rebuild()["tickets"] == 1


def test_a_torn_last_archive_line_is_cut_off_before_the_next_append(tmp_path):
    s = Store(tmp_path)
    _archive_one(s, "CW202609010001", ["a@x"])
    month = tmp_path / "archive" / "2026-09.jsonl"
    with open(month, "ab") as f:
        f.write(b'{"ticket":{"id":"CW20260901')  # a crash in the middle of an append
    _archive_one(s, "CW202609020001", ["b@x"])
    lines = month.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(x) for x in lines[:-1]) and len(lines) == 3
    s2 = Store(tmp_path)
    assert s2.archived_ticket("CW202609020001")["messages"][0]["message_id"] == "b@x"
    assert s2.archive_index.rebuild()["tickets"] == 2


def test_an_old_data_directory_gets_its_index_built_from_the_month_files(tmp_path):
    (tmp_path / "archive").mkdir(parents=True)
    entries = [{"ticket": _closed(f"CW2026090{d}0001"), "messages": [_msg(f"CW2026090{d}0001", f"m{d}@x")]}
               for d in range(1, 4)]
    (tmp_path / "archive" / "2026-09.jsonl").write_bytes(b"".join(json.dumps(e).encode() + b"\n" for e in entries))
    (tmp_path / "archive" / "index.jsonl").write_text("".join(f"m{d}@x\tCW2026090{d}0001\n" for d in range(1, 4)))
    s = Store(tmp_path)
    assert s.archived_ticket_of("m2@x") == "CW202609020001"
    assert s.archived_ticket("CW202609030001")["ticket"]["id"] == "CW202609030001"
    assert not (tmp_path / "archive" / "index.jsonl").exists()


def test_rebuild_equals_the_incremental_index(tmp_path):
    s = Store(tmp_path)
    for d in range(1, 8):
        _archive_one(s, f"CW2026090{d}0001", [f"m{d}a@x", f"m{d}b@x"], cust=f"c{d % 3}@x.example",
                     days_ago=80 - d)
    idx = s.archive_index

    def dump():
        return (idx._query("SELECT * FROM ticket ORDER BY ticket_id"), idx._query("SELECT * FROM msgid ORDER BY 1"),
                idx._query("SELECT * FROM customer ORDER BY 1, 2"))

    before = dump()
    idx.rebuild()
    assert dump() == before
    assert [r["ticket_id"] for r in idx.search(customer="C1@x.example")] == ["CW202609070001", "CW202609040001",
                                                                           "CW202609010001"]


def test_summaries_stream_by_creation_date(tmp_path):
    s = Store(tmp_path)
    for d in range(1, 6):
        _archive_one(s, f"CW2026090{d}0001", [f"m{d}@x"], days_ago=90 - d, category="complaint",
                     events=[{"at": "x", "kind": "created"}])
    got = list(s.iter_archived_summaries())
    assert [g["id"] for g in got] == [f"CW2026090{d}0001" for d in range(1, 6)]
    assert all("events" not in g and g["category"] == "complaint" for g in got)
    lo, hi = iso(NOW - timedelta(days=88)), iso(NOW - timedelta(days=86))
    assert [g["id"] for g in s.iter_archived_summaries(lo, hi)] == ["CW202609020001", "CW202609030001"]


def test_a_reader_never_creates_an_index(tmp_path):
    Store(tmp_path)
    s = Store(tmp_path, create=False)
    assert s.archived_ticket_of("x@y") is None and not s.is_archived("CW1")
    assert not (tmp_path / "archive" / "index.sqlite").exists()


def test_addresses_of_covers_requester_participants_senders_and_recipients():
    t = {"customer_email": "Req@X.example", "participants": ["p@x.example"]}
    msgs = [{"direction": "in", "from": "req@x.example", "to": ["support@us.example"], "cc": ["cc@x.example"]},
            {"direction": "out", "from": "support@us.example", "to": ["req@x.example", "staff@us.example"]}]
    assert archive_mod.addresses_of(t, msgs) == {"req@x.example", "p@x.example", "cc@x.example",
                                                 "staff@us.example"}


# ---- the commit log -----------------------------------------------------------------------------

def test_a_commit_appends_what_changed_and_leaves_the_snapshot_alone(tmp_path):
    s = Store(tmp_path)
    with s.batch():
        for i in range(200):
            s.add_ticket({"id": f"CW20261123{i:04d}", "status": "new", "customer_email": "a@b.example"})
    snap = s.db_path.read_bytes()
    assert len(json.loads(snap)["tickets"]) == 200  # the first commit writes a snapshot
    with s.batch():
        s.update_ticket("CW202611230007", {"status": "open"})
        s.set_checkpoint("support", last_uid=9)
    assert s.db_path.read_bytes() == snap
    records, end = parse_log(s.storage.log_path.read_bytes())
    assert end == s.storage.log_path.stat().st_size and len(records) == 1
    assert sorted((t, k) for t, k, _d in records[0]["ops"]) == [("meta", "1"), ("tickets", "8")]
    s2 = Store(tmp_path)
    assert s2.ticket("CW202611230007")["status"] == "open" and s2.checkpoint("support") == {"last_uid": 9}


def test_a_torn_log_record_is_ignored_and_cut_off(tmp_path):
    s = Store(tmp_path)
    with s.batch():
        s.add_ticket({"id": "CW202611230001", "status": "new"})
    with s.batch():
        s.update_ticket("CW202611230001", {"status": "open"})
    good = s.storage.log_path.stat().st_size
    with open(s.storage.log_path, "ab") as f:
        f.write(b'0badc0de {"ops":[["tickets","1",{"id":"CW2')  # a commit that never returned
    s2 = Store(tmp_path)
    assert s2.ticket("CW202611230001")["status"] == "open"
    with s2.batch():
        s2.update_ticket("CW202611230001", {"status": "pending"})
    records, end = parse_log(s2.storage.log_path.read_bytes())
    assert end == s2.storage.log_path.stat().st_size > good and len(records) == 2
    assert Store(tmp_path).ticket("CW202611230001")["status"] == "pending"


def test_a_corrupt_record_ends_the_log(tmp_path):
    s = Store(tmp_path)
    with s.batch():
        s.add_ticket({"id": "CW202611230001", "status": "new"})
    for st_ in ("open", "pending"):
        with s.batch():
            s.update_ticket("CW202611230001", {"status": st_})
    raw = bytearray(s.storage.log_path.read_bytes())
    first = raw.index(b"\n") + 1  # after the header (the snapshot's size and CRC)
    second = raw.index(b"\n", first) + 1
    raw[second + 12] ^= 0x01  # one bit of the second record flipped: its checksum fails
    s.storage.log_path.write_bytes(bytes(raw))
    assert Store(tmp_path).ticket("CW202611230001")["status"] == "open"


def test_the_log_is_folded_into_a_new_snapshot_when_it_grows(tmp_path, monkeypatch):
    monkeypatch.setattr(AtomicStorage, "LOG_MIN", 2000)
    s = Store(tmp_path)
    with s.batch():
        s.add_ticket({"id": "CW202611230001", "status": "new", "n": 0})
    for n in range(1, 60):
        with s.batch():
            s.update_ticket("CW202611230001", {"n": n, "pad": "x" * 100})
    assert s.storage.log_path.stat().st_size <= 2000 + 400
    assert json.loads(s.db_path.read_bytes())["tickets"]["1"]["n"] > 1  # folded at least once
    assert Store(tmp_path).ticket("CW202611230001")["n"] == 59


def test_a_crash_between_the_new_snapshot_and_emptying_the_log_is_harmless(tmp_path):
    s = Store(tmp_path)
    with s.batch():
        s.add_ticket({"id": "CW202611230001", "status": "new"})
        s.add_ticket({"id": "CW202611230002", "status": "new"})
    with s.batch():
        s.update_ticket("CW202611230001", {"status": "open"})
        s._drop("tickets", s._tid.pop("CW202611230002"))
    old_log = s.storage.log_path.read_bytes()
    s.storage.write_snapshot()  # compaction ...
    s.storage.log_path.write_bytes(old_log)  # ... and the log was never emptied
    s2 = Store(tmp_path)
    assert s2.ticket("CW202611230001")["status"] == "open" and s2.ticket("CW202611230002") is None
    assert len(s2.all_tickets()) == 1


def test_an_untracked_change_writes_a_whole_snapshot(tmp_path):
    s = Store(tmp_path)
    with s.batch():
        s.add_ticket({"id": "CW202611230001", "status": "new"})
    with s.batch():
        s.ticket("CW202611230001")["status"] = "open"  # bypasses _changing ...
        s.storage.dirty = True  # ... and says so: the old contract still works
    assert json.loads(s.db_path.read_bytes())["tickets"]["1"]["status"] == "open"
    assert Store(tmp_path).ticket("CW202611230001")["status"] == "open"


def test_the_store_check_catches_an_untracked_change(tmp_path, monkeypatch):
    from mailflow.store import StoreError

    monkeypatch.setenv("MAILFLOW_STORE_CHECK", "1")
    s = Store(tmp_path)
    with s.batch():
        s.add_ticket({"id": "CW202611230001", "status": "new"})
        s.add_ticket({"id": "CW202611230002", "status": "new"})
    with pytest.raises(StoreError), s.batch():
        s.ticket("CW202611230002")["status"] = "lost"  # changed in memory, never logged
        s.update_ticket("CW202611230001", {"status": "open"})


def _state(s: Store) -> str:
    """The database as JSON, empty tables left out (one store may have touched a table another has not)."""
    return json.dumps({k: v for k, v in materialize(s.storage.data).items() if v}, sort_keys=True)


OPS = st.lists(st.tuples(st.sampled_from(["add", "update", "drop", "meta", "fail"]), st.integers(0, 6)),
               min_size=1, max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(OPS, st.integers(0, 10_000))
def test_what_is_on_disk_is_always_the_last_commit(tmp_path_factory, ops, cut):
    """Random batches, some failing; after each the files on disk load to exactly the committed
    state, and any torn suffix of the log loads to some earlier committed state."""
    d = tmp_path_factory.mktemp("log")
    s = Store(d)
    AtomicStorage.LOG_MIN = 3000  # fold often
    states = []
    try:
        for op, n in ops:
            tid = f"CW20261123{n:04d}"
            try:
                with s.batch():
                    if op == "add" and s.ticket(tid) is None:
                        s.add_ticket({"id": tid, "status": "new", "n": 0})
                    elif op == "update" and s.ticket(tid) is not None:
                        s.update_ticket(tid, {"n": s.ticket(tid)["n"] + 1})
                    elif op == "drop" and s.ticket(tid) is not None:
                        s._drop("tickets", s._tid.pop(tid))
                    elif op == "meta":
                        s.set_meta(f"k{n}", [n, len(states)])
                    elif op == "fail":
                        s.add_ticket({"id": "CW209901010001", "status": "new"})
                        raise KeyError("boom")
            except KeyError:
                pass
            snap = _state(s)
            states.append(snap)
            assert _state(Store(d)) == snap
        if s.storage.log_path.exists():  # a crash part-way through the last append
            raw = s.storage.log_path.read_bytes()
            s.storage.log_path.write_bytes(raw[: cut % (len(raw) + 1)])
            assert _state(Store(d)) in states + ["{}"]
    finally:
        AtomicStorage.LOG_MIN = 8 * 1024 * 1024


def test_replaying_the_log_keeps_insertion_order(tmp_path):
    s = Store(tmp_path)
    with s.batch():
        s.add_ticket({"id": "CW202611230001", "status": "new"})
        for i in range(1, 8):
            s.add_message(_msg("CW202611230001", f"m{i}@x"))
    with s.batch():  # keys 8..12 in one commit: "10" sorts before "8" as text
        for i in range(8, 13):
            s.add_message(_msg("CW202611230001", f"m{i}@x"))
    assert [m["message_id"] for m in Store(tmp_path).messages_of("CW202611230001")] == \
        [f"m{i}@x" for i in range(1, 13)]


# ---- the snapshot: one document per line, read lazily ---------------------------------------------

def test_the_snapshot_is_plain_tinydb_json_read_lazily(tmp_path):
    from tinydb import TinyDB

    from mailflow.store import LazyTable

    s = Store(tmp_path)
    with s.batch():
        for i in range(1, 6):
            s.add_ticket({"id": f"CW20261123{i:04d}", "status": "new", "subject": f'line\n"{i}"\\'})
            s.add_message(_msg(f"CW20261123{i:04d}", f"m{i}@x"))
        s.set_checkpoint("support", last_uid=5)
        s.storage.dirty = True
    with TinyDB(s.db_path) as db:  # any TinyDB tool reads it
        assert len(db.table("tickets")) == 5 and db.table("tickets").get(doc_id=3)["subject"] == 'line\n"3"\\'
    s2 = Store(tmp_path)
    tables = s2.storage.data
    assert all(isinstance(t, LazyTable) and t._block is not None for t in tables.values())
    assert s2.checkpoint("support") == {"last_uid": 5}
    assert tables["tickets"]._block is not None  # the tickets were not even split
    assert s2.ticket("CW202611230004")["subject"] == 'line\n"4"\\'
    assert [m["message_id"] for m in s2.messages_of("CW202611230002")] == ["m2@x"]
    assert "_msg" not in vars(s2) and "_tid" not in vars(s2)  # one lookup built no index
    assert sum(type(v) is dict for v in dict.values(tables["tickets"])) == 1  # and parsed one ticket
    with s2.batch():
        s2.update_ticket("CW202611230001", {"status": "open"})
    assert Store(tmp_path).ticket("CW202611230001")["status"] == "open"


def test_a_damaged_snapshot_is_refused_at_load(tmp_path):
    from mailflow.store import StoreError

    s = Store(tmp_path)
    with s.batch():
        for i in range(1, 4):
            s.add_ticket({"id": f"CW20261123{i:04d}", "status": "new"})
    raw = bytearray(s.db_path.read_bytes())
    raw[raw.index(b'"status"') + 8] = ord(",")  # a document no longer parses
    s.db_path.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="restore it from a backup"):
        Store(tmp_path)


def test_an_old_single_line_snapshot_still_loads(tmp_path):
    (tmp_path / "mailflow.json").write_text(json.dumps(
        {"tickets": {"1": {"id": "CW202611230001", "status": "new"}}, "meta": {}}))
    s = Store(tmp_path)
    assert s.ticket("CW202611230001")["status"] == "new"
    with s.batch():
        s.add_ticket({"id": "CW202611230002", "status": "new"})
    assert len(Store(tmp_path).all_tickets()) == 2


def test_a_loop_of_lookups_builds_the_index_instead_of_scanning_each_time(tmp_path):
    s = Store(tmp_path)
    with s.batch():
        for i in range(1, 41):
            s.add_ticket({"id": f"CW20261123{i:04d}", "status": "new"})
            s.add_message(_msg(f"CW20261123{i:04d}", f"m{i}@x"))
        s.storage.dirty = True
    s2 = Store(tmp_path)
    got = [len(s2.messages_of(t["id"])) for t in s2.all_tickets()]
    assert got == [1] * 40 and "_msgs_by_ticket" in vars(s2) and s2._scans <= 3


def test_hot_ticket_ids_without_parsing(tmp_path):
    s = Store(tmp_path)
    with s.batch():
        s.add_ticket({"id": "CW202611230001", "status": "new"})
        s.add_ticket({"status": "new", "id": "CW202611230002"})  # not written id-first: parsed
        s.add_ticket({"id": 'CW2026\\"odd', "status": "new"})
        s.storage.dirty = True
    s2 = Store(tmp_path)
    assert s2.hot_ticket_ids() == ["CW202611230001", "CW202611230002", 'CW2026\\"odd']
    assert s2.hot_ticket_ids() == [t["id"] for t in s2.all_tickets()]


def test_message_counts_from_the_lines_or_by_parsing(tmp_path):
    s = Store(tmp_path)
    with s.batch():
        s.add_ticket({"id": "CW202611230001", "status": "new"})
        s.add_message(_msg("CW202611230001", "a@x"))
        s.add_message({"ticket_id": None, "message_id": "orphan@x", "direction": "in"})
        s.storage.dirty = True
    s2 = Store(tmp_path)
    assert s2.message_count("CW202611230001") == 1 and s2._table("messages")._block is not None
    with s2.batch():  # a message written in another field order: counted by parsing it
        s2.add_message({"direction": "out", "message_id": "b@x", "ticket_id": "CW202611230001"})
        s2.storage.dirty = True
    s3 = Store(tmp_path)
    assert s3.message_count("CW202611230001") == 2
    assert [m["message_id"] for m in s3.messages_of("CW202611230001")] == ["a@x", "b@x"]
    assert s3.ticket_of_message_id("orphan@x") is None and s3.already_seen("b@x", "")


def test_the_config_country_check_knows_what_holidays_knows():
    import holidays

    from mailflow import sla

    assert sla._supported_countries() == frozenset(holidays.list_supported_countries())
