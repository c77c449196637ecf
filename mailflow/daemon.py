"""The `mailflow run` daemon: threads, signals, reload, and systemd notify/watchdog.

Who runs where:

* one thread per mailbox (`MailboxWorker.run`: imapclient blocks; every socket operation is bounded
  by the mailbox's `timeout`);
* one sender thread with its own event loop, flushing the outbox when woken (new mail was
  committed) and every few seconds (retries that came due). It is the only place that sends, so a
  flush can never run twice at once; each step of a flush runs under the store's lock, so it only
  ever sees committed rows (never the half-built batch of a mailbox thread);
* the main asyncio loop: signals, the supervisor (watchdog pings, STATUS=, rule/template file
  watching) and reloads. It never waits for the database itself (that happens in helper threads
  with bounded waits), so a busy or wedged worker cannot stall the pings by accident.

systemd protocol (Type=notify): READY=1 once every mailbox is connected or retrying; STATUS= whenever
the summary changes; WATCHDOG=1 every WatchdogSec/4 while every loop shows progress (see
`wedged`); RELOADING=1 ... READY=1 around a reload (SIGHUP, or rule/template files changed);
STOPPING=1 on SIGTERM/SIGINT.

SIGHUP reloads the config file, rules and templates as a whole: everything is compiled first, and
only if all of it is good is it swapped in (between two batches); otherwise the old set keeps
running. Mailbox connection settings and the data directory need a restart.

SIGTERM: the mailbox threads finish the batch in hand (commit, flag), the outbox gets one last
flush bounded by `grace`, and `main()` returns 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Generator, Iterable
from pathlib import Path
from typing import Any

from mailflow import config as config_mod
from mailflow import services
from mailflow.mailboxes import PROCESS_ALLOWANCE, MailboxWorker
from mailflow.outbox import FlushStats, Outbox
from mailflow.privacy import MaskAddresses
from mailflow.runtime import Box, LoadError, Runtime, load_all

log = logging.getLogger("mailflow.daemon")

SEND_INTERVAL = 5.0  # the sender looks for due outbox rows at least this often
HOUSEKEEPING_EVERY = 6 * 3600.0  # archive long-closed tickets, prune old rows: at start, then this often
FLUSH_CHUNK = 50  # mails per locked step of a flush (each result is journaled, fsynced, as it comes)
STATUS_EVERY = 2.0  # seconds between STATUS=/file-watch checks
NO_WATCHDOG_FLOOR = 60.0  # without systemd's watchdog a loop is reported wedged after this


# ---- systemd notify -------------------------------------------------------------------------------

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


def watchdog_seconds() -> float | None:
    """WatchdogSec= as systemd passes it (WATCHDOG_USEC, for WATCHDOG_PID if set), else None."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 1e6


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def wedged(now: float, loops: Iterable[tuple[str, float, float, bool]], floor: float) -> list[str]:
    """The loops that show no progress: (name, last beat, allowance of the current step, running).

    A loop is wedged when it stopped running, or when its last heartbeat is older than both `floor`
    (half of WatchdogSec) and the time its current step may legitimately block (its allowance,
    derived from socket timeouts). A slow server therefore costs a timeout and a retry; a loop
    that is stuck for longer than any timeout allows stops the watchdog pings and systemd restarts
    the service.
    """
    out = []
    for name, beat, allowance, running in loops:
        if not running:
            out.append(f"{name} (not running)")
        elif now - beat > max(floor, allowance):
            out.append(f"{name} (no progress for {now - beat:.0f}s)")
    return out


# ---- loading ---------------------------------------------------------------------------------------

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


def _problems(e: BaseException) -> str:
    return "; ".join(getattr(e, "problems", None) or [f"{type(e).__name__}: {e}"])


# ---- the outbox sender --------------------------------------------------------------------------

class _Stepped:
    """Await `coro` one step at a time (from one resumption to its next suspension), each step
    holding `lock`; `on_step("lock")` before waiting for the lock, `on_step("step")` once it is
    held. Cancellation and errors are passed through to the coroutine."""

    def __init__(self, coro: Coroutine, lock: Any, on_step: Callable[[str], None]):
        self._coro = coro
        self._lock = lock
        self._on_step = on_step

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self._coro
        value: Any = None
        exc: BaseException | None = None
        while True:
            self._on_step("lock")
            with self._lock:
                self._on_step("step")
                try:
                    if exc is not None:
                        yielded = coro.throw(exc)
                    else:
                        yielded = coro.send(value)
                except StopIteration as stop:
                    return stop.value
            try:
                value, exc = (yield yielded), None
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as e:  # CancelledError included: the coroutine decides
                value, exc = None, e


