"""The ``tdx`` verifier: Intel TDX DCAP quotes (versions 4 and 5), checked with collateral provided offline.

Evidence: ``{"type": "tdx", "quote": b64}``, the quote the TD obtained (configfs-tsm
``outblob`` with the ``tdx_guest`` provider), carrying its PCK certificate chain.

The quote's cryptography is checked by ``dcap-qvl`` (Phala Network's DCAP quote
verification library, a Rust port of Intel's QVL, ``pip install 'weightvault[tdx]'``):
the PCK chain to the pinned Intel SGX Root CA with the root and PCK CRLs, the signatures of
the TCB info and QE identity collateral and their validity at the time of the request,
the QE report (signed by the PCK key, binding the attestation key), the quote's
signature, and the platform's TCB level (with the TDX module's identity). weightvault
then applies its own policy. Each failure raises :class:`~weightvault.errors.EvidenceError`
whose message starts with its code (recorded in the audit log; the workload sees only
"Attestation failed"):

1. shape and size; version 4 or 5, TEE type TDX, ECDSA P-256 attestation key
   (``tdx_evidence``, ``tdx_quote_version``);
2. collateral for the quote's FMSPC is configured (``tdx_collateral_missing``);
3. dcap-qvl's verification (``tdx_collateral_expired``, ``tdx_revoked``, ``tdx_tcb_level``
   when no TCB level matches the platform, ``tdx_quote`` for any other failure);
4. the TCB status is one the configuration allows, ``UpToDate`` by default (``tdx_tcb_status``);
5. the TD is not debuggable (``tdx_debug``; dcap-qvl refuses it too);
6. MRTD is a reference value, and each RTMR that the configuration names is one of its
   reference values (``tdx_measurement``, ``tdx_rtmr``);
7. REPORT_DATA is the session's 32-byte ``report_data`` followed by 32 zero bytes,
   compared in constant time (``tdx_report_data``).

Steps 1-6 are :meth:`TDXVerifier.appraise_quote` (everything that does not depend on the
session); step 7 is :func:`check_binding`.
"""

from __future__ import annotations

import hmac
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from weightvault.attestation.interfaces import (
    AttestationContext,
    AttestationResult,
    BaseVerifier,
    ClaimValue,
    decode_b64_field,
    evidence_digest,
)
from weightvault.encoding import parse_json
from weightvault.errors import ConfigError, EvidenceError

__all__ = ["TCB_STATUSES", "AppraisedQuote", "TDXVerifier", "check_binding"]

MAX_QUOTE_BYTES: Final = 64 << 10
TEE_TYPE_TDX: Final = 0x81
ATTESTATION_KEY_ECDSA_P256: Final = 2
TCB_STATUSES: Final = frozenset(
    {
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
    }
)
_MEASUREMENT_BYTES: Final = 48
_CONFIG_KEYS: Final = frozenset({"root_ca", "collateral", "mrtd", "rtmr", "allowed_tcb_status", "allow_debug"})
_TD_DEBUG: Final = 1  # TD_ATTRIBUTES bit 0 (TUD.DEBUG)


def _dcap() -> Any:
    try:
        import dcap_qvl
    except ImportError as exc:
        raise ConfigError("TDX verification needs dcap-qvl: pip install 'weightvault[tdx]'") from exc
    return dcap_qvl


@dataclass(frozen=True, slots=True)
class AppraisedQuote:
    """A quote whose signatures, collateral, TCB and measurements passed; not yet bound to a session."""

    report_data: bytes
    claims: dict[str, ClaimValue]


def check_binding(quote: AppraisedQuote, context: AttestationContext) -> None:
    """Step 7: REPORT_DATA is ``report_data`` then 32 zero bytes (constant-time comparison).

    Raises:
        EvidenceError: ``tdx_report_data``.
    """
    bound = hmac.compare_digest(quote.report_data[:32], context.expected_report_data)
    if len(quote.report_data) != 64 or not bound or any(quote.report_data[32:]):
        raise EvidenceError("tdx_report_data: the quote is not bound to this challenge, tenant and key")


