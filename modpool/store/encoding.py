"""How a delta is stored: its dtype, and optionally only its largest entries (compact modules).

A tensor `name` is stored either dense (key `name`) or sparse: its `k` largest-magnitude
entries as `values/name` in the storage dtype, with their positions as a bitmask
`mask/name` (uint8, bit j of byte i is entry 8i+j) or as indices `index/name` (int32,
increasing), whichever is smaller; a tensor whose sparse form would not be smaller stays
dense. Reading always gives back a dense float32 tensor, so nothing downstream knows.
Stored positions are validated like everything else in a file: counts, ranges, order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ModpoolError
from .tensorfile import DTYPE_NAME, ITEMSIZE, TensorFile

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
VALUES, MASK, INDEX = "values/", "mask/", "index/"
FLOAT_CODES = ("F64", "F32", "F16", "BF16")
BIT_WEIGHTS = torch.tensor([1 << j for j in range(8)], dtype=torch.uint8)


@dataclass(frozen=True)
class Storage:
    """dtype in fp32|bf16|fp16; density in (0, 1]: the fraction of entries kept per tensor."""

    dtype: str = "fp32"
    density: float = 1.0

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ModpoolError(
                f"unknown storage dtype {self.dtype!r}: choose one of {', '.join(DTYPES)}"
            )
        if not 0 < self.density <= 1:
            raise ModpoolError(
                f"density must be in (0, 1] (the fraction of entries kept), got {self.density}"
            )

    @classmethod
    def from_dict(cls, data: dict | None) -> Storage:
        data = data or {}
        return cls(data.get("dtype", "fp32"), float(data.get("density", 1.0)))

    def to_dict(self) -> dict:
        return {"dtype": self.dtype, "density": self.density}

    @property
    def torch_name(self) -> str:
        return str(DTYPES[self.dtype]).removeprefix("torch.")

    @property
    def code(self) -> str:
        return DTYPE_NAME[DTYPES[self.dtype]]

    def kept(self, numel: int) -> int:
        return numel if self.density >= 1 else min(numel, max(1, math.ceil(self.density * numel)))

    def layout(self, name: str, shape: list[int]) -> list[tuple[str, str, list[int]]]:
        """The stored entries of one tensor: (key, safetensors dtype, shape)."""
        numel = math.prod(shape)
        k = self.kept(numel)
        dense = numel * ITEMSIZE[self.code]
        mask, index = -(-numel // 8), 4 * k
        if k * ITEMSIZE[self.code] + min(mask, index) >= dense:
            return [(name, self.code, list(shape))]
        values = (VALUES + name, self.code, [k])
        if mask <= index:
            return [values, (MASK + name, "U8", [-(-numel // 8)])]
        return [values, (INDEX + name, "I32", [k])]

    def encode(self, name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        """The stored tensors for `name`, as `layout` planned them."""
        layout = self.layout(name, list(tensor.shape))
        dtype = DTYPES[self.dtype]
        if len(layout) == 1:
            return {name: tensor.to(dtype)}
        flat = tensor.reshape(-1)
        k = layout[0][2][0]
        positions = torch.topk(flat.abs().float(), k, sorted=False).indices.sort().values
        out = {VALUES + name: flat[positions].to(dtype)}
        if layout[1][0].startswith(MASK):
            out[MASK + name] = pack_bits(positions, flat.numel())
        else:
            out[INDEX + name] = positions.to(torch.int32)
        return out


def encode_masked(name: str, tensor: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """`tensor` where `mask` holds, stored as its values there and the mask's bits (always
    the bitmask, whatever is smaller: the mask itself is what a masked module records)."""
    flat, keep = tensor.reshape(-1).float(), mask.reshape(-1).bool()
    return {VALUES + name: flat[keep].contiguous(), MASK + name: pack_mask(keep)}


def stored_mask(file: TensorFile, name: str, shape: list[int]) -> torch.Tensor | None:
    """The bitmask a tensor is stored with, as booleans of its shape (None: stored dense)."""
    if MASK + name not in file.entries:
        return None
    numel = math.prod(shape)
    return unpack_bits(file.raw(MASK + name), numel).reshape(shape)


def pack_bits(positions: torch.Tensor, numel: int) -> torch.Tensor:
    bits = torch.zeros(-(-numel // 8) * 8, dtype=torch.uint8)
    bits[positions] = 1
    return (bits.view(-1, 8) * BIT_WEIGHTS).sum(1, dtype=torch.uint8)


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """A boolean (or 0/1) tensor as bits (bit j of byte i is entry 8i + j), 1 bit per
    entry; numpy's packbits, which is what this layout is."""
    flat = mask.reshape(-1).bool().numpy()
    return torch.from_numpy(np.packbits(flat, bitorder="little"))


