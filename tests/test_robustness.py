"""Crash safety at every durable step, concurrent commands, hostile files, resume."""

import hashlib
import json
import os
import pickle
import random
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import random_delta, run_cli, snapshot
from safetensors.torch import load_file

from modpool import ModpoolError, Pool
from modpool.interop.hub import stage
from modpool.store.artifact import load_artifact_bytes, read_metadata
from modpool.store.check import check_pool

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "MODPOOL_PROGRESS": "0"}
KILLED = -9


def modpool(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "modpool", "--pool", str(root), *args],
        env={**ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def state(root: Path) -> tuple:
    """What a pool holds, ignoring timestamps: artifact contents, recipes, audit actions."""
    artifacts = {}
    for sub in ("modules", "compositions"):
        for path in sorted((root / sub).glob("*.safetensors")):
            tensors = load_file(path)
            digest = hashlib.sha256()
            for key in sorted(tensors):
                digest.update(key.encode() + tensors[key].numpy().tobytes())
            recipe = read_metadata(path).get("recipe", {})
            artifacts[f"{sub}/{path.stem}"] = (
                digest.hexdigest(),
                [(i["name"], i["alpha"]) for i in recipe.get("ingredients", [])],
            )
    audit = [
        (r["action"], r.get("name"))
        for r in (json.loads(line) for line in (root / "audit.jsonl").read_text().splitlines())
    ]
    return artifacts, audit


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("crash") / "pool"
    pool = Pool.create(root, "tiny-clip")
    for i, task in enumerate(("digits", "mnist", "digits")):
        pool.save_module(f"m{i}", random_delta(pool, i), task, "nonlinear")
    pool.add(["m0", "m1"], "c01", 0.5)
    pool.compose(["c01", "m2"], "nested", "mean")
    pool.head(pool.task("digits"))
    return root


def crash_everywhere(pristine: Path, tmp_path: Path, args: list[str], extra_check=None) -> int:
    """Kill the command at its 1st, 2nd, ... durable step until it completes; every time,
    the pool must check clean and hold either the state before or the state after (the
    state the uninterrupted run reaches)."""
    before = state(pristine)
    seen = []
    points = 0
    while True:
        work = tmp_path / f"kill{points + 1}"
        shutil.copytree(pristine, work)
        result = modpool(work, *args, env={"MODPOOL_CRASH_AFTER": str(points + 1)})
        if result.returncode == 0:
            after = state(work)
            break
        assert result.returncode == KILLED, result.stderr
        points += 1
        pool = Pool(work)  # the next command recovers
        report = check_pool(pool)
        assert report.ok, [p.message for p in report.problems]
        seen.append(state(work))
        assert not list(work.glob("**/*.tmp")) and not (work / ".journal.json").exists()
        if extra_check:
            extra_check(work)
        shutil.rmtree(work)
    assert after != before
    for point, found in enumerate(seen, 1):
        assert found in (before, after), f"half-done state after kill point {point}"
    assert before in seen and after in seen  # kills landed both before and after the commit
    assert points >= 2
    print(f"\n{' '.join(args[:1])}: {points} kill points, each left the pool before or after")
    return points


def test_compose_crash_safe(pristine, tmp_path):
    crash_everywhere(pristine, tmp_path, ["compose", "m1", "m2", "-o", "new", "--alpha", "0.3"])


def test_forget_crash_safe(pristine, tmp_path):
    points = crash_everywhere(pristine, tmp_path, ["forget", "m0"])
    assert points >= 6  # two rebuilds, a delete, the journal, the audit line


def test_finetune_crash_safe(pristine, tmp_path):
    crash_everywhere(
        pristine,
        tmp_path,
        [
            "finetune",
            "--task",
            "digits",
            "--name",
            "ft",
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--warmup",
            "1",
        ],
    )


def test_pull_crash_safe(pristine, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(pristine, source)
    snap = stage(Pool(source), "c01", tmp_path / "snap")
    target = tmp_path / "target"
    Pool.create(target, "tiny-clip")
    crash_everywhere(target, tmp_path, ["pull", str(snap)])


def test_export_crash_safe(pristine, tmp_path):
    out = tmp_path / "exported.safetensors"
    for point in (1, 2, 3):
        work = tmp_path / f"e{point}"
        shutil.copytree(pristine, work)
        before = snapshot(work)
        result = modpool(
            work, "export", "nested", "-o", str(out), env={"MODPOOL_CRASH_AFTER": str(point)}
        )
        assert snapshot(work) == before
        if result.returncode == 0:
            break
        assert result.returncode == KILLED
        assert not out.exists() or load_file(out)
        assert not list(tmp_path.glob(".exported*"))
    assert load_file(out)


def test_concurrent_commands_lose_nothing(pristine, tmp_path):
    root = tmp_path / "pool"
    shutil.copytree(pristine, root)
    Pool(root).save_module("m3", random_delta(Pool(root), 9), "mnist", "nonlinear")
    commands = [
        ["compose", "m2", "m3", "-o", "x23"],
        ["compose", "m0", "m3", "-o", "x03", "--method", "mean"],
        ["forget", "m1"],
        ["finetune", "--task", "digits", "--name", "ft1", "--steps", "2", "--batch-size", "4"],
        ["finetune", "--task", "mnist", "--name", "ft2", "--steps", "2", "--batch-size", "4"],
        ["add", "m0", "m2", "-o", "x02", "--alpha", "0.7"],
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "modpool", "--pool", str(root), *c],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for c in commands
    ]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    pool = Pool(root)
    assert check_pool(pool).ok
    names = {e.name for e in pool.entries()}
    assert {"x23", "x03", "x02", "ft1", "ft2", "m0", "m2", "m3", "c01", "nested"} <= names
    assert "m1" not in names
    assert [i["name"] for i in pool.read("c01").meta["recipe"]["ingredients"]] == ["m0"]
    actions = [r["action"] for r in pool.audit_log()]
    assert actions.count("compose") == 2 + 3 and actions.count("forget") == 1
    assert actions.count("add-module") == 4 + 2


def test_resume_gives_the_uninterrupted_module(pristine, tmp_path):
    root = tmp_path / "pool"
    shutil.copytree(pristine, root)
    args = "finetune --task digits --steps 6 --batch-size 8 --warmup 2 --checkpoint-every 3".split()
    assert modpool(root, *args, "--name", "whole").returncode == 0
    cut = modpool(root, *args, "--name", "cut", env={"MODPOOL_CRASH_AT_STEP": "4"})
    assert cut.returncode == KILLED
    assert (root / "checkpoints" / "cut.safetensors").exists()
    again = modpool(root, *args, "--name", "cut")
    assert again.returncode == 1 and "--resume" in again.stderr
    resumed = modpool(root, *args, "--name", "cut", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    pool = Pool(root)
    whole, cut = pool.read("whole").tensors, pool.read("cut").tensors
    assert all(torch.equal(whole[k], cut[k]) for k in whole)
    assert not (root / "checkpoints" / "cut.safetensors").exists()
    other = modpool(root, *args[:-2], "--name", "x", "--resume")
    assert other.returncode == 1 and "no checkpoint" in other.stderr


# ---- hostile files ---------------------------------------------------------------------


def _header(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _pack(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


class Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/modpool-pwned",))


def hostile_cases(good: bytes, count: int = 300) -> list[bytes]:
    rng = random.Random(0)
    header, body = _header(good)
    names = [k for k in header if k != "__metadata__"]
    cases = [
        b"",
        b"\x00" * 8,
        struct.pack("<Q", 2**63) + b"{}",
        pickle.dumps(Payload()),
        b"PK\x03\x04" + pickle.dumps(Payload()),
    ]

    def edit(fn):
        h = json.loads(json.dumps(header))
        fn(h)
        return _pack(h, body)

    first = names[0]
    cases += [
        edit(lambda h: h[first].update(dtype="I64")),
        edit(lambda h: h[first].update(dtype="BOOL")),
        edit(lambda h: h[first].update(shape=[-1])),
        edit(lambda h: h[first].update(shape=[10**12, 10**12])),
        edit(lambda h: h[first].update(data_offsets=[0, 2**62])),
        edit(lambda h: h[first].update(data_offsets=[5, 1])),
        edit(lambda h: h[first].update(shape=h[first]["shape"][::-1] + [1])),
        edit(lambda h: h["__metadata__"].update(format=1)),
        edit(lambda h: h["__metadata__"].update(recipe={"nested": True})),
        edit(lambda h: h.update(__metadata__=["not", "a", "dict"])),
        edit(lambda h: h.__setitem__("../../etc/passwd", h.pop(first))),
        edit(lambda h: h.__setitem__("fisher/../../x", h.pop(first))),
        edit(lambda h: h["__metadata__"].update(base_fingerprint="0" * 64)),
        edit(lambda h: h["__metadata__"].pop("kind")),
        edit(lambda h: h["__metadata__"].update(type="script")),
        edit(lambda h: h.update(extra="value")),
    ]
    for _ in range(count):
        mutated = bytearray(good)
        kind = rng.randrange(3)
        if kind == 0:  # flip bytes in the header
            for _ in range(rng.randint(1, 8)):
                mutated[rng.randrange(min(len(good), 8 + len(json.dumps(header))))] ^= (
                    rng.randrange(1, 256)
                )
        elif kind == 1:  # truncate
            mutated = mutated[: rng.randrange(len(good))]
        else:  # a random header length
            mutated[:8] = struct.pack("<Q", rng.randrange(2 ** rng.randint(1, 64)))
        cases.append(bytes(mutated))
    return cases


def test_fuzzed_module_files_give_clear_errors(pristine):
    pool = Pool(pristine)
    good = pool.path_of("m0").read_bytes()
    outcomes = {"rejected": 0, "accepted": 0}
    for i, data in enumerate(hostile_cases(good)):
        try:
            artifact = load_artifact_bytes(data, f"case{i}", pool.manifest, pool.fingerprint)
        except ModpoolError as exc:
            assert str(exc) and "\n" not in str(exc)
            outcomes["rejected"] += 1
            continue
        # the few flips that still parse must be valid modules of this base
        assert set(artifact.tensors) <= set(pool.manifest)
        outcomes["accepted"] += 1
    assert outcomes["rejected"] >= 300
    assert not Path("/tmp/modpool-pwned").exists()  # no code ran


def test_hostile_files_through_the_cli_write_nothing(pristine, tmp_path, capsys):
    root = tmp_path / "pool"
    shutil.copytree(pristine, root)
    good = (root / "modules" / "m0.safetensors").read_bytes()
    before = snapshot(root)
    for i, data in enumerate(hostile_cases(good, count=10)[:25]):
        path = tmp_path / f"case{i}.safetensors"
        path.write_bytes(data)
        code, _, err = run_cli(
            ["--pool", str(root), "import", str(path), "--name", f"c{i}"], capsys
        )
        assert code == 1 and err.startswith("error:"), err
    assert snapshot(root) == before
    assert not Path("/tmp/modpool-pwned").exists()
    for bad in ("../x", "a/b", ".hidden", "x" * 200):
        code, _, err = run_cli(["--pool", str(root), "eval", bad], capsys)
        assert code == 1 and "invalid name" in err


def test_check_reports_problems_precisely(pristine, tmp_path, capsys):
    root = tmp_path / "pool"
    shutil.copytree(pristine, root)
    path = root / "modules" / "m2.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    (root / "compositions" / "notes.txt").write_text("hello")
    code, out, _ = run_cli(["--pool", str(root), "check", "--json"], capsys)
    assert code == 1
    problems = {(p["path"], p["message"].split(":")[0]) for p in json.loads(out)["problems"]}
    assert ("modules/m2.safetensors", "m2.safetensors") in problems
    assert any(p == "compositions/nested.safetensors" for p, _ in problems)  # ingredient broken
    assert ("compositions/notes.txt", "unexpected file in the pool") in problems


# ---- data-parallel training -------------------------------------------------------------


def _relative_gap(a: dict, b: dict) -> float:
    num = sum(((a[k] - b[k]) ** 2).sum() for k in a).sqrt()
    return (num / sum((a[k] ** 2).sum() for k in a).sqrt()).item()


@pytest.mark.parametrize("mode", ["nonlinear", "tangent"])
def test_two_processes_match_one(pristine, tmp_path, mode):
    root = tmp_path / "pool"
    shutil.copytree(pristine, root)
    args = f"finetune --task digits --mode {mode} --steps 3 --batch-size 16 --warmup 1 --lr 1e-3".split()
    assert modpool(root, *args, "--name", "one").returncode == 0
    assert modpool(root, *args, "--name", "acc", "--accumulate", "4").returncode == 0
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "-m",
            "modpool",
            "--pool",
            str(root),
            *args,
            "--name",
            "two",
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    pool = Pool(root)
    one = pool.read("one").tensors
    assert pool.read("two").meta["hparams"]["world_size"] == 2
    assert _relative_gap(one, pool.read("two").tensors) < 1e-3  # float tolerance under Adam
    assert _relative_gap(one, pool.read("acc").tensors) < 1e-3
    assert [r["action"] for r in pool.audit_log()].count("add-module") == 3 + 3  # rank 0 only


def test_modules_trained_in_separate_pools_come_together(tmp_path, capsys):
    """Two machines, one base: copy the module files over, import, compose."""
    pools = []
    for task in ("digits", "mnist"):
        pool = Pool.create(tmp_path / task, "tiny-clip")
        pool.save_module(f"{task}-m", random_delta(pool, len(task)), task, "nonlinear")
        pools.append(pool)
    hub = Pool.create(tmp_path / "hub", "tiny-clip")
    for pool in pools:
        for entry in pool.entries():
            code, _, err = run_cli(["--pool", str(hub.root), "import", str(entry.path)], capsys)
            assert code == 0, err
    hub.compose(["digits-m", "mnist-m"], "both", "mean")
    assert hub.read("both").meta["tasks"] == ["digits", "mnist"]
    assert check_pool(hub).ok
