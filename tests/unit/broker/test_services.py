"""Each broker service through the facade, in process: who may do what, what is stored, what is logged."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.broker.conftest import ADMIN, OPEN_POLICY, OPERATOR, PUBLISHER, Clock, InProcess, start_in_process
from weightvault.broker.config import BrokerConfig
from weightvault.broker.service import Principal, Role
from weightvault.client.broker import SampleAttester
from weightvault.crypto.keywrap import HPKEKem, hpke_generate
from weightvault.errors import (
    ApprovalRequiredError,
    AuthenticationError,
    ConflictError,
    InvalidRequestError,
    KeyAccessError,
    NotFoundError,
    PermissionDeniedError,
    SealedError,
    SessionEndedError,
    TokenExpiredError,
)
from weightvault.format.keys import FileKey

GLOBEX_ADMIN = Principal("globex-admin", "globex", Role.TENANT_ADMIN)
AUDITOR = Principal("acme-auditor", "acme", Role.AUDITOR)


# -- principals and tenants ----------------------------------------------------------------------


def test_api_tokens_authenticate_until_disabled(in_process: InProcess) -> None:
    """A token resolves to its principal; a wrong secret, a malformed token or a disabled principal do not."""
    b = in_process.broker
    token = in_process.tokens["acme-workload"]
    assert Principal("acme-workload", "acme", Role.WORKLOAD) == b.authenticate(token)
    for bad in ("", "wv1_acme-workload", token[:-2] + "xx", "wv1_nobody.secret", "x" * 300):
        with pytest.raises(AuthenticationError):
            b.authenticate(bad)
    b.disable_principal(OPERATOR, "acme-workload")
    with pytest.raises(AuthenticationError):
        b.authenticate(token)


def test_tenant_admins_manage_only_their_own_principals(in_process: InProcess) -> None:
    """Tenant admins create publishers, workloads and auditors of their tenant, never admins or others' principals."""
    b = in_process.broker
    b.create_principal(ADMIN, "acme-wl3", "acme", "workload")
    with pytest.raises(PermissionDeniedError):
        b.create_principal(ADMIN, "acme-boss", "acme", "tenant-admin")
    with pytest.raises(PermissionDeniedError):
        b.create_principal(ADMIN, "globex-x", "globex", "workload")
    with pytest.raises(NotFoundError):  # another tenant's principal is invisible, not forbidden
        b.disable_principal(ADMIN, "globex-workload")
    with pytest.raises(InvalidRequestError):
        b.create_principal(OPERATOR, "x", "acme", "superuser")
    assert {"acme-admin", "acme-auditor", "acme-publisher", "acme-workload", "acme-wl3"} == {
        p.id
        for p in b.list_principals(ADMIN, "globex")  # asking for globex still lists acme
    }


def test_rotating_a_token_stops_the_old_one_at_once(in_process: InProcess) -> None:
    """Anyone rotates their own token; operators and tenant admins those they manage, never another
    operator's or an approver's; a disabled principal stays disabled; each rotation is logged."""
    b = in_process.broker
    old = in_process.tokens["acme-workload"]
    me = b.authenticate(old)
    start = in_process.audit.size
    new = b.rotate_principal_token(me, "acme-workload")
    assert new != old
    assert new.startswith("wv1_acme-workload.")
    with pytest.raises(AuthenticationError):
        b.authenticate(old)
    assert me == b.authenticate(new)
    logged = in_process.last(start, "principal.change.intent")
    assert ("principal:acme-workload", "acme-workload", {"op": "rotate-token"}) == (
        logged.resource,
        logged.actor,
        logged.details,
    )
    assert new not in str([e for _, e in in_process.audit.events(start=start)])
    assert b.authenticate(b.rotate_principal_token(ADMIN, "acme-publisher")).id == "acme-publisher"
    assert b.authenticate(b.rotate_principal_token(OPERATOR, "globex-admin")).id == "globex-admin"
    with pytest.raises(NotFoundError):  # another tenant's, or another admin: invisible to a tenant admin
        b.rotate_principal_token(ADMIN, "globex-workload")
    with pytest.raises(NotFoundError):
        b.rotate_principal_token(ADMIN, "operator")
    with pytest.raises(PermissionDeniedError):  # a publisher manages nobody else
        b.rotate_principal_token(PUBLISHER, "acme-workload")
    b.create_principal(OPERATOR, "op2", None, "operator")
    b.create_principal(OPERATOR, "approver1", None, "approver")
    for person in ("op2", "approver1"):
        with pytest.raises(PermissionDeniedError, match="rotate their own"):
            b.rotate_principal_token(OPERATOR, person)
    b.disable_principal(OPERATOR, "acme-auditor")
    with pytest.raises(ConflictError, match="disabled"):
        b.rotate_principal_token(OPERATOR, "acme-auditor")
    with pytest.raises(AuthenticationError):
        b.authenticate(in_process.tokens["acme-auditor"])
    with pytest.raises(NotFoundError):
        b.rotate_principal_token(OPERATOR, "nobody")


