"""The pool: one base, its task heads, modules, compositions, eval history and audit log.

`Pool` is a facade. It opens (or creates) a pool directory, loads its base once, resolves
names, owns the change (lock and journal) and hands every verb to one function in the room
that does the work: `train` produces modules, `edit` combines and forgets them, `analysis`
measures them, `interop` moves them in and out, `store` keeps the bytes. The directory
layout is in `store/layout.py`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from . import analysis, edit, interop, train
from .bases import DEFAULT_BASE, Base, fingerprint, load_base, manifest, resolve_spec
from .errors import ModpoolError
from .model.edited import EditedModel
from .store import modules
from .store.artifact import Artifact, ArtifactFile, load_artifact, read_metadata
from .store.atomic import append_jsonl, locked, read_jsonl
from .store.hashes import HashCache
from .store.journal import Transaction, pending, recover
from .store.layout import (
    KINDS,
    NAME_RE,
    POOL_FORMAT,
    Entry,
    check_name,
    digest,
    list_entries,
    now,
    read_config,
    versions,
)
from .tasks import Task, canonical_name, get_task

DEFAULT_HEAD_SHOTS = 10


def verb(function: Callable, names: tuple[str, ...] = ()) -> Callable:
    """A Pool method that hands the call to `function(pool, ...)` in its room, after
    resolving the arguments listed in `names` (a name or a list of names, see
    `Pool.resolve`); it shows the function's own signature and docstring."""
    signature = inspect.signature(function)

    @functools.wraps(function)
    def method(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        for key in names:
            if bound.arguments.get(key) is not None:
                bound.arguments[key] = self.resolve(bound.arguments[key])
        return function(*bound.args, **bound.kwargs)

    return method


class Pool:
    """A pool directory. Create one with `Pool.create`, open one with `Pool(path)`."""

    def __init__(self, root: Path | str, data_root: Path | str | None = None):
        self.root = Path(root)
        self.data_root = data_root or os.environ.get("MODPOOL_DATA_ROOT")
        self.config = read_config(self.root)
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
        pretrained: str | None = None,
    ) -> Pool:
        """A new pool on `base` (modpool's spec, an alias, or open_clip's spelling with
        `pretrained`: see `bases.resolve_spec`)."""
        root = Path(root)
        if (root / "pool.json").exists():
            raise ModpoolError(f"a pool already exists at {root}")
        if root.exists() and not root.is_dir():
            raise ModpoolError(f"{root} exists and is not a directory")
        spec = resolve_spec(base, pretrained)
        loaded = load_base(spec, image_size)
        config = _new_config(spec, loaded, head_shots)
        for sub in ("heads", *KINDS):
            (root / sub).mkdir(parents=True, exist_ok=True)
        with locked(root / ".lock"):
            txn = Transaction(root)
            txn.write("pool.json", (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
            spec = {"base": config["base"], "fingerprint": config["fingerprint"]}
            txn.log({"time": now(), "action": "init", **spec})
            txn.commit()
        pool = cls(root, data_root)
        pool._base = loaded
        return pool

    @classmethod
    def open_or_create(cls, root: Path | str, base: str | None = None, **kwargs) -> Pool:
        if (Path(root) / "pool.json").exists():
            pool = cls(root, kwargs.get("data_root"))
            if base and resolve_spec(base, kwargs.get("pretrained")) != pool.config["base"]:
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

    # ---- names and reading -----------------------------------------------------------
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
        """Every module and composition, metadata only (an unreadable file is listed with
        its error)."""
        return list_entries(self.root)

    def entry(self, name: str) -> Entry:
        """A module or composition by name, or by the task of its one module."""
        name = self.resolve(name)
        path = self.path_of(name)
        return Entry(name, path, read_metadata(path))

    def resolve(self, name: str | list[str]) -> str | list[str]:
        """The name of a module or composition: `name` itself when one is called so, else
        the one module trained for task `name` (`cars` -> `cars-tangent` when that is the
        pool's only Cars module). Several modules of the task are refused, listed. 'base'
        stays 'base'. A list resolves element by element."""
        if isinstance(name, list):
            return [self.resolve(n) for n in name]
        if name == "base" or (NAME_RE.match(name) and self.exists(name)):
            return name
        found = self.modules_of_task(name)
        if len(found) == 1:
            return found[0]
        if found:
            raise ModpoolError(
                f"task {name!r} has {len(found)} modules: {', '.join(found)}; name the one you mean"
            )
        check_name(name)  # an impossible name says so
        names = ", ".join(e.name for e in self.entries()) or "none yet"
        raise ModpoolError(
            f"no module or composition named {name!r} in {self.root}, and no module of a task "
            f"{name!r} (have: {names})"
        )

    def modules_of_task(self, task: str) -> list[str]:
        """The modules trained for `task` (any spelling of its name)."""
        try:
            wanted = canonical_name(task)
        except ModpoolError:
            return []
        return [
            e.name for e in self.entries() if e.type == "module" and e.meta.get("task") == wanted
        ]

    def read(self, name: str) -> Artifact:
        """Load one artifact, validated against this pool's base."""
        return load_artifact(self.entry(name).path, self.manifest, self.fingerprint)

    def open_artifact(self, name: str, staged: dict | None = None) -> ArtifactFile:
        """Open one artifact for reading tensor by tensor (validated against this pool's
        base); `staged` maps names rebuilt earlier in the same change to (file, sha256)."""
        path = (staged or {}).get(name, (None,))[0] or self.entry(name).path
        return ArtifactFile.open(path, self.manifest, self.fingerprint)

    def require_new(self, name: str) -> None:
        check_name(name)
        if self.exists(name):
            raise ModpoolError(
                f"{name!r} already exists in the pool: choose another name, or remove it first "
                f"with `modpool forget {name}`"
            )

    def task(self, name: str) -> Task:
        return get_task(name, self.data_root)

    head = verb(train.head_for)

    # ---- the verbs, each done in its room --------------------------------------------
    save_module = verb(modules.save_module)
    compact = verb(modules.compact, ("name",))
    finetune = verb(train.finetune)
    mask = verb(train.mask, ("name",))
    compose = verb(edit.compose, ("names",))
    merged = verb(edit.merged, ("names",))

    def add(self, names: list[str], output: str, alpha: float | list[float] = 1.0) -> Entry:
        """theta_0 + alpha * sum of the modules (task arithmetic)."""
        return self.compose(names, output, "sum", alpha)

    def negate(
        self, name: str, output: str, alpha: float = 1.0, search: dict | None = None
    ) -> Entry:
        """theta_0 - alpha * tau: remove a capability the base had."""
        return self.compose([name], output, "sum", [-alpha], search=search)

    forget = verb(edit.forget, ("name",))
    fisher_dependents = verb(edit.fisher_dependents, ("name",))
    evaluate = verb(analysis.evaluate, ("target",))
    disentangle = verb(analysis.disentanglement, ("first", "second"))
    mask_analysis = verb(analysis.analyse_masks, ("names",))
    explain = verb(analysis.explain, ("name",))
    linearity = verb(analysis.linearity, ("name",))
    import_file = verb(interop.import_file)
    import_many = verb(interop.import_many)
    import_checkpoint = verb(interop.import_checkpoint)
    export = verb(interop.export_weights, ("name",))
    push = verb(interop.push, ("name",))
    pull = verb(interop.pull)

    def model(self, target: str = "base", task: str | None = None) -> EditedModel:
        """The base, a module or a composition as a ready nn.Module (logits if `task`); a
        task-aware composition (tall) applies that task's mask."""
        head = self.head(self.task(task)) if task else None
        if target == "base":
            return EditedModel(self.base, None, "nonlinear", head)
        artifact = self.read(self.resolve(target))
        task_name = canonical_name(task) if task else None
        return EditedModel(self.base, artifact.for_task(task_name), artifact.kind, head)

    # ---- logs and changes ------------------------------------------------------------
    def record_eval(self, record: dict) -> None:
        append_jsonl(self.root / "evals.jsonl", {"time": now(), **record})

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

    def stage(self, txn: Transaction, rel: str, data: bytes, sha: str | None = None) -> None:
        """Stage a whole file in `txn`; its hash is remembered once the change commits."""
        txn.write(rel, data)
        self.remember(txn, rel, sha or digest(data))

    def remember(self, txn: Transaction, rel: str, sha: str) -> None:
        txn.committed.append(lambda: self.hashes.remember(self.root / rel, sha))


def _new_config(spec: str, base: Base, head_shots: int) -> dict:
    return {
        "format": POOL_FORMAT,
        "base": spec,
        "fingerprint": fingerprint(base.tower),
        "image_size": base.image_size,
        "head_kind": base.head_kind,
        "head_shots": head_shots,
        "hub_id": base.hub_id,
        "manifest": manifest(base),
        "created": now(),
        "versions": versions(),
    }
