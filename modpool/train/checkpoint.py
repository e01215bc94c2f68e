"""Training checkpoints, so an interrupted finetune continues to the same module.

A checkpoint holds theta, AdamW's moment estimates, the step reached and the running
statistics, as safetensors (no pickle), written atomically. Resuming restores them,
rebuilds the schedule at that step and skips the batches already seen: the data order
is a function of the seed and the epoch, so the rest of the run is the same as without
the interruption.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load, save

from ..errors import ModpoolError
from ..store.atomic import atomic_write_bytes, locked
from ..store.tensorfile import parse_header

FORMAT = "modpool-checkpoint/1"
KEYS = ("theta", "exp_avg", "exp_avg_sq")


def checkpoint_rel(name: str) -> str:
    """Where, relative to the pool's root, an interrupted run that makes `name` waits."""
    return f"checkpoints/{name}.safetensors"


@dataclass
class TrainState:
    step: int
    theta: dict[str, torch.Tensor]
    exp_avg: dict[str, torch.Tensor]
    exp_avg_sq: dict[str, torch.Tensor]
    stats: dict


class Checkpointer:
    def __init__(self, path: Path, every: int, config: dict, resume: bool, lock: Path):
        self.path, self.every, self.config, self.resume, self.lock = (
            path,
            every,
            config,
            resume,
            lock,
        )

    def due(self, step: int, total: int) -> bool:
        return self.every > 0 and step % self.every == 0 and step < total

    def save(self, state: TrainState) -> None:
        tensors = {
            f"{key}/{name}": t.detach().float().contiguous().cpu()
            for key in KEYS
            for name, t in getattr(state, key).items()
        }
        meta = {
            "format": FORMAT,
            "step": str(state.step),
            "config": json.dumps(self.config, sort_keys=True),
            "stats": json.dumps(state.stats),
        }
        with locked(self.lock):
            atomic_write_bytes(self.path, save(tensors, metadata=meta))

    def load(self) -> TrainState | None:
        if not self.resume:
            if self.path.exists():
                raise ModpoolError(
                    f"an interrupted run left a checkpoint ({self.path}): continue it with "
                    "--resume, or delete that file to start over"
                )
            return None
        if not self.path.exists():
            raise ModpoolError(f"--resume: no checkpoint at {self.path}")
        data = self.path.read_bytes()
        _, meta, _ = parse_header(data, self.path.name)
        if meta.get("format") != FORMAT:
            raise ModpoolError(f"{self.path} is not a modpool checkpoint")
        saved = json.loads(meta["config"])
        if saved != json.loads(json.dumps(self.config, sort_keys=True)):
            diff = sorted(
                k for k in set(saved) | set(self.config) if saved.get(k) != self.config.get(k)
            )
            raise ModpoolError(
                f"the checkpoint was made with other settings ({', '.join(diff)}): "
                "resume with the same options"
            )
        tensors = load(data)
        parts = {
            key: {n.split("/", 1)[1]: t for n, t in tensors.items() if n.startswith(key + "/")}
            for key in KEYS
        }
        return TrainState(
            int(meta["step"]),
            parts["theta"],
            parts["exp_avg"],
            parts["exp_avg_sq"],
            json.loads(meta["stats"]),
        )
