"""Issue 6 benchmark: streaming composition at ViT-B/32 image-tower size.

Eight random modules of the ViT-B/32 image tower (88M parameters, 352 MB each in fp32)
in a pool of a randomly initialised `openclip:ViT-B-32:none` base. Measured, each in a
fresh interpreter with the files in the page cache, alternating, `--repeats` times:

- `compose` (sum) of the eight: wall time, and peak RSS above the interpreter's baseline
  (after imports and opening the pool; VmHWM reset through /proc/self/clear_refs); and
  the same with ordinary writes instead of direct I/O (through the page cache);
- a plain read-and-sum of the same files (`safetensors.torch.load_file` each, add), and
  the same followed by saving the sum (`save_file`, fsync), as compose must;
- writing one module's bytes to disk with fsync (the disk's floor for any compose);
- `forget` of one module, which rebuilds the eight-module composition from seven;
- `export` of the composition (peak above the loaded base, which export must hold).

Reported: peak / size of one module (target <= 1.5) and plain time / compose time
(target >= 0.5), medians over the repeats.

    python benchmarks/streaming.py [--repeats 3] [--modules 8]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from _common import run_isolated, write

from modpool import Pool

BASE = "openclip:ViT-B-32:none"
POOL = Path(__file__).parent / ".pools" / "streaming"

PRELUDE = """
import json, time, sys
sys.path.insert(0, {bench!r})
from _common import peak_rss_bytes, reset_peak_rss, rss_bytes
import torch
from modpool import Pool
pool = Pool({pool!r})
names = {names!r}
"""
COMPOSE = """
before = rss_bytes(); reset_peak_rss(); start = time.perf_counter()
pool.compose(names, {output!r}, "sum", 0.3)
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "peak_above_baseline": peak_rss_bytes() - before}}))
"""
COMPOSE_ORDINARY = (
    """
from modpool.store.tensorfile import TensorWriter
TensorWriter.DIRECT = False
"""
    + COMPOSE
)
PLAIN = """
from safetensors.torch import load_file
before = rss_bytes(); reset_peak_rss(); start = time.perf_counter()
total = None
for name in names:
    tensors = load_file(pool.entry(name).path)
    if total is None:
        total = {{k: 0.3 * v for k, v in tensors.items()}}
    else:
        for k, v in tensors.items():
            total[k].add_(v, alpha=0.3)
    del tensors
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "peak_above_baseline": peak_rss_bytes() - before}}))
"""
PLAIN_SAVE = PLAIN.replace(
    "seconds = time.perf_counter() - start",
    """from safetensors.torch import save_file
import os
save_file(total, {out!r})
with open({out!r}, "rb+") as f:
    os.fsync(f.fileno())
seconds = time.perf_counter() - start""",
)
DISK = """
import os
data = os.urandom({size})
start = time.perf_counter()
with open({out!r}, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "peak_above_baseline": 0}}))
"""
FORGET = """
before = rss_bytes(); reset_peak_rss(); start = time.perf_counter()
report = pool.forget(names[-1])
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "peak_above_baseline": peak_rss_bytes() - before,
                  "rebuilt": [r["name"] for r in report.rebuilt]}}))
