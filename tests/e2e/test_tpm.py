"""TPM 2.0 attestation against a real software TPM (swtpm) and the real broker process.

Every bad input asserts both the HTTP outcome and the audit record.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.broker_fixture import Broker, _policy, running_broker
from tests.e2e.swtpm import SWTPM, TPMTemplate, make_template
from weightvault.attestation.interfaces import report_data
from weightvault.client.broker import BrokerClient, BrokerIdentity
from weightvault.crypto.keywrap import HPKEKem, hpke_generate
from weightvault.errors import (
    ChallengeExpiredError,
    ChallengeUsedError,
    ConflictError,
    EvidenceError,
    NotFoundError,
    PermissionDeniedError,
    QuoteError,
    ReleaseDeniedError,
)
from weightvault.loaders import numpy as wv_numpy

pytestmark = [pytest.mark.e2e, pytest.mark.swtpm]

WORKLOAD = hashlib.sha256(b"approved serving image v1").digest()


def _tpm_attester(tpm: SWTPM) -> Any:
    from weightvault.attestation.tpm.attester import TPMAttester

    return TPMAttester.open(tpm.tcti)


@pytest.fixture(scope="module")
def tpm_broker(tpm_template: TPMTemplate, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    import numpy as np
    from safetensors.numpy import save_file

    tmp = tmp_path_factory.mktemp("tpm-broker")
    plain = tmp / "small.safetensors"
    save_file({"w": np.arange(1000, dtype=np.float32)}, str(plain))
    tpm_section = (
        f'\n[verifiers.tpm]\nek_roots = ["{tpm_template.root_cert}"]\n'
        f'ek_intermediates = ["{tpm_template.issuer_cert}"]\n'
    )
    with running_broker(
        tmp, plain, extra_config=tpm_section, allow=["insecure-sample", "attestation-token", "tpm"]
    ) as broker:
        admin = broker.client("acme-admin")
        with _StartCopy(tpm_template, tmp / "reference") as reference, _tpm_attester(reference) as ref:
            pcr7 = ref.read_pcrs([7])[7].hex()
        admin.put_refset("acme", "secureboot", [pcr7])
        expected23 = hashlib.sha256(bytes(32) + WORKLOAD).hexdigest()
        admin.put_policy(
            "acme",
            "open",
            _policy(
                "acme",
                verifiers=["tpm"],
                rule={
                    "allOf": [
                        {"claim": "tpm.pcr.sha256.7", "in": {"refset": "secureboot"}},
                        {"claim": "tpm.pcr.sha256.23", "equals": expected23},
                        {"claim": "device.kind", "equals": "tpm"},
                    ]
                },
            ),
        )
        yield broker


class _StartCopy:
    """A TPM started from a copy of the template (context manager)."""

    def __init__(self, template: TPMTemplate, where: Path) -> None:
        import shutil

        shutil.copytree(template.state, where)
        self.tpm = SWTPM(where)

    def __enter__(self) -> SWTPM:
        return self.tpm.start()

    def __exit__(self, *exc: object) -> None:
        self.tpm.stop()


_counter = iter(range(1000))


@pytest.fixture
def device(tpm_broker: Broker, swtpm: SWTPM) -> Iterator[tuple[str, SWTPM]]:
    """The test's TPM enrolled (and activated) as a fresh device of acme; revoked afterwards."""
    device_id = f"tpm-{next(_counter)}"
    op = tpm_broker.client("operator")
    with _tpm_attester(swtpm) as tpm:
        op.enrol_tpm_device(tpm, device_id, ["acme"])
    yield device_id, swtpm
    op.device_action(device_id, "revoke")


def _measure(tpm: SWTPM, digest: bytes = WORKLOAD) -> None:
    with _tpm_attester(tpm) as attester:
        attester.extend(23, digest)


def _last(broker: Broker, since: int, type: str) -> Any:
    found = [e for _, e in broker.events(since) if e.type == type]
    assert found, f"no {type} after {since}"
    return found[-1]


