"""sha256 of pool files, remembered by file identity so that a large module is hashed once.

Recipes, the audit log and the eval cache name files by their sha256, and hashing a
ViT-L module costs seconds. A pool file never changes in place: every write makes a new
file and renames it over the old one (a new inode and a new ctime). So, as in git's
index, (inode, size, mtime, ctime) identifies a file's bytes, and a hash is reused only
when all four still match; ctime cannot be set back by a user. Each file's bytes are
still validated whenever they are read; `modpool check` rehashes everything.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .atomic import read_jsonl
from .tensorfile import sha256_file

Identity = tuple[int, int, int, int]


def identity(path: Path) -> Identity:
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class HashCache:
    """`hashes.jsonl` in the pool: one line per file hashed (a cache; losing it is harmless)."""

    def __init__(self, root: Path):
        self.root, self.log = Path(root), Path(root) / "hashes.jsonl"
        self._known: dict[tuple[str, Identity], str] | None = None

    def sha256(self, path: Path) -> str:
        rel = self._rel(path)
        key = identity(path)
        known = self._lookup(rel, key, reload=False) or self._lookup(rel, key, reload=True)
        if known:
            return known
        digest = sha256_file(path)
        if identity(path) == key:  # unchanged while we read it
            self._append(rel, key, digest)
        return digest

    def remember(self, path: Path, digest: str) -> None:
        """Record the hash of a file just written (call after its final rename)."""
        self._append(self._rel(path), identity(path), digest)

    def _lookup(self, rel: str, key: Identity, reload: bool) -> str | None:
        if self._known is None or reload:
            self._known = {
                (r["path"], tuple(r["identity"])): r["sha256"]
                for r in read_jsonl(self.log)
                if isinstance(r.get("identity"), list) and isinstance(r.get("sha256"), str)
            }
        return self._known.get((rel, key))

    def _append(self, rel: str, key: Identity, digest: str) -> None:
        line = json.dumps({"path": rel, "identity": list(key), "sha256": digest}) + "\n"
        fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())  # one write: concurrent lines stay whole
        finally:
            os.close(fd)
        if self._known is not None:
            self._known[(rel, key)] = digest

    def _rel(self, path: Path) -> str:
        path = Path(path)
        try:
            return str(path.resolve().relative_to(self.root.resolve()))
        except ValueError:
            return str(path.resolve())
