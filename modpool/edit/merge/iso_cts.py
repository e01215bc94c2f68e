"""iso-cts (Iso-CTS): isotropic merging in common and task-specific subspaces, Marczak et
al., "No Task Left Behind: Isotropic Model Merging with Common and Task-Specific Subspaces"
(ICML 2025).

For each matrix, with D_t = alpha_t tau_t, r = min(m, n), T tasks and a common fraction f
(`common`, 0.8):

    c = r - round((r - floor(f r)) / T) * T,  k = (r - c) / T      (the rest divides by T)
    sum_t D_t = U S V^T;  U_c, S_c, V_c = its top c triplets        (common subspace)
    D_t - U_c U_c^T D_t = U_t S_t V_t^T;  keep the top k of each    (task-specific subspaces)
    U = [U_1 ... U_T U_c],  S = [S_1 ... S_T S_c],  V = [V_1 ... V_T V_c]
    M = mean(S) polar(U) polar(V)^T

the sum's dominant subspace plus each task's own directions outside it, with a flat
spectrum. Every other tensor is the mean of the D_t. Coefficients up to about 3.
"""

from __future__ import annotations

import torch

from .base import check_fraction, register
from .spectral import SpectralMethod, polar


@register
class IsoCts(SpectralMethod):
    name = "iso-cts"
    defaults = {**SpectralMethod.defaults, "common": 0.8}
    grid = [round(0.1 * i, 2) for i in range(31)]

    def validate(self) -> None:
        check_fraction(self.name, "common", self.params["common"], False, False)

    def merge_matrix(self, deltas: list[torch.Tensor]) -> torch.Tensor:
        rank, tasks = min(deltas[0].shape), len(deltas)
        common = int(rank * self.params["common"])
        common = max(0, rank - round((rank - common) / tasks) * tasks)
        per_task = (rank - common) // tasks
        total = torch.stack(deltas).sum(0)
        u, s, vh = torch.linalg.svd(total, full_matrices=False)
        us, ss, vs = [], [], []
        basis = u[:, :common]
        for delta in deltas:
            specific = delta - basis @ (basis.T @ delta)
            tu, ts, tvh = torch.linalg.svd(specific, full_matrices=False)
            us.append(tu[:, :per_task])
            ss.append(ts[:per_task])
            vs.append(tvh[:per_task])
        us.append(basis)
        ss.append(s[:common])
        vs.append(vh[:common])
        spectrum = torch.cat(ss).mean()
        return spectrum * (polar(torch.cat(us, 1)) @ polar(torch.cat(vs, 0)))
