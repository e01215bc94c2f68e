"""Commands that train modules: `finetune`, and the offline `demo` of the whole workflow."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from ..errors import ModpoolError
from .app import (
    AccessOpt,
    DtypeOpt,
    JsonOpt,
    PretrainedOpt,
    SourceOpt,
    app,
    emit,
    out,
    pct,
    state,
)


@app.command(rich_help_panel="Train")
def finetune(
    task: Annotated[str, typer.Option(help="Task to train on (see `modpool tasks`).")],
    mode: Annotated[
        str,
        typer.Option(
            help="nonlinear (ordinary), tangent (linearised), ita or iel (second-order, Fisher "
            "penalty that keeps the module in the pretrained basin)."
        ),
    ] = "nonlinear",
    name: Annotated[
        str | None,
        typer.Option(
            help="Module name (default: the task as typed, or TASK-MODE when a module has it)."
        ),
    ] = None,
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
    pretrained: PretrainedOpt = None,
    source: SourceOpt = None,
    access: AccessOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune the base on one task and store the change as a module."""
    from ..pool import Pool
    from ..store.encoding import Storage
    from ..train.loop import defaults_for

    pool = Pool.open_or_create(
        state["pool"], base, data_root=state["data_root"], pretrained=pretrained
    )
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
        task, cfg, name, state["progress"], with_, checkpoint_every, resume, storage, source,
        access,
    )  # fmt: skip
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
    emit(as_json, {"name": entry.name, **entry.meta}, None, note)


@app.command(rich_help_panel="Train")
def demo(
    epochs: Annotated[float, typer.Option(help="Training epochs per module.")] = 1.0,
    mode: Annotated[str, typer.Option(help="nonlinear or tangent.")] = "nonlinear",
    as_json: JsonOpt = False,
) -> None:
    """The whole workflow offline: fine-tune mnist, animals and digits modules on the embedded
    base, compose them (alpha picked on validation), forget one, print the accuracy table."""
    from ..demo import run_demo

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
            cells.append("-" if acc is None else pct(acc) + (f" ({pct(norm)})" if norm else ""))
        table.add_row(row["label"], *cells)
    return table


@app.command(rich_help_panel="Train")
def mask(
    name: Annotated[
        str | None, typer.Argument(help="The module to mask (or a task's name).")
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(help="Task to learn the mask on (default: the module's own)."),
    ] = None,
    on_base: Annotated[
        bool,
        typer.Option("--base", help="Mask the base's own weights for --task instead."),
    ] = False,
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", help="Name of the masked module (NAME@mask, base@TASK)."),
    ] = None,
    beta: Annotated[
        float, typer.Option(help="Weight of the mean logit: how hard unneeded weights go.")
    ] = 0.5,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps (300).")] = None,
    epochs: Annotated[float | None, typer.Option(help="Epochs instead of steps.")] = None,
    lr: Annotated[float, typer.Option(help="Adam learning rate on the logits.")] = 1e-2,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 32,
    seed: Annotated[int, typer.Option(help="Seed for data order and Gumbel noise.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")] = "auto",
    checkpoint_every: Annotated[
        int | None, typer.Option(help="Checkpoint every N steps (default: every 10%; 0 = never).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run from its checkpoint.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Learn which weights of a module (or of the base) a task needs: a binary mask per
    weight, trained with the weights frozen; stored as a sparse masked module."""
    from ..pool import Pool
    from ..train import MaskConfig

    cfg = MaskConfig(beta=beta, lr=lr, batch_size=batch_size, seed=seed, device=device)
    if steps is not None:
        cfg.steps, cfg.epochs = steps, None
    elif epochs is not None:
        cfg.steps, cfg.epochs = None, epochs
    pool = Pool(state["pool"], state["data_root"])
    entry = pool.mask(name, task, on_base, output, cfg, state["progress"], checkpoint_every, resume)
    info = entry.meta["mask"]
    note = (
        f"stored [bold]{entry.name}[/] (mask of {info['of']} on {info['task']}): kept "
        f"{100 * info['kept_total']:.1f}% of the weights after {info['steps']} steps "
        f"(beta {beta:g}), {entry.path.stat().st_size / 2**20:.2f} MiB"
    )
    emit(as_json, {"name": entry.name, **entry.meta}, None, note)
