"""The field's fine-tuned checkpoints as modules, tasks as names, open_clip's spellings.

Every format is made here from the tiny open_clip config (no network): each imports back to
the delta it was made from, and hostile or foreign files are refused with one line while
the pool stays as it was.
"""

import copy
import json
import os
import pickle
import shutil
import sys
import types
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import run_cli, snapshot
from safetensors.torch import save_file

from modpool import ModpoolError, Pool
from modpool.store.layout import default_module_name

TOL = 1e-6


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imports") / "pool"
    Pool.create(root, "tiny-clip")
    return root


@pytest.fixture
def pool(template, tmp_path) -> Pool:
    shutil.copytree(template, tmp_path / "pool")
    return Pool(tmp_path / "pool")


def make_delta(pool: Pool, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        n: 1e-3 * torch.randn(p.shape, generator=generator)
        for n, p in pool.base.tower.named_parameters()
    }


def fine_tuned_clip(pool: Pool, delta: dict) -> dict[str, torch.Tensor]:
    """The full open_clip state dict of the base with `delta` added to its image tower."""
    state = {k: v.clone() for k, v in pool.base.model.state_dict().items()}
    for name, d in delta.items():
        state[f"visual.{name}"] += d
    return state


def imported_delta(pool: Pool, name: str) -> dict[str, torch.Tensor]:
    return pool.read(name).tensors


def assert_same(found: dict, delta: dict) -> None:
    assert set(found) == set(delta)
    assert max(float((found[k] - delta[k]).abs().max()) for k in delta) < TOL


