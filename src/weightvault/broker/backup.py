"""Broker backups: a consistent snapshot, encrypted under the root key, signed with the log's key.

A backup is a tar file of exactly two members:

``manifest.note``
    A signed note (C2SP signed-note format) by the broker's audit-log key. Its text is
    the line ``weightvault broker backup v1`` and one line of canonical JSON: broker id,
    creation time, the log's origin, size, root and checkpoint at the snapshot, the
    database engine, the payload's size and SHA-256, and the payload's file key wrapped
    under the root key (``keystore.wrap_backup_key``). A broker under custody has no root
    key to wrap with: its manifest also holds the active share set (public data), and the
    file key is sealed to the set's backup key (``keystore.seal_backup_key``), which only
    the root key opens, so restoring takes a quorum of custodians (:func:`restore_ceremony`).
    A checkpoint's second line is a decimal size, so this note can never pass for a
    checkpoint signed by the same key.
``payload.wvlt``
    A sealed blob (docs/format.md) of a tar: ``database.json`` (every row, one snapshot:
    ``storage.snapshot``), ``audit.db`` (SQLite's online backup of the log), ``broker.toml``
    and the broker's keys but the root key.

Restoring verifies the note with a pinned verifier key, the payload's digest against
the note, unwraps the file key with the root key, and opens the blob, whose every chunk
is authenticated. The log in the payload is re-verified (every leaf re-hashed) and must
reach the size and root the note states. Whether it may be restored at all, given the
checkpoints already seen, is :func:`rollback_check`'s question.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import secrets
import tarfile
import tempfile
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from weightvault.auditlog.checkpoint import verify_checkpoint
from weightvault.auditlog.entities import entities_of
from weightvault.auditlog.events import WRITE_AHEAD_ACTIONS
from weightvault.auditlog.log import LogReader
from weightvault.auditlog.note import Note, NoteSigner, NoteVerifier, parse_note, signed_by
from weightvault.auditlog.policy import WitnessPolicy
from weightvault.auditlog.storage import copy_log
from weightvault.auditlog.witness import HTTPWitness
from weightvault.broker.containment import held_model
from weightvault.broker.keystore import (
    RootKey,
    open_backup_key,
    seal_backup_key,
    unwrap_backup_key,
    wrap_backup_key,
)
from weightvault.broker.storage import BrokerStore, HoldRow
from weightvault.broker.storage.snapshot import export_database
from weightvault.custody.approvals import RESTORE_OP, ApprovalPolicy, ApprovalRequest, SignedApproval, evaluate
from weightvault.custody.ceremony import Ceremony, Submission
from weightvault.custody.shares import ShareSet
from weightvault.encoding import canonical_json, parse_json, parse_json_object
from weightvault.errors import (
    ApprovalInvalidError,
    ApprovalRequiredError,
    AuditLogError,
    BackupError,
    CeremonyError,
    CheckpointError,
    ConfigError,
    KeyAccessError,
    RollbackError,
    ShareError,
    TransportError,
    WeightVaultError,
)
from weightvault.files import atomic_file, read_bounded_file
from weightvault.format.keys import FileKey
from weightvault.sealing import seal_blob
from weightvault.sealing.reader import SealedFile
from weightvault.sealing.unseal import unseal_to

__all__ = [
    "REQUEST_FILE",
    "SUBMISSION_SUFFIX",
    "BackupManifest",
    "KnownCheckpoint",
    "RestoreQuorum",
    "approval_policy_of",
    "changes_after",
    "check_override",
    "checkpoint_of",
    "create_backup",
    "database_export",
    "hold_changes",
    "hold_targets",
    "open_backup",
    "read_manifest",
    "restore_ceremony",
    "restore_params",
    "restore_request",
    "rollback_check",
    "witness_heads",
]

HEADER: Final = "weightvault broker backup v1"
_MEMBERS: Final = ("manifest.note", "payload.wvlt")
_MAX_MANIFEST: Final = 64 << 10


@dataclass(frozen=True, slots=True)
class BackupManifest:
    """What a backup's signed note states."""

    broker: str
    created_at: int
    origin: str
    log_size: int
    log_root: bytes
    checkpoint: str
    backend: str
    payload_bytes: int
    payload_sha256: str
    wrapped_key: bytes
    #: The broker's active share set when its root key is under custody (then ``wrapped_key``
    #: is sealed to the set's backup key); None when the root key is a key file.
    custody: ShareSet | None = None

    def to_json(self) -> dict[str, Any]:
        doc = {
            "broker": self.broker,
            "created_at": self.created_at,
            "log": {
                "origin": self.origin,
                "size": self.log_size,
                "root": self.log_root.hex(),
                "checkpoint": self.checkpoint,
            },
            "database": self.backend,
            "payload": {"bytes": self.payload_bytes, "sha256": self.payload_sha256},
            "wrapped_key": self.wrapped_key.hex(),
        }
        if self.custody is not None:
            doc["custody"] = self.custody.to_json()
        return doc

    @classmethod
    def from_json(cls, doc: Any) -> BackupManifest:
        try:
            log, payload = doc["log"], doc["payload"]
            manifest = cls(
                broker=str(doc["broker"]),
                created_at=int(doc["created_at"]),
                origin=str(log["origin"]),
                log_size=int(log["size"]),
                log_root=bytes.fromhex(log["root"]),
                checkpoint=str(log["checkpoint"]),
                backend=str(doc["database"]),
                payload_bytes=int(payload["bytes"]),
                payload_sha256=str(payload["sha256"]),
                wrapped_key=bytes.fromhex(doc["wrapped_key"]),
                custody=None if doc.get("custody") is None else ShareSet.from_json(doc["custody"]),
            )
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise BackupError("the backup manifest is malformed") from exc
        if manifest.log_size < 0 or len(manifest.log_root) != 32 or manifest.payload_bytes < 0:
            raise BackupError("the backup manifest is malformed")
        if manifest.custody is not None and manifest.custody.backup_key is None:
            raise BackupError("the backup manifest's share set names no backup key")
        return manifest


