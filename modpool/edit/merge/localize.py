"""Task localisation masks, shared by `tall` and `consensus`: Wang et al., "Localizing Task
Information for Improved Model Merging and Compression" (ICML 2024).

With D_t = alpha_t tau_t the coefficient-weighted deltas and S = sum_t D_t the
task-arithmetic multi-task vector, task t's mask keeps the coordinates where the task's
own delta outweighs what the other tasks add:

    m_t = |D_t| >= lambda_t * |S - D_t|

(the reference code uses `>`; `>=` keeps a coordinate no task touches, which changes
nothing since S is 0 there). lambda_t is per task, chosen on the task's validation split
from a small grid (`LAMBDA_GRID`); tasks are named by the ingredients' own task.
"""

from __future__ import annotations

import torch

from ...errors import ModpoolError
from ...model.delta import weighted_parts
from .base import Parts

LAMBDA_GRID = [0.2, 0.3, 0.4, 0.5, 0.6]
DEFAULT_LAMBDA = 0.4


def check_lambdas(method: str, default: float, lambdas: dict | None) -> None:
    values = [default, *(lambdas or {}).values()]
    if not isinstance(lambdas, (dict, type(None))) or any(
        not isinstance(v, (int, float)) or v < 0 for v in values
    ):
        raise ModpoolError(f"{method}: lambda must be a number >= 0 (per task: a mapping)")


def task_masks(
    parts: Parts, alphas: list[float], lambdas: list[float]
) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """S and each ingredient's mask m_t as 0/1 floats (None where it has no such tensor):
    float comparisons, several times faster than boolean tensors on a CPU."""
    total = weighted_parts(parts, alphas)
    masks = []
    for part, alpha, lam in zip(parts, alphas, lambdas):
        if part is None:
            masks.append(None)
            continue
        own = part.float() * alpha
        other = torch.sub(total, own).abs_().mul_(lam)
        masks.append(torch.ge(own.abs_(), other, out=other))
    return total, masks


def lambdas_for(tasks: list[str] | None, count: int, default: float, given: dict | None):
    """lambda per ingredient: its task's entry in `given`, else `default`."""
    given = given or {}
    if tasks is None:
        return [default] * count
    return [float(given.get(t, default)) for t in tasks]
