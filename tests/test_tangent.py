"""The linearised forward against the real model."""

import copy

import pytest
import torch
from conftest import random_delta, run_cli

from modpool import ModpoolError
from modpool.model.delta import edited
from modpool.model.forward import (
    nonlinear_features,
    reference_tangent_features,
    tangent_features,
)


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


def test_last_blocks_of_a_vit_include_its_projection(clip_pool):
    clip = list(clip_pool.base.trainable(1))
    assert [n for n in clip if n != "proj"][0] == "transformer.resblocks.1.ln_1.weight"
    assert {"proj", "ln_post.weight"} <= set(clip)
    assert not any(n.startswith(("conv1", "transformer.resblocks.0")) for n in clip)


def test_last_blocks_of_an_efficientnet(offline_pool):
    offline = list(offline_pool.base.trainable(2))
    assert offline[0].startswith("blocks.5.3.") and offline[-1] == "bn2.bias"
    assert len(offline_pool.base.trainable(16)) == len(offline_pool.base.trainable()) - 3
    for bad in (0, 17):
        with pytest.raises(ModpoolError, match="between 1 and 16"):
            offline_pool.base.trainable(bad)


def test_partial_tangent_equals_full_tangent_with_zeros(clip_pool):
    base = clip_pool.base
    params0 = dict(base.trainable())
    full = {k: v for k, v in random_delta(clip_pool, seed=3, scale=1e-2).items()}
    tail = set(base.trainable(1))
    partial = {k: v for k, v in full.items() if k in tail}
    padded = {k: (v if k in tail else torch.zeros_like(v)) for k, v in full.items()}
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(
        tangent_features(base.tower, params0, partial, x),
        tangent_features(base.tower, params0, padded, x),
    )


def test_finetune_last_blocks_module(clip_pool, capsys):
    args = ["--pool", str(clip_pool.root), "finetune", "--task", "digits", "--steps", "2"]
    code, out, err = run_cli(
        [*args, "--batch-size", "4", "--mode", "tangent", "--last-blocks", "1"], capsys
    )
    assert code == 0, err
    module = clip_pool.read("digits")
    assert set(module.tensors) == set(clip_pool.base.trainable(1))
    assert module.meta["hparams"]["last_blocks"] == 1
    clip_pool.save_module("full", random_delta(clip_pool, 1), "mnist", "tangent")
    clip_pool.add(["digits", "full"], "both", 0.5)
    assert clip_pool.evaluate("both", ["digits"], "test")[0].accuracy >= 0
    code, out, err = run_cli([*args, "--mode", "iel", "--last-blocks", "1", "--name", "x"], capsys)
    assert code != 0 and "does not combine with iel" in err + out


def _linearised_gradients(forward, tower, params0, delta, x, weights):
    delta = {k: v.clone().requires_grad_() for k, v in delta.items()}
    out = forward(tower, params0, delta, x)
    loss = (out @ weights).square().sum() + out.sin().sum()  # any non-linear loss
    return out.detach(), torch.autograd.grad(loss, list(delta.values()))


@pytest.mark.parametrize("last_blocks", [None, 1])
def test_tangent_gradient_is_the_linearised_models(clip_pool, last_blocks):
    """The dual pass + base backward gives exactly what autograd through torch.func.jvp
    gives: J(theta_0)^T of the loss gradient (float64, so that only rounding differs)."""
    tower = copy.deepcopy(clip_pool.base.tower).double()
    names = set(clip_pool.base.trainable(last_blocks))
    params0 = {n: p.detach() for n, p in tower.named_parameters() if n in names}
    delta = {k: v.double() for k, v in random_delta(clip_pool, 5, 1e-2).items() if k in params0}
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    weights = torch.randn(64, 4, dtype=torch.float64)
    out, grads = _linearised_gradients(tangent_features, tower, params0, delta, x, weights)
    ref_out, ref_grads = _linearised_gradients(
        reference_tangent_features, tower, params0, delta, x, weights
    )
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    assert len(grads) == len(params0) and all(g.abs().sum() > 0 for g in grads[-3:])
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12)
    assert not any("forward" in vars(m) for m in tower.modules())  # replay undone


def test_tangent_gradient_on_a_batchnorm_convnet_reuses_the_frozen_front(offline_pool, monkeypatch):
    """EfficientNet (frozen BatchNorm, depthwise convolutions), last two blocks trained:
    the backward's recomputation replays the frozen front instead of running it again."""
    from modpool.model.forward import FrozenOutputs

    base = offline_pool.base
    params0 = {n: p.detach() for n, p in base.trainable(2).items()}
    generator = torch.Generator().manual_seed(0)
    delta = {k: 1e-3 * torch.randn(v.shape, generator=generator) for k, v in params0.items()}
    x = base.prepare(torch.rand(4, 3, 64, 64, generator=generator))
    weights = torch.randn(base.tower.num_features, 3, generator=generator)
    calls, conv2d = [], torch.nn.functional.conv2d

    def counting_conv2d(x, weight, *args, **kwargs):
        calls.append(weight is base.tower.conv_stem.weight)
        return conv2d(x, weight, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "conv2d", counting_conv2d)
    out, grads = _linearised_gradients(tangent_features, base.tower, params0, delta, x, weights)
    assert calls.count(True) == 1  # the stem ran in the dual pass only, not in the backward
    monkeypatch.undo()
    frozen = FrozenOutputs(base.tower, set(params0)).modules
    assert base.tower.conv_stem in frozen and base.tower.conv_head not in frozen
    ref_out, ref_grads = _linearised_gradients(
        reference_tangent_features, base.tower, params0, delta, x, weights
    )
    torch.testing.assert_close(out, ref_out)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5 * r.abs().max().item())


def test_tangent_gradient_survives_a_second_backward(clip_pool):
    """retain_graph: the second backward recomputes the frozen front instead of replaying."""
    base = clip_pool.base
    params0 = {n: p.detach() for n, p in base.trainable(1).items()}
    delta = {k: v for k, v in random_delta(clip_pool, 2, 1e-2).items() if k in params0}
    delta = {k: v.requires_grad_() for k, v in delta.items()}
    loss = tangent_features(base.tower, params0, delta, torch.rand(2, 3, 32, 32)).sin().sum()
    first = torch.autograd.grad(loss, list(delta.values()), retain_graph=True)
    second = torch.autograd.grad(loss, list(delta.values()))
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b)
    assert not any("forward" in vars(m) for m in base.tower.modules())
