"""``weightvault audit`` and ``weightvault witness``: the tamper-evident log for operators and auditors."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from weightvault.auditlog.bundle import ProofBundle, verify_bundle
from weightvault.auditlog.checkpoint import Checkpoint
from weightvault.auditlog.client import LogVerifier, TrustedState
from weightvault.auditlog.events import decode_event
from weightvault.auditlog.monitor import Monitor
from weightvault.auditlog.note import TYPE_COSIGNATURE, NoteSigner, NoteVerifier
from weightvault.auditlog.tiles import export_tiles, read_export, verify_export, write_tarball
from weightvault.auditlog.witness import Witness
from weightvault.cli.options import http_fetch, json_option, open_reader, parse_ms, read_policy, read_vkey, report
from weightvault.crypto.signing import Ed25519Signer
from weightvault.errors import AuditLogError, ConfigError
from weightvault.files import atomic_file, read_private_file, read_text_file

__all__ = ["audit", "witness"]


def _write_keypair(signer: NoteSigner, out: Path, force: bool, as_json: bool) -> None:
    """OUT (the signing key, 0600) and OUT.vkey (its verifier key); prints the verifier key."""
    vkey_path = out.with_name(out.name + ".vkey")
    with atomic_file(out, overwrite=force, mode=0o600) as secret:
        secret.write((signer.skey() + "\n").encode())
    with atomic_file(vkey_path, overwrite=force, mode=0o644) as public:
        public.write((signer.verifier.vkey() + "\n").encode())
    vkey = signer.verifier.vkey()
    report(as_json, vkey, {"vkey": vkey, "key_file": out, "vkey_file": vkey_path})


def read_signer(path: Path) -> NoteSigner:
    """A log or witness signing key (``PRIVATE+KEY+...``) from a file that only its owner can read."""
    text = read_private_file(path, "signing key").decode("utf-8", "replace")
    try:
        return NoteSigner.from_skey(text)
    except AuditLogError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


@click.group()
def audit() -> None:
    """Inspect, export, verify and monitor the tamper-evident audit log."""


@audit.command("keygen")
@click.argument("origin")
@click.argument("out", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--force", is_flag=True, help="Replace existing files.")
@json_option
def audit_keygen(origin: str, out: Path, force: bool, as_json: bool) -> None:
    """Create a log signing key for ORIGIN: OUT (secret, 0600) and OUT.vkey (public)."""
    _write_keypair(NoteSigner(origin, Ed25519Signer.generate()), out, force, as_json)


@audit.command("show")
@click.option("--db", required=True, help="The log database: a SQLite file, or postgresql://... (replicated brokers).")
@click.option("--tenant", help="Only this tenant's events.")
@click.option("--since", help="ISO 8601 time (inclusive).")
@click.option("--until", help="ISO 8601 time (exclusive).")
@click.option("--json", "as_json", is_flag=True, help="One JSON event per line.")
def audit_show(db: str, tenant: str | None, since: str | None, until: str | None, as_json: bool) -> None:
    """List events, optionally for one tenant and time range."""
    with open_reader(db) as log:
        for index, event in log.events(tenant=tenant, since_ms=parse_ms(since), until_ms=parse_ms(until)):
            if as_json:
                click.echo(json.dumps({"index": index, **event.to_json()}, sort_keys=True))
            else:
                when = datetime.fromtimestamp(event.ts / 1000, UTC).isoformat(timespec="milliseconds")
                decision = f" {event.decision}" if event.decision else ""
                click.echo(f"{index:>8} {when} {event.tenant:<12} {event.type:<22}{decision} {event.resource}")


@audit.command("export")
@click.option("--db", required=True, help="The log database: a SQLite file, or postgresql://... (replicated brokers).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output file.")
@click.option("--index", type=int, help="Export one entry as a proof bundle instead of the whole log as tiles.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["tiles", "jsonl"]),
    default="tiles",
    show_default=True,
    help="tiles: a verifiable tiles tarball; jsonl: one event per line with its log index (docs/sentinel.md).",
)
@click.option("--tenant", help="With --format jsonl: only this tenant's events.")
@click.option("--force", is_flag=True, help="Replace OUT.")
@json_option
def audit_export(
    db: str, out: Path, index: int | None, fmt: str, tenant: str | None, force: bool, as_json: bool
) -> None:
    """Export the log as a tiles tarball or as JSON Lines, or one entry as a c2sp.org/tlog-proof bundle."""
    with open_reader(db) as log:
        if fmt == "jsonl":
            count = 0
            with atomic_file(out, overwrite=force) as handle:
                for i, event in log.events(tenant=tenant):
                    line = json.dumps({"index": i, **event.to_json()}, sort_keys=True, separators=(",", ":"))
                    handle.write(line.encode() + b"\n")
                    count += 1
            report(as_json, f"wrote {count} events to {out}", {"format": fmt, "events": count, "out": out})
            return
        if index is not None:
            bundle = log.proof_bundle(index)
            with atomic_file(out, overwrite=force) as handle:
                handle.write(bundle.to_text().encode())
            report(
                as_json,
                f"wrote the proof bundle of entry {index} to {out}",
                {"format": "proof", "index": index, "out": out},
            )
            return
        if out.exists() and not force:
            raise ConfigError(f"{out} already exists (pass --force to replace it)")
        checkpoint = log.served_checkpoint()
        files = export_tiles(log.storage, checkpoint)
        write_tarball(files, out, overwrite=force)
        size = Checkpoint.from_text(checkpoint.text).size
        text = f"wrote {len(files)} tiles API files for the published checkpoint of size {size} to {out}"
        report(as_json, text, {"format": fmt, "files": len(files), "checkpoint_size": size, "out": out})


_policy_options = [
    click.option("--log-key", required=True, help="The log's verifier key (vkey text or file)."),
    click.option("--policy", "policy_file", type=click.Path(path_type=Path), help="A tlog-policy file."),
    click.option("--witness", "witnesses", multiple=True, help="A witness vkey (text or file). Repeatable."),
    click.option("--quorum", type=int, default=1, show_default=True, help="Cosignatures needed from --witness keys."),
    click.option("--max-age", type=int, help="Reject cosignatures older than this many seconds."),
]


_F = TypeVar("_F", bound=Callable[..., Any])


def _with_policy(func: _F) -> _F:
    for option in reversed(_policy_options):
        func = option(func)
    return func


@audit.command("verify")
@click.argument("source", type=click.Path(path_type=Path, exists=True))
@_with_policy
@click.option("--state", type=click.Path(path_type=Path), help="Remember the verified checkpoint here.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
def audit_verify(
    source: Path,
    log_key: str,
    policy_file: Path | None,
    witnesses: tuple[str, ...],
    quorum: int,
    max_age: int | None,
    state: Path | None,
    as_json: bool,
) -> None:
    """Verify, offline, a proof bundle or a tiles export (directory or tarball)."""
    log = read_vkey(log_key)
    policy = read_policy(policy_file, witnesses, quorum)
    now = int(time.time())
    if source.is_file() and source.read_bytes()[:22] == b"c2sp.org/tlog-proof@v1":
        verified = verify_bundle(
            ProofBundle.from_text(read_text_file(source, "proof bundle")), log, policy, now=now, max_age_seconds=max_age
        )
        checkpoint = verified.checkpoint
        event = decode_event(verified.entry)
        report: dict[str, object] = {"kind": "proof", "index": verified.index, "event": event.to_json()}
    else:
        export = verify_export(read_export(source), log, policy, now=now, max_age_seconds=max_age)
        checkpoint = export.checkpoint
        report = {"kind": "tiles", "entries": len(export.entries)}
    if state is not None:
        LogVerifier(log, policy, TrustedState(state), clock=time.time).update(checkpoint.note)
    report.update(
        {
            "ok": True,
            "origin": checkpoint.checkpoint.origin,
            "size": checkpoint.checkpoint.size,
            "cosigned_by": sorted(checkpoint.cosignatures),
        }
    )
    if as_json:
        click.echo(json.dumps(report, sort_keys=True))
    else:
        click.echo(
            f"OK: {report['kind']} verified against {checkpoint.checkpoint.origin} at size "
            f"{checkpoint.checkpoint.size}, cosigned by {sorted(checkpoint.cosignatures) or 'no witness'}"
        )


@audit.command("monitor")
@click.option("--db", help="Read a log database directly (a SQLite file, or postgresql://...).")
@click.option("--export", "export_path", type=click.Path(path_type=Path), help="Read a verified tiles export.")
@click.option(
    "--url",
    help="Follow a log over its tiles API (weightvault audit serve, or a broker's /v1/audit), verifying every entry.",
)
@click.option("--log-key", help="The log's verifier key (needed with --export and --url).")
@click.option("--policy", "policy_file", type=click.Path(path_type=Path), help="A tlog-policy file (witnesses).")
@click.option("--witness", "witnesses", multiple=True, help="A witness vkey (text or file). Repeatable.")
@click.option("--quorum", type=int, default=1, show_default=True, help="Cosignatures needed from --witness keys.")
@click.option("--max-age", type=int, help="Reject cosignatures older than this many seconds.")
@click.option("--state", type=click.Path(path_type=Path), help="With --url: remember the verified checkpoint here.")
@click.option("--token", help="With --url: bearer token (or @file) for a broker's /v1/audit.")
@click.option("--ca", type=click.Path(path_type=Path), help="With --url: CA bundle for TLS.")
@click.option("--follow", is_flag=True, help="Keep tailing the database or URL.")
@click.option("--interval", type=float, default=2.0, show_default=True, help="Seconds between polls with --follow.")
@click.option("--max-open", type=int, default=60, show_default=True, help="Seconds an intent may stay open.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line: each violation, then the summary.")
def audit_monitor(
    db: str | None,
    export_path: Path | None,
    url: str | None,
    log_key: str | None,
    policy_file: Path | None,
    witnesses: tuple[str, ...],
    quorum: int,
    max_age: int | None,
    state: Path | None,
    token: str | None,
    ca: Path | None,
    follow: bool,
    interval: float,
    max_open: int,
    as_json: bool,
) -> None:
    """Check semantic invariants: releases need an intent and an allow, no release for revoked devices, ...

    With --url the log is followed as an outside auditor would: every checkpoint's
    signature and witness quorum is verified, and every entry is hashed into a tree
    that must reproduce the signed root, so a rewritten, reordered, truncated or
    forked history stops the monitor with an error instead of being checked.
    """
    monitor = Monitor(max_open_ms=max_open * 1000)
    found = 0

    def violation(index: int, rule: str, message: str) -> None:
        nonlocal found
        found += 1
        if as_json:
            click.echo(json.dumps({"violation": {"index": index, "rule": rule, "message": message}}, sort_keys=True))
        else:
            click.echo(f"VIOLATION {rule} at entry {index}: {message}")

    if sum(x is not None for x in (db, export_path, url)) != 1:
        raise ConfigError("give one of --db, --export or --url")
    if (export_path is not None or url is not None) and log_key is None:
        raise ConfigError("--export and --url need --log-key")
    if export_path is not None:
        policy = read_policy(policy_file, witnesses, quorum)
        export = verify_export(
            read_export(export_path), read_vkey(str(log_key)), policy, now=int(time.time()), max_age_seconds=max_age
        )
        for index, data in enumerate(export.entries):
            for v in monitor.feed(index, decode_event(data)):
                violation(v.index, v.rule, v.message)
    elif url is not None:
        from weightvault.auditlog.follower import TileFollower

        policy = read_policy(policy_file, witnesses, quorum)
        client, fetch = http_fetch(url, token, ca)
        with client:
            follower = TileFollower(
                fetch,
                read_vkey(str(log_key)),
                policy,
                clock=time.time,
                max_age_seconds=max_age,
                state=TrustedState(state) if state is not None else None,
            )
            while True:
                polled = follower.poll()
                for offset, data in enumerate(polled.entries):
                    for v in monitor.feed(polled.start + offset, decode_event(data)):
                        violation(v.index, v.rule, v.message)
                if not follow:
                    break
                time.sleep(interval)
    elif db is not None:
        with open_reader(db) as log:
            position = 0
            while True:
                for index, event in log.events(start=position):
                    for v in monitor.feed(index, event):
                        violation(v.index, v.rule, v.message)
                    position = index + 1
                if not follow:
                    break
                time.sleep(interval)
    for v in monitor.finish(int(time.time() * 1000)):
        violation(v.index, v.rule, v.message)
    if as_json:
        click.echo(json.dumps({"summary": {"entries": monitor.entries, "violations": found}}, sort_keys=True))
    if found:
        click.echo(f"{found} violation(s)", err=True)
        sys.exit(40)
    if not as_json:
        click.echo(f"OK: {monitor.entries} entries, no violations")


@audit.command("serve")
@click.option("--db", required=True, help="The log database: a SQLite file, or postgresql://... (replicated brokers).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8470, show_default=True)
def audit_serve(db: str, host: str, port: int) -> None:
    """Serve the log read-only as C2SP tlog-tiles (checkpoint, tiles, entry bundles)."""
    import uvicorn

    from weightvault.server.tiles_app import create_tiles_app

    uvicorn.run(create_tiles_app(open_reader(db)), host=host, port=port, log_level="warning")


@click.group()
def witness() -> None:
    """Run a tlog-witness that cosigns checkpoints only when they extend what it saw."""


@witness.command("keygen")
@click.argument("name")
@click.argument("out", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--force", is_flag=True, help="Replace existing files.")
@json_option
def witness_keygen(name: str, out: Path, force: bool, as_json: bool) -> None:
    """Create a witness cosigning key NAME: OUT (secret, 0600) and OUT.vkey (public)."""
    _write_keypair(NoteSigner(name, Ed25519Signer.generate(), TYPE_COSIGNATURE), out, force, as_json)


@witness.command("serve")
@click.option("--key", type=click.Path(path_type=Path), required=True, help="The witness signing key.")
@click.option("--state", type=click.Path(path_type=Path), required=True, help="SQLite file of witnessed checkpoints.")
@click.option("--log", "logs", multiple=True, required=True, help="A log vkey (text or file) to witness. Repeatable.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8471, show_default=True)
def witness_serve(key: Path, state: Path, logs: tuple[str, ...], host: str, port: int) -> None:
    """Serve POST /add-checkpoint."""
    import uvicorn

    from weightvault.server.witness_app import create_witness_app

    signer = read_signer(key)
    if signer.verifier.sig_type != TYPE_COSIGNATURE:
        raise ConfigError(f"{key} is not a witness (cosignature) key")
    verifiers = [read_vkey(v) for v in logs]
    by_origin: dict[str, list[NoteVerifier]] = {}
    for v in verifiers:
        by_origin.setdefault(v.name, []).append(v)
    app = create_witness_app(Witness(signer, state, by_origin))
    uvicorn.run(app, host=host, port=port, log_level="warning")