def create_backup(
    out: Path,
    *,
    store: BrokerStore,
    log_db: Path,
    config_file: Path,
    key_files: Iterable[tuple[str, Path]],
    encrypt_to: RootKey | ShareSet,
    signer: NoteSigner,
    broker: str,
    now: int,
) -> BackupManifest:
    """Write a backup of the running (or stopped) broker to ``out`` atomically, encrypted under
    its root key, or, for a broker under custody, sealed to the backup key of its share set.

    The log is copied first and the database exported after, so the database is never
    older than the log: every state change the log shows is in it (write-ahead rule).

    Raises:
        AuditLogError: the log does not verify (a damaged log is not backed up silently).
        StorageUnavailableError: the database cannot be read.
        ConfigError: the share set names no backup key (dealt by an older version).
    """
    if isinstance(encrypt_to, ShareSet) and encrypt_to.backup_key is None:
        raise ConfigError(
            f"share set {encrypt_to.id} was dealt before backups under custody existed and names no "
            "backup key: run a rekey ceremony (the same custodians will do), then back up"
        )
    with tempfile.TemporaryDirectory(prefix="wv-backup-") as tmp:
        work = Path(tmp)
        origin = copy_log(log_db, work / "audit.db")
        with LogReader.open(work / "audit.db", origin) as log:
            size = log.fsck()
            root_hash = log.root_at(size)
            checkpoint = log.latest_checkpoint().to_text()
        database = json.dumps(export_database(store.db), sort_keys=True).encode()
        inner = work / "payload.tar"
        with tarfile.open(inner, "w") as tar:
            _add(tar, "database.json", database)
            tar.add(work / "audit.db", "audit.db")
            tar.add(config_file, "broker.toml")
            for name, path in key_files:
                tar.add(path, f"keys/{name}")
        file_key = FileKey.generate()
        try:
            seal_blob(inner, work / "payload.wvlt", name="weightvault-broker-backup", file_key=file_key)
            if isinstance(encrypt_to, ShareSet):
                assert encrypt_to.backup_key is not None  # checked above
                wrapped = seal_backup_key(encrypt_to.backup_key, broker, now, file_key)
            else:
                wrapped = wrap_backup_key(encrypt_to, broker, now, file_key)
        finally:
            file_key.wipe()
        payload_path = work / "payload.wvlt"
        payload_bytes, payload_sha256 = _digest_file(payload_path)
        manifest = BackupManifest(
            broker=broker,
            created_at=now,
            origin=origin,
            log_size=size,
            log_root=root_hash,
            checkpoint=checkpoint,
            backend=store.db.backend,
            payload_bytes=payload_bytes,
            payload_sha256=payload_sha256,
            wrapped_key=wrapped,
            custody=encrypt_to if isinstance(encrypt_to, ShareSet) else None,
        )
        text = f"{HEADER}\n{canonical_json(manifest.to_json()).decode()}\n"
        note = Note(text, (signer.sign(text),)).to_text().encode()
        with atomic_file(out, mode=0o600) as handle, tarfile.open(fileobj=handle, mode="w") as tar:
            _add(tar, "manifest.note", note)
            info = tar.gettarinfo(payload_path, "payload.wvlt")
            info.mode, info.uid, info.gid, info.uname, info.gname = 0o600, 0, 0, "", ""
            with payload_path.open("rb") as source:  # streamed: a large log never sits in memory
                tar.addfile(info, source)
    return manifest


