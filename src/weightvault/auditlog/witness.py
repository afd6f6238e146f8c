"""A C2SP tlog-witness: cosigns a log's checkpoints only when they extend what it saw.

The witness keeps, per log origin, the latest checkpoint it cosigned. An
``add-checkpoint`` request carries the size the client believes the witness is
at, a consistency proof from there, and the new signed checkpoint. Checking the
old size and persisting the new checkpoint happen atomically (one SQLite
``BEGIN IMMEDIATE`` transaction), so two concurrent requests can never roll the
witness back. Refused requests whose checkpoint is validly signed are kept as
evidence of log misbehaviour.

Status codes are exactly those of the protocol: 404 unknown origin, 403 no valid
signature by a trusted log key, 400 malformed request or old size above the new
size, 409 old size differs from the witness's (body: its size, content type
``text/x.tlog.size``) or same size with a different root, 422 consistency proof
does not verify, 200 cosignature lines.
"""

from __future__ import annotations

import base64
import binascii
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from weightvault.auditlog.checkpoint import Checkpoint
from weightvault.auditlog.log import WitnessConflictError
from weightvault.auditlog.merkle import verify_consistency
from weightvault.auditlog.note import (
    MAX_NOTE_BYTES,
    TYPE_COSIGNATURE,
    Note,
    NoteSigner,
    NoteVerifier,
    parse_note,
    signed_by,
)
from weightvault.errors import AuditLogError, ConsistencyError, TransportError

__all__ = [
    "SIZE_CONTENT_TYPE",
    "HTTPWitness",
    "InProcessWitness",
    "Witness",
    "WitnessResponse",
    "encode_add_checkpoint",
    "parse_add_checkpoint",
]

SIZE_CONTENT_TYPE: Final = "text/x.tlog.size"
_MAX_PROOF_LINES: Final = 63
_MAX_BODY: Final = 128 << 10


