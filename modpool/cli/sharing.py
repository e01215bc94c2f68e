"""Commands that move modules in and out of a pool: `import`, `export`, `push`, `pull`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import AccessOpt, AllowOpt, JsonOpt, SourceOpt, app, emit, open_pool, out

MaxDistanceOpt = Annotated[
    float | None,
    typer.Option(
        help="Largest relative distance |ft - base| / |base| accepted for a checkpoint "
        "(default 0.1: a fine-tune moves a few percent, another pretraining ~100%)."
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        help="Hugging Face token (default: HF_TOKEN or the cached login); never printed or stored."
    ),
]


@app.command(rich_help_panel="Share")
def export(
    name: str,
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="The .safetensors file (openclip) or the folder (hf) to write."
        ),
    ],
    format: Annotated[
        str,
        typer.Option(
            "--format",
            help="openclip: one file open_clip loads (create_model(arch, pretrained=FILE)); "
            "hf: a CLIPVisionModelWithProjection folder for transformers.",
        ),
    ] = "openclip",
    task: Annotated[
        str | None,
        typer.Option(help="A task-aware composition (tall): the task whose model to export."),
    ] = None,
    allow: AllowOpt = None,
) -> None:
    """Write base + a nonlinear module/composition as plain weights."""
    path = open_pool().export(name, output, format, task, allow)
    out.print(f"wrote {path}")


@app.command(rich_help_panel="Share")
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
    url = open_pool().push(name, repo, private, token, revision)
    out.print(f"pushed {name} to {url}")


@app.command(rich_help_panel="Share")
def pull(
    ref: Annotated[str, typer.Argument(help="USER/REPO[@REVISION], or a local snapshot folder.")],
    task: Annotated[
        str | None,
        typer.Option(
            help="For a fine-tuned model repository (HF CLIP or open_clip weights, no "
            "modpool.json): the task it was fine-tuned on; it is imported as a module."
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Module name (with --task).")] = None,
    max_distance: MaxDistanceOpt = None,
    token: TokenOpt = None,
) -> None:
    """Download a modpool repository, or a fine-tuned model with --task, into the pool,
    refusing other bases and bad files."""
    names = open_pool().pull(ref, token, task, name, max_distance)
    out.print(f"imported {', '.join(names)}" if names else "nothing new: the pool has it all")


@app.command("import", rich_help_panel="Share")
def import_(
    path: Annotated[
        Path,
        typer.Argument(
            help="A modpool file; a fine-tuned checkpoint (open_clip or timm state dict, "
            "task-vectors pickle, params/params0 tangent checkpoint, Hugging Face CLIP folder); "
            "or a folder of <Task>/finetuned.pt, <Task>Val/{nonlinear,linear}_finetuned.pt."
        ),
    ],
    task: Annotated[
        str | None, typer.Option(help="The task a checkpoint was fine-tuned on.")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Name in the pool (default: the task, as typed).")
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option(help="nonlinear (default) or tangent: the forward the module is used in."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would be imported; write nothing.")
    ] = False,
    max_distance: MaxDistanceOpt = None,
    skip_unknown: Annotated[
        bool,
        typer.Option("--skip-unknown", help="A folder: leave out the tasks modpool does not know."),
    ] = False,
    source: SourceOpt = None,
    access: AccessOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Bring a module, a composition or a fine-tuned checkpoint into the pool (validated: same
    base only). A folder of checkpoints is imported as one change: all or none."""
    from ..interop.importing import DEFAULT_MAX_DISTANCE

    limit = DEFAULT_MAX_DISTANCE if max_distance is None else max_distance
    done = open_pool().import_checkpoint(
        path, task, name, mode, dry_run, limit, skip_unknown, None, source, access
    )
    if dry_run:
        payload = [{"name": p.name, "task": p.task, **p.summary()} for p in done]
        note = plan_note(done) if done else f"{path} is a valid modpool file for this pool"
        emit(as_json, payload, None, note)
        return
    emit(as_json, [{"name": e.name, **e.meta} for e in done], None, imported_note(done))


def imported_note(entries) -> str:
    lines = []
    for entry in entries:
        line = f"imported {entry.name} ({entry.type}, {entry.kind}, {', '.join(entry.tasks)})"
        info = entry.meta.get("imported_from") or {}
        if info:
            line += (
                f" from a {info['format']}: {info['mapped']} tensors mapped, distance from "
                f"the base {info['distance']:.2%}"
            )
        lines += [line, *(f"  note: {note}" for note in info.get("notes", []))]
    return "\n".join(lines)


def plan_note(plans) -> str:
    lines = ["would import (nothing written):"]
    for plan in plans:
        summary = plan.summary()
        dropped = ", ".join(f"{n} {group}" for group, n in summary["dropped"].items()) or "none"
        lines.append(
            f"  {plan.name}: task {plan.task}, {plan.kind}, from {plan.path.name} "
            f"({plan.format}); {summary['mapped']} tensors mapped, dropped {dropped}, "
            f"{len(plan.missing)} kept at the base; distance from the base {plan.distance:.2%}"
        )
        lines += [f"    note: {note}" for note in plan.notes]
    return "\n".join(lines)
