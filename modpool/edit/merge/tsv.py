"""tsv (TSV-Merge): Task Singular Vectors, Gargiulo et al., "Task Singular Vectors: Reducing
Task Interference in Model Merging" (CVPR 2025).

For each matrix, with D_t = alpha_t tau_t the coefficient-weighted deltas of T tasks and
r = min(m, n), k = floor(r / T):

    D_t = U_t S_t V_t^T                               (SVD of each task's delta)
    U = [U_1[:, :k] ... U_T[:, :k]],  S = diag(S_1[:k] ... S_T[:k]),  V = [V_1[:, :k] ... V_T[:, :k]]
    M = polar(U) S polar(V)^T                        (polar(X) = P Q^T for X = P Sigma Q^T)

the top-k singular triplets of every task, their bases decorrelated by the nearest
orthonormal ones. Every other tensor is the mean of the D_t. With one task and k = r it
returns the delta itself. Coefficients are usually searched up to about 3.
"""

from __future__ import annotations

import torch

from .base import register
from .spectral import SpectralMethod, polar


@register
class Tsv(SpectralMethod):
    name = "tsv"
    grid = [round(0.1 * i, 2) for i in range(31)]  # 0 to 3

    def merge_matrix(self, deltas: list[torch.Tensor]) -> torch.Tensor:
        rank = min(deltas[0].shape)
        k = rank // len(deltas)
        if k == 0:  # more tasks than dimensions: nothing of any task fits
            return torch.zeros_like(deltas[0])
        us, ss, vs = [], [], []
        for delta in deltas:
            u, s, vh = torch.linalg.svd(delta, full_matrices=False)
            us.append(u[:, :k])
            ss.append(s[:k])
            vs.append(vh[:k])
        u, s, vh = torch.cat(us, 1), torch.cat(ss), torch.cat(vs, 0)
        return polar(u) @ torch.diag(s) @ polar(vh)