_CHUNK: Final = 1 << 20


def _digest_file(path: Path) -> tuple[int, str]:
    """Size and SHA-256 of a file, read in chunks."""
    h, size = hashlib.sha256(), 0
    with path.open("rb") as source:
        while chunk := source.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))


def _members(path: Path, payload_to: Path | None = None) -> tuple[bytes, tuple[int, str] | None]:
    """The backup's manifest (size bounded) and, with ``payload_to``, its payload's size and SHA-256,
    read in chunks while the payload is copied to that new file (without, the payload is only
    found, not read). Any other member is refused."""
    manifest: bytes | None = None
    payload: tuple[int, str] | None = None
    payload_seen = False
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                seen = manifest is not None if info.name == "manifest.note" else payload_seen
                if info.name not in _MEMBERS or not info.isfile() or seen:
                    raise BackupError(f"{path}: unexpected member {info.name!r}")
                if info.name == "manifest.note" and info.size > _MAX_MANIFEST:
                    raise BackupError(f"{path}: the manifest is too large")
                handle = tar.extractfile(info)
                assert handle is not None
                if info.name == "manifest.note":
                    manifest = handle.read()
                    continue
                payload_seen = True
                if payload_to is None:
                    continue
                h, size = hashlib.sha256(), 0
                with atomic_file(payload_to, mode=0o600) as out:
                    while chunk := handle.read(_CHUNK):
                        h.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
                payload = (size, h.hexdigest())
    except (tarfile.TarError, EOFError) as exc:
        raise BackupError(f"{path}: not a weightvault backup ({type(exc).__name__})") from exc
    if manifest is None or not payload_seen:
        raise BackupError(f"{path}: not a weightvault backup (members missing)")
    return manifest, payload


def read_manifest(path: Path, verifier: NoteVerifier, *, payload_to: Path | None = None) -> BackupManifest:
    """The backup's manifest, verified with ``verifier`` (the log's key). With ``payload_to`` the
    payload is copied there and checked against the manifest (size and SHA-256) in that one pass;
    without, it is only found: :func:`open_backup` checks it as it copies it out, so a large
    payload is read once per restore, not twice.

    Raises:
        BackupError: malformed, not signed by ``verifier``, or the payload differs from the manifest.
    """
    text, payload = _members(path, payload_to)
    try:
        note = parse_note(text)
    except CheckpointError as exc:
        raise BackupError(f"{path}: the manifest is not a signed note ({exc})") from exc
    if not signed_by(note, [verifier]):
        raise BackupError(f"{path}: the manifest is not signed by {verifier.name}")
    lines = note.text.split("\n")
    if len(lines) != 3 or lines[0] != HEADER or lines[2] != "":
        raise BackupError(f"{path}: not a weightvault broker backup")
    manifest = BackupManifest.from_json(parse_json(lines[1], f"{path}: the backup manifest is malformed", BackupError))
    if payload is not None and (
        payload[0] != manifest.payload_bytes or not hmac.compare_digest(payload[1], manifest.payload_sha256)
    ):
        raise BackupError(f"{path}: the payload is not the one the manifest names")
    if manifest.origin != verifier.name:
        raise BackupError(f"{path}: a backup of the log {manifest.origin!r}, not {verifier.name!r}")
    return manifest


@dataclass(frozen=True, slots=True)
class KnownCheckpoint:
    """A tree head the world may already have seen: from a checkpoint, a log or a watermark."""

    size: int
    root: bytes
    source: str


