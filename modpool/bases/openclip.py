"""open_clip bases: the image tower is edited, the text tower builds zero-shot heads."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..errors import ModpoolError
from .base import Base
from .head import Head

CONFIG_DIR = Path(__file__).parent / "configs"
_registered = False


def register_configs() -> None:
    """Make modpool's own small configs (the tiny test CLIP) known to open_clip."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


class OpenCLIPBase(Base):
    head_kind = "zeroshot"
    after_blocks = ("proj",)  # the ViT's output projection, registered before its blocks

    def __init__(self, spec: str, model, tokenizer, hub_id: str | None):
        self.spec = spec
        self.model = model.eval()
        self.tower = model.visual
        self.tokenizer = tokenizer
        self.hub_id = hub_id
        size = self.tower.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.mean = tuple(getattr(self.tower, "image_mean", None) or _OPENAI_MEAN)
        self.std = tuple(getattr(self.tower, "image_std", None) or _OPENAI_STD)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.freeze()

    @classmethod
    def from_spec(cls, spec: str, rest: str, image_size: int | None) -> OpenCLIPBase:
        import open_clip

        register_configs()
        arch, _, pretrained = rest.partition(":")
        if arch not in open_clip.list_models():
            raise ModpoolError(
                f"unknown open_clip architecture {arch!r} (see open_clip.list_models())"
            )
        pretrained = pretrained or "none"
        hub_id = None
        if pretrained == "none":
            torch.manual_seed(0)  # random weights, reproducible: for tests and benchmarks only
            logging.getLogger().disabled = True  # open_clip warns that no weights were loaded
            try:
                model = open_clip.create_model(arch, pretrained=None)
            finally:
                logging.getLogger().disabled = False
        elif Path(pretrained).exists():
            model = open_clip.create_model(arch, pretrained=pretrained)
        else:
            tags = open_clip.list_pretrained_tags_by_model(arch)
            if pretrained not in tags:
                raise ModpoolError(
                    f"{arch} has no pretrained tag {pretrained!r} and no such weights file; "
                    f"tags: {', '.join(tags) or 'none'}"
                )
            hub_id = _hub_id(arch, pretrained)
            try:
                model = open_clip.create_model(arch, pretrained=pretrained)
            except Exception as exc:  # network or cache problems surface here
                raise ModpoolError(
                    f"could not load {arch}:{pretrained} weights ({type(exc).__name__}); "
                    "they download once from the Hugging Face Hub: check the network or "
                    "HF_HUB_OFFLINE, or pass a local weights file instead of the tag"
                ) from None
        return cls(spec, model, open_clip.get_tokenizer(arch), hub_id)

    @torch.no_grad()
    def zeroshot_head(self, classnames: list[str], templates: list[str]) -> Head:
        """Per class: encode every template, normalise, average, re-normalise."""
        device = next(self.model.parameters()).device
        rows = []
        for name in classnames:
            tokens = self.tokenizer([t.format(c=name) for t in templates]).to(device)
            emb = self.model.encode_text(tokens).float()
            emb = emb / emb.norm(dim=-1, keepdim=True)
            mean = emb.mean(dim=0)
            rows.append(mean / mean.norm())
        return Head(torch.stack(rows).cpu(), None, normalize=True, scale=self.logit_scale)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp())


def _hub_id(arch: str, tag: str) -> str | None:
    import open_clip

    try:
        cfg = open_clip.get_pretrained_cfg(arch, tag)
    except Exception:
        return None
    return cfg.get("hf_hub", "").rstrip("/") or None


_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
