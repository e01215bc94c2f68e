"""Which ingredient of a composition produced a prediction.

A tangent composition made by `sum` or `mean` is exactly the base's output plus one term
per ingredient: f = f_0 + sum_i J (c_i tau_i), c_i the ingredient's coefficient (alpha_i,
or alpha_i / T for mean). A head's logit for class k is linear in f once f's norm is fixed
(CLIP heads normalise f), so with s = scale / ||f|| (1 for a linear head)

    logit_k = s f_0 . w_k + b_k  +  sum_i s J(c_i tau_i) . w_k

splits the predicted class's logit into a base share and one share per ingredient that sum
to it exactly. Also reported: how often removing one ingredient's term flips the
prediction, and how often each ingredient has the largest share. Any other composition
(nonlinear, or a nonlinear merge method) is explained by leave-one-out: the composition
rebuilt in memory without each ingredient, and the accuracy and predicted-class logit it
loses.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..bases.head import Head
from ..errors import ModpoolError
from ..model.accuracy import EVAL_BATCH
from ..model.edited import EditedModel
from ..model.forward import jvp
from ..tasks import batches
from ..tasks.task import limited
from .figures import save_beside

if TYPE_CHECKING:
    from ..pool import Pool

LINEAR_METHODS = ("sum", "mean")


def explain(
    pool: Pool,
    name: str,
    task: str | None = None,
    split: str = "test",
    limit: int | None = None,
    image: Path | str | None = None,
    show_progress: bool | None = None,
) -> dict:
    """Each ingredient's contribution to `name`'s predictions on `task` (default: its
    first), or on one image file."""
    entry = pool.entry(name)
    if entry.type != "composition":
        raise ModpoolError(f"{entry.name} is a module: explain a composition of modules")
    recipe = entry.meta["recipe"]
    task_name = task or entry.tasks[0]
    spec = pool.task(task_name)
    head = pool.head(spec)
    images = _images(pool, spec, split, limit, image)
    exact = entry.kind == "tangent" and recipe["method"] in LINEAR_METHODS
    result = {
        "name": entry.name,
        "task": spec.name,
        "method": "exact" if exact else "leave-one-out",
        "examples": len(images),
        "source": str(image) if image else split,
    }
    if exact:
        return result | exact_shares(pool, recipe, head, images, spec.classnames)
    return result | leave_one_out(pool, recipe, head, images, entry.kind)


def _images(pool: Pool, spec, split, limit, image):
    if image is not None:
        return [(_load_image(Path(image)), -1)]
    return limited(spec.load(split, pool.base.image_size), limit)


def _load_image(path: Path) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
    except (FileNotFoundError, UnidentifiedImageError, OSError) as exc:
        raise ModpoolError(f"cannot read the image {path}: {exc}") from None
    return (
        torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
        .reshape(rgb.height, rgb.width, 3)
        .permute(2, 0, 1)
        .float()
        / 255.0
    )


def coefficients(recipe: dict) -> list[float]:
    alphas = [i["alpha"] for i in recipe["ingredients"]]
    return [a / len(alphas) for a in alphas] if recipe["method"] == "mean" else alphas


def exact_shares(pool: Pool, recipe: dict, head: Head, images, classnames) -> dict:
    """Per example, the predicted class's logit split into base and ingredient shares."""
    names = [i["name"] for i in recipe["ingredients"]]
    deltas = [pool.read(n).tensors for n in names]
    params0 = dict(pool.base.trainable())
    coefs = coefficients(recipe)
    per_example, totals = [], {"flips": [0] * len(names), "largest": [0] * len(names)}
    for x, labels in _batches(images):
        x = pool.base.prepare(x)
        f0, terms = None, []
        for delta, c in zip(deltas, coefs):
            base_out, term = jvp(pool.base.tower, params0, delta, x)
            f0 = base_out if f0 is None else f0
            terms.append(c * term)
        features = f0 + sum(terms)
        logits = head(features)
        predicted = logits.argmax(-1)
        scale = _scale(head, features)
        weights = head.weight[predicted]
        base_share = scale * (f0 * weights).sum(-1) + (
            head.bias[predicted] if head.bias is not None else 0
        )
        shares = torch.stack([scale * (t * weights).sum(-1) for t in terms], 1)
        for i, term in enumerate(terms):
            without = head(features - term).argmax(-1)
            totals["flips"][i] += int((without != predicted).sum())
        largest = shares.argmax(1)
        for i in range(len(names)):
            totals["largest"][i] += int((largest == i).sum())
        for j in range(len(predicted)):
            per_example.append(
                {
                    "label": int(labels[j]),
                    "predicted": classnames[int(predicted[j])],
                    "logit": float(logits[j, predicted[j]]),
                    "base_share": float(base_share[j]),
                    "shares": {n: float(shares[j, i]) for i, n in enumerate(names)},
                }
            )
    count = len(per_example)
    return {
        "ingredients": names,
        "mean_share": {n: sum(e["shares"][n] for e in per_example) / count for n in names},
        "mean_base_share": sum(e["base_share"] for e in per_example) / count,
        "flip_rate": {n: totals["flips"][i] / count for i, n in enumerate(names)},
        "largest_share_rate": {n: totals["largest"][i] / count for i, n in enumerate(names)},
        "per_example": per_example if count <= 16 else per_example[:16],
    }


