"""Bringing files into a pool: modpool module and composition files, validated against the
pool's base before anything is written, imported as one change (all of them or none)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModpoolError
from ..store.artifact import load_artifact, load_artifact_bytes
from ..store.layout import Entry, check_name, now

if TYPE_CHECKING:
    from ..pool import Pool


def import_file(pool: Pool, path: Path | str, name: str | None = None) -> Entry:
    """Copy a module or composition file into the pool after validating it."""
    path = Path(path)
    load_artifact(path, pool.manifest, pool.fingerprint)
    name = name or path.stem
    import_many(pool, [(path, name)])
    return pool.entry(name)


def import_many(pool: Pool, files: list[tuple[Path, str]]) -> None:
    """Import validated files in order, as one change: all of them or none."""
    staged = []
    for path, name in files:
        data = Path(path).read_bytes()
        artifact = load_artifact_bytes(data, Path(path).name, pool.manifest, pool.fingerprint)
        check_name(name)
        staged.append((path, name, data, artifact))
    with pool.change() as txn:
        names = {n for _, n, _, _ in staged}
        for path, name, data, artifact in staged:
            pool.require_new(name)
            _check_ingredients(pool, Path(path).name, artifact.meta, names)
            sub = "modules" if artifact.meta["type"] == "module" else "compositions"
            pool.stage(txn, f"{sub}/{name}.safetensors", data, artifact.sha256)
            record = {"action": "import", "name": name, "sha256": artifact.sha256}
            txn.log({"time": now(), **record, "source": str(path)})


def _check_ingredients(pool: Pool, where: str, meta: dict, arriving: set[str]) -> None:
    for ingredient in meta.get("recipe", {}).get("ingredients", []):
        if not pool.exists(ingredient["name"]) and ingredient["name"] not in arriving:
            raise ModpoolError(
                f"{where} is a composition of {ingredient['name']!r}, which this pool lacks: "
                "import its ingredients first"
            )
