"""tall (TALL masks): Wang et al., "Localizing Task Information for Improved Model Merging
and Compression" (ICML 2024).

The composition stores the task-arithmetic multi-task vector S = sum_t alpha_t tau_t and,
beside it, every task's mask m_t (`localize.py`), bit-packed (1 bit per weight). Used for
task t (`eval --task t`, `export --task t`, `pool.model(name, task=t)`), the model is

    theta_0 + S * m_t

a task-aware model: it needs to know which task it serves, and every table says so. Used
without a task (or as an ingredient) it is plain task arithmetic. lambda_t is chosen on
each task's validation split (`compose --method tall --search`).
"""

from __future__ import annotations

import torch

from ...model.delta import weighted_parts
from .base import MergeMethod, Parts, register
from .localize import DEFAULT_LAMBDA, check_lambdas, lambdas_for, task_masks


@register
class Tall(MergeMethod):
    name = "tall"
    defaults = {"lambda": DEFAULT_LAMBDA, "lambdas": None}
    propagates_nonfinite = True
    task_aware = True

    def validate(self) -> None:
        check_lambdas(self.name, self.params["lambda"], self.params["lambdas"])

    def merge_tensor(self, name: str, parts: Parts, alphas: list[float]) -> torch.Tensor:
        return weighted_parts(parts, alphas)

    def masks(self, name: str, parts: Parts, alphas: list[float]) -> dict[str, torch.Tensor]:
        """Each task's mask for one tensor (a task missing the tensor keeps nothing)."""
        lambdas = lambdas_for(self.tasks, len(parts), self.params["lambda"], self.params["lambdas"])
        total, masks = task_masks(parts, alphas, lambdas)
        return {
            task: torch.zeros(total.shape, dtype=torch.bool) if mask is None else mask.bool()
            for task, mask in zip(self.tasks, masks)
        }