def checkpoint_of(
    text: str, verifier: NoteVerifier, source: str, *, now: int, witnesses: Sequence[NoteVerifier] = ()
) -> KnownCheckpoint:
    """A checkpoint of this log, signed by its key and, for each of ``witnesses``, cosigned by it.

    Raises:
        CheckpointError: not a checkpoint of this log, or a signature fails or is missing.
    """
    policy = WitnessPolicy.threshold(list(witnesses), len(witnesses))
    try:
        verified = verify_checkpoint(text, verifier, policy, now=now)
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: {exc}") from exc
    return KnownCheckpoint(verified.checkpoint.size, verified.checkpoint.root, source)


def witness_heads(config_text: str, verifier: NoteVerifier, now: int) -> list[KnownCheckpoint]:
    """The newest checkpoint each witness a broker configuration names has cosigned, verified: the
    log's signature and that witness's own cosignature.

    Raises:
        ConfigError: the configuration names no witness.
        TransportError: a witness cannot be reached (its checkpoint may be the newest).
        CheckpointError: an answer is not signed by the log and by that witness, or a witness has
            no checkpoint of the log (an unsigned "nothing" could hide a newer head: fail closed).
    """
    witnesses = tomllib.loads(config_text).get("audit", {}).get("witnesses", [])
    if not witnesses:
        raise ConfigError("the backed-up configuration names no witnesses: use --checkpoint or --old-log")
    heads = []
    for entry in witnesses:
        name, url, witness_key = str(entry["name"]), str(entry["url"]), NoteVerifier.from_vkey(str(entry["vkey"]))
        client = HTTPWitness(name, url)
        try:
            text = client.latest(verifier.name)
        except TransportError as exc:
            raise TransportError(f"{exc}; pass its newest checkpoint with --checkpoint instead") from exc
        finally:
            client.close()
        if text is None:
            raise CheckpointError(
                f"witness {name} has no checkpoint of {verifier.name}, so it cannot vouch for the backup; "
                "use --checkpoint, --old-log or --unchecked"
            )
        heads.append(checkpoint_of(text, verifier, f"witness {name}", now=now, witnesses=[witness_key]))
    return heads


def rollback_check(manifest: BackupManifest, log: LogReader | None, known: Sequence[KnownCheckpoint]) -> None:
    """Refuse a backup whose log is older than, or not an extension of, any known tree head.

    ``log`` is the backup's own log (verified). A known head larger than the backup's means
    events after the backup were seen (a revocation, a policy change): restoring would
    undo them silently. A head of the same or a smaller size must be the backup's tree at
    that size, else the backup is of another history. With ``log`` None (the payload is
    not decrypted yet) only what the signed manifest settles is checked: heads larger than
    the backup's, and heads of its size; smaller ones wait for the log.

    Raises:
        RollbackError: the backup is behind, or off, a known head.
    """
    for head in known:
        if head.size > manifest.log_size:
            raise RollbackError(
                f"the backup's log ends at size {manifest.log_size}, but {head.source} has seen size "
                f"{head.size}: restoring it would undo what happened since"
            )
        if head.size == manifest.log_size:
            root = manifest.log_root
        elif log is None:
            continue
        else:
            root = log.root_at(head.size)
        if not hmac.compare_digest(root, head.root):
            raise RollbackError(f"the backup's log is not the history {head.source} has seen (size {head.size})")


REQUEST_FILE: Final = "restore-request.json"
SUBMISSION_SUFFIX: Final = ".submission"


@dataclass(frozen=True, slots=True)
class RestoreQuorum:
    """What a restore ceremony produced: the root key and who gave their shares."""

    root: RootKey
    ceremony: str
    custodians: tuple[str, ...]


def restore_params(manifest: BackupManifest) -> dict[str, Any]:
    """The backup a restore ceremony opens, as custodians see and sign it."""
    return {
        "backup": {
            "broker": manifest.broker,
            "created_at": manifest.created_at,
            "log_size": manifest.log_size,
            "payload_sha256": manifest.payload_sha256,
        }
    }


