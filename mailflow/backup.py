"""Online backup, backup verification and restore of a data directory.

A backup is one `mailflow-backup-<UTC time>.tar.gz` (stdlib tar + gzip: no new dependency; zstd
would compress ~3x faster but is a C extension we would have to ship) holding `data/` (the hot
database snapshot and commit log, the outbox journal, the archive index, the month files, spool
and outbox segments, attachments, quarantine, the HMAC key), `config/` (the config file, rules and
templates) and, last, `MANIFEST.json` (mailflow and schema version, every member with its size
and SHA-256, counts of tickets, messages and outbox rows).

Consistency while the daemon runs: the store's file lock is taken only to read the hot database
files and the outbox journal into memory, to pin the archive index's state (a read transaction,
copied with sqlite's backup API after the lock is released), and to list every other file with
its size and inode. Those files are immutable (segments,
attachments, the HMAC key) or append-only (month files: only the listed size is copied), so they
are copied after the lock is released; a file that erase or retention replaced in the meantime
(new inode) makes the backup start over. Intake waits for at most one batch commit.

The archive is written as `.mailflow-backup-<time>.partial` (mode 0600), fsynced, then renamed:
a failed backup leaves no half file, and `--keep N` deletes old backups only after a good one.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock

from mailflow.archive import ArchiveIndex
from mailflow.store import Store, fsync_dir, lock_process, parse_log

FORMAT = "mailflow-backup"
SCHEMA_VERSION = 1  # of the data directory layout a backup holds
MANIFEST = "MANIFEST.json"
NAME_RE = re.compile(r"^mailflow-backup-(\d{8}T\d{6}Z)(?:-(\d+))?\.tar\.gz$")
GZIP_LEVEL = 3  # measured (bench/bench_data.py): 1 is no faster, 6 is 2.3x slower for a 20% smaller file
# written under the lock from memory (the snapshot, its log, the journal) or by sqlite; never copied raw
_LIVE = {"mailflow.json", "mailflow.wal", "outbox/journal.log", "archive/index.sqlite"}
_SKIP_NAMES = {"daemon.lock", "mailflow.lock"}
_SKIP_SUFFIXES = (".tmp", ".partial", "-wal", "-shm", "-journal")
DATA_DIRS = ("archive", "spool", "outbox", "attachments", "quarantine")


class BackupError(Exception):
    pass


def _version() -> str:
    from mailflow import __version__

    return __version__


@dataclass
class BackupResult:
    path: Path
    size: int
    files: int
    data_bytes: int
    seconds: float
    locked_seconds: float
    counts: dict[str, int]
    removed: list[Path] = field(default_factory=list)

    @property
    def mb_per_s(self) -> float:
        return self.data_bytes / 1e6 / self.seconds if self.seconds else 0.0


@dataclass
class _Planned:
    arcname: str
    path: Path | None = None  # copied from disk after the lock ...
    size: int = 0
    ino: int = 0
    data: bytes | None = None  # ... or taken under the lock


class _Hashing(io.RawIOBase):
    """Reads exactly `size` bytes of a file, hashing them."""

    def __init__(self, f, size: int):
        self.f, self.left, self.h = f, size, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.left <= 0:
            return 0
        n = self.f.readinto(memoryview(b)[: min(len(b), self.left)])
        if not n:
            raise BackupError(f"{self.f.name}: shorter than when it was listed")
        self.left -= n
        self.h.update(memoryview(b)[:n])
        return n


def inside(child: Path, parent: Path) -> bool:
    child, parent = Path(child).resolve(), Path(parent).resolve()
    return child == parent or parent in child.parents


def _listable(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return name not in _SKIP_NAMES and not name.endswith(_SKIP_SUFFIXES) and rel not in _LIVE \
        and not name.startswith(".")


def _snapshot(data_dir: Path, tmp: Path, store: Store | None) -> tuple[list[_Planned], dict[str, int], float]:
    """Under the store's lock: what to back up. Returns (plan, counts, seconds the lock was held)."""
    # without a Store (the CLI): the same file lock, and the index opened directly (loading the
    # whole hot database just to copy its files would cost seconds and hundreds of MB)
    lock = store.lock if store is not None else FileLock(str(data_dir / "mailflow.lock"))
    mutex = store.mutex if store is not None else contextlib.nullcontext()
    index = store.archive_index if store is not None else ArchiveIndex(data_dir / "archive", create=False)
    plan: list[_Planned] = []
    with mutex, lock:
        held = time.monotonic()
        for rel in ("mailflow.json", "mailflow.wal", "outbox/journal.log"):
            p = data_dir / rel
            with contextlib.suppress(FileNotFoundError):
                raw = p.read_bytes()
                if rel == "mailflow.wal":
                    raw = raw[: parse_log(raw)[1]]  # a torn tail is not part of any commit
                plan.append(_Planned(f"data/{rel}", data=raw, size=len(raw)))
        pinned = index.pin()  # the index as of now; copied once the lock is released
        for root, dirs, files in os.walk(data_dir):
            dirs.sort()
            for name in sorted(files):
                p = Path(root) / name
                rel = p.relative_to(data_dir).as_posix()
                if not _listable(rel) or rel.startswith("restored-config/"):
                    continue
                try:
                    s = p.stat()
                except FileNotFoundError:
                    continue
                plan.append(_Planned(f"data/{rel}", path=p, size=s.st_size, ino=s.st_ino))
        locked = time.monotonic() - held
    if pinned is not None:
        dest = tmp / "index.sqlite"
        ArchiveIndex.copy_pinned(pinned, dest)
        plan.insert(0, _Planned("data/archive/index.sqlite", path=dest, size=dest.stat().st_size,
                                ino=dest.stat().st_ino))
    if store is None:
        index.close()
    return plan, _counts(plan), locked


