"""Bad input: a clear one-line error, no traceback, and an unchanged pool."""

import struct

import pytest
import torch
from conftest import random_delta, run_cli, snapshot

from modpool import ModpoolError, Pool
from modpool.store.artifact import load_artifact, save_artifact


@pytest.fixture
def populated(clip_pool):
    clip_pool.save_module("a", random_delta(clip_pool, 1), "digits", "nonlinear")
    clip_pool.save_module("b", random_delta(clip_pool, 2), "mnist", "nonlinear")
    clip_pool.add(["a", "b"], "ab", 0.5)
    return clip_pool


def _fails(args, pool, capsys, *fragments):
    before = snapshot(pool.root)
    code, out, err = run_cli(["--pool", str(pool.root), *args], capsys)
    assert code == 1, (out, err)
    message = err.strip()
    assert message.startswith("error:"), err
    assert "Traceback" not in err
    assert len(message.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in message, message
    assert snapshot(pool.root) == before
    return message


def test_unknown_task(populated, capsys):
    _fails(["finetune", "--task", "nope", "--steps", "1"], populated, capsys, "unknown task 'nope'")


def test_missing_data_root(populated, capsys, tmp_path):
    _fails(["finetune", "--task", "SVHN", "--steps", "1"], populated, capsys, "--data-root")
    _fails(
        ["--data-root", str(tmp_path / "absent"), "eval", "base", "--task", "Cars"],
        populated,
        capsys,
        "does not exist",
    )
    (tmp_path / "empty").mkdir()
    _fails(
        ["--data-root", str(tmp_path / "empty"), "eval", "base", "--task", "gtsrb"],
        populated,
        capsys,
        "GTSRB data not found",
        "does not download",
    )


def test_module_from_another_base(populated, capsys, tmp_path):
    other = Pool.create(tmp_path / "other", "offline")
    other.save_module("foreign", random_delta(other, 3), "digits", "nonlinear")
    path = other.path_of("foreign")
    _fails(["import", str(path)], populated, capsys, "another base")
    # the same file dropped into the pool by hand is refused where it is used
    target = populated.root / "modules" / "foreign.safetensors"
    target.write_bytes(path.read_bytes())
    with pytest.raises(ModpoolError, match="another base"):
        populated.compose(["a", "foreign"], "x")
    assert not populated.exists("x")


def test_corrupt_and_truncated_files(populated, capsys, tmp_path):
    good = populated.path_of("a").read_bytes()
    cases = {
        "garbage": b"this is not a safetensors file at all",
        "truncated": good[: len(good) - 100],
        "short": good[:5],
        "huge-header": struct.pack("<Q", 10**15) + good[8:],
        "pickle": b"\x80\x04\x95" + b"cos\nsystem\n" * 10,
    }
    for label, data in cases.items():
        path = tmp_path / f"{label}.safetensors"
        path.write_bytes(data)
        message = _fails(["import", str(path)], populated, capsys)
        assert label in message or "safetensors" in message or "truncated" in message, message


def test_nan_in_module(populated, capsys, tmp_path):
    delta = random_delta(populated, 4)
    first = next(iter(delta))
    delta[first][0] = float("nan")
    with pytest.raises(ModpoolError, match="NaN"):
        populated.save_module("nan", delta, "digits", "nonlinear")
    meta = populated.read("a").meta
    path = tmp_path / "nan.safetensors"
    save_artifact(path, delta, {k: v for k, v in meta.items() if k != "format"})
    _fails(["import", str(path)], populated, capsys, "NaN")
    with pytest.raises(ModpoolError, match="NaN"):
        load_artifact(path)


def test_existing_output_name(populated, capsys):
    _fails(["add", "a", "b", "-o", "ab"], populated, capsys, "already exists")
    _fails(["negate", "a", "-o", "b"], populated, capsys, "already exists")
    _fails(
        ["finetune", "--task", "digits", "--name", "a", "--steps", "1"],
        populated,
        capsys,
        "already exists",
    )


def test_bad_names_and_unknown_targets(populated, capsys):
    _fails(["add", "a", "-o", "../escape"], populated, capsys, "invalid name")
    _fails(["eval", "nothing"], populated, capsys, "no module or composition named 'nothing'")
    _fails(["forget", "nothing"], populated, capsys, "nothing")
    _fails(
        ["compose", "a", "b", "-o", "c", "--method", "magic"],
        populated,
        capsys,
        "unknown merge method",
    )
    _fails(["add", "a", "b", "-o", "c", "--coef", "zzz=1"], populated, capsys, "--coef")


def test_disk_full_while_composing(populated, capsys, monkeypatch):
    """The streaming writer's thread fails mid-file: one clear line, the pool as before."""
    from modpool.store.tensorfile import TensorWriter

    def full(self, view):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(TensorWriter, "_write", full)
    _fails(["add", "a", "b", "-o", "c"], populated, capsys, "No space left on device")


def test_no_pool(tmp_path, capsys):
    code, _, err = run_cli(["--pool", str(tmp_path / "none"), "list"], capsys)
    assert code == 1 and "modpool init" in err
    assert not (tmp_path / "none").exists()


def test_load_checks_shapes_against_base(populated, tmp_path):
    meta = populated.read("a").meta
    bad = {k: torch.zeros(1) for k in list(populated.manifest)[:1]}
    path = tmp_path / "shape.safetensors"
    save_artifact(path, bad, {k: v for k, v in meta.items() if k != "format"})
    with pytest.raises(ModpoolError, match="shape"):
        populated.import_file(path)
