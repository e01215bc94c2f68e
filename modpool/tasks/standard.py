"""The standard 8-task CLIP benchmark, read from `--data-root`; modpool never downloads.

Each task is found either as a prepared image folder `<root>/<name>/{train,test}/<class>/`
or in torchvision's own layout under `<root>` (download=False). Class names and
templates follow the task-arithmetic literature.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ModpoolError
from . import folder
from .task import Task, split_train_val, take

GTSRB_CLASSES = [
    "red and white circle 20 kph speed limit",
    "red and white circle 30 kph speed limit",
    "red and white circle 50 kph speed limit",
    "red and white circle 60 kph speed limit",
    "red and white circle 70 kph speed limit",
    "red and white circle 80 kph speed limit",
    "end / de-restriction of 80 kph speed limit",
    "red and white circle 100 kph speed limit",
    "red and white circle 120 kph speed limit",
    "red and white circle red car and black car no passing",
    "red and white circle red truck and black car no passing",
    "red and white triangle road intersection warning",
    "white and yellow diamond priority road",
    "red and white upside down triangle yield right-of-way",
    "stop",
    "empty red and white circle",
    "red and white circle no truck entry",
    "red circle with white horizonal stripe no entry",
    "red and white triangle with exclamation mark warning",
    "red and white triangle with black left curve approaching warning",
    "red and white triangle with black right curve approaching warning",
    "red and white triangle with black double curve approaching warning",
    "red and white triangle rough / bumpy road warning",
    "red and white triangle car skidding / slipping warning",
    "red and white triangle with merging / narrow lanes warning",
    "red and white triangle with person digging / construction / road work warning",
    "red and white triangle with traffic light approaching warning",
    "red and white triangle with person walking warning",
    "red and white triangle with child and person walking warning",
    "red and white triangle with bicyle warning",
    "red and white triangle with snowflake / ice warning",
    "red and white triangle with deer warning",
    "white circle with gray strike bar no speed limit",
    "blue circle with white right turn arrow mandatory",
    "blue circle with white left turn arrow mandatory",
    "blue circle with white forward arrow mandatory",
    "blue circle with white forward or right turn arrow mandatory",
    "blue circle with white forward or left turn arrow mandatory",
    "blue circle with white keep right arrow mandatory",
    "blue circle with white keep left arrow mandatory",
    "blue circle with white arrows indicating a traffic circle",
    "white circle with gray strike bar indicating no passing for cars has ended",
    "white circle with gray strike bar indicating no passing for trucks has ended",
]
EUROSAT_CLASSES = [
    "annual crop land",
    "forest",
    "brushland or shrubland",
    "highway or road",
    "industrial buildings or commercial buildings",
    "pasture land",
    "permanent crop land",
    "residential buildings or homes or apartments",
    "river",
    "lake or sea",
]
RESISC45_CLASSES = (
    "airplane airport baseball_diamond basketball_court beach bridge chaparral church "
    "circular_farmland cloud commercial_area dense_residential desert forest freeway "
    "golf_course ground_track_field harbor industrial_area intersection island lake meadow "
    "medium_residential mobile_home_park mountain overpass palace parking_lot railway "
    "railway_station rectangular_farmland river roundabout runway sea_ice ship snowberg "
    "sparse_residential stadium storage_tank tennis_court terrace thermal_power_station wetland"
).split()
DIGITS = [str(i) for i in range(10)]
_OBJ = ["a photo of a {c}.", "a photo of the {c}."]
TEMPLATES = {
    "Cars": [
        *_OBJ,
        "a photo of my {c}.",
        "i love my {c}!",
        "a photo of my dirty {c}.",
        "a photo of my clean {c}.",
        "a photo of my new {c}.",
        "a photo of my old {c}.",
    ],
    "DTD": [
        f"a photo of {a} {{c}} {w}."
        for a in ("a", "the")
        for w in ("texture", "pattern", "thing", "object")
    ],
    "EuroSAT": [
        "a centered satellite photo of {c}.",
        "a centered satellite photo of a {c}.",
        "a centered satellite photo of the {c}.",
    ],
    "GTSRB": [
        f'a {w} photo of a "{{c}}" traffic sign.' for w in ("zoomed in", "centered", "close up")
    ],
    "MNIST": ['a photo of the number: "{c}".'],
    "RESISC45": [
        f"{s} {v} of {a}{{c}}."
        for a in ("", "a ", "the ")
        for s in ("satellite", "aerial")
        for v in ("imagery", "photo", "view")
    ],
    "SUN397": _OBJ,
    "SVHN": ['a photo of the number: "{c}".'],
}
# name -> (torchvision class, how to ask for train/test, fixed class names or None)
TORCHVISION = {
    "Cars": ("StanfordCars", "split", None),
    "DTD": ("DTD", "split", None),
    "EuroSAT": ("EuroSAT", None, EUROSAT_CLASSES),
    "GTSRB": ("GTSRB", "split", GTSRB_CLASSES),
    "MNIST": ("MNIST", "train", DIGITS),
    "RESISC45": (None, None, [c.replace("_", " ") for c in RESISC45_CLASSES]),
    "SUN397": ("SUN397", None, None),
    "SVHN": ("SVHN", "split", DIGITS),
}
TASKS = tuple(TORCHVISION)
UNSPLIT_TEST_FRACTION = 0.2  # EuroSAT and SUN397 ship without a test split: seed-0 split


def canonical(name: str) -> str | None:
    return next((t for t in TASKS if t.lower() == name.lower()), None)


def make_task(name: str, data_root: Path | str | None) -> Task:
    name = canonical(name) or name
    if data_root is None:
        raise ModpoolError(
            f"task {name} reads its data from disk: pass --data-root DIR (or set MODPOOL_DATA_ROOT)"
        )
    root = Path(data_root)
    if not root.is_dir():
        raise ModpoolError(f"data root {root} does not exist")
    prepared = root / name.lower()
    tv_name, split_arg, classnames = TORCHVISION[name]
    if (prepared / "train").is_dir():
        return folder.make_task(prepared, name, TEMPLATES[name], classnames)
    if tv_name is None:
        raise ModpoolError(
            f"{name} data not found: expected a prepared folder "
            f"{prepared}/{{train,test}}/<class>/<images>"
        )
    probe = _open(name, tv_name, split_arg, root, "train", 224)
    names = classnames or [c.replace("_", " ") for c in getattr(probe, "classes", [])]

    def load(split: str, image_size: int):
        source = "test" if split == "test" else "train"
        dataset = _open(name, tv_name, split_arg, root, source, image_size)
        if split == "test":
            return dataset
        train_idx, val_idx = split_train_val(len(dataset))
        return take(dataset, train_idx if split == "train" else val_idx)

    return Task(name, names, TEMPLATES[name], load)


def _open(name: str, tv_name: str, split_arg: str | None, root: Path, split: str, size: int):
    import torchvision.datasets as tvd

    cls = getattr(tvd, tv_name)
    kwargs = {"transform": folder.pil_transform(size), "download": False}
    if split_arg == "split":
        kwargs["split"] = split
    elif split_arg == "train":
        kwargs["train"] = split == "train"
    try:
        dataset = cls(root, **kwargs)
    except (RuntimeError, FileNotFoundError, OSError) as exc:
        raise ModpoolError(
            f"{name} data not found under {root} (torchvision {tv_name} layout, or a prepared "
            f"folder {root / name.lower()}/{{train,test}}/<class>/); modpool does not download: "
            f"place the files there ({type(exc).__name__})"
        ) from None
    if split_arg is None:  # one undivided set: a fixed seed-0 test split
        perm = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))
        n_test = int(len(dataset) * UNSPLIT_TEST_FRACTION)
        part = perm[:n_test] if split == "test" else perm[n_test:]
        subset = take(dataset, part.sort().values)
        subset.classes = dataset.classes
        return subset
    return dataset
