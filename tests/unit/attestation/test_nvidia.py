"""The nvidia-gpu verifier: NVIDIA's published H100 reports and RIMs (tests/vectors/nvidia), and made
evidence under test roots for every failure path."""

from __future__ import annotations

import base64
import datetime
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import require_module
from weightvault.attestation.interfaces import AttestationContext
from weightvault.attestation.nvidia.report import MAX_REPORT_BYTES, parse_report
from weightvault.errors import ConfigError, EvidenceError

require_module("signxml")

from tests.nvidia_evidence import (  # noqa: E402
    DRIVER_INDICES,
    NOW,
    DeviceRoots,
    Gpu,
    RimSigner,
    golden,
    gpu_evidence,
    verifier_section,
)
from weightvault.attestation.nvidia.verifier import MAX_GPUS, NvidiaGpuVerifier  # noqa: E402

VECTORS = Path(__file__).parents[2] / "vectors" / "nvidia"
REPORT = bytes.fromhex((VECTORS / "attestationReport.txt").read_text().strip())
CHAIN = (VECTORS / "gpuAkCertChain.txt").read_bytes()
HOPPER = bytes.fromhex((VECTORS / "hopperAttestationReport.txt").read_text().strip())
HOPPER_CHAIN = (VECTORS / "hopperCertChain.txt").read_bytes()
#: When the RIMs' signer certificates were valid (they expired in June 2025).
THEN = int(datetime.datetime(2024, 6, 1, tzinfo=datetime.UTC).timestamp())
TODAY = int(NOW.timestamp())


def _real(vbios: str = "1010_0200_882_96005E0001_test_no_gpu.swidtag", **extra: Any) -> NvidiaGpuVerifier:
    section = {
        "device_roots": ["verifier_device_root.pem"],
        "rim_roots": ["verifier_RIM_root.pem"],
        "driver_rims": ["Driver_RIM_test_no_gpu.swidtag"],
        "vbios_rims": [vbios],
        **extra,
    }
    return NvidiaGpuVerifier.from_config(section, VECTORS)


def _evidence(report: bytes = REPORT, chain: bytes = CHAIN, cc_mode: str = "on") -> dict[str, Any]:
    entry = {"report": base64.b64encode(report).decode(), "certificates": base64.b64encode(chain).decode()}
    return {"type": "nvidia-gpu", "gpus": [{**entry, "cc_mode": cc_mode}]}


def _without(chain: bytes, position: int) -> bytes:
    pems = [p + b"-----END CERTIFICATE-----\n" for p in chain.split(b"-----END CERTIFICATE-----\n") if p.strip()]
    return b"".join(pems[:position] + pems[position + 1 :])


def _context(now: int, report_data: bytes = b"\x01" * 32) -> AttestationContext:
    return AttestationContext("acme", "c1", b"n" * 32, report_data, now)


def _refused(verifier: NvidiaGpuVerifier, evidence: Mapping[str, Any], code: str, nonce: bytes, now: int) -> None:
    with pytest.raises(EvidenceError) as caught:
        verifier.appraise_bound(evidence, _context(now), nonce)
    assert str(caught.value).startswith(code + ":"), str(caught.value)


# -- NVIDIA's published evidence ------------------------------------------------------------------


def test_a_real_h100_report_passes_with_nvidias_rims_and_roots() -> None:
    nonce = REPORT[4:36]  # nvtrust's test nonce: the session binding is tested with made evidence
    result = _real().appraise_bound(_evidence(), _context(THEN), nonce)
    claims = result.claims
    assert claims["gpu.count"] == 1
    assert claims["gpu.driver_version"] == "545.00"
    assert claims["gpu.vbios_versions"] == ["96.00.5E.00.01"]
    assert claims["gpu.0.hwmodel"] == "GH100 A01 GSP BROM"
    assert claims["gpu.0.project"] == "1010"
    assert claims["gpu.0.ueid"] == "460032006552296075780760406069494258829212062021"
    assert claims["gpu.cc_mode"] == "on"
    assert all(name.startswith("gpu.") for name in claims)


