"""The tdx verifier in a real broker process: a key is released to a TD whose quote (the real quote's
structures, re-signed under test roots) is bound to the challenge, alone and with its GPUs; refusals
are audited with their codes."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from tests.e2e.broker_fixture import Broker, running_broker
from tests.helpers import require_module
from weightvault.errors import EvidenceError, ReleaseDeniedError

require_module("dcap_qvl")
require_module("signxml")

from tests.nvidia_evidence import DeviceRoots, Gpu, MadeGpus, RimSigner, verifier_section  # noqa: E402
from tests.tdx_evidence import TdxPlatform  # noqa: E402
from weightvault.attestation.composite import CompositeAttester  # noqa: E402

pytestmark = pytest.mark.e2e

#: The real quote's MRTD, which the made quotes keep.
MRTD = "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"


class MadeTd:
    """A TD's attester, with the TDX module and QE replaced by the made platform."""

    def __init__(self, platform: TdxPlatform, **quote: Any) -> None:
        self.platform, self.options = platform, quote

    def evidence(self, report_data: bytes, challenge: Mapping[str, Any]) -> dict[str, Any]:
        quote = self.platform.quote(report_data, **self.options)
        return {"type": "tdx", "quote": base64.b64encode(quote).decode()}


@pytest.fixture(scope="module")
def made() -> tuple[TdxPlatform, DeviceRoots]:
    import datetime

    return TdxPlatform(at=datetime.datetime.now(datetime.UTC)), DeviceRoots()  # the broker's clock is the wall clock


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, made: tuple[TdxPlatform, DeviceRoots]) -> Iterator[Broker]:
    import numpy as np
    from safetensors.numpy import save_file

    platform, devices = made
    tmp = tmp_path_factory.mktemp("tdx")
    plain = tmp / "small.safetensors"
    save_file({"w": np.arange(64, dtype=np.float32)}, str(plain))
    (tmp / "collateral.json").write_text(platform.collateral())
    (tmp / "root.der").write_bytes(platform.root_der)
    section = (
        f'[verifiers.tdx]\ncollateral = ["{tmp / "collateral.json"}"]\nroot_ca = "{tmp / "root.der"}"\n'
        f'mrtd = ["{MRTD}"]\n' + verifier_section(tmp, devices, RimSigner())
    )
    allow = ["insecure-sample", "attestation-token", "tdx", "nvidia-gpu", "composite"]
    with running_broker(tmp, plain, extra_config=section, allow=allow) as running:
        tdx_alone = {
            "verifiers": ["tdx"],
            "resources": ["acme/models/*"],
            "rule": {"claim": "tdx.mrtd", "equals": MRTD},
        }
        with_gpus = {
            "verifiers": {"allOf": ["tdx", "nvidia-gpu"]},
            "resources": ["globex/models/*"],
            "rule": {"allOf": [{"claim": "tdx.mrtd", "equals": MRTD}, {"claim": "gpu.count", "equals": 2}]},
        }
        running.client("acme-admin").put_policy("acme", "open", tdx_alone)
        running.client("globex-admin").put_policy("globex", "open", with_gpus)
        yield running


def test_a_td_gets_the_key(broker: Broker, made: tuple[TdxPlatform, DeviceRoots]) -> None:
    start = broker.audit_size()
    _, released = broker.client("acme-wl").attest(MadeTd(made[0]), release="acme/models/small@1")
    assert released is not None
    assert [e.details["verifier"] for _, e in broker.events(start) if e.type == "attest.pass"] == ["tdx"]


def test_a_td_with_its_gpus_gets_the_key_and_without_them_does_not(
    broker: Broker, made: tuple[TdxPlatform, DeviceRoots]
) -> None:
    platform, devices = made
    client = broker.client("globex-wl")
    attester = CompositeAttester(MadeTd(platform), MadeGpus([Gpu(devices), Gpu(devices)]))
    _, released = client.attest(attester, release="globex/models/small@1")
    assert released is not None
    with pytest.raises(ReleaseDeniedError):
        client.attest(MadeTd(platform), release="globex/models/small@1")


@pytest.mark.parametrize(
    ("quote", "code"),
    [({"debug": True}, "tdx_debug"), ({"mrtd": b"\x42" * 48}, "tdx_measurement")],
)
def test_refusals_are_audited_with_their_code(
    broker: Broker, made: tuple[TdxPlatform, DeviceRoots], quote: dict[str, Any], code: str
) -> None:
    start = broker.audit_size()
    with pytest.raises(EvidenceError, match="Attestation failed"):
        broker.client("acme-wl").attest(MadeTd(made[0], **quote), release="acme/models/small@1")
    failed = [e for _, e in broker.events(start) if e.type == "attest.fail"]
    assert len(failed) == 1
    assert code in json.dumps(failed[0].reasons)


def test_a_quote_for_another_session_is_refused(broker: Broker, made: tuple[TdxPlatform, DeviceRoots]) -> None:
    class Replayed(MadeTd):
        def evidence(self, report_data: bytes, challenge: Mapping[str, Any]) -> dict[str, Any]:
            return super().evidence(bytes(32), challenge)

    start = broker.audit_size()
    with pytest.raises(EvidenceError, match="Attestation failed"):
        broker.client("acme-wl").attest(Replayed(made[0]), release="acme/models/small@1")
    failed = [e for _, e in broker.events(start) if e.type == "attest.fail"]
    assert "tdx_report_data" in json.dumps(failed[0].reasons)
