"""Fine-tuned checkpoints in the field's formats, read lazily as named tensors.

The format is detected from the bytes, never from the extension alone:

- safetensors (8-byte header length, JSON header): a modpool artifact when its metadata
  says so, else a state dict (open_clip, timm, or Hugging Face CLIP keys);
- a zip whose single `*/data.pkl` is a torch pickle (`torch.save` since 1.6, `.pt`,
  `.pth`, `.bin`): read by the restricted reader of `unpickle.py`. It may hold a state
  dict, a nested training checkpoint, a whole pickled model (the task-vectors
  `ImageEncoder`), or the `params`/`params0` lists of a linearised model;
- a folder with `config.json` and `model.safetensors` or `pytorch_model.bin`: a Hugging
  Face CLIP model (its keys are mapped to open_clip's by `hf_clip.py`);
- an open_clip Hub folder (`open_clip_model.safetensors` or `open_clip_pytorch_model.bin`).

Every tensor is a lazy object with `.shape`, `.dtype` and `.load()`, so a checkpoint is
never held whole: import reads one tensor at a time.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ModpoolError
from ..store.artifact import FORMAT as MODPOOL_FORMAT
from ..store.tensorfile import TORCH_DTYPE, TensorFile
from . import hf_clip
from .unpickle import Stub, flatten, open_torch_zip

HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
OPENCLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_LIST_RE = re.compile(r"^(?:(.*)\.)?(params0?)\.(\d+)$")


@dataclass
class FileTensor:
    """A tensor of an opened safetensors file, read on `load()`."""

    file: TensorFile
    key: str

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.file.entries[self.key]["shape"])

    @property
    def dtype(self) -> torch.dtype:
        return TORCH_DTYPE[self.file.entries[self.key]["dtype"]]

    def load(self) -> torch.Tensor:
        value = self.file.raw(self.key).clone()
        self.file.release(self.key)  # the map's pages leave this process: one tensor at a time
        return value


@dataclass
class Checkpoint:
    """A checkpoint's tensors by name (lazy), what it is, and what else it said.

    `format` names the layout; `activation` is "quick_gelu" or "gelu" when the file tells
    (a pickled model's classes, a Hugging Face config); `lists` holds the `params` and
    `params0` lists of a linearised model, when it is one."""

    path: Path
    format: str
    tensors: dict[str, Any] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    activation: str | None = None
    lists: dict[str, list[Any]] = field(default_factory=dict)
    strings: dict[str, str] = field(default_factory=dict)
    _closers: list = field(default_factory=list)

    def close(self) -> None:
        for close in self._closers:
            close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_checkpoint(path: Path | str) -> Checkpoint:
    """Detect the format of `path` (a file or a folder) and open it lazily."""
    path = Path(path)
    if not path.exists():
        raise ModpoolError(f"{path} does not exist")
    if path.is_dir():
        return _open_folder(path)
    kind = sniff(path)
    if kind == "safetensors":
        return _open_safetensors(path)
    if kind == "zip":
        return _open_torch(path)
    if kind == "legacy-torch":
        raise ModpoolError(
            f"{path.name} uses torch's legacy (pre-1.6) serialization, which modpool does not "
            "read: load it with torch and save it again (torch.save writes the zip format)"
        )
    raise ModpoolError(
        f"{path.name} is not a checkpoint modpool reads (safetensors, a torch zip checkpoint "
        "or a Hugging Face folder)"
    )


def sniff(path: Path) -> str | None:
    """'safetensors', 'zip', 'legacy-torch' or None, from the first bytes."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1:
        return "safetensors"
    if head[:2] == b"\x80\x02":
        return "legacy-torch"
    return None


def is_modpool_artifact(path: Path) -> bool:
    if path.is_dir() or sniff(path) != "safetensors":
        return False
    with TensorFile.open(path) as file:
        return file.raw_meta.get("format") == MODPOOL_FORMAT


def _open_safetensors(path: Path) -> Checkpoint:
    file = TensorFile.open(path)
    tensors = {key: FileTensor(file, key) for key in file.entries}
    checkpoint = Checkpoint(path, "safetensors state dict", tensors, _closers=[file.close])
    return _maybe_hf(checkpoint, path.parent / "config.json")


def _open_torch(path: Path) -> Checkpoint:
    opened = open_torch_zip(path)
    found = flatten(opened.root)
    tensors = {k: v for k, v in found.items() if not isinstance(v, str)}
    strings = {k: v for k, v in found.items() if isinstance(v, str)}
    checkpoint = Checkpoint(
        path,
        _describe(opened.root),
        tensors,
        activation=_activation_from_classes(opened.globals),
        strings=strings,
        _closers=[opened.close],
    )
    _split_lists(checkpoint)
    return _maybe_hf(checkpoint, path.parent / "config.json")


def _open_folder(path: Path) -> Checkpoint:
    for name in (*HF_WEIGHTS, *OPENCLIP_WEIGHTS):
        if (path / name).is_file():
            checkpoint = open_checkpoint(path / name)
            if name in OPENCLIP_WEIGHTS:
                checkpoint.format = f"open_clip Hub folder ({checkpoint.format})"
            return checkpoint
    if (path / "model.safetensors.index.json").exists():
        raise ModpoolError(f"{path}: sharded checkpoints are not supported; merge the shards")
    raise ModpoolError(
        f"{path} is a folder with no checkpoint modpool reads (config.json with "
        f"{' or '.join(HF_WEIGHTS)}, or {' or '.join(OPENCLIP_WEIGHTS)})"
    )


def _maybe_hf(checkpoint: Checkpoint, config: Path) -> Checkpoint:
    """Map Hugging Face CLIP keys to open_clip's, reading the activation from config.json."""
    if not hf_clip.is_hf_clip(list(checkpoint.tensors)):
        return checkpoint
    checkpoint.tensors, dropped = hf_clip.to_openclip(checkpoint.tensors)
    checkpoint.dropped += dropped
    checkpoint.format = "Hugging Face CLIP"
    if config.is_file():
        try:
            cfg = json.loads(config.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ModpoolError(f"{config} is not valid JSON") from None
        vision = cfg.get("vision_config", cfg) if isinstance(cfg, dict) else {}
        checkpoint.activation = vision.get("hidden_act", checkpoint.activation)
    return checkpoint


def _split_lists(checkpoint: Checkpoint) -> None:
    """A linearised model's `params.i` / `params0.i` tensors become two ordered lists."""
    found = {n: m for n in checkpoint.tensors if (m := _LIST_RE.match(n))}
    if {m[2] for m in found.values()} != {"params", "params0"}:
        return
    lists: dict[str, dict[int, Any]] = {"params": {}, "params0": {}}
    for name, m in found.items():
        lists[m[2]][int(m[3])] = checkpoint.tensors.pop(name)
    checkpoint.lists = {k: [v[i] for i in sorted(v)] for k, v in lists.items()}
    checkpoint.format = "linearised model (params, params0)"


def _describe(root: Any) -> str:
    if isinstance(root, Stub):
        return f"pickled model ({root.qualname})"
    return "torch state dict" if isinstance(root, dict) else "torch checkpoint"


def _activation_from_classes(globals_: set[str]) -> str | None:
    names = {g.rsplit(".", 1)[-1] for g in globals_}
    if "QuickGELU" in names:
        return "quick_gelu"
    return "gelu" if "GELU" in names else None
