"""The main job on the embedded offline default: the whole workflow, no network."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .edit.search import search_alpha
from .pool import Pool
from .tasks import OFFLINE
from .train import defaults_for

DEMO_GRID = [0.2, 0.4, 0.6, 0.8, 1.0]


def run_demo(
    pool_path: Path,
    epochs: float = 1.0,
    mode: str = "nonlinear",
    show_progress: bool | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Fine-tune one module per offline task, add them at the alpha that validation picks,
    forget one, and report test accuracy of every step."""
    pool = Pool.open_or_create(pool_path, "offline")
    log(f"pool {pool.root} on base {pool.config['base']}")
    names = ensure_modules(pool, OFFLINE, mode, epochs, show_progress, log)
    alpha, _ = search_alpha(pool, names, DEMO_GRID, show_progress=show_progress)
    log(f"alpha picked on validation: {alpha:g}")
    composition = f"all-{mode}"
    if pool.exists(composition):
        pool.forget(composition)
    pool.add(names, composition, alpha)
    rows = [_row(pool, "base", "base", list(OFFLINE))]
    rows += [_row(pool, f"module {n}", n, list(OFFLINE)) for n in names]
    rows.append(_row(pool, f"add all (alpha {alpha:g})", composition, list(OFFLINE)))
    forgotten = names[-1]
    report = pool.forget(forgotten)
    log(f"forgot {forgotten}; rebuilt {', '.join(r['name'] for r in report.rebuilt)}")
    rows.append(_row(pool, f"after forget {forgotten}", composition, list(OFFLINE)))
    return {
        "pool": str(pool.root),
        "tasks": list(OFFLINE),
        "alpha": alpha,
        "rows": rows,
        "forgotten": forgotten,
    }


def ensure_modules(
    pool: Pool,
    tasks,
    mode: str,
    epochs: float,
    show_progress: bool | None = None,
    log: Callable[[str], None] = print,
    **settings,
) -> list[str]:
    """One module TASK-MODE per task, trained with the base's defaults for `epochs` unless
    the pool has it already (so an interrupted demo or benchmark picks up where it was).
    `settings` override TrainConfig fields (fisher_examples, say)."""
    names = []
    for task in tasks:
        name = f"{task}-{mode}"
        if not pool.exists(name):
            cfg = defaults_for(pool.base)
            cfg.mode, cfg.epochs, cfg.steps = mode, epochs, None
            for key, value in settings.items():
                setattr(cfg, key, value)
            log(f"fine-tuning {name} ({epochs:g} epoch(s))")
            pool.finetune(task, cfg, name, show_progress)
        names.append(name)
    return names


def _row(pool: Pool, label: str, target: str, tasks: list[str]) -> dict:
    results = pool.evaluate(target, tasks, "test", show_progress=False)
    return {
        "label": label,
        "target": target,
        "accuracy": {r.task: r.accuracy for r in results},
        "normalized": {r.task: r.normalized for r in results},
    }
