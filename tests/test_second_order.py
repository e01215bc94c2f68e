"""ita and iel: the penalty, the Fisher, equivalences, and the CLI on the tiny CLIP."""

import json

import pytest
import torch
from conftest import run_cli

from modpool.tasks.task import take
from modpool.train import TrainConfig
from modpool.train.fisher import diagonal_fisher
from modpool.train.second_order import Penalty

FAST = dict(steps=3, epochs=None, batch_size=8, warmup=1, lr=1e-3, fisher_examples=24)


def _small(seed):
    g = torch.Generator().manual_seed(seed)
    return {
        "a": torch.randn(3, 4, generator=g, dtype=torch.float64),
        "b": torch.randn(5, generator=g, dtype=torch.float64),
    }


def test_ita_penalty_and_gradient():
    fisher = {k: v.abs() for k, v in _small(0).items()}
    tau = {k: v.requires_grad_() for k, v in _small(1).items()}
    penalty = Penalty("ita", fisher, strength=0.7)
    direct = 0.5 * 0.7 * sum((fisher[k] * tau[k] ** 2).sum() for k in tau)
    assert torch.allclose(penalty.value(tau), direct)
    direct.backward()
    for k, g in penalty.gradient(tau).items():
        torch.testing.assert_close(g, tau[k].grad)


def test_iel_penalty_and_gradient():
    fisher = {k: v.abs() for k, v in _small(0).items()}
    others = _small(2)
    tau = {k: v.requires_grad_() for k, v in _small(1).items()}
    T, beta = 3, 20.0
    penalty = Penalty("iel", fisher, beta, others, T)
    quad = sum((fisher[k] * tau[k] * tau[k]).sum() for k in tau)
    cross = sum((fisher[k] * tau[k] * others[k]).sum() for k in tau)
    direct = beta * (0.5 * (1 - 1 / T) * quad - (1 / T) * cross)
    assert torch.allclose(penalty.value(tau), direct)
    direct.backward()
    for k, g in penalty.gradient(tau).items():
        torch.testing.assert_close(g, tau[k].grad)
    # up to a constant, the Fisher-weighted spread of the modules around their mean
    params0 = {k: torch.zeros_like(v) for k, v in tau.items()}
    theta = {k: v.detach() for k, v in tau.items()}
    weights = penalty.weights(theta, params0)
    for k in tau:
        torch.testing.assert_close(weights[k], (others[k] + theta[k]) / T)


@pytest.mark.parametrize("mode", ["ita", "iel"])
def test_penalty_step_is_implicit_and_stable(mode):
    fisher = {k: v.abs() * 100 for k, v in _small(0).items()}  # h * a * F_i well above 2
    others, params0, tau = _small(2), _small(3), _small(1)
    penalty = Penalty(mode, fisher, 1.5, others if mode == "iel" else None, 3)
    theta = {k: params0[k] + tau[k] for k in tau}
    penalty.step(theta, params0, factor=0.8)
    after = {k: theta[k] - params0[k] for k in theta}
    # implicit: tau' = tau - h * grad(tau'), exactly
    for k, g in penalty.gradient(after).items():
        torch.testing.assert_close(after[k], tau[k] - 0.8 * g)
    # stable: many steps converge to the penalty's minimum instead of blowing up
    for _ in range(200):
        penalty.step(theta, params0, factor=1.0)
    for g in penalty.gradient({k: theta[k] - params0[k] for k in theta}).values():
        assert g.abs().max() < 1e-6
    # and to first order it is the plain step: the gap is second order in h
    theta = {k: params0[k] + tau[k] for k in tau}
    penalty.step(theta, params0, factor=1e-6)
    for k, g in penalty.gradient(tau).items():
        plain_move, move = 1e-6 * g, tau[k] - (theta[k] - params0[k])
        assert ((move - plain_move).abs() <= 1e-3 * plain_move.abs() + 1e-15).all()


