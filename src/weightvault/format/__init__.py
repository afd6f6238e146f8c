"""Sealed weight format v2: a pure codec with no file, network or clock access.

The byte layout and its security argument are specified in ``docs/format.md``.
Public names are re-exported here; nonce, chunk and key plumbing lives in
:mod:`weightvault.format.hazmat`.
"""

from __future__ import annotations

from weightvault.crypto.aead import AEADSuite
from weightvault.format.container import SealedLayout, TensorEntry, TensorSpec, plan_tensors
from weightvault.format.dtypes import DTYPES, DType
from weightvault.format.header import HeaderKind, HeaderTable
from weightvault.format.keys import FileKey, KeyMaterial, TensorKeys
from weightvault.format.preamble import (
    DEFAULT_CHUNK_LOG2,
    FORMAT_VERSION,
    MAGIC,
    PREAMBLE_BYTES,
    Flags,
    Preamble,
)
from weightvault.format.recipients import (
    Identity,
    Recipient,
    RecipientsRegion,
    Stanza,
    decode_recipients_region,
    encode_recipients_region,
)

__all__ = [
    "DEFAULT_CHUNK_LOG2",
    "DTYPES",
    "FORMAT_VERSION",
    "MAGIC",
    "PREAMBLE_BYTES",
    "AEADSuite",
    "DType",
    "FileKey",
    "Flags",
    "HeaderKind",
    "HeaderTable",
    "Identity",
    "KeyMaterial",
    "Preamble",
    "Recipient",
    "RecipientsRegion",
    "SealedLayout",
    "Stanza",
    "TensorEntry",
    "TensorKeys",
    "TensorSpec",
    "decode_recipients_region",
    "encode_recipients_region",
    "plan_tensors",
]
