"""``weightvault device``: enrol a TPM 2.0 device, read and extend its PCRs, revoke it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from weightvault.cli.options import approval_option, client_options, json_option, make_client, report
from weightvault.errors import ConfigError

__all__ = ["device"]


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
@approval_option
@json_option
@client_options
def device_enroll(
    tcti: str,
    device_id: str,
    tenants: tuple[str, ...],
    approval: str | None,
    as_json: bool,
    url: str | None,
    token: str | None,
    ca: Path | None,
) -> None:
    """Enrol this machine's TPM: EK certificate chain, AK attributes, then credential activation (operators)."""
    from weightvault.attestation.tpm.attester import TPMAttester

    with TPMAttester.open(tcti) as tpm, make_client(url, token, ca) as client:
        t0 = time.perf_counter()
        client.enrol_tpm_device(tpm, device_id, tenants, approval)
    seconds = time.perf_counter() - t0
    text = f"device {device_id} enrolled and activated in {seconds:.2f} s"
    report(
        as_json, text, {"device": device_id, "tenants": list(tenants), "enrolled": True, "seconds": round(seconds, 3)}
    )


@device.command("revoke")
@click.argument("device_id")
@json_option
@client_options
def device_revoke(device_id: str, as_json: bool, url: str | None, token: str | None, ca: Path | None) -> None:
    """Revoke a device; its next release is refused even with a live token (operators)."""
    with make_client(url, token, ca) as client:
        client.device_action(device_id, "revoke")
    report(as_json, f"device {device_id} revoked", {"device": device_id, "revoked": True})


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
@json_option
def device_extend(
    tcti: str,
    pcr: int,
    digest: str | None,
    measured: Path | None,
    event_log: Path | None,
    description: str | None,
    as_json: bool,
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
    text = f"sha256:{pcr} is now {value.hex()}" + (f" (recorded in {event_log})" if event_log else "")
    report(as_json, text, {"pcr": pcr, "measurement": raw.hex(), "value": value.hex(), "event_log": event_log})
