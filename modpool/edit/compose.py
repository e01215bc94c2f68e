"""Composing modules in a pool: a recipe (ingredients and their coefficients, a merge method
and its parameters, a seed) becomes a composition file, streamed tensor by tensor."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModpoolError
from ..model.device import resolve_device
from ..store.access import allowed_modules, require_usable
from ..store.encoding import Storage
from ..store.journal import Transaction
from ..store.layout import Entry, labels, now, tasks_of, versions
from .composition import check_kinds, write_composition
from .merge import get_method

if TYPE_CHECKING:
    from ..pool import Pool

Staged = dict[str, tuple[Path, str]]  # name -> (staged file, sha256) within one change


def compose(
    pool: Pool,
    names: list[str],
    output: str,
    method: str = "sum",
    alpha: float | list[float] | None = None,
    params: dict | None = None,
    seed: int = 0,
    search: dict | None = None,
    dtype: str = "fp32",
    device: str | None = None,
    allow: list[str] | str | None = None,
) -> Entry:
    """Compose modules (or compositions) into a new composition named `output`. `search`,
    when given, is the alpha-search table kept with it; `dtype` its stored precision;
    `device` where an SVD-based method computes (a GPU: `cuda`), recorded in the recipe so
    that a rebuild computes there too when it can. `allow` (access labels) limits the
    ingredients to what a holder of those rights may use: every such module when `names`
    is empty; the rights are recorded in the recipe."""
    if allow is not None:
        rights = labels(allow)
        names = list(names) or allowed_modules(pool, rights)
        require_usable(pool, names, rights)
    recipe = make_recipe(names, method, alpha, params, seed, dtype, device)
    if allow is not None:
        recipe["access"] = rights
    with pool.change() as txn:
        pool.require_new(output)
        sha = build(pool, txn, output, recipe, {"search": search} if search else None)
        txn.log(
            {"time": now(), "action": "compose", "name": output, "sha256": sha, "recipe": recipe}
        )
    return pool.entry(output)


def make_recipe(
    names: list[str],
    method: str,
    alpha: float | list[float] | None,
    params: dict | None,
    seed: int,
    dtype: str = "fp32",
    device: str | None = None,
) -> dict:
    if not names:
        raise ModpoolError("name at least one module to compose")
    if len(set(names)) != len(names):
        raise ModpoolError("an ingredient is named twice")
    alphas = coefficients(alpha, len(names))
    recipe = {
        "method": method,
        "params": params or {},
        "seed": seed,
        "ingredients": [{"name": n, "alpha": a} for n, a in zip(names, alphas)],
    }
    if dtype != "fp32":
        recipe["storage"] = Storage(dtype).to_dict()
    if device not in (None, "cpu"):
        recipe["device"] = str(resolve_device(device))
    return recipe


def coefficients(alpha: float | list[float] | None, count: int) -> list[float]:
    """One coefficient per ingredient: 1 by default, a shared value, or one each."""
    if alpha is None:
        return [1.0] * count
    if isinstance(alpha, (int, float)):
        return [float(alpha)] * count
    if len(alpha) != count:
        raise ModpoolError(f"{len(alpha)} coefficients given for {count} modules")
    return [float(a) for a in alpha]


def build(
    pool: Pool,
    txn: Transaction,
    output: str,
    recipe: dict,
    extra_meta: dict | None = None,
    staged: Staged | None = None,
) -> str:
    """Write a composition from its recipe into `txn`, streaming; returns its sha256 and
    records its staged file in `staged` for later rebuilds of the same change."""
    names = [i["name"] for i in recipe["ingredients"]]
    staged = staged if staged is not None else {}
    with contextlib.ExitStack() as stack:
        sources = [stack.enter_context(pool.open_artifact(n, staged)) for n in names]
        kind = check_kinds(names, sources)
        modes = {s.meta["mode"] for s in sources}
        storage = Storage.from_dict(recipe.get("storage"))
        meta = {
            "type": "composition",
            "kind": kind,
            "mode": modes.pop() if len(modes) == 1 else "mixed",
            "tasks": list(dict.fromkeys(t for s in sources for t in tasks_of(s.meta))),
            "base": pool.config["base"],
            "base_fingerprint": pool.fingerprint,
            "dtype": storage.torch_name,
            "seed": str(recipe["seed"]),
            "versions": versions(),
            "created": now(),
            **(extra_meta or {}),
        }
        digests = [digest_of(pool, n, staged) for n in names]
        rel = f"compositions/{output}.safetensors"
        with txn.stream(rel) as f:
            sha = write_composition(f, output, sources, recipe, meta, pool.manifest, digests)
            staged_path = Path(f.name)
    staged[output] = (staged_path, sha)
    pool.remember(txn, rel, sha)
    return sha


def digest_of(pool: Pool, name: str, staged: Staged):
    """A function giving the sha256 of an ingredient (cheap when cached)."""
    if name in staged:
        return lambda: staged[name][1]
    path = pool.entry(name).path
    return lambda: pool.hashes.sha256(path)


def merged(
    pool: Pool,
    names: list[str],
    method: str = "sum",
    alphas: list[float] | float = 1.0,
    params: dict | None = None,
    seed: int = 0,
) -> dict:
    """The delta a composition of `names` would hold, computed in memory, nothing written
    (the same arithmetic as `compose`)."""
    artifacts = [pool.read(n) for n in names]
    method_ = get_method(method, seed, **(params or {}))
    method_.tasks = ["+".join(tasks_of(a.meta)) for a in artifacts]
    return method_.merge([a.tensors for a in artifacts], coefficients(alphas, len(names)))
