"""Top-1 accuracy and feature extraction over a task split."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from ..progress import bar
from ..tasks import batches
from .edited import EditedModel

EVAL_BATCH = 256


@torch.no_grad()
def accuracy(
    model: EditedModel,
    data: Dataset,
    batch_size: int = EVAL_BATCH,
    show_progress: bool | None = None,
    description: str = "eval",
) -> float:
    device = next(model.tower.parameters()).device
    correct = total = 0
    with bar(description, len(data), show_progress) as update:
        for images, labels in batches(data, batch_size):
            predictions = model(images.to(device)).argmax(-1).cpu()
            correct += int((predictions == labels).sum())
            total += len(labels)
            update(len(labels))
    return correct / max(1, total)


@torch.no_grad()
def predictions(model: EditedModel, data: Dataset, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    device = next(model.tower.parameters()).device
    return torch.cat([model(x.to(device)).argmax(-1).cpu() for x, _ in batches(data, batch_size)])


@torch.no_grad()
def features(
    model: EditedModel, data: Dataset, batch_size: int = EVAL_BATCH
) -> tuple[torch.Tensor, torch.Tensor]:
    device = next(model.tower.parameters()).device
    feats, labels = [], []
    for x, y in batches(data, batch_size):
        feats.append(model.features(x.to(device)).float().cpu())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)