def test_a_rotated_token_ends_the_console_sessions_opened_with_it(in_process: InProcess) -> None:
    console = in_process.broker.console
    session = console.sign_in(in_process.tokens["acme-auditor"])
    auditor = console.principal(session.secret)
    in_process.broker.rotate_principal_token(auditor, "acme-auditor")
    with pytest.raises(SessionEndedError, match="no longer valid"):
        console.principal(session.secret)


def test_api_tokens_expire_at_their_roles_maximum_age_unless_asked_for_less(tmp_path: Path, clock: Clock) -> None:
    """[principals] token_max_age_days: a workload's token stops at its expiry with its own error (only
    for the right secret), a rotation gives a fresh one, expires_in shortens but never lengthens it,
    roles not named never expire, and operators' tokens never do."""
    config = BrokerConfig(base=tmp_path, broker_id="broker.test", token_max_age_days={"workload": 1.0})
    with start_in_process(tmp_path, clock, config=config) as env:
        b = env.broker
        token = env.tokens["acme-workload"]
        start = env.audit.size
        assert b.token_expires_at("acme-workload") == int(clock.now) + 86400
        clock.now += 86399
        assert b.authenticate(token).id == "acme-workload"
        clock.now += 1
        with pytest.raises(TokenExpiredError):
            b.authenticate(token)
        with pytest.raises(AuthenticationError) as wrong:  # a wrong secret learns nothing about expiry
            b.authenticate(token[:-2] + "xx")
        assert type(wrong.value) is AuthenticationError
        # The principal cannot renew itself; its tenant admin can, for a full day again.
        new = b.rotate_principal_token(ADMIN, "acme-workload")
        assert b.token_expires_at("acme-workload") == int(clock.now) + 86400
        logged = env.last(start, "principal.change.intent")
        assert {"op": "rotate-token", "expires_at": int(clock.now) + 86400} == dict(logged.details)
        assert b.authenticate(new).id == "acme-workload"
        # Shorter on request; longer is refused, and so is any expiry for an operator.
        short = b.rotate_principal_token(ADMIN, "acme-workload", expires_in=60)
        with pytest.raises(InvalidRequestError, match="1 to 86400 seconds"):
            b.rotate_principal_token(ADMIN, "acme-workload", expires_in=86401)
        with pytest.raises(InvalidRequestError, match="operator tokens do not expire"):
            b.create_principal(OPERATOR, "op2", None, "operator", expires_in=60)
        clock.now += 60
        with pytest.raises(TokenExpiredError):
            b.authenticate(short)
        # Roles without a maximum: never, unless asked.
        assert b.token_expires_at("acme-publisher") is None
        b.create_principal(OPERATOR, "acme-ci", "acme", "publisher", expires_in=3600)
        assert b.token_expires_at("acme-ci") == int(clock.now) + 3600
        clock.now += 10 * 365 * 86400
        assert b.authenticate(env.tokens["acme-publisher"]).id == "acme-publisher"
        assert b.authenticate(env.tokens["operator"]).id == "operator"


