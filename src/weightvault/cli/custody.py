"""``weightvault person``, ``custody`` and ``approval``: keys of people, custody ceremonies, approvals.

Custodians and approvers never need the broker's API token to act: their
signatures are their credentials. Custodians run ``custody submit`` with their
key file and share file; approvers run ``approval sign`` with their key file and
their approver API token (an approval needs both).
"""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path
from typing import Any, Final

import click

from weightvault.cli.options import client_options, json_option, make_anonymous_client, make_client, report
from weightvault.cli.prompts import ask_passphrase
from weightvault.encoding import parse_json_object
from weightvault.errors import ConfigError
from weightvault.files import read_bounded_file, read_private_file, read_text_file

__all__ = ["approval", "custody", "person"]

SHARE_KIND: Final = "weightvault.custody-share"


def load_person_key(path: Path) -> Any:
    """A person key file, asking for its passphrase when it is protected."""
    from weightvault.custody.person import PersonKey

    data = read_private_file(path, "key", max_bytes=64 << 10)
    return PersonKey.from_bytes(
        data, ask_passphrase(confirm=False, label="key passphrase") if PersonKey.is_protected(data) else None
    )


def load_person_public(path: Path) -> Any:
    from weightvault.custody.person import PersonPublic

    try:
        doc = parse_json_object(path.read_bytes(), f"{path}: not a public key file", ConfigError)
    except OSError as exc:
        raise ConfigError(f"{path}: not a public key file ({exc})") from exc
    return PersonPublic.from_json(doc)


def _write(path: Path, data: bytes, mode: int, *, overwrite: bool = False) -> None:
    from weightvault.files import atomic_file

    with atomic_file(path, mode=mode, overwrite=overwrite) as out:
        out.write(data)


def _confirm(text: str, yes: bool, *, err: bool = False) -> None:
    """Show ``text`` (on stderr with ``err``, which --json asks so stdout stays one document) and ask."""
    click.echo(text, err=err)
    if yes:
        return
    if not sys.stdin.isatty():
        raise ConfigError("refusing to sign without confirmation: pass --yes after reading the summary")
    if not click.confirm("sign?", default=False, err=err):
        raise ConfigError("not signed")


# -- person -------------------------------------------------------------------------------------


@click.group()
def person() -> None:
    """Keys of custodians and approvers."""


@person.command("keygen")
@click.argument("person_id")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Private key file (mode 0600).")
@click.option("--passphrase/--no-passphrase", default=True, show_default=True, help="Protect the key file.")
@json_option
def person_keygen(person_id: str, out: Path, passphrase: bool, as_json: bool) -> None:
    """Create a signing and encryption key pair; OUT.pub is the public half to register."""
    from weightvault.custody.person import PersonKey

    key = PersonKey.generate(person_id)
    secret = ask_passphrase(confirm=True, label="key passphrase") if passphrase else None
    _write(out, key.to_bytes(secret), 0o600)
    public = out.with_name(out.name + ".pub")
    _write(public, (json.dumps(key.public.to_json(), indent=1, sort_keys=True) + "\n").encode(), 0o644)
    protected = "passphrase-protected" if passphrase else "NOT passphrase-protected"
    doc = {"person": person_id, "private_key": out, "public_key": public, "passphrase": passphrase}
    report(as_json, f"{person_id}: private key {out} ({protected}), public key {public}", doc)


# -- custody --------------------------------------------------------------------------------------


@click.group()
def custody() -> None:
    """M-of-N custody of the broker's root key: genesis, unseal, verify, rekey, seal."""


def share_file_bytes(set_id: str, custodian: str, sealed: bytes) -> bytes:
    doc = {
        "kind": SHARE_KIND,
        "version": 1,
        "set": set_id,
        "custodian": custodian,
        "sealed": base64.b64encode(sealed).decode(),
    }
    return (json.dumps(doc, sort_keys=True) + "\n").encode()


