"""Shared fixtures: a real Dovecot IMAP server and a real aiosmtpd sink on loopback."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.support.dovecot import Dovecot
from tests.support.smtp_sink import SmtpSink

REPO = Path(__file__).resolve().parent.parent
# the rule-pattern and template caches (regexes.cache_dir) of this test session: never the user's
os.environ.setdefault("MAILFLOW_CACHE_DIR", tempfile.mkdtemp(prefix="mfcache"))


@pytest.fixture(scope="session")
def dovecot_server():
    root = Path(tempfile.mkdtemp(prefix="mfdv"))
    dv = Dovecot(root, users={"support": "secret", "sales": "secret", "other": "secret"})
    dv.start()
    yield dv
    dv.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def smtp_sink():
    sink = SmtpSink()
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture(scope="session")
def pg_server():
    """A private PostgreSQL cluster (tests/support/postgres.py) with a migrated template database."""
    from tests.support import postgres

    if not postgres.available():
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl) on this machine")
    pg = postgres.Postgres()
    try:
        pg.start()
        pg.make_template()
        yield pg
    finally:
        pg.stop()


@pytest.fixture
def pg_dsn(pg_server) -> str:
    """A fresh, migrated database of the session's cluster."""
    return pg_server.new_database()


def pytest_configure(config):
    config.addinivalue_line("markers", "tinydb_only(reason): a test of the TinyDB files themselves "
                                       "(layout, commit log, lock): not run on PostgreSQL")


@pytest.fixture(params=["tinydb", "postgresql"])
def backend(request):
    """Runs the test on both stores: for "postgresql" every config tests/integration/helpers.py
    writes points [storage] at a fresh migrated database of the session's private cluster (a
    config a test writes itself adds `helpers.storage_lines()` to its [storage]). Tests about the TinyDB files
    carry `@pytest.mark.tinydb_only(reason)` and run once."""
    from tests.integration import helpers

    if request.param == "tinydb":
        yield "tinydb"
        return
    m = request.node.get_closest_marker("tinydb_only")
    if m is not None:
        pytest.skip(f"TinyDB only: {m.args[0] if m.args else m.kwargs.get('reason', '')}")
    dsn = request.getfixturevalue("pg_server").new_database()
    helpers.PG_DSN = dsn
    try:
        yield "postgresql"
    finally:
        helpers.PG_DSN = None
