"""File I/O around the sealed format: seal, open, verify, unseal, rewrap, model directories, key files."""

from __future__ import annotations

from weightvault.sealing.keyfiles import read_key_file, write_key_file
from weightvault.sealing.model_dir import SealedModel, is_sealed_model_dir, seal_model_dir, unseal_model_dir
from weightvault.sealing.reader import KeySource, OpenedFile, SealedFile, open_sealed
from weightvault.sealing.unseal import RewrapResult, reseal_file, rewrap_file, unseal_file
from weightvault.sealing.writer import SealOptions, SealResult, seal_blob, seal_safetensors

__all__ = [
    "KeySource",
    "OpenedFile",
    "RewrapResult",
    "SealOptions",
    "SealResult",
    "SealedFile",
    "SealedModel",
    "is_sealed_model_dir",
    "open_sealed",
    "read_key_file",
    "reseal_file",
    "rewrap_file",
    "seal_blob",
    "seal_model_dir",
    "seal_safetensors",
    "unseal_file",
    "unseal_model_dir",
    "write_key_file",
]