def test_the_same_report_is_not_bound_to_a_session() -> None:
    _refused(_real(), _evidence(), "gpu_nonce", b"\x01" * 32, THEN)


def test_rims_whose_signer_expired_are_refused_unless_allowed() -> None:
    nonce = REPORT[4:36]
    _refused(_real(), _evidence(), "gpu_rim_expired", nonce, TODAY)
    assert _real(allow_expired_rims=True).appraise_bound(_evidence(), _context(TODAY), nonce).claims["gpu.count"] == 1


def test_the_production_vbios_rim_of_the_same_version_does_not_match_that_board() -> None:
    verifier = _real(vbios="1010_0200_882_96005E0001_PROD.swidtag")
    _refused(verifier, _evidence(), "gpu_measurement", REPORT[4:36], THEN)


def test_a_newer_report_with_an_fwid_passes_the_chain_and_signature_but_has_no_rim() -> None:
    # Its chain, signature and FWID verify; nvtrust publishes no RIM for driver 550.90.07.
    _refused(_real(), _evidence(HOPPER, HOPPER_CHAIN), "gpu_rim_missing", HOPPER[4:36], THEN)


@pytest.mark.parametrize(
    ("evidence", "code"),
    [
        (_evidence(REPORT[:-200] + bytes([REPORT[-200] ^ 1]) + REPORT[-199:]), "gpu_signature"),
        (_evidence(REPORT[:-1] + bytes([REPORT[-1] ^ 1])), "gpu_signature"),
        (_evidence(REPORT, HOPPER_CHAIN), "gpu_signature"),  # another GPU's key
        (_evidence(REPORT[:-10]), "gpu_report"),
        (_evidence(REPORT + b"\0"), "gpu_report"),
        (_evidence(REPORT[:3000]), "gpu_report"),
        (_evidence(b"\x12" + REPORT[1:]), "gpu_report_version"),
        (_evidence(REPORT + bytes(MAX_REPORT_BYTES)), "gpu_evidence"),
        (_evidence(REPORT, CHAIN.split(b"-----END CERTIFICATE-----")[0]), "gpu_certificate"),
        (_evidence(REPORT, _without(CHAIN, 0)), "gpu_certificate"),  # the boot-ROM CA as the leaf
        (_evidence(REPORT, _without(CHAIN, 1)), "gpu_chain"),  # a link missing
        (_evidence(cc_mode="devtools"), "gpu_cc_mode"),
        ({"type": "nvidia-gpu", "gpus": []}, "gpu_evidence"),
        ({"type": "nvidia-gpu", "gpus": [{"report": "x"}]}, "gpu_evidence"),
        ({"type": "nvidia-gpu", "gpus": _evidence()["gpus"], "extra": 1}, "gpu_evidence"),
    ],
)
def test_tampered_truncated_and_malformed_real_evidence_is_refused(evidence: dict[str, Any], code: str) -> None:
    _refused(_real(), evidence, code, REPORT[4:36], THEN)


def test_the_same_gpu_twice_is_refused() -> None:
    twice = {"type": "nvidia-gpu", "gpus": _evidence()["gpus"] * 2}
    _refused(_real(), twice, "gpu_duplicate", REPORT[4:36], THEN)


def test_pinned_gpus() -> None:
    _refused(_real(ueids=["1"]), _evidence(), "gpu_ueid", REPORT[4:36], THEN)
    pinned = _real(ueids=["460032006552296075780760406069494258829212062021"])
    assert pinned.appraise_bound(_evidence(), _context(THEN), REPORT[4:36]).claims["gpu.count"] == 1


def test_roots_that_are_not_nvidias_need_test_roots(tmp_path: Path) -> None:
    section = verifier_section(tmp_path, DeviceRoots(), RimSigner()).replace("test_roots = true\n", "")
    import tomllib

    with pytest.raises(ConfigError, match="not NVIDIA's root"):
        NvidiaGpuVerifier.from_config(tomllib.loads(section)["verifiers"]["nvidia_gpu"], tmp_path)


