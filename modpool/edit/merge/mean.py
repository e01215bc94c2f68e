"""mean: sum with alpha_t = 1/T (times any user coefficient, 1 by default)."""

from __future__ import annotations

import torch

from .base import MergeMethod, Parts, register, weighted_parts


@register
class Mean(MergeMethod):
    name = "mean"
    propagates_nonfinite = True

    def merge_tensor(self, name: str, parts: Parts, alphas: list[float]) -> torch.Tensor:
        return weighted_parts(parts, [a / len(parts) for a in alphas])
