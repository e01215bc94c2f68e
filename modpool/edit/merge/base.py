"""The merge-method interface and registry.

A method merges one parameter tensor at a time (`merge_tensor`), which lets `compose`
stream many large modules through memory maps; a method that needs statistics over whole
deltas (a global trim threshold) gathers them first in `prepare`, from the same sources.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import torch

from ...errors import ModpoolError
from ...model.delta import Params, Parts, names_of, weighted_parts, weighted_sum  # noqa: F401

REGISTRY: dict[str, type[MergeMethod]] = {}


class Source(Protocol):
    """A delta read one tensor at a time (an opened file, or a dict in memory)."""

    names: list[str]

    def numel(self, name: str) -> int: ...

    def tensor(self, name: str) -> torch.Tensor: ...

    def release(self, name: str) -> None: ...


class MemorySource:
    def __init__(self, delta: Params):
        self.delta, self.names = delta, sorted(delta)

    def numel(self, name: str) -> int:
        return self.delta[name].numel()

    def tensor(self, name: str) -> torch.Tensor:
        return self.delta[name].float()

    def release(self, name: str) -> None:
        pass


class MergeMethod(ABC):
    """A named merge. `defaults` lists the parameters it accepts and their defaults;
    `choices` restricts string parameters to named variants; `grid` is the coefficient
    grid an alpha search tries by default (0 to 1 for task arithmetic, to 3 for the
    spectral methods). A `task_aware` method also gives each task a mask (`masks`), stored
    beside the merged delta and applied when the task is known. `tasks` (set by the
    caller, one per ingredient) lets a method look up per-task parameters."""

    name: ClassVar[str]
    defaults: ClassVar[dict[str, Any]] = {}
    choices: ClassVar[dict[str, tuple[str, ...]]] = {}
    grid: ClassVar[list[float]] = [round(0.05 * i, 2) for i in range(21)]
    task_aware: ClassVar[bool] = False
    # True when a NaN or infinity in any input always reaches the output (sums do; a trim
    # can drop one), so checking the output checks the inputs too
    propagates_nonfinite: ClassVar[bool] = False
    # True when merging costs far more than reading and writing (SVDs): the writer then
    # leaves torch all its threads rather than keep a core for hashing
    compute_bound: ClassVar[bool] = False
    tasks: list[str] | None = None

    def __init__(self, seed: int = 0, **params: Any):
        unknown = set(params) - set(self.defaults)
        if unknown:
            allowed = ", ".join(self.defaults) or "none"
            raise ModpoolError(
                f"{self.name} takes no parameter {', '.join(sorted(unknown))} (it takes: {allowed})"
            )
        self.seed = seed
        self.params = {**self.defaults, **{k: v for k, v in params.items() if v is not None}}
        for key, allowed in self.choices.items():
            if self.params[key] not in allowed:
                raise ModpoolError(
                    f"{self.name}: {key} must be one of {', '.join(allowed)}, "
                    f"not {self.params[key]!r}"
                )
        self.validate()

    def validate(self) -> None:  # noqa: B027  (optional hook)
        """Check parameter ranges; raise ModpoolError."""

    def prepare(self, sources: list[Source]) -> None:  # noqa: B027  (optional hook)
        """Gather whole-delta statistics before the tensors are merged one by one."""

    @abstractmethod
    def merge_tensor(self, name: str, parts: Parts, alphas: list[float]) -> torch.Tensor:
        """Combine one parameter's tensors, given one user coefficient per ingredient."""

    def masks(self, name: str, parts: Parts, alphas: list[float]) -> dict[str, torch.Tensor]:
        """Task-aware methods: each task's boolean mask for one parameter."""
        raise NotImplementedError

    def merge(self, deltas: list[Params], alphas: list[float]) -> Params:
        """Combine deltas held in memory (same arithmetic as the streamed path)."""
        self.prepare([MemorySource(d) for d in deltas])
        return {
            n: self.merge_tensor(n, [d.get(n) for d in deltas], alphas) for n in names_of(deltas)
        }

    def recipe_params(self) -> dict[str, Any]:
        return dict(self.params)


def register(cls: type[MergeMethod]) -> type[MergeMethod]:
    REGISTRY[cls.name] = cls
    return cls


def get_method(name: str, seed: int = 0, **params: Any) -> MergeMethod:
    if name not in REGISTRY:
        raise ModpoolError(f"unknown merge method {name!r}: choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name](seed=seed, **params)


BLOCK = 1 << 16  # entries per block: a block's intermediates stay in the CPU's cache


def blockwise(parts: Parts, merge: Callable[[Parts], torch.Tensor]) -> torch.Tensor:
    """`merge` applied block by block to the flattened parts (None stays None), for merges
    that treat every entry on its own: the same bits as on the whole tensors, at a
    fraction of the memory traffic (each block's temporaries stay in the cache)."""
    shape = next(p.shape for p in parts if p is not None)
    flat = [None if p is None else p.reshape(-1) for p in parts]
    n = next(f.numel() for f in flat if f is not None)
    if n <= BLOCK:
        return merge(parts)
    out = torch.empty(n, dtype=torch.float32)
    for start in range(0, n, BLOCK):
        end = min(n, start + BLOCK)
        out[start:end] = merge([None if f is None else f[start:end] for f in flat])
    return out.reshape(shape)


def check_fraction(method: str, key: str, value: float, low_open: bool, high_open: bool) -> None:
    ok = (value > 0 if low_open else value >= 0) and (value < 1 if high_open else value <= 1)
    if not ok:
        bounds = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise ModpoolError(f"{method}: {key} must be in {bounds}, got {value}")


def tensor_seed(seed: int, index: int, name: str) -> int:
    """A stable per-(ingredient, tensor) seed, independent of iteration order."""
    digest = hashlib.sha256(f"{seed}|{index}|{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
