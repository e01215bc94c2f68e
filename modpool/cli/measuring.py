"""Commands that measure: `eval` (accuracy, normalised accuracy), `disentangle`, `masks`."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..bases.base import block_of
from .app import AllowOpt, JsonOpt, app, emit, open_pool, out, parse_grid, pct, state


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
    allow: AllowOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Top-1 and normalised accuracy of the base, a module or a composition."""
    rows = open_pool().evaluate(target, task or None, split, state["progress"], not no_cache, allow)
    emit(as_json, [asdict(r) for r in rows], accuracy_table(rows, f"{target} ({split})"))


def accuracy_table(rows, title: str) -> Table:
    table = Table(title=title)
    for col in ("target", "task", "accuracy %", "normalised %", "examples"):
        table.add_column(col, justify="right" if "%" in col or col == "examples" else "left")
    for r in rows:
        target = f"{r.target} (task-aware)" if r.task_aware else r.target
        table.add_row(target, r.task, pct(r.accuracy), pct(r.normalized), str(r.examples))
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
    limit: Annotated[
        int | None, typer.Option(min=1, help="Use at most N examples per task.")
    ] = None,
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


@app.command(rich_help_panel="Measure")
def masks(
    names: Annotated[list[str], typer.Argument(help="Two or more masks (masked modules).")],
    split: Annotated[str, typer.Option(help="Split for the removal matrix.")] = "test",
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write PREFIX.json and PREFIX.png.")
    ] = Path("masks"),
    as_json: JsonOpt = False,
) -> None:
    """Compare learned masks: kept fraction per layer, pairwise IoU and shared fraction,
    and the accuracy on each task when the weights exclusive to another are removed."""
    from ..analysis.figures import PLOT_EXTRA
    from ..analysis.masks import save_analysis

    result = open_pool().mask_analysis(names, split, state["progress"])
    js, png = save_analysis(result, output)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    out.print(kept_table(result))
    out.print(pair_table(result))
    out.print(removal_table(result))
    out.print(f"wrote {js}" + (f" and {png}" if png else f" ({PLOT_EXTRA})"))


def kept_table(result: dict) -> Table:
    """Kept fraction per block of layers (a block: the name up to its last number)."""
    names = result["masks"]
    table = Table(title="kept fraction % (per block of layers)")
    table.add_column("layers")
    for name in names:
        table.add_column(name, justify="right")
    groups: dict[str, dict[str, list[float]]] = {}
    for name in names:
        for tensor, kept in result["kept"][name]["per_tensor"].items():
            group = block_of(tensor) or tensor.split(".")[0]
            groups.setdefault(group, {}).setdefault(name, []).append(kept)
    for group, values in groups.items():
        cells = [pct(sum(v) / len(v)) if (v := values.get(n)) else "-" for n in names]
        table.add_row(group, *cells)
    table.add_row("all", *[pct(result["kept"][n]["total"]) for n in names], style="bold")
    return table


def pair_table(result: dict) -> Table:
    names = result["masks"]
    table = Table(title="IoU % (shared %: of the row's weights, the column's mask keeps)")
    table.add_column("")
    for name in names:
        table.add_column(name, justify="right")
    for a in names:
        cells = []
        for b in names:
            pair = result["pairs"].get(f"{a}|{b}")
            cells.append("-" if pair is None else f"{pct(pair['iou'])} ({pct(pair['shared'])})")
        table.add_row(a, *cells)
    return table


def removal_table(result: dict) -> Table:
    names, rows = result["masks"], result["removal"]
    table = Table(
        title="accuracy % of each task's network with the weights exclusive to ... removed"
    )
    table.add_column("removed")
    for name in names:
        table.add_column(f"{name} ({result['tasks'][name]})", justify="right")
    for removed, accs in rows.items():
        table.add_row(removed, *[pct(accs[n]) for n in names])
    return table


@app.command(rich_help_panel="Measure")
def explain(
    name: Annotated[str, typer.Argument(help="A composition.")],
    task: Annotated[str | None, typer.Option(help="Task (default: its first).")] = None,
    split: Annotated[str, typer.Option(help="val or test.")] = "test",
    limit: Annotated[int | None, typer.Option(min=1, help="Use at most N examples.")] = None,
    image: Annotated[
        Path | None, typer.Option(help="Explain the prediction for one image file instead.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Bar chart PNG (JSON beside it).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """How much each ingredient contributes to a composition's predictions: exact shares of
    the predicted logit for tangent sums, leave-one-out otherwise."""
    from ..analysis.explain import save_chart
    from ..analysis.figures import PLOT_EXTRA

    result = open_pool().explain(name, task, split, limit, image, state["progress"])
    js, chart = save_chart(result, output or Path(f"explain-{result['name']}-{result['task']}.png"))
    if as_json:
        print(json.dumps(result, indent=2))
        return
    out.print(explain_table(result))
    if image is not None and result["method"] == "exact":
        first = result["per_example"][0]
        out.print(f"{image}: predicted {first['predicted']} (logit {first['logit']:.3f})")
    out.print(f"wrote {js}" + (f" and {chart}" if chart else f" ({PLOT_EXTRA})"))


def explain_table(result: dict) -> Table:
    exact = result["method"] == "exact"
    title = (
        f"{result['name']} on {result['task']}: "
        + ("shares of the predicted logit (exact)" if exact else "leave-one-out")
        + f", {result['examples']} example(s)"
    )
    table = Table(title=title)
    table.add_column("ingredient")
    columns = (
        ("mean share", "mean_share", "{:.3f}"),
        ("largest share %", "largest_share_rate", "pct"),
        ("flips %", "flip_rate", "pct"),
    ) if exact else (
        ("accuracy without %", "accuracy_without", "pct"),
        ("accuracy lost", "accuracy_drop", "pct"),
        ("logit lost", "logit_drop", "{:.3f}"),
        ("flips %", "flip_rate", "pct"),
    )  # fmt: skip
    for label, _, _ in columns:
        table.add_column(label, justify="right")
    for name in result["ingredients"]:
        cells = []
        for _, key, fmt in columns:
            value = result[key][name]
            cells.append(
                "-" if value is None else pct(value) if fmt == "pct" else fmt.format(value)
            )
        table.add_row(name, *cells)
    if exact:
        table.add_row("(base)", f"{result['mean_base_share']:.3f}", "", "", style="dim")
    return table


@app.command(rich_help_panel="Measure")
def linearity(
    name: Annotated[str, typer.Argument(help="A module (or composition).")],
    task: Annotated[str | None, typer.Option(help="Task (default: its own).")] = None,
    grid: Annotated[
        str | None, typer.Option(help="Coefficients: a,b,c or START:STOP:STEP (0.25,...,2).")
    ] = None,
    split: Annotated[str, typer.Option(help="val or test.")] = "val",
    limit: Annotated[int | None, typer.Option(min=1, help="Use at most N examples.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """How far a module is from the tangent regime: the gap between f(theta_0 + alpha tau)
    and f(theta_0) + alpha J tau over alpha (kept in the pool; `show` prints it)."""
    result = open_pool().linearity(name, task, parse_grid(grid), split, limit, state["progress"])
    table = Table(
        title=f"{result['name']} ({result['kind']}) on {result['task']}: linearisation gap"
    )
    for col in ("alpha", "relative logit error %", "prediction agreement %"):
        table.add_column(col, justify="right")
    for row in result["rows"]:
        table.add_row(f"{row['alpha']:g}", pct(row["relative_logit_error"]), pct(row["agreement"]))
    emit(as_json, result, table)
