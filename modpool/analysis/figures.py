"""Figures (heat maps, bar charts) drawn with matplotlib, an optional extra.

Every figure is written beside its numbers (JSON), which never need matplotlib: without it,
the JSON is written and the caller says how to get the picture.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

PLOT_EXTRA = "pip install 'modpool[plot]' (matplotlib) for the PNG"


def pyplot() -> ModuleType | None:
    """matplotlib.pyplot on a file-only backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_beside(result: dict, png: Path, draw: Callable) -> tuple[Path, Path | None]:
    """Write `result` as JSON beside `png` (same stem), then the figure `draw(pyplot)`
    returns as `png`; the PNG path is None without matplotlib."""
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    json_path = png.with_suffix(".json")
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    plt = pyplot()
    if plt is None:
        return json_path, None
    fig = draw(plt)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return json_path, png
