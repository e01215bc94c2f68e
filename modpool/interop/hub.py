"""Sharing on the Hugging Face Hub: a model card, the artifact and its ingredients.

A pushed repository holds `README.md` (the model card), `modpool.json` (what is in it,
with the sha256 of every file) and `artifacts/<name>.safetensors` for the module or
composition and, for a composition, every ingredient it was built from (so the receiver
can verify, evaluate normalised accuracy, and `forget` exactly). `pull` validates all of
it against the pool's base before writing anything. Tokens go to huggingface_hub only:
they are never printed or written into any file.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModpoolError
from ..store.artifact import load_artifact
from ..store.layout import check_name
from .checkpoints import HF_WEIGHTS, OPENCLIP_WEIGHTS
from .importing import import_checkpoint

if TYPE_CHECKING:
    from ..pool import Pool

HUB_FORMAT = "modpool-hub/1"
MANIFEST = "modpool.json"


def closure(pool, name: str) -> list[str]:
    """`name` and everything it was composed from, ingredients first."""
    order: list[str] = []

    def visit(n: str) -> None:
        entry = pool.entry(n)
        for ingredient in entry.ingredients:
            visit(ingredient["name"])
        if n not in order:
            order.append(n)

    visit(name)
    return order


def model_card(pool, name: str) -> str:
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    entry = pool.entry(name)
    meta = entry.meta
    is_module = entry.type == "module"
    tags = ["modpool", "task-vector", "image-classification", *entry.tasks]
    if entry.kind == "tangent":
        tags.append("tangent")
    if meta.get("task_aware"):
        tags.append("task-aware")
    results = [
        EvalResult(
            task_type="image-classification",
            dataset_type=r["task"],
            dataset_name=r["task"],
            dataset_split=r["split"],
            metric_type="accuracy",
            metric_value=round(r["accuracy"], 4),
        )
        for r in _latest_evals(pool, name)
    ]
    data = ModelCardData(
        library_name="modpool",
        base_model=pool.config.get("hub_id") or None,
        tags=tags,
        eval_results=results or None,
        model_name=name,
        base_model_relation="adapter" if is_module else "merge",
    )
    body = [
        f"# {name}",
        "",
        f"A modpool {entry.type} ({entry.kind}) over the image tower of `{meta['base']}`, "
        f"for {', '.join(entry.tasks)}. "
        + (
            "It stores `tau = theta_task - theta_0`."
            if is_module
            else "It stores the delta its recipe produces from the ingredients shipped beside it."
        ),
        "",
        f"- base: `{meta['base']}`",
        f"- base fingerprint: `{meta['base_fingerprint']}`",
        f"- kind: `{entry.kind}`"
        + (" (used through the linearised forward f(θ0) + J·τ)" if entry.kind == "tangent" else ""),
        f"- mode: `{meta['mode']}`",
        *_compartments(entry),
    ]
    if is_module:
        body += [
            "",
            "## Training hyper-parameters",
            "",
            "```json",
            json.dumps(meta.get("hparams", {}), indent=2, sort_keys=True),
            "```",
        ]
    else:
        body += [
            "",
            "## Recipe",
            "",
            "```json",
            json.dumps(meta["recipe"], indent=2, sort_keys=True),
            "```",
        ]
    if results:
        body += ["", "## Evaluation", "", "| task | split | top-1 accuracy |", "|---|---|---|"]
        body += [
            f"| {r.dataset_name} | {r.dataset_split} | {100 * r.metric_value:.2f}% |"
            for r in results
        ]
    body += [
        "",
        "## Use",
        "",
        "```bash",
        f"modpool --pool pool init --base {meta['base']}",
        "modpool --pool pool pull USER/REPO",
        "```",
        "",
        "```python",
        "from modpool import Pool",
        "",
        'pool = Pool("pool")',
        f'model = pool.model("{name}", task="{entry.tasks[0]}")  # images -> logits',
        "```",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n").content


def _compartments(entry) -> list[str]:
    """Where the training data came from and who may use it: the module's own, or each
    ingredient's as its recipe carries them."""
    if entry.type == "module":
        return [f"- data source: `{entry.source}`; access: `{', '.join(entry.access)}`"]
    lines = [
        f"- ingredient `{i['name']}`: data source `{i['source']}`; access "
        f"`{', '.join(i.get('access', []))}`"
        for i in entry.ingredients
        if "source" in i
    ]
    access = entry.meta["recipe"].get("access")
    if access:
        lines.append(f"- composed for the access rights `{', '.join(access)}`")
    return lines


def _latest_evals(pool, name: str) -> list[dict]:
    latest: dict[tuple, dict] = {}
    for record in pool.history():
        if record.get("target") == name and "accuracy" in record:
            latest[(record["task"], record["split"])] = record
    return list(latest.values())


