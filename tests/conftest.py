import hashlib
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["MODPOOL_PROGRESS"] = "0"
os.environ.pop("MODPOOL_POOL", None)
os.environ.pop("MODPOOL_DATA_ROOT", None)

import pytest  # noqa: E402
import torch  # noqa: E402

from modpool import Pool  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture
def clip_pool(tmp_path) -> Pool:
    return Pool.create(tmp_path / "pool", "tiny-clip")


@pytest.fixture(scope="session")
def offline_pool_template(tmp_path_factory) -> Path:
    """One offline-base pool with the digits head cached, copied per test."""
    root = tmp_path_factory.mktemp("offline") / "pool"
    pool = Pool.create(root, "offline")
    pool.head(pool.task("digits"), show_progress=False)
    return root


@pytest.fixture
def offline_pool(offline_pool_template, tmp_path) -> Pool:
    import shutil

    shutil.copytree(offline_pool_template, tmp_path / "pool")
    return Pool(tmp_path / "pool")


def random_delta(pool: Pool, seed: int, scale: float = 1e-3) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        name: scale * torch.randn(shape, generator=generator)
        for name, (shape, _) in pool.manifest.items()
    }


def snapshot(root: Path) -> dict[str, str]:
    """Every file of a pool with its content hash: equal snapshots mean an unchanged pool.
    The lock and the hash cache (hashes.jsonl: reading a file may add a line) aside."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in (".lock", "hashes.jsonl")
    }


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run `modpool ARGS` in-process through the real entry point."""
    from modpool.cli import main

    old = sys.argv
    sys.argv = ["modpool", *args]
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old
    captured = capsys.readouterr()
    return code, captured.out, captured.err
