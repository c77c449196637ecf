"""Raw mail written durably before anything else happens, so a crash can always replay it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


class Spool:
    """Content-addressed .eml files: the same bytes are stored once, whichever mailbox brought them."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, raw: bytes) -> Path:
        h = hashlib.sha256(raw).hexdigest()
        return self.root / h[:2] / f"{h[2:]}.eml"

    def write_many(self, raws: list[bytes]) -> list[Path]:
        """Write every file, then fsync each and their folders: one durable step per batch."""
        paths, opened = [], []
        dirs: set[Path] = set()
        for raw in raws:
            p = self.path_for(raw)
            paths.append(p)
            if p.exists() and p.stat().st_size == len(raw):
                continue
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_suffix(".tmp")
            f = open(tmp, "wb")
            f.write(raw)
            opened.append((f, tmp, p))
            dirs.add(p.parent)
        for f, tmp, p in opened:
            f.flush()
            os.fsync(f.fileno())
            f.close()
            os.replace(tmp, p)
        for d in dirs:
            fd = os.open(d, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return paths

    def write(self, raw: bytes) -> Path:
        return self.write_many([raw])[0]

    def rel(self, p: Path) -> str:
        return str(p.relative_to(self.root))

    def read(self, rel: str) -> bytes:
        return (self.root / rel).read_bytes()
