"""What a pool directory holds, and how its files and names are spelled.

pool.json               base spec, fingerprint, parameter manifest, settings
heads/<task>.safetensors
modules/<name>.safetensors
compositions/<name>.safetensors
checkpoints/<name>.safetensors   an interrupted finetune or mask, until it finishes
evals.jsonl             every evaluation (also the cache for repeated ones)
hashes.jsonl            a cache of file hashes (see hashes.py)
audit.jsonl             every change: finetune, compose, import, forget
.lock                   held while the pool changes
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import count
from pathlib import Path
from typing import Any

import torch

from ..errors import ModpoolError
from ..version import __version__
from .artifact import read_metadata

POOL_FORMAT = "modpool-pool/1"
HEAD_FORMAT = "modpool-head/1"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")
RESERVED = {"base"}
KINDS = {"modules": "module", "compositions": "composition"}  # folder -> artifact type
PUBLIC = "public"  # the access label everyone holds


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def versions() -> dict[str, str]:
    """Library versions recorded in every file, read from package metadata (importing timm
    or open_clip just to ask would cost seconds in a command that needs neither)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"modpool": __version__, "torch": torch.__version__}
    for key, dist in (
        ("timm", "timm"),
        ("safetensors", "safetensors"),
        ("open_clip", "open_clip_torch"),
    ):
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def check_name(name: str, what: str = "name") -> str:
    if not NAME_RE.match(name) or name in RESERVED or name.endswith(".tmp"):
        raise ModpoolError(
            f"invalid {what} {name!r}: use letters, digits, '.', '_', '@' and '-' (up to 100, "
            "starting with a letter or digit; 'base' is reserved)"
        )
    return name


def safe_name(text: str) -> str:
    """`text` with every character a name may not hold replaced by '-'."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", text)


def default_module_name(task: str, mode: str, taken: Callable[[str], bool]) -> str:
    """A new module's name: the task as typed (`cars`), or, when a module already has that
    name, `cars-MODE`, then `cars-MODE-2`, ...: never one in use."""
    return next(n for n in name_candidates(task, mode) if not taken(n))


def name_candidates(task: str, mode: str) -> Iterator[str]:
    """`cars`, `cars-MODE`, `cars-MODE-2`, ... (a folder task by its folder's name)."""
    stem = Path(task.removeprefix("folder:")).name if task.startswith("folder:") else task
    stem = safe_name(stem)
    yield check_name(stem)
    yield check_name(f"{stem}-{mode}")
    for i in count(2):
        yield check_name(f"{stem}-{mode}-{i}")


LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}$")


def labels(values: list[str] | str | None) -> list[str]:
    """Access labels from a list or a comma-separated string, checked, sorted."""
    if values is None:
        return []
    items = (
        values.split(",") if isinstance(values, str) else [x for v in values for x in v.split(",")]
    )
    out = sorted({v.strip() for v in items if v.strip()})
    for label in out:
        if not LABEL_RE.match(label):
            raise ModpoolError(f"invalid access label {label!r}: letters, digits and . _ : @ -")
    return out


@dataclass
class Entry:
    """A module or composition as listed: metadata from the header, no tensors loaded."""

    name: str
    path: Path
    meta: dict[str, Any]

    @property
    def type(self) -> str:
        return self.meta["type"]

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def tasks(self) -> list[str]:
        return tasks_of(self.meta)

    @property
    def ingredients(self) -> list[dict]:
        return self.meta.get("recipe", {}).get("ingredients", [])

    @property
    def source(self) -> str:
        """Who or what a module's training data came from (its task, unless told)."""
        return self.meta.get("source") or self.meta.get("task", "?")

    @property
    def access(self) -> list[str]:
        """The access labels of a module's data: a holder of any of them may use it."""
        return list(self.meta.get("access") or [PUBLIC])

    @property
    def mask_of(self) -> str | None:
        """What a masked module was made from (a module's name, or "base"); None for any
        other entry."""
        return (self.meta.get("mask") or {}).get("of")

    @property
    def trained_module(self) -> bool:
        """A module in its own right: not a composition, not a mask made from one."""
        return self.type == "module" and self.mask_of is None


def tasks_of(meta: dict) -> list[str]:
    """The tasks an artifact serves: its own task, or its composition's tasks."""
    return meta.get("tasks") or [meta["task"]]


def read_config(root: Path) -> dict:
    """pool.json, checked to be a pool's."""
    path = root / "pool.json"
    if not path.exists():
        raise ModpoolError(f"no pool at {root}: create one with `modpool init --pool {root}`")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ModpoolError(f"{path} is corrupt (not JSON)") from None
    if config.get("format") != POOL_FORMAT:
        raise ModpoolError(f"{path} is not a modpool pool (format {config.get('format')!r})")
    return config


def list_entries(root: Path) -> list[Entry]:
    """Every module and composition, metadata only; an unreadable file is listed with its
    error rather than hiding the others."""
    out = []
    for sub, type_ in KINDS.items():
        for path in sorted((root / sub).glob("*.safetensors")):
            try:
                meta = read_metadata(path)
            except ModpoolError as exc:
                meta = {"type": type_, "kind": "?", "mode": "?", "error": str(exc)}
            out.append(Entry(path.stem, path, meta))
    return out
