"""Build a composition file from its recipe, streaming: one parameter tensor at a time.

Each ingredient is an opened `ArtifactFile` (a memory map); for every parameter the merge
method combines the ingredients' tensors, the result is written (and hashed) as it comes,
and the ingredients' pages are released. The recipe names each ingredient by its sha256,
which the pool remembers (`hashes.py`), so the header is complete before the first
tensor. Peak memory is a few tensors, whatever the number of modules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

from ..errors import ModpoolError
from ..store.artifact import FORMAT, ArtifactFile, Manifest, all_finite, encode_metadata
from ..store.encoding import DTYPES, Storage
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
    by default each file is hashed."""
    method = get_method(recipe["method"], recipe["seed"], **recipe["params"])
    recipe["params"] = method.recipe_params()
    storage = Storage.from_dict(recipe.get("storage"))
    if storage.density != 1:
        raise ModpoolError("compositions are stored dense: compact their modules instead")
    alphas = [i["alpha"] for i in recipe["ingredients"]]
    digests = digests or [s.sha256 for s in sources]
    for ingredient, source, digest in zip(recipe["ingredients"], sources, digests):
        ingredient["sha256"] = digest()
        ingredient["type"] = source.meta["type"]
    names = sorted(set().union(*(s.shapes for s in sources)))
    plan = [(n, storage.code, list(manifest[n][0])) for n in names]
    header = encode_metadata({"format": FORMAT, **meta, "recipe": recipe})
    with TensorWriter(out, plan, header) as writer:
        method.prepare(sources)
        for name in writer.order:  # one dtype: the planned order is the names' order
            check = not method.propagates_nonfinite  # else the output check covers them
            parts = [s.tensor(name, check) if name in s.shapes else None for s in sources]
            merged = method.merge_tensor(name, parts, alphas)
            if not all_finite(merged):
                raise ModpoolError(
                    f"{output}: '{name}' would hold NaN or infinite values (an ingredient "
                    "holds them, or the merge overflows); nothing was written. "
                    "`modpool check` finds corrupt files"
                )
            writer.write(name, merged.to(DTYPES[storage.dtype]))
            for source in sources:
                if name in source.shapes:
                    source.release(name)
        return writer.finish()
