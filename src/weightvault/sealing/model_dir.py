"""Sealing a whole Hugging Face model directory, and opening one.

Weight files (``*.safetensors``, sharded or not) become sealed files named
``<name>.wvlt``. Every other file is carried in the clear by default or sealed
as a blob with ``seal_files``; the sharding index
(``model.safetensors.index.json``) is carried unchanged, so unsealing restores
the directory byte for byte. Weight formats other than safetensors (pickles,
GGUF, ONNX, ...) are refused unless sealed or excluded, so that plaintext weights
never travel beside the sealed ones by accident. All files share one file key;
the manifest (:mod:`weightvault.format.manifest`) binds them together.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from weightvault.errors import ConfigError, KeyAccessError, ManifestError, PayloadError
from weightvault.files import atomic_directory, atomic_file
from weightvault.format.header import HeaderKind
from weightvault.format.keys import FileKey
from weightvault.format.manifest import (
    MANIFEST_NAME,
    FileRole,
    ManifestEntry,
    ModelManifest,
    check_relative_path,
)
from weightvault.format.recipients import Recipient
from weightvault.sealing.reader import KeySource, OpenedFile, SealedFile
from weightvault.sealing.signatures import SIGNATURE_NAME
from weightvault.sealing.sources import Location, display, fetch_small, is_remote, join_location, open_source
from weightvault.sealing.unseal import unseal_to
from weightvault.sealing.writer import DEFAULT_OPTIONS, SealOptions, SealResult, seal_blob, seal_safetensors

__all__ = [
    "SEALED_SUFFIX",
    "SealedModel",
    "is_sealed_model_dir",
    "names_model_dir",
    "seal_model_dir",
    "unseal_model_dir",
]

SEALED_SUFFIX: Final = ".wvlt"
_WEIGHT_SUFFIX: Final = ".safetensors"
#: Files that hold weights in a format other than safetensors: never carried in the clear.
UNSAFE_WEIGHT_SUFFIXES: Final = (
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".pkl",
    ".pickle",
    ".gguf",
    ".ggml",
    ".h5",
    ".msgpack",
    ".onnx",
    ".npz",
    ".npy",
    ".joblib",
    ".tflite",
    ".keras",
    ".mlmodel",
    ".ot",
)
_SKIP_DIRS: Final = frozenset({".git", ".cache", "__pycache__"})
_HASH_BLOCK: Final = 1 << 20
#: The largest manifest read: a model of a hundred thousand files stays well below it.
_MANIFEST_LIMIT: Final = 64 << 20


def is_sealed_model_dir(path: Location) -> bool:
    """Whether ``path`` is a directory (or, remote, a URL prefix) with a weightvault model manifest.

    Raises:
        TransportError: a remote server cannot be reached or keeps failing.
    """
    if not is_remote(path):
        return (Path(path) / MANIFEST_NAME).is_file()
    try:
        source = open_source(join_location(path, MANIFEST_NAME))
    except FileNotFoundError:
        return False
    source.close()
    return True


def names_model_dir(location: Location) -> bool:
    """Whether ``location`` is meant as a model directory rather than one sealed file: a local
    directory (whose manifest is then required), or a remote prefix that has a manifest."""
    return is_sealed_model_dir(location) if is_remote(location) else Path(location).is_dir()


def _walk(src: Path, exclude: Sequence[str]) -> Iterator[str]:
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        for name in sorted(files):
            rel = (Path(root) / name).relative_to(src).as_posix()
            # A plain model's OpenSSF signature describes files that sealing replaces: it is not
            # carried over, and a sealed directory's own signature is not part of its manifest.
            if name in (MANIFEST_NAME, SIGNATURE_NAME) or any(fnmatch.fnmatch(rel, pat) for pat in exclude):
                continue
            yield check_relative_path(rel)


def _sha256_file(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


@dataclass(frozen=True, slots=True)
class ModelSealResult:
    """What sealing a model directory produced."""

    path: Path
    manifest: ModelManifest
    sealed: tuple[SealResult, ...]


def seal_model_dir(
    src: Path,
    dst: Path,
    *,
    file_key: FileKey,
    recipients: Sequence[Recipient] = (),
    options: SealOptions = DEFAULT_OPTIONS,
    seal_files: bool = False,
    exclude: Sequence[str] = (),
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ModelSealResult:
    """Seal a model directory into ``dst`` atomically.

    Raises:
        ConfigError: ``src`` has no safetensors file, holds weights in another
            format that would be carried in the clear, or ``dst`` exists.
        HeaderError: a safetensors file is malformed.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise ConfigError(f"{src} is not a directory")
    files = list(_walk(src, exclude))
    if not any(f.endswith(_WEIGHT_SUFFIX) for f in files):
        raise ConfigError(f"{src} holds no .safetensors file")
    if not seal_files:
        unsafe = [f for f in files if f.lower().endswith(UNSAFE_WEIGHT_SUFFIXES)]
        if unsafe:
            raise ConfigError(
                f"refusing to carry {unsafe[0]} in the clear: it may hold weights "
                "(pass --seal-files to seal it, or --exclude to leave it out)"
            )
    entries: list[ManifestEntry] = []
    results: list[SealResult] = []
    with atomic_directory(dst, overwrite=overwrite) as out:
        for rel in files:
            source = src / rel
            target_rel = rel + SEALED_SUFFIX if (rel.endswith(_WEIGHT_SUFFIX) or seal_files) else rel
            target = out / target_rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if rel.endswith(_WEIGHT_SUFFIX):
                result = seal_safetensors(
                    source, target, file_key=file_key, recipients=recipients, options=options, progress=progress
                )
                kind = HeaderKind.SAFETENSORS
            elif seal_files:
                result = seal_blob(source, target, name=rel, file_key=file_key, recipients=recipients, options=options)
                kind = HeaderKind.BLOB
            else:
                with open(source, "rb") as inp, atomic_file(target) as outp:
                    while block := inp.read(_HASH_BLOCK):
                        outp.write(block)
                size, digest = _sha256_file(target)
                entries.append(ManifestEntry(target_rel, FileRole.PUBLIC, size=size, sha256=digest))
                continue
            results.append(result)
            entries.append(
                ManifestEntry(
                    target_rel,
                    FileRole.SEALED,
                    kind=kind,
                    source=rel,
                    file_id=result.file_id.hex(),
                    header_mac=result.header_mac.hex(),
                )
            )
        manifest = ModelManifest.create(entries, file_key.manifest_mac_key())
        with atomic_file(out / MANIFEST_NAME) as handle:
            handle.write(manifest.to_bytes())
    return ModelSealResult(dst, manifest, tuple(results))


