"""TSV, Iso-C, Iso-CTS, consensus and TALL against numpy transcriptions of their papers'
equations; the element-wise methods, now fast, against the direct formulations they
replaced, bit for bit; and exact forgetting for every new method."""

import math

import numpy as np
import pytest
import torch
from conftest import run_cli

from modpool import ModpoolError, Pool
from modpool.edit.merge import get_method
from modpool.edit.merge.spectral import is_matrix

# ---- numpy oracles, written from the papers' equations ----------------------------------


def np_polar(x):
    p, _, qt = np.linalg.svd(x, full_matrices=False)
    return p @ qt


def np_tsv(deltas):
    r, t = min(deltas[0].shape), len(deltas)
    k = r // t
    svds = [np.linalg.svd(d, full_matrices=False) for d in deltas]
    u = np.concatenate([s[0][:, :k] for s in svds], 1)
    s = np.concatenate([s[1][:k] for s in svds])
    v = np.concatenate([s[2][:k] for s in svds], 0)
    return np_polar(u) @ np.diag(s) @ np_polar(v)


def np_iso(deltas):
    u, s, vt = np.linalg.svd(sum(deltas), full_matrices=False)
    return s.mean() * u @ vt


def np_iso_cts(deltas, fraction=0.8):
    r, t = min(deltas[0].shape), len(deltas)
    common = int(r * fraction)
    common = r - round((r - common) / t) * t
    per = (r - common) // t
    u, s, vt = np.linalg.svd(sum(deltas), full_matrices=False)
    uc = u[:, :common]
    us, ss, vs = [], [], []
    for d in deltas:
        tu, ts, tvt = np.linalg.svd(d - uc @ uc.T @ d, full_matrices=False)
        us.append(tu[:, :per])
        ss.append(ts[:per])
        vs.append(tvt[:per])
    us, ss, vs = us + [uc], ss + [s[:common]], vs + [vt[:common]]
    flat = np.concatenate(ss).mean()
    return flat * np_polar(np.concatenate(us, 1)) @ np_polar(np.concatenate(vs, 0))


def np_masks(deltas, lambdas):
    total = sum(deltas)
    return total, [np.abs(d) >= lam * np.abs(total - d) for d, lam in zip(deltas, lambdas)]


def np_consensus(deltas, lambdas, k):
    total, masks = np_masks(deltas, lambdas)
    return total * (sum(m.astype(int) for m in masks) >= k)


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def as64(tensors):
    return [t.double().numpy() for t in tensors]


@pytest.mark.parametrize("shape,tasks", [((40, 24), 3), ((24, 40), 4), ((30, 30), 8)])
def test_spectral_methods_follow_their_equations(shape, tasks):
    parts = [randn(*shape, seed=i) for i in range(tasks)]
    alphas = [0.7, -0.3, 1.2, 0.5, 1.0, 0.9, 0.2, 1.1][:tasks]
    weighted = [a * p for a, p in zip(alphas, as64(parts))]
    for method, oracle in (("tsv", np_tsv), ("iso", np_iso), ("iso-cts", np_iso_cts)):
        got = get_method(method).merge_tensor("w.weight", parts, alphas)
        expected = torch.from_numpy(oracle(weighted)).float()
        scale = float(expected.abs().max())  # float32 SVDs: errors relative to the largest entry
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * scale, msg=method)
        exact = get_method(method, precision="float64").merge_tensor("w.weight", parts, alphas)
        torch.testing.assert_close(exact, expected, rtol=1e-5, atol=1e-6, msg=method)


