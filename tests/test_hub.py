"""Model cards, push (against a stand-in HfApi), pull from local snapshots, export."""

import json

import pytest
import torch
import yaml
from conftest import random_delta, run_cli, snapshot

from modpool import ModpoolError, Pool
from modpool.interop.hub import pull, stage

TOKEN = "hf_secret_token_never_written"


@pytest.fixture
def shared(clip_pool):
    clip_pool.save_module(
        "d",
        random_delta(clip_pool, 1),
        "digits",
        "nonlinear",
        hparams={"lr": 1e-5, "batch_size": 128},
    )
    clip_pool.save_module("m", random_delta(clip_pool, 2), "mnist", "nonlinear")
    clip_pool.save_module("t", random_delta(clip_pool, 3), "digits", "tangent")
    clip_pool.add(["d", "m"], "dm", alpha=0.4)
    clip_pool.evaluate("dm", split="test")
    return clip_pool


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_module_card_fields(shared, tmp_path):
    folder = stage(shared, "d", tmp_path / "repo")
    card = (folder / "README.md").read_text()
    front = _front_matter(card)
    assert front["library_name"] == "modpool"
    assert front["base_model_relation"] == "adapter"
    assert {"modpool", "task-vector", "digits"} <= set(front["tags"])
    assert "tangent" not in front["tags"]
    assert "base_model" not in front  # the random tiny base has no Hub id
    assert shared.fingerprint in card and '"lr": 1e-05' in card
    assert 'pool.model("d", task="digits")' in card
    manifest = json.loads((folder / "modpool.json").read_text())
    assert manifest["order"] == ["d"] and manifest["base_fingerprint"] == shared.fingerprint
    assert (
        stage(shared, "t", tmp_path / "t").joinpath("README.md").read_text().count("tangent") >= 2
    )
    assert "tangent" in _front_matter((tmp_path / "t" / "README.md").read_text())["tags"]


def test_composition_card_and_folder(shared, tmp_path):
    folder = stage(shared, "dm", tmp_path / "repo")
    front = _front_matter((folder / "README.md").read_text())
    assert front["base_model_relation"] == "merge"
    results = front["model-index"][0]["results"]
    accs = {r["dataset"]["name"]: r["metrics"][0]["value"] for r in results}
    expected = {r.task: round(r.accuracy, 4) for r in shared.evaluate("dm", split="test")}
    assert accs == expected
    assert '"alpha": 0.4' in (folder / "README.md").read_text()
    manifest = json.loads((folder / "modpool.json").read_text())
    assert manifest["order"] == ["d", "m", "dm"]
    assert sorted(p.name for p in (folder / "artifacts").iterdir()) == [
        "d.safetensors",
        "dm.safetensors",
        "m.safetensors",
    ]


def test_push_uses_hub_api_and_never_writes_the_token(shared, monkeypatch, capsys):
    calls = {}

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            calls["create"] = (repo_id, kwargs)

        def upload_folder(self, **kwargs):
            from pathlib import Path

            folder = Path(kwargs["folder_path"])
            calls["files"] = sorted(
                str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()
            )
            calls["contents"] = b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())
            calls["upload"] = kwargs

            class Info:
                commit_url = "https://huggingface.co/me/dm/commit/abc"

            return Info()

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    code, out, err = run_cli(
        [
            "--pool",
            str(shared.root),
            "push",
            "dm",
            "--repo",
            "me/dm",
            "--private",
            "--token",
            TOKEN,
        ],
        capsys,
    )
    assert code == 0, err
    assert calls["create"] == ("me/dm", {"token": TOKEN, "private": True, "exist_ok": True})
    assert calls["upload"]["repo_id"] == "me/dm" and calls["upload"]["token"] == TOKEN
    assert calls["files"] == [
        "README.md",
        "artifacts/d.safetensors",
        "artifacts/dm.safetensors",
        "artifacts/m.safetensors",
        "modpool.json",
    ]
    assert TOKEN.encode() not in calls["contents"]
    assert TOKEN not in out + err
    assert all(TOKEN.encode() not in (shared.root / p).read_bytes() for p in snapshot(shared.root))
    code, _, err = run_cli(
        ["--pool", str(shared.root), "push", "dm", "--repo", "not-a-repo"], capsys
    )
    assert code == 1 and "USER/REPO" in err


def test_pull_from_local_snapshot(shared, tmp_path):
    folder = stage(shared, "dm", tmp_path / "snap")
    other = Pool.create(tmp_path / "other", "tiny-clip")
    assert pull(other, str(folder)) == ["d", "m", "dm"]
    assert other.read("dm").sha256 == shared.read("dm").sha256
    assert pull(other, str(folder)) == []  # idempotent
    report = other.forget("m")  # the pulled composition is a full citizen
    assert [r["name"] for r in report.rebuilt] == ["dm"]


def test_pull_refuses_other_base_and_tampering(shared, tmp_path, capsys):
    folder = stage(shared, "dm", tmp_path / "snap")
    offline = Pool.create(tmp_path / "offline", "offline")
    before = snapshot(offline.root)
    with pytest.raises(ModpoolError, match="base"):
        pull(offline, str(folder))
    assert snapshot(offline.root) == before

    other = Pool.create(tmp_path / "other", "tiny-clip")
    before = snapshot(other.root)
    target = folder / "artifacts" / "m.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    code, _, err = run_cli(["--pool", str(other.root), "pull", str(folder)], capsys)
    assert code == 1 and "tampered" in err
    assert snapshot(other.root) == before
    manifest = json.loads((folder / "modpool.json").read_text())
    manifest["files"]["m"]["path"] = "../../etc/passwd"
    (folder / "modpool.json").write_text(json.dumps(manifest))
    with pytest.raises(ModpoolError, match="not a file inside"):
        pull(other, str(folder))
    assert snapshot(other.root) == before


def test_pull_offline_hub_gives_clear_error(clip_pool, capsys):
    code, _, err = run_cli(["--pool", str(clip_pool.root), "pull", "someone/nothing"], capsys)
    assert code == 1 and "could not download someone/nothing" in err


def test_export_loads_in_open_clip_with_same_outputs(shared, tmp_path, capsys):
    import open_clip

    path = tmp_path / "merged.safetensors"
    code, _, err = run_cli(["--pool", str(shared.root), "export", "dm", "-o", str(path)], capsys)
    assert code == 0, err
    model = open_clip.create_model("modpool-tiny-clip", pretrained=str(path)).eval()
    x = torch.rand(4, 3, 32, 32)
    ours = shared.model("dm").features(x)
    with torch.no_grad():
        theirs = model.encode_image(shared.base.prepare(x))
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(theirs, shared.model("base").features(x))
    code, _, err = run_cli(
        ["--pool", str(shared.root), "export", "t", "-o", str(tmp_path / "t.safetensors")], capsys
    )
    assert code == 1 and "linearised" in err and not (tmp_path / "t.safetensors").exists()
