"""Composite evidence: an SEV-SNP guest and its GPUs, each GPU bound to the challenge and to the CPU
evidence, so that no GPU report from another session or for other CPU evidence can be spliced in."""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import require_module
from tests.snp_evidence import Chip, evidence, hierarchy
from weightvault.attestation.interfaces import AttestationContext, check_result
from weightvault.attestation.registry import VerifierRegistry
from weightvault.attestation.snp.verifier import SNPVerifier
from weightvault.crypto.sev import ProductChain, SnpTrust
from weightvault.errors import ConfigError, EvidenceError

require_module("signxml")

from tests.nvidia_evidence import NOW, DeviceRoots, Gpu, MadeGpus, RimSigner, verifier_section  # noqa: E402
from weightvault.attestation.composite import CompositeAttester, CompositeVerifier, gpu_nonce  # noqa: E402
from weightvault.attestation.nvidia.verifier import NvidiaGpuVerifier  # noqa: E402

MEASUREMENT = b"\x11" * 48
REPORT_DATA = hashlib.sha256(b"challenge, tenant and key").digest()
TODAY = int(NOW.timestamp())


class Guest:
    def __init__(self, chip: Chip) -> None:
        self.chip = chip

    def evidence(self, report_data: bytes, challenge: Mapping[str, Any]) -> dict[str, Any]:
        return evidence(self.chip.report(report_data), self.chip.der)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[CompositeVerifier, Guest, DeviceRoots, NvidiaGpuVerifier]:
    tmp = tmp_path_factory.mktemp("composite")
    roots = DeviceRoots()
    section = tomllib.loads(verifier_section(tmp, roots, RimSigner()))["verifiers"]["nvidia_gpu"]
    gpu = NvidiaGpuVerifier.from_config(section, tmp)
    milan = hierarchy("Milan")
    snp = SNPVerifier(SnpTrust([ProductChain.from_pem(milan.chain_pem)]), [MEASUREMENT])
    return CompositeVerifier({"sev-snp": snp, "nvidia-gpu": gpu}), Guest(Chip(milan)), roots, gpu


def _context(report_data: bytes = REPORT_DATA) -> AttestationContext:
    return AttestationContext("acme", "c1", b"n" * 32, report_data, TODAY)


def _refused(verifier: CompositeVerifier, doc: Mapping[str, Any], code: str) -> None:
    with pytest.raises(EvidenceError) as caught:
        verifier.verify(doc, _context())
    assert str(caught.value).startswith(code + ":"), str(caught.value)


def test_an_snp_guest_and_eight_gpus_bound_to_it(setup: Any) -> None:
    verifier, guest, roots, _ = setup
    gpus = [Gpu(roots) for _ in range(8)]
    doc = CompositeAttester(guest, MadeGpus(gpus)).evidence(REPORT_DATA, {})
    result = verifier.verify(doc, _context())
    check_result(verifier, result)
    assert result.verifier == "composite"
    assert result.parts == ("sev-snp", "nvidia-gpu")
    assert result.verified_by == {"composite", "sev-snp", "nvidia-gpu"}
    assert result.claims["snp.measurement"] == MEASUREMENT.hex()
    assert result.claims["gpu.count"] == 8
    assert result.claims["composite.verifiers"] == ["sev-snp", "nvidia-gpu"]
    assert result.device_id is None


def test_a_gpu_report_from_another_session_is_not_spliced_in(setup: Any) -> None:
    verifier, guest, roots, _ = setup
    cpu = guest.evidence(REPORT_DATA, {})
    other_session = hashlib.sha256(b"another challenge").digest()
    spliced = MadeGpus([Gpu(roots)]).gpu_evidence(gpu_nonce(other_session, cpu))
    _refused(verifier, {"type": "composite", "cpu": cpu, "gpu": spliced}, "gpu_nonce")


def test_gpu_reports_made_for_other_cpu_evidence_are_refused(setup: Any) -> None:
    verifier, guest, roots, _ = setup
    cpu = guest.evidence(REPORT_DATA, {})
    other_cpu = guest.evidence(REPORT_DATA, {})  # the same guest, the same session: another report
    assert other_cpu != cpu
    gpus = MadeGpus([Gpu(roots), Gpu(roots)])
    _refused(
        verifier,
        {"type": "composite", "cpu": cpu, "gpu": gpus.gpu_evidence(gpu_nonce(REPORT_DATA, other_cpu))},
        "gpu_nonce",
    )
    # Nor GPU evidence bound to the session alone, as if it were presented without a CPU.
    _refused(verifier, {"type": "composite", "cpu": cpu, "gpu": gpus.gpu_evidence(REPORT_DATA)}, "gpu_nonce")


