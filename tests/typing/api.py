"""Type-checked examples of the public API (mypy --strict runs over this file; pytest does not collect it)."""

from __future__ import annotations

from pathlib import Path

import torch

import weightvault
from weightvault.loaders import torch as wv_torch


def seal_and_load(plain: Path, sealed: Path) -> dict[str, torch.Tensor]:
    identity = weightvault.HPKEIdentity.generate(weightvault.HPKEKem.MLKEM768_X25519)
    weightvault.seal_safetensors(
        plain,
        sealed,
        file_key=weightvault.FileKey.generate(),
        recipients=[identity.recipient],
        options=weightvault.SealOptions(suite=weightvault.AEADSuite.CHACHA20_POLY1305),
    )
    with wv_torch.safe_open(sealed, [identity]) as f:
        first: torch.Tensor = f.get_slice(f.keys()[0])[0:1]
        del first
    return wv_torch.load_file(sealed, [identity])
