"""Module and composition files: safetensors with validated headers and typed metadata.

A file is never trusted: the header is parsed and checked by hand (sizes, offsets,
dtypes, shapes, metadata types) before safetensors touches the bytes, and every tensor
is checked against the base's parameter manifest and for finite values.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .errors import ModpoolError
from .storage import atomic_write_bytes

FORMAT = "modpool/1"
MAX_HEADER_BYTES = 64 * 1024 * 1024
JSON_FIELDS = ("hparams", "metrics", "versions", "recipe", "lineage", "tasks", "search", "fisher")
REQUIRED_FIELDS = ("format", "type", "kind", "mode", "base", "base_fingerprint")
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
TORCH_DTYPE = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
}
DTYPE_NAME = {v: k for k, v in TORCH_DTYPE.items()}

Manifest = dict[str, tuple[list[int], str]]
EXTRA_PREFIX = "fisher/"  # per-parameter side tensors (a module's Fisher), same shapes


@dataclass
class Artifact:
    """A loaded module or composition: its tensors, decoded metadata and file hash."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    sha256: str = ""
    path: Path | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

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


def to_bytes(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> bytes:
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return st_save(contiguous, metadata=encode_metadata({"format": FORMAT, **meta}))


def save_artifact(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> str:
    """Write atomically; returns the sha256 of the bytes written."""
    data = to_bytes(tensors, meta)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def parse_header(data: bytes, where: str) -> tuple[dict[str, dict], dict[str, str], int]:
    """Validate a safetensors header; return (tensor entries, raw metadata, data start)."""
    if len(data) < 8:
        raise ModpoolError(f"{where}: not a safetensors file (only {len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES or 8 + n > len(data):
        raise ModpoolError(
            f"{where}: not a safetensors file or truncated (header claims {n} bytes, "
            f"file has {len(data)})"
        )
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModpoolError(f"{where}: not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise ModpoolError(f"{where}: malformed safetensors header (not an object)")
    raw_meta = header.pop("__metadata__", {})
    if not isinstance(raw_meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw_meta.items()
    ):
        raise ModpoolError(f"{where}: malformed metadata (must map strings to strings)")
    data_len = len(data) - 8 - n
    spans = []
    for name, entry in header.items():
        _check_entry(name, entry, data_len, where)
        spans.append(tuple(entry["data_offsets"]))
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise ModpoolError(f"{where}: malformed safetensors data (overlapping or gaps)")
        position = end
    if position != data_len:
        raise ModpoolError(
            f"{where}: truncated or padded data ({data_len} bytes, expected {position})"
        )
    return header, raw_meta, 8 + n


def _check_entry(name: str, entry: Any, data_len: int, where: str) -> None:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise ModpoolError(f"{where}: malformed entry for tensor '{name}'")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in ITEMSIZE:
        raise ModpoolError(f"{where}: tensor '{name}' has dtype {dtype!r}; expected a float type")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ModpoolError(f"{where}: tensor '{name}' has a malformed shape")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= data_len
    ):
        raise ModpoolError(f"{where}: tensor '{name}' points outside the file (truncated?)")
    if offsets[1] - offsets[0] != prod(shape) * ITEMSIZE[dtype]:
        raise ModpoolError(f"{where}: tensor '{name}' size does not match its shape")


def read_metadata(path: Path) -> dict[str, Any]:
    """Metadata only, validated, without loading tensors."""
    data = _read(path)
    _, raw_meta, _ = parse_header(data, _where(path))
    return _check_meta(decode_metadata(raw_meta, _where(path)), _where(path))


def load_artifact(
    path: Path, manifest: Manifest | None = None, fingerprint: str | None = None
) -> Artifact:
    """Load and fully validate a module or composition file."""
    where = _where(path)
    data = _read(path)
    return load_artifact_bytes(data, where, manifest, fingerprint, path)


def load_artifact_bytes(
    data: bytes,
    where: str,
    manifest: Manifest | None = None,
    fingerprint: str | None = None,
    path: Path | None = None,
) -> Artifact:
    header, raw_meta, _ = parse_header(data, where)
    meta = _check_meta(decode_metadata(raw_meta, where), where)
    if fingerprint is not None and meta["base_fingerprint"] != fingerprint:
        raise ModpoolError(
            f"{where} was made from another base (fingerprint {meta['base_fingerprint'][:12]}, "
            f"this pool's base is {fingerprint[:12]}); modules of different bases cannot be mixed"
        )
    if manifest is not None:
        _check_against_manifest(header, manifest, where)
    tensors = st_load(data)
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise ModpoolError(
                f"{where}: tensor '{name}' contains NaN or infinite values; "
                "the file is unusable (retrain the module or forget it)"
            )
    extra = {
        k.removeprefix(EXTRA_PREFIX): tensors.pop(k)
        for k in list(tensors)
        if k.startswith(EXTRA_PREFIX)
    }
    return Artifact(tensors, meta, hashlib.sha256(data).hexdigest(), path, extra)


def _check_meta(meta: dict[str, Any], where: str) -> dict[str, Any]:
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


def _check_against_manifest(header: dict[str, dict], manifest: Manifest, where: str) -> None:
    for name, entry in header.items():
        name = name.removeprefix(EXTRA_PREFIX)
        if name not in manifest:
            raise ModpoolError(f"{where}: tensor '{name}' is not a parameter of this pool's base")
        shape, _ = manifest[name]
        if list(entry["shape"]) != list(shape):
            raise ModpoolError(
                f"{where}: tensor '{name}' has shape {entry['shape']}, the base has {list(shape)}"
            )


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ModpoolError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise ModpoolError(f"{path} is a directory, expected a .safetensors file") from None


def _where(path: Path) -> str:
    return Path(path).name


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
