"""Exact arithmetic of compositions, and exact forgetting."""

import pytest
import torch
from conftest import random_delta

from modpool import ModpoolError


def _modules(pool, count=3, kind="nonlinear", tasks=("mnist", "animals", "digits")):
    deltas = {}
    for i in range(count):
        name = f"m{i}-{kind}"
        deltas[name] = random_delta(pool, seed=i + (100 if kind == "tangent" else 0))
        pool.save_module(name, deltas[name], tasks[i], kind)
    return deltas


def test_sum_equals_tensor_arithmetic(clip_pool):
    deltas = _modules(clip_pool)
    names = list(deltas)
    alphas = [0.3, -0.5, 1.25]
    clip_pool.compose(names, "s", "sum", alphas)
    got = clip_pool.read("s").tensors
    for key in clip_pool.manifest:
        expected = alphas[0] * deltas[names[0]][key]
        expected = expected + alphas[1] * deltas[names[1]][key]
        expected = expected + alphas[2] * deltas[names[2]][key]
        assert torch.equal(got[key], expected), key


def test_mean_is_sum_with_one_over_t(clip_pool):
    deltas = _modules(clip_pool)
    clip_pool.compose(list(deltas), "m", "mean")
    got = clip_pool.read("m").tensors
    for key in clip_pool.manifest:
        expected = sum(d[key] for d in deltas.values()) / 3
        torch.testing.assert_close(got[key], expected, rtol=1e-6, atol=1e-9)
    clip_pool.add(list(deltas), "a", alpha=1 / 3)
    assert all(torch.equal(got[k], clip_pool.read("a").tensors[k]) for k in got)


def test_add_shared_alpha_and_recipe(clip_pool):
    deltas = _modules(clip_pool, 2)
    entry = clip_pool.add(list(deltas), "both", alpha=0.4)
    recipe = entry.meta["recipe"]
    assert recipe["method"] == "sum"
    assert [i["alpha"] for i in recipe["ingredients"]] == [0.4, 0.4]
    shas = {i["name"]: i["sha256"] for i in recipe["ingredients"]}
    assert shas == {n: clip_pool.read(n).sha256 for n in deltas}
    assert entry.tasks == ["mnist", "animals"]


def test_negate_then_add_gives_base_back(clip_pool):
    deltas = _modules(clip_pool, 1)
    (name,) = deltas
    clip_pool.negate(name, "neg", alpha=0.7)
    clip_pool.compose(["neg", name], "back", "sum", [1.0, 0.7])
    back = clip_pool.read("back").tensors
    assert all(torch.count_nonzero(t) == 0 for t in back.values())
    x = torch.rand(4, 3, 32, 32)
    torch.testing.assert_close(
        clip_pool.model("back").features(x), clip_pool.model("base").features(x), rtol=0, atol=0
    )


def test_forget_rebuilds_every_composition_exactly(clip_pool):
    deltas = _modules(clip_pool)
    a, b, c = deltas
    clip_pool.compose([a, b, c], "sum3", "sum", [0.5, 0.25, 2.0])
    clip_pool.compose([a, b], "mean2", "mean")
    clip_pool.compose(["sum3", c], "nested", "sum", [1.0, -1.0])
    clip_pool.negate(a, "no-a", 1.0)
    untouched = clip_pool.read("no-a").sha256
    before = {n: clip_pool.read(n).sha256 for n in ("sum3", "mean2", "nested")}

    report = clip_pool.forget(b)

    assert not clip_pool.exists(b)
    assert {r["name"] for r in report.rebuilt} == {"sum3", "mean2", "nested"}
    # each rebuilt composition is bit-identical to composing the remaining ingredients
    clip_pool.compose([a, c], "ref-sum3", "sum", [0.5, 2.0])
    clip_pool.compose([a], "ref-mean2", "mean")
    clip_pool.compose(["ref-sum3", c], "ref-nested", "sum", [1.0, -1.0])
    for name in ("sum3", "mean2", "nested"):
        got, ref = clip_pool.read(name).tensors, clip_pool.read(f"ref-{name}").tensors
        assert all(torch.equal(got[k], ref[k]) for k in ref), name
        assert clip_pool.read(name).sha256 != before[name]
    assert clip_pool.read("no-a").sha256 == untouched
    audit = [r for r in clip_pool.audit_log() if r["action"] == "forget"][-1]
    assert audit["name"] == b
    changed = {r["name"]: r for r in audit["rebuilt"]}
    assert changed["sum3"]["sha256_before"] == before["sum3"]
    assert changed["sum3"]["sha256_after"] == clip_pool.read("sum3").sha256


def test_forget_removes_compositions_left_empty(clip_pool):
    (name,) = _modules(clip_pool, 1)
    clip_pool.negate(name, "neg", 1.0)
    report = clip_pool.forget(name)
    assert report.removed == ["neg"]
    assert not clip_pool.exists("neg")


def test_mixing_kinds_is_refused(clip_pool):
    _modules(clip_pool, 1, "nonlinear")
    _modules(clip_pool, 1, "tangent")
    with pytest.raises(ModpoolError, match="nonlinear and tangent"):
        clip_pool.compose(["m0-nonlinear", "m0-tangent"], "mix")
    assert not clip_pool.exists("mix")


def test_tangent_composition_is_sum_of_output_changes(clip_pool):
    deltas = _modules(clip_pool, 2, "tangent")
    a, b = deltas
    clip_pool.add([a, b], "ab", alpha=1.0)
    x = torch.rand(6, 3, 32, 32)
    f0 = clip_pool.model("base").features(x)
    change_a = clip_pool.model(a).features(x) - f0
    change_b = clip_pool.model(b).features(x) - f0
    change_ab = clip_pool.model("ab").features(x) - f0
    assert change_a.abs().max() > 1e-4  # the modules really change the output
    torch.testing.assert_close(change_ab, change_a + change_b, rtol=1e-4, atol=1e-5)
