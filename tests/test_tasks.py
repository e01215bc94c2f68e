"""Tasks: offline splits, image folders, standard tasks without data."""

import numpy as np
import pytest
import torch
from PIL import Image

from modpool import ModpoolError
from modpool.tasks import get_task


@pytest.mark.parametrize("name,classes", [("mnist", 10), ("animals", 10), ("digits", 10)])
def test_offline_splits_are_fixed_and_disjoint(name, classes):
    task = get_task(name)
    splits = {s: task.load(s, 64) for s in ("train", "val", "test")}
    assert task.num_classes == classes
    total = sum(len(d) for d in splits.values())
    assert len(splits["val"]) == int(0.1 * (len(splits["train"]) + len(splits["val"])))
    assert len(splits["test"]) == int(0.2 * total)
    rows = [d.images.flatten(1) for d in splits.values()]
    # every split holds examples of every class
    assert all(torch.unique(d.labels).numel() == classes for d in splits.values())
    # the same call gives the same split
    again = get_task(name).load("val", 64)
    assert torch.equal(again.images, splits["val"].images)
    assert rows[0].shape[1] == rows[2].shape[1]


def test_folder_task(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("red_car", "blue_boat"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(10):
                pixels = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    task = get_task(f"folder:{tmp_path}")
    assert task.classnames == ["blue boat", "red car"]
    train, val, test = (task.load(s, 16) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (18, 2, 20)
    image, label = train[0]
    assert image.shape == (3, 16, 16) and 0 <= image.min() and image.max() <= 1


def test_folder_task_missing_parts(tmp_path):
    with pytest.raises(ModpoolError, match="train"):
        get_task(f"folder:{tmp_path}")


def test_standard_task_names_are_case_insensitive_except_mnist(tmp_path):
    with pytest.raises(ModpoolError, match="EuroSAT data not found"):
        get_task("eurosat", tmp_path)
    assert get_task("mnist").name == "mnist"  # the offline one
    with pytest.raises(ModpoolError, match="MNIST data not found"):
        get_task("MNIST", tmp_path)
