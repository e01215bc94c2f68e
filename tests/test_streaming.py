"""Streaming composition, the tensor-file reader and writer, and compact modules."""

import errno
import fcntl
import hashlib
import os

import pytest
import torch
from conftest import random_delta, run_cli, snapshot
from safetensors.torch import load_file

from modpool import ModpoolError
from modpool.edit.merge import get_method
from modpool.edit.merge.base import MemorySource
from modpool.edit.merge.trim import global_threshold, threshold
from modpool.store import tensorfile
from modpool.store.artifact import load_artifact_bytes
from modpool.store.encoding import Storage
from modpool.store.tensorfile import TensorFile, TensorWriter

METHODS = [
    ("sum", {}),
    ("mean", {}),
    ("ties", {}),
    ("ties", {"trim": "global", "density": 0.3}),
    ("magnitude", {"trim": "global"}),
    ("dare", {"drop": 0.5}),
    ("dare", {"drop": 0.5, "merge": "ties", "density": 0.4, "trim": "global"}),
]


def _save(pool, count, seed=0):
    deltas = {}
    for i in range(count):
        deltas[f"m{i}"] = random_delta(pool, seed + i)
        pool.save_module(
            f"m{i}", deltas[f"m{i}"], ("mnist", "animals", "digits")[i % 3], "nonlinear"
        )
    return deltas


