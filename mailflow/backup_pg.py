"""Backup, restore and verify for `[storage] backend = "postgresql"`.

A backup is the same `mailflow-backup-<time>.tar.gz` as for TinyDB (mailflow/backup.py): `data/`
holds the data directory's files (spool and outbox segments, attachments, quarantine, the HMAC
key), `db/mailflow.pgdump` a `pg_dump -Fc` of the database, `config/` the config, rules and
templates, and `MANIFEST.json` says `"backend": "postgresql"` with the counts. Consistency: one
REPEATABLE READ transaction exports its snapshot; `pg_dump --snapshot` dumps exactly that state
and the counts are read in it, so dump and counts agree while daemons keep committing. The data
directory's files are immutable or append-only, and they are listed after the snapshot is taken:
every file a dumped row names was written before its row committed, so the backup holds it (a
file written later may come along unneeded: harmless).

Restore checks every checksum first (a damaged backup writes nothing), unpacks the files into the
data directory as for TinyDB, then `pg_restore --clean --if-exists --no-owner` into the configured
dsn. Stop every daemon first (`mailflow status` lists them).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mailflow import backup as bk

DUMP = "db/mailflow.pgdump"


def pg_bin(name: str) -> str:
    """`pg_dump`/`pg_restore` of the newest PostgreSQL installed (Debian keeps them per version in
    /usr/lib/postgresql/N/bin; pg_dump must be at least the server's version), else from PATH."""
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                  key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0, reverse=True)
    for d in dirs:
        if os.access(os.path.join(d, name), os.X_OK):
            return os.path.join(d, name)
    found = shutil.which(name)
    if not found:
        raise bk.BackupError(f"{name} not found: install the PostgreSQL client (apt-get install postgresql-client)")
    return found


