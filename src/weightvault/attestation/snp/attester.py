"""The SEV-SNP attester of a workload: a report from the guest's firmware through Linux's configfs-tsm.

Inside an SNP guest (Linux 6.7 or later, ``sev-guest`` driver), :mod:`weightvault.attestation.tsm`
writes the 64 bytes of REPORT_DATA (the session's ``report_data`` and 32 zero bytes) and
the VMPL, and reads the signed 1184-byte report and the certificate table the host
supplied (VCEK or VLEK, ASK, ARK).

The endorsement (VCEK or VLEK) comes from the certificate table when the host provides
one; otherwise from a file (``--endorsement``), for instance the VCEK that AMD's KDS
serves for the chip id and TCB of a report.
"""

from __future__ import annotations

import base64
import struct
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from weightvault.attestation.snp.report import parse_report
from weightvault.attestation.tsm import TSM_REPORT_ROOT, request_report, require_tsm
from weightvault.errors import ConfigError, EvidenceError

__all__ = ["TSM_REPORT_ROOT", "SnpAttester", "certificate_table"]

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
        require_tsm(attester.root, "SEV-SNP")
        return attester

    def evidence(self, report_data: bytes, challenge: Mapping[str, Any]) -> dict[str, Any]:
        if len(report_data) != 32:
            raise ValueError("report_data is 32 bytes")
        report, aux = request_report(self.root, "sev_guest", report_data + bytes(32), self.vmpl)
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
