"""The TDX attester of a workload: a quote from the TD's quoting enclave through Linux's configfs-tsm.

Inside a TD (Linux 6.7 or later, ``tdx-guest`` driver with a quote generation service on
the host), :mod:`weightvault.attestation.tsm` writes the 64 bytes of REPORT_DATA (the
session's ``report_data`` and 32 zero bytes) and reads the DCAP quote, which carries its
PCK certificate chain; the broker holds the rest of the collateral.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from weightvault.attestation.tsm import TSM_REPORT_ROOT, request_report, require_tsm

__all__ = ["TdxAttester"]


class TdxAttester:
    """Evidence for the ``tdx`` verifier from this TD (the Attester protocol)."""

    def __init__(self, *, root: Path = TSM_REPORT_ROOT) -> None:
        self.root = root

    @classmethod
    def open(cls) -> TdxAttester:
        """An attester for this machine.

        Raises:
            ConfigError: no configfs-tsm report interface (not a TD, a kernel before 6.7, configfs not mounted).
        """
        attester = cls()
        require_tsm(attester.root, "TDX")
        return attester

    def evidence(self, report_data: bytes, challenge: Mapping[str, Any]) -> dict[str, Any]:
        if len(report_data) != 32:
            raise ValueError("report_data is 32 bytes")
        quote, _ = request_report(self.root, "tdx_guest", report_data + bytes(32))
        return {"type": "tdx", "quote": base64.b64encode(quote).decode()}
