"""Issue 18 benchmark: compartments on the offline base and tasks.

1. Sources. Each offline task's training data is split into `--sources` parts (seed 0),
   one nonlinear module trained per part (source `TASK-partI`, access label `partI`), with
   the core benchmark's settings. A holder of all rights composes the source modules;
   this is compared with the composition of modules trained on the union of the data (the
   core modules), both at the alpha validation picks; a holder of `part0` only gets the
   composition of the part-0 modules. The papers behind compartments report the union
   within a few percent.
2. Forgetting a source: time of `forget --source` with the compositions that use it.
3. Attribution: the tangent modules composed by `sum`; on each task's test data, how
   often its own module has the largest share of the predicted logit (`explain`).
4. Linearity: each nonlinear module's linearisation gap at alpha 1, against how it does in
   the three-task composition (normalised accuracy) and the disentanglement error of its
   pairs.

    python benchmarks/compartments.py [--sources 2] [--pool benchmarks/.pools/merge]
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import torch
from _common import write

from modpool import Pool
from modpool.demo import ensure_modules
from modpool.edit.search import compose_searched
from modpool.tasks import OFFLINE
from modpool.tasks.task import take
from modpool.train import defaults_for, fit

GRID = [0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0]


def source_modules(pool: Pool, parts: int) -> dict[str, list[str]]:
    """One module per (task, part of its training data), trained if missing."""
    out: dict[str, list[str]] = {}
    for task in OFFLINE:
        spec = pool.task(task)
        data = spec.load("train", pool.base.image_size)
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
        for i, index in enumerate(order.chunk(parts)):
            name = f"{task}-part{i}"
            out.setdefault(task, []).append(name)
            if pool.exists(name):
                continue
            cfg = defaults_for(pool.base)
            cfg.epochs, cfg.steps = 1.0, None
            start = time.perf_counter()
            result = fit(pool.base, pool.head(spec), take(data, index.sort().values), cfg, False)
            extra = {"source": f"{task}-part{i}", "access": [f"part{i}"]}
            pool.save_module(name, result.delta, task, "nonlinear", "nonlinear",
                             cfg.to_dict(), extra_meta=extra)  # fmt: skip
            print(f"trained {name} in {time.perf_counter() - start:.0f} s", flush=True)
    return out


def searched(pool: Pool, names: list[str], output: str, allow=None) -> dict:
    if pool.exists(output):
        pool.forget(output)
    entry, _ = compose_searched(
        pool, names, output, "sum", {}, 0, GRID, show_progress=False, allow=allow
    )
    rows = pool.evaluate(output, list(OFFLINE), "test", show_progress=False)
    return {
        "ingredients": [i["name"] for i in entry.meta["recipe"]["ingredients"]],
        "alpha": entry.meta["recipe"]["ingredients"][0]["alpha"],
        "accuracy": {r.task: r.accuracy for r in rows},
        "mean_accuracy": sum(r.accuracy for r in rows) / len(rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=Path, default=Path(__file__).parent / ".pools" / "merge")
    parser.add_argument("--sources", type=int, default=2)
    args = parser.parse_args()
    pool = Pool.open_or_create(args.pool, "offline")
    union = ensure_modules(pool, OFFLINE, "nonlinear", 1.0, show_progress=False)
    parts = source_modules(pool, args.sources)
    result: dict = {"sources": args.sources}
    every = [n for names in parts.values() for n in names]
    rights = [f"part{i}" for i in range(args.sources)]
    result["all_rights"] = searched(pool, every, "bench-all-sources", ",".join(rights))
    result["union_data"] = searched(pool, union, "bench-union")
    result["part0_only"] = searched(pool, [p[0] for p in parts.values()], "bench-part0", "part0")
    result["gap_points"] = 100 * (
        result["union_data"]["mean_accuracy"] - result["all_rights"]["mean_accuracy"]
    )
    print({k: result[k]["mean_accuracy"] for k in ("all_rights", "union_data", "part0_only")})
    write("compartments", result)

    start = time.perf_counter()
    report = pool.forget(source=f"{OFFLINE[0]}-part0")
    result["forget_source"] = {
        "seconds": time.perf_counter() - start,
        "modules": report.modules,
        "rebuilt": [r["name"] for r in report.rebuilt],
        "removed": report.removed,
    }
    print("forget by source", result["forget_source"], flush=True)
    write("compartments", result)

    tangent = ensure_modules(pool, OFFLINE, "tangent", 1.0, show_progress=False)
    if pool.exists("bench-attribution"):
        pool.forget("bench-attribution")
    pool.compose(tangent, "bench-attribution", "sum", 0.5)
    result["attribution"] = {}
    for task, own in zip(OFFLINE, tangent):
        found = pool.explain("bench-attribution", task, "test", show_progress=False)
        result["attribution"][task] = {
            "own_module_largest_share": found["largest_share_rate"][own],
            "mean_share": found["mean_share"],
            "flip_rate": found["flip_rate"],
        }
        print("attribution", task, result["attribution"][task], flush=True)
    write("compartments", result)

    composition = pool.evaluate("bench-union", list(OFFLINE), "test", show_progress=False)
    normalized = {r.task: r.normalized for r in composition}
    pair_error: dict[str, list[float]] = {n: [] for n in union}
    for a, b in itertools.combinations(union, 2):
        dis = pool.disentangle(a, b, [0.5, 1.0], "val", 300, False)
        mean = sum(v for row in dis["error"] for v in row) / 4
        pair_error[a].append(mean)
        pair_error[b].append(mean)
    result["linearity"] = {}
    for name, task in zip(union, OFFLINE):
        gap = pool.linearity(name, None, [0.5, 1.0, 2.0], "val", 500, False)
        result["linearity"][name] = {
            "gap": {r["alpha"]: r["relative_logit_error"] for r in gap["rows"]},
            "agreement": {r["alpha"]: r["agreement"] for r in gap["rows"]},
            "normalized_in_sum": normalized[task],
            "mean_disentanglement_error": sum(pair_error[name]) / len(pair_error[name]),
        }
        print("linearity", name, result["linearity"][name], flush=True)
    write("compartments", result)


if __name__ == "__main__":
    main()
