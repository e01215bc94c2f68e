"""Flatten a nonlinear module or composition into plain weights of its base.

open_clip bases: the whole CLIP state dict with the image tower at theta_0 + delta, which
`open_clip.create_model(arch, pretrained=FILE)` loads. timm bases: the tower's state dict,
which `timm:ARCH:FILE` (or timm's own loaders) accept. Written tensor by tensor: the
module is read through a memory map and only the base's weights are held whole.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModpoolError
from ..store.atomic import atomic_writer
from ..store.tensorfile import DTYPE_NAME, TensorWriter


def export_weights(pool, name: str, path: Path | str) -> Path:
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ModpoolError(
            f"export writes safetensors: name the file *.safetensors, not {path.name}"
        )
    with pool.open_artifact(name) as artifact:
        if artifact.kind == "tangent":
            raise ModpoolError(
                f"{name} is a tangent module: it acts through the linearised model "
                "f(x; theta_0) + J f(x; theta_0) . tau, which no single set of weights "
                "reproduces, so it cannot be flattened; use it through modpool (pool.model) "
                "instead"
            )
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
                    value = (value.float() + artifact.tensor(local)).to(value.dtype)
                    artifact.release(local)
                writer.write(key, value)
            writer.finish()
    return path
