"""The ``nvidia-gpu`` verifier: NVIDIA GPU attestation reports, checked natively against pinned roots
and reference integrity manifests provided offline.

Evidence: ``{"type": "nvidia-gpu", "gpus": [{"report": b64, "certificates": b64, "cc_mode": "on"}, …]}``,
one entry per GPU (at most :data:`MAX_GPUS`). ``report`` is the SPDM GET_MEASUREMENTS
request and response (:mod:`.report`), ``certificates`` the GPU's attestation certificate
chain, leaf first (PEM, or DER back to back as NVML returns it), and ``cc_mode`` what NVML
says of the GPU's confidential-computing mode.

The checks, for each GPU in order; each failure raises
:class:`~weightvault.errors.EvidenceError` whose message starts with its code:

1. shape: known fields only, base64, sizes (``gpu_evidence``);
2. the report's layout (``gpu_report``, ``gpu_report_version``);
3. the chain up to a pinned NVIDIA device root, within validity, not revoked when CRLs are
   configured (``gpu_chain``, ``gpu_certificate*``, ``gpu_crl_stale``);
4. the report's ECDSA P-384 signature under the attestation key (``gpu_signature``);
5. the FWID the report names is the one the attestation certificate certifies (``gpu_fwid``);
6. the request's nonce is the expected one (``gpu_nonce``), compared in constant time: the
   session's ``report_data`` for GPU evidence alone, or, inside composite evidence, a
   nonce derived from ``report_data`` and the CPU evidence
   (:func:`weightvault.attestation.composite.gpu_nonce`);
7. the GPU is in CC mode (``gpu_cc_mode``) and, if the configuration pins devices, its
   ``ueid`` is one of them (``gpu_ueid``); no GPU appears twice (``gpu_duplicate``);
8. a driver RIM for the reported driver version and a VBIOS RIM for the reported VBIOS
   version are configured (``gpu_rim_missing``), their signer chains are valid now
   (``gpu_rim_expired``, unless ``allow_expired_rims``), and every active index of both
   holds one of its golden values (``gpu_measurement``).

Only then are the claims ``gpu.*`` returned: ``gpu.count``, ``gpu.cc_mode``,
``gpu.driver_version`` (when every GPU runs the same driver), ``gpu.vbios_versions``,
``gpu.ueids``, ``gpu.hwmodels``, and per GPU ``gpu.<i>.ueid``, ``.hwmodel``,
``.driver_version``, ``.vbios_version``, ``.project``, ``.project_sku``.

What ``cc_mode`` is worth: it is the guest's word, not the GPU's. NVML serves the report
only in CC (or protected PCIe) mode, and the RIMs' golden values are those of a GPU whose
firmware runs as released, so the authenticated guarantee comes from steps 3 to 8; the
field makes a GPU left in DevTools mode fail with a clear reason instead of a measurement
mismatch.
"""

from __future__ import annotations

import datetime
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
from weightvault.attestation.nvidia.report import MAX_REPORT_BYTES, GpuReport, parse_report
from weightvault.attestation.nvidia.rim import Rim, read_rim
from weightvault.crypto.nvidia import (
    MAX_CHAIN_BYTES,
    NVIDIA_DEVICE_ROOT_SHA256,
    NVIDIA_RIM_ROOT_SHA256,
    DeviceTrust,
    GpuIdentity,
    fingerprint,
    load_root,
    verify_report_signature,
    verify_rim,
)
from weightvault.errors import ConfigError, EvidenceError

__all__ = ["MAX_GPUS", "NvidiaGpuVerifier"]

MAX_GPUS: Final = 16
_FIELDS: Final = frozenset({"type", "gpus"})
_GPU_FIELDS: Final = frozenset({"report", "certificates", "cc_mode"})
_CONFIG_KEYS: Final = frozenset(
    {"device_roots", "rim_roots", "driver_rims", "vbios_rims", "crls", "ueids", "allow_expired_rims", "test_roots"}
)