def _attest_body(
    client: BrokerClient, tpm: SWTPM, device_id: str, *, selection: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    ch = client.challenge(device_id)
    _, public = hpke_generate(HPKEKem.X25519)
    rd = report_data(ch["challenge_id"], base64.b64decode(ch["nonce"]), ch["tenant"], "x25519", public)
    if selection is not None:
        ch = {**ch, "tpm": {"pcr_selection": selection}}
    with _tpm_attester(tpm) as attester:
        evidence = attester.evidence(rd, ch)
    body = {
        "challenge_id": ch["challenge_id"],
        "hpke": {"kem": "x25519", "public": base64.b64encode(public).decode()},
        "evidence": evidence,
    }
    return body, ch


def test_enrolled_tpm_releases_keys_and_loads_the_model(tpm_broker: Broker, device: tuple[str, SWTPM]) -> None:
    """An activated TPM running the approved workload gets the model key; claims carry the PCRs."""
    device_id, tpm = device
    _measure(tpm)
    start = tpm_broker.audit_size()
    with _tpm_attester(tpm) as attester:
        identity = BrokerIdentity(tpm_broker.client("acme-wl"), attester, device_id=device_id)
        arrays = wv_numpy.load_file(tpm_broker.models["acme"], [identity])
    assert ["w"] == list(arrays)
    passed = _last(tpm_broker, start, "attest.pass")
    assert ("tpm", device_id) == (passed.details["verifier"], passed.details["device"])
    assert "allow" == _last(tpm_broker, start, "policy.decision").decision


def test_challenge_names_the_pcr_selection(tpm_broker: Broker, device: tuple[str, SWTPM]) -> None:
    """A challenge for a TPM device tells the attester which PCRs to quote."""
    ch = tpm_broker.client("acme-wl").challenge(device[0])
    assert "sha256:0,1,2,3,4,5,6,7,23" == ch["tpm"]["pcr_selection"]


def test_replayed_quote_against_a_new_challenge(tpm_broker: Broker, device: tuple[str, SWTPM]) -> None:
    """A quote captured for one challenge fails against the next: report_data_mismatch."""
    device_id, tpm = device
    client = tpm_broker.client("acme-wl")
    body, _ = _attest_body(client, tpm, device_id)
    client.request("POST", "/v1/attest", body)
    start = tpm_broker.audit_size()
    with pytest.raises(ChallengeUsedError):
        client.request("POST", "/v1/attest", body)
    assert ("challenge_used",) == _last(tpm_broker, start, "attest.fail").reasons
    fresh = client.challenge(device_id)
    replay = {**body, "challenge_id": fresh["challenge_id"]}
    start = tpm_broker.audit_size()
    with pytest.raises(EvidenceError):
        client.request("POST", "/v1/attest", replay)
    assert "report_data_mismatch" in _last(tpm_broker, start, "attest.fail").reasons[0]


def test_expired_challenge_with_a_valid_quote(tpm_broker: Broker, device: tuple[str, SWTPM]) -> None:
    """A genuine quote sent after the challenge's lifetime (3 s here): 410 challenge_expired."""
    device_id, tpm = device
    _measure(tpm)
    client = tpm_broker.client("acme-wl")
    body, _ = _attest_body(client, tpm, device_id)
    time.sleep(3.5)
    start = tpm_broker.audit_size()
    with pytest.raises(ChallengeExpiredError):
        client.request("POST", "/v1/attest", body)
    assert ("challenge_expired",) == _last(tpm_broker, start, "attest.fail").reasons


def _token_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))  # type: ignore[no-any-return]


def test_event_log_replays_to_the_quote_and_becomes_claims(
    tpm_broker: Broker, device: tuple[str, SWTPM], tmp_path: Path
) -> None:
    """A measurement log kept beside PCR 23 is replayed against the quote; its events become claims."""
    from weightvault.attestation.tpm.attester import TPMAttester, record_measurement

    device_id, tpm = device
    log = tmp_path / "measurements.log"
    with _tpm_attester(tpm) as attester:
        value = record_measurement(attester, log, 23, WORKLOAD, "weightvault: serving image v1")
    assert value == hashlib.sha256(bytes(32) + WORKLOAD).digest()
    client = tpm_broker.client("acme-wl")
    with TPMAttester.open(tpm.tcti, [log]) as attester:
        session, released = client.attest(attester, device_id=device_id, release="acme/models/small@1")
    flat = json.dumps(_token_claims(session.token))
    assert "tpm.eventlog.sha256.23" in flat
    assert WORKLOAD.hex() in flat
    assert released is not None


