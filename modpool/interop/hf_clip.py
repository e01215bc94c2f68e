"""Hugging Face CLIP vision weights <-> open_clip's ViT image tower, both ways.

    HF (CLIPVisionModel[WithProjection], CLIPModel)            open_clip visual tower
    vision_model.embeddings.class_embedding                    class_embedding
    vision_model.embeddings.patch_embedding.weight             conv1.weight
    vision_model.embeddings.position_embedding.weight          positional_embedding
    vision_model.pre_layrnorm.*                                ln_pre.*
    vision_model.encoder.layers.i.self_attn.{q,k,v}_proj.*     transformer.resblocks.i.attn.in_proj_*  (q;k;v)
    vision_model.encoder.layers.i.self_attn.out_proj.*         transformer.resblocks.i.attn.out_proj.*
    vision_model.encoder.layers.i.layer_norm{1,2}.*            transformer.resblocks.i.ln_{1,2}.*
    vision_model.encoder.layers.i.mlp.fc{1,2}.*                transformer.resblocks.i.mlp.c_{fc,proj}.*
    vision_model.post_layernorm.*                              ln_post.*
    visual_projection.weight  [embed, width]                   proj  [width, embed]  (transposed)

The mapping needs nothing from `transformers`; the config written for an export is the
plain JSON a `CLIPVisionConfig` reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ModpoolError

VISION = "vision_model."
PROJECTION = "visual_projection.weight"
_FIXED = {
    "embeddings.class_embedding": "class_embedding",
    "embeddings.patch_embedding.weight": "conv1.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "pre_layrnorm.weight": "ln_pre.weight",
    "pre_layrnorm.bias": "ln_pre.bias",
    "post_layernorm.weight": "ln_post.weight",
    "post_layernorm.bias": "ln_post.bias",
}
_LAYER = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_LAYER_RE = re.compile(r"^encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_QKV_RE = re.compile(r"^encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$")


@dataclass
class Derived:
    """A tensor computed from others when loaded (q/k/v joined, a projection transposed)."""

    parts: list[Any]
    how: str  # "cat" or "t"
    shape: tuple[int, ...]

    @property
    def dtype(self) -> torch.dtype:
        return self.parts[0].dtype

    def load(self) -> torch.Tensor:
        loaded = [p.load() for p in self.parts]
        return torch.cat(loaded, 0) if self.how == "cat" else loaded[0].t().contiguous()


def is_hf_clip(names: list[str]) -> bool:
    return any(n.startswith(VISION + "encoder.layers.") for n in names)


def to_openclip(tensors: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """HF CLIP tensors (lazy: `.shape`, `.dtype`, `.load()`) -> open_clip tower names;
    returns the mapped tensors and the names left out (text tower, position ids, ...)."""
    mapped: dict[str, Any] = {}
    qkv: dict[tuple[str, str], dict[str, Any]] = {}
    used: set[str] = set()
    for name, tensor in tensors.items():
        local = name.removeprefix(VISION) if name.startswith(VISION) else None
        if name == PROJECTION:
            rows, cols = tensor.shape
            mapped["proj"] = Derived([tensor], "t", (cols, rows))
        elif local in _FIXED:
            mapped[_FIXED[local]] = tensor
        elif local and (m := _QKV_RE.match(local)):
            qkv.setdefault((m[1], m[3]), {})[m[2]] = tensor
        elif local and (m := _LAYER_RE.match(local)) and m[2] in _LAYER:
            mapped[f"transformer.resblocks.{m[1]}.{_LAYER[m[2]]}.{m[3]}"] = tensor
        else:
            continue
        used.add(name)
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ModpoolError(f"layer {layer}: q, k and v projections are not all present")
        ordered = [parts[c] for c in "qkv"]
        shape = (sum(p.shape[0] for p in ordered), *ordered[0].shape[1:])
        name = f"transformer.resblocks.{layer}.attn.in_proj_{kind}"
        mapped[name] = Derived(ordered, "cat", shape)
        used |= {f"{VISION}encoder.layers.{layer}.self_attn.{c}_proj.{kind}" for c in "qkv"}
    return mapped, sorted(set(tensors) - used)


def from_openclip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip tower tensors -> HF `CLIPVisionModelWithProjection` tensors."""
    fixed = {v: k for k, v in _FIXED.items()}
    layer = {v: k for k, v in _LAYER.items()}
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if name == "proj":
            out[PROJECTION] = value.t().contiguous()
        elif name in fixed:
            out[VISION + fixed[name]] = value
        elif m := re.match(r"^transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$", name):
            for c, part in zip("qkv", value.chunk(3, 0)):
                out[f"{VISION}encoder.layers.{m[1]}.self_attn.{c}_proj.{m[2]}"] = part.contiguous()
        elif m := re.match(r"^transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$", name):
            if m[2] not in layer:
                raise ModpoolError(f"{name} has no place in a Hugging Face CLIP vision model")
            out[f"{VISION}encoder.layers.{m[1]}.{layer[m[2]]}.{m[3]}"] = value
        else:
            raise ModpoolError(f"{name} has no place in a Hugging Face CLIP vision model")
    return out


def vision_config(tower: nn.Module) -> dict:
    """The `CLIPVisionConfig` (with projection) of an open_clip ViT image tower."""
    needed = ("conv1", "transformer", "ln_pre", "ln_post", "proj", "class_embedding")
    if not all(hasattr(tower, a) for a in needed) or getattr(tower, "attn_pool", None):
        raise ModpoolError(
            "only plain open_clip ViT image towers have a Hugging Face CLIP equivalent"
        )
    block = tower.transformer.resblocks[0]
    size = tower.image_size
    return {
        "architectures": ["CLIPVisionModelWithProjection"],
        "model_type": "clip_vision_model",
        "hidden_size": tower.conv1.out_channels,
        "intermediate_size": block.mlp.c_fc.out_features,
        "projection_dim": tower.proj.shape[1],
        "num_hidden_layers": len(tower.transformer.resblocks),
        "num_attention_heads": block.attn.num_heads,
        "num_channels": tower.conv1.in_channels,
        "image_size": int(size[0] if isinstance(size, (tuple, list)) else size),
        "patch_size": tower.conv1.kernel_size[0],
        "hidden_act": activation_of(tower),
        "layer_norm_eps": tower.ln_pre.eps,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "initializer_factor": 1.0,
        "torch_dtype": "float32",
    }


def activation_of(tower: nn.Module) -> str:
    """'quick_gelu' (OpenAI CLIP's x * sigmoid(1.702 x)) or 'gelu', as HF spells them."""
    names = {type(m).__name__ for m in tower.modules()}
    return "quick_gelu" if "QuickGELU" in names else "gelu"
