"""mailflow.fetch against a real (throwaway) Dovecot."""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time

import pytest

from mailflow import fetch as fetch_mod
from mailflow.config import Secret
from mailflow.fetch import Backoff, FetchError, ImapSource
from tests.support.dovecot import Dovecot, available, free_port

pytestmark = pytest.mark.skipif(not available(), reason="dovecot is not installed")

SEEN = b"\\Seen"
_names = itertools.count(1)


@pytest.fixture(scope="module")
def dv(tmp_path_factory):
    with Dovecot(tmp_path_factory.mktemp("dovecot")) as server:
        yield server


@pytest.fixture
def user(dv):
    """A fresh mailbox per test, on the shared server."""
    name = f"u{next(_names)}"
    dv.add_user(name, "secret")
    return name


def msg(i: int, tag: str = "m") -> bytes:
    return (
        f"From: Customer {i} <c{i}@example.org>\r\n"
        f"To: support@example.com\r\n"
        f"Subject: =?utf-8?b?5pWF6Zqc?= #{i}\r\n"
        f"Message-ID: <{tag}{i}@example.org>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        f"系统瘫痪 line {i}\r\n"
    ).encode()


@pytest.fixture
def src_for(dv):
    made: list[ImapSource] = []

    def make(user: str, **overrides) -> ImapSource:
        s = ImapSource(dv.mailbox_config(user, **overrides))
        s.connect()
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


# -- reading ---------------------------------------------------------------------------------

def test_pending_and_fetch_exact_bytes_without_setting_seen(dv, user, src_for):
    raws = [msg(i) for i in range(3)]
    for r in raws:
        dv.append(user, r)
    src = src_for(user)
    uids = src.pending_uids(0)
    assert uids == sorted(uids) and len(uids) == 3
    got = list(src.fetch(uids + [9999]))  # a UID that does not exist is skipped
    assert [u for u, _ in got] == uids
    assert [r for _, r in got] == raws
    assert all(SEEN not in f for f in dv.messages(user).values())  # BODY.PEEK[]


def test_fetch_chunks_by_batch_size_and_keeps_uid_order(dv, user, src_for):
    dv.append_many(user, [msg(i) for i in range(7)])
    src = src_for(user, batch_size=2)
    uids = src.pending_uids(0)
    got = list(src.fetch(list(reversed(uids))))
    assert [u for u, _ in got] == uids
    assert [r for _, r in got] == [msg(i) for i in range(7)]


@pytest.mark.parametrize("cap", [1000, 4096, 10 ** 9])
def test_fetch_holds_at_most_a_cap_of_mail_per_answer_and_big_mail_comes_in_parts(dv, user, src_for, monkeypatch,
                                                                                  cap):
    """Messages are grouped so one FETCH answer stays under FETCH_BYTES; a bigger message comes in
    partial FETCHes and is put back together byte for byte (sizes are exact multiples too)."""
    rng = random.Random(cap)
    raws = [msg(0), msg(1) + b"x" * 20_000, msg(2), msg(3) + b"y" * (cap * 3 - len(msg(3))) if cap < 10**6 else msg(3),
            msg(4) + "\r\n".join("".join(rng.choice("abc 中文xyz") for _ in range(70)) for _ in range(80)).encode()]
    for r in raws:
        dv.append(user, r)
    monkeypatch.setattr(fetch_mod, "FETCH_BYTES", cap)
    src = src_for(user)
    got = list(src.fetch(src.pending_uids(0)))
    assert [r for _, r in got] == raws


def test_fetch_skips_messages_expunged_meanwhile(dv, user, src_for):
    dv.append_many(user, [msg(i) for i in range(3)])
    src = src_for(user)
    uids = src.pending_uids(0)
    c = dv.client(user)
    try:
        c.select_folder("INBOX")
        c.delete_messages([uids[1]])
        c.expunge()
    finally:
        c.logout()
    assert [u for u, _ in src.fetch(uids)] == [uids[0], uids[2]]
    src.mark_done(uids)  # flagging a vanished UID is harmless
    assert src.pending_uids(0) == [uids[0], uids[2]]


