"""consensus (Consensus Merging): Wang et al., "Localizing Task Information for Improved
Model Merging and Compression" (ICML 2024).

With the TALL masks m_t of `localize.py` (lambda_t per task) and S = sum_t alpha_t tau_t:

    keep = (sum_t m_t) >= k,       M = S * keep

the task-arithmetic sum without the coordinates fewer than k tasks need: k = 2 drops both
the "selfish" weights (one task only) and the "catastrophic" ones (no task); k = 0 is task
arithmetic. One model for every task; alpha scales it as in task arithmetic.
"""

from __future__ import annotations

import torch

from ...errors import ModpoolError
from .base import MergeMethod, Parts, blockwise, register
from .localize import DEFAULT_LAMBDA, check_lambdas, lambdas_for, task_masks


@register
class Consensus(MergeMethod):
    name = "consensus"
    defaults = {"k": 2, "lambda": DEFAULT_LAMBDA, "lambdas": None}
    propagates_nonfinite = True  # S is a plain sum of the inputs

    def validate(self) -> None:
        k = self.params["k"]
        if not isinstance(k, int) or k < 0:
            raise ModpoolError(f"consensus: k must be a whole number >= 0, got {k!r}")
        check_lambdas(self.name, self.params["lambda"], self.params["lambdas"])

    def merge_tensor(self, name: str, parts: Parts, alphas: list[float]) -> torch.Tensor:
        lambdas = lambdas_for(self.tasks, len(parts), self.params["lambda"], self.params["lambdas"])
        return blockwise(parts, lambda block: self._merge(block, alphas, lambdas))

    def _merge(self, parts: Parts, alphas: list[float], lambdas: list[float]) -> torch.Tensor:
        total, masks = task_masks(parts, alphas, lambdas)
        votes = torch.zeros_like(total)
        for mask in masks:
            if mask is not None:
                votes.add_(mask)
        keep = torch.ge(votes, self.params["k"], out=votes)
        return keep.mul_(total).add_(0.0)  # +0.0 where dropped
