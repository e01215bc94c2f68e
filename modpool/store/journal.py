"""Multi-file pool changes that a crash leaves either undone or done, never half-done.

A `Transaction` stages every new file as a temporary file (written and fsynced), then
writes one journal naming what to rename, what to delete and which audit record to append,
and only then applies it. Recovery (run whenever a pool is opened) finishes a journal that
exists, since everything it needs is on disk, and removes temporary files without a
journal, which belong to a change that never committed. Both run under the pool lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .atomic import append_jsonl, atomic_write_json, crash_point, fsync_dir, read_jsonl

JOURNAL = ".journal.json"
TEMP_GLOBS = (".txn-*.tmp", "*/.txn-*.tmp", ".*.tmp", "*/.*.tmp")


class Transaction:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.id = uuid.uuid4().hex
        self.puts: list[tuple[str, str]] = []
        self.deletes: list[str] = []
        self.audit: list[dict] = []
        self.committed: list = []  # callbacks run once the change is applied (still locked)

    def write(self, rel: str, data: bytes) -> None:
        """Stage `data` for `rel` (relative to the pool root)."""
        with self.stream(rel) as f:
            f.write(data)

    @contextlib.contextmanager
    def stream(self, rel: str) -> Iterator[BinaryIO]:
        """Stage `rel` by writing it as it is computed; `f.name` is the staged file, which
        later steps of the same change may read."""
        final = self.root / rel
        tmp = final.parent / f".txn-{self.id}-{len(self.puts)}.tmp"
        final.parent.mkdir(parents=True, exist_ok=True)
        self.puts.append((str(tmp.relative_to(self.root)), rel))  # so that abort removes it
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        crash_point()

    def delete(self, rel: str) -> None:
        self.deletes.append(rel)

    def log(self, record: dict) -> None:
        self.audit.append(record)

    def commit(self) -> None:
        journal = {"id": self.id, "puts": self.puts, "deletes": self.deletes, "audit": self.audit}
        atomic_write_json(self.root / JOURNAL, journal)
        crash_point()
        apply(self.root, journal)
        for callback in self.committed:
            callback()

    def abort(self) -> None:
        for tmp, _ in self.puts:
            with contextlib.suppress(FileNotFoundError):
                (self.root / tmp).unlink()


def apply(root: Path, journal: dict) -> None:
    """Idempotent: renames whose temp file is gone already happened."""
    for tmp, final in journal["puts"]:
        if (root / tmp).exists():
            os.replace(root / tmp, root / final)
            fsync_dir((root / final).parent)
            crash_point()
    for rel in journal["deletes"]:
        if (root / rel).exists():
            (root / rel).unlink()
            fsync_dir((root / rel).parent)
            crash_point()
    done = {r.get("txn") for r in read_jsonl(root / "audit.jsonl")}
    for i, record in enumerate(journal["audit"]):
        line_id = f"{journal['id']}:{i}"
        if line_id not in done:
            append_jsonl(root / "audit.jsonl", {**record, "txn": line_id})
    (root / JOURNAL).unlink()
    fsync_dir(root)


def recover(root: Path) -> list[str]:
    """Finish a committed change, discard uncommitted temp files; say what was done."""
    done = []
    path = root / JOURNAL
    if path.exists():
        try:
            journal = json.loads(path.read_text())
        except json.JSONDecodeError:  # torn journal write: the change never committed
            path.unlink()
            journal = None
        if journal is not None:
            apply(root, journal)
            done.append(f"finished an interrupted change ({len(journal['puts'])} files)")
    stray = [p for pattern in TEMP_GLOBS for p in root.glob(pattern)]
    for p in stray:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    if stray:
        done.append(f"removed {len(stray)} temporary files of an interrupted change")
    return done


def pending(root: Path) -> bool:
    return (root / JOURNAL).exists() or any(p for g in TEMP_GLOBS for p in root.glob(g))
