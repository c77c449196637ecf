"""Shared fixtures: a real Dovecot IMAP server and a real aiosmtpd sink on loopback."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.support.dovecot import Dovecot
from tests.support.smtp_sink import SmtpSink

REPO = Path(__file__).resolve().parent.parent


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