def _counts(plan: list[_Planned]) -> dict[str, int]:
    """Tickets, messages and outbox rows in the backed-up state (parsed from the copied bytes)."""
    snap = next((p.data for p in plan if p.arcname == "data/mailflow.json"), None)
    wal = next((p.data for p in plan if p.arcname == "data/mailflow.wal"), None)
    data = parse_db(snap, wal)
    archived = messages_archived = 0
    idx = next((p.path for p in plan if p.arcname == "data/archive/index.sqlite"), None)
    if idx is not None:
        import sqlite3

        db = sqlite3.connect(str(idx))
        try:
            archived = db.execute("SELECT count(*) FROM ticket").fetchone()[0]
            messages_archived = db.execute("SELECT count(*) FROM msgid").fetchone()[0]
        finally:
            db.close()
    return {"tickets_hot": len(data.get("tickets", {})), "messages_hot": len(data.get("messages", {})),
            "outbox_rows": len(data.get("outbox", {})), "quarantine": len(data.get("quarantine", {})),
            "tickets_archived": archived, "message_ids_archived": messages_archived}


def parse_db(snap: bytes | None, wal: bytes | None) -> dict:
    """The hot database a snapshot plus commit log describe (as `AtomicStorage.load` reads it)."""
    from mailflow.store import _loads, apply_record

    data = _loads(snap) if snap and snap.strip() else {}
    if wal:
        for rec in parse_log(wal)[0]:
            apply_record(data, rec)
    return data


def _config_members(config_path: Path | None, rules_dir: Path | None, templates_dir: Path | None
                    ) -> list[_Planned]:
    out = []
    if config_path and Path(config_path).is_file():
        p = Path(config_path)
        out.append(_Planned("config/mailflow.toml", path=p, size=p.stat().st_size, ino=p.stat().st_ino))
    for name, d in (("rules", rules_dir), ("templates", templates_dir)):
        if d and Path(d).is_dir():
            for p in sorted(Path(d).rglob("*")):
                if p.is_file():
                    out.append(_Planned(f"config/{name}/{p.relative_to(d).as_posix()}", path=p,
                                        size=p.stat().st_size, ino=p.stat().st_ino))
    return out


class _Changed(Exception):
    """A listed file was replaced while it was copied: start over."""


