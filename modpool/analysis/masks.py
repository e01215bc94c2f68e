"""How much of a module a task needs, and how much tasks share: the analysis of learned
weight masks (Csordás et al., "Are Neural Nets Modular?", ICLR 2021).

For masks m_A, m_B, ... (masked modules made by `modpool mask`, all over modules or all
over the base):

- kept fraction of each mask, per tensor and overall;
- per pair, per tensor and overall: IoU |A & B| / |A | B| and the shared fraction
  |A & B| / |A| (how much of A's weights B uses too);
- the removal matrix: with E_X = m_X & ~(union of the other masks) the weights exclusive
  to task X, the accuracy on each task Y of the network Y runs (its full module
  theta_0 + tau_Y, or the base for base masks) with E_X removed. Specialisation shows as
  a drop on the diagonal only; reuse as drops off it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import ModpoolError
from ..model.accuracy import accuracy
from ..model.edited import EditedModel
from .figures import save_beside

if TYPE_CHECKING:
    from ..pool import Pool


def analyse_masks(
    pool: Pool, names: list[str], split: str = "test", show_progress: bool | None = False
) -> dict:
    """Kept fractions, pairwise IoU and shared fractions (per tensor and overall), and the
    removal matrix of the masks `names`."""
    if len(set(names)) < 2:
        raise ModpoolError("name at least two masks to compare")
    masks, info = {}, {}
    for name in names:
        masks[name], info[name] = load_mask(pool, name)
    if len({i["of"] == "base" for i in info.values()}) > 1:
        raise ModpoolError("compare masks of the same kind: all over modules, or all --base")
    common = sorted(set.intersection(*(set(m) for m in masks.values())))
    result = {
        "masks": names,
        "tasks": {n: info[n]["task"] for n in names},
        "of": {n: info[n]["of"] for n in names},
        "kept": {n: _kept(masks[n]) for n in names},
        "pairs": {},
    }
    for a in names:
        for b in names:
            if a != b:
                result["pairs"][f"{a}|{b}"] = _overlap(masks[a], masks[b], common)
    result["removal"] = removal_matrix(pool, masks, info, common, split, show_progress)
    return result


def load_mask(pool: Pool, name: str) -> tuple[dict[str, torch.Tensor], dict]:
    """A masked module's mask (booleans per tensor) and its `mask` metadata."""
    with pool.open_artifact(name) as artifact:
        info = artifact.meta.get("mask")
        if not info:
            raise ModpoolError(
                f"{name} is not a mask: learn one with `modpool mask {name}` (or --base --task T)"
            )
        bits = {n: artifact.stored_mask(n) for n in artifact.names}
    if any(b is None for b in bits.values()):
        raise ModpoolError(f"{name}: a tensor of this mask is stored without its bits")
    if info.get("stored") == "removed":  # a base mask stores the weights it removes
        bits = {n: ~b for n, b in bits.items()}
    return bits, info


def _kept(mask: dict[str, torch.Tensor]) -> dict:
    total = sum(int(m.sum()) for m in mask.values())
    return {
        "total": total / sum(m.numel() for m in mask.values()),
        "per_tensor": {n: float(m.float().mean()) for n, m in mask.items()},
    }


def _overlap(a: dict, b: dict, names: list[str]) -> dict:
    per_tensor, inter_all, union_all, a_all = {}, 0, 0, 0
    for name in names:
        inter = int((a[name] & b[name]).sum())
        union = int((a[name] | b[name]).sum())
        kept = int(a[name].sum())
        per_tensor[name] = {
            "iou": inter / union if union else 1.0,
            "shared": inter / kept if kept else 0.0,
        }
        inter_all, union_all, a_all = inter_all + inter, union_all + union, a_all + kept
    return {
        "iou": inter_all / union_all if union_all else 1.0,
        "shared": inter_all / a_all if a_all else 0.0,
        "per_tensor": per_tensor,
    }


def exclusive(masks: dict[str, dict[str, torch.Tensor]], name: str, names: list[str]) -> dict:
    """The weights only `name`'s mask keeps."""
    out = {}
    for tensor in names:
        others = torch.zeros_like(masks[name][tensor])
        for other, mask in masks.items():
            if other != name and tensor in mask:
                others |= mask[tensor]
        out[tensor] = masks[name][tensor] & ~others
    return out


def removal_matrix(
    pool: Pool, masks: dict, info: dict, names: list[str], split: str, show_progress
):
    """Accuracy on each mask's task of its network with X's exclusive weights removed, for
    each X (row), and with nothing removed (`none`)."""
    nets = {n: _network(pool, info[n]) for n in masks}
    rows: dict[str, dict[str, float]] = {}
    for removed in ["none", *masks]:
        cut = None if removed == "none" else exclusive(masks, removed, names)
        rows[removed] = {}
        for name, (delta, kind) in nets.items():
            task = info[name]["task"]
            edited = _remove(pool, delta, cut, info[name]["of"] == "base")
            model = EditedModel(pool.base, edited, kind, pool.head(pool.task(task)))
            data = pool.task(task).load(split, pool.base.image_size)
            label = f"{name}, exclusive to {removed} removed"
            rows[removed][name] = accuracy(
                model, data, show_progress=show_progress, description=label
            )
    return rows


def _network(pool: Pool, info: dict) -> tuple[dict | None, str]:
    """The delta of the network a mask's task runs (its full module; None: the base)."""
    if info["of"] == "base":
        return None, "nonlinear"
    artifact = pool.read(info["of"])
    return artifact.tensors, artifact.kind


def _remove(pool: Pool, delta: dict | None, cut: dict | None, on_base: bool) -> dict | None:
    if cut is None:
        return delta
    if on_base:  # theta_0 without the cut weights: the delta -theta_0 there
        params0 = pool.base.trainable()
        return {n: -(params0[n].detach().float() * c) for n, c in cut.items()}
    return {n: v * ~cut[n] if n in cut else v for n, v in delta.items()}


def save_analysis(result: dict, prefix: Path) -> tuple[Path, Path | None]:
    """JSON of everything, and a PNG of the IoU and removal matrices (None without
    matplotlib)."""
    names = result["masks"]
    iou = [[1.0 if a == b else result["pairs"][f"{a}|{b}"]["iou"] for b in names] for a in names]
    base = result["removal"]["none"]
    drop = [[100 * (result["removal"][x][y] - base[y]) for y in names] for x in names]
    worst = max(1e-6, *(abs(v) for row in drop for v in row))  # white at no change

    def draw(plt):
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), dpi=100)
        image = _heat_map(axes[0], iou, names, "mask IoU", "viridis", 0.0, 1.0, "{:.2f}")
        fig.colorbar(image, ax=axes[0])
        title = "accuracy change, points\n(row: its exclusive weights removed)"
        image = _heat_map(axes[1], drop, names, title, "RdBu", -worst, worst, "{:+.1f}")
        fig.colorbar(image, ax=axes[1])
        return fig

    return save_beside(result, Path(prefix).with_suffix(".png"), draw)


def _heat_map(ax, values, names, title, cmap, low, high, spelling):
    """One annotated matrix, white text where the colour is dark."""
    image = ax.imshow(values, cmap=cmap, vmin=low, vmax=high)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_title(title, fontsize=10)
    middle = (low + high) / 2
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            dark = (
                v < low + 0.6 * (high - low)
                if cmap == "viridis"
                else abs(v - middle) > 0.6 * (high - middle)
            )
            ax.text(j, i, spelling.format(v), ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")  # fmt: skip
    return image
