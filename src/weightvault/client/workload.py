"""What a workload needs to get keys from a broker, outside the command line: its API token
(a value or ``@FILE``) and its attester (the insecure sample one, or a TPM's)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from weightvault.errors import ConfigError

__all__ = ["BROKER_ENV", "TOKEN_ENV", "open_attester", "read_token"]

BROKER_ENV: Final = "WEIGHTVAULT_BROKER"
TOKEN_ENV: Final = "WEIGHTVAULT_TOKEN"  # noqa: S105 - the name of a variable, not a secret


def read_token(value: str | None) -> str:
    """An API token: ``value``, or the file it names after ``@``, or ``$WEIGHTVAULT_TOKEN``.

    Raises:
        ConfigError: none given, or a token file that others may read.
    """
    value = value or os.environ.get(TOKEN_ENV)
    if not value:
        raise ConfigError(f"no API token: pass --token or set {TOKEN_ENV}")
    if value.startswith("@"):
        from weightvault.files import read_private_file

        return read_private_file(Path(value[1:]), "token").decode("utf-8", "replace").strip()
    return value


def open_attester(
    attester: str,
    tcti: str | None,
    device_id: str | None,
    event_logs: Sequence[Path],
    endorsement: Path | None = None,
) -> Any:
    """The attester named (close it after use if it has ``close``): ``sample``, ``tpm``, ``snp``, ``tdx``,
    ``nvidia-gpu`` (this machine's GPUs alone) or ``composite`` (this guest's SNP or TDX evidence and
    every GPU's, bound to it).

    Raises:
        ConfigError: ``tpm`` without a TCTI or a device id, event logs without ``tpm``, an
            endorsement without ``snp`` or ``composite``, ``snp`` or ``tdx`` on a machine that
            is not such a guest, or GPU evidence where NVML, a GPU or CC mode is missing.
    """
    from weightvault.client.broker import SampleAttester

    if endorsement is not None and attester not in ("snp", "composite"):
        raise ConfigError("--endorsement needs --attester snp or composite")
    if attester in ("nvidia-gpu", "composite") and (event_logs or tcti):
        raise ConfigError("--event-log and --tcti are for --attester tpm")
    if attester == "nvidia-gpu":
        from weightvault.attestation.nvidia.attester import NvmlGpuAttester

        return NvmlGpuAttester.open()
    if attester == "composite":
        return _composite_attester(endorsement)
    if attester == "snp":
        from weightvault.attestation.snp.attester import SnpAttester

        if event_logs or tcti:
            raise ConfigError("--event-log and --tcti are for --attester tpm")
        return SnpAttester.open(endorsement)
    if attester == "tdx":
        from weightvault.attestation.tdx.attester import TdxAttester

        if event_logs or tcti:
            raise ConfigError("--event-log and --tcti are for --attester tpm")
        return TdxAttester.open()

    if attester == "tpm":
        from weightvault.attestation.tpm.attester import TPMAttester

        if not tcti or not device_id:
            raise ConfigError("--attester tpm needs --tcti and --device-id")
        return TPMAttester.open(tcti, event_logs)
    if attester != "sample":
        raise ConfigError(f"unknown attester {attester!r}: sample, tpm, snp, tdx, nvidia-gpu or composite")
    if event_logs:
        raise ConfigError("--event-log needs --attester tpm")
    return SampleAttester(device_id=device_id)


def _composite_attester(endorsement: Path | None) -> Any:
    """This guest's CPU TEE (whichever configfs-tsm provides) and its GPUs."""
    from weightvault.attestation.composite import CompositeAttester
    from weightvault.attestation.nvidia.attester import NvmlGpuAttester
    from weightvault.attestation.snp.attester import SnpAttester
    from weightvault.attestation.tdx.attester import TdxAttester
    from weightvault.attestation.tsm import TSM_REPORT_ROOT, tsm_provider

    provider = tsm_provider(TSM_REPORT_ROOT)
    cpu: Any
    if provider == "sev_guest":
        cpu = SnpAttester.open(endorsement)
    elif provider == "tdx_guest":
        if endorsement is not None:
            raise ConfigError("--endorsement is for SEV-SNP guests; this is a TDX guest")
        cpu = TdxAttester.open()
    else:
        raise ConfigError(f"composite evidence needs an SEV-SNP or TDX guest (configfs-tsm provider {provider!r})")
    return CompositeAttester(cpu, NvmlGpuAttester.open())
