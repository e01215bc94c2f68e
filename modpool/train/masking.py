"""Learning which weights a task needs: a binary mask per weight, trained by gradient
descent on one logit per weight while the weights stay frozen (Csordás, van Steenkiste and
Schmidhuber, "Are Neural Nets Modular? Inspecting Functional Modularity Through
Differentiable Weight Masks", ICLR 2021).

Over a module tau the model runs at theta_0 + m * tau (in the module's own forward: the
linearised one for a tangent module); over the base (`on_base`) at m * theta_0. Each step
samples the mask from the logits l with a hard Gumbel-sigmoid,

    s = sigmoid((l + log u - log(1 - u)) / temperature),  u ~ U(0, 1)
    m = [s > 0.5] + (s - stopgrad(s))           (straight-through: forward hard, backward soft)

and minimises cross-entropy + beta * mean(l) with Adam; the logits start at 2.0 (almost
every weight kept), and `beta` pulls those the task does not need below 0. The mask
learned is `l > 0`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..bases import Base
from ..bases.head import Head
from ..errors import ModpoolError
from ..model.delta import Params
from ..model.device import resolve_device
from ..model.forward import nonlinear_features, tangent_features
from ..progress import bar
from .loop import crash_at_step, endless_batches, restore_state, total_steps, training_state


@dataclass
class MaskConfig:
    """Hyper-parameters of mask learning, as in the paper: logits at 2.0, temperature 1,
    Adam at lr 1e-2; `beta` weighs the mean logit (how hard unneeded weights are pushed
    out). A fixed number of steps by default, whatever the data set's size: Adam moves a
    logit the task does not need by about lr per step, so from 2.0 it crosses 0 after about
    200 steps. beta 0.5 and 300 steps kept 21-27% of the offline modules for under 1 point
    (beta 1: 12-16% for about 2 points; benchmarks/masks.py)."""

    beta: float = 0.5
    steps: int | None = 300
    epochs: float | None = None
    lr: float = 1e-2
    batch_size: int = 32
    temperature: float = 1.0
    init: float = 2.0
    seed: int = 0
    device: str = "auto"

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self) -> None:
        if self.beta < 0 or self.lr <= 0 or self.temperature <= 0 or self.batch_size < 1:
            raise ModpoolError("--beta must be >= 0; --lr, --temperature and --batch-size > 0")


@dataclass
class MaskResult:
    masks: dict[str, torch.Tensor]  # boolean, one per masked tensor
    steps: int
    seconds: float
    final_loss: float
    train_accuracy: float


def gumbel_sigmoid(
    logits: torch.Tensor, temperature: float, generator: torch.Generator
) -> torch.Tensor:
    """A hard 0/1 sample whose gradient is the soft sample's (straight-through)."""
    u = torch.rand(logits.shape, generator=generator).to(logits.device).clamp_(1e-6, 1 - 1e-6)
    soft = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / temperature)
    hard = (soft > 0.5).to(soft.dtype)
    return hard + (soft - soft.detach())  # exactly `hard`, with the soft gradient


def learn_mask(
    base: Base,
    head: Head,
    data: Dataset,
    target: Params | None,
    kind: str,
    cfg: MaskConfig,
    show_progress: bool | None = None,
    checkpoint=None,
) -> MaskResult:
    """Learn a mask over `target` (a module's delta), or over the base's own weights when
    `target` is None. Returns the boolean masks `logit > 0`."""
    cfg.check()
    device = resolve_device(cfg.device)
    base.tower.to(device)
    run = _MaskRun(base, head.to(device), target, kind, cfg, device)
    steps = total_steps(cfg, len(data))
    state = checkpoint.load() if checkpoint is not None else None
    first = restore_state(state, run.logits, run.optimizer, cfg.lr, device) if state else 0
    stream = endless_batches(data, cfg.batch_size, cfg.seed)
    for _ in range(first):
        next(stream)
    stats = state.stats if state else {"loss_avg": 0.0, "acc_avg": 0.0, "seen": 0, "seconds": 0.0}
    loss_avg, acc_avg, seen = stats["loss_avg"], stats["acc_avg"], stats["seen"]
    start = time.perf_counter() - stats["seconds"]
    fields = "loss {task.fields[loss]:.3f} acc {task.fields[acc]:.1%} kept {task.fields[kept]:.1%}"
    with bar("mask", steps, show_progress, fields) as update:
        update(first)
        for step in range(first, steps):
            loss, correct, count = run.step(*next(stream), step)
            seen += count
            weight = 0.9 if step else 0.0
            loss_avg = weight * loss_avg + (1 - weight) * loss
            acc_avg = weight * acc_avg + (1 - weight) * correct / count
            update(loss=loss_avg, acc=acc_avg, kept=run.kept())
            if checkpoint is not None and checkpoint.due(step + 1, steps):
                checkpoint.save(
                    training_state(
                        step + 1, run.logits, run.optimizer, loss_avg, acc_avg, seen, start
                    )
                )
            crash_at_step(step + 1)
    base.tower.to("cpu")
    masks = {n: (logit > 0).cpu() for n, logit in run.logits.items()}
    return MaskResult(masks, steps, time.perf_counter() - start, loss_avg, acc_avg)


class _MaskRun:
    """The logits, their optimiser, and one step of mask learning."""

    def __init__(self, base: Base, head: Head, target, kind: str, cfg: MaskConfig, device):
        self.base, self.head, self.kind, self.cfg = base, head, kind, cfg
        self.params0 = {n: p.detach() for n, p in base.trainable().items()}
        source = target if target is not None else self.params0
        self.delta = (
            None if target is None else {n: t.to(device).float() for n, t in target.items()}
        )
        self.logits = {
            n: torch.full(t.shape, cfg.init, device=device, requires_grad=True)
            for n, t in source.items()
        }
        self.count = sum(t.numel() for t in self.logits.values())
        self.optimizer = torch.optim.Adam(self.logits.values(), lr=cfg.lr)

    def step(self, images, labels, step: int) -> tuple[float, int, int]:
        device = next(iter(self.logits.values())).device
        x, y = self.base.prepare(images.to(device)), labels.to(device)
        generator = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step)
        masks = {
            n: gumbel_sigmoid(logit, self.cfg.temperature, generator)
            for n, logit in self.logits.items()
        }
        out = self.head(_features(self.base, self.params0, self.delta, masks, self.kind, x))
        loss = F.cross_entropy(out.float(), y)
        mean_logit = sum(logit.sum() for logit in self.logits.values()) / self.count
        self.optimizer.zero_grad(set_to_none=True)
        (loss + self.cfg.beta * mean_logit).backward()
        self.optimizer.step()
        return loss.item(), int((out.argmax(-1) == y).sum()), len(y)

    def kept(self) -> float:
        return sum(int((logit > 0).sum()) for logit in self.logits.values()) / self.count


def _features(base: Base, params0: Params, delta, masks: Params, kind: str, x) -> torch.Tensor:
    if delta is None:  # a mask over the base's own weights
        return nonlinear_features(base.tower, {n: m * params0[n] for n, m in masks.items()}, x)
    masked = {n: m * delta[n] for n, m in masks.items()}
    if kind == "tangent":
        return tangent_features(base.tower, params0, masked, x)
    return nonlinear_features(base.tower, {n: params0[n] + d for n, d in masked.items()}, x)


def kept_fractions(masks: dict[str, torch.Tensor]) -> dict[str, float]:
    return {n: float(m.float().mean()) for n, m in masks.items()}
