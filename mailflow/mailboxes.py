"""One IMAP mailbox: checkpoint -> fetch -> process (one commit per batch) -> flag; and the daemon's
endless loop around it (wait for mail, reconnect with backoff).

The IMAP server is only told a message is done after the commit that holds its ticket and the new
checkpoint; a crash anywhere replays from the checkpoint and intake's idempotency absorbs it.

Liveness: before every step that may block (connect, search, fetch, processing a batch, flagging,
waiting) the worker records a heartbeat (`beat`) and how long that step may legitimately take
(`allowance`, derived from the socket timeout). While it waits for mail it beats about once a
second. The daemon withholds systemd's watchdog ping when a worker has been in one step for longer
than its allowance: a slow server costs a timeout and a retry, a wedged loop costs a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from mailflow.cluster import Leases, mailbox_lease
from mailflow.config import MailboxConfig
from mailflow.fetch import Backoff, FetchError, ImapSource
from mailflow.pipeline import Incoming, Pipeline, Result
from mailflow.runtime import Box
from mailflow.store import iso, parse_iso
from mailflow.storeapi import BatchAborted

log = logging.getLogger("mailflow.mailbox")
MAX_BATCH_BYTES = 24 * 1024 * 1024  # raw mail held in memory per batch (a bigger mail is a batch alone)

PROCESS_ALLOWANCE = 300.0  # seconds one message (beat before each) or the batch's commit may take
AUTH_RETRY_MIN = 30.0  # a rejected login is not retried sooner than this
TOUCH_EVERY = 300.0  # an idle mailbox records its last successful poll this often


class LeaseLost(Exception):
    """Several daemons: this mailbox's lease moved on before the batch began."""


@dataclass
class PollStats:
    fetched: int = 0
    new: int = 0
    quarantined: int = 0


class _BeatingStop:
    """`stop` for ImapSource.wait(): it checks `is_set()` at least once a second while it idles or
    polls (that is how it honours `stop` promptly), so each check doubles as a heartbeat."""

    def __init__(self, stop: threading.Event, worker: MailboxWorker):
        self._stop = stop
        self._w = worker

    def is_set(self) -> bool:
        """Stop asked for, or (several daemons) this mailbox's lease is no longer ours."""
        self._w.beat = time.monotonic()
        return self._stop.is_set() or not self._w.leased()

    def wait(self, timeout: float | None = None) -> bool:
        self._w.beat = time.monotonic()
        r = self._stop.wait(timeout)
        self._w.beat = time.monotonic()
        return r