def _libpq(cfg: Any) -> tuple[str, dict[str, str]]:
    """(conninfo without the password, environment with PGPASSWORD): a password never appears in
    a process's command line."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    d = conninfo_to_dict(cfg.pg.conninfo())
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    pw = d.pop("password", None)
    if pw:
        env["PGPASSWORD"] = str(pw)
    return make_conninfo(**{k: str(v) for k, v in d.items()}), env


COUNTS_SQL = ("SELECT (SELECT count(*) FROM tickets WHERE NOT archived), (SELECT count(*) FROM tickets WHERE archived),"
              " (SELECT count(*) FROM messages WHERE NOT archived), (SELECT count(*) FROM outbox),"
              " (SELECT count(*) FROM quarantine), (SELECT count(*) FROM messages WHERE archived)")
COUNT_KEYS = ("tickets_hot", "tickets_archived", "messages_hot", "outbox_rows", "quarantine", "message_ids_archived")


def backup(cfg: Any, out_dir: Path, *, keep: int | None = None,
           now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> bk.BackupResult:
    import psycopg

    from mailflow import pg_schema

    data_dir, out_dir = Path(cfg.data_dir).resolve(), Path(out_dir).resolve()
    if bk.inside(out_dir, data_dir):
        raise bk.BackupError(f"{out_dir}: the backup folder must not lie inside the data directory {data_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    conninfo, env = _libpq(cfg)
    for attempt in range(3):
        stamp = now()
        final = out_dir / bk.backup_name(stamp)
        n = 1
        while final.exists():
            final = out_dir / bk.backup_name(stamp).replace("Z.tar.gz", f"Z-{n}.tar.gz")
            n += 1
        partial = out_dir / f".{final.name}.partial"
        with tempfile.TemporaryDirectory(prefix=".mailflow-backup-", dir=out_dir) as tmpd:
            dump = Path(tmpd) / "mailflow.pgdump"
            try:
                with psycopg.connect(cfg.pg.conninfo(), autocommit=True) as c:
                    pg_schema.check(c)
                    c.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    snap = c.execute("SELECT pg_export_snapshot()").fetchone()[0]
                    counts = dict(zip(COUNT_KEYS, c.execute(COUNTS_SQL).fetchone(), strict=True))
                    version = pg_schema.current(c)
                    held = time.monotonic()
                    r = subprocess.run([pg_bin("pg_dump"), "-Fc", "--no-owner", "--exclude-table-data=report_cache", f"--snapshot={snap}", "-f", str(dump),
                                        "--dbname", conninfo], env=env, capture_output=True, text=True)
                    if r.returncode != 0:
                        raise bk.BackupError(f"pg_dump failed: {r.stderr.strip().splitlines()[-1:] or r.returncode}")
                    # files listed after the snapshot: every file a dumped row names is listed
                    files = _list_files(data_dir)
                    locked = time.monotonic() - held
                    c.execute("COMMIT")
            except psycopg.Error as e:
                raise bk.BackupError(f"database: {str(e).strip().splitlines()[0]}") from None
            members = [bk._Planned(DUMP, path=dump, size=dump.stat().st_size, ino=dump.stat().st_ino), *files,
                       *bk._config_members(cfg.path, cfg.rules_dir, cfg.templates_dir)]
            base = {"format": bk.FORMAT, "mailflow_version": bk._version(), "schema_version": bk.SCHEMA_VERSION,
                    "backend": "postgresql", "pg_schema_version": version,
                    "created_at": stamp.astimezone(UTC).isoformat(timespec="seconds"),
                    "data_dir": str(data_dir), "counts": counts}
            try:
                nfiles, total = bk._write_tar(partial, members, base, bk.GZIP_LEVEL)
            except bk._Changed:
                partial.unlink(missing_ok=True)
                if attempt == 2:
                    raise bk.BackupError("files kept changing while they were copied (erase or retention "
                                         "running?); try again") from None
                continue
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
        os.replace(partial, final)
        bk.fsync_dir(out_dir)
        removed = []
        if keep is not None and keep > 0:
            for old in bk.list_backups(out_dir)[:-keep]:
                if old != final:
                    old.unlink(missing_ok=True)
                    removed.append(old)
        return bk.BackupResult(final, final.stat().st_size, nfiles, total, time.monotonic() - t0, locked, counts,
                               removed)
    raise bk.BackupError("unreachable")  # pragma: no cover


def _list_files(data_dir: Path) -> list[bk._Planned]:
    out = []
    for root, dirs, names in os.walk(data_dir):
        dirs.sort()
        for name in sorted(names):
            p = Path(root) / name
            rel = p.relative_to(data_dir).as_posix()
            if not bk._listable(rel) or rel.startswith("restored-config/") or rel == "daemon-status.json":
                continue
            try:
                s = p.stat()
            except FileNotFoundError:
                continue
            out.append(bk._Planned(f"data/{rel}", path=p, size=s.st_size, ino=s.st_ino))
    return out


def verify_backup(path: Path, checked: bk.Checked) -> bk.Checked:
    """A PostgreSQL backup: checksums (done by the caller), and the dump is one pg_restore reads."""
    with tempfile.TemporaryDirectory(prefix=".mailflow-verify-") as tmpd:
        dump = Path(tmpd) / "mailflow.pgdump"
        _checked, kept = bk.check(path, keep=lambda n: n == DUMP)
        if DUMP not in kept:
            checked.problems.append(f"{path}: {DUMP}: missing: not a complete PostgreSQL backup")
            return checked
        dump.write_bytes(kept[DUMP])
        r = subprocess.run([pg_bin("pg_restore"), "--list", str(dump)], capture_output=True, text=True)
        if r.returncode != 0:
            checked.problems.append(f"{path}: {DUMP}: pg_restore cannot read it ({r.stderr.strip()[:200]})")
        elif "TABLE DATA public tickets" not in r.stdout:
            checked.problems.append(f"{path}: {DUMP}: holds no tickets table: not a mailflow database dump")
    return checked


def restore(path: Path, cfg: Any, force: bool = False, echo: Callable[[str], None] = lambda s: None
            ) -> bk.RestoreResult:
    """Files into [storage] data_dir (as for TinyDB), then the dump into the configured dsn."""
    import psycopg

    path, data_dir = Path(path), Path(cfg.data_dir).resolve()
    if not path.is_file():
        raise bk.BackupError(f"{path}: no such file")
    if data_dir.exists() and not bk._is_empty(data_dir) and not force:
        raise bk.BackupError(f"{data_dir}: not empty; restore into an empty directory, or give --force to "
                             "replace what is there")
    conninfo, env = _libpq(cfg)
    try:
        with psycopg.connect(cfg.pg.conninfo(), autocommit=True) as c:
            has = c.execute("SELECT to_regclass('tickets') IS NOT NULL").fetchone()[0]
            if has and c.execute("SELECT count(*) FROM tickets").fetchone()[0] and not force:
                raise bk.BackupError("the database already holds tickets; give --force to replace them")
            running = c.execute("SELECT count(*) FROM daemons WHERE seen_at > now() - interval '2 minutes'"
                                ).fetchone()[0] if has else 0
            if running:
                raise bk.BackupError(f"{running} mailflow daemon(s) wrote to the database in the last two minutes; "
                                     "stop them first (`mailflow status` lists them)")
    except psycopg.Error as e:
        raise bk.BackupError(f"database: {str(e).strip().splitlines()[0]}") from None
    echo(f"checking {path} ...")
    checked, _ = bk.check(path)
    if checked.problems or checked.manifest is None:
        raise bk.BackupError("; ".join(checked.problems) + " — nothing was written")
    manifest = checked.manifest
    if manifest.get("backend") != "postgresql":
        raise bk.BackupError(f"{path}: a TinyDB backup; restore it with [storage] backend = \"tinydb\" (then "
                             "`mailflow db migrate --from tinydb --to postgresql`)")
    data_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".restore-", dir=data_dir))
    try:
        n = bk._extract(path, stage, checked.members)
        dump = stage / DUMP
        echo("restoring the database ...")
        r = subprocess.run([pg_bin("pg_restore"), "--clean", "--if-exists", "--no-owner", "--exit-on-error",
                            "--single-transaction", "--dbname", conninfo, str(dump)], env=env, capture_output=True,
                           text=True)
        if r.returncode != 0:
            raise bk.BackupError(f"pg_restore failed (the database is as it was): {r.stderr.strip()[-400:]}")
        replaced = False
        old = data_dir / f".replaced-{os.getpid()}"
        if not bk._is_empty_but(data_dir, {stage.name}):
            replaced = True
            old.mkdir()
            for name in bk._LAYOUT:
                if (data_dir / name).exists():
                    os.replace(data_dir / name, old / name)
        if (stage / "data").exists():
            for child in (stage / "data").iterdir():
                os.replace(child, data_dir / child.name)
        if (stage / "config").exists():
            os.replace(stage / "config", data_dir / "restored-config")
        bk.fsync_dir(data_dir)
        if old.exists():
            shutil.rmtree(old)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    cfg_dir = data_dir / "restored-config"
    return bk.RestoreResult(data_dir, n, cfg_dir if cfg_dir.exists() else None, manifest, replaced)


VERIFIED = "verify:checked"  # meta key: what the last verify read (see `verify`)
# rows before the last one read that are read again: a batch that had taken its row numbers but not
# committed while the last verify read is at most a few hundred rows (only `db migrate` writes more
# in one transaction, and nothing else runs then)
REREAD = 10_000


def verify(cfg: Any, echo: Callable[[str], None] = lambda s: None, full: bool = False) -> list:
    """`mailflow verify` on PostgreSQL: the schema version, every row that names a file (message
    spool refs, attachments, quarantine, outbox segments) names one that is there, queued mail
    has its bytes, no orphan attachments.

    Messages are many (4.1M in the 1M-ticket set) and, once written, keep the files they name, so
    a verify remembers what it read (meta `verify:checked`: the last message row, the length each
    recent spool segment must have for those rows, each closed day folder's mtime and file count,
    the attachments they list): the next one reads only the rows added since and checks the
    remembered segments, folders and attachments on disk, so a file that went missing is still
    found (a segment of a closed day cut short in place is found by `full` only) (the last REREAD rows are read again: one a batch had not
    yet committed then). Every row is read again with `full`, on the first run, and
    after anything that removes files on purpose (retention, a privacy erase: their meta logs
    changed)."""
    import psycopg
    from psycopg.types.json import Jsonb

    from mailflow import pg_schema
    from mailflow.verify import Problem, Verifier

    v = Verifier(Path(cfg.data_dir), echo, cfg)
    try:
        with psycopg.connect(cfg.pg.conninfo(), autocommit=True) as c:
            ver, why = pg_schema.state(c)
            if why:
                return [Problem("database", why, "run `mailflow db upgrade`")]
            meta = dict(c.execute("SELECT key, value FROM meta WHERE key IN ('retention:raw_mail_before', "
                                  "'retention:attachments_before', 'retention:log', 'privacy:erasures', %s)",
                                  (VERIFIED,)).fetchall())
            v.raw_before = meta.get("retention:raw_mail_before") or ""
            v.att_before = meta.get("retention:attachments_before") or ""
            removals = _removals(meta)
            state = meta.get(VERIFIED)
            if full or not isinstance(state, dict) or state.get("v") != 2 or state.get("removals") != removals:
                state = {"v": 2, "k": 0, "segments": {}, "days": {}, "attachments": {}}
                echo("reading every message row (the first verify, --full, or files were removed since)")
            since = max(0, int(state["k"]) - REREAD) if state["k"] else 0
            segments, atts, days = dict(state["segments"]), dict(state["attachments"]), dict(state["days"])
            earlier = (set(segments), set(atts))  # what rows read by earlier verifies need
            orphans = c.execute("SELECT count(*) FROM messages m WHERE m.k > %s AND ticket_id IS NOT NULL AND NOT "
                                "EXISTS (SELECT 1 FROM tickets t WHERE t.id = m.ticket_id COLLATE \"C\")",
                                (since,)).fetchone()[0]
            if orphans:
                v.add("database", f"{orphans} messages belong to no ticket", "restore the database from a backup")
            closing: set[str] = set()  # closed day folders the rows read now have segments in
            last, n = _read_messages(c, v, since, int(state["k"]), segments, atts, earlier[1], closing)
            _check_remembered(v, {k: segments[k] for k in earlier[0]}, {k: atts[k] for k in earlier[1]})
            _check_days(v, days)
            _close_days(v, segments, days, closing)
            v.attachments.update(atts)
            c.execute("INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = "
                      "excluded.value", (VERIFIED, Jsonb({"v": 2, "k": last, "segments": segments, "days": days,
                                                          "attachments": atts, "removals": removals})))
            echo(f"message rows read: {n:,} (new since the last verify: rows after {since:,})" if since else
                 f"message rows read: {n:,}")
            for k, q in c.execute("SELECT k, doc FROM quarantine WHERE spool IS NOT NULL AND status <> 'erased'"):
                why = v._spool_ref(q["spool"])
                if why:
                    v.add(f"spool/{q['spool'].partition(':')[0]}", f"{why} (quarantine item {k} refers to it)",
                          "restore the file from a backup; else `mailflow quarantine replay` cannot work")
            for k, st, f, has in c.execute("SELECT k, status, doc->>'file', data IS NOT NULL FROM outbox"):
                if f in (None, "db", "dry-run"):
                    if st == "queued" and not has:
                        v.add("database", f"queued outbox row {k} has no mail", "give up on the row "
                              "(`mailflow outbox list` shows it)")
                    continue
                why = v.outbox.check(f)
                if why and st == "queued":
                    v.add(f"outbox/{f.partition(':')[0]}", f"{why} (queued outbox row {k} refers to it)",
                          "restore the file from a backup")
    except psycopg.Error as e:
        return [Problem("database", f"cannot be read ({str(e).strip().splitlines()[0]})",
                        "check [storage] dsn and that the server runs")]
    v.files()
    echo(f"database schema version {ver}")
    return v.problems


CLOSED_AFTER_DAYS = 2  # a spool day folder gets no new segment once its UTC day is this long past


def _closed_before() -> str:
    """The newest day folder (YYYY/MM/DD) that is closed: no segment is written into it any more."""
    from datetime import UTC, datetime, timedelta

    return (datetime.now(UTC) - timedelta(days=CLOSED_AFTER_DAYS)).strftime("%Y/%m/%d")


def _closed_day(name: str, cut: str) -> str | None:
    """The day folder (YYYY/MM/DD) of segment `name` if that day is closed (before `cut`)."""
    day = name[:10]
    return day if len(day) == 10 and day.count("/") == 2 and day < cut else None


def _close_days(v: Any, segments: dict[str, int], days: dict[str, list], closing: set[str] | None = None) -> None:
    """Fold the remembered segments of day folders that are closed (no segment is written into a
    past day's folder; 2 days of margin for hosts' clocks) into one entry per folder: its mtime and
    how many files it holds. A folder's mtime changes when a file in it is added, removed or renamed,
    so the next verify stats one folder per day, not every segment (a daemon on IDLE writes one
    segment per mail: 2M a year in the 1M-ticket set)."""
    cut = _closed_before()
    closing = set() if closing is None else closing
    for name in list(segments):
        day = _closed_day(name, cut)
        if day:
            closing.add(day)
            del segments[name]
    for day in closing:
        d = v.dir / "spool" / day
        try:
            if day in v.spool.mtimes:  # this verify listed it already (whole-file segments)
                days[day] = [v.spool.mtimes[day], len(v.spool.folders[day])]
                continue
            days[day] = [os.stat(d).st_mtime_ns, sum(1 for _ in os.scandir(d))]
        except OSError:
            days[day] = [None, 0]  # already missing: reported from the rows; stays reported


def _check_days(v: Any, days: dict[str, list]) -> None:
    """The closed day folders earlier verifies read: still there, nothing added or removed since."""
    for day, (mtime, count) in sorted(days.items()):
        if v.raw_before and day < v.raw_before:
            continue  # expired by [retention] raw_mail_days
        d = v.dir / "spool" / day
        try:
            now_mtime = os.stat(d).st_mtime_ns
        except OSError:
            now_mtime = None
        if now_mtime == mtime is not None:
            continue
        if now_mtime is None:
            v.add(f"spool/{day}", f"missing (a day of raw mail: {count} segment files when verify checked it)",
                  "restore the folder from a backup; `mailflow verify --full` names the tickets")
            continue
        have = sum(1 for _ in os.scandir(d))
        what = (f"{count - have} of its {count} segment files are gone" if have < count else
                "it was missing then" if mtime is None else "files were added, removed or renamed in it")
        v.add(f"spool/{day}", f"changed since verify checked it ({what})",
              "restore what is missing from a backup; `mailflow verify --full` checks every file and names the "
              "tickets (and remembers the folder as it is then)")


def _removals(meta: dict) -> str:
    """A stamp of everything that removed files on purpose (retention runs, privacy erasures)."""
    import hashlib
    import json

    return hashlib.sha1(json.dumps([meta.get("retention:log"), meta.get("privacy:erasures")],
                                   sort_keys=True, default=str).encode()).hexdigest()[:16]


def _remember(m: dict, segments: dict[str, int], atts: dict[str, str], earlier: set[str]) -> None:
    """What a message row needs on disk: its spool segment up to the end of its bytes, its files
    (a path an earlier row listed too stops being "earlier": this row has just been checked)."""
    ref = m.get("spool")
    if ref and m.get("direction") == "in":
        name, _, rest = ref.partition(":")
        off, _, length = rest.partition(":")
        try:
            end = int(off) + int(length) if rest else 0
        except ValueError:
            end = 0
        if end >= segments.get(name, -1):
            segments[name] = end
    for a in m.get("attachments") or []:
        if a.get("path"):
            atts[a["path"]] = m.get("received_at") or ""
            earlier.discard(a["path"])


# a spool reference "NAME[:OFFSET:LENGTH]" taken apart in SQL: OFFSET + LENGTH, 0 for a whole file,
# -1 for what is not two numbers (reported per row)
# (of `s`, the reference, taken out of each document once: a subquery kept apart by OFFSET 0)
_REF = "(doc->>'spool')"
_END = ("CASE WHEN s NOT LIKE '%%:%%' THEN 0 WHEN split_part(s, ':', 2) ~ '^[0-9]{1,15}$' AND "
        "split_part(s, ':', 3) ~ '^[0-9]{1,15}$' AND split_part(s, ':', 4) = '' THEN "
        "split_part(s, ':', 2)::bigint + split_part(s, ':', 3)::bigint ELSE -1 END")


def _read_messages(c: Any, v: Any, since: int, last: int, segments: dict[str, int], atts: dict[str, str],
                   earlier: set[str], closing: set[str]) -> tuple[int, int]:
    """Check the message rows after row `since` (and remember what they need): (the last row, how
    many rows). The database does the reading: one row per spool segment (the end of its last
    message's bytes) and one per attachment, so Python looks at each file once, not at 4.1M
    documents (the first verify of the 1M set: 216 s -> see bench/RESULTS.md). Only the rows of a
    segment found missing or short are read one by one, to name their tickets."""
    import psycopg

    c.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ  # one snapshot for the three reads
    with c.transaction():
        n, top = c.execute("SELECT count(*), coalesce(max(k), 0) FROM messages WHERE k > %s", (since,)).fetchone()
        bad: list[str] = []
        with c.cursor(name="verify_segments") as cur:
            cur.itersize = 20000
            c.execute("SET LOCAL cursor_tuple_fraction = 1")  # every row is read: the fastest plan for all
            cur.execute(f"SELECT split_part(s, ':', 1), max({_END}), min({_END}) FROM (SELECT {_REF} AS s FROM messages "
                        "WHERE k > %s AND direction = 'in' OFFSET 0) m WHERE coalesce(s, '') <> '' GROUP BY 1", (since,))
            cut = _closed_before()
            for name, end, low in cur:
                day = _closed_day(name, cut)
                if day:
                    closing.add(day)  # remembered as its folder (_close_days), not segment by segment
                elif end >= segments.get(name, -1):
                    segments[name] = max(end, 0)
                if v.raw_before and name[:10] < v.raw_before:
                    continue  # expired by [retention] raw_mail_days
                # a whole-file reference needs the file only: its folder's listing answers (no stat)
                if low < 0 or not (v.spool.listed(name) if not end else v.spool.check(f"{name}:0:{end}") is None):
                    bad.append(name)
        if bad:
            few = len(bad) <= 1000  # else every row is read and sorted out here (ANY of a long array scans it)
            wanted = set(bad)
            with c.cursor(name="verify_bad") as cur:
                cur.itersize = 20000
                narrow = f"AND split_part({_REF}, ':', 1) = ANY(%s)" if few else ""
                cur.execute(f"SELECT {_REF}, ticket_id FROM messages WHERE k > %s AND direction = 'in' AND "
                            f"coalesce({_REF}, '') <> '' {narrow} ORDER BY k", (since, bad) if few else (since,))
                for ref, tid in cur:
                    if ref.partition(":")[0] in wanted:
                        v.message({"spool": ref, "direction": "in", "ticket_id": tid}, "the database")
        rows = c.execute("SELECT ticket_id, doc->>'received_at', doc->'attachments' FROM messages WHERE k > %s AND "
                         "jsonb_typeof(doc->'attachments') = 'array' AND doc->'attachments' <> '[]' ORDER BY k",
                         (since,)).fetchall()
    c.isolation_level = None
    for tid, received, listed in rows:
        m = {"ticket_id": tid, "received_at": received, "attachments": listed}
        v.message(m, "the database")
        _remember(m, segments, atts, earlier)
    return max(last, top), n


def _check_remembered(v: Any, segments: dict[str, int], atts: dict[str, str]) -> None:
    """The files the rows read by earlier verifies need (rows read now were checked one by one)."""
    for name, end in sorted(segments.items()):
        if v.raw_before and name[:10] < v.raw_before:
            continue  # expired by [retention] raw_mail_days
        size = v.spool.size(name)
        why = "missing" if size is None else f"shorter ({size} bytes) than its messages need ({end})" \
            if size < end else None
        if why and not any(k.startswith(f"{name}\t") for k in v.missing_spool):
            v.add(f"spool/{name}", f"{why} (messages checked by an earlier verify refer to it)",
                  "restore the file from a backup (mailflow restore BACKUP --data-dir SCRATCH, then copy it); "
                  "`mailflow verify --full` names the tickets")
    for p, received in sorted(atts.items()):
        if not (v.dir / p).is_file() and not (v.att_before and received < v.att_before):
            v.add(p, "missing (an attachment a message checked by an earlier verify lists)",
                  "restore it from a backup; `mailflow verify --full` names the ticket")