def test_a_real_rim_edited_after_signing_is_refused_at_configuration(tmp_path: Path) -> None:
    for name in ("verifier_device_root.pem", "verifier_RIM_root.pem", "Driver_RIM_test_no_gpu.swidtag"):
        (tmp_path / name).write_bytes((VECTORS / name).read_bytes())
    rim = (VECTORS / "1010_0200_882_96005E0001_test_no_gpu.swidtag").read_bytes()
    value = golden_of(rim, 1)
    (tmp_path / "vbios.swidtag").write_bytes(rim.replace(value, b"0" * len(value), 1))
    section = {
        "device_roots": ["verifier_device_root.pem"],
        "rim_roots": ["verifier_RIM_root.pem"],
        "driver_rims": ["Driver_RIM_test_no_gpu.swidtag"],
        "vbios_rims": ["vbios.swidtag"],
    }
    with pytest.raises(ConfigError, match="signature does not verify"):
        NvidiaGpuVerifier.from_config(section, tmp_path)


def golden_of(rim: bytes, index: int) -> bytes:
    marker = f'index="{index}" active="True" alternatives="1" ns2:Hash0="'.encode()
    start = rim.index(marker) + len(marker)
    return rim[start : start + 96]


# -- made evidence: every failure path ------------------------------------------------------------


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[NvidiaGpuVerifier, DeviceRoots, RimSigner, Path]:
    import tomllib

    tmp = tmp_path_factory.mktemp("nvidia")
    roots, rims = DeviceRoots(), RimSigner()
    section = tomllib.loads(verifier_section(tmp, roots, rims))["verifiers"]["nvidia_gpu"]
    return NvidiaGpuVerifier.from_config(section, tmp), roots, rims, tmp


def _made_verifier(made: tuple[NvidiaGpuVerifier, DeviceRoots, RimSigner, Path], extra: str) -> NvidiaGpuVerifier:
    import tomllib

    _, roots, rims, tmp = made
    section = tomllib.loads(verifier_section(tmp, roots, rims, extra=extra))["verifiers"]["nvidia_gpu"]
    return NvidiaGpuVerifier.from_config(section, tmp)


def test_eight_made_gpus_bound_to_the_session_pass(made: Any) -> None:
    verifier, roots, _, _ = made
    gpus = [Gpu(roots) for _ in range(8)]
    nonce = hashlib.sha256(b"session").digest()
    result = verifier.verify(gpu_evidence(gpus, nonce), _context(TODAY, nonce))
    assert result.claims["gpu.count"] == 8
    assert result.claims["gpu.ueids"] == [g.ueid for g in gpus]
    assert result.claims["gpu.driver_version"] == "550.90.07"
    assert result.claims["gpu.7.vbios_version"] == "96.00.9F.00.01"


@pytest.mark.parametrize(
    ("options", "code"),
    [
        ({"measurements": {DRIVER_INDICES[3]: b"\x99" * 48}}, "gpu_measurement"),
        ({"measurements": {0: b"\x99" * 48}}, "gpu_measurement"),
        ({"driver": "560.35.03"}, "gpu_rim_missing"),
        ({"vbios": bytes(8)}, "gpu_rim_missing"),
        ({"fwid": b"\x01" * 48}, "gpu_fwid"),
        ({"version": 0x12}, "gpu_report_version"),
        ({"cc_mode": "off"}, "gpu_cc_mode"),
    ],
)
def test_made_evidence_failing_one_check(made: Any, options: dict[str, Any], code: str) -> None:
    verifier, roots, _, _ = made
    nonce = hashlib.sha256(b"session").digest()
    _refused(verifier, gpu_evidence([Gpu(roots), Gpu(roots)], nonce, **options), code, nonce, TODAY)


