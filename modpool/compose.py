"""Build a composition file from its recipe, streaming: one parameter tensor at a time.

Each ingredient is an opened `ArtifactFile` (a memory map); for every parameter the merge
method combines the ingredients' tensors, the result is written at its planned offset,
and the ingredients' pages are released. Meanwhile a thread hashes the ingredient files
for the recipe (hashlib and torch both release the GIL), and the header, reserved up
front, is filled in last. Peak memory is a few tensors, whatever the number of modules.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

from .artifact import FORMAT, ArtifactFile, Manifest, all_finite, encode_metadata
from .encoding import Storage
from .errors import ModpoolError
from .merge import get_method
from .tensorfile import TensorWriter

HASH_PLACEHOLDER = "0" * 64


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
) -> None:
    """Merge `sources` per `recipe` into `out`. Completes `recipe` (ingredient hashes and
    types, the method's full parameters) and stores it in the file's metadata. `digests`
    give the ingredients' sha256 (a pool remembers them); by default each file is hashed."""
    digests = digests or [s.sha256 for s in sources]
    method = get_method(recipe["method"], recipe["seed"], **recipe["params"])
    recipe["params"] = method.recipe_params()
    storage = Storage.from_dict(recipe.get("storage"))
    alphas = [i["alpha"] for i in recipe["ingredients"]]
    names = sorted(set().union(*(s.shapes for s in sources)))
    plan = [e for n in names for e in storage.layout(n, list(manifest[n][0]))]
    with ThreadPoolExecutor(max_workers=1) as hasher:
        hashes = [hasher.submit(digest) for digest in digests]
        for ingredient, source in zip(recipe["ingredients"], sources):
            ingredient["sha256"] = HASH_PLACEHOLDER  # the final hash has the same length
            ingredient["type"] = source.meta["type"]
        header = {"format": FORMAT, **meta, "recipe": recipe}
        writer = TensorWriter(out, plan, encode_metadata(header))
        method.prepare(sources)
        for name in names:
            parts = [s.tensor(name) if name in s.shapes else None for s in sources]
            merged = method.merge_tensor(name, parts, alphas)
            if not all_finite(merged):
                raise ModpoolError(
                    f"{output}: '{name}' has NaN or infinite values; nothing was written"
                )
            for key, value in storage.encode(name, merged).items():
                writer.write(key, value)
            for source in sources:
                if name in source.shapes:
                    source.release(name)
        for ingredient, digest in zip(recipe["ingredients"], hashes):
            ingredient["sha256"] = digest.result()
    writer.finish(encode_metadata(header))
