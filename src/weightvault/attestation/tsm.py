"""Linux's configfs-tsm report interface (``/sys/kernel/config/tsm/report``), shared by the SEV-SNP
and TDX attesters of a workload.

A report is requested by creating a directory under the root, writing REPORT_DATA (64
bytes) to its ``inblob`` (and, for SNP, the VMPL to ``privlevel``), and reading ``outblob``
(the signed report or quote) and ``auxblob`` (SNP: the host's certificate table).
``generation`` counts writes to the entry; it is read before and after, so that a report
raced by another writer is refused rather than sent. The entry is removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Final

from weightvault.errors import ConfigError, EvidenceError

__all__ = ["TSM_REPORT_ROOT", "request_report", "require_tsm", "tsm_provider"]

TSM_REPORT_ROOT: Final = Path("/sys/kernel/config/tsm/report")


def require_tsm(root: Path, what: str) -> None:
    """Raises ConfigError, saying what is missing, when ``root`` is not there."""
    if not root.is_dir():
        raise ConfigError(
            f"{what} attestation needs the configfs-tsm report interface ({root}): this is not a {what} guest, "
            "its kernel is older than 6.7, or configfs is not mounted (mount -t configfs none /sys/kernel/config)"
        )


def tsm_provider(root: Path) -> str:
    """The TEE behind configfs-tsm here (``sev_guest``, ``tdx_guest``), read from a fresh entry.

    Raises:
        ConfigError: no configfs-tsm report interface, or the entry cannot be made.
    """
    require_tsm(root, "CPU TEE")
    entry = root / f"weightvault-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        entry.mkdir()
        return (entry / "provider").read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the configfs-tsm provider in {root}: {exc.strerror}") from exc
    finally:
        with contextlib.suppress(OSError):
            entry.rmdir()


def request_report(root: Path, provider: str, inblob: bytes, privlevel: int | None = None) -> tuple[bytes, bytes]:
    """``(outblob, auxblob)`` for ``inblob`` from the ``provider`` (``sev_guest``, ``tdx_guest``).

    Raises:
        ConfigError: the entry cannot be made, the provider is another one, or the firmware refused.
        EvidenceError: ``tsm_report_race``, another writer changed the entry while it was read.
    """
    entry = root / f"weightvault-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        entry.mkdir()
    except OSError as exc:
        raise ConfigError(f"cannot create a configfs-tsm report entry in {root}: {exc.strerror}") from exc
    try:
        found = (entry / "provider").read_text().strip()
        if found != provider:
            raise ConfigError(f"the configfs-tsm provider here is {found!r}, not {provider}")
        if privlevel is not None:
            with contextlib.suppress(FileNotFoundError):  # privlevel exists only where the TEE has levels
                (entry / "privlevel").write_text(str(privlevel))
        (entry / "inblob").write_bytes(inblob)
        before = (entry / "generation").read_text().strip()
        report = (entry / "outblob").read_bytes()
        aux = (entry / "auxblob").read_bytes() if (entry / "auxblob").exists() else b""
        if (entry / "generation").read_text().strip() != before:
            raise EvidenceError("tsm_report_race: the report entry changed while it was read; try again")
        return report, aux
    except OSError as exc:
        raise ConfigError(f"the {provider} firmware refused a report: {exc.strerror}") from exc
    finally:
        with contextlib.suppress(OSError):
            entry.rmdir()
