"""Issue 6 benchmark: inference cost does not grow with the number of modules composed.

A composition is stored as one delta, so its forward is the base's forward at edited
weights (nonlinear) or one JVP (tangent) whatever the number of modules. Measured here
on the offline base (64 px, batch 64) and a randomly initialised ViT-B/32 (224 px,
batch 8): seconds per batch of the base, of one random module and of the sum of eight
(composed by `sum` with alpha 1/8), in both kinds; median of `--repeats` timed batches
after one warm-up batch, the models taking turns. The ratio reported is eight modules /
one module; a second single module measured alongside shows the machine's noise.

    python benchmarks/inference_cost.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import write

from modpool.bases import load_base
from modpool.edit.merge import get_method
from modpool.model.edited import EditedModel

BASES = {"offline": ("offline", 64), "vit-b-32": ("openclip:ViT-B-32:none", 8)}


def seconds_per_batch(model: EditedModel, x: torch.Tensor) -> float:
    start = time.perf_counter()
    model.features(x, prepared=True)
    return time.perf_counter() - start


def compare(models: dict[str, EditedModel], x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds per batch of each model, measured in alternation (after one warm-up
    batch each) so that drifts of the machine hit all of them alike."""
    for model in models.values():
        seconds_per_batch(model, x)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            times[name].append(seconds_per_batch(model, x))
    return {name: statistics.median(t) for name, t in times.items()}


def random_delta(base, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        k: 1e-3 * torch.randn(v.shape, generator=generator) for k, v in base.trainable().items()
    }


def measure(spec: str, batch: int, repeats: int) -> dict:
    base = load_base(spec)
    x = base.prepare(torch.rand(batch, 3, base.image_size, base.image_size))
    deltas = [random_delta(base, i) for i in range(8)]
    one, other = deltas[0], deltas[1]
    eight = get_method("sum").merge(deltas, [1 / 8] * 8)
    del deltas
    out: dict = {"batch_size": batch}
    for kind in ("nonlinear", "tangent"):
        models = {
            "base": EditedModel(base),
            "one_module": EditedModel(base, one, kind),
            "eight_modules": EditedModel(base, eight, kind),
            "another_module": EditedModel(base, other, kind),  # the noise of the machine
        }
        t = compare(models, x, repeats)
        out["base"] = t["base"]
        t1, t8 = t["one_module"], t["eight_modules"]
        noise = t["another_module"] / t1
        out[kind] = {
            "one_module": t1,
            "eight_modules": t8,
            "another_module": t["another_module"],
            "ratio_eight_vs_one": t8 / t1,
            "ratio_another_vs_one": noise,
        }
        print(
            spec, kind, f"{t1:.4f}s vs {t8:.4f}s: {t8 / t1:.3f}x (noise {noise:.3f}x)", flush=True
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--bases", nargs="+", default=list(BASES), choices=list(BASES))
    args = parser.parse_args()
    result = {"bases": {n: measure(*BASES[n], args.repeats) for n in args.bases}}
    write("inference_cost", result)


if __name__ == "__main__":
    main()
