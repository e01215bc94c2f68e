"""Issue 2 benchmark: the core loop on the offline base and the three offline tasks.

For nonlinear and tangent modules: single-task accuracy of the base and of each module,
`add` of all three at the alpha picked on validation (absolute and normalised), the
effect of `negate` on the target and on the other tasks, and the time per training
step and peak memory of tangent relative to nonlinear (measured in one run).

    python benchmarks/offline_core.py [--epochs 1] [--pool benchmarks/.pools/core]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from _common import run_isolated, write

from modpool import Pool
from modpool.demo import ensure_modules
from modpool.edit.search import DEFAULT_GRID, search_alpha
from modpool.tasks import OFFLINE

STEP_PROBE = """
import json, time, torch
from _common import peak_rss_bytes, reset_peak_rss, rss_bytes
from modpool import Pool
from modpool.train import TrainConfig, fit
pool = Pool({pool!r}); task = pool.task("mnist"); head = pool.head(task, show_progress=False)
data = task.load("train", pool.base.image_size)
reset_peak_rss()
before = rss_bytes()
cfg = TrainConfig(mode={mode!r}, steps={steps}, batch_size={batch}, warmup=1, lr=2e-5)
result = fit(pool.base, head, data, cfg, show_progress=False)
print(json.dumps({{"seconds_per_step": result.seconds / result.steps,
                  "peak_rss_above_start": peak_rss_bytes() - before}}))
"""


def step_costs(pool: Path, steps: int = 30, batch: int = 32) -> dict:
    """Time per step and peak memory of each mode, each in its own process."""
    out = {}
    for mode in ("nonlinear", "tangent"):
        out[mode] = run_isolated(
            STEP_PROBE.format(pool=str(pool), mode=mode, steps=steps, batch=batch)
        )
    out["ratio_time"] = out["tangent"]["seconds_per_step"] / out["nonlinear"]["seconds_per_step"]
    out["ratio_memory"] = (
        out["tangent"]["peak_rss_above_start"] / out["nonlinear"]["peak_rss_above_start"]
    )
    out["batch_size"] = batch
    return out


def accuracy_table(pool: Pool, target: str) -> dict:
    rows = pool.evaluate(target, list(OFFLINE), "test", show_progress=False)
    return {r.task: {"accuracy": r.accuracy, "normalized": r.normalized} for r in rows}


def run_mode(pool: Pool, mode: str, epochs: float) -> dict:
    names = ensure_modules(pool, OFFLINE, mode, epochs, show_progress=False)
    modules = {n: accuracy_table(pool, n) for n in names}
    start = time.perf_counter()
    alpha, table = search_alpha(pool, names, DEFAULT_GRID, show_progress=False)
    search_seconds = time.perf_counter() - start
    composition = f"add-all-{mode}"
    if not pool.exists(composition):
        pool.add(names, composition, alpha)
    negations = {}
    for name in names:
        negated = f"neg-{name}"
        if not pool.exists(negated):
            pool.negate(name, negated, 1.0)
        negations[name] = accuracy_table(pool, negated)
    return {
        "modules": modules,
        "alpha_search": {
            "grid": DEFAULT_GRID,
            "best_alpha": alpha,
            "seconds": search_seconds,
            "table": [
                {"alpha": r.alpha, "val_accuracy": r.accuracy, "mean_normalized": r.mean_normalized}
                for r in table
            ],
        },
        "add_all": accuracy_table(pool, composition),
        "negate_alpha_1": negations,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--pool", type=Path, default=Path(__file__).parent / ".pools" / "core")
    parser.add_argument("--fresh", action="store_true", help="delete the pool first")
    parser.add_argument(
        "--step-cost-only",
        action="store_true",
        help="re-measure only the step cost into the existing results",
    )
    args = parser.parse_args()
    if args.step_cost_only:
        import json

        from _common import RESULTS

        result = json.loads((RESULTS / "offline_core.json").read_text())
        result.pop("environment")
        result["step_cost"] = step_costs(args.pool)
        write("offline_core", result)
        return
    if args.fresh and args.pool.exists():
        shutil.rmtree(args.pool)
    pool = Pool.open_or_create(args.pool, "offline")
    result = {
        "epochs": args.epochs,
        "base": pool.config["base"],
        "head_shots": pool.config["head_shots"],
        "base_accuracy": {
            r.task: r.accuracy
            for r in pool.evaluate("base", list(OFFLINE), "test", show_progress=False)
        },
    }
    for mode in ("nonlinear", "tangent"):
        result[mode] = run_mode(pool, mode, args.epochs)
    result["step_cost"] = step_costs(args.pool)
    write("offline_core", result)


if __name__ == "__main__":
    main()
