"""``weightvault broker``, ``admin``, ``publish`` and ``load``: run the key broker and use it."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import click

from weightvault.broker.config import DEFAULTS
from weightvault.errors import ConfigError

__all__ = ["admin", "broker", "load", "publish"]

BROKER_ENV: Final = "WEIGHTVAULT_BROKER"
TOKEN_ENV: Final = "WEIGHTVAULT_TOKEN"  # noqa: S105 - the name of a variable, not a secret

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
url = "{d.storage_url}"
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


def _client_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--ca", type=click.Path(path_type=Path), help="CA bundle for a TLS broker.")(func)
    func = click.option("--token", help=f"API token, or @FILE (default ${TOKEN_ENV}).")(func)
    return click.option("--broker", "url", help=f"Broker URL (default ${BROKER_ENV}).")(func)


def _read_token(value: str | None) -> str:
    value = value or os.environ.get(TOKEN_ENV)
    if not value:
        raise ConfigError(f"no API token: pass --token or set {TOKEN_ENV}")
    if value.startswith("@"):
        from weightvault.sealing.keyfiles import read_private_file

        return read_private_file(Path(value[1:]), "token").decode("utf-8", "replace").strip()
    return value


def make_client(url: str | None, token: str | None, ca: Path | None) -> Any:
    from weightvault.client.broker import BrokerClient

    url = url or os.environ.get(BROKER_ENV)
    if not url:
        raise ConfigError(f"no broker URL: pass --broker or set {BROKER_ENV}")
    return BrokerClient(url, _read_token(token), verify=str(ca) if ca else True)


def make_anonymous_client(url: str | None, ca: Path | None) -> Any:
    """A client without an API token (custodians: their signatures authenticate them)."""
    from weightvault.client.broker import BrokerClient

    url = url or os.environ.get(BROKER_ENV)
    if not url:
        raise ConfigError(f"no broker URL: pass --broker or set {BROKER_ENV}")
    return BrokerClient(url, None, verify=str(ca) if ca else True)


_approval_option = click.option(
    "--approval", help='An approved request id for an operation the approval policy covers, or "new" to open one.'
)


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
def broker_init(
    directory: Path,
    broker_id: str,
    port: int,
    insecure_sample: bool,
    tpm_roots: tuple[Path, ...],
    tpm_intermediates: tuple[Path, ...],
    custodians: tuple[Path, ...],
    threshold: int | None,
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
    from weightvault.format.recipients import HPKEIdentity
    from weightvault.sealing.atomic import atomic_file
    from weightvault.sealing.keyfiles import write_key_file, write_secret_file
    from weightvault.server.broker_main import load_broker

    if (directory / "broker.toml").exists():
        raise ConfigError(f"{directory} already holds a broker")
    if bool(custodians) != (threshold is not None):
        raise ConfigError("--custodian and --threshold go together")
    from weightvault.cli.custody import load_person_public

    people = [load_person_public(p) for p in custodians]
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
            from weightvault.cli.custody import share_file_bytes

            for c in share_set.custodians:
                sealed = runtime.broker.custody.delivery(share_set.id, c.id)
                with atomic_file(share_files / f"{c.id}.share", mode=0o600) as out:
                    out.write(share_file_bytes(share_set.id, c.id, sealed))
    finally:
        runtime.close()
    with atomic_file(directory / "operator.token", mode=0o600) as out:
        out.write((token + "\n").encode())
    click.echo(f"broker initialised in {directory}")
    click.echo(f"  operator API token: {directory / 'operator.token'} (mode 0600)")
    click.echo(f"  audit log key:      {log_signer.verifier.vkey()}")
    if share_files is not None:
        click.echo(f"  root key: {threshold} of {len(people)} custodians; their encrypted shares are in {share_files}")
        click.echo("  the broker starts sealed: custodians unseal it with 'weightvault custody submit'")
    if insecure_sample:
        click.echo("  WARNING: insecure-sample is enabled; policies that list it accept evidence that proves nothing")


@broker.command("serve")
@click.option("--config", "config_path", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--host", help="Override the configured host.")
@click.option("--port", type=int, help="Override the configured port.")
def broker_serve(config_path: Path, host: str | None, port: int | None) -> None:
    """Serve the broker API (uvicorn, one process: SQLite has one writer)."""
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


@click.group()
def admin() -> None:
    """Manage tenants, principals, devices, policies and reference values of a broker."""


@admin.command("tenant")
@click.argument("action", type=click.Choice(["create", "list"]))
@click.argument("tenant", required=False)
@_client_options
def admin_tenant(action: str, tenant: str | None, url: str | None, token: str | None, ca: Path | None) -> None:
    """Create or list tenants (operators)."""
    with make_client(url, token, ca) as client:
        if action == "create":
            if not tenant:
                raise ConfigError("give the tenant id")
            client.create_tenant(tenant)
            click.echo(f"created tenant {tenant}")
        else:
            for t in client.request("GET", "/v1/tenants")["tenants"]:
                click.echo(t)


@admin.command("principal")
@click.argument("principal_id")
@click.option(
    "--role",
    type=click.Choice(["operator", "tenant-admin", "publisher", "auditor", "workload", "approver"]),
    help="Create the principal with this role.",
)
@click.option("--tenant", help="The principal's tenant (all roles but operator and approver).")
@click.option("--out", type=click.Path(path_type=Path), help="Write the API token here (mode 0600) instead of stdout.")
@click.option("--disable", is_flag=True, help="Disable the principal instead: its API token stops working at once.")
@_client_options
def admin_principal(
    principal_id: str,
    role: str | None,
    tenant: str | None,
    out: Path | None,
    disable: bool,
    url: str | None,
    token: str | None,
    ca: Path | None,
) -> None:
    """Create a principal and print (or save) its API token, shown only once; or --disable one."""
    from weightvault.sealing.atomic import atomic_file

    if disable == (role is not None):
        raise ConfigError("give either --role (create a principal) or --disable")
    with make_client(url, token, ca) as client:
        if disable:
            client.disable_principal(principal_id)
            click.echo(f"disabled {principal_id}: its API token no longer authenticates")
            return
        assert role is not None
        secret = client.create_principal(principal_id, role, tenant)
    if out is None:
        click.echo(secret)
    else:
        with atomic_file(out, mode=0o600) as handle:
            handle.write((secret + "\n").encode())
        click.echo(f"wrote the API token of {principal_id} to {out}")


@admin.command("device")
@click.argument("action", type=click.Choice(["add", "revoke", "activate", "bind", "list"]))
@click.argument("device_id", required=False)
@click.option(
    "--kind",
    type=click.Choice(["token", "insecure-sample"]),
    default="token",
    show_default=True,
    help="Device kind (add): token for devices an attestation-token issuer names; TPM devices use device enroll.",
)
@click.option("--tenant", "tenants", multiple=True, help="Tenants the device serves (add, bind). Repeatable.")
@_approval_option
@_client_options
def admin_device(
    action: str,
    device_id: str | None,
    kind: str,
    tenants: tuple[str, ...],
    approval: str | None,
    url: str | None,
    token: str | None,
    ca: Path | None,
) -> None:
    """Add, revoke, re-activate, bind or list devices (operators). TPM devices enrol with 'device enroll'."""
    with make_client(url, token, ca) as client:
        if action == "list":
            for d in client.request("GET", "/v1/devices")["devices"]:
                click.echo(f"{d['id']}  {d['kind']}  {d['status']}  {','.join(d['tenants'])}")
            return
        if not device_id:
            raise ConfigError("give the device id")
        if action == "add":
            client.add_device(device_id, kind, tenants, approval=approval)
        elif action == "bind":
            client.device_action(device_id, "tenants", {"tenants": list(tenants)})
        else:
            client.device_action(device_id, action)
        click.echo(f"device {device_id}: {action} done")


@admin.command("policy")
@click.argument("action", type=click.Choice(["put", "list"]))
@click.argument("tenant")
@click.argument("name", required=False)
@click.argument("document", type=click.Path(path_type=Path, exists=True), required=False)
@_approval_option
@_client_options
def admin_policy(
    action: str,
    tenant: str,
    name: str | None,
    document: Path | None,
    approval: str | None,
    url: str | None,
    token: str | None,
    ca: Path | None,
) -> None:
    """Store a new version of a release policy from a JSON file, or list a tenant's policies."""
    with make_client(url, token, ca) as client:
        if action == "list":
            for p in client.request("GET", f"/v1/tenants/{tenant}/policies")["policies"]:
                flag = " immutable" if p["immutable"] else ""
                click.echo(f"{p['name']} v{p['version']} {p['digest']}{flag}")
            return
        if not name or document is None:
            raise ConfigError("give the policy name and a JSON document")
        try:
            doc = json.loads(document.read_text())
        except ValueError as exc:
            raise ConfigError(f"{document}: not JSON ({exc})") from exc
        version = client.put_policy(tenant, name, doc, approval)
        click.echo(f"policy {tenant}/{name} is now version {version}")


