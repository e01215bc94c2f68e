"""Flatten a nonlinear module or composition into plain weights of its base.

open_clip bases: the whole CLIP state dict with the image tower at theta_0 + delta, which
`open_clip.create_model(arch, pretrained=FILE)` loads. timm bases: the tower's state dict,
which `timm:ARCH:FILE` (or timm's own loaders) accept.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save

from .errors import ModpoolError
from .storage import atomic_write_bytes


def export_weights(pool, name: str, path: Path | str) -> Path:
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ModpoolError(
            f"export writes safetensors: name the file *.safetensors, not {path.name}"
        )
    artifact = pool.read(name)
    if artifact.kind == "tangent":
        raise ModpoolError(
            f"{name} is a tangent module: it acts through the linearised model "
            "f(x; theta_0) + J f(x; theta_0) . tau, which no single set of weights reproduces, so "
            "it cannot be flattened; use it through modpool (pool.model) instead"
        )
    base = pool.base
    if hasattr(base, "model"):  # open_clip: full model, visual tower edited
        state, prefix = base.model.state_dict(), "visual."
    else:
        state, prefix = base.tower.state_dict(), ""
    out = {k: v.detach().clone().contiguous() for k, v in state.items()}
    for key, delta in artifact.tensors.items():
        full = prefix + key
        out[full] = (out[full].float() + delta.float()).to(out[full].dtype).contiguous()
    meta = {
        "modpool_source": name,
        "modpool_sha256": artifact.sha256,
        "base": pool.config["base"],
        "base_fingerprint": pool.fingerprint,
    }
    atomic_write_bytes(path, save(out, metadata=meta))
    return path
