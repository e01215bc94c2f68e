"""The `modpool` command: parses, calls the Python API, prints. No logic lives here."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..errors import ModpoolError

app = typer.Typer(
    help="Edit pretrained vision models with composable task modules: fine-tune one module "
    "per task, add, negate and compose them, forget one exactly, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

state: dict = {}

PoolOpt = Annotated[
    Path, typer.Option("--pool", envvar="MODPOOL_POOL", help="Pool directory (env MODPOOL_POOL).")
]

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]

DtypeOpt = Annotated[
    str, typer.Option(help="Stored precision: fp32, bf16 or fp16 (half the bytes).")
]

PretrainedOpt = Annotated[
    str | None,
    typer.Option(
        help="With an open_clip architecture as --base: its pretrained tag (openai, "
        "laion2b_s34b_b79k, ...), a local weights file, or none."
    ),
]
SourceOpt = Annotated[
    str | None,
    typer.Option(help="Who or what the training data came from (default: the task)."),
]
AccessOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--access", help="Access label(s) of the data, repeatable or comma-separated (public)."
    ),
]
AllowOpt = Annotated[
    str | None,
    typer.Option(
        "--allow", help="Your access rights L1,L2: only modules with one of them (or public)."
    ),
]
OutOpt = Annotated[str, typer.Option("--output", "-o", help="Name of the new composition.")]
GridOpt = Annotated[
    str | None,
    typer.Option(help="Alpha grid for --search: START:STOP:STEP or a,b,c (default 0:1:0.05)."),
]


@app.callback()
def _global(
    pool: PoolOpt = Path("pool"),
    data_root: Annotated[
        Path | None,
        typer.Option(
            "--data-root",
            envvar="MODPOOL_DATA_ROOT",
            help="Where the standard benchmark data sets live (torchvision layouts or prepared "
            "folders). Never downloaded.",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    state.update(pool=pool, data_root=data_root, progress=False if quiet else None)


def open_pool():
    from ..pool import Pool

    return Pool(state["pool"], state["data_root"])


def emit(as_json: bool, payload, table: Table | None = None, note: str | None = None) -> None:
    if as_json:
        print(json.dumps(payload, indent=2, default=str))
        return
    if table is not None:
        out.print(table)
    if note:
        out.print(note)


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


MAX_GRID = 10_000  # points: each one is an evaluation


def parse_grid(grid: str | None) -> list[float] | None:
    if grid is None:
        return None
    try:
        if ":" not in grid:
            return [float(x) for x in grid.split(",")]
        start, stop, step = (float(x) for x in grid.split(":"))
        count = int(round((stop - start) / step)) + 1
    except (ValueError, ZeroDivisionError, OverflowError):
        raise ModpoolError(
            f"--grid takes START:STOP:STEP or comma-separated values, not {grid!r}"
        ) from None
    if not 1 <= count <= MAX_GRID:
        raise ModpoolError(
            f"--grid {grid}: STEP must lead from START to STOP in at most {MAX_GRID} points"
        )
    return [round(start + i * step, 10) for i in range(count)]


def fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    sys.exit(1)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)  # third-party deprecations
    try:
        app()
    except ModpoolError as exc:
        fail(str(exc))
    except OSError as exc:  # a full disk, a read-only or vanished directory, permissions
        what = exc.strerror or type(exc).__name__
        where = f": {exc.filename}" if exc.filename else ""
        fail(
            f"{what}{where}. Nothing was half-written: a change cut short is rolled back "
            "(or completed) when the pool is next used; fix the cause and run the command again"
        )
    except KeyboardInterrupt:
        err.print("interrupted; the pool is unchanged by the unfinished step")
        sys.exit(130)