def stage(pool, name: str, folder: Path) -> Path:
    """Lay out exactly what `push` uploads."""
    folder = Path(folder)
    (folder / "artifacts").mkdir(parents=True, exist_ok=True)
    files = {}
    for n in closure(pool, name):
        data = pool.entry(n).path.read_bytes()
        rel = f"artifacts/{n}.safetensors"
        (folder / rel).write_bytes(data)
        files[n] = {
            "path": rel,
            "sha256": hashlib.sha256(data).hexdigest(),
            "type": pool.entry(n).type,
        }
    manifest = {
        "format": HUB_FORMAT,
        "name": name,
        "base": pool.config["base"],
        "base_fingerprint": pool.fingerprint,
        "order": list(files),
        "files": files,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    (folder / "README.md").write_text(model_card(pool, name))
    return folder


def push(
    pool,
    name: str,
    repo: str,
    private: bool = False,
    token: str | None = None,
    revision: str | None = None,
) -> str:
    """Create (if needed) the Hub repository and upload the staged folder; returns its URL."""
    from huggingface_hub import HfApi

    _check_repo_id(repo)
    api = HfApi()
    with tempfile.TemporaryDirectory() as tmp:
        stage(pool, name, Path(tmp))
        try:
            api.create_repo(repo, token=token, private=private, exist_ok=True)
            info = api.upload_folder(
                repo_id=repo,
                folder_path=tmp,
                token=token,
                revision=revision,
                commit_message=f"modpool push {name}",
            )
        except Exception as exc:
            raise ModpoolError(
                f"push to {repo} failed: {type(exc).__name__}: {_safe(exc, token)}"
            ) from None
    return getattr(info, "commit_url", None) or f"https://huggingface.co/{repo}"


def pull(
    pool: Pool,
    ref: str,
    token: str | None = None,
    task: str | None = None,
    name: str | None = None,
    max_distance: float | None = None,
) -> list[str]:
    """Download `USER/REPO[@REVISION]` (or read a local snapshot folder) and import it: a
    modpool repository (every file validated against this pool, what is missing imported),
    or, with `task`, a fine-tuned model repository (a Hugging Face CLIP model or open_clip
    weights), imported as a module like `modpool import`. Returns the names imported."""
    folder = _fetch(ref, token, modpool_only=task is None)
    if not (folder / MANIFEST).is_file():
        if task is None:
            raise ModpoolError(
                f"{ref} is not a modpool repository (no {MANIFEST}); if it holds a fine-tuned "
                "model (Hugging Face CLIP or open_clip weights), say its task with --task T"
            )
        limit = {} if max_distance is None else {"max_distance": max_distance}
        entries = import_checkpoint(pool, folder, task, name, origin={"hub": ref}, **limit)
        return [e.name for e in entries]
    manifest = _read_manifest(folder, pool)
    plan = []
    for n in manifest["order"]:
        _check_name_in_manifest(n)
        info = manifest["files"].get(n)
        if not isinstance(info, dict) or "path" not in info or "sha256" not in info:
            raise ModpoolError(f"{MANIFEST} lists {n!r} without a file and sha256")
        path = _inside(folder, info["path"])
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != info["sha256"]:
            raise ModpoolError(
                f"{info['path']} does not match the sha256 in {MANIFEST}: the "
                "download is corrupt or was tampered with; nothing was imported"
            )
        artifact = load_artifact(path, pool.manifest, pool.fingerprint)
        if pool.exists(n):
            if pool.read(n).sha256 != artifact.sha256:
                raise ModpoolError(
                    f"the pool already has a different {n!r}; nothing was imported "
                    "(forget or rename yours first)"
                )
            continue
        plan.append((n, path))
    pool.import_many([(path, n) for n, path in plan])
    return [n for n, _ in plan]


def _fetch(ref: str, token: str | None, modpool_only: bool = True) -> Path:
    if Path(ref).is_dir():
        return Path(ref)
    repo, _, revision = ref.partition("@")
    _check_repo_id(repo)
    from huggingface_hub import snapshot_download

    patterns = [MANIFEST, "README.md", "artifacts/*"]
    if not modpool_only:  # a model repository: its config and weights, not every format
        patterns += ["config.json", *HF_WEIGHTS, *OPENCLIP_WEIGHTS, "open_clip_config.json"]
    try:
        path = snapshot_download(
            repo, revision=revision or None, token=token, allow_patterns=patterns
        )
        return Path(path)
    except Exception as exc:
        raise ModpoolError(
            f"could not download {ref}: {type(exc).__name__}: {_safe(exc, token)} "
            "(offline? set HF_HUB_OFFLINE=0 and check the network, or pass a local "
            "snapshot folder)"
        ) from None


def _read_manifest(folder: Path, pool) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise ModpoolError(f"{folder} is not a modpool repository: it has no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModpoolError(f"{MANIFEST} is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != HUB_FORMAT:
        raise ModpoolError(f"{MANIFEST} is not a modpool manifest ({HUB_FORMAT})")
    if manifest.get("base_fingerprint") != pool.fingerprint:
        raise ModpoolError(
            f"this repository was made from base {manifest.get('base')} (fingerprint "
            f"{str(manifest.get('base_fingerprint'))[:12]}); this pool's base is "
            f"{pool.config['base']} ({pool.fingerprint[:12]}): refused"
        )
    if not isinstance(manifest.get("order"), list) or not isinstance(manifest.get("files"), dict):
        raise ModpoolError(f"{MANIFEST} lacks its file list")
    return manifest


def _inside(folder: Path, rel: str) -> Path:
    path = (folder / rel).resolve()
    if not str(path).startswith(str(folder.resolve()) + "/") or not path.is_file():
        raise ModpoolError(
            f"{MANIFEST} points at {rel!r}, which is not a file inside the repository"
        )
    return path


def _check_name_in_manifest(name: str) -> None:
    check_name(name, "artifact name in the repository")


def _check_repo_id(repo: str) -> None:
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts) or any(p in (".", "..") for p in parts):
        raise ModpoolError(f"expected a Hub repository id USER/REPO, got {repo!r}")


def _safe(exc: Exception, token: str | None) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text.replace(token, "***") if token else text
