"""Compartments: who may use which modules. Every module records the source of its
training data (`source`, its task by default) and access labels (`access`, `public` by
default). A holder of rights R may use a module whose labels include `public` or any label
in R, and a composition when it may use every ingredient. `compose --allow R` builds from
such modules only (all of them when no name is given) and records R in the recipe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ModpoolError
from .layout import PUBLIC, Entry

if TYPE_CHECKING:
    from ..pool import Pool


def usable(pool: Pool, entry: Entry, rights: list[str]) -> bool:
    """May a holder of `rights` use `entry`?"""
    if entry.type == "module":
        return PUBLIC in entry.access or bool(set(entry.access) & set(rights))
    return all(
        pool.exists(i["name"]) and usable(pool, pool.entry(i["name"]), rights)
        for i in entry.ingredients
    )


def require_usable(pool: Pool, names: list[str] | str, rights: list[str]) -> None:
    """Refuse, naming it, the first of `names` a holder of `rights` may not use."""
    names = [names] if isinstance(names, str) else names
    for name in names:
        entry = pool.entry(name)
        if not usable(pool, entry, rights):
            needs = ", ".join(entry.access) if entry.type == "module" else "its ingredients' labels"
            raise ModpoolError(
                f"{entry.name} is outside the allowed access ({', '.join(rights) or 'none'}): "
                f"it needs {needs}"
            )


def allowed_modules(pool: Pool, rights: list[str]) -> list[str]:
    """Every module (masks aside) a holder of `rights` may use, by name."""
    return [e.name for e in pool.entries() if e.trained_module and usable(pool, e, rights)]
