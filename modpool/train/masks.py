"""Masking in a pool: learn which weights of a module (or of the base) a task needs, and
store the masked module (`masking.py` learns it; `store.modules.save_masked_module` keeps
the mask as bits beside the values).

A mask over module `cars` for its own task is stored as `cars@mask`: theta_0 + m * tau, a
sparse module. A mask over the base for task T (`--base`) is stored as `base@T`: the module
theta_0 * m - theta_0, i.e. the base with the weights the task does not need removed; its
stored bits are the removed weights (their complement is the mask). Either can be
evaluated, composed, exported and pushed, and is forgotten with its module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..errors import ModpoolError
from ..store.layout import Entry, check_name
from ..store.modules import save_masked_module
from ..tasks import canonical_name
from .checkpoint import Checkpointer, checkpoint_rel
from .loop import total_steps
from .masking import MaskConfig, kept_fractions, learn_mask

if TYPE_CHECKING:
    from ..pool import Pool


def mask(
    pool: Pool,
    name: str | None = None,
    task: str | None = None,
    on_base: bool = False,
    output: str | None = None,
    cfg: MaskConfig | None = None,
    show_progress: bool | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
) -> Entry:
    """Learn and store a mask over module `name` (on its task, or `task`), or over the base
    for `task` (`on_base`)."""
    cfg = cfg or MaskConfig()
    cfg.check()
    source, kind, mode, task = _source(pool, name, task, on_base)
    output = check_name(output or (f"base@{task}" if on_base else f"{source.name}@mask"))
    pool.require_new(output)
    spec = pool.task(task)
    head = pool.head(spec, show_progress)
    data = spec.load("train", pool.base.image_size)
    artifact = None if on_base else pool.read(source.name)
    checkpointer = _checkpointer(pool, output, cfg, len(data), checkpoint_every, resume, name, task)
    target = None if artifact is None else artifact.tensors
    result = learn_mask(pool.base, head, data, target, kind, cfg, show_progress, checkpointer)
    kept = kept_fractions(result.masks)
    total = sum(int(m.sum()) for m in result.masks.values())
    meta = {
        "of": "base" if on_base else source.name,
        "sha256": pool.fingerprint if on_base else artifact.sha256,
        "task": task,
        "stored": "removed" if on_base else "kept",
        "config": cfg.to_dict(),
        "steps": result.steps,
        "kept": kept,
        "kept_total": total / sum(m.numel() for m in result.masks.values()),
        "train_loss": result.final_loss,
        "train_accuracy": result.train_accuracy,
        "seconds": result.seconds,
    }
    delta, stored = _masked_delta(pool, artifact, result.masks)
    checkpoint = checkpoint_rel(output)
    cleanup = [checkpoint] if (pool.root / checkpoint).exists() else None
    return save_masked_module(pool, output, delta, stored, task, kind, mode, meta, cleanup)


def _source(pool: Pool, name: str | None, task: str | None, on_base: bool):
    """(source entry or None, kind, mode, task)."""
    if on_base:
        if name is not None:
            raise ModpoolError("--base masks the base's own weights: give a --task, not a module")
        if task is None:
            raise ModpoolError("--base needs the --task whose weights to find")
        return None, "nonlinear", "nonlinear", canonical_name(task)
    if name is None:
        raise ModpoolError("name the module to mask (or --base --task T for the base)")
    entry = pool.entry(name)
    if entry.type != "module":
        raise ModpoolError(f"{entry.name} is a composition: mask its modules")
    if entry.mask_of is not None:
        raise ModpoolError(f"{entry.name} is already a mask")
    task = canonical_name(task) if task else entry.meta["task"]
    return entry, entry.kind, entry.meta["mode"], task


def _masked_delta(pool: Pool, artifact, masks: dict[str, torch.Tensor]):
    """The delta to store and the positions it is stored at."""
    if artifact is not None:
        return {n: v * masks[n] for n, v in artifact.tensors.items()}, masks
    params0 = pool.base.trainable()
    removed = {n: ~m for n, m in masks.items()}
    return {n: -(params0[n].detach().float() * removed[n]) for n in masks}, removed


def _checkpointer(pool, output, cfg, examples, every, resume, name, task) -> Checkpointer:
    steps = total_steps(cfg, examples)
    every = max(50, steps // 10) if every is None else every
    config = cfg.to_dict() | {"of": name or "base", "task": task}
    path = pool.root / checkpoint_rel(output)
    return Checkpointer(path, every, config, resume, pool.root / ".lock")