def test_sampled_fisher_converges_to_exact(clip_pool):
    task = clip_pool.task("digits")
    head = clip_pool.head(task)
    data = take(task.load("train", 32), torch.arange(6))
    exact = diagonal_fisher(clip_pool.base, head, data, exact=True, batch_size=64).fisher

    def error(samples):
        est = diagonal_fisher(clip_pool.base, head, data, samples=samples, batch_size=64).fisher
        num = sum(((est[k] - exact[k]) ** 2).sum() for k in exact)
        return (num / sum((exact[k] ** 2).sum() for k in exact)).sqrt().item()

    errors = [error(s) for s in (1, 8, 64)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.1
    assert all((v >= 0).all() for v in exact.values())


def test_ita_with_zero_strength_equals_nonlinear(clip_pool):
    clip_pool.finetune("mnist", TrainConfig(mode="ita", **FAST), "first")
    assert clip_pool.read("first").extra  # carries its Fisher
    clip_pool.finetune("digits", TrainConfig(mode="ita", strength=0.0, seed=5, **FAST), "ita0")
    clip_pool.finetune("digits", TrainConfig(mode="nonlinear", seed=5, **FAST), "plain")
    ita, plain = clip_pool.read("ita0"), clip_pool.read("plain")
    assert ita.meta["lineage"]["fisher_from"][0]["name"] == "first"
    assert all(torch.equal(ita.tensors[k], plain.tensors[k]) for k in plain.tensors)
    clip_pool.finetune("digits", TrainConfig(mode="ita", strength=1e4, seed=5, **FAST), "ita-big")
    strong = clip_pool.read("ita-big").tensors
    assert any(not torch.equal(strong[k], plain.tensors[k]) for k in plain.tensors)


def test_iel_first_module_is_nonlinear_training(clip_pool):
    clip_pool.finetune("mnist", TrainConfig(mode="iel", seed=2, **FAST), "iel1")
    clip_pool.finetune("mnist", TrainConfig(mode="nonlinear", seed=2, **FAST), "plain")
    first, plain = clip_pool.read("iel1"), clip_pool.read("plain")
    assert all(torch.equal(first.tensors[k], plain.tensors[k]) for k in plain.tensors)
    clip_pool.finetune("digits", TrainConfig(mode="iel", seed=2, **FAST), "iel2")
    assert clip_pool.read("iel2").meta["lineage"]["joined"] == ["iel1"]


def test_cli_second_order_workflow(clip_pool, capsys):
    p = ["--pool", str(clip_pool.root)]
    fast = ["--steps", "2", "--batch-size", "8", "--warmup", "1", "--fisher-examples", "16"]

    def ok(args):
        code, out, err = run_cli([*p, *args], capsys)
        assert code == 0, err
        return out

    ok(["finetune", "--task", "mnist", "--mode", "ita", *fast])
    out = ok(
        [
            "finetune",
            "--task",
            "digits",
            "--mode",
            "ita",
            "--ita-strength",
            "0.5",
            "--fisher-samples",
            "2",
            *fast,
            "--json",
        ]
    )
    meta = json.loads(out)
    assert meta["hparams"]["strength"] == 0.5
    assert meta["fisher"]["examples"] == 16 and meta["fisher"]["method"] == "sampled x2"
    ok(["finetune", "--task", "mnist", "--mode", "iel", "--fisher-exact", *fast])
    out = ok(
        [
            "finetune",
            "--task",
            "digits",
            "--mode",
            "iel",
            "--with",
            "mnist-iel",
            "--iel-strength",
            "5",
            *fast,
            "--json",
        ]
    )
    assert json.loads(out)["lineage"]["joined"] == ["mnist-iel"]
    ok(["compose", "mnist-iel", "digits-iel", "-o", "iel-mean", "--method", "mean"])
    rows = json.loads(ok(["eval", "iel-mean", "--json"]))
    assert [r["task"] for r in rows] == ["mnist", "digits"]
    shown = json.loads(ok(["show", "mnist", "--json"]))  # the first module of a task: its name
    assert shown["mode"] == "ita" and shown["fisher_used_by"] == ["digits"]
    out = ok(["forget", "mnist"])
    assert "digits" in out and "Fisher" in out
    shown = ok(["show", "digits"])
    assert "mnist (forgotten)" in shown
    code, _, err = run_cli(
        [
            *p,
            "finetune",
            "--task",
            "digits",
            "--mode",
            "ita",
            "--with",
            "iel-mean",
            "--name",
            "x",
            *fast,
        ],
        capsys,
    )
    assert code == 1 and "no Fisher" in err


@pytest.mark.parametrize("mode", ["ita", "iel"])
def test_offline_base_second_order(offline_pool, mode):
    cfg = TrainConfig(mode=mode, **{**FAST, "lr": 2e-5})
    offline_pool.finetune("digits", cfg, "first")
    offline_pool.finetune("digits", cfg, "second")
    assert offline_pool.read("second").meta["lineage"]["fisher_from"][0]["name"] == "first"
    assert offline_pool.read("second").extra["conv_stem.weight"].dtype == torch.bfloat16
