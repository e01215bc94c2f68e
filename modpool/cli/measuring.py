"""Commands that measure: `eval` (accuracy, normalised accuracy) and `disentangle`."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .app import JsonOpt, app, emit, open_pool, parse_grid, pct, state


@app.command("eval", rich_help_panel="Measure")
def eval_(
    target: Annotated[str, typer.Argument(help="'base', a module or a composition.")],
    task: Annotated[
        list[str] | None,
        typer.Option("--task", help="Task (repeatable); default: the target's own."),
    ] = None,
    split: Annotated[str, typer.Option(help="val or test.")] = "test",
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Recompute even if evaluated before.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Top-1 and normalised accuracy of the base, a module or a composition."""
    rows = open_pool().evaluate(target, task or None, split, state["progress"], not no_cache)
    emit(as_json, [asdict(r) for r in rows], accuracy_table(rows, f"{target} ({split})"))


def accuracy_table(rows, title: str) -> Table:
    table = Table(title=title)
    for col in ("target", "task", "accuracy %", "normalised %", "examples"):
        table.add_column(col, justify="right" if "%" in col or col == "examples" else "left")
    for r in rows:
        table.add_row(r.target, r.task, pct(r.accuracy), pct(r.normalized), str(r.examples))
    return table


@app.command(rich_help_panel="Measure")
def disentangle(
    first: str,
    second: str,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="PNG path (JSON beside it); default disentangle-A-B.png."
        ),
    ] = None,
    grid: Annotated[
        str | None, typer.Option(help="Alpha grid for both axes (default -3:3:0.5).")
    ] = None,
    split: Annotated[str, typer.Option(help="val or test.")] = "val",
    limit: Annotated[int | None, typer.Option(help="Use at most N examples per task.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Weight disentanglement error of two modules over an (alpha_1, alpha_2) grid, as a PNG
    heat map and JSON."""
    from ..analysis.disentangle import save_map
    from ..analysis.figures import PLOT_EXTRA

    pool = open_pool()
    result = pool.disentangle(first, second, parse_grid(grid), split, limit, state["progress"])
    png, js = save_map(result, output or Path(f"disentangle-{first}-{second}.png"))
    size = len(result["alphas"])
    wrote = f"wrote {png} and {js}" if png else f"wrote {js} ({PLOT_EXTRA})"
    emit(
        as_json,
        {**result, "png": str(png) if png else None, "json": str(js)},
        None,
        f"{wrote} ({size}x{size} grid, {result['kind']})",
    )
