"""The merge-method interface and registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from ..errors import ModpoolError

Params = dict[str, torch.Tensor]
REGISTRY: dict[str, type[MergeMethod]] = {}


class MergeMethod(ABC):
    name: ClassVar[str]

    def __init__(self, **params: Any):
        self.params = params

    @abstractmethod
    def merge(self, deltas: list[Params], alphas: list[float]) -> Params:
        """Combine deltas (same parameter names) given one user coefficient each."""

    def recipe_params(self) -> dict[str, Any]:
        return dict(self.params)


def register(cls: type[MergeMethod]) -> type[MergeMethod]:
    REGISTRY[cls.name] = cls
    return cls


def get_method(name: str, **params: Any) -> MergeMethod:
    if name not in REGISTRY:
        raise ModpoolError(f"unknown merge method {name!r}: choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name](**params)


def weighted_sum(deltas: list[Params], weights: list[float]) -> Params:
    """sum_t w_t * tau_t in float32, accumulated in ingredient order (deterministic)."""
    names = sorted(set().union(*deltas)) if deltas else []
    out: Params = {}
    for name in names:
        total = None
        for delta, w in zip(deltas, weights):
            if name in delta:
                term = w * delta[name].float()
                total = term if total is None else total + term
        out[name] = total
    return out
