"""Build a composition file from its recipe, streaming: one parameter tensor at a time.

Each ingredient is an opened `ArtifactFile` (a memory map); for every parameter the merge
method combines the ingredients' tensors, the result is written (and hashed) as it comes,
and the ingredients' pages are released. The recipe names each ingredient by its sha256,
which the pool remembers (`hashes.py`), so the header is complete before the first
tensor. Peak memory is a few tensors, whatever the number of modules.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import BinaryIO

from ..errors import ModpoolError
from ..model.device import usable
from ..store.artifact import (
    FORMAT,
    TASK_MASK_PREFIX,
    ArtifactFile,
    Manifest,
    all_finite,
    encode_metadata,
    mask_key,
    parse_mask_key,
)
from ..store.encoding import DTYPES, Storage, pack_mask
from ..store.layout import PUBLIC, tasks_of
from ..store.tensorfile import TensorWriter
from .merge import get_method


def check_kinds(names: list[str], sources: list[ArtifactFile]) -> str:
    kinds = {s.kind for s in sources}
    if len(kinds) > 1:
        listed = ", ".join(f"{n} ({s.kind})" for n, s in zip(names, sources))
        raise ModpoolError(f"cannot compose nonlinear and tangent modules together: {listed}")
    return kinds.pop()


def write_composition(
    out: BinaryIO,
    output: str,
    sources: list[ArtifactFile],
    recipe: dict,
    meta: dict,
    manifest: Manifest,
    digests: list[Callable[[], str]] | None = None,
) -> str:
    """Merge `sources` per `recipe` into `out`; returns the file's sha256. Completes
    `recipe` (ingredient hashes and types, the method's full parameters) and stores it in
    the file's metadata. `digests` give the ingredients' sha256 (a pool remembers them);
    by default each file is hashed. A task-aware method's masks follow the merged tensors,
    bit-packed, one per task and tensor (`taskmask/<tensor>/<task>`)."""
    method = get_method(recipe["method"], recipe["seed"], **recipe["params"])
    method.tasks = ingredient_tasks(sources, recipe, method.task_aware)
    method.device = usable(recipe.get("device"))
    recipe["params"] = method.recipe_params()
    storage = Storage.from_dict(recipe.get("storage"))
    if storage.density != 1:
        raise ModpoolError("compositions are stored dense: compact their modules instead")
    alphas = [i["alpha"] for i in recipe["ingredients"]]
    digests = digests or [s.sha256 for s in sources]
    for ingredient, source, digest in zip(recipe["ingredients"], sources, digests):
        ingredient["sha256"] = digest()
        ingredient["type"] = source.meta["type"]
        if source.meta["type"] == "module":  # compartments travel with the recipe
            ingredient["source"] = source.meta.get("source") or source.meta["task"]
            ingredient["access"] = source.meta.get("access") or [PUBLIC]
    names = sorted(set().union(*(s.shapes for s in sources)))
    plan = [(n, storage.code, list(manifest[n][0])) for n in names]
    if method.task_aware:
        meta = {**meta, "task_aware": True}
        plan += [
            (mask_key(n, task), "U8", [-(-math.prod(manifest[n][0]) // 8)])
            for n in names
            for task in method.tasks
        ]
    header = encode_metadata({"format": FORMAT, **meta, "recipe": recipe})
    with TensorWriter(out, plan, header, spare_core=not method.compute_bound) as writer:
        method.prepare(sources)
        check = not method.propagates_nonfinite  # else the output check covers them
        current, masks = None, {}
        for key in writer.order:  # the merged tensors (by name), then the masks
            if key.startswith(TASK_MASK_PREFIX):
                name, task = parse_mask_key(key)
                if name != current:  # one tensor's masks for every task, computed once
                    current = name
                    masks = method.masks(name, _parts(sources, name, check), alphas)
                    _release(sources, name)
                writer.write(key, pack_mask(masks[task]))
                continue
            merged = method.merge_tensor(key, _parts(sources, key, check), alphas)
            if not all_finite(merged):
                raise ModpoolError(
                    f"{output}: '{key}' would hold NaN or infinite values (an ingredient "
                    "holds them, or the merge overflows); nothing was written. "
                    "`modpool check` finds corrupt files"
                )
            writer.write(key, merged.to(DTYPES[storage.dtype]))
            _release(sources, key)
        return writer.finish()


def ingredient_tasks(sources: list[ArtifactFile], recipe: dict, task_aware: bool) -> list[str]:
    """The task each ingredient serves (a composition: its tasks joined by '+'). A
    task-aware merge needs one module per task."""
    tasks = ["+".join(tasks_of(s.meta)) for s in sources]
    if task_aware:
        names = [i["name"] for i in recipe["ingredients"]]
        for name, source in zip(names, sources):
            if source.meta["type"] != "module":
                raise ModpoolError(
                    f"{recipe['method']} keeps a mask per task: its ingredients are modules "
                    f"(one task each), and {name} is a composition"
                )
        if len(set(tasks)) != len(tasks):
            raise ModpoolError(
                f"{recipe['method']} keeps a mask per task: two ingredients serve the same task"
            )
    return tasks


def _parts(sources: list[ArtifactFile], name: str, check: bool) -> list:
    return [s.tensor(name, check) if name in s.shapes else None for s in sources]


def _release(sources: list[ArtifactFile], name: str) -> None:
    for source in sources:
        if name in source.shapes:
            source.release(name)
