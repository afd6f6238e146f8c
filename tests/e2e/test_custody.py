"""Custody and approvals against the real broker process: sealed start, ceremonies, signed approvals, rotation.

The broker is initialised with its root key split 2-of-3 among custodians (it never
touches the disk) and starts sealed. Every attack asserts both the refusal and the
audit record.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.databases import init_options
from tests.e2e.broker_fixture import wv
from tests.e2e.servers import serve_broker, set_rate_limit
from weightvault.auditlog.events import AuditEvent
from weightvault.auditlog.log import LogReader
from weightvault.client.broker import BrokerClient, BrokerRecipient, SampleAttester
from weightvault.crypto.keywrap import HPKEKem
from weightvault.custody.approvals import approval_message
from weightvault.custody.ceremony import prepare_submission, rekey_params
from weightvault.custody.person import PersonKey
from weightvault.custody.shares import open_delivered
from weightvault.errors import (
    ApprovalInvalidError,
    ApprovalRequiredError,
    CeremonyError,
    KeyAccessError,
    SealedError,
    ShareError,
)
from weightvault.format.keys import FileKey
from weightvault.format.recipients import HPKEIdentity
from weightvault.loaders import numpy as wv_numpy
from weightvault.sealing import reseal_file, seal_safetensors

pytestmark = pytest.mark.e2e

CUSTODIANS = ("c1", "c2", "c3")
APPROVERS = ("alice", "bob", "carol")


@dataclass
class Vault:
    url: str
    base: Path
    keys: dict[str, PersonKey]
    shares: dict[str, tuple[str, bytes]]  # custodian -> (set id, delivered blob)
    tokens: dict[str, str]
    models: dict[str, Path] = field(default_factory=dict)
    clients: dict[str, BrokerClient] = field(default_factory=dict)

    def client(self, who: str | None) -> BrokerClient:
        key = who or "-anonymous"
        if key not in self.clients:
            self.clients[key] = BrokerClient(self.url, self.tokens[who] if who else None)
        return self.clients[key]

    def share(self, custodian: str) -> bytes:
        set_id, blob = self.shares[custodian]
        return open_delivered(self.keys[custodian], set_id, blob)

    def events(self, start: int = 0) -> list[tuple[int, AuditEvent]]:
        with LogReader.open(self.base / "data" / "audit.db", "weightvault-broker/audit") as log:
            return list(log.events(start=start))

    def size(self) -> int:
        with LogReader.open(self.base / "data" / "audit.db", "weightvault-broker/audit") as log:
            return log.size

    def last(self, since: int, kind: str) -> AuditEvent:
        found = [e for _, e in self.events(since) if e.type == kind]
        assert found, f"no {kind} event after {since}"
        return found[-1]

    def unseal(self, *custodians: str) -> dict[str, Any]:
        terms = self.client("operator").open_ceremony("unseal")
        result: dict[str, Any] = {}
        for c in custodians:
            result = self.client(None).submit_share(terms.id, self.keys[c], self.share(c))
        return result

    def seal(self) -> None:
        self.client("operator").seal()


def _write_key(path: Path, key: PersonKey) -> None:
    path.write_bytes(key.to_bytes())
    path.chmod(0o600)
    path.with_name(path.name + ".pub").write_text(json.dumps(key.public.to_json()))


def _approval_policy(vault: Vault, **rules: Any) -> dict[str, Any]:
    approvers = {}
    for name in APPROVERS:
        pub = vault.keys[name].public.to_json()
        approvers[name] = {"signing": pub["signing"], "hpke": pub["hpke"]}
    approvers["alice"]["principals"] = ["alice-ops"]
    return {
        "approvers": approvers,
        "groups": rules.pop("groups", {"security": list(APPROVERS)}),
        "rules": [
            {
                "op": "key.release",
                "when": {"model.tags.tier": "high-value"},
                "require": [{"group": "security", "count": 2}],
            },
            {"op": "key.export", "require": [{"group": "security", "count": 2}]},
            {"op": "policy.change", "tenants": ["acme"], "require": [{"group": "security", "count": 1}]},
            {"op": "custody.rekey", "require": [{"group": "security", "count": 2}]},
            {"op": "approval.policy.change", "require": [{"group": "security", "count": 2}]},
        ],
    }


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vault]:
    tmp = tmp_path_factory.mktemp("custody")
    keys = {name: PersonKey.generate(name) for name in (*CUSTODIANS, "c4", *APPROVERS)}
    for name, key in keys.items():
        _write_key(tmp / f"{name}.key", key)
    base = tmp / "broker"
    args: list[str | Path] = ["broker", "init", base, "--insecure-sample", "--threshold", "2", *init_options()]
    for c in CUSTODIANS:
        args += ["--custodian", tmp / f"{c}.key.pub"]
    out = wv(*args)
    assert "starts sealed" in out
    assert not (base / "keys" / "root.key").exists()
    set_rate_limit(base, 5000, 5000)
    share_dir = next((base / "custody").iterdir())
    shares = {}
    for c in CUSTODIANS:
        doc = json.loads((share_dir / f"{c}.share").read_text())
        shares[c] = (doc["set"], base64.b64decode(doc["sealed"]))
    with serve_broker(base) as url:
        tokens = {"operator": (base / "operator.token").read_text().strip()}
        v = Vault(url, base, keys, shares, tokens)
        yield v
        for client in v.clients.values():
            client.close()


def _setup_tenant(vault: Vault, tmp: Path) -> None:
    """After the first unseal: a tenant, principals, approvers and two models (one high-value)."""
    if "acme-wl" in vault.tokens:
        return
    op = vault.client("operator")
    op.create_tenant("acme")
    for who, role in (("acme-admin", "tenant-admin"), ("acme-pub", "publisher"), ("acme-wl", "workload")):
        vault.tokens[who] = op.create_principal(who, role, "acme")
    for name in APPROVERS:
        vault.tokens[name] = op.create_principal(name, "approver")
    vault.tokens["alice-ops"] = op.create_principal("alice-ops", "operator")
    vault.client("acme-admin").put_policy(
        "acme",
        "open",
        {
            "verifiers": ["insecure-sample"],
            "resources": ["acme/models/*"],
            "rule": {"claim": "tenant", "equals": "acme"},
        },
    )
    from safetensors.numpy import save_file

    plain = tmp / "w.safetensors"
    save_file({"w": np.arange(64, dtype=np.float32)}, str(plain))
    for name, tags in (("small", {}), ("frontier", {"tier": "high-value"})):
        for version in ("1", "2"):
            resource = f"acme/models/{name}@{version}"
            out = tmp / f"{name}-{version}.wvlt"
            fk = FileKey.generate()
            result = seal_safetensors(plain, out, file_key=fk, recipients=[BrokerRecipient(vault.url, resource)])
            vault.client("acme-pub").register_model(
                "acme",
                name,
                version,
                policy="open",
                file_key=fk,
                tags=tags,
                files=[{"file_id": result.file_id.hex(), "header_mac": result.header_mac.hex(), "path": out.name}],
            )
            vault.models[resource] = out


@pytest.fixture
def ready(vault: Vault, tmp_path_factory: pytest.TempPathFactory) -> Vault:
    """The broker unsealed, with its tenant set up."""
    if vault.client("operator").custody_status()["sealed"]:
        vault.unseal("c1", "c2")
    _setup_tenant(vault, tmp_path_factory.mktemp("models"))
    return vault


# -- sealed start and unseal ------------------------------------------------------------------------


def test_sealed_start_and_two_of_three_unseal(vault: Vault) -> None:
    op = vault.client("operator")
    status = op.custody_status()
    if not status["sealed"]:
        vault.seal()
    assert op.request("GET", "/v1/health")["sealed"] is True
    with pytest.raises(SealedError):
        op.create_tenant("sealed-tenant")
    start = vault.size()
    terms = op.open_ceremony("unseal")
    assert {"status": "open", "submitted": ["c1"], "needed": 2} == vault.client(None).submit_share(
        terms.id, vault.keys["c1"], vault.share("c1")
    )
    assert op.custody_status()["sealed"] is True  # M-1 shares unseal nothing
    done = vault.client(None).submit_share(terms.id, vault.keys["c3"], vault.share("c3"))
    assert "done" == done["status"]
    assert op.custody_status()["sealed"] is False
    unseal = vault.last(start, "custody.unseal")
    assert ["c1", "c3"] == unseal.details["custodians"]


def test_a_broker_never_opens_a_restore_ceremony(ready: Vault) -> None:
    """Restore ceremonies open backups, run by 'broker restore' over files: a broker asking
    custodians for shares under that name is refused at the source."""
    with pytest.raises(CeremonyError, match="broker restore"):
        ready.client("operator").open_ceremony("restore")


def test_a_corrupted_share_is_refused_attributed_and_the_ceremony_completes(ready: Vault) -> None:
    ready.seal()
    start = ready.size()
    terms = ready.client("operator").open_ceremony("unseal")
    bad = bytearray(ready.share("c2"))
    bad[3] ^= 0x40
    with pytest.raises(ShareError, match="commitment"):
        ready.client(None).submit_share(terms.id, ready.keys["c2"], bytes(bad))
    reject = ready.last(start, "custody.share.reject")
    assert "c2" == reject.actor
    ready.client(None).submit_share(terms.id, ready.keys["c1"], ready.share("c1"))
    assert "done" == ready.client(None).submit_share(terms.id, ready.keys["c3"], ready.share("c3"))["status"]


def test_cancel_needs_a_custodian_and_a_cancelled_ceremony_cannot_be_hijacked(ready: Vault) -> None:
    ready.seal()
    op, anon = ready.client("operator"), ready.client(None)
    first = op.open_ceremony("unseal", ttl=120)
    sealed, signature = prepare_submission(ready.keys["c1"], first, ready.share("c1"))
    body = {
        "custodian": "c1",
        "sealed": base64.b64encode(sealed).decode(),
        "signature": base64.b64encode(signature).decode(),
    }
    anon.request("POST", f"/v1/custody/ceremonies/{first.id}/shares", body)
    start = ready.size()
    impostor = PersonKey.generate("c2")
    with pytest.raises(CeremonyError, match="custodian"):
        anon.cancel_ceremony(first.id, impostor)
    assert "custody.cancel.fail" == ready.last(start, "custody.cancel.fail").type
    anon.cancel_ceremony(first.id, ready.keys["c2"])
    assert "cancelled" == ready.last(start, "custody.ceremony.cancelled").decision
    with pytest.raises(CeremonyError):
        anon.submit_share(first.id, ready.keys["c3"], ready.share("c3"))
    # The attacker re-opens a ceremony and replays c1's signed submission to it: refused.
    second = op.open_ceremony("unseal")
    with pytest.raises(ShareError):
        anon.request("POST", f"/v1/custody/ceremonies/{second.id}/shares", body)
    anon.submit_share(second.id, ready.keys["c1"], ready.share("c1"))
    anon.submit_share(second.id, ready.keys["c3"], ready.share("c3"))
    assert op.custody_status()["sealed"] is False


def test_any_operator_seals_and_nobody_unseals_alone(ready: Vault) -> None:
    op2 = ready.client("alice-ops")
    op2.seal()
    with pytest.raises(SealedError):
        ready.client("acme-wl").attest(SampleAttester(), release="acme/models/small@1")
    terms = ready.client("operator").open_ceremony("unseal")
    result = ready.client(None).submit_share(terms.id, ready.keys["c2"], ready.share("c2"))
    assert "open" == result["status"]
    with pytest.raises(ShareError, match="already"):
        ready.client(None).submit_share(terms.id, ready.keys["c2"], ready.share("c2"))
    ready.client(None).submit_share(terms.id, ready.keys["c3"], ready.share("c3"))
    assert ready.client("operator").custody_status()["sealed"] is False
    with pytest.raises(Exception, match="not sealed"):
        ready.client("operator").open_ceremony("unseal")


def test_verify_all_checks_every_share_without_unsealing(ready: Vault) -> None:
    op = ready.client("operator")
    terms = op.open_ceremony("verify")
    for c in CUSTODIANS[:-1]:
        assert "open" == ready.client(None).submit_share(terms.id, ready.keys[c], ready.share(c))["status"]
    start = ready.size()
    assert "done" == ready.client(None).submit_share(terms.id, ready.keys["c3"], ready.share("c3"))["status"]
    assert "pass" == ready.last(start, "custody.verify").decision


# -- approvals ---------------------------------------------------------------------------------------


@pytest.fixture
def approvals(ready: Vault) -> Vault:
    op = ready.client("operator")
    try:
        op.request("GET", "/v1/approval-policy")
    except Exception:
        assert 1 == op.put_approval_policy(_approval_policy(ready))
    return ready


def _new_request(vault: Vault, who: str, fn: Any) -> dict[str, Any]:
    with pytest.raises(ApprovalRequiredError) as info:
        fn("new")
    assert info.value.request is not None
    request = dict(info.value.request)
    assert vault.client(who).approval(str(request["id"]))["status"] == "pending"
    return request


def test_high_value_release_needs_two_approvals_and_runs_once(approvals: Vault) -> None:
    wl = approvals.client("acme-wl")
    resource = "acme/models/frontier@1"
    session, _ = wl.attest(SampleAttester())
    with pytest.raises(ApprovalRequiredError, match="needs approval"):
        wl.release(session, resource)
    wl.release(session, "acme/models/small@1")  # ordinary models are unaffected
    request = _new_request(approvals, "acme-wl", lambda a: wl.release(session, resource, approval=a))
    assert "2 of security" == request["needs"]
    with pytest.raises(ApprovalInvalidError, match="the request is pending"):
        wl.release(session, resource, approval=request["id"])
    assert "pending" == approvals.client("alice").sign_approval(request["id"], approvals.keys["alice"])["status"]
    assert "approved" == approvals.client("bob").sign_approval(request["id"], approvals.keys["bob"])["status"]
    start = approvals.size()
    keys = wl.release(session, resource, approval=request["id"])
    assert keys.file_key is not None
    arrays = wv_numpy.load_file(approvals.models[resource], keys.file_key)
    assert np.array_equal(np.arange(64, dtype=np.float32), arrays["w"])
    intent = approvals.last(start, "key.release.intent")
    assert request["id"] == intent.details["approval"]
    assert ["alice", "bob"] == sorted(intent.details["approvers"])
    with pytest.raises(ApprovalInvalidError, match="executed"):
        wl.release(session, resource, approval=request["id"])


def _approved(vault: Vault, request: dict[str, Any], *who: str) -> None:
    for name in who:
        vault.client(name).sign_approval(request["id"], vault.keys[name])


def test_parameters_changed_after_approval_are_refused(approvals: Vault) -> None:
    wl = approvals.client("acme-wl")
    session, _ = wl.attest(SampleAttester())
    request = _new_request(approvals, "acme-wl", lambda a: wl.release(session, "acme/models/frontier@1", approval=a))
    _approved(approvals, request, "alice", "carol")
    start = approvals.size()
    with pytest.raises(ApprovalInvalidError, match="parameters differ"):
        wl.release(session, "acme/models/frontier@2", approval=request["id"])
    assert "parameters differ" in approvals.last(start, "approval.invalid").reasons[0]
    doc = {
        "verifiers": ["insecure-sample"],
        "resources": ["acme/models/*"],
        "rule": {"claim": "tenant", "equals": "acme"},
    }
    with pytest.raises(ApprovalInvalidError, match="another operation"):
        approvals.client("acme-admin").put_policy("acme", "open", doc, approval=request["id"])


def test_forged_replayed_self_and_double_approvals(approvals: Vault) -> None:
    wl = approvals.client("acme-wl")
    session, _ = wl.attest(SampleAttester())
    first = _new_request(approvals, "acme-wl", lambda a: wl.release(session, "acme/models/frontier@1", approval=a))
    second = _new_request(approvals, "acme-wl", lambda a: wl.release(session, "acme/models/frontier@2", approval=a))
    bob = approvals.client("bob")
    expires = int(time.time()) + 600

    def post(client: BrokerClient, request_id: str, signature: bytes, when: int = expires) -> Any:
        body = {"decision": "approve", "expires_at": when, "signature": base64.b64encode(signature).decode()}
        return client.request("POST", f"/v1/approvals/{request_id}/sign", body)

    start = approvals.size()
    forged = PersonKey.generate("bob").sign(approval_message(first["digest"], "approve", expires, "bob"))
    with pytest.raises(ApprovalInvalidError, match="registered key"):
        post(bob, first["id"], forged)
    assert "registered key" in approvals.last(start, "approval.invalid").reasons[0]
    good = approvals.keys["bob"].sign(approval_message(first["digest"], "approve", expires, "bob"))
    post(bob, first["id"], good)
    with pytest.raises(ApprovalInvalidError, match="already signed"):
        post(bob, first["id"], good)  # replay on the same request, and "one approver signing twice"
    with pytest.raises(ApprovalInvalidError, match="registered key"):
        post(bob, second["id"], good)  # replay on another request
    stale = approvals.keys["bob"].sign(approval_message(second["digest"], "approve", expires - 700, "bob"))
    with pytest.raises(ApprovalInvalidError, match="expired"):
        post(bob, second["id"], stale, expires - 700)
    with pytest.raises(ApprovalInvalidError, match="carol is not signed"):
        post(approvals.client("carol"), first["id"], good)  # bob's signature under carol's token counts as carol's
    # A requester cannot approve their own request, even through another principal of the same person:
    ops = approvals.client("alice-ops")
    request = _new_request(
        approvals, "alice-ops", lambda a: ops.put_approval_policy(_approval_policy(approvals), approval=a)
    )
    with pytest.raises(ApprovalInvalidError, match="requested this operation"):
        approvals.client("alice").sign_approval(request["id"], approvals.keys["alice"])


def test_an_approver_removed_before_signing_no_longer_counts(approvals: Vault) -> None:
    op = approvals.client("operator")
    smaller = _approval_policy(approvals, groups={"security": ["alice", "bob"]})
    smaller["rules"] = [r for r in smaller["rules"] if r["op"] != "key.release"] + [
        {"op": "key.release", "when": {"model.tags.tier": "high-value"}, "require": [{"group": "security", "count": 1}]}
    ]
    wl = approvals.client("acme-wl")
    session, _ = wl.attest(SampleAttester())
    pending = _new_request(approvals, "acme-wl", lambda a: wl.release(session, "acme/models/frontier@1", approval=a))
    change = _new_request(approvals, "operator", lambda a: op.put_approval_policy(smaller, approval=a))
    _approved(approvals, change, "alice", "bob")
    version = op.put_approval_policy(smaller, approval=change["id"])
    start = approvals.size()
    with pytest.raises(ApprovalInvalidError, match=r"not an approver|not in a group"):
        approvals.client("carol").sign_approval(pending["id"], approvals.keys["carol"])
    assert "carol" == approvals.last(start, "approval.invalid").actor
    # Restore the policy (through approval again) for the other tests.
    restore = _new_request(
        approvals, "operator", lambda a: op.put_approval_policy(_approval_policy(approvals), approval=a)
    )
    _approved(approvals, restore, "alice", "bob")
    assert version + 1 == op.put_approval_policy(_approval_policy(approvals), approval=restore["id"])


def test_concurrent_executions_of_one_approval_release_once(approvals: Vault) -> None:
    wl = approvals.client("acme-wl")
    session, _ = wl.attest(SampleAttester())
    request = _new_request(approvals, "acme-wl", lambda a: wl.release(session, "acme/models/frontier@1", approval=a))
    _approved(approvals, request, "bob", "carol")
    outcomes: list[str] = []

    def run() -> None:
        client = BrokerClient(approvals.url, approvals.tokens["acme-wl"])
        try:
            client.release(session, "acme/models/frontier@1", approval=request["id"])
            outcomes.append("released")
        except (ApprovalInvalidError, Exception) as exc:
            outcomes.append(type(exc).__name__)
        finally:
            client.close()

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 1 == outcomes.count("released"), outcomes


def test_key_export_only_with_approval(approvals: Vault) -> None:
    admin = approvals.client("acme-admin")
    escrow = HPKEIdentity.generate(HPKEKem.MLKEM768_X25519)
    request = _new_request(approvals, "acme-admin", lambda a: admin.export_key("acme", "small", "1", escrow, a))
    _approved(approvals, request, "alice", "carol")
    other = HPKEIdentity.generate(HPKEKem.MLKEM768_X25519)
    with pytest.raises(ApprovalInvalidError, match="parameters differ"):
        admin.export_key("acme", "small", "1", other, request["id"])  # another recipient key
    file_key = admin.export_key("acme", "small", "1", escrow, request["id"])
    arrays = wv_numpy.load_file(approvals.models["acme/models/small@1"], file_key)
    assert 64 == arrays["w"].size


def test_policy_change_needs_approval_for_its_tenant(approvals: Vault) -> None:
    admin = approvals.client("acme-admin")
    doc = {
        "verifiers": ["insecure-sample"],
        "resources": ["acme/models/*"],
        "rule": {"claim": "tenant", "equals": "acme"},
    }
    request = _new_request(approvals, "acme-admin", lambda a: admin.put_policy("acme", "strict", doc, approval=a))
    summary = approvals.client("alice").approval(request["id"])["summary"]
    assert "policy.change" in summary
    assert "document_digest" in summary
    _approved(approvals, request, "carol")
    assert 1 == admin.put_policy("acme", "strict", doc, approval=request["id"])


# -- rekey ---------------------------------------------------------------------------------------------


def test_rekey_with_approval_then_verify_promotes_the_new_set(approvals: Vault) -> None:
    op, anon = approvals.client("operator"), approvals.client(None)
    new_people = [approvals.keys[c].public for c in ("c1", "c2", "c4")]
    params = rekey_params(2, new_people)
    request = _new_request(approvals, "operator", lambda a: op.open_ceremony("rekey", params=params, approval=a))
    _approved(approvals, request, "alice", "bob")
    terms = op.open_ceremony("rekey", params=params, approval=request["id"])
    # An attacker opens a rekey with their own key in place of c4 and replays c1's signed submission: refused.
    sealed, signature = prepare_submission(approvals.keys["c1"], terms, approvals.share("c1"))
    anon.request(
        "POST",
        f"/v1/custody/ceremonies/{terms.id}/shares",
        {
            "custodian": "c1",
            "sealed": base64.b64encode(sealed).decode(),
            "signature": base64.b64encode(signature).decode(),
        },
    )
    evil_params = rekey_params(2, [*new_people[:2], PersonKey.generate("c4").public])
    evil_req = _new_request(approvals, "operator", lambda a: op.open_ceremony("rekey", params=evil_params, approval=a))
    _approved(approvals, evil_req, "alice", "bob")
    evil = op.open_ceremony("rekey", params=evil_params, approval=evil_req["id"])
    with pytest.raises(ShareError):
        anon.request(
            "POST",
            f"/v1/custody/ceremonies/{evil.id}/shares",
            {
                "custodian": "c1",
                "sealed": base64.b64encode(sealed).decode(),
                "signature": base64.b64encode(signature).decode(),
            },
        )
    anon.cancel_ceremony(evil.id, approvals.keys["c2"])
    result = anon.submit_share(terms.id, approvals.keys["c2"], approvals.share("c2"))
    new_set = result["new_set"]
    status = op.custody_status()
    assert new_set == status["pending_set"]["id"]
    old_set = status["active_set"]["id"]
    # The old shares stay valid until the new set passes a verify ceremony.
    approvals.seal()
    approvals.unseal("c2", "c3")
    new_shares = {
        c: open_delivered(approvals.keys[c], new_set, anon.delivered_share(new_set, c)) for c in ("c1", "c2", "c4")
    }
    verify = op.open_ceremony("verify")
    assert new_set == verify.set_id
    for c, share in new_shares.items():
        result = anon.submit_share(verify.id, approvals.keys[c], share)
    assert new_set == result["promoted"]
    assert new_set == op.custody_status()["active_set"]["id"]
    # Now only the new custodians' new shares unseal; c3's old share is refused.
    approvals.seal()
    terms = op.open_ceremony("unseal")
    with pytest.raises(ShareError, match="not a custodian"):
        anon.submit_share(terms.id, approvals.keys["c3"], approvals.share("c3"))
    with pytest.raises(ShareError):
        anon.submit_share(terms.id, approvals.keys["c1"], approvals.share("c1"))  # c1's share of the old set
    anon.submit_share(terms.id, approvals.keys["c1"], new_shares["c1"])
    anon.submit_share(terms.id, approvals.keys["c4"], new_shares["c4"])
    assert op.custody_status()["sealed"] is False
    assert old_set != op.custody_status()["active_set"]["id"]
    for c in ("c1", "c2", "c4"):
        approvals.shares[c] = (new_set, anon.delivered_share(new_set, c))
    approvals.shares.pop("c3")


# -- rotation -----------------------------------------------------------------------------------------


def test_kek_rotation_rewrap_and_retirement(ready: Vault) -> None:
    admin = ready.client("acme-admin")
    version = admin.rotate_kek("acme")
    wl = ready.client("acme-wl")
    session, _ = wl.attest(SampleAttester())
    wl.release(session, "acme/models/small@1")  # still under the old KEK
    with pytest.raises(Exception, match="still use"):
        admin.retire_kek("acme", version - 1)
    moved = admin.rewrap("acme")
    assert "acme/models/small@1" in moved
    admin.retire_kek("acme", version - 1)
    keys = wl.release(session, "acme/models/small@1")
    assert keys.file_key is not None
    rewraps = [e for _, e in ready.events() if e.type == "key.rewrap.done"]
    assert {"from": version - 1, "to": version} == rewraps[-1].details


def test_token_key_rotation_keeps_live_tokens_valid(ready: Vault) -> None:
    wl = ready.client("acme-wl")
    before, _ = wl.attest(SampleAttester())
    kid = ready.client("operator").rotate_token_key()
    keys = ready.client("acme-wl").request("GET", "/v1/keys")["token_signing"]
    assert kid in keys
    assert len(keys) >= 2
    wl.release(before, "acme/models/small@1")
    after, _ = wl.attest(SampleAttester())
    header = json.loads(base64.urlsafe_b64decode(after.token.split(".")[0] + "=="))
    assert kid == header["kid"]


def test_reseal_gives_a_new_key_that_old_releases_cannot_open(ready: Vault, tmp_path: Path) -> None:
    wl = ready.client("acme-wl")
    session, _ = wl.attest(SampleAttester())
    old = wl.release(session, "acme/models/small@2")
    assert old.file_key is not None
    new_key = FileKey.generate()
    out = tmp_path / "small-3.wvlt"
    result = reseal_file(
        ready.models["acme/models/small@2"],
        out,
        old.file_key,
        file_key=new_key,
        recipients=[BrokerRecipient(ready.url, "acme/models/small@3")],
    )
    ready.client("acme-pub").register_model(
        "acme",
        "small",
        "3",
        policy="open",
        file_key=new_key,
        files=[{"file_id": result.file_id.hex(), "header_mac": result.header_mac.hex(), "path": out.name}],
    )
    with pytest.raises(KeyAccessError):
        wv_numpy.load_file(out, old.file_key)
    fresh = wl.release(session, "acme/models/small@3")
    assert fresh.file_key is not None
    assert np.array_equal(wv_numpy.load_file(out, fresh.file_key)["w"], np.arange(64, dtype=np.float32))
