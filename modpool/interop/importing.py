"""Bringing modules into a pool, from modpool files or from the field's fine-tuned checkpoints.

modpool files (modules, compositions) are validated against the pool's base and copied.
Any other checkpoint (`checkpoints.py` reads them) becomes a module: its tensors are matched
to the tower the pool edits, checked to belong to the pool's base (every shape, and the
relative distance |ft - base| / |base|, a few percent for a fine-tune), and the delta
`ft - base` (or `params - params0` for a linearised model) is streamed into the pool one
tensor at a time. Several files are imported as one change: all of them or none.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ModpoolError
from ..store.artifact import load_artifact, load_artifact_bytes
from ..store.layout import PUBLIC, Entry, check_name, default_module_name, labels, now
from ..store.modules import module_meta, stream_module
from ..store.tensorfile import sha256_file
from ..tasks import canonical_name
from . import hf_clip
from .checkpoints import Checkpoint, is_modpool_artifact, open_checkpoint
from .guess import describe_shapes, guess_architecture

if TYPE_CHECKING:
    from ..pool import Pool

DEFAULT_MAX_DISTANCE = 0.1  # a fine-tune moves a tower a few percent; another base ~100%
SAME_BASE = 1e-3  # params0 of a linearised model must be the pool's base, to rounding
BATCH_FILES = {  # the task-vectors and TALL-masks / TSV layouts
    "finetuned.pt": "nonlinear",
    "nonlinear_finetuned.pt": "nonlinear",
    "linear_finetuned.pt": "tangent",
}
DROPPED_GROUPS = (
    ("batch-norm statistics", r"(running_mean|running_var|num_batches_tracked)$"),
    (
        "text tower",
        r"(^|\.)(transformer|token_embedding|ln_final|text_projection|text_model)\.|"
        r"(^|\.)(positional_embedding|text_projection)$",
    ),
    ("heads", r"(^|\.)(classification_head|head|fc|classifier|text_projection)\."),
    ("logit scale", r"(^|\.)logit_(scale|bias)$"),
)


@dataclass
class ImportPlan:
    """What one checkpoint would become: checked, nothing written yet."""

    path: Path
    name: str
    task: str
    kind: str
    format: str
    sha256: str
    finetuned: dict[str, Any]  # tower name -> lazy tensor of the fine-tuned weights
    origin: dict[str, Any]  # tower name -> lazy tensor it is measured from
    dropped: list[str]
    missing: list[str]
    distance: float
    notes: list[str] = field(default_factory=list)
    checkpoint: Checkpoint | None = None  # open until written

    def summary(self) -> dict:
        return {
            "file": self.path.name,
            "sha256": self.sha256,
            "format": self.format,
            "kind": self.kind,
            "mapped": len(self.finetuned),
            "dropped": _group(self.dropped),
            "missing": self.missing,
            "distance": self.distance,
            "notes": self.notes,
        }


def import_file(pool: Pool, path: Path | str, name: str | None = None) -> Entry:
    """Copy a module or composition file into the pool after validating it."""
    path = Path(path)
    load_artifact(path, pool.manifest, pool.fingerprint)
    name = name or path.stem
    import_many(pool, [(path, name)])
    return pool.entry(name)


def import_many(pool: Pool, files: list[tuple[Path, str]]) -> None:
    """Import validated modpool files in order, as one change: all of them or none."""
    staged = []
    for path, name in files:
        data = Path(path).read_bytes()
        artifact = load_artifact_bytes(data, Path(path).name, pool.manifest, pool.fingerprint)
        check_name(name)
        staged.append((path, name, data, artifact))
    with pool.change() as txn:
        names = {n for _, n, _, _ in staged}
        for path, name, data, artifact in staged:
            pool.require_new(name)
            _check_ingredients(pool, Path(path).name, artifact.meta, names)
            sub = "modules" if artifact.meta["type"] == "module" else "compositions"
            pool.stage(txn, f"{sub}/{name}.safetensors", data, artifact.sha256)
            record = {"action": "import", "name": name, "sha256": artifact.sha256}
            txn.log({"time": now(), **record, "source": str(path)})


def _check_ingredients(pool: Pool, where: str, meta: dict, arriving: set[str]) -> None:
    for ingredient in meta.get("recipe", {}).get("ingredients", []):
        if not pool.exists(ingredient["name"]) and ingredient["name"] not in arriving:
            raise ModpoolError(
                f"{where} is a composition of {ingredient['name']!r}, which this pool lacks: "
                "import its ingredients first"
            )


def import_checkpoint(
    pool: Pool,
    path: Path | str,
    task: str | None = None,
    name: str | None = None,
    mode: str | None = None,
    dry_run: bool = False,
    max_distance: float = DEFAULT_MAX_DISTANCE,
    skip_unknown: bool = False,
    origin: dict | None = None,
    source: str | None = None,
    access: list[str] | None = None,
) -> list[ImportPlan] | list[Entry]:
    """Import `path`: a modpool file, one fine-tuned checkpoint (`task` says what it was
    fine-tuned on), or a folder of them laid out as the task-vectors / TALL checkpoints
    (`<Task>/finetuned.pt`, `<Task>Val/{nonlinear,linear}_finetuned.pt`), all as one change.
    `dry_run` returns the plans and writes nothing. `source` and `access` record where the
    fine-tuning data came from (default: the task) and who may use it (default: public)."""
    path = Path(path)
    if is_modpool_artifact(path):
        if dry_run:
            load_artifact(path, pool.manifest, pool.fingerprint)
            return []
        return [import_file(pool, path, name)]
    jobs = _batch(path, skip_unknown) if _is_batch(path) else [(path, task, mode, name)]
    if len(jobs) > 1 and name:
        raise ModpoolError("--name names one module: a folder imports one per task")
    plans: list[ImportPlan] = []
    try:
        for file, task_, mode_, name_ in jobs:
            taken = {p.name for p in plans}
            plans.append(plan_import(pool, file, task_, name_, mode_, max_distance, taken))
        return plans if dry_run else write_plans(pool, plans, origin, source, access)
    finally:
        for plan in plans:
            plan.checkpoint.close()


def plan_import(
    pool: Pool,
    path: Path,
    task: str | None,
    name: str | None,
    mode: str | None,
    max_distance: float = DEFAULT_MAX_DISTANCE,
    taken: set[str] | None = None,
) -> ImportPlan:
    """Read, map and check one checkpoint; raise ModpoolError if it does not fit."""
    if mode not in (None, "nonlinear", "tangent"):
        raise ModpoolError(f"--mode is nonlinear or tangent for an import, not {mode!r}")
    checkpoint = open_checkpoint(path)
    try:
        return _plan(pool, path, checkpoint, task, name, mode, max_distance, taken or set())
    except BaseException:
        checkpoint.close()
        raise


def _plan(pool, path, checkpoint, task, name, mode, max_distance, taken) -> ImportPlan:
    notes: list[str] = []
    if task is None:
        raise ModpoolError(
            f"{path.name} is a {checkpoint.format}: say which task it was fine-tuned on with "
            "--task T"
        )
    task = canonical_name(task)
    tower = dict(pool.base.trainable())
    if checkpoint.lists:
        if mode == "nonlinear":
            raise ModpoolError(
                f"{path.name} is a linearised model (params, params0): it imports as a tangent "
                "module, not --mode nonlinear"
            )
        finetuned, origin, dropped = _from_lists(checkpoint, pool.base.tower, path.name)
        kind = "tangent"
        _check_origin(origin, tower, path.name)
    else:
        finetuned, dropped, prefix = _match_tower(checkpoint, tower, pool, path.name)
        origin, kind = {n: _Held(tower[n]) for n in finetuned}, mode or "nonlinear"
        notes += _statistics_notes(checkpoint, pool, prefix)
    missing = sorted(set(tower) - set(finetuned))
    distance = _distance(finetuned, origin)
    if distance > max_distance:
        raise ModpoolError(_too_far(pool, path.name, distance, max_distance))
    taken = taken or set()
    name = (
        check_name(name)
        if name
        else default_module_name(task, kind, lambda n: n in taken or pool.exists(n))
    )
    return ImportPlan(
        path=path,
        name=name,
        task=task,
        kind=kind,
        format=checkpoint.format,
        sha256=sha256_file(_weights_file(path)),
        finetuned=finetuned,
        origin=origin,
        dropped=checkpoint.dropped + dropped,
        missing=missing,
        distance=distance,
        notes=notes + _activation_notes(checkpoint, pool),
        checkpoint=checkpoint,
    )


def write_plans(
    pool: Pool,
    plans: list[ImportPlan],
    origin: dict | None = None,
    source: str | None = None,
    access: list[str] | None = None,
) -> list[Entry]:
    """Stream every planned delta into the pool as one change."""
    with pool.change() as txn:
        for plan in plans:
            pool.require_new(plan.name)
            extra = {
                "imported_from": plan.summary() | (origin or {}),
                "source": source or plan.task,
                "access": labels(access) or [PUBLIC],
            }
            meta = module_meta(pool, plan.task, plan.kind, plan.kind, extra)
            shapes = {n: list(t.shape) for n, t in plan.finetuned.items()}

            def delta(key: str, plan: ImportPlan = plan) -> torch.Tensor:
                return plan.finetuned[key].load().float() - plan.origin[key].load().float()

            sha = stream_module(pool, txn, plan.name, meta, shapes, delta)
            record = {"action": "import", "name": plan.name, "sha256": sha, "task": plan.task}
            txn.log({"time": now(), **record, "source": str(plan.path), "format": plan.format})
    return [pool.entry(p.name) for p in plans]


@dataclass
class _Held:
    """A tensor already in memory, behind the lazy interface."""

    tensor: torch.Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)

    def load(self) -> torch.Tensor:
        return self.tensor.detach()


def _match_tower(
    checkpoint: Checkpoint, tower: dict[str, torch.Tensor], pool: Pool, where: str
) -> tuple[dict[str, Any], list[str]]:
    """The checkpoint's tensors that are the tower's, found under one prefix (`visual.`,
    `model.visual.`, `module.`, none, ...); every shape must match."""
    names = checkpoint.tensors
    prefixes: dict[str, int] = {}
    for tower_name in tower:
        for key in names:
            if key == tower_name or key.endswith("." + tower_name):
                prefix = key[: len(key) - len(tower_name)]
                prefixes[prefix] = prefixes.get(prefix, 0) + 1
    prefix = max(prefixes, key=lambda p: (prefixes[p], -len(p)), default=None)
    if prefix is None or prefixes[prefix] < len(tower) / 2:
        raise ModpoolError(_not_this_base(pool, checkpoint, where, None))
    found = {n: names[prefix + n] for n in tower if prefix + n in names}
    wrong = [n for n, t in found.items() if tuple(t.shape) != tuple(tower[n].shape)]
    if wrong:
        raise ModpoolError(_not_this_base(pool, checkpoint, where, (prefix, wrong)))
    used = {prefix + n for n in found}
    return found, [k for k in names if k not in used], prefix


def _from_lists(checkpoint: Checkpoint, tower_module, where: str):
    """A linearised model's lists, mapped to the tower's names by parameter order: the
    tower's parameters come first, in the order of the open_clip version that wrote the
    file (today's, or the older one with the projection last)."""
    params, params0 = checkpoint.lists["params"], checkpoint.lists["params0"]
    if len(params) != len(params0):
        raise ModpoolError(f"{where}: params and params0 differ in length")
    tower = dict(tower_module.named_parameters())
    for order in _orders(list(tower)):
        if len(order) <= len(params) and all(
            tuple(params[i].shape) == tuple(tower[n].shape) for i, n in enumerate(order)
        ):
            finetuned = {n: params[i] for i, n in enumerate(order)}
            origin = {n: params0[i] for i, n in enumerate(order)}
            dropped = [f"params.{i}" for i in range(len(order), len(params))]
            return finetuned, origin, dropped
    raise ModpoolError(
        f"{where}: the params list does not follow this base's image tower "
        f"({len(params)} tensors; first {describe_shapes(params[:3])}): another architecture?"
    )


def _orders(names: list[str]) -> list[list[str]]:
    """Parameter orders open_clip has used for the same tower."""
    late = [n for n in ("class_embedding", "positional_embedding") if n in names]
    classic = [n for n in names if n not in (*late, "proj")]
    if "conv1.weight" in classic and late:
        at = classic.index("conv1.weight") + 1
        classic[at:at] = late
    classic += ["proj"] if "proj" in names else []
    return [names] if classic == names else [names, classic]


def _check_origin(origin: dict[str, Any], tower: dict[str, torch.Tensor], where: str) -> None:
    held = {n: _Held(tower[n]) for n in origin}
    moved = _distance(origin, held)
    if moved > SAME_BASE:
        raise ModpoolError(
            f"{where} was linearised around other weights than this pool's base (params0 is "
            f"{moved:.1%} away from it): refused"
        )


def _distance(finetuned: dict[str, Any], origin: dict[str, Any]) -> float:
    """|ft - origin| / |origin| over all mapped tensors, one tensor at a time."""
    num = den = 0.0
    for name, tensor in finetuned.items():
        ft, base = tensor.load().double(), origin[name].load().double()
        num += float((ft - base).pow(2).sum())
        den += float(base.pow(2).sum())
        if not math.isfinite(num):
            raise ModpoolError(f"tensor '{name}' holds NaN or infinite values: refused")
    return math.sqrt(num / den) if den else math.inf


def _too_far(pool: Pool, where: str, distance: float, limit: float) -> str:
    return (
        f"{where} is {distance:.1%} away from this pool's base {pool.config['base']} "
        f"(a fine-tune moves it a few percent; the limit is {limit:.0%}): it has the same "
        "shapes, so it seems to be another pretraining of the same architecture. Refused; "
        "import it into a pool made from its own base, or raise --max-distance if you are sure"
    )


def _not_this_base(pool: Pool, checkpoint: Checkpoint, where: str, wrong) -> str:
    guess = guess_architecture(checkpoint.tensors)
    seems = f"; it seems to belong to {guess}" if guess else ""
    if wrong is None:
        what = "its tensors do not match this pool's image tower"
    else:
        prefix, names = wrong
        first = names[0]
        what = (
            f"{len(names)} tensors have other shapes than this pool's base "
            f"(e.g. {first}: {list(checkpoint.tensors[prefix + first].shape)})"
        )
    return (
        f"{where} ({checkpoint.format}) is not a checkpoint of {pool.config['base']}: {what}{seems}"
    )


def _statistics_notes(checkpoint: Checkpoint, pool: Pool, prefix: str) -> list[str]:
    """A module is a pure weight delta: modpool keeps the base's BatchNorm statistics. Say so
    when the checkpoint's differ (it was trained with them updating)."""
    differ = [
        name
        for name, buffer in pool.base.tower.named_buffers()
        if prefix + name in checkpoint.tensors
        and buffer.is_floating_point()
        and not torch.equal(checkpoint.tensors[prefix + name].load().to(buffer.dtype), buffer)
    ]
    if not differ:
        return []
    return [
        f"{len(differ)} BatchNorm statistics differ from the base's (the run updated them); "
        "a module keeps the base's, so its effect may differ from the checkpoint's"
    ]


def _activation_notes(checkpoint: Checkpoint, pool: Pool) -> list[str]:
    if checkpoint.activation is None or pool.base.head_kind != "zeroshot":
        return []
    base = hf_clip.activation_of(pool.base.tower)
    if checkpoint.activation == base:
        return []
    return [
        f"activation differs: the checkpoint was trained with {checkpoint.activation}, this "
        f"pool's base uses {base}; the delta is imported, but its effect may differ"
    ]


def _weights_file(path: Path) -> Path:
    if not path.is_dir():
        return path
    from .checkpoints import HF_WEIGHTS, OPENCLIP_WEIGHTS

    return next(path / n for n in (*HF_WEIGHTS, *OPENCLIP_WEIGHTS) if (path / n).is_file())


def _is_batch(path: Path) -> bool:
    return path.is_dir() and any(
        (child / f).is_file() for child in path.iterdir() if child.is_dir() for f in BATCH_FILES
    )


def _batch(folder: Path, skip_unknown: bool) -> list[tuple[Path, str, str, str | None]]:
    jobs, unknown = [], []
    for child in sorted(p for p in folder.iterdir() if p.is_dir()):
        for file, mode in BATCH_FILES.items():
            if not (child / file).is_file():
                continue
            raw = child.name.removesuffix("Val")
            try:
                task = canonical_name(raw)
            except ModpoolError:
                unknown.append(child.name)
                continue
            stem = re.sub(r"[^A-Za-z0-9._-]", "-", raw.lower())
            jobs.append(
                (child / file, task, mode, stem if mode == "nonlinear" else f"{stem}-tangent")
            )
    if unknown and not skip_unknown:
        raise ModpoolError(
            f"{folder}: modpool knows no task for {', '.join(sorted(set(unknown)))}; nothing was "
            "imported (--skip-unknown imports the others; import a file alone with --task "
            "folder:PATH to use your own data)"
        )
    return jobs


def _group(dropped: list[str]) -> dict:
    groups: dict[str, int] = {}
    for name in dropped:
        label = next((g for g, rx in DROPPED_GROUPS if re.search(rx, name)), "other")
        groups[label] = groups.get(label, 0) + 1
    return groups
