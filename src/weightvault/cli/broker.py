"""``weightvault broker``: create a broker's configuration and keys, and serve it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import click

from weightvault.broker.config import DEFAULTS, check_storage_url
from weightvault.cli.custody import load_person_public, share_file_bytes
from weightvault.cli.options import is_database_url, json_option, report
from weightvault.encoding import parse_json_object
from weightvault.errors import BackupError, ConfigError
from weightvault.files import read_text_file

__all__ = ["broker"]

_CONFIG_TEMPLATE: Final = """# weightvault key broker configuration. Paths are relative to this file.
[broker]
id = "{broker_id}"
host = "{d.host}"
port = {port}
challenge_ttl_seconds = {d.challenge_ttl_seconds}  # at most 60
token_ttl_seconds = {d.token_ttl_seconds}  # at most 300
max_body_bytes = {d.max_body_bytes}
rate_per_second = {d.rate_per_second:g}  # per principal
burst = {d.burst}

[storage]
# sqlite:///PATH (embedded, one broker process) or postgresql://USER@HOST:PORT/DB (replicas;
# put the password in ~/.pgpass or PGPASSFILE rather than here). docs/operations.md.
url = {storage_url}
audit_db = "{d.audit_db}"  # the tamper-evident audit log (weightvault audit ... --db)

[keys]
root = "{root}"
token_signing = "{d.keys.token_signing}"
registration = "{d.keys.registration}"
audit_log = "{d.keys.audit_log}"  # signs the audit log's checkpoints; its .vkey verifies them
audit_hash = "{d.keys.audit_hash}"

[verifiers]
# Verifiers load only when listed. insecure-sample proves nothing: tests and demos only.
allow = {allow}
insecure_sample_enabled = {sample}
{extra}
[audit]
# witnesses = [{{ name = "w1.example", url = "http://127.0.0.1:8471", vkey = "w1.example+...+..." }}]
quorum = 0
# "file": the SQLite file audit_db; "database": in the PostgreSQL database, for replicas.
storage = "{log_storage}"
lease_ttl_s = {d.audit.lease_ttl_s:g}  # a dead sequencer stalls the log this long at most

# [tls]
# cert = "tls/cert.pem"
# key = "tls/key.pem"