def _write_tar(dest: Path, members: list[_Planned], manifest_base: dict, level: int) -> tuple[int, int]:
    """Write the archive: members, then the manifest. Returns (files, bytes of data)."""
    files: list[dict] = []
    total = 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=level, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            info = tarfile.TarInfo(m.arcname)
            info.size, info.mode, info.mtime = m.size, 0o600, int(time.time())
            if m.data is not None:
                digest = hashlib.sha256(m.data).hexdigest()
                tar.addfile(info, io.BytesIO(m.data))
            else:
                assert m.path is not None
                try:
                    f = open(m.path, "rb")  # noqa: SIM115 - closed below
                except FileNotFoundError:
                    raise _Changed(str(m.path)) from None
                with f:
                    if os.fstat(f.fileno()).st_ino != m.ino:
                        raise _Changed(str(m.path))
                    h = _Hashing(f, m.size)
                    tar.addfile(info, io.BufferedReader(h, 1 << 20))
                    digest = h.h.hexdigest()
            files.append({"path": m.arcname, "size": m.size, "sha256": digest})
            total += m.size
        body = json.dumps({**manifest_base, "files": files}, indent=1, ensure_ascii=False).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mode, info.mtime = len(body), 0o600, int(time.time())
        tar.addfile(info, io.BytesIO(body))
    with open(dest, "rb+") as f:
        os.fsync(f.fileno())
    return len(files), total


def backup_name(now: datetime) -> str:
    return f"mailflow-backup-{now.astimezone(UTC):%Y%m%dT%H%M%S}Z.tar.gz"


def list_backups(out_dir: Path) -> list[Path]:
    """Backups in a folder, oldest first (by the time in their names)."""
    if not out_dir.is_dir():
        return []
    def key(p: Path) -> tuple[str, int]:
        m = NAME_RE.match(p.name)
        assert m is not None
        return m.group(1), int(m.group(2) or 0)

    return sorted((p for p in out_dir.iterdir() if NAME_RE.match(p.name)), key=key)


