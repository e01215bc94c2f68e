"""Head files (`heads/<task>.safetensors`): a task's frozen classifier, cached once per pool.

A head is checked on read against the pool's fingerprint and the task's class names, so a
stale head (another base, renamed classes) is refused instead of silently used. The store
only knows the head's tensors and how to apply them (`normalize`, `scale`); building and
using a head belong to the bases and training.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load, save

from ..errors import ModpoolError
from .atomic import atomic_write_bytes
from .layout import HEAD_FORMAT
from .tensorfile import parse_header


@dataclass
class HeadRecord:
    tensors: dict[str, torch.Tensor]
    normalize: bool
    scale: float


def head_path(root: Path, task: str) -> Path:
    """heads/<task>.safetensors; a task name with other characters gets a hashed key."""
    key = re.sub(r"[^A-Za-z0-9._-]", "_", task)
    if key != task:
        key = f"{key}-{hashlib.sha256(task.encode()).hexdigest()[:8]}"
    return Path(root) / "heads" / f"{key}.safetensors"


def write_head(
    path: Path, record: HeadRecord, task: str, classnames: list[str], fingerprint: str, shots: int
) -> None:
    meta = {
        "format": HEAD_FORMAT,
        "task": task,
        "base_fingerprint": fingerprint,
        "classnames": json.dumps(classnames),
        "normalize": str(record.normalize),
        "scale": repr(record.scale),
        "shots": str(shots),
    }
    tensors = {k: v.contiguous() for k, v in record.tensors.items()}
    atomic_write_bytes(path, save(tensors, metadata=meta))


def read_head(path: Path, task: str, classnames: list[str], fingerprint: str) -> HeadRecord:
    data = path.read_bytes()
    _, meta, _ = parse_header(data, path.name)
    if meta.get("format") != HEAD_FORMAT or meta.get("base_fingerprint") != fingerprint:
        raise ModpoolError(f"{path} is not a head for this pool's base: delete it to rebuild it")
    if json.loads(meta.get("classnames", "[]")) != classnames:
        raise ModpoolError(f"{path} was built for other class names of {task}: delete it")
    return HeadRecord(load(data), meta["normalize"] == "True", float(meta["scale"]))
