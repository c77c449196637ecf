"""asyncio orchestration: one thread per mailbox (imapclient blocks), one outbox sender task,
signals (SIGHUP reload, SIGTERM graceful stop), rule-file watching and systemd notify/watchdog.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

from mailflow import config as config_mod
from mailflow.fetch import Backoff, FetchError
from mailflow.mailboxes import MailboxWorker
from mailflow.pipeline import Pipeline
from mailflow.render import Templates
from mailflow.rules import RuleSet
from mailflow.store import OPEN_STATUSES, Store

log = logging.getLogger("mailflow.daemon")


def sd_notify(state: str) -> bool:
    """Tell systemd (Type=notify) what we are doing; a no-op outside systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(state.encode())
        return True
    except OSError:
        return False


def load_all(cfg: config_mod.Config) -> tuple[RuleSet, Templates]:
    """Compile rules and templates whole; raises on any error so the caller keeps the old ones."""
    return RuleSet.load(cfg.rules_dir), Templates.load(cfg.templates_dir)


def _tree_stamp(*dirs: Path) -> tuple:
    out = []
    for d in dirs:
        for p in sorted(Path(d).rglob("*")):
            try:
                st = p.stat()
            except OSError:
                continue
            out.append((str(p), st.st_mtime_ns, st.st_size))
    return tuple(out)


