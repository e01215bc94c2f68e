"""Merge methods, one file each, registered by name (mergekit style).

A method turns ingredient deltas and their user coefficients into one delta. It is a
pure, deterministic function of its inputs and seed, so a composition can always be
rebuilt bit for bit from its recipe (this is what makes `forget` exact).
"""

from __future__ import annotations

from . import (  # noqa: F401  (registration)
    consensus,
    dare,
    iso,
    iso_cts,
    magnitude,
    mean,
    sum,
    tall,
    ties,
    tsv,
)
from .base import REGISTRY, MergeMethod, get_method, register

__all__ = ["REGISTRY", "MergeMethod", "get_method", "register"]