class TDXVerifier(BaseVerifier):
    """Appraises TDX quotes; see the module documentation for the checks and their order."""

    id = "tdx"
    claim_prefix = "tdx."
    device_kinds = frozenset()

    def __init__(
        self,
        collateral: Sequence[str],
        mrtd: Sequence[bytes],
        *,
        root_ca_der: bytes | None = None,
        rtmr: Mapping[int, Sequence[bytes]] | None = None,
        allowed_tcb_status: Sequence[str] = ("UpToDate",),
        allow_debug: bool = False,
    ) -> None:
        dcap = _dcap()
        if not mrtd:
            raise ConfigError("the tdx verifier needs the reference MRTD values it accepts (mrtd)")
        rtmr = dict(rtmr or {})
        if any(len(m) != _MEASUREMENT_BYTES for m in [*mrtd, *(v for vs in rtmr.values() for v in vs)]):
            raise ConfigError("TDX measurements are 48 bytes (96 hex digits)")
        if not set(rtmr) <= {0, 1, 2, 3} or any(not values for values in rtmr.values()):
            raise ConfigError("rtmr maps 0..3 to non-empty lists of reference values")
        unknown = set(allowed_tcb_status) - TCB_STATUSES
        if unknown or not allowed_tcb_status:
            raise ConfigError(f"allowed_tcb_status is a non-empty subset of {sorted(TCB_STATUSES)}")
        self._collateral: dict[str, Any] = {}
        for text in collateral:
            try:
                outer = parse_json(text, "tdx collateral", ConfigError)
                tcb_info = parse_json(outer["tcb_info"], "tdx collateral's tcb_info", ConfigError)  # type: ignore[index]
                fmspc = str(tcb_info["fmspc"]).lower()  # type: ignore[index]
                self._collateral[fmspc] = dcap.QuoteCollateralV3.from_json(text)
            except ConfigError:
                raise
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"tdx collateral does not parse ({exc})") from exc
        if not self._collateral:
            raise ConfigError("the tdx verifier needs collateral (PCCS or Intel PCS JSON) for the platforms it accepts")
        self.root_ca_der = root_ca_der
        self.mrtd = frozenset(mrtd)
        self.rtmr = {i: frozenset(values) for i, values in rtmr.items()}
        self.allowed_tcb_status = frozenset(allowed_tcb_status)
        self.allow_debug = allow_debug

    @classmethod
    def from_config(cls, section: Mapping[str, Any], base: Path) -> TDXVerifier:
        """Build from ``[verifiers.tdx]`` (docs/attestation-cc.md).

        Raises:
            ConfigError: an unknown key, a value of the wrong type, or an unreadable file.
        """
        unknown = set(section) - _CONFIG_KEYS
        if unknown:
            raise ConfigError(f"[verifiers.tdx]: unknown key(s) {sorted(unknown)}")
        files = section.get("collateral", [])
        if not isinstance(files, list) or not all(isinstance(p, str) for p in files):
            raise ConfigError("[verifiers.tdx] collateral must be a list of JSON file paths")
        root = section.get("root_ca")
        if root is not None and not isinstance(root, str):
            raise ConfigError("[verifiers.tdx] root_ca is a certificate file (DER)")
        statuses = section.get("allowed_tcb_status", ["UpToDate"])
        if not isinstance(statuses, list) or not all(isinstance(s, str) for s in statuses):
            raise ConfigError("[verifiers.tdx] allowed_tcb_status must be a list of TCB statuses")
        allow_debug = section.get("allow_debug", False)
        if not isinstance(allow_debug, bool):
            raise ConfigError("[verifiers.tdx] allow_debug must be true or false")
        mrtd = _hex_list(section.get("mrtd", []), "mrtd")
        raw_rtmr = section.get("rtmr", {})
        if not isinstance(raw_rtmr, dict) or not all(k in ("0", "1", "2", "3") for k in raw_rtmr):
            raise ConfigError("[verifiers.tdx] rtmr maps 0..3 to lists of hex values")
        rtmr = {int(k): _hex_list(v, f"rtmr.{k}") for k, v in raw_rtmr.items()}
        try:
            collateral = [(base / p).read_text() for p in files]
            root_der = (base / root).read_bytes() if root is not None else None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"tdx verifier: cannot read {getattr(exc, 'filename', None) or exc}") from exc
        return cls(
            collateral,
            mrtd,
            root_ca_der=root_der,
            rtmr=rtmr,
            allowed_tcb_status=statuses,
            allow_debug=allow_debug,
        )

    def appraise(self, evidence: Mapping[str, Any], context: AttestationContext) -> AttestationResult:
        if set(evidence) != {"type", "quote"}:
            raise EvidenceError("tdx_evidence: tdx evidence is {type, quote}")
        quote = self.appraise_quote(
            decode_b64_field(evidence["quote"], "quote", limit=MAX_QUOTE_BYTES, code="tdx_evidence"), context.now
        )
        check_binding(quote, context)
        return AttestationResult(verifier=self.id, claims=quote.claims, evidence_digest=evidence_digest(evidence))

    def appraise_quote(self, raw: bytes, now: int) -> AppraisedQuote:
        """Steps 1-6 for one quote at time ``now`` (seconds)."""
        dcap = _dcap()
        if len(raw) < 48 or len(raw) > MAX_QUOTE_BYTES:
            raise EvidenceError(f"tdx_evidence: a quote is 48 to {MAX_QUOTE_BYTES} bytes, not {len(raw)}")
        version, key_type, tee_type = struct.unpack_from("<HHI", raw, 0)
        if version not in (4, 5) or tee_type != TEE_TYPE_TDX or key_type != ATTESTATION_KEY_ECDSA_P256:
            raise EvidenceError(
                f"tdx_quote_version: version {version}, TEE type {tee_type:#x}, key type {key_type} "
                "(a TDX quote is version 4 or 5, TEE type 0x81, ECDSA P-256)"
            )
        try:
            parsed = dcap.parse_quote(raw)
            extension = parsed.pck_extension()
        except ValueError as exc:
            raise EvidenceError(f"tdx_quote: the quote does not parse ({exc})") from exc
        if extension is None:
            raise EvidenceError("tdx_quote: the quote carries no PCK certificate")
        fmspc = bytes(extension.fmspc).hex()
        collateral = self._collateral.get(fmspc)
        if collateral is None:
            raise EvidenceError(f"tdx_collateral_missing: no collateral is configured for FMSPC {fmspc}")
        try:
            if self.root_ca_der is None:
                verified = dcap.verify(raw, collateral, now)
            else:
                verified = dcap.verify_with_root_ca(raw, collateral, self.root_ca_der, now)
        except ValueError as exc:
            raise EvidenceError(_dcap_code(str(exc))) from exc
        status = str(verified.status)
        if status not in self.allowed_tcb_status:
            raise EvidenceError(f"tdx_tcb_status: the platform's TCB status is {status}")
        body = next(iter(json.loads(verified.to_json())["report"].values()))  # noqa: TID251 - dcap-qvl's own output, of a verified quote
        report = {k: bytes.fromhex(v) for k, v in body.items() if isinstance(v, str)}
        attributes = int.from_bytes(report["td_attributes"], "little")
        if attributes & _TD_DEBUG and not self.allow_debug:
            raise EvidenceError("tdx_debug: the TD is debuggable (the host can read its memory)")
        if report["mr_td"] not in self.mrtd:
            raise EvidenceError(f"tdx_measurement: MRTD {report['mr_td'].hex()} is not a reference value")
        for index, accepted in sorted(self.rtmr.items()):
            if report[f"rt_mr{index}"] not in accepted:
                raise EvidenceError(f"tdx_rtmr: RTMR{index} is not one of its reference values")
        claims: dict[str, ClaimValue] = {
            "tdx.quote_version": version,
            "tdx.fmspc": fmspc,
            "tdx.tcb_status": status,
            "tdx.advisory_ids": [str(a) for a in verified.advisory_ids],
            "tdx.mrtd": report["mr_td"].hex(),
            "tdx.mrconfigid": report["mr_config_id"].hex(),
            "tdx.mrowner": report["mr_owner"].hex(),
            "tdx.mrownerconfig": report["mr_owner_config"].hex(),
            "tdx.mrseam": report["mr_seam"].hex(),
            "tdx.tee_tcb_svn": report["tee_tcb_svn"].hex(),
            "tdx.attributes.debug": bool(attributes & _TD_DEBUG),
            "tdx.td_attributes": report["td_attributes"].hex(),
        }
        for index in range(4):
            claims[f"tdx.rtmr{index}"] = report[f"rt_mr{index}"].hex()
        return AppraisedQuote(report["report_data"], claims)


def _hex_list(value: object, what: str) -> list[bytes]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"[verifiers.tdx] {what} must be a list of hex strings")
    try:
        return [bytes.fromhex(v) for v in value]
    except ValueError as exc:
        raise ConfigError(f"[verifiers.tdx] {what} must be hex") from exc


def _dcap_code(message: str) -> str:
    """dcap-qvl's error, prefixed with the weightvault code it falls under."""
    lowered = message.lower()
    if "expired" in lowered or "in the future" in lowered or "not valid" in lowered:
        code = "tdx_collateral_expired"
    elif "revoked" in lowered:
        code = "tdx_revoked"
    elif "no matching tcb level" in lowered:
        code = "tdx_tcb_level"
    elif "debug mode is enabled" in lowered:  # dcap-qvl refuses a debuggable TD before we look
        code = "tdx_debug"
    else:
        code = "tdx_quote"
    return f"{code}: {message}"
