"""Choosing coefficients on validation data (SPEC 3): alpha search for compositions, the
per-task lambda of the TALL masks (`tall`, `consensus`), and negation with a control task.
Every evaluation is cached in the pool's eval log, keyed by the ingredients' hashes, the
method, its parameters and alpha, so a repeated search costs nothing."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from ..errors import ModpoolError
from ..model.accuracy import accuracy
from ..model.device import resolve_device, usable
from ..model.edited import EditedModel
from ..store.layout import tasks_of
from .merge import MergeMethod, get_method
from .merge.localize import LAMBDA_GRID

if TYPE_CHECKING:
    from ..pool import Pool

DEFAULT_GRID = [round(0.05 * i, 2) for i in range(21)]


@dataclass
class AlphaRow:
    """One grid point: validation accuracy and normalised accuracy per task. For a lambda
    search `alpha` holds the lambda."""

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
        pool: Pool,
        names: list[str],
        seed: int,
        split: str,
        show_progress: bool | None,
        device: str | None = None,
    ):
        self.pool, self.seed, self.split, self.show_progress = pool, seed, split, show_progress
        self.device = usable(str(resolve_device(device))) if device else "cpu"
        self.artifacts = [pool.read(n) for n in names]
        if len({a.kind for a in self.artifacts}) > 1:
            raise ModpoolError("cannot compose nonlinear and tangent modules together")
        self.kind = self.artifacts[0].kind
        self.tasks = ["+".join(tasks_of(a.meta)) for a in self.artifacts]
        self._data: dict = {}
        self._cached = {  # the eval log, read once: (sha256, task) -> accuracy
            (r.get("sha256"), r.get("task")): r["accuracy"]
            for r in pool.history()
            if r.get("split") == split and "accuracy" in r
        }

    def method(self, name: str, params: dict) -> MergeMethod:
        merger = get_method(name, self.seed, **params)
        merger.tasks, merger.device = self.tasks, self.device
        return merger

    def accuracy(self, merger: MergeMethod, alphas: list[float], task: str) -> float:
        recipe = {
            "ingredients": [a.sha256 for a in self.artifacts],
            "method": merger.name,
            "params": merger.recipe_params(),
            "seed": self.seed,
        }
        if merger.task_aware:  # a task-aware model differs per task
            recipe["task"] = task
        key = json.dumps(recipe, sort_keys=True)
        sha = "search:" + hashlib.sha256(f"{key}|{alphas}".encode()).hexdigest()
        if (sha, task) in self._cached:
            return self._cached[(sha, task)]
        data, head = self._task(task)
        model = EditedModel(self.pool.base, self._delta(merger, alphas, task), self.kind, head)
        label = f"alpha {alphas[0]:g} on {task}"
        acc = accuracy(model, data, show_progress=self.show_progress, description=label)
        record = {"target": "(search)", "sha256": sha, "task": task, "split": self.split}
        self.pool.record_eval({**record, "accuracy": acc, "examples": len(data)})
        self._cached[(sha, task)] = acc
        return acc

    def _delta(self, merger: MergeMethod, alphas: list[float], task: str) -> dict:
        deltas = [a.tensors for a in self.artifacts]
        merged = merger.merge(deltas, alphas)
        if not merger.task_aware:
            return merged
        return {
            n: v * merger.masks(n, [d.get(n) for d in deltas], alphas)[task]
            for n, v in merged.items()
        }

    def _task(self, task: str):
        if task not in self._data:
            spec = self.pool.task(task)
            self._data[task] = (
                spec.load(self.split, self.pool.base.image_size),
                self.pool.head(spec),
            )
        return self._data[task]

    def own_accuracies(self, names: list[str]) -> dict[str, float]:
        """Each ingredient task's accuracy under its own module (for normalisation)."""
        own: dict[str, str] = {}
        for name, artifact in zip(names, self.artifacts):
            if artifact.meta["type"] != "module":
                raise ModpoolError(f"a search needs modules; {name} is a composition")
            own.setdefault(artifact.meta["task"], name)
        return {
            task: self.pool.evaluate(name, [task], self.split, self.show_progress)[0].accuracy
            for task, name in own.items()
        }