def test_a_report_signed_by_another_key_and_a_gpu_outside_the_pinned_root(made: Any) -> None:
    verifier, roots, _, _ = made
    nonce = hashlib.sha256(b"session").digest()
    forged = Gpu(roots)
    _refused(verifier, gpu_evidence([forged], nonce, signer=Gpu(roots).key), "gpu_signature", nonce, TODAY)
    _refused(verifier, gpu_evidence([Gpu(DeviceRoots())], nonce), "gpu_chain", nonce, TODAY)


def test_a_report_from_another_session(made: Any) -> None:
    verifier, roots, _, _ = made
    nonce = hashlib.sha256(b"session").digest()
    other = hashlib.sha256(b"another session").digest()
    _refused(verifier, gpu_evidence([Gpu(roots)], other), "gpu_nonce", nonce, TODAY)


def test_expired_and_revoked_certificates(made: Any) -> None:
    verifier, roots, _, tmp = made
    nonce = hashlib.sha256(b"session").digest()
    expired = Gpu(roots, leaf_not_after=NOW - datetime.timedelta(days=1))
    _refused(verifier, gpu_evidence([expired], nonce), "gpu_certificate_expired", nonce, TODAY)
    gpu = Gpu(roots)
    (tmp / "ica.crl").write_bytes(roots.crl([gpu.brom.serial_number]))
    revoking = _made_verifier(made, f'crls = ["{tmp / "ica.crl"}"]\n')
    _refused(revoking, gpu_evidence([gpu], nonce), "gpu_certificate_revoked", nonce, TODAY)
    assert revoking.verify(gpu_evidence([Gpu(roots)], nonce), _context(TODAY, nonce)).claims["gpu.count"] == 1
    (tmp / "stale.crl").write_bytes(roots.crl([], next_update=NOW - datetime.timedelta(days=1)))
    stale = _made_verifier(made, f'crls = ["{tmp / "stale.crl"}"]\n')
    _refused(stale, gpu_evidence([Gpu(roots)], nonce), "gpu_crl_stale", nonce, TODAY)


def test_too_many_gpus(made: Any) -> None:
    verifier, roots, _, _ = made
    nonce = hashlib.sha256(b"session").digest()
    gpu = Gpu(roots)
    many = {"type": "nvidia-gpu", "gpus": [gpu.entry(nonce)] * (MAX_GPUS + 1)}
    _refused(verifier, many, "gpu_evidence", nonce, TODAY)


def test_a_rim_from_an_unpinned_signer_and_two_rims_for_one_version(tmp_path: Path) -> None:
    import tomllib

    roots, rims = DeviceRoots(), RimSigner()
    section = tomllib.loads(verifier_section(tmp_path, roots, rims))["verifiers"]["nvidia_gpu"]
    (tmp_path / "foreign.swidtag").write_bytes(RimSigner().rim("550.90.07", DRIVER_INDICES))
    with pytest.raises(ConfigError, match="does not chain to a pinned"):
        NvidiaGpuVerifier.from_config({**section, "driver_rims": [str(tmp_path / "foreign.swidtag")]}, tmp_path)
    with pytest.raises(ConfigError, match="two driver RIMs"):
        NvidiaGpuVerifier.from_config({**section, "driver_rims": section["driver_rims"] * 2}, tmp_path)
    with pytest.raises(ConfigError, match="unknown key"):
        NvidiaGpuVerifier.from_config({**section, "rims": []}, tmp_path)


def test_rim_alternatives_are_honoured(tmp_path: Path) -> None:
    import tomllib

    roots, rims = DeviceRoots(), RimSigner()
    section = tomllib.loads(verifier_section(tmp_path, roots, rims))["verifiers"]["nvidia_gpu"]
    index = DRIVER_INDICES[0]
    two = rims.rim("550.90.07", DRIVER_INDICES, values={index: [golden(index), b"\x77" * 48]})
    (tmp_path / "two.swidtag").write_bytes(two)
    verifier = NvidiaGpuVerifier.from_config({**section, "driver_rims": [str(tmp_path / "two.swidtag")]}, tmp_path)
    nonce = hashlib.sha256(b"session").digest()
    evidence = gpu_evidence([Gpu(roots)], nonce, measurements={index: b"\x77" * 48})
    assert verifier.verify(evidence, _context(TODAY, nonce)).claims["gpu.count"] == 1