@pytest.mark.parametrize("edit", ["altered", "dropped", "added", "reordered"])
def test_a_doctored_event_log_is_refused(tpm_broker: Broker, device: tuple[str, SWTPM], edit: str) -> None:
    """A log that does not replay to the quoted PCR 23 fails attestation: event_log_mismatch, audited."""
    from weightvault.attestation.tpm.eventlog import ALG_SHA256, EV_IPL, Event, encode_event_log

    device_id, tpm = device
    config = hashlib.sha256(b"serving config v1").digest()
    _measure(tpm)
    _measure(tpm, config)

    def event(digest: bytes) -> Event:
        return Event(23, EV_IPL, {ALG_SHA256: digest}, b"weightvault: measurement\x00")

    image, conf, other = event(WORKLOAD), event(config), event(hashlib.sha256(b"something else").digest())
    events = {
        "altered": [image, other],
        "dropped": [image],
        "added": [image, conf, other],
        "reordered": [conf, image],
    }[edit]
    client = tpm_broker.client("acme-wl")
    body, _ = _attest_body(client, tpm, device_id)
    body["evidence"]["event_logs"] = [base64.b64encode(encode_event_log(events)).decode()]
    start = tpm_broker.audit_size()
    with pytest.raises(EvidenceError):
        client.request("POST", "/v1/attest", body)
    assert "event_log_mismatch" in _last(tpm_broker, start, "attest.fail").reasons[0]
    body, _ = _attest_body(client, tpm, device_id)  # the honest log, for contrast, attests
    body["evidence"]["event_logs"] = [base64.b64encode(encode_event_log([image, conf])).decode()]
    client.request("POST", "/v1/attest", body)


def test_record_measurement_refuses_a_log_out_of_step_with_the_tpm(swtpm: SWTPM, tmp_path: Path) -> None:
    """An extend behind the log's back: the next recording fails, extends nothing and keeps the log."""
    from weightvault.attestation.tpm.attester import record_measurement

    log = tmp_path / "m.log"
    with _tpm_attester(swtpm) as attester:
        record_measurement(attester, log, 23, WORKLOAD, "weightvault: image")
        attester.extend(23, hashlib.sha256(b"unlogged").digest())
        before, pcr = log.read_bytes(), attester.read_pcrs([23])[23]
        with pytest.raises(QuoteError, match="event_log_mismatch"):
            record_measurement(attester, log, 23, WORKLOAD, "weightvault: image")
        assert (before, pcr) == (log.read_bytes(), attester.read_pcrs([23])[23])


def test_malformed_event_logs_are_refused(tpm_broker: Broker, device: tuple[str, SWTPM]) -> None:
    device_id, tpm = device
    client = tpm_broker.client("acme-wl")
    for logs, reason in (
        ([base64.b64encode(b"not a log").decode()], "event_log_malformed"),
        (["%%%"], "not base64"),
        ("one", "event_logs must be a list"),
        ([base64.b64encode(b"x").decode()] * 5, "at most 4"),
    ):
        body, _ = _attest_body(client, tpm, device_id)
        body["evidence"]["event_logs"] = logs
        start = tpm_broker.audit_size()
        with pytest.raises(EvidenceError):
            client.request("POST", "/v1/attest", body)
        assert reason in _last(tpm_broker, start, "attest.fail").reasons[0]


def test_unapproved_workload_digest(tpm_broker: Broker, device: tuple[str, SWTPM]) -> None:
    """Another digest in PCR 23 attests (the quote is genuine) but the policy denies the release."""
    device_id, tpm = device
    _measure(tpm, hashlib.sha256(b"unapproved image").digest())
    client = tpm_broker.client("acme-wl")
    start = tpm_broker.audit_size()
    with _tpm_attester(tpm) as attester, pytest.raises(ReleaseDeniedError):
        client.attest(attester, device_id=device_id, release="acme/models/small@1")
    reasons = _last(tpm_broker, start, "policy.decision").reasons
    assert any("tpm.pcr.sha256.23" in r for r in reasons)


def test_pcr_values_altered_under_an_untouched_quote(tpm_broker: Broker, device: tuple[str, SWTPM]) -> None:
    """Presenting approved PCR values with a quote of other values fails: pcr_digest_mismatch."""
    device_id, tpm = device
    _measure(tpm, hashlib.sha256(b"unapproved image").digest())
    client = tpm_broker.client("acme-wl")
    body, _ = _attest_body(client, tpm, device_id)
    body["evidence"]["pcrs"]["sha256"]["23"] = hashlib.sha256(bytes(32) + WORKLOAD).hexdigest()
    start = tpm_broker.audit_size()
    with pytest.raises(EvidenceError):
        client.request("POST", "/v1/attest", body)
    assert "pcr_digest_mismatch" in _last(tpm_broker, start, "attest.fail").reasons[0]


