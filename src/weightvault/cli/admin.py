"""``weightvault admin``: tenants, principals, devices, policies, reference values, keys, audit."""

from __future__ import annotations

import json
from pathlib import Path

import click

from weightvault.cli.options import (
    approval_option,
    client_options,
    json_option,
    make_client,
    parse_ms,
    parse_seconds,
    report,
)
from weightvault.encoding import parse_json_object
from weightvault.errors import ConfigError
from weightvault.files import read_bounded_file

__all__ = ["admin"]


@click.group()
def admin() -> None:
    """Manage tenants, principals, devices, policies and reference values of a broker."""


@admin.command("tenant")
@click.argument("action", type=click.Choice(["create", "list"]))
@click.argument("tenant", required=False)
@json_option
@client_options
def admin_tenant(
    action: str, tenant: str | None, as_json: bool, url: str | None, token: str | None, ca: Path | None
) -> None:
    """Create or list tenants (operators)."""
    with make_client(url, token, ca) as client:
        if action == "create":
            if not tenant:
                raise ConfigError("give the tenant id")
            client.create_tenant(tenant)
            report(as_json, f"created tenant {tenant}", {"tenant": tenant, "created": True})
        else:
            tenants = list(client.request("GET", "/v1/tenants")["tenants"])
            report(as_json, tenants, {"tenants": tenants})


@admin.command("principal")
@click.argument("principal_id")
@click.option(
    "--role",
    type=click.Choice(["operator", "tenant-admin", "publisher", "auditor", "workload", "approver", "sentinel"]),
    help="Create the principal with this role.",
)
@click.option("--tenant", help="The principal's tenant (all roles but operator, approver and sentinel).")
@click.option("--out", type=click.Path(path_type=Path), help="Write the API token here (mode 0600) instead of stdout.")
@click.option("--force", is_flag=True, help="Replace the --out file (a token file rotated in place).")
@click.option("--disable", is_flag=True, help="Disable the principal instead: its API token stops working at once.")
@click.option(
    "--rotate",
    is_flag=True,
    help="Give the principal a new API token instead (shown once): the old one stops working at once.",
)
@click.option(
    "--expires-in",
    metavar="DURATION",
    help="With --role or --rotate: the token stops working after this long (90m, 24h, 30d); at most the "
    "role's [principals] token_max_age_days, which is the default. Operator tokens never expire.",
)
@json_option
@client_options
def admin_principal(
    principal_id: str,
    role: str | None,
    tenant: str | None,
    out: Path | None,
    force: bool,
    disable: bool,
    rotate: bool,
    expires_in: str | None,
    as_json: bool,
    url: str | None,
    token: str | None,
    ca: Path | None,
) -> None:
    """Create a principal and print (or save) its API token, shown only once; --rotate its token
    (anyone may rotate their own); or --disable it."""
    from weightvault.files import atomic_file

    if (role is not None) + disable + rotate != 1:
        raise ConfigError("give one of --role (create a principal), --rotate or --disable")
    lifetime = parse_seconds(expires_in)
    if lifetime is not None and disable:
        raise ConfigError("--expires-in goes with --role or --rotate")
    # Checked before the broker is asked: a token it issued but this could not write would be lost.
    if out is not None and out.exists() and not force:
        raise ConfigError(f"{out} already exists (pass --force to replace it)")
    with make_client(url, token, ca) as client:
        if disable:
            client.disable_principal(principal_id)
            text = f"disabled {principal_id}: its API token no longer authenticates"
            report(as_json, text, {"principal": principal_id, "disabled": True})
            return
        if rotate:
            secret = client.rotate_principal_token(principal_id, expires_in=lifetime)
            doc: dict[str, object] = {"principal": principal_id, "rotated": True}
        else:
            assert role is not None
            secret = client.create_principal(principal_id, role, tenant, expires_in=lifetime)
            doc = {"principal": principal_id, "role": role, "tenant": tenant}
    if out is None:  # the token is shown this once, on stdout, as asked
        report(as_json, secret, doc | {"token": secret})
    else:
        with atomic_file(out, overwrite=force, mode=0o600) as handle:
            handle.write((secret + "\n").encode())
        report(as_json, f"wrote the API token of {principal_id} to {out}", doc | {"token_file": out})


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
@approval_option
@json_option
@client_options
def admin_device(
    action: str,
    device_id: str | None,
    kind: str,
    tenants: tuple[str, ...],
    approval: str | None,
    as_json: bool,
    url: str | None,
    token: str | None,
    ca: Path | None,
) -> None:
    """Add, revoke, re-activate, bind or list devices (operators). TPM devices enrol with 'device enroll'."""
    with make_client(url, token, ca) as client:
        if action == "list":
            devices = client.request("GET", "/v1/devices")["devices"]
            lines = [f"{d['id']}  {d['kind']}  {d['status']}  {','.join(d['tenants'])}" for d in devices]
            report(as_json, lines, {"devices": devices})
            return
        if not device_id:
            raise ConfigError("give the device id")
        if action == "add":
            client.add_device(device_id, kind, tenants, approval=approval)
        elif action == "bind":
            client.device_action(device_id, "tenants", {"tenants": list(tenants)})
        else:
            client.device_action(device_id, action)
        report(as_json, f"device {device_id}: {action} done", {"device": device_id, "action": action, "done": True})


