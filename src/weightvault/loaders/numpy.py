"""Sealed files into NumPy arrays (bf16 and fp8 through ml_dtypes).

Mirrors :mod:`weightvault.loaders.torch`: ``load_file`` returns every tensor,
``safe_open`` gives lazy per-tensor and per-slice access.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from weightvault.errors import ConfigError
from weightvault.format.dtypes import DType
from weightvault.format.header import TensorEntry
from weightvault.loaders._host import host_buffer
from weightvault.loaders._selection import Index, plan_selection
from weightvault.sealing.reader import KeySource, OpenedFile, SealedFile

__all__ = ["SealedSafeOpen", "load_file", "load_opened", "numpy_dtype", "safe_open"]


def _ml(name: str) -> Any:
    try:
        import ml_dtypes
    except ImportError:  # pragma: no cover - ml_dtypes is a dependency
        return None
    return getattr(ml_dtypes, name, None)


_DTYPES: Final[dict[str, Any]] = {
    "BOOL": np.bool_,
    "U8": np.uint8,
    "I8": np.int8,
    "U16": np.uint16,
    "I16": np.int16,
    "U32": np.uint32,
    "I32": np.int32,
    "U64": np.uint64,
    "I64": np.int64,
    "F16": np.float16,
    "F32": np.float32,
    "F64": np.float64,
    "C64": np.complex64,
    "BF16": _ml("bfloat16"),
    "F8_E4M3": _ml("float8_e4m3fn"),
    "F8_E4M3FNUZ": _ml("float8_e4m3fnuz"),
    "F8_E5M2": _ml("float8_e5m2"),
    "F8_E5M2FNUZ": _ml("float8_e5m2fnuz"),
    "F8_E8M0": _ml("float8_e8m0fnu"),
}


def numpy_dtype(dtype: DType) -> np.dtype[Any]:
    """The NumPy dtype (little-endian) of a format dtype."""
    found = _DTYPES.get(dtype.name)
    if found is None:
        raise ConfigError(f"no NumPy dtype for {dtype.name} (install ml_dtypes)")
    result: np.dtype[Any] = np.dtype(found).newbyteorder("<")
    return result


def _as_array(owner: mmap.mmap | bytearray, entry: TensorEntry) -> npt.NDArray[Any]:
    dtype = numpy_dtype(entry.dtype)
    if entry.nbytes == 0:
        return np.empty(entry.shape, dtype=dtype)
    flat = np.frombuffer(owner, dtype=np.uint8)[: entry.nbytes]
    return flat.view(dtype).reshape(entry.shape)


def load_opened(
    opened: OpenedFile,
    names: Iterable[str] | None = None,
    progress: Callable[[int], None] | None = None,
    *,
    workers: int | None = None,
) -> dict[str, npt.NDArray[Any]]:
    """Decrypt and verify the named tensors (all covered by the key, by default)."""
    if names is None:
        entries = [e for e in opened.entries if opened.keys.has_tensor(e.index)]
    else:
        entries = [opened.entry(n) for n in names]
    for entry in entries:
        numpy_dtype(entry.dtype)
    owners: list[mmap.mmap | bytearray] = []

    def allocate(entry: TensorEntry) -> memoryview:
        owner = host_buffer(entry.nbytes)
        owners.append(owner)
        return memoryview(owner)

    for view in opened.decrypt_tensors(entries, allocate, progress, workers=workers):
        view.release()
    return {e.name: _as_array(owner, e) for e, owner in zip(entries, owners, strict=True)}


def load_file(
    path: str | Path,
    keys: KeySource,
    *,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
) -> dict[str, npt.NDArray[Any]]:
    """Load every tensor of a sealed file as NumPy arrays (``workers`` decrypting threads, default one per core)."""
    with SealedFile(path) as sealed:
        opened = sealed.unlock(keys)
        try:
            return load_opened(opened, progress=progress, workers=workers)
        finally:
            opened.keys.forget()


class _Slice:
    def __init__(self, opened: OpenedFile, entry: TensorEntry, workers: int | None) -> None:
        self._opened = opened
        self._entry = entry
        self._workers = workers

    def get_shape(self) -> list[int]:
        return list(self._entry.shape)

    def get_dtype(self) -> str:
        return self._entry.dtype.name

    def __getitem__(self, index: Index) -> npt.NDArray[Any]:
        entry = self._entry
        dtype = numpy_dtype(entry.dtype)
        plan = plan_selection(entry.shape, entry.dtype.itemsize, index)
        if plan.empty:
            return np.empty(plan.sizes, dtype=dtype)
        raw = self._opened.read_range(entry, plan.start, plan.stop, workers=self._workers)
        flat = np.frombuffer(raw, dtype=dtype)
        strides = tuple(s * dtype.itemsize for s in plan.strides)
        picked = np.lib.stride_tricks.as_strided(flat, shape=plan.sizes, strides=strides).copy()
        raw[:] = bytes(len(raw))
        return picked


class SealedSafeOpen:
    """Lazy access to a sealed file, shaped like ``safetensors.safe_open(framework="np")``."""

    def __init__(self, path: str | Path, keys: KeySource, *, workers: int | None = None) -> None:
        self._sealed = SealedFile(path)
        try:
            self._opened = self._sealed.unlock(keys)
        except BaseException:
            self._sealed.close()
            raise
        self._workers = workers

    def __enter__(self) -> SealedSafeOpen:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._opened.close()

    def keys(self) -> list[str]:
        return [e.name for e in self._opened.entries]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def metadata(self) -> dict[str, str]:
        return dict(self._opened.table.metadata)

    def get_tensor(self, name: str) -> npt.NDArray[Any]:
        return load_opened(self._opened, [name], workers=self._workers)[name]

    def get_slice(self, name: str) -> _Slice:
        return _Slice(self._opened, self._opened.entry(name), self._workers)


def safe_open(path: str | Path, keys: KeySource, *, workers: int | None = None) -> SealedSafeOpen:
    """Open a sealed file for lazy NumPy access (``workers`` decrypting threads)."""
    return SealedSafeOpen(path, keys, workers=workers)