def task_vectors_pickle(pool: Pool, delta: dict, path: Path) -> None:
    """`torch.save` of a whole task-vectors `ImageEncoder`, whose module (`src.modeling`)
    and old open_clip class name (`VisualTransformer`) no longer exist when it is read."""
    import torchvision.transforms as T

    src, modeling = types.ModuleType("src"), types.ModuleType("src.modeling")
    legacy = types.ModuleType("open_clip.legacy_model")

    class ImageEncoder(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model, self.cache_dir = model, "/data/cache"
            self.val_preprocess = T.Compose(
                [T.Resize(32, interpolation=T.InterpolationMode.BICUBIC), T.ToTensor()]
            )

    tower_class = type(pool.base.tower)
    visual = type("VisualTransformer", (tower_class,), {"__module__": legacy.__name__})
    ImageEncoder.__module__, ImageEncoder.__qualname__ = modeling.__name__, "ImageEncoder"
    modeling.ImageEncoder, src.modeling, legacy.VisualTransformer = ImageEncoder, modeling, visual
    added = {"src": src, "src.modeling": modeling, legacy.__name__: legacy}
    sys.modules.update(added)
    try:
        model = copy.deepcopy(pool.base.model)
        del model.transformer  # keep_lang=False, as the task-vectors code does
        model.visual.__class__ = visual
        with torch.no_grad():
            for name, p in model.visual.named_parameters():
                p += delta[name]
        torch.save(ImageEncoder(model), path)
    finally:
        for key in added:
            del sys.modules[key]
    assert "src.modeling" not in sys.modules


def linearised_checkpoint(pool: Pool, delta: dict, path: Path, classic: bool = False) -> None:
    """A tangent-task-arithmetic `LinearizedImageEncoder` state dict: `params`/`params0`
    lists in the model's parameter order (image tower first, then what is left of the text
    tower); `classic` uses the order of older open_clip versions (projection last)."""
    tower = dict(pool.base.tower.named_parameters())
    order = list(tower)
    if classic:
        late = ["class_embedding", "positional_embedding", "proj"]
        rest = [n for n in order if n not in (*late, "conv1.weight")]
        order = ["conv1.weight", *late[:2], *rest, "proj"]
    extra = [torch.zeros(5), torch.ones(3)]  # ln_final, logit_scale, ...
    params0 = [tower[n].detach().clone() for n in order] + extra
    params = [tower[n].detach() + delta[n] for n in order] + extra
    state = {f"model.params0.{i}": p for i, p in enumerate(params0)}
    state |= {f"model.params.{i}": p for i, p in enumerate(params)}
    torch.save(state | {"model_name": "ViT-tiny"}, path)


# ---- every format --------------------------------------------------------------------


def test_every_format_imports_its_delta(pool, tmp_path):
    delta = make_delta(pool, 0)
    full = fine_tuned_clip(pool, delta)
    files = {
        "oc-safetensors": tmp_path / "ft.safetensors",
        "oc-pt": tmp_path / "ft.pt",
        "tower-bin": tmp_path / "tower.bin",
        "tv": tmp_path / "tv.pt",
        "lin": tmp_path / "linear.pt",
        "lin-old": tmp_path / "linear-old.pt",
    }
    save_file({f"model.{k}": v.contiguous() for k, v in full.items()}, files["oc-safetensors"])
    torch.save(full, files["oc-pt"])
    tower_only = {f"module.{k}": v for k, v in full.items() if k.startswith("visual.")}
    torch.save({"epoch": 2, "state_dict": tower_only}, files["tower-bin"])
    task_vectors_pickle(pool, delta, files["tv"])
    linearised_checkpoint(pool, delta, files["lin"])
    linearised_checkpoint(pool, delta, files["lin-old"], classic=True)
    for name, path in files.items():
        pool.import_checkpoint(path, "digits", name)
        assert_same(imported_delta(pool, name), delta)
    formats = {n: pool.entry(n).meta["imported_from"]["format"] for n in files}
    assert formats["tv"] == "pickled model (src.modeling.ImageEncoder)"
    assert formats["lin"].startswith("linearised model")
    assert pool.entry("lin").kind == "tangent" and pool.entry("oc-pt").kind == "nonlinear"
    info = pool.entry("oc-pt").meta["imported_from"]
    assert info["sha256"] == __import__("hashlib").sha256(files["oc-pt"].read_bytes()).hexdigest()
    assert info["dropped"]["text tower"] > 0 and info["dropped"]["logit scale"] == 1
    assert 0 < info["distance"] < 0.05
    # imported modules compose like any other
    pool.compose(["oc-pt", "tv"], "both", "sum", 0.5)
    both = imported_delta(pool, "both")
    assert max(float((both[k] - delta[k]).abs().max()) for k in delta) < TOL


def test_hugging_face_folder_round_trip(pool, tmp_path):
    delta = make_delta(pool, 1)
    pool.save_module("mine", delta, "digits", "nonlinear")
    folder = pool.export("mine", tmp_path / "hf", "hf")
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["CLIPVisionModelWithProjection"]
    assert config["hidden_act"] == "gelu" and config["num_hidden_layers"] == 2
    pool.import_checkpoint(folder, "digits", "back")
    assert pool.entry("back").meta["imported_from"]["format"] == "Hugging Face CLIP"
    assert_same(imported_delta(pool, "back"), delta)


def test_hf_export_gives_the_open_clip_features(pool, tmp_path):
    transformers = pytest.importorskip("transformers")
    import open_clip

    pool.save_module("mine", make_delta(pool, 2), "digits", "nonlinear")
    folder = pool.export("mine", tmp_path / "hf", "hf")
    plain = pool.export("mine", tmp_path / "plain.safetensors")
    hf = transformers.CLIPVisionModelWithProjection.from_pretrained(folder).eval()
    oc = open_clip.create_model("modpool-tiny-clip", pretrained=str(plain)).eval()
    x = pool.base.prepare(torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        theirs, ours = hf(pixel_values=x).image_embeds, oc.encode_image(x)
    assert float((theirs - ours).norm() / ours.norm()) < 1e-5


# ---- names ---------------------------------------------------------------------------


def test_tasks_address_modules(pool, capsys):
    pool.save_module("cars-module", make_delta(pool, 0), "digits", "nonlinear")
    assert pool.resolve("digits") == "cars-module"  # the task's one module
    pool.save_module("digits", make_delta(pool, 1), "mnist", "nonlinear")
    assert pool.resolve("digits") == "digits"  # a module's own name wins over a task
    assert pool.resolve("mnist") == "digits"
    pool.save_module("second", make_delta(pool, 2), "digits", "tangent")
    pool.save_module("third", make_delta(pool, 3), "mnist", "nonlinear")
    with pytest.raises(ModpoolError, match="task 'mnist' has 2 modules: digits, third"):
        pool.resolve("mnist")
    p = ["--pool", str(pool.root)]
    code, out, _ = run_cli([*p, "show", "MNIST", "--json"], capsys)  # another task, no module
    assert code == 1
    pool.compose(["cars-module", "third"], "c")
    code, out, err = run_cli([*p, "forget", "third", "--json"], capsys)
    assert code == 0, err
    rows = json.loads(run_cli([*p, "eval", "mnist", "--split", "val", "--json"], capsys)[1])
    assert rows[0]["target"] == "digits" and rows[0]["normalized"] == 1.0
    code, out, err = run_cli([*p, "forget", "nosuch"], capsys)
    assert code == 1 and "no module or composition named 'nosuch'" in err


def test_default_names_never_overwrite():
    taken = {"cars", "cars-tangent"}
    assert default_module_name("cars", "nonlinear", taken.__contains__) == "cars-nonlinear"
    assert default_module_name("cars", "tangent", taken.__contains__) == "cars-tangent-2"
    assert default_module_name("folder:/data/my set", "tangent", taken.__contains__) == "my-set"


def test_init_takes_open_clip_spellings(tmp_path, capsys, monkeypatch):
    code, out, err = run_cli(
        [
            "--pool",
            str(tmp_path / "a"),
            "init",
            "--base",
            "modpool-tiny-clip",
            "--pretrained",
            "none",
        ],
        capsys,
    )
    assert code == 0, err
    assert Pool(tmp_path / "a").config["base"] == "openclip:modpool-tiny-clip:none"
    code, _, err = run_cli(["--pool", str(tmp_path / "b"), "init", "--base", "ViT-B/32"], capsys)
    assert code == 1 and "--pretrained" in err and "openai" in err
    code, _, err = run_cli(
        ["--pool", str(tmp_path / "c"), "init", "--base", "hf-hub:someone/tiny"], capsys
    )
    assert code == 1 and "could not load hf-hub:someone/tiny" in err and "\n" not in err.strip()
    assert not (tmp_path / "c" / "pool.json").exists()
    # the real open_clip Hub path, served from a Hugging Face cache made here
    cache = tmp_path / "hf-cache"
    repo = cache / "models--someone--tiny"
    snap = repo / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    cfg_file = Path(__import__("modpool").__file__).parent / "bases/configs/modpool-tiny-clip.json"
    config = {"model_cfg": json.loads(cfg_file.read_text()), "preprocess_cfg": {}}
    (snap / "open_clip_config.json").write_text(json.dumps(config))
    torch.save(Pool(tmp_path / "a").base.model.state_dict(), snap / "open_clip_pytorch_model.bin")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    made = Pool.create(tmp_path / "d", "hf-hub:someone/tiny")
    assert made.config["base"] == "openclip:hf-hub:someone/tiny"
    assert made.fingerprint == Pool(tmp_path / "a").fingerprint


def test_openai_style_weights_get_quickgelu(tmp_path, monkeypatch):
    from open_clip import pretrained

    from modpool.bases.openclip import register_configs

    register_configs()
    donor = Pool.create(tmp_path / "donor", "tiny-clip")
    weights = tmp_path / "w.pt"
    torch.save(donor.base.model.state_dict(), weights)
    tags = {"quick": pretrained._pcfg(file=str(weights), quick_gelu=True)}
    monkeypatch.setitem(pretrained._PRETRAINED, "modpool-tiny-clip", tags)
    pool = Pool.create(tmp_path / "pool", "modpool-tiny-clip", pretrained="quick")
    assert "QuickGELU" in {type(m).__name__ for m in pool.base.tower.modules()}
    task_vectors_pickle(donor, make_delta(donor, 0), tmp_path / "tv.pt")  # a GELU model
    entry = pool.import_checkpoint(tmp_path / "tv.pt", "digits")[0]
    notes = entry.meta["imported_from"]["notes"]
    assert len(notes) == 1 and "gelu" in notes[0] and "quick_gelu" in notes[0]


# ---- batches, dry runs, the Hub ---------------------------------------------------------


def test_batch_folder_imports_all_or_none(pool, tmp_path, capsys):
    layout = tmp_path / "checkpoints"
    deltas = {"mnist": make_delta(pool, 1), "mnist-tangent": make_delta(pool, 2)}
    deltas["svhn"] = make_delta(pool, 3)
    (layout / "MNISTVal").mkdir(parents=True)
    (layout / "SVHN").mkdir()
    torch.save(fine_tuned_clip(pool, deltas["mnist"]), layout / "MNISTVal/nonlinear_finetuned.pt")
    linearised_checkpoint(pool, deltas["mnist-tangent"], layout / "MNISTVal/linear_finetuned.pt")
    task_vectors_pickle(pool, deltas["svhn"], layout / "SVHN/finetuned.pt")
    (layout / "SVHN/zeroshot.pt").write_bytes(b"ignored")
    (layout / "GTSRB").mkdir()
    (layout / "GTSRB/finetuned.pt").write_bytes((layout / "SVHN/finetuned.pt").read_bytes()[:999])
    before = snapshot(pool.root)
    p = ["--pool", str(pool.root)]
    code, _, err = run_cli([*p, "import", str(layout)], capsys)
    assert code == 1 and "GTSRB" not in err and "damaged or truncated" in err
    assert snapshot(pool.root) == before  # all or none
    (layout / "GTSRB/finetuned.pt").unlink()
    (layout / "Foo").mkdir()
    (layout / "Foo/finetuned.pt").write_bytes(b"x")
    code, _, err = run_cli([*p, "import", str(layout)], capsys)
    assert code == 1 and "Foo" in err and "--skip-unknown" in err
    code, out, err = run_cli([*p, "import", str(layout), "--dry-run", "--skip-unknown"], capsys)
    assert code == 0, err
    assert "nothing written" in out and "linearised" in out and snapshot(pool.root) == before
    code, out, err = run_cli([*p, "import", str(layout), "--skip-unknown"], capsys)
    assert code == 0, err
    assert {e.name: e.kind for e in pool.entries()} == {
        "mnist": "nonlinear",
        "mnist-tangent": "tangent",
        "svhn": "nonlinear",
    }
    for name, delta in deltas.items():
        assert_same(imported_delta(pool, name), delta)
    assert pool.entry("svhn").meta["task"] == "SVHN"
    assert [r["action"] for r in pool.audit_log()].count("import") == 3


def test_pull_a_fine_tuned_model_repository(pool, tmp_path, capsys):
    delta = make_delta(pool, 4)
    pool.save_module("mine", delta, "digits", "nonlinear")
    folder = pool.export("mine", tmp_path / "repo", "hf")
    p = ["--pool", str(pool.root)]
    code, _, err = run_cli([*p, "pull", str(folder)], capsys)
    assert code == 1 and "--task" in err
    code, out, err = run_cli([*p, "pull", str(folder), "--task", "mnist"], capsys)
    assert code == 0, err
    assert out.strip() == "imported mnist"
    assert_same(imported_delta(pool, "mnist"), delta)
    assert pool.entry("mnist").meta["imported_from"]["hub"] == str(folder)


# ---- hostile and foreign files ----------------------------------------------------------


class _System:
    def __reduce__(self):
        return (os.system, ("touch /tmp/modpool-import-pwned",))


class _Eval:
    def __reduce__(self):
        return (eval, ("open('/tmp/modpool-import-pwned-2', 'w')",))


def _pickle_zip(path: Path, payload) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"state_dict": payload}, protocol=2))
        z.writestr("archive/version", "3\n")
    return path


