"""Issue 6 benchmark: compact modules (lower precision, only the largest entries).

On the offline base and tasks, the three modules of each mode are stored again with
`Pool.compact` at several (dtype, density) settings; for each setting: the stored size
relative to the dense fp32 modules, and the composition of the three (sum at the alpha
picked on validation) on the test splits, absolute and normalised. Normalised accuracy is
reported against the *dense* modules' own accuracy, so that settings compare on one
scale; the target is at most 15% of the dense size for at most 1 point of normalised
accuracy lost against the dense composition.

    python benchmarks/compact.py [--modes nonlinear tangent] [--settings bf16:1 bf16:0.2]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from _common import write

from modpool import Pool
from modpool.demo import ensure_modules
from modpool.edit.search import search_alpha
from modpool.store.encoding import Storage
from modpool.tasks import OFFLINE

POOLS = Path(__file__).parent / ".pools"
GRID = [0.2, 0.4, 0.6, 0.8, 1.0, 1.2]
SETTINGS = [
    ("fp32", 1.0),
    ("bf16", 1.0),
    ("fp16", 1.0),
    ("bf16", 0.3),
    ("bf16", 0.2),
    ("bf16", 0.1),
]


def composition(pool: Pool, names: list[str], output: str, dense_acc: dict) -> dict:
    if pool.exists(output):
        pool.forget(output)
    alpha, _ = search_alpha(pool, names, GRID, show_progress=False)
    pool.add(names, output, alpha)
    rows = pool.evaluate(output, list(OFFLINE), "test", show_progress=False)
    tasks = {
        r.task: {"accuracy": r.accuracy, "normalized_to_dense": r.accuracy / dense_acc[r.task]}
        for r in rows
    }
    mean = lambda key: sum(t[key] for t in tasks.values()) / len(tasks)  # noqa: E731
    return {
        "alpha": alpha,
        "tasks": tasks,
        "mean_accuracy": mean("accuracy"),
        "mean_normalized_to_dense": mean("normalized_to_dense"),
    }


def run_mode(pool: Pool, mode: str, epochs: float, settings: list[tuple[str, float]]) -> dict:
    dense = ensure_modules(pool, OFFLINE, mode, epochs, show_progress=False)
    dense_acc = {
        pool.entry(n).meta["task"]: pool.evaluate(n, None, "test", show_progress=False)[0].accuracy
        for n in dense
    }
    dense_bytes = sum(pool.entry(n).path.stat().st_size for n in dense)
    out = {"dense_module_accuracy": dense_acc, "settings": {}}
    for dtype, density in settings:
        key = f"{dtype}-d{density:g}"
        names = dense
        if (dtype, density) != ("fp32", 1.0):
            names = [f"{n}-{key}" for n in dense]
            for source, name in zip(dense, names):
                if not pool.exists(name):
                    pool.compact(source, name, Storage(dtype, density))
        size = sum(pool.entry(n).path.stat().st_size for n in names)
        result = composition(pool, names, f"compact-sum-{mode}-{key}", dense_acc)
        result["size_ratio"] = size / dense_bytes
        result["bytes"] = size
        out["settings"][key] = result
        print(
            mode,
            key,
            f"size {100 * result['size_ratio']:.1f}%",
            f"normalised {100 * result['mean_normalized_to_dense']:.2f}",
            flush=True,
        )
    reference = out["settings"]["fp32-d1"]["mean_normalized_to_dense"]
    for result in out["settings"].values():
        result["normalized_points_lost"] = 100 * (reference - result["mean_normalized_to_dense"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=["nonlinear", "tangent"])
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--pool", type=Path, default=POOLS / "compact")
    parser.add_argument(
        "--settings",
        nargs="+",
        default=[f"{d}:{k:g}" for d, k in SETTINGS],
        help="DTYPE:DENSITY pairs (fp32:1 is always measured, as the reference)",
    )
    args = parser.parse_args()
    settings = [("fp32", 1.0)] + [
        (d, float(k))
        for d, k in (s.split(":") for s in args.settings)
        if (d, float(k)) != ("fp32", 1.0)
    ]
    if not args.pool.exists() and (POOLS / "core").exists():
        shutil.copytree(POOLS / "core", args.pool)  # reuse its modules (training is deterministic)
    pool = Pool.open_or_create(args.pool, "offline")
    result = {"epochs": args.epochs, "grid": GRID, "modes": {}}
    for mode in args.modes:
        result["modes"][mode] = run_mode(pool, mode, args.epochs, settings)
    write("compact", result)


if __name__ == "__main__":
    main()
