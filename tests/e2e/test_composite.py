"""Composite evidence in a real broker process: a key is released only to an SEV-SNP guest together with
its GPUs, each bound to the challenge and to the guest's report; a GPU report spliced from elsewhere, a
GPU out of CC mode, or either part alone is refused, and every refusal is audited with its code."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from tests.e2e.broker_fixture import Broker, running_broker
from tests.helpers import require_module
from tests.snp_evidence import Chip, Hierarchy, evidence, hierarchy
from weightvault.errors import EvidenceError, ReleaseDeniedError

require_module("signxml")

from tests.nvidia_evidence import DRIVER, DeviceRoots, Gpu, MadeGpus, RimSigner, verifier_section  # noqa: E402
from weightvault.attestation.composite import CompositeAttester, gpu_nonce  # noqa: E402

pytestmark = pytest.mark.e2e

MEASUREMENT = b"\x11" * 48
RESOURCE = "acme/models/small@1"


class Guest:
    """An SEV-SNP guest's attester, with the firmware replaced by a chip under test roots."""

    def __init__(self, chip: Chip) -> None:
        self.chip = chip

    def evidence(self, report_data: bytes, challenge: Mapping[str, Any]) -> dict[str, Any]:
        return evidence(self.chip.report(report_data), self.chip.der)


class SplicedGpu:
    """A guest whose last GPU's report was made for another session, beside its own GPUs."""

    def __init__(self, guest: Guest, own: list[Gpu], foreign: Gpu) -> None:
        self.guest, self.own, self.foreign = guest, own, foreign

    def evidence(self, report_data: bytes, challenge: Mapping[str, Any]) -> dict[str, Any]:
        cpu = self.guest.evidence(report_data, challenge)
        gpus = MadeGpus(self.own).gpu_evidence(gpu_nonce(report_data, cpu))
        elsewhere = gpu_nonce(hashlib.sha256(b"another session").digest(), cpu)
        gpus["gpus"].append(self.foreign.entry(elsewhere))
        return {"type": "composite", "cpu": cpu, "gpu": gpus}


@pytest.fixture(scope="module")
def roots() -> tuple[Hierarchy, DeviceRoots]:
    return hierarchy("Milan"), DeviceRoots()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, roots: tuple[Hierarchy, DeviceRoots]) -> Iterator[Broker]:
    import numpy as np
    from safetensors.numpy import save_file

    milan, devices = roots
    tmp = tmp_path_factory.mktemp("composite")
    plain = tmp / "small.safetensors"
    save_file({"w": np.arange(64, dtype=np.float32)}, str(plain))
    chain = tmp / "milan-cert_chain.pem"
    chain.write_bytes(milan.chain_pem)
    section = (
        f'[verifiers.sev_snp]\ncert_chains = ["{chain}"]\nmeasurements = ["{MEASUREMENT.hex()}"]\ntest_roots = true\n'
        + verifier_section(tmp, devices, RimSigner())
    )
    allow = ["insecure-sample", "attestation-token", "sev-snp", "nvidia-gpu", "composite"]
    with running_broker(tmp, plain, extra_config=section, allow=allow) as running:
        policy = {
            "verifiers": {"allOf": ["sev-snp", "nvidia-gpu"]},
            "resources": ["acme/models/*"],
            "rule": {
                "allOf": [
                    {"claim": "snp.measurement", "equals": MEASUREMENT.hex()},
                    {"claim": "gpu.cc_mode", "equals": "on"},
                    {"claim": "gpu.driver_version", "equals": DRIVER},
                    {"claim": "gpu.count", "greaterOrEquals": 2},
                ]
            },
        }
        running.client("acme-admin").put_policy("acme", "open", policy)
        yield running


def test_an_snp_guest_with_its_gpus_gets_the_key(broker: Broker, roots: tuple[Hierarchy, DeviceRoots]) -> None:
    milan, devices = roots
    start = broker.audit_size()
    attester = CompositeAttester(Guest(Chip(milan)), MadeGpus([Gpu(devices) for _ in range(4)]))
    session, released = broker.client("acme-wl").attest(attester, release=RESOURCE)
    assert released is not None
    events = [e for _, e in broker.events(start)]
    passed = [e for e in events if e.type == "attest.pass"]
    assert [e.details["verifier"] for e in passed] == ["composite"]
    assert [e.decision for e in events if e.type == "policy.decision"] == ["allow"]
    assert session.token


def test_a_spliced_gpu_report_is_refused_and_audited(broker: Broker, roots: tuple[Hierarchy, DeviceRoots]) -> None:
    milan, devices = roots
    attester = SplicedGpu(Guest(Chip(milan)), [Gpu(devices)], Gpu(devices))
    start = broker.audit_size()
    with pytest.raises(EvidenceError, match="Attestation failed"):
        broker.client("acme-wl").attest(attester, release=RESOURCE)
    failed = [e for _, e in broker.events(start) if e.type == "attest.fail"]
    assert len(failed) == 1
    assert "gpu_nonce" in json.dumps(failed[0].reasons)


def test_a_gpu_out_of_cc_mode_is_refused(broker: Broker, roots: tuple[Hierarchy, DeviceRoots]) -> None:
    milan, devices = roots
    attester = CompositeAttester(Guest(Chip(milan)), MadeGpus([Gpu(devices), Gpu(devices)], cc_mode="devtools"))
    start = broker.audit_size()
    with pytest.raises(EvidenceError, match="Attestation failed"):
        broker.client("acme-wl").attest(attester, release=RESOURCE)
    failed = [e for _, e in broker.events(start) if e.type == "attest.fail"]
    assert "gpu_cc_mode" in json.dumps(failed[0].reasons)


def test_either_part_alone_does_not_satisfy_the_policy(broker: Broker, roots: tuple[Hierarchy, DeviceRoots]) -> None:
    milan, devices = roots
    client = broker.client("acme-wl")
    for alone in (Guest(Chip(milan)), MadeGpus([Gpu(devices), Gpu(devices)])):
        start = broker.audit_size()
        with pytest.raises(ReleaseDeniedError):
            client.attest(alone, release=RESOURCE)
        denied = [e for _, e in broker.events(start) if e.type == "policy.decision"]
        assert denied[0].decision == "deny"
        assert "verifier_not_accepted" in json.dumps(denied[0].details)


def test_too_few_gpus_fail_the_rule(broker: Broker, roots: tuple[Hierarchy, DeviceRoots]) -> None:
    milan, devices = roots
    with pytest.raises(ReleaseDeniedError):
        broker.client("acme-wl").attest(
            CompositeAttester(Guest(Chip(milan)), MadeGpus([Gpu(devices)])), release=RESOURCE
        )