def test_spectral_properties():
    parts = [randn(32, 20, seed=i) for i in range(3)]
    # iso: a flat spectrum over the sum's singular subspace
    iso = get_method("iso").merge_tensor("w.weight", parts, [1.0] * 3)
    spectrum = torch.linalg.svdvals(iso)
    torch.testing.assert_close(spectrum, torch.full_like(spectrum, spectrum.mean()))
    total = sum(parts)
    torch.testing.assert_close(spectrum.mean(), torch.linalg.svdvals(total).mean())
    # tsv with one task and full rank gives the delta back
    torch.testing.assert_close(
        get_method("tsv").merge_tensor("w.weight", parts[:1], [1.0]), parts[0]
    )
    # a shared alpha scales the result (alpha = -2 flips it)
    tsv = get_method("tsv")
    torch.testing.assert_close(
        tsv.merge_tensor("w.weight", parts, [-2.0] * 3),
        -2 * tsv.merge_tensor("w.weight", parts, [1.0] * 3),
    )
    # every other tensor is the mean: exactly what `mean` gives
    bias = [randn(20, seed=10 + i) for i in range(3)]
    for method in ("tsv", "iso", "iso-cts"):
        assert torch.equal(
            get_method(method).merge_tensor("w.bias", bias, [0.5] * 3),
            get_method("mean").merge_tensor("w.bias", bias, [0.5] * 3),
        )