"""
EXPORT = """
from modpool.interop.export import export_weights
pool.base
before = rss_bytes(); reset_peak_rss(); start = time.perf_counter()
export_weights(pool, {output!r}, {path!r})
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "peak_above_baseline": peak_rss_bytes() - before}}))
"""


def prepare(
    count: int, root: Path = POOL, tasks: list[str] | None = None
) -> tuple[Pool, list[str]]:
    """`count` random modules m0, m1, ... of the base's image tower (tasks in turn from
    `tasks`, mnist by default), and no composition."""
    import torch

    pool = Pool.open_or_create(root, BASE)
    tasks = tasks or ["mnist"]
    names = [f"m{i}" for i in range(count)]
    for i, name in enumerate(names):
        if not pool.exists(name):
            generator = torch.Generator().manual_seed(i)
            delta = {
                k: 1e-3 * torch.randn(shape, generator=generator)
                for k, (shape, _) in pool.manifest.items()
            }
            pool.save_module(name, delta, tasks[i % len(tasks)], "nonlinear")
            print("wrote", name, flush=True)
    for entry in pool.entries():
        if entry.type == "composition":
            pool.forget(entry.name)
    return pool, names


def warm(pool: Pool, names: list[str]) -> None:
    for name in names:
        pool.entry(name).path.read_bytes()


def probe(body: str, names: list[str], **fmt) -> dict:
    prelude = PRELUDE.format(bench=str(Path(__file__).parent), pool=str(POOL), names=names)
    return run_isolated(prelude + body.format(**fmt))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modules", type=int, default=8)
    args = parser.parse_args()
    pool, names = prepare(args.modules)
    module_bytes = pool.entry(names[0]).path.stat().st_size
    params = sum(int(__import__("math").prod(s)) for s, _ in pool.manifest.values())
    runs: dict[str, list[dict]] = {
        "compose": [],
        "compose_ordinary": [],
        "plain": [],
        "plain_save": [],
        "disk": [],
    }
    scratch = str(POOL.parent / "streaming-scratch.safetensors")
    for i in range(args.repeats):
        warm(pool, names)
        runs["plain"].append(probe(PLAIN, names))
        warm(pool, names)
        runs["plain_save"].append(probe(PLAIN_SAVE, names, out=scratch))
        runs["disk"].append(probe(DISK, names, out=scratch, size=module_bytes))
        Path(scratch).unlink()
        warm(pool, names)
        runs["compose"].append(probe(COMPOSE, names, output=f"c{i}"))
        Pool(POOL).forget(f"c{i}")
        warm(pool, names)
        runs["compose_ordinary"].append(probe(COMPOSE_ORDINARY, names, output=f"c{i}"))
        print(i, {k: round(v[-1]["seconds"], 3) for k, v in runs.items()}, flush=True)
        if i < args.repeats - 1:
            Pool(POOL).forget(f"c{i}")
    last = f"c{args.repeats - 1}"
    export_path = POOL.parent / "streaming-export.safetensors"
    warm(pool, [last])
    runs["export"] = [probe(EXPORT, names, output=last, path=str(export_path))]
    export_path.unlink()
    warm(pool, names)
    runs["forget"] = [probe(FORGET, names)]
    print(runs["export"], runs["forget"], flush=True)

    def median(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[kind])

    result = {
        "base": BASE,
        "modules": args.modules,
        "parameters_per_module": params,
        "module_bytes": module_bytes,
        "runs": runs,
        "compose_seconds": median("compose", "seconds"),
        "plain_seconds": median("plain", "seconds"),
        "compose_ordinary_seconds": median("compose_ordinary", "seconds"),
        "speed_ratio_direct_vs_ordinary_writes": (
            median("compose_ordinary", "seconds") / median("compose", "seconds")
        ),
        "compose_peak_over_module": median("compose", "peak_above_baseline") / module_bytes,
        "plain_peak_over_module": median("plain", "peak_above_baseline") / module_bytes,
        "plain_save_seconds": median("plain_save", "seconds"),
        "disk_write_module_seconds": median("disk", "seconds"),
        "speed_ratio_compose_vs_plain": median("plain", "seconds") / median("compose", "seconds"),
        "speed_ratio_compose_vs_plain_save": (
            median("plain_save", "seconds") / median("compose", "seconds")
        ),
        "forget_peak_over_module": runs["forget"][0]["peak_above_baseline"] / module_bytes,
        "export_peak_over_module": runs["export"][0]["peak_above_baseline"] / module_bytes,
    }
    print(
        f"compose peak {result['compose_peak_over_module']:.3f}x one module "
        f"(plain {result['plain_peak_over_module']:.2f}x), speed {result['speed_ratio_compose_vs_plain']:.2f}x "
        f"of plain read-and-sum; forget peak {result['forget_peak_over_module']:.3f}x; "
        f"export peak {result['export_peak_over_module']:.3f}x"
    )
    write("streaming", result)


if __name__ == "__main__":
    main()
