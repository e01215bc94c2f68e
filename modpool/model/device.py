"""Which device computes: a GPU when asked for (or `auto` and one is there), else the CPU."""

from __future__ import annotations

import torch

from ..errors import ModpoolError


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModpoolError(f"--device {device} asked for, but no CUDA GPU is available")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ModpoolError(f"unknown device {device!r}: auto, cpu, cuda or cuda:N") from None


def usable(device: str | None) -> str:
    """`device` when this machine has it, else the CPU (rebuilding a recipe made on a GPU)."""
    if device and device.startswith("cuda") and torch.cuda.is_available():
        return device
    return "cpu"
