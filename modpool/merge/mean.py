"""mean: sum with alpha_t = 1/T (times any user coefficient, 1 by default)."""

from __future__ import annotations

from .base import MergeMethod, Params, register, weighted_sum


@register
class Mean(MergeMethod):
    name = "mean"

    def merge(self, deltas: list[Params], alphas: list[float]) -> Params:
        count = len(deltas)
        return weighted_sum(deltas, [a / count for a in alphas])
