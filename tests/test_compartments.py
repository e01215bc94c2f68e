"""Compartments: data sources and access labels, forgetting a source, attributing
predictions to modules, and the linearisation gap."""

import json

import pytest
import torch
from conftest import run_cli, snapshot

from modpool import ModpoolError, Pool
from modpool.interop.hub import model_card


def delta(pool: Pool, seed: int, scale: float = 1e-2) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {n: scale * torch.randn(s, generator=g) for n, (s, _) in pool.manifest.items()}


@pytest.fixture
def labelled(clip_pool) -> Pool:
    """Modules of two tasks from three sources, with access labels."""
    specs = [
        ("d-a", "digits", "hospital-a", ["a"]),
        ("d-b", "digits", "hospital-b", ["b"]),
        ("m-a", "mnist", "hospital-a", ["a"]),
        ("m-pub", "mnist", "web", ["public"]),
    ]
    for i, (name, task, source, access) in enumerate(specs):
        extra = {"source": source, "access": access}
        clip_pool.save_module(name, delta(clip_pool, i), task, "nonlinear", extra_meta=extra)
    return clip_pool


def test_access_filters_refuses_and_records(labelled, tmp_path, capsys):
    p = ["--pool", str(labelled.root)]
    code, _, err = run_cli([*p, "compose", "d-a", "d-b", "-o", "x", "--allow", "a"], capsys)
    assert code == 1 and "d-b is outside the allowed access (a)" in err
    code, out, err = run_cli([*p, "compose", "-o", "for-a", "--allow", "a", "--json"], capsys)
    assert code == 0, err
    recipe = json.loads(out)["recipe"]
    assert [i["name"] for i in recipe["ingredients"]] == ["d-a", "m-a", "m-pub"]  # public too
    assert recipe["access"] == ["a"]
    assert {i["name"]: (i["source"], i["access"]) for i in recipe["ingredients"]} == {
        "d-a": ("hospital-a", ["a"]),
        "m-a": ("hospital-a", ["a"]),
        "m-pub": ("web", ["public"]),
    }
    listed = json.loads(run_cli([*p, "list", "--allow", "b", "--json"], capsys)[1])
    assert {e["name"] for e in listed} == {"d-b", "m-pub"}  # for-a needs a's modules
    code, _, err = run_cli([*p, "eval", "for-a", "--allow", "b"], capsys)
    assert code == 1 and "outside the allowed access" in err
    code, _, err = run_cli(
        [*p, "export", "d-a", "-o", str(tmp_path / "x.safetensors"), "--allow", "b"], capsys
    )
    assert code == 1 and "d-a is outside" in err
    card = model_card(labelled, "for-a")
    assert "data source `hospital-a`" in card and "access rights `a`" in card
    code, out, _ = run_cli([*p, "show", "d-b"], capsys)
    assert "hospital-b / b" in out


