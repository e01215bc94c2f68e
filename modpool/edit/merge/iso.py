"""iso (Iso-C): isotropic merging, Marczak et al., "No Task Left Behind: Isotropic Model
Merging with Common and Task-Specific Subspaces" (ICML 2025).

For each matrix, with D_t = alpha_t tau_t:

    sum_t D_t = U S V^T,    M = mean(S) U V^T

the task-arithmetic sum with a flat spectrum: every direction of the sum's singular
subspace gets the same weight, so no task's directions are drowned by a dominant one.
Every other tensor is the mean of the D_t. Coefficients are usually searched up to about 3.
"""

from __future__ import annotations

import torch

from .base import register
from .spectral import SpectralMethod


@register
class Iso(SpectralMethod):
    name = "iso"
    grid = [round(0.1 * i, 2) for i in range(31)]

    def merge_matrix(self, deltas: list[torch.Tensor]) -> torch.Tensor:
        total = torch.stack(deltas).sum(0)
        u, s, vh = torch.linalg.svd(total, full_matrices=False)
        return s.mean() * (u @ vh)