# API tokens of these roles expire this many days after they are issued or rotated (a caller may
# ask for less: admin principal --expires-in). Roles not listed never expire; operators cannot be
# listed, because nothing could renew the last operator's expired token.
# [principals.token_max_age_days]
# workload = 90
# publisher = 90
# sentinel = 30
"""


@click.group()
def broker() -> None:
    """Run the key broker."""


@broker.command("init")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--id", "broker_id", default=DEFAULTS.broker_id, show_default=True, help="Issuer name of result tokens.")
@click.option("--port", type=int, default=DEFAULTS.port, show_default=True)
@click.option("--insecure-sample", is_flag=True, help="Enable the insecure-sample verifier (tests and demos only).")
@click.option(
    "--tpm-roots", type=click.Path(path_type=Path, exists=True), multiple=True, help="EK CA certificates (enables tpm)."
)
@click.option(
    "--tpm-intermediates",
    type=click.Path(path_type=Path, exists=True),
    multiple=True,
    help="Intermediate EK CA certificates between the roots and a TPM's EK certificate. Repeatable.",
)
@click.option(
    "--custodian",
    "custodians",
    type=click.Path(path_type=Path, exists=True),
    multiple=True,
    help="Put the root key under M-of-N custody from the start: a custodian's public key file. Repeatable.",
)
@click.option("--threshold", type=int, help="With --custodian: shares needed to unseal.")
@click.option(
    "--database-url",
    default=DEFAULTS.storage_url,
    show_default=True,
    help="Where the broker keeps its state: sqlite:///PATH (relative to DIRECTORY) or postgresql://USER@HOST/DB.",
)
@click.option(
    "--replicated",
    is_flag=True,
    help="Keep the audit log in the PostgreSQL database too, so that several replicas serve this broker.",
)
@json_option
def broker_init(
    directory: Path,
    broker_id: str,
    port: int,
    insecure_sample: bool,
    tpm_roots: tuple[Path, ...],
    tpm_intermediates: tuple[Path, ...],
    custodians: tuple[Path, ...],
    threshold: int | None,
    database_url: str,
    replicated: bool,
    as_json: bool,
) -> None:
    """Create a broker configuration, its keys and the first operator's API token in DIRECTORY.

    With --custodian, the root key is generated in memory, split among the custodians
    and never written to disk; the broker starts sealed.
    """
    from weightvault.auditlog.note import NoteSigner
    from weightvault.broker.keystore import RootKey
    from weightvault.crypto.keywrap import HPKEKem
    from weightvault.crypto.secret import random_bytes
    from weightvault.crypto.signing import Ed25519Signer
    from weightvault.files import atomic_file
    from weightvault.format.recipients import HPKEIdentity
    from weightvault.sealing.keyfiles import write_key_file, write_secret_file
    from weightvault.server.broker_main import load_broker

    if (directory / "broker.toml").exists():
        raise ConfigError(f"{directory} already holds a broker")
    if bool(custodians) != (threshold is not None):
        raise ConfigError("--custodian and --threshold go together")
    check_storage_url(database_url)
    if replicated and not database_url.startswith("postgresql"):
        raise ConfigError("--replicated needs a postgresql:// --database-url")

    people = [load_person_public(p) for p in custodians]
    # Whatever this command creates goes again if it fails (a database it cannot reach, a
    # full disk): a second try must not find "already holds a broker" and half the keys.
    before = _paths_under(directory)
    try:
        (directory / "keys").mkdir(parents=True, exist_ok=True, mode=0o700)
        (directory / "data").mkdir(parents=True, exist_ok=True, mode=0o700)
        if not people:
            write_secret_file(directory / "keys/root.key", "weightvault.root-key", RootKey.generate().reveal())
        write_secret_file(
            directory / "keys/token-signing.key", "weightvault.signing-key", Ed25519Signer.generate().reveal_seed()
        )
        write_secret_file(directory / "keys/audit-hash.key", "weightvault.hash-key", random_bytes(32))
        write_key_file(directory / "keys/registration.key", HPKEIdentity.generate(HPKEKem.MLKEM768_X25519))
        log_signer = NoteSigner(f"{broker_id}/audit", Ed25519Signer.generate())
        with atomic_file(directory / "keys/audit-log.key", mode=0o600) as out:
            out.write((log_signer.skey() + "\n").encode())
        with atomic_file(directory / "keys/audit-log.key.vkey", mode=0o644) as out:
            out.write((log_signer.verifier.vkey() + "\n").encode())
        allow = []
        extra = ""
        if tpm_intermediates and not tpm_roots:
            raise ConfigError("--tpm-intermediates needs --tpm-roots")
        if tpm_roots:
            allow.append("tpm")
            roots = ", ".join(json.dumps(str(p.resolve())) for p in tpm_roots)
            middle = ", ".join(json.dumps(str(p.resolve())) for p in tpm_intermediates)
            extra += f"\n[verifiers.tpm]\nek_roots = [{roots}]\nek_intermediates = [{middle}]\n"
        if insecure_sample:
            allow.append("insecure-sample")
        text = _CONFIG_TEMPLATE.format(
            d=DEFAULTS,
            broker_id=broker_id,
            port=port,
            root="custody" if people else DEFAULTS.keys.root,
            allow=json.dumps(allow),
            sample="true" if insecure_sample else "false",
            extra=extra,
            storage_url=json.dumps(database_url),
            log_storage="database" if replicated else "file",
        )
        with atomic_file(directory / "broker.toml", mode=0o600) as out:
            out.write(text.encode())
        runtime = load_broker(directory / "broker.toml")
        share_files = None
        try:
            token = runtime.broker.bootstrap_operator()
            if people:
                assert threshold is not None
                share_set = runtime.broker.custody_genesis("init", RootKey.generate(), threshold, people)
                share_files = directory / "custody" / share_set.id
                share_files.mkdir(parents=True)

                for c in share_set.custodians:
                    sealed = runtime.broker.custody.delivery(share_set.id, c.id)
                    with atomic_file(share_files / f"{c.id}.share", mode=0o600) as out:
                        out.write(share_file_bytes(share_set.id, c.id, sealed))
        finally:
            runtime.close()
        with atomic_file(directory / "operator.token", mode=0o600) as out:
            out.write((token + "\n").encode())
    except BaseException:
        _remove_partial(directory, before)
        raise
    lines = [
        f"broker initialised in {directory}",
        f"  operator API token: {directory / 'operator.token'} (mode 0600)",
        f"  audit log key:      {log_signer.verifier.vkey()}",
    ]
    if share_files is not None:
        lines.append(
            f"  root key: {threshold} of {len(people)} custodians; their encrypted shares are in {share_files}"
        )
        lines.append("  the broker starts sealed: custodians unseal it with 'weightvault custody submit'")
    if insecure_sample:
        lines.append("  WARNING: insecure-sample is enabled; policies that list it accept evidence that proves nothing")
    doc = {
        "directory": directory,
        "config": directory / "broker.toml",
        "operator_token_file": directory / "operator.token",
        "audit_log_vkey": log_signer.verifier.vkey(),
        "custody": None if share_files is None else {"threshold": threshold, "shares": share_files},
        "insecure_sample": insecure_sample,
    }
    report(as_json, lines, doc)


def _paths_under(directory: Path) -> set[Path] | None:
    """Every path under ``directory``, or None if it does not exist yet."""
    if not directory.exists():
        return None
    return {directory, *directory.rglob("*")}


def _remove_partial(directory: Path, before: set[Path] | None) -> None:
    """Undo a failed ``broker init``: remove what it created, and nothing that was there before."""
    import shutil

    if before is None:
        shutil.rmtree(directory, ignore_errors=True)
        return
    for path in sorted(_paths_under(directory) or set(), key=lambda p: len(p.parts), reverse=True):
        if path in before:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


@broker.command("serve")
@click.option("--config", "config_path", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--host", help="Override the configured host.")
@click.option("--port", type=int, help="Override the configured port.")
@click.option(
    "--replica",
    help="This replica's name, when the audit log is in the database (default: HOSTNAME:PORT). Unique per replica.",
)
def broker_serve(config_path: Path, host: str | None, port: int | None, replica: str | None) -> None:
    """Serve the broker API (uvicorn, one process per broker; several over one PostgreSQL database)."""
    import socket

    import uvicorn

    from weightvault.server.broker_main import load_broker

    if replica is None and port is not None:
        replica = f"{socket.gethostname()}:{port}"
    runtime = load_broker(config_path, replica=replica)
    cfg = runtime.config
    kwargs: dict[str, Any] = {}
    if cfg.tls_cert is not None and cfg.tls_key is not None:
        kwargs["ssl_certfile"] = str(cfg.path(cfg.tls_cert))
        kwargs["ssl_keyfile"] = str(cfg.path(cfg.tls_key))
    try:
        uvicorn.run(
            runtime.app(),
            host=host or cfg.host,
            port=port or cfg.port,
            log_level="warning",
            **kwargs,
        )
    finally:
        runtime.close()


_BACKED_UP_KEYS: Final = ("token_signing", "registration", "audit_log", "audit_hash")


def _announce_backup(store: Any, sealed_to: str, *, wait_s: float = 5.0) -> bool:
    """Record ``broker.backup`` before the snapshot is taken, so the backup holds its own record and its
    log is not behind the live one (a restore is checked against the heads seen since: an event
    appended after the snapshot would make every fresh backup a rollback). The event goes through the
    database's outbox, which the running broker appends to the log; returns whether it was appended
    within ``wait_s`` (without a running broker it stays in the outbox, and in the backup).
    Compliance reports show the newest backup's age from it."""
    import secrets
    import time

    from weightvault.auditlog.events import AuditEvent

    event = AuditEvent(
        type="broker.backup",
        tenant="-",
        actor="backup",
        resource="broker",
        details={"backup_id": secrets.token_hex(8), "sealed_to": sealed_to, "requested_at": int(time.time())},
    )
    text = event.encode().decode()
    store.outbox.add([("backup", text)], int(time.time()))
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if not store.outbox.waiting("backup", text):
            return True
        time.sleep(0.1)
    return False


