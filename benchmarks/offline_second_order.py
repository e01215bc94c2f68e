"""Issue 3 benchmark: the four training modes as a pool grows, on the offline base.

For each mode (nonlinear, tangent, ita, iel) three modules are trained one after another
(mnist, animals, digits); reported: each module's single-task accuracy, the absolute and
normalised accuracy of the composition of all three (mean, and sum at the best alpha on
validation), what forgetting one module does to the other tasks, and the time of the
Fisher pass relative to one training epoch. The benchmark works in its own pool (it
forgets modules); on first use that pool starts as a copy of offline_core.py's pool when
it exists, to reuse its nonlinear and tangent modules (training is deterministic).

    python benchmarks/offline_second_order.py [--epochs 1] [--fisher-examples 300]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from _common import write

from modpool import Pool
from modpool.demo import ensure_modules
from modpool.edit.search import search_alpha
from modpool.tasks import OFFLINE

POOLS = Path(__file__).parent / ".pools"
GRID = [0.2, 0.4, 0.6, 0.8, 1.0, 1.2]


def table(pool: Pool, target: str) -> dict:
    rows = pool.evaluate(target, list(OFFLINE), "test", show_progress=False)
    return {r.task: {"accuracy": r.accuracy, "normalized": r.normalized} for r in rows}


def summary(rows: dict) -> dict:
    accs = [v["accuracy"] for v in rows.values()]
    norms = [v["normalized"] for v in rows.values() if v["normalized"] is not None]
    return {
        "mean_accuracy": sum(accs) / len(accs),
        "mean_normalized": sum(norms) / len(norms) if norms else None,
    }


def run_mode(pool: Pool, mode: str, epochs: float, fisher_examples: int) -> dict:
    names = ensure_modules(
        pool, OFFLINE, mode, epochs, show_progress=False, fisher_examples=fisher_examples
    )
    cost = fisher_cost(pool, names) if mode in ("ita", "iel") else None
    out = {"fisher_cost": cost, "modules": {n: table(pool, n)[n.rsplit("-", 1)[0]] for n in names}}
    mean_name, sum_name = f"so-mean-{mode}", f"so-sum-{mode}"
    for name in (mean_name, sum_name):
        if pool.exists(name):
            pool.forget(name)
    pool.compose(names, mean_name, "mean")
    alpha, _ = search_alpha(pool, names, GRID, show_progress=False)
    pool.add(names, sum_name, alpha)
    out["mean"] = {"tasks": table(pool, mean_name)} | summary(table(pool, mean_name))
    out["sum"] = {"alpha": alpha, "tasks": table(pool, sum_name)} | summary(table(pool, sum_name))
    # forget digits: both compositions are rebuilt from mnist and animals
    report = pool.forget(names[-1])
    out["forget_digits"] = {
        "rebuilt": [r["name"] for r in report.rebuilt],
        "mean": table(pool, mean_name),
        "sum": table(pool, sum_name),
    }
    return out


def fisher_cost(pool: Pool, names: list[str]) -> dict:
    """Seconds per example of the Fisher pass vs of one training epoch."""
    out = {}
    for name in names:
        meta = pool.entry(name).meta
        task = meta["task"]
        fisher = meta["fisher"]
        per_example_fisher = fisher["seconds"] / fisher["examples"]
        train = meta["metrics"]
        per_example_train = 1.0 / train["images_per_second"]
        train_examples = len(pool.task(task).load("train", pool.base.image_size))
        out[name] = {
            "fisher_seconds": fisher["seconds"],
            "fisher_examples": fisher["examples"],
            "fisher_seconds_full_data_estimate": per_example_fisher * train_examples,
            "epoch_seconds": per_example_train * train_examples,
            "ratio_fisher_to_epoch": per_example_fisher / per_example_train,
        }
    return out


FISHER_PROBE = """
import json, time, torch
from modpool import Pool
from modpool.train.fisher import diagonal_fisher
from modpool.tasks.task import take
from modpool.train import TrainConfig, fit
pool = Pool({pool!r}); task = pool.task({task!r}); head = pool.head(task, show_progress=False)
data = take(task.load("train", pool.base.image_size), torch.arange({examples}))
fisher = diagonal_fisher(pool.base, head, data, 1, False, 0, None, show_progress=False)
cfg = TrainConfig(mode="nonlinear", steps=None, epochs=1.0, batch_size=32, warmup=0.1, lr=2e-5)
result = fit(pool.base, head, data, cfg, show_progress=False)
print(json.dumps({{"fisher_seconds": fisher.seconds, "epoch_seconds": result.seconds,
                  "examples": {examples}}}))
"""


def fisher_cost_quiet(pool: Path, examples: int) -> dict:
    """The Fisher pass vs one training epoch over the same examples, one quiet process per
    task (the costs recorded in the modules were taken on a shared CPU)."""
    from _common import run_isolated

    out = {}
    for task in OFFLINE:
        r = run_isolated(FISHER_PROBE.format(pool=str(pool), task=task, examples=examples))
        r["ratio_fisher_to_epoch"] = r["fisher_seconds"] / r["epoch_seconds"]
        out[task] = r
        print(task, r, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--fisher-examples", type=int, default=300)
    parser.add_argument("--pool", type=Path, default=POOLS / "second_order")
    parser.add_argument(
        "--fisher-cost-only",
        action="store_true",
        help="Only measure the Fisher pass against a training epoch, quietly; merge the "
        "figures into the existing results.",
    )
    args = parser.parse_args()
    if args.fisher_cost_only:
        import json

        from _common import RESULTS

        previous = json.loads((RESULTS / "offline_second_order.json").read_text())
        previous.pop("environment", None)
        previous["fisher_cost_quiet"] = fisher_cost_quiet(args.pool, args.fisher_examples)
        write("offline_second_order", previous)
        return
    if not args.pool.exists() and (POOLS / "core").exists():
        shutil.copytree(POOLS / "core", args.pool)
    pool = Pool.open_or_create(args.pool, "offline")
    start = time.perf_counter()
    result = {"epochs": args.epochs, "fisher_examples": args.fisher_examples, "modes": {}}
    for mode in ("nonlinear", "tangent", "ita", "iel"):
        result["modes"][mode] = run_mode(pool, mode, args.epochs, args.fisher_examples)
        print(
            mode,
            result["modes"][mode]["mean"]["mean_normalized"],
            result["modes"][mode]["sum"]["mean_normalized"],
            flush=True,
        )
    result["seconds"] = time.perf_counter() - start
    write("offline_second_order", result)


if __name__ == "__main__":
    main()
