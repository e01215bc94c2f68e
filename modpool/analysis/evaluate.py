"""Evaluating the base, a module or a composition: top-1 accuracy per task and split, and
accuracy normalised by each task's own module (SPEC 5). Every result goes to the pool's eval
log, which is also the cache: an artifact is named there by its sha256, so a result is
reused exactly while the file is unchanged."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ModpoolError
from ..model.accuracy import accuracy
from ..store.access import require_usable
from ..store.layout import Entry, labels
from ..tasks import SPLITS, Task

if TYPE_CHECKING:
    from ..pool import Pool


@dataclass
class EvalRow:
    target: str
    task: str
    split: str
    accuracy: float
    normalized: float | None
    examples: int
    cached: bool = False
    task_aware: bool = False  # the model used the task's own mask (tall): it knew the task


def evaluate(
    pool: Pool,
    target: str,
    tasks: list[str] | None = None,
    split: str = "test",
    show_progress: bool | None = None,
    use_cache: bool = True,
    allow: list[str] | str | None = None,
) -> list[EvalRow]:
    """Top-1 accuracy per task, and accuracy normalised by each task's own module. `allow`:
    the caller's access rights, which the target must fit."""
    if allow is not None and target != "base":
        require_usable(pool, target, labels(allow))
    if split not in SPLITS:
        raise ModpoolError(f"unknown split {split!r}: use val or test")
    entry = None if target == "base" else pool.entry(target)
    tasks = tasks or (entry.tasks if entry else None)
    if not tasks:
        raise ModpoolError("say which task to evaluate the base on: --task NAME")
    rows = []
    for task_name in tasks:
        task = pool.task(task_name)
        acc, n, cached = _accuracy(pool, target, entry, task, split, show_progress, use_cache)
        own = own_module(pool, entry, task.name) if entry else None
        normalized = None
        if own is not None:
            own_acc = acc
            if own != target:
                own_entry = pool.entry(own)
                own_acc = _accuracy(pool, own, own_entry, task, split, show_progress, use_cache)[0]
            normalized = acc / own_acc if own_acc else None
        aware = bool(entry and entry.meta.get("task_aware"))
        rows.append(EvalRow(target, task.name, split, acc, normalized, n, cached, aware))
    return rows


def _accuracy(
    pool: Pool,
    target: str,
    entry: Entry | None,
    task: Task,
    split: str,
    show_progress: bool | None,
    use_cache: bool,
) -> tuple[float, int, bool]:
    sha = f"base:{pool.fingerprint}" if entry is None else pool.hashes.sha256(entry.path)
    if use_cache:
        for record in reversed(pool.history()):
            key = (record.get("sha256"), record.get("task"), record.get("split"))
            if key == (sha, task.name, split) and "accuracy" in record:
                return record["accuracy"], record["examples"], True
    data = task.load(split, pool.base.image_size)
    model = pool.model(target, task.name)
    description = f"eval {target} on {task.name}"
    acc = accuracy(model, data, show_progress=show_progress, description=description)
    record = {"target": target, "sha256": sha, "task": task.name, "split": split}
    pool.record_eval({**record, "accuracy": acc, "examples": len(data)})
    return acc, len(data), False


def own_module(pool: Pool, entry: Entry, task: str) -> str | None:
    """The module of `task` inside `entry` (itself for a module), for normalisation."""
    if entry.type == "module":
        return entry.name if entry.meta["task"] == task else None
    for ingredient in entry.ingredients:
        if not pool.exists(ingredient["name"]):
            continue
        found = own_module(pool, pool.entry(ingredient["name"]), task)
        if found:
            return found
    return None
