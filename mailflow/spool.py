"""Raw mail written durably before anything else happens, so a crash can always replay it.

A batch is one segment file (`YYYY/MM/DD/<id>.seg`: the raw messages back to back) written with one
open and one fsync: measured here, a file plus an fsync per message cost ~0.6 ms of a ~4 ms budget.
A message is referred to as `<segment>:<offset>:<length>`; `read()` also accepts a plain relative
path (one message per file), which is what older data directories hold.
"""

from __future__ import annotations

import os
import secrets
from datetime import UTC, datetime
from pathlib import Path

from mailflow.store import fsync_dir


class Segments:
    """Append-once segment files under one root; shared by the spool and the outbox."""

    def __init__(self, root: Path, suffix: str):
        self.root = Path(root)
        self.suffix = suffix
        self.root.mkdir(parents=True, exist_ok=True)

    def new_name(self) -> str:
        day = datetime.now(UTC).strftime("%Y/%m/%d")
        return f"{day}/{secrets.token_hex(8)}{self.suffix}"

    def write(self, blobs: list[bytes], name: str | None = None) -> list[str]:
        """Write all blobs into one new segment, fsync it and its folder; return their refs."""
        if not blobs:
            return []
        name = name or self.new_name()
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        refs, off = [], 0
        with open(path, "wb") as f:
            for b in blobs:
                refs.append(f"{name}:{off}:{len(b)}")
                off += len(b)
            f.write(b"".join(blobs))
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(path.parent)
        return refs

    def read(self, ref: str) -> bytes:
        name, sep, rest = ref.partition(":")
        if not sep:
            return (self.root / name).read_bytes()
        off, _, length = rest.partition(":")
        with open(self.root / name, "rb") as f:
            f.seek(int(off))
            data = f.read(int(length))
        if len(data) != int(length):
            raise OSError(f"{name}: truncated segment")
        return data

    @staticmethod
    def file_of(ref: str) -> str:
        return ref.partition(":")[0]


class Spool(Segments):
    def __init__(self, root: Path):
        super().__init__(root, ".seg")

    def write_many(self, raws: list[bytes]) -> list[str]:
        return self.write(raws)
