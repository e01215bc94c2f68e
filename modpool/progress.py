"""Progress bars on stderr (stdout stays clean for --json); silent when disabled."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

Update = Callable[..., None]


def enabled_by_default() -> bool:
    return os.environ.get("MODPOOL_PROGRESS", "1") != "0"


@contextlib.contextmanager
def bar(
    description: str, total: int, show: bool | None = None, stats: str = ""
) -> Iterator[Update]:
    """Yield `update(advance=1, **fields)`; `stats` is a format string over the fields."""
    if show is None:
        show = enabled_by_default()
    if not show:
        yield lambda advance=1, **fields: None
        return
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    ]
    if stats:
        columns.append(TextColumn(stats))
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task_id = progress.add_task(description, total=total, **_blank(stats))

        def update(advance: int = 1, **fields) -> None:
            progress.update(task_id, advance=advance, **fields)

        yield update


def _blank(stats: str) -> dict:
    import string

    names = {f for _, f, _, _ in string.Formatter().parse(stats) if f}
    return {n.removeprefix("task.fields[").split("]")[0]: 0.0 for n in names}