class MailboxWorker:
    """Owns one ImapSource; used by `run --once` (poll) and by the daemon's per-mailbox thread (run)."""

    def __init__(self, cfg: MailboxConfig, pipeline: Pipeline | Box, leases: Leases | None = None):
        self.cfg = cfg
        self._pipeline = pipeline
        self.leases = leases  # several daemons share the database: work only while our lease holds
        self.lease_name = mailbox_lease(cfg.name)
        self.working = False  # inside poll(): the lease is handed back only once this is False
        self.src: ImapSource | None = None
        self.beat = time.monotonic()
        self.allowance = self._t(4, 10)
        self.step = "starting"
        # starting -> connecting -> ok | retrying -> ... -> stopped
        self.state = "starting"
        self.settled = False  # the first connection attempt has ended (connected, or failed: retrying)
        self.last_error: str | None = None
        self.retry_at: float | None = None
        # UIDs whose batch is committed but whose flag/move failed: (uidvalidity, uids), retried
        # once after the next connect
        self._unmarked: tuple[int, list[int]] | None = None

    @property
    def name(self) -> str:
        return self.cfg.name

    def leased(self) -> bool:
        return self.leases is None or self.leases.holds(self.lease_name)

    def fence(self) -> tuple[str, str, int] | None:
        if self.leases is None:
            return None
        f = self.leases.fence(self.lease_name)
        if f is None:
            raise LeaseLost(f"lease {self.lease_name} is no longer ours")
        return f

    @property
    def pipeline(self) -> Pipeline:
        """The current runtime's pipeline (a reload swaps the runtime between two batches)."""
        p = self._pipeline
        return p.pipeline if isinstance(p, Box) else p

    # ---- heartbeat ----------------------------------------------------------------------------

    def _t(self, n: float, extra: float) -> float:
        """n socket timeouts plus `extra` seconds."""
        return n * max(float(self.cfg.timeout), 1.0) + extra

    def expect(self, step: str, allowance: float) -> None:
        """Heartbeat: about to start `step`, which may block for up to `allowance` seconds."""
        self.step, self.allowance, self.beat = step, allowance, time.monotonic()

    # ---- one pass -----------------------------------------------------------------------------

    def connect(self) -> ImapSource:
        if self.src is None:
            self.state = "connecting"
            # TCP connect, greeting, (STARTTLS,) login, CAPABILITY, SELECT: one timeout each;
            # an OAuth token command may take up to a minute on top
            self.expect("connect", self._t(5, 10 + (60 if self.cfg.auth == "xoauth2" else 0)))
            src = ImapSource(self.cfg)
            src.connect()
            self.src = src
            self.state = "ok"
            self.settled = True
            self.last_error = None
            self.retry_at = None
        return self.src

    def close(self) -> None:
        if self.src is not None:
            self.expect("logout", self._t(2, 5))
            self.src.close()
            self.src = None

    def _retry_unmarked(self, src: ImapSource) -> None:
        pending, self._unmarked = self._unmarked, None
        if pending is None or pending[0] != src.uidvalidity:
            return
        self.expect("flag", self._t(2, 5))
        try:
            src.mark_done(pending[1])
        except FetchError as e:
            if not src.connected:  # try again after the next reconnect
                self._unmarked = pending
                raise
            log.warning("mailbox=%s cannot flag %d processed message(s): %s", self.name, len(pending[1]),
                        e.reason)

    def poll(self, stop: threading.Event | None = None) -> PollStats:
        """Process everything pending, one batch (and one commit) at a time."""
        src = self.connect()
        self._retry_unmarked(src)
        store = self.pipeline.store
        with store.mutex:
            store.refresh()
            cp = store.checkpoint(self.cfg.name)
        last_uid = int(cp.get("last_uid", 0))
        if cp.get("uidvalidity") not in (None, src.uidvalidity):
            last_uid = self._resync(src)
            log.warning("mailbox=%s UIDVALIDITY changed %s -> %s: resynced by Message-ID, resuming "
                        "after new UID %d", self.cfg.name, cp.get("uidvalidity"), src.uidvalidity, last_uid)
        stats = PollStats()
        self.expect("search", self._t(2, 5))
        uids = src.pending_uids(last_uid)
        # a commit appends what changed to the commit log and fsyncs (and now and then rewrites the
        # snapshot), so a long backlog goes in ~20 commits (batch_size is the floor; 1,000 the
        # ceiling) rather than one per 100 messages
        size = max(1, self.cfg.batch_size, min(1000, len(uids) // 20))
        cap = store.max_batch  # PostgreSQL: its subtransaction cache (store_pg.PgStore)
        if cap:
            size = min(size, cap)
        i = 0
        while i < len(uids):
            if stop is not None and stop.is_set():
                break
            chunk = uids[i:i + size]
            items, nbytes, top = [], 0, chunk[-1]
            for uid, raw in src.fetch(chunk):  # one round trip per cfg.batch_size messages
                self.expect("fetch", self._t(6, 30))  # a heartbeat per message, not per batch
                items.append(Incoming(raw, self.cfg.name, uid))
                nbytes += len(raw)
                if nbytes >= MAX_BATCH_BYTES and uid != chunk[-1]:
                    top = uid  # big attachments: commit what we hold, the rest is the next batch
                    break
            i += chunk.index(top) + 1
            self.expect("process", PROCESS_ALLOWANCE)
            results: list[Result] = self.pipeline.process(
                items, fence=self.fence(), checkpoint=(self.cfg.name, {"uidvalidity": src.uidvalidity, "last_uid": top,
                                                   "last_poll": iso(self.pipeline.clock.now()), "last_error": None}),
                beat=lambda: self.expect("process", PROCESS_ALLOWANCE))
            # committed: only now may the server hear that these are done
            done = [it.uid for it in items if it.uid is not None]
            self._unmarked = (src.uidvalidity, done)
            self.expect("flag", self._t(2, 5))
            src.mark_done(done)
            self._unmarked = None
            stats.fetched += len(items)
            stats.new += sum(r.kind == "new" for r in results)
            stats.quarantined += sum(r.kind == "quarantined" for r in results)
            items = raw = None  # type: ignore[assignment]  # this batch's mail must not live through the next fetch
        if not uids:
            self._touch()
        self.beat = time.monotonic()
        return stats

    def _touch(self) -> None:
        """Record a successful empty poll (for `status`) without a database write per poll (each
        write is a commit-log append and an fsync): after an error, else at most every TOUCH_EVERY seconds."""
        store = self.pipeline.store
        with store.mutex:
            cp = store.checkpoint(self.cfg.name)
            last = parse_iso(cp.get("last_poll"))
            now = self.pipeline.clock.now()
            if last is None or (now - last).total_seconds() >= TOUCH_EVERY or cp.get("last_error"):
                with store.batch():
                    store.set_checkpoint(self.cfg.name, last_poll=iso(now), last_error=None)

    def record_error(self, e: Exception) -> None:
        reason = e.reason if isinstance(e, FetchError) else f"{type(e).__name__}: {e}"
        self.last_error = reason
        self.state = "retrying"
        self.settled = True
        try:
            with self.pipeline.store.batch():
                self.pipeline.store.set_checkpoint(self.cfg.name, last_error=f"{iso(self.pipeline.clock.now())} {reason}")
        except Exception as err:  # a status write must never take the worker down
            log.error("mailbox=%s cannot record the error: %s", self.cfg.name, err)

    def _resync(self, src: ImapSource, anchors: int = 50) -> int:
        """The server renumbered the folder: find where we were by Message-ID, not by UID.

        The newest messages processed from this mailbox are looked up in the new numbering and
        the smallest UID found, less one, becomes the checkpoint: at most `anchors` messages are
        read again (intake's idempotency skips them), none is skipped. Nothing found: re-read
        the folder from the start (idempotency again makes that safe, only slower)."""
        store = self.pipeline.store
        with store.mutex:
            mine = [m for m in store.messages_of_mailbox(self.cfg.name) if m.get("uid") is not None]
        mine.sort(key=lambda m: m["uid"])
        ids = [m["message_id"] for m in mine[-anchors:]]
        found = src.find_uids_by_message_id(ids) if ids else {}
        return max(0, min(found.values()) - 1) if found else 0

    # ---- the daemon's loop ----------------------------------------------------------------------

    def run(self, stop: threading.Event, on_mail: Callable[[], None] = lambda: None,
            backoff: Backoff | None = None) -> None:
        """Until `stop`: poll, wait for new mail (IDLE or NOOP polling, at most poll_interval), poll
        again. Any failure closes the connection and retries after capped exponential backoff with
        jitter; nothing escapes, so one mailbox never takes the others or the process down."""
        backoff = backoff or Backoff()
        beating = _BeatingStop(stop, self)
        interval = min(max(float(self.cfg.poll_interval), 1.0), 3600.0)
        while not stop.is_set():
            self.working = True  # before the lease check: the lease is never handed back under a batch
            if not self.leased():
                self.working = False
                self._standby(stop)
                continue
            try:
                stats = self.poll(beating)
                backoff.reset()
                if stats.fetched:
                    on_mail()
                if stop.is_set():
                    break
                if stats.fetched:
                    continue  # mail that came in while this batch was processed: fetch it now
                assert self.src is not None
                # new mail or not: poll again afterwards (a NOOP and a SEARCH), so that `status`
                # shows a recent successful poll and nothing IDLE missed stays behind
                self.expect("wait", self._t(2, 5))
                self.src.wait(interval, stop=beating)
            except Exception as e:  # never let one mailbox take the process down
                self.working = False
                self.close_quietly()
                if stop.is_set():
                    break
                if isinstance(e, LeaseLost) or (isinstance(e, BatchAborted) and not self.leased()):
                    log.warning("mailbox=%s lease lost: leaving it to the daemon that holds it now", self.name)
                    continue
                if isinstance(e, FetchError):
                    delay = backoff.next()
                    if e.auth:
                        delay = max(delay, AUTH_RETRY_MIN)
                    log.warning("mailbox=%s %s; reconnecting in %.1fs", self.name, e.reason, delay)
                else:
                    delay = backoff.next()
                    log.error("mailbox=%s unexpected %s: %s; retrying in %.1fs", self.name,
                              type(e).__name__, e, delay)
                    log.debug("mailbox=%s traceback", self.name, exc_info=True)
                self.record_error(e)
                self._sleep(stop, delay)
            finally:
                self.working = False
        self.close_quietly()
        self.state = "stopped"

    def _standby(self, stop: threading.Event) -> None:
        """Another daemon works this mailbox (or nobody yet): stay disconnected, look again soon."""
        if self.src is not None:
            log.info("mailbox=%s standby: another daemon works it", self.name)
        self.close_quietly()
        self.state, self.settled, self.last_error = "standby", True, None
        self.expect("standby", 5.0)
        stop.wait(0.5)

    def close_quietly(self) -> None:
        try:
            self.close()
        except Exception as e:  # ImapSource.close never raises; belt and braces
            log.debug("mailbox=%s close: %s", self.name, e)
            self.src = None

    def _sleep(self, stop: threading.Event, delay: float) -> None:
        end = time.monotonic() + delay
        self.retry_at = end
        while not stop.is_set():
            left = end - time.monotonic()
            if left <= 0:
                break
            self.expect("backoff", 5.0)
            stop.wait(min(1.0, left))
        self.retry_at = None


__all__ = ["FetchError", "MailboxWorker", "PollStats"]
