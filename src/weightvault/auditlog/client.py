"""Clients of the log: accept a checkpoint only if it is witnessed and consistent with the last one seen.

A :class:`LogVerifier` holds a trusted log key, a witness policy and a
:class:`TrustedState` that remembers, per origin, the last checkpoint it
verified. ``update`` refuses a checkpoint that is smaller than the remembered one,
or of the same size with another root, or larger without a valid consistency
proof from the remembered size: a stale checkpoint replayed, a truncated history
and a split view all fail here, even when validly signed.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from weightvault.auditlog.checkpoint import VerifiedCheckpoint, verify_checkpoint
from weightvault.auditlog.merkle import verify_consistency
from weightvault.auditlog.note import Note, NoteVerifier
from weightvault.auditlog.policy import WitnessPolicy
from weightvault.encoding import parse_json_object
from weightvault.errors import AuditLogError, CheckpointError, ConsistencyError
from weightvault.files import atomic_file

__all__ = ["LogVerifier", "TrustedState"]


class TrustedState:
    """Last verified (size, root) per origin, in a JSON file written atomically, or in memory."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._state: dict[str, tuple[int, bytes]] = {}
        if self.path is not None and self.path.exists():
            doc = parse_json_object(self.path.read_bytes(), f"{self.path}: the monitor's state", AuditLogError)
            self._state = {o: (int(v["size"]), base64.b64decode(v["root"])) for o, v in doc.items()}

    def get(self, origin: str) -> tuple[int, bytes] | None:
        return self._state.get(origin)

    def set(self, origin: str, size: int, root: bytes) -> None:
        self._state[origin] = (size, root)
        if self.path is None:
            return
        doc = {o: {"size": s, "root": base64.b64encode(r).decode()} for o, (s, r) in self._state.items()}
        with atomic_file(self.path, overwrite=True) as handle:
            handle.write(json.dumps(doc, sort_keys=True).encode())


class LogVerifier:
    """Verifies checkpoints of one log against a witness policy and remembered state."""

    def __init__(
        self,
        log: NoteVerifier,
        policy: WitnessPolicy,
        state: TrustedState | None = None,
        *,
        clock: Callable[[], float],
        max_age_seconds: int | None = None,
    ) -> None:
        self.log = log
        self.policy = policy
        self.state = state or TrustedState()
        self._clock = clock
        self._max_age = max_age_seconds

    def update(self, note: Note | str | bytes, consistency: Sequence[bytes] = ()) -> VerifiedCheckpoint:
        """Verify a checkpoint and make it the remembered one.

        Args:
            note: the signed, cosigned checkpoint.
            consistency: a consistency proof from the remembered size to this one.

        Raises:
            CheckpointError: signature, quorum or freshness failure, or a checkpoint
                smaller than the remembered one (a stale replay or truncation).
            ConsistencyError: the checkpoint does not extend the remembered one (split view, rewrite).
        """
        verified = verify_checkpoint(note, self.log, self.policy, now=int(self._clock()), max_age_seconds=self._max_age)
        cp = verified.checkpoint
        known = self.state.get(cp.origin)
        if known is not None:
            size, root = known
            if cp.size < size:
                raise CheckpointError(f"checkpoint of size {cp.size} is older than the verified size {size}")
            if cp.size == size:
                if cp.root != root:
                    raise ConsistencyError("checkpoint of the remembered size has another root (split view)")
            elif size > 0:
                verify_consistency(size, cp.size, root, cp.root, consistency)
        self.state.set(cp.origin, cp.size, cp.root)
        return verified
