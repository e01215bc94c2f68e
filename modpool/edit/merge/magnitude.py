"""magnitude: keep the top `density` fraction of each tau by magnitude, then sum with the
coefficients (TIES without sign election)."""

from __future__ import annotations

import torch

from .base import (
    MergeMethod,
    Parts,
    Source,
    blockwise,
    check_fraction,
    register,
    weighted_parts,
)
from .trim import Trim, keep_above


@register
class Magnitude(MergeMethod):
    name = "magnitude"
    defaults = {"density": 0.2, "trim": "tensor"}
    choices = {"trim": ("tensor", "global")}

    def validate(self) -> None:
        check_fraction(self.name, "density", self.params["density"], True, False)
        self.trim = Trim(self.params["density"], self.params["trim"])

    def prepare(self, sources: list[Source]) -> None:
        self.trim.prepare(sources)

    def merge_tensor(self, name: str, parts: Parts, alphas: list[float]) -> torch.Tensor:
        cuts = self.trim.thresholds(parts)

        def merge(block: Parts) -> torch.Tensor:
            kept = [None if p is None else keep_above(p.float(), c) for p, c in zip(block, cuts)]
            return weighted_parts(kept, alphas)

        return blockwise(parts, merge)
