"""The pool: one base, its task heads, modules, compositions, eval history and audit log.

Layout of a pool directory:

    pool.json               base spec, fingerprint, parameter manifest, settings
    heads/<task>.safetensors
    modules/<name>.safetensors
    compositions/<name>.safetensors
    evals.jsonl             every evaluation (also the cache for repeated ones)
    hashes.jsonl            a cache of file hashes (see hashes.py)
    audit.jsonl             every change: finetune, compose, import, forget
    .lock                   held while the pool changes

Every write is atomic; changes happen under the pool lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .artifact import (
    EXTRA_PREFIX,
    Artifact,
    ArtifactFile,
    load_artifact,
    load_artifact_bytes,
    read_metadata,
    to_bytes,
)
from .bases import DEFAULT_BASE, Base, fingerprint, load_base, manifest, resolve_spec
from .compose import check_kinds, write_composition
from .encoding import Storage
from .errors import ModpoolError
from .hashes import HashCache
from .head import Head, fit_linear_head
from .journal import Transaction, pending, recover
from .model import EditedModel
from .storage import append_jsonl, atomic_write_bytes, locked, read_jsonl
from .tasks import Task, get_task
from .tensorfile import parse_header

POOL_FORMAT = "modpool-pool/1"
HEAD_FORMAT = "modpool-head/1"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
RESERVED = {"base"}
DEFAULT_HEAD_SHOTS = 10
KINDS = {"modules": "module", "compositions": "composition"}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    """Library versions recorded in every file, read from package metadata (importing timm
    or open_clip just to ask would cost seconds in a command that needs neither)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"modpool": __version__, "torch": torch.__version__}
    for key, dist in (
        ("timm", "timm"),
        ("safetensors", "safetensors"),
        ("open_clip", "open_clip_torch"),
    ):
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def check_name(name: str, what: str = "name") -> str:
    if not NAME_RE.match(name) or name in RESERVED or name.endswith(".tmp"):
        raise ModpoolError(
            f"invalid {what} {name!r}: use letters, digits, '.', '_' and '-' (up to 100, "
            "starting with a letter or digit; 'base' is reserved)"
        )
    return name


@dataclass
class Entry:
    """A module or composition as listed: metadata from the header, no tensors loaded."""

    name: str
    path: Path
    meta: dict[str, Any]

    @property
    def type(self) -> str:
        return self.meta["type"]

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def tasks(self) -> list[str]:
        return self.meta.get("tasks") or [self.meta["task"]]

    @property
    def ingredients(self) -> list[dict]:
        return self.meta.get("recipe", {}).get("ingredients", [])


@dataclass
class EvalRow:
    target: str
    task: str
    split: str
    accuracy: float
    normalized: float | None
    examples: int
    cached: bool = False


@dataclass
class ForgetReport:
    forgotten: str
    rebuilt: list[dict] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    fisher_used_by: list[str] = field(default_factory=list)