@broker.command("backup")
@click.option("--config", "config_path", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True)
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True, help="The backup file to write.")
@json_option
def broker_backup(config_path: Path, out: Path, as_json: bool) -> None:
    """Back up the broker: its database (one snapshot), audit log, configuration and keys.

    Safe while the broker runs. Encrypted under the root key (which is not in the backup:
    keep it apart) and signed with the audit log's key. Restore with 'broker restore'.
    A broker under custody needs no root key to back up: the backup is sealed to its share
    set's backup key, and restoring it takes a quorum of custodians.
    """
    import time

    from weightvault.auditlog.note import NoteSigner
    from weightvault.broker.backup import create_backup
    from weightvault.broker.keystore import RootKey
    from weightvault.broker.storage import BrokerStore
    from weightvault.custody.shares import ShareSet
    from weightvault.files import read_private_file
    from weightvault.sealing.keyfiles import read_secret_file
    from weightvault.server.broker_main import read_config

    config = read_config(config_path)
    signer = NoteSigner.from_skey(read_private_file(config.path(config.keys.audit_log), "signing key").decode())
    keys = [(Path(getattr(config.keys, k)).name, config.path(getattr(config.keys, k))) for k in _BACKED_UP_KEYS]
    keys.append((Path(config.keys.audit_log).name + ".vkey", config.path(config.keys.audit_log + ".vkey")))
    store = BrokerStore(config.database_url)
    scratch = None
    log_db = config.path(config.audit_db)
    encrypt_to: RootKey | ShareSet
    if config.keys.root == "custody":
        row = store.custody.share_set("active")
        if row is None:
            store.close()
            raise ConfigError("this broker's root key is under custody but it has no active share set")
        encrypt_to = ShareSet.from_json(row.document)
    else:
        encrypt_to = RootKey(read_secret_file(config.path(config.keys.root), "weightvault.root-key"))
    sealed_to = "the root key" if isinstance(encrypt_to, RootKey) else f"share set {encrypt_to.id}"
    try:
        if not _announce_backup(store, sealed_to):
            click.echo(
                "note: no running broker recorded this backup in the audit log yet; the record waits in the "
                "database's outbox (it is in the backup too) and is appended when a broker next runs",
                err=True,
            )
        if config.audit.storage == "database":  # the replicas' log, cut at its head into a file
            import tempfile

            from weightvault.auditlog.pgstorage import PostgresLogStorage
            from weightvault.broker.storage.database import libpq_conninfo

            scratch = tempfile.TemporaryDirectory(prefix="wv-backup-log-")
            log_db = Path(scratch.name) / "audit.db"
            pg_log = PostgresLogStorage(libpq_conninfo(config.database_url), signer.name)
            try:
                pg_log.export_sqlite(log_db)
            finally:
                pg_log.close()
        manifest = create_backup(
            out,
            store=store,
            log_db=log_db,
            config_file=config_path,
            key_files=keys,
            encrypt_to=encrypt_to,
            signer=signer,
            broker=config.broker_id,
            now=int(time.time()),
        )
    finally:
        if scratch is not None:
            scratch.cleanup()
        store.close()
        if isinstance(encrypt_to, RootKey):
            encrypt_to.wipe()
    under = "the root key" if manifest.custody is None else f"share set {manifest.custody.id}'s backup key"
    text = (
        f"backup written to {out}: log size {manifest.log_size}, {manifest.backend} database, "
        f"{manifest.payload_bytes} bytes encrypted to {under}"
    )
    doc = {
        "backup": out,
        "created_at": manifest.created_at,
        "log_size": manifest.log_size,
        "log_root": manifest.log_root.hex(),
        "database": manifest.backend,
        "payload_bytes": manifest.payload_bytes,
        "payload_sha256": manifest.payload_sha256,
        "custody_set": None if manifest.custody is None else manifest.custody.id,
    }
    report(as_json, text, doc)