def read_manifest(path: Location) -> ModelManifest:
    """The manifest of a sealed model directory, parsed but not yet authenticated (no key needed).

    Raises:
        ManifestError: no manifest, or a malformed one.
        TransportError: a remote server cannot be reached or keeps failing.
    """
    try:
        data = fetch_small(join_location(path, MANIFEST_NAME), _MANIFEST_LIMIT)
    except OSError as exc:
        raise ManifestError(f"{display(path)} is not a sealed model directory (no {MANIFEST_NAME})") from exc
    return ModelManifest.from_bytes(data)


def member_location(model_dir: Location, entry: ManifestEntry) -> Location:
    """Where a file the manifest lists lies: a path, or a URL (whose presence its first read shows)."""
    if is_remote(model_dir):
        return join_location(model_dir, entry.path)
    return member_path(Path(model_dir), entry)


def member_path(model_dir: Path, entry: ManifestEntry) -> Path:
    """Where a file the manifest lists lies; a missing one is a damaged model, not an I/O accident.

    Raises:
        ManifestError: the file is listed but absent (a deleted shard, an incomplete copy).
    """
    path = Path(model_dir) / entry.path
    if not path.is_file():
        raise ManifestError(f"{entry.path} is listed in the model manifest but missing from {model_dir}")
    return path


