"""Writing a module into a pool: a delta over the base's image tower, validated against the
manifest, encoded in its storage form, staged and logged in one change."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from ..errors import ModpoolError
from .artifact import EXTRA_PREFIX, FORMAT, all_finite, encode_metadata, to_bytes
from .encoding import Storage, encode_masked
from .journal import Transaction
from .layout import Entry, digest, now, versions
from .tensorfile import TensorWriter

if TYPE_CHECKING:
    from ..pool import Pool

KEPT_ON_COMPACT = ("hparams", "metrics", "fisher", "lineage")


def save_module(
    pool: Pool,
    name: str,
    delta: dict[str, torch.Tensor],
    task: str,
    kind: str,
    mode: str | None = None,
    hparams: dict | None = None,
    seed: int = 0,
    metrics: dict | None = None,
    extra_meta: dict | None = None,
    fisher: dict[str, torch.Tensor] | None = None,
    cleanup: list[str] | None = None,
    storage: Storage | None = None,
) -> Entry:
    """Store a module, with its task's Fisher at the base when given (bfloat16: half the
    bytes, float32's range). `storage` picks the stored dtype and density (compact
    modules); the default is dense float32. `cleanup` lists pool files the same change
    deletes (a finished run's checkpoint)."""
    storage = storage or Storage()
    check_delta(pool.manifest, delta, name)
    tensors = {k: v.float() for k, v in delta.items()}
    if fisher:
        check_delta(pool.manifest, fisher, name)
        tensors |= {f"{EXTRA_PREFIX}{k}": v.to(torch.bfloat16) for k, v in fisher.items()}
    extra = {"hparams": hparams or {}, "seed": str(seed), "metrics": metrics or {}}
    meta = module_meta(pool, task, kind, mode, extra | (extra_meta or {}), storage)
    record = {"action": "add-module", "task": task, "kind": kind}
    return _store(pool, name, to_bytes(tensors, meta, storage), record, cleanup)


def save_masked_module(
    pool: Pool,
    name: str,
    delta: dict[str, torch.Tensor],
    masks: dict[str, torch.Tensor],
    task: str,
    kind: str,
    mode: str,
    mask_meta: dict,
    cleanup: list[str] | None = None,
) -> Entry:
    """Store `delta` where `masks` hold, as values plus the masks' bits (1 bit per weight):
    a sparse module that composes, exports and forgets like any other, and whose file
    keeps the mask itself. `mask_meta` (what was masked, how, kept fractions) goes into
    its `mask` metadata."""
    check_delta(pool.manifest, delta, name)
    tensors = {}
    for key, value in delta.items():
        tensors |= encode_masked(key, value, masks[key])
    meta = module_meta(pool, task, kind, mode, {"mask": mask_meta})
    record = {"action": "add-mask", "task": task, "of": mask_meta.get("of")}
    return _store(pool, name, to_bytes(tensors, meta), record, cleanup)


def _store(pool: Pool, name: str, data: bytes, record: dict, cleanup: list[str] | None) -> Entry:
    """One change: the new module file, its audit record, and the files it makes obsolete
    (a finished run's checkpoint)."""
    with pool.change() as txn:
        pool.require_new(name)
        pool.stage(txn, f"modules/{name}.safetensors", data)
        txn.log({"time": now(), "name": name, "sha256": digest(data), **record})
        for extra_file in cleanup or []:
            txn.delete(extra_file)
    return pool.entry(name)


def module_meta(
    pool: Pool,
    task: str,
    kind: str,
    mode: str | None = None,
    extra: dict | None = None,
    storage: Storage | None = None,
) -> dict:
    """A module's metadata: what it is, which base it belongs to, how it is stored."""
    storage = storage or Storage()
    return {
        "type": "module",
        "kind": kind,
        "mode": mode or kind,
        "task": task,
        "base": pool.config["base"],
        "base_fingerprint": pool.fingerprint,
        "dtype": storage.torch_name,
        "storage": storage.to_dict(),
        "hparams": {},
        "seed": "0",
        "metrics": {},
        "versions": versions(),
        "created": now(),
        **(extra or {}),
    }


def stream_module(
    pool: Pool,
    txn: Transaction,
    name: str,
    meta: dict,
    shapes: dict[str, list[int]],
    tensor_of: Callable[[str], torch.Tensor],
) -> str:
    """Write a dense float32 module into `txn` one tensor at a time (`tensor_of(name)` is
    called once per tensor, in the file's order); returns its sha256."""
    for key, shape in shapes.items():
        if key not in pool.manifest or list(pool.manifest[key][0]) != list(shape):
            raise ModpoolError(f"{name}: '{key}' {list(shape)} is not a parameter of this base")
    plan = [(key, "F32", list(shape)) for key, shape in shapes.items()]
    header = encode_metadata({"format": FORMAT, **meta})
    rel = f"modules/{name}.safetensors"
    with txn.stream(rel) as f, TensorWriter(f, plan, header) as writer:
        for key in writer.order:
            value = tensor_of(key).float()
            if not all_finite(value):
                raise ModpoolError(
                    f"{name}: '{key}' has NaN or infinite values; nothing was written"
                )
            writer.write(key, value)
        sha = writer.finish()
    pool.remember(txn, rel, sha)
    return sha


def check_delta(manifest: dict, delta: dict[str, torch.Tensor], name: str) -> None:
    """Every tensor a parameter of the base, of its shape, and finite."""
    for key, tensor in delta.items():
        if key not in manifest:
            raise ModpoolError(f"{name}: '{key}' is not a parameter of this pool's base")
        if list(tensor.shape) != list(manifest[key][0]):
            raise ModpoolError(
                f"{name}: '{key}' has shape {list(tensor.shape)}, expected {manifest[key][0]}"
            )
        if not torch.isfinite(tensor).all():
            raise ModpoolError(f"{name}: '{key}' has NaN or infinite values; nothing was written")


def compact(pool: Pool, name: str, output: str, storage: Storage) -> Entry:
    """Store module `name` again as `output` in a compact form (dtype, density); the
    original stays, so compositions that use it are unchanged."""
    artifact = pool.read(name)
    if artifact.meta["type"] != "module":
        raise ModpoolError(f"{name} is a composition: compact its modules, or compose with --dtype")
    meta = artifact.meta
    return save_module(
        pool,
        output,
        artifact.tensors,
        meta["task"],
        meta["kind"],
        meta["mode"],
        seed=int(meta.get("seed", 0)),
        extra_meta={k: meta[k] for k in KEPT_ON_COMPACT if k in meta}
        | {"compacted_from": {"name": name, "sha256": artifact.sha256}},
        fisher=artifact.extra or None,
        storage=storage,
    )
