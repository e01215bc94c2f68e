"""sum (task arithmetic): theta = theta_0 + sum_t alpha_t * tau_t."""

from __future__ import annotations

from .base import MergeMethod, Params, register, weighted_sum


@register
class Sum(MergeMethod):
    name = "sum"

    def merge(self, deltas: list[Params], alphas: list[float]) -> Params:
        return weighted_sum(deltas, alphas)
