"""The `modpool` command: parses, calls the Python API, prints. No logic lives here."""

from __future__ import annotations

import json
import os
import sys
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .errors import ModpoolError

app = typer.Typer(
    help="Edit pretrained vision models with composable task modules: fine-tune one module "
    "per task, add, negate and compose them, forget one exactly, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console(soft_wrap=True)
state: dict = {}

PoolOpt = Annotated[
    Path, typer.Option("--pool", envvar="MODPOOL_POOL", help="Pool directory (env MODPOOL_POOL).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
DtypeOpt = Annotated[
    str, typer.Option(help="Stored precision: fp32, bf16 or fp16 (half the bytes).")
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


def _pool():
    from .pool import Pool

    return Pool(state["pool"], state["data_root"])


def _emit(as_json: bool, payload, table: Table | None = None, note: str | None = None) -> None:
    if as_json:
        print(json.dumps(payload, indent=2, default=str))
        return
    if table is not None:
        out.print(table)
    if note:
        out.print(note)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


@app.command()
def init(
    base: Annotated[
        str,
        typer.Option(
            help="Base model: 'offline' (EfficientNet-Lite0, ships in "
            "a package), openclip:ARCH:TAG|FILE|none, timm:ARCH:WEIGHTS."
        ),
    ] = "offline",
    image_size: Annotated[
        int | None, typer.Option(help="Input size for timm bases (default 64).")
    ] = None,
    head_shots: Annotated[
        int, typer.Option(help="Examples per class for fitted linear heads (timm bases); 0 = all.")
    ] = 10,
) -> None:
    """Create a pool for one base."""
    from .pool import Pool

    pool = Pool.create(state["pool"], base, image_size, head_shots, state["data_root"])
    out.print(
        f"created pool {pool.root} on {pool.config['base']} "
        f"(fingerprint {pool.fingerprint[:12]}, {len(pool.manifest)} editable tensors)"
    )


@app.command("list")
def list_(as_json: JsonOpt = False) -> None:
    """List the modules and compositions in the pool."""
    pool = _pool()
    entries = pool.entries()
    table = Table(title=f"{pool.root} — base {pool.config['base']}")
    for col in ("name", "type", "kind", "mode", "task(s)", "created"):
        table.add_column(col)
    for e in entries:
        tasks = ", ".join(e.meta.get("tasks") or [e.meta.get("task", "?")])
        table.add_row(
            e.name, e.type, e.kind, e.meta.get("mode", "?"), tasks, e.meta.get("created", "")
        )
    _emit(
        as_json,
        [{"name": e.name, **e.meta} for e in entries],
        table,
        None if entries else "the pool is empty: `modpool finetune --task mnist` makes a module",
    )


@app.command()
def show(name: str, as_json: JsonOpt = False) -> None:
    """Show one module or composition: metadata, recipe, evaluations."""
    pool = _pool()
    entry = pool.entry(name)
    evals = [r for r in pool.history() if r.get("target") == name]
    table = Table(title=f"{name} ({entry.type})", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in entry.meta.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value, sort_keys=True)
        table.add_row(key, str(value))
    table.add_row("file size", f"{entry.path.stat().st_size / 2**20:.2f} MiB")
    for r in evals[-10:]:
        table.add_row(f"eval {r['task']} ({r['split']})", _pct(r["accuracy"]))
    lineage = [
        f"{f['name']}" + ("" if pool.exists(f["name"]) else " (forgotten)")
        for f in entry.meta.get("lineage", {}).get("fisher_from", [])
    ]
    if lineage:
        table.add_row("trained with the Fisher of", ", ".join(lineage))
    used_by = pool.fisher_dependents(name)
    if used_by:
        table.add_row("its Fisher shaped", ", ".join(used_by))
    _emit(as_json, {"name": name, **entry.meta, "evals": evals, "fisher_used_by": used_by}, table)


@app.command()
def tasks() -> None:
    """List the tasks modpool knows."""
    from .tasks import known_tasks

    out.print("offline (ship in packages): mnist, animals, digits")
    out.print("standard (need --data-root): " + ", ".join(t for t in known_tasks()[3:-1]))
    out.print("any image folder: folder:PATH with PATH/train/<class>/ and PATH/test/<class>/")


@app.command()
def finetune(
    task: Annotated[str, typer.Option(help="Task to train on (see `modpool tasks`).")],
    mode: Annotated[
        str,
        typer.Option(
            help="nonlinear (ordinary), tangent (linearised), ita or iel (second-order, Fisher "
            "penalty that keeps the module in the pretrained basin)."
        ),
    ] = "nonlinear",
    name: Annotated[str | None, typer.Option(help="Module name (default TASK-MODE).")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps (CLIP default 2000).")] = None,
    epochs: Annotated[
        float | None, typer.Option(help="Epochs instead of steps (offline default 2).")
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help="Peak learning rate (CLIP 1e-5, offline 2e-5).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Batch size (CLIP 128, offline 32).")
    ] = None,
    warmup: Annotated[
        float | None, typer.Option(help="Warm-up steps, or a fraction of steps if < 1.")
    ] = None,
    weight_decay: Annotated[float | None, typer.Option(help="AdamW weight decay (0.1).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for data order and training.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")] = "auto",
    with_: Annotated[
        list[str] | None,
        typer.Option(
            "--with",
            help="ita: modules whose Fisher forms the penalty; iel: modules of the "
            "composition joined (repeatable; default: all eligible in the pool).",
        ),
    ] = None,
    ita_strength: Annotated[
        float | None, typer.Option(help="ita penalty strength a (default 1).")
    ] = None,
    iel_strength: Annotated[
        float | None, typer.Option(help="iel penalty strength beta (default 20).")
    ] = None,
    fisher_samples: Annotated[
        int, typer.Option(help="Labels sampled from the prediction per example for the Fisher.")
    ] = 1,
    fisher_exact: Annotated[
        bool,
        typer.Option(
            "--fisher-exact", help="Exact Fisher: every class weighted by its probability."
        ),
    ] = False,
    fisher_examples: Annotated[
        int | None,
        typer.Option(help="Use at most N training examples for the Fisher (default all)."),
    ] = None,
    checkpoint_every: Annotated[
        int | None,
        typer.Option(
            help="Write a checkpoint every N steps (default: every 10% of the run, at least 50; "
            "0 = never)."
        ),
    ] = None,
    accumulate: Annotated[
        int,
        typer.Option(
            help="Gradient accumulation: micro-batches per step (the batch size stays global)."
        ),
    ] = 1,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Continue an interrupted run of the same module from its checkpoint."
        ),
    ] = False,
    last_blocks: Annotated[
        int | None,
        typer.Option(
            help="Train only the tower's last K blocks and the layers after them; in tangent "
            "mode the JVP then skips the frozen layers (much cheaper)."
        ),
    ] = None,
    dtype: DtypeOpt = "fp32",
    density: Annotated[
        float,
        typer.Option(help="Store only this fraction of each tensor's largest entries (compact)."),
    ] = 1.0,
    base: Annotated[
        str | None, typer.Option(help="Base, when this command creates the pool.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune the base on one task and store the change as a module."""
    from .encoding import Storage
    from .pool import Pool
    from .train import defaults_for

    pool = Pool.open_or_create(state["pool"], base, data_root=state["data_root"])
    cfg = defaults_for(pool.base)
    cfg.mode, cfg.seed, cfg.device = mode, seed, device
    if steps is not None:
        cfg.steps, cfg.epochs = steps, None
    if epochs is not None:
        cfg.epochs = epochs
    for field, value in (("lr", lr), ("batch_size", batch_size), ("weight_decay", weight_decay)):
        if value is not None:
            setattr(cfg, field, value)
    if warmup is not None:
        cfg.warmup = warmup if warmup < 1 else int(warmup)
    if fisher_samples < 1:
        raise ModpoolError("--fisher-samples must be at least 1")
    cfg.strength = ita_strength if mode == "ita" else iel_strength if mode == "iel" else None
    cfg.fisher_samples, cfg.fisher_exact, cfg.fisher_examples = (
        fisher_samples,
        fisher_exact,
        fisher_examples,
    )
    cfg.accumulate, cfg.last_blocks = accumulate, last_blocks
    storage = Storage(dtype, density)  # checked before training, not after
    entry = pool.finetune(
        task, cfg, name, state["progress"], with_, checkpoint_every, resume, storage
    )
    if entry is None:  # a non-zero torchrun rank: rank 0 reports
        return
    m = entry.meta["metrics"]
    shaped = entry.meta.get("lineage", {}).get("fisher_from", [])
    note = (
        f"stored module [bold]{entry.name}[/] ({entry.kind}, {entry.meta['task']}): "
        f"{entry.meta['hparams']['steps_run']} steps in {m['seconds']:.0f}s, "
        f"{m['images_per_second']:.0f} img/s, final train loss {m['train_loss']:.3f}"
    )
    if "fisher" in entry.meta:
        note += (
            f"; Fisher over {entry.meta['fisher']['examples']} examples "
            f"({entry.meta['fisher']['method']}, {entry.meta['fisher']['seconds']:.0f}s)"
        )
        note += (
            f", penalty from {', '.join(f['name'] for f in shaped)}"
            if shaped
            else ", no penalty (first task)"
        )
    _emit(as_json, {"name": entry.name, **entry.meta}, None, note)


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
    if not as_json and rows:
        out.print(negate_table(rows) if negation else search_table(rows))
    _emit(
        as_json,
        payload,
        None,
        f"stored composition [bold]{entry.name}[/] ({entry.kind}) = {recipe['method']}({parts})",
    )


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
            *[_pct(r.accuracy[t]) for t in tasks],
            _pct(r.mean_normalized),
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
            _pct(r.target_accuracy),
            _pct(r.control_accuracy),
            _pct(r.control_kept),
            "yes" if r.allowed else "no",
            style="bold green" if r is best else None,
        )
    return table


def _grid(grid: str | None) -> list[float] | None:
    if grid is None:
        return None
    try:
        if ":" in grid:
            start, stop, step = (float(x) for x in grid.split(":"))
            count = int(round((stop - start) / step)) + 1
            return [round(start + i * step, 10) for i in range(count)]
        return [float(x) for x in grid.split(",")]
    except ValueError:
        raise ModpoolError(
            f"--grid takes START:STOP:STEP or comma-separated values, not {grid!r}"
        ) from None


OutOpt = Annotated[str, typer.Option("--output", "-o", help="Name of the new composition.")]
CoefOpt = Annotated[
    list[str] | None, typer.Option("--coef", help="Per-module coefficient NAME=VALUE (repeatable).")
]
SearchOpt = Annotated[bool, typer.Option("--search", help="Pick alpha on the validation splits.")]
GridOpt = Annotated[
    str | None,
    typer.Option(help="Alpha grid for --search: START:STOP:STEP or a,b,c (default 0:1:0.05)."),
]


@app.command()
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


@app.command()
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
    pool = _pool()
    if not search:
        _composed(pool.negate(name, output, alpha), as_json)
        return
    if control is None:
        raise ModpoolError("negate --search needs --control TASK (a task whose accuracy must stay)")
    from .search import negate_searched

    entry, rows = negate_searched(
        pool, name, output, control, keep, _grid(grid), show_progress=state["progress"]
    )
    _composed(entry, as_json, rows, negation=True)


@app.command()
def compose(
    names: list[str],
    output: OutOpt,
    method: Annotated[str, typer.Option(help="sum, mean, ties, dare or magnitude.")] = "sum",
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
    seed: Annotated[int, typer.Option(help="Seed (dare masks); part of the recipe.")] = 0,
    search: SearchOpt = False,
    grid: GridOpt = None,
    dtype: DtypeOpt = "fp32",
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
    }
    _compose(
        names,
        output,
        method,
        alpha,
        coef,
        {k: v for k, v in params.items() if v is not None},
        seed,
        search,
        grid,
        as_json,
        dtype,
    )


def _compose(
    names, output, method, alpha, coef, params, seed, search, grid, as_json, dtype="fp32"
) -> None:
    from .encoding import Storage

    Storage(dtype)  # a bad dtype fails before any work
    pool = _pool()
    if not search:
        entry = pool.compose(
            names, output, method, _parse_coefs(names, alpha, coef or []), params, seed, None, dtype
        )
        _composed(entry, as_json)
        return
    if coef:
        raise ModpoolError("--search picks one shared alpha: drop --coef")
    from .search import compose_searched

    entry, rows = compose_searched(
        pool,
        names,
        output,
        method,
        params,
        seed,
        _grid(grid),
        show_progress=state["progress"],
        dtype=dtype,
    )
    _composed(entry, as_json, rows)


@app.command()
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
    from .encoding import Storage

    pool = _pool()
    storage = Storage(dtype, density)
    before = pool.entry(name).path.stat().st_size
    entry = pool.compact(name, output, storage)
    after = entry.path.stat().st_size
    note = (
        f"stored [bold]{output}[/] ({dtype}, density {density:g}): {after / 2**20:.2f} MiB, "
        f"{100 * after / before:.1f}% of {name} ({before / 2**20:.2f} MiB)"
    )
    _emit(
        as_json, {"name": output, "bytes": after, "source_bytes": before, **entry.meta}, None, note
    )


@app.command()
def forget(name: str, as_json: JsonOpt = False) -> None:
    """Remove a module and rebuild, exactly, every composition that used it (audit-logged)."""
    report = _pool().forget(name)
    lines = [f"forgot {name}"]
    lines += [
        f"  rebuilt {r['name']} from {', '.join(r['ingredients'])} "
        f"({r['sha256_before'][:12]} -> {r['sha256_after'][:12]})"
        for r in report.rebuilt
    ]
    lines += [f"  removed {c} (no ingredients left)" for c in report.removed]
    if report.fisher_used_by:
        lines.append(
            f"  note: {', '.join(report.fisher_used_by)} were trained with its Fisher "
            "(they stay; `show` records it)"
        )
    _emit(as_json, asdict(report), None, "\n".join(lines))


@app.command("eval")
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
    rows = _pool().evaluate(target, task or None, split, state["progress"], not no_cache)
    _emit(as_json, [asdict(r) for r in rows], accuracy_table(rows, f"{target} ({split})"))


def accuracy_table(rows, title: str) -> Table:
    table = Table(title=title)
    for col in ("target", "task", "accuracy %", "normalised %", "examples"):
        table.add_column(col, justify="right" if "%" in col or col == "examples" else "left")
    for r in rows:
        table.add_row(r.target, r.task, _pct(r.accuracy), _pct(r.normalized), str(r.examples))
    return table


@app.command()
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
    from .disentangle import disentanglement, save_map

    result = disentanglement(_pool(), first, second, _grid(grid), split, limit, state["progress"])
    png, js = save_map(result, output or Path(f"disentangle-{first}-{second}.png"))
    _emit(
        as_json,
        {**result, "png": str(png), "json": str(js)},
        None,
        f"wrote {png} and {js} ({len(result['alphas'])}x{len(result['alphas'])} grid, "
        f"{result['kind']})",
    )


@app.command()
def check(as_json: JsonOpt = False) -> None:
    """Validate every file of the pool (headers, metadata, shapes, finite values,
    fingerprints, recipes whose ingredients exist) and report each problem precisely."""
    from .check import check_pool

    report = check_pool(_pool())
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


@app.command()
def export(
    name: str,
    output: Annotated[Path, typer.Option("--output", "-o", help="The .safetensors file to write.")],
) -> None:
    """Write base + a nonlinear module/composition as plain weights (open_clip loads them with
    create_model(arch, pretrained=FILE))."""
    from .export import export_weights

    path = export_weights(_pool(), name, output)
    out.print(f"wrote {path}")


TokenOpt = Annotated[
    str | None,
    typer.Option(
        help="Hugging Face token (default: HF_TOKEN or the cached login); never printed or stored."
    ),
]


@app.command()
def push(
    name: str,
    repo: Annotated[str, typer.Option(help="Hub repository USER/REPO (created if missing).")],
    private: Annotated[
        bool, typer.Option("--private", help="Create the repository private.")
    ] = False,
    token: TokenOpt = None,
    revision: Annotated[str | None, typer.Option(help="Branch to upload to.")] = None,
) -> None:
    """Upload a module or composition (with its ingredients) and a model card to the Hub."""
    from .hub import push as push_

    url = push_(_pool(), name, repo, private, token, revision)
    out.print(f"pushed {name} to {url}")


@app.command()
def pull(
    ref: Annotated[str, typer.Argument(help="USER/REPO[@REVISION], or a local snapshot folder.")],
    token: TokenOpt = None,
) -> None:
    """Download a module or composition into the pool, refusing other bases and bad files."""
    from .hub import pull as pull_

    names = pull_(_pool(), ref, token)
    out.print(f"imported {', '.join(names)}" if names else "nothing new: the pool has it all")


@app.command("import")
def import_(
    path: Path,
    name: Annotated[str | None, typer.Option(help="Name in the pool.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Copy a module or composition file into the pool (validated, same base only)."""
    entry = _pool().import_file(path, name)
    _emit(
        as_json, {"name": entry.name, **entry.meta}, None, f"imported {entry.name} ({entry.type})"
    )


@app.command()
def demo(
    epochs: Annotated[float, typer.Option(help="Training epochs per module.")] = 1.0,
    mode: Annotated[str, typer.Option(help="nonlinear or tangent.")] = "nonlinear",
    as_json: JsonOpt = False,
) -> None:
    """The whole workflow offline: fine-tune mnist, animals and digits modules on the embedded
    base, compose them (alpha picked on validation), forget one, print the accuracy table."""
    from .demo import run_demo

    result = run_demo(
        state["pool"],
        epochs=epochs,
        mode=mode,
        show_progress=state["progress"],
        log=lambda msg: out.print(msg) if not as_json else None,
    )
    if as_json:
        print(json.dumps(result, indent=2))
        return
    out.print(demo_table(result))


def demo_table(result: dict) -> Table:
    tasks = result["tasks"]
    table = Table(title="test accuracy % (normalised % in brackets)")
    table.add_column("model")
    for t in tasks:
        table.add_column(t, justify="right")
    for row in result["rows"]:
        cells = []
        for t in tasks:
            acc, norm = row["accuracy"].get(t), row["normalized"].get(t)
            cells.append("-" if acc is None else _pct(acc) + (f" ({_pct(norm)})" if norm else ""))
        table.add_row(row["label"], *cells)
    return table


def _fail(message: str) -> None:
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(1)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)  # third-party deprecations
    try:
        app()
    except ModpoolError as exc:
        _fail(str(exc))
    except OSError as exc:  # a full disk, a read-only or vanished directory, permissions
        what = exc.strerror or type(exc).__name__
        where = f": {exc.filename}" if exc.filename else ""
        _fail(
            f"{what}{where}. Nothing was half-written: a change cut short is rolled back "
            "(or completed) when the pool is next used; fix the cause and run the command again"
        )
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted; the pool is unchanged by the unfinished step")
        sys.exit(130)


if __name__ == "__main__":
    main()