def test_hostile_and_foreign_checkpoints_are_refused(pool, tmp_path, capsys):
    import open_clip

    good = tmp_path / "good.pt"
    torch.save(fine_tuned_clip(pool, make_delta(pool, 0)), good)
    other_seed = {
        k: torch.randn_like(v) if v.is_floating_point() else v for k, v in torch.load(good).items()
    }
    torch.save(other_seed, tmp_path / "other-pretraining.pt")
    torch.save(open_clip.create_model("ViT-B-16").visual.state_dict(), tmp_path / "b16.pt")
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[:5000])
    cases = {
        _pickle_zip(tmp_path / "system.pt", _System()): "global posix.system",
        _pickle_zip(tmp_path / "eval.pt", _Eval()): "global builtins.eval",
        tmp_path / "truncated.pt": "damaged or truncated",
        tmp_path / "other-pretraining.pt": "another pretraining of the same architecture",
        tmp_path / "b16.pt": "seems to belong to an open_clip ViT (width 768, 12 layers, patch 16",
    }
    before = snapshot(pool.root)
    p = ["--pool", str(pool.root)]
    for path, expected in cases.items():
        code, out, err = run_cli([*p, "import", str(path), "--task", "digits"], capsys)
        assert code == 1 and expected in err, err
        assert err.startswith("error:") and len(err.strip().splitlines()) == 1
    code, _, err = run_cli([*p, "import", str(good), "--task", "no-such-task"], capsys)
    assert code == 1 and "unknown task 'no-such-task'" in err
    code, _, err = run_cli([*p, "import", str(good)], capsys)
    assert code == 1 and "--task" in err
    assert snapshot(pool.root) == before
    assert not Path("/tmp/modpool-import-pwned").exists()
    assert not Path("/tmp/modpool-import-pwned-2").exists()
    code, out, err = run_cli([*p, "import", str(good), "--task", "digits", "--dry-run"], capsys)
    assert code == 0 and "would import" in out and snapshot(pool.root) == before


