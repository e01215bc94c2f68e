"""A task's frozen classifier on top of image-tower features."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Head:
    """logits = scale * maybe_normalise(features) @ weight.T + bias.

    CLIP zero-shot heads normalise features and use the model's logit scale;
    linear heads fitted on a timm backbone use raw features and a bias.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    normalize: bool = False
    scale: float = 1.0

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        features = features.float()
        if self.normalize:
            features = F.normalize(features, dim=-1)
        logits = self.scale * features @ self.weight.t()
        return logits if self.bias is None else logits + self.bias

    def to(self, device: torch.device | str) -> Head:
        bias = None if self.bias is None else self.bias.to(device)
        return Head(self.weight.to(device), bias, self.normalize, self.scale)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"weight": self.weight}
        if self.bias is not None:
            out["bias"] = self.bias
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], normalize: bool, scale: float) -> Head:
        return cls(tensors["weight"].float(), tensors.get("bias"), normalize, scale)


def fit_linear_head(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    l2: float = 1e-3,
    iterations: int = 200,
) -> Head:
    """Multinomial logistic regression on frozen features (full-batch L-BFGS).

    Deterministic for given inputs: the head is fitted once per task and then frozen.
    """
    features, labels = features.float(), labels.long()
    weight = torch.zeros(num_classes, features.shape[1], requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], max_iter=iterations, line_search_fn="strong_wolfe"
    )

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(features @ weight.t() + bias, labels) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return Head(weight.detach(), bias.detach(), normalize=False, scale=1.0)
