"""sum (task arithmetic): theta = theta_0 + sum_t alpha_t * tau_t."""

from __future__ import annotations

import torch

from .base import MergeMethod, Parts, register, weighted_parts


@register
class Sum(MergeMethod):
    name = "sum"
    propagates_nonfinite = True

    def merge_tensor(self, name: str, parts: Parts, alphas: list[float]) -> torch.Tensor:
        return weighted_parts(parts, alphas)
