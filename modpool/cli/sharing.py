"""Commands that move modules in and out of a pool: `import`, `export`, `push`, `pull`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import JsonOpt, app, emit, open_pool, out

TokenOpt = Annotated[
    str | None,
    typer.Option(
        help="Hugging Face token (default: HF_TOKEN or the cached login); never printed or stored."
    ),
]


@app.command(rich_help_panel="Share")
def export(
    name: str,
    output: Annotated[Path, typer.Option("--output", "-o", help="The .safetensors file to write.")],
) -> None:
    """Write base + a nonlinear module/composition as plain weights (open_clip loads them with
    create_model(arch, pretrained=FILE))."""
    from ..interop.export import export_weights

    path = export_weights(open_pool(), name, output)
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
    from ..interop.hub import push as push_

    url = push_(open_pool(), name, repo, private, token, revision)
    out.print(f"pushed {name} to {url}")


@app.command(rich_help_panel="Share")
def pull(
    ref: Annotated[str, typer.Argument(help="USER/REPO[@REVISION], or a local snapshot folder.")],
    token: TokenOpt = None,
) -> None:
    """Download a module or composition into the pool, refusing other bases and bad files."""
    from ..interop.hub import pull as pull_

    names = pull_(open_pool(), ref, token)
    out.print(f"imported {', '.join(names)}" if names else "nothing new: the pool has it all")


@app.command("import", rich_help_panel="Share")
def import_(
    path: Path,
    name: Annotated[str | None, typer.Option(help="Name in the pool.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Copy a module or composition file into the pool (validated, same base only)."""
    entry = open_pool().import_file(path, name)
    emit(as_json, {"name": entry.name, **entry.meta}, None, f"imported {entry.name} ({entry.type})")