@pytest.mark.parametrize("selection", ["sha256:0,1,2,3,4,5,6,7", "sha1:0,1,2,3,4,5,6,7,23+sha256:0,1,2,3,4,5,6,7,23"])
def test_bad_pcr_selection(tpm_broker: Broker, device: tuple[str, SWTPM], selection: str) -> None:
    """A quote that omits a required PCR, or selects a SHA-1 bank, is refused: pcr_selection."""
    device_id, tpm = device
    client = tpm_broker.client("acme-wl")
    body, _ = _attest_body(client, tpm, device_id, selection=selection)
    start = tpm_broker.audit_size()
    with pytest.raises(EvidenceError):
        client.request("POST", "/v1/attest", body)
    assert _last(tpm_broker, start, "attest.fail").reasons[0].startswith("QuoteError: pcr_selection")


def test_never_activated_ak(tpm_broker: Broker, swtpm: SWTPM) -> None:
    """A device that stopped after step 1 of enrolment stays pending; its quotes are refused."""
    device_id = f"tpm-pending-{next(_counter)}"
    op = tpm_broker.client("operator")
    with _tpm_attester(swtpm) as tpm:
        op.request(
            "POST",
            "/v1/devices/enroll",
            {
                "id": device_id,
                "tenants": ["acme"],
                "ek_cert": base64.b64encode(tpm.ek_certificate()).decode(),
                "ek_public": base64.b64encode(tpm.ek_public()).decode(),
                "ak_public": base64.b64encode(tpm.ak_public()).decode(),
            },
        )
    client = tpm_broker.client("acme-wl")
    with pytest.raises(PermissionDeniedError):
        client.challenge(device_id)
    assert "device_pending" in _last(tpm_broker, 0, "challenge.issued").reasons
    with pytest.raises(PermissionDeniedError):
        op.request("POST", f"/v1/devices/{device_id}/credential", {"secret": base64.b64encode(b"x" * 32).decode()})
    assert ("credential_mismatch",) == _last(tpm_broker, 0, "device.enrol.fail").reasons
    op.device_action(device_id, "revoke")


def test_ek_certificate_from_another_ca(tpm_broker: Broker, tmp_path: Path) -> None:
    """A TPM whose EK certificate does not chain to the configured roots cannot enrol."""
    foreign: TPMTemplate = make_template(tmp_path, "foreign-ca")
    tpm = SWTPM(foreign.state).start()
    try:
        with _tpm_attester(tpm) as attester, pytest.raises(EvidenceError) as info:
            tpm_broker.client("operator").enrol_tpm_device(attester, f"foreign-{next(_counter)}", ["acme"])
    finally:
        tpm.stop()
    assert any("EK certificate rejected" in r for r in _last(tpm_broker, 0, "device.enrol.fail").reasons)
    assert "EK certificate rejected" in str(info.value)  # the operator is told why, not just "Attestation failed"


