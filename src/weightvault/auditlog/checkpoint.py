"""C2SP tlog-checkpoint bodies, and checkpoint verification against a log key and witness policy.

Body (the note text)::

    <origin>\\n<tree size, decimal, no leading zeros>\\n<base64 root hash>\\n[extension lines]

``verify_checkpoint`` is the one gate through which a checkpoint becomes trusted:
the log's signature must verify, every signature line by a known witness must
verify, and the witness policy's quorum must be met by cosignatures that are not
older than the caller allows.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field

from weightvault.auditlog.merkle import HASH_BYTES
from weightvault.auditlog.note import Note, NoteSigner, NoteVerifier, parse_note
from weightvault.auditlog.policy import WitnessPolicy
from weightvault.errors import CheckpointError

__all__ = ["Checkpoint", "VerifiedCheckpoint", "sign_checkpoint", "verify_checkpoint"]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The three mandatory lines of a checkpoint and any extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise CheckpointError("checkpoint origin must be a non-empty line")
        if not 0 <= self.size < 1 << 63:
            raise CheckpointError("checkpoint size out of range")
        if len(self.root) != HASH_BYTES:
            raise CheckpointError("checkpoint root must be 32 bytes")
        if any(not e or "\n" in e for e in self.extensions):
            raise CheckpointError("extension lines must be non-empty lines")

    def to_text(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode(), *self.extensions]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_text(cls, text: str) -> Checkpoint:
        """Parse a checkpoint body strictly.

        Raises:
            CheckpointError: fewer than three lines, a malformed size or root, or an empty extension line.
        """
        if not text.endswith("\n"):
            raise CheckpointError("checkpoint body must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise CheckpointError("checkpoint body needs origin, size and root lines")
        origin, size_text, root_text, *extensions = lines
        if not size_text.isdigit() or not size_text.isascii() or (size_text != "0" and size_text.startswith("0")):
            raise CheckpointError("checkpoint size must be decimal with no leading zeros")
        try:
            root = base64.b64decode(root_text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise CheckpointError("checkpoint root is not base64") from exc
        if base64.b64encode(root).decode() != root_text:
            raise CheckpointError("checkpoint root is not canonical base64")
        return cls(origin, int(size_text), root, tuple(extensions))


def sign_checkpoint(checkpoint: Checkpoint, signer: NoteSigner) -> Note:
    """The signed note of a checkpoint; the log key's name must equal the origin."""
    if signer.name != checkpoint.origin:
        raise ValueError("the log key name must match the checkpoint origin")
    text = checkpoint.to_text()
    return Note(text, (signer.sign(text),))


@dataclass(frozen=True, slots=True)
class VerifiedCheckpoint:
    """A checkpoint whose log signature and witness quorum were verified. Only verify_checkpoint builds it."""

    checkpoint: Checkpoint
    note: Note
    cosignatures: Mapping[str, int] = field(default_factory=dict)


def verify_checkpoint(
    data: bytes | str | Note,
    log: NoteVerifier,
    policy: WitnessPolicy,
    *,
    now: int,
    max_age_seconds: int | None = None,
) -> VerifiedCheckpoint:
    """Verify a signed checkpoint.

    Args:
        data: the signed note (text or parsed).
        log: the log's verifier key; its name must be the checkpoint origin.
        policy: witnesses and the quorum their cosignatures must meet.
        now: current POSIX time, for freshness checks.
        max_age_seconds: reject quorum cosignatures older than this (and any from the future).

    Raises:
        CheckpointError: unsigned by the log, a known key's signature fails, the body
            is malformed, or the quorum is not met by fresh cosignatures.
    """
    note = data if isinstance(data, Note) else parse_note(data)
    checkpoint = Checkpoint.from_text(note.text)
    if checkpoint.origin != log.name:
        raise CheckpointError("checkpoint origin does not match the log key")
    log_ok = False
    cosigned: dict[str, int] = {}
    for sig in note.signatures:
        if log.matches(sig):
            log.verify(note.text, sig)
            log_ok = True
            continue
        for name, witness in policy.witnesses.items():
            if witness.matches(sig):
                timestamp = witness.verify(note.text, sig)
                assert timestamp is not None
                if timestamp > now + 60:
                    raise CheckpointError(f"cosignature by {name} is from the future")
                if max_age_seconds is None or now - timestamp <= max_age_seconds:
                    cosigned[name] = timestamp
    if not log_ok:
        raise CheckpointError("checkpoint is not signed by the trusted log key")
    if not policy.satisfied(set(cosigned)):
        raise CheckpointError(f"witness quorum not met: {len(cosigned)} fresh cosignature(s) from {sorted(cosigned)}")
    return VerifiedCheckpoint(checkpoint, note, cosigned)
