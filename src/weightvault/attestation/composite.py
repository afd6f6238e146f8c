"""Composite evidence: one CPU TEE's evidence and its GPUs' evidence, appraised together.

Evidence: ``{"type": "composite", "cpu": <evidence of a CPU verifier>, "gpu": <nvidia-gpu evidence>}``.

The CPU evidence is bound to the session as any evidence is (its report data is the
session's ``report_data``). Every GPU report must then carry, as its SPDM nonce,

    ``gpu_nonce = SHA-256("weightvault/composite-gpu-nonce/v1" || report_data || SHA-256(JCS(cpu)))``

so a GPU report is bound both to this challenge (and tenant, and ephemeral key) and to
these very CPU evidence bytes: a report from another session, or one produced for other
CPU evidence, does not verify beside this CPU report (``gpu_nonce``). What it cannot
prove, until PCIe TDISP binds a device to a TEE, is that the GPU sits in the same
machine: a guest that controls a GPU elsewhere could relay the nonce to it. Pinning the
GPUs (``ueids`` in the nvidia-gpu configuration, or ``gpu.ueids`` in a policy) narrows
that to the GPUs an operator named.

The result's claims are the CPU verifier's and the GPU verifier's, each in its own
namespace, and ``composite.verifiers``; its ``parts`` name both verifiers, which is what a
policy's ``"verifiers": {"allOf": [...]}`` checks (:mod:`weightvault.attestation.policy`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final, Protocol

from weightvault.attestation.interfaces import (
    AttestationContext,
    AttestationResult,
    Verifier,
    check_result,
    evidence_digest,
)
from weightvault.attestation.nvidia.verifier import NvidiaGpuVerifier
from weightvault.encoding import canonical_json
from weightvault.errors import ConfigError, EvidenceError

__all__ = ["CPU_VERIFIERS", "CompositeAttester", "CompositeVerifier", "gpu_nonce"]

_DOMAIN: Final = b"weightvault/composite-gpu-nonce/v1"
#: The verifiers whose evidence may stand as the CPU part (never insecure-sample: a composite
#: result must rest on hardware evidence in both its parts).
CPU_VERIFIERS: Final = frozenset({"sev-snp", "tdx", "tpm"})
_FIELDS: Final = frozenset({"type", "cpu", "gpu"})


def gpu_nonce(report_data: bytes, cpu_evidence: Mapping[str, Any]) -> bytes:
    """The SPDM nonce every GPU of composite evidence must sign (see the module documentation)."""
    cpu_digest = hashlib.sha256(canonical_json(dict(cpu_evidence))).digest()
    return hashlib.sha256(_DOMAIN + report_data + cpu_digest).digest()


class CompositeVerifier:
    """Appraises a CPU TEE's evidence, then its GPUs' evidence bound to it."""

    id = "composite"

    def __init__(self, verifiers: Mapping[str, Verifier]) -> None:
        gpu = verifiers.get("nvidia-gpu")
        if not isinstance(gpu, NvidiaGpuVerifier):
            raise ConfigError("the composite verifier needs the nvidia-gpu verifier allowlisted and configured")
        self.cpu = {vid: v for vid, v in verifiers.items() if vid in CPU_VERIFIERS}
        if not self.cpu:
            raise ConfigError("the composite verifier needs a CPU verifier allowlisted (sev-snp, tdx or tpm)")
        self.gpu = gpu
        prefixes = {"composite.", gpu.claim_prefix}
        for v in self.cpu.values():
            prefixes.update(_prefixes(v))
        self.claim_prefix: tuple[str, ...] = tuple(sorted(prefixes))
        # Only the CPU part can authenticate an enrolled device (a TPM quote does).
        self.device_kinds: frozenset[str] = frozenset().union(*(v.device_kinds for v in self.cpu.values()))

    def verify(self, evidence: Mapping[str, Any], context: AttestationContext) -> AttestationResult:
        """Raises :class:`~weightvault.errors.EvidenceError` (or the CPU verifier's error) when any part fails."""
        if evidence.get("type") != self.id or set(evidence) != _FIELDS:
            raise EvidenceError("composite_evidence: composite evidence is {type, cpu, gpu}")
        cpu, gpu = evidence["cpu"], evidence["gpu"]
        if not isinstance(cpu, dict) or not isinstance(gpu, dict):
            raise EvidenceError("composite_evidence: cpu and gpu are evidence objects")
        kind = cpu.get("type")
        cpu_verifier = self.cpu.get(kind) if isinstance(kind, str) else None
        if cpu_verifier is None:
            raise EvidenceError("composite_evidence: the cpu evidence is not of a CPU verifier this broker accepts")
        cpu_result = cpu_verifier.verify(cpu, context)
        check_result(cpu_verifier, cpu_result)
        gpu_result = self.gpu.appraise_bound(gpu, context, gpu_nonce(context.expected_report_data, cpu))
        parts = (cpu_result.verifier, gpu_result.verifier)
        return AttestationResult(
            verifier=self.id,
            claims={**cpu_result.claims, **gpu_result.claims, "composite.verifiers": list(parts)},
            evidence_digest=evidence_digest(evidence),
            device_id=cpu_result.device_id,
            device_state=cpu_result.device_state,
            parts=parts,
        )


def _prefixes(verifier: Verifier) -> tuple[str, ...]:
    prefix = verifier.claim_prefix
    return (prefix,) if isinstance(prefix, str) else tuple(prefix)


class _CpuAttester(Protocol):
    def evidence(self, report_data: bytes, challenge: Mapping[str, Any]) -> dict[str, Any]: ...


class _GpuAttester(Protocol):
    def gpu_evidence(self, nonce: bytes) -> dict[str, Any]: ...


class CompositeAttester:
    """Composite evidence from a CPU TEE's attester and a GPU attester (the Attester protocol).

    The CPU evidence is gathered first, over the session's ``report_data``; the GPUs then
    sign :func:`gpu_nonce` of it, which binds them to that very evidence.
    """

    def __init__(self, cpu: _CpuAttester, gpu: _GpuAttester) -> None:
        self.cpu, self.gpu = cpu, gpu

    def evidence(self, report_data: bytes, challenge: Mapping[str, Any]) -> dict[str, Any]:
        cpu = self.cpu.evidence(report_data, challenge)
        return {"type": "composite", "cpu": cpu, "gpu": self.gpu.gpu_evidence(gpu_nonce(report_data, cpu))}

    def close(self) -> None:
        for part in (self.cpu, self.gpu):
            close = getattr(part, "close", None)
            if close is not None:
                close()
