"""Read torch's legacy (non-zip) ``.pth`` state dicts with ``pickle`` and numpy alone.

A ``.pth`` file is a pickle, and unpickling can call any function it names, so a weights file
could run code. The Unpickler here resolves only the handful of globals a state dict needs and
refuses every other one, which also spares us installing torch to read two weight files.

The legacy layout is five pickles and then raw data: magic number, protocol version, sys info,
the state dict (storages as persistent ids), the list of storage keys, then for each key an int64
element count followed by the storage's little-endian bytes.
"""
from __future__ import annotations

import collections
import pickle
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class WeightsFormatError(ValueError):
    """The file is not a readable legacy torch state dict (corrupt, truncated, other format)."""


class UnsafeWeightsError(ValueError):
    """The file asks for a global that a state dict never needs, e.g. ``os.system``."""


class _StorageType:
    """Stands in for ``torch.FloatStorage`` etc.; a fresh one per use, so no file can alter a
    shared object through pickle's BUILD."""

    def __init__(self, name: str):
        self.name = name


class _TensorRecord(NamedTuple):
    """torch's ``_rebuild_tensor_v2`` arguments; immutable, and checked before any use."""
    storage_key: object
    offset: object
    shape: tuple
    stride: tuple


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_requires_grad_hooks_metadata):
    return _TensorRecord(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, *_requires_grad_hooks):
    return data


ALLOWED_CALLABLES = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals a state dict needs; notes each storage's dtype and size."""

    def __init__(self, file: BinaryIO, storages: dict[str, tuple[np.dtype, int]]):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str):
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) in ALLOWED_CALLABLES:
            return ALLOWED_CALLABLES[(module, name)]
        raise UnsafeWeightsError(
            f"refusing to load weights: the file asks for the global {module}.{name}, "
            "which a state dict never needs (it could run code)"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise WeightsFormatError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel, view_metadata = pid
        if not (isinstance(storage_type, _StorageType) and storage_type.name in STORAGE_DTYPES):
            raise WeightsFormatError(f"unexpected storage type {storage_type!r}")
        if not (isinstance(key, str) and isinstance(numel, int) and numel >= 0):
            raise WeightsFormatError(f"malformed storage {key!r} of {numel!r} elements")
        if view_metadata is not None:
            raise WeightsFormatError("storage views (torch < 0.4 files) are not supported")
        self.storages.setdefault(key, (STORAGE_DTYPES[storage_type.name], numel))
        return key


def _read_storage(file: BinaryIO, dtype: np.dtype, numel: int) -> np.ndarray:
    header = file.read(8)
    if len(header) < 8:
        raise WeightsFormatError("the file ends before all storages were read (truncated?)")
    if int(np.frombuffer(header, "<i8")[0]) != numel:
        raise WeightsFormatError("a storage's size differs from what the pickle said")
    raw = file.read(numel * dtype.itemsize)
    if len(raw) < numel * dtype.itemsize:
        raise WeightsFormatError("the file ends inside a storage (truncated?)")
    return np.frombuffer(raw, dtype)


def _to_array(name, record, storages: dict[str, np.ndarray]) -> np.ndarray:
    """Copy one tensor out of its flat storage, honouring offset and strides (in elements).

    Everything is checked first: ``as_strided`` trusts its arguments and would otherwise read
    whatever memory a crafted file pointed it at.
    """
    if not isinstance(record, _TensorRecord):
        raise WeightsFormatError(f"{name!r} is not a tensor")
    numbers = (record.offset, *record.shape, *record.stride)
    if not all(isinstance(n, int) and n >= 0 for n in numbers) or len(record.shape) != len(record.stride):
        raise WeightsFormatError(f"{name!r} has a malformed offset, shape or stride")
    flat = storages.get(record.storage_key)
    if flat is None:
        raise WeightsFormatError(f"{name!r} refers to a storage the file does not contain")
    if 0 in record.shape:
        return np.zeros(record.shape, flat.dtype)
    last = record.offset + sum((n - 1) * s for n, s in zip(record.shape, record.stride))
    if last >= flat.size:
        raise WeightsFormatError(f"{name!r} reaches past the end of its storage")
    view = np.lib.stride_tricks.as_strided(
        flat[record.offset:], record.shape, [s * flat.itemsize for s in record.stride]
    )
    return np.array(view, copy=True)


def _parse(file: BinaryIO) -> dict[str, np.ndarray]:
    announced: dict[str, tuple[np.dtype, int]] = {}

    def next_pickle():
        return _RestrictedUnpickler(file, announced).load()

    if next_pickle() != LEGACY_MAGIC_NUMBER:
        raise WeightsFormatError("not a legacy torch file (wrong magic number)")
    if next_pickle() != LEGACY_PROTOCOL_VERSION:
        raise WeightsFormatError("unknown torch protocol version")
    if not next_pickle().get("little_endian"):
        raise WeightsFormatError("written big-endian")
    state, storage_keys = next_pickle(), next_pickle()
    if not isinstance(state, dict):
        raise WeightsFormatError("does not hold a state dict")
    storages = {}
    for key in storage_keys:
        if key not in announced or key in storages:
            raise WeightsFormatError(f"lists an unknown or repeated storage {key!r}")
        storages[key] = _read_storage(file, *announced[key])
    return {name: _to_array(name, record, storages) for name, record in state.items()}


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a legacy torch state dict: name -> array in torch's layout and stored dtype.

    Weights come out float32 as stored; BatchNorm's ``num_batches_tracked`` counters are int64.
    Raises ``UnsafeWeightsError`` for any global outside the allow-list (nothing is executed)
    and ``WeightsFormatError`` for anything that is not a complete legacy state dict.
    """
    with open(path, "rb") as file:
        if file.read(2) == b"PK":
            raise WeightsFormatError(f"{path} is torch's zip format; only the legacy format is read")
        file.seek(0)
        try:
            return _parse(file)
        except (UnsafeWeightsError, WeightsFormatError) as error:
            raise type(error)(f"{path}: {error}") from None
        except Exception as error:  # a damaged pickle fails in many ways: EOF, bad opcode, types
            raise WeightsFormatError(f"{path} is not a readable torch file: {error!r}") from error
