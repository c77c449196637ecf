"""The PostgreSQL schema as an ordered list of migrations, and `mailflow db upgrade`.

`MIGRATIONS[i]` takes the schema from version i to i+1; `schema_version` records each applied
step. `upgrade()` runs the missing steps, each in its own transaction, under an advisory lock
(two admins, or two hosts' package scripts, running it at once are serialised; the second finds
nothing to do), so it is idempotent and safe to run twice. `check()` is what every command does
before it touches the database: a schema older or newer than this mailflow knows is refused with
one line naming `mailflow db upgrade`.

Tables (migration 1). Documents are the TinyDB store's dicts as JSONB (`doc`); the columns beside
them are what is queried, each behind an index, so a commit costs what it changes and every CLI
query is an index lookup:

- tickets: id, status, customer_email, created_at, closed_at, wake_at (the scheduler's index),
  scheduled (false: never looked at by the scheduler), archived + summary (see below);
- messages: message_id (threading, idempotency), ticket_id (a ticket's conversation), hash,
  direction, mailbox (UIDVALIDITY resync), archived (its ticket's flag, so hot queries skip history);
- outbox: status + next_attempt_at (the sender's due query), ticket_id, the mail's bytes (`data`),
  and claimed_by / claim_until for the senders' `FOR UPDATE SKIP LOCKED` claims; outbox_results is the
  sender's journal (one row per result, folded into outbox by any daemon);
- seen, meta, quarantine; serials: one counter row per (prefix, day), bumped with RETURNING in
  the batch that creates the ticket; checkpoints: one row per mailbox; leases: mailbox, scheduler
  and daemon leases with expiry and fencing tokens (mailflow/cluster.py); daemons: each daemon's
  last status report (`mailflow status`).

Times are ISO 8601 UTC strings as everywhere in mailflow, compared as strings: their columns (and
ticket ids) are `COLLATE "C"`, so ranges and orders are byte orders whatever the database's locale.

Archived tickets stay in `tickets` with `archived = true` and their report summary in `summary`:
archiving and unarchiving are one UPDATE each (no copy of the messages), a Message-ID is found
through one index whether its ticket is hot or archived, hot queries use partial indexes
(`WHERE NOT archived`) so the history does not slow them, and reports stream `summary` in
creation order through (archived, created_at, id).
"""

from __future__ import annotations

import psycopg

LOCK_KEY = 0x6D61696C666C6F77  # "mailflow": the advisory lock `upgrade` holds