def test_timm_checkpoint_into_a_timm_pool(offline_pool, tmp_path):
    """A timm run of the offline base (classifier head, DDP prefix) imports as a module."""
    tower = offline_pool.base.tower
    generator = torch.Generator().manual_seed(0)
    delta = {
        n: 1e-4 * torch.randn(p.shape, generator=generator) for n, p in tower.named_parameters()
    }
    state = {f"module.{k}": v.clone() for k, v in tower.state_dict().items()}
    for name, d in delta.items():
        state[f"module.{name}"] += d
    state["module.classifier.weight"] = torch.zeros(10, 1280)
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "run.pth")
    entry = offline_pool.import_checkpoint(tmp_path / "run.pth", "digits", "timm-run")[0]
    info = entry.meta["imported_from"]
    assert info["mapped"] == len(delta) and info["notes"] == []
    assert info["dropped"] == {"heads": 1, "batch-norm statistics": 147}
    back = offline_pool.read("timm-run").tensors
    assert max(float((back[n] - delta[n]).abs().max()) for n in delta) < 1e-6
    stats = next(k for k in state if k.endswith("running_mean"))
    state[stats] = state[stats] + 1.0
    torch.save(state, tmp_path / "run2.pt")
    notes = offline_pool.import_checkpoint(tmp_path / "run2.pt", "digits", "timm-run2")[0].meta
    assert "BatchNorm statistics differ" in notes["imported_from"]["notes"][0]