def test_unrestricted_key_offered_as_ak(tpm_broker: Broker, swtpm: SWTPM) -> None:
    """An unrestricted signing key is refused at enrolment; a TPMS_ATTEST forged with TPM2_Sign fails too."""
    import tpm2_pytss

    from weightvault.attestation.tpm.quote import QuoteEvidence, check_quote

    with _tpm_attester(swtpm) as tpm:
        esapi = tpm._e
        attrs = (
            tpm2_pytss.TPMA_OBJECT.FIXEDTPM
            | tpm2_pytss.TPMA_OBJECT.FIXEDPARENT
            | tpm2_pytss.TPMA_OBJECT.SENSITIVEDATAORIGIN
            | tpm2_pytss.TPMA_OBJECT.USERWITHAUTH
            | tpm2_pytss.TPMA_OBJECT.SIGN_ENCRYPT
        )
        template = tpm2_pytss.TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256", objectAttributes=attrs, nameAlg="sha256")
        handle, public, _, _, _ = esapi.create_primary(
            tpm2_pytss.TPM2B_SENSITIVE_CREATE(), template, tpm2_pytss.ESYS_TR.OWNER
        )
        body = {
            "id": f"unrestricted-{next(_counter)}",
            "tenants": ["acme"],
            "ek_cert": base64.b64encode(tpm.ek_certificate()).decode(),
            "ek_public": base64.b64encode(tpm.ek_public()).decode(),
            "ak_public": base64.b64encode(bytes(public.marshal())).decode(),
        }
        with pytest.raises(EvidenceError):
            tpm_broker.client("operator").request("POST", "/v1/devices/enroll", body)
        assert any("restricted" in r for r in _last(tpm_broker, 0, "device.enrol.fail").reasons)
        # Forge a quote: a TPMS_ATTEST of our choosing, signed with TPM2_Sign by the unrestricted key.
        real = tpm.quote(b"r" * 32, "sha256:0,1,2,3,4,5,6,7,23")
        attest, _ = tpm2_pytss.TPMS_ATTEST.unmarshal(real.quote)
        attest.attested.quote.pcrDigest = tpm2_pytss.TPM2B_DIGEST(
            hashlib.sha256(b"".join(bytes(32) for _ in range(9))).digest()
        )
        forged = bytes(attest.marshal())
        signature = esapi.sign(
            handle,
            tpm2_pytss.TPM2B_DIGEST(hashlib.sha256(forged).digest()),
            tpm2_pytss.TPMT_SIG_SCHEME(scheme=tpm2_pytss.TPM2_ALG.NULL),
            tpm2_pytss.TPMT_TK_HASHCHECK(tag=tpm2_pytss.TPM2_ST.HASHCHECK, hierarchy=tpm2_pytss.TPM2_RH.NULL),
        )
        esapi.flush_context(handle)
    evidence = QuoteEvidence(forged, bytes(signature.marshal()), dict.fromkeys([0, 1, 2, 3, 4, 5, 6, 7, 23], bytes(32)))
    with pytest.raises(QuoteError, match="ak_not_restricted"):
        check_quote(bytes(public.marshal()), b"r" * 32, evidence, required_pcrs=[0, 7, 23])


def test_tpm_restart_and_stale_token(tpm_broker: Broker, device: tuple[str, SWTPM]) -> None:
    """After a TPM reboot (new reset count), a token from before the reboot releases nothing."""
    device_id, tpm = device
    _measure(tpm)
    client = tpm_broker.client("acme-wl")
    with _tpm_attester(tpm) as attester:
        old_session, _ = client.attest(attester, device_id=device_id)
    client.release(old_session, "acme/models/small@1")
    tpm.restart()
    _measure(tpm)
    with _tpm_attester(tpm) as attester:
        client.attest(attester, device_id=device_id)
    start = tpm_broker.audit_size()
    with pytest.raises(ReleaseDeniedError):
        client.release(old_session, "acme/models/small@1")
    assert "device_rebooted_since_attestation" in _last(tpm_broker, start, "policy.decision").reasons


def test_tpm_state_rolled_back(tpm_broker: Broker, device: tuple[str, SWTPM], tmp_path: Path) -> None:
    """Restoring an older copy of the TPM state makes the counters go backwards: tpm_clock_rollback."""
    device_id, tpm = device
    client = tpm_broker.client("acme-wl")
    tpm.stop()
    old = tpm.snapshot(tmp_path / "old-state")
    tpm.start()
    with _tpm_attester(tpm) as attester:
        client.attest(attester, device_id=device_id)
    tpm.restart()
    with _tpm_attester(tpm) as attester:
        client.attest(attester, device_id=device_id)
    tpm.stop()
    tpm.restore(old)
    tpm.start()
    start = tpm_broker.audit_size()
    with _tpm_attester(tpm) as attester, pytest.raises(EvidenceError):
        client.attest(attester, device_id=device_id)
    assert "tpm_clock_rollback" in _last(tpm_broker, start, "attest.fail").reasons[0]


