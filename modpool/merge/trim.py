"""Magnitude trimming shared by ties and magnitude: keep the top `density` fraction."""

from __future__ import annotations

import math

import torch

from .base import Params, names_of


def threshold(values: torch.Tensor, density: float) -> float:
    """Smallest magnitude kept so that about `density` of the entries survive."""
    flat = values.abs().flatten().float()
    keep = math.ceil(density * flat.numel())
    if keep >= flat.numel():
        return 0.0
    if keep <= 0:
        return math.inf
    return float(torch.kthvalue(flat, flat.numel() - keep + 1).values)


def trim(deltas: list[Params], density: float, scope: str) -> list[Params]:
    """Zero all but the largest-magnitude entries of each delta, per tensor or globally.
    Entries tied with the threshold are kept."""
    if density >= 1.0:
        return [{k: v.float() for k, v in d.items()} for d in deltas]
    out = []
    for delta in deltas:
        if scope == "global":
            cut = threshold(torch.cat([delta[n].flatten() for n in names_of([delta])]), density)
            cuts = dict.fromkeys(delta, cut)
        else:
            cuts = {n: threshold(t, density) for n, t in delta.items()}
        out.append({n: torch.where(t.abs() >= cuts[n], t.float(), 0.0) for n, t in delta.items()})
    return out