@admin.command("refset")
@click.argument("tenant")
@click.argument("name")
@click.argument("values", nargs=-1, required=True)
@_client_options
def admin_refset(
    tenant: str, name: str, values: tuple[str, ...], url: str | None, token: str | None, ca: Path | None
) -> None:
    """Replace a tenant's named set of approved values (for example PCR digests)."""
    with make_client(url, token, ca) as client:
        client.put_refset(tenant, name, list(values))
    click.echo(f"reference set {tenant}/{name} holds {len(set(values))} value(s)")


@admin.command("refset-record")
@click.argument("tenant")
@click.argument("name")
@click.option("--tcti", required=True, help="TPM of an approved machine, e.g. swtpm:host=127.0.0.1,port=2321.")
@click.option(
    "--pcr", "pcrs", multiple=True, type=click.IntRange(0, 23), required=True, help="PCR to record. Repeatable."
)
@click.option("--append", is_flag=True, help="Add to the set's current values instead of replacing them.")
@_client_options
def admin_refset_record(
    tenant: str,
    name: str,
    tcti: str,
    pcrs: tuple[int, ...],
    append: bool,
    url: str | None,
    token: str | None,
    ca: Path | None,
) -> None:
    """Record the current SHA-256 PCR values of an approved machine into a reference set."""
    from weightvault.attestation.tpm.attester import TPMAttester

    with TPMAttester.open(tcti) as tpm:
        values = sorted({v.hex() for v in tpm.read_pcrs(pcrs).values()})
    with make_client(url, token, ca) as client:
        if append:
            for policy_set in client.request("GET", f"/v1/tenants/{tenant}/refsets").get("refsets", []):
                if policy_set["name"] == name:
                    values = sorted(set(values) | set(policy_set["items"]))
        client.put_refset(tenant, name, values)
    click.echo(f"reference set {tenant}/{name}: recorded PCRs {list(pcrs)} ({len(values)} value(s))")