def test_pending_uids_sees_mail_appended_by_another_session(dv, user, src_for):
    src = src_for(user)
    assert src.pending_uids(0) == []
    dv.append(user, msg(1))  # no IDLE in between: pending_uids must sync (NOOP) before SEARCH
    assert len(src.pending_uids(0)) == 1


def test_pending_uids_filters_highest_uid_quirk(dv, user, src_for):
    for i in range(3):
        dv.append(user, msg(i))
    src = src_for(user)
    uids = src.pending_uids(0)
    last = uids[-1]
    # the quirk itself: `UID n:*` matches the highest UID even when it is below n
    c = dv.client(user)
    try:
        c.select_folder("INBOX", readonly=True)
        assert c.search(["UID", f"{last + 1}:*"]) == [last]
    finally:
        c.logout()
    assert src.pending_uids(last) == []
    assert src.pending_uids(uids[1]) == [last]
    assert src.pending_uids(2**32 - 1) == []
    # flags do not matter: the checkpoint is the truth
    dv.append(user, msg(9), flags=[SEEN])
    assert len(src.pending_uids(last)) == 1


def test_pending_uids_empty_mailbox(user, src_for):
    assert src_for(user).pending_uids(0) == []


def test_uidvalidity_stable_across_reconnects(user, src_for):
    src = src_for(user)
    v = src.uidvalidity
    for _ in range(3):
        src.close()
        src.connect()
        assert src.uidvalidity == v
    with ImapSource(src.cfg) as other:
        assert other.uidvalidity == v


def test_find_uids_by_message_id(dv, user, src_for, monkeypatch):
    dv.append_many(user, [msg(i, "fid") for i in range(5)])
    dv.append(user, msg(3, "fid"))  # a duplicate Message-ID: the smallest UID wins
    src = src_for(user)
    uids = src.pending_uids(0)
    want = ["<fid1@example.org>", "fid3@example.org", " <fid4@example.org> ", "<fid1@example.org.x>",
            "<nope@x>", "fid1"]
    expect = {"<fid1@example.org>": uids[1], "fid3@example.org": uids[3], " <fid4@example.org> ": uids[4]}
    assert src.find_uids_by_message_id(want) == expect
    monkeypatch.setattr(fetch_mod, "SEARCH_IDS_MAX", 0)  # the scan-all-headers path
    assert src.find_uids_by_message_id(want) == expect
    assert src.find_uids_by_message_id([]) == {}


# -- after the commit ------------------------------------------------------------------------

def test_mark_done_seen(dv, user, src_for):
    for i in range(3):
        dv.append(user, msg(i))
    src = src_for(user, after="seen")
    uids = src.pending_uids(0)
    src.mark_done(uids[:2])
    flags = dv.messages(user)
    assert [SEEN in flags[u] for u in uids] == [True, True, False]


@pytest.mark.parametrize("folder", ["Done", "Support/Done"])
def test_mark_done_move_creates_folder(dv, user, src_for, folder):
    raws = [msg(i) for i in range(3)]
    for r in raws:
        dv.append(user, r)
    src = src_for(user, after=f"move:{folder}")
    uids = src.pending_uids(0)
    src.mark_done(uids[:2])
    assert list(dv.messages(user)) == [uids[2]]
    assert len(dv.messages(user, folder)) == 2
    c = dv.client(user)
    try:
        c.select_folder(folder, readonly=True)
        moved = c.fetch(c.search(["ALL"]), ["BODY.PEEK[]"])
        assert sorted(d[b"BODY[]"] for d in moved.values()) == sorted(raws[:2])
    finally:
        c.logout()
    src.mark_done(uids[2:])  # folder exists now
    assert dv.messages(user) == {}
    assert len(dv.messages(user, folder)) == 3


def test_mark_done_move_without_move_capability(dv, user, src_for):
    for i in range(4):
        dv.append(user, msg(i))
    src = src_for(user, after="move:Archive")
    src._caps.discard(b"MOVE")  # a server without RFC 6851: COPY + \Deleted + UID EXPUNGE
    uids = src.pending_uids(0)
    c = dv.client(user)  # someone else's \Deleted message must survive (UID EXPUNGE)
    try:
        c.select_folder("INBOX")
        c.add_flags([uids[3]], [b"\\Deleted"])
    finally:
        c.logout()
    src.mark_done(uids[:3])
    assert list(dv.messages(user)) == [uids[3]]
    assert len(dv.messages(user, "Archive")) == 3


