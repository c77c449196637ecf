"""IMAP sources: one per mailbox, IDLE with poll fallback, UID checkpoints.

An `ImapSource` is blocking (imapclient) and owned by one worker thread. The daemon's loop is

    src.connect()
    while running:
        for uid, raw in src.fetch(src.pending_uids(last_uid)):  # BODY.PEEK[]: no \\Seen
            spool(raw) ...
        commit(tickets + checkpoint); src.mark_done(uids)         # only after the commit
        src.wait(timeout, stop)                                   # IDLE, or NOOP polling

and on `FetchError`: `close()`, sleep `Backoff.next()`, `connect()` again.

Facts this works around (DESIGN.md section 7, imapclient 4.1): `UID SEARCH UID n:*` returns the
highest UID even when it is below n; after a dropped connection `idle_check` returns `[]` at once
on every call, so a naive IDLE loop spins; `fetch()` cannot take "1:*"; `move()` needs MOVE.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator

from imapclient import IMAPClient
from imapclient import exceptions as imap_exc

from mailflow.config import ConfigError, MailboxConfig

log = logging.getLogger(__name__)

SEEN = b"\\Seen"
DELETED = b"\\Deleted"
MAX_UID = 2**32 - 1
IDLE_RENEW = 25 * 60.0  # re-issue IDLE this often (RFC 2177: servers may drop it after 29 min)
# Mail delivered in the instant between our last check and the server entering IDLE is not
# announced by Dovecot until its own 30 s rescan: leave IDLE this often to look (NOOP + SEARCH),
# which bounds that rare delay (seen once in ~100 one-by-one deliveries) at a few round trips' cost
IDLE_RECHECK = 10.0
IDLE_STEP = 1.0  # idle_check granularity: how fast `stop` and `timeout` are honoured
DEAD_AFTER = 3  # this many instant empty idle_check() results in a row = connection gone
SEQSET_CHARS = 4000  # keep UID sets well under Dovecot's 64 KB command line
HEADER_SCAN_CHUNK = 500
SEARCH_IDS_MAX = 50  # up to this many Message-IDs: one SEARCH each; above: scan all headers


class FetchError(Exception):
    """A network, TLS, authentication or protocol failure of one mailbox.

    The message is short, names the mailbox, and never contains a password or token.
    `auth` is True for a rejected login (retrying soon will not help).
    """

    def __init__(self, reason: str, mailbox: str | None = None, *, auth: bool = False):
        self.reason = reason
        self.mailbox = mailbox
        self.auth = auth
        super().__init__(f"mailbox {mailbox}: {reason}" if mailbox else reason)


class Backoff:
    """Capped exponential backoff with jitter for reconnects.

    next() returns initial * factor**n (n = calls since reset), capped at `cap`, shrunk by a
    random factor in [1 - jitter, 1] so that many mailboxes do not reconnect in lockstep.
    """

    def __init__(self, initial: float = 1.0, cap: float = 300.0, factor: float = 2.0,
                 jitter: float = 0.5, rng: random.Random | None = None):
        self.initial, self.cap, self.factor, self.jitter = initial, cap, factor, jitter
        self._rng = rng or random.Random()
        self.attempts = 0
        self._base = initial

    def next(self) -> float:
        self.attempts += 1
        base = min(self.cap, self._base)
        if self._base < self.cap:  # stop growing once capped: no float overflow after days
            self._base *= self.factor
        return base * (1.0 - self.jitter * self._rng.random())

    def reset(self) -> None:
        self.attempts = 0
        self._base = self.initial


def _seqsets(uids: list[int]) -> list[str]:
    """Sorted UIDs -> compact IMAP sequence sets ("1:5,7,9:12"), split to stay short."""
    out: list[str] = []
    parts: list[str] = []
    size = 0
    us = sorted(set(uids))
    i = 0
    while i < len(us):
        j = i
        while j + 1 < len(us) and us[j + 1] == us[j] + 1:
            j += 1
        part = str(us[i]) if i == j else f"{us[i]}:{us[j]}"
        if parts and size + len(part) + 1 > SEQSET_CHARS:
            out.append(",".join(parts))
            parts, size = [], 0
        parts.append(part)
        size += len(part) + 1
        i = j + 1
    if parts:
        out.append(",".join(parts))
    return out


def _norm_msgid(v: str) -> str:
    v = v.strip()
    m = re.search(r"<([^<>]*)>", v)
    return (m.group(1) if m else v).strip()


_MSGID_RE = re.compile(r"^message-id[ \t]*:[ \t]*(.*)$", re.IGNORECASE | re.MULTILINE)


def _header_msgid(block: bytes) -> str:
    text = re.sub(r"\r?\n[ \t]+", " ", block.decode("utf-8", "replace"))
    m = _MSGID_RE.search(text)
    return _norm_msgid(m.group(1)) if m else ""


def _is_bye(resps: list) -> bytes | None:
    for r in resps:
        if isinstance(r, tuple) and r and r[0] == b"BYE":
            return b" ".join(x for x in r[1:] if isinstance(x, bytes)) or b"BYE"
    return None


def _has_new_mail(resps: list) -> bool:
    return any(isinstance(r, tuple) and len(r) >= 2 and r[1] == b"EXISTS" for r in resps)


def _text(v) -> str:
    s = str(v)
    m = re.fullmatch(r"b(['\"])(.*)\1", s, re.DOTALL)  # imapclient wraps server text as str(bytes)
    return m.group(2) if m else s


def _keepalive(sock: socket.socket) -> None:
    """Notice a silently vanished peer (NAT timeout, cable) within a few minutes while idling."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 15)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4)


