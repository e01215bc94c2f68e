"""Which base a checkpoint seems to belong to, from its shapes alone (for error messages).

A CLIP ViT image tower gives itself away: `conv1.weight` is [width, 3, patch, patch],
`positional_embedding` has grid^2 + 1 rows, the blocks are counted, and `proj` is
[width, embed]. These are compared with every open_clip model config.
"""

from __future__ import annotations

import math
import re
from typing import Any

_BLOCK_RE = re.compile(r"transformer\.resblocks\.(\d+)\.")


def describe_shapes(tensors: list[Any]) -> str:
    return ", ".join(str(list(t.shape)) for t in tensors)


def guess_architecture(tensors: dict[str, Any]) -> str | None:
    """'an open_clip ViT (width 768, 12 layers, patch 16, 224 px: ViT-B-16, ...)', or None."""
    conv = next(
        (k for k in tensors if k.endswith("conv1.weight") and len(tensors[k].shape) == 4), None
    )
    if conv is None:
        return None
    prefix = conv.removesuffix("conv1.weight")
    width, _, patch, _ = tensors[conv].shape
    layers = len(
        {m[1] for k in tensors if k.startswith(prefix) and (m := _BLOCK_RE.match(k[len(prefix) :]))}
    )
    pos = tensors.get(prefix + "positional_embedding")
    size = int(math.isqrt(pos.shape[0] - 1) * patch) if pos is not None else None
    proj = tensors.get(prefix + "proj")
    embed = proj.shape[1] if proj is not None and len(proj.shape) == 2 else None
    shape = f"width {width}, {layers} layers, patch {patch}" + (f", {size} px" if size else "")
    names = _matching_configs(width, layers, patch, size, embed)
    return f"an open_clip ViT ({shape}{': ' + ', '.join(names[:4]) if names else ''})"


def _matching_configs(width, layers, patch, size, embed) -> list[str]:
    try:
        import open_clip
    except ImportError:
        return []
    found = []
    for name in open_clip.list_models():
        cfg = open_clip.get_model_config(name) or {}
        vision = cfg.get("vision_cfg", {})
        if "timm_model_name" in vision:
            continue
        same = (
            vision.get("width") == width
            and vision.get("layers") == layers
            and vision.get("patch_size") == patch
            and (size is None or vision.get("image_size") == size)
            and (embed is None or cfg.get("embed_dim") == embed)
        )
        if same and "quickgelu" not in name.lower():
            found.append(name)
    return found
