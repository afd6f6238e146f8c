"""The SEV-SNP attester of a workload: a report from the guest's firmware through Linux's configfs-tsm.

Inside an SNP guest (Linux 6.7 or later, ``sev-guest`` driver), a report is requested by
creating a directory under ``/sys/kernel/config/tsm/report``, writing the 64 bytes of
REPORT_DATA to its ``inblob`` (and the VMPL to ``privlevel``), and reading ``outblob``
(the signed 1184-byte report) and ``auxblob`` (the certificate table the host supplied:
VCEK or VLEK, ASK, ARK). ``generation`` counts writes to the entry; it is read before and
after so that a report requested concurrently with other data is refused rather than sent.

The endorsement (VCEK or VLEK) comes from the certificate table when the host provides
one; otherwise from a file (``--endorsement``), for instance the VCEK that AMD's KDS
serves for the chip id and TCB of a report.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import struct
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from weightvault.attestation.snp.report import parse_report
from weightvault.errors import ConfigError, EvidenceError

__all__ = ["TSM_REPORT_ROOT", "SnpAttester", "certificate_table"]

TSM_REPORT_ROOT: Final = Path("/sys/kernel/config/tsm/report")
#: GUIDs of the GHCB certificate table (GHCB specification, "SNP Extended Guest Request").
TABLE_GUIDS: Final = {
    "vcek": uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd"),
    "vlek": uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1"),
    "ask": uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782"),
    "ark": uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae"),
}
_ENTRY: Final = struct.Struct("<16sII")
_MAX_TABLE: Final = 64 << 10


def certificate_table(aux: bytes) -> dict[str, bytes]:
    """The certificates of a GHCB certificate table, by name (unknown GUIDs are skipped).

    Raises:
        EvidenceError: an entry points outside the table, or the table has no terminator.
    """
    if len(aux) > _MAX_TABLE:
        raise EvidenceError("snp_certificate_table: larger than 64 KiB")
    names = {guid.bytes_le: name for name, guid in TABLE_GUIDS.items()}
    found: dict[str, bytes] = {}
    for position in range(0, len(aux) - _ENTRY.size + 1, _ENTRY.size):
        guid, offset, length = _ENTRY.unpack_from(aux, position)
        if guid == bytes(16) and offset == 0 and length == 0:
            return found
        if offset + length > len(aux) or offset < position + _ENTRY.size:
            raise EvidenceError("snp_certificate_table: an entry points outside the table")
        if guid in names:
            found[names[guid]] = aux[offset : offset + length]
    raise EvidenceError("snp_certificate_table: no terminating entry")


class SnpAttester:
    """Evidence for the ``sev-snp`` verifier from this guest's firmware (the Attester protocol)."""

    def __init__(self, *, endorsement: Path | None = None, vmpl: int = 0, root: Path = TSM_REPORT_ROOT) -> None:
        self.endorsement = endorsement
        self.vmpl = vmpl
        self.root = root

    @classmethod
    def open(cls, endorsement: Path | None = None) -> SnpAttester:
        """An attester for this machine.

        Raises:
            ConfigError: no configfs-tsm report interface (not an SNP guest, a kernel before
                6.7, configfs not mounted), or it is another TEE's.
        """
        attester = cls(endorsement=endorsement)
        if not attester.root.is_dir():
            raise ConfigError(
                f"SEV-SNP attestation needs the configfs-tsm report interface ({attester.root}): this is not an "
                "SEV-SNP guest, its kernel is older than 6.7, or configfs is not mounted "
                "(mount -t configfs none /sys/kernel/config)"
            )
        return attester

    def evidence(self, report_data: bytes, challenge: Mapping[str, Any]) -> dict[str, Any]:
        if len(report_data) != 32:
            raise ValueError("report_data is 32 bytes")
        report, aux = self._request(report_data + bytes(32))
        parsed = parse_report(report)
        table = certificate_table(aux) if aux else {}
        endorsement = table.get(parsed.signing_key)
        if endorsement is None:
            if self.endorsement is None:
                raise ConfigError(
                    f"the host supplied no {parsed.signing_key.upper()} with the report: give it with --endorsement "
                    f"(AMD KDS serves the VCEK for chip id {parsed.chip_id.hex()[:16]}... at this TCB)"
                )
            endorsement = self.endorsement.read_bytes()
        return {
            "type": "sev-snp",
            "report": base64.b64encode(report).decode(),
            "endorsement": base64.b64encode(endorsement).decode(),
        }

    def _request(self, inblob: bytes) -> tuple[bytes, bytes]:
        entry = self.root / f"weightvault-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            entry.mkdir()
        except OSError as exc:
            raise ConfigError(f"cannot create a configfs-tsm report entry in {self.root}: {exc.strerror}") from exc
        try:
            provider = (entry / "provider").read_text().strip()
            if provider != "sev_guest":
                raise ConfigError(f"the configfs-tsm provider here is {provider!r}, not sev_guest (SEV-SNP)")
            with contextlib.suppress(FileNotFoundError):  # privlevel appeared with the SNP provider
                (entry / "privlevel").write_text(str(self.vmpl))
            (entry / "inblob").write_bytes(inblob)
            before = (entry / "generation").read_text().strip()
            report = (entry / "outblob").read_bytes()
            aux = (entry / "auxblob").read_bytes() if (entry / "auxblob").exists() else b""
            if (entry / "generation").read_text().strip() != before:
                raise EvidenceError("snp_report_race: the report entry changed while it was read; try again")
            return report, aux
        except OSError as exc:
            raise ConfigError(f"the SEV-SNP firmware refused a report: {exc.strerror}") from exc
        finally:
            with contextlib.suppress(OSError):
                entry.rmdir()