# -- the report codec -----------------------------------------------------------------------------


@given(st.binary(max_size=600))
def test_the_report_parser_refuses_arbitrary_bytes_with_a_code(raw: bytes) -> None:
    with pytest.raises(EvidenceError, match=r"^gpu_report"):
        parse_report(raw)


@given(st.integers(min_value=0, max_value=len(REPORT) - 1), st.integers(min_value=1, max_value=255))
def test_any_flipped_byte_of_a_real_report_is_refused_or_changes_what_is_signed(position: int, flip: int) -> None:
    tampered = bytearray(REPORT)
    tampered[position] ^= flip
    try:
        parsed = parse_report(bytes(tampered))
    except EvidenceError as exc:
        refused = str(exc)
    else:
        refused = ""
    if refused:
        assert refused.startswith("gpu_report")
        return
    original = parse_report(REPORT)
    assert (parsed.signed, parsed.signature) != (original.signed, original.signature)


# -- the NVML attester ----------------------------------------------------------------------------


class _NvmlStandIn:
    """NVML's Python surface as nvidia-ml-py exposes it, serving NVIDIA's published H100 evidence
    (no GPU in CC mode runs these tests; the real library is used where one does)."""

    NVML_CC_SYSTEM_FEATURE_ENABLED = 1

    class NVMLError(Exception):
        pass

    def __init__(self, devtools: int = 0, feature: int = 1) -> None:
        self.devtools, self.feature = devtools, feature
        self.nonces: list[bytes] = []

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlSystemGetConfComputeState(self) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(environment=1, ccFeature=self.feature, devToolsMode=self.devtools)

    def nvmlDeviceGetConfComputeGpuAttestationReport(self, handle: int, nonce: list[int]) -> Any:
        from types import SimpleNamespace

        self.nonces.append(bytes(nonce))
        buffer = REPORT + bytes(8192 - len(REPORT))  # NVML's fixed-size buffer, and the size used
        return SimpleNamespace(attestationReport=list(buffer), attestationReportSize=len(REPORT))

    def nvmlDeviceGetConfComputeGpuCertificate(self, handle: int) -> Any:
        from types import SimpleNamespace

        buffer = CHAIN + bytes(5120 - len(CHAIN))
        return SimpleNamespace(attestationCertChain=list(buffer), attestationCertChainSize=len(CHAIN))


def test_the_nvml_attester_gathers_what_the_verifier_accepts() -> None:
    from weightvault.attestation.nvidia.attester import NvmlGpuAttester

    nvml = _NvmlStandIn()
    nonce = REPORT[4:36]
    evidence = NvmlGpuAttester(nvml).gpu_evidence(nonce)
    assert nvml.nonces == [nonce]
    assert _real().appraise_bound(evidence, _context(THEN), nonce).claims["gpu.count"] == 1
    devtools = NvmlGpuAttester(_NvmlStandIn(devtools=1)).gpu_evidence(nonce)
    _refused(_real(), devtools, "gpu_cc_mode", nonce, THEN)
    with pytest.raises(ValueError, match="32 bytes"):
        NvmlGpuAttester(nvml).gpu_evidence(b"short")


def test_gpu_attesters_say_what_is_missing_on_this_machine(tmp_path: Path) -> None:
    from weightvault.client.workload import open_attester

    with pytest.raises(ConfigError, match=r"NVIDIA driver|weightvault\[nvidia\]|confidential-computing|no GPU"):
        open_attester("nvidia-gpu", None, None, ())
    with pytest.raises(ConfigError, match="configfs-tsm"):
        open_attester("composite", None, None, ())
    with pytest.raises(ConfigError, match="--event-log and --tcti are for --attester tpm"):
        open_attester("composite", "swtpm:port=1", None, ())
