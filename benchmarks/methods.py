"""Issue 16 benchmark: every merge method on the same modules, at the coefficient chosen on
validation, in one table.

Offline (default): the three offline tasks on the embedded EfficientNet-Lite0 base, one
module per task and mode (nonlinear and tangent, trained as the core benchmark trains
them, or reused). For each method: the validation search (`compose --search`: alpha over
the method's own grid, the TALL lambdas per task for tall and consensus), then test
accuracy, absolute and normalised by each task's own module, the compose's time and its
peak RSS above the process's. The offline base is convolutional, so the SVD methods run
with `matrices=conv` (its 1x1 and kxk kernels as matrices); with the default `linear`
they would be plain means here.

The standard eight CLIP tasks: pass a pool on a CLIP base holding one module per task
(trained or imported), `--data-root`, and `--tasks Cars DTD ...` (modules found by task).

    python benchmarks/methods.py [--modes nonlinear,tangent] [--methods tsv,iso]
    python benchmarks/methods.py --pool clip-pool --data-root ~/data --modes nonlinear \\
        --tasks Cars DTD EuroSAT GTSRB MNIST RESISC45 SUN397 SVHN
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import RESULTS, peak_rss_bytes, reset_peak_rss, rss_bytes, write

from modpool import Pool
from modpool.demo import ensure_modules
from modpool.edit.search import compose_searched
from modpool.tasks import OFFLINE

TA_GRID = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.2]
SVD_GRID = [0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.5, 2.0, 2.5, 3.0]
METHODS = {
    "sum": ({}, TA_GRID),
    "ties": ({"density": 0.2}, TA_GRID),
    "dare": ({"drop": 0.9, "merge": "sum"}, TA_GRID),
    "magnitude": ({"density": 0.2}, TA_GRID),
    "tsv": ({"matrices": "conv"}, SVD_GRID),
    "iso": ({"matrices": "conv"}, SVD_GRID),
    "iso-cts": ({"matrices": "conv"}, SVD_GRID),
    "consensus": ({"k": 2}, TA_GRID),
    "tall": ({}, None),
}


def modules_of(pool: Pool, tasks: list[str], mode: str) -> list[str]:
    names = []
    for task in tasks:
        found = [
            e.name
            for e in pool.entries()
            if e.type == "module"
            and e.meta["task"].lower() == task.lower()
            and e.meta["mode"] == mode
        ]
        if not found:
            raise SystemExit(f"no {mode} module of {task} in {pool.root}: train or import one")
        names.append(found[0])
    return names


def one(pool: Pool, names: list[str], tasks: list[str], method: str, output: str) -> dict:
    params, grid = METHODS[method]
    if pool.exists(output):
        pool.forget(output)
    start = time.perf_counter()
    entry, _ = compose_searched(pool, names, output, method, params, 0, grid, show_progress=False)
    searched = time.perf_counter() - start
    recipe = entry.meta["recipe"]
    pool.forget(output)  # the compose alone, timed and measured
    before = rss_bytes()
    reset_peak_rss()
    start = time.perf_counter()
    alpha = recipe["ingredients"][0]["alpha"]
    pool.compose(names, output, method, alpha, recipe["params"], 0, entry.meta.get("search"))
    seconds = time.perf_counter() - start
    peak = peak_rss_bytes() - before
    tests = pool.evaluate(output, tasks, "test", show_progress=False)
    return {
        "alpha": alpha,
        "params": recipe["params"],
        "task_aware": bool(entry.meta.get("task_aware")),
        "accuracy": {r.task: r.accuracy for r in tests},
        "normalized": {r.task: r.normalized for r in tests},
        "mean_accuracy": sum(r.accuracy for r in tests) / len(tests),
        "mean_normalized": sum(r.normalized for r in tests) / len(tests),
        "compose_seconds": seconds,
        "compose_peak_bytes": peak,
        "search_seconds": searched,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=Path, default=Path(__file__).parent / ".pools" / "merge")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--tasks", nargs="*", default=list(OFFLINE))
    parser.add_argument("--modes", default="nonlinear,tangent")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--name", default="methods", help="results file name")
    parser.add_argument("--update", action="store_true", help="merge into the existing results")
    parser.add_argument(
        "--svd-grid", help="alpha grid for tsv/iso/iso-cts, a,b,c (default 0.2 to 3)"
    )
    args = parser.parse_args()
    if args.svd_grid:
        grid = [float(x) for x in args.svd_grid.split(",")]
        for method in ("tsv", "iso", "iso-cts"):
            METHODS[method] = (METHODS[method][0], grid)
    offline = args.tasks == list(OFFLINE)
    pool = Pool.open_or_create(args.pool, "offline" if offline else None, data_root=args.data_root)
    result = {"pool_base": pool.config["base"], "tasks": args.tasks, "modes": {}}
    if args.update and (RESULTS / f"{args.name}.json").exists():
        result = json.loads((RESULTS / f"{args.name}.json").read_text())
        result.pop("environment", None)
    for mode in args.modes.split(","):
        if offline:
            names = ensure_modules(pool, OFFLINE, mode, 1.0, show_progress=False)
        else:
            names = modules_of(pool, args.tasks, mode)
        single = {
            t: pool.evaluate(n, [t], "test", show_progress=False)[0].accuracy
            for n, t in zip(names, args.tasks)
        }
        rows = result["modes"].setdefault(mode, {"single": single})
        for method in args.methods.split(","):
            rows[method] = one(pool, names, args.tasks, method, f"bench-{method}-{mode}")
            rows[method]["grid"] = METHODS[method][1]
            row = rows[method]
            print(
                f"{mode:9s} {method:9s} alpha {row['alpha']:<4g} acc {100 * row['mean_accuracy']:.1f} "
                f"norm {100 * row['mean_normalized']:.1f}  compose {row['compose_seconds']:.2f} s",
                flush=True,
            )
            write(args.name, result)
    write(args.name, result)


if __name__ == "__main__":
    main()
