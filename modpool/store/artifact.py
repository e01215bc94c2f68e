"""Module and composition files: safetensors with validated headers and typed metadata.

A file is never trusted: the header is parsed and checked by hand (sizes, offsets,
dtypes, shapes, metadata types) before any tensor is read, and every tensor is checked
against the base's parameter manifest and for finite values. Files are opened through a
memory map (`tensorfile.TensorFile`) and decoded one tensor at a time (`ArtifactFile`),
so that composing many large modules never holds more than a few tensors.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import torch
from safetensors.torch import save as st_save

from ..errors import ModpoolError
from . import encoding
from .atomic import atomic_write_bytes
from .tensorfile import TensorFile

FORMAT = "modpool/1"
JSON_FIELDS = (
    "hparams",
    "metrics",
    "versions",
    "recipe",
    "lineage",
    "tasks",
    "search",
    "fisher",
    "storage",
    "compacted_from",
    "imported_from",
    "task_aware",
    "mask",
    "access",
)
REQUIRED_FIELDS = ("format", "type", "kind", "mode", "base", "base_fingerprint")

Manifest = dict[str, tuple[list[int], str]]
EXTRA_PREFIX = "fisher/"  # per-parameter side tensors (a module's Fisher), same shapes
# a task-aware composition's per-task masks, bit-packed: taskmask/<parameter>/<task>
TASK_MASK_PREFIX = "taskmask/"


def mask_key(name: str, task: str) -> str:
    return f"{TASK_MASK_PREFIX}{name}/{quote(task, safe='')}"


def parse_mask_key(key: str) -> tuple[str, str]:
    """(parameter, task) of a task mask's key."""
    name, _, task = key.removeprefix(TASK_MASK_PREFIX).rpartition("/")
    return name, unquote(task)