@broker.command("restore")
@click.argument("backup", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--into", type=click.Path(path_type=Path, file_okay=False), required=True, help="A new broker directory.")
@click.option(
    "--root-key",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="The root key file the backup was made under (brokers whose root key is a file).",
)
@click.option(
    "--ceremony-dir",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Backups made under custody: the directory where custodians' submissions are exchanged.",
)
@click.option(
    "--ceremony-ttl",
    type=click.IntRange(60, 3600),
    default=900,
    show_default=True,
    help="Seconds the custodians have to submit their shares.",
)
@click.option("--vkey", required=True, help="The audit log's verifier key (or a file holding it), as auditors pin it.")
@click.option(
    "--checkpoint",
    "checkpoints",
    multiple=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="The newest checkpoint a witness, monitor or client holds (a signed note). Repeatable.",
)
@click.option(
    "--old-log",
    help="The old broker's audit log: its SQLite file, or postgresql://... (the log of replicated brokers).",
)
@click.option("--database-url", default=DEFAULTS.storage_url, show_default=True, help="Where to restore the database.")
@click.option(
    "--witnesses",
    "ask_witnesses",
    is_flag=True,
    help="Ask every witness the backed-up configuration names for its newest cosigned checkpoint.",
)
@click.option("--unchecked", is_flag=True, help="Restore with no checkpoint to compare against (recorded in the log).")
@click.option(
    "--approval-request",
    type=click.Path(path_type=Path, dir_okay=False),
    help="With --old-log: where the request to approve a rollback is written (and read back).",
)
@click.option(
    "--approval",
    "approval_files",
    multiple=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="An approval of that request ('weightvault approval sign-file'). Repeatable.",
)
@json_option
def broker_restore(
    backup: Path,
    into: Path,
    root_key: Path | None,
    ceremony_dir: Path | None,
    ceremony_ttl: int,
    vkey: str,
    checkpoints: tuple[Path, ...],
    old_log: str | None,
    database_url: str,
    ask_witnesses: bool,
    unchecked: bool,
    approval_request: Path | None,
    approval_files: tuple[Path, ...],
    as_json: bool,
) -> None:
    """Restore a backup into a new broker directory, refusing to roll the audit log back.

    The backup must be at least as new as every checkpoint given (--checkpoint: the
    witnesses' latest cosigned checkpoints; --old-log: the old log if it survived), and the
    same history: otherwise events after it (revoked devices, disabled principals, newer
    policies) would silently come undone, and the restore is refused (exit 44).

    With --old-log and --approval-request, a refused restore writes a request that the
    approval policy's approvers sign ('weightvault approval sign-file'); given their
    --approval files, the restore goes ahead: the old log is kept (append-only) and every
    principal, device, gateway key and model that a change after the backup touched is
    held until an operator lifts it.

    A backup made under custody needs no root key file: the restore runs a ceremony in
    --ceremony-dir, where custodians drop the files 'weightvault custody submit-file' makes,
    and goes on once a quorum of shares rebuilds the root key. The restored broker starts
    sealed, under the same custody, and is unsealed as usual.
    """
    import shutil
    import tempfile
    import time

    from weightvault.auditlog.events import AuditEvent
    from weightvault.auditlog.log import AuditLog, LogReader
    from weightvault.auditlog.note import NoteSigner
    from weightvault.broker.backup import (
        KnownCheckpoint,
        checkpoint_of,
        database_export,
        hold_changes,
        open_backup,
        read_manifest,
        restore_ceremony,
        rollback_check,
        witness_heads,
    )
    from weightvault.broker.keystore import RootKey
    from weightvault.broker.storage import BrokerStore
    from weightvault.broker.storage.snapshot import restore_database
    from weightvault.cli.options import read_vkey
    from weightvault.errors import RollbackError
    from weightvault.files import read_private_file
    from weightvault.sealing.keyfiles import read_secret_file, write_secret_file
    from weightvault.server.broker_main import read_config

    check_storage_url(database_url)
    if into.exists() and any(into.iterdir()):
        raise ConfigError(f"{into} is not empty: restore into a new directory")
    if not checkpoints and old_log is None and not ask_witnesses and not unchecked:
        raise ConfigError(
            "ask the witnesses (--witnesses), name the newest checkpoint they hold (--checkpoint) or the old "
            "log (--old-log), so that an old backup cannot roll the log back; or pass --unchecked"
        )
    verifier = read_vkey(vkey)
    manifest = read_manifest(backup, verifier)  # signature and manifest first; the payload as it is opened
    now = int(time.time())
    known = [
        checkpoint_of(read_text_file(p, "checkpoint", max_bytes=1 << 20), verifier, str(p), now=now)
        for p in checkpoints
    ]
    scratch = tempfile.TemporaryDirectory(prefix="wv-restore-old-log-")
    old_log_file: Path | None = None
    if old_log is not None:  # a file as it is; a database's log cut at its head into a file
        old_log_file = _old_log_into(old_log, Path(scratch.name) / "old-audit.db", verifier.name)
        with LogReader.open(old_log_file, verifier.name) as log:
            known.append(KnownCheckpoint(log.size, log.root_at(log.size), _old_log_name(old_log)))
    approvals = [_read_approval(p) for p in approval_files]
    quorum = None
    if manifest.custody is None:
        if root_key is None or ceremony_dir is not None:
            raise ConfigError("this backup is encrypted under a root key file: pass --root-key (not --ceremony-dir)")
        root = RootKey(read_secret_file(root_key, "weightvault.root-key"))
    else:
        if root_key is not None or ceremony_dir is None:
            raise ConfigError(
                f"this backup was made under custody (share set {manifest.custody.id}): pass --ceremony-dir, "
                "where a quorum of custodians submits their shares"
            )
        if old_log is None or approval_request is None:  # refused whatever the payload holds: ask nobody
            rollback_check(manifest, None, known)
        quorum = restore_ceremony(
            manifest,
            ceremony_dir,
            ttl=ceremony_ttl,
            clock=time.time,
            sleep=time.sleep,
            report=lambda line: click.echo(line, err=True),
        )
        root = quorum.root
    before = _paths_under(into)
    override: _Override | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="wv-restore-") as tmp:
            opened, unpacked = open_backup(backup, verifier, root, Path(tmp))
            if opened != manifest:
                raise BackupError(f"{backup} changed during the restore")
            if ask_witnesses:
                known += witness_heads((unpacked / "broker.toml").read_text(), verifier, now)
            export = database_export(unpacked)
            with LogReader.open(unpacked / "audit.db", manifest.origin) as log:
                try:
                    rollback_check(manifest, log, known)
                except RollbackError:
                    if old_log is None or old_log_file is None or approval_request is None:
                        raise
                    override = _approve_rollback(
                        manifest, export, old_log_file, known, approval_request, approvals, verifier.name, now
                    )
            (into / "keys").mkdir(parents=True, exist_ok=True, mode=0o700)
            (into / "data").mkdir(parents=True, exist_ok=True, mode=0o700)
            for path in sorted((unpacked / "keys").iterdir()):
                target = into / "keys" / path.name
                target.write_bytes(path.read_bytes())
                target.chmod(0o644 if path.name.endswith(".vkey") else 0o600)
            if quorum is None:  # under custody the root key stays in the custodians' shares
                write_secret_file(into / "keys/root.key", "weightvault.root-key", root.reveal())
            config_text = _restored_config((unpacked / "broker.toml").read_text(), database_url)
            (into / "broker.toml").write_text(config_text)
            (into / "broker.toml").chmod(0o600)
            config = read_config(into / "broker.toml")
            log_path = config.path(config.audit_db)
            log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if override is None:
                shutil.copyfile(unpacked / "audit.db", log_path)
            else:  # the newer log goes on: append-only, whatever the database's age
                assert old_log is not None
                _old_log_into(old_log, log_path, manifest.origin, copy=True)  # read again: has it grown?
                with LogReader.open(log_path, manifest.origin) as copied:
                    if copied.size != override.log_size:
                        # What was held is what the approvers saw: a log still growing is not that.
                        raise RollbackError("the old log grew during the restore: stop the old broker, then retry")
            store = BrokerStore(config.database_url)
            try:
                counts = restore_database(store.db, export, now)
                held = [] if override is None else hold_changes(store, override.events, now)
            finally:
                store.close()
        signer = NoteSigner.from_skey(read_private_file(config.path(config.keys.audit_log), "signing key").decode())
        details: dict[str, Any] = {
            "backup_created_at": manifest.created_at,
            "backup_log_size": manifest.log_size,
            "checked_against": [{"size": k.size, "source": Path(k.source).name} for k in known],
            "unchecked": unchecked,
        }
        if quorum is not None:
            details["custody"] = {"ceremony": quorum.ceremony, "custodians": list(quorum.custodians)}
        if override is not None:
            details["rollback"] = {
                "approval_request": override.request_id,
                "approved_by": list(override.approvers),
                "log_size": override.log_size,
                "changes_after_backup": override.changes,
                "holds": len(held),
            }
        with AuditLog(log_path, signer) as log:
            log.append(AuditEvent(type="broker.restore", tenant="-", actor="operator", details=details))
        if config.audit.storage == "database":  # the replicas' log goes into the new database
            from weightvault.auditlog.pgstorage import PostgresLogStorage
            from weightvault.broker.storage.database import libpq_conninfo

            pg_log = PostgresLogStorage(libpq_conninfo(config.database_url), signer.name)
            try:
                pg_log.import_sqlite(log_path)
            finally:
                pg_log.close()
            log_path.unlink()
            log_path.with_name(log_path.name + ".watermark").unlink(missing_ok=True)
    except BaseException:
        _remove_partial(into, before)
        raise
    finally:
        root.wipe()
        scratch.cleanup()
    serve = f"weightvault broker serve --config {into / 'broker.toml'}"
    log_size = manifest.log_size if override is None else override.log_size
    lines = [
        f"restored into {into}: database as of the backup ({sum(counts.values())} rows), "
        f"log size {log_size} (+1 broker.restore event); start it with '{serve}'"
    ]
    if quorum is not None:
        lines.append(
            f"  opened with the shares of {', '.join(quorum.custodians)}; the broker starts sealed: unseal it "
            "with 'weightvault custody open unseal' as usual"
        )
    if override is not None:
        lines.append(
            f"  ROLLBACK approved by {', '.join(override.approvers)}: the log keeps the {override.changes} state "
            f"changes made after the backup, and {len(held)} things they touched are held until an operator "
            "lifts them ('weightvault sentinel holds')"
        )
    if unchecked:
        lines.append("  WARNING: restored without a checkpoint to compare against (--unchecked); the log records it")
    doc = {
        "directory": into,
        "config": into / "broker.toml",
        "rows": sum(counts.values()),
        "log_size": log_size,
        "custodians": None if quorum is None else list(quorum.custodians),
        "rollback": None
        if override is None
        else {"approvers": list(override.approvers), "changes": override.changes, "held": len(held)},
        "unchecked": unchecked,
    }
    report(as_json, lines, doc)