class Daemon:
    def __init__(self, cfg: config_mod.Config, config_path: str | None):
        self.cfg = cfg
        self.config_path = config_path
        self.store = Store(cfg.data_dir)
        rules, templates = load_all(cfg)
        self.pipeline = Pipeline(cfg, self.store, rules, templates)
        self.stop = threading.Event()
        self.workers = [MailboxWorker(mb, self.pipeline) for mb in cfg.mailboxes]
        self.threads: list[threading.Thread] = []
        self.wake_sender: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.sender_beat = time.monotonic()
        self.watchdog_usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        self.grace = 20.0

    # ---- mailbox threads --------------------------------------------------------------------

    def _worker_loop(self, w: MailboxWorker) -> None:
        backoff = Backoff()
        while not self.stop.is_set():
            try:
                stats = w.poll(self.stop)
                backoff.reset()
                w.state = "idle"
                if stats.fetched:
                    self._kick_sender()
                # wait in short slices so the watchdog sees a live loop and SIGTERM is prompt
                deadline = time.monotonic() + (w.cfg.poll_interval if not w.src or not w.src.has_idle()
                                               else 25 * 60)
                while not self.stop.is_set() and time.monotonic() < deadline:
                    w.beat = time.monotonic()
                    assert w.src is not None
                    if w.src.wait(min(5.0, max(0.1, deadline - time.monotonic())), stop=self.stop):
                        break
            except FetchError as e:
                w.close()
                w.record_error(e)
                delay = backoff.next()
                log.warning("mailbox=%s %s; reconnecting in %.1fs", w.cfg.name, e, delay)
                self._sleep(w, delay)
            except Exception as e:  # never let one mailbox take the process down
                w.close()
                w.record_error(e)
                delay = backoff.next()
                log.exception("mailbox=%s unexpected error; retrying in %.1fs", w.cfg.name, delay)
                self._sleep(w, delay)
        w.close()
        w.state = "stopped"

    def _sleep(self, w: MailboxWorker, delay: float) -> None:
        end = time.monotonic() + delay
        while not self.stop.is_set() and time.monotonic() < end:
            w.beat = time.monotonic()
            self.stop.wait(min(1.0, end - time.monotonic()))

    def _kick_sender(self) -> None:
        if self.loop is not None and self.wake_sender is not None:
            self.loop.call_soon_threadsafe(self.wake_sender.set)

    # ---- async side -------------------------------------------------------------------------

    async def _sender(self) -> None:
        assert self.wake_sender is not None
        while not self.stop.is_set():
            self.sender_beat = time.monotonic()
            try:
                await asyncio.wait_for(self.wake_sender.wait(), timeout=5.0)
            except TimeoutError:
                pass
            self.wake_sender.clear()
            try:
                await asyncio.wait_for(self.pipeline.outbox.flush(), timeout=300)
            except Exception:
                log.exception("outbox flush failed; will retry")
            self.sender_beat = time.monotonic()

    def status_line(self) -> str:
        open_n = sum(1 for t in self.store.all_tickets() if t.get("status") in OPEN_STATUSES)
        states = ", ".join(f"{w.cfg.name} {w.state}" for w in self.workers) or "no mailboxes"
        return f"{len(self.workers)} mailboxes ({states}), {open_n} open tickets, " \
               f"outbox {self.pipeline.outbox.pending_count()}"

    async def _supervise(self) -> None:
        stamp = _tree_stamp(self.cfg.rules_dir, self.cfg.templates_dir)
        last_status = ""
        limit = self.watchdog_usec / 1e6 / 2 if self.watchdog_usec else 60.0
        while not self.stop.is_set():
            await asyncio.sleep(1.0)
            now = time.monotonic()
            alive = all(now - w.beat < limit for w in self.workers) and now - self.sender_beat < max(limit, 10)
            if alive and self.watchdog_usec:
                sd_notify("WATCHDOG=1")
            elif not alive:
                log.error("a loop looks wedged; withholding the watchdog ping")
            new = _tree_stamp(self.cfg.rules_dir, self.cfg.templates_dir)
            if new != stamp:
                stamp = new
                self.reload(reason="files changed")
            line = self.status_line()
            if line != last_status:
                sd_notify(f"STATUS={line}")
                last_status = line

    def reload(self, reason: str = "SIGHUP") -> bool:
        """Compile config, rules and templates whole; swap only if all of it is good."""
        sd_notify("RELOADING=1\nMONOTONIC_USEC=%d" % (time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000))
        try:
            cfg = config_mod.load(self.config_path) if self.config_path else self.cfg
            rules, templates = load_all(cfg)
        except Exception as e:
            log.error("reload (%s) rejected, keeping the running rules and templates: %s", reason, e)
            sd_notify("READY=1")
            return False
        with self.store._mutex:
            p = self.pipeline
            p.rules, p.templates, p.outbox.templates = rules, templates, templates
            # mailbox connection settings need a restart; everything else takes effect now
            p.cfg = p.outbox.cfg = cfg
        log.info("reloaded (%s): rules v%s", reason, getattr(rules, "version", "?"))
        sd_notify("READY=1")
        return True

    async def main(self) -> int:
        self.loop = asyncio.get_running_loop()
        self.wake_sender = asyncio.Event()
        self.loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        self.loop.add_signal_handler(signal.SIGINT, self.stop.set)
        self.loop.add_signal_handler(signal.SIGHUP, lambda: self.reload())
        self.pipeline.outbox.fold_journal()
        for w in self.workers:
            t = threading.Thread(target=self._worker_loop, args=(w,), name=f"mailbox-{w.cfg.name}", daemon=True)
            t.start()
            self.threads.append(t)
        sender = asyncio.create_task(self._sender())
        sup = asyncio.create_task(self._supervise())
        sd_notify("READY=1")
        sd_notify(f"STATUS={self.status_line()}")
        log.info("running: %s", self.status_line())
        while not self.stop.is_set():
            await asyncio.sleep(0.2)
        sd_notify("STOPPING=1")
        log.info("stopping: finishing the batch in hand")
        for t in self.threads:
            await asyncio.to_thread(t.join, self.grace)
        sup.cancel()
        sender.cancel()
        try:
            stats = await asyncio.wait_for(self.pipeline.outbox.flush(), timeout=self.grace)
            log.info("final flush: %d sent, %d still queued", stats.sent, stats.queued)
        except Exception as e:
            log.warning("final flush incomplete: %s", e)
        return 0
