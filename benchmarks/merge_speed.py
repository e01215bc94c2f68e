"""Issue 16 benchmark: time and peak memory of one compose per merge method, on eight
ViT-B/32-size modules (random deltas of the `openclip:ViT-B-32:none` image tower, 88M
parameters, 352 MB each, one per standard task so that `tall` can keep a mask per task).

Each compose runs in a fresh interpreter with the modules in the page cache; the
element-wise methods alternate with `sum` over `--repeats` rounds (medians, ratios to
`sum` from the same rounds); the SVD methods (tsv, iso, iso-cts), which take minutes on a
CPU, run `--svd-repeats` times. Peak RSS is above the interpreter's baseline (VmHWM reset
through /proc/self/clear_refs), as a ratio to one module's size. Targets: element-wise
methods within about 4x the time of `sum`, peak within 1.5x one module.

    python benchmarks/merge_speed.py [--repeats 3] [--svd-repeats 1] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from _common import run_isolated, write
from streaming import PRELUDE, prepare, warm

from modpool import Pool

POOL = Path(__file__).parent / ".pools" / "merge-speed"
TASKS = ["Cars", "DTD", "EuroSAT", "GTSRB", "MNIST", "RESISC45", "SUN397", "SVHN"]

ELEMENTWISE = {
    "sum": {},
    "mean": {},
    "ties": {},
    "dare": {},
    "magnitude": {},
    "consensus": {},
    "tall": {},
}
SPECTRAL = {"tsv": {}, "iso": {}, "iso-cts": {}}
COMPOSE = """
before = rss_bytes(); reset_peak_rss(); start = time.perf_counter()
pool.compose(names, {output!r}, {method!r}, 0.3, {params!r}, device={device!r})
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "peak_above_baseline": peak_rss_bytes() - before}}))
"""


def probe(body: str, names: list[str], **fmt) -> dict:
    prelude = PRELUDE.format(bench=str(Path(__file__).parent), pool=str(POOL), names=names)
    return run_isolated(prelude + body.format(**fmt))


def run(pool: Pool, names: list[str], method: str, params: dict, device: str | None) -> dict:
    warm(pool, names)
    result = probe(COMPOSE, names, output=f"bench-{method}", method=method, params=params,
                   device=device)  # fmt: skip
    Pool(POOL).forget(f"bench-{method}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--svd-repeats", type=int, default=1)
    parser.add_argument("--modules", type=int, default=8)
    parser.add_argument("--device", default=None, help="where the SVD methods compute")
    parser.add_argument("--methods", nargs="*", help="only these methods (sum always runs)")
    args = parser.parse_args()
    pool, names = prepare(args.modules, POOL, TASKS)
    module_bytes = pool.entry(names[0]).path.stat().st_size
    chosen = set(args.methods or [*ELEMENTWISE, *SPECTRAL]) | {"sum"}
    runs: dict[str, list[dict]] = {m: [] for m in [*ELEMENTWISE, *SPECTRAL] if m in chosen}
    for i in range(args.repeats):
        for method, params in ELEMENTWISE.items():
            if method in chosen:
                runs[method].append(run(pool, names, method, params, None))
        print(i, {m: round(r[-1]["seconds"], 2) for m, r in runs.items() if r}, flush=True)
    for _ in range(args.svd_repeats):
        for method, params in SPECTRAL.items():
            if method in chosen:
                runs[method].append(run(pool, names, method, params, args.device))
                print(method, round(runs[method][-1]["seconds"], 1), flush=True)
    base = statistics.median(r["seconds"] for r in runs["sum"])
    rows = []
    for method, results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        peak = statistics.median(r["peak_above_baseline"] for r in results)
        rows.append(
            {
                "method": method,
                "seconds": seconds,
                "time_over_sum": seconds / base,
                "peak_over_module": peak / module_bytes,
                "repeats": len(results),
            }
        )
        print(
            f"{method:10s} {seconds:8.2f} s  {seconds / base:6.1f}x sum  "
            f"peak {peak / module_bytes:.2f}x one module"
        )
    write(
        "merge_speed",
        {
            "modules": args.modules,
            "module_bytes": module_bytes,
            "device": args.device or "cpu",
            "rows": rows,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