def restore_ceremony(
    manifest: BackupManifest,
    exchange: Path,
    *,
    ttl: int,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    report: Callable[[str], None],
    poll_seconds: float = 0.5,
) -> RestoreQuorum:
    """Rebuild the root key of a backup made under custody from a quorum of custodians' shares.

    Writes the ceremony's terms to ``exchange``/restore-request.json, then reads every
    ``*.submission`` file that appears there (custodians write them with ``weightvault custody
    submit-file``) until the share set's threshold is met. Each share is checked as it
    arrives (signature, encryption to this ceremony, commitment); a refused file is reported
    with ``report`` and skipped, so one bad file neither ends the ceremony nor counts. The
    ceremony's private key and the shares live only in this process; the request file is
    removed when the ceremony ends, whichever way.

    Raises:
        ConfigError: the backup was not made under custody, or ``exchange`` is unusable.
        CeremonyError: the ceremony expired before enough shares came.
        ShareError: the shares rebuild a key that fails the set's key-check value.
    """
    share_set = manifest.custody
    if share_set is None:
        raise ConfigError("this backup is encrypted under a root key file, not under custody")
    if not exchange.is_dir():
        raise ConfigError(f"{exchange}: not a directory (custodians' submissions are exchanged there)")
    ceremony = Ceremony.open(manifest.broker, "restore", share_set, restore_params(manifest), now=int(clock()), ttl=ttl)
    request = exchange / REQUEST_FILE
    seen: set[tuple[str, int, int]] = set()
    try:
        with atomic_file(request, mode=0o644, overwrite=True) as out:
            out.write(canonical_json(ceremony.terms.to_json()) + b"\n")
        report(
            f"restore ceremony {ceremony.id}: tell the custodians this id through another channel; "
            f"{ceremony.needed} of {len(share_set.custodians)} ({', '.join(c.id for c in share_set.custodians)}) "
            f"each run 'weightvault custody submit-file {request} --ceremony {ceremony.id[:16]} --key KEY "
            f"--share SHARE --out {exchange}/NAME{SUBMISSION_SUFFIX}'"
        )
        while True:
            for path in sorted(exchange.glob(f"*{SUBMISSION_SUFFIX}")):
                try:
                    stat = path.stat()
                except OSError:
                    continue
                version = (path.name, stat.st_size, stat.st_mtime_ns)
                if version in seen:  # each version of a file is read once; a rewritten file again
                    continue
                seen.add(version)
                try:
                    submission = Submission.from_bytes(read_bounded_file(path, "submission", max_bytes=64 << 10))
                    if submission.ceremony != ceremony.id:
                        raise ShareError("it is for another ceremony")
                    done = ceremony.submit(submission.custodian, submission.sealed, submission.signature, int(clock()))
                except (ShareError, ConfigError) as exc:
                    report(f"refused {path.name}: {exc}")
                    continue
                except CeremonyError as exc:
                    if ceremony.status != "open":
                        raise
                    report(f"refused {path.name}: {exc}")
                    continue
                report(f"accepted the share of {submission.custodian} ({len(ceremony.submitted)} of {ceremony.needed})")
                if done:
                    custodians = tuple(ceremony.submitted)
                    root = ceremony.finish()
                    assert root is not None
                    return RestoreQuorum(RootKey(root), ceremony.id, custodians)
            if clock() >= ceremony.terms.expires_at:
                ceremony.expire()
                raise CeremonyError(
                    f"the restore ceremony expired with {len(ceremony.submitted)} of {ceremony.needed} shares"
                )
            sleep(poll_seconds)
    finally:
        ceremony.wipe()
        request.unlink(missing_ok=True)


