"""Personal data in logs: customer addresses are masked (w***@example.com) unless debug is on.

One log filter on the root handler covers every module, whoever logs; modules still avoid putting
addresses into log lines where they can.
"""

from __future__ import annotations

import logging
import re

_EMAIL = re.compile(r"([^\s@<>\"',;:])[^@\s<>\"',;:]*@([^\s<>\"',;:]+)")  # any script: 用户@例子.中国


def mask_addresses(text: str) -> str:
    """``wang.fang@customer.example`` -> ``w***@customer.example``, everywhere in the text."""
    return _EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text or "")


def mask(addr: str) -> str:
    return mask_addresses(addr) if "@" in addr else "***"


class MaskAddresses(logging.Filter):
    """Unless debug logging is on, no full email address reaches the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG and not logging.getLogger().isEnabledFor(logging.DEBUG):
            msg = record.getMessage()
            if "@" in msg:
                record.msg, record.args = mask_addresses(msg), ()
        return True


# ---- a customer's data: export (a copy) and erase (PIPL art. 45/47, GDPR art. 15/17) ---------------
#
# Where an address can be stored: hot tickets (customer, participants, events, failing addresses),
# hot messages (from/to/cc, text, subject), raw mail in spool segments, outgoing mail in outbox
# segments, the outbox journal, attachments, quarantine entries, idempotency keys, flood-cap meta
# keys, the archive month files and their index, and the hot database's commit log. Erase goes
# through every one of them under the store's lock, replaces files atomically (temp file, fsync,
# rename), blanks raw mail in place within its segment (same length, so the offsets of the other
# customers' mail in that segment, and every reference to them, stay valid), and ends by writing
# a fresh snapshot (emptying the commit log) and vacuuming the index.

ERASED = "[erased]"


class EraseError(Exception):
    pass


def pseudonym(key: bytes, addr: str) -> str:
    """`erased-<hmac(addr)[:12]>@erased.invalid`: stable per address (same key), so reports keep
    counting one customer as one, and the address cannot be recovered from it."""
    import hashlib
    import hmac

    return f"erased-{hmac.new(key, addr.strip().lower().encode(), hashlib.sha256).hexdigest()[:12]}@erased.invalid"


def _contains(data: bytes, needles: list[bytes]) -> bool:
    low = data.lower()
    return any(n in low for n in needles)


def file_mentions(path, needles: list[bytes]) -> bool:
    """Does a file hold any needle, raw or inside gzip/zip/bzip2/xz compression (one level)?"""
    import bz2
    import gzip
    import lzma
    import zipfile

    try:
        data = open(path, "rb").read()  # noqa: SIM115
    except OSError:
        return False
    if _contains(data, needles):
        return True
    try:
        if data[:2] == b"\x1f\x8b":
            return _contains(gzip.decompress(data), needles)
        if data[:3] == b"BZh":
            return _contains(bz2.decompress(data), needles)
        if data[:6] == b"\xfd7zXZ\x00":
            return _contains(lzma.decompress(data), needles)
        if data[:4] == b"PK\x03\x04":
            with zipfile.ZipFile(path) as z:
                return any(_contains(z.read(n), needles) for n in z.namelist())
    except Exception:  # a damaged archive: what is readable was checked
        return False
    return False


class _Scrub:
    """Replaces one address (any case) and the names it went by, in any JSON value."""

    def __init__(self, addr: str, pseud: str):
        self.addr, self.pseud = addr.lower(), pseud
        self.addr_re = re.compile(re.escape(self.addr), re.I)
        self.names: set[str] = set()
        self.subjects: set[str] = set()

    def learn(self, t: dict | None = None, m: dict | None = None) -> None:
        for name in ((t or {}).get("customer_name"), (m or {}).get("from_name")):
            if isinstance(name, str) and (len(name) >= 4 or (len(name) >= 2 and not name.isascii())):
                self.names.add(name)
        subj = (t or {}).get("subject")
        if isinstance(subj, str) and len(subj) >= 4:
            self.subjects.add(subj)

    def text(self, s: str) -> str:
        if self.addr in s.lower():
            s = self.addr_re.sub(self.pseud, s)
        for n in self.names:
            if n in s:
                s = s.replace(n, self.pseud.split("@")[0])
        for subj in self.subjects:
            if subj in s:
                s = s.replace(subj, ERASED)
        return s

    def value(self, v):
        if isinstance(v, str):
            return self.text(v)
        if isinstance(v, list):
            return [self.value(x) for x in v]
        if isinstance(v, dict):
            return {self.text(k) if isinstance(k, str) else k: self.value(x) for k, x in v.items()}
        return v

    def mentions(self, v) -> bool:
        import json as _json

        s = _json.dumps(v, ensure_ascii=False).lower()
        return self.addr in s or any(n.lower() in s for n in self.names)


def _is_own(t: dict, addr: str) -> bool:
    return (t.get("customer_email") or "").lower() == addr


def _from_addr(m: dict, addr: str) -> bool:
    return (m.get("from") or "").lower() == addr


class _Eraser:
    def __init__(self, cfg, store, addr: str, pseud: str, now: str):
        self.cfg, self.store, self.addr, self.pseud, self.now = cfg, store, addr, pseud, now
        self.sc = _Scrub(addr, pseud)
        self.needles = [addr.encode()]
        self.changed = {"hot tickets": 0, "hot messages": 0, "archived tickets": 0, "archive files": 0,
                        "raw mails blanked": 0, "raw mails masked": 0, "outbox rows": 0, "attachments": 0,
                        "quarantine entries": 0, "idempotency keys": 0, "flood-cap keys": 0, "other files": 0}
        self.blank: dict[str, set[tuple[int, int]]] = {}  # segment file (relative to data dir) -> regions
        self.known: dict[str, set[tuple[int, int]]] = {}  # regions of mail that stays (masked if it mentions)
        self.drop_paths: set[str] = set()  # attachment files to delete
        self.own_tids: set[str] = set()

    # -- references ---------------------------------------------------------------------------
    def _region(self, root: str, ref: str | None, blank: bool) -> None:
        if not ref or ref == "dry-run":
            return
        name, sep, rest = ref.partition(":")
        if not sep:
            (self.blank if blank else self.known).setdefault(f"{root}/{name}", set()).add((0, -1))
            return
        off, _, n = rest.partition(":")
        (self.blank if blank else self.known).setdefault(f"{root}/{name}", set()).add((int(off), int(n)))

    def message(self, m: dict, own: bool) -> dict:
        """The erased form of one message (hot or archived)."""
        whole = own or _from_addr(m, self.addr)
        if m.get("direction") == "in":
            self._region("spool", m.get("spool"), whole)
        out = self.sc.value(m)
        if whole:
            out["subject"], out["text"], out["from_name"] = ERASED, ERASED, ""
            if m.get("direction") == "in":
                out["spool"] = None
            for a in out.get("attachments") or []:
                if a.get("path"):
                    self.drop_paths.add(a["path"])
                a.update(path=None, filename=ERASED)
        else:
            for a in out.get("attachments") or []:
                if a.get("path") in self.drop_paths:
                    a["path"] = None
        return out

    def ticket(self, t: dict, own: bool) -> dict:
        out = self.sc.value(t)
        if own:
            out["customer_email"], out["customer_name"], out["subject"] = self.pseud, "", ERASED
        out["events"] = [*out.get("events", []), {"at": self.now, "kind": "erased", "actor": "privacy",
                                                  "detail": f"personal data erased on request, as {self.pseud}"}]
        return out

    # -- the hot database ---------------------------------------------------------------------
    def hot(self) -> None:
        st = self.store
        tickets = st._table("tickets")
        for t in tickets.values():
            if _is_own(t, self.addr):
                self.sc.learn(t)
                self.own_tids.add(t["id"])
                for m in st.messages_of(t["id"]):
                    if _from_addr(m, self.addr):
                        self.sc.learn(m=m)
        for k, t in list(tickets.items()):
            msgs = {mk: st._table("messages")[mk] for mk in st._msgs_by_ticket.get(t["id"], [])
                    if mk in st._table("messages")}
            own = t["id"] in self.own_tids
            if not (own or self.sc.mentions(t) or any(self.sc.mentions(m) for m in msgs.values())
                    or any(a.get("path") in self.drop_paths for m in msgs.values() for a in m.get("attachments") or [])):
                continue
            if own:
                d = self.store.dir / "attachments" / t["id"]
                if d.is_dir():
                    self.drop_paths.update(p.relative_to(self.store.dir).as_posix() for p in d.rglob("*") if p.is_file())
            for mk, m in msgs.items():
                new = self.message(m, own)
                if new != m:
                    st._changing("messages", mk).clear()
                    st._table("messages")[mk].update(new)
                    self.changed["hot messages"] += 1
            new_t = self.ticket(t, own)
            st._changing("tickets", k).clear()
            tickets[k].update(new_t)
            self.changed["hot tickets"] += 1
        for mk, m in st._table("messages").items():  # messages of no hot ticket that mention it
            if not m.get("ticket_id") or m["ticket_id"] not in st._tid:
                if self.sc.mentions(m):
                    new = self.message(m, _from_addr(m, self.addr))
                    st._changing("messages", mk).clear()
                    st._table("messages")[mk].update(new)
                    self.changed["hot messages"] += 1
        for k, r in st.outbox_rows().items():
            own = r.get("ticket_id") in self.own_tids or self.addr in [a.lower() for a in r.get("to") or []]
            if own or self.sc.mentions(r):
                self._region("outbox", r.get("file"), own)
                new = self.sc.value(r)
                if own:
                    new["subject"] = ERASED
                    new["file"] = None
                    if r.get("status") == "queued":
                        new.update(status="failed", last_error="not sent: the recipient's data was erased on request")
                st._changing("outbox", k).clear()
                st._table("outbox")[k].update(new)
                self.changed["outbox rows"] += 1
            else:
                self._region("outbox", r.get("file"), False)
        for k, q in st._table("quarantine").items():
            ref = q.get("spool")
            raw = b""
            if ref:
                try:
                    from mailflow.spool import Spool

                    raw = Spool(self.store.dir / "spool").read(ref)
                except OSError:
                    raw = b""
            if _contains(raw, self.needles) or self.sc.mentions(q):
                self._region("spool", ref, True)
                new = self.sc.value(q)
                new.update(status="erased", spool=None)
                st._changing("quarantine", k).clear()
                st._table("quarantine")[k].update(new)
                self.changed["quarantine entries"] += 1
            else:
                self._region("spool", ref, False)
        for m in st._table("messages").values():  # the raw mail that stays, to mask if it mentions
            if m.get("spool") and m.get("direction") == "in":
                self._region("spool", m["spool"], False)
        for k, s in list(st._table("seen").items()):
            if self.addr in (s.get("key") or "").lower():
                st._seen.discard(s["key"])
                st._drop("seen", k)
                self.changed["idempotency keys"] += 1
        for key, k in list(st._meta.items()):
            m = st._table("meta")[k]
            if key.lower().startswith("auto:") and self.addr in key.lower():
                st._drop("meta", k)
                st._meta.pop(key)
                self.changed["flood-cap keys"] += 1
            elif self.sc.mentions(m):
                st._changing("meta", k).clear()
                st._table("meta")[k].update(self.sc.value(m))

    # -- archives -----------------------------------------------------------------------------
    def archives(self) -> None:
        from mailflow.archive import MONTH_GLOB, iter_lines
        from mailflow.store import _dumps, _loads, write_atomic

        adir = self.store.dir / "archive"
        idx = self.store.archive_index
        paths = sorted(adir.glob(MONTH_GLOB))
        # first the addresses' own archived tickets, so their names and subjects are known everywhere
        for tid in idx.tickets_of(self.addr):
            e = idx.read(tid)
            if e and _is_own(e["ticket"], self.addr):
                self.sc.learn(e["ticket"])
                self.own_tids.add(tid)
                for m in e.get("messages") or []:
                    if _from_addr(m, self.addr):
                        self.sc.learn(m=m)
        needles = [n.lower().encode() for n in (self.addr, *self.sc.names)]
        drops = [p.encode() for p in self.drop_paths]
        for path in paths:
            raw = path.read_bytes()
            low = raw.lower()
            if not any(n in low for n in needles) and not any(d in raw for d in drops) and \
                    not any(t.encode() in raw for t in self.own_tids):
                self._known_refs(raw)
                continue
            out, touched = [], set()
            for _off, line in iter_lines(path):
                ll = line.lower()
                e = None
                try:
                    e = _loads(line)
                    tid = e["ticket"]["id"]
                except (ValueError, KeyError, TypeError):
                    out.append(line)
                    continue
                own = tid in self.own_tids
                if own or any(n in ll for n in needles) or any(d in line for d in drops):
                    e = {"ticket": self.ticket(e["ticket"], own),
                         "messages": [self.message(m, own) for m in e.get("messages") or []]}
                    touched.add(tid)
                    out.append(_dumps(e))
                else:
                    for m in e.get("messages") or []:
                        if m.get("direction") == "in":
                            self._region("spool", m.get("spool"), False)
                    out.append(line)
            if touched:
                write_atomic(path, b"".join(x + b"\n" for x in out))
                with idx.transaction() as db:
                    idx.reindex_file(db, path.name, self.cfg)
                self.changed["archived tickets"] += len(touched)
                self.changed["archive files"] += 1

    def _known_refs(self, raw: bytes) -> None:
        """Spool references of an untouched month file (only where a segment to rewrite is named)."""
        if not self.blank:
            return
        for name in {n.partition("/")[2] for n in self.blank if n.startswith("spool/")}:
            if name.encode() not in raw:
                continue
            from mailflow.store import _loads

            for line in raw.split(b"\n"):
                if name.encode() in line:
                    try:
                        for m in _loads(line).get("messages") or []:
                            self._region("spool", m.get("spool"), False)
                    except ValueError:
                        continue

    # -- segments, attachments, other files ---------------------------------------------------
    def segments(self) -> None:
        import os

        from mailflow.store import write_atomic

        root = self.store.dir
        files = []
        for sub, suffix in (("spool", ".seg"), ("outbox", ".out")):
            for p in sorted((root / sub).rglob(f"*{suffix}")) if (root / sub).is_dir() else []:
                files.append(p.relative_to(root).as_posix())
        for sub in ("spool",):  # one message per file (older data directories)
            for p in sorted((root / sub).rglob("*.eml")) if (root / sub).is_dir() else []:
                files.append(p.relative_to(root).as_posix())
        for rel in files:
            path = root / rel
            regions_blank = self.blank.get(rel, set())
            try:
                data = bytearray(path.read_bytes())
            except OSError:
                continue
            low = bytes(data).lower()
            if not regions_blank and not any(n in low for n in self.needles):
                continue
            size = len(data)
            blank = {(o, size - o if n < 0 else n) for o, n in regions_blank}
            known = {(o, size - o if n < 0 else n) for o, n in self.known.get(rel, set())} - blank
            spans = sorted(blank | known)
            # the gaps between known mail are mail nothing refers to (auto-replies, bounces): blank
            # any that mention the address
            pos, gaps = 0, []
            for o, n in spans:
                if o > pos:
                    gaps.append((pos, o - pos))
                pos = max(pos, o + n)
            if pos < size:
                gaps.append((pos, size - pos))
            for o, n in gaps:
                if any(x in low[o:o + n] for x in self.needles):
                    blank.add((o, n))
            changed = False
            for o, n in sorted(blank):
                if any(data[o:o + n]):
                    data[o:o + n] = bytes(n)
                    changed = True
                    self.changed["raw mails blanked"] += 1
            low = bytes(data).lower()
            for o, n in sorted(known):
                seg_low = low[o:o + n]
                for x in self.needles:
                    i = seg_low.find(x)
                    while i >= 0:
                        data[o + i:o + i + len(x)] = b"x" * len(x)
                        changed = True
                        i = seg_low.find(x, i + len(x))
                if changed and any(x in seg_low for x in self.needles):
                    self.changed["raw mails masked"] += 1
            if changed:
                write_atomic(path, bytes(data))
                os.chmod(path, 0o600)

    def scan_attachments(self) -> None:
        """Saved attachments that hold the address (raw or compressed) go, whoever sent them."""
        root = self.store.dir
        adir = root / "attachments"
        if adir.is_dir():
            for p in sorted(adir.rglob("*")):
                if p.is_file() and file_mentions(p, self.needles):
                    self.drop_paths.add(p.relative_to(root).as_posix())

    def attachments(self) -> None:
        root = self.store.dir
        for rel in sorted(self.drop_paths):
            p = root / rel
            if p.is_file():
                p.unlink()
                self.changed["attachments"] += 1

    def other_files(self) -> list[str]:
        """Anything else still holding the address (there should be nothing): temp files are
        deleted, the rest is reported."""
        import os

        left = []
        root = self.store.dir
        for dirpath, _dirs, names in os.walk(root):
            for n in names:
                p = root / dirpath / n
                rel = p.relative_to(root).as_posix()
                if rel in ("mailflow.json", "mailflow.wal") or rel.startswith("archive/index.sqlite"):
                    continue
                if file_mentions(p, self.needles):
                    if n.endswith(".tmp"):
                        p.unlink()
                        self.changed["other files"] += 1
                    else:
                        left.append(rel)
        return left


class _DbEraser(_Eraser):
    """The same erase on the PostgreSQL store: the documents are rewritten by SQL in one batch
    (hot and archived tickets are rows of the same tables, so `archives()` has nothing to do), the
    outgoing mail's bytes in the outbox rows are cleared or masked; the files (spool segments,
    attachments) go through the same code as for TinyDB."""

    def hot(self) -> None:
        st = self.store
        # the address's own tickets first, so their names and subjects are known everywhere
        for _tid, t, _a in st.docs_mentioning("tickets", [self.addr]):
            if _is_own(t, self.addr):
                self.sc.learn(t)
                self.own_tids.add(t["id"])
        for _k, m, _a in st.docs_mentioning("messages", [self.addr], sorted(self.own_tids)):
            if m.get("ticket_id") in self.own_tids and _from_addr(m, self.addr):
                self.sc.learn(m=m)
        needles = [self.addr, *self.sc.names]
        msgs = st.docs_mentioning("messages", needles, sorted(self.own_tids))
        by_ticket: dict[str, list[tuple[str, dict, bool]]] = {}
        for k, m, archived in msgs:
            by_ticket.setdefault(m.get("ticket_id") or "", []).append((k, m, archived))
        tickets = st.docs_mentioning("tickets", needles, sorted(self.own_tids | set(by_ticket) - {""}))
        for tid, t, archived in tickets:
            own = tid in self.own_tids
            if own:
                d = st.dir / "attachments" / tid
                if d.is_dir():
                    self.drop_paths.update(p.relative_to(st.dir).as_posix() for p in d.rglob("*") if p.is_file())
            theirs = by_ticket.pop(tid, [])
            for k, m, _a in theirs:
                new = self.message(m, own)
                if new != m:
                    st.put_doc("messages", k, new)
                    self.changed["hot messages"] += not archived
            st.put_doc("tickets", tid, self.ticket(t, own))
            self.changed["archived tickets" if archived else "hot tickets"] += 1
        for rest in by_ticket.values():  # messages of no ticket that mention it
            for k, m, _a in rest:
                if self.sc.mentions(m):
                    st.put_doc("messages", k, self.message(m, _from_addr(m, self.addr)))
                    self.changed["hot messages"] += 1
        for k, r, _has in st.docs_mentioning("outbox", needles, sorted(self.own_tids)):
            own = r.get("ticket_id") in self.own_tids or self.addr in [a.lower() for a in r.get("to") or []]
            if not (own or self.sc.mentions(r)):
                continue
            self._region("outbox", r.get("file") if r.get("file") != "db" else None, own)
            new = self.sc.value(r)
            if own:
                new["subject"], new["file"] = ERASED, None
                if r.get("status") == "queued":
                    new.update(status="failed", last_error="not sent: the recipient's data was erased on request")
                st.set_outbox_data(k, None)
            st.put_doc("outbox", k, new)
            self.changed["outbox rows"] += 1
        needle = self.addr.encode()
        for k, data in list(st.outbox_mail_items()):  # mail that stays but names the address: masked
            if needle in data.lower():
                low, out = data.lower(), bytearray(data)
                i = low.find(needle)
                while i >= 0:
                    out[i:i + len(needle)] = b"x" * len(needle)
                    i = low.find(needle, i + len(needle))
                st.set_outbox_data(k, bytes(out))
                self.changed["raw mails masked"] += 1
        from mailflow.spool import Spool

        for q in st.quarantined():
            ref = q.get("spool")
            try:
                raw = Spool(st.dir / "spool").read(ref) if ref else b""
            except OSError:
                raw = b""
            if _contains(raw, self.needles) or self.sc.mentions(q):
                self._region("spool", ref, True)
                new = self.sc.value({k: v for k, v in q.items() if k != "qid"})
                new.update(status="erased", spool=None)
                st.put_doc("quarantine", q["qid"], new)
                self.changed["quarantine entries"] += 1
            else:
                self._region("spool", ref, False)
        for ref in st.spool_refs():  # the raw mail that stays, to mask if it mentions
            self._region("spool", ref, False)
        self.changed["idempotency keys"] += st.drop_seen_mentioning(self.addr)
        for key, value in st.meta_items():
            if key.lower().startswith("auto:") and self.addr in key.lower():
                st.drop_meta(key)
                self.changed["flood-cap keys"] += 1
            elif self.sc.mentions({"key": key, "value": value}):
                st.set_meta(self.sc.text(key), self.sc.value(value))
                if self.sc.text(key) != key:
                    st.drop_meta(key)

    def archives(self) -> None:
        """Archived tickets are rows like the hot ones: `hot()` did them."""


def _erase_db(cfg, addr: str, now) -> EraseResult:
    from mailflow.clock import iso, utcnow
    from mailflow.outbox import Outbox, _secret_key
    from mailflow.storeapi import open_store

    store = open_store(cfg)
    try:
        d = store.daemons()
        if d and any(x["running"] for x in d["all"]):
            raise EraseError("a mailflow daemon wrote to the database in the last two minutes: stop every daemon "
                             "first (`mailflow status` lists them), erase, then start them again")
        pseud = pseudonym(_secret_key(cfg, cfg.data_dir), addr)
        if store.outbox_journal().read():
            Outbox(cfg, store, None).fold_journal()  # type: ignore[arg-type]
        when = iso(now or utcnow()) or ""
        er = _DbEraser(cfg, store, addr, pseud, when)
        with store.batch():
            er.scan_attachments()
            er.hot()
            er.attachments()
            er.segments()
            _log_erasure(store, when, pseud, er.changed)
        return EraseResult(pseud, er.changed, er.other_files())
    finally:
        store.close()


class EraseResult:
    def __init__(self, pseudonym: str, changed: dict[str, int], left: list[str]):
        self.pseudonym, self.changed, self.left = pseudonym, changed, left


def erase(cfg, email: str, now=None) -> EraseResult:
    """Erase one address from the whole data directory (see the comment above). The daemon must
    not run: the erase holds the daemon lock, so none can start meanwhile."""
    from mailflow.clock import iso, utcnow
    from mailflow.outbox import _secret_key
    from mailflow.store import Store, lock_process

    addr = email.strip().lower()
    if "@" not in addr or len(addr) < 3:
        raise EraseError(f"{email!r}: not an email address")
    if cfg.backend == "postgresql":
        return _erase_db(cfg, addr, now)
    data_dir = cfg.data_dir
    if not (data_dir / "mailflow.json").exists() and not (data_dir / "mailflow.wal").exists():
        raise EraseError(f"{data_dir}: no mailflow data directory here")
    lock = lock_process(data_dir)
    if lock is None:
        raise EraseError(f"a mailflow daemon is running on {data_dir}: stop it first (systemctl stop mailflow), "
                         "erase, then start it again")
    try:
        store = Store(data_dir)
        pseud = pseudonym(_secret_key(cfg, data_dir), addr)
        _fold_journal(cfg, store)
        when = iso(now or utcnow()) or ""
        er = _Eraser(cfg, store, addr, pseud, when)
        with store.batch():
            er.scan_attachments()
            er.hot()
            er.archives()
            er.attachments()
            er.segments()
            _log_erasure(store, when, pseud, er.changed)
            store.storage.dirty = True  # one fresh snapshot: the commit log's old versions go
        store.archive_index.vacuum()
        store.archive_index.close()
        left = er.other_files()
        return EraseResult(pseud, er.changed, left)
    finally:
        lock.close()


def _fold_journal(cfg, store) -> None:
    """Results the sender journaled but did not fold yet go into the database first (the journal
    may name the address), then the journal is gone."""
    from mailflow.outbox import Outbox

    if (store.dir / "outbox" / "journal.log").exists():
        Outbox(cfg, store, None).fold_journal()  # type: ignore[arg-type]


def _log_erasure(store, when: str, pseud: str, changed: dict[str, int]) -> None:
    """The erasure is recorded by pseudonym and counts only, never by address."""
    log_ = list(store.get_meta("privacy:erasures", []) or [])
    log_.append({"at": when, "pseudonym": pseud, "changed": {k: v for k, v in changed.items() if v}})
    store.set_meta("privacy:erasures", log_)


# ---- export ---------------------------------------------------------------------------------------

def export(cfg, email: str, out) -> dict[str, int]:
    """One zip: `data.json` (every ticket the address is on or mentioned in, hot or archived, with
    its messages, ratings and events; quarantined mail it sent) and `raw/` (the .eml files)."""
    import json as _json
    import os
    import zipfile
    from pathlib import Path

    from mailflow.archive import MONTH_GLOB, iter_lines
    from mailflow.clock import iso, utcnow
    from mailflow.spool import Segments, Spool
    from mailflow.store import Store, _loads, write_atomic

    addr = email.strip().lower()
    db = cfg.backend == "postgresql"
    if db:
        from mailflow.storeapi import open_store

        store = open_store(cfg, create=False)
    else:
        store = Store(cfg.data_dir, create=False)
    sc = _Scrub(addr, "")
    tickets: dict[str, dict] = {}
    if db:  # hot and archived alike: the rows whose documents (or messages) name the address
        tids = {m.get("ticket_id") for _k, m, _a in store.docs_mentioning("messages", [addr])} - {None}
        for tid, t, archived in store.docs_mentioning("tickets", [addr], sorted(tids)):
            tickets[tid] = {"ticket": t, "messages": store.messages_of_any(tid), "archived": archived}
    else:
        for t in store.all_tickets():
            msgs = store.messages_of(t["id"])
            if _is_own(t, addr) or sc.mentions(t) or any(sc.mentions(m) for m in msgs):
                tickets[t["id"]] = {"ticket": t, "messages": msgs, "archived": False}
    adir = store.dir / "archive"
    needle = addr.encode()
    for path in sorted(adir.glob(MONTH_GLOB)) if adir.is_dir() and not db else []:
        for _off, line in iter_lines(path):
            if needle in line.lower():
                try:
                    e = _loads(line)
                    tid = e["ticket"]["id"]
                except (ValueError, KeyError, TypeError):
                    continue
                if tid not in tickets or tickets[tid]["archived"]:  # hot wins; later copies are newer
                    tickets[tid] = {**e, "archived": True}
    spool, outseg = Spool(store.dir / "spool"), Segments(store.dir / "outbox", ".out")
    rows = store.outbox_rows()
    raws: list[tuple[str, bytes]] = []
    for tid, e in sorted(tickets.items()):
        for i, m in enumerate(e.get("messages") or []):
            data = None
            try:
                if m.get("direction") == "in" and m.get("spool"):
                    data = spool.read(m["spool"])
                elif db and m.get("outbox") and rows.get(m["outbox"], {}).get("file") == "db":
                    data = store.outbox_data(m["outbox"])
                elif m.get("outbox") and rows.get(m["outbox"], {}).get("file"):
                    data = outseg.read(rows[m["outbox"]]["file"])
            except OSError:
                data = None
            if data and any(data):
                name = f"raw/{tid}/{i + 1:03d}-{m.get('direction')}-{m.get('kind') or 'mail'}.eml"
                raws.append((name, data))
                m = dict(m, raw_file=name)
                e["messages"][i] = m
    quarantined = []
    for q in store.quarantined():
        try:
            data = spool.read(q["spool"]) if q.get("spool") else b""
        except OSError:
            data = b""
        if _contains(data, [needle]):
            name = f"raw/quarantine/{q['qid']}.eml"
            raws.append((name, data))
            quarantined.append(dict(q, raw_file=name))
    doc = {"address": addr, "exported_at": iso(utcnow()), "held_by": cfg.company_name,
           "tickets": [dict(e["ticket"], archived=e["archived"], messages=e.get("messages") or [])
                       for _tid, e in sorted(tickets.items())],
           "quarantine": quarantined,
           "note": "ratings and the history of each ticket are in its `ratings` and `events`; raw_file names the "
                   "original mail in raw/"}
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("data.json", _json.dumps(doc, ensure_ascii=False, indent=1))
        for name, data in raws:
            z.writestr(name, data)
    out = Path(out)
    write_atomic(out, buf.getvalue())
    os.chmod(out, 0o600)
    return {"tickets": len(tickets), "messages": sum(len(e.get("messages") or []) for e in tickets.values()),
            "raw": len(raws)}
