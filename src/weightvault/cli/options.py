"""What the command groups share: broker connection options, API tokens, key arguments, times.

The command line only maps arguments: it reads the environment and files here, and
everything else is a call into the library. No command module imports another,
only this one (an import contract keeps it so).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from weightvault.auditlog.log import LogReader
from weightvault.auditlog.note import NoteVerifier
from weightvault.auditlog.policy import WitnessPolicy
from weightvault.auditlog.storage import read_origin
from weightvault.cli.prompts import ask_passphrase
from weightvault.client.workload import BROKER_ENV, TOKEN_ENV, open_attester, read_token
from weightvault.errors import AuditLogError, ConfigError
from weightvault.files import read_text_file
from weightvault.format.keys import FileKey
from weightvault.format.recipients import KEK, HPKEIdentity, HPKERecipient, Identity, Passphrase, Recipient
from weightvault.sealing import read_key_file
from weightvault.sealing.sources import is_remote

__all__ = [
    "BROKER_ENV",
    "TOKEN_ENV",
    "approval_option",
    "attester_options",
    "client_options",
    "http_fetch",
    "identities_from",
    "is_database_url",
    "json_option",
    "make_anonymous_client",
    "make_client",
    "open_attester",
    "open_reader",
    "parse_ms",
    "parse_seconds",
    "progress_bar",
    "read_policy",
    "read_token",
    "read_vkey",
    "recipients_from",
    "report",
    "sign_key_option",
    "sign_sealed_dir",
    "size_of",
]


def _quiet() -> bool:
    context = click.get_current_context(silent=True)
    return bool(context is not None and context.find_root().params.get("quiet"))


@contextlib.contextmanager
def progress_bar(label: str, total: int) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar on a terminal; nothing when stderr is not one, or with ``--quiet``."""
    if not sys.stderr.isatty() or total <= 0 or _quiet():
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=True,
        console=None,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def size_of(path: Path) -> int:
    """Bytes of a file, or of a model directory's weights (what a progress bar counts)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*.safetensors*") if p.is_file())


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--json``: print the command's report as one JSON document instead of lines of text."""
    return click.option("--json", "as_json", is_flag=True, help="Print a JSON report instead of text.")(func)


def report(as_json: bool, lines: str | Sequence[str], doc: Any) -> None:
    """Print ``lines`` for people, or ``doc`` as JSON with ``--json`` (keys sorted, paths as strings)."""
    import json

    if as_json:
        click.echo(json.dumps(doc, indent=2, sort_keys=True, default=str))
        return
    for line in [lines] if isinstance(lines, str) else lines:
        click.echo(line)


def client_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--ca", type=click.Path(path_type=Path), help="CA bundle for a TLS broker.")(func)
    func = click.option("--token", help=f"API token, or @FILE (default ${TOKEN_ENV}).")(func)
    return click.option("--broker", "url", help=f"Broker URL (default ${BROKER_ENV}).")(func)


def sign_key_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--sign-key``: sign the sealed model directory for OpenSSF model signing."""
    return click.option(
        "--sign-key",
        type=click.Path(path_type=Path, exists=True, dir_okay=False),
        help="Sign the sealed directory (OpenSSF model signing, DST/model.sig) with this EC private key (PEM).",
    )(func)


def sign_sealed_dir(directory: Path, key: Path) -> Path:
    """Sign a directory this command has just sealed; if that fails, the directory is removed (an
    unsigned result where a signed one was asked for is not left behind). Returns the signature."""
    import shutil

    from weightvault.sealing.signatures import sign_model_dir

    try:
        encrypted = b"ENCRYPTED" in key.read_bytes()
        password = ask_passphrase(confirm=False, label="signing key passphrase") if encrypted else None
        return sign_model_dir(directory, key, password=password)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


def local_or_remote(_ctx: click.Context, _param: click.Parameter, value: str) -> str | Path:
    """A click callback: an http(s):// or s3:// URL as given, else a path that must exist."""
    if is_remote(value):
        return value
    path = Path(value)
    if not path.exists():
        raise click.BadParameter(f"{value}: no such file or directory (or an http://, https:// or s3:// URL)")
    return path


def make_client(url: str | None, token: str | None, ca: Path | None) -> Any:
    from weightvault.client.broker import BrokerClient

    url = url or os.environ.get(BROKER_ENV)
    if not url:
        raise ConfigError(f"no broker URL: pass --broker or set {BROKER_ENV}")
    return BrokerClient(url, read_token(token), verify=str(ca) if ca else True)


def make_anonymous_client(url: str | None, ca: Path | None) -> Any:
    """A client without an API token (custodians: their signatures authenticate them)."""
    from weightvault.client.broker import BrokerClient

    url = url or os.environ.get(BROKER_ENV)
    if not url:
        raise ConfigError(f"no broker URL: pass --broker or set {BROKER_ENV}")
    return BrokerClient(url, None, verify=str(ca) if ca else True)


