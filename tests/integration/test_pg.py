"""The PostgreSQL backend as an admin meets it: `db upgrade`, `check`, schema refusal, `db migrate`
from an existing TinyDB data directory (idempotent, read-only on the TinyDB files)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

from mailflow import pg_schema, resources
from mailflow.spool import Segments
from mailflow.store import Store
from tests.integration.helpers import mailflow

SAMPLES = sorted(resources.samples().glob("*.eml"))


def _cfg(tmp: Path, dsn: str | None, data: Path | None = None) -> Path:
    p = tmp / ("pg.toml" if dsn else "tiny.toml")
    lines = f'[storage]\ndata_dir = "{data or tmp / "data"}"\n'
    if dsn:
        lines += f'backend = "postgresql"\ndsn = "{dsn}"\n'
    p.write_text(lines + '[company]\nname = "Test Co."\n', encoding="utf-8")
    return p


def test_upgrade_check_and_refusal(tmp_path, pg_server):
    dsn = pg_server.new_database(migrated=False)
    cfg = _cfg(tmp_path, dsn)
    r = mailflow(cfg, "tickets", "list", check=False)
    assert r.returncode == 1 and "mailflow db upgrade" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = mailflow(cfg, "check", check=False)
    assert r.returncode == 1 and "schema version 0" in r.stderr and "mailflow db upgrade" in r.stderr
    v = pg_schema.VERSION
    assert f"upgraded from version 0 to {v}" in mailflow(cfg, "db", "upgrade").stdout
    assert f"up to date (version {v})" in mailflow(cfg, "db", "upgrade").stdout
    out = mailflow(cfg, "check").stdout
    assert "PostgreSQL 1" in out and f"schema version {v} (current)" in out
    assert mailflow(cfg, "tickets", "list", "--json").stdout.strip() == "[]"
    r = mailflow(_cfg(tmp_path, "postgresql://nobody@127.0.0.1:1/x"), "check", check=False)
    assert r.returncode == 1 and "FAILED" in r.stderr


def _tree_digest(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


def test_migrate_from_tinydb(tmp_path, pg_dsn):
    data = tmp_path / "data"
    tiny = _cfg(tmp_path, None, data)
    mailflow(tiny, "ingest", *map(str, SAMPLES))
    # some history: an archived ticket, a queued mail with its segment, quarantine, a checkpoint
    s = Store(data)
    seg = Segments(data / "outbox", ".out")
    [ref] = seg.write([b"Subject: queued\r\n\r\nhello\r\n"])
    with s.batch():
        s.add_ticket({"id": "CW202001150001", "status": "closed", "customer_email": "old@x.example",
                      "created_at": "2020-01-15T01:00:00Z", "closed_at": "2020-01-16T01:00:00Z", "subject": "old",
                      "events": []})
        s.add_message({"ticket_id": "CW202001150001", "message_id": "<old@x>", "hash": "h", "direction": "in",
                       "from": "old@x.example", "to": ["support@x.example"], "subject": "old", "text": "hi"})
        s.add_outbox({"ticket_id": "CW202001150001", "status": "queued", "to": ["old@x.example"], "attempts": 0,
                      "created_at": "2020-01-16T01:00:00Z", "next_attempt_at": "2020-01-16T01:00:00Z", "file": ref})
        s.add_quarantine({"status": "held", "spool": "nowhere", "hash": "qh", "reason": "test"})
        s.set_checkpoint("support", last_uid=42, uidvalidity=7)
        s.set_meta("serial:CW:20200115", 1)
    with s.batch():
        assert s.archive(3.0, now=datetime(2026, 1, 1, tzinfo=UTC)) == 1
    s.close()
    before = _tree_digest(data)
    tiny_list = json.loads(mailflow(tiny, "tickets", "list", "--json").stdout)

    pg = _cfg(tmp_path, pg_dsn, data)
    out = mailflow(pg, "db", "migrate", "--from", "tinydb", "--to", "postgresql").stdout
    assert "counts match" in out and "tickets_archived: 1 in TinyDB, 1 in PostgreSQL" in out
    again = mailflow(pg, "db", "migrate", "--from", "tinydb", "--to", "postgresql").stdout
    assert again.split("\n")[-6:] == out.split("\n")[-6:]  # a re-run adds nothing twice
    assert _tree_digest(data) == before  # the TinyDB files were only read

    pg_list = json.loads(mailflow(pg, "tickets", "list", "--json").stdout)
    assert [t["id"] for t in pg_list] == [t["id"] for t in tiny_list]
    shown = json.loads(mailflow(pg, "tickets", "show", "CW202001150001", "--json").stdout)
    assert shown["id"] == "CW202001150001"
    st = json.loads(mailflow(pg, "status", "--json").stdout)
    assert st["backend"] == "postgresql" and st["outbox"]["queued"] == 6 and st["quarantine"] == 1
    # the serials continue, replays stay duplicates, the queued mail's bytes are in the database
    from mailflow import config
    from mailflow.storeapi import open_store

    c = config.load(str(pg))
    ps = open_store(c)
    try:
        assert ps.checkpoint("support") == {"last_uid": 42, "uidvalidity": 7}
        assert ps.peek_ticket_id("CW", "20200115")[0] == "CW202001150002"
        k = next(k for k, r in ps.outbox_rows().items() if r["ticket_id"] == "CW202001150001")
        assert ps.outbox_data(k) == b"Subject: queued\r\n\r\nhello\r\n"
        assert ps.is_archived("CW202001150001") and ps.already_seen("<old@x>", "any")
    finally:
        ps.close()
    assert "7 duplicate" in mailflow(pg, "ingest", *map(str, SAMPLES)).stdout


def test_backup_verify_restore(tmp_path, pg_server):
    dsn = pg_server.new_database()
    cfg = _cfg(tmp_path, dsn)
    mailflow(cfg, "ingest", *map(str, SAMPLES))
    out = mailflow(cfg, "backup", "--out", str(tmp_path / "bk")).stdout
    assert "tickets 5 hot + 0 archived" in out
    [b] = sorted((tmp_path / "bk").glob("mailflow-backup-*.tar.gz"))
    assert "ok:" in mailflow(cfg, "verify", "--backup", str(b)).stdout
    assert "ok:" in mailflow(cfg, "verify").stdout
    # into another database and data directory
    target = pg_server.new_database(migrated=False)
    rcfg = tmp_path / "r.toml"
    rcfg.write_text(f'[storage]\ndata_dir = "{tmp_path / "restored"}"\nbackend = "postgresql"\ndsn = "{target}"\n',
                    encoding="utf-8")
    out = mailflow(rcfg, "restore", str(b)).stdout
    assert "verify: ok" in out
    before = json.loads(mailflow(cfg, "tickets", "list", "--json").stdout)
    after = json.loads(mailflow(rcfg, "tickets", "list", "--json").stdout)
    assert [t["id"] for t in after] == [t["id"] for t in before] and len(after) == 5
    shown = json.loads(mailflow(rcfg, "tickets", "show", after[0]["id"], "--json").stdout)
    assert shown["messages"]
    # a second restore over the now-full database needs --force
    r = mailflow(rcfg, "restore", str(b), check=False)
    assert r.returncode != 0 and "--force" in r.stderr
    # a damaged backup writes nothing
    bad = tmp_path / "bk" / "mailflow-backup-20000101T000000Z.tar.gz"
    raw = bytearray(b.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    bad.write_bytes(bytes(raw))
    assert mailflow(cfg, "verify", "--backup", str(bad), check=False).returncode == 1


def test_an_aborted_batch_commits_nothing_and_the_retry_makes_each_ticket_once(tmp_path, pg_dsn, monkeypatch):
    """The connection dies in the middle of a mailbox batch (as a deadlock victim's would): the
    pipeline does not quarantine the mail, the whole batch is rolled back (no ticket, no outbox
    row, checkpoint unmoved) and raises BatchAborted; the mailbox loop's retry then processes it
    once."""
    import psycopg
    import pytest

    from mailflow import config
    from mailflow.pipeline import Incoming
    from mailflow.runtime import Runtime
    from mailflow.store_pg import PgStore
    from mailflow.storeapi import BatchAborted

    cfg = config.load(str(_cfg(tmp_path, pg_dsn)))
    rt = Runtime.load(cfg)
    items = [Incoming(p.read_bytes(), mailbox="support", uid=i + 1) for i, p in enumerate(SAMPLES[:3])]
    real = PgStore.add_message
    calls = []

    def dying(self, m):
        calls.append(1)
        if len(calls) == 2:  # the second message of the batch: the server drops the connection
            with psycopg.connect(pg_dsn, autocommit=True) as c:
                c.execute("SELECT pg_terminate_backend(%s)", (self._conn.info.backend_pid,))
        return real(self, m)

    monkeypatch.setattr(PgStore, "add_message", dying)
    with pytest.raises(BatchAborted):
        rt.pipeline.process(items, checkpoint=("support", {"last_uid": 3, "uidvalidity": 1}))
    assert rt.store.ticket_counts() == {} and rt.store.outbox_counts() == {}
    assert rt.store.checkpoint("support") == {} and rt.store.quarantined() == []
    monkeypatch.setattr(PgStore, "add_message", real)
    results = rt.pipeline.process([Incoming(i.raw, mailbox="support", uid=i.uid) for i in items],
                                  checkpoint=("support", {"last_uid": 3, "uidvalidity": 1}))
    assert sorted(r.kind for r in results) == ["new", "new", "new"]
    assert rt.store.ticket_counts() == {"new": 3} and rt.store.checkpoint("support")["last_uid"] == 3
    rt.store.close()


def test_run_once_leaves_alone_what_a_daemon_holds(tmp_path, pg_dsn):
    """No database lock: `run --once` takes what no daemon holds a lease on (mailflow/cluster.py) and
    refuses (exit 1) only when daemons work every mailbox."""
    from mailflow import config
    from mailflow.storeapi import open_store

    cfg = _cfg(tmp_path, pg_dsn)
    cfg.write_text(cfg.read_text() + '[[mailbox]]\nname = "m1"\nhost = "127.0.0.1"\nport = 1\ntls = "none"\n'
                   'user = "m1"\npassword = "x"\ntimeout = 2\n', encoding="utf-8")
    s = open_store(config.load(str(cfg)))
    try:
        assert s.lease_acquire("daemon:other", "other", 60) and s.lease_acquire("mailbox:m1", "other", 60)
        r = mailflow(cfg, "run", "--once", check=False)
        assert r.returncode == 1 and "works every mailbox" in r.stderr, r.stderr
        s.lease_release("mailbox:m1", "other", 1)
        r = mailflow(cfg, "run", "--once", check=False)  # now it is ours to try (nothing listens)
        assert r.returncode == 3 and "m1" in r.stderr, r.stderr
        assert {x["name"] for x in s.leases() if x["live"]} == {"daemon:other"}  # it gave its own back
    finally:
        s.close()


def test_migrate_report_summaries(tmp_path, pg_server):
    """Archived tickets get the report summary the reports would compute: from the reports' month
    cache when it covers them (nothing recomputed), else computed; never the plain fields an
    index built without a config holds."""
    from mailflow import config, summary
    from mailflow.storeapi import open_store

    data = tmp_path / "data"
    tiny = _cfg(tmp_path, None, data)
    s = Store(data)
    with s.batch():
        for i, day in enumerate((3, 5, 9), 1):
            tid = f"CW2026100{day}000{i}"
            s.add_ticket({"id": tid, "status": "closed", "customer_email": f"c{i}@x.example", "subject": f"s{i}",
                          "created_at": f"2026-10-0{day}T01:00:00+00:00", "closed_at": f"2026-10-0{day}T05:00:00+00:00",
                          "events": [{"at": f"2026-10-0{day}T01:00:00+00:00", "kind": "created", "actor": "system"}]})
        assert s.archive(3.0, now=datetime(2026, 11, 1, tzinfo=UTC)) == 3
    s.close()
    cfg = config.load(str(tiny))

    def summaries(dsn: str) -> dict:
        c = config.load(str(_cfg(tmp_path, dsn, data)))
        ps = open_store(c)
        try:
            return {r[0]: r[1] for r in ps._q("SELECT id, summary FROM tickets WHERE archived")}
        finally:
            ps.close()

    want = {e["ticket"]["id"]: summary.summarize(e["ticket"], cfg) for e in
            (Store(data, create=False).archived_ticket(t) for t in ("CW202610030001", "CW202610050002",
                                                                    "CW202610090003"))}
    cold = pg_server.new_database()
    out = mailflow(_cfg(tmp_path, cold, data), "db", "migrate", "--from", "tinydb", "--to", "postgresql").stdout
    assert "(3 report summaries computed" in out and summaries(cold) == want
    mailflow(tiny, "report", "--month", "2026-10")  # the TinyDB reports' month cache
    warm = pg_server.new_database()
    out = mailflow(_cfg(tmp_path, warm, data), "db", "migrate", "--from", "tinydb", "--to", "postgresql").stdout
    assert "(0 report summaries computed" in out and summaries(warm) == want