def _old_log_name(spec: str) -> str:
    """How the old log is named in messages and in the log: never a URL, which may hold a password."""
    return "the old log database" if is_database_url(spec) else spec


def _old_log_into(spec: str, dst: Path, origin: str, *, copy: bool = False) -> Path:
    """The old log as a SQLite log file: with a file ``spec``, that file itself (or, with ``copy``,
    a copy at ``dst``); with a postgresql:// ``spec`` (replicated brokers), its log cut at the head
    into the new file ``dst``. Nothing is written to the old log.

    Raises:
        ConfigError: no such file, or no log of ``origin`` in that database.
    """
    from weightvault.auditlog.storage import copy_log

    if not is_database_url(spec):
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"{path}: no such audit log")
        if not copy:
            return path
        copy_log(path, dst)
        return dst
    from weightvault.auditlog.pgstorage import PostgresLogStorage
    from weightvault.broker.storage.database import libpq_conninfo
    from weightvault.errors import AuditLogError

    try:
        storage = PostgresLogStorage(libpq_conninfo(spec.replace("postgres://", "postgresql://", 1)))
    except AuditLogError as exc:
        raise ConfigError(f"the old log database: {exc}") from exc
    try:
        if storage.origin != origin:
            raise ConfigError(f"the old log database holds the log {storage.origin!r}, not {origin!r}")
        storage.export_sqlite(dst)
    finally:
        storage.close()
    return dst