class Sender:
    """The one thread that sends the outbox (its own event loop; `Outbox.flush` is async)."""

    name = "outbox"

    def __init__(self, outbox: Outbox | Callable[[], Outbox], lock: Any, smtp_timeout: Callable[[], float],
                 interval: float = SEND_INTERVAL, chunk: int = FLUSH_CHUNK, claimer: str | None = None,
                 may_housekeep: Callable[[], bool] = lambda: True):
        self._outbox = outbox
        self.claimer = claimer  # several daemons: claim rows under this id before sending them
        self.may_housekeep = may_housekeep  # several daemons: only the scheduler's holder
        self.lock = lock
        self.smtp_timeout = smtp_timeout
        self.interval = interval
        self.chunk = chunk
        self.beat = time.monotonic()
        self.allowance = interval + 10
        self._flush_allowance = 70.0
        self.last: FlushStats | None = None
        self.totals = FlushStats()  # summed over every flush (`run --once` reports them)
        self.smtp_state = "idle"  # idle | ok | retrying | no smtp configured | error
        self.flushing = False
        self.next_housekeeping = 0.0  # monotonic; 0 = soon after start
        self._wake = threading.Event()
        self._final = threading.Event()
        self._abort = False
        self._mu = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self.thread = threading.Thread(target=self._run, name="outbox-sender", daemon=True)

    @property
    def outbox(self) -> Outbox:
        """The current runtime's outbox (a reload swaps it; the next flush uses the new one)."""
        return self._outbox() if callable(self._outbox) else self._outbox

    # -- control (any thread)
    def start(self) -> None:
        self.thread.start()

    def wake(self) -> None:
        self._wake.set()

    def finish(self) -> None:
        """One last flush (of everything committed until now), then the thread ends."""
        self._final.set()
        self._wake.set()

    def abort(self) -> None:
        """Cut the flush in progress short (the grace period is over)."""
        with self._mu:
            self._abort = True
            if self._loop is not None and self._task is not None:
                self._loop.call_soon_threadsafe(self._task.cancel)
        self._wake.set()

    # -- the thread
    def _step(self, phase: str) -> None:
        # waiting for the store lock means a mailbox is committing a batch: that may take as long
        # as a batch may take (if it takes longer, the mailbox loop is the one reported wedged)
        self.beat = time.monotonic()
        self.allowance = self._flush_allowance + (PROCESS_ALLOWANCE if phase == "lock" else 0.0)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            first = True  # mail queued before a restart goes out at once, not after one interval
            while not self._abort:
                if not self._final.is_set() and not first:
                    self.beat, self.allowance = time.monotonic(), self.interval + 10
                    self._wake.wait(self.interval)
                first = False
                self._wake.clear()
                final = self._final.is_set()
                self._flush(loop)
                if final:
                    break
                if time.monotonic() >= self.next_housekeeping:
                    self.next_housekeeping = time.monotonic() + HOUSEKEEPING_EVERY
                    self._housekeeping()
        finally:
            with self._mu:
                self._loop = None
            loop.close()

    def _housekeeping(self) -> None:
        """Keep the hot database small (the same as `run --once` does after its flush)."""
        hk = getattr(self.outbox, "housekeeping", None)
        if hk is None or not self.may_housekeep():
            self.next_housekeeping = time.monotonic() + 60.0  # look again soon: we may hold it then
            return
        self.beat, self.allowance = time.monotonic(), 600.0
        try:
            archived, pruned = hk(refresh_reports=True)
        except Exception as e:
            log.error("housekeeping failed, will retry later: %s: %s", type(e).__name__, e)
            return
        finally:
            self.beat = time.monotonic()
        if archived or pruned:
            log.info("housekeeping: %d closed tickets archived, %d sent rows pruned", archived, pruned)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        # every step of a flush ends within an SMTP timeout (aiosmtplib bounds each command)
        self._flush_allowance = 2 * self.smtp_timeout() + 10
        self.allowance, self.beat = self._flush_allowance, time.monotonic()

        if self.claimer is not None:
            self.outbox.claimer = self.claimer

        async def go() -> FlushStats:
            return await _Stepped(self.outbox.flush(chunk=self.chunk), self.lock, self._step)

        with self._mu:
            if self._abort:
                return
            task = loop.create_task(go())
            self._task = task
        self.flushing = True
        try:
            stats = loop.run_until_complete(task)
        except asyncio.CancelledError:
            log.warning("outbox flush cut short: the grace period is over")
            return
        except Exception as e:
            self.smtp_state = "error"
            log.error("outbox flush failed, will retry: %s: %s", type(e).__name__, e)
            log.debug("outbox flush traceback", exc_info=True)
            return
        finally:
            self.flushing = False
            with self._mu:
                self._task = None
            self.beat = time.monotonic()
        self.last = stats
        for k in ("sent", "temp", "perm"):
            setattr(self.totals, k, getattr(self.totals, k) + getattr(stats, k))
        self.totals.queued, self.totals.no_smtp = stats.queued, stats.no_smtp
        if stats.temp and not stats.sent:
            self.smtp_state = "retrying"
        elif stats.no_smtp and not (stats.sent or stats.temp or stats.perm):
            self.smtp_state = "no smtp configured"
        elif stats.sent or stats.perm or stats.temp:
            self.smtp_state = "ok"
        if stats.sent or stats.temp or stats.perm:
            log.info("outbox: %d sent, %d to retry, %d failed, %d queued", stats.sent, stats.temp,
                     stats.perm, stats.queued)