def open_backup(backup: Path, verifier: NoteVerifier, root: RootKey, into: Path) -> tuple[BackupManifest, Path]:
    """Verify the backup again (its payload is copied out and checked against the signed manifest
    in one pass, so the file cannot change between check and use), then decrypt and unpack the
    payload into the directory ``into``; returns the manifest and ``into``. Verifies the log inside.

    Raises:
        KeyAccessError: ``root`` is not the key the backup was made under.
        BackupError: the backup or its payload does not verify, decrypt or unpack.
    """
    sealed_path, tar_path = into / "payload.wvlt", into / "payload.tar"
    try:
        manifest = read_manifest(backup, verifier, payload_to=sealed_path)
    except BaseException:
        sealed_path.unlink(missing_ok=True)
        raise
    if manifest.custody is not None:
        file_key = open_backup_key(root, manifest.broker, manifest.created_at, manifest.wrapped_key)
    else:
        file_key = unwrap_backup_key(root, manifest.broker, manifest.created_at, manifest.wrapped_key)
    try:
        with (
            SealedFile(sealed_path) as sealed,
            sealed.unlock(file_key) as opened,
            atomic_file(tar_path, mode=0o600) as out,
        ):
            unseal_to(opened, out.fileno())
    except KeyAccessError:
        raise
    except WeightVaultError as exc:
        raise BackupError(f"the backup's payload does not open: {exc}") from exc
    finally:
        file_key.wipe()
        sealed_path.unlink()
    names = {"database.json", "audit.db", "broker.toml"}
    try:
        with tarfile.open(tar_path, "r:") as tar:
            for info in tar:
                name = info.name
                if not info.isfile() or not (name in names or _key_member(name)):
                    raise BackupError(f"the backup's payload has an unexpected member {name!r}")
                # Names were checked above; the "data" filter also refuses links, devices and odd modes.
                tar.extract(info, into, filter="data")
    except tarfile.TarError as exc:
        raise BackupError(f"the backup's payload does not unpack ({type(exc).__name__})") from exc
    finally:
        tar_path.unlink()
    missing = sorted(n for n in names if not (into / n).is_file())
    if missing:
        raise BackupError(f"the backup's payload lacks {', '.join(missing)}")
    try:
        with LogReader.open(into / "audit.db", manifest.origin) as log:
            size = log.fsck()
            if size != manifest.log_size or log.root_at(size) != manifest.log_root:
                raise BackupError("the backup's log is not the one its manifest states")
    except AuditLogError as exc:
        raise BackupError(f"the backup's log does not verify: {exc}") from exc
    return manifest, into


# -- the approved override of a refused restore ------------------------------------------------

#: State changes that restore cannot make safe with holds: they would revive old custody
#: shares or old approvers, the very people who approve the restore.
_UNHOLDABLE: Final = ("custody.", "approval.policy.change")
#: Custody events that change who holds shares (not ceremonies, unseals or seals, which a restart brings).
_CUSTODY_CHANGES: Final = ("custody.genesis", "custody.set.active")
#: Write-ahead actions that change no state the broker keeps.
_NO_STATE: Final = frozenset({"key.release", "key.export"})


def _action(event_type: str) -> str | None:
    """The state-changing action an event records (a ``.done``, or a single legacy event), or None."""
    action = event_type.removesuffix(".done")
    if event_type.endswith((".intent", ".fail")):
        return None
    if action in WRITE_AHEAD_ACTIONS and action not in _NO_STATE:
        return action
    if event_type in ("gateway.key.create", "gateway.key.revoke", *_CUSTODY_CHANGES):
        return event_type
    return None


def changes_after(old_log: LogReader, start: int) -> list[dict[str, Any]]:
    """The state-changing events of ``old_log`` from index ``start`` on, as JSON objects.

    Raises:
        RollbackError: one of them changed custody or the approval policy (no hold can undo that).
    """
    found = []
    for _, event in old_log.events(start=start):
        action = _action(event.type)
        if action is None:
            continue
        if action.startswith(_UNHOLDABLE):
            raise RollbackError(
                f"the log changed {action} after the backup: restoring it would bring old custody shares "
                "or approvers back, which no approval can make safe"
            )
        found.append(event.to_json())
    return found


def hold_targets(events: Sequence[Mapping[str, Any]], models_of: Any) -> list[tuple[str, str, str]]:
    """(kind, target, tenant) for every entity the events name, each once, in a stable order.

    An event about a model holds the model; about a device, principal or gateway key,
    that; about anything else of a tenant (a policy, a key, the tenant itself), every
    model of the tenant (``models_of(tenant)``: their hold targets), because the restored
    state of that thing is older than what the log says.
    """
    targets: dict[tuple[str, str], str] = {}
    for ev in events:
        entities = entities_of(ev)
        tenant = str(ev.get("tenant", "-"))
        resource = str(ev.get("resource", ""))
        for device in entities.devices:
            targets.setdefault(("device", device), tenant)
        for key in entities.keys:
            targets.setdefault(("gateway_key", key), tenant)
        if resource.startswith("principal:"):
            targets.setdefault(("principal", resource[len("principal:") :]), tenant)
        for res in entities.resources:
            model = held_model(res)
            if model is not None:
                targets.setdefault(("model", model), tenant)
            elif tenant != "-":
                for target in models_of(tenant):
                    targets.setdefault(("model", target), tenant)
    return [(kind, target, tenant) for (kind, target), tenant in sorted(targets.items())]