@dataclass
class Artifact:
    """A loaded module or composition: its tensors, decoded metadata and file hash."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    sha256: str = ""
    path: Path | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    task_masks: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def for_task(self, task: str | None) -> dict[str, torch.Tensor]:
        """The delta a task sees: a task-aware composition's delta under that task's mask."""
        if not self.task_masks:
            return self.tensors
        if task not in self.task_masks:
            known = ", ".join(sorted(self.task_masks))
            raise ModpoolError(
                f"{self.path.stem if self.path else 'this composition'} is task-aware (a mask per "
                f"task: {known}): say which of them it serves"
                + (f", not {task!r}" if task else " (--task T)")
            )
        masks = self.task_masks[task]
        return {n: v * masks[n] if n in masks else v for n, v in self.tensors.items()}

    @property
    def kind(self) -> str:
        return self.meta["kind"]


def encode_metadata(meta: dict[str, Any]) -> dict[str, str]:
    """safetensors metadata is strings only: nested values become JSON strings."""
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in meta.items()}


def decode_metadata(raw: dict[str, str], where: str) -> dict[str, Any]:
    meta: dict[str, Any] = dict(raw)
    for key in JSON_FIELDS:
        if key in meta:
            try:
                meta[key] = json.loads(meta[key])
            except json.JSONDecodeError:
                raise ModpoolError(f"{where}: metadata field '{key}' is not valid JSON") from None
    return meta


def to_bytes(
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    storage: encoding.Storage | None = None,
) -> bytes:
    """A whole artifact as bytes (for deltas already in memory); `storage` encodes the
    parameter tensors (keys under EXTRA_PREFIX are kept as they are)."""
    out = {}
    for key, value in tensors.items():
        value = value.detach().contiguous().cpu()
        if storage is None or key.startswith(EXTRA_PREFIX):
            out[key] = value
        else:
            out |= {k: v.contiguous() for k, v in storage.encode(key, value).items()}
    return st_save(out, metadata=encode_metadata({"format": FORMAT, **meta}))


def save_artifact(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> str:
    """Write atomically; returns the sha256 of the bytes written."""
    data = to_bytes(tensors, meta)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


class ArtifactFile:
    """An opened module or composition: header, metadata, base and manifest validated up
    front; tensors decoded on demand to dense float32 and checked finite."""

    def __init__(
        self, file: TensorFile, manifest: Manifest | None = None, fingerprint: str | None = None
    ):
        self.file, self.where = file, file.where
        self.meta = check_meta(decode_metadata(file.raw_meta, self.where), self.where)
        if fingerprint is not None and self.meta["base_fingerprint"] != fingerprint:
            raise ModpoolError(
                f"{self.where} was made from another base (fingerprint "
                f"{self.meta['base_fingerprint'][:12]}, this pool's base is {fingerprint[:12]}); "
                "modules of different bases cannot be mixed"
            )
        stored = encoding.parameters(file, (EXTRA_PREFIX, TASK_MASK_PREFIX))
        self.shapes: dict[str, list[int]] = {}
        for name, shape in stored.items():
            if manifest is not None and name not in manifest:
                raise ModpoolError(
                    f"{self.where}: tensor '{name}' is not a parameter of this pool's base"
                )
            expected = list(manifest[name][0]) if manifest is not None else shape
            if expected is None:
                raise ModpoolError(f"{self.where}: a compact tensor needs the pool's manifest")
            if shape is not None and list(shape) != expected:
                raise ModpoolError(
                    f"{self.where}: tensor '{name}' has shape {shape}, the base has {expected}"
                )
            self.shapes[name] = expected
        self.extra_names = [k for k in file.entries if k.startswith(EXTRA_PREFIX)]
        for key in self.extra_names:
            name = key.removeprefix(EXTRA_PREFIX)
            if manifest is not None and (
                name not in manifest or file.entries[key]["shape"] != list(manifest[name][0])
            ):
                raise ModpoolError(f"{self.where}: side tensor '{key}' does not fit the base")
            if file.entries[key]["dtype"] not in encoding.FLOAT_CODES:
                raise ModpoolError(f"{self.where}: side tensor '{key}' is not a float tensor")
        self.mask_keys = self._check_task_masks(file)

    def _check_task_masks(self, file: TensorFile) -> dict[tuple[str, str], str]:
        """(task, parameter) -> key of each bit-packed task mask, checked to fit."""
        keys = {}
        for key, entry in file.entries.items():
            if not key.startswith(TASK_MASK_PREFIX):
                continue
            name, task = parse_mask_key(key)
            if name not in self.shapes or not task:
                raise ModpoolError(f"{self.where}: task mask '{key}' names no stored tensor")
            if entry["dtype"] != "U8" or entry["shape"] != [-(-self.numel(name) // 8)]:
                raise ModpoolError(f"{self.where}: task mask '{key}' has the wrong size or type")
            keys[(task, name)] = key
        return keys

    def stored_mask(self, name: str) -> torch.Tensor | None:
        """The bitmask tensor `name` is stored with (a masked module's mask), or None."""
        return encoding.stored_mask(self.file, name, self.shapes[name])

    @property
    def mask_tasks(self) -> list[str]:
        return sorted({task for task, _ in self.mask_keys})

    def task_mask(self, task: str, name: str) -> torch.Tensor:
        """Task `task`'s mask of tensor `name` (boolean, the tensor's shape)."""
        packed = self.file.raw(self.mask_keys[(task, name)])
        return encoding.unpack_bits(packed, self.numel(name)).reshape(self.shapes[name])

    @classmethod
    def open(cls, path: Path | str, manifest=None, fingerprint=None) -> ArtifactFile:
        file = TensorFile.open(path)
        try:
            return cls(file, manifest, fingerprint)
        except BaseException:
            file.close()
            raise

    def __enter__(self) -> ArtifactFile:
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def names(self) -> list[str]:
        return sorted(self.shapes)

    def numel(self, name: str) -> int:
        return math.prod(self.shapes[name])

    def tensor(self, name: str, check: bool = True) -> torch.Tensor:
        """Dense float32; may be a view of the map: clone it to keep it past `close`.
        `check=False` skips the finite check, for callers that check what they derive
        (a NaN or infinity in any input always reaches a sum)."""
        value = encoding.decode(self.file, name, self.shapes[name])
        if check:
            _check_finite(value, name, self.where)
        return value

    def release(self, name: str) -> None:
        encoding.release(self.file, name)

    def sha256(self) -> str:
        return self.file.sha256()

    def load(self) -> Artifact:
        tensors = {n: self.tensor(n).clone() for n in self.names}
        extra = {}
        for key in self.extra_names:
            value = self.file.raw(key).clone()
            _check_finite(value, key, self.where)
            extra[key.removeprefix(EXTRA_PREFIX)] = value
        masks: dict[str, dict[str, torch.Tensor]] = {}
        for task, name in self.mask_keys:
            masks.setdefault(task, {})[name] = self.task_mask(task, name)
        return Artifact(tensors, self.meta, self.sha256(), None, extra, masks)


def read_metadata(path: Path) -> dict[str, Any]:
    """Metadata only, validated, without reading any tensor."""
    with TensorFile.open(path) as file:
        return check_meta(decode_metadata(file.raw_meta, file.where), file.where)


def load_artifact(
    path: Path, manifest: Manifest | None = None, fingerprint: str | None = None
) -> Artifact:
    """Load and fully validate a module or composition file."""
    with ArtifactFile.open(path, manifest, fingerprint) as opened:
        artifact = opened.load()
    artifact.path = Path(path)
    return artifact


def load_artifact_bytes(
    data: bytes,
    where: str,
    manifest: Manifest | None = None,
    fingerprint: str | None = None,
    path: Path | None = None,
) -> Artifact:
    with ArtifactFile(TensorFile.from_bytes(data, where), manifest, fingerprint) as opened:
        artifact = opened.load()
    artifact.path = path
    return artifact


def check_meta(meta: dict[str, Any], where: str) -> dict[str, Any]:
    if meta.get("format") != FORMAT:
        raise ModpoolError(f"{where}: not a modpool artifact (format {meta.get('format')!r})")
    missing = [k for k in REQUIRED_FIELDS if k not in meta]
    if missing:
        raise ModpoolError(f"{where}: metadata lacks {', '.join(missing)}")
    if meta["type"] not in ("module", "composition"):
        raise ModpoolError(f"{where}: unknown artifact type {meta['type']!r}")
    if meta["kind"] not in ("nonlinear", "tangent"):
        raise ModpoolError(f"{where}: unknown kind {meta['kind']!r}")
    return meta


def _check_finite(value: torch.Tensor, name: str, where: str) -> None:
    if not all_finite(value):
        raise ModpoolError(
            f"{where}: tensor '{name}' contains NaN or infinite values; "
            "the file is unusable (retrain the module or forget it)"
        )


def all_finite(value: torch.Tensor) -> bool:
    """True when no entry is NaN or infinite. A NaN or an infinity makes the sum non-finite,
    so a finite sum proves it in one pass without a mask; a non-finite sum (which finite
    values can also give, by overflow) is settled entry by entry."""
    if not value.is_floating_point():
        return True
    return bool(torch.isfinite(value.sum())) or bool(torch.isfinite(value).all())