def _read_share_file(path: Path) -> tuple[str, str, bytes]:
    try:
        doc = parse_json_object(path.read_bytes(), f"{path}: not a weightvault share file", ConfigError)
        if doc.get("kind") != SHARE_KIND or doc.get("version") != 1:
            raise ValueError("not a weightvault share file")
        return str(doc["set"]), str(doc["custodian"]), base64.b64decode(doc["sealed"], validate=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc


@custody.command("genesis")
@click.option("--config", "config_path", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--threshold", type=int, required=True, help="Shares needed to unseal (M).")
@click.option(
    "--custodian",
    "custodians",
    type=click.Path(path_type=Path, exists=True),
    multiple=True,
    required=True,
    help="A custodian's public key file (N of them). Repeatable.",
)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), help="Where to write the share files.")
@json_option
def custody_genesis(
    config_path: Path, threshold: int, custodians: tuple[Path, ...], out: Path | None, as_json: bool
) -> None:
    """Split a stopped broker's root key M-of-N and delete its key file; the broker then starts sealed."""
    import tomllib

    from weightvault.server.broker_main import load_broker

    config_text = read_text_file(config_path, "broker configuration")
    try:
        root_setting = tomllib.loads(config_text)["keys"]["root"]
    except (ValueError, KeyError, TypeError) as exc:  # ValueError: not TOML, or an over-long integer
        raise ConfigError(f"{config_path}: not a broker configuration ({type(exc).__name__}: {exc})") from exc
    if root_setting == "custody":
        raise ConfigError("this broker's root key is already under custody")
    people = [load_person_public(p) for p in custodians]
    runtime = load_broker(config_path)
    try:
        share_set = runtime.broker.custody_genesis("genesis", None, threshold, people)
        deliveries = {c.id: runtime.broker.custody.delivery(share_set.id, c.id) for c in share_set.custodians}
    finally:
        runtime.close()
    target = out or config_path.parent / "custody" / share_set.id
    target.mkdir(parents=True, exist_ok=True)
    for custodian, sealed in deliveries.items():
        _write(target / f"{custodian}.share", share_file_bytes(share_set.id, custodian, sealed), 0o600)
    root_path = Path(root_setting)
    root_path = root_path if root_path.is_absolute() else config_path.parent / root_path
    new_config = config_text.replace(f'root = "{root_setting}"', 'root = "custody"')
    _write(config_path, new_config.encode(), 0o600, overwrite=True)
    size = root_path.stat().st_size
    with root_path.open("r+b") as handle:  # best effort: storage may keep old blocks
        handle.write(bytes(size))
        handle.flush()
        os.fsync(handle.fileno())
    root_path.unlink()
    lines = [
        f"share set {share_set.id}: {threshold} of {len(people)} custodians; key-check value {share_set.kcv}",
        f"  shares (each encrypted to its custodian): {target}/<custodian>.share",
        f"  {root_path} deleted; the broker starts sealed until {threshold} custodians unseal it",
    ]
    doc = {
        "share_set": share_set.id,
        "threshold": threshold,
        "custodians": sorted(deliveries),
        "kcv": share_set.kcv,
        "shares": {c: target / f"{c}.share" for c in sorted(deliveries)},
        "root_key_deleted": root_path,
    }
    report(as_json, lines, doc)


@custody.command("status")
@client_options
def custody_status(url: str | None, token: str | None, ca: Path | None) -> None:
    """Sealed or not, the share sets and open ceremonies (operators)."""
    with make_client(url, token, ca) as client:
        click.echo(json.dumps(client.custody_status(), indent=1, sort_keys=True))


@custody.command("open")
@click.argument("kind", type=click.Choice(["unseal", "verify", "rekey"]))
@click.option("--ttl", type=int, default=900, show_default=True, help="Seconds before the ceremony expires.")
@click.option("--set", "share_set", help="Share set to verify (default: the pending set, else the active one).")
@click.option("--threshold", type=int, help="Rekey: the new M.")
@click.option(
    "--custodian",
    "custodians",
    type=click.Path(path_type=Path, exists=True),
    multiple=True,
    help="Rekey: a new custodian's public key file. Repeatable.",
)
@click.option("--approval", help='An approved custody.rekey request id, or "new" to open one.')
@json_option
@client_options
def custody_open(
    kind: str,
    ttl: int,
    share_set: str | None,
    threshold: int | None,
    custodians: tuple[Path, ...],
    approval: str | None,
    as_json: bool,
    url: str | None,
    token: str | None,
    ca: Path | None,
) -> None:
    """Open a ceremony (operators); prints the id custodians submit to."""
    from weightvault.custody.ceremony import rekey_params

    params: dict[str, Any] = {}
    if kind == "rekey":
        if threshold is None or not custodians:
            raise ConfigError("a rekey needs --threshold and the new --custodian keys")
        params = rekey_params(threshold, [load_person_public(p) for p in custodians])
    with make_client(url, token, ca) as client:
        terms = client.open_ceremony(kind, ttl=ttl, params=params, share_set=share_set, approval=approval)
    lines = [f"ceremony {terms.id}", f"  {kind} of share set {terms.set_id}, expires at {terms.expires_at}"]
    report(
        as_json, lines, {"ceremony": terms.id, "kind": kind, "share_set": terms.set_id, "expires_at": terms.expires_at}
    )