def test_one_gpu_of_several_from_elsewhere(setup: Any) -> None:
    verifier, guest, roots, _ = setup
    cpu = guest.evidence(REPORT_DATA, {})
    good = MadeGpus([Gpu(roots)]).gpu_evidence(gpu_nonce(REPORT_DATA, cpu))
    foreign = MadeGpus([Gpu(roots)]).gpu_evidence(hashlib.sha256(b"elsewhere").digest())
    mixed = {"type": "nvidia-gpu", "gpus": good["gpus"] + foreign["gpus"]}
    _refused(verifier, {"type": "composite", "cpu": cpu, "gpu": mixed}, "gpu_nonce")


def test_the_cpu_part_is_verified_first_and_must_be_a_cpu_tee(setup: Any) -> None:
    verifier, guest, roots, _ = setup
    bad_cpu = evidence(guest.chip.report(REPORT_DATA, measurement=b"\x22" * 48), guest.chip.der)
    gpus = MadeGpus([Gpu(roots)]).gpu_evidence(gpu_nonce(REPORT_DATA, bad_cpu))
    _refused(verifier, {"type": "composite", "cpu": bad_cpu, "gpu": gpus}, "snp_measurement")
    cpu = guest.evidence(REPORT_DATA, {})
    gpu = MadeGpus([Gpu(roots)]).gpu_evidence(gpu_nonce(REPORT_DATA, cpu))
    for shape in (
        {"type": "composite", "cpu": {"type": "insecure-sample", "report_data": "x"}, "gpu": gpu},
        {"type": "composite", "cpu": gpu, "gpu": gpu},
        {"type": "composite", "cpu": cpu},
        {"type": "composite", "cpu": cpu, "gpu": gpu, "more": {}},
        {"type": "composite", "cpu": "x", "gpu": gpu},
    ):
        _refused(verifier, shape, "composite_evidence")
    _refused(verifier, {"type": "composite", "cpu": cpu, "gpu": {**gpu, "type": "tdx"}}, "gpu_evidence")


def test_the_registry_builds_composite_only_over_its_parts(setup: Any) -> None:
    _, _, _, gpu = setup
    snp = setup[0].cpu["sev-snp"]
    factories = {"sev-snp": lambda: snp, "nvidia-gpu": lambda: gpu}
    registry = VerifierRegistry.build(["sev-snp", "nvidia-gpu", "composite"], factories)
    assert isinstance(registry.get("composite"), CompositeVerifier)
    with pytest.raises(ConfigError, match="nvidia-gpu"):
        VerifierRegistry.build(["sev-snp", "composite"], factories)
    with pytest.raises(ConfigError, match="CPU verifier"):
        VerifierRegistry.build(["nvidia-gpu", "composite"], factories)


def test_the_composite_attester_orders_cpu_then_gpus(setup: Any, tmp_path: Path) -> None:
    _, guest, roots, _ = setup
    doc = CompositeAttester(guest, MadeGpus([Gpu(roots)])).evidence(REPORT_DATA, {})
    import base64

    from weightvault.attestation.nvidia.report import parse_report

    report = parse_report(base64.b64decode(doc["gpu"]["gpus"][0]["report"]))
    assert report.request_nonce == gpu_nonce(REPORT_DATA, doc["cpu"])


def test_result_tokens_carry_the_parts() -> None:
    import jwt

    from weightvault.attestation.interfaces import AttestationResult
    from weightvault.broker.tokens import TokenSigner
    from weightvault.crypto.signing import Ed25519Signer

    signer = TokenSigner("broker.test", Ed25519Signer.generate())
    result = AttestationResult("composite", {"gpu.count": 1}, "sha256:00", parts=("sev-snp", "nvidia-gpu"))
    token, _ = signer.issue(
        tenant="acme", principal="wl", result=result, kem="x25519", public=bytes(32), challenge_id="c", now=100
    )
    assert signer.verify(token, now=101).result.parts == ("sev-snp", "nvidia-gpu")
    plain, _ = signer.issue(
        tenant="acme",
        principal="wl",
        result=AttestationResult("tpm", {}, "sha256:00"),
        kem="x25519",
        public=bytes(32),
        challenge_id="c",
        now=100,
    )
    assert "parts" not in jwt.decode(plain, options={"verify_signature": False})["wv"]
    assert signer.verify(plain, now=101).result.parts == ()
