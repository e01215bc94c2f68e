"""The task record, in-memory image data, and batching shared by every task."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Subset

SPLITS = ("train", "val", "test")
VAL_FRACTION, VAL_MAX, SPLIT_SEED = 0.1, 5000, 0


@dataclass
class Task:
    """A classification task. `load(split, image_size)` returns a map-style dataset of
    (float image in [0, 1] shaped [C, H, W], label)."""

    name: str
    classnames: list[str]
    templates: list[str]
    load: Callable[[str, int], Dataset]

    @property
    def num_classes(self) -> int:
        return len(self.classnames)


class ImageTensors(Dataset):
    """Small data sets held in memory as uint8 [N, C, H, W]; batches are sliced directly."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i].float() / 255.0, int(self.labels[i])

    def subset(self, index: torch.Tensor) -> ImageTensors:
        return ImageTensors(self.images[index], self.labels[index])


def split_train_val(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Validation is 10% of train (at most 5,000), drawn with seed 0; training uses the rest."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_val = min(int(n * VAL_FRACTION), VAL_MAX)
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def take(dataset: Dataset, index: torch.Tensor) -> Dataset:
    if isinstance(dataset, ImageTensors):
        return dataset.subset(index)
    return Subset(dataset, index.tolist())


def limited(dataset: Dataset, limit: int | None) -> Dataset:
    """The first `limit` examples (all of them when `limit` is None or covers them)."""
    if not limit or len(dataset) <= limit:
        return dataset
    return take(dataset, torch.arange(limit))


def batches(
    dataset: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0, workers: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images, labels) batches; in-memory data skips the DataLoader machinery."""
    if isinstance(dataset, ImageTensors):
        n = len(dataset)
        order = (
            torch.randperm(n, generator=torch.Generator().manual_seed(seed))
            if shuffle
            else torch.arange(n)
        )
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            yield dataset.images[index].float() / 255.0, dataset.labels[index]
        return
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
    )
    for images, labels in loader:
        yield images, torch.as_tensor(labels).long()
