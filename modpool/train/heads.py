"""A task's frozen head for a pool: zero-shot from a CLIP text tower, or a linear head
fitted on few-shot base features (timm bases); built once, then read from `heads/`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..bases.head import Head, fit_linear_head
from ..model.accuracy import features
from ..model.edited import EditedModel
from ..store.atomic import locked
from ..store.heads import HeadRecord, head_path, read_head, write_head
from ..tasks import Task
from ..tasks.task import take

if TYPE_CHECKING:
    from ..pool import Pool


def head_for(pool: Pool, task: Task, show_progress: bool | None = None) -> Head:
    """The task's frozen head, built once and cached in heads/."""
    path = head_path(pool.root, task.name)
    if path.exists():
        record = read_head(path, task.name, task.classnames, pool.fingerprint)
        return Head.from_tensors(record.tensors, record.normalize, record.scale)
    head = build_head(pool, task)
    record = HeadRecord(head.tensors(), head.normalize, head.scale)
    with locked(pool.root / ".lock"):
        shots = pool.config["head_shots"]
        write_head(path, record, task.name, task.classnames, pool.fingerprint, shots)
    return head


def build_head(pool: Pool, task: Task) -> Head:
    base = pool.base
    if base.head_kind == "zeroshot":
        return base.zeroshot_head(task.classnames, task.templates)
    train = task.load("train", base.image_size)
    labels = (
        train.labels
        if hasattr(train, "labels")
        else torch.as_tensor([train[i][1] for i in range(len(train))])
    )
    index = few_shot_index(labels, task.num_classes, pool.config["head_shots"])
    feats, ys = features(EditedModel(base), take(train, index))
    return fit_linear_head(feats, ys, task.num_classes)


def few_shot_index(labels: torch.Tensor, num_classes: int, shots: int) -> torch.Tensor:
    """`shots` examples per class, drawn with seed 0 (all of them if shots <= 0)."""
    if shots <= 0:
        return torch.arange(len(labels))
    generator = torch.Generator().manual_seed(0)
    picks = []
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        picks.append(members[torch.randperm(len(members), generator=generator)[:shots]])
    return torch.cat(picks).sort().values
