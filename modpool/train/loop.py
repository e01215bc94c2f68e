"""Fine-tuning a module: the base image tower through a frozen task head.

Every mode shares one loop: AdamW (weight decay 0.1), cosine schedule with linear
warm-up, gradient clipping at 1.0, a fixed seed. The mode only decides the forward:
`nonlinear` trains theta directly, `tangent` trains the first-order Taylor model
around theta_0 (SPEC 2.2). BatchNorm statistics stay frozen (eval mode), so a module
is a pure weight delta and the JVP is well defined.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..bases import Base
from ..bases.head import Head
from ..errors import ModpoolError
from ..model.device import resolve_device
from ..model.forward import Params, nonlinear_features, tangent_features
from ..progress import bar
from ..tasks import batches
from .checkpoint import TrainState
from .distributed import device_for, shard, world

MODES = ("nonlinear", "tangent", "ita", "iel")


@dataclass
class TrainConfig:
    """Hyper-parameters; `defaults_for` gives the published CLIP recipe or the offline one."""

    mode: str = "nonlinear"
    steps: int | None = 2000
    epochs: float | None = None
    lr: float = 1e-5
    batch_size: int = 128
    warmup: int | float = 500
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    strength: float | None = None  # ita: a, iel: beta (defaults 1.0 and 20.0)
    fisher_samples: int = 1
    fisher_exact: bool = False
    fisher_examples: int | None = None
    accumulate: int = 1  # micro-batches per optimizer step (gradient accumulation)
    last_blocks: int | None = None  # train only the tower's last K blocks (and what follows)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "extra"} | self.extra


def defaults_for(base: Base) -> TrainConfig:
    """CLIP bases: lr 1e-5, batch 128, 2,000 steps, 500 warm-up. Offline base: AdamW at
    lr 2e-5 for two epochs (a trial showed 1e-4 hurts the task itself)."""
    if base.head_kind == "zeroshot":
        return TrainConfig()
    return TrainConfig(steps=None, epochs=2.0, lr=2e-5, batch_size=32, warmup=0.1)


def total_steps(cfg: TrainConfig, n_examples: int) -> int:
    if cfg.epochs is not None:
        return max(1, math.ceil(cfg.epochs * math.ceil(n_examples / cfg.batch_size)))
    if cfg.steps is None or cfg.steps < 1:
        raise ModpoolError("give --steps N (N >= 1) or --epochs E")
    return cfg.steps


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class TrainResult:
    delta: Params
    steps: int
    seconds: float
    images_per_second: float
    final_loss: float
    train_accuracy: float
    peak_memory_bytes: int | None = None


def forward_features(
    mode: str, base: Base, theta: Params, params0: Params, x: torch.Tensor, penalty=None
):
    if mode == "tangent":
        return tangent_features(base.tower, params0, {n: theta[n] - params0[n] for n in theta}, x)
    weights = penalty.weights(theta, params0) if penalty is not None else theta
    return nonlinear_features(base.tower, weights, x)


def check_config(cfg: TrainConfig) -> None:
    """Refuse bad settings before any work (a head fit, a Fisher pass) is spent on them."""
    if cfg.mode not in MODES:
        raise ModpoolError(f"unknown mode {cfg.mode!r}: choose one of {', '.join(MODES)}")
    if cfg.lr <= 0 or cfg.batch_size < 1:
        raise ModpoolError("--lr must be positive and --batch-size at least 1")
    if cfg.accumulate < 1:
        raise ModpoolError("--accumulate must be at least 1")
    if cfg.last_blocks is not None and cfg.mode == "iel":
        raise ModpoolError(
            "--last-blocks does not combine with iel, which trains inside a composition of "
            "whole modules: use it with nonlinear, tangent or ita"
        )


def fit(
    base: Base,
    head: Head,
    data: Dataset,
    cfg: TrainConfig,
    show_progress: bool | None = None,
    penalty=None,
    checkpoint=None,
) -> TrainResult:
    """Train one module; returns tau = theta - theta_0 (float32, on the CPU). `penalty`
    (ita/iel, see second_order.py) is applied as a decoupled step before each AdamW step."""
    check_config(cfg)
    if len(data) == 0:
        raise ModpoolError("the training split is empty")
    world_ = world(cfg.device)
    if cfg.batch_size < world_.size * cfg.accumulate:
        raise ModpoolError(
            f"--batch-size {cfg.batch_size} is smaller than processes x "
            f"--accumulate ({world_.size} x {cfg.accumulate})"
        )
    device = resolve_device(device_for(world_, cfg.device))
    base.tower.to(device)
    head = head.to(device)
    penalty = penalty.to(device) if penalty is not None else None
    torch.manual_seed(cfg.seed)
    params0 = {n: p.detach() for n, p in base.trainable(cfg.last_blocks).items()}
    trainable = Trainable(cfg.mode, base, params0, penalty)
    theta = trainable.theta
    ddp = (
        torch.nn.parallel.DistributedDataParallel(
            trainable, device_ids=[device.index] if device.type == "cuda" else None
        )
        if world_.distributed
        else trainable
    )
    steps = total_steps(cfg, len(data))
    warmup = int(cfg.warmup * steps) if isinstance(cfg.warmup, float) else int(cfg.warmup)
    optimizer = torch.optim.AdamW(theta.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = checkpoint.load() if checkpoint is not None else None
    first = restore_state(state, theta, optimizer, cfg.lr, device) if state else 0
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup, steps), last_epoch=first - 1
    )
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    stream = endless_batches(data, cfg.batch_size, cfg.seed)
    for _ in range(first):  # the batches the interrupted run already used
        next(stream)
    stats = state.stats if state else {"loss_avg": 0.0, "acc_avg": 0.0, "seen": 0, "seconds": 0.0}
    loss_avg, acc_avg, seen = stats["loss_avg"], stats["acc_avg"], stats["seen"]
    start = time.perf_counter() - stats["seconds"]
    stats_format = (
        "loss {task.fields[loss]:.3f} acc {task.fields[acc]:.1%} {task.fields[ips]:.0f} img/s"
    )
    with bar(f"finetune {cfg.mode}", steps, show_progress, stats_format) as update:
        update(first)
        for step in range(first, steps):
            images, labels = next(stream)
            optimizer.zero_grad(set_to_none=True)
            loss, correct, count = _accumulate_gradients(
                ddp, base, head, images, labels, device, autocast, world_, cfg.accumulate
            )
            if not torch.isfinite(loss):
                raise ModpoolError(
                    f"training diverged at step {step} (loss {loss.item()}): "
                    "lower --lr; nothing was written"
                )
            torch.nn.utils.clip_grad_norm_(theta.values(), cfg.grad_clip)
            if penalty is not None:
                penalty.step(theta, params0, lr_factor(step, warmup, steps))
            optimizer.step()
            schedule.step()
            seen += len(labels)
            weight = 0.9 if step else 0.0
            loss_avg = weight * loss_avg + (1 - weight) * loss.item()
            acc_avg = weight * acc_avg + (1 - weight) * correct / max(1, count)
            update(loss=loss_avg, acc=acc_avg, ips=seen / (time.perf_counter() - start))
            if checkpoint is not None and world_.main and checkpoint.due(step + 1, steps):
                checkpoint.save(
                    training_state(step + 1, theta, optimizer, loss_avg, acc_avg, seen, start)
                )
            crash_at_step(step + 1)
    seconds = time.perf_counter() - start
    delta = {n: (theta[n] - params0[n]).detach().float().cpu() for n in theta}
    base.tower.to("cpu")
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return TrainResult(delta, steps, seconds, seen / seconds, loss_avg, acc_avg, peak)


class Trainable(torch.nn.Module):
    """theta as parameters (what DDP synchronises); forward gives image features in the
    mode's forward. Parameter names hold dots, so they live in a list beside `names`."""

    def __init__(self, mode: str, base: Base, params0: Params, penalty=None):
        super().__init__()
        self.mode, self.base, self.params0, self.penalty = mode, base, params0, penalty
        self.names = list(params0)
        self.weights = torch.nn.ParameterList(
            [torch.nn.Parameter(params0[n].clone()) for n in self.names]
        )

    @property
    def theta(self) -> Params:
        return dict(zip(self.names, self.weights))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return forward_features(self.mode, self.base, self.theta, self.params0, x, self.penalty)