@pytest.mark.parametrize("method,params", METHODS)
def test_streamed_compose_equals_in_memory_merge(clip_pool, method, params):
    deltas = _save(clip_pool, 3)
    alphas = [0.7, -0.2, 1.1]
    clip_pool.compose(list(deltas), "c", method, alphas, params, seed=5)
    got = clip_pool.read("c").tensors
    expected = get_method(method, 5, **params).merge(list(deltas.values()), alphas)
    assert set(got) == set(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_global_threshold_is_exact():
    generator = torch.Generator().manual_seed(0)
    delta = {
        "a": torch.randn(300, generator=generator),
        "b": torch.randn(7, 11, generator=generator).round(decimals=1),  # many ties
        "c": torch.zeros(50),
    }
    flat = torch.cat([v.flatten() for v in delta.values()])
    for density in (0.01, 0.2, 0.5, 0.77, 0.99, 1.0):
        assert global_threshold(MemorySource(delta), density) == threshold(flat, density)


WRITTEN = {
    "w": torch.randn(50, 30),  # 6,000 bytes: crosses the small test chunks below
    "h": torch.randn(4).to(torch.bfloat16),
    "i": torch.arange(6, dtype=torch.int32),
    "m": torch.tensor([1, 2, 255], dtype=torch.uint8),
    "e": torch.zeros(0),
}
CODES = {"w": "F32", "h": "BF16", "i": "I32", "m": "U8", "e": "F32"}
PLAN = [(k, CODES[k], list(v.shape)) for k, v in WRITTEN.items()]


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of two blocks, so that tensors and the header span several of them and the
    pipeline wraps around its chunks many times."""
    monkeypatch.setattr(TensorWriter, "CHUNK", 2 * 4096)
    monkeypatch.setattr(TensorWriter, "CHUNKS", 2)


def _write_all(path, meta=None):
    with open(path, "wb") as f:
        writer = TensorWriter(f, PLAN, meta or {})
        for key in writer.order:
            writer.write(key, WRITTEN[key])
        digest = writer.finish()
        flags = fcntl.fcntl(f.fileno(), fcntl.F_GETFL)
    assert not flags & getattr(os, "O_DIRECT", 0)  # the file is left in ordinary mode
    return digest


@pytest.mark.parametrize("direct", [True, False])
def test_writer_output_is_plain_safetensors(tmp_path, small_chunks, monkeypatch, direct):
    monkeypatch.setattr(TensorWriter, "DIRECT", direct)
    meta = {"note": "written front to back", "pad": "x" * 9000}  # a header over one chunk
    path = tmp_path / "f.safetensors"
    threads = torch.get_num_threads()
    with open(path, "wb") as f:
        writer = TensorWriter(f, PLAN, meta)
        assert writer.order == ["e", "i", "w", "h", "m"]  # larger items first, then by name
        with pytest.raises(ModpoolError, match="expected .e."):
            writer.write("w", WRITTEN["w"])
        for key in writer.order:
            writer.write(key, WRITTEN[key])
        digest = writer.finish()
    assert torch.get_num_threads() == threads
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert path.stat().st_size == writer.size  # no padding left from whole-block writes
    loaded = load_file(path)
    assert all(torch.equal(loaded[k], v) for k, v in WRITTEN.items())
    with TensorFile.open(path) as file:
        assert file.raw_meta == meta
        assert torch.equal(file.raw("w"), WRITTEN["w"])
        file.release("w")
        assert torch.equal(file.raw("w"), WRITTEN["w"])  # pages come back from the file
    with open(tmp_path / "g", "wb") as f, TensorWriter(f, PLAN, meta) as writer:
        with pytest.raises(ModpoolError, match="never written"):
            writer.finish()


def test_writer_falls_back_to_ordinary_writes(tmp_path, small_chunks, monkeypatch):
    """A file system that accepts O_DIRECT but refuses the writes (EINVAL) gets ordinary
    writes instead, from the first refused chunk on, and the same bytes."""
    direct = getattr(os, "O_DIRECT", 0)
    refused = []

    def picky(fd, view, offset):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & direct:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        real(fd, view, offset)

    real = tensorfile._pwrite_all
    expected = _write_all(tmp_path / "plain.safetensors")
    monkeypatch.setattr(tensorfile, "_pwrite_all", picky)
    assert _write_all(tmp_path / "f.safetensors") == expected
    if not direct or not refused:
        pytest.skip("no direct I/O on this system or file system")
    assert refused == [0]
    assert (tmp_path / "f.safetensors").read_bytes() == (
        tmp_path / "plain.safetensors"
    ).read_bytes()


def test_compact_encoding_round_trip():
    generator = torch.Generator().manual_seed(1)
    value = torch.randn(40, 50, generator=generator)
    for density, role in ((0.2, "mask/"), (0.01, "index/")):
        storage = Storage("bf16", density)
        stored = storage.encode("w", value)
        assert set(stored) == {"values/w", f"{role}w"}
        k = storage.kept(value.numel())
        assert stored["values/w"].numel() == k
        data = _file(stored)
        decoded = load_artifact_bytes(data, "x", {"w": ([40, 50], "float32")}).tensors["w"]
        top = value.abs().flatten().topk(k).indices
        kept = torch.zeros(value.numel())
        kept[top] = value.flatten()[top].to(torch.bfloat16).float()
        assert torch.equal(decoded.flatten(), kept)
    dense = Storage("fp16").encode("w", value)
    assert list(dense) == ["w"] and dense["w"].dtype == torch.float16
    # tiny tensors stay dense: their sparse form would not be smaller
    assert list(Storage("bf16", 0.9).encode("b", torch.randn(4))) == ["b"]


def _file(tensors, meta=None):
    from modpool.store.artifact import to_bytes

    meta = meta or {
        "type": "module",
        "kind": "nonlinear",
        "mode": "nonlinear",
        "task": "t",
        "base": "b",
        "base_fingerprint": "f",
    }
    return to_bytes(tensors, meta)


@pytest.mark.parametrize(
    "tamper,message",
    [
        (lambda t: t.__setitem__("mask/w", torch.zeros_like(t["mask/w"])), "disagree"),
        (lambda t: t.__setitem__("w", torch.zeros(40, 50)), "inconsistently"),
        (lambda t: t.__setitem__("values/w", t["values/w"].int()), "dtype"),
        (lambda t: t.pop("mask/w"), "inconsistently"),
        (lambda t: t.__setitem__("mask/w", t["mask/w"][:-1]), "wrong size"),
    ],
)
def test_hostile_compact_files_are_refused(tamper, message):
    tensors = Storage("bf16", 0.2).encode("w", torch.randn(40, 50))
    tamper(tensors)
    with pytest.raises(ModpoolError, match=message):
        load_artifact_bytes(_file(tensors), "x", {"w": ([40, 50], "float32")})


@pytest.mark.parametrize("bad", ["unsorted", "range", "count"])
def test_hostile_indices_are_refused(bad):
    tensors = Storage("fp16", 0.01).encode("w", torch.randn(40, 50))
    index = tensors["index/w"]
    if bad == "unsorted":
        tensors["index/w"] = index.flip(0)
    elif bad == "range":
        tensors["index/w"] = index + 2000
    else:
        tensors["index/w"] = index[:-1]
    with pytest.raises(ModpoolError, match="invalid positions"):
        load_artifact_bytes(_file(tensors), "x", {"w": ([40, 50], "float32")})


def test_compact_module_in_the_pool(clip_pool, capsys):
    deltas = _save(clip_pool, 2)
    code, out, err = run_cli(
        ["--pool", str(clip_pool.root), "compact", "m0", "-o", "m0-small", "--density", "0.2"],
        capsys,
    )
    assert code == 0, err
    dense = clip_pool.entry("m0").path.stat().st_size
    small = clip_pool.entry("m0-small").path.stat().st_size
    assert small <= 0.15 * dense  # bf16 values + a 1-bit mask: about 13% of fp32
    meta = clip_pool.entry("m0-small").meta
    assert meta["storage"] == {"dtype": "bf16", "density": 0.2}
    assert meta["compacted_from"]["name"] == "m0" and meta["task"] == "mnist"
    # the compact module composes like any other, with exactly its kept entries
    clip_pool.add(["m0-small", "m1"], "sum", alpha=1.0)
    got = clip_pool.read("sum").tensors
    small_tensors = clip_pool.read("m0-small").tensors
    for key in deltas["m0"]:
        assert torch.equal(got[key], small_tensors[key] + deltas["m1"][key])
        nonzero = (small_tensors[key] != 0).float().mean()
        assert nonzero <= 0.2 + 1 / small_tensors[key].numel() + 1e-6
    # compositions cannot be compacted; bad settings fail before anything is written
    before = snapshot(clip_pool.root)
    for args, message in (
        (["compact", "sum", "-o", "x"], "is a composition"),
        (["compact", "m1", "-o", "x", "--dtype", "int8"], "unknown storage dtype"),
        (["compact", "m1", "-o", "x", "--density", "0"], "density must be in"),
        (["compose", "m0", "m1", "-o", "x", "--dtype", "fp8"], "unknown storage dtype"),
    ):
        code, out, err = run_cli(["--pool", str(clip_pool.root), *args], capsys)
        assert code != 0 and message in err + out, (args, err)
        assert "Traceback" not in err
    assert snapshot(clip_pool.root) == before


def test_compose_dtype_and_forget_keep_storage(clip_pool):
    deltas = _save(clip_pool, 3)
    clip_pool.compose(list(deltas), "half", "sum", 0.5, dtype="bf16")
    stored = clip_pool.read("half")
    assert stored.meta["dtype"] == "bfloat16"
    for key in deltas["m0"]:
        expected = sum(0.5 * d[key] for d in deltas.values())
        assert torch.equal(stored.tensors[key], expected.to(torch.bfloat16).float())
    clip_pool.forget("m2")
    rebuilt = clip_pool.read("half")
    assert rebuilt.meta["recipe"]["storage"] == {"dtype": "bf16", "density": 1.0}
    for key in deltas["m0"]:
        expected = 0.5 * deltas["m0"][key] + 0.5 * deltas["m1"][key]
        assert torch.equal(rebuilt.tensors[key], expected.to(torch.bfloat16).float())


def test_finetune_stores_compact_module(clip_pool, capsys):
    code, out, err = run_cli(
        [
            "--pool",
            str(clip_pool.root),
            "finetune",
            "--task",
            "digits",
            "--steps",
            "1",
            "--batch-size",
            "4",
            "--dtype",
            "fp16",
            "--density",
            "0.5",
        ],
        capsys,
    )
    assert code == 0, err
    meta = clip_pool.entry("digits").meta
    assert meta["dtype"] == "float16" and meta["storage"]["density"] == 0.5
    tensors = clip_pool.read("digits").tensors
    assert all(t.dtype == torch.float32 for t in tensors.values())


def test_hash_cache_reuses_and_notices_changes(clip_pool, monkeypatch):
    import modpool.store.hashes

    _save(clip_pool, 2)
    clip_pool.add(["m0", "m1"], "s", 0.5)
    paths = [clip_pool.entry(n).path for n in ("m0", "m1", "s")]
    truth = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
    recipe = clip_pool.entry("s").meta["recipe"]
    assert [i["sha256"] for i in recipe["ingredients"]] == [truth[paths[0]], truth[paths[1]]]

    def no_hashing(path):
        raise AssertionError(f"{path} was hashed again")

    monkeypatch.setattr(modpool.store.hashes, "sha256_file", no_hashing)
    fresh = type(clip_pool)(clip_pool.root)  # another process: reads hashes.jsonl
    assert all(fresh.hashes.sha256(p) == truth[p] for p in paths)
    monkeypatch.undo()
    data = bytearray(paths[0].read_bytes())
    data[-1] ^= 1  # changed in place: a new mtime, a new ctime
    with open(paths[0], "r+b") as f:
        f.write(data)
    assert fresh.hashes.sha256(paths[0]) == hashlib.sha256(bytes(data)).hexdigest()
