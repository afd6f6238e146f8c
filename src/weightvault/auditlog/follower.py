"""Following a live log over the tiles API (C2SP tlog-tiles): what an outside monitor runs.

Each :meth:`TileFollower.poll` fetches the checkpoint and verifies its log signature
and witness quorum, then fetches the entry bundles of every entry it has not seen,
hashes each into a leaf and extends a compact range that already holds every leaf
verified before. The range's root must equal the checkpoint's root. Because the old
leaves are part of that range, a matching root proves that the new tree extends the
old one (append-only, no consistency proof needed) and that every returned entry is
in the signed tree, in that position.

Refused, with nothing committed from the failed poll:

* a checkpoint smaller than the last verified one (truncated or rolled-back log):
  :class:`~weightvault.errors.CheckpointError`;
* one of the same size with another root (split view), or entries that do not hash to
  the checkpoint's root (a rewritten, dropped or reordered entry):
  :class:`~weightvault.errors.ConsistencyError`;
* a checkpoint that disagrees with a remembered :class:`TrustedState` (for example the
  one ``weightvault audit verify --state`` keeps), checked when the range passes the
  remembered size.

I/O is the caller's ``fetch(path) -> bytes | None`` (``None`` for 404), so the same
code follows an HTTP server, a mirror or a directory.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from weightvault.auditlog.checkpoint import VerifiedCheckpoint, verify_checkpoint
from weightvault.auditlog.client import TrustedState
from weightvault.auditlog.merkle import TILE_WIDTH, CompactRange, leaf_hash, tile_path
from weightvault.auditlog.note import NoteVerifier, parse_note
from weightvault.auditlog.policy import WitnessPolicy
from weightvault.auditlog.tiles import parse_entry_bundle
from weightvault.errors import CheckpointError, ConsistencyError, InclusionProofError

__all__ = ["Fetch", "Poll", "TileFollower"]

Fetch = Callable[[str], bytes | None]
#: Partial tiles exist only for the server's latest size; a poll that keeps racing a growing log gives up.
_ATTEMPTS: Final = 4


class _LogMovedError(Exception):
    """The log grew between the checkpoint and a partial tile; fetch the checkpoint again."""


@dataclass(frozen=True, slots=True)
class Poll:
    """One verified poll: the checkpoint, and the entries new since the previous poll (from ``start``)."""

    checkpoint: VerifiedCheckpoint
    start: int
    entries: tuple[bytes, ...]


class TileFollower:
    """Verifies a log's growth poll by poll; holds the compact range of every verified leaf."""

    def __init__(
        self,
        fetch: Fetch,
        log: NoteVerifier,
        policy: WitnessPolicy,
        *,
        clock: Callable[[], float],
        max_age_seconds: int | None = None,
        state: TrustedState | None = None,
    ) -> None:
        self._fetch = fetch
        self._log = log
        self._policy = policy
        self._clock = clock
        self._max_age = max_age_seconds
        self._state = state
        self._range = CompactRange()

    @property
    def size(self) -> int:
        """How many entries have been verified."""
        return self._range.size

    def poll(self) -> Poll:
        """Fetch and verify the latest checkpoint and the entries since the last poll.

        Raises:
            CheckpointError: bad signature or quorum, or the log shrank.
            ConsistencyError: split view, or the entries do not reproduce the signed root.
            InclusionProofError: the server lacks the checkpoint or an entry bundle, or serves a malformed one.
        """
        for _ in range(_ATTEMPTS):
            raw = self._fetch("checkpoint")
            if raw is None:
                raise InclusionProofError("the log serves no checkpoint")
            verified = verify_checkpoint(
                parse_note(raw), self._log, self._policy, now=int(self._clock()), max_age_seconds=self._max_age
            )
            try:
                return self._advance(verified)
            except _LogMovedError:
                continue
        raise InclusionProofError("the log kept growing while its tiles were fetched; poll again")

    def _advance(self, verified: VerifiedCheckpoint) -> Poll:
        cp = verified.checkpoint
        start = self._range.size
        if cp.size < start:
            raise CheckpointError(f"checkpoint of size {cp.size} is smaller than the verified size {start}")
        remembered = self._state.get(cp.origin) if self._state is not None else None
        if remembered is not None and cp.size < remembered[0]:
            raise CheckpointError(f"checkpoint of size {cp.size} is smaller than the remembered size {remembered[0]}")
        entries = self._entries(start, cp.size)
        grown = self._range.copy()
        for entry in entries:
            grown.append(leaf_hash(entry))
            if remembered is not None and grown.size == remembered[0]:
                _same_root(grown.root(), remembered[1], "the remembered checkpoint")
        _same_root(grown.root(), cp.root, "the checkpoint")
        self._range = grown
        if self._state is not None:
            self._state.set(cp.origin, cp.size, cp.root)
        return Poll(verified, start, tuple(entries))

    def _entries(self, start: int, end: int) -> list[bytes]:
        out: list[bytes] = []
        for tile in range(start // TILE_WIDTH, -(-end // TILE_WIDTH)):
            base = tile * TILE_WIDTH
            width = min(TILE_WIDTH, end - base)
            data = self._fetch(tile_path("entries", tile, width))
            have = width
            if data is None and width < TILE_WIDTH:
                # The partial tile is gone once the log grew; the full tile may exist by now.
                data, have = self._fetch(tile_path("entries", tile, TILE_WIDTH)), TILE_WIDTH
                if data is None:
                    raise _LogMovedError
            if data is None:
                raise InclusionProofError(f"the log lacks {tile_path('entries', tile, width)}")
            bundle = parse_entry_bundle(data, have, tile_path("entries", tile, have))
            out.extend(bundle[max(start, base) - base : width])
        return out


def _same_root(ours: bytes, theirs: bytes, what: str) -> None:
    if not hmac.compare_digest(ours, theirs):
        raise ConsistencyError(
            f"the served entries do not hash to the root of {what} (history rewritten, reordered or split)"
        )
