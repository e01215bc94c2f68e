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
    """Smallest magnitude kept so that about `density` of the entries survive: the exact
    rank-th smallest magnitude, found by numpy's introselect (12x faster than
    `torch.kthvalue` on a ViT matrix; the same value, since it is an order statistic)."""
    flat = values.detach().abs().flatten().float()
    rank = _rank(flat.numel(), density)
    if rank is None or isinstance(rank, float):
        return rank if rank is not None else 0.0
    array = flat.numpy()
    zeros = flat.numel() - int(torch.count_nonzero(flat))
    if zeros >= rank:  # the rank-th smallest is a zero (a sparse or dropped delta)
        return 0.0
    if zeros > flat.numel() // 4:  # select among the nonzero entries only
        array, rank = array[array != 0], rank - zeros
    array.partition(rank - 1)  # in place: `flat` is this function's own copy
    return float(array[rank - 1])


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

    def thresholds(self, parts: Parts) -> list[float | None]:
        """Each ingredient's cut for this tensor (None: keep everything)."""
        if self.density >= 1.0:
            return [None] * len(parts)
        if self.cuts is not None:
            return list(self.cuts)
        return [None if p is None else threshold(p, self.density) for p in parts]

    def apply(self, parts: Parts) -> Parts:
        cuts = self.thresholds(parts)
        return [None if p is None else keep_above(p.float(), c) for p, c in zip(parts, cuts)]


def keep_above(part: torch.Tensor, cut: float | None) -> torch.Tensor:
    """`part` where |part| >= cut, +0.0 elsewhere: the same bits as
    `torch.where(part.abs() >= cut, part, 0.0)`, through float arithmetic only (a 0/1 factor,
    then + 0.0, which turns the dropped entries' -0.0 into +0.0), several times faster."""
    if cut is None or cut <= 0:  # every entry is kept (|x| >= 0)
        return part
    keep = torch.ge(part.abs(), cut, out=torch.empty_like(part))
    return keep.mul_(part).add_(0.0)
