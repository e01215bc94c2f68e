"""Arithmetic on deltas: a delta is a dict of tensors named like the base's parameters.

Kept in one place because training (second-order penalties), merging and the forwards all
need the same sums, and a composition is only rebuilt bit for bit if they agree exactly.
"""

from __future__ import annotations

import torch

Params = dict[str, torch.Tensor]
Parts = list[torch.Tensor | None]  # one tensor per ingredient, None where it has none


def edited(params0: Params, delta: Params, scale: float = 1.0) -> Params:
    """theta_0 + scale * delta for the parameters delta touches."""
    return {n: params0[n] + scale * delta[n].to(params0[n].dtype) for n in delta}


def names_of(deltas: list[Params]) -> list[str]:
    return sorted(set().union(*deltas)) if deltas else []


def weighted_sum(deltas: list[Params], weights: list[float]) -> Params:
    """sum_t w_t * tau_t in float32 for every parameter."""
    return {n: weighted_parts([d.get(n) for d in deltas], weights) for n in names_of(deltas)}


def weighted_parts(parts: Parts, weights: list[float]) -> torch.Tensor:
    """sum_t w_t * part_t in float32, accumulated in ingredient order (deterministic). With
    one shared weight it is w * (part_1 + ... + part_T), as task arithmetic writes it (one
    product instead of T); otherwise each product is rounded, then added, exactly as
    `w1 * p1 + w2 * p2 + ...` would be. Either way in two buffers, however many parts."""
    present = [(p, w) for p, w in zip(parts, weights) if p is not None]
    shared = len({w for _, w in present}) == 1
    total = scratch = None
    for i, (part, w) in enumerate(present):
        if total is None:
            if not shared:
                total = w * part.float()
            elif len(present) == 1:
                total = part.float().clone()
            else:
                total = torch.add(part.float(), present[1][0].float())
        elif shared:
            if i > 1:
                total.add_(part)
        else:
            if scratch is None:
                scratch = torch.empty_like(total)
            torch.mul(part.float(), w, out=scratch)
            total.add_(scratch)
    if shared and present:
        total.mul_(present[0][1])
    return total
