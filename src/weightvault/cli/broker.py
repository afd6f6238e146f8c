"""``weightvault broker``: create a broker's configuration and keys, and serve it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

import click

from weightvault.broker.config import DEFAULTS, check_storage_url
from weightvault.cli.custody import load_person_public, share_file_bytes
from weightvault.errors import ConfigError

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

# [tls]
# cert = "tls/cert.pem"
# key = "tls/key.pem"
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
    click.echo(f"broker initialised in {directory}")
    click.echo(f"  operator API token: {directory / 'operator.token'} (mode 0600)")
    click.echo(f"  audit log key:      {log_signer.verifier.vkey()}")
    if share_files is not None:
        click.echo(f"  root key: {threshold} of {len(people)} custodians; their encrypted shares are in {share_files}")
        click.echo("  the broker starts sealed: custodians unseal it with 'weightvault custody submit'")
    if insecure_sample:
        click.echo("  WARNING: insecure-sample is enabled; policies that list it accept evidence that proves nothing")


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
def broker_serve(config_path: Path, host: str | None, port: int | None) -> None:
    """Serve the broker API (uvicorn, one process per broker; several over one PostgreSQL database)."""
    import uvicorn

    from weightvault.server.broker_main import load_broker

    runtime = load_broker(config_path)
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
