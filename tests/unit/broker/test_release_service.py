"""ReleaseService through the real client and routes, in process: challenge, attest, release, refusals."""

from __future__ import annotations

import pytest

from tests.unit.broker.conftest import ADMIN, OPERATOR, PUBLISHER, InProcess
from weightvault.client.broker import SampleAttester
from weightvault.errors import (
    AuthenticationError,
    ChallengeExpiredError,
    NotFoundError,
    PermissionDeniedError,
    ReleaseDeniedError,
)
from weightvault.format.keys import FileKey


def _model(env: InProcess, name: str = "m", policy: str = "open", tags: dict[str, str] | None = None) -> FileKey:
    key = FileKey.generate()
    env.broker.register_model(PUBLISHER, "acme", name, "1", policy=policy, file_key=key, files=[], tags=tags)
    return key


def test_a_release_gives_back_the_registered_key(in_process: InProcess) -> None:
    """Attest then release: the client opens the payload to exactly the file key the publisher registered."""
    key = _model(in_process)
    client = in_process.client("acme-workload")
    session, _ = client.attest(SampleAttester())
    released = client.release(session, "acme/models/m@1")
    assert released.file_key == key
    start = 0
    assert "allow" == in_process.last(start, "policy.decision").decision
    assert "done" == in_process.last(start, "key.release.done").decision


def test_one_shot_attest_and_release(in_process: InProcess) -> None:
    """A release inside the attest call returns the key in the same round trip."""
    key = _model(in_process)
    _, released = in_process.client("acme-workload").attest(SampleAttester(), release="acme/models/m@1")
    assert released is not None
    assert released.file_key == key


def test_an_expired_challenge_is_refused_and_audited(in_process: InProcess) -> None:
    """A challenge used after its lifetime gets 410 and an attest.fail record."""
    client = in_process.client("acme-workload")
    challenge = client.challenge()
    in_process.clock.now += 61
    import base64

    from weightvault.attestation.interfaces import report_data
    from weightvault.crypto.keywrap import HPKEKem, hpke_generate

    _, public = hpke_generate(HPKEKem.X25519)
    rd = report_data(challenge["challenge_id"], base64.b64decode(challenge["nonce"]), "acme", "x25519", public)
    body = {
        "challenge_id": challenge["challenge_id"],
        "hpke": {"kem": "x25519", "public": base64.b64encode(public).decode()},
        "evidence": SampleAttester().evidence(rd, challenge),
    }
    start = in_process.audit.size
    with pytest.raises(ChallengeExpiredError):
        client.request("POST", "/v1/attest", body)
    assert ("challenge_expired",) == in_process.last(start, "attest.fail").reasons


def test_policy_refusal_codes_reach_the_workload(in_process: InProcess) -> None:
    """A policy that does not hold refuses with codes, not the policy's contents."""
    in_process.broker.put_policy(
        ADMIN, "acme", "strict", {**_open(), "rule": {"claim": "sample.secret_level", "equals": "top"}}
    )
    _model(in_process, "s", "strict")
    client = in_process.client("acme-workload")
    session, _ = client.attest(SampleAttester())
    with pytest.raises(ReleaseDeniedError) as info:
        client.release(session, "acme/models/s@1")
    assert ("conditions_not_met",) == info.value.codes
    assert "secret_level" not in str(info.value)


def _open() -> dict[str, object]:
    from tests.unit.broker.conftest import OPEN_POLICY

    return dict(OPEN_POLICY)


def test_other_tenants_models_and_tokens(in_process: InProcess) -> None:
    """Another tenant's model is forbidden, an unknown one not found, another principal's token unusable."""
    _model(in_process)
    acme = in_process.client("acme-workload")
    session, _ = acme.attest(SampleAttester())
    with pytest.raises(PermissionDeniedError):
        acme.release(session, "globex/models/m@1")
    with pytest.raises(NotFoundError):
        acme.release(session, "acme/models/nope@1")
    in_process.tokens["acme-wl2"] = in_process.broker.create_principal(OPERATOR, "acme-wl2", "acme", "workload")
    with pytest.raises(PermissionDeniedError):
        in_process.client("acme-wl2").release(session, "acme/models/m@1")
    with pytest.raises(AuthenticationError):
        acme.request("POST", "/v1/release", {"token": session.token[:-4] + "AAAA", "resource": "acme/models/m@1"})


def test_an_unknown_challenge_of_another_tenant_is_not_found(in_process: InProcess) -> None:
    """Challenges are looked up within the caller's tenant: globex cannot use acme's."""
    challenge = in_process.client("acme-workload").challenge()
    assert in_process.broker.store.sessions.challenge("globex", challenge["challenge_id"]) is None
    assert in_process.broker.store.sessions.challenge("acme", challenge["challenge_id"]) is not None