def attester_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--attester``, ``--device-id``, ``--endorsement``, ``--tcti``, ``--event-log``: how a workload attests
    (see open_attester)."""
    func = click.option(
        "--event-log",
        "event_logs",
        multiple=True,
        type=click.Path(path_type=Path),
        help="TCG event log to send with the quote (repeatable; with --attester tpm), e.g. the firmware's "
        "/sys/kernel/security/tpm0/binary_bios_measurements or a log kept by 'device extend --event-log'.",
    )(func)
    func = click.option("--tcti", help="TPM TCTI string (with --attester tpm), e.g. swtpm:host=127.0.0.1,port=2321.")(
        func
    )
    func = click.option(
        "--endorsement",
        type=click.Path(path_type=Path, exists=True, dir_okay=False),
        help="With --attester snp or composite: the VCEK or VLEK certificate, when the host supplies none with "
        "the report.",
    )(func)
    func = click.option("--device-id", help="The enrolled device this workload runs on.")(func)
    choice = click.Choice(["sample", "tpm", "snp", "tdx", "nvidia-gpu", "composite"])
    return click.option("--attester", type=choice, default="sample", show_default=True)(func)


approval_option = click.option(
    "--approval", help='An approved request id for an operation the approval policy covers, or "new" to open one.'
)


def recipients_from(paths: Sequence[Path], passphrase: bool) -> list[Recipient]:
    out: list[Recipient] = []
    for path in paths:
        key = read_key_file(path)
        if isinstance(key, KEK | HPKERecipient):
            out.append(key)
        elif isinstance(key, HPKEIdentity):
            out.append(key.recipient)
        else:
            raise ConfigError(f"{path}: a file key cannot be a recipient")
    if passphrase:
        out.append(Passphrase(ask_passphrase(confirm=True)))
    return out


def identities_from(paths: Sequence[Path], passphrase: bool) -> FileKey | list[Identity]:
    ids: list[Identity] = []
    for path in paths:
        key = read_key_file(path)
        if isinstance(key, FileKey):
            if len(paths) == 1 and not passphrase:
                return key
            raise ConfigError("a file key cannot be combined with other identities")
        if isinstance(key, HPKERecipient):
            raise ConfigError(f"{path} is a public key; pass the private key to open files")
        ids.append(key)
    if passphrase:
        ids.append(Passphrase(ask_passphrase(confirm=False)))
    if not ids:
        raise ConfigError("no key given: pass -i/--identity KEYFILE or --passphrase")
    return ids


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_seconds(value: str | None) -> int | None:
    """``90s``, ``15m``, ``24h`` or ``30d`` (a positive whole number and its unit) in seconds.

    Raises:
        ConfigError: anything else.
    """
    if value is None:
        return None
    text = value.strip().lower()
    number, unit = text[:-1], text[-1:]
    if unit not in _DURATION_UNITS or not number.isascii() or not number.isdigit() or len(number) > 9:
        raise ConfigError(f"not a duration such as 90s, 15m, 24h or 30d: {value!r}")
    seconds = int(number) * _DURATION_UNITS[unit]
    if seconds <= 0:
        raise ConfigError(f"a duration must be positive: {value!r}")
    return seconds


def parse_ms(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ConfigError(f"not an ISO 8601 time: {value!r}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


# -- the audit log: verifier keys, witness policies, local databases, the tiles API -----------------


def read_vkey(value: str) -> NoteVerifier:
    """A verifier key given inline or as a file path."""
    path = Path(value)
    text = read_text_file(path, "verifier key", max_bytes=64 << 10).strip() if path.is_file() else value
    try:
        return NoteVerifier.from_vkey(text)
    except AuditLogError as exc:
        raise ConfigError(f"not a verifier key: {exc}") from exc


def read_policy(path: Path | None, witnesses: Sequence[str], quorum: int) -> WitnessPolicy:
    """A tlog-policy file, or a threshold over ``--witness`` keys."""
    if path is not None:
        return WitnessPolicy.parse(read_text_file(path, "tlog-policy", max_bytes=1 << 20))
    keys = [read_vkey(w) for w in witnesses]
    return WitnessPolicy.threshold(keys, quorum if keys else 0)


def _origin_of(db: Path) -> str:
    try:
        return read_origin(db)
    except AuditLogError as exc:
        raise ConfigError(str(exc)) from exc


def is_database_url(value: str | Path) -> bool:
    """Whether a log location names a PostgreSQL database (a replicated broker's log)."""
    return str(value).startswith(("postgresql://", "postgresql+psycopg://", "postgres://"))


def open_reader(db: str | Path) -> LogReader:
    """A reader of the log in a SQLite file, or in a PostgreSQL database (``postgresql://...``, the
    log of replicated brokers); nothing is created or changed."""
    if is_database_url(db):
        from weightvault.auditlog.pgstorage import PostgresLogStorage
        from weightvault.broker.storage.database import libpq_conninfo

        try:
            return LogReader(PostgresLogStorage(libpq_conninfo(str(db).replace("postgres://", "postgresql://", 1))))
        except AuditLogError as exc:
            raise ConfigError(f"the audit log database: {exc}") from exc
    path = Path(db)
    if not path.is_file():
        raise ConfigError(f"{path}: no such audit log database")
    return LogReader.open(path, _origin_of(path))


_MAX_TILE_BYTES = 17 << 20  # a full entry bundle: 256 entries of at most 64 KiB, with length prefixes


def http_fetch(base: str, token: str | None, ca: Path | None) -> tuple[Any, Callable[[str], bytes | None]]:
    """An httpx client and a tiles ``fetch`` over it (None for 404, bounded responses)."""
    import httpx

    from weightvault.errors import InclusionProofError, TransportError

    headers = {"authorization": f"Bearer {read_token(token)}"} if token else {}
    client = httpx.Client(
        base_url=base.rstrip("/") + "/", headers=headers, timeout=30.0, verify=str(ca) if ca else True
    )

    def fetch(path: str) -> bytes | None:
        try:
            with client.stream("GET", path) as reply:
                if reply.status_code == 404:
                    return None
                if reply.status_code != 200:
                    raise TransportError(f"{base}/{path}: HTTP {reply.status_code}")
                body = bytearray()
                for chunk in reply.iter_bytes():
                    body += chunk
                    if len(body) > _MAX_TILE_BYTES:
                        raise InclusionProofError(f"{base}/{path} is larger than any tile")
                return bytes(body)
        except httpx.HTTPError as exc:
            raise TransportError(f"{base}/{path}: {type(exc).__name__}") from exc

    return client, fetch