MIGRATIONS: list[str] = [
    # 1: everything the store needs, cluster operation included
    """
    CREATE TABLE tickets (
        id text COLLATE "C" PRIMARY KEY,
        status text NOT NULL,
        customer_email text NOT NULL DEFAULT '',
        created_at text COLLATE "C" NOT NULL DEFAULT '',
        closed_at text COLLATE "C",
        wake_at text COLLATE "C",
        scheduled boolean NOT NULL DEFAULT true,
        archived boolean NOT NULL DEFAULT false,
        doc jsonb NOT NULL,
        summary jsonb
    );
    CREATE INDEX tickets_hot_status ON tickets (status) WHERE NOT archived;
    CREATE INDEX tickets_customer ON tickets (customer_email);
    CREATE INDEX tickets_wake ON tickets (wake_at, id) WHERE wake_at IS NOT NULL AND NOT archived;
    CREATE INDEX tickets_unscheduled ON tickets (id) WHERE NOT scheduled AND NOT archived;
    CREATE INDEX tickets_created ON tickets (archived, created_at, id);
    CREATE INDEX tickets_closed ON tickets (closed_at) WHERE status = 'closed';

    CREATE TABLE messages (
        k bigserial PRIMARY KEY,
        ticket_id text,
        message_id text NOT NULL,
        hash text NOT NULL DEFAULT '',
        direction text NOT NULL,
        mailbox text,
        archived boolean NOT NULL DEFAULT false,
        doc jsonb NOT NULL
    );
    CREATE INDEX messages_mid ON messages (message_id);
    CREATE INDEX messages_ticket ON messages (ticket_id, k);
    CREATE INDEX messages_mailbox ON messages (mailbox, k) WHERE NOT archived;

    CREATE TABLE seen (key text PRIMARY KEY, outcome text, at text COLLATE "C" NOT NULL DEFAULT '');
    CREATE INDEX seen_at ON seen (at);
    CREATE TABLE meta (key text PRIMARY KEY, value jsonb);
    CREATE TABLE serials (prefix text NOT NULL, day text NOT NULL, n integer NOT NULL,
                          PRIMARY KEY (prefix, day));
    CREATE TABLE checkpoints (mailbox text PRIMARY KEY, doc jsonb NOT NULL DEFAULT '{}',
                              lease_holder text, lease_token bigint);
    CREATE TABLE leases (name text PRIMARY KEY, holder text NOT NULL, token bigint NOT NULL DEFAULT 0,
                         acquired_at timestamptz NOT NULL DEFAULT now(), expires_at timestamptz NOT NULL,
                         info jsonb);
    CREATE TABLE daemons (id text PRIMARY KEY, host text, pid integer, started_at timestamptz,
                          seen_at timestamptz NOT NULL DEFAULT now(), doc jsonb);

    CREATE TABLE outbox (
        k bigserial PRIMARY KEY,
        status text NOT NULL,
        ticket_id text,
        next_attempt_at text COLLATE "C",
        sent_at text COLLATE "C",
        created_at text COLLATE "C",
        claimed_by text,
        claim_until timestamptz,
        doc jsonb NOT NULL,
        data bytea
    );
    CREATE INDEX outbox_due ON outbox (next_attempt_at, k) WHERE status = 'queued';
    CREATE INDEX outbox_status ON outbox (status, k);
    CREATE INDEX outbox_ticket ON outbox (ticket_id);
    CREATE TABLE outbox_results (k bigserial PRIMARY KEY, row_k bigint NOT NULL, doc jsonb NOT NULL);

    CREATE TABLE quarantine (k bigserial PRIMARY KEY, status text, hash text, spool text, doc jsonb NOT NULL);
    CREATE INDEX quarantine_status ON quarantine (status);
    CREATE INDEX quarantine_hash ON quarantine (hash);
    CREATE INDEX quarantine_spool ON quarantine (spool);
    """,
    # 2: what the CLI needs on a large store (issue 16's 1M-ticket benchmark): search by words and
    # by address through indexes instead of reading every document, newest tickets first
    """
    CREATE EXTENSION IF NOT EXISTS pg_trgm;
    -- the text `tickets search TEXT` matches (search.py `_has_words`): a message's subject and
    -- text, a ticket's subject and customer name, lower case
    CREATE FUNCTION mailflow_text(d jsonb) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
        AS $$ SELECT lower(coalesce(d->>'subject', '') || E'\n' || coalesce(d->>'text', '')) $$;
    CREATE FUNCTION mailflow_ticket_text(d jsonb) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
        AS $$ SELECT lower(coalesce(d->>'subject', '') || E'\n' || coalesce(d->>'customer_name', '')) $$;
    -- every address a document concerns (search.py `_concerns`): a message's from, to and cc, a
    -- ticket's customer and participants, lower case
    CREATE FUNCTION mailflow_addrs(d jsonb) RETURNS text[] LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
        SELECT coalesce(array_agg(DISTINCT lower(a)), '{}') FROM (
            SELECT d->>'from' UNION ALL SELECT d->>'customer_email'
            UNION ALL SELECT jsonb_array_elements_text(CASE WHEN jsonb_typeof(d->'to') = 'array' THEN d->'to'
                                                       ELSE '[]' END)
            UNION ALL SELECT jsonb_array_elements_text(CASE WHEN jsonb_typeof(d->'cc') = 'array' THEN d->'cc'
                                                       ELSE '[]' END)
            UNION ALL SELECT jsonb_array_elements_text(CASE WHEN jsonb_typeof(d->'participants') = 'array'
                                                       THEN d->'participants' ELSE '[]' END)) x(a)
        WHERE a LIKE '%@%' $$;
    CREATE INDEX messages_text ON messages USING gin (mailflow_text(doc) gin_trgm_ops);
    CREATE INDEX tickets_text ON tickets USING gin (mailflow_ticket_text(doc) gin_trgm_ops);
    CREATE INDEX messages_addrs ON messages USING gin (mailflow_addrs(doc));
    CREATE INDEX tickets_addrs ON tickets USING gin (mailflow_addrs(doc));
    CREATE INDEX tickets_newest ON tickets (created_at, id);
    """,
    # 3: what pg_trgm cannot narrow (issue 16's second pass): a one- or two-character Chinese word
    # (no trigram), and `privacy export` (an address in any field, not only from/to/cc and text)
    r"""
    -- the CJK characters of a text and the pairs of adjacent ones (GIN keeps each once): a word's
    -- CJK runs are in a document only if their characters and pairs are (store_pg.py `cjk_grams`,
    -- the same classes: Han with extensions and compatibility ideographs, kana, Hangul syllables).
    -- Each run's pairs are its even and its odd pairs (two non-overlapping matches): no substr(),
    -- which walks a UTF-8 text from its start (2.9x slower on the 1M set's messages)
    CREATE FUNCTION mailflow_cjk_grams(t text) RETURNS text[] LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
        SELECT coalesce(array_agg(g), '{}') FROM (SELECT (regexp_matches(t,
            '[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002fa1f]+', 'g'))[1]) m(r),
            LATERAL (SELECT unnest(string_to_array(r, NULL))
                     UNION ALL SELECT (regexp_matches(r, '..', 'g'))[1]
                     UNION ALL SELECT (regexp_matches(substr(r, 2), '..', 'g'))[1]) x(g) $$;
    -- every string of a document that holds an @, lower case, one a line: with the text indexes
    -- (subject, text, customer name) this is every place an address can be (privacy export)
    CREATE FUNCTION mailflow_at_text(d jsonb) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
        SELECT lower(coalesce(string_agg(v #>> '{}', E'\n'), ''))
        FROM jsonb_path_query(d, 'strict $.** ? (@.type() == "string" && @ like_regex "@")') v $$;
    CREATE INDEX messages_cjk ON messages USING gin (mailflow_cjk_grams(mailflow_text(doc)));
    CREATE INDEX tickets_cjk ON tickets USING gin (mailflow_cjk_grams(mailflow_ticket_text(doc)));
    CREATE INDEX messages_at ON messages USING gin (mailflow_at_text(doc - 'subject' - 'text') gin_trgm_ops);
    CREATE INDEX tickets_at ON tickets USING gin (mailflow_at_text(doc - 'subject' - 'customer_name') gin_trgm_ops);
    -- the planner's statistics of the new expressions (a rare pair is an index lookup, not a scan)
    ANALYZE tickets;
    ANALYZE messages;
    """,
    # 4: the reports' kept tallies as bytes (mailflow/report_cache.py): one 20-30 MB row a report
    # on the 1M set, read whole by every warm report. In a jsonb text it cost 0.36 s to read (the
    # value decompressed and unescaped); bytea stored uncompressed and fetched in binary, 0.07 s
    """
    CREATE TABLE report_cache (key text COLLATE "C" PRIMARY KEY, at bigint NOT NULL, data bytea NOT NULL);
    ALTER TABLE report_cache ALTER COLUMN data SET STORAGE EXTERNAL;
    DELETE FROM meta WHERE key LIKE 'rcache:data:%';
    """,
    # 5: a ticket's searched fields in a table of their own. A ticket row is updated several times a
    # mail, and an update that is not HOT (status, wake_at: most are not) inserts every key of every
    # GIN index on the row again, changed or not: migrations 2 and 3's four GIN indexes on tickets
    # cost the server ~3 ms a mail (bench_cluster: one daemon 52 -> 64 msg/s without them). Here a
    # trigger writes ticket_search only when those fields changed (a ticket's subject, customer and
    # addresses are set once, nearly always), and the indexes live there
    r"""
    CREATE TABLE ticket_search (id text COLLATE "C" PRIMARY KEY REFERENCES tickets (id) ON DELETE CASCADE,
                                doc jsonb NOT NULL);
    -- what the indexes read of a ticket: its text fields, its addresses, and (`at`, lower case) every
    -- other string of it that holds an @ (privacy export)
    CREATE FUNCTION mailflow_ticket_search_doc(d jsonb) RETURNS jsonb LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
        SELECT jsonb_build_object('subject', d->'subject', 'customer_name', d->'customer_name',
                                  'customer_email', d->'customer_email', 'participants', d->'participants',
                                  'at', mailflow_at_text(d - 'subject' - 'customer_name')) $$;
    CREATE FUNCTION mailflow_ticket_search_sync() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO ticket_search (id, doc) VALUES (NEW.id, mailflow_ticket_search_doc(NEW.doc))
            ON CONFLICT (id) DO UPDATE SET doc = excluded.doc WHERE ticket_search.doc IS DISTINCT FROM excluded.doc;
        RETURN NULL;
    END $$;
    INSERT INTO ticket_search (id, doc) SELECT id, mailflow_ticket_search_doc(doc) FROM tickets;
    CREATE TRIGGER tickets_search AFTER INSERT OR UPDATE OF doc ON tickets FOR EACH ROW
        EXECUTE FUNCTION mailflow_ticket_search_sync();
    DROP INDEX tickets_text, tickets_addrs, tickets_cjk, tickets_at;
    CREATE INDEX ticket_search_text ON ticket_search USING gin (mailflow_ticket_text(doc) gin_trgm_ops);
    CREATE INDEX ticket_search_addrs ON ticket_search USING gin (mailflow_addrs(doc));
    CREATE INDEX ticket_search_cjk ON ticket_search USING gin (mailflow_cjk_grams(mailflow_ticket_text(doc)));
    CREATE INDEX ticket_search_at ON ticket_search USING gin ((doc->>'at') gin_trgm_ops);
    ANALYZE ticket_search;
    """,
]

