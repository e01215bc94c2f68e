"""The linearised forward against the real model."""

import copy

import torch
from conftest import random_delta

from modpool.forward import edited, nonlinear_features, tangent_features


def test_tangent_forward_matches_finite_difference(clip_pool):
    tower = copy.deepcopy(clip_pool.base.tower).double()
    params0 = {n: p.detach() for n, p in tower.named_parameters()}
    direction = {k: v.double() for k, v in random_delta(clip_pool, seed=7, scale=1.0).items()}
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    f0 = tower(x)
    errors = []
    for eps in (1e-4, 5e-5):
        step = {k: eps * v for k, v in direction.items()}
        linear = tangent_features(tower, params0, step, x)
        real = nonlinear_features(tower, edited(params0, step), x)
        assert (real - f0).abs().max() > 1e-6  # the step does move the output
        errors.append((linear - real).abs().max().item())
        assert errors[-1] < 1e-2 * (real - f0).abs().max().item()
    # the Taylor remainder is second order: halving the step quarters the gap
    assert 3 < errors[0] / errors[1] < 5


def test_tangent_at_zero_is_the_base(clip_pool):
    params0 = dict(clip_pool.base.trainable())
    zero = {k: torch.zeros_like(v) for k, v in params0.items()}
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(
        tangent_features(clip_pool.base.tower, params0, zero, x), clip_pool.base.tower(x)
    )
