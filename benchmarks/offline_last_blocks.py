"""Issue 6 benchmark: what linearising only the last blocks costs in accuracy.

On the offline base and tasks, tangent modules trained with `--last-blocks K` (1 epoch,
the offline defaults otherwise), next to whole-tower tangent and nonlinear modules: each
module's single-task test accuracy, and the sum of the three at the alpha picked on
validation (absolute, and normalised by each task's own module).

    python benchmarks/offline_last_blocks.py [--last-blocks 4] [--epochs 1]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from _common import write

from modpool import Pool
from modpool.edit.search import search_alpha
from modpool.tasks import OFFLINE
from modpool.train import defaults_for

POOLS = Path(__file__).parent / ".pools"
GRID = [0.2, 0.4, 0.6, 0.8, 1.0, 1.2]


def train(pool: Pool, mode: str, epochs: float, last_blocks: int | None) -> list[str]:
    suffix = mode if last_blocks is None else f"{mode}-last{last_blocks}"
    names = []
    for task in OFFLINE:
        name = f"{task}-{suffix}"
        if not pool.exists(name):
            cfg = defaults_for(pool.base)
            cfg.mode, cfg.epochs, cfg.steps, cfg.last_blocks = mode, epochs, None, last_blocks
            print("fine-tuning", name, flush=True)
            pool.finetune(task, cfg, name, show_progress=False)
        names.append(name)
    return names


def summary(pool: Pool, names: list[str], output: str) -> dict:
    single = {
        pool.entry(n).meta["task"]: pool.evaluate(n, None, "test", show_progress=False)[0].accuracy
        for n in names
    }
    if pool.exists(output):
        pool.forget(output)
    alpha, _ = search_alpha(pool, names, GRID, show_progress=False)
    pool.add(names, output, alpha)
    rows = pool.evaluate(output, list(OFFLINE), "test", show_progress=False)
    return {
        "single_task": single,
        "sum": {
            "alpha": alpha,
            "tasks": {r.task: {"accuracy": r.accuracy, "normalized": r.normalized} for r in rows},
            "mean_accuracy": sum(r.accuracy for r in rows) / len(rows),
            "mean_normalized": sum(r.normalized for r in rows) / len(rows),
        },
        "trained_parameters": sum(v.numel() for v in pool.read(names[0]).tensors.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--last-blocks", type=int, default=4)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--pool", type=Path, default=POOLS / "last_blocks")
    args = parser.parse_args()
    if not args.pool.exists() and (POOLS / "core").exists():
        shutil.copytree(POOLS / "core", args.pool)  # reuse its modules and heads
    pool = Pool.open_or_create(args.pool, "offline")
    result = {"epochs": args.epochs, "last_blocks": args.last_blocks, "variants": {}}
    for mode, k in (("nonlinear", None), ("tangent", None), ("tangent", args.last_blocks)):
        key = mode if k is None else f"{mode}-last{k}"
        names = train(pool, mode, args.epochs, k)
        result["variants"][key] = summary(pool, names, f"lb-sum-{key}")
        s = result["variants"][key]["sum"]
        print(key, s["alpha"], s["mean_accuracy"], s["mean_normalized"], flush=True)
    write("offline_last_blocks", result)


if __name__ == "__main__":
    main()
