"""What an approved rollback holds, and what no approval can make safe."""

from __future__ import annotations

from pathlib import Path

import pytest

from weightvault.auditlog import AuditEvent, AuditLog, NoteSigner
from weightvault.auditlog.log import LogReader
from weightvault.broker.backup import changes_after, hold_targets
from weightvault.crypto.signing import Ed25519Signer
from weightvault.errors import RollbackError

ORIGIN = "broker.test/audit"


def _log(tmp_path: Path, events: list[AuditEvent]) -> Path:
    path = tmp_path / "audit.db"
    with AuditLog(path, NoteSigner(ORIGIN, Ed25519Signer.generate())) as log:
        for event in events:
            log.append(event)
    return path


def _changes(tmp_path: Path, events: list[AuditEvent], start: int = 0) -> list[dict[str, object]]:
    with LogReader.open(_log(tmp_path, events), ORIGIN) as log:
        return changes_after(log, start)


def ev(type: str, resource: str = "", tenant: str = "acme", **details: object) -> AuditEvent:
    return AuditEvent(type=type, tenant=tenant, actor="admin", resource=resource, details=details)


def test_only_completed_state_changes_count(tmp_path: Path) -> None:
    found = _changes(
        tmp_path,
        [
            ev("key.release.intent", "acme/models/m@1"),
            ev("key.release.done", "acme/models/m@1"),  # a release changes nothing the broker keeps
            ev("attest.pass", device="d0"),
            ev("device.revoke.intent", "device:d1"),
            ev("device.revoke.fail", "device:d2"),  # failed: nothing changed
            ev("device.revoke.done", "device:d1"),
            ev("gateway.key.revoke", "gateway-key:k1", key_id="k1"),
            ev("custody.unseal", "custody", tenant="-"),  # every restart of a custody broker
            ev("custody.seal", "custody", tenant="-"),
        ],
    )
    assert ["device.revoke.done", "gateway.key.revoke"] == [e["type"] for e in found]


@pytest.mark.parametrize("change", ["custody.rekey.done", "custody.set.active", "approval.policy.change.done"])
def test_custody_or_approval_policy_changes_refuse_any_override(tmp_path: Path, change: str) -> None:
    with pytest.raises(RollbackError, match="no approval can make safe"):
        _changes(tmp_path, [ev("device.revoke.done", "device:d1"), ev(change, "custody", tenant="-")])


def test_everything_a_change_names_is_held_and_tenant_wide_changes_hold_the_tenants_models(tmp_path: Path) -> None:
    events = _changes(
        tmp_path,
        [
            ev("device.revoke.done", "device:d1"),
            ev("principal.change.done", "principal:acme-wl2"),
            ev("gateway.key.revoke", "gateway-key:k1", key_id="k1"),
            ev("model.register.done", "acme/models/new@2"),
            ev("policy.change.done", "acme/policies/open"),  # not a model: every model of acme
            ev("principal.change.done", "principal:globex-wl", tenant="globex"),
        ],
    )
    models = {"acme": ["acme/models/a", "acme/models/b"], "globex": ["globex/models/g"]}
    targets = hold_targets(events, lambda tenant: models.get(tenant, []))
    assert [
        ("device", "d1", "acme"),
        ("gateway_key", "k1", "acme"),
        ("model", "acme/models/a", "acme"),
        ("model", "acme/models/b", "acme"),
        ("model", "acme/models/new", "acme"),
        ("principal", "acme-wl2", "acme"),
        ("principal", "globex-wl", "globex"),
    ] == targets
