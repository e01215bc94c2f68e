"""The interface every base implements, and the base fingerprint."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModpoolError
from .head import Head


class Base(ABC):
    """A frozen pretrained image tower plus what a task head needs.

    Attributes set by subclasses: `spec`, `tower` (eval mode, no grad), `image_size`,
    `mean`, `std`, `hub_id` (the base's Hub repo id or None), `head_kind`
    ("zeroshot" heads from a text tower, or "linear" heads fitted on features), and the
    `memory_format` of prepared inputs (the weights stay contiguous either way).
    """

    spec: str
    tower: nn.Module
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    hub_id: str | None = None
    head_kind: str = "linear"
    after_blocks: tuple[str, ...] = ()  # parameters used after the blocks, registered before
    memory_format: torch.memory_format = torch.contiguous_format  # of prepared inputs

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
        return ((images - mean) / std).contiguous(memory_format=self.memory_format)

    def trainable(self, last_blocks: int | None = None) -> dict[str, torch.Tensor]:
        """The image tower's floating-point parameters: what a module changes. With
        `last_blocks=K`, only those of the tower's last K blocks and of the layers after
        them (see `last_block_names`)."""
        params = {n: p for n, p in self.tower.named_parameters() if p.is_floating_point()}
        if last_blocks is None:
            return params
        keep = set(last_block_names(list(params), last_blocks)) | set(self.after_blocks)
        return {n: p for n, p in params.items() if n in keep}

    @abstractmethod
    def zeroshot_head(self, classnames: list[str], templates: list[str]) -> Head:
        """A head built from class names alone (CLIP bases), or NotImplementedError."""

    @property
    def logit_scale(self) -> float:
        return 1.0


def last_block_names(names: list[str], count: int) -> list[str]:
    """The parameters from the first of the last `count` blocks on, in the tower's order.
    A block is a numbered sub-module path (`blocks.5.3`, `transformer.resblocks.11`): the
    name up to its last numeric component. Layers after the last block (a head conv, a
    final norm, a projection) come with it; everything before stays frozen."""
    blocks = list(dict.fromkeys(b for b in map(block_of, names) if b is not None))
    if count < 1 or count > len(blocks):
        raise ModpoolError(
            f"--last-blocks must be between 1 and {len(blocks)} (this tower's blocks)"
        )
    first = blocks[-count]
    start = next(i for i, n in enumerate(names) if block_of(n) == first)
    return names[start:]


def block_of(name: str) -> str | None:
    parts = name.split(".")
    numeric = [i for i, p in enumerate(parts[:-1]) if p.isdigit()]
    return ".".join(parts[: numeric[-1] + 1]) if numeric else None


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
