"""Flatten a nonlinear module or composition into plain weights of its base.

open_clip bases: the whole CLIP state dict with the image tower at theta_0 + delta, which
`open_clip.create_model(arch, pretrained=FILE)` loads. timm bases: the tower's state dict,
which `timm:ARCH:FILE` (or timm's own loaders) accept. Written tensor by tensor: the
module is read through a memory map and only the base's weights are held whole.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors.torch import save_file

from ..errors import ModpoolError
from ..store.access import require_usable
from ..store.atomic import atomic_writer
from ..store.layout import labels
from ..store.tensorfile import DTYPE_NAME, TensorWriter
from ..tasks import canonical_name
from . import hf_clip

if TYPE_CHECKING:
    from ..pool import Pool


def export_weights(
    pool: Pool,
    name: str,
    path: Path | str,
    format: str = "openclip",
    task: str | None = None,
    allow: list[str] | str | None = None,
) -> Path:
    """Write base + module `name` as plain weights: `openclip` (one .safetensors file that
    open_clip or timm loads) or `hf` (a Hugging Face `CLIPVisionModelWithProjection`
    folder). A task-aware composition (tall) is exported for one `task`, under its mask.
    `allow`: the caller's access rights, which `name` must fit."""
    if allow is not None:
        require_usable(pool, name, labels(allow))
    if format == "hf":
        return export_hf(pool, name, Path(path), task)
    if format != "openclip":
        raise ModpoolError(f"unknown export format {format!r}: openclip or hf")
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ModpoolError(
            f"export writes safetensors: name the file *.safetensors, not {path.name}"
        )
    with pool.open_artifact(name) as artifact:
        _refuse_tangent(name, artifact.kind)
        mask = _task_mask(name, artifact, task)
        base = pool.base
        if hasattr(base, "model"):  # open_clip: full model, visual tower edited
            state, prefix = base.model.state_dict(), "visual."
        else:
            state, prefix = base.tower.state_dict(), ""
        meta = {
            "modpool_source": name,
            "modpool_sha256": pool.hashes.sha256(pool.entry(name).path),
            "base": pool.config["base"],
            "base_fingerprint": pool.fingerprint,
        }
        plan = [(k, DTYPE_NAME[v.dtype], list(v.shape)) for k, v in state.items()]
        with atomic_writer(path) as f, TensorWriter(f, plan, meta) as writer:
            for key in writer.order:  # one edited tensor at a time
                value, local = state[key], key.removeprefix(prefix)
                if key.startswith(prefix) and local in artifact.shapes:
                    value = (value.float() + mask(local, artifact.tensor(local))).to(value.dtype)
                    artifact.release(local)
                writer.write(key, value)
            writer.finish()
    return path


def export_hf(pool: Pool, name: str, folder: Path, task: str | None = None) -> Path:
    """A `CLIPVisionModelWithProjection` folder (config.json, model.safetensors) holding the
    image tower at theta_0 + delta; `transformers` loads it and gives the open_clip export's
    image features. Written into a temporary folder, then renamed: never half a folder."""
    if folder.exists() and any(folder.iterdir()):
        raise ModpoolError(f"{folder} exists and is not empty: choose a new folder")
    base = pool.base
    if base.head_kind != "zeroshot":
        raise ModpoolError("--format hf exports CLIP image towers; this pool's base is not CLIP")
    config = hf_clip.vision_config(base.tower)
    with pool.open_artifact(name) as artifact:
        _refuse_tangent(name, artifact.kind)
        mask = _task_mask(name, artifact, task)
        state = {}
        for key, value in base.tower.named_parameters():
            if key in artifact.shapes:
                value = (value.float() + mask(key, artifact.tensor(key))).to(value.dtype)
            state[key] = value.detach()
    tensors = hf_clip.from_openclip(state)
    meta = {"format": "pt", "modpool_source": name, "base_fingerprint": pool.fingerprint}
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.") as tmp:
        staging = Path(tmp) / "out"
        staging.mkdir()
        save_file(tensors, staging / "model.safetensors", metadata=meta)
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for file in staging.iterdir():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
        if folder.exists():
            folder.rmdir()
        os.replace(staging, folder)
    return folder


def _task_mask(name: str, artifact, task: str | None):
    """A function applying `task`'s mask to a tensor of a task-aware composition (tall);
    the identity for anything else. A task-aware composition needs its task."""
    tasks = artifact.mask_tasks
    if not tasks:
        if task is not None:
            raise ModpoolError(f"{name} is not task-aware: --task applies to tall compositions")
        return lambda key, value: value
    task = canonical_name(task) if task else None
    if task not in tasks:
        raise ModpoolError(
            f"{name} is task-aware (a mask per task: {', '.join(tasks)}): export it for one "
            "of them with --task T"
        )
    return lambda key, value: value * artifact.task_mask(task, key)


def _refuse_tangent(name: str, kind: str) -> None:
    if kind == "tangent":
        raise ModpoolError(
            f"{name} is a tangent module: it acts through the linearised model "
            "f(x; theta_0) + J f(x; theta_0) . tau, which no single set of weights "
            "reproduces, so it cannot be flattened; use it through modpool (pool.model) "
            "instead"
        )
