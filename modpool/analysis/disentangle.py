"""Weight disentanglement error of two modules over an (alpha_1, alpha_2) grid (SPEC 5).

xi(a1, a2) = sum over t in {1, 2} of the fraction of t's examples whose prediction at
theta_0 + a_t tau_t differs from the prediction at theta_0 + a1 tau_1 + a2 tau_2.
Lower means the modules do not interfere. Tangent modules use the linearised forward;
since it is linear in the delta, f0, J.tau_1 and J.tau_2 are computed once per example
and every grid point costs only the heads.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ModpoolError
from ..model.accuracy import EVAL_BATCH
from ..model.edited import EditedModel
from ..progress import bar
from ..tasks import batches
from ..tasks.task import limited
from .figures import save_beside

DEFAULT_GRID = [round(-3 + 0.5 * i, 2) for i in range(13)]


def disentanglement(
    pool,
    first: str,
    second: str,
    grid: list[float] | None = None,
    split: str = "val",
    limit: int | None = None,
    show_progress: bool | None = None,
) -> dict:
    grid = grid or DEFAULT_GRID
    artifacts = [pool.read(first), pool.read(second)]
    kinds = {a.kind for a in artifacts}
    if len(kinds) > 1:
        raise ModpoolError("cannot compare a nonlinear and a tangent module")
    kind = kinds.pop()
    tasks = [a.meta.get("task") for a in artifacts]
    if None in tasks:
        raise ModpoolError("disentanglement compares two single-task modules")
    taus = [a.tensors for a in artifacts]
    heads = [pool.head(pool.task(t)) for t in tasks]
    data = [limited(pool.task(t).load(split, pool.base.image_size), limit) for t in tasks]
    n = len(grid)
    error = torch.zeros(n, n)
    if kind == "tangent":
        error = _tangent_grid(pool, taus, heads, data, grid, show_progress)
    else:
        error = _nonlinear_grid(pool, taus, heads, data, grid, show_progress)
    return {
        "modules": [first, second],
        "tasks": tasks,
        "kind": kind,
        "split": split,
        "alphas": grid,
        "error": error.tolist(),
        "examples": [len(d) for d in data],
    }


def _predict(pool, delta, kind, head, dataset) -> torch.Tensor:
    model = EditedModel(pool.base, delta, kind, head)
    return torch.cat([model(x).argmax(-1) for x, _ in batches(dataset, EVAL_BATCH)])


def _nonlinear_grid(pool, taus, heads, data, grid, show_progress) -> torch.Tensor:
    n = len(grid)
    scaled = lambda tau, a: {k: a * v for k, v in tau.items()}  # noqa: E731
    alone = [
        [_predict(pool, scaled(taus[t], a), "nonlinear", heads[t], data[t]) for a in grid]
        for t in range(2)
    ]
    error = torch.zeros(n, n)
    with bar("disentanglement", n * n, show_progress) as update:
        for i, a1 in enumerate(grid):
            for j, a2 in enumerate(grid):
                delta = {k: a1 * taus[0][k] + a2 * taus[1][k] for k in taus[0]}
                for t, own in ((0, i), (1, j)):
                    joint = _predict(pool, delta, "nonlinear", heads[t], data[t])
                    error[i, j] += (joint != alone[t][own]).float().mean()
                update()
    return error


@torch.no_grad()
def _tangent_grid(pool, taus, heads, data, grid, show_progress) -> torch.Tensor:
    n = len(grid)
    error = torch.zeros(n, n)
    base = EditedModel(pool.base)
    with bar("disentanglement (tangent)", 2, show_progress) as update:
        for t in range(2):
            f0, jvps = [], [[], []]
            for x, _ in batches(data[t], EVAL_BATCH):
                x = pool.base.prepare(x)
                zero = base.features(x, prepared=True).float()
                f0.append(zero)
                for s in range(2):
                    linear = EditedModel(pool.base, taus[s], "tangent").features(x, prepared=True)
                    jvps[s].append(linear.float() - zero)
            f0 = torch.cat(f0)
            j1, j2 = torch.cat(jvps[0]), torch.cat(jvps[1])
            own = j1 if t == 0 else j2
            alone = [heads[t](f0 + a * own).argmax(-1) for a in grid]
            for i, a1 in enumerate(grid):
                for j, a2 in enumerate(grid):
                    joint = heads[t](f0 + a1 * j1 + a2 * j2).argmax(-1)
                    error[i, j] += (joint != alone[i if t == 0 else j]).float().mean()
            update()
    return error


def save_map(result: dict, png: Path) -> tuple[Path | None, Path]:
    """Write the numbers as JSON and the heat map as PNG beside it (None without
    matplotlib)."""
    alphas = result["alphas"]

    def draw(plt):
        fig, ax = plt.subplots(figsize=(5, 4.2), dpi=100)
        image = ax.imshow(
            torch.tensor(result["error"]).T.numpy(),
            origin="lower",
            cmap="viridis",
            extent=(alphas[0], alphas[-1], alphas[0], alphas[-1]),
            vmin=0,
            vmax=2,
            aspect="auto",
        )
        a, b = result["modules"]
        ax.set_xlabel(f"alpha_1 ({a})")
        ax.set_ylabel(f"alpha_2 ({b})")
        ax.set_title(f"disentanglement error, {result['kind']}")
        fig.colorbar(image, ax=ax, label="error (sum over both tasks)")
        return fig

    json_path, written = save_beside(result, png, draw)
    return written, json_path
