"""magnitude: keep the top `density` fraction of each tau by magnitude, then sum with the
coefficients (TIES without sign election)."""

from __future__ import annotations

from .base import MergeMethod, Params, check_fraction, register, weighted_sum
from .trim import trim


@register
class Magnitude(MergeMethod):
    name = "magnitude"
    defaults = {"density": 0.2, "trim": "tensor"}
    choices = {"trim": ("tensor", "global")}

    def validate(self) -> None:
        check_fraction(self.name, "density", self.params["density"], True, False)

    def merge(self, deltas: list[Params], alphas: list[float]) -> Params:
        return weighted_sum(trim(deltas, self.params["density"], self.params["trim"]), alphas)
