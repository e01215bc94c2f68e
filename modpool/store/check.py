"""Validate a whole pool: every file, every recipe, every log line (`modpool check`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModpoolError
from .artifact import load_artifact
from .layout import HEAD_FORMAT, KINDS, NAME_RE
from .tensorfile import parse_header

if TYPE_CHECKING:
    from ..pool import Pool


@dataclass
class Problem:
    path: str
    message: str


@dataclass
class CheckReport:
    files: int
    problems: list[Problem]
    recovered: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def check_pool(pool: Pool) -> CheckReport:
    problems: list[Problem] = []
    files = 0
    shas: dict[str, str] = {}
    artifacts = {}
    for sub, expected_type in KINDS.items():
        for path in sorted((pool.root / sub).iterdir()):
            rel = str(path.relative_to(pool.root))
            files += 1
            if path.suffix != ".safetensors" or not NAME_RE.match(path.stem):
                problems.append(Problem(rel, "unexpected file in the pool"))
                continue
            try:
                artifact = load_artifact(path, pool.manifest, pool.fingerprint)
            except ModpoolError as exc:
                problems.append(Problem(rel, str(exc)))
                continue
            if artifact.meta["type"] != expected_type:
                problems.append(Problem(rel, f"a {artifact.meta['type']} stored under {sub}/"))
            if artifact.meta["base"] != pool.config["base"]:
                problems.append(Problem(rel, f"records base {artifact.meta['base']}"))
            shas[path.stem] = artifact.sha256
            artifacts[path.stem] = (rel, artifact)
    for rel, artifact in artifacts.values():
        for ingredient in artifact.meta.get("recipe", {}).get("ingredients", []):
            other = ingredient.get("name")
            if other not in shas:
                problems.append(Problem(rel, f"recipe ingredient {other!r} is missing"))
            elif ingredient.get("sha256") != shas[other]:
                problems.append(
                    Problem(
                        rel,
                        f"recipe ingredient {other!r} changed since it was "
                        "composed (sha256 differs)",
                    )
                )
    for path in sorted((pool.root / "heads").glob("*")):
        files += 1
        problems += _check_head(pool, path)
    for log in ("evals.jsonl", "audit.jsonl"):
        problems += _check_log(pool.root / log)
    return CheckReport(files, problems, pool.recovered)


def _check_head(pool: Pool, path: Path) -> list[Problem]:
    rel = str(path.relative_to(pool.root))
    try:
        data = path.read_bytes()
        _, meta, _ = parse_header(data, path.name)
    except ModpoolError as exc:
        return [Problem(rel, str(exc))]
    if meta.get("format") != HEAD_FORMAT or meta.get("base_fingerprint") != pool.fingerprint:
        return [Problem(rel, "not a head for this pool's base (delete it to rebuild)")]
    return []


def _check_log(path: Path) -> list[Problem]:
    if not path.exists():
        return []
    bad = 0
    for line in path.read_text().splitlines():
        try:
            ok = isinstance(json.loads(line), dict)
        except json.JSONDecodeError:
            ok = False
        bad += not ok
    return [Problem(path.name, f"{bad} unreadable line(s)")] if bad else []