def test_which_tensors_are_matrices():
    assert is_matrix("blocks.0.attn.in_proj_weight", (192, 64), "linear")
    assert not is_matrix("positional_embedding", (17, 64), "linear")
    assert is_matrix("positional_embedding", (17, 64), "2d")
    assert not is_matrix("conv1.weight", (64, 3, 8, 8), "linear")
    assert is_matrix("conv1.weight", (64, 3, 8, 8), "conv")
    assert not is_matrix("ln.weight", (64,), "conv")
    parts = [randn(96, 32, seed=i) for i in range(3)]
    split = get_method("tsv", qkv="split").merge_tensor("attn.in_proj_weight", parts, [1.0] * 3)
    by_block = [np_tsv(as64([p[i * 32 : (i + 1) * 32] for p in parts])) for i in range(3)]
    expected = torch.from_numpy(np.concatenate(by_block)).float()
    torch.testing.assert_close(split, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    conv = [randn(16, 3, 3, 3, seed=i) for i in range(2)]
    merged = get_method("iso", matrices="conv").merge_tensor("stem.weight", conv, [1.0, 1.0])
    expected = np_iso(as64([c.reshape(16, 27) for c in conv])).reshape(16, 3, 3, 3)
    expected = torch.from_numpy(expected).float()
    torch.testing.assert_close(merged, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_consensus_and_tall_masks_follow_their_equations():
    parts = [randn(300, seed=i) for i in range(4)]
    alphas = [1.0, 0.5, -1.0, 2.0]
    weighted = [a * p for a, p in zip(alphas, as64(parts))]
    lambdas = {"a": 0.2, "b": 0.4, "c": 0.6}  # d takes the default (0.4)
    for k in (0, 1, 2, 3):
        method = get_method("consensus", k=k, lambdas=lambdas)
        method.tasks = ["a", "b", "c", "d"]
        got = method.merge_tensor("w", parts, alphas)
        expected = np_consensus(weighted, [0.2, 0.4, 0.6, 0.4], k)
        torch.testing.assert_close(got, torch.from_numpy(expected).float())
    tall = get_method("tall", lambdas=lambdas)
    tall.tasks = ["a", "b", "c", "d"]
    masks = tall.masks("w", parts, alphas)
    _, expected = np_masks(weighted, [0.2, 0.4, 0.6, 0.4])
    assert [masks[t].numpy().tolist() for t in "abcd"] == [m.tolist() for m in expected]
    assert torch.equal(
        tall.merge_tensor("w", parts, alphas), get_method("sum").merge_tensor("w", parts, alphas)
    )


# ---- the element-wise methods: fast, and the same bits as the direct formulations -------


def ref_threshold(values, density):
    flat = values.abs().flatten().float()
    keep = math.ceil(density * flat.numel())
    if keep >= flat.numel():
        return 0.0
    if keep <= 0:
        return math.inf
    return float(torch.kthvalue(flat, flat.numel() - keep + 1).values)


def ref_trim(parts, density):
    if density >= 1:
        return [p.float() for p in parts]
    return [torch.where(p.abs() >= ref_threshold(p, density), p.float(), 0.0) for p in parts]


def ref_disjoint(kept, alphas, sign, agg):
    stack = torch.stack([a * k for k, a in zip(kept, alphas)])
    if sign == "mass":
        elected = torch.sign(stack.sum(0))
    else:
        elected = torch.sign((stack > 0).sum(0) - (stack < 0).sum(0)).float()
    agree = (torch.sign(stack) == elected) & (stack != 0)
    total = torch.where(agree, stack, 0.0).sum(0)
    return total / agree.sum(0).clamp(min=1) if agg == "mean" else total


def ref_drop(p, drop, generator):
    keep = torch.rand(p.shape, generator=generator) >= drop
    return torch.where(keep, p.float() / (1.0 - drop), 0.0)


def same_bits(a, b):
    return torch.equal(a.view(torch.int32), b.view(torch.int32))


@pytest.mark.parametrize("tasks,shape", [(1, (9,)), (3, (70, 50)), (8, (300, 70)), (20, (4099,))])
def test_elementwise_methods_keep_their_bits(tasks, shape):
    from modpool.edit.merge.base import tensor_seed
    from modpool.model.delta import weighted_parts

    parts = [randn(*shape, seed=i) for i in range(tasks)]
    parts[0].view(-1)[:3] = 0.0  # exact zeros, as sparse deltas have
    alphas = [float(a) for a in randn(tasks, seed=99)]
    for density in (0.1, 0.2, 1.0):
        for sign in ("mass", "count"):
            for agg in ("mean", "sum"):
                got = get_method("ties", density=density, sign=sign, agg=agg).merge_tensor(
                    "w", parts, alphas
                )
                assert same_bits(got, ref_disjoint(ref_trim(parts, density), alphas, sign, agg))
        got = get_method("magnitude", density=density).merge_tensor("w", parts, alphas)
        assert same_bits(got, weighted_parts(ref_trim(parts, density), alphas))
    for merge in ("sum", "ties"):
        method = get_method("dare", drop=0.6, merge=merge, density=0.5, seed=3)
        dropped = [
            ref_drop(p, 0.6, torch.Generator().manual_seed(tensor_seed(3, i, "w")))
            for i, p in enumerate(parts)
        ]
        expected = (
            weighted_parts(dropped, alphas)
            if merge == "sum"
            else ref_disjoint(ref_trim(dropped, 0.5), alphas, "mass", "mean")
        )
        assert same_bits(method.merge_tensor("w", parts, alphas), expected)


# ---- in a pool: forget, task-aware use, searches -----------------------------------------


@pytest.fixture
def three(clip_pool) -> Pool:
    for i, task in enumerate(("digits", "mnist", "animals")):
        delta = {
            n: 1e-2 * randn(*s, seed=i * 100 + j)
            for j, (n, (s, _)) in enumerate(clip_pool.manifest.items())
        }
        clip_pool.save_module(task, delta, task, "nonlinear")
    return clip_pool


def test_forget_rebuilds_every_new_method_exactly(three):
    methods = {
        "tsv": {},
        "iso": {"qkv": "split"},
        "iso-cts": {"common": 0.5},
        "consensus": {"k": 1},
        "tall": {},
    }
    for method, params in methods.items():
        three.compose(["digits", "mnist", "animals"], method, method, 0.8, params)
    report = three.forget("animals")
    assert {r["name"] for r in report.rebuilt} == set(methods)
    for method, params in methods.items():
        fresh = three.compose(["digits", "mnist"], f"fresh-{method}", method, 0.8, params)
        a, b = three.read(method), three.read(fresh.name)
        assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors), method
        assert a.task_masks.keys() == b.task_masks.keys()
        for task, masks in a.task_masks.items():
            assert all(torch.equal(masks[k], b.task_masks[task][k]) for k in masks)
    assert set(three.read("tall").task_masks) == {"digits", "mnist"}


def test_tall_is_task_aware(three, tmp_path, capsys):
    from safetensors.torch import load_file

    three.compose(["digits", "mnist"], "tl", "tall", 1.0, {"lambdas": {"digits": 0.3}})
    artifact = three.read("tl")
    method = get_method("tall", lambdas={"digits": 0.3})
    method.tasks = ["digits", "mnist"]
    parts = {t: three.read(t).tensors for t in ("digits", "mnist")}
    for name in artifact.tensors:
        masks = method.masks(name, [parts["digits"][name], parts["mnist"][name]], [1.0, 1.0])
        for task in ("digits", "mnist"):
            assert torch.equal(artifact.task_masks[task][name], masks[task])  # bits round-trip
    row = three.evaluate("tl", ["digits"], "val")[0]
    assert row.task_aware
    masked = {n: v * artifact.task_masks["digits"][n] for n, v in artifact.tensors.items()}
    three.save_module("by-hand", masked, "digits", "nonlinear")
    assert row.accuracy == three.evaluate("by-hand", ["digits"], "val")[0].accuracy
    with pytest.raises(ModpoolError, match="task-aware"):
        three.model("tl")
    with pytest.raises(ModpoolError, match="task-aware"):
        three.export("tl", tmp_path / "x.safetensors")
    path = three.export("tl", tmp_path / "digits.safetensors", task="digits")
    exported = load_file(path)
    base = dict(three.base.model.state_dict())
    key = "visual.proj"
    torch.testing.assert_close(exported[key], base[key] + masked["proj"])
    code, out, err = run_cli(
        ["--pool", str(three.root), "eval", "tl", "--task", "mnist", "--split", "val"], capsys
    )
    assert code == 0 and "task-aware" in out
    code, _, err = run_cli(
        ["--pool", str(three.root), "compose", "tl", "digits", "-o", "x", "--method", "tall"],
        capsys,
    )
    assert code == 1 and "is a composition" in err


def test_searches_pick_lambdas_and_alphas(three, capsys):
    p = ["--pool", str(three.root)]
    code, out, err = run_cli(
        [*p, "compose", "digits", "mnist", "-o", "tl", "--method", "tall", "--search"], capsys
    )
    assert code == 0, err
    assert "lambda search" in out and "task-aware" in out
    chosen = three.entry("tl").meta["recipe"]["params"]["lambdas"]
    assert set(chosen) == {"digits", "mnist"} and all(
        v in (0.2, 0.3, 0.4, 0.5, 0.6) for v in chosen.values()
    )
    code, out, err = run_cli(
        [
            *p,
            "compose",
            "digits",
            "mnist",
            "-o",
            "cs",
            "--method",
            "consensus",
            "--search",
            "--grid",
            "0.5,1",
        ],
        capsys,
    )
    assert code == 0, err
    recipe = three.entry("cs").meta["recipe"]
    assert recipe["params"]["lambdas"] == chosen  # the same validation runs, from the cache
    assert recipe["ingredients"][0]["alpha"] in (0.5, 1.0) and "alpha search" in out
    assert get_method("tsv").grid[-1] == 3.0 and get_method("sum").grid[-1] == 1.0


def test_spectral_methods_on_compact_modules_and_dtypes(three):
    from modpool.store.encoding import Storage

    three.compact("digits", "digits-bf16", Storage("bf16"))
    entry = three.compose(["digits-bf16", "mnist"], "t16", "tsv", 1.0, dtype="bf16")
    assert entry.meta["dtype"] == "bfloat16"
    three.compose(["digits-bf16", "mnist"], "t32", "tsv", 1.0)
    a, b = three.read("t16").tensors, three.read("t32").tensors
    for name in a:
        torch.testing.assert_close(a[name], b[name].bfloat16().float())
    with pytest.raises(ModpoolError, match="no CUDA GPU"):
        three.compose(["digits", "mnist"], "gpu", "tsv", 1.0, device="cuda")
