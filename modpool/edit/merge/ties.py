"""ties (TIES-merging): trim, elect a sign per coordinate, disjoint merge, scale.

Default (documented in docs/guide.md): per-tensor trimming to `density`; each kept tau is
weighted by its coefficient alpha_t; the elected sign of a coordinate is the sign of the
sum of the weighted kept values (`sign=mass`); the result is the mean of the weighted kept
values that agree with it (`agg=mean`). A coordinate whose values cancel exactly (elected
sign 0) or that no module touches stays 0. Variants by name: `trim=global` (the TIES
paper's reference code trims over the whole flattened vector), `sign=count` (majority by
number of positive vs negative entries), `agg=sum` (disjoint sum, as mergekit without
normalisation).
"""

from __future__ import annotations

import torch

from .base import MergeMethod, Parts, Source, check_fraction, register
from .trim import Trim


@register
class Ties(MergeMethod):
    name = "ties"
    defaults = {"density": 0.2, "trim": "tensor", "sign": "mass", "agg": "mean"}
    choices = {"trim": ("tensor", "global"), "sign": ("mass", "count"), "agg": ("mean", "sum")}

    def validate(self) -> None:
        check_fraction(self.name, "density", self.params["density"], True, False)
        self.trim = Trim(self.params["density"], self.params["trim"])

    def prepare(self, sources: list[Source]) -> None:
        self.trim.prepare(sources)

    def merge_tensor(self, name: str, parts: Parts, alphas: list[float]) -> torch.Tensor:
        kept = self.trim.apply(parts)
        return disjoint_merge(kept, alphas, self.params["sign"], self.params["agg"])


def disjoint_merge(kept: Parts, alphas: list[float], sign: str, agg: str) -> torch.Tensor:
    stack = torch.stack([a * k for k, a in zip(kept, alphas) if k is not None])
    if sign == "mass":
        elected = torch.sign(stack.sum(0))
    else:
        elected = torch.sign((stack > 0).sum(0) - (stack < 0).sum(0)).float()
    agree = (torch.sign(stack) == elected) & (stack != 0)
    total = torch.where(agree, stack, 0.0).sum(0)
    if agg == "mean":
        total = total / agree.sum(0).clamp(min=1)
    return total
