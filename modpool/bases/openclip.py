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
        """`rest` is `ARCH:PRETRAINED` (a tag, a weights file or 'none') or `hf-hub:ORG/REPO`.
        Weights published with QuickGELU (OpenAI's) get a model built with QuickGELU, which
        open_clip 2.29 and later no longer force."""
        import open_clip

        register_configs()
        if rest.startswith("hf-hub:"):
            model = _create(rest, None, False, f"{rest} (config and weights from the Hub)")
            return cls(spec, model, open_clip.get_tokenizer(rest), rest.removeprefix("hf-hub:"))
        arch, _, pretrained = rest.partition(":")
        if not is_architecture(arch):
            raise ModpoolError(
                f"unknown open_clip architecture {arch!r} (see open_clip.list_models())"
            )
        pretrained = pretrained or "none"
        hub_id, quick_gelu = None, False
        if pretrained == "none":
            torch.manual_seed(0)  # random weights, reproducible: for tests and benchmarks only
            model = _create(arch, None, False, f"{arch} with random weights")
        elif Path(pretrained).exists():
            model = _create(arch, pretrained, False, f"{arch} from {pretrained}")
        else:
            tags = tags_of(arch)
            if pretrained not in tags:
                raise ModpoolError(
                    f"{arch} has no pretrained tag {pretrained!r} and no such weights file; "
                    f"tags: {', '.join(tags) or 'none'}"
                )
            cfg = open_clip.get_pretrained_cfg(arch, pretrained) or {}
            hub_id = (cfg.get("hf_hub") or "").rstrip("/") or None
            quick_gelu = bool(cfg.get("quick_gelu"))
            model = _create(arch, pretrained, quick_gelu, f"{arch}:{pretrained} weights")
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


def is_architecture(arch: str) -> bool:
    import open_clip

    register_configs()
    return arch in open_clip.list_models()


def tags_of(arch: str) -> list[str]:
    import open_clip

    return list(open_clip.list_pretrained_tags_by_model(arch))


def _create(name: str, pretrained: str | None, quick_gelu: bool, what: str):
    """open_clip.create_model, with its failures (no network, no cache, a bad file) as one
    clear line, and its warning about random weights silenced when they are asked for."""
    import open_clip

    logging.getLogger().disabled = pretrained is None and not name.startswith("hf-hub:")
    try:
        return open_clip.create_model(name, pretrained=pretrained, force_quick_gelu=quick_gelu)
    except Exception as exc:
        detail = (str(exc).splitlines() or [""])[0]
        detail = detail if len(detail) <= 200 else detail[:200] + "..."
        raise ModpoolError(
            f"could not load {what} ({type(exc).__name__}: {detail}); weights named by a tag "
            "or hf-hub: download once from the Hugging Face Hub: check the network or "
            "HF_HUB_OFFLINE, or pass a local weights file"
        ) from None
    finally:
        logging.getLogger().disabled = False


_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
