"""Magnitude trimming shared by ties, magnitude and dare: keep the top `density` fraction.

Per tensor (default) the threshold comes from that tensor alone. Globally it is the
k-th largest magnitude over a whole delta, found without holding the delta: one pass
builds a histogram of the magnitudes' top 16 bits (float bit patterns of non-negative
numbers sort like the numbers), a second pass gathers only the bin holding the k-th
value and selects it exactly.
"""

from __future__ import annotations

import math

import torch

from .base import Parts, Source

BINS = 1 << 16


def threshold(values: torch.Tensor, density: float) -> float:
    """Smallest magnitude kept so that about `density` of the entries survive."""
    flat = values.abs().flatten().float()
    rank = _rank(flat.numel(), density)
    if rank is None or isinstance(rank, float):
        return rank if rank is not None else 0.0
    return float(torch.kthvalue(flat, rank).values)


def global_threshold(source: Source, density: float) -> float:
    """`threshold` over every tensor of `source`, streamed: two passes, one tensor held."""
    rank = _rank(sum(source.numel(n) for n in source.names), density)
    if rank is None or isinstance(rank, float):
        return rank if rank is not None else 0.0
    counts = torch.zeros(BINS, dtype=torch.int64)
    for name in source.names:
        counts += torch.bincount(_bits(source.tensor(name)) >> 16, minlength=BINS)
        source.release(name)
    cumulative = counts.cumsum(0)
    target = int(torch.searchsorted(cumulative, torch.tensor(rank)))
    below = int(cumulative[target - 1]) if target > 0 else 0
    gathered = []
    for name in source.names:
        bits = _bits(source.tensor(name))
        gathered.append(bits[(bits >> 16) == target])
        source.release(name)
    chosen = torch.kthvalue(torch.cat(gathered), rank - below).values
    return float(chosen.view(torch.float32))


def _rank(total: int, density: float) -> int | float | None:
    """1-based rank (ascending) of the threshold; None keeps all, inf keeps none."""
    keep = math.ceil(density * total)
    if keep >= total:
        return None
    if keep <= 0:
        return math.inf
    return total - keep + 1


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().float().abs().flatten().contiguous().view(torch.int32)


class Trim:
    """Zero all but the largest-magnitude entries of each ingredient, per tensor or over
    the whole delta (`scope=global`, thresholds found in `prepare`). Ties are kept."""

    def __init__(self, density: float, scope: str):
        self.density, self.scope = density, scope
        self.cuts: list[float] | None = None

    def prepare(self, sources: list[Source]) -> None:
        if self.scope == "global" and self.density < 1.0:
            self.cuts = [global_threshold(s, self.density) for s in sources]

    def apply(self, parts: Parts) -> Parts:
        if self.density >= 1.0:
            return [None if p is None else p.float() for p in parts]
        out = []
        for i, part in enumerate(parts):
            if part is None:
                out.append(None)
                continue
            cut = self.cuts[i] if self.cuts is not None else threshold(part, self.density)
            out.append(torch.where(part.abs() >= cut, part.float(), 0.0))
        return out
