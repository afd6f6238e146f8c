"""The sev-snp verifier in a real broker process: a key is released to an SEV-SNP guest whose report
chains to the pinned AMD-shaped roots and is bound to the challenge; every refusal is audited with its code."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from tests.e2e.broker_fixture import Broker, running_broker
from tests.snp_evidence import Chip, Hierarchy, evidence, hierarchy
from weightvault.errors import EvidenceError, ReleaseDeniedError

pytestmark = pytest.mark.e2e

MEASUREMENT = b"\x11" * 48


class MadeGuest:
    """An SEV-SNP guest's attester, with the firmware replaced by a chip under test roots."""

    def __init__(self, chip: Chip, **report: Any) -> None:
        self.chip, self.options = chip, report

    def evidence(self, report_data: bytes, challenge: Mapping[str, Any]) -> dict[str, Any]:
        return evidence(self.chip.report(report_data, **self.options), self.chip.der)


@pytest.fixture(scope="module")
def roots() -> Hierarchy:
    return hierarchy("Milan")


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, roots: Hierarchy) -> Iterator[Broker]:
    import numpy as np
    from safetensors.numpy import save_file

    tmp = tmp_path_factory.mktemp("snp")
    plain = tmp / "small.safetensors"
    save_file({"w": np.arange(64, dtype=np.float32)}, str(plain))
    chain = tmp / "milan-cert_chain.pem"
    chain.write_bytes(roots.chain_pem)
    section = (
        f'[verifiers.sev_snp]\ncert_chains = ["{chain}"]\nmeasurements = ["{MEASUREMENT.hex()}"]\n'
        "min_tcb = {bootloader = 3, tee = 0, snp = 8, microcode = 115}\ntest_roots = true\n"
    )
    allow = ["insecure-sample", "attestation-token", "sev-snp"]
    with running_broker(tmp, plain, extra_config=section, allow=allow) as running:
        policy = {
            "verifiers": ["sev-snp"],
            "resources": ["acme/models/*"],
            "rule": {
                "allOf": [
                    {"claim": "snp.measurement", "equals": MEASUREMENT.hex()},
                    {"claim": "snp.policy.debug", "equals": False},
                ]
            },
        }
        running.client("acme-admin").put_policy("acme", "open", policy)  # acme's model now needs an SNP guest
        yield running


def test_an_snp_guest_gets_the_key_and_the_log_records_the_verifier(broker: Broker, roots: Hierarchy) -> None:
    client = broker.client("acme-wl")
    start = broker.audit_size()
    session, released = client.attest(MadeGuest(Chip(roots)), release="acme/models/small@1")
    assert released is not None
    passed = [e for _, e in broker.events(start) if e.type == "attest.pass"]
    assert [e.details["verifier"] for e in passed] == ["sev-snp"]
    assert session.token


@pytest.mark.parametrize(
    ("guest", "code"),
    [
        ({"policy": 0x30000 | 1 << 19}, "snp_debug"),
        ({"measurement": b"\x22" * 48}, "snp_measurement"),
        ({"report_data": "another session"}, "snp_report_data"),
        ({"stranger": True}, "snp_chain"),  # same names as the pinned roots, other keys
    ],
)
def test_refusals_are_audited_with_their_code(
    broker: Broker, roots: Hierarchy, guest: dict[str, Any], code: str
) -> None:
    chip = Chip(hierarchy("Milan") if guest.pop("stranger", False) else roots)
    client = broker.client("acme-wl")
    if guest.pop("report_data", None):
        import hashlib

        attester: Any = _Spliced(chip, hashlib.sha256(b"another session").digest())
    else:
        attester = MadeGuest(chip, **guest)
    start = broker.audit_size()
    with pytest.raises(EvidenceError, match="Attestation failed"):  # the caller learns nothing more
        client.attest(attester, release="acme/models/small@1")
    failed = [e for _, e in broker.events(start) if e.type == "attest.fail"]
    assert len(failed) == 1
    assert code in json.dumps(failed[0].reasons)


def test_an_snp_result_does_not_satisfy_a_policy_that_does_not_list_it(broker: Broker, roots: Hierarchy) -> None:
    with pytest.raises(ReleaseDeniedError):
        broker.client("globex-wl").attest(MadeGuest(Chip(roots)), release="globex/models/small@1")


class _Spliced:
    """A genuine report, from a genuine chip, bound to another session's report data."""

    def __init__(self, chip: Chip, other: bytes) -> None:
        self.chip, self.other = chip, other

    def evidence(self, report_data: bytes, challenge: Mapping[str, Any]) -> dict[str, Any]:
        return evidence(self.chip.report(self.other), self.chip.der)