def test_mark_done_keep(dv, user, src_for):
    for i in range(2):
        dv.append(user, msg(i))
    before = dv.messages(user)
    src = src_for(user, after="keep")
    src.mark_done(src.pending_uids(0))
    assert dv.messages(user) == before
    assert all(SEEN not in f for f in before.values())


# -- waiting ---------------------------------------------------------------------------------

def test_wait_idle_wakes_on_new_mail(dv, user, src_for):
    src = src_for(user)
    assert src.has_idle()
    t = threading.Timer(0.3, dv.append, (user, msg(1)))
    t.start()
    t0 = time.monotonic()
    assert src.wait(15) is True
    assert time.monotonic() - t0 < 0.3 + 1.5
    t.join()
    assert len(src.pending_uids(0)) == 1


def test_wait_returns_at_once_for_mail_that_came_before_it(dv, user, src_for):
    src = src_for(user)
    src.pending_uids(0)
    dv.append(user, msg(1))
    t0 = time.monotonic()
    assert src.wait(10) is True
    assert time.monotonic() - t0 < 1.5


def test_wait_reissues_idle(dv, user, src_for, monkeypatch):
    monkeypatch.setattr(fetch_mod, "IDLE_RENEW", 0.3)
    src = src_for(user)
    threading.Timer(1.5, dv.append, (user, msg(1))).start()
    t0 = time.monotonic()
    assert src.wait(10) is True  # survived several DONE/IDLE rounds
    assert 1.4 < time.monotonic() - t0 < 3.5
    assert len(src.pending_uids(0)) == 1


def test_wait_idle_times_out(user, src_for):
    src = src_for(user)
    t0 = time.monotonic()
    assert src.wait(1.2) is False
    assert 1.1 < time.monotonic() - t0 < 2.5
    src.pending_uids(0)  # IDLE ended cleanly: the connection still works


def test_wait_honours_stop_event(user, src_for):
    src = src_for(user)
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    t0 = time.monotonic()
    assert src.wait(30, stop=stop) is False
    assert time.monotonic() - t0 < 1.5
    assert src.wait(30, stop=stop) is False  # already set: returns at once
    src.pending_uids(0)


def test_wait_poll_fallback(dv, user, src_for):
    src = src_for(user, idle=False, poll_interval=1.0)
    assert not src.has_idle()
    t0 = time.monotonic()
    assert src.wait(1.2) is False
    assert time.monotonic() - t0 < 2.5
    threading.Timer(0.3, dv.append, (user, msg(1))).start()
    t0 = time.monotonic()
    assert src.wait(15) is True
    assert time.monotonic() - t0 < 3.0
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    t0 = time.monotonic()
    assert src.wait(30, stop=stop) is False
    assert time.monotonic() - t0 < 1.5


@pytest.mark.parametrize("idle", [True, False])
def test_outage_raises_then_reconnects(tmp_path, idle):
    with Dovecot(tmp_path) as server:
        server.append("support", msg(1))
        src = ImapSource(server.mailbox_config("support", idle=idle, poll_interval=1.0))
        src.connect()
        v = src.uidvalidity
        threading.Timer(0.3, server.stop).start()
        t0, cpu0 = time.monotonic(), time.process_time()
        with pytest.raises(FetchError) as ei:
            src.wait(30)
        elapsed, cpu = time.monotonic() - t0, time.process_time() - cpu0
        assert elapsed < 6, elapsed  # the master takes ~1.1 s to stop; then detected at once
        assert cpu < 0.5, cpu  # no spinning
        assert ei.value.mailbox == "support"
        with pytest.raises(FetchError):  # a broken source refuses work instead of spinning
            src.wait(30)
        src.close()
        with pytest.raises(FetchError, match="refused"):
            src.connect()
        server.start()
        src.connect()
        assert src.uidvalidity == v
        assert len(src.pending_uids(0)) == 1
        src.close()