def backup(data_dir: Path, out_dir: Path, *, config_path: Path | None = None, rules_dir: Path | None = None,
           templates_dir: Path | None = None, keep: int | None = None, store: Store | None = None,
           now: Callable[[], datetime] = lambda: datetime.now(UTC), level: int = GZIP_LEVEL) -> BackupResult:
    """One new backup of `data_dir` in `out_dir` (created if missing). Raises BackupError."""
    data_dir, out_dir = Path(data_dir).resolve(), Path(out_dir).resolve()
    if not (data_dir / "mailflow.json").exists() and not (data_dir / "mailflow.wal").exists():
        raise BackupError(f"{data_dir}: no mailflow data directory here (no mailflow.json)")
    if inside(out_dir, data_dir):
        raise BackupError(f"{out_dir}: the backup folder must not lie inside the data directory {data_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    for attempt in range(3):
        stamp = now()
        final = out_dir / backup_name(stamp)
        n = 1
        while final.exists():  # two backups within one second
            final = out_dir / backup_name(stamp).replace("Z.tar.gz", f"Z-{n}.tar.gz")
            n += 1
        partial = out_dir / f".{final.name}.partial"
        with tempfile.TemporaryDirectory(prefix=".mailflow-backup-", dir=out_dir) as tmpd:
            try:
                plan, counts, locked = _snapshot(data_dir, Path(tmpd), store)
                members = plan + _config_members(config_path, rules_dir, templates_dir)
                base = {"format": FORMAT, "mailflow_version": _version(), "schema_version": SCHEMA_VERSION,
                        "created_at": stamp.astimezone(UTC).isoformat(timespec="seconds"),
                        "data_dir": str(data_dir), "counts": counts}
                files, total = _write_tar(partial, members, base, level)
            except _Changed:
                partial.unlink(missing_ok=True)
                if attempt == 2:
                    raise BackupError("files kept changing while they were copied (erase or retention "
                                      "running?); try again") from None
                continue
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
        os.replace(partial, final)
        fsync_dir(out_dir)
        removed = []
        if keep is not None and keep > 0:
            for old in list_backups(out_dir)[:-keep]:
                if old != final:
                    old.unlink(missing_ok=True)
                    removed.append(old)
        return BackupResult(final, final.stat().st_size, files, total, time.monotonic() - t0, locked, counts,
                            removed)
    raise BackupError("unreachable")  # pragma: no cover


# ---- reading a backup -------------------------------------------------------------------------------

@dataclass
class Checked:
    manifest: dict | None
    problems: list[str]
    members: dict[str, str]  # name -> sha256 of what the archive holds


def _iter_members(path: Path) -> Iterator[tuple[tarfile.TarInfo, Any]]:
    with tarfile.open(path, mode="r|gz") as tar:
        for info in tar:
            yield info, (tar.extractfile(info) if info.isfile() else None)


def check(path: Path, keep: Callable[[str], bool] = lambda name: False) -> tuple[Checked, dict[str, bytes]]:
    """Read the whole backup once: every member's SHA-256 against the manifest. Members for which
    `keep(name)` is true are returned in memory. Nothing is written anywhere."""
    problems: list[str] = []
    got: dict[str, str] = {}
    kept: dict[str, bytes] = {}
    manifest = None
    try:
        for info, f in _iter_members(path):
            if f is None:
                continue
            if info.name == MANIFEST:
                try:
                    manifest = json.loads(f.read())
                except ValueError:
                    problems.append(f"{path}: {MANIFEST}: not valid JSON: the backup is damaged")
                continue
            h = hashlib.sha256()
            buf = io.BytesIO() if keep(info.name) else None
            while True:
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                h.update(chunk)
                if buf is not None:
                    buf.write(chunk)
            got[info.name] = h.hexdigest()
            if buf is not None:
                kept[info.name] = buf.getvalue()
    except (OSError, EOFError, tarfile.TarError, gzip.BadGzipFile) as e:
        problems.append(f"{path}: cannot be read to the end ({type(e).__name__}: {e}): the backup is damaged; "
                        "use another one")
        return Checked(manifest, problems, got), kept
    if manifest is None:
        problems.append(f"{path}: no {MANIFEST}: not a complete mailflow backup")
        return Checked(None, problems, got), kept
    if manifest.get("format") != FORMAT:
        problems.append(f"{path}: {MANIFEST}: not a mailflow backup (format {manifest.get('format')!r})")
    if int(manifest.get("schema_version") or 0) > SCHEMA_VERSION:
        problems.append(f"{path}: schema version {manifest.get('schema_version')} is newer than this mailflow "
                        f"knows ({SCHEMA_VERSION}): restore it with mailflow {manifest.get('mailflow_version')}")
    listed = {f["path"]: f for f in manifest.get("files", [])}
    for name, f in listed.items():
        if name not in got:
            problems.append(f"{path}: {name}: listed in the manifest but missing: the backup is damaged")
        elif got[name] != f.get("sha256"):
            problems.append(f"{path}: {name}: SHA-256 does not match the manifest: the backup is damaged")
    for name in got:
        if name not in listed:
            problems.append(f"{path}: {name}: not listed in the manifest: the backup was altered")
    return Checked(manifest, problems, got), kept


def verify_backup(path: Path) -> Checked:
    """`mailflow verify --backup FILE`: checksums, the manifest, and that the database parses and
    holds what the manifest counts — without restoring anything."""
    path = Path(path)
    if not path.is_file():
        return Checked(None, [f"{path}: no such file"], {})
    want = {"data/mailflow.json", "data/mailflow.wal"}
    checked, kept = check(path, keep=lambda n: n in want)
    if checked.problems or checked.manifest is None:
        return checked
    if checked.manifest.get("backend") == "postgresql":  # a pg_dump instead of the TinyDB files
        from mailflow import backup_pg

        return backup_pg.verify_backup(path, checked)
    try:
        data = parse_db(kept.get("data/mailflow.json"), kept.get("data/mailflow.wal"))
    except ValueError as e:
        checked.problems.append(f"{path}: data/mailflow.json: not valid JSON ({e}): the backup is damaged")
        return checked
    counts = checked.manifest.get("counts", {})
    for key, table in (("tickets_hot", "tickets"), ("messages_hot", "messages"), ("outbox_rows", "outbox")):
        if key in counts and counts[key] != len(data.get(table, {})):
            checked.problems.append(f"{path}: data/mailflow.json: holds {len(data.get(table, {}))} {table}, the "
                                    f"manifest counts {counts[key]}: the backup is inconsistent")
    return checked


# ---- restoring ----------------------------------------------------------------------------------------

@dataclass
class RestoreResult:
    data_dir: Path
    files: int
    config_dir: Path | None
    manifest: dict
    replaced: bool = False


_LAYOUT = ("mailflow.json", "mailflow.wal", "secret.key", *DATA_DIRS, "restored-config")


def _is_empty(d: Path) -> bool:
    return not d.exists() or not any(p for p in d.iterdir() if p.name not in ("daemon.lock", "mailflow.lock"))


def restore(path: Path, data_dir: Path, force: bool = False, echo: Callable[[str], None] = lambda s: None
            ) -> RestoreResult:
    """Verify every checksum (a damaged backup writes nothing), then unpack into `data_dir`;
    the backup's config, rules and templates go to `data_dir/restored-config/`, never over the
    live ones. Refuses while a daemon holds `data_dir`, and a non-empty `data_dir` without `force`."""
    path, data_dir = Path(path), Path(data_dir).resolve()
    if not path.is_file():
        raise BackupError(f"{path}: no such file")
    lock = None
    if data_dir.exists():
        if (data_dir / "daemon.lock").exists():
            lock = lock_process(data_dir)
            if lock is None:
                raise BackupError(f"{data_dir}: a mailflow daemon is running on it; stop it first "
                                  "(systemctl stop mailflow)")
        if not _is_empty(data_dir) and not force:
            if lock is not None:
                lock.close()
            raise BackupError(f"{data_dir}: not empty; restore into an empty directory, or give --force to "
                              "replace what is there")
    try:
        echo(f"checking {path} ...")
        checked, _ = check(path)
        if checked.problems or checked.manifest is None:
            raise BackupError("; ".join(checked.problems) + " — nothing was written")
        manifest = checked.manifest
        if manifest.get("backend") == "postgresql":
            raise BackupError(f"{path}: a PostgreSQL backup: restore it with [storage] backend = \"postgresql\" "
                              "and the dsn to restore into")
        data_dir.mkdir(parents=True, exist_ok=True)
        if lock is None:
            lock = lock_process(data_dir)
            if lock is None:
                raise BackupError(f"{data_dir}: a mailflow daemon is running on it; stop it first")
        stage = Path(tempfile.mkdtemp(prefix=".restore-", dir=data_dir))
        try:
            n = _extract(path, stage, checked.members)
            replaced = False
            old = data_dir / f".replaced-{os.getpid()}"
            if not _is_empty_but(data_dir, {stage.name}):
                replaced = True
                old.mkdir()
                for name in _LAYOUT:
                    if (data_dir / name).exists():
                        os.replace(data_dir / name, old / name)
            for src_name, dst_name in (("data", None), ("config", "restored-config")):
                src = stage / src_name
                if not src.exists():
                    continue
                if dst_name is None:
                    for child in src.iterdir():
                        os.replace(child, data_dir / child.name)
                else:
                    os.replace(src, data_dir / dst_name)
            fsync_dir(data_dir)
            if old.exists():
                shutil.rmtree(old)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        cfg_dir = data_dir / "restored-config"
        return RestoreResult(data_dir, n, cfg_dir if cfg_dir.exists() else None, manifest, replaced)
    finally:
        if lock is not None:
            lock.close()


def _is_empty_but(d: Path, but: set[str]) -> bool:
    return not any(p for p in d.iterdir() if p.name not in but and p.name not in ("daemon.lock", "mailflow.lock"))


def _extract(path: Path, stage: Path, expected: dict[str, str]) -> int:
    """Unpack into `stage`, checking each member's hash again as it is written (the file could
    have changed since the check)."""
    n = 0
    for info, f in _iter_members(path):
        if f is None or info.name == MANIFEST:
            continue
        name = info.name
        if name.startswith("/") or ".." in Path(name).parts or not name.startswith(("data/", "config/", "db/")):
            raise BackupError(f"{path}: {name}: an unsafe path in the archive")
        dest = stage / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "wb") as out:
            while True:
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                h.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != expected.get(name):
            raise BackupError(f"{path}: {name}: changed while it was restored; nothing was kept")
        n += 1
    return n
