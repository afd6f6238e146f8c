"""C2SP tlog-proof: an offline-verifiable proof that one entry is in the log.

::

    c2sp.org/tlog-proof@v1
    [extra <base64>]
    index <N>
    <base64 proof hash>...
    <blank line>
    <signed checkpoint, verbatim>

weightvault puts the entry itself in ``extra`` so that a bundle is self-contained:
the verifier hashes it, checks the inclusion proof against the checkpoint, and
checks the checkpoint against the log key and witness policy. ``extra`` is not
trusted on its own: it only counts once it hashes to a leaf proven to be included.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from weightvault.auditlog.checkpoint import VerifiedCheckpoint, verify_checkpoint
from weightvault.auditlog.merkle import leaf_hash, verify_inclusion
from weightvault.auditlog.note import Note, NoteVerifier, parse_note
from weightvault.auditlog.policy import WitnessPolicy
from weightvault.errors import InclusionProofError

__all__ = ["PROOF_HEADER", "ProofBundle", "VerifiedEntry", "verify_bundle"]

PROOF_HEADER = "c2sp.org/tlog-proof@v1"
_MAX_PROOF_LINES = 63


def _b64(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise InclusionProofError(f"{what}: invalid base64") from exc
    if base64.b64encode(raw).decode() != text:
        raise InclusionProofError(f"{what}: non-canonical base64")
    return raw


@dataclass(frozen=True, slots=True)
class ProofBundle:
    """A parsed proof bundle (unverified)."""

    index: int
    proof: tuple[bytes, ...]
    checkpoint: Note
    extra: bytes | None = None

    def to_text(self) -> str:
        lines = [PROOF_HEADER]
        if self.extra is not None:
            lines.append(f"extra {base64.b64encode(self.extra).decode()}")
        lines.append(f"index {self.index}")
        lines += [base64.b64encode(h).decode() for h in self.proof]
        return "\n".join(lines) + "\n\n" + self.checkpoint.to_text()

    @classmethod
    def from_text(cls, text: str) -> ProofBundle:
        """Parse strictly.

        Raises:
            InclusionProofError: a malformed header, index or proof line.
            CheckpointError: a malformed checkpoint.
        """
        head, sep, rest = text.partition("\n\n")
        if not sep:
            raise InclusionProofError("proof bundle has no blank line before the checkpoint")
        lines = head.split("\n")
        if lines[0] != PROOF_HEADER:
            raise InclusionProofError("not a c2sp.org/tlog-proof@v1 bundle")
        lines = lines[1:]
        extra = None
        if lines and lines[0].startswith("extra "):
            extra = _b64(lines[0][6:], "extra")
            lines = lines[1:]
        if not lines or not lines[0].startswith("index "):
            raise InclusionProofError("proof bundle has no index line")
        index_text = lines[0][6:]
        if not index_text.isdigit() or not index_text.isascii() or (index_text != "0" and index_text[0] == "0"):
            raise InclusionProofError("proof bundle index must be decimal with no leading zeros")
        proof_lines = lines[1:]
        if len(proof_lines) > _MAX_PROOF_LINES or any(not line for line in proof_lines):
            raise InclusionProofError("proof bundle has too many or empty proof lines")
        proof = tuple(_b64(line, "proof hash") for line in proof_lines)
        return cls(int(index_text), proof, parse_note(rest), extra)


@dataclass(frozen=True, slots=True)
class VerifiedEntry:
    """An entry proven to be in a verified checkpoint."""

    index: int
    entry: bytes
    checkpoint: VerifiedCheckpoint


def verify_bundle(
    bundle: ProofBundle | str,
    log: NoteVerifier,
    policy: WitnessPolicy,
    *,
    now: int,
    entry: bytes | None = None,
    max_age_seconds: int | None = None,
) -> VerifiedEntry:
    """Verify a proof bundle offline.

    ``entry`` is the logged bytes; when omitted, the bundle's ``extra`` is used.

    Raises:
        CheckpointError: the checkpoint fails (signature, quorum, freshness).
        InclusionProofError: the entry is not proven to be at ``index``.
    """
    parsed = bundle if isinstance(bundle, ProofBundle) else ProofBundle.from_text(bundle)
    data = entry if entry is not None else parsed.extra
    if data is None:
        raise InclusionProofError("no entry given and the bundle carries none")
    verified = verify_checkpoint(parsed.checkpoint, log, policy, now=now, max_age_seconds=max_age_seconds)
    cp = verified.checkpoint
    verify_inclusion(parsed.index, cp.size, leaf_hash(data), parsed.proof, cp.root)
    return VerifiedEntry(parsed.index, data, verified)
