"""The key broker as a real process on loopback: the protocol, tenancy and every bad input of the issue."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.broker_fixture import Broker, _policy, running_broker
from weightvault.attestation.interfaces import report_data
from weightvault.broker.storage import BrokerStore
from weightvault.client.broker import BrokerClient, BrokerIdentity, SampleAttester, TokenAttester
from weightvault.crypto.keywrap import HPKEKem, hpke_generate
from weightvault.errors import (
    AuthenticationError,
    ChallengeExpiredError,
    ChallengeUsedError,
    ConflictError,
    EvidenceError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    PolicyViolationError,
    RateLimitedError,
    ReleaseDeniedError,
)
from weightvault.loaders import numpy as wv_numpy
from weightvault.server.broker_main import read_config

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    import numpy as np
    from safetensors.numpy import save_file

    tmp = tmp_path_factory.mktemp("broker")
    plain = tmp / "small.safetensors"
    rng = np.random.default_rng(3)
    save_file({"a": rng.standard_normal((300, 300), dtype=np.float32), "b": np.arange(10, dtype=np.int64)}, str(plain))
    with running_broker(tmp, plain) as running:
        running.tokens["plain_path"] = str(plain)
        yield running


def _attest_body(
    client: BrokerClient, evidence_for: Any = None, kem: HPKEKem = HPKEKem.X25519, device: str | None = None
) -> dict[str, Any]:
    ch = client.challenge()
    _, public = hpke_generate(kem)
    rd = report_data(ch["challenge_id"], base64.b64decode(ch["nonce"]), ch["tenant"], kem.value, public)
    evidence = evidence_for(rd) if evidence_for else SampleAttester(device_id=device).evidence(rd, ch)
    return {
        "challenge_id": ch["challenge_id"],
        "hpke": {"kem": kem.value, "public": base64.b64encode(public).decode()},
        "evidence": evidence,
    }


def _last(broker: Broker, since: int, type: str) -> Any:
    events = [e for _, e in broker.events(since) if e.type == type]
    assert events, f"no {type} event after {since}"
    return events[-1]


def test_happy_path_release_opens_the_model(broker: Broker) -> None:
    """Challenge, attest and release give the model's key, which loads it; every step is audited."""
    start = broker.audit_size()
    client = broker.client("acme-wl")
    identity = BrokerIdentity(client, SampleAttester())
    arrays = wv_numpy.load_file(broker.models["acme"], [identity])
    assert {"a", "b"} == set(arrays)
    types = [e.type for _, e in broker.events(start, until="key.release.done")]
    assert ["challenge.issued", "attest.pass", "policy.decision", "key.release.intent", "key.release.done"] == types
    decision = _last(broker, start, "policy.decision")
    assert ("allow", 1) == (decision.decision, decision.policy_version)


def test_two_step_release_and_partial_grant(broker: Broker) -> None:
    """attest then release; a partial grant opens only the requested tensors."""
    client = broker.client("acme-wl")
    session, _ = client.attest(SampleAttester(), kem=HPKEKem.MLKEM768_X25519)
    keys = client.release(session, "acme/models/small@1")
    assert keys.file_key == broker.file_keys["acme"]
    from weightvault.sealing import SealedFile

    with SealedFile(broker.models["acme"]) as sealed:
        file_id = sealed.preamble.file_id.hex()
        index_b = sealed.public_table().by_name()["b"].index
    partial = client.release(session, "acme/models/small@1", {file_id: [index_b]})
    assert partial.file_key is None
    loaded = wv_numpy.load_file(broker.models["acme"], partial.grants[file_id])
    assert {"b"} == set(loaded)


def test_replayed_attest_body(broker: Broker) -> None:
    """The same attest body sent twice: the second gets 409 challenge_used, and the audit says so."""
    client = broker.client("acme-wl")
    body = _attest_body(client)
    client.request("POST", "/v1/attest", body)
    start = broker.audit_size()
    with pytest.raises(ChallengeUsedError):
        client.request("POST", "/v1/attest", body)
    assert ("challenge_used",) == _last(broker, start, "attest.fail").reasons


