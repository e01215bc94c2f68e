"""Reading `torch.save` zip checkpoints without running any code they name.

A pickle is a program: every global it names is looked up and called. This reader
overrides that lookup. Tensors and parameters are rebuilt by modpool's own functions (as
lazy references into the zip: nothing is read until a tensor is asked for, one tensor at
a time); a few plain containers (OrderedDict, set, ...) are the real ones; and every global
under an allowed prefix (`open_clip.*`, `src.*`, `torch.nn.modules.*`,
`torchvision.transforms.*`, `PIL.*`) becomes an inert stub, a class that only records
what it was given. So a whole pickled `ImageEncoder` of the task-vectors code, whose
classes no longer exist, reads back as a tree of stubs holding its parameters. Any other
global is refused with its name, before anything is called. `torch.load` is never used
with `weights_only=False`, and `pickle.load` is never used unrestricted.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ModpoolError

STUB_PREFIXES = ("open_clip.", "src.", "torch.nn.modules.", "torchvision.transforms.", "PIL.")
STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "UntypedStorage": torch.uint8,
}
DTYPE_NAMES = {
    "float64",
    "float32",
    "float16",
    "bfloat16",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
}


class Stub:
    """An object of a class that modpool will not import: it keeps what the pickle gave it
    (constructor arguments, state) and does nothing else."""

    qualname = "?"

    def __init__(self, *args: Any, **kwargs: Any):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<stub {self.qualname}>"


@dataclass
class LazyStorage:
    archive: zipfile.ZipFile
    member: str
    dtype: torch.dtype
    numel: int


@dataclass
class LazyTensor:
    """A tensor in the zip, read only by `load()`."""

    storage: LazyStorage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    parameter: bool = False

    @property
    def dtype(self) -> torch.dtype:
        return self.storage.dtype

    def load(self) -> torch.Tensor:
        raw = self.storage.archive.read(self.storage.member)
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        if len(raw) < self.storage.numel * itemsize:
            raise ModpoolError(f"{self.storage.member}: storage shorter than recorded")
        flat = torch.frombuffer(bytearray(raw), dtype=self.dtype)
        return torch.as_strided(flat, self.shape, self.stride, self.offset).clone()


@dataclass
class TorchZip:
    """An opened torch zip checkpoint: the unpickled object (tensors lazy, classes stubbed)
    and the globals it named."""

    root: Any
    globals: set[str] = field(default_factory=set)
    archive: zipfile.ZipFile | None = None

    def close(self) -> None:
        if self.archive is not None:
            self.archive.close()


def is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def open_torch_zip(path: Path) -> TorchZip:
    """Unpickle `path` restrictedly; raise ModpoolError for a damaged or hostile file."""
    try:
        archive = zipfile.ZipFile(path)
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ModpoolError(f"{path.name}: not a torch checkpoint (no single data.pkl)")
        prefix = pickles[0].removesuffix("data.pkl")
        byteorder = prefix + "byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise ModpoolError(f"{path.name}: big-endian checkpoints are not supported")
        reader = _Reader(archive.read(pickles[0]), archive, prefix + "data/", path.name)
        return TorchZip(reader.load(), reader.seen, archive)
    except (zipfile.BadZipFile, EOFError, OSError, pickle.UnpicklingError, ValueError) as exc:
        raise ModpoolError(
            f"{path.name} is damaged or truncated ({type(exc).__name__}: {exc}); "
            "nothing was imported"
        ) from None


class _Reader(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, data_dir: str, where: str):
        super().__init__(io.BytesIO(data))
        self.archive, self.data_dir, self.where = archive, data_dir, where
        self.seen: set[str] = set()
        self.stubs: dict[str, type[Stub]] = {}

    def find_class(self, module: str, name: str) -> Any:
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)
        qualname = f"{module}.{name}"
        self.seen.add(qualname)
        safe = _SAFE.get(qualname)
        if safe is not None:
            return safe
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        if module == "torch" and name in DTYPE_NAMES:
            return getattr(torch, name)
        if qualname.startswith(STUB_PREFIXES):
            return self._stub(qualname)
        raise ModpoolError(
            f"{self.where} names the global {qualname}, which a checkpoint has no reason to "
            "hold: refused without running anything"
        )

    def persistent_load(self, pid: Any) -> LazyStorage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ModpoolError(f"{self.where}: unknown persistent reference {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise ModpoolError(f"{self.where}: unknown storage type {storage_type!r:.80}")
        member = f"{self.data_dir}{key}"
        if member not in self.archive.namelist():
            raise ModpoolError(f"{self.where}: storage {key} is missing (truncated file?)")
        return LazyStorage(self.archive, member, storage_type.dtype, int(numel))

    def _stub(self, qualname: str) -> type[Stub]:
        if qualname not in self.stubs:
            self.stubs[qualname] = type(
                qualname.rsplit(".", 1)[-1], (Stub,), {"qualname": qualname}
            )
        return self.stubs[qualname]


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


def _rebuild_tensor(storage, offset, size, stride, *_ignored) -> LazyTensor:
    if not isinstance(storage, LazyStorage):
        raise ModpoolError("a tensor refers to something that is not a storage")
    return LazyTensor(storage, int(offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, hooks=None, *_state) -> LazyTensor:
    if not isinstance(data, LazyTensor):
        raise ModpoolError("a parameter holds something that is not a tensor")
    data.parameter = True
    return data


def _rebuild_from_type(func, cls, args, state) -> Any:
    if func not in (_rebuild_tensor, _rebuild_parameter):
        raise ModpoolError("a tensor is rebuilt by a function modpool does not allow")
    return func(*args)


def _encode(text: str, encoding: str = "latin1") -> bytes:
    if encoding not in ("latin1", "latin-1"):
        raise ModpoolError(f"a checkpoint asked for the {encoding!r} codec")
    return text.encode("latin1")


_SAFE: dict[str, Any] = {
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type,
    "torch.nn.parameter.Parameter": _rebuild_parameter,
    "torch.Size": tuple,
    "collections.OrderedDict": OrderedDict,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.slice": slice,
    "builtins.complex": complex,
    "_codecs.encode": _encode,
}


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Every tensor and string under `obj`, by dotted path: a state dict maps to itself, a
    pickled module (a stub with `_parameters`, `_buffers`, `_modules`) to its state dict,
    a nested checkpoint to `state_dict.<name>` paths."""
    if isinstance(obj, (LazyTensor, str)):
        return {prefix.removesuffix("."): obj}
    if isinstance(obj, Stub) and isinstance(obj.state, dict) and "_modules" in obj.state:
        return _flatten_module(obj.state, prefix)
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            if isinstance(key, (str, int)):
                out |= flatten(value, f"{prefix}{key}.")
        return out
    if isinstance(obj, (list, tuple)):
        out = {}
        for i, value in enumerate(obj):
            out |= flatten(value, f"{prefix}{i}.")
        return out
    return {}


def _flatten_module(state: dict, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    skip = state.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for key, value in (state.get(group) or {}).items():
            if isinstance(value, LazyTensor) and key not in skip:
                out[f"{prefix}{key}"] = value
    for key, child in (state.get("_modules") or {}).items():
        if child is not None:
            out |= flatten(child, f"{prefix}{key}.")
    return out
