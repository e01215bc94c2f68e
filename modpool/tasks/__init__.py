"""Tasks: labelled image classification data with class names and prompt templates.

`get_task(name, data_root)` resolves built-in offline tasks (`mnist`, `animals`,
`digits`, lower case), the eight standard CLIP tasks under a data root (`Cars`, `DTD`,
`EuroSAT`, `GTSRB`, `MNIST`, `RESISC45`, `SUN397`, `SVHN`; any case but `mnist`, which is
the offline one), and `folder:PATH`.

May import: `errors` only (and torchvision, the offline data packages).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModpoolError
from .task import SPLITS, ImageTensors, Task, batches

OFFLINE = ("mnist", "animals", "digits")


def get_task(name: str, data_root: Path | str | None = None) -> Task:
    from . import folder, offline, standard

    name = canonical_name(name)
    if name in offline.TASKS:
        return offline.TASKS[name]()
    if name.startswith("folder:"):
        return folder.make_task(Path(name.removeprefix("folder:")))
    return standard.make_task(name, data_root)


def canonical_name(name: str) -> str:
    """The task's own spelling (`cars` -> `Cars`; `mnist` stays the offline task), without
    loading any data; an unknown name is refused with the known ones."""
    from . import offline, standard

    if name in offline.TASKS or name.startswith("folder:"):
        return name
    found = standard.canonical(name)
    if found is None:
        known = ", ".join([*offline.TASKS, *standard.TASKS])
        raise ModpoolError(f"unknown task {name!r}: choose one of {known}, or folder:PATH")
    return found


def known_tasks() -> list[str]:
    from . import offline, standard

    return [*offline.TASKS, *standard.TASKS, "folder:PATH"]


__all__ = [
    "OFFLINE",
    "SPLITS",
    "ImageTensors",
    "Task",
    "batches",
    "canonical_name",
    "get_task",
    "known_tasks",
]
