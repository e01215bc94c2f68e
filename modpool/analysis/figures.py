"""Figures (heat maps, bar charts) drawn with matplotlib, an optional extra.

Every figure is written beside its numbers (JSON), which never need matplotlib: without it,
the JSON is written and the caller says how to get the picture.
"""

from __future__ import annotations

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