def test_expired_challenge(broker: Broker) -> None:
    """A challenge used after its lifetime (3 s here) gets 410 challenge_expired."""
    client = broker.client("acme-wl")
    body = _attest_body(client)
    time.sleep(3.5)
    start = broker.audit_size()
    with pytest.raises(ChallengeExpiredError):
        client.request("POST", "/v1/attest", body)
    assert ("challenge_expired",) == _last(broker, start, "attest.fail").reasons


def test_concurrent_attests_on_one_challenge(broker: Broker) -> None:
    """Two concurrent attests on one challenge: exactly one wins."""
    client = broker.client("acme-wl")
    body = _attest_body(client)
    outcomes: list[str] = []

    def go() -> None:
        c = BrokerClient(broker.url, broker.tokens["acme-wl"])
        try:
            c.request("POST", "/v1/attest", body)
            outcomes.append("ok")
        except ChallengeUsedError:
            outcomes.append("used")
        finally:
            c.close()

    threads = [threading.Thread(target=go) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ["ok"] + ["used"] * 5 == sorted(outcomes)


def test_swapped_ephemeral_key(broker: Broker) -> None:
    """Evidence bound to one key, sent with another: 401 attestation_failed, audited with the full reason."""
    client = broker.client("acme-wl")
    body = _attest_body(client)
    _, other = hpke_generate(HPKEKem.X25519)
    body["hpke"]["public"] = base64.b64encode(other).decode()
    start = broker.audit_size()
    with pytest.raises(EvidenceError):
        client.request("POST", "/v1/attest", body)
    assert "report data mismatch" in _last(broker, start, "attest.fail").reasons[0]


def test_token_used_for_another_tenants_model(broker: Broker) -> None:
    """An acme token cannot release globex's model, even through globex's stanza."""
    client = broker.client("acme-wl")
    session, _ = client.attest(SampleAttester())
    start = broker.audit_size()
    with pytest.raises(PermissionDeniedError):
        client.release(session, "globex/models/small@1")
    assert "tenant_or_principal_mismatch" in _last(broker, start, "policy.decision").reasons
    other = broker.client("globex-wl")
    with pytest.raises(PermissionDeniedError):
        other.release(session, "globex/models/small@1")
    with pytest.raises(NotFoundError):
        client.release(session, "acme/models/nope@1")


def test_tenant_admin_cannot_write_other_tenants_policy(broker: Broker) -> None:
    """An acme admin writing globex's policy gets 403; a pattern over globex's resources gets 422."""
    admin = broker.client("acme-admin")
    with pytest.raises(PermissionDeniedError):
        admin.put_policy("globex", "open", _policy("globex"))
    with pytest.raises(PolicyViolationError):
        admin.put_policy("acme", "sneaky", _policy("acme", resources=["globex/models/*"]))
    with pytest.raises(PermissionDeniedError):
        broker.client("acme-wl").put_policy("acme", "x", _policy("acme"))


def test_revoked_device_with_live_token(broker: Broker) -> None:
    """A device revoked after its token was issued gets no key at the next release."""
    op = broker.client("operator")
    op.add_device("dev-rev", "insecure-sample", ["acme"])
    client = broker.client("acme-wl")
    session, _ = client.attest(SampleAttester(device_id="dev-rev"))
    assert client.release(session, "acme/models/small@1").file_key is not None
    op.device_action("dev-rev", "revoke")
    start = broker.audit_size()
    with pytest.raises(ReleaseDeniedError) as info:
        client.release(session, "acme/models/small@1")
    assert ["device"] == list(info.value.reasons)
    assert "device_revoked" in _last(broker, start, "policy.decision").reasons
    with pytest.raises(PermissionDeniedError):
        client.attest(SampleAttester(device_id="dev-rev"))


def test_immutable_policy_and_next_release_semantics(broker: Broker) -> None:
    """A policy change applies at the very next release; an immutable policy cannot be edited."""
    admin = broker.client("acme-admin")
    op = broker.client("operator")
    pub = broker.client("acme-pub")
    admin.put_policy("acme", "strict", _policy("acme"))
    from weightvault.format.keys import FileKey

    pub.register_model("acme", "strict-model", "1", policy="strict", file_key=FileKey.generate(), files=[])
    client = broker.client("acme-wl")
    session, _ = client.attest(SampleAttester())
    client.release(session, "acme/models/strict-model@1")
    admin.put_policy("acme", "strict", _policy("acme", rule={"claim": "sample.clearance", "equals": "top"}))
    start = broker.audit_size()
    with pytest.raises(ReleaseDeniedError):
        client.release(session, "acme/models/strict-model@1")
    assert 2 == _last(broker, start, "policy.decision").policy_version
    admin.put_policy("acme", "frozen", _policy("acme", immutable=True))
    start = broker.audit_size()
    with pytest.raises(ConflictError):
        admin.put_policy("acme", "frozen", _policy("acme"))
    assert ("immutable",) == _last(broker, start, "policy.change.fail").reasons
    with pytest.raises(ConflictError):
        op.put_policy("acme", "frozen", _policy("acme"))


def test_verifier_the_policy_does_not_name(broker: Broker) -> None:
    """Sample evidence cannot satisfy a policy that lists only attestation-token; a passport can."""
    admin = broker.client("acme-admin")
    admin.put_policy("acme", "passport-only", _policy("acme", verifiers=["attestation-token"]))
    from weightvault.format.keys import FileKey

    broker.client("acme-pub").register_model(
        "acme", "pp", "1", policy="passport-only", file_key=FileKey.generate(), files=[]
    )
    client = broker.client("acme-wl")
    session, _ = client.attest(SampleAttester())
    start = broker.audit_size()
    with pytest.raises(ReleaseDeniedError):
        client.release(session, "acme/models/pp@1")
    assert any("insecure-sample is not accepted" in r for r in _last(broker, start, "policy.decision").reasons)
    passport = TokenAttester(lambda rd: broker.passport(rd, now=int(time.time())))
    session, keys = client.attest(passport, release="acme/models/pp@1")
    assert keys is not None
    assert keys.file_key is not None
    wrong = TokenAttester(lambda rd: broker.passport(b"x" * 32, now=int(time.time())))
    with pytest.raises(EvidenceError):
        client.attest(wrong)


@pytest.mark.parametrize(
    ("headers", "content", "status", "code"),
    [
        ({"content-type": "application/json"}, b"{not json", 400, "invalid_json"),
        ({"content-type": "application/json"}, b"[" * 20_000, 400, "invalid_json"),  # a RecursionError, once
        ({"content-type": "application/json"}, b'{"device_id": "a", "device_id": "b"}', 400, "invalid_json"),
        ({"content-type": "application/json"}, b'{"device_id": NaN}', 400, "invalid_json"),
        ({"content-type": "text/plain"}, b"{}", 415, "unsupported_media_type"),
        ({"content-type": "application/json"}, b'{"device_id": "x", "extra": 1}', 422, "invalid_request"),
        ({"content-type": "application/json"}, b'{"device_id": 5}', 422, "invalid_request"),
        ({"content-type": "application/json"}, b"[" * 300_000, 413, "payload_too_large"),
    ],
)
def test_malformed_requests(broker: Broker, headers: dict[str, str], content: bytes, status: int, code: str) -> None:
    """Malformed JSON (deeply nested, duplicate keys, NaN too), wrong content type, unknown fields,
    wrong types and oversize bodies get problem+json."""
    reply = httpx.post(
        broker.url + "/v1/challenges",
        content=content,
        headers={"authorization": f"Bearer {broker.tokens['acme-wl']}", **headers},
    )
    assert (status, code) == (reply.status_code, reply.json()["code"])
    assert reply.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("token", [None, "garbage", "wv1_acme-wl.wrongsecret", "wv1_nobody.x"])
def test_missing_or_wrong_api_token(broker: Broker, token: str | None) -> None:
    """No token, a malformed one, a wrong secret and an unknown principal all get 401."""
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    reply = httpx.post(broker.url + "/v1/challenges", content=b"{}", headers=headers)
    assert (401, "unauthenticated") == (reply.status_code, reply.json()["code"])


def test_invalid_result_tokens(broker: Broker) -> None:
    """A forged or truncated result token is refused with 401."""
    client = broker.client("acme-wl")
    session, _ = client.attest(SampleAttester())
    header, payload, signature = session.token.split(".")
    for bad in (f"{header}.{payload}.{signature[:-4]}AAAA", f"{header}.{payload}", "x.y.z"):
        start = broker.audit_size()
        with pytest.raises(AuthenticationError):
            client.request("POST", "/v1/release", {"token": bad, "resource": "acme/models/small@1"})
        denied = _last(broker, start, "policy.decision")  # every refusal is a logged decision
        assert ("deny", ["result_token_invalid"]) == (denied.decision, denied.details["codes"])
        assert ("acme-wl", "acme/models/small@1") == (denied.actor, denied.resource)


def test_an_attest_for_an_unknown_challenge_is_audited(broker: Broker) -> None:
    """A challenge id that does not exist (or is another principal's) is refused as not found, and logged."""
    client = broker.client("acme-wl")
    body = _attest_body(client)
    other = broker.client("acme-wl2")
    start = broker.audit_size()
    with pytest.raises(NotFoundError):
        other.request("POST", "/v1/attest", body)
    assert ("challenge_unknown",) == _last(broker, start, "attest.fail").reasons


def test_every_refused_release_is_audited_with_a_reason_code(broker: Broker) -> None:
    """An unknown model, another tenant's model, a malformed request: each refusal leaves a deny decision."""
    client = broker.client("acme-wl")
    session, _ = client.attest(SampleAttester())
    cases: list[tuple[str, type[Exception], str]] = [
        ("acme/models/nope@1", NotFoundError, "model_not_found"),
        ("globex/models/small@1", PermissionDeniedError, "resource_not_in_tenant"),
        ("not-a-resource", InvalidRequestError, "invalid_request"),
    ]
    for resource, error, code in cases:
        start = broker.audit_size()
        with pytest.raises(error):
            client.release(session, resource)
        denied = _last(broker, start, "policy.decision")
        assert ("deny", [code]) == (denied.decision, denied.details["codes"])


def test_roles_are_enforced(broker: Broker) -> None:
    """Publishers cannot attest, workloads cannot create principals, auditors read only their tenant."""
    with pytest.raises(PermissionDeniedError):
        broker.client("acme-pub").challenge()
    with pytest.raises(PermissionDeniedError):
        broker.client("acme-wl").create_principal("x", "workload", "acme")
    with pytest.raises(PermissionDeniedError):
        broker.client("acme-admin").create_principal("x", "tenant-admin", "acme")
    assert broker.client("acme-aud").audit_events("acme")
    with pytest.raises(PermissionDeniedError):
        broker.client("acme-aud").audit_events("globex")
    with pytest.raises(InvalidRequestError):
        broker.client("operator").create_tenant("Bad Name")


def test_callers_see_coarse_reasons_audit_holds_full_ones(broker: Broker) -> None:
    """A denied release tells the caller 'policy'; the audit record names the failed condition."""
    admin = broker.client("acme-admin")
    admin.put_policy("acme", "needs-gpu", _policy("acme", rule={"claim": "token.submods.gpu.cc", "equals": "on"}))
    from weightvault.format.keys import FileKey

    broker.client("acme-pub").register_model(
        "acme", "gpu-model", "1", policy="needs-gpu", file_key=FileKey.generate(), files=[]
    )
    client = broker.client("acme-wl")
    session, _ = client.attest(SampleAttester())
    start = broker.audit_size()
    with pytest.raises(ReleaseDeniedError) as info:
        client.release(session, "acme/models/gpu-model@1")
    assert "token.submods" not in str(info.value)
    assert any("token.submods.gpu.cc" in r for r in _last(broker, start, "policy.decision").reasons)


def test_rate_limit_per_principal(tmp_path: Path) -> None:
    """A principal exceeding its rate gets 429; another principal is unaffected."""
    import numpy as np
    from safetensors.numpy import save_file

    plain = tmp_path / "p.safetensors"
    save_file({"x": np.zeros(4, np.float32)}, str(plain))
    with running_broker(tmp_path, plain, rate=(1.0, 40)) as limited:
        client = limited.client("acme-wl")

        def exhaust() -> None:
            for _ in range(200):
                client.challenge()

        with pytest.raises(RateLimitedError):
            exhaust()
        with pytest.raises(RateLimitedError):
            exhaust()  # refused again within the minute: recorded once
        limited.client("globex-wl").challenge()
        # Guessing tokens is slowed too: after a burst of failures, 429 (and no more auth.fail records).
        statuses = [
            httpx.get(limited.url + "/v1/keys", headers={"authorization": f"Bearer wv1_acme-wl.guess{i}"}).status_code
            for i in range(30)
        ]
        assert statuses[:20] == [401] * 20
        assert 429 in statuses[20:]
        events = limited.events(0, until="rate.limit")
        limits = [e for _, e in events if e.type == "rate.limit"]
        assert [(e.actor, e.details["limiter"]) for e in limits if e.actor == "acme-wl"] == [("acme-wl", "principal")]
        assert any(e.details["limiter"] == "auth-fail" for e in limits)
        assert len([e for _, e in events if e.type == "auth.fail"]) <= 21
        assert all(e.hmac["client"].startswith("hmac-sha256:") for e in limits)
        assert "127.0.0.1" not in json.dumps([e.to_json() for _, e in events])


def test_tls_once(tmp_path: Path) -> None:
    """The broker serves TLS when configured; the client verifies the certificate against a CA file."""
    import numpy as np
    from safetensors.numpy import save_file

    from tests.helpers import self_signed

    cert_path, key_path = self_signed(tmp_path)
    plain = tmp_path / "p.safetensors"
    save_file({"x": np.zeros(4, np.float32)}, str(plain))
    with running_broker(tmp_path, plain, tls=(cert_path, key_path)) as tls_broker:
        assert tls_broker.url.startswith("https://")
        with BrokerClient(tls_broker.url, tls_broker.tokens["operator"], verify=str(cert_path)) as client:
            client.create_tenant("tls-tenant")
        with BrokerClient(tls_broker.url, tls_broker.tokens["operator"]) as untrusted, pytest.raises(Exception):  # noqa: B017
            untrusted.create_tenant("x")


def test_device_claims_come_only_from_evidence_that_proves_the_device(broker: Broker) -> None:
    """A passport binds the device its issuer names, if registered as a token device; a challenge naming a
    device needs evidence that proves it; device.kind reaches the policy only for a proven device."""
    op = broker.client("operator")
    op.add_device("gpu-pp", "token", ["acme"])
    op.add_device("sample-dev", "insecure-sample", ["acme"])
    with pytest.raises(InvalidRequestError):
        op.add_device("fake-tpm", "tpm", ["acme"])
    admin = broker.client("acme-admin")
    admin.put_policy(
        "acme",
        "token-device",
        _policy(
            "acme",
            rule={"allOf": [{"claim": "device.kind", "equals": "token"}, {"claim": "device.id", "equals": "gpu-pp"}]},
        ),
    )
    from weightvault.format.keys import FileKey

    broker.client("acme-pub").register_model(
        "acme", "pp-dev", "1", policy="token-device", file_key=FileKey.generate(), files=[]
    )
    client = broker.client("acme-wl")
    now = int(time.time())
    no_device = TokenAttester(lambda rd: broker.passport(rd, now=now))
    start = broker.audit_size()
    with pytest.raises(PermissionDeniedError):
        client.attest(no_device, device_id="gpu-pp")
    assert ("device_not_attested",) == _last(broker, start, "attest.fail").reasons
    other = TokenAttester(lambda rd: broker.passport(rd, now=now, ueid="sample-dev"))
    start = broker.audit_size()
    with pytest.raises(PermissionDeniedError):
        client.attest(other)
    assert ("device_kind_insecure-sample_not_proven_by_this_verifier",) == _last(broker, start, "attest.fail").reasons
    named = TokenAttester(lambda rd: broker.passport(rd, now=now, ueid="gpu-pp"))
    _, released = client.attest(named, device_id="gpu-pp", release="acme/models/pp-dev@1")
    assert released is not None
    session, _ = client.attest(no_device)
    with pytest.raises(ReleaseDeniedError) as info:
        client.release(session, "acme/models/pp-dev@1")
    assert ("conditions_not_met",) == info.value.codes


def test_a_passport_claim_cannot_pose_as_the_issuer_name(broker: Broker) -> None:
    """token.issuer is the configured issuer's name even when the passport carries an 'issuer' claim."""
    admin = broker.client("acme-admin")
    admin.put_policy("acme", "by-issuer", _policy("acme", rule={"claim": "token.issuer", "equals": "nvidia-nras"}))
    from weightvault.format.keys import FileKey

    broker.client("acme-pub").register_model(
        "acme", "by-issuer", "1", policy="by-issuer", file_key=FileKey.generate(), files=[]
    )
    client = broker.client("acme-wl")
    posing = TokenAttester(lambda rd: broker.passport(rd, now=int(time.time()), issuer="nvidia-nras"))
    session, _ = client.attest(posing)
    with pytest.raises(ReleaseDeniedError):
        client.release(session, "acme/models/by-issuer@1")


def test_a_locked_audit_log_answers_503_and_readiness_says_so(tmp_path: Path) -> None:
    """A lock held on the audit database makes writes fail closed with 503 audit_unavailable in
    problem+json (not a 500 after 30 s); readiness turns 503 with the reason while liveness stays 200."""
    import sqlite3

    import numpy as np
    from safetensors.numpy import save_file

    plain = tmp_path / "p.safetensors"
    save_file({"w": np.zeros(4, dtype=np.float32)}, str(plain))
    with running_broker(tmp_path, plain) as b:
        healthy = httpx.get(b.url + "/v1/health/ready")
        assert (200, "ok") == (healthy.status_code, healthy.json()["status"])
        lock = sqlite3.connect(b.base / "data" / "audit.db", isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            reply = httpx.put(
                b.url + "/v1/tenants/acme/policies/p2",
                json={"document": _policy("acme")},
                headers={"authorization": f"Bearer {b.tokens['acme-admin']}"},
                timeout=60,
            )
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        assert (503, "audit_unavailable") == (reply.status_code, reply.json()["code"])
        assert reply.headers["content-type"].startswith("application/problem+json")
        ready = httpx.get(b.url + "/v1/health/ready")
        assert 503 == ready.status_code
        assert any("audit log failed" in p for p in ready.json()["problems"])
        assert 503 == httpx.get(b.url + "/v1/health").status_code
        assert 200 == httpx.get(b.url + "/v1/health/live").status_code
        # Reads of sensitive objects are recorded too (object.read), so they are refused as well.
        listing = httpx.get(
            b.url + "/v1/tenants/acme/policies", headers={"authorization": f"Bearer {b.tokens['acme-admin']}"}
        )
        assert (503, "audit_unavailable") == (listing.status_code, listing.json()["code"])
        store = BrokerStore(read_config(b.base / "broker.toml").database_url)
        try:
            names = {row.name for row in store.catalogue.policies("acme")}
        finally:
            store.close()
        assert "p2" not in names  # nothing changed without its audit record