def test_server_bye_while_idling(dv, user, src_for):
    src = src_for(user)
    threading.Timer(0.3, dv.kick, (user,)).start()  # `* BYE`, then the server closes
    t0 = time.monotonic()
    with pytest.raises(FetchError, match="closed the connection|connection lost"):
        src.wait(20)
    assert time.monotonic() - t0 < 3
    assert not src.connected
    src.close()
    src.connect()
    assert src.connected


# -- failures --------------------------------------------------------------------------------

def test_auth_failure_never_shows_the_password(dv, user, caplog):
    password = "hunter2-Sup3r-secret"
    caplog.set_level(logging.DEBUG)
    src = ImapSource(dv.mailbox_config(user, password=Secret(value=password)))
    with pytest.raises(FetchError) as ei:
        src.connect()
    e = ei.value
    assert e.auth and e.mailbox == user
    assert "authentication failed" in str(e)
    chain, x = [], e
    while x is not None:
        chain.append(f"{x!s} {x!r}")
        x = x.__cause__ or x.__context__
    assert password not in " ".join(chain)
    assert password not in caplog.text
    assert not src.connected


def test_unreadable_password(dv, user, monkeypatch):
    monkeypatch.delenv("MAILFLOW_TEST_NO_SUCH_VAR", raising=False)
    src = ImapSource(dv.mailbox_config(user, password=Secret(env="MAILFLOW_TEST_NO_SUCH_VAR")))
    with pytest.raises(FetchError, match="cannot read the password.*MAILFLOW_TEST_NO_SUCH_VAR"):
        src.connect()


def test_context_manager(dv, user):
    with ImapSource(dv.mailbox_config(user)) as src:
        assert src.connected and src.pending_uids(0) == []
    assert not src.connected


def test_xoauth2_rejected_cleanly(dv, user):
    token = "ya29.tok-EN-very-secret"
    src = ImapSource(dv.mailbox_config(user, auth="xoauth2", token=Secret(value=token)))
    with pytest.raises(FetchError) as ei:
        src.connect()  # this Dovecot offers no XOAUTH2
    assert token not in str(ei.value)


def test_starttls_required_but_not_offered(dv, user):
    with pytest.raises(FetchError, match="STARTTLS"):
        ImapSource(dv.mailbox_config(user, tls="starttls")).connect()


def test_connection_refused_and_missing_folder(dv, user):
    with pytest.raises(FetchError, match="refused"):
        ImapSource(dv.mailbox_config(user, port=free_port(), timeout=2.0)).connect()
    with pytest.raises(FetchError, match="select Nope"):
        ImapSource(dv.mailbox_config(user, folder="Nope")).connect()


def test_not_connected(dv, user):
    src = ImapSource(dv.mailbox_config(user))
    with pytest.raises(FetchError, match="not connected"):
        src.pending_uids(0)
    with pytest.raises(FetchError, match="not connected"):
        src.wait(1)
    src.close()  # harmless


# -- backoff ---------------------------------------------------------------------------------

def test_backoff_capped_with_jitter():
    b = Backoff(rng=random.Random(1))
    delays = [b.next() for _ in range(2000)]  # never overflows
    assert 0.5 <= delays[0] <= 1.0
    assert 1.0 <= delays[1] <= 2.0
    assert all(d <= 300.0 for d in delays)
    assert max(delays[20:]) > 200 and min(delays[20:]) >= 150
    b.reset()
    assert b.next() <= 1.0


def test_wait_sees_mail_whose_exists_came_back_with_a_store(dv, user):
    """Mail that arrives while a batch is being flagged is announced in the STORE's answer, which
    imapclient drops; wait() must still report it instead of idling past it."""
    dv.append(user, b"From: a@x.example\r\nSubject: one\r\nMessage-ID: <late1@x>\r\n\r\nbody\r\n")
    src = ImapSource(dv.mailbox_config(user))
    src.connect()
    try:
        uids = src.pending_uids(0)
        dv.append(user, b"From: a@x.example\r\nSubject: two\r\nMessage-ID: <late2@x>\r\n\r\nbody\r\n")
        time.sleep(0.2)
        src.mark_done(uids)  # the EXISTS for "two" rides back on this STORE
        t0 = time.monotonic()
        assert src.wait(5.0) is True
        assert time.monotonic() - t0 < 2.0
        assert len(src.pending_uids(max(uids))) == 1
    finally:
        src.close()
