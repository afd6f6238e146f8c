"""weightvault: the open standard for protecting AI model weights.

The stable public API is re-exported here; ``tests/unit/test_public_api.py``
checks ``__all__``.
"""

from __future__ import annotations

from weightvault.crypto.aead import AEADSuite
from weightvault.crypto.keywrap import HPKEKem
from weightvault.format import FileKey, TensorKeys
from weightvault.format.recipients import KEK, HPKEIdentity, HPKERecipient, Identity, Passphrase, Recipient
from weightvault.sealing import (
    SealedFile,
    SealedModel,
    SealOptions,
    open_sealed,
    read_key_file,
    rewrap_file,
    seal_model_dir,
    seal_safetensors,
    unseal_file,
    unseal_model_dir,
    write_key_file,
)

__version__ = "0.1.0"

__all__ = [
    "KEK",
    "AEADSuite",
    "FileKey",
    "HPKEIdentity",
    "HPKEKem",
    "HPKERecipient",
    "Identity",
    "Passphrase",
    "Recipient",
    "SealOptions",
    "SealedFile",
    "SealedModel",
    "TensorKeys",
    "__version__",
    "open_sealed",
    "read_key_file",
    "rewrap_file",
    "seal_model_dir",
    "seal_safetensors",
    "unseal_file",
    "unseal_model_dir",
    "write_key_file",
]