def test_an_expired_token_is_told_apart_over_http_and_recorded(tmp_path: Path, clock: Clock) -> None:
    """401 token_expired (TokenExpiredError in the client), an auth.fail saying so, and the console
    session opened with the token ends with it."""
    config = BrokerConfig(base=tmp_path, broker_id="broker.test", token_max_age_days={"auditor": 0.5})
    with start_in_process(tmp_path, clock, config=config) as env:
        session = env.broker.console.sign_in(env.tokens["acme-auditor"])
        auditor = env.client("acme-auditor")
        auditor.request("GET", "/v1/tenants/acme/policies")
        listed = {
            p["id"]: p["expires_at"] for p in env.client("operator").request("GET", "/v1/principals")["principals"]
        }
        assert listed["acme-auditor"] == int(clock.now) + 43200
        assert listed["operator"] is None
        clock.now += 43200
        start = env.audit.size
        with pytest.raises(TokenExpiredError):
            auditor.request("GET", "/v1/tenants/acme/policies")
        failed = env.last(start, "auth.fail")
        assert (("API token expired",), {"expired": True}) == (tuple(failed.reasons), dict(failed.details))
        with pytest.raises(SessionEndedError):
            env.broker.console.principal(session.secret)
        # Rotation over HTTP, with a shorter life, answers when the new token expires.
        answer = env.client("operator").request("POST", "/v1/principals/acme-auditor/token", {"expires_in": 600})
        assert answer["expires_at"] == int(clock.now) + 600
        env.tokens["acme-auditor"] = answer["token"]
        assert env.client("acme-auditor").request("GET", "/v1/tenants/acme/policies") is not None


def test_tenants_need_the_root_key(in_process: InProcess) -> None:
    """A sealed broker (no root key) cannot create a tenant: its KEK could not be wrapped."""
    b = in_process.broker
    b.keyring.wipe()
    with pytest.raises(SealedError, match="custody open unseal"):
        b.create_tenant(OPERATOR, "initech")
    assert not b.principals.tenant_exists("initech")


# -- devices ---------------------------------------------------------------------------------------


def test_devices_are_registered_by_kind_and_seen_per_tenant(in_process: InProcess) -> None:
    """Only token and insecure-sample devices are registered; TPMs enrol. Tenants see only their devices."""
    b = in_process.broker
    b.add_device(OPERATOR, "gpu-1", "token", ["acme"])
    with pytest.raises(InvalidRequestError):
        b.add_device(OPERATOR, "gpu-2", "tpm", ["acme"])
    with pytest.raises(InvalidRequestError):
        b.add_device(OPERATOR, "gpu-3", "whatever", ["acme"])
    with pytest.raises(ConflictError):
        b.add_device(OPERATOR, "gpu-1", "token", ["acme"])
    with pytest.raises(PermissionDeniedError):
        b.add_device(ADMIN, "gpu-4", "token", ["acme"])
    assert ["gpu-1"] == [d.id for d in b.list_devices(AUDITOR, None)]
    assert [] == b.list_devices(GLOBEX_ADMIN, "acme")
    b.set_device_status(OPERATOR, "gpu-1", "revoked")
    assert "revoked" == b.store.devices.by_id("gpu-1").status  # type: ignore[union-attr]
    assert b.store.devices.in_tenant("globex", "gpu-1") is None


# -- catalogue ---------------------------------------------------------------------------------------


def test_policies_are_versioned_and_immutable_ones_stay(in_process: InProcess) -> None:
    """Each put adds a version; an immutable policy refuses the next, and the refusal is logged."""
    b = in_process.broker
    assert 2 == b.put_policy(ADMIN, "acme", "open", {**OPEN_POLICY, "description": "v2"})
    b.put_policy(ADMIN, "acme", "frozen", {**OPEN_POLICY, "immutable": True})
    start = in_process.audit.size
    with pytest.raises(ConflictError):
        b.put_policy(ADMIN, "acme", "frozen", OPEN_POLICY)
    assert ("immutable",) == in_process.last(start, "policy.change.fail").reasons
    with pytest.raises(PermissionDeniedError):
        b.put_policy(GLOBEX_ADMIN, "acme", "open", OPEN_POLICY)
    assert [1, 2] == [p.version for p in b.list_policies(AUDITOR, "acme") if p.name == "open"]


def test_models_register_once_and_are_read_per_tenant(in_process: InProcess) -> None:
    """A model version registers once; another tenant's publisher cannot register into acme."""
    b = in_process.broker
    b.register_model(PUBLISHER, "acme", "m", "1", policy="open", file_key=FileKey.generate(), files=[])
    with pytest.raises(ConflictError):
        b.register_model(PUBLISHER, "acme", "m", "1", policy="open", file_key=FileKey.generate(), files=[])
    with pytest.raises(PermissionDeniedError):
        b.register_model(
            Principal("gp", "globex", Role.PUBLISHER),
            "acme",
            "x",
            "1",
            policy="open",
            file_key=FileKey.generate(),
            files=[],
        )
    with pytest.raises(InvalidRequestError):
        b.register_model(
            PUBLISHER, "acme", "bad files", "1", policy="open", file_key=FileKey.generate(), files=[{"x": "y"}]
        )
    assert ["acme/models/m@1"] == [m.resource for m in b.list_models(PUBLISHER, "acme")]
    with pytest.raises(PermissionDeniedError):
        b.list_models(GLOBEX_ADMIN, "acme")


