"""Choosing the coefficient alpha of a composition on validation data (SPEC 3)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ModpoolError
from .evaluate import accuracy
from .merge import get_method
from .model import EditedModel

DEFAULT_GRID = [round(0.05 * i, 2) for i in range(21)]


@dataclass
class AlphaRow:
    alpha: float
    accuracy: dict[str, float]
    normalized: dict[str, float]

    @property
    def mean_normalized(self) -> float:
        return sum(self.normalized.values()) / len(self.normalized)


def search_alpha(
    pool,
    names: list[str],
    grid: list[float] | None = None,
    method: str = "sum",
    split: str = "val",
    show_progress: bool | None = False,
) -> tuple[float, list[AlphaRow]]:
    """Evaluate `method` of `names` at each shared alpha; pick the best mean normalised
    accuracy over the ingredient tasks (each normalised by its own module)."""
    grid = grid or DEFAULT_GRID
    artifacts = [pool.read(n) for n in names]
    if len({a.kind for a in artifacts}) > 1:
        raise ModpoolError("cannot compose nonlinear and tangent modules together")
    tasks = {}
    for name, artifact in zip(names, artifacts):
        if artifact.meta["type"] != "module":
            raise ModpoolError(f"alpha search needs modules; {name} is a composition")
        tasks.setdefault(artifact.meta["task"], name)
    own = {t: pool.evaluate(m, [t], split, show_progress)[0].accuracy for t, m in tasks.items()}
    data = {t: pool.task(t).load(split, pool.base.image_size) for t in tasks}
    heads = {t: pool.head(pool.task(t)) for t in tasks}
    merger = get_method(method)
    rows = []
    for alpha in grid:
        delta = merger.merge([a.tensors for a in artifacts], [alpha] * len(artifacts))
        accs = {
            t: accuracy(
                EditedModel(pool.base, delta, artifacts[0].kind, heads[t]),
                data[t],
                show_progress=show_progress,
                description=f"alpha {alpha:g} {t}",
            )
            for t in tasks
        }
        rows.append(AlphaRow(alpha, accs, {t: accs[t] / own[t] if own[t] else 0.0 for t in tasks}))
    best = max(rows, key=lambda r: r.mean_normalized)
    return best.alpha, rows