VERSION = len(MIGRATIONS)  # the schema this mailflow knows


def current(conn: psycopg.Connection) -> int:
    """The applied schema version (0: an empty database)."""
    if conn.execute("SELECT to_regclass('schema_version')").fetchone()[0] is None:
        return 0
    return conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]


def upgrade(conninfo: str, echo=lambda s: None) -> tuple[int, int]:
    """Create or migrate the schema to VERSION; (version before, after). Raises SchemaError for
    a database newer than this mailflow."""
    from mailflow.storeapi import SchemaError

    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, "
                         "applied_at timestamptz NOT NULL DEFAULT now(), mailflow text)")
            before = v = current(conn)
            if v > VERSION:
                raise SchemaError(f"the database has schema version {v}, newer than this mailflow knows "
                                  f"({VERSION}): upgrade mailflow")
            from mailflow import __version__

            while v < VERSION:
                with conn.transaction():
                    conn.execute(MIGRATIONS[v])
                    conn.execute("INSERT INTO schema_version (version, mailflow) VALUES (%s, %s)",
                                 (v + 1, __version__))
                v += 1
                echo(f"applied migration {v}")
            return before, v
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))


def state(conn: psycopg.Connection) -> tuple[int, str | None]:
    """(applied version, None if usable, else the one-line reason it is not)."""
    v = current(conn)
    if v == VERSION:
        return v, None
    if v == 0:
        return v, "the database has no mailflow schema yet: run `mailflow db upgrade`"
    if v < VERSION:
        return v, f"the database schema is version {v}, this mailflow needs {VERSION}: run `mailflow db upgrade`"
    return v, (f"the database schema is version {v}, newer than this mailflow knows ({VERSION}): upgrade "
               "mailflow (`mailflow db upgrade` cannot go back)")


def check(conn: psycopg.Connection) -> None:
    from mailflow.storeapi import SchemaError

    _v, why = state(conn)
    if why:
        raise SchemaError(why)
