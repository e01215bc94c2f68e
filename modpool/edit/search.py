"""Choosing coefficients on validation data (SPEC 3): alpha search for compositions and
for negation with a control task. Every evaluation is cached in the pool's eval log,
keyed by the ingredients' hashes, the method, its parameters and alpha, so a repeated
search costs nothing."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from ..errors import ModpoolError
from ..model.accuracy import accuracy
from ..model.edited import EditedModel
from .merge import get_method

DEFAULT_GRID = [round(0.05 * i, 2) for i in range(21)]


@dataclass
class AlphaRow:
    alpha: float
    accuracy: dict[str, float]
    normalized: dict[str, float]

    @property
    def mean_normalized(self) -> float:
        return sum(self.normalized.values()) / len(self.normalized)

    def to_dict(self) -> dict:
        return {**asdict(self), "mean_normalized": self.mean_normalized}


@dataclass
class NegateRow:
    alpha: float
    target_accuracy: float
    control_accuracy: float
    control_kept: float
    allowed: bool


class DeltaEvaluator:
    """Accuracy of in-memory compositions of fixed ingredients, cached in evals.jsonl."""

    def __init__(
        self,
        pool,
        names: list[str],
        method: str,
        params: dict,
        seed: int,
        split: str,
        show_progress: bool | None,
    ):
        self.pool, self.split, self.show_progress = pool, split, show_progress
        self.artifacts = [pool.read(n) for n in names]
        if len({a.kind for a in self.artifacts}) > 1:
            raise ModpoolError("cannot compose nonlinear and tangent modules together")
        self.kind = self.artifacts[0].kind
        self.merger = get_method(method, seed, **params)
        self.key = json.dumps(
            {
                "ingredients": [a.sha256 for a in self.artifacts],
                "method": method,
                "params": self.merger.recipe_params(),
                "seed": seed,
            },
            sort_keys=True,
        )
        self._data: dict = {}
        self._cached = {  # the eval log, read once: (sha256, task) -> accuracy
            (r.get("sha256"), r.get("task")): r["accuracy"]
            for r in pool.history()
            if r.get("split") == split and "accuracy" in r
        }

    def accuracy(self, alphas: list[float], task: str) -> float:
        sha = "search:" + hashlib.sha256(f"{self.key}|{alphas}".encode()).hexdigest()
        if (sha, task) in self._cached:
            return self._cached[(sha, task)]
        if task not in self._data:
            self._data[task] = (
                self.pool.task(task).load(self.split, self.pool.base.image_size),
                self.pool.head(self.pool.task(task)),
            )
        data, head = self._data[task]
        delta = self.merger.merge([a.tensors for a in self.artifacts], alphas)
        model = EditedModel(self.pool.base, delta, self.kind, head)
        acc = accuracy(
            model,
            data,
            show_progress=self.show_progress,
            description=f"alpha {alphas[0]:g} on {task}",
        )
        self.pool.record_eval(
            {
                "target": "(search)",
                "sha256": sha,
                "task": task,
                "split": self.split,
                "accuracy": acc,
                "examples": len(data),
            }
        )
        self._cached[(sha, task)] = acc
        return acc


def search_alpha(
    pool,
    names: list[str],
    grid: list[float] | None = None,
    method: str = "sum",
    params: dict | None = None,
    seed: int = 0,
    split: str = "val",
    show_progress: bool | None = False,
) -> tuple[float, list[AlphaRow]]:
    """Evaluate `method` of `names` at each shared alpha; pick the best mean normalised
    accuracy over the ingredient tasks (each normalised by its own module)."""
    grid = grid or DEFAULT_GRID
    evaluator = DeltaEvaluator(pool, names, method, params or {}, seed, split, show_progress)
    tasks: dict[str, str] = {}
    for name, artifact in zip(names, evaluator.artifacts):
        if artifact.meta["type"] != "module":
            raise ModpoolError(f"alpha search needs modules; {name} is a composition")
        tasks.setdefault(artifact.meta["task"], name)
    own = {t: pool.evaluate(m, [t], split, show_progress)[0].accuracy for t, m in tasks.items()}
    rows = []
    for alpha in grid:
        accs = {t: evaluator.accuracy([alpha] * len(names), t) for t in tasks}
        rows.append(AlphaRow(alpha, accs, {t: accs[t] / own[t] if own[t] else 0.0 for t in tasks}))
    best = max(rows, key=lambda r: r.mean_normalized)
    return best.alpha, rows


def search_negation(
    pool,
    name: str,
    control: str,
    keep: float = 0.95,
    grid: list[float] | None = None,
    split: str = "val",
    show_progress: bool | None = False,
) -> tuple[float, list[NegateRow]]:
    """The alpha minimising the target's accuracy at theta_0 - alpha * tau while the control
    task keeps at least `keep` of the base's accuracy on it."""
    grid = grid or DEFAULT_GRID
    evaluator = DeltaEvaluator(pool, [name], "sum", {}, 0, split, show_progress)
    target = evaluator.artifacts[0].meta.get("task")
    if target is None:
        raise ModpoolError(f"negation search needs a module with one task; {name} has several")
    base_control = pool.evaluate("base", [control], split, show_progress)[0].accuracy
    rows = []
    for alpha in grid:
        target_acc = evaluator.accuracy([-alpha], target)
        control_acc = evaluator.accuracy([-alpha], control)
        kept = control_acc / base_control if base_control else 0.0
        rows.append(NegateRow(alpha, target_acc, control_acc, kept, kept >= keep))
    allowed = [r for r in rows if r.allowed]
    if not allowed:
        raise ModpoolError(
            f"no alpha in the grid keeps {keep:.0%} of the base's {control} accuracy"
        )
    best = min(allowed, key=lambda r: (r.target_accuracy, -r.control_accuracy))
    return best.alpha, rows


def compose_searched(
    pool,
    names: list[str],
    output: str,
    method: str = "sum",
    params: dict | None = None,
    seed: int = 0,
    grid: list[float] | None = None,
    split: str = "val",
    show_progress: bool | None = None,
    dtype: str = "fp32",
):
    """Search the shared alpha, then store the composition with the search table."""
    pool.require_new(output)
    alpha, rows = search_alpha(pool, names, grid, method, params, seed, split, show_progress)
    table = {"split": split, "best_alpha": alpha, "rows": [r.to_dict() for r in rows]}
    entry = pool.compose(names, output, method, alpha, params, seed, search=table, dtype=dtype)
    return entry, rows


def negate_searched(
    pool,
    name: str,
    output: str,
    control: str,
    keep: float = 0.95,
    grid: list[float] | None = None,
    split: str = "val",
    show_progress: bool | None = None,
):
    pool.require_new(output)
    alpha, rows = search_negation(pool, name, control, keep, grid, split, show_progress)
    table = {
        "split": split,
        "control": control,
        "keep": keep,
        "best_alpha": alpha,
        "rows": [asdict(r) for r in rows],
    }
    return pool.negate(name, output, alpha, search=table), rows
