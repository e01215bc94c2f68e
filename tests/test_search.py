"""Alpha search, negation search and the disentanglement map on the tiny CLIP."""

import json

import pytest
import torch
from conftest import random_delta, run_cli

from modpool.edit.search import search_alpha, search_negation

GRID = [0.0, 0.5, 1.0, 1.5, 2.0]


@pytest.fixture
def two_modules(clip_pool):
    clip_pool.save_module("d", random_delta(clip_pool, 1, scale=0.05), "digits", "nonlinear")
    clip_pool.save_module("m", random_delta(clip_pool, 2, scale=0.05), "mnist", "nonlinear")
    return clip_pool


def test_search_picks_what_brute_force_picks(two_modules):
    pool = two_modules
    alpha, rows = search_alpha(pool, ["d", "m"], GRID, "ties", {"density": 0.5})
    own = {
        "digits": pool.evaluate("d", split="val")[0].accuracy,
        "mnist": pool.evaluate("m", split="val")[0].accuracy,
    }
    brute = {}
    for a in GRID:
        name = f"ties-{a}".replace(".", "_")
        pool.compose(["d", "m"], name, "ties", a, {"density": 0.5})
        accs = {r.task: r.accuracy for r in pool.evaluate(name, split="val")}
        brute[a] = sum(accs[t] / own[t] for t in own) / 2
        row = next(r for r in rows if r.alpha == a)
        assert row.accuracy == accs
    assert alpha == max(GRID, key=lambda a: (brute[a], -GRID.index(a)))
    assert len({round(v, 6) for v in brute.values()}) > 1  # the grid really discriminates


def test_repeated_search_is_cached(two_modules):
    pool = two_modules
    first = search_alpha(pool, ["d", "m"], GRID)
    records = len(pool.history())
    second = search_alpha(pool, ["d", "m"], GRID)
    assert len(pool.history()) == records  # nothing was evaluated again
    assert first[0] == second[0]
    assert [r.accuracy for r in first[1]] == [r.accuracy for r in second[1]]


def test_search_via_cli_stores_table(two_modules, capsys):
    p = ["--pool", str(two_modules.root)]
    code, out, err = run_cli(
        [*p, "add", "d", "m", "-o", "best", "--search", "--grid", "0:1:0.5", "--json"], capsys
    )
    assert code == 0, err
    entry = json.loads(out)
    assert [r["alpha"] for r in entry["search"]["rows"]] == [0.0, 0.5, 1.0]
    best = max(entry["search"]["rows"], key=lambda r: r["mean_normalized"])
    assert entry["recipe"]["ingredients"][0]["alpha"] == best["alpha"]
    assert entry["search"]["best_at_edge"] == (best["alpha"] == 1.0)
    code, out, err = run_cli(
        [*p, "add", "d", "m", "-o", "best2", "--search", "--grid", "0,1"], capsys
    )
    assert code == 0 and "alpha search" in out
    at_edge = two_modules.entry("best2").meta["search"]["best_at_edge"]
    assert at_edge == ("is the grid's largest: a wider grid may do better" in err)
    worst = min(entry["search"]["rows"], key=lambda r: r["mean_normalized"])["alpha"]
    grid = f"{min(worst, best['alpha'])},{max(worst, best['alpha'])}"  # best is known
    code, _, err = run_cli([*p, "add", "d", "m", "-o", "best3", "--search", "--grid", grid], capsys)
    note = f"the best alpha, {best['alpha']:g}, is the grid's largest"
    assert code == 0 and (note in err) == (best["alpha"] > worst)
    for bad in ("0:1:0", "0:1:-0.5", "0:inf:1", "a,b"):
        code, _, err = run_cli(
            [*p, "add", "d", "m", "-o", "bad", "--search", "--grid", bad], capsys
        )
        assert code == 1 and "--grid" in err and "Traceback" not in err, bad
    assert not two_modules.exists("bad")


def test_negation_search_respects_control(two_modules, capsys):
    pool = two_modules
    alpha, rows = search_negation(pool, "d", "mnist", keep=0.95, grid=GRID)
    allowed = [r for r in rows if r.allowed]
    assert all(r.control_kept >= 0.95 for r in allowed)
    assert alpha == min(allowed, key=lambda r: (r.target_accuracy, -r.control_accuracy)).alpha
    code, out, err = run_cli(
        [
            "--pool",
            str(pool.root),
            "negate",
            "d",
            "-o",
            "no-d",
            "--search",
            "--control",
            "mnist",
            "--grid",
            "0,0.5,1",
        ],
        capsys,
    )
    assert code == 0, err
    assert "negation search" in out
    assert pool.read("no-d").meta["search"]["control"] == "mnist"
    code, _, err = run_cli(["--pool", str(pool.root), "negate", "d", "-o", "x", "--search"], capsys)
    assert code == 1 and "--control" in err


@pytest.mark.parametrize("kind", ["nonlinear", "tangent"])
def test_disentanglement_map(clip_pool, tmp_path, capsys, kind):
    clip_pool.save_module("d", random_delta(clip_pool, 1, scale=0.05), "digits", kind)
    clip_pool.save_module("m", random_delta(clip_pool, 2, scale=0.05), "mnist", kind)
    png = tmp_path / "map.png"
    code, out, err = run_cli(
        [
            "--pool",
            str(clip_pool.root),
            "disentangle",
            "d",
            "m",
            "-o",
            str(png),
            "--grid",
            "-1:1:0.5",
            "--limit",
            "60",
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(png).ndim == 3
    result = json.loads(png.with_suffix(".json").read_text())
    error = torch.tensor(result["error"])
    assert error.shape == (5, 5) and result["kind"] == kind
    assert error[2, 2] == 0  # both at alpha 0: the joint and single models are the base
    assert error.max() > 0 and ((error >= 0) & (error <= 2)).all()
    # one cell by brute force: a1 = 1, a2 = -0.5
    from modpool.model.accuracy import predictions
    from modpool.model.edited import EditedModel
    from modpool.tasks.task import take

    taus = [clip_pool.read(n).tensors for n in ("d", "m")]
    expected = 0.0
    for t, (task, own) in enumerate((("digits", 1.0), ("mnist", -0.5))):
        data = take(clip_pool.task(task).load("val", 32), torch.arange(60))
        head = clip_pool.head(clip_pool.task(task))
        joint = {k: 1.0 * taus[0][k] + -0.5 * taus[1][k] for k in taus[0]}
        single = {k: own * v for k, v in taus[t].items()}
        p_joint = predictions(EditedModel(clip_pool.base, joint, kind, head), data)
        p_single = predictions(EditedModel(clip_pool.base, single, kind, head), data)
        expected += (p_joint != p_single).float().mean().item()
    assert error[4, 1].item() == pytest.approx(expected, abs=1e-6)