def _describe_terms(terms: Any) -> str:
    lines = [
        f"ceremony {terms.id}",
        f"  kind: {terms.kind}",
        f"  broker: {terms.broker}",
        f"  share set: {terms.set_id}",
        f"  expires at: {terms.expires_at}",
    ]
    if terms.kind == "restore":
        backup = terms.params.get("backup", {})
        lines.append(
            f"  RESTORE the backup of {backup.get('broker')} made at {backup.get('created_at')} "
            f"(log size {backup.get('log_size')}, payload sha256 {backup.get('payload_sha256')})"
        )
    if terms.kind == "rekey":
        from weightvault.custody.ceremony import parse_rekey_params

        new_threshold, people = parse_rekey_params(terms.params)
        lines.append(f"  NEW custody: {new_threshold} of {len(people)}: {', '.join(p.id for p in people)}")
        for p in people:
            lines.append(f"    {p.id}: signing key {p.signing.hex()}")
    return "\n".join(lines)


@custody.command("submit")
@click.argument("ceremony_id")
@click.option("--key", "key_path", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--share", "share_path", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation after showing the terms.")
@json_option
@click.option("--broker", "url", help="Broker URL (default $WEIGHTVAULT_BROKER).")
@click.option("--ca", type=click.Path(path_type=Path), help="CA bundle for a TLS broker.")
def custody_submit(
    ceremony_id: str, key_path: Path, share_path: Path, yes: bool, as_json: bool, url: str | None, ca: Path | None
) -> None:
    """Submit your share to a ceremony, encrypted to it and signed with your key (custodians)."""
    from weightvault.custody.ceremony import CeremonyTerms
    from weightvault.custody.shares import open_delivered

    key = load_person_key(key_path)
    set_id, custodian, sealed = _read_share_file(share_path)
    if custodian != key.id:
        raise ConfigError(f"{share_path} is {custodian}'s share, the key is {key.id}'s")
    share = open_delivered(key, set_id, sealed)
    with make_anonymous_client(url, ca) as client:
        terms = CeremonyTerms.from_json(client.ceremony(ceremony_id))
        if terms.kind == "restore":
            raise ConfigError("a broker never runs restore ceremonies: refusing to send it a share for one")
        if terms.set_id != set_id:
            raise ConfigError(f"the ceremony collects shares of set {terms.set_id}; this share is of set {set_id}")
        _confirm(_describe_terms(terms), yes, err=as_json)
        result = client.submit_share(ceremony_id, key, share)
    if result["status"] == "done":
        text = f"share accepted; ceremony done ({terms.kind} with {', '.join(result['submitted'])})"
    else:
        text = f"share accepted: {len(result['submitted'])} of {result['needed']}; ceremony {result['status']}"
    doc = {"ceremony": terms.id, "kind": terms.kind, "status": result["status"], "submitted": result["submitted"]}
    report(as_json, text, doc | {"needed": result.get("needed")})


