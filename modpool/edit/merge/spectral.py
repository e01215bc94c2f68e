"""What the SVD-based merges (tsv, iso, iso-cts) share: which tensors are matrices, the
SVD itself (in float32 or float64 on a chosen device), and the polar factor.

Matrices (parameter `matrices`, recorded in the recipe):
- `linear` (default): the 2-D weights of linear maps. A fused attention projection
  (`in_proj_weight`, [3d, d]) is one matrix, or three with `qkv=split`. Embeddings (a name
  holding "embed", e.g. a ViT's `positional_embedding`) and conv kernels count as 1-D.
- `2d`: every 2-D tensor, embeddings included (as the TSV and Iso reference code does).
- `conv`: as `linear`, plus conv kernels [out, in, kh, kw] as [out, in * kh * kw] matrices
  (for convolutional bases such as the offline EfficientNet).
Every other tensor is merged as the mean of the (coefficient-weighted) deltas.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...model.delta import weighted_parts
from .base import MergeMethod, Parts

PRECISION = {"float32": torch.float32, "float64": torch.float64}


def is_matrix(name: str, shape: tuple[int, ...], policy: str) -> bool:
    if len(shape) == 2 and min(shape) > 1:
        return policy == "2d" or "embed" not in name.rsplit(".", 1)[-1]
    return (
        policy == "conv" and len(shape) == 4 and shape[0] > 1 and shape[1] * shape[2] * shape[3] > 1
    )


def polar(matrix: torch.Tensor) -> torch.Tensor:
    """The orthogonal polar factor U V^T of `matrix` = U S V^T: the nearest matrix with
    orthonormal columns (or rows)."""
    u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    return u @ vh


class SpectralMethod(MergeMethod):
    """A merge that combines each matrix through SVDs (`merge_matrix`) and averages every
    other tensor. Parts are weighted by their coefficients first, so a shared coefficient
    alpha scales the result by alpha."""

    defaults = {"matrices": "linear", "qkv": "fused", "precision": "float32"}
    choices = {
        "matrices": ("linear", "2d", "conv"),
        "qkv": ("fused", "split"),
        "precision": ("float32", "float64"),
    }
    propagates_nonfinite = True  # an SVD of a non-finite matrix fails or spreads it
    compute_bound = True
    device: str | torch.device = "cpu"  # where the SVDs run (not part of the result's recipe)

    def merge_matrix(self, deltas: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def merge_tensor(self, name: str, parts: Parts, alphas: list[float]) -> torch.Tensor:
        shape = next(p.shape for p in parts if p is not None)
        if not is_matrix(name, tuple(shape), self.params["matrices"]):
            return weighted_parts(parts, [a / len(parts) for a in alphas])
        dtype = PRECISION[self.params["precision"]]
        deltas = [
            torch.zeros(shape, dtype=dtype, device=self.device)
            if p is None
            else a * p.to(self.device, dtype)
            for p, a in zip(parts, alphas)
        ]
        split = self.params["qkv"] == "split" and name.endswith("in_proj_weight")
        merged = _blockwise(deltas, self.merge_matrix, 3 if split else 1)
        return merged.reshape(shape).to("cpu", torch.float32)


def _blockwise(
    deltas: list[torch.Tensor], merge: Callable[[list[torch.Tensor]], torch.Tensor], blocks: int
) -> torch.Tensor:
    """Merge each of `blocks` row blocks (q, k, v) separately; conv kernels as matrices."""
    flat = [d.reshape(d.shape[0], -1) for d in deltas]
    chunks = zip(*(f.chunk(blocks, 0) for f in flat))
    return torch.cat([merge(list(c)) for c in chunks], 0)
