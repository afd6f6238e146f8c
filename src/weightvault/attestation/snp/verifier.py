"""The ``sev-snp`` verifier: AMD SEV-SNP attestation reports, checked natively against pinned AMD roots.

Evidence: ``{"type": "sev-snp", "report": b64, "endorsement": b64}``, where ``report`` is
the 1184-byte attestation report the guest obtained (configfs-tsm ``outblob``, or
``/dev/sev-guest``) and ``endorsement`` the DER (or PEM) VCEK or VLEK certificate that
signs it (the ``auxblob`` certificate table, or AMD KDS for the report's chip id and TCB).

The checks, in order; each failure raises :class:`~weightvault.errors.EvidenceError`
whose message starts with its code, which the broker records in the audit log:

1. shape: known fields only, base64, sizes (``snp_evidence``);
2. the report's layout, version and signature algorithm (``snp_report_*``);
3. the endorsement chains to a pinned ARK, within validity, not revoked (``snp_chain``,
   ``snp_certificate_*``, ``snp_crl_stale``); its kind matches the report's SIGNING_KEY;
4. the report's ECDSA P-384 signature under the endorsement key (``snp_signature``);
5. the endorsement certifies this report: its TCB levels equal REPORTED_TCB, and a VCEK's
   hardware id equals CHIP_ID (``snp_tcb_mismatch``, ``snp_chip_id_mismatch``);
6. REPORT_DATA is the session's 32-byte ``report_data`` followed by 32 zero bytes
   (``snp_report_data``), compared in constant time;
7. guest policy: no debugging, no migration agent, SMT only if allowed, VMPL at most the
   configured one (``snp_debug``, ``snp_migration_agent``, ``snp_smt``, ``snp_vmpl``);
8. REPORTED_TCB at or above the configured minimum (``snp_tcb_below_minimum``);
9. MEASUREMENT in the configured reference set (``snp_measurement``).

Only then are the claims ``snp.*`` returned. The evidence names no enrolled device: an
SNP guest is identified by what it measures and by its chip (``snp.chip_id``), which
policies can pin.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
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
from weightvault.attestation.snp.report import REPORT_SIZE, Report, TcbVersion, parse_report
from weightvault.crypto.sev import MAX_CERT_BYTES, ProductChain, SnpTrust, verify_report_signature
from weightvault.errors import ConfigError, EvidenceError

__all__ = ["SNPVerifier"]

_FIELDS: Final = frozenset({"type", "report", "endorsement"})
_MEASUREMENT_BYTES: Final = 48
_CONFIG_KEYS: Final = frozenset(
    {
        "cert_chains",
        "crls",
        "measurements",
        "min_tcb",
        "allow_debug",
        "allow_migration_agent",
        "allow_smt",
        "max_vmpl",
        "test_roots",
    }
)


class SNPVerifier(BaseVerifier):
    """Appraises SEV-SNP reports; see the module documentation for the checks and their order."""

    id = "sev-snp"
    claim_prefix = "snp."
    device_kinds = frozenset()

    def __init__(
        self,
        trust: SnpTrust,
        measurements: Sequence[bytes],
        *,
        min_tcb: TcbVersion | None = None,
        allow_debug: bool = False,
        allow_migration_agent: bool = False,
        allow_smt: bool = True,
        max_vmpl: int = 0,
    ) -> None:
        if not measurements:
            raise ConfigError("the sev-snp verifier needs the reference measurements it accepts (measurements)")
        if any(len(m) != _MEASUREMENT_BYTES for m in measurements):
            raise ConfigError("an SEV-SNP measurement is 48 bytes (96 hex digits)")
        if not 0 <= max_vmpl <= 3:
            raise ConfigError("max_vmpl is 0..3")
        self.trust = trust
        self.measurements = frozenset(measurements)
        self.min_tcb = min_tcb or TcbVersion(0, 0, 0, 0)
        self.allow_debug = allow_debug
        self.allow_migration_agent = allow_migration_agent
        self.allow_smt = allow_smt
        self.max_vmpl = max_vmpl

    @classmethod
    def from_config(cls, section: Mapping[str, Any], base: Path) -> SNPVerifier:
        """Build from ``[verifiers.sev_snp]`` (docs/attestation-cc.md).

        ``cert_chains``: KDS ``cert_chain`` PEM files, one per product (and per VLEK ASVK);
        ``crls``: ``{product = file}`` of KDS CRLs (DER or PEM); ``measurements``: hex
        launch measurements; ``min_tcb``: ``{bootloader, tee, snp, microcode[, fmc]}``;
        ``allow_debug``, ``allow_migration_agent``, ``allow_smt``, ``max_vmpl``; ``test_roots``
        (default false: every chain's ARK must be AMD's own, :data:`~weightvault.crypto.sev.AMD_ARK_SHA256`).

        Raises:
            ConfigError: an unknown key, a value of the wrong type, or an unreadable or invalid file.
        """
        unknown = set(section) - _CONFIG_KEYS
        if unknown:
            raise ConfigError(f"[verifiers.sev_snp]: unknown key(s) {sorted(unknown)}")
        chains = section.get("cert_chains", [])
        crls = section.get("crls", {})
        hexes = section.get("measurements", [])
        if not isinstance(chains, list) or not all(isinstance(p, str) for p in chains):
            raise ConfigError("[verifiers.sev_snp] cert_chains must be a list of PEM file paths")
        if not isinstance(crls, dict) or not all(isinstance(v, str) for v in crls.values()):
            raise ConfigError("[verifiers.sev_snp] crls must map a product name to a CRL file")
        if not isinstance(hexes, list) or not all(isinstance(h, str) for h in hexes):
            raise ConfigError("[verifiers.sev_snp] measurements must be a list of hex strings")
        try:
            measurements = [bytes.fromhex(h) for h in hexes]
        except ValueError as exc:
            raise ConfigError("[verifiers.sev_snp] measurements must be hex") from exc
        flags = {}
        test_roots = section.get("test_roots", False)
        if not isinstance(test_roots, bool):
            raise ConfigError("[verifiers.sev_snp] test_roots must be true or false")
        for key, default in (("allow_debug", False), ("allow_migration_agent", False), ("allow_smt", True)):
            value = section.get(key, default)
            if not isinstance(value, bool):
                raise ConfigError(f"[verifiers.sev_snp] {key} must be true or false")
            flags[key] = value
        max_vmpl = section.get("max_vmpl", 0)
        if not isinstance(max_vmpl, int) or isinstance(max_vmpl, bool):
            raise ConfigError("[verifiers.sev_snp] max_vmpl must be an integer")
        min_tcb = _min_tcb(section.get("min_tcb", {}))
        try:
            pinned = []
            for path in chains:
                chain = ProductChain.from_pem((base / path).read_bytes(), source=path)
                if chain.product in crls:
                    chain = chain.with_crl((base / crls[chain.product]).read_bytes(), source=path)
                pinned.append(chain)
        except OSError as exc:
            raise ConfigError(f"sev-snp verifier: cannot read {exc.filename}") from exc
        foreign = [c.product for c in pinned if not c.is_amds]
        if foreign and not test_roots:
            raise ConfigError(
                f"[verifiers.sev_snp] the ARK of the {foreign[0]} chain is not AMD's (compare its SHA-256 with "
                "AMD's); test_roots = true accepts other roots, for tests only"
            )
        stray = set(crls) - {c.product for c in pinned}
        if stray:
            raise ConfigError(f"[verifiers.sev_snp] crls: no pinned cert_chain for {sorted(stray)}")
        trust = SnpTrust(pinned)
        return cls(trust, measurements, min_tcb=min_tcb, max_vmpl=max_vmpl, **flags)

    def appraise(self, evidence: Mapping[str, Any], context: AttestationContext) -> AttestationResult:
        if set(evidence) != _FIELDS:
            raise EvidenceError("snp_evidence: sev-snp evidence is {type, report, endorsement}")
        raw = decode_b64_field(evidence["report"], "report", limit=REPORT_SIZE, code="snp_evidence")
        cert = decode_b64_field(evidence["endorsement"], "endorsement", limit=MAX_CERT_BYTES, code="snp_evidence")
        report = parse_report(raw)
        if report.signing_key == "none":
            raise EvidenceError("snp_signing_key: the report is unsigned (SIGNING_KEY none)")
        endorsement = self.trust.endorse(cert, report.signing_key, context.now, turin=report.turin)
        if not verify_report_signature(endorsement.public_key, report.signature_r, report.signature_s, report.signed):
            raise EvidenceError("snp_signature: the report's signature does not verify under its endorsement key")
        if TcbVersion(**endorsement.levels) != report.reported_tcb:
            raise EvidenceError(
                f"snp_tcb_mismatch: the {report.signing_key.upper()} certifies another TCB than the report's"
            )
        masked = report.mask_chip_id or report.signing_key != "vcek"
        if not masked and not hmac.compare_digest(endorsement.hwid or b"", report.chip_id):
            raise EvidenceError("snp_chip_id_mismatch: the VCEK belongs to another chip than the report's")
        bound = hmac.compare_digest(report.report_data[:32], context.expected_report_data)
        if not bound or any(report.report_data[32:]):
            raise EvidenceError("snp_report_data: the report is not bound to this challenge, tenant and key")
        self._check_policy(report)
        if not report.reported_tcb.at_least(self.min_tcb):
            raise EvidenceError(
                f"snp_tcb_below_minimum: reported TCB {report.reported_tcb.as_claims()} "
                f"is below the minimum {self.min_tcb.as_claims()}"
            )
        if report.measurement not in self.measurements:
            raise EvidenceError(
                f"snp_measurement: launch measurement {report.measurement.hex()} is not a reference value"
            )
        return AttestationResult(
            verifier=self.id,
            claims=_claims(report, endorsement.product, endorsement.kind),
            evidence_digest=evidence_digest(evidence),
        )

    def _check_policy(self, report: Report) -> None:
        policy = report.policy
        if policy.debug and not self.allow_debug:
            raise EvidenceError("snp_debug: the guest policy allows debugging (the host can read guest memory)")
        if policy.migrate_ma and not self.allow_migration_agent:
            raise EvidenceError("snp_migration_agent: the guest policy allows a migration agent")
        if policy.smt and not self.allow_smt:
            raise EvidenceError("snp_smt: the guest policy allows SMT, which this broker refuses")
        if report.vmpl > self.max_vmpl:
            raise EvidenceError(f"snp_vmpl: the report was requested at VMPL {report.vmpl} (at most {self.max_vmpl})")


def _min_tcb(value: object) -> TcbVersion:
    if not isinstance(value, dict) or not set(value) <= {"bootloader", "tee", "snp", "microcode", "fmc"}:
        raise ConfigError("[verifiers.sev_snp] min_tcb is {bootloader, tee, snp, microcode, fmc} (levels 0..255)")
    levels = {k: value.get(k, 0) for k in ("bootloader", "tee", "snp", "microcode")}
    fmc = value.get("fmc")
    for level in [*levels.values(), *([fmc] if fmc is not None else [])]:
        if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level <= 255:
            raise ConfigError("[verifiers.sev_snp] min_tcb levels are integers 0..255")
    return TcbVersion(fmc=fmc, **levels)


def _claims(report: Report, product: str, kind: str) -> dict[str, ClaimValue]:
    claims: dict[str, ClaimValue] = {
        "snp.report_version": report.version,
        "snp.product": product,
        "snp.signing_key": kind,
        "snp.measurement": report.measurement.hex(),
        "snp.host_data": report.host_data.hex(),
        "snp.id_key_digest": report.id_key_digest.hex(),
        "snp.author_key_digest": report.author_key_digest.hex(),
        "snp.family_id": report.family_id.hex(),
        "snp.image_id": report.image_id.hex(),
        "snp.guest_svn": report.guest_svn,
        "snp.vmpl": report.vmpl,
        "snp.policy.debug": report.policy.debug,
        "snp.policy.migrate_ma": report.policy.migrate_ma,
        "snp.policy.smt": report.policy.smt,
        "snp.policy.single_socket": report.policy.single_socket,
        "snp.policy.abi": f"{report.policy.abi_major}.{report.policy.abi_minor}",
    }
    for name, level in report.reported_tcb.as_claims().items():
        claims[f"snp.tcb.{name}"] = level
    if not report.mask_chip_id:
        claims["snp.chip_id"] = report.chip_id.hex()
    return claims
