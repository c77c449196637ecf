"""One pass over one IMAP mailbox: checkpoint -> fetch -> process (one commit per batch) -> flag.

The IMAP server is only told a message is done after the commit that holds its ticket and the new
checkpoint; a crash anywhere replays from the checkpoint and intake's idempotency absorbs it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from mailflow.config import MailboxConfig
from mailflow.fetch import FetchError, ImapSource
from mailflow.pipeline import Incoming, Pipeline, Result
from mailflow.store import iso, utcnow

log = logging.getLogger("mailflow.mailbox")


@dataclass
class PollStats:
    fetched: int = 0
    new: int = 0
    quarantined: int = 0


class MailboxWorker:
    """Owns one ImapSource; used by `run --once` and by the daemon's per-mailbox thread."""

    def __init__(self, cfg: MailboxConfig, pipeline: Pipeline):
        self.cfg = cfg
        self.pipeline = pipeline
        self.src: ImapSource | None = None
        self.beat = time.monotonic()
        self.state = "starting"
        self.last_error: str | None = None

    def connect(self) -> ImapSource:
        if self.src is None:
            src = ImapSource(self.cfg)
            src.connect()
            self.src = src
            self.state = "connected"
        return self.src

    def close(self) -> None:
        if self.src is not None:
            self.src.close()
            self.src = None

    def poll(self, stop: threading.Event | None = None) -> PollStats:
        """Process everything pending, one batch (and one commit) at a time."""
        src = self.connect()
        store = self.pipeline.store
        store.refresh()
        cp = store.checkpoint(self.cfg.name)
        last_uid = int(cp.get("last_uid", 0))
        if cp.get("uidvalidity") not in (None, src.uidvalidity):
            log.warning("mailbox=%s UIDVALIDITY changed %s -> %s: resyncing by Message-ID",
                        self.cfg.name, cp.get("uidvalidity"), src.uidvalidity)
            last_uid = 0
        stats = PollStats()
        uids = src.pending_uids(last_uid)
        size = max(1, self.cfg.batch_size)
        for i in range(0, len(uids), size):
            if stop is not None and stop.is_set():
                break
            self.beat = time.monotonic()
            chunk = uids[i:i + size]
            items = [Incoming(raw, self.cfg.name, uid) for uid, raw in src.fetch(chunk)]
            top = max(chunk)
            results: list[Result] = self.pipeline.process(
                items, checkpoint=(self.cfg.name, {"uidvalidity": src.uidvalidity, "last_uid": top,
                                                   "last_poll": iso(utcnow()), "last_error": None}))
            src.mark_done([it.uid for it in items if it.uid is not None])
            stats.fetched += len(items)
            stats.new += sum(r.kind == "new" for r in results)
            stats.quarantined += sum(r.kind == "quarantined" for r in results)
        if not uids:
            self._touch()
        self.beat = time.monotonic()
        return stats

    def _touch(self) -> None:
        """Record a successful empty poll (for `status`) without a write per poll: at most once a minute."""
        store = self.pipeline.store
        cp = store.checkpoint(self.cfg.name)
        last = cp.get("last_poll") or ""
        now = iso(utcnow()) or ""
        if now[:16] != last[:16] or cp.get("last_error"):
            with store.batch():
                store.set_checkpoint(self.cfg.name, last_poll=now, last_error=None)

    def record_error(self, e: Exception) -> None:
        self.last_error = str(e)
        self.state = "retrying"
        try:
            with self.pipeline.store.batch():
                self.pipeline.store.set_checkpoint(self.cfg.name, last_error=f"{iso(utcnow())} {e}")
        except Exception:  # a status write must never take the worker down
            log.exception("mailbox=%s cannot record error", self.cfg.name)


__all__ = ["FetchError", "MailboxWorker", "PollStats"]
