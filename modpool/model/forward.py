"""The two forwards a module can be used in.

nonlinear: f(x; theta_0 + tau), the ordinary network at edited weights.
tangent:   f(x; theta_0) + J f(x; theta_0) . tau, the first-order Taylor model around the
           base, computed with one Jacobian-vector product whatever tau is made of.

The tangent forward is one pass of forward-mode dual numbers (`torch.autograd.forward_ad`)
with no autograd graph. Training needs its gradient, J(theta_0)^T g, which is the ordinary
backward of the *base* network: the model is linear in tau, so nothing of the JVP itself
has to be differentiated. `tangent_features` therefore runs the dual pass without a graph
and, in the backward, the base forward and backward (`_Linearised`). Backpropagating
through the JVP instead (torch.func.jvp under autograd) keeps the graph of both the primal
and the tangent computations and differentiates both: more time and far more memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.func import functional_call

from .delta import Params


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
    deltas = [delta[n] for n in names]
    if torch.is_grad_enabled() and any(d.requires_grad for d in deltas):
        return _Linearised.apply(tower, params0, names, x, *deltas)
    return _dual_pass(tower, params0, names, deltas, x)


def _dual_pass(
    tower: nn.Module, params0: Params, names: list[str], deltas: list[torch.Tensor], x
) -> torch.Tensor:
    """f(x; theta_0) + J . delta from one pass on dual numbers (see `jvp`)."""
    primal, tangent = jvp(tower, params0, dict(zip(names, deltas)), x)
    return primal + tangent


def jvp(
    tower: nn.Module, params0: Params, delta: Params, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(f(x; theta_0), J f(x; theta_0) . delta) from one forward pass on dual numbers
    (theta_0, delta), with no autograd graph: the two terms of the tangent model apart, as
    an attribution needs them. (Forward AD is switched off inside an autograd.Function's
    forward, hence `_set_fwd_grad_enabled`.)"""
    with torch.no_grad(), jvp_friendly(), fwAD.dual_level(), fwAD._set_fwd_grad_enabled(True):
        weights = {
            n: fwAD.make_dual(params0[n], d.detach().to(params0[n].dtype)) for n, d in delta.items()
        }
        out = functional_call(tower, weights, (x,), strict=False)
        primal, tangent = fwAD.unpack_dual(out)
    return primal, torch.zeros_like(primal) if tangent is None else tangent


class _Linearised(torch.autograd.Function):
    """Forward: the dual pass. Backward: g -> J(theta_0)^T g, by running the base forward
    with a graph and its backward (the same for every tau: the model is linear in tau).
    Frozen layers before the first trained one are not run twice (`FrozenOutputs`), and
    autocast, if on in the forward, is on in the recomputation too."""

    @staticmethod
    def forward(ctx, tower, params0, names, x, *deltas):
        ctx.tower, ctx.params0, ctx.names = tower, params0, names
        ctx.autocast = _autocast_state(x.device.type)
        ctx.dtypes = [d.dtype for d in deltas]
        ctx.frozen = FrozenOutputs(tower, set(names))
        ctx.save_for_backward(x)
        with ctx.frozen.recording():
            return _dual_pass(tower, params0, names, list(deltas), x)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        probes = [ctx.params0[n].detach().requires_grad_() for n in ctx.names]
        with (
            torch.enable_grad(),
            torch.autocast(x.device.type, **ctx.autocast),
            ctx.frozen.replaying(),
        ):
            out = functional_call(ctx.tower, dict(zip(ctx.names, probes)), (x,), strict=False)
        grads = torch.autograd.grad(out, probes, grad_out.to(out.dtype), allow_unused=True)
        grads = [
            torch.zeros_like(p, dtype=t) if g is None else g.to(t)
            for g, p, t in zip(grads, probes, ctx.dtypes)
        ]
        return (None, None, None, None, *grads)


class FrozenOutputs:
    """Outputs of the tower's frozen parts (sub-modules none of whose parameters is
    trained) that the dual pass computed without a tangent, i.e. the layers before the
    first trained one. Replaying them in the backward's recomputation skips that work:
    with `--last-blocks K`, the frozen front of the tower runs once per step, not twice."""

    def __init__(self, tower: nn.Module, trained: set[str]):
        self.modules = _frozen_parts(tower, trained)
        self.outputs: dict[nn.Module, list] = {m: [] for m in self.modules}

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        def keep(module, args, out):
            plain = isinstance(out, torch.Tensor) and fwAD.unpack_dual(out).tangent is None
            self.outputs[module].append((out, out._version) if plain else None)

        handles = [m.register_forward_hook(keep) for m in self.modules]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @contextlib.contextmanager
    def replaying(self) -> Iterator[None]:
        """Serve the kept outputs once (a second backward computes everything again)."""
        outputs, self.outputs = self.outputs, {}
        previous = {m: vars(m).get("forward") for m in self.modules}
        for module in self.modules:
            module.forward = _replay(module, previous[module], outputs.get(module, []))
        try:
            yield
        finally:
            for module, forward in previous.items():
                if forward is None:
                    del module.forward
                else:
                    module.forward = forward


def _replay(module: nn.Module, own_forward, kept: list):
    """A forward for `module` that returns its kept outputs in call order, and computes
    when none is left or one was changed in place since it was kept."""
    compute = own_forward or type(module).forward.__get__(module)
    kept = iter(kept)

    def forward(*args, **kwargs):
        out, version = next(kept, None) or (None, None)
        if out is None or out._version != version:
            return compute(*args, **kwargs)
        return out

    return forward


def _frozen_parts(tower: nn.Module, trained: set[str]) -> list[nn.Module]:
    """The outermost sub-modules that hold parameters, none of them trained."""
    parts = []

    def visit(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            path = prefix + name
            params = {f"{path}.{n}" for n, _ in child.named_parameters()}
            if params and not params & trained:
                parts.append(child)
            elif params:
                visit(child, path + ".")

    visit(tower, "")
    return parts


def reference_tangent_features(
    tower: nn.Module, params0: Params, delta: Params, x: torch.Tensor
) -> torch.Tensor:
    """The direct way, autograd through `torch.func.jvp`: the same values and gradients as
    `tangent_features` at more time and memory. Kept for tests and the cost benchmark."""
    from torch.func import jvp

    names = list(delta)

    def f(*weights: torch.Tensor) -> torch.Tensor:
        return functional_call(tower, dict(zip(names, weights)), (x,), strict=False)

    primals = tuple(params0[n] for n in names)
    with jvp_friendly():
        out, dout = jvp(f, primals, tuple(delta[n].to(params0[n].dtype) for n in names))
    return out + dout


def _autocast_state(device_type: str) -> dict:
    enabled = torch.is_autocast_enabled(device_type)
    dtype = torch.get_autocast_dtype(device_type) if enabled else None
    return {"enabled": enabled, "dtype": dtype}
