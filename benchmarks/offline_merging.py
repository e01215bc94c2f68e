"""Issue 4 benchmark: merging methods at their searched settings, and disentanglement maps.

Uses the nonlinear and tangent modules of the core benchmark's pool (run
offline_core.py first). For sum, mean, ties and dare compositions of the three offline
modules: alpha searched on validation, then absolute and normalised test accuracy. Writes
the disentanglement maps of the mnist/digits pair in both modes to docs/.

    python benchmarks/offline_merging.py [--pool benchmarks/.pools/core]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import write

from modpool import Pool
from modpool.disentangle import disentanglement, save_map
from modpool.search import compose_searched
from modpool.tasks import OFFLINE

GRID = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.2]
METHODS = {
    "sum": {},
    "mean": {},
    "ties": {"density": 0.2},
    "dare": {"drop": 0.9, "merge": "sum"},
}
DOCS = Path(__file__).parent.parent / "docs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=Path, default=Path(__file__).parent / ".pools" / "core")
    parser.add_argument("--map-grid", type=int, default=9, help="points per axis, -3 to 3")
    parser.add_argument("--map-limit", type=int, default=300, help="examples per task")
    args = parser.parse_args()
    pool = Pool(args.pool)
    result = {"grid": GRID, "methods": METHODS, "modes": {}}
    for mode in ("nonlinear", "tangent"):
        names = [f"{t}-{mode}" for t in OFFLINE]
        rows = {}
        for method, params in METHODS.items():
            output = f"bench-{method}-{mode}"
            start = time.perf_counter()
            if pool.exists(output):
                pool.forget(output)
            grid = [round(g * 3, 4) for g in GRID] if method == "mean" else GRID
            entry, _ = compose_searched(
                pool, names, output, method, params, seed=0, grid=grid, show_progress=False
            )
            tests = pool.evaluate(output, list(OFFLINE), "test", show_progress=False)
            rows[method] = {
                "alpha": entry.meta["recipe"]["ingredients"][0]["alpha"],
                "accuracy": {r.task: r.accuracy for r in tests},
                "normalized": {r.task: r.normalized for r in tests},
                "mean_accuracy": sum(r.accuracy for r in tests) / len(tests),
                "mean_normalized": sum(r.normalized for r in tests) / len(tests),
                "seconds": time.perf_counter() - start,
            }
            print(mode, method, rows[method]["alpha"], round(rows[method]["mean_normalized"], 4))
        step = 6 / (args.map_grid - 1)
        alphas = [round(-3 + i * step, 4) for i in range(args.map_grid)]
        start = time.perf_counter()
        dis = disentanglement(
            pool,
            f"mnist-{mode}",
            f"digits-{mode}",
            alphas,
            "val",
            args.map_limit,
            show_progress=False,
        )
        png, _ = save_map(dis, DOCS / f"disentanglement-{mode}.png")
        errors = [v for row in dis["error"] for v in row]
        rows["disentanglement"] = {
            "png": str(png.relative_to(DOCS.parent)),
            "mean_error": sum(errors) / len(errors),
            "seconds": time.perf_counter() - start,
        }
        result["modes"][mode] = rows
    write("offline_merging", result)


if __name__ == "__main__":
    main()
