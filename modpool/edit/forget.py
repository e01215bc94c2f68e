"""Forgetting: remove a module or composition and rebuild, from its recipe without it, every
composition that used it (directly or through other compositions), in one logged change.

A merge method is a deterministic function of its ingredient files and recipe, so each
rebuilt composition is bit-identical to composing its remaining ingredients afresh.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..store.layout import Entry, now
from .compose import Staged, build

if TYPE_CHECKING:
    from ..pool import Pool


@dataclass
class ForgetReport:
    forgotten: str
    rebuilt: list[dict] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    fisher_used_by: list[str] = field(default_factory=list)


def forget(pool: Pool, name: str) -> ForgetReport:
    """Remove `name` and rebuild every composition that used it; compositions left
    without ingredients are removed too."""
    with pool.change() as txn:
        target = pool.entry(name)
        report = ForgetReport(name, fisher_used_by=fisher_dependents(pool, name))
        removed, staged = {name}, {}
        for entry in dependents_in_order(pool, name):
            rebuilt = _rebuild_without(pool, txn, entry, removed, staged)
            if rebuilt is None:
                removed.add(entry.name)
                report.removed.append(entry.name)
            else:
                report.rebuilt.append(rebuilt)
        for gone in [name, *report.removed]:
            txn.delete(str(pool.path_of(gone).relative_to(pool.root)))
        txn.log(
            {
                "time": now(),
                "action": "forget",
                "name": name,
                "sha256": pool.hashes.sha256(target.path),
                "type": target.type,
                "rebuilt": report.rebuilt,
                "removed": report.removed,
                "fisher_used_by": report.fisher_used_by,
            }
        )
    return report


def _rebuild_without(pool: Pool, txn, entry: Entry, removed: set[str], staged: Staged):
    """Rebuild composition `entry` without the `removed` ingredients; None if none remain."""
    recipe = entry.meta["recipe"]
    remaining = [i for i in recipe["ingredients"] if i["name"] not in removed]
    if not remaining:
        return None
    before = pool.hashes.sha256(entry.path)
    new_recipe = {
        **recipe,
        "ingredients": [{"name": i["name"], "alpha": i["alpha"]} for i in remaining],
    }
    after = build(pool, txn, entry.name, new_recipe, staged=staged)
    return {
        "name": entry.name,
        "sha256_before": before,
        "sha256_after": after,
        "ingredients": [i["name"] for i in remaining],
    }


def fisher_dependents(pool: Pool, name: str) -> list[str]:
    """Modules trained (ita/iel) with the Fisher of `name`; they keep working after `name`
    is forgotten, but their training used its task's data."""
    return [
        e.name
        for e in pool.entries()
        if any(f.get("name") == name for f in e.meta.get("lineage", {}).get("fisher_from", []))
    ]


def dependents_in_order(pool: Pool, name: str) -> list[Entry]:
    """Compositions that use `name` directly or through other compositions, each after the
    compositions it uses."""
    compositions = {e.name: e for e in pool.entries() if e.type == "composition"}
    uses = {c: {i["name"] for i in e.ingredients} for c, e in compositions.items()}
    affected: set[str] = set()
    frontier = {name}
    while frontier:
        frontier = {c for c, used in uses.items() if used & frontier and c not in affected}
        affected |= frontier
    ordered: list[str] = []
    while len(ordered) < len(affected):
        for c in sorted(affected - set(ordered)):
            if not (uses[c] & (affected - set(ordered))):
                ordered.append(c)
    return [compositions[c] for c in ordered]
