"""safetensors files read and written tensor by tensor, so that no file is ever whole in memory.

Reading maps the file (`mmap`) and hands out zero-copy views of one tensor at a time;
`release` drops a tensor's pages from the process again (`madvise(MADV_DONTNEED)`), so the
resident memory of a pass over many files stays at a few tensors. Writing plans the layout
up front (the shapes of a delta are known before its values), reserves the header, writes
each tensor at its offset as it is computed, and fills the header in last: that lets the
header carry facts learned during the pass (the sha256 of every input) without a second
pass over the data. The header is padded with spaces, as the safetensors format allows.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import struct
import warnings
from pathlib import Path
from typing import BinaryIO

import torch

from .errors import ModpoolError

ITEMSIZE = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "U8": 1, "BOOL": 1}
TORCH_DTYPE = {
    "F64": torch.float64,
    "I64": torch.int64,
    "F32": torch.float32,
    "I32": torch.int32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAME = {v: k for k, v in TORCH_DTYPE.items()}
MAX_HEADER_BYTES = 64 * 1024 * 1024
HASH_CHUNK = 16 * 1024 * 1024
PAGE = mmap.PAGESIZE

Plan = list[tuple[str, str, list[int]]]  # (key, safetensors dtype, shape)


class TensorFile:
    """A safetensors file opened for reading one tensor at a time. The header is parsed and
    validated (`parse_header`) before any tensor is touched."""

    def __init__(self, buffer, where: str, fd: int | None = None):
        self.buffer, self.where, self._fd = buffer, where, fd
        self.entries, self.raw_meta, self.start = parse_header(buffer, where)

    @classmethod
    def open(cls, path: Path | str) -> TensorFile:
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise ModpoolError(f"no such file: {path}") from None
        except IsADirectoryError:
            raise ModpoolError(f"{path} is a directory, expected a .safetensors file") from None
        try:
            size = os.fstat(fd).st_size
            if size < 8:
                raise ModpoolError(f"{path.name}: not a safetensors file (only {size} bytes)")
            # a private (copy-on-write) map: writable views for torch, the file never changes
            buffer = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
            return cls(buffer, path.name, fd)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> TensorFile:
        return cls(memoryview(data), where)

    def __enter__(self) -> TensorFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if isinstance(self.buffer, mmap.mmap):
            self.buffer.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def keys(self) -> list[str]:
        return list(self.entries)

    def raw(self, key: str) -> torch.Tensor:
        """The stored tensor as a view of the file's bytes (no copy): clone to keep it."""
        entry = self.entries[key]
        dtype, shape = TORCH_DTYPE[entry["dtype"]], entry["shape"]
        begin, end = entry["data_offsets"]
        if end == begin:
            return torch.empty(shape, dtype=dtype)
        with warnings.catch_warnings():  # bytes input: read-only, and we never write to it
            warnings.simplefilter("ignore", UserWarning)
            flat = torch.frombuffer(
                self.buffer,
                dtype=dtype,
                count=(end - begin) // ITEMSIZE[entry["dtype"]],
                offset=self.start + begin,
            )
        return flat.reshape(shape)

    def release(self, key: str) -> None:
        """Drop the pages of `key` from this process (they stay in the OS page cache)."""
        if not isinstance(self.buffer, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED"):
            return
        begin, end = self.entries[key]["data_offsets"]
        low = (self.start + begin) // PAGE * PAGE
        high = min(len(self.buffer), -(-(self.start + end) // PAGE) * PAGE)
        if high > low:
            self.buffer.madvise(mmap.MADV_DONTNEED, low, high - low)

    def sha256(self) -> str:
        """Hash of the whole file, read in chunks through the file descriptor (not the map,
        so that it adds nothing to resident memory); safe to run in another thread."""
        if self._fd is None:
            return hashlib.sha256(self.buffer).hexdigest()
        return _hash_fd(self._fd)


class TensorWriter:
    """Writes a safetensors file laid out by `plan`, each tensor at its own offset in any
    order; `finish(meta)` writes the header, padded to the space reserved for `estimate`
    (a metadata dict of the same shape: values whose length changes, like hashes, must be
    given at their final length)."""

    SLACK = 1024

    def __init__(self, file: BinaryIO, plan: Plan, estimate: dict[str, str]):
        self.file, self.fd = file, file.fileno()
        ordered = sorted(plan, key=lambda e: (-ITEMSIZE[e[1]], e[0]))  # keeps views aligned
        self.entries: dict[str, dict] = {}
        position = 0
        for key, dtype, shape in ordered:
            size = math.prod(shape) * ITEMSIZE[dtype]
            self.entries[key] = {
                "dtype": dtype,
                "shape": list(shape),
                "data_offsets": [position, position + size],
            }
            position += size
        self.data_size = position
        reserved = len(self._header(estimate)) + self.SLACK
        self.header_size = -(-reserved // 8) * 8
        self.written: set[str] = set()

    def _header(self, meta: dict[str, str]) -> bytes:
        return json.dumps({"__metadata__": meta, **self.entries}, separators=(",", ":")).encode()

    def write(self, key: str, tensor: torch.Tensor) -> None:
        entry = self.entries.get(key)
        if entry is None or key in self.written:
            raise ModpoolError(f"internal error: tensor {key!r} not planned or written twice")
        if DTYPE_NAME.get(tensor.dtype) != entry["dtype"] or list(tensor.shape) != entry["shape"]:
            raise ModpoolError(
                f"internal error: {key!r} is {tensor.dtype} {list(tensor.shape)}, planned "
                f"{entry['dtype']} {entry['shape']}"
            )
        data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        offset = 8 + self.header_size + entry["data_offsets"][0]
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, offset)
            view, offset = view[n:], offset + n
        self.written.add(key)

    def finish(self, meta: dict[str, str]) -> None:
        missing = set(self.entries) - self.written
        if missing:
            raise ModpoolError(f"internal error: tensors never written: {sorted(missing)[:3]}")
        header = self._header(meta)
        if len(header) > self.header_size:
            raise ModpoolError("internal error: the final header outgrew its reserved space")
        header += b" " * (self.header_size - len(header))
        os.pwrite(self.fd, struct.pack("<Q", self.header_size) + header, 0)
        os.ftruncate(self.fd, 8 + self.header_size + self.data_size)


def sha256_file(path: Path | str) -> str:
    """sha256 of a file, read in chunks: memory stays at one chunk whatever the size."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return _hash_fd(fd)
    finally:
        os.close(fd)


def _hash_fd(fd: int) -> str:
    digest, offset, view = hashlib.sha256(), 0, memoryview(bytearray(HASH_CHUNK))
    while True:
        n = os.preadv(fd, [view], offset)
        if n == 0:
            return digest.hexdigest()
        digest.update(view[:n])
        offset += n


def parse_header(data, where: str) -> tuple[dict[str, dict], dict[str, str], int]:
    """Validate a safetensors header; return (tensor entries, raw metadata, data start).
    `data` is the file's bytes or a map of them (anything with len() and slicing)."""
    if len(data) < 8:
        raise ModpoolError(f"{where}: not a safetensors file (only {len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES or 8 + n > len(data):
        raise ModpoolError(
            f"{where}: not a safetensors file or truncated (header claims {n} bytes, "
            f"file has {len(data)})"
        )
    try:
        header = json.loads(bytes(data[8 : 8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModpoolError(f"{where}: not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise ModpoolError(f"{where}: malformed safetensors header (not an object)")
    raw_meta = header.pop("__metadata__", {})
    if not isinstance(raw_meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw_meta.items()
    ):
        raise ModpoolError(f"{where}: malformed metadata (must map strings to strings)")
    data_len = len(data) - 8 - n
    spans = []
    for name, entry in header.items():
        _check_entry(name, entry, data_len, where)
        spans.append(tuple(entry["data_offsets"]))
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise ModpoolError(f"{where}: malformed safetensors data (overlapping or gaps)")
        position = end
    if position != data_len:
        raise ModpoolError(
            f"{where}: truncated or padded data ({data_len} bytes, expected {position})"
        )
    return header, raw_meta, 8 + n


def _check_entry(name: str, entry, data_len: int, where: str) -> None:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise ModpoolError(f"{where}: malformed entry for tensor '{name}'")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in ITEMSIZE:
        raise ModpoolError(f"{where}: tensor '{name}' has unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ModpoolError(f"{where}: tensor '{name}' has a malformed shape")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= data_len
    ):
        raise ModpoolError(f"{where}: tensor '{name}' points outside the file (truncated?)")
    if offsets[1] - offsets[0] != math.prod(shape) * ITEMSIZE[dtype]:
        raise ModpoolError(f"{where}: tensor '{name}' size does not match its shape")