@dataclass(frozen=True)
class _Override:
    request_id: str
    approvers: tuple[str, ...]
    log_size: int
    changes: int
    events: list[dict[str, Any]]


def _read_approval(path: Path) -> tuple[str, Any]:
    """(request digest, SignedApproval) from a file 'approval sign-file' wrote."""
    import base64
    import binascii

    from weightvault.custody.approvals import SignedApproval

    try:
        doc = parse_json_object(path.read_bytes(), f"{path}: not a signed approval", ConfigError)
        approval = SignedApproval(
            str(doc["approver"]), str(doc["decision"]), int(doc["expires_at"]), base64.b64decode(doc["signature"])
        )
        return str(doc["request_digest"]), approval
    except (OSError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise ConfigError(f"{path}: not an approval written by 'weightvault approval sign-file'") from exc


def _approve_rollback(
    manifest: Any,
    export: dict[str, Any],
    old_log: Path,
    known: list[Any],
    request_path: Path,
    approvals: list[tuple[str, Any]],
    origin: str,
    now: int,
) -> _Override:
    """Decide whether an approved rollback may go ahead (raises if not); writes the request when no
    approval was given yet."""
    from weightvault.auditlog.log import LogReader
    from weightvault.broker.backup import (
        KnownCheckpoint,
        approval_policy_of,
        changes_after,
        check_override,
        restore_request,
    )
    from weightvault.custody.approvals import ApprovalRequest
    from weightvault.errors import RollbackError
    from weightvault.files import atomic_file

    with LogReader.open(old_log, origin) as old:
        head = KnownCheckpoint(old.size, old.root_at(old.size), "the old log")
        if old.size < manifest.log_size or old.root_at(manifest.log_size) != manifest.log_root:
            raise RollbackError("the old log does not extend the backup's: nothing can approve another history")
        for k in known:
            if k.size > old.size or old.root_at(k.size) != k.root:
                raise RollbackError(
                    f"{k.source} has seen a log head the old log does not hold: what followed is unknown"
                )
        events = changes_after(old, manifest.log_size)
    policy = approval_policy_of(export)
    if policy is None:
        raise RollbackError("the backup has no approval policy: nobody can approve rolling the log back")
    if not approvals:
        if not request_path.exists():
            request = restore_request(manifest, head, policy.version, now)
            with atomic_file(request_path, mode=0o644) as out:
                out.write((json.dumps(request.to_json(), sort_keys=True, indent=1) + "\n").encode())
        raise RollbackError(
            f"the backup is behind the old log ({manifest.log_size} < {head.size} entries, {len(events)} state "
            f"changes after it); to restore it anyway, approvers sign {request_path} with 'weightvault approval "
            "sign-file', then run this again with --approval FILE for each"
        )
    try:
        request = ApprovalRequest.from_json(
            parse_json_object(request_path.read_bytes(), "approval request", ConfigError)
        )
    except (OSError, ValueError, ConfigError) as exc:
        raise ConfigError(f"{request_path}: not an approval request") from exc
    signed = [a for digest, a in approvals if digest == request.digest]
    approvers = check_override(request, manifest, head, policy, approvals=signed, now=now)
    return _Override(request.id, approvers, head.size, len(events), events)


def _restored_config(text: str, database_url: str) -> str:
    """The backed-up broker.toml with the restore's database, and every key file in keys/ (where the
    restore put them, under the names they had); a root key under custody stays under custody."""
    import tomllib

    try:
        keys = tomllib.loads(text).get("keys", {})
        key_names = {k: Path(v).name for k, v in keys.items() if isinstance(v, str)}
    except ValueError as exc:  # TOMLDecodeError, or an integer of too many digits
        raise ConfigError(f"the backup's broker.toml does not parse: {exc}") from exc
    out, section = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped.strip("[]").strip()
        key = stripped.split("=", 1)[0].strip() if "=" in stripped and not stripped.startswith("#") else ""
        if section == "storage" and key == "url":
            out.append(f"url = {json.dumps(database_url)}")
        elif section == "keys" and key == "root":  # under custody it stays there
            out.append('root = "custody"' if keys.get("root") == "custody" else 'root = "keys/root.key"')
        elif section == "keys" and key in _BACKED_UP_KEYS:
            out.append(f"{key} = {json.dumps('keys/' + key_names[key])}")
        else:
            out.append(line)
    return "\n".join(out) + "\n"