class NvidiaGpuVerifier(BaseVerifier):
    """Appraises NVIDIA GPU evidence; see the module documentation for the checks and their order."""

    id = "nvidia-gpu"
    claim_prefix = "gpu."
    device_kinds = frozenset()

    def __init__(
        self,
        trust: DeviceTrust,
        rims: Sequence[Rim],
        *,
        ueids: Sequence[str] = (),
        allow_expired_rims: bool = False,
    ) -> None:
        self.trust = trust
        self.driver_rims: dict[str, Rim] = {}
        self.vbios_rims: dict[str, Rim] = {}
        for rim in rims:
            table = self.driver_rims if rim.kind == "driver" else self.vbios_rims
            if rim.version in table:
                raise ConfigError(
                    f"two {rim.kind} RIMs for version {rim.version}: {table[rim.version].source}, {rim.source}"
                )
            table[rim.version] = rim
        if not self.driver_rims or not self.vbios_rims:
            raise ConfigError("the nvidia-gpu verifier needs at least one driver RIM and one VBIOS RIM")
        self.ueids = frozenset(ueids)
        self.allow_expired_rims = allow_expired_rims

    @classmethod
    def from_config(cls, section: Mapping[str, Any], base: Path) -> NvidiaGpuVerifier:
        """Build from ``[verifiers.nvidia_gpu]`` (docs/attestation-cc.md).

        ``device_roots`` and ``rim_roots``: PEM files of the pinned roots (NVIDIA's own unless
        ``test_roots = true``); ``driver_rims`` and ``vbios_rims``: RIM files, each verified
        here, once; ``crls``: CRL files of NVIDIA's device intermediates; ``ueids``: the GPUs
        accepted (default: any GPU NVIDIA made); ``allow_expired_rims``.

        Raises:
            ConfigError: an unknown key, a value of the wrong type, an unreadable file, a
                root that is not NVIDIA's, or a RIM whose signature or chain does not verify.
        """
        unknown = set(section) - _CONFIG_KEYS
        if unknown:
            raise ConfigError(f"[verifiers.nvidia_gpu]: unknown key(s) {sorted(unknown)}")
        lists = {}
        for key in ("device_roots", "rim_roots", "driver_rims", "vbios_rims", "crls", "ueids"):
            value = section.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"[verifiers.nvidia_gpu] {key} must be a list of strings")
            lists[key] = value
        flags = {}
        for key in ("allow_expired_rims", "test_roots"):
            value = section.get(key, False)
            if not isinstance(value, bool):
                raise ConfigError(f"[verifiers.nvidia_gpu] {key} must be true or false")
            flags[key] = value
        try:
            device_roots = [load_root((base / p).read_bytes(), p) for p in lists["device_roots"]]
            rim_roots = [load_root((base / p).read_bytes(), p) for p in lists["rim_roots"]]
            crls = [DeviceTrust.parse_crl((base / p).read_bytes(), p) for p in lists["crls"]]
            rims = [
                read_rim(verify_rim((base / p).read_bytes(), rim_roots, p), kind, p)
                for kind in ("driver", "vbios")
                for p in lists[f"{kind}_rims"]
            ]
        except OSError as exc:
            raise ConfigError(f"nvidia-gpu verifier: cannot read {exc.filename}") from exc
        if not rim_roots:
            raise ConfigError("[verifiers.nvidia_gpu] rim_roots: the pinned NVIDIA RIM root is required")
        if not flags["test_roots"]:
            for root, pinned, what in [
                *((r, NVIDIA_DEVICE_ROOT_SHA256, "device_roots") for r in device_roots),
                *((r, NVIDIA_RIM_ROOT_SHA256, "rim_roots") for r in rim_roots),
            ]:
                if fingerprint(root) != pinned:
                    raise ConfigError(
                        f"[verifiers.nvidia_gpu] {what}: not NVIDIA's root (compare its SHA-256 with NVIDIA's); "
                        "test_roots = true accepts other roots, for tests only"
                    )
        return cls(
            DeviceTrust(device_roots, crls),
            rims,
            ueids=lists["ueids"],
            allow_expired_rims=flags["allow_expired_rims"],
        )

    def appraise(self, evidence: Mapping[str, Any], context: AttestationContext) -> AttestationResult:
        return self.appraise_bound(evidence, context, context.expected_report_data)

    def appraise_bound(
        self, evidence: Mapping[str, Any], context: AttestationContext, nonce: bytes
    ) -> AttestationResult:
        """Appraise every GPU of ``evidence`` against the expected SPDM ``nonce``.

        Raises:
            EvidenceError: any check of the module documentation fails, for any GPU.
        """
        if evidence.get("type") != self.id or set(evidence) != _FIELDS:
            raise EvidenceError("gpu_evidence: nvidia-gpu evidence is {type, gpus}")
        gpus = evidence["gpus"]
        if not isinstance(gpus, list) or not 1 <= len(gpus) <= MAX_GPUS:
            raise EvidenceError(f"gpu_evidence: gpus lists 1 to {MAX_GPUS} GPUs")
        moment = datetime.datetime.fromtimestamp(context.now, datetime.UTC)
        appraised: list[tuple[GpuReport, GpuIdentity]] = []
        for position, gpu in enumerate(gpus):
            report, identity = self._appraise_one(gpu, position, context.now, moment, nonce)
            if any(identity.ueid == seen.ueid for _, seen in appraised):
                raise EvidenceError(f"gpu_duplicate: GPU {position} appears twice in the evidence")
            appraised.append((report, identity))
        return AttestationResult(verifier=self.id, claims=_claims(appraised), evidence_digest=evidence_digest(evidence))

    def _appraise_one(
        self, gpu: object, position: int, now: int, moment: datetime.datetime, nonce: bytes
    ) -> tuple[GpuReport, GpuIdentity]:
        where = f"GPU {position}"
        if not isinstance(gpu, dict) or set(gpu) != _GPU_FIELDS:
            raise EvidenceError(f"gpu_evidence: {where} is {{report, certificates, cc_mode}}")
        raw = decode_b64_field(gpu["report"], f"{where}'s report", limit=MAX_REPORT_BYTES, code="gpu_evidence")
        chain = decode_b64_field(
            gpu["certificates"], f"{where}'s certificates", limit=MAX_CHAIN_BYTES, code="gpu_evidence"
        )
        report = parse_report(raw)
        identity = self.trust.endorse(chain, now)
        if not verify_report_signature(identity.public_key, report.signature, report.signed):
            raise EvidenceError(f"gpu_signature: {where}'s report does not verify under its attestation key")
        if report.fwid is not None and (identity.fwid is None or not hmac.compare_digest(report.fwid, identity.fwid)):
            raise EvidenceError(f"gpu_fwid: {where}'s report names other firmware than its attestation certificate")
        if not hmac.compare_digest(report.request_nonce, nonce):
            raise EvidenceError(f"gpu_nonce: {where}'s report is not bound to this challenge")
        if gpu["cc_mode"] != "on":
            raise EvidenceError(
                f"gpu_cc_mode: {where} is not in confidential-computing mode ({gpu['cc_mode']!r})"[:200]
            )
        if self.ueids and identity.ueid not in self.ueids:
            raise EvidenceError(f"gpu_ueid: {where} ({identity.ueid}) is not one of the configured GPUs")
        self._compare(report, where, moment)
        return report, identity

    def _compare(self, report: GpuReport, where: str, moment: datetime.datetime) -> None:
        rims = []
        for kind, version, table in (
            ("driver", report.driver_version, self.driver_rims),
            ("VBIOS", report.vbios_version, self.vbios_rims),
        ):
            rim = table.get(version.upper()) if version else None
            if rim is None:
                raise EvidenceError(f"gpu_rim_missing: no {kind} RIM is configured for {where}'s version {version}")
            if not self.allow_expired_rims and not rim.valid_at(moment):
                raise EvidenceError(f"gpu_rim_expired: the {kind} RIM {rim.source}'s signer is not valid now")
            rims.append(rim)
        overlap = set(rims[0].golden) & set(rims[1].golden)
        if overlap:
            raise EvidenceError(f"gpu_measurement: the driver and VBIOS RIMs both measure index {min(overlap)}")
        for rim in rims:
            for index, golden in sorted(rim.golden.items()):
                if report.measurements.get(index) not in golden:
                    raise EvidenceError(
                        f"gpu_measurement: {where}'s measurement {index} is not a reference value of {rim.source}"
                    )


def _claims(appraised: Sequence[tuple[GpuReport, GpuIdentity]]) -> dict[str, ClaimValue]:
    claims: dict[str, ClaimValue] = {"gpu.count": len(appraised), "gpu.cc_mode": "on"}
    drivers = {r.driver_version or "" for r, _ in appraised}
    if len(drivers) == 1:
        claims["gpu.driver_version"] = drivers.pop()
    claims["gpu.vbios_versions"] = sorted({r.vbios_version or "" for r, _ in appraised})
    claims["gpu.ueids"] = [i.ueid for _, i in appraised]
    claims["gpu.hwmodels"] = sorted({i.hwmodel for _, i in appraised})
    for n, (report, identity) in enumerate(appraised):
        claims[f"gpu.{n}.ueid"] = identity.ueid
        claims[f"gpu.{n}.hwmodel"] = identity.hwmodel
        claims[f"gpu.{n}.driver_version"] = report.driver_version or ""
        claims[f"gpu.{n}.vbios_version"] = report.vbios_version or ""
        claims[f"gpu.{n}.project"] = report.project or ""
        claims[f"gpu.{n}.project_sku"] = report.project_sku or ""
    return claims