def search_alpha(
    pool: Pool,
    names: list[str],
    grid: list[float] | None = None,
    method: str = "sum",
    params: dict | None = None,
    seed: int = 0,
    split: str = "val",
    show_progress: bool | None = False,
    device: str | None = None,
) -> tuple[float, list[AlphaRow]]:
    """Evaluate `method` of `names` at each shared alpha (by default the method's own grid);
    pick the best mean normalised accuracy over the ingredient tasks. `device`: where an
    SVD-based method computes."""
    evaluator = DeltaEvaluator(pool, names, seed, split, show_progress, device)
    merger = evaluator.method(method, params or {})
    own = evaluator.own_accuracies(names)
    rows = []
    for alpha in grid or merger.grid:
        accs = {t: evaluator.accuracy(merger, [alpha] * len(names), t) for t in own}
        rows.append(AlphaRow(alpha, accs, _normalized(accs, own)))
    best = max(rows, key=lambda r: r.mean_normalized)
    return best.alpha, rows


def search_lambdas(
    pool: Pool,
    names: list[str],
    alpha: float = 1.0,
    grid: list[float] | None = None,
    seed: int = 0,
    split: str = "val",
    show_progress: bool | None = False,
) -> tuple[dict[str, float], list[AlphaRow]]:
    """The TALL mask's lambda for each task: the grid value whose task-aware model
    theta_0 + alpha * S * m_t(lambda) does best on that task's validation split."""
    evaluator = DeltaEvaluator(pool, names, seed, split, show_progress)
    own = evaluator.own_accuracies(names)
    rows = []
    for lam in grid or LAMBDA_GRID:
        merger = evaluator.method("tall", {"lambda": lam})
        accs = {t: evaluator.accuracy(merger, [alpha] * len(names), t) for t in own}
        rows.append(AlphaRow(lam, accs, _normalized(accs, own)))
    chosen = {t: max(rows, key=lambda r, t=t: r.accuracy[t]).alpha for t in own}
    return chosen, rows


def _normalized(accs: dict[str, float], own: dict[str, float]) -> dict[str, float]:
    return {t: accs[t] / own[t] if own[t] else 0.0 for t in accs}


def search_negation(
    pool: Pool,
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
    evaluator = DeltaEvaluator(pool, [name], 0, split, show_progress)
    merger = evaluator.method("sum", {})
    target = evaluator.artifacts[0].meta.get("task")
    if target is None:
        raise ModpoolError(f"negation search needs a module with one task; {name} has several")
    base_control = pool.evaluate("base", [control], split, show_progress)[0].accuracy
    rows = []
    for alpha in grid:
        target_acc = evaluator.accuracy(merger, [-alpha], target)
        control_acc = evaluator.accuracy(merger, [-alpha], control)
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
    pool: Pool,
    names: list[str],
    output: str,
    method: str = "sum",
    params: dict | None = None,
    seed: int = 0,
    grid: list[float] | None = None,
    split: str = "val",
    show_progress: bool | None = None,
    dtype: str = "fp32",
    device: str | None = None,
    allow: list[str] | str | None = None,
):
    """Search on validation, then store the composition with the search tables. tall: the
    lambda of each task (alpha stays 1); consensus: the lambdas, then alpha; the others:
    alpha over the method's grid. `best_at_edge` in the tables: the best alpha was the
    grid's largest, so a wider grid may do better."""
    pool.require_new(output)
    params = dict(params or {})
    tables: dict = {"split": split}
    rows: list[AlphaRow] = []
    if method in ("tall", "consensus") and not params.get("lambdas"):
        lambdas, rows = search_lambdas(pool, names, 1.0, None, seed, split, show_progress)
        params["lambdas"] = lambdas
        tables["lambda"] = {"chosen": lambdas, "rows": [r.to_dict() for r in rows]}
    alpha = 1.0
    if method != "tall":
        alpha, rows = search_alpha(
            pool, names, grid, method, params, seed, split, show_progress, device
        )
        tables |= {"best_alpha": alpha, "rows": [r.to_dict() for r in rows]}
        tables["best_at_edge"] = len(rows) > 1 and alpha == max(r.alpha for r in rows)
    entry = pool.compose(names, output, method, alpha, params, seed, tables, dtype, device, allow)
    return entry, rows


def negate_searched(
    pool: Pool,
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