def _accumulate_gradients(ddp, base, head, images, labels, device, autocast, world_, accumulate):
    """Backward over this rank's micro-batches of the global batch. Each micro-batch loss is
    its summed cross-entropy / global batch size * world size, so DDP's gradient average is
    exactly the gradient of the global batch's mean loss."""
    total = len(labels)
    parts = shard(total, world_, accumulate)
    loss_sum, correct, count = torch.zeros((), device=device), 0, 0
    for i, index in enumerate(parts):
        x, y = base.prepare(images[index].to(device)), labels[index].to(device)
        sync = i == len(parts) - 1 or not world_.distributed
        context = contextlib.nullcontext() if sync else ddp.no_sync()
        with context, autocast:
            logits = head(ddp(x))
            loss = F.cross_entropy(logits.float(), y, reduction="sum")
            (loss * (world_.size / total)).backward()
        loss_sum += loss.detach()
        correct += int((logits.argmax(-1) == y).sum())
        count += len(y)
    return loss_sum / max(1, count), correct, count


def training_state(step, theta, optimizer, loss_avg, acc_avg, seen, start) -> TrainState:
    moments = {k: {} for k in ("exp_avg", "exp_avg_sq")}
    for name, p in theta.items():
        for key in moments:
            moments[key][name] = optimizer.state[p][key]
    stats = {
        "loss_avg": loss_avg,
        "acc_avg": acc_avg,
        "seen": seen,
        "seconds": time.perf_counter() - start,
    }
    return TrainState(
        step,
        {n: p.detach() for n, p in theta.items()},
        moments["exp_avg"],
        moments["exp_avg_sq"],
        stats,
    )


def restore_state(state: TrainState, theta: Params, optimizer, lr: float, device) -> int:
    """Put theta and AdamW's state back as they were after `state.step` steps."""
    with torch.no_grad():
        for name, p in theta.items():
            p.copy_(state.theta[name].to(device))
            optimizer.state[p] = {
                "step": torch.tensor(float(state.step)),
                "exp_avg": state.exp_avg[name].to(device).clone(),
                "exp_avg_sq": state.exp_avg_sq[name].to(device).clone(),
            }
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", lr)
    return state.step


def crash_at_step(step: int) -> None:
    """Test hook: MODPOOL_CRASH_AT_STEP=N kills the process right after step N."""
    target = os.environ.get("MODPOOL_CRASH_AT_STEP")
    if target is not None and int(target) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def endless_batches(data: Dataset, batch_size: int, seed: int):
    epoch = 0
    while True:
        yield from batches(data, batch_size, shuffle=True, seed=seed + epoch)
        epoch += 1