# ---- the SLA scheduler ----------------------------------------------------------------------------

SCHEDULER_MAX_SLEEP = 30.0  # look again at least this often (a clock change can move the earliest wake)


class Scheduler:
    """The one thread that runs time-driven work: SLA reminders, escalations, customer updates,
    auto-close (and scheduled reports). It sleeps until the earliest wake-up time in the store's index
    (never a scan of every ticket), or until new mail is committed, and applies what is due in one batch
    commit; a firing's ledger key goes into the same commit, so nothing is sent twice."""

    name = "scheduler"

    def __init__(self, box: Box, on_work: Callable[[], None] = lambda: None, leases: Any = None):
        self.box = box
        self.on_work = on_work
        self.leases = leases  # several daemons: only the holder of the `scheduler` lease runs timers
        self.beat = time.monotonic()
        self.allowance = SCHEDULER_MAX_SLEEP + 10
        self.passes = 0
        self.last_error: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="scheduler", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _run(self) -> None:
        from mailflow import services
        from mailflow.cluster import SCHEDULER

        while not self._stop.is_set():
            rt = self.box.current
            fence = None
            if self.leases is not None:
                fence = self.leases.fence(SCHEDULER)
                if fence is None:  # another daemon runs the timers; look again at the next lease check
                    self.beat, self.allowance = time.monotonic(), self.leases.every + 10
                    self._wake.wait(self.leases.every)
                    self._wake.clear()
                    continue
            self.beat, self.allowance = time.monotonic(), PROCESS_ALLOWANCE
            try:
                n = services.timers_pass(rt, fence)
                self.last_error = None
            except Exception as e:  # never let the scheduler die: log, back off, try again
                self.last_error = f"{type(e).__name__}: {e}"
                log.error("scheduler pass failed, will retry: %s", self.last_error)
                log.debug("scheduler traceback", exc_info=True)
                n = 0
            self.passes += 1
            if n:
                self.on_work()
            delay = SCHEDULER_MAX_SLEEP
            try:
                at = services.next_wake(rt)
            except Exception as e:  # noqa: BLE001 - sleep the maximum and look again
                log.error("scheduler cannot compute its next wake-up: %s: %s", type(e).__name__, e)
                at = None
            if at is not None:
                delay = min(delay, max(0.0, (at - rt.clock.now()).total_seconds()))
            self.beat, self.allowance = time.monotonic(), delay + 10
            if delay > 0:
                self._wake.wait(delay)
            self._wake.clear()


# ---- the daemon -------------------------------------------------------------------------------------