FETCH_BYTES = 8 * 1024 * 1024  # mail in one FETCH answer (one bigger message is fetched alone)


class ImapSource:
    """One mailbox. Blocking (imapclient); the daemon runs it in a worker thread."""

    def __init__(self, cfg: MailboxConfig):
        self.cfg = cfg
        self.name = cfg.name
        self._c: IMAPClient | None = None
        self._caps: set[bytes] = set()
        self._uidvalidity: int | None = None
        self._idling = False
        self._broken = False
        self._high_uid = 0  # highest UID pending_uids() has reported in this session
        self._folders: set[str] = set()
        self._secrets: list[str] = []

    # -- errors -------------------------------------------------------------------------------
    def _reason(self, e: BaseException) -> str:
        cfg = self.cfg
        if isinstance(e, imap_exc.LoginError):
            r = f"authentication failed: {_text(e)}"
        elif isinstance(e, imap_exc.CapabilityError):
            r = _text(e)
        elif isinstance(e, TimeoutError | socket.timeout):
            r = f"timed out after {cfg.timeout:g}s"
        elif isinstance(e, ConnectionRefusedError):
            r = f"connection refused by {cfg.host}:{cfg.port}"
        elif isinstance(e, socket.gaierror):
            r = f"cannot resolve host {cfg.host!r}"
        elif isinstance(e, ssl.SSLCertVerificationError):
            r = f"TLS certificate verification failed: {e.verify_message}"
        elif isinstance(e, ssl.SSLError):
            r = f"TLS error: {e.reason or e}"
        elif isinstance(e, imap_exc.IMAPClientAbortError):
            r = f"connection lost: {_text(e)}"
        elif isinstance(e, imap_exc.IMAPClientError):
            r = _text(e)
        elif isinstance(e, OSError):
            r = e.strerror or type(e).__name__
        else:
            r = f"{type(e).__name__}: {e}"
        for s in self._secrets:  # belt and braces: no server echoes them, but never say them
            if s:
                r = r.replace(s, "***")
        return r if len(r) <= 300 else r[:297] + "..."

    @contextlib.contextmanager
    def _op(self, what: str):
        try:
            yield
        except FetchError:
            raise
        except (imap_exc.IMAPClientAbortError, OSError, EOFError) as e:  # the connection is gone
            self._broken = True
            raise FetchError(f"{what}: {self._reason(e)}", self.name) from e
        except imap_exc.LoginError as e:
            self._broken = True
            reason = self._reason(e)  # [UNAVAILABLE] = the server's auth backend is down: transient
            raise FetchError(f"{what}: {reason}", self.name, auth="UNAVAILABLE" not in reason) from e
        except (imap_exc.IMAPClientError, ValueError) as e:  # NO/BAD: the connection still works
            raise FetchError(f"{what}: {self._reason(e)}", self.name) from e

    def _client(self) -> IMAPClient:
        if self._c is None:
            raise FetchError("not connected", self.name)
        if self._broken:
            raise FetchError("connection lost; reconnect", self.name)
        return self._c

    # -- connection ---------------------------------------------------------------------------
    def _secret(self) -> str:
        cfg = self.cfg
        what = "OAuth2 token" if cfg.auth == "xoauth2" else "password"
        try:
            return cfg.token.get() if cfg.auth == "xoauth2" else cfg.password.get()
        except ConfigError as e:
            raise FetchError(f"cannot read the {what}: {'; '.join(e.problems)}", self.name, auth=True) from None
        except subprocess.TimeoutExpired:
            raise FetchError(f"cannot read the {what}: token_command timed out", self.name) from None
        except OSError as e:
            raise FetchError(f"cannot read the {what}: {e.strerror or e}: {e.filename or ''}",
                             self.name, auth=True) from None

    def connect(self) -> None:
        """Connect, (STARTTLS,) log in, select the folder. Raises FetchError."""
        self.close()
        cfg = self.cfg
        self._folders.clear()
        self._high_uid = 0
        secret = self._secret()  # before connecting: an unreadable secret is a config problem
        self._secrets = [secret]
        ctx = ssl.create_default_context() if cfg.tls in ("implicit", "starttls") else None
        try:
            with self._op(f"connect to {cfg.host}:{cfg.port}"):
                self._c = IMAPClient(cfg.host, cfg.port, ssl=cfg.tls == "implicit", ssl_context=ctx,
                                     timeout=cfg.timeout)
                _keepalive(self._c.socket())
                if cfg.tls == "starttls":
                    self._c.starttls(ctx)  # CapabilityError if absent: never fall back to plain text
            with self._op(f"login as {cfg.user}"):
                if cfg.auth == "xoauth2":
                    self._c.oauth2_login(cfg.user, secret)
                else:
                    self._c.login(cfg.user, secret)
            with self._op(f"select {cfg.folder}"):
                self._caps = set(self._c.capabilities())
                resp = self._c.select_folder(cfg.folder, readonly=False)
            if b"UIDVALIDITY" not in resp:
                raise FetchError(f"select {cfg.folder}: server sent no UIDVALIDITY", self.name)
            self._uidvalidity = int(resp[b"UIDVALIDITY"])
        except FetchError:
            self._broken = True
            self.close()
            raise
        finally:
            del secret
            self._secrets = []
        log.info("mailbox %s: connected to %s:%s (tls %s), %s has %s messages, uidvalidity %s",
                 self.name, cfg.host, cfg.port, cfg.tls, cfg.folder, resp.get(b"EXISTS"), self._uidvalidity)

    @property
    def connected(self) -> bool:
        return self._c is not None and not self._broken

    @property
    def uidvalidity(self) -> int:
        """UIDVALIDITY of the selected folder (as of the last successful connect)."""
        if self._uidvalidity is None:
            raise FetchError("not connected", self.name)
        return self._uidvalidity

    def close(self) -> None:
        """Log out (or just drop a broken connection). Never raises."""
        c, self._c = self._c, None
        idling, self._idling = self._idling, False
        broken, self._broken = self._broken, False
        if c is None:
            return
        try:
            if broken:
                c.shutdown()
                return
            with contextlib.suppress(OSError):
                c.socket().settimeout(min(self.cfg.timeout, 5.0))
            if idling:
                c.idle_done()
            c.logout()
        except Exception:
            with contextlib.suppress(Exception):
                c.shutdown()

    def __enter__(self) -> ImapSource:
        if not self.connected:
            self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------------
    def pending_uids(self, last_uid: int) -> list[int]:
        """All UIDs above the checkpoint, ascending, whatever their flags."""
        if last_uid >= MAX_UID:
            return []
        c = self._client()
        # A server only lets a session see messages it has announced (EXISTS), and announces
        # them at the *end* of a command: without this NOOP, a SEARCH right after another
        # client's APPEND misses the new message (measured with Dovecot 2.3).
        self._noop(c)
        with self._op("search"):
            uids = c.search(["UID", f"{max(last_uid, 0) + 1}:*"])
        # `n:*` always matches the highest UID, even when it is < n (RFC 3501 6.4.8)
        out = sorted(u for u in uids if u > last_uid)
        self._high_uid = max([self._high_uid, last_uid, *out[-1:]])
        return out

    def _unseen_arrivals(self, c: IMAPClient) -> bool:
        """Mail above the highest UID this session has handed out. Its EXISTS may have come back
        in the answer to another command (a STORE while a batch was flagged) where imapclient
        drops it, so neither NOOP nor IDLE would ever report it: look for it directly."""
        if self._high_uid <= 0:
            return False
        with self._op("search"):
            uids = c.search(["UID", f"{self._high_uid + 1}:*"])
        return any(u > self._high_uid for u in uids)

    def fetch(self, uids: list[int]) -> Iterator[tuple[int, bytes]]:
        """(uid, raw bytes) in UID order, BODY.PEEK[] (leaves \\Seen alone). Up to cfg.batch_size
        messages per round trip, and never more than FETCH_BYTES of mail in one answer (sizes come
        from RFC822.SIZE first), so memory follows a cap, not the batch: a 30 MB mail is fetched on
        its own. A UID that no longer exists is skipped."""
        us = sorted(set(uids))
        bs = max(1, self.cfg.batch_size)
        for i in range(0, len(us), bs):
            chunk = us[i:i + bs]
            c = self._client()
            with self._op("fetch sizes"):
                sizes = {u: int(v.get(b"RFC822.SIZE", 0) or 0) for u, v in c.fetch(chunk, ["RFC822.SIZE"]).items()}
            group: list[int] = []
            total = 0
            for u in [u for u in chunk if u in sizes] + [None]:  # None: flush the last group
                if u is not None and (not group or total + sizes[u] <= FETCH_BYTES):
                    group.append(u)
                    total += sizes[u]
                    continue
                if len(group) == 1 and sizes[group[0]] > FETCH_BYTES:
                    raw = self._fetch_in_parts(c, group[0], sizes[group[0]])
                    if raw is not None:
                        yield group[0], raw
                    raw = None
                elif group:
                    with self._op("fetch"):
                        resp = c.fetch(group, ["BODY.PEEK[]"])
                    for g in group:
                        raw = resp.pop(g, {}).get(b"BODY[]")
                        if raw is not None:
                            yield g, raw
                    del resp
                group, total = ([u], sizes[u]) if u is not None else ([], 0)

    def _fetch_in_parts(self, c: IMAPClient, uid: int, size: int) -> bytes | None:
        """One big message in partial FETCHes of FETCH_BYTES each (RFC 3501 `BODY.PEEK[]<offset.count>`):
        the client library holds several times an answer while it parses it, a piece at a time holds
        only that much."""
        buf = bytearray()
        while True:
            key = f"BODY[]<{len(buf)}>".encode()
            with self._op("fetch part"):
                resp = c.fetch([uid], [f"BODY.PEEK[]<{len(buf)}.{FETCH_BYTES}>"])
            part = resp.get(uid, {}).get(key)
            if part is None:
                part = next((v for k, v in resp.get(uid, {}).items() if k.startswith(b"BODY[]")), None)
            del resp
            if part is None:
                return bytes(buf) if buf else None
            buf += part
            if len(part) < FETCH_BYTES or len(buf) >= max(size, 1) * 4:
                break
            del part
        out = bytes(buf)
        del buf
        return out

    def find_uids_by_message_id(self, message_ids: list[str]) -> dict[str, int]:
        """Message-ID (as given, with or without <>) -> UID in the selected folder, for the resync
        after a UIDVALIDITY change. Exact match; if a Message-ID occurs more than once, the
        smallest UID (so a checkpoint derived from it can only replay, never skip)."""
        want: dict[str, list[str]] = {}
        for m in message_ids:
            n = _norm_msgid(m)
            if n:
                want.setdefault(n, []).append(m)
        if not want:
            return {}
        c = self._client()
        simple = all(k.isascii() and '"' not in k and "\\" not in k for k in want)
        with self._op("search"):
            if len(want) <= SEARCH_IDS_MAX and simple:
                cand: set[int] = set()
                for k in want:  # substring search on the server, verified exactly below
                    cand.update(c.search(["HEADER", "Message-ID", k]))
                candidates = sorted(cand)
            else:
                candidates = sorted(c.search(["ALL"]))
        found: dict[str, int] = {}
        for i in range(0, len(candidates), HEADER_SCAN_CHUNK):
            with self._op("fetch headers"):
                resp = c.fetch(candidates[i:i + HEADER_SCAN_CHUNK], ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
            for uid in sorted(resp):
                block = next((v for k, v in resp[uid].items()
                              if isinstance(k, bytes) and k.startswith(b"BODY[HEADER") and v), b"")
                mid = _header_msgid(block)
                if mid in want and mid not in found:
                    found[mid] = uid
        return {orig: uid for mid, uid in found.items() for orig in want[mid]}

    # -- after the commit ---------------------------------------------------------------------
    def _ensure_folder(self, folder: str) -> None:
        if folder in self._folders:
            return
        c = self._client()
        with self._op(f"create folder {folder}"):
            if not c.folder_exists(folder):
                try:
                    c.create_folder(folder)
                except imap_exc.IMAPClientError:
                    if not c.folder_exists(folder):  # lost a race with another client: fine
                        raise
                with contextlib.suppress(imap_exc.IMAPClientError):
                    c.subscribe_folder(folder)
                log.info("mailbox %s: created folder %s", self.name, folder)
        self._folders.add(folder)

    def mark_done(self, uids: list[int]) -> None:
        """Apply cfg.after to processed messages: seen | move:<folder> | keep."""
        after = self.cfg.after
        if not uids or after == "keep":
            return
        c = self._client()
        if after == "seen":
            for s in _seqsets(uids):
                with self._op("flag \\Seen"):
                    c.add_flags(s, [SEEN], silent=True)
        elif after.startswith("move:") and len(after) > 5:
            folder = after[5:]
            self._ensure_folder(folder)
            for s in _seqsets(uids):
                if b"MOVE" in self._caps:
                    with self._op(f"move to {folder}"):
                        c.move(s, folder)
                else:  # RFC 3501: COPY, flag \Deleted, expunge just these (UIDPLUS) if possible
                    with self._op(f"copy to {folder}"):
                        c.copy(s, folder)
                        c.add_flags(s, [DELETED], silent=True)
                        if b"UIDPLUS" in self._caps:
                            c.uid_expunge(s)
                        else:
                            c.expunge()
        else:
            raise FetchError(f"unknown after = {after!r}", self.name)

    # -- waiting ------------------------------------------------------------------------------
    def has_idle(self) -> bool:
        """True when wait() will use IDLE: enabled in the config and offered by the server."""
        return bool(self.cfg.idle) and b"IDLE" in self._caps

    def wait(self, timeout: float, stop: threading.Event | None = None) -> bool:
        """Block until the server reports new mail (True), or `timeout` passes or `stop` is set
        (False). Raises FetchError when the connection drops; the caller reconnects."""
        c = self._client()
        deadline = time.monotonic() + max(0.0, timeout)
        if stop is not None and stop.is_set():
            return False
        if self.has_idle():
            return self._wait_idle(c, deadline, stop)
        return self._wait_poll(c, deadline, stop)

    def _lost(self, reason: str) -> FetchError:
        self._broken = True
        return FetchError(reason, self.name)

    def _wait_idle(self, c: IMAPClient, deadline: float, stop: threading.Event | None) -> bool:
        # Dovecot 2.3 does not report mail that arrived *before* IDLE began (it shows up only at
        # its 30 s mailbox_idle_check_interval): sync with a NOOP first.
        if self._noop(c) or self._unseen_arrivals(c):
            return True
        try:
            with self._op("idle"):
                c.idle()
        except FetchError:
            self._broken = True  # unknown whether the server is idling now: start afresh
            raise
        self._idling = True
        started = time.monotonic()
        instant_empty = 0
        new_mail = False
        while True:
            now = time.monotonic()
            if (stop is not None and stop.is_set()) or now >= deadline:
                break
            if now - started >= min(IDLE_RENEW, IDLE_RECHECK):
                with self._op("idle renew"):
                    _, resps = c.idle_done()
                    self._idling = False
                if _has_new_mail(resps) or self._noop(c) or self._unseen_arrivals(c):
                    return True
                with self._op("idle renew"):
                    c.idle()
                    self._idling = True
                started = time.monotonic()
            step = min(IDLE_STEP, deadline - now)
            t0 = time.monotonic()
            with self._op("idle"):
                resps = c.idle_check(timeout=step)
            if not resps:
                # a quiet server makes idle_check wait the full step; a closed socket makes it
                # return [] at once, every time
                if step >= 0.1 and time.monotonic() - t0 < step / 2:
                    instant_empty += 1
                    if instant_empty >= DEAD_AFTER:
                        raise self._lost("connection lost while idling")
                else:
                    instant_empty = 0
                continue
            instant_empty = 0
            bye = _is_bye(resps)
            if bye is not None:
                raise self._lost(f"server closed the connection: {bye.decode('utf-8', 'replace')[:100]}")
            if _has_new_mail(resps):
                new_mail = True
                break
        with self._op("idle done"):
            _, resps = c.idle_done()
        self._idling = False
        bye = _is_bye(resps)
        if bye is not None:
            raise self._lost(f"server closed the connection: {bye.decode('utf-8', 'replace')[:100]}")
        return new_mail or _has_new_mail(resps)

    def _noop(self, c: IMAPClient) -> bool:
        with self._op("noop"):
            _, resps = c.noop()
        bye = _is_bye(resps)
        if bye is not None:
            raise self._lost(f"server closed the connection: {bye.decode('utf-8', 'replace')[:100]}")
        return _has_new_mail(resps)

    def _wait_poll(self, c: IMAPClient, deadline: float, stop: threading.Event | None) -> bool:
        # NOOP at once (mail may have come since the last SEARCH), every poll_interval, and at
        # the deadline; sleep in <= 1 s steps in between so `stop` is seen promptly
        interval = min(max(self.cfg.poll_interval, 1.0), 300.0)
        next_noop = time.monotonic()
        while True:
            if stop is not None and stop.is_set():
                return False
            now = time.monotonic()
            if now >= next_noop or now >= deadline:
                if self._noop(c) or self._unseen_arrivals(c):
                    return True
                next_noop = time.monotonic() + interval
                if now >= deadline:
                    return False
            pause = max(0.0, min(deadline, next_noop, now + 1.0) - time.monotonic())
            if stop is not None:
                stop.wait(pause)
            else:
                time.sleep(pause)


__all__ = ["Backoff", "FetchError", "ImapSource"]
