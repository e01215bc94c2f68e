"""dare: drop each coordinate of each tau with probability `drop`, rescale the survivors by
1/(1-drop), then merge with sum or ties (`merge=sum|ties`). Masks come from a generator
seeded by (recipe seed, ingredient position, tensor name): the same recipe always gives
the same result."""

from __future__ import annotations

import torch

from .base import (
    MergeMethod,
    Parts,
    Source,
    check_fraction,
    register,
    tensor_seed,
    weighted_parts,
)
from .ties import disjoint_merge
from .trim import Trim


@register
class Dare(MergeMethod):
    name = "dare"
    defaults = {
        "drop": 0.9,
        "merge": "sum",
        "density": 1.0,
        "trim": "tensor",
        "sign": "mass",
        "agg": "mean",
    }
    choices = {
        "merge": ("sum", "ties"),
        "trim": ("tensor", "global"),
        "sign": ("mass", "count"),
        "agg": ("mean", "sum"),
    }

    def validate(self) -> None:
        check_fraction(self.name, "drop", self.params["drop"], False, True)
        check_fraction(self.name, "density", self.params["density"], True, False)
        self.trim = Trim(self.params["density"], self.params["trim"])

    def prepare(self, sources: list[Source]) -> None:
        if self.params["merge"] == "ties":  # a global trim sees the dropped deltas
            self.trim.prepare([_Dropped(self, i, s) for i, s in enumerate(sources)])

    def merge_tensor(self, name: str, parts: Parts, alphas: list[float]) -> torch.Tensor:
        dropped = [None if p is None else self.drop(i, name, p) for i, p in enumerate(parts)]
        if self.params["merge"] == "sum":
            return weighted_parts(dropped, alphas)
        cuts = self.trim.thresholds(dropped)
        return disjoint_merge(dropped, alphas, cuts, self.params["sign"], self.params["agg"])

    def drop(self, index: int, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """tensor / (1 - p) where the seeded uniform draw is >= p, +0.0 elsewhere (a 0/1
        factor and + 0.0: the bits of `torch.where`, at a fraction of its cost)."""
        p = self.params["drop"]
        generator = torch.Generator().manual_seed(tensor_seed(self.seed, index, name))
        draw = torch.rand(tensor.shape, generator=generator)
        keep = torch.ge(draw, p, out=draw)
        return keep.mul_(tensor.float() / (1.0 - p)).add_(0.0)


class _Dropped:
    """A source seen through dare's drop of ingredient `index`."""

    def __init__(self, method: Dare, index: int, source: Source):
        self.method, self.index, self.source = method, index, source
        self.names = source.names

    def numel(self, name: str) -> int:
        return self.source.numel(name)

    def tensor(self, name: str) -> torch.Tensor:
        return self.method.drop(self.index, name, self.source.tensor(name))

    def release(self, name: str) -> None:
        self.source.release(name)
