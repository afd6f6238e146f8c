"""Sealed files into PyTorch tensors.

``load_file`` mirrors :func:`safetensors.torch.load_file` and ``safe_open``
mirrors :func:`safetensors.safe_open`, with a ``keys`` argument: a
:class:`~weightvault.format.FileKey`, a partial :class:`~weightvault.format.TensorKeys`
grant, or identities that open a recipient stanza. Every tensor is verified
before it is returned; a failure raises and returns nothing.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final

from weightvault.crypto.aead import AEADSuite
from weightvault.errors import ConfigError
from weightvault.format.dtypes import DType
from weightvault.format.header import TensorEntry
from weightvault.loaders._host import host_buffer
from weightvault.loaders._selection import Index, plan_selection
from weightvault.sealing.model_dir import SealedModel
from weightvault.sealing.reader import KeySource, OpenedFile, SealedFile

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise ConfigError("weightvault.loaders.torch needs PyTorch: pip install 'weightvault[torch]'") from exc

__all__ = ["SealedSafeOpen", "SealedSlice", "load_file", "load_model", "load_opened", "safe_open", "torch_dtype"]

_DTYPES: Final[dict[str, torch.dtype | None]] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "C64": torch.complex64,
    "U16": getattr(torch, "uint16", None),
    "U32": getattr(torch, "uint32", None),
    "U64": getattr(torch, "uint64", None),
    "F8_E4M3": getattr(torch, "float8_e4m3fn", None),
    "F8_E4M3FNUZ": getattr(torch, "float8_e4m3fnuz", None),
    "F8_E5M2": getattr(torch, "float8_e5m2", None),
    "F8_E5M2FNUZ": getattr(torch, "float8_e5m2fnuz", None),
    "F8_E8M0": getattr(torch, "float8_e8m0fnu", None),
}


def torch_dtype(dtype: DType) -> torch.dtype:
    """The torch dtype of a format dtype; raises ConfigError if this torch lacks it."""
    found = _DTYPES.get(dtype.name)
    if found is None:
        raise ConfigError(f"this PyTorch build has no dtype for {dtype.name}")
    return found


def _as_tensor(owner: mmap.mmap | bytearray, entry: TensorEntry) -> torch.Tensor:
    dtype = torch_dtype(entry.dtype)
    if entry.nbytes == 0:
        return torch.empty(entry.shape, dtype=dtype)
    flat = torch.frombuffer(owner, dtype=torch.uint8)[: entry.nbytes]
    return flat.view(dtype).reshape(entry.shape)


def _use_kernels(opened: OpenedFile, target: torch.device, kernels: bool | None) -> bool:
    """Device kernels: when asked, or by default for CUDA targets and ChaCha20-Poly1305 files."""
    if kernels is not None:
        return kernels
    if target.type != "cuda" or opened.layout.preamble.suite is not AEADSuite.CHACHA20_POLY1305:
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _as_device_tensor(raw: torch.Tensor, entry: TensorEntry) -> torch.Tensor:
    dtype = torch_dtype(entry.dtype)
    if entry.nbytes == 0:
        return torch.empty(entry.shape, dtype=dtype, device=raw.device)
    return raw.view(dtype).reshape(entry.shape)


def load_opened(
    opened: OpenedFile,
    device: str | torch.device = "cpu",
    names: Iterable[str] | None = None,
    progress: Callable[[int], None] | None = None,
    *,
    kernels: bool | None = None,
    workers: int | None = None,
) -> dict[str, torch.Tensor]:
    """Decrypt and verify the named tensors (all covered by the key, by default).

    On a CUDA device a ChaCha20-Poly1305 file is decrypted by the device kernels
    (:mod:`weightvault.gpu`): ciphertext goes straight into the tensors' device
    memory and is verified and decrypted there. ``kernels`` forces that path on or
    off (``True`` on a CPU device runs the kernels under ``TRITON_INTERPRET=1``).
    """
    if names is None:
        entries = [e for e in opened.entries if opened.keys.has_tensor(e.index)]
    else:
        entries = [opened.entry(n) for n in names]
    for entry in entries:
        torch_dtype(entry.dtype)
    target = torch.device(device)
    if _use_kernels(opened, target, kernels):
        from weightvault.gpu.pipeline import load_to_device

        raw = load_to_device(opened, entries, target, progress)
        return {e.name: _as_device_tensor(raw[e.name], e) for e in entries}
    owners: list[mmap.mmap | bytearray] = []

    def allocate(entry: TensorEntry) -> memoryview:
        owner = host_buffer(entry.nbytes)
        owners.append(owner)
        return memoryview(owner)

    views = opened.decrypt_tensors(entries, allocate, progress, workers=workers)
    for view in views:
        view.release()
    out = {e.name: _as_tensor(owner, e) for e, owner in zip(entries, owners, strict=True)}
    if target.type != "cpu":
        out = {name: t.to(target) for name, t in out.items()}
    return out


def load_file(
    path: str | Path,
    keys: KeySource,
    device: str | torch.device = "cpu",
    *,
    progress: Callable[[int], None] | None = None,
    kernels: bool | None = None,
    workers: int | None = None,
) -> dict[str, torch.Tensor]:
    """Load every tensor of a sealed file, like ``safetensors.torch.load_file``.

    ``device="cuda:0"`` decrypts ChaCha20-Poly1305 files on the GPU (see :func:`load_opened`).
    On the CPU ``workers`` threads decrypt (default: one per usable core).

    Raises:
        FormatError: the file is malformed or fails authentication.
        KeyAccessError: ``keys`` do not open the file.
    """
    with SealedFile(path) as sealed:
        opened = sealed.unlock(keys)
        try:
            return load_opened(opened, device, progress=progress, kernels=kernels, workers=workers)
        finally:
            opened.keys.forget()


def load_model(
    path: str | Path,
    keys: KeySource,
    device: str | torch.device = "cpu",
    *,
    progress: Callable[[int], None] | None = None,
    kernels: bool | None = None,
    workers: int | None = None,
) -> dict[str, torch.Tensor]:
    """Load the merged state dict of a sealed model directory (all shards)."""
    model = SealedModel.open(path, keys)
    state: dict[str, torch.Tensor] = {}
    for entry in model.weight_entries():
        with model.open_sealed(entry) as opened:
            state.update(load_opened(opened, device, progress=progress, kernels=kernels, workers=workers))
    return state


class SealedSlice:
    """A lazy view of one tensor; indexing decrypts only the chunks the slice covers."""

    def __init__(self, opened: OpenedFile, entry: TensorEntry, device: torch.device, workers: int | None) -> None:
        self._opened = opened
        self._entry = entry
        self._device = device
        self._workers = workers

    def get_shape(self) -> list[int]:
        return list(self._entry.shape)

    def get_dtype(self) -> str:
        return self._entry.dtype.name

    def __getitem__(self, index: Index) -> torch.Tensor:
        entry = self._entry
        dtype = torch_dtype(entry.dtype)
        plan = plan_selection(entry.shape, entry.dtype.itemsize, index)
        if plan.empty:
            return torch.empty(plan.sizes, dtype=dtype, device=self._device)
        raw = self._opened.read_range(entry, plan.start, plan.stop, workers=self._workers)
        flat = torch.frombuffer(raw, dtype=torch.uint8).view(dtype)
        picked = flat.as_strided(plan.sizes, plan.strides).clone()
        raw[:] = bytes(len(raw))
        return picked.to(self._device)


class SealedSafeOpen:
    """Lazy access to a sealed file, shaped like ``safetensors.safe_open``."""

    def __init__(
        self,
        path: str | Path,
        keys: KeySource,
        framework: str = "pt",
        device: str = "cpu",
        *,
        workers: int | None = None,
    ) -> None:
        if framework not in ("pt", "torch"):
            raise ValueError("weightvault.loaders.torch.safe_open serves framework='pt'")
        self._sealed = SealedFile(path)
        try:
            self._opened = self._sealed.unlock(keys)
        except BaseException:
            self._sealed.close()
            raise
        self._device = torch.device(device)
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
        """Tensor names in file order."""
        return [e.name for e in self._opened.entries]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def metadata(self) -> dict[str, str]:
        return dict(self._opened.table.metadata)

    def get_tensor(self, name: str) -> torch.Tensor:
        """Decrypt and verify one whole tensor."""
        return load_opened(self._opened, self._device, [name], workers=self._workers)[name]

    def get_tensors(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """Decrypt several tensors with the pipelined reader."""
        return load_opened(self._opened, self._device, names, workers=self._workers)

    def get_slice(self, name: str) -> SealedSlice:
        return SealedSlice(self._opened, self._opened.entry(name), self._device, self._workers)


def safe_open(
    path: str | Path, keys: KeySource, framework: str = "pt", device: str = "cpu", *, workers: int | None = None
) -> SealedSafeOpen:
    """Open a sealed file for lazy, per-tensor and per-slice access (``workers`` decrypting threads)."""
    return SealedSafeOpen(path, keys, framework, device, workers=workers)
