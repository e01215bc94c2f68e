"""safetensors files read and written tensor by tensor, so that no file is ever whole in memory.

Reading maps the file (`mmap`) and hands out zero-copy views of one tensor at a time;
`release` drops a tensor's pages from the process again (`madvise(MADV_DONTNEED)`), so the
resident memory of a pass over many files stays at a few tensors. Writing plans the layout
from the shapes alone (known before any value), writes the header, then each tensor as it
is computed, hashing the bytes on the way. The header is padded with spaces to a multiple
of 8 bytes, as the safetensors format allows.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import hashlib
import json
import math
import mmap
import os
import queue
import struct
import threading
import warnings
from pathlib import Path
from typing import BinaryIO

import torch

from ..errors import ModpoolError

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
    """Writes a safetensors file front to back: the header first (the layout is planned from
    the shapes alone, so it is known before any value), then each tensor, in `order`, as it
    is computed.

    The bytes go through a few page-aligned staging chunks, in a pipeline: the caller copies
    each tensor in, one thread hashes a full chunk while the caller computes the next tensor,
    a second thread writes it and hands the chunk back. The file is written with direct I/O
    (`O_DIRECT`) where the file system allows it: the disk reads the chunk from our memory,
    with no copy into the page cache and almost no CPU, which on two cores leaves them to the
    merge and the hash (composing eight ViT-B/32 modules: 1.65x faster than through the
    page cache, `benchmarks/streaming.py`). Elsewhere the writes are ordinary, and their
    writeback starts every `SYNC_EVERY` bytes, so that the final fsync has little left.
    Memory: `CHUNKS * CHUNK` bytes, whatever the file's size. While it is open, torch
    computes with one thread fewer, leaving a core to the hash. The file object is only
    used through its descriptor (nothing is ever buffered in it)."""

    CHUNK = 8 * 1024 * 1024
    CHUNKS = 4
    SYNC_EVERY = 64 * 1024 * 1024
    DIRECT = True  # try direct I/O (tests turn it off to cover the ordinary path)

    def __init__(self, file: BinaryIO, plan: Plan, meta: dict[str, str], spare_core: bool = True):
        self.fd = file.fileno()
        self.order = [key for key, _, _ in sorted(plan, key=lambda e: (-ITEMSIZE[e[1]], e[0]))]
        self.entries, header = _layout(plan, self.order, meta)
        self.size = len(header) + sum(
            e["data_offsets"][1] - e["data_offsets"][0] for e in self.entries.values()
        )
        self.digest = hashlib.sha256()
        self.next = 0
        self.direct = self.DIRECT and _set_direct(self.fd, True)
        self._synced = 0  # bytes whose writeback has started (ordinary writes)
        self._free: queue.Queue = queue.Queue()
        for _ in range(self.CHUNKS):
            self._free.put(_Chunk(self.CHUNK))
        self._chunk: _Chunk | None = None
        self._offset = 0  # of the current chunk in the file
        writer = _Worker(self._write, then=self._free.put)
        self._workers = [_Worker(self._hash, then=writer.put), writer]  # stopped in order
        # the hash thread needs a core (on two cores 1.2x faster), unless the caller's work
        # is so heavy (SVDs) that hashing is a small share of it: `spare_core=False`
        self._torch_threads = torch.get_num_threads() if spare_core else 0
        if spare_core:
            torch.set_num_threads(max(1, self._torch_threads - 1))
        self._append(torch.frombuffer(bytearray(header), dtype=torch.uint8))

    def write(self, key: str, tensor: torch.Tensor) -> None:
        """Copy the next planned tensor into the pipeline."""
        self._raise_failure()
        if self.next >= len(self.order) or self.order[self.next] != key:
            expected = self.order[self.next] if self.next < len(self.order) else "nothing"
            raise ModpoolError(f"internal error: wrote {key!r}, expected {expected!r}")
        entry = self.entries[key]
        if DTYPE_NAME.get(tensor.dtype) != entry["dtype"] or list(tensor.shape) != entry["shape"]:
            raise ModpoolError(
                f"internal error: {key!r} is {tensor.dtype} {list(tensor.shape)}, planned "
                f"{entry['dtype']} {entry['shape']}"
            )
        self._append(tensor.detach().contiguous().reshape(-1).view(torch.uint8))
        self.next += 1

    def finish(self) -> str:
        """Wait for the writes, check that every planned tensor came; return the sha256."""
        if self._chunk is not None and self._chunk.filled:
            self._send()
        self.close()
        self._raise_failure()
        if self.next != len(self.order):
            missing = self.order[self.next : self.next + 3]
            raise ModpoolError(f"internal error: tensors never written: {missing}")
        os.ftruncate(self.fd, self.size)  # direct writes end on a whole block
        return self.digest.hexdigest()

    def __enter__(self) -> TensorWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the threads (after the queued work) and leave the file in ordinary mode;
        `finish` does it too."""
        for worker in self._workers:
            worker.stop()
        if self.direct:
            _set_direct(self.fd, False)
            self.direct = False
        if self._torch_threads:
            torch.set_num_threads(self._torch_threads)
            self._torch_threads = 0

    def _raise_failure(self) -> None:
        """Re-raise, in the caller's thread, the first failure of either thread."""
        for worker in self._workers:
            if worker.failure is not None:
                raise worker.failure

    def _append(self, data: torch.Tensor) -> None:
        """Copy bytes into staging chunks, sending each one that fills up."""
        done = 0
        while done < len(data):
            if self._chunk is None:
                self._chunk = self._free.get().recycle()  # waits while all are in flight
                self._raise_failure()
            done += self._chunk.take(data[done:])
            if self._chunk.full:
                self._send()

    def _send(self) -> None:
        chunk, self._chunk = self._chunk, None
        chunk.offset, self._offset = self._offset, self._offset + chunk.filled
        self._workers[0].put(chunk)

    def _hash(self, chunk: _Chunk) -> None:
        self.digest.update(chunk.view())  # releases the GIL

    def _write(self, chunk: _Chunk) -> None:
        if self.direct:
            try:
                return _pwrite_all(self.fd, chunk.view(whole_blocks=True), chunk.offset)
            except OSError as exc:  # the file system took the flag but not the write
                if exc.errno != errno.EINVAL:
                    raise
                self.direct = _set_direct(self.fd, False)
        _pwrite_all(self.fd, chunk.view(), chunk.offset)
        end = chunk.offset + chunk.filled
        if end - self._synced >= self.SYNC_EVERY:
            _start_writeback(self.fd, self._synced, end - self._synced)
            self._synced = end


