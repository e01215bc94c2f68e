"""Issue 8 benchmark: time per step of data-parallel finetune with 1 and N processes.

Trains the same module (offline base, mnist, global batch 64) with one process and with
`torchrun --nproc-per-node N`, and reports seconds per step and the speed-up. On a
2-core CPU machine each process gets one thread; on GPUs each rank drives one GPU.

    python benchmarks/ddp_scaling.py [--procs 2] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import write


def run(pool: Path, name: str, procs: int, steps: int, batch: int) -> float:
    args = [
        "--pool",
        str(pool),
        "-q",
        "finetune",
        "--task",
        "mnist",
        "--name",
        name,
        "--steps",
        str(steps),
        "--batch-size",
        str(batch),
        "--warmup",
        "1",
        "--json",
    ]
    if procs == 1:
        cmd = [sys.executable, "-m", "modpool", *args]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(procs),
            "-m",
            "modpool",
            *args,
        ]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": str(max(1, os.cpu_count() // procs)),
    }
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    meta = json.loads(out[out.index("{") :])
    return meta["metrics"]["seconds"] / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pool = Path(tmp) / "pool"
        subprocess.run(
            [sys.executable, "-m", "modpool", "--pool", str(pool), "init"],
            check=True,
            capture_output=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        one = run(pool, "one", 1, args.steps, args.batch_size)
        many = run(pool, "many", args.procs, args.steps, args.batch_size)
    result = {
        "global_batch": args.batch_size,
        "steps": args.steps,
        "seconds_per_step": {"1": one, str(args.procs): many},
        "speedup": one / many,
    }
    print(json.dumps(result, indent=2))
    write("ddp_scaling", result)


if __name__ == "__main__":
    main()
