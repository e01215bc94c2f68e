"""Commands that combine modules: `add`, `negate`, `compose` (with alpha searches)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ..errors import ModpoolError
from .app import (
    AllowOpt,
    DtypeOpt,
    GridOpt,
    JsonOpt,
    OutOpt,
    app,
    emit,
    err,
    open_pool,
    out,
    parse_grid,
    pct,
    state,
)


def _parse_coefs(
    names: list[str], alpha: float | None, coef: list[str]
) -> float | list[float] | None:
    if not coef:
        return alpha
    given = {}
    for item in coef:
        key, sep, value = item.partition("=")
        try:
            given[key] = float(value)
        except ValueError:
            sep = ""
        if not sep or key not in names:
            raise ModpoolError(f"--coef expects NAME=NUMBER for a listed module, got {item!r}")
    default = 1.0 if alpha is None else alpha
    return [given.get(n, default) for n in names]


def _composed(entry, as_json: bool, rows=None, negation: bool = False) -> None:
    recipe = entry.meta["recipe"]
    parts = ", ".join(f"{i['alpha']:g}·{i['name']}" for i in recipe["ingredients"])
    payload = {"name": entry.name, **entry.meta}
    searched = entry.meta.get("search") or {}
    if not as_json and "lambda" in searched:
        out.print(lambda_table(searched["lambda"]))
    if not as_json and rows and recipe["method"] != "tall":
        out.print(negate_table(rows) if negation else search_table(rows))
    aware = ", task-aware: a mask per task" if entry.meta.get("task_aware") else ""
    emit(
        as_json,
        payload,
        None,
        f"stored composition [bold]{entry.name}[/] ({entry.kind}{aware}) = "
        f"{recipe['method']}({parts})",
    )
    if not as_json and searched.get("best_at_edge"):
        top = searched["best_alpha"]
        err.print(
            f"[yellow]note:[/] the best alpha, {top:g}, is the grid's largest: a wider grid "
            f"may do better (--grid 0:{2 * top:g}:{top / 10:g})"
        )


def lambda_table(found: dict) -> Table:
    """The TALL lambda search: validation accuracy per task and lambda, best per task."""
    rows, chosen = found["rows"], found["chosen"]
    table = Table(title="lambda search (task-aware validation accuracy %; best kept per task)")
    table.add_column("lambda", justify="right")
    for task in chosen:
        table.add_column(task, justify="right")
    for row in rows:
        cells = [
            f"[bold green]{pct(row['accuracy'][t])}[/]"
            if row["alpha"] == chosen[t]
            else pct(row["accuracy"][t])
            for t in chosen
        ]
        table.add_row(f"{row['alpha']:g}", *cells)
    return table


def search_table(rows) -> Table:
    tasks = list(rows[0].accuracy)
    table = Table(title="alpha search (validation accuracy %, mean normalised %)")
    table.add_column("alpha", justify="right")
    for t in tasks:
        table.add_column(t, justify="right")
    table.add_column("mean normalised", justify="right")
    best = max(rows, key=lambda r: r.mean_normalized)
    for r in rows:
        style = "bold green" if r is best else None
        table.add_row(
            f"{r.alpha:g}",
            *[pct(r.accuracy[t]) for t in tasks],
            pct(r.mean_normalized),
            style=style,
        )
    return table


def negate_table(rows) -> Table:
    table = Table(title="negation search (validation accuracy %)")
    for col in ("alpha", "target", "control", "control kept", "allowed"):
        table.add_column(col, justify="right")
    allowed = [r for r in rows if r.allowed]
    best = min(allowed, key=lambda r: (r.target_accuracy, -r.control_accuracy)) if allowed else None
    for r in rows:
        table.add_row(
            f"{r.alpha:g}",
            pct(r.target_accuracy),
            pct(r.control_accuracy),
            pct(r.control_kept),
            "yes" if r.allowed else "no",
            style="bold green" if r is best else None,
        )
    return table


CoefOpt = Annotated[
    list[str] | None, typer.Option("--coef", help="Per-module coefficient NAME=VALUE (repeatable).")
]

SearchOpt = Annotated[bool, typer.Option("--search", help="Pick alpha on the validation splits.")]


@app.command(rich_help_panel="Edit")
def add(
    names: list[str],
    output: OutOpt,
    alpha: Annotated[float, typer.Option(help="Shared coefficient alpha.")] = 1.0,
    coef: CoefOpt = None,
    search: SearchOpt = False,
    grid: GridOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """theta_0 + alpha * sum of the modules (task arithmetic)."""
    _compose(names, output, "sum", alpha, coef, {}, 0, search, grid, as_json)


@app.command(rich_help_panel="Edit")
def negate(
    name: str,
    output: OutOpt,
    alpha: Annotated[float, typer.Option(help="How much to subtract.")] = 1.0,
    search: Annotated[
        bool,
        typer.Option(
            "--search",
            help="Pick the alpha that minimises the target's validation accuracy while "
            "--control keeps --keep of the base's accuracy.",
        ),
    ] = False,
    control: Annotated[str | None, typer.Option(help="Control task for --search.")] = None,
    keep: Annotated[
        float, typer.Option(help="Share of the base's control accuracy to keep.")
    ] = 0.95,
    grid: GridOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """theta_0 - alpha * tau: remove a capability (forgetting by negation)."""
    pool = open_pool()
    if not search:
        _composed(pool.negate(name, output, alpha), as_json)
        return
    if control is None:
        raise ModpoolError("negate --search needs --control TASK (a task whose accuracy must stay)")
    from ..edit.search import negate_searched

    entry, rows = negate_searched(
        pool, name, output, control, keep, parse_grid(grid), show_progress=state["progress"]
    )
    _composed(entry, as_json, rows, negation=True)


@app.command(rich_help_panel="Edit")
def compose(
    names: Annotated[
        list[str] | None,
        typer.Argument(
            help="Modules or compositions (with --allow and none: every allowed module)."
        ),
    ] = None,
    output: OutOpt = ...,
    method: Annotated[
        str,
        typer.Option(
            help="sum, mean, ties, dare, magnitude; tsv, iso, iso-cts (SVD of each matrix); "
            "consensus; tall (a mask per task: a task-aware model). See docs/guide.md."
        ),
    ] = "sum",
    alpha: Annotated[float | None, typer.Option(help="Shared coefficient (default 1).")] = None,
    coef: CoefOpt = None,
    density: Annotated[
        float | None,
        typer.Option(help="ties/magnitude/dare+ties: fraction of each tau kept by magnitude."),
    ] = None,
    trim: Annotated[str | None, typer.Option(help="Trimming scope: tensor or global.")] = None,
    sign: Annotated[str | None, typer.Option(help="ties sign election: mass or count.")] = None,
    agg: Annotated[str | None, typer.Option(help="ties averaging: mean or sum.")] = None,
    drop: Annotated[float | None, typer.Option(help="dare: drop probability p.")] = None,
    dare_merge: Annotated[
        str | None, typer.Option(help="dare: merge survivors by sum or ties.")
    ] = None,
    matrices: Annotated[
        str | None,
        typer.Option(
            help="tsv/iso/iso-cts: which tensors are matrices: linear (2-D weights, not "
            "embeddings; default), 2d (every 2-D tensor), conv (also conv kernels)."
        ),
    ] = None,
    qkv: Annotated[
        str | None,
        typer.Option(help="tsv/iso/iso-cts: a fused attention in_proj as one matrix or split."),
    ] = None,
    precision: Annotated[
        str | None, typer.Option(help="tsv/iso/iso-cts: SVD in float32 (default) or float64.")
    ] = None,
    common: Annotated[
        float | None, typer.Option(help="iso-cts: fraction of the rank kept common (0.8).")
    ] = None,
    lambda_: Annotated[
        float | None,
        typer.Option(
            "--lambda",
            help="tall/consensus: mask strength for every task (0.4; --search picks one per task).",
        ),
    ] = None,
    k: Annotated[
        int | None, typer.Option(help="consensus: tasks that must need a weight to keep it (2).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed (dare masks); part of the recipe.")] = 0,
    search: SearchOpt = False,
    grid: GridOpt = None,
    dtype: DtypeOpt = "fp32",
    device: Annotated[
        str | None, typer.Option(help="Where SVD-heavy methods compute: cpu, cuda, cuda:N.")
    ] = None,
    allow: AllowOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Compose modules or compositions into one, by a named merge method (streamed tensor by
    tensor: memory stays at a few tensors whatever the number of modules)."""
    params = {
        "density": density,
        "trim": trim,
        "sign": sign,
        "agg": agg,
        "drop": drop,
        "merge": dare_merge,
        "matrices": matrices,
        "qkv": qkv,
        "precision": precision,
        "common": common,
        "lambda": lambda_,
        "k": k,
    }
    params = {key: v for key, v in params.items() if v is not None}
    if not names and allow is None:
        raise ModpoolError("name the modules to compose (or --allow RIGHTS for every allowed one)")
    if allow is not None and not names:  # every module the rights allow
        from ..store.access import allowed_modules
        from ..store.layout import labels

        names = allowed_modules(open_pool(), labels(allow))
    _compose(
        names or [], output, method, alpha, coef, params, seed, search, grid, as_json, dtype,
        device, allow,
    )  # fmt: skip


def _compose(
    names, output, method, alpha, coef, params, seed, search, grid, as_json, dtype="fp32",
    device=None, allow=None,
) -> None:  # fmt: skip
    from ..store.encoding import Storage

    Storage(dtype)  # a bad dtype fails before any work
    pool = open_pool()
    if not search:
        coefs = _parse_coefs(names, alpha, coef or [])
        entry = pool.compose(names, output, method, coefs, params, seed, None, dtype, device, allow)
        _composed(entry, as_json)
        return
    if coef:
        raise ModpoolError("--search picks one shared alpha: drop --coef")
    from ..edit.search import compose_searched

    entry, rows = compose_searched(
        pool,
        names,
        output,
        method,
        params,
        seed,
        parse_grid(grid),
        show_progress=state["progress"],
        dtype=dtype,
        device=device,
        allow=allow,
    )
    _composed(entry, as_json, rows)