def unpack_bits(mask: torch.Tensor, numel: int) -> torch.Tensor:
    return ((mask.view(-1, 1) & BIT_WEIGHTS) != 0).reshape(-1)[:numel]


def logical_name(key: str) -> tuple[str, str]:
    """(parameter name, role) of a stored key; role is dense, values, mask or index."""
    for prefix, role in ((VALUES, "values"), (MASK, "mask"), (INDEX, "index")):
        if key.startswith(prefix):
            return key[len(prefix) :], role
    return key, "dense"


def parameters(file: TensorFile, skip_prefix: str | tuple[str, ...]) -> dict[str, list[int] | None]:
    """Parameter names stored in `file` (keys under `skip_prefix` aside), with their shape
    when stored dense; checks that each is stored exactly one way, with fitting dtypes."""
    roles: dict[str, dict[str, dict]] = {}
    for key, entry in file.entries.items():
        if key.startswith(skip_prefix):
            continue
        name, role = logical_name(key)
        roles.setdefault(name, {})[role] = entry
    out = {}
    for name, parts in roles.items():
        kinds = set(parts)
        if kinds not in ({"dense"}, {"values", "mask"}, {"values", "index"}):
            raise ModpoolError(f"{file.where}: tensor '{name}' is stored inconsistently")
        expected = {"dense": FLOAT_CODES, "values": FLOAT_CODES, "mask": ("U8",), "index": ("I32",)}
        for role, entry in parts.items():
            if entry["dtype"] not in expected[role]:
                raise ModpoolError(
                    f"{file.where}: tensor '{name}' ({role}) has dtype {entry['dtype']}"
                )
            if role != "dense" and len(entry["shape"]) != 1:
                raise ModpoolError(f"{file.where}: tensor '{name}' ({role}) is not 1-D")
        out[name] = parts["dense"]["shape"] if "dense" in parts else None
    return out


def decode(file: TensorFile, name: str, shape: list[int]) -> torch.Tensor:
    """The float32 dense tensor `name` of the given (manifest) shape. A view of the file when
    it is stored dense in float32: clone it to keep it after the file closes."""
    if name in file.entries:
        return file.raw(name).float()
    values = file.raw(VALUES + name).float()
    numel = math.prod(shape)
    if values.numel() > numel:
        raise ModpoolError(f"{file.where}: tensor '{name}' stores more values than entries")
    if MASK + name in file.entries:
        mask = file.raw(MASK + name)
        if mask.numel() != -(-numel // 8):
            raise ModpoolError(f"{file.where}: tensor '{name}' has a mask of the wrong size")
        bits = unpack_bits(mask, mask.numel() * 8)
        if bits[numel:].any() or int(bits.sum()) != values.numel():
            raise ModpoolError(f"{file.where}: tensor '{name}': mask and values disagree")
        positions = torch.nonzero(bits[:numel]).flatten()
    else:
        positions = file.raw(INDEX + name).long()
        if positions.numel() != values.numel() or (
            positions.numel()
            and (positions[0] < 0 or positions[-1] >= numel or (positions.diff() <= 0).any())
        ):
            raise ModpoolError(f"{file.where}: tensor '{name}' has invalid positions")
    out = torch.zeros(numel, dtype=torch.float32)
    out[positions] = values
    return out.reshape(shape)


def release(file: TensorFile, name: str) -> None:
    for key in (name, VALUES + name, MASK + name, INDEX + name):
        if key in file.entries:
            file.release(key)
