"""The interface every base implements, and the base fingerprint."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from ..head import Head


class Base(ABC):
    """A frozen pretrained image tower plus what a task head needs.

    Attributes set by subclasses: `spec`, `tower` (eval mode, no grad), `image_size`,
    `mean`, `std`, `hub_id` (the base's Hub repo id or None), `head_kind`
    ("zeroshot" heads from a text tower, or "linear" heads fitted on features).
    """

    spec: str
    tower: nn.Module
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    hub_id: str | None = None
    head_kind: str = "linear"

    def freeze(self) -> None:
        self.tower.eval()
        for p in self.tower.parameters():
            p.requires_grad_(False)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], any size and 1 or 3 channels -> normalised model input."""
        images = images.float()
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = F.interpolate(
                images,
                size=(self.image_size, self.image_size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        return (images - mean) / std

    def trainable(self) -> dict[str, torch.Tensor]:
        """The image tower's floating-point parameters: what a module changes."""
        return {n: p for n, p in self.tower.named_parameters() if p.is_floating_point()}

    @abstractmethod
    def zeroshot_head(self, classnames: list[str], templates: list[str]) -> Head:
        """A head built from class names alone (CLIP bases), or NotImplementedError."""

    @property
    def logit_scale(self) -> float:
        return 1.0


def fingerprint(tower: nn.Module) -> str:
    """sha256 over tensor names, dtypes, shapes and bytes, in sorted name order."""
    digest = hashlib.sha256()
    state = tower.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def manifest(base: Base) -> dict[str, tuple[list[int], str]]:
    return {n: (list(p.shape), str(p.dtype)) for n, p in base.trainable().items()}
