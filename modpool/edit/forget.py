"""Forgetting: remove a module or composition and rebuild, from its recipe without it, every
composition that used it (directly or through other compositions), in one logged change.

A merge method is a deterministic function of its ingredient files and recipe, so each
rebuilt composition is bit-identical to composing its remaining ingredients afresh.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import ModpoolError
from ..store.layout import Entry, now
from .compose import Staged, build

if TYPE_CHECKING:
    from ..pool import Pool


@dataclass
class ForgetReport:
    forgotten: str  # a name, or "source:S"
    modules: list[str] = field(default_factory=list)  # what was asked for (a source: its modules)
    rebuilt: list[dict] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # compositions left without ingredients
    fisher_used_by: list[str] = field(default_factory=list)
    masks: list[str] = field(default_factory=list)  # masked modules made from them, gone too
    dry_run: bool = False


def forget(
    pool: Pool, name: str | None = None, source: str | None = None, dry_run: bool = False
) -> ForgetReport:
    """Remove module or composition `name` (or every module trained on data `source`), the
    masks made from them, and rebuild every composition that used any of them, in one
    change with one audit record; compositions left without ingredients are removed too.
    `dry_run` reports all that and writes nothing."""
    if (name is None) == (source is None):
        raise ModpoolError("forget a name, or every module of a --source: one of the two")
    if dry_run:
        return _plan(pool, name, source, None)[0]
    with pool.change() as txn:
        report, targets = _plan(pool, name, source, txn)
        for gone in [*report.modules, *report.masks, *report.removed]:
            txn.delete(str(pool.path_of(gone).relative_to(pool.root)))
        txn.log(_record(pool, report, targets, source))
    return report


def _plan(pool: Pool, name, source, txn) -> tuple[ForgetReport, list[Entry]]:
    """What goes and what is rebuilt; with a change (`txn`), the rebuilt files are staged."""
    targets = [pool.entry(name)] if name else modules_of_source(pool, source)
    report = ForgetReport(name or f"source:{source}", [e.name for e in targets])
    report.dry_run = txn is None
    used_by = {d for e in targets for d in fisher_dependents(pool, e.name)}
    report.fisher_used_by = sorted(used_by - set(report.modules))
    report.masks = [m for e in targets for m in masks_of(pool, e.name)]
    removed, staged = {*report.modules, *report.masks}, {}
    for entry in dependents_in_order(pool, set(removed)):
        rebuilt = _rebuild_without(pool, txn, entry, removed, staged)
        if rebuilt is None:
            removed.add(entry.name)
            report.removed.append(entry.name)
        else:
            report.rebuilt.append(rebuilt)
    return report, targets


def _record(pool: Pool, report: ForgetReport, targets: list[Entry], source: str | None) -> dict:
    record = {
        "time": now(),
        "action": "forget-source" if source else "forget",
        "name": report.forgotten if source is None else None,
        "source": source,
        "forgotten": [
            {"name": e.name, "sha256": pool.hashes.sha256(e.path), "type": e.type} for e in targets
        ],
        "rebuilt": report.rebuilt,
        "removed": report.removed,
        "masks": report.masks,
        "fisher_used_by": report.fisher_used_by,
    }
    if source is None:  # the fields a single forget has always logged
        record |= {"sha256": record["forgotten"][0]["sha256"], "type": targets[0].type}
    return {k: v for k, v in record.items() if v is not None}


def modules_of_source(pool: Pool, source: str) -> list[Entry]:
    """The modules trained (or imported) on data from `source`, masks aside."""
    found = [e for e in pool.entries() if e.trained_module and e.source == source]
    if not found:
        known = sorted({e.source for e in pool.entries() if e.type == "module"})
        raise ModpoolError(
            f"no module was trained on source {source!r} (sources: {', '.join(known) or 'none'})"
        )
    return found


def _rebuild_without(pool: Pool, txn, entry: Entry, removed: set[str], staged: Staged):
    """Rebuild composition `entry` without the `removed` ingredients into `txn`; None if
    none remain. Without a change (a dry run), only name what would be rebuilt."""
    recipe = entry.meta["recipe"]
    remaining = [i for i in recipe["ingredients"] if i["name"] not in removed]
    if not remaining:
        return None
    before = pool.hashes.sha256(entry.path)
    if txn is None:
        names = [i["name"] for i in remaining]
        return {
            "name": entry.name,
            "sha256_before": before,
            "sha256_after": None,
            "ingredients": names,
        }
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


def masks_of(pool: Pool, name: str) -> list[str]:
    """The masked modules made from module `name`."""
    return [e.name for e in pool.entries() if e.mask_of == name]


def dependents_in_order(pool: Pool, names: str | set[str]) -> list[Entry]:
    """Compositions that use any of `names` directly or through other compositions, each
    after the compositions it uses."""
    compositions = {e.name: e for e in pool.entries() if e.type == "composition"}
    uses = {c: {i["name"] for i in e.ingredients} for c, e in compositions.items()}
    affected: set[str] = set()
    frontier = {names} if isinstance(names, str) else set(names)
    while frontier:
        frontier = {c for c, used in uses.items() if used & frontier and c not in affected}
        affected |= frontier
    ordered: list[str] = []
    while len(ordered) < len(affected):
        for c in sorted(affected - set(ordered)):
            if not (uses[c] & (affected - set(ordered))):
                ordered.append(c)
    return [compositions[c] for c in ordered]