def hold_changes(store: BrokerStore, events: Sequence[Mapping[str, Any]], now: int) -> list[tuple[str, str, str]]:
    """Put every entity ``events`` name under a containment hold (rule ``broker.restore``, by the
    operator, lifted by operators after review); returns the (kind, target, tenant) held."""

    def models_of(tenant: str) -> list[str]:
        return sorted({held_model(f"{tenant}/models/{m.name}") or "" for m in store.catalogue.models(tenant)} - {""})

    targets = hold_targets(events, models_of)
    for kind, target, tenant in targets:
        store.holds.add(HoldRow(secrets.token_hex(8), kind, target, tenant, None, RESTORE_OP, "operator", now))
    return targets


def restore_request(
    manifest: BackupManifest, newer: KnownCheckpoint, policy_version: int, now: int, ttl_s: int = 86400
) -> ApprovalRequest:
    """The approval request for restoring ``manifest``'s backup behind ``newer`` (the old log's head)."""
    params = {
        "backup_sha256": manifest.payload_sha256,
        "backup_created_at": manifest.created_at,
        "backup_log_size": manifest.log_size,
        "backup_log_root": manifest.log_root.hex(),
        "newer_log_size": newer.size,
        "newer_log_root": newer.root.hex(),
    }
    return ApprovalRequest(
        id="restore-" + secrets.token_hex(8),
        broker=manifest.broker,
        op=RESTORE_OP,
        tenant="-",
        params=params,
        requester="operator",
        policy_version=policy_version,
        nonce=secrets.token_hex(16),
        not_before=now,
        expires_at=now + ttl_s,
    )


def database_export(unpacked: Path) -> dict[str, Any]:
    """The database export of an unpacked backup (``storage.snapshot``'s document).

    Raises:
        BackupError: it does not parse.
    """
    try:
        doc = parse_json_object((unpacked / "database.json").read_bytes(), "the backup's database.json", BackupError)
    except OSError as exc:
        raise BackupError("the backup's database export is malformed") from exc
    return doc


def approval_policy_of(export: Mapping[str, Any]) -> ApprovalPolicy | None:
    """The newest approval policy in a database export, or None."""
    rows = export.get("tables", {}).get("approval_policies", [])
    if not rows:
        return None
    newest = max(rows, key=lambda r: int(r["version"]))
    document = parse_json_object(newest["document"], "the backup's approval policy", BackupError)
    return ApprovalPolicy.parse(document, int(newest["version"]))


def check_override(
    request: ApprovalRequest,
    manifest: BackupManifest,
    newer: KnownCheckpoint,
    policy: ApprovalPolicy,
    *,
    approvals: Sequence[SignedApproval],
    now: int,
) -> tuple[str, ...]:
    """The approvers who approved this very rollback under ``policy``; raises unless enough did.

    Raises:
        ApprovalInvalidError: the request is for another backup or log head, or a denial counts.
        ApprovalRequiredError: the approvals that count do not meet the rule.
    """
    expected = restore_request(manifest, newer, policy.version, now)
    if (request.op, request.broker, dict(request.params)) != (expected.op, expected.broker, dict(expected.params)):
        raise ApprovalInvalidError("the approval request is for another backup or another log head")
    if request.policy_version != policy.version:
        raise ApprovalInvalidError(
            f"the request names approval policy v{request.policy_version}, not v{policy.version}"
        )
    result = evaluate(policy, request, approvals, {}, now)
    if result.status == "denied":
        raise ApprovalInvalidError(f"the rollback was denied by {', '.join(result.counted)}")
    if result.status != "approved":
        problems = "; ".join(result.problems)
        raise ApprovalRequiredError(
            f"the rollback needs {result.needed}; counted: {', '.join(result.counted) or 'none'}"
            + (f" ({problems})" if problems else "")
        )
    return result.counted


def _key_member(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and parts[0] == "keys" and parts[1] not in ("", ".", "..")