@admin.command("rotate")
@click.argument("what", type=click.Choice(["kek", "token-key"]))
@click.option("--tenant", help="The tenant whose KEK rotates (kek).")
@click.option("--rewrap/--no-rewrap", default=True, show_default=True, help="Move the tenant's models to the new KEK.")
@_approval_option
@_client_options
def admin_rotate(
    what: str,
    tenant: str | None,
    rewrap: bool,
    approval: str | None,
    url: str | None,
    token: str | None,
    ca: Path | None,
) -> None:
    """Rotate a tenant's key-encryption key (and rewrap its models), or the result-token signing key."""
    with make_client(url, token, ca) as client:
        if what == "token-key":
            click.echo(f"token signing key is now {client.rotate_token_key(approval)}")
            return
        if not tenant:
            raise ConfigError("kek rotation needs --tenant")
        version = client.rotate_kek(tenant, approval)
        moved = client.rewrap(tenant) if rewrap else []
    click.echo(f"{tenant}: KEK v{version}; {len(moved)} model(s) rewrapped")


@admin.command("retire-kek")
@click.argument("tenant")
@click.argument("version", type=int)
@_client_options
def admin_retire_kek(tenant: str, version: int, url: str | None, token: str | None, ca: Path | None) -> None:
    """Refuse further use of an old KEK version (every model must have been rewrapped)."""
    with make_client(url, token, ca) as client:
        client.retire_kek(tenant, version)
    click.echo(f"{tenant}: KEK v{version} retired")