class _Chunk:
    """A page-aligned staging buffer (an anonymous map), filled by the caller."""

    BLOCK = 4096  # direct I/O writes whole blocks of this size

    def __init__(self, size: int):
        self.buffer = mmap.mmap(-1, size)
        self.bytes = torch.frombuffer(self.buffer, dtype=torch.uint8)
        self.filled = self.offset = 0

    @property
    def full(self) -> bool:
        return self.filled == len(self.buffer)

    def take(self, data: torch.Tensor) -> int:
        """Copy as much of `data` as fits (releasing the GIL); return how much."""
        n = min(len(data), len(self.buffer) - self.filled)
        self.bytes[self.filled : self.filled + n].copy_(data[:n])
        self.filled += n
        return n

    def view(self, whole_blocks: bool = False) -> memoryview:
        end = -(-self.filled // self.BLOCK) * self.BLOCK if whole_blocks else self.filled
        return memoryview(self.buffer)[:end]

    def recycle(self) -> _Chunk:
        self.filled = self.offset = 0
        return self


class _Worker:
    """A thread applying `work` to each queued chunk, in order, then passing it on (`then`).
    After a failure it keeps passing chunks on without working (so that nobody waits for
    them forever) and keeps the exception for the caller."""

    def __init__(self, work, then):
        self.work, self.then, self.failure = work, then, None
        self.queue: queue.Queue = queue.Queue()  # bounded by the number of chunks
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def put(self, chunk: _Chunk) -> None:
        self.queue.put(chunk)

    def stop(self) -> None:
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()

    def _run(self) -> None:
        while (chunk := self.queue.get()) is not None:
            if self.failure is None:
                try:
                    self.work(chunk)
                except BaseException as exc:  # reported to the producer
                    self.failure = exc
            self.then(chunk)


def _layout(plan: Plan, order: list[str], meta: dict[str, str]) -> tuple[dict, bytes]:
    """Each tensor's entry (larger items first, so that every tensor stays aligned) and the
    header bytes: length, JSON, padded with spaces to a multiple of 8."""
    layout = {key: (dtype, list(shape)) for key, dtype, shape in plan}
    entries, position = {}, 0
    for key in order:
        dtype, shape = layout[key]
        size = math.prod(shape) * ITEMSIZE[dtype]
        entries[key] = {"dtype": dtype, "shape": shape, "data_offsets": [position, position + size]}
        position += size
    header = json.dumps({"__metadata__": meta, **entries}, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return entries, struct.pack("<Q", len(header)) + header


def _set_direct(fd: int, on: bool) -> bool:
    """Turn direct I/O on or off for `fd`; False where the system or file system has none."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return False
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | flag if on else flags & ~flag)
    except OSError:
        return False
    return on


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range to disk now, without waiting for it (Linux
    `sync_file_range(SYNC_FILE_RANGE_WRITE)`), so that a later fsync finds little to do.
    A hint only: where the call is missing nothing happens, and the fsync does it all."""
    call = _sync_file_range()
    if call is not None:
        call(fd, ctypes.c_int64(offset), ctypes.c_int64(length), 2)


@functools.cache
def _sync_file_range():
    try:
        return ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None


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