@custody.command("submit-file")
@click.argument("request", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--key", "key_path", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--share", "share_path", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True, help="The submission file.")
@click.option(
    "--ceremony",
    "ceremony_id",
    required=True,
    help="The ceremony id the restoring operator announced (at least its first 16 hex digits).",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation after showing the terms.")
@json_option
def custody_submit_file(
    request: Path, key_path: Path, share_path: Path, out: Path, ceremony_id: str, yes: bool, as_json: bool
) -> None:
    """Answer a restore ceremony's request file with your share, encrypted to it and signed (custodians).

    'weightvault broker restore' writes REQUEST when it restores a backup made under custody,
    and shows the ceremony's id: compare it through another channel (read aloud, a call), since
    whoever can write the exchange directory could put another request there, with a key of
    their own. The id covers the ceremony's key, so a request with the id announced can only be
    the restoring process's. Put the file written to --out beside the request.
    """
    from weightvault.custody.ceremony import CeremonyTerms, Submission, prepare_submission
    from weightvault.custody.shares import open_delivered
    from weightvault.errors import CeremonyError
    from weightvault.files import read_bounded_file

    doc = parse_json_object(
        read_bounded_file(request, "ceremony request", max_bytes=64 << 10),
        f"{request}: not a ceremony request",
        CeremonyError,
    )
    terms = CeremonyTerms.from_json(doc)
    announced = ceremony_id.strip().lower()
    if len(announced) < 16 or not terms.id.startswith(announced):
        raise CeremonyError(
            f"{request} is ceremony {terms.id[:16]}, not the one announced ({announced[:16]}): "
            "do not submit to it (give at least 16 hex digits of the id the restore shows)"
        )
    if terms.kind != "restore":
        raise CeremonyError(f"{request}: only restore ceremonies run over files; this is a {terms.kind}")
    key = load_person_key(key_path)
    set_id, custodian, sealed = _read_share_file(share_path)
    if custodian != key.id:
        raise ConfigError(f"{share_path} is {custodian}'s share, the key is {key.id}'s")
    if terms.set_id != set_id:
        raise ConfigError(f"the ceremony collects shares of set {terms.set_id}; this share is of set {set_id}")
    share = open_delivered(key, set_id, sealed)
    _confirm(_describe_terms(terms), yes, err=as_json)
    sealed_share, signature = prepare_submission(key, terms, share)
    _write(out, Submission(terms.id, key.id, sealed_share, signature).to_bytes(), 0o644)
    text = f"submission of {key.id} for ceremony {terms.id[:16]} written to {out}"
    report(as_json, text, {"ceremony": terms.id, "custodian": key.id, "submission": out})


@custody.command("cancel")
@click.argument("ceremony_id")
@click.option("--key", "key_path", type=click.Path(path_type=Path, exists=True), required=True)
@json_option
@click.option("--broker", "url", help="Broker URL (default $WEIGHTVAULT_BROKER).")
@click.option("--ca", type=click.Path(path_type=Path), help="CA bundle for a TLS broker.")
def custody_cancel(ceremony_id: str, key_path: Path, as_json: bool, url: str | None, ca: Path | None) -> None:
    """Cancel a ceremony with your custodian signature."""
    key = load_person_key(key_path)
    with make_anonymous_client(url, ca) as client:
        client.cancel_ceremony(ceremony_id, key)
    text = f"ceremony {ceremony_id} cancelled by {key.id}"
    report(as_json, text, {"ceremony": ceremony_id, "cancelled_by": key.id})


@custody.command("fetch-share")
@click.option("--set", "set_id", required=True)
@click.option("--key", "key_path", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True)
@json_option
@click.option("--broker", "url", help="Broker URL (default $WEIGHTVAULT_BROKER).")
@click.option("--ca", type=click.Path(path_type=Path), help="CA bundle for a TLS broker.")
def custody_fetch(set_id: str, key_path: Path, out: Path, as_json: bool, url: str | None, ca: Path | None) -> None:
    """Fetch your new share after a rekey (encrypted to you; checked before it is written)."""
    from weightvault.custody.shares import open_delivered

    key = load_person_key(key_path)
    with make_anonymous_client(url, ca) as client:
        sealed = client.delivered_share(set_id, key.id)
    open_delivered(key, set_id, sealed)
    _write(out, share_file_bytes(set_id, key.id, sealed), 0o600)
    report(
        as_json,
        f"share of {key.id} in set {set_id} written to {out}",
        {"share_set": set_id, "custodian": key.id, "share": out},
    )


@custody.command("seal")
@json_option
@client_options
def custody_seal(as_json: bool, url: str | None, token: str | None, ca: Path | None) -> None:
    """Seal the broker now: its root key is wiped from memory (any operator; break glass)."""
    with make_client(url, token, ca) as client:
        client.seal()
    report(as_json, "broker sealed", {"sealed": True})


# -- approvals ------------------------------------------------------------------------------------


@click.group()
def approval() -> None:
    """Multi-party approval: the approval policy, requests, and signing them."""


@approval.command("policy")
@click.argument("action", type=click.Choice(["show", "put"]))
@click.argument("document", type=click.Path(path_type=Path, exists=True), required=False)
@click.option("--approval", "approval_id", help='An approved approval.policy.change request, or "new".')
@json_option
@client_options
def approval_policy(
    action: str,
    document: Path | None,
    approval_id: str | None,
    as_json: bool,
    url: str | None,
    token: str | None,
    ca: Path | None,
) -> None:
    """Show the approval policy, or put a new version (after the first, only with approval)."""
    with make_client(url, token, ca) as client:
        if action == "show":
            click.echo(json.dumps(client.request("GET", "/v1/approval-policy"), indent=1, sort_keys=True))
            return
        if document is None:
            raise ConfigError("approval policy put needs a DOCUMENT")
        doc = parse_json_object(
            read_bounded_file(document, "approval policy", max_bytes=1 << 20), str(document), ConfigError
        )
        version = client.put_approval_policy(doc, approval_id)
    report(as_json, f"approval policy is now version {version}", {"version": version})


@approval.command("list")
@click.option("--status", type=click.Choice(["pending", "approved", "executed", "denied", "expired"]))
@json_option
@client_options
def approval_list(status: str | None, as_json: bool, url: str | None, token: str | None, ca: Path | None) -> None:
    """List approval requests."""
    with make_client(url, token, ca) as client:
        docs = list(client.approvals(status))
    lines = [
        f"{d['request']['id']}  {d['status']:<8}  {d['request']['op']:<22} {d['request']['tenant']:<12}"
        f" by {d['request']['requester']}  needs {d['needs']}"
        for d in docs
    ]
    report(as_json, lines, {"requests": docs})


@approval.command("show")
@click.argument("request_id")
@json_option
@client_options
def approval_show(request_id: str, as_json: bool, url: str | None, token: str | None, ca: Path | None) -> None:
    """Show a request: every parameter, its hashes, its status and approvals."""
    with make_client(url, token, ca) as client:
        doc = client.approval(request_id)
    status = f"status: {doc['status']}; needs {doc['needs']}; counted: {', '.join(doc['counted']) or 'none'}"
    report(as_json, [doc["summary"], status], doc)


@approval.command("sign-file")
@click.argument("request_file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--key", "key_path", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True, help="The approval to write.")
@click.option("--deny", is_flag=True, help="Sign a denial instead of an approval.")
@click.option("--ttl", type=int, default=3600, show_default=True, help="Seconds the approval stays valid.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation after showing the summary.")
@json_option
def approval_sign_file(
    request_file: Path, key_path: Path, deny: bool, ttl: int, yes: bool, out: Path, as_json: bool
) -> None:
    """Sign a request given as a file, offline (a broker restore asks this way); shows it first.

    The digest signed is recomputed here from the request's fields.
    """
    import time

    from weightvault.custody.approvals import ApprovalRequest, approval_message
    from weightvault.files import atomic_file

    try:
        request = ApprovalRequest.from_json(
            parse_json_object(request_file.read_bytes(), "approval request", ConfigError)
        )
    except (OSError, ConfigError) as exc:
        raise ConfigError(f"{request_file}: not an approval request") from exc
    key = load_person_key(key_path)
    decision = "deny" if deny else "approve"
    _confirm(request.summary() + f"\nyou sign as {key.id}: {decision.upper()}", yes, err=as_json)
    expires_at = min(int(time.time()) + ttl, request.expires_at)
    signature = key.sign(approval_message(request.digest, decision, expires_at, key.id))
    doc = {
        "request_digest": request.digest,
        "approver": key.id,
        "decision": decision,
        "expires_at": expires_at,
        "signature": base64.b64encode(signature).decode(),
    }
    with atomic_file(out, mode=0o644) as handle:
        handle.write((json.dumps(doc, sort_keys=True) + "\n").encode())
    report(as_json, f"signed ({decision}) as {key.id}: {out}", doc | {"approval_file": out})


@approval.command("sign")
@click.argument("request_id")
@click.option("--key", "key_path", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--deny", is_flag=True, help="Sign a denial instead of an approval.")
@click.option("--ttl", type=int, default=3600, show_default=True, help="Seconds the approval stays valid.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation after showing the summary.")
@json_option
@client_options
def approval_sign(
    request_id: str,
    key_path: Path,
    deny: bool,
    ttl: int,
    yes: bool,
    as_json: bool,
    url: str | None,
    token: str | None,
    ca: Path | None,
) -> None:
    """Check a request's digest locally, show it, and sign your approval (or denial) with your key."""
    key = load_person_key(key_path)
    with make_client(url, token, ca) as client:
        doc = client.approval(request_id)
        _confirm(doc["summary"] + f"\nyou sign as {key.id}: {'DENY' if deny else 'approve'}", yes, err=as_json)
        result = client.sign_approval(request_id, key, deny=deny, ttl=ttl)
    text = f"signed; request is {result['status']} (needs {result['needs']})"
    report(
        as_json, text, {"request": request_id, "approver": key.id, "status": result["status"], "needs": result["needs"]}
    )