@admin.command("export")
@click.argument("resource")
@click.option(
    "--recipient",
    "identity_path",
    type=click.Path(path_type=Path, exists=True),
    required=True,
    help="HPKE private key file the exported key is sealed to (kept by the escrow holder).",
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Write the file key here (mode 0600).")
@_approval_option
@_client_options
def admin_export(
    resource: str,
    identity_path: Path,
    out: Path,
    approval: str | None,
    url: str | None,
    token: str | None,
    ca: Path | None,
) -> None:
    """Export a model's file key (escrow, migration): always needs an approved key.export request."""
    from weightvault.format.recipients import HPKEIdentity
    from weightvault.sealing.keyfiles import read_key_file, write_key_file

    tenant, sep, rest = resource.partition("/models/")
    name, at, version = rest.partition("@")
    if not sep or not at:
        raise ConfigError("RESOURCE is <tenant>/models/<name>@<version>")
    recipient = read_key_file(identity_path)
    if not isinstance(recipient, HPKEIdentity):
        raise ConfigError(f"{identity_path} is not an HPKE private key")
    with make_client(url, token, ca) as client:
        file_key = client.export_key(tenant, name, version, recipient, approval)
    try:
        write_key_file(out, file_key)
    finally:
        file_key.wipe()
    click.echo(f"file key of {resource} written to {out}")


@admin.command("audit")
@click.argument("tenant")
@click.option("--since", help="ISO 8601 time (inclusive).")
@click.option("--until", help="ISO 8601 time (exclusive).")
@_client_options
def admin_audit(
    tenant: str, since: str | None, until: str | None, url: str | None, token: str | None, ca: Path | None
) -> None:
    """Print a tenant's audit events (auditors, tenant admins, operators)."""
    from weightvault.cli.audit import _ms

    with make_client(url, token, ca) as client:
        for event in client.audit_events(tenant, _ms(since), _ms(until)):
            click.echo(json.dumps(event, sort_keys=True))


@click.command()
@click.argument("src", type=click.Path(path_type=Path, exists=True))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--tenant", required=True)
@click.option("--name", required=True, help="Model name.")
@click.option("--version", "model_version", required=True, help="Model version.")
@click.option("--policy", required=True, help="Name of the tenant's release policy for this model.")
@click.option(
    "-r", "--recipient", "recipients", multiple=True, type=click.Path(path_type=Path), help="Extra recipient key file."
)
@click.option(
    "--suite", type=click.Choice(["aes-256-gcm", "chacha20-poly1305"]), default="aes-256-gcm", show_default=True
)
@click.option("--sealed-metadata", is_flag=True, help="Encrypt the tensor table too.")
@click.option("--tag", "tags", multiple=True, help="key=value tag (policies see model.tags.<key>). Repeatable.")
@click.option("--force", is_flag=True, help="Replace DST.")
@_client_options
def publish(
    src: Path,
    dst: Path,
    tenant: str,
    name: str,
    model_version: str,
    policy: str,
    recipients: tuple[Path, ...],
    suite: str,
    sealed_metadata: bool,
    tags: tuple[str, ...],
    force: bool,
    url: str | None,
    token: str | None,
    ca: Path | None,
) -> None:
    """Seal SRC into DST and register its key with the broker in one step."""
    from weightvault.cli.main import _recipients
    from weightvault.client.broker import BrokerRecipient
    from weightvault.crypto.aead import AEADSuite
    from weightvault.format.keys import FileKey
    from weightvault.sealing import SealOptions, seal_model_dir, seal_safetensors

    parsed_tags = dict(t.split("=", 1) for t in tags if "=" in t)
    with make_client(url, token, ca) as client:
        resource = f"{tenant}/models/{name}@{model_version}"
        wrapped = [BrokerRecipient(client.url, resource), *_recipients(recipients, False)]
        options = SealOptions(AEADSuite.from_label(suite), sealed_metadata=sealed_metadata)
        file_key = FileKey.generate()
        try:
            if src.is_dir():
                result = seal_model_dir(
                    src, dst, file_key=file_key, recipients=wrapped, options=options, overwrite=force
                )
                files = [
                    {"file_id": f.file_id or "", "header_mac": f.header_mac or "", "path": f.path}
                    for f in result.manifest.sealed()
                ]
            else:
                one = seal_safetensors(
                    src, dst, file_key=file_key, recipients=wrapped, options=options, overwrite=force
                )
                files = [{"file_id": one.file_id.hex(), "header_mac": one.header_mac.hex(), "path": dst.name}]
            registered = client.register_model(
                tenant, name, model_version, policy=policy, file_key=file_key, files=files, tags=parsed_tags
            )
        finally:
            file_key.wipe()
    click.echo(f"published {registered}: sealed into {dst}, key held by {client.url}")


@click.command()
@click.argument("src", type=click.Path(path_type=Path, exists=True))
@click.option("--attester", type=click.Choice(["sample", "tpm"]), default="sample", show_default=True)
@click.option("--device-id", help="The enrolled device this workload runs on.")
@click.option("--tcti", help="TPM TCTI string (with --attester tpm), e.g. swtpm:host=127.0.0.1,port=2321.")
@click.option(
    "--event-log",
    "event_logs",
    multiple=True,
    type=click.Path(path_type=Path),
    help="TCG event log to send with the quote (repeatable; with --attester tpm), e.g. the firmware's "
    "/sys/kernel/security/tpm0/binary_bios_measurements or a log kept by 'device extend --event-log'.",
)
@click.option("--kem", type=click.Choice(["mlkem768-x25519", "x25519"]), default="mlkem768-x25519", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
@_approval_option
@_client_options
def load(
    src: Path,
    attester: str,
    device_id: str | None,
    tcti: str | None,
    event_logs: tuple[Path, ...],
    kem: str,
    as_json: bool,
    approval: str | None,
    url: str | None,
    token: str | None,
    ca: Path | None,
) -> None:
    """Attest, obtain the key from the broker, and load SRC (a sealed file or model directory) into memory."""
    from weightvault.client.broker import BrokerIdentity, SampleAttester
    from weightvault.crypto.keywrap import HPKEKem
    from weightvault.loaders import numpy as wv_numpy

    with make_client(url, token, ca) as client:
        chosen: Any
        if attester == "tpm":
            from weightvault.attestation.tpm.attester import TPMAttester

            if not tcti or not device_id:
                raise ConfigError("--attester tpm needs --tcti and --device-id")
            chosen = TPMAttester.open(tcti, event_logs)
        else:
            if event_logs:
                raise ConfigError("--event-log needs --attester tpm")
            chosen = SampleAttester(device_id=device_id)
        identity = BrokerIdentity(client, chosen, kem=HPKEKem(kem), device_id=device_id, approval=approval)
        t0 = time.perf_counter()
        try:
            if src.is_dir():
                from weightvault.sealing.model_dir import SealedModel

                model = SealedModel.open(src, [identity])
                count = nbytes = 0
                for entry in model.weight_entries():
                    with model.open_sealed(entry) as opened:
                        arrays = wv_numpy.load_opened(opened)
                    count += len(arrays)
                    nbytes += sum(a.nbytes for a in arrays.values())
                    del arrays
            else:
                arrays = wv_numpy.load_file(src, [identity])
                count, nbytes = len(arrays), sum(a.nbytes for a in arrays.values())
                del arrays
        finally:
            identity.wipe()
            close = getattr(chosen, "close", None)
            if close is not None:
                close()
        seconds = time.perf_counter() - t0
    report = {"path": str(src), "tensors": count, "bytes": nbytes, "seconds": round(seconds, 3), "attester": attester}
    if as_json:
        click.echo(json.dumps(report, sort_keys=True))
    else:
        click.echo(
            f"loaded {count} tensors ({nbytes / 1e6:.1f} MB) from {src} in {seconds:.2f} s; "
            f"key released by {client.url}"
        )
    sys.stdout.flush()


@click.group()
def device() -> None:
    """Enrol and inspect TPM 2.0 devices."""


_tcti_option = click.option(
    "--tcti", required=True, help="TPM TCTI: swtpm:host=127.0.0.1,port=2321 or device:/dev/tpmrm0."
)


@device.command("enroll")
@_tcti_option
@click.option("--id", "device_id", required=True, help="The device id to register.")
@click.option("--tenant", "tenants", multiple=True, required=True, help="Tenant the device serves. Repeatable.")
@_approval_option
@_client_options
def device_enroll(
    tcti: str,
    device_id: str,
    tenants: tuple[str, ...],
    approval: str | None,
    url: str | None,
    token: str | None,
    ca: Path | None,
) -> None:
    """Enrol this machine's TPM: EK certificate chain, AK attributes, then credential activation (operators)."""
    from weightvault.attestation.tpm.attester import TPMAttester

    with TPMAttester.open(tcti) as tpm, make_client(url, token, ca) as client:
        t0 = time.perf_counter()
        client.enrol_tpm_device(tpm, device_id, tenants, approval)
    click.echo(f"device {device_id} enrolled and activated in {time.perf_counter() - t0:.2f} s")


@device.command("revoke")
@click.argument("device_id")
@_client_options
def device_revoke(device_id: str, url: str | None, token: str | None, ca: Path | None) -> None:
    """Revoke a device; its next release is refused even with a live token (operators)."""
    with make_client(url, token, ca) as client:
        client.device_action(device_id, "revoke")
    click.echo(f"device {device_id} revoked")


@device.command("pcrs")
@_tcti_option
@click.option("--pcr", "pcrs", multiple=True, type=click.IntRange(0, 23), help="PCRs to read (default 0-7 and 23).")
@click.option("--json", "as_json", is_flag=True)
def device_pcrs(tcti: str, pcrs: tuple[int, ...], as_json: bool) -> None:
    """Print the TPM's SHA-256 PCR values."""
    from weightvault.attestation.tpm.attester import TPMAttester

    with TPMAttester.open(tcti) as tpm:
        values = tpm.read_pcrs(pcrs or (0, 1, 2, 3, 4, 5, 6, 7, 23))
    if as_json:
        click.echo(json.dumps({str(k): v.hex() for k, v in values.items()}, sort_keys=True))
    else:
        for index, value in values.items():
            click.echo(f"sha256:{index:<2} {value.hex()}")


@device.command("extend")
@_tcti_option
@click.option("--pcr", type=click.IntRange(0, 23), default=23, show_default=True)
@click.option("--digest", help="SHA-256 digest (hex) to extend.")
@click.option("--file", "measured", type=click.Path(path_type=Path, exists=True), help="Measure this file (SHA-256).")
@click.option(
    "--event-log",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also record the measurement in this TCG event log (created if missing), for 'load --event-log'.",
)
@click.option("--description", help="What was measured, recorded in the event log (default: the file name).")
def device_extend(
    tcti: str,
    pcr: int,
    digest: str | None,
    measured: Path | None,
    event_log: Path | None,
    description: str | None,
) -> None:
    """Extend a PCR with a workload measurement (for example PCR 23 with the serving image digest)."""
    import hashlib

    from weightvault.attestation.tpm.attester import TPMAttester, record_measurement

    if (digest is None) == (measured is None):
        raise ConfigError("give exactly one of --digest or --file")
    if measured is not None:
        with measured.open("rb") as handle:
            raw = hashlib.file_digest(handle, "sha256").digest()
    else:
        try:
            raw = bytes.fromhex(digest or "")
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise ConfigError("--digest must be 64 hex digits (a SHA-256 digest)")
    with TPMAttester.open(tcti) as tpm:
        if event_log is not None:
            label = description or (measured.name if measured is not None else f"digest {raw.hex()}")
            value = record_measurement(tpm, event_log, pcr, raw, f"weightvault: {label}")
        else:
            tpm.extend(pcr, raw)
            value = tpm.read_pcrs([pcr])[pcr]
    click.echo(f"sha256:{pcr} is now {value.hex()}" + (f" (recorded in {event_log})" if event_log else ""))
