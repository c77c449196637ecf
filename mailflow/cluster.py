"""Several daemons on one PostgreSQL database: who works which mailbox, who runs the scheduler.

Every daemon holds a lease on itself (`daemon:ID`, so the others know it is alive and how many
share the work) and, for each mailbox it works, `mailbox:NAME`; one of them holds `scheduler`
(SLA timers, scheduled reports, housekeeping). A lease is a row with an expiry on the database
server's clock and a fencing token that grows with every new holder (mailflow/store_pg.py).

* A worker works its mailbox only while `holds()` says so, and each of its batches starts with
  `store.fence(name, me, token)`: the lease row stays share-locked until the commit, so a daemon
  that lost its lease (paused, cut off from the database) cannot commit another batch, and nobody
  can take the lease while a batch of the holder may still commit.
* A daemon of the same host whose process is gone (kill -9, OOM) has its leases ended at once by
  the next check of any daemon (or `run --once`) there; one on another host is taken over when its
  leases run out. `$MAILFLOW_HOST_ID` names the host when containers share a hostname.
* `holds()` is judged on this process's monotonic clock, conservatively: a lease counts as ours until
  two check intervals before the database lets it expire. The database row lives `lease_seconds`
  less one interval after each renewal, so when a daemon dies (kill -9, machine gone) another one
  takes its mailboxes within `lease_seconds`.
* Mailboxes are shared out evenly: a daemon takes free mailbox leases while it holds fewer than
  its share (ceil(mailboxes / live daemons)) and hands one back per check while it holds more (its
  worker finishes the batch in hand first), so a daemon that joins gets work within a few checks.

TinyDB has none of this: one daemon per data directory (`services.process_lock`).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger("mailflow.cluster")

SCHEDULER = "scheduler"


def mailbox_lease(name: str) -> str:
    return f"mailbox:{name}"


def dead_here(holder: str, me: str) -> bool:
    """True if `holder` (host:pid:random) ran on this host and its process is gone: its leases need
    not run out (a `run --once` after a crash, a daemon restarted by systemd, go on at once). A
    holder on another host, or a pid that is alive (even reused), is never judged dead here."""
    from mailflow.store_pg import daemon_host

    try:
        host, pid_s, _r = holder.rsplit(":", 2)
        pid = int(pid_s)
    except ValueError:
        return False
    if holder == me or host != daemon_host() or pid <= 0:
        return False
    if pid == os.getpid():
        return True  # the pid is ours now: that process is gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False


class Leases:
    """This process's leases (see the module docstring); `tick()` renews, takes and hands back."""

    def __init__(self, store, mailboxes: list[str], seconds: float, *, scheduler: bool = True,
                 greedy: bool = False, info: dict | None = None):
        self.store = store
        self.me: str = store.daemon
        self.seconds = float(seconds)
        self.every = max(0.2, self.seconds / 6)  # how often tick() runs
        self.mailboxes = [mailbox_lease(n) for n in mailboxes]
        self.scheduler = scheduler
        self.greedy = greedy  # `run --once`: take every free mailbox, never hand one back
        self.info = info or {}
        self._held: dict[str, tuple[int, float]] = {}  # name -> (token, ours until: monotonic)
        self._releasing: set[str] = set()
        self._mu = threading.Lock()
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.busy: Callable[[str], bool] = lambda name: False  # is a worker inside a batch of it?
        self.beat = time.monotonic()

    # ---- what the workers ask ---------------------------------------------------------------------

    def holds(self, name: str) -> bool:
        with self._mu:
            h = self._held.get(name)
            return h is not None and h[1] > time.monotonic() and name not in self._releasing

    def fence(self, name: str) -> tuple[str, str, int] | None:
        """(name, holder, token) for `store.fence` in a batch; None if not ours."""
        with self._mu:
            h = self._held.get(name)
        return (name, self.me, h[0]) if h is not None and self.holds(name) else None

    def held(self) -> list[str]:
        with self._mu:
            now = time.monotonic()
            return sorted(n for n, (_t, until) in self._held.items() if until > now)

    # ---- the check --------------------------------------------------------------------------------

    def _ttl(self, name: str = "") -> float:
        """How long the database keeps a lease after a renewal. A daemon's own lease runs out a
        little before its mailboxes' do, so when it dies the others count one daemon less (and
        take its share) by the time its mailbox leases are free."""
        return self.seconds - self.every - (self.every / 4 if name.startswith("daemon:") else 0.0)

    def _take(self, name: str, t0: float) -> bool:
        token = self.store.lease_acquire(name, self.me, self._ttl(name), info={"daemon": self.me, **self.info})
        if token is None:
            return False
        with self._mu:
            self._held[name] = (token, t0 + self._ttl(name) - self.every)
        if not name.startswith("daemon:"):
            log.info("lease %s taken (token %d)", name, token)
        return True

    def tick(self) -> None:
        """Renew what we hold, then take or hand back mailboxes to reach our share. Never raises:
        a database that cannot be reached just lets the leases run out (the workers stop)."""
        self.beat = t0 = time.monotonic()
        try:
            self._tick(t0)
            self.last_error = None
        except Exception as e:  # noqa: BLE001 - logged; the leases expire on their own
            if self.last_error is None:
                log.error("cannot renew the leases (they run out in %.0fs): %s", self.seconds, e)
            self.last_error = f"{type(e).__name__}: {e}"
        self.beat = time.monotonic()

    def _tick(self, t0: float) -> None:
        own = f"daemon:{self.me}"
        with self._mu:
            held = {n: tok for n, (tok, _u) in self._held.items()}
        renewed, kept = self.store.lease_renew(held, self.me, self._ttl(), self.every / 4)
        with self._mu:
            for n in list(self._held):
                if n in renewed:
                    self._held[n] = (self._held[n][0], t0 + self._ttl(n) - self.every)
                elif n not in kept:
                    del self._held[n]
                    self._releasing.discard(n)
                    log.warning("lease %s lost (another daemon holds it now, or it ran out)", n)
        if own not in self._held:
            self._take(own, t0)
        # one look at every live lease: a daemon of this host that died (kill -9, OOM) has its leases
        # ended now, not when they run out; the other daemons' own leases say how many share the work
        live = [x for x in self.store.leases() if x["live"]]
        gone = {x["holder"] for x in live if dead_here(x["holder"], self.me)}
        for holder in gone:
            n = self.store.lease_reap(holder)
            if n:
                log.warning("daemon %s on this host is gone: its %d lease(s) are free now", holder, n)
        daemons = max(1, sum(1 for x in live if x["name"].startswith("daemon:") and x["holder"] not in gone))
        # hand back what we were asked to, once its worker is out of its batch
        for n in sorted(self._releasing):
            if not self.busy(n):
                self._release(n)
        if self.scheduler and SCHEDULER not in self._held:
            self._take(SCHEDULER, t0)
        mine = [n for n in self.mailboxes if n in self._held]
        if self.greedy:
            share = len(self.mailboxes)
        else:
            share = math.ceil(len(self.mailboxes) / daemons) if self.mailboxes else 0
        if len(mine) > share:
            with self._mu:
                if not self._releasing & set(mine):
                    n = mine[-1]
                    self._releasing.add(n)
                    log.info("lease %s: handing it back (%d daemons share %d mailboxes)", n, daemons,
                             len(self.mailboxes))
        elif len(mine) < share:
            for n in self.mailboxes:
                if n not in self._held and self._take(n, t0):
                    mine.append(n)
                    if len(mine) >= share:
                        break

    def _release(self, name: str) -> None:
        with self._mu:
            h = self._held.pop(name, None)
            self._releasing.discard(name)
        if h is not None:
            self.store.lease_release(name, self.me, h[0])
            log.info("lease %s handed back", name)

    # ---- the thread -------------------------------------------------------------------------------

    def start(self) -> None:
        """Join the cluster now (one check in the caller's thread), then check every `every` s."""
        self.tick()
        self._thread = threading.Thread(target=self._run, name="leases", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.tick()

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Hand everything back (the others take over at their next check) and stop checking."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.every + 5)
        with self._mu:
            names = sorted(self._held, key=lambda n: n.startswith("daemon:"))  # our own lease last
        for n in names:
            try:
                self._release(n)
            except Exception as e:  # noqa: BLE001 - they run out on their own
                log.warning("cannot hand back lease %s (it runs out in %.0fs): %s", n, self.seconds, e)


__all__ = ["SCHEDULER", "Leases", "mailbox_lease"]
