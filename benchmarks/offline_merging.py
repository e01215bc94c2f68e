"""Issue 4 benchmark: merging methods at their searched settings, and disentanglement maps.

Uses its own pool (a copy of the core benchmark's, or a new one), training any of the
six nonlinear and tangent modules it lacks with the core benchmark's settings (training
is deterministic, so they are the same modules). For sum, mean, ties and dare compositions of the three offline
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
from modpool.analysis.disentangle import disentanglement, save_map
from modpool.demo import ensure_modules
from modpool.edit.search import compose_searched
from modpool.tasks import OFFLINE

GRID = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.2]
METHODS = {
    "sum": {},
    "mean": {},
    "ties": {"density": 0.2},
    "dare": {"drop": 0.9, "merge": "sum"},
}
DOCS = Path(__file__).parent.parent / "docs"


def draw_map(pool: Pool, mode: str, grid_size: int, limit: int) -> dict:
    step = 6 / (grid_size - 1)
    alphas = [round(-3 + i * step, 4) for i in range(grid_size)]
    start = time.perf_counter()
    dis = disentanglement(
        pool, f"mnist-{mode}", f"digits-{mode}", alphas, "val", limit, show_progress=False
    )
    png, _ = save_map(dis, DOCS / f"disentanglement-{mode}.png")
    errors = [v for row in dis["error"] for v in row]
    return {
        "png": str(png.relative_to(DOCS.parent)),
        "mean_error": sum(errors) / len(errors),
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=Path, default=Path(__file__).parent / ".pools" / "merge")
    parser.add_argument("--map-grid", type=int, default=9, help="points per axis, -3 to 3")
    parser.add_argument("--map-limit", type=int, default=300, help="examples per task")
    parser.add_argument("--modes", default="nonlinear,tangent")
    parser.add_argument("--grid", default=",".join(map(str, GRID)), help="alpha grid for searches")
    parser.add_argument("--maps-first", action="store_true", help="draw the maps before searching")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument(
        "--update",
        action="store_true",
        help="merge into the existing results file instead of replacing it",
    )
    args = parser.parse_args()
    pool = Pool.open_or_create(args.pool, "offline")
    result = {"grid": GRID, "methods": METHODS, "modes": {}}
    if args.update:
        import json

        from _common import RESULTS

        result = json.loads((RESULTS / "offline_merging.json").read_text())
        result.pop("environment", None)
    for mode in args.modes.split(","):
        names = ensure_modules(pool, OFFLINE, mode, 1.0, show_progress=False)
        rows = result["modes"].setdefault(mode, {})
        if args.maps_first:
            rows["disentanglement"] = draw_map(pool, mode, args.map_grid, args.map_limit)
            write("offline_merging", result)
        for method in args.methods.split(","):
            params = METHODS[method]
            output = f"bench-{method}-{mode}"
            start = time.perf_counter()
            if pool.exists(output):
                pool.forget(output)
            base_grid = [float(g) for g in args.grid.split(",")]
            grid = [round(g * 3, 4) for g in base_grid] if method == "mean" else base_grid
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
            rows[method]["grid"] = grid
            print(
                mode,
                method,
                rows[method]["alpha"],
                round(rows[method]["mean_normalized"], 4),
                flush=True,
            )
            write("offline_merging", result)
        if not args.maps_first:
            rows["disentanglement"] = draw_map(pool, mode, args.map_grid, args.map_limit)
    write("offline_merging", result)


if __name__ == "__main__":
    main()