def _scale(head: Head, features: torch.Tensor) -> torch.Tensor:
    """The factor that makes the head linear at these features: scale / ||f||, or 1."""
    if head.normalize:
        return head.scale / features.float().norm(dim=-1)
    return torch.full(features.shape[:1], head.scale)


def leave_one_out(pool: Pool, recipe: dict, head: Head, images, kind: str) -> dict:
    """Accuracy and predicted-class logit of the composition without each ingredient,
    rebuilt in memory from its recipe (the same method, parameters and seed)."""
    names = [i["name"] for i in recipe["ingredients"]]
    alphas = [i["alpha"] for i in recipe["ingredients"]]
    method, params, seed = recipe["method"], recipe["params"], recipe["seed"]
    full = pool.merged(names, method, alphas, params, seed)
    full_logits, labels = _logits(pool, full, kind, head, images)
    predicted = full_logits.argmax(-1)
    chosen = full_logits.gather(1, predicted[:, None])[:, 0]
    out = {"ingredients": names, "accuracy": _acc(predicted, labels)}
    out |= {"accuracy_without": {}, "accuracy_drop": {}, "logit_drop": {}, "flip_rate": {}}
    for i, name in enumerate(names):
        rest = [n for j, n in enumerate(names) if j != i]
        rest_alphas = [a for j, a in enumerate(alphas) if j != i]
        if not rest:
            raise ModpoolError(f"{recipe['method']} of one ingredient: nothing to leave out")
        delta = pool.merged(rest, method, rest_alphas, params, seed)
        logits, _ = _logits(pool, delta, kind, head, images)
        without = _acc(logits.argmax(-1), labels)
        out["accuracy_without"][name] = without
        out["accuracy_drop"][name] = out["accuracy"] - without if without is not None else None
        out["logit_drop"][name] = float(
            (chosen - logits.gather(1, predicted[:, None])[:, 0]).mean()
        )
        out["flip_rate"][name] = float((logits.argmax(-1) != predicted).float().mean())
    return out


def _logits(pool: Pool, delta: dict, kind: str, head: Head, images):
    model = EditedModel(pool.base, delta, kind, head)
    outs, labels = [], []
    with torch.no_grad():
        for x, y in _batches(images):
            outs.append(model(x))
            labels.append(y)
    return torch.cat(outs), torch.cat(labels)


def _acc(predicted: torch.Tensor, labels: torch.Tensor) -> float | None:
    if (labels < 0).any():  # an image file: no label
        return None
    return int((predicted == labels).sum()) / len(labels)


def _batches(images):
    if isinstance(images, list):  # one image file
        x, label = images[0]
        yield x.unsqueeze(0), torch.tensor([label])
        return
    yield from batches(images, EVAL_BATCH)


def save_chart(result: dict, png: Path) -> tuple[Path, Path | None]:
    """The numbers as JSON, and a bar chart PNG beside them (None without matplotlib) of
    each ingredient's mean share (exact) or accuracy lost (leave-one-out)."""
    exact = result["method"] == "exact"
    values = result["mean_share"] if exact else result["accuracy_drop"]

    def draw(plt):
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
        ax.bar(list(values), [v if exact else 100 * v for v in values.values()])
        ax.set_ylabel("mean share of the predicted logit" if exact else "accuracy lost (points)")
        ax.set_title(f"{result['name']} on {result['task']} ({result['method']})")
        plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
        return fig

    return save_beside(result, png, draw)
