"""The two forwards a module can be used in.

nonlinear: f(x; theta_0 + tau), the ordinary network at edited weights.
tangent:   f(x; theta_0) + J f(x; theta_0) . tau, the first-order Taylor model around the
           base, computed with one Jacobian-vector product whatever tau is made of.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.func import functional_call, jvp

Params = dict[str, torch.Tensor]


@contextlib.contextmanager
def jvp_friendly() -> Iterator[None]:
    """Forward-mode AD needs the math attention kernel and no fused MHA fast path."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def nonlinear_features(tower: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    return functional_call(tower, params, (x,), strict=False)


def tangent_features(
    tower: nn.Module, params0: Params, delta: Params, x: torch.Tensor
) -> torch.Tensor:
    """f(x; theta_0) + J f(x; theta_0) . delta; differentiable with respect to delta."""
    names = list(delta)
    primals = tuple(params0[n] for n in names)
    tangents = tuple(delta[n].to(params0[n].dtype) for n in names)

    def f(*weights: torch.Tensor) -> torch.Tensor:
        return functional_call(tower, dict(zip(names, weights)), (x,), strict=False)

    with jvp_friendly():
        out, dout = jvp(f, primals, tangents)
    return out + dout


def edited(params0: Params, delta: Params, scale: float = 1.0) -> Params:
    """theta_0 + scale * delta for the parameters delta touches."""
    return {n: params0[n] + scale * delta[n].to(params0[n].dtype) for n in delta}
