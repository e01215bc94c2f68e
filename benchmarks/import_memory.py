"""Issue 15 benchmark: peak memory of importing a ViT-B/32-size fine-tuned checkpoint.

A pool on a randomly initialised `openclip:ViT-B-32:none` base. The "fine-tuned"
checkpoint is the base's full CLIP state dict (151M parameters) with a small change to its
image tower, written in the formats users bring: an open_clip state dict as a torch zip
(`.pt`) and as safetensors, a whole pickled model (`torch.save(model)`, read through the
restricted unpickler), and a Hugging Face `CLIPVisionModelWithProjection` folder (image
tower only). Each import runs in a fresh interpreter that has already loaded the pool's base
(which every import needs); measured: wall time, and peak RSS (VmHWM, reset through
/proc/self/clear_refs) above that baseline, as a ratio to the checkpoint's size on disk
(target: about 1.5 at most). The process's whole peak is reported too.

    python benchmarks/import_memory.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
from pathlib import Path

import torch
from _common import run_isolated, write
from safetensors.torch import save_file

from modpool import Pool

BASE = "openclip:ViT-B-32:none"
WORK = Path(__file__).parent / ".pools" / "import"

PROBE = """
import json, time, sys
sys.path.insert(0, {bench!r})
from _common import peak_rss_bytes, reset_peak_rss, rss_bytes
from modpool import Pool
pool = Pool({pool!r})
pool.base  # the base is loaded before any import
before = rss_bytes(); reset_peak_rss(); start = time.perf_counter()
entry = pool.import_checkpoint({path!r}, "mnist", "probe")[0]
seconds = time.perf_counter() - start
peak = peak_rss_bytes()
pool.forget("probe")
print(json.dumps({{"seconds": seconds, "peak_above_base": peak - before, "peak_total": peak,
                   "distance": entry.meta["imported_from"]["distance"]}}))
"""


def make_checkpoints(pool: Pool) -> dict[str, Path]:
    model = pool.base.model
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        delta = {
            n: 1e-3 * torch.randn(p.shape, generator=generator)
            for n, p in pool.base.tower.named_parameters()
        }
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name, d in delta.items():
        state[f"visual.{name}"] += d
    files = {
        "torch zip state dict (.pt)": WORK / "finetuned.pt",
        "safetensors state dict": WORK / "finetuned.safetensors",
        "pickled whole model (.pt)": WORK / "model.pt",
        "Hugging Face folder": WORK / "hf",
    }
    torch.save(state, files["torch zip state dict (.pt)"])
    save_file({k: v.contiguous() for k, v in state.items()}, files["safetensors state dict"])
    with torch.no_grad():
        for name, p in model.visual.named_parameters():
            p += delta[name]
        torch.save(model, files["pickled whole model (.pt)"])
        for name, p in model.visual.named_parameters():
            p -= delta[name]
    pool.save_module("tmp", delta, "mnist", "nonlinear")
    pool.export("tmp", files["Hugging Face folder"], "hf")
    pool.forget("tmp")
    return files


def size_of(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir())
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    pool = Pool.create(WORK / "pool", BASE)
    files = make_checkpoints(pool)
    bench = str(Path(__file__).resolve().parent)
    rows = []
    for label, path in files.items():
        runs = [
            run_isolated(PROBE.format(bench=bench, pool=str(pool.root), path=str(path)))
            for _ in range(args.repeats)
        ]
        size = size_of(path)
        row = {
            "format": label,
            "checkpoint_bytes": size,
            "seconds": statistics.median(r["seconds"] for r in runs),
            "peak_above_base_bytes": statistics.median(r["peak_above_base"] for r in runs),
            "peak_total_bytes": statistics.median(r["peak_total"] for r in runs),
            "distance": runs[0]["distance"],
        }
        row["peak_above_base_over_size"] = row["peak_above_base_bytes"] / size
        row["peak_total_over_size"] = row["peak_total_bytes"] / size
        rows.append(row)
        print(
            f"{label:28s} {size / 2**20:7.0f} MiB  {row['seconds']:5.1f} s  peak above base "
            f"{row['peak_above_base_over_size']:.2f}x, whole process "
            f"{row['peak_total_over_size']:.2f}x of the checkpoint"
        )
    write("import_memory", {"base": BASE, "repeats": args.repeats, "rows": rows})
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
