"""``weightvault publish`` and ``load``: seal a model with its key held by the broker, and load it back."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from weightvault.cli.options import (
    approval_option,
    attester_options,
    client_options,
    json_option,
    local_or_remote,
    make_client,
    open_attester,
    progress_bar,
    recipients_from,
    report,
    sign_key_option,
    sign_sealed_dir,
    size_of,
)
from weightvault.errors import ConfigError
from weightvault.format.manifest import MANIFEST_NAME
from weightvault.sealing.model_dir import SealedModel, names_model_dir
from weightvault.sealing.sources import display

__all__ = ["load", "publish"]


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
@sign_key_option
@json_option
@client_options
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
    sign_key: Path | None,
    as_json: bool,
    url: str | None,
    token: str | None,
    ca: Path | None,
) -> None:
    """Seal SRC into DST and register its key with the broker in one step (with --sign-key, a
    model directory is signed for OpenSSF model signing before it is registered)."""
    from weightvault.client.broker import BrokerRecipient, registration_files
    from weightvault.crypto.aead import AEADSuite
    from weightvault.format.keys import FileKey
    from weightvault.sealing import SealOptions, seal_model_dir, seal_safetensors

    if sign_key is not None:
        from weightvault.sealing.signatures import require_model_signing

        require_model_signing()  # before anything is sealed or registered
    parsed_tags = dict(t.split("=", 1) for t in tags if "=" in t)
    with make_client(url, token, ca) as client:
        resource = f"{tenant}/models/{name}@{model_version}"
        wrapped = [BrokerRecipient(client.url, resource), *recipients_from(recipients, False)]
        options = SealOptions(AEADSuite.from_label(suite), sealed_metadata=sealed_metadata)
        file_key = FileKey.generate()
        signature = manifest = None
        try:
            if src.is_dir():
                with progress_bar("sealing", size_of(src)) as progress:
                    result = seal_model_dir(
                        src, dst, file_key=file_key, recipients=wrapped, options=options, overwrite=force,
                        progress=progress,
                    )  # fmt: skip
                files = registration_files(result.manifest)
                if sign_key is not None:
                    signature = sign_sealed_dir(dst, sign_key).read_bytes()
                    manifest = (dst / MANIFEST_NAME).read_bytes()
            else:
                if sign_key is not None:
                    raise ConfigError("--sign-key signs model directories (OpenSSF model signing)")
                with progress_bar("sealing", size_of(src)) as progress:
                    one = seal_safetensors(
                        src, dst, file_key=file_key, recipients=wrapped, options=options, overwrite=force,
                        progress=progress,
                    )  # fmt: skip
                files = [{"file_id": one.file_id.hex(), "header_mac": one.header_mac.hex(), "path": dst.name}]
            registered = client.register_model(
                tenant,
                name,
                model_version,
                policy=policy,
                file_key=file_key,
                files=files,
                tags=parsed_tags,
                signature=signature,
                manifest=manifest,
            )
        finally:
            file_key.wipe()
    signed = " and signed (model.sig)" if sign_key is not None else ""
    doc = {"resource": registered, "sealed": dst, "broker": client.url, "signed": sign_key is not None}
    report(as_json, f"published {registered}: sealed into {dst}{signed}, key held by {client.url}", doc)


@click.command()
@click.argument("src", callback=local_or_remote)
@attester_options
@click.option("--kem", type=click.Choice(["mlkem768-x25519", "x25519"]), default="mlkem768-x25519", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
@approval_option
@client_options
def load(
    src: str | Path,
    attester: str,
    device_id: str | None,
    endorsement: Path | None,
    tcti: str | None,
    event_logs: tuple[Path, ...],
    kem: str,
    as_json: bool,
    approval: str | None,
    url: str | None,
    token: str | None,
    ca: Path | None,
) -> None:
    """Attest, obtain the key from the broker, and load SRC (a sealed file or model directory) into memory.

    SRC may also be an http://, https:// or s3:// URL: only the ranges needed are fetched,
    in parallel and with retries, and every byte is verified as on local disk. S3 takes the
    usual AWS_* variables (AWS_ENDPOINT_URL for S3-compatible servers).
    """
    from weightvault.client.broker import BrokerIdentity
    from weightvault.crypto.keywrap import HPKEKem
    from weightvault.loaders import numpy as wv_numpy

    with make_client(url, token, ca) as client:
        chosen = open_attester(attester, tcti, device_id, event_logs, endorsement)
        identity = BrokerIdentity(client, chosen, kem=HPKEKem(kem), device_id=device_id, approval=approval)
        t0 = time.perf_counter()
        total = 0 if isinstance(src, str) else size_of(src)  # a URL's size is known only once opened
        try:
            with progress_bar("loading", total) as progress:
                if names_model_dir(src):
                    model = SealedModel.open(src, [identity])
                    count = nbytes = 0
                    for entry in model.weight_entries():
                        with model.open_sealed(entry) as opened:
                            arrays = wv_numpy.load_opened(opened, progress=progress)
                        count += len(arrays)
                        nbytes += sum(a.nbytes for a in arrays.values())
                        del arrays
                else:
                    arrays = wv_numpy.load_file(src, [identity], progress=progress)
                    count, nbytes = len(arrays), sum(a.nbytes for a in arrays.values())
                    del arrays
        finally:
            identity.wipe()
            close = getattr(chosen, "close", None)
            if close is not None:
                close()
        seconds = time.perf_counter() - t0
    report = {
        "path": display(src),
        "tensors": count,
        "bytes": nbytes,
        "seconds": round(seconds, 3),
        "attester": attester,
    }
    if as_json:
        click.echo(json.dumps(report, sort_keys=True))
    else:
        click.echo(
            f"loaded {count} tensors ({nbytes / 1e6:.1f} MB) from {display(src)} in {seconds:.2f} s; "
            f"key released by {client.url}"
        )
    sys.stdout.flush()
