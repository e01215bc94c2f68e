"""dare: drop each coordinate of each tau with probability `drop`, rescale the survivors by
1/(1-drop), then merge with sum or ties (`merge=sum|ties`). Masks come from a generator
seeded by (recipe seed, ingredient position, tensor name): the same recipe always gives
the same result."""

from __future__ import annotations

import torch

from .base import MergeMethod, Params, check_fraction, register, tensor_seed, weighted_sum
from .ties import disjoint_merge
from .trim import trim


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

    def merge(self, deltas: list[Params], alphas: list[float]) -> Params:
        dropped = [self._drop(i, d) for i, d in enumerate(deltas)]
        if self.params["merge"] == "sum":
            return weighted_sum(dropped, alphas)
        kept = trim(dropped, self.params["density"], self.params["trim"])
        return disjoint_merge(kept, alphas, self.params["sign"], self.params["agg"])

    def _drop(self, index: int, delta: Params) -> Params:
        p = self.params["drop"]
        out = {}
        for name, tensor in delta.items():
            generator = torch.Generator().manual_seed(tensor_seed(self.seed, index, name))
            keep = torch.rand(tensor.shape, generator=generator) >= p
            out[name] = torch.where(keep, tensor.float() / (1.0 - p), 0.0)
        return out