@dataclass(frozen=True, slots=True)
class WitnessResponse:
    """An HTTP answer of the witness protocol."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


def encode_add_checkpoint(old_size: int, proof: Sequence[bytes], note: Note) -> bytes:
    """The request body of ``add-checkpoint``."""
    lines = [f"old {old_size}"] + [base64.b64encode(h).decode() for h in proof]
    return ("\n".join(lines) + "\n\n" + note.to_text()).encode()


def parse_add_checkpoint(body: bytes) -> tuple[int, list[bytes], Note]:
    """Parse an ``add-checkpoint`` body; raises ValueError when malformed (a 400)."""
    if len(body) > _MAX_BODY:
        raise ValueError("request too large")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError("request is not UTF-8") from exc
    head, sep, rest = text.partition("\n\n")
    if not sep:
        raise ValueError("missing blank line before the checkpoint")
    lines = head.split("\n")
    if not lines[0].startswith("old "):
        raise ValueError("first line must be 'old <size>'")
    size_text = lines[0][4:]
    if not size_text.isascii() or not size_text.isdigit() or (size_text != "0" and size_text[0] == "0"):
        raise ValueError("old size must be decimal with no leading zeros")
    proof_lines = lines[1:]
    if len(proof_lines) > _MAX_PROOF_LINES:
        raise ValueError("too many consistency proof lines")
    proof = []
    for line in proof_lines:
        try:
            raw = base64.b64decode(line.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise ValueError("proof line is not base64") from exc
        if len(raw) != 32:
            raise ValueError("proof line is not a 32-byte hash")
        proof.append(raw)
    try:
        note = parse_note(rest)
    except AuditLogError as exc:
        raise ValueError(f"malformed checkpoint: {exc}") from exc
    return int(size_text), proof, note


class Witness:
    """Witness state and logic over SQLite. Thread-safe; one instance per state file."""

    def __init__(
        self,
        signer: NoteSigner,
        path: Path,
        logs: Mapping[str, Sequence[NoteVerifier]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        if signer.verifier.sig_type != TYPE_COSIGNATURE:
            raise ValueError("a witness signs with a cosignature (type 0x04) key")
        self.signer = signer
        self.name = signer.name
        self._logs = {origin: list(keys) for origin, keys in logs.items()}
        self._clock = clock
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(
            """
            CREATE TABLE IF NOT EXISTS latest (origin TEXT PRIMARY KEY, size INTEGER NOT NULL,
                                               root BLOB NOT NULL, note TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS evidence (id INTEGER PRIMARY KEY, at INTEGER NOT NULL,
                                                 origin TEXT NOT NULL, reason TEXT NOT NULL, request BLOB NOT NULL);
            """
        )

    def latest(self, origin: str) -> tuple[int, bytes] | None:
        row = self._conn.execute("SELECT size, root FROM latest WHERE origin = ?", (origin,)).fetchone()
        return None if row is None else (row[0], bytes(row[1]))

    def latest_note(self, origin: str) -> str | None:
        """The newest checkpoint of ``origin`` this witness accepted, with the log's signature and a
        cosignature made now: "at this time, this is the largest tree I have seen" (an extension
        of tlog-witness, which a restore uses to refuse rolling the log back)."""
        row = self._conn.execute("SELECT note FROM latest WHERE origin = ?", (origin,)).fetchone()
        if row is None:
            return None
        note = parse_note(str(row[0]))
        return note.with_signatures([self.signer.sign(note.text, timestamp=int(self._clock()))]).to_text()

    def evidence(self) -> list[tuple[str, str]]:
        """(origin, reason) of every refused but validly signed request, oldest first."""
        return [(r[0], r[1]) for r in self._conn.execute("SELECT origin, reason FROM evidence ORDER BY id")]

    def _record(self, origin: str, reason: str, body: bytes) -> None:
        self._conn.execute(
            "INSERT INTO evidence (at, origin, reason, request) VALUES (?, ?, ?, ?)",
            (int(self._clock()), origin, reason, body),
        )

    def add_checkpoint(self, body: bytes) -> WitnessResponse:
        """Handle one ``add-checkpoint`` request."""
        try:
            old_size, proof, note = parse_add_checkpoint(body)
            checkpoint = Checkpoint.from_text(note.text)
        except (ValueError, AuditLogError) as exc:
            return WitnessResponse(400, f"bad request: {exc}\n".encode())
        keys = self._logs.get(checkpoint.origin)
        if keys is None:
            return WitnessResponse(404, b"unknown log origin\n")
        if not signed_by(note, keys):
            return WitnessResponse(403, b"no valid signature by a trusted log key\n")
        if old_size > checkpoint.size:
            return WitnessResponse(400, b"old size is larger than the checkpoint size\n")
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                response = self._check_and_store(old_size, proof, note, checkpoint, body)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        return response

    def _check_and_store(
        self, old_size: int, proof: list[bytes], note: Note, checkpoint: Checkpoint, body: bytes
    ) -> WitnessResponse:
        row = self._conn.execute("SELECT size, root FROM latest WHERE origin = ?", (checkpoint.origin,)).fetchone()
        size, root = (0, b"") if row is None else (row[0], bytes(row[1]))
        if old_size != size:
            return WitnessResponse(409, f"{size}\n".encode(), SIZE_CONTENT_TYPE)
        if old_size == checkpoint.size and row is not None and root != checkpoint.root:
            self._record(checkpoint.origin, "same size, different root (split view)", body)
            return WitnessResponse(409, f"{size}\n".encode(), SIZE_CONTENT_TYPE)
        if old_size == 0:
            if proof:
                return WitnessResponse(422, b"consistency proof from size 0 must be empty\n")
        elif old_size < checkpoint.size:
            try:
                verify_consistency(old_size, checkpoint.size, root, checkpoint.root, proof)
            except ConsistencyError as exc:
                self._record(checkpoint.origin, f"inconsistent: {exc}", body)
                return WitnessResponse(422, b"consistency proof does not verify\n")
        elif proof:
            return WitnessResponse(422, b"consistency proof between equal sizes must be empty\n")
        self._conn.execute(
            "INSERT OR REPLACE INTO latest (origin, size, root, note) VALUES (?, ?, ?, ?)",
            (checkpoint.origin, checkpoint.size, checkpoint.root, note.to_text()),
        )
        cosig = self.signer.sign(note.text, timestamp=int(self._clock()))
        return WitnessResponse(200, cosig.line().encode())

    def close(self) -> None:
        self._conn.close()


def _endpoint_result(name: str, response: WitnessResponse) -> list[str]:
    if response.status == 200:
        return [line + "\n" for line in response.body.decode().splitlines() if line]
    if response.status == 409:
        text = response.body.decode().strip()
        size = int(text) if response.content_type.startswith(SIZE_CONTENT_TYPE) and text.isdigit() else None
        raise WitnessConflictError(f"witness {name}: conflict (it is at size {text})", size)
    raise AuditLogError(f"witness {name} refused the checkpoint: {response.status} {response.body.decode().strip()}")


class InProcessWitness:
    """A :class:`Witness` called directly (same process), speaking the same protocol."""

    def __init__(self, witness: Witness) -> None:
        self.witness = witness
        self.name = witness.name

    def add_checkpoint(self, old_size: int, proof: Sequence[bytes], note: Note) -> list[str]:
        return _endpoint_result(self.name, self.witness.add_checkpoint(encode_add_checkpoint(old_size, proof, note)))


class HTTPWitness:
    """A witness reached over HTTP at ``<submission prefix>/add-checkpoint``."""

    def __init__(self, name: str, url: str, timeout_s: float = 5.0) -> None:
        import httpx

        self.name = name
        self._url = url.rstrip("/") + "/add-checkpoint"
        self._client = httpx.Client(timeout=timeout_s)

    def add_checkpoint(self, old_size: int, proof: Sequence[bytes], note: Note) -> list[str]:
        import httpx

        try:
            reply = self._client.post(self._url, content=encode_add_checkpoint(old_size, proof, note))
        except httpx.HTTPError as exc:
            raise TransportError(f"witness {self.name} unreachable: {exc}") from exc
        response = WitnessResponse(reply.status_code, reply.content, reply.headers.get("content-type", ""))
        return _endpoint_result(self.name, response)

    def latest(self, origin: str) -> str | None:
        """The witness's newest cosigned checkpoint of ``origin`` (``GET /latest/<origin>``), unverified.

        Raises:
            TransportError: the witness cannot be reached or answers neither 200 nor 404.
        """
        import urllib.parse

        import httpx

        url = self._url.removesuffix("/add-checkpoint") + "/latest/" + urllib.parse.quote(origin, safe="")
        try:
            reply = self._client.get(url)
        except httpx.HTTPError as exc:
            raise TransportError(f"witness {self.name} unreachable: {type(exc).__name__}") from exc
        if reply.status_code == 404:
            return None
        if reply.status_code != 200 or len(reply.content) > MAX_NOTE_BYTES:
            raise TransportError(f"witness {self.name} answered HTTP {reply.status_code} for its latest checkpoint")
        return reply.text

    def close(self) -> None:
        self._client.close()