def test_revoked_device_and_cross_tenant(tpm_broker: Broker, device: tuple[str, SWTPM]) -> None:
    """A revoked TPM device gets nothing; a device of acme cannot obtain globex's model."""
    device_id, tpm = device
    _measure(tpm)
    client = tpm_broker.client("acme-wl")
    with _tpm_attester(tpm) as attester:
        session, _ = client.attest(attester, device_id=device_id)
    with pytest.raises(PermissionDeniedError):
        client.release(session, "globex/models/small@1")
    with pytest.raises(NotFoundError):  # another tenant's device does not exist for globex
        tpm_broker.client("globex-wl").challenge(device_id)
    client.release(session, "acme/models/small@1")
    tpm_broker.client("operator").device_action(device_id, "revoke")
    start = tpm_broker.audit_size()
    with pytest.raises(ReleaseDeniedError):
        client.release(session, "acme/models/small@1")
    assert "device_revoked" in _last(tpm_broker, start, "policy.decision").reasons
    tpm_broker.client("operator").device_action(device_id, "activate")


def test_same_tpm_cannot_enrol_twice(tpm_broker: Broker, device: tuple[str, SWTPM]) -> None:
    """Re-enrolling an enrolled TPM under another id needs the first device revoked."""
    _, tpm = device
    with _tpm_attester(tpm) as attester, pytest.raises(ConflictError):
        tpm_broker.client("operator").enrol_tpm_device(attester, f"dup-{next(_counter)}", ["acme"])


def _tools_env(tpm: SWTPM) -> dict[str, str]:
    import os

    return {**os.environ, "TPM2TOOLS_TCTI": tpm.tcti, "TSS2_LOG": "all+NONE"}


@pytest.mark.skipif(shutil.which("tpm2_quote") is None and os.environ.get("CI") != "true", reason="tpm2-tools missing")
def test_tpm2_tools_interoperability(swtpm: SWTPM, tmp_path: Path) -> None:
    """A quote made with tpm2_quote passes our verifier; our attester's quote passes tpm2_checkquote."""
    from weightvault.attestation.tpm.quote import QuoteEvidence, check_quote

    env = _tools_env(swtpm)

    def tools(*args: str) -> None:
        subprocess.run(list(args), check=True, capture_output=True, env=env, cwd=tmp_path, timeout=60)
        # No resource manager sits in front of swtpm: free the transient slots as tpm2-abrmd would.
        subprocess.run(["tpm2_flushcontext", "-t"], check=True, capture_output=True, env=env, timeout=60)

    tools("tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub")
    tools(
        "tpm2_createak",
        "-C",
        "ek.ctx",
        "-c",
        "ak.ctx",
        "-G",
        "ecc",
        "-g",
        "sha256",
        "-s",
        "ecdsa",
        "-u",
        "ak.pub",
        "-n",
        "ak.name",
    )
    nonce = hashlib.sha256(b"tools nonce").digest()
    tools(
        "tpm2_quote",
        "-c",
        "ak.ctx",
        "-l",
        "sha256:0,1,2,3,4,5,6,7,23",
        "-q",
        nonce.hex(),
        "-m",
        "quote.msg",
        "-s",
        "quote.sig",
        "-o",
        "quote.pcrs",
        "-g",
        "sha256",
        "-F",
        "values",
    )
    import tpm2_pytss
    from tpm2_pytss.utils import unmarshal_tools_pcr_values

    _, digests = unmarshal_tools_pcr_values(
        (tmp_path / "quote.pcrs").read_bytes(), tpm2_pytss.TPML_PCR_SELECTION.parse("sha256:0,1,2,3,4,5,6,7,23")
    )
    pcrs = dict(zip([0, 1, 2, 3, 4, 5, 6, 7, 23], digests, strict=True))
    check = check_quote(
        (tmp_path / "ak.pub").read_bytes(),
        nonce,
        QuoteEvidence((tmp_path / "quote.msg").read_bytes(), (tmp_path / "quote.sig").read_bytes(), pcrs),
        required_pcrs=[0, 7, 23],
    )
    assert 9 == len(check.pcrs)
    with _tpm_attester(swtpm) as attester:
        ours = attester.quote(nonce, "sha256:0,1,2,3,4,5,6,7,23")
        ak_pem = tpm2_pytss.TPM2B_PUBLIC.unmarshal(attester.ak_public())[0].to_pem()
    (tmp_path / "ours.msg").write_bytes(ours.quote)
    (tmp_path / "ours.sig").write_bytes(ours.signature)
    (tmp_path / "ours.pem").write_bytes(ak_pem)
    (tmp_path / "ours.pcrs").write_bytes(b"".join(ours.pcrs[i] for i in sorted(ours.pcrs)))
    tools("tpm2_checkquote", "-u", "ours.pem", "-m", "ours.msg", "-s", "ours.sig", "-q", nonce.hex(), "-g", "sha256")