def test_finetune_and_import_record_sources(clip_pool, tmp_path, capsys):
    p = ["--pool", str(clip_pool.root)]
    fast = ["--steps", "1", "--batch-size", "8", "--warmup", "1"]
    code, out, err = run_cli(
        [
            *p,
            "finetune",
            "--task",
            "digits",
            *fast,
            "--source",
            "clinic",
            "--access",
            "x,y",
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    meta = json.loads(out)
    assert meta["source"] == "clinic" and meta["access"] == ["x", "y"]
    run_cli([*p, "finetune", "--task", "mnist", *fast], capsys)
    assert clip_pool.entry("mnist").meta["source"] == "mnist"  # the task by default
    assert clip_pool.entry("mnist").access == ["public"]
    state = {k: v.clone() for k, v in clip_pool.base.model.state_dict().items()}
    torch.save(state, tmp_path / "ft.pt")
    code, _, err = run_cli(
        [
            *p,
            "import",
            str(tmp_path / "ft.pt"),
            "--task",
            "digits",
            "--name",
            "imp",
            "--source",
            "vendor",
            "--access",
            "z",
        ],
        capsys,
    )
    assert code == 0, err
    assert clip_pool.entry("imp").source == "vendor" and clip_pool.entry("imp").access == ["z"]
    code, _, err = run_cli(
        [*p, "finetune", "--task", "digits", *fast, "--access", "bad label"], capsys
    )
    assert code == 1 and "invalid access label" in err


def test_forget_by_source(labelled, capsys):
    from modpool.store.modules import save_masked_module

    keep = {n: torch.ones(s, dtype=torch.bool) for n, (s, _) in labelled.manifest.items()}
    meta = {"of": "m-a", "task": "mnist", "stored": "kept"}
    save_masked_module(
        labelled,
        "m-a@mask",
        labelled.read("m-a").tensors,
        keep,
        "mnist",
        "nonlinear",
        "nonlinear",
        meta,
    )
    labelled.compose(["d-a", "d-b", "m-pub"], "all3", "sum", 0.5)
    labelled.compose(["m-a@mask", "m-pub"], "via-mask", "ties", 1.0)
    labelled.compose(["d-a", "m-a"], "only-a", "mean")
    labelled.compose(["all3", "only-a"], "nested", "sum", 0.5)
    before = snapshot(labelled.root)
    p = ["--pool", str(labelled.root)]
    code, out, err = run_cli([*p, "forget", "--source", "hospital-a", "--dry-run"], capsys)
    assert code == 0, err
    assert "would forget source:hospital-a" in out and "would rebuild all3" in out
    assert "removed only-a" in out and snapshot(labelled.root) == before
    audit_before = len(labelled.audit_log())
    report = labelled.forget(source="hospital-a")
    assert report.modules == ["d-a", "m-a"] and report.masks == ["m-a@mask"]
    assert report.removed == ["only-a"]
    assert {r["name"] for r in report.rebuilt} == {"all3", "via-mask", "nested"}
    assert {e.name for e in labelled.entries()} == {"d-b", "m-pub", "all3", "via-mask", "nested"}
    log = labelled.audit_log()
    assert len(log) == audit_before + 1 and log[-1]["action"] == "forget-source"
    assert [f["name"] for f in log[-1]["forgotten"]] == ["d-a", "m-a"]
    for rebuilt, names, method, alpha in (
        ("all3", ["d-b", "m-pub"], "sum", 0.5),
        ("via-mask", ["m-pub"], "ties", 1.0),
    ):
        labelled.compose(names, f"fresh-{rebuilt}", method, alpha)
        a, b = labelled.read(rebuilt).tensors, labelled.read(f"fresh-{rebuilt}").tensors
        assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ModpoolError, match="no module was trained on source 'nowhere'"):
        labelled.forget(source="nowhere")
    with pytest.raises(ModpoolError, match="one of the two"):
        labelled.forget("d-b", source="web")


def test_tangent_attribution_is_exact(clip_pool):
    for i, task in enumerate(("digits", "mnist")):
        clip_pool.save_module(task, delta(clip_pool, 10 + i, 5e-2), task, "tangent")
    clip_pool.compose(["digits", "mnist"], "both", "sum", [0.7, 1.3])
    result = clip_pool.explain("both", "digits", "val", limit=40)
    assert result["method"] == "exact" and result["examples"] == 40
    for example in result["per_example"]:
        total = example["base_share"] + sum(example["shares"].values())
        assert abs(total - example["logit"]) <= 1e-5 * max(1.0, abs(example["logit"]))
    data = clip_pool.task("digits").load("val", clip_pool.base.image_size)
    images = torch.stack([data[i][0] for i in range(16)])
    logits = clip_pool.model("both", "digits")(images)
    for j, example in enumerate(result["per_example"]):
        torch.testing.assert_close(float(logits[j].max()), example["logit"], rtol=1e-4, atol=1e-4)
    assert set(result["largest_share_rate"]) == {"digits", "mnist"}
    assert abs(sum(result["largest_share_rate"].values()) - 1.0) < 1e-9


def test_leave_one_out_equals_composing_the_rest(clip_pool, capsys):
    for i, task in enumerate(("digits", "mnist")):
        clip_pool.save_module(task, delta(clip_pool, 20 + i), task, "nonlinear")
    clip_pool.compose(["digits", "mnist"], "both", "ties", 1.0, {"density": 0.5})
    result = clip_pool.explain("both", "digits", "val")
    assert result["method"] == "leave-one-out"
    clip_pool.compose(["mnist"], "rest", "ties", 1.0, {"density": 0.5})
    assert (
        result["accuracy_without"]["digits"]
        == clip_pool.evaluate("rest", ["digits"], "val")[0].accuracy
    )
    assert result["accuracy"] == clip_pool.evaluate("both", ["digits"], "val")[0].accuracy
    code, out, err = run_cli(
        [
            "--pool",
            str(clip_pool.root),
            "explain",
            "both",
            "--task",
            "digits",
            "--split",
            "val",
            "--limit",
            "20",
            "-o",
            str(clip_pool.root.parent / "e.png"),
        ],
        capsys,
    )
    assert code == 0, err
    assert "leave-one-out" in out and (clip_pool.root.parent / "e.json").exists()


def test_linearity_gap(clip_pool, capsys):
    clip_pool.save_module("lin", delta(clip_pool, 30, 5e-2), "digits", "tangent")
    clip_pool.save_module("non", delta(clip_pool, 30, 5e-2), "digits", "nonlinear")
    tangent = clip_pool.linearity("lin", limit=64)
    assert all(r["relative_logit_error"] < 1e-5 and r["agreement"] == 1.0 for r in tangent["rows"])
    nonlinear = clip_pool.linearity("non", alphas=[0.5, 1.0, 2.0, 4.0], limit=64)
    errors = [r["relative_logit_error"] for r in nonlinear["rows"]]
    assert errors == sorted(errors) and errors[0] > 0 and errors[-1] > 2 * errors[0]
    code, out, _ = run_cli(["--pool", str(clip_pool.root), "show", "non"], capsys)
    assert "linearity gap" in out
    code, out, err = run_cli(
        ["--pool", str(clip_pool.root), "linearity", "non", "--grid", "1,2", "--limit", "32"],
        capsys,
    )
    assert code == 0 and "linearisation gap" in out
    code, _, err = run_cli(
        ["--pool", str(clip_pool.root), "linearity", "non", "--limit", "0"], capsys
    )
    assert code == 2 and "--limit" in err and "Traceback" not in err


def test_explain_one_image(clip_pool, tmp_path, capsys):
    from PIL import Image

    for i, task in enumerate(("digits", "mnist")):
        clip_pool.save_module(task, delta(clip_pool, 40 + i, 5e-2), task, "tangent")
    clip_pool.compose(["digits", "mnist"], "both", "mean")
    pixels = (torch.rand(20, 24, 3, generator=torch.Generator().manual_seed(0)) * 255).byte()
    Image.fromarray(pixels.numpy()).save(tmp_path / "x.png")
    p = ["--pool", str(clip_pool.root), "explain", "both", "--task", "digits"]
    code, out, err = run_cli(
        [*p, "--image", str(tmp_path / "x.png"), "-o", str(tmp_path / "e.png"), "--json"], capsys
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["examples"] == 1 and result["method"] == "exact"
    example = result["per_example"][0]
    assert abs(example["base_share"] + sum(example["shares"].values()) - example["logit"]) < 1e-5
    assert (tmp_path / "e.png").exists() and (tmp_path / "e.json").exists()
    code, _, err = run_cli([*p, "--image", str(tmp_path / "missing.png")], capsys)
    assert code == 1 and "cannot read the image" in err