class Daemon:
    def __init__(self, cfg: config_mod.Config, config_path: str | None):
        if threading.current_thread() is threading.main_thread():
            # a reload requested while we compile must not terminate us (SIGHUP's default action)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self.cfg = cfg
        self.config_path = config_path
        self.box = Box(Runtime.load(cfg, config_path=config_path))
        self.store = self.box.current.store
        self._stamp = _tree_stamp(cfg.rules_dir, cfg.templates_dir)
        self.box.pipeline.debug = logging.getLogger().isEnabledFor(logging.DEBUG)
        self.stop = threading.Event()
        self.leases = None  # PostgreSQL: several daemons share the database (mailflow/cluster.py)
        if self.store.backend != "tinydb":
            from mailflow.cluster import SCHEDULER, Leases

            self.leases = Leases(self.store, [mb.name for mb in cfg.mailboxes], cfg.pg.lease_seconds,
                                 info={"host": socket.gethostname(), "pid": os.getpid()})
            self.leases.busy = lambda name: any(w.working for w in self.workers if w.lease_name == name)
        self.workers = [MailboxWorker(mb, self.box, self.leases) for mb in cfg.mailboxes]
        self.threads: list[threading.Thread] = []
        leases = self.leases
        self.sender = Sender(lambda: self.box.pipeline.outbox, self.store.mutex, self._smtp_timeout,
                             claimer=None if leases is None else leases.me,
                             may_housekeep=lambda: leases is None or leases.holds(SCHEDULER))
        self.scheduler = Scheduler(self.box, on_work=self._kick_sender, leases=self.leases)
        self.watchdog = watchdog_seconds()
        self.grace = 20.0
        self.ready = False
        self.stopping = False
        self.reload_error: str | None = None
        self.last_reload: dict | None = None  # {at, reason, ok, error}: `mailflow status` shows it
        self._counts: tuple[int, int, int] | None = None  # open tickets, outbox queued, quarantine held
        self._counts_key: tuple | None = None
        self._last_status = ""
        self._wedged: list[str] = []
        self._stopped: asyncio.Event | None = None
        self._reload_task: asyncio.Task | None = None
        self._reload_again: str | None = None
        self._seen_stamp: tuple | None = None
        self._lockfile: Any = None

    @property
    def pipeline(self):
        return self.box.pipeline

    # ---- liveness ----------------------------------------------------------------------------

    def _smtp_timeout(self) -> float:
        ts = [s.timeout for s in [self.cfg.smtp, *(mb.smtp for mb in self.cfg.mailboxes)] if s is not None]
        return max(ts, default=30.0)

    def loops(self) -> list[tuple[str, float, float, bool]]:
        out = [(f"mailbox {w.name}", w.beat, w.allowance, t.is_alive())
               for w, t in zip(self.workers, self.threads, strict=False)]
        out.append(("outbox sender", self.sender.beat, self.sender.allowance, self.sender.thread.is_alive()))
        if self.scheduler.thread.ident is not None:
            out.append(("scheduler", self.scheduler.beat, self.scheduler.allowance,
                        self.scheduler.thread.is_alive()))
        if self.leases is not None and self.leases.started:
            out.append(("leases", self.leases.beat, self.leases.every + 30.0, self.leases.alive))
        return out

    def floor(self) -> float:
        return self.watchdog / 2 if self.watchdog else NO_WATCHDOG_FLOOR

    def check_alive(self, now: float | None = None) -> bool:
        """Send WATCHDOG=1 if every loop makes progress; otherwise withhold it (and say why, once)."""
        bad = [] if self.stopping else wedged(time.monotonic() if now is None else now, self.loops(),
                                               self.floor())
        if bad and bad != self._wedged:
            log.error("withholding the watchdog ping: %s", ", ".join(bad))
        elif not bad and self._wedged:
            log.info("all loops make progress again")
        self._wedged = bad
        if not bad and self.watchdog:
            sd_notify("WATCHDOG=1")
        return not bad

    # ---- status --------------------------------------------------------------------------------

    def _refresh_counts(self) -> None:
        """Open tickets, queued mail, quarantine size; runs in a helper thread, never waits long."""
        mutex = self.store.mutex
        if not mutex.acquire(timeout=2.0):
            return
        try:
            self.store.refresh()
            key = self.store.change_stamp()
            if key is not None and key == self._counts_key and self._counts is not None:
                return
            self._counts, self._counts_key = services.counts(self.store, self.pipeline.outbox), key
        finally:
            mutex.release()

    def status_line(self) -> str:
        if self.stopping:
            return "stopping: finishing the batch in hand, flushing the outbox"
        ws = self.workers
        if not ws:
            boxes = "no mailboxes"
        else:
            states = [(w.name, "retrying" if w.state == "connecting" and w.last_error else w.state)
                      for w in ws]
            ok = [n for n, st in states if st == "ok"]
            other = [f"{n} {st}" for n, st in states if st != "ok"]
            boxes = f"{len(ws)} mailbox{'es' if len(ws) != 1 else ''}"
            if other:
                boxes += f" ({len(ok)} ok, {', '.join(other)})"
        line = boxes
        if self._counts is not None:
            open_n, queued, held = self._counts
            line += f", {open_n} open ticket{'s' if open_n != 1 else ''}, outbox {queued}"
            if held:
                line += f", quarantine {held}"
        line += {"retrying": " (smtp retrying)", "no smtp configured": " (no [smtp] configured)",
                 "error": " (outbox flush failing, see the log)"}.get(self.sender.smtp_state, "")
        if self._wedged:
            line += f"; WEDGED: {', '.join(self._wedged)}"
        if self.reload_error:
            line += "; last reload rejected (see the log)"
        return line

    def _publish_status(self, force: bool = False) -> None:
        line = self.status_line()
        if force or line != self._last_status:
            self._last_status = line
            sd_notify(f"STATUS={line}")
            self.write_status_file()

    def write_status_file(self) -> None:
        """`data_dir/daemon-status.json`: what `mailflow status` shows of the running daemon (its
        status line, mailbox states, the last reload and why it was rejected). Never fatal."""
        import json

        from mailflow.clock import utcnow
        from mailflow.store import write_atomic

        doc = {"pid": os.getpid(), "at": utcnow().isoformat(timespec="seconds"), "status": self._last_status,
               "ready": self.ready, "stopping": self.stopping,
               "mailboxes": {w.name: {"state": w.state, "last_error": w.last_error} for w in self.workers},
               "smtp": self.sender.smtp_state, "wedged": list(self._wedged),
               "last_reload": self.last_reload, "scheduler_passes": self.scheduler.passes,
               **({} if self.leases is None else {"leases": self.leases.held(), "daemon_id": self.leases.me})}
        try:
            if self.store.backend == "tinydb":
                write_atomic(self.store.dir / "daemon-status.json", json.dumps(doc, ensure_ascii=False).encode())
            else:  # several daemons share the database: one row each (`mailflow status` lists them)
                self.store.write_daemon_status(doc)
        except Exception as e:  # noqa: BLE001 - never fatal
            log.debug("cannot write the daemon status: %s", e)

    # ---- reload ----------------------------------------------------------------------------------

    def reload(self, reason: str = "SIGHUP") -> bool:
        """Compile config, rules and templates whole; swap only if all of it is good (blocking)."""
        stamp = _tree_stamp(self.cfg.rules_dir, self.cfg.templates_dir)
        try:
            cfg = config_mod.load(self.config_path) if self.config_path else self.cfg
            cfg = self._keep_restart_only(cfg, restart := [])
            new = self.box.current.reloaded(cfg)
            new_stamp = _tree_stamp(cfg.rules_dir, cfg.templates_dir)
            if cfg.rules_dir == self.cfg.rules_dir and cfg.templates_dir == self.cfg.templates_dir:
                new_stamp = stamp  # what was compiled is at least as new as this
        except Exception as e:
            self.reload_error = _problems(e)
            self.last_reload = {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "reason": reason, "ok": False,
                                "error": self.reload_error}
            self._stamp = stamp  # do not retry the same broken files on every tick
            log.error("reload (%s) rejected, keeping the running config, rules and templates: %s",
                      reason, self.reload_error)
            return False
        mutex = self.store.mutex
        if not mutex.acquire(timeout=20):
            self.reload_error = "the store stayed busy for 20 s"
            self.last_reload = {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "reason": reason, "ok": False,
                                "error": self.reload_error}
            log.error("reload (%s) rejected: %s", reason, self.reload_error)
            return False
        try:  # between two batches: a batch sees either the old runtime or the new one, never a mix
            self.box.current = new
            self.cfg = cfg
        finally:
            mutex.release()
        rules = new.rules
        self._stamp = new_stamp
        self.reload_error = None
        self.last_reload = {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "reason": reason, "ok": True, "error": None}
        log.info("reloaded (%s): config %s, rules v%s from %s, templates from %s", reason,
                 self.config_path or "(embedded defaults)", rules.version, cfg.rules_dir, cfg.templates_dir)
        if restart:
            log.warning("changed %s settings take effect only after a restart (systemctl restart mailflow)",
                        " and ".join(restart))
        return True

    def _keep_restart_only(self, cfg: config_mod.Config, restart: list[str]) -> config_mod.Config:
        """Settings only a restart can change keep their running values (and are reported)."""
        old = self.cfg
        if cfg.mailboxes != old.mailboxes:
            restart.append("[[mailbox]]")
            cfg.mailboxes = old.mailboxes  # the running workers keep theirs
        if cfg.data_dir != old.data_dir:
            restart.append("data_dir")
            cfg.data_dir = old.data_dir
        if cfg.log_level != old.log_level:
            restart.append("[logging] level")
        if cfg.outbound.hmac_key != old.outbound.hmac_key:
            restart.append("[outbound] hmac_key")
            cfg.outbound.hmac_key = old.outbound.hmac_key
        return cfg

    def request_reload(self, reason: str = "SIGHUP") -> None:
        """Schedule a reload on the running loop; a reload requested during one runs after it."""
        if self.stopping:
            return
        if self._reload_task is not None and not self._reload_task.done():
            self._reload_again = reason
            return
        self._reload_task = asyncio.get_running_loop().create_task(self._reload(reason))

    async def _reload(self, reason: str) -> None:
        while True:
            notify = self.ready and not self.stopping
            if notify:
                sd_notify(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec()}\nSTATUS=reloading ({reason})")
            try:
                await asyncio.to_thread(self.reload, reason)
            except Exception as e:  # reload() reports its own failures; this is a bug
                log.error("reload (%s) failed: %s: %s", reason, type(e).__name__, e)
            finally:
                if notify:
                    self._last_status = self.status_line()
                    sd_notify(f"READY=1\nSTATUS={self._last_status}")
                self.write_status_file()
            reason, self._reload_again = self._reload_again, None
            if reason is None or self.stopping:
                return

    def _files_changed(self) -> bool:
        """Rule/template files changed and then held still for one check (editors save in steps)."""
        try:
            now = _tree_stamp(self.cfg.rules_dir, self.cfg.templates_dir)
        except OSError:
            return False
        settled = now == self._seen_stamp
        self._seen_stamp = now
        return settled and now != self._stamp

    # ---- main ------------------------------------------------------------------------------------

    def request_stop(self) -> None:
        self.stop.set()
        if self._stopped is not None:
            self._stopped.set()

    def _kick_sender(self) -> None:
        self.sender.wake()

    def _on_mail(self) -> None:
        """A batch was committed: send its mail, and let the scheduler see its new due times."""
        self.sender.wake()
        self.scheduler.wake()

    async def _supervise(self) -> None:
        tick = min(1.0, self.watchdog / 4) if self.watchdog else 1.0
        next_status = 0.0
        house: asyncio.Future | None = None
        while True:
            self.check_alive()
            now = time.monotonic()
            if house is not None and house.done():
                err = house.exception()
                if err is not None:
                    log.warning("status check failed: %s: %s", type(err).__name__, err)
                elif house.result():
                    self.request_reload("rule or template files changed")
                house = None
                self._publish_status()
            if house is None and now >= next_status and not self.stopping:
                next_status = now + STATUS_EVERY
                house = asyncio.ensure_future(asyncio.to_thread(self._housekeeping))
            await asyncio.sleep(tick)

    def _housekeeping(self) -> bool:
        self._refresh_counts()
        return self._files_changed()

    def _install_log_masking(self) -> None:
        for h in logging.getLogger().handlers:
            if not any(isinstance(f, MaskAddresses) for f in h.filters):
                h.addFilter(MaskAddresses())

    async def _wait(self, cond: Callable[[], bool], timeout: float | None, step: float = 0.05) -> bool:
        end = None if timeout is None else time.monotonic() + timeout
        while not cond():
            if end is not None and time.monotonic() >= end:
                return False
            await asyncio.sleep(step)
        return True

    def _lock_data_dir(self) -> bool:
        """One daemon per data directory: two would both send the outbox. Held until exit."""
        from mailflow.services import process_lock

        self._lockfile = process_lock(self.store)
        return self._lockfile is not None

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        if not self._lock_data_dir():
            log.error("another mailflow daemon is running on %s (see %s); not starting a second one",
                      self.cfg.data_dir, self.store.dir / "daemon.lock")
            return 2
        self._stopped = asyncio.Event()
        if self.stop.is_set():
            self._stopped.set()
        self._install_log_masking()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        try:
            with self.store.mutex:
                self.pipeline.outbox.fold_journal()  # results of a flush that a crash cut short
        except Exception as e:  # the sender retries the fold; never refuse to start over it
            log.error("cannot fold the outbox journal yet: %s: %s", type(e).__name__, e)
        sd_notify(f"STATUS=starting: connecting {len(self.workers)} mailbox(es)")
        log.info("starting: %d mailbox(es), data %s, watchdog %s", len(self.workers), self.cfg.data_dir,
                 f"{self.watchdog:g}s" if self.watchdog else "off")
        if self.watchdog:
            for mb in self.cfg.mailboxes:
                if mb.timeout >= self.watchdog / 2:
                    log.warning("mailbox=%s timeout %gs is not under half of WatchdogSec (%gs): a slow "
                                "server may cost a watchdog restart instead of a retry", mb.name, mb.timeout,
                                self.watchdog)
        if self.leases is not None:
            self.leases.start()  # our own lease, a first share of the mailboxes, perhaps the scheduler
            log.info("cluster: daemon %s, %d daemon(s) live, holding %s", self.leases.me,
                     len(self.store.live_daemons()), ", ".join(self.leases.held()) or "nothing yet")
        self.sender.start()
        self.scheduler.start()
        for w in self.workers:
            t = threading.Thread(target=w.run, args=(self.stop, self._on_mail), name=f"mailbox-{w.name}",
                                 daemon=True)
            t.start()
            self.threads.append(t)
        sup = loop.create_task(self._supervise())
        try:
            # READY once every mailbox is connected or retrying (each attempt ends within its timeouts)
            await self._wait(lambda: self.stop.is_set() or all(
                w.settled or not t.is_alive() for w, t in zip(self.workers, self.threads, strict=True)), None)
            if not self.stop.is_set():
                await asyncio.to_thread(self._refresh_counts)
                self.ready = True
                self._last_status = self.status_line()
                sd_notify(f"READY=1\nSTATUS={self._last_status}")
                self.write_status_file()
                log.info("ready: %s", self._last_status)
            await self._stopped.wait()
            return await self._shutdown()
        finally:
            sup.cancel()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    async def _shutdown(self) -> int:
        """Within `grace` seconds in all (TimeoutStopSec= in the unit allows a little more): the mailbox
        threads finish their batch, the scheduler its pass, the outbox gets what time is left."""
        self.stopping = True
        sd_notify("STOPPING=1\nSTATUS=stopping: finishing the batch in hand, flushing the outbox")
        log.info("stopping: finishing the batch in hand")
        deadline = time.monotonic() + self.grace

        def left(floor: float = 1.0) -> float:
            return max(floor, deadline - time.monotonic())

        self.scheduler.stop()
        if self._reload_task is not None:
            await asyncio.wait([self._reload_task], timeout=left())
        if not await self._wait(lambda: not any(t.is_alive() for t in self.threads), left()):
            stuck = [w.name for w, t in zip(self.workers, self.threads, strict=False) if t.is_alive()]
            log.warning("mailbox(es) %s did not stop in time; their batch will be replayed at the next start",
                        ", ".join(stuck))
        await self._wait(lambda: not self.scheduler.thread.is_alive(), min(left(), 5.0))
        self.sender.finish()
        if not await self._wait(lambda: not self.sender.thread.is_alive(), left()):
            self.sender.abort()
            await self._wait(lambda: not self.sender.thread.is_alive(), 3.0)
        if self.leases is not None:
            await asyncio.to_thread(self._leave_cluster)
        queued = await asyncio.to_thread(self._queued_now)
        log.info("stopped: %s", f"{queued} mail(s) stay queued for the next start" if queued
                 else "outbox empty")
        return 0

    def _leave_cluster(self) -> None:
        """Give back unsent claimed rows and every lease: the other daemons take over at once."""
        self.pipeline.outbox.release_claims()
        self.leases.stop()

    def _queued_now(self) -> int | str:
        if not self.store.mutex.acquire(timeout=5.0):
            return "?"
        try:
            return self.pipeline.outbox.pending_count()
        finally:
            self.store.mutex.release()


__all__ = ["Daemon", "LoadError", "Sender", "load_all", "sd_notify", "watchdog_seconds", "wedged"]
