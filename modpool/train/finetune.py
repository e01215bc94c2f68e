"""Training a module in a pool: resolve the task and its head, plan the second-order
penalty (ita, iel), run the loop with checkpoints, store the module (SPEC 2)."""

from __future__ import annotations

from itertools import islice
from typing import TYPE_CHECKING

from ..errors import ModpoolError
from ..store.encoding import Storage
from ..store.layout import PUBLIC, Entry, default_module_name, labels, name_candidates
from .checkpoint import Checkpointer, checkpoint_rel
from .distributed import world
from .loop import TrainConfig, check_config, defaults_for, fit, total_steps

if TYPE_CHECKING:
    from ..pool import Pool


def finetune(
    pool: Pool,
    task_name: str,
    cfg: TrainConfig | None = None,
    name: str | None = None,
    show_progress: bool | None = None,
    with_modules: list[str] | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    storage: Storage | None = None,
    source: str | None = None,
    access: list[str] | None = None,
) -> Entry | None:
    """Train a module for one task and store it. For ita and iel, `with_modules` names the
    modules whose Fisher (ita) or composition (iel) shape it; by default every eligible
    module in the pool (see second_order.py). `storage` makes a compact module (dtype,
    density). `source` names where the training data came from (default: the task) and
    `access` its access labels (default: public). Under torchrun every rank trains and only
    rank 0 writes (and returns the entry)."""
    cfg = cfg or defaults_for(pool.base)
    check_config(cfg)
    if cfg.last_blocks is not None:
        pool.base.trainable(cfg.last_blocks)  # a bad K fails now, not after the head fit
    task = pool.task(task_name)
    name = name or module_name(pool, task_name, cfg.mode, resume)
    pool.require_new(name)  # fail before hours of training, and again when saving
    world_ = world(cfg.device)
    if world_.main:  # rank 0 builds and caches the head; the others read it
        head = pool.head(task, show_progress)
    world_.barrier()
    head = head if world_.main else pool.head(task, False)
    show_progress = show_progress if world_.main else False
    plan = _second_order_plan(pool, task, head, cfg, with_modules, show_progress)
    data = task.load("train", pool.base.image_size)
    checkpointer = _checkpointer(pool, name, task.name, cfg, len(data), checkpoint_every, resume)
    penalty = plan.penalty if plan else None
    result = fit(pool.base, head, data, cfg, show_progress, penalty, checkpointer)
    if not world_.main:
        world_.barrier()  # rank 0 is writing
        return None
    compartment = compartment_meta(task.name, source, access)
    entry = _store(pool, name, task.name, cfg, result, plan, world_.size, storage, compartment)
    world_.barrier()
    return entry


def _second_order_plan(pool, task, head, cfg, with_modules, show_progress):
    if cfg.mode in ("ita", "iel"):
        from .second_order import plan

        return plan(pool, task, head, cfg, with_modules, show_progress)
    if with_modules:
        raise ModpoolError("--with is for the ita and iel modes")
    return None


def _checkpointer(pool, name, task, cfg, examples, every, resume) -> Checkpointer:
    steps = total_steps(cfg, examples)
    every = max(50, steps // 10) if every is None else every
    path = pool.root / checkpoint_rel(name)
    return Checkpointer(path, every, cfg.to_dict() | {"task": task}, resume, pool.root / ".lock")


def _store(pool, name, task, cfg, result, plan, world_size, storage, compartment) -> Entry:
    metrics = {
        "train_loss": result.final_loss,
        "train_accuracy": result.train_accuracy,
        "seconds": result.seconds,
        "images_per_second": result.images_per_second,
    }
    ckpt = checkpoint_rel(name)
    return pool.save_module(
        name,
        result.delta,
        task,
        kind_of(cfg.mode),
        cfg.mode,
        cfg.to_dict() | {"steps_run": result.steps, "world_size": world_size},
        cfg.seed,
        metrics,
        extra_meta=(_second_order_meta(plan) or {}) | compartment,
        fisher=plan.fisher.fisher if plan else None,
        cleanup=[ckpt] if (pool.root / ckpt).exists() else None,
        storage=storage,
    )


def compartment_meta(task: str, source: str | None, access) -> dict:
    """A module's `source` (its task unless told) and `access` labels (public unless told)."""
    return {"source": source or task, "access": labels(access) or [PUBLIC]}


def module_name(pool: Pool, task: str, mode: str, resume: bool = False) -> str:
    """The default name of a new module: the task as typed (`cars`) while no module has
    that name, then `cars-MODE`, `cars-MODE-2`, ... With `resume`, the first of these
    that has an interrupted run's checkpoint, so that resuming finds the run it continues."""
    if resume:
        for name in islice(name_candidates(task, mode), 20):
            if (pool.root / checkpoint_rel(name)).exists() and not pool.exists(name):
                return name
    return default_module_name(task, mode, pool.exists)


def kind_of(mode: str) -> str:
    """The forward a mode's modules are used in: tangent, or the ordinary one."""
    return "tangent" if mode == "tangent" else "nonlinear"


def _second_order_meta(plan) -> dict | None:
    if plan is None:
        return None
    fisher = {
        "examples": plan.fisher.examples,
        "method": plan.fisher.method,
        "seconds": plan.fisher.seconds,
        "dtype": "bfloat16",
    }
    return {"fisher": fisher, "lineage": plan.lineage}