class Pool:
    """A pool directory. Create one with `Pool.create`, open one with `Pool(path)`."""

    def __init__(self, root: Path | str, data_root: Path | str | None = None):
        self.root = Path(root)
        self.data_root = data_root or os.environ.get("MODPOOL_DATA_ROOT")
        config = self.root / "pool.json"
        if not config.exists():
            raise ModpoolError(
                f"no pool at {self.root}: create one with `modpool init --pool {self.root}`"
            )
        try:
            self.config = json.loads(config.read_text())
        except json.JSONDecodeError:
            raise ModpoolError(f"{config} is corrupt (not JSON)") from None
        if self.config.get("format") != POOL_FORMAT:
            raise ModpoolError(
                f"{config} is not a modpool pool (format {self.config.get('format')!r})"
            )
        self.manifest = {k: (v[0], v[1]) for k, v in self.config["manifest"].items()}
        self.fingerprint: str = self.config["fingerprint"]
        self._base: Base | None = None
        self.hashes = HashCache(self.root)
        self.recovered: list[str] = []
        if pending(self.root):
            with locked(self.root / ".lock"):
                self.recovered = recover(self.root)

    # ---- creation and the base -------------------------------------------------------
    @classmethod
    def create(
        cls,
        root: Path | str,
        base: str = DEFAULT_BASE,
        image_size: int | None = None,
        head_shots: int = DEFAULT_HEAD_SHOTS,
        data_root: Path | str | None = None,
    ) -> Pool:
        root = Path(root)
        if (root / "pool.json").exists():
            raise ModpoolError(f"a pool already exists at {root}")
        if root.exists() and not root.is_dir():
            raise ModpoolError(f"{root} exists and is not a directory")
        loaded = load_base(base, image_size)
        config = {
            "format": POOL_FORMAT,
            "base": resolve_spec(base),
            "fingerprint": fingerprint(loaded.tower),
            "image_size": loaded.image_size,
            "head_kind": loaded.head_kind,
            "head_shots": head_shots,
            "hub_id": loaded.hub_id,
            "manifest": manifest(loaded),
            "created": now(),
            "versions": versions(),
        }
        for sub in ("heads", "modules", "compositions"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        with locked(root / ".lock"):
            txn = Transaction(root)
            txn.write("pool.json", (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
            txn.log(
                {
                    "time": now(),
                    "action": "init",
                    "base": config["base"],
                    "fingerprint": config["fingerprint"],
                }
            )
            txn.commit()
        pool = cls(root, data_root)
        pool._base = loaded
        return pool

    @classmethod
    def open_or_create(cls, root: Path | str, base: str | None = None, **kwargs) -> Pool:
        if (Path(root) / "pool.json").exists():
            pool = cls(root, kwargs.get("data_root"))
            if base and resolve_spec(base) != pool.config["base"]:
                raise ModpoolError(
                    f"the pool at {root} uses base {pool.config['base']}, not {base}"
                )
            return pool
        return cls.create(root, base or DEFAULT_BASE, **kwargs)

    @property
    def base(self) -> Base:
        """The base model, loaded once and checked against the recorded fingerprint."""
        if self._base is None:
            base = load_base(self.config["base"], self.config["image_size"])
            found = fingerprint(base.tower)
            if found != self.fingerprint:
                raise ModpoolError(
                    f"the base {self.config['base']} loaded with fingerprint {found[:12]}, but the "
                    f"pool was made with {self.fingerprint[:12]}: its weights changed"
                )
            self._base = base
        return self._base

    # ---- listing and reading ---------------------------------------------------------
    def path_of(self, name: str) -> Path | None:
        check_name(name)
        for sub in KINDS:
            path = self.root / sub / f"{name}.safetensors"
            if path.exists():
                return path
        return None

    def exists(self, name: str) -> bool:
        return self.path_of(name) is not None

    def entries(self) -> list[Entry]:
        out = []
        for sub in KINDS:
            for path in sorted((self.root / sub).glob("*.safetensors")):
                try:
                    meta = read_metadata(path)
                except ModpoolError as exc:
                    meta = {"type": KINDS[sub], "kind": "?", "mode": "?", "error": str(exc)}
                out.append(Entry(path.stem, path, meta))
        return out

    def entry(self, name: str) -> Entry:
        path = self.path_of(name)
        if path is None:
            names = ", ".join(e.name for e in self.entries()) or "none yet"
            raise ModpoolError(
                f"no module or composition named {name!r} in {self.root} (have: {names})"
            )
        return Entry(name, path, read_metadata(path))

    def read(self, name: str) -> Artifact:
        """Load one artifact, validated against this pool's base."""
        path = self.entry(name).path
        return load_artifact(path, self.manifest, self.fingerprint)

    def _require_new(self, name: str) -> None:
        check_name(name)
        if self.exists(name):
            raise ModpoolError(
                f"{name!r} already exists in the pool: choose another name, or remove it first "
                f"with `modpool forget {name}`"
            )

    # ---- heads -----------------------------------------------------------------------
    def task(self, name: str) -> Task:
        return get_task(name, self.data_root)

    def head(self, task: Task, show_progress: bool | None = None) -> Head:
        """The task's frozen head, built once and cached in heads/."""
        key = re.sub(r"[^A-Za-z0-9._-]", "_", task.name)
        if key != task.name:
            key = f"{key}-{hashlib.sha256(task.name.encode()).hexdigest()[:8]}"
        path = self.root / "heads" / f"{key}.safetensors"
        if path.exists():
            return self._read_head(path, task)
        head = self._build_head(task, show_progress)
        from safetensors.torch import save

        meta = {
            "format": HEAD_FORMAT,
            "task": task.name,
            "base_fingerprint": self.fingerprint,
            "classnames": json.dumps(task.classnames),
            "normalize": str(head.normalize),
            "scale": repr(head.scale),
            "shots": str(self.config["head_shots"]),
        }
        with locked(self.root / ".lock"):
            atomic_write_bytes(
                path, save({k: v.contiguous() for k, v in head.tensors().items()}, metadata=meta)
            )
        return head

    def _build_head(self, task: Task, show_progress: bool | None) -> Head:
        base = self.base
        if base.head_kind == "zeroshot":
            return base.zeroshot_head(task.classnames, task.templates)
        from .evaluate import features

        train = task.load("train", base.image_size)
        labels = (
            torch.as_tensor([train[i][1] for i in range(len(train))])
            if not hasattr(train, "labels")
            else train.labels
        )
        index = few_shot_index(labels, task.num_classes, self.config["head_shots"])
        from .tasks.task import take

        feats, ys = features(EditedModel(base), take(train, index))
        return fit_linear_head(feats, ys, task.num_classes)

    def _read_head(self, path: Path, task: Task) -> Head:
        from safetensors.torch import load

        data = path.read_bytes()
        _, meta, _ = parse_header(data, path.name)
        if meta.get("format") != HEAD_FORMAT or meta.get("base_fingerprint") != self.fingerprint:
            raise ModpoolError(
                f"{path} is not a head for this pool's base: delete it to rebuild it"
            )
        if json.loads(meta.get("classnames", "[]")) != task.classnames:
            raise ModpoolError(f"{path} was built for other class names of {task.name}: delete it")
        return Head.from_tensors(load(data), meta["normalize"] == "True", float(meta["scale"]))

    # ---- writing modules and compositions -------------------------------------------
    def save_module(
        self,
        name: str,
        delta: dict[str, torch.Tensor],
        task: str,
        kind: str,
        mode: str | None = None,
        hparams: dict | None = None,
        seed: int = 0,
        metrics: dict | None = None,
        extra_meta: dict | None = None,
        fisher: dict[str, torch.Tensor] | None = None,
        cleanup: list[str] | None = None,
        storage: Storage | None = None,
    ) -> Entry:
        """Store a module (a delta over the base image tower), with its task's Fisher at the
        base when given (bfloat16: half the bytes, float32's range). `storage` picks the
        stored dtype and density (compact modules); the default is dense float32."""
        storage = storage or Storage()
        self._check_delta(delta, name)
        tensors = {k: v.float() for k, v in delta.items()}
        if fisher:
            self._check_delta(fisher, name)
            tensors |= {f"{EXTRA_PREFIX}{k}": v.to(torch.bfloat16) for k, v in fisher.items()}
        meta = {
            "type": "module",
            "kind": kind,
            "mode": mode or kind,
            "task": task,
            "base": self.config["base"],
            "base_fingerprint": self.fingerprint,
            "dtype": storage.torch_name,
            "storage": storage.to_dict(),
            "hparams": hparams or {},
            "seed": str(seed),
            "metrics": metrics or {},
            "versions": versions(),
            "created": now(),
            **(extra_meta or {}),
        }
        data = to_bytes(tensors, meta, storage)
        with self.change() as txn:
            self._require_new(name)
            self._stage(txn, f"modules/{name}.safetensors", data)
            txn.log(
                {
                    "time": now(),
                    "action": "add-module",
                    "name": name,
                    "sha256": _digest(data),
                    "task": task,
                    "kind": kind,
                }
            )
            for extra in cleanup or []:
                txn.delete(extra)
        return self.entry(name)

    def _check_delta(self, delta: dict[str, torch.Tensor], name: str) -> None:
        for key, tensor in delta.items():
            if key not in self.manifest:
                raise ModpoolError(f"{name}: '{key}' is not a parameter of this pool's base")
            if list(tensor.shape) != list(self.manifest[key][0]):
                raise ModpoolError(
                    f"{name}: '{key}' has shape {list(tensor.shape)}, expected "
                    f"{self.manifest[key][0]}"
                )
            if not torch.isfinite(tensor).all():
                raise ModpoolError(
                    f"{name}: '{key}' has NaN or infinite values; nothing was written"
                )

    def import_file(self, path: Path | str, name: str | None = None) -> Entry:
        """Copy a module or composition file into the pool after validating it."""
        path = Path(path)
        load_artifact(path, self.manifest, self.fingerprint)
        name = name or path.stem
        self.import_many([(path, name)])
        return self.entry(name)

    def import_many(self, files: list[tuple[Path, str]]) -> None:
        """Import validated files in order, as one change: all of them or none."""
        staged = []
        for path, name in files:
            data = Path(path).read_bytes()
            artifact = load_artifact_bytes(data, Path(path).name, self.manifest, self.fingerprint)
            check_name(name)
            staged.append((path, name, data, artifact))
        with self.change() as txn:
            names = {n for _, n, _, _ in staged}
            for path, name, data, artifact in staged:
                self._require_new(name)
                for ingredient in artifact.meta.get("recipe", {}).get("ingredients", []):
                    if not self.exists(ingredient["name"]) and ingredient["name"] not in names:
                        raise ModpoolError(
                            f"{Path(path).name} is a composition of {ingredient['name']!r}, "
                            "which this pool lacks: import its ingredients first"
                        )
                sub = "modules" if artifact.meta["type"] == "module" else "compositions"
                self._stage(txn, f"{sub}/{name}.safetensors", data, artifact.sha256)
                txn.log(
                    {
                        "time": now(),
                        "action": "import",
                        "name": name,
                        "sha256": artifact.sha256,
                        "source": str(path),
                    }
                )

    def finetune(
        self,
        task_name: str,
        cfg=None,
        name: str | None = None,
        show_progress: bool | None = None,
        with_modules: list[str] | None = None,
        checkpoint_every: int | None = None,
        resume: bool = False,
        storage: Storage | None = None,
    ) -> Entry | None:
        """Train a module for one task and store it; see `train.finetune`. For ita and iel,
        `with_modules` names the modules whose Fisher (ita) or composition (iel) shape it;
        by default every eligible module in the pool (see second_order.py). `storage` makes
        a compact module (dtype, density). Under torchrun every rank trains and only rank 0
        writes (and returns the entry)."""
        from .checkpoint import Checkpointer
        from .distributed import world
        from .train import check_config, defaults_for, finetune, total_steps

        cfg = cfg or defaults_for(self.base)
        check_config(cfg)
        if cfg.last_blocks is not None:
            self.base.trainable(cfg.last_blocks)  # a bad K fails now, not after the head fit
        task = self.task(task_name)
        name = name or default_module_name(task.name, cfg.mode)
        self._require_new(name)  # fail before hours of training, and again when saving
        world_ = world(cfg.device)
        if world_.main:  # rank 0 builds and caches the head; the others read it
            head = self.head(task, show_progress)
        world_.barrier()
        head = head if world_.main else self.head(task, False)
        show_progress = show_progress if world_.main else False
        plan = None
        if cfg.mode in ("ita", "iel"):
            from .second_order import plan as second_order_plan

            plan = second_order_plan(self, task, head, cfg, with_modules, show_progress)
        elif with_modules:
            raise ModpoolError("--with is for the ita and iel modes")
        data = task.load("train", self.base.image_size)
        steps = total_steps(cfg, len(data))
        every = max(50, steps // 10) if checkpoint_every is None else checkpoint_every
        ckpt_rel = f"checkpoints/{name}.safetensors"
        checkpointer = Checkpointer(
            self.root / ckpt_rel,
            every,
            cfg.to_dict() | {"task": task.name},
            resume,
            self.root / ".lock",
        )
        result = finetune(
            self.base, head, data, cfg, show_progress, plan.penalty if plan else None, checkpointer
        )
        if not world_.main:
            world_.barrier()  # rank 0 is writing
            return None
        metrics = {
            "train_loss": result.final_loss,
            "train_accuracy": result.train_accuracy,
            "seconds": result.seconds,
            "images_per_second": result.images_per_second,
        }
        entry = self.save_module(
            name,
            result.delta,
            task.name,
            _kind_of(cfg.mode),
            cfg.mode,
            cfg.to_dict() | {"steps_run": result.steps, "world_size": world_.size},
            cfg.seed,
            metrics,
            extra_meta=_second_order_meta(plan),
            fisher=plan.fisher.fisher if plan else None,
            cleanup=[ckpt_rel] if (self.root / ckpt_rel).exists() else None,
            storage=storage,
        )
        world_.barrier()
        return entry

    def compact(self, name: str, output: str, storage: Storage) -> Entry:
        """Store module `name` again as `output` in a compact form (dtype, density); the
        original stays, so compositions that use it are unchanged."""
        artifact = self.read(name)
        if artifact.meta["type"] != "module":
            raise ModpoolError(
                f"{name} is a composition: compact its modules, or compose with --dtype"
            )
        meta = artifact.meta
        kept = ("hparams", "metrics", "fisher", "lineage")
        return self.save_module(
            output,
            artifact.tensors,
            meta["task"],
            meta["kind"],
            meta["mode"],
            seed=int(meta.get("seed", 0)),
            extra_meta={k: meta[k] for k in kept if k in meta}
            | {"compacted_from": {"name": name, "sha256": artifact.sha256}},
            fisher=artifact.extra or None,
            storage=storage,
        )

    # ---- composing -------------------------------------------------------------------
    def compose(
        self,
        names: list[str],
        output: str,
        method: str = "sum",
        alpha: float | list[float] | None = None,
        params: dict | None = None,
        seed: int = 0,
        search: dict | None = None,
        dtype: str = "fp32",
    ) -> Entry:
        """Compose modules (or compositions) into a new composition named `output`, streamed
        tensor by tensor. `search`, when given, is the alpha-search table kept with the
        composition; `dtype` is the stored precision of the result."""
        if not names:
            raise ModpoolError("name at least one module to compose")
        if len(set(names)) != len(names):
            raise ModpoolError("an ingredient is named twice")
        alphas = _alphas(alpha, len(names), method)
        recipe = {
            "method": method,
            "params": params or {},
            "seed": seed,
            "ingredients": [{"name": n, "alpha": a} for n, a in zip(names, alphas)],
        }
        if dtype != "fp32":
            recipe["storage"] = Storage(dtype).to_dict()
        with self.change() as txn:
            self._require_new(output)
            sha = self._build(txn, output, recipe, {"search": search} if search else None)
            txn.log(
                {
                    "time": now(),
                    "action": "compose",
                    "name": output,
                    "sha256": sha,
                    "recipe": recipe,
                }
            )
        return self.entry(output)

    def add(self, names: list[str], output: str, alpha: float | list[float] = 1.0) -> Entry:
        return self.compose(names, output, "sum", alpha)

    def negate(
        self, name: str, output: str, alpha: float = 1.0, search: dict | None = None
    ) -> Entry:
        """theta_0 - alpha * tau: remove a capability the base had."""
        return self.compose([name], output, "sum", [-alpha], search=search)

    def open_artifact(self, name: str, staged: dict | None = None) -> ArtifactFile:
        """Open one artifact for reading tensor by tensor (validated against this pool's
        base); `staged` maps names rebuilt earlier in the same change to (file, sha256)."""
        path = (staged or {}).get(name, (None,))[0] or self.entry(name).path
        return ArtifactFile.open(path, self.manifest, self.fingerprint)

    def _stage(self, txn: Transaction, rel: str, data: bytes, sha: str | None = None) -> None:
        """Stage a whole file in `txn`; its hash is remembered once the change commits."""
        txn.write(rel, data)
        self._remember(txn, rel, sha or _digest(data))

    def _remember(self, txn: Transaction, rel: str, sha: str) -> None:
        txn.committed.append(lambda: self.hashes.remember(self.root / rel, sha))

    def _build(
        self,
        txn: Transaction,
        output: str,
        recipe: dict,
        extra_meta: dict | None = None,
        staged: dict[str, tuple[Path, str]] | None = None,
    ) -> str:
        """Write a composition from its recipe into `txn`, streaming; returns its sha256
        and records its staged file in `staged` for later rebuilds of the same change."""
        names = [i["name"] for i in recipe["ingredients"]]
        staged = staged if staged is not None else {}
        with contextlib.ExitStack() as stack:
            sources = [stack.enter_context(self.open_artifact(n, staged)) for n in names]
            kind = check_kinds(names, sources)
            modes = {s.meta["mode"] for s in sources}
            storage = Storage.from_dict(recipe.get("storage"))
            meta = {
                "type": "composition",
                "kind": kind,
                "mode": modes.pop() if len(modes) == 1 else "mixed",
                "tasks": list(dict.fromkeys(t for s in sources for t in _tasks_of(s.meta))),
                "base": self.config["base"],
                "base_fingerprint": self.fingerprint,
                "dtype": storage.torch_name,
                "seed": str(recipe["seed"]),
                "versions": versions(),
                "created": now(),
                **(extra_meta or {}),
            }
            digests = [self._digest_of(n, staged) for n in names]
            rel = f"compositions/{output}.safetensors"
            with txn.stream(rel) as f:
                sha = write_composition(f, output, sources, recipe, meta, self.manifest, digests)
                staged_path = Path(f.name)
        staged[output] = (staged_path, sha)
        self._remember(txn, rel, sha)
        return sha

    def _digest_of(self, name: str, staged: dict):
        """A function giving the sha256 of an ingredient (cheap when cached)."""
        if name in staged:
            return lambda: staged[name][1]
        path = self.entry(name).path
        return lambda: self.hashes.sha256(path)

    # ---- forgetting ------------------------------------------------------------------
    def forget(self, name: str) -> ForgetReport:
        """Remove a module or composition and rebuild every composition that used it."""
        with self.change() as txn:
            target = self.entry(name)
            target_sha = self.hashes.sha256(target.path)
            report = ForgetReport(name, fisher_used_by=self.fisher_dependents(name))
            removed = {name}
            staged: dict[str, tuple[Path, str]] = {}
            for entry in self._dependents_in_order(name):
                recipe = entry.meta["recipe"]
                remaining = [i for i in recipe["ingredients"] if i["name"] not in removed]
                before = self.hashes.sha256(entry.path)
                if not remaining:
                    removed.add(entry.name)
                    report.removed.append(entry.name)
                    continue
                new_recipe = {
                    **recipe,
                    "ingredients": [{"name": i["name"], "alpha": i["alpha"]} for i in remaining],
                }
                after = self._build(txn, entry.name, new_recipe, staged=staged)
                report.rebuilt.append(
                    {
                        "name": entry.name,
                        "sha256_before": before,
                        "sha256_after": after,
                        "ingredients": [i["name"] for i in remaining],
                    }
                )
            for gone in [name, *report.removed]:
                txn.delete(str(self.path_of(gone).relative_to(self.root)))
            txn.log(
                {
                    "time": now(),
                    "action": "forget",
                    "name": name,
                    "sha256": target_sha,
                    "type": target.type,
                    "rebuilt": report.rebuilt,
                    "removed": report.removed,
                    "fisher_used_by": report.fisher_used_by,
                }
            )
        return report

    def fisher_dependents(self, name: str) -> list[str]:
        """Modules trained (ita/iel) with the Fisher of `name`; they keep working after
        `name` is forgotten, but their training used its task's data."""
        return [
            e.name
            for e in self.entries()
            if any(f.get("name") == name for f in e.meta.get("lineage", {}).get("fisher_from", []))
        ]

    def _dependents_in_order(self, name: str) -> list[Entry]:
        """Compositions that use `name` directly or through other compositions, each after
        the compositions it uses."""
        compositions = {e.name: e for e in self.entries() if e.type == "composition"}
        uses = {c: {i["name"] for i in e.ingredients} for c, e in compositions.items()}
        affected: set[str] = set()
        frontier = {name}
        while frontier:
            frontier = {c for c, used in uses.items() if used & frontier and c not in affected}
            affected |= frontier
        ordered: list[str] = []
        while len(ordered) < len(affected):
            for c in sorted(affected - set(ordered)):
                if not (uses[c] & (affected - set(ordered))):
                    ordered.append(c)
        return [compositions[c] for c in ordered]

    # ---- using and evaluating --------------------------------------------------------
    def model(self, target: str = "base", task: str | None = None) -> EditedModel:
        """The base, a module or a composition as a ready nn.Module (logits if `task`)."""
        head = self.head(self.task(task)) if task else None
        if target == "base":
            return EditedModel(self.base, None, "nonlinear", head)
        artifact = self.read(target)
        return EditedModel(self.base, artifact.tensors, artifact.kind, head)

    def evaluate(
        self,
        target: str,
        tasks: list[str] | None = None,
        split: str = "test",
        show_progress: bool | None = None,
        use_cache: bool = True,
    ) -> list[EvalRow]:
        """Top-1 accuracy per task, and accuracy normalised by each task's own module."""

        if split not in ("train", "val", "test"):
            raise ModpoolError(f"unknown split {split!r}: use val or test")
        entry = None if target == "base" else self.entry(target)
        tasks = tasks or (entry.tasks if entry else None)
        if not tasks:
            raise ModpoolError("say which task to evaluate the base on: --task NAME")
        rows = []
        for task_name in tasks:
            task = self.task(task_name)
            acc, n, cached = self._accuracy(target, entry, task, split, show_progress, use_cache)
            own = self._own_module(entry, task.name) if entry else None
            normalized = None
            if own is not None:
                own_acc = (
                    acc
                    if own == target
                    else self._accuracy(
                        own, self.entry(own), task, split, show_progress, use_cache
                    )[0]
                )
                normalized = acc / own_acc if own_acc else None
            rows.append(EvalRow(target, task.name, split, acc, normalized, n, cached))
        return rows

    def _accuracy(
        self,
        target: str,
        entry: Entry | None,
        task: Task,
        split: str,
        show_progress: bool | None,
        use_cache: bool,
    ) -> tuple[float, int, bool]:
        sha = f"base:{self.fingerprint}" if entry is None else self.hashes.sha256(entry.path)
        if use_cache:
            for record in reversed(self.history()):
                if (record.get("sha256"), record.get("task"), record.get("split")) == (
                    sha,
                    task.name,
                    split,
                ):
                    return record["accuracy"], record["examples"], True
        from .evaluate import accuracy

        data = task.load(split, self.base.image_size)
        model = self.model(target, task.name)
        acc = accuracy(
            model, data, show_progress=show_progress, description=f"eval {target} on {task.name}"
        )
        self.record_eval(
            {
                "target": target,
                "sha256": sha,
                "task": task.name,
                "split": split,
                "accuracy": acc,
                "examples": len(data),
            }
        )
        return acc, len(data), False

    def record_eval(self, record: dict) -> None:
        append_jsonl(self.root / "evals.jsonl", {"time": now(), **record})

    def _own_module(self, entry: Entry, task: str) -> str | None:
        """The module of `task` inside `entry` (itself for a module), for normalisation."""
        if entry.type == "module":
            return entry.name if entry.meta["task"] == task else None
        for ingredient in entry.ingredients:
            if not self.exists(ingredient["name"]):
                continue
            found = self._own_module(self.entry(ingredient["name"]), task)
            if found:
                return found
        return None

    def history(self) -> list[dict]:
        return read_jsonl(self.root / "evals.jsonl")

    def audit_log(self) -> list[dict]:
        return read_jsonl(self.root / "audit.jsonl")

    @contextlib.contextmanager
    def change(self) -> Iterator[Transaction]:
        """One crash-safe change of the pool, under its lock: all of it happens or none."""
        with locked(self.root / ".lock"):
            txn = Transaction(self.root)
            try:
                yield txn
            except BaseException:
                txn.abort()
                raise
            txn.commit()


def few_shot_index(labels: torch.Tensor, num_classes: int, shots: int) -> torch.Tensor:
    """`shots` examples per class, drawn with seed 0 (all of them if shots <= 0)."""
    if shots <= 0:
        return torch.arange(len(labels))
    generator = torch.Generator().manual_seed(0)
    picks = []
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        picks.append(members[torch.randperm(len(members), generator=generator)[:shots]])
    return torch.cat(picks).sort().values


def default_module_name(task: str, mode: str) -> str:
    stem = Path(task.removeprefix("folder:")).name if task.startswith("folder:") else task
    return check_name(re.sub(r"[^A-Za-z0-9._-]", "-", f"{stem}-{mode}"))


def _second_order_meta(plan) -> dict | None:
    if plan is None:
        return None
    fisher = {
        "examples": plan.fisher.examples,
        "method": plan.fisher.method,
        "seconds": plan.fisher.seconds,
        "dtype": "bfloat16",
    }
    return {"fisher": fisher, "lineage": plan.lineage}


def _kind_of(mode: str) -> str:
    return "tangent" if mode == "tangent" else "nonlinear"


def _tasks_of(meta: dict) -> list[str]:
    return meta.get("tasks") or [meta["task"]]


def _alphas(alpha: float | list[float] | None, count: int, method: str) -> list[float]:
    if alpha is None:
        return [1.0] * count
    if isinstance(alpha, (int, float)):
        return [float(alpha)] * count
    if len(alpha) != count:
        raise ModpoolError(f"{len(alpha)} coefficients given for {count} modules")
    return [float(a) for a in alpha]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
