"""Diagonal Fisher information of the base on a task, through the task's head.

F_i = E_x E_{y ~ p(y|x)} [ (d log p(y|x) / d theta_i)^2 ], the *true* Fisher: labels come
from the model's own predictive distribution, not the data. `exact` sums over every class
weighted by its probability (C backward passes per example); the default draws `samples`
labels per example from the prediction (an unbiased estimate at 1/C of the cost).
Per-example gradients come from torch.func (vmap over grad), chunked to bound memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap
from torch.utils.data import Dataset

from ..bases import Base
from ..bases.head import Head
from ..model.forward import Params, jvp_friendly
from ..progress import bar
from ..tasks import batches

FISHER_BATCH = 16


@dataclass
class FisherResult:
    fisher: Params
    examples: int
    seconds: float
    method: str


def diagonal_fisher(
    base: Base,
    head: Head,
    data: Dataset,
    samples: int = 1,
    exact: bool = False,
    seed: int = 0,
    max_examples: int | None = None,
    batch_size: int = FISHER_BATCH,
    show_progress: bool | None = None,
) -> FisherResult:
    params = {n: p.detach() for n, p in base.trainable().items()}
    total = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    generator = torch.Generator().manual_seed(seed)
    count = min(len(data), max_examples) if max_examples else len(data)
    per_example = _per_example_grads(base, head)
    seen, start = 0, time.perf_counter()
    with (
        bar("fisher" + (" (exact)" if exact else ""), count, show_progress) as update,
        jvp_friendly(),
    ):
        for images, _ in batches(data, batch_size):
            images = images[: count - seen]
            if len(images) == 0:
                break
            x = base.prepare(images)
            with torch.no_grad():
                probs = F.softmax(head(base.tower(x)).float(), dim=-1)
            if exact:  # every class, weighted by its probability
                classes = probs.shape[1]
                index = torch.arange(len(x)).repeat_interleave(classes)
                labels = torch.arange(classes).repeat(len(x))
                weights = probs.flatten()
            else:  # `samples` labels drawn from the prediction, each weighted 1/samples
                index = torch.arange(len(x)).repeat_interleave(samples)
                labels = torch.multinomial(
                    probs, samples, replacement=True, generator=generator
                ).flatten()
                weights = torch.full((len(index),), 1.0 / samples)
            for chunk in torch.arange(len(index)).split(batch_size):
                grads = per_example(params, x[index[chunk]], labels[chunk])
                _accumulate(total, grads, weights[chunk])
            seen += len(x)
            update(len(x))
            if seen >= count:
                break
    fisher = {n: t / max(1, seen) for n, t in total.items()}
    method = "exact" if exact else f"sampled x{samples}"
    return FisherResult(fisher, seen, time.perf_counter() - start, method)


def _per_example_grads(base: Base, head: Head):
    tower = base.tower

    def log_prob(params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        features = functional_call(tower, params, (x.unsqueeze(0),), strict=False)
        log_probs = F.log_softmax(head(features).float(), dim=-1)[0]
        return torch.gather(log_probs, 0, y.view(1)).squeeze(0)

    return vmap(grad(log_prob), in_dims=(None, 0, 0))


def _accumulate(total: Params, grads: Params, weights: torch.Tensor) -> None:
    for name, g in grads.items():
        w = weights.view(-1, *([1] * (g.dim() - 1))).to(g.dtype)
        total[name] += (w * g.float().pow(2)).sum(0)


def average(fishers: list[tuple[Params, int]]) -> Params:
    """Fisher over the union of the tasks' examples: the example-weighted mean."""
    count = sum(n for _, n in fishers)
    names = fishers[0][0].keys()
    return {k: sum(f[k].float() * n for f, n in fishers) / count for k in names}
