"""Issue 6 benchmark: the cost of tangent training relative to nonlinear, per training step.

For the offline base (EfficientNet-Lite0, 64 px) and a randomly initialised ViT-B/32
(224 px), at the same batch: seconds per step and peak RSS above the start of training,
each variant in a fresh interpreter, on random images through a random linear head (cost
does not depend on the data). Variants: nonlinear and tangent on the whole tower, and
both with `--last-blocks K` (only the last K blocks trained; in tangent mode the JVP then
runs through those blocks only). Tangent training is measured twice: as modpool does it
(one dual-number pass without a graph, then the base's backward) and the direct way it
replaced ("autograd-jvp": autograd through torch.func.jvp), the before and after.
On the offline base both are also measured with contiguous inputs ("contiguous", before
the base fed its convolutions channels-last inputs). Repeats take turns (every variant
once, then again); medians; ratios against nonlinear training of the whole tower, from
one run.

    python benchmarks/tangent_cost.py [--bases offline vit-b-32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics

from _common import run_isolated, write

BASES = {
    "offline": {"spec": "offline", "batch": 32, "steps": 20, "last_blocks": 4, "conv": True},
    "vit-b-32": {"spec": "openclip:ViT-B-32:none", "batch": 16, "steps": 6, "last_blocks": 3},
}
VARIANTS = [  # (mode, last blocks, how: the tangent forward's implementation, or the layout)
    ("nonlinear", None, None),
    ("tangent", None, None),
    ("tangent", None, "autograd-jvp"),
    ("tangent", "K", None),
    ("tangent", "K", "autograd-jvp"),
    ("nonlinear", "K", None),
    ("nonlinear", None, "contiguous"),  # convolutional bases only
    ("tangent", None, "contiguous"),
]

PROBE = """
import json, time, torch
from _common import peak_rss_bytes, reset_peak_rss, rss_bytes
from modpool.bases import load_base
from modpool.bases.head import Head
from modpool.tasks.task import ImageTensors
from modpool.train import TrainConfig, fit
if {how!r} == "autograd-jvp":
    import modpool.model.forward, modpool.train.loop
    modpool.train.loop.tangent_features = modpool.model.forward.reference_tangent_features
if {how!r} == "contiguous":
    from modpool.bases.timm import TimmBase
    TimmBase.memory_format = torch.contiguous_format
torch.manual_seed(0)
base = load_base({spec!r})
size = base.image_size
with torch.no_grad():
    dim = base.tower(base.prepare(torch.rand(1, 3, size, size))).shape[-1]
head = Head(0.01 * torch.randn(10, dim), torch.zeros(10))
data = ImageTensors(torch.randint(0, 256, ({n}, 3, size, size), dtype=torch.uint8),
                    torch.randint(0, 10, ({n},)))
cfg = TrainConfig(mode={mode!r}, steps={steps}, epochs=None, batch_size={batch}, warmup=1,
                  lr=2e-5, last_blocks={last_blocks!r})
reset_peak_rss()
before = rss_bytes()
result = fit(base, head, data, cfg, show_progress=False)
trained = sum(v.numel() for v in result.delta.values())
print(json.dumps({{"seconds_per_step": result.seconds / result.steps,
                  "peak_rss_above_start": peak_rss_bytes() - before,
                  "trained_parameters": trained}}))
"""


def variant_name(mode: str, partial: str | None, how: str | None, blocks: int) -> str:
    return mode + ("" if partial is None else f"-last{blocks}") + (f" ({how})" if how else "")


def measure(name: str, setting: dict, repeats: int) -> dict:
    out: dict = {"batch_size": setting["batch"], "last_blocks": setting["last_blocks"]}
    runs: dict[str, list[dict]] = {}
    for _ in range(repeats):
        for mode, partial, how in VARIANTS:
            if how == "contiguous" and not setting.get("conv"):
                continue
            key = variant_name(mode, partial, how, setting["last_blocks"])
            code = PROBE.format(
                spec=setting["spec"],
                mode=mode,
                steps=setting["steps"],
                batch=setting["batch"],
                n=setting["batch"] * setting["steps"],
                last_blocks=None if partial is None else setting["last_blocks"],
                how=how,
            )
            runs.setdefault(key, []).append(run_isolated(code))
            last = runs[key][-1]
            print(name, key, last["seconds_per_step"], last["peak_rss_above_start"], flush=True)
    for key, done in runs.items():
        out[key] = {
            "seconds_per_step": statistics.median(r["seconds_per_step"] for r in done),
            "peak_rss_above_start": statistics.median(r["peak_rss_above_start"] for r in done),
            "trained_parameters": done[0]["trained_parameters"],
            "runs": done,
        }
    reference = out["nonlinear"]
    for key in [k for k in out if isinstance(out[k], dict) and k != "nonlinear"]:
        out[key]["ratio_time"] = out[key]["seconds_per_step"] / reference["seconds_per_step"]
        out[key]["ratio_memory"] = (
            out[key]["peak_rss_above_start"] / reference["peak_rss_above_start"]
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", nargs="+", default=list(BASES), choices=list(BASES))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    result = {"bases": {}}
    for name in args.bases:
        result["bases"][name] = measure(name, BASES[name], args.repeats)
    write("tangent_cost", result)


if __name__ == "__main__":
    main()
