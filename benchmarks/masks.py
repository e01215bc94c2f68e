"""Issue 17 benchmark: learned weight masks on the offline base and tasks.

For each offline task's nonlinear module (the core benchmark's, trained if missing): a
mask learned at `--beta` (default the library's), then: the kept fraction, the masked
module's test accuracy against the full module's (goal: under 1 point lost at 10-30%
kept), both files' sizes, and how the three masked modules compose (sum, alpha searched on
validation) against the full ones. Then the analysis of the three masks: IoU and shared
fractions, the removal matrix, and the heat maps in docs/masks.png. A base mask per task
(`--base`) is learned too, as the paper does over one shared network.

    python benchmarks/masks.py [--beta 1] [--epochs 2] [--pool benchmarks/.pools/merge]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import write

from modpool import Pool
from modpool.analysis.masks import save_analysis
from modpool.demo import ensure_modules
from modpool.edit.search import compose_searched
from modpool.tasks import OFFLINE
from modpool.train import MaskConfig
from modpool.train.checkpoint import checkpoint_rel

GRID = [0.2, 0.4, 0.6, 0.8, 1.0, 1.2]
DOCS = Path(__file__).parent.parent / "docs"


def learn(pool: Pool, name: str | None, task: str, cfg: MaskConfig, on_base: bool) -> str:
    """The mask, learned afresh unless the pool has one learned with this very config (a
    run of this script cut short, resumed)."""
    output = f"base@{task}" if on_base else f"{name}@mask"
    if pool.exists(output) and pool.entry(output).meta["mask"]["config"] == cfg.to_dict():
        print(f"{output}: already learned with this config", flush=True)
        return output
    if pool.exists(output):
        pool.forget(output)
    (pool.root / checkpoint_rel(output)).unlink(missing_ok=True)
    start = time.perf_counter()
    entry = pool.mask(name, task if on_base else None, on_base, output, cfg, show_progress=False)
    print(f"{output}: kept {100 * entry.meta['mask']['kept_total']:.1f}% in "
          f"{time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip
    return entry.name


def composed(pool: Pool, names: list[str], output: str) -> dict:
    if pool.exists(output):
        pool.forget(output)
    entry, _ = compose_searched(pool, names, output, "sum", {}, 0, GRID, show_progress=False)
    rows = pool.evaluate(output, list(OFFLINE), "test", show_progress=False)
    return {
        "alpha": entry.meta["recipe"]["ingredients"][0]["alpha"],
        "accuracy": {r.task: r.accuracy for r in rows},
        "normalized": {r.task: r.normalized for r in rows},
        "mean_accuracy": sum(r.accuracy for r in rows) / len(rows),
    }


def analysed(pool: Pool, masks: list[str], prefix: Path) -> dict:
    """The analysis of `masks` (its JSON and heat maps at `prefix`), less the per-tensor
    pair figures, for the results file."""
    analysis = pool.mask_analysis(masks, "test", show_progress=False)
    save_analysis(analysis, prefix)
    summary = {k: analysis[k] for k in ("kept", "removal", "tasks")}
    pairs = analysis["pairs"].items()
    return summary | {"pairs": {p: {"iou": v["iou"], "shared": v["shared"]} for p, v in pairs}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=Path, default=Path(__file__).parent / ".pools" / "merge")
    parser.add_argument("--beta", type=float, default=MaskConfig.beta)
    parser.add_argument("--epochs", type=float, default=None)
    parser.add_argument("--steps", type=int, default=MaskConfig.steps)
    parser.add_argument("--lr", type=float, default=MaskConfig.lr)
    parser.add_argument("--no-base", action="store_true", help="skip the base masks")
    args = parser.parse_args()
    pool = Pool.open_or_create(args.pool, "offline")
    names = ensure_modules(pool, OFFLINE, "nonlinear", 1.0, show_progress=False)
    cfg = MaskConfig(beta=args.beta, steps=args.steps, epochs=args.epochs, lr=args.lr)
    result: dict = {"config": cfg.to_dict(), "modules": {}}
    masked = []
    for name, task in zip(names, OFFLINE):
        mask = learn(pool, name, task, cfg, on_base=False)
        masked.append(mask)
        full = pool.evaluate(name, [task], "test", show_progress=False)[0].accuracy
        sparse = pool.evaluate(mask, [task], "test", show_progress=False)[0].accuracy
        result["modules"][name] = {
            "mask": mask,
            "kept": pool.entry(mask).meta["mask"]["kept_total"],
            "accuracy_full": full,
            "accuracy_masked": sparse,
            "points_lost": 100 * (full - sparse),
            "bytes_full": pool.entry(name).path.stat().st_size,
            "bytes_masked": pool.entry(mask).path.stat().st_size,
            "seconds": pool.entry(mask).meta["mask"]["seconds"],
        }
        print(name, result["modules"][name], flush=True)
        write("masks", result)
    result["compose_full"] = composed(pool, names, "bench-full-sum")
    result["compose_masked"] = composed(pool, masked, "bench-masked-sum")
    result["analysis"] = analysed(pool, masked, DOCS / "masks")
    write("masks", result)
    if not args.no_base:
        bases = [learn(pool, None, task, cfg, on_base=True) for task in OFFLINE]
        result["base_analysis"] = analysed(pool, bases, DOCS / "masks-base")
    write("masks", result)


if __name__ == "__main__":
    main()
