"""The tamper-evident audit log: RFC 6962 Merkle tree, C2SP signed checkpoints, witnesses and proofs.

Design and formats: ``docs/audit.md``. Pure pieces: :mod:`.merkle`, :mod:`.note`,
:mod:`.checkpoint`, :mod:`.policy`, :mod:`.bundle`, :mod:`.events`, :mod:`.monitor`.
Storage and services: :mod:`.storage`, :mod:`.log`, :mod:`.witness`, :mod:`.client`, :mod:`.tiles`.
"""

from __future__ import annotations

from weightvault.auditlog.bundle import ProofBundle, VerifiedEntry, verify_bundle
from weightvault.auditlog.checkpoint import Checkpoint, VerifiedCheckpoint, sign_checkpoint, verify_checkpoint
from weightvault.auditlog.client import LogVerifier, TrustedState
from weightvault.auditlog.events import AuditEvent, SensitiveHasher, decode_event
from weightvault.auditlog.log import AuditLog, AuditSink, LogConfig, Receipt, write_ahead
from weightvault.auditlog.monitor import Monitor, Violation
from weightvault.auditlog.note import TYPE_COSIGNATURE, TYPE_ED25519, Note, NoteSigner, NoteVerifier, parse_note
from weightvault.auditlog.policy import WitnessPolicy
from weightvault.auditlog.witness import HTTPWitness, InProcessWitness, Witness

__all__ = [
    "TYPE_COSIGNATURE",
    "TYPE_ED25519",
    "AuditEvent",
    "AuditLog",
    "AuditSink",
    "Checkpoint",
    "HTTPWitness",
    "InProcessWitness",
    "LogConfig",
    "LogVerifier",
    "Monitor",
    "Note",
    "NoteSigner",
    "NoteVerifier",
    "ProofBundle",
    "Receipt",
    "SensitiveHasher",
    "TrustedState",
    "VerifiedCheckpoint",
    "VerifiedEntry",
    "Violation",
    "Witness",
    "WitnessPolicy",
    "decode_event",
    "parse_note",
    "sign_checkpoint",
    "verify_bundle",
    "verify_checkpoint",
    "write_ahead",
]