def _wv_fails(*args: str) -> subprocess.CompletedProcess[str]:
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "weightvault", *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode != 0
    return proc


def test_command_line_enrol_measure_record_load_revoke(tpm_broker: Broker, swtpm: SWTPM) -> None:
    """The operator and workload CLI flow end to end: enroll, extend, pcrs, refset-record, load, revoke."""
    from tests.e2e.broker_fixture import wv

    device_id = f"cli-{next(_counter)}"
    broker = ["--broker", tpm_broker.url]
    op = ["--token", tpm_broker.tokens["operator"], *broker]
    assert "enrolled and activated" in wv(
        "device", "enroll", "--tcti", swtpm.tcti, "--id", device_id, "--tenant", "acme", *op
    )
    expected23 = hashlib.sha256(bytes(32) + WORKLOAD).hexdigest()
    log = swtpm.state.parent / f"{device_id}.eventlog"
    assert f"recorded in {log}" in wv(
        "device", "extend", "--tcti", swtpm.tcti, "--digest", WORKLOAD.hex(), "--event-log", str(log),
        "--description", "serving image v1",
    )  # fmt: skip
    assert b"weightvault: serving image v1\x00" in log.read_bytes()
    pcrs = json.loads(wv("device", "pcrs", "--tcti", swtpm.tcti, "--json"))
    assert expected23 == pcrs["23"]
    assert "recorded PCRs [7]" in wv(
        "admin", "refset-record", "acme", "secureboot", "--tcti", swtpm.tcti, "--pcr", "7", "--append",
        "--token", tpm_broker.tokens["acme-admin"], *broker,
    )  # fmt: skip
    sets = tpm_broker.client("acme-admin").request("GET", "/v1/tenants/acme/refsets")["refsets"]
    assert pcrs["7"] in next(s for s in sets if s["name"] == "secureboot")["items"]
    model = str(tpm_broker.models["acme"])
    wl = ["--token", tpm_broker.tokens["acme-wl"], *broker]
    load = ["load", model, "--attester", "tpm", "--tcti", swtpm.tcti, "--device-id", device_id]
    report = json.loads(wv(*load, "--event-log", str(log), "--json", *wl))
    assert ("tpm", 1) == (report["attester"], report["tensors"])
    bad = _wv_fails("device", "extend", "--tcti", swtpm.tcti, "--digest", "abc")
    assert "64 hex digits" in bad.stderr
    assert 1 == len(bad.stderr.strip().splitlines())
    assert "revoked" in wv("device", "revoke", device_id, *op)
    denied = _wv_fails("load", model, "--attester", "tpm", "--tcti", swtpm.tcti, "--device-id", device_id, *wl)
    assert 1 == len(denied.stderr.strip().splitlines())


def test_sample_evidence_cannot_borrow_an_enrolled_tpm(tpm_broker: Broker, device: tuple[str, SWTPM]) -> None:
    """A policy accepting tpm and insecure-sample that requires device.kind == tpm releases nothing to sample
    evidence naming an enrolled TPM: device claims come only from a verifier that proves that kind of device."""
    device_id, _ = device
    admin = tpm_broker.client("acme-admin")
    admin.put_policy(
        "acme",
        "mixed",
        _policy("acme", verifiers=["tpm", "insecure-sample"], rule={"claim": "device.kind", "equals": "tpm"}),
    )
    from weightvault.client.broker import SampleAttester
    from weightvault.format.keys import FileKey

    tpm_broker.client("acme-pub").register_model(
        "acme", "mixed-model", "1", policy="mixed", file_key=FileKey.generate(), files=[]
    )
    client = tpm_broker.client("acme-wl")
    for attester, reason in (
        (SampleAttester(), "device_not_attested"),
        (SampleAttester(device_id=device_id), "device_kind_tpm_not_proven_by_this_verifier"),
    ):
        start = tpm_broker.audit_size()
        with pytest.raises(PermissionDeniedError):
            client.attest(attester, device_id=device_id, release="acme/models/mixed-model@1")
        assert reason == _last(tpm_broker, start, "attest.fail").reasons[0]
    # Sample evidence naming the TPM device without a device challenge is refused the same way.
    with pytest.raises(PermissionDeniedError):
        client.attest(SampleAttester(device_id=device_id), release="acme/models/mixed-model@1")
