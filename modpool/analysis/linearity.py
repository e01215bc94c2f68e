"""How far a module is from the tangent (lazy, linear) regime: over coefficients alpha, the
gap between the network at theta_0 + alpha tau and its first-order expansion
f(theta_0) + alpha J tau (SPEC 2.2). A kernel theory of compositional generalisation says
that in that regime a model can only add up what its parts contribute, which is why
modules close to it compose cleanly.

Reported per alpha, over a task's split: the relative logit error
||logits(f(theta_0 + alpha tau)) - logits(f_0 + alpha J tau)|| / ||logits(f(theta_0 + alpha tau))||
and the share of examples whose prediction the two agree on. A tangent module is its own
expansion: its gap is 0. The result goes to the pool's eval log (by the module's sha256),
from which `show` prints it: a module's file is never rewritten, since every recipe that
uses it names it by its hash.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..model.accuracy import EVAL_BATCH
from ..model.delta import edited
from ..model.forward import jvp, nonlinear_features
from ..progress import bar
from ..tasks import batches
from ..tasks.task import limited

if TYPE_CHECKING:
    from ..pool import Pool

DEFAULT_ALPHAS = [0.25, 0.5, 1.0, 1.5, 2.0]


def linearity(
    pool: Pool,
    name: str,
    task: str | None = None,
    alphas: list[float] | None = None,
    split: str = "val",
    limit: int | None = None,
    show_progress: bool | None = None,
) -> dict:
    """The linearisation gap of `name` on `task` (default: its own) at each alpha."""
    alphas = alphas or DEFAULT_ALPHAS
    artifact = pool.read(name)
    task_name = task or artifact.meta.get("task") or artifact.meta["tasks"][0]
    spec = pool.task(task_name)
    head, base = pool.head(spec), pool.base
    data = limited(spec.load(split, base.image_size), limit)
    params0 = dict(base.trainable())
    tau = artifact.tensors
    sums = {a: {"error": 0.0, "norm": 0.0, "agree": 0} for a in alphas}
    with bar(f"linearity {name}", len(data), show_progress) as update, torch.no_grad():
        for images, _ in batches(data, EVAL_BATCH):
            x = base.prepare(images)
            f0, term = jvp(base.tower, params0, tau, x)
            for alpha in alphas:
                linear = head(f0 + alpha * term)
                if artifact.kind == "tangent":  # its forward is the expansion itself
                    actual = linear
                else:
                    actual = head(nonlinear_features(base.tower, edited(params0, tau, alpha), x))
                sums[alpha]["error"] += float((actual - linear).pow(2).sum())
                sums[alpha]["norm"] += float(actual.pow(2).sum())
                sums[alpha]["agree"] += int((actual.argmax(-1) == linear.argmax(-1)).sum())
            update(len(images))
    rows = [
        {
            "alpha": a,
            "relative_logit_error": (s["error"] / s["norm"]) ** 0.5 if s["norm"] else 0.0,
            "agreement": s["agree"] / len(data),
        }
        for a, s in sums.items()
    ]
    result = {"name": name, "kind": artifact.kind, "task": spec.name, "split": split,
              "examples": len(data), "rows": rows}  # fmt: skip
    record = {"kind": "linearity", "target": name, "sha256": artifact.sha256}
    pool.record_eval({**record, "task": spec.name, "split": split, "linearity": result})
    return result


def latest_linearity(pool: Pool, name: str) -> dict | None:
    """The last linearity measured for `name`'s current file, if any."""
    sha = pool.hashes.sha256(pool.entry(name).path)
    found = [r for r in pool.history() if r.get("kind") == "linearity" and r.get("sha256") == sha]
    return found[-1]["linearity"] if found else None
