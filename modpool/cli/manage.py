"""Commands that create, list, show, check and prune a pool."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .app import (
    AllowOpt,
    DtypeOpt,
    JsonOpt,
    OutOpt,
    PretrainedOpt,
    app,
    emit,
    open_pool,
    out,
    pct,
    state,
)


@app.command(rich_help_panel="Pool")
def init(
    base: Annotated[
        str,
        typer.Option(
            help="Base model: 'offline' (EfficientNet-Lite0, ships in a package), an open_clip "
            "architecture with --pretrained (ViT-B-32 --pretrained openai), hf-hub:ORG/REPO, "
            "openclip:ARCH:TAG|FILE|none, timm:ARCH:WEIGHTS."
        ),
    ] = "offline",
    pretrained: PretrainedOpt = None,
    image_size: Annotated[
        int | None, typer.Option(help="Input size for timm bases (default 64).")
    ] = None,
    head_shots: Annotated[
        int, typer.Option(help="Examples per class for fitted linear heads (timm bases); 0 = all.")
    ] = 10,
) -> None:
    """Create a pool for one base."""
    from ..pool import Pool

    pool = Pool.create(state["pool"], base, image_size, head_shots, state["data_root"], pretrained)
    out.print(
        f"created pool {pool.root} on {pool.config['base']} "
        f"(fingerprint {pool.fingerprint[:12]}, {len(pool.manifest)} editable tensors)"
    )


@app.command("list", rich_help_panel="Pool")
def list_(allow: AllowOpt = None, as_json: JsonOpt = False) -> None:
    """List the modules and compositions in the pool (with --allow: those a holder of
    these access rights may use)."""
    from ..store.access import usable
    from ..store.layout import labels

    pool = open_pool()
    entries = pool.entries()
    if allow is not None:
        entries = [e for e in entries if usable(pool, e, labels(allow))]
    table = Table(title=f"{pool.root} — base {pool.config['base']}")
    for col in ("name", "type", "kind", "mode", "task(s)", "source / access", "created"):
        table.add_column(col)
    for e in entries:
        tasks = ", ".join(e.meta.get("tasks") or [e.meta.get("task", "?")])
        kind = f"{e.kind}, task-aware" if e.meta.get("task_aware") else e.kind
        where = f"{e.source} / {', '.join(e.access)}" if e.type == "module" else ""
        table.add_row(
            e.name, e.type, kind, e.meta.get("mode", "?"), tasks, where, e.meta.get("created", "")
        )
    emit(
        as_json,
        [{"name": e.name, **e.meta} for e in entries],
        table,
        None if entries else "the pool is empty: `modpool finetune --task mnist` makes a module",
    )


@app.command(rich_help_panel="Pool")
def show(name: str, as_json: JsonOpt = False) -> None:
    """Show one module or composition: metadata, recipe, evaluations."""
    pool = open_pool()
    entry = pool.entry(name)  # a task's name shows its one module
    name = entry.name
    evals = [r for r in pool.history() if r.get("target") == name and "accuracy" in r]
    table = Table(title=f"{name} ({entry.type})", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in entry.meta.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value, sort_keys=True)
        table.add_row(key, str(value))
    table.add_row("file size", f"{entry.path.stat().st_size / 2**20:.2f} MiB")
    for r in evals[-10:]:
        table.add_row(f"eval {r['task']} ({r['split']})", pct(r["accuracy"]))
    lineage = [
        f"{f['name']}" + ("" if pool.exists(f["name"]) else " (forgotten)")
        for f in entry.meta.get("lineage", {}).get("fisher_from", [])
    ]
    if lineage:
        table.add_row("trained with the Fisher of", ", ".join(lineage))
    used_by = pool.fisher_dependents(name)
    if used_by:
        table.add_row("its Fisher shaped", ", ".join(used_by))
    from ..analysis.linearity import latest_linearity

    gap = latest_linearity(pool, name)
    if gap:
        cells = [f"{r['alpha']:g}: {100 * r['relative_logit_error']:.1f}%" for r in gap["rows"]]
        table.add_row(f"linearity gap ({gap['task']}, {gap['split']})", ", ".join(cells))
    if entry.type == "module":
        table.add_row("data source / access", f"{entry.source} / {', '.join(entry.access)}")
    payload = {"name": name, **entry.meta, "evals": evals, "fisher_used_by": used_by}
    emit(as_json, payload | {"linearity": gap} if gap else payload, table)


@app.command(rich_help_panel="Pool")
def tasks() -> None:
    """List the tasks modpool knows."""
    from ..tasks import known_tasks

    out.print("offline (ship in packages): mnist, animals, digits")
    out.print("standard (need --data-root): " + ", ".join(t for t in known_tasks()[3:-1]))
    out.print("any image folder: folder:PATH with PATH/train/<class>/ and PATH/test/<class>/")


@app.command(rich_help_panel="Pool")
def check(as_json: JsonOpt = False) -> None:
    """Validate every file of the pool (headers, metadata, shapes, finite values,
    fingerprints, recipes whose ingredients exist) and report each problem precisely."""
    from ..store.check import check_pool

    report = check_pool(open_pool())
    for line in report.recovered:
        Console(stderr=True).print(f"recovered: {line}")
    if as_json:
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "files": report.files,
                    "recovered": report.recovered,
                    "problems": [asdict(p) for p in report.problems],
                },
                indent=2,
            )
        )
    elif report.ok:
        out.print(f"ok: {report.files} files checked, no problems")
    else:
        table = Table(title=f"{len(report.problems)} problem(s) in {report.files} files")
        table.add_column("file")
        table.add_column("problem")
        for problem in report.problems:
            table.add_row(problem.path, problem.message)
        out.print(table)
    if not report.ok:
        raise typer.Exit(1)


@app.command(rich_help_panel="Pool")
def compact(
    name: str,
    output: OutOpt,
    dtype: DtypeOpt = "bf16",
    density: Annotated[
        float, typer.Option(help="Fraction of each tensor's largest-magnitude entries kept.")
    ] = 1.0,
    as_json: JsonOpt = False,
) -> None:
    """Store a module again in compact form (lower precision, only its largest entries) under
    a new name; the original stays, so nothing composed from it changes."""
    from ..store.encoding import Storage

    pool = open_pool()
    storage = Storage(dtype, density)
    before = pool.entry(name).path.stat().st_size
    entry = pool.compact(name, output, storage)
    after = entry.path.stat().st_size
    note = (
        f"stored [bold]{output}[/] ({dtype}, density {density:g}): {after / 2**20:.2f} MiB, "
        f"{100 * after / before:.1f}% of {name} ({before / 2**20:.2f} MiB)"
    )
    emit(
        as_json, {"name": output, "bytes": after, "source_bytes": before, **entry.meta}, None, note
    )


@app.command(rich_help_panel="Pool")
def forget(
    name: Annotated[
        str | None, typer.Argument(help="A module or composition (or a task's one module).")
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(help="Instead of a name: every module trained on data from this source."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would go and be rebuilt; write nothing.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove a module (or every module of a data source), its masks, and rebuild, exactly,
    every composition that used them (one audit-logged change)."""
    report = open_pool().forget(name, source, dry_run)
    verb = "would forget" if report.dry_run else "forgot"
    lines = [f"{verb} {report.forgotten}"]
    if source:
        lines.append(f"  modules: {', '.join(report.modules)}")
    lines += [f"  with its mask {m}" for m in report.masks]
    lines += [
        f"  {'would rebuild' if report.dry_run else 'rebuilt'} {r['name']} from "
        f"{', '.join(r['ingredients'])}"
        + ("" if report.dry_run else f" ({r['sha256_before'][:12]} -> {r['sha256_after'][:12]})")
        for r in report.rebuilt
    ]
    lines += [f"  removed {c} (no ingredients left)" for c in report.removed]
    if report.fisher_used_by:
        lines.append(
            f"  note: {', '.join(report.fisher_used_by)} were trained with its Fisher "
            "(they stay; `show` records it)"
        )
    emit(as_json, asdict(report), None, "\n".join(lines))