@admin.command("policy")
@click.argument("action", type=click.Choice(["put", "list"]))
@click.argument("tenant")
@click.argument("name", required=False)
@click.argument("document", type=click.Path(path_type=Path, exists=True), required=False)
@approval_option
@json_option
@client_options
def admin_policy(
    action: str,
    tenant: str,
    name: str | None,
    document: Path | None,
    approval: str | None,
    as_json: bool,
    url: str | None,
    token: str | None,
    ca: Path | None,
) -> None:
    """Store a new version of a release policy from a JSON file, or list a tenant's policies."""
    with make_client(url, token, ca) as client:
        if action == "list":
            policies = client.request("GET", f"/v1/tenants/{tenant}/policies")["policies"]
            lines = [
                f"{p['name']} v{p['version']} {p['digest']}{' immutable' if p['immutable'] else ''}" for p in policies
            ]
            report(as_json, lines, {"tenant": tenant, "policies": policies})
            return
        if not name or document is None:
            raise ConfigError("give the policy name and a JSON document")
        doc = parse_json_object(read_bounded_file(document, "policy", max_bytes=1 << 20), str(document), ConfigError)
        version = client.put_policy(tenant, name, doc, approval)
        text = f"policy {tenant}/{name} is now version {version}"
        report(as_json, text, {"tenant": tenant, "policy": name, "version": version})


@admin.command("refset")
@click.argument("tenant")
@click.argument("name")
@click.argument("values", nargs=-1, required=True)
@json_option
@client_options
def admin_refset(
    tenant: str,
    name: str,
    values: tuple[str, ...],
    as_json: bool,
    url: str | None,
    token: str | None,
    ca: Path | None,
) -> None:
    """Replace a tenant's named set of approved values (for example PCR digests)."""
    with make_client(url, token, ca) as client:
        client.put_refset(tenant, name, list(values))
    text = f"reference set {tenant}/{name} holds {len(set(values))} value(s)"
    report(as_json, text, {"tenant": tenant, "refset": name, "values": sorted(set(values))})


@admin.command("refset-record")
@click.argument("tenant")
@click.argument("name")
@click.option("--tcti", required=True, help="TPM of an approved machine, e.g. swtpm:host=127.0.0.1,port=2321.")
@click.option(
    "--pcr", "pcrs", multiple=True, type=click.IntRange(0, 23), required=True, help="PCR to record. Repeatable."
)
@click.option("--append", is_flag=True, help="Add to the set's current values instead of replacing them.")
@json_option
@client_options
def admin_refset_record(
    tenant: str,
    name: str,
    tcti: str,
    pcrs: tuple[int, ...],
    append: bool,
    as_json: bool,
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
    text = f"reference set {tenant}/{name}: recorded PCRs {list(pcrs)} ({len(values)} value(s))"
    report(as_json, text, {"tenant": tenant, "refset": name, "pcrs": list(pcrs), "values": values})


@admin.command("rotate")
@click.argument("what", type=click.Choice(["kek", "token-key"]))
@click.option("--tenant", help="The tenant whose KEK rotates (kek).")
@click.option("--rewrap/--no-rewrap", default=True, show_default=True, help="Move the tenant's models to the new KEK.")
@approval_option
@json_option
@client_options
def admin_rotate(
    what: str,
    tenant: str | None,
    rewrap: bool,
    approval: str | None,
    as_json: bool,
    url: str | None,
    token: str | None,
    ca: Path | None,
) -> None:
    """Rotate a tenant's key-encryption key (and rewrap its models), or the result-token signing key."""
    with make_client(url, token, ca) as client:
        if what == "token-key":
            key_id = client.rotate_token_key(approval)
            report(as_json, f"token signing key is now {key_id}", {"token_key": key_id})
            return
        if not tenant:
            raise ConfigError("kek rotation needs --tenant")
        version = client.rotate_kek(tenant, approval)
        moved = client.rewrap(tenant) if rewrap else []
    text = f"{tenant}: KEK v{version}; {len(moved)} model(s) rewrapped"
    report(as_json, text, {"tenant": tenant, "kek_version": version, "rewrapped": moved})


@admin.command("retire-kek")
@click.argument("tenant")
@click.argument("version", type=int)
@json_option
@client_options
def admin_retire_kek(
    tenant: str, version: int, as_json: bool, url: str | None, token: str | None, ca: Path | None
) -> None:
    """Refuse further use of an old KEK version (every model must have been rewrapped)."""
    with make_client(url, token, ca) as client:
        client.retire_kek(tenant, version)
    report(as_json, f"{tenant}: KEK v{version} retired", {"tenant": tenant, "kek_version": version, "retired": True})


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
@approval_option
@json_option
@client_options
def admin_export(
    resource: str,
    identity_path: Path,
    out: Path,
    approval: str | None,
    as_json: bool,
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
    report(as_json, f"file key of {resource} written to {out}", {"resource": resource, "key_file": out})


@admin.command("audit")
@click.argument("tenant")
@click.option("--since", help="ISO 8601 time (inclusive).")
@click.option("--until", help="ISO 8601 time (exclusive).")
@client_options
def admin_audit(
    tenant: str, since: str | None, until: str | None, url: str | None, token: str | None, ca: Path | None
) -> None:
    """Print a tenant's audit events (auditors, tenant admins, operators)."""

    with make_client(url, token, ca) as client:
        for event in client.audit_events(tenant, parse_ms(since), parse_ms(until)):
            click.echo(json.dumps(event, sort_keys=True))
