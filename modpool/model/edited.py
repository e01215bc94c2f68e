"""A module or composition as a ready `torch.nn.Module` for inference."""

from __future__ import annotations

import torch
from torch import nn

from ..bases import Base
from ..bases.head import Head
from .delta import Params, edited
from .forward import nonlinear_features, tangent_features


class EditedModel(nn.Module):
    """Image tower of `base` edited by `delta`, used in its `kind` of forward.

    Input: images in [0, 1] (any size, 1 or 3 channels) unless `prepared=True`.
    Output: logits through `head` when one is given, image features otherwise.
    A tangent model runs one JVP whatever the number of modules composed into `delta`.
    """

    def __init__(
        self,
        base: Base,
        delta: Params | None = None,
        kind: str = "nonlinear",
        head: Head | None = None,
    ):
        super().__init__()
        if kind not in ("nonlinear", "tangent"):
            raise ValueError(f"kind must be nonlinear or tangent, not {kind!r}")
        self.base, self.kind, self.head = base, kind, head
        self.tower = base.tower
        self.params0 = dict(base.trainable())
        self.delta = {k: v.float() for k, v in (delta or {}).items()}
        self._weights = edited(self.params0, self.delta) if kind == "nonlinear" else None

    def to(self, device):  # keep the plain dicts on the same device as the tower
        super().to(device)
        self.params0 = dict(self.base.trainable())
        self.delta = {k: v.to(device) for k, v in self.delta.items()}
        if self.kind == "nonlinear":
            self._weights = edited(self.params0, self.delta)
        if self.head is not None:
            self.head = self.head.to(device)
        return self

    @torch.no_grad()
    def features(self, x: torch.Tensor, prepared: bool = False) -> torch.Tensor:
        x = x if prepared else self.base.prepare(x)
        if not self.delta:
            return self.tower(x)
        if self.kind == "nonlinear":
            return nonlinear_features(self.tower, self._weights, x)
        return tangent_features(self.tower, self.params0, self.delta, x)

    def forward(self, x: torch.Tensor, prepared: bool = False) -> torch.Tensor:
        features = self.features(x, prepared)
        return features if self.head is None else self.head(features)
