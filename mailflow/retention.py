"""`[retention]`: how long raw mail, attachments and closed tickets are kept (0 keeps forever).

Applied by the daemon's housekeeping (and `run --once`), each part under the store's lock:
- `raw_mail_days`: spool segments (one per fetched batch, `spool/YYYY/MM/DD/`) from before the
  cut-off day are deleted, except those quarantined mail still needs; tickets keep their text.
  The cut-off is recorded (`retention:raw_mail_before`), so `verify` expects those files gone;
- `attachments_days`: saved attachments older than the cut-off are deleted
  (`retention:attachments_before`);
- `closed_tickets_years`: archived tickets closed longer ago are deleted with their messages:
  their month files are rewritten atomically (temp file, fsync, rename: a crash leaves the old
  file or the new one), the index follows, their attachments go and their raw mail is blanked
  in its segment (same length: the other mail in it keeps its offsets).
"""

from __future__ import annotations

import logging
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mailflow.archive import iter_lines
from mailflow.clock import iso
from mailflow.store import Store, _loads, write_atomic

log = logging.getLogger("mailflow.retention")


def apply(store: Store, cfg, now: datetime) -> dict[str, int]:
    """Apply every configured limit; returns what was removed (empty when nothing is configured)."""
    out: dict[str, int] = {}
    try:
        if cfg.closed_tickets_years > 0:
            out["closed tickets"] = expire_closed(store, now - timedelta(days=365.25 * cfg.closed_tickets_years), cfg)
        if cfg.raw_mail_days > 0:
            out["raw mail segments"] = expire_raw(store, now - timedelta(days=cfg.raw_mail_days))
        if cfg.attachments_days > 0:
            out["attachments"] = expire_attachments(store, now - timedelta(days=cfg.attachments_days))
    except OSError as e:  # housekeeping retries later; never take the daemon down
        log.error("retention failed, will retry: %s", e)
    if any(out.values()):
        log.info("retention: %s", ", ".join(f"{v} {k}" for k, v in out.items() if v))
    return out


def _blank_spool(store, blank: dict[str, list[tuple[int, int]]]) -> None:
    """Zero the raw mail of forgotten messages in their spool segments (other mail stays)."""
    for name, regions in blank.items():
        p = store.dir / "spool" / name
        try:
            data = bytearray(p.read_bytes())
        except OSError:
            continue  # already gone (raw_mail_days)
        for off, ln in regions:
            data[off:off + ln] = bytes(len(data[off:off + ln]))
        write_atomic(p, bytes(data))
        os.chmod(p, 0o600)


def _expire_closed_db(store, cut: str) -> int:
    """The database store: the rows go in one batch; then the raw mail and attachments."""
    with store.batch():
        entries = store.forget_archived(cut)
        if entries:
            hist = list(store.get_meta("retention:log", []) or [])[-99:]
            hist.append({"at": iso(datetime.now(UTC)), "closed_before": cut, "tickets": len(entries)})
            store.set_meta("retention:log", hist)
    blank: dict[str, list[tuple[int, int]]] = {}
    for e in entries:
        shutil.rmtree(store.dir / "attachments" / e["ticket"]["id"], ignore_errors=True)
        for m in e["messages"]:
            name, sep, rest = (m.get("spool") or "").partition(":")
            if sep and m.get("direction") == "in":
                off, _, ln = rest.partition(":")
                blank.setdefault(name, []).append((int(off), int(ln)))
    _blank_spool(store, blank)
    return len(entries)


def _day_dirs(root: Path):
    for y in sorted(root.glob("[0-9][0-9][0-9][0-9]")):
        for m in sorted(y.glob("[0-9][0-9]")):
            for d in sorted(m.glob("[0-9][0-9]")):
                yield f"{y.name}/{m.name}/{d.name}", d


def expire_raw(store: Store, cutoff: datetime) -> int:
    day = cutoff.strftime("%Y/%m/%d")
    n = 0
    with store.batch():
        keep = {(q.get("spool") or "").partition(":")[0] for q in store.quarantined() if q.get("status") == "held"}
        if (store.get_meta("retention:raw_mail_before") or "") < day:
            store.set_meta("retention:raw_mail_before", day)
        root = store.dir / "spool"
        for name, d in _day_dirs(root):
            if name >= day:
                break
            for p in sorted(d.iterdir()):
                if p.is_file() and f"{name}/{p.name}" not in keep:
                    p.unlink()
                    n += 1
            if not any(d.iterdir()):
                d.rmdir()
    return n


def expire_attachments(store: Store, cutoff: datetime) -> int:
    stamp = cutoff.timestamp()
    n = 0
    with store.batch():
        if (store.get_meta("retention:attachments_before") or "") < (iso(cutoff) or ""):
            store.set_meta("retention:attachments_before", iso(cutoff))
        root = store.dir / "attachments"
        if root.is_dir():
            for d in sorted(root.iterdir()):
                if not d.is_dir():
                    continue
                for p in sorted(d.iterdir()):
                    if p.is_file() and p.stat().st_mtime < stamp:
                        p.unlink()
                        n += 1
                if not any(d.iterdir()):
                    d.rmdir()
    return n


def expire_closed(store: Store, cutoff: datetime, cfg=None) -> int:
    cut = iso(cutoff) or ""
    if store.backend != "tinydb":
        return _expire_closed_db(store, cut)
    idx = store.archive_index
    gone = 0
    with store.batch():
        rows = idx._query("SELECT ticket_id, file FROM ticket WHERE status='closed' AND closed_at < ? "
                          "AND closed_at <> ''", (cut,))
        by_file: dict[str, set[str]] = {}
        for tid, f in rows:
            if store.ticket(tid) is None:  # a hot copy (brought back by a reply) stays
                by_file.setdefault(f, set()).add(tid)
        blank: dict[str, list[tuple[int, int]]] = {}
        for f, tids in sorted(by_file.items()):
            path = store.dir / "archive" / f
            kept = []
            for _off, line in iter_lines(path):
                try:
                    e = _loads(line)
                    tid = e["ticket"]["id"]
                except (ValueError, KeyError, TypeError):
                    kept.append(line)
                    continue
                if tid not in tids:
                    kept.append(line)
                    continue
                for m in e.get("messages") or []:
                    ref = m.get("spool") or ""
                    name, sep, rest = ref.partition(":")
                    if sep and m.get("direction") == "in":
                        off, _, ln = rest.partition(":")
                        blank.setdefault(name, []).append((int(off), int(ln)))
            write_atomic(path, b"".join(x + b"\n" for x in kept))
            with idx.transaction() as db:
                idx.reindex_file(db, f, cfg)
            for tid in tids:
                shutil.rmtree(store.dir / "attachments" / tid, ignore_errors=True)
            gone += len(tids)
        _blank_spool(store, blank)
        if gone:
            hist = list(store.get_meta("retention:log", []) or [])[-99:]
            hist.append({"at": iso(datetime.now(cutoff.tzinfo)), "closed_before": cut, "tickets": gone})
            store.set_meta("retention:log", hist)
    return gone