def test_a_sealed_registration_opens_only_for_its_model(in_process: InProcess) -> None:
    """The publisher's sealed file key is bound to tenant, name and version."""
    from weightvault.broker.protocol import registration_info
    from weightvault.crypto.keywrap import hpke_seal

    b = in_process.broker
    key = b.registration_key
    fk = FileKey.generate()
    sealed = hpke_seal(key.kem, key.recipient.public, fk.reveal(), registration_info("acme", "m", "1"))
    with pytest.raises(InvalidRequestError):
        b.register_sealed_model(
            PUBLISHER, "acme", "m", "2", policy="open", kem=key.kem.value, sealed_key=sealed, files=[]
        )
    b.register_sealed_model(PUBLISHER, "acme", "m", "1", policy="open", kem=key.kem.value, sealed_key=sealed, files=[])
    assert fk == b.keyring.file_key_of(b.store.catalogue.model("acme", "m", "1"))  # type: ignore[arg-type]


# -- rotation and export -----------------------------------------------------------------------------


def test_kek_rotation_rewrap_and_retirement(in_process: InProcess) -> None:
    """A new KEK version, models moved to it with the same file key, then the old version retired."""
    b = in_process.broker
    fk = FileKey.generate()
    b.register_model(PUBLISHER, "acme", "m", "1", policy="open", file_key=fk, files=[])
    with pytest.raises(ConflictError):
        b.retire_kek(ADMIN, "acme", 1)  # still the newest
    assert 2 == b.rotate_kek(ADMIN, "acme")
    with pytest.raises(ConflictError, match="rewrap"):
        b.retire_kek(ADMIN, "acme", 1)
    assert ["acme/models/m@1"] == b.rewrap_models(ADMIN, "acme")
    model = b.store.catalogue.model("acme", "m", "1")
    assert model is not None
    assert (2, fk) == (model.kek_version, b.keyring.file_key_of(model))
    b.retire_kek(ADMIN, "acme", 1)
    assert [True, False] == [k.retired for k in b.store.keys.keks("acme")]


def test_a_key_under_a_retired_kek_is_never_released(in_process: InProcess) -> None:
    """Defence in depth: should a model still point at a retired KEK version, its key stays put."""
    b = in_process.broker
    b.register_model(PUBLISHER, "acme", "m", "1", policy="open", file_key=FileKey.generate(), files=[])
    b.rotate_kek(ADMIN, "acme")
    b.store.keys.retire_kek("acme", 1, 5)  # behind the service's back: the model was not rewrapped
    model = b.store.catalogue.model("acme", "m", "1")
    assert model is not None
    row = b.store.keys.kek("acme", 1)
    assert row is not None
    assert row.retired
    with pytest.raises(KeyAccessError, match="retired"):
        b.keyring.file_key_of(model, refuse_retired=True)


def test_export_always_needs_an_approval_rule(in_process: InProcess) -> None:
    """Without an approval policy covering key.export, an export is refused outright."""
    b = in_process.broker
    b.register_model(PUBLISHER, "acme", "m", "1", policy="open", file_key=FileKey.generate(), files=[])
    _, public = hpke_generate(HPKEKem.X25519)
    with pytest.raises(ApprovalRequiredError):
        b.export_key(ADMIN, "acme", "m", "1", kem="x25519", public=public)


# -- audit reads -----------------------------------------------------------------------------------


def test_auditors_read_their_tenants_events_only(in_process: InProcess) -> None:
    """An acme auditor reads acme's events; globex's are forbidden; operators read the tiles."""
    b = in_process.broker
    in_process.client("acme-workload").attest(SampleAttester())
    events = b.audit_events(AUDITOR, "acme", since_ms=None, until_ms=None, limit=1000)
    assert events
    assert all(e["tenant"] == "acme" for e in events)
    with pytest.raises(PermissionDeniedError):
        b.audit_events(AUDITOR, "globex", since_ms=None, until_ms=None, limit=10)
    with pytest.raises(PermissionDeniedError):
        b.audit_resource(AUDITOR, "checkpoint")
    status, body, _ = b.audit_resource(OPERATOR, "checkpoint")
    assert 200 == status
    assert body.startswith(b"broker.test/audit\n")