class SealedModel:
    """An opened sealed model directory whose manifest has been authenticated.

    ``path`` may be a local directory or a remote prefix (``https://host/models/m``,
    ``s3://bucket/models/m``): members are then fetched by range, and verified alike.
    """

    def __init__(self, path: Location, manifest: ModelManifest, file_key: FileKey) -> None:
        self.path: Location = path if is_remote(path) else Path(path)
        self.manifest = manifest
        self.file_key = file_key
        self._by_logical = {f.logical_path: f for f in manifest.files}

    @classmethod
    def open(cls, path: Location, keys: KeySource) -> SealedModel:
        """Read and authenticate the manifest of ``path``.

        Raises:
            ManifestError: no manifest, or it fails authentication.
            KeyAccessError: ``keys`` do not yield the model's file key.
        """
        path = path if is_remote(path) else Path(path)
        manifest = read_manifest(path)
        sealed = manifest.sealed()
        if not sealed:
            raise ManifestError("the model manifest lists no sealed file")
        with _open_member(path, sealed[0]) as first:
            material = first.resolve(keys)
        if not isinstance(material, FileKey):
            raise KeyAccessError("a sealed model directory needs the file key, not a partial grant")
        manifest.verify(material.manifest_mac_key())
        return cls(path, manifest, material)

    def entry(self, logical_path: str) -> ManifestEntry:
        """The manifest entry of a file by its path in the plain model directory."""
        try:
            return self._by_logical[logical_path]
        except KeyError as exc:
            raise ManifestError(f"the sealed model has no file {logical_path!r}") from exc

    def has_file(self, logical_path: str) -> bool:
        return logical_path in self._by_logical

    def weight_entries(self) -> list[ManifestEntry]:
        """Sealed safetensors files, in manifest (sorted path) order."""
        return [f for f in self.manifest.files if f.kind is HeaderKind.SAFETENSORS]

    def open_sealed(self, entry: ManifestEntry) -> OpenedFile:
        """Open and authenticate one sealed file, checking it is the one the manifest names.

        Raises:
            ManifestError: the file's id or header MAC differ from the manifest.
        """
        sealed = _open_member(self.path, entry)
        try:
            opened = sealed.unlock(self.file_key)
            assert entry.file_id is not None
            assert entry.header_mac is not None
            if not (
                hmac.compare_digest(sealed.preamble.file_id.hex(), entry.file_id)
                and hmac.compare_digest(sealed.header_mac.hex(), entry.header_mac)
                and opened.table.kind is entry.kind
            ):
                raise ManifestError(f"{entry.path} is not the file the model manifest names")
        except BaseException:
            sealed.close()
            raise
        return opened

    def read_bytes(self, logical_path: str) -> bytes:
        """The authenticated content of a non-weight file (public or sealed blob).

        Raises:
            ManifestError: a public file's hash or size does not match the manifest.
            PayloadError: a sealed blob fails authentication.
        """
        entry = self.entry(logical_path)
        if entry.role is FileRole.PUBLIC:
            data = self._fetch_public(entry)
            if len(data) != entry.size or not hmac.compare_digest(hashlib.sha256(data).hexdigest(), entry.sha256 or ""):
                raise ManifestError(f"{entry.path} does not match the model manifest")
            return data
        with self.open_sealed(entry) as opened:
            if opened.table.kind is not HeaderKind.BLOB:
                raise ManifestError(f"{entry.path} is not a sealed file blob")
            blob = opened.entries[0]
            return bytes(opened.read_range(blob, 0, blob.nbytes))

    def _fetch_public(self, entry: ManifestEntry) -> bytes:
        try:
            return fetch_small(member_location(self.path, entry), max(entry.size or 0, 0))
        except FileNotFoundError as exc:
            raise ManifestError(f"{entry.path} is listed in the model manifest but missing") from exc
        except PayloadError as exc:  # larger than the manifest says
            raise ManifestError(f"{entry.path} does not match the model manifest") from exc

    def verify(self, progress: Callable[[int], None] | None = None) -> None:
        """Check every public file's hash and every chunk tag of every sealed file (and, locally,
        that the directory holds nothing the manifest does not list)."""
        self.check_public_files()
        for entry in self.manifest.files:
            if entry.role is not FileRole.PUBLIC:
                with self.open_sealed(entry) as opened:
                    opened.verify(progress)

    def check_public_files(self) -> None:
        """Check every public file (configuration, tokenizer) against the manifest's size and hash,
        and, locally, that the directory holds nothing the manifest does not list.

        For readers that take those files from the directory themselves (vLLM reads
        ``config.json``, ``generation_config.json`` and the tokenizer before any weight): a
        changed configuration or an added chat template is refused like a changed weight.

        Raises:
            ManifestError: a public file is missing, changed, or the directory has an unlisted file.
        """
        for entry in self.manifest.files:
            if entry.role is not FileRole.PUBLIC:
                continue
            if is_remote(self.path):
                data = self._fetch_public(entry)
                size, digest = len(data), hashlib.sha256(data).hexdigest()
            else:
                try:
                    size, digest = _sha256_file(member_path(Path(self.path), entry))
                except FileNotFoundError as exc:
                    raise ManifestError(f"{entry.path} is listed in the model manifest but missing") from exc
            if size != entry.size or not hmac.compare_digest(digest, entry.sha256 or ""):
                raise ManifestError(f"{entry.path} does not match the model manifest")
        if not is_remote(self.path):  # a remote prefix cannot be listed; extra objects there are never read
            self._check_no_extra_files(Path(self.path))

    def _check_no_extra_files(self, root: Path) -> None:
        listed = {f.path for f in self.manifest.files} | {MANIFEST_NAME}
        for rel in _walk(root, ()):
            if rel not in listed:
                raise ManifestError(f"{rel} is in the sealed model directory but not in its manifest")


def _open_member(model_dir: Location, entry: ManifestEntry) -> SealedFile:
    """A sealed member opened for reading; a missing one is a damaged model (ManifestError)."""
    location = member_location(model_dir, entry)
    try:
        return SealedFile(location)
    except FileNotFoundError as exc:
        raise ManifestError(
            f"{entry.path} is listed in the model manifest but missing from {display(model_dir)}"
        ) from exc


def unseal_model_dir(
    src: Location,
    dst: Path,
    keys: KeySource,
    *,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Restore the plain model directory byte for byte, atomically."""
    model = SealedModel.open(src, keys)
    with atomic_directory(Path(dst), overwrite=overwrite) as out:
        for entry in model.manifest.files:
            target = out / entry.logical_path
            target.parent.mkdir(parents=True, exist_ok=True)
            if entry.role is FileRole.PUBLIC:
                with atomic_file(target) as handle:
                    handle.write(model.read_bytes(entry.logical_path))
                continue
            with model.open_sealed(entry) as opened, atomic_file(target, mode=0o600) as handle:
                unseal_to(opened, handle.fileno(), progress)
