"""Any image folder as a task: `train/<class>/*` and `test/<class>/*`."""

from __future__ import annotations

from pathlib import Path

from ..errors import ModpoolError
from .task import Task, split_train_val, take

DEFAULT_TEMPLATES = ["a photo of a {c}."]


def pil_transform(image_size: int):
    from torchvision import transforms as T

    return T.Compose(
        [
            T.Lambda(lambda im: im.convert("RGB")),
            T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(image_size),
            T.ToTensor(),
        ]
    )


def make_task(
    root: Path,
    name: str | None = None,
    templates: list[str] | None = None,
    classnames: list[str] | None = None,
) -> Task:
    for part in ("train", "test"):
        if not (root / part).is_dir():
            raise ModpoolError(
                f"image folder task expects {root / part}/<class>/<images>; {root / part} is missing"
            )
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        raise ModpoolError(f"{root / 'train'} has no class folders")

    def load(split: str, image_size: int):
        from torchvision.datasets import ImageFolder

        source = "test" if split == "test" else "train"
        dataset = ImageFolder(root / source, transform=pil_transform(image_size))
        if dataset.classes != classes:
            raise ModpoolError(f"{root}: train and test have different class folders")
        if split == "test":
            return dataset
        train_idx, val_idx = split_train_val(len(dataset))
        return take(dataset, train_idx if split == "train" else val_idx)

    names = classnames or [c.replace("_", " ") for c in classes]
    return Task(name or f"folder:{root}", names, templates or DEFAULT_TEMPLATES, load)
