"""The broker's multi-party approval service: requests, signed approvals, single-use execution.

Lifecycle of a request (states change only by compare-and-swap in storage)::

    pending ──(enough valid approvals)──▶ approved ──(execution, under its write-ahead intent)──▶ executed
       │                                      │
       └──(a valid deny, or expiry)──▶ denied / expired

An operation covered by a rule of the approval policy runs only with the id of
an approved request whose exact parameters it repeats: the broker recomputes the
parameter digest from the call itself, so parameters changed after approval do
not match. Approvals are re-counted under the policy in force at execution time,
so an approver removed from a group, or whose key was replaced, no longer counts.
Every step is an audit event; refusals are ``approval.invalid`` with the reason.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

from weightvault.auditlog.events import AuditEvent
from weightvault.broker.recording import AuditRecorder
from weightvault.broker.storage import ApprovalRow, BrokerStore
from weightvault.crypto.secret import random_bytes
from weightvault.custody.approvals import (
    DECISIONS,
    HOLD_FACT,
    POLICY_CHANGE_OP,
    ApprovalPolicy,
    ApprovalRequest,
    Evaluation,
    SignedApproval,
    approval_problem,
    evaluate,
    params_digest,
)
from weightvault.errors import (
    ApprovalInvalidError,
    ApprovalRequiredError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
)

__all__ = ["ALWAYS_GATED", "ApprovalService", "Grant"]

#: Operations refused outright unless the approval policy has a rule for them.
ALWAYS_GATED: Final = frozenset({"key.export", POLICY_CHANGE_OP})


@dataclass(frozen=True, slots=True)
class Grant:
    """An approved request about to be executed (consume it inside the operation's intent)."""

    request: ApprovalRequest
    approvers: tuple[str, ...]


class ApprovalService:
    """Requests, approvals and their single-use execution; :meth:`gate` and :meth:`execute` are
    what every gated operation of the other services calls."""

    def __init__(self, store: BrokerStore, recorder: AuditRecorder, broker_id: str, now: Callable[[], int]) -> None:
        self.store = store
        self._recorder = recorder
        self._log = recorder.append
        self.broker_id = broker_id
        self._now = now

    # -- gating other services' operations --------------------------------------------------------

    def gate(
        self,
        actor: str,
        op: str,
        tenant: str,
        params: Mapping[str, Any],
        *,
        approval: str | None,
        facts: Mapping[str, Any] | None = None,
    ) -> Grant | None:
        """Enforce the approval policy for one operation (``approval="new"`` opens a request).

        Raises:
            ApprovalRequiredError: a rule applies and no approved request was named
                (with the new request attached when one was asked for).
            ApprovalInvalidError: the named request does not match or is not approved.
        """
        facts = facts or {}
        if approval == "new":
            request, needs = self.create_request(actor, op, tenant, params, facts)
            raise ApprovalRequiredError(
                f"approval request {request.id} opened; it needs {needs}",
                {**request.to_json(), "digest": request.digest, "needs": needs, "summary": request.summary()},
            )
        return self.require(actor, op, tenant, params, facts=facts, approval=approval)

    @contextmanager
    def execute(self, grant: Grant | None, actor: str, target: str) -> Iterator[None]:
        """Run an approved operation: the execution intent must be durable, then the request is consumed once."""
        if grant is None:
            yield
            return
        intent = AuditEvent(
            type="approval.execute.intent",
            tenant=grant.request.tenant,
            actor=actor,
            resource=f"approval:{grant.request.id}",
            details={
                "op": grant.request.op,
                "digest": grant.request.digest,
                "approvers": list(grant.approvers),
                "target": target,
            },
        )
        with self._recorder.write_ahead(intent):
            self.consume(grant)
            yield

    # -- the policy ----------------------------------------------------------------------------

    def policy(self) -> ApprovalPolicy | None:
        row = self.store.approvals.policy()
        return None if row is None else ApprovalPolicy.parse(row[1], row[0])

    def validate_policy(self, document: object) -> ApprovalPolicy:
        if not isinstance(document, Mapping):
            raise InvalidRequestError("an approval policy is a JSON object")
        current = self.policy()
        return ApprovalPolicy.parse(document, 1 if current is None else current.version + 1)

    def put_policy(self, actor: str, document: object, *, approval: str | None) -> int:
        """Store a new approval policy version; after the first, only through approval.

        Raises:
            InvalidRequestError: the document is invalid.
            ApprovalRequiredError / ApprovalInvalidError: see :meth:`gate`.
        """
        policy = self.validate_policy(document)
        grant = None
        if policy.version > 1:
            grant = self.gate(actor, POLICY_CHANGE_OP, "-", {"document_digest": policy.digest}, approval=approval)
        intent = AuditEvent(
            type="approval.policy.change.intent",
            tenant="-",
            actor=actor,
            resource="approval-policy",
            policy_version=policy.version,
            details={
                "digest": policy.digest,
                "bootstrap": policy.version == 1,
                "approvers": {a: x.person.signing.hex() for a, x in policy.approvers.items()},
                "groups": {g: sorted(m) for g, m in policy.groups.items()},
            },
        )
        with self.execute(grant, actor, "approval-policy"), self._recorder.write_ahead(intent):
            self.store.approvals.add_policy(policy.version, policy.document, policy.digest, actor, self._now())
        return policy.version

    def view(self, request: ApprovalRequest, status: str, facts: Mapping[str, Any]) -> dict[str, Any]:
        """A request as approvers and requesters see it: terms, digest, status, what it still needs."""
        evaluation = self.evaluate(request, facts)
        return {
            "request": request.to_json(),
            "digest": request.digest,
            "params_digest": request.params_digest,
            "status": status,
            "summary": request.summary(),
            "needs": evaluation.needed,
            "counted": list(evaluation.counted),
            "approvals": [
                {
                    "approver": a.approver,
                    "decision": a.decision,
                    "expires_at": a.expires_at,
                    "signature": base64.b64encode(a.signature).decode(),
                }
                for a in self.store.approvals.approvals(request.id)
            ],
        }

    # -- requests and approvals ------------------------------------------------------------------

    def create_request(
        self, actor: str, op: str, tenant: str, params: Mapping[str, Any], facts: Mapping[str, Any]
    ) -> tuple[ApprovalRequest, str]:
        """Open a request for ``op`` with exactly ``params``; returns it and what it needs.

        Raises:
            InvalidRequestError: no approval policy, or no rule covers this operation.
        """
        policy = self.policy()
        rule = None if policy is None else policy.rule_for(op, tenant, facts)
        if policy is None or rule is None:
            raise InvalidRequestError(f"no approval rule covers {op} for tenant {tenant}")
        now = self._now()
        request = ApprovalRequest(
            id=uuid.uuid4().hex,
            broker=self.broker_id,
            op=op,
            tenant=tenant,
            params=dict(params),
            requester=actor,
            policy_version=policy.version,
            nonce=random_bytes(16).hex(),
            not_before=now,
            expires_at=now + rule.ttl_seconds,
        )
        self._log(
            AuditEvent(
                type="approval.request",
                tenant=tenant,
                actor=actor,
                resource=f"approval:{request.id}",
                details={
                    "op": op,
                    "digest": request.digest,
                    "params_digest": request.params_digest,
                    "policy_version": policy.version,
                    "needs": rule.describe(),
                },
            )
        )
        self.store.approvals.add_request(request.id, tenant, request.to_json(), request.digest, now)
        return request, rule.describe()

    def request(self, request_id: str) -> tuple[ApprovalRequest, str]:
        row = self.store.approvals.request(request_id)
        if row is None:
            raise NotFoundError("no such approval request")
        return ApprovalRequest.from_json(row.document), row.status

    def _approvals(self, request_id: str) -> list[SignedApproval]:
        return [
            SignedApproval(a.approver, a.decision, a.expires_at, a.signature)
            for a in self.store.approvals.approvals(request_id)
        ]

    def evaluate(self, request: ApprovalRequest, facts: Mapping[str, Any]) -> Evaluation:
        policy = self.policy()
        if policy is None:
            return Evaluation("pending", (), ("no approval policy",), "an approval policy")
        return evaluate(policy, request, self._approvals(request.id), facts, self._now())

    def _invalid(self, actor: str, request: ApprovalRequest | None, reason: str, tenant: str = "-") -> None:
        self._log(
            AuditEvent(
                type="approval.invalid",
                tenant=request.tenant if request is not None else tenant,
                actor=actor,
                resource=f"approval:{request.id}" if request is not None else "approval:-",
                decision="deny",
                reasons=(reason[:300],),
            )
        )

    def submit(
        self,
        actor: str,
        request_id: str,
        *,
        approver: str,
        decision: str,
        expires_at: int,
        signature: bytes,
        facts: Mapping[str, Any],
    ) -> Evaluation:
        """Record one signed approval (or denial) and move the request forward.

        The caller (the authenticated principal) must be the approver itself, so an
        approval needs both the approver's API token and their signing key.

        Raises:
            ApprovalInvalidError: forged, by the requester, by someone outside the
                required groups, expired, a second approval by the same approver, or
                for a request that is no longer pending.
        """
        request, status = self.request(request_id)
        if actor != approver:
            self._invalid(actor, request, f"principal {actor} submitted an approval as {approver}")
            raise ApprovalInvalidError("approvals are submitted by the approver themselves")
        if status != "pending":
            self._invalid(actor, request, f"request is {status}")
            raise ApprovalInvalidError(f"the request is {status}")
        policy = self.policy()
        rule = None if policy is None else policy.rule_for(request.op, request.tenant, facts)
        if policy is None or rule is None or decision not in DECISIONS:
            self._invalid(actor, request, "no rule or bad decision")
            raise ApprovalInvalidError("this request cannot take approvals")
        candidate = SignedApproval(approver, decision, expires_at, signature)
        problem = approval_problem(policy, request, candidate, rule, self._now())
        if problem is not None:
            self._invalid(actor, request, problem)
            raise ApprovalInvalidError(problem)
        if any(a.approver == approver for a in self._approvals(request.id)):
            self._invalid(actor, request, f"{approver} already signed this request")
            raise ApprovalInvalidError(f"{approver} already signed this request")
        now = self._now()
        # Recorded before it is stored: an approval that counts is always in the log.
        self._log(
            AuditEvent(
                type="approval.submit",
                tenant=request.tenant,
                actor=actor,
                resource=f"approval:{request.id}",
                decision=decision,
                details={"digest": request.digest, "expires_at": expires_at, "signature": signature.hex()},
            )
        )
        self.store.approvals.add_approval(request.id, ApprovalRow(approver, decision, expires_at, signature), now)
        # The status flips by compare-and-swap, and the winner logs it. A grant is only a
        # precondition: executing it appends approval.execute.intent first (write-ahead).
        result = evaluate(policy, request, self._approvals(request.id), facts, now)
        if result.status in ("approved", "denied") and self.store.approvals.set_status(
            request.id, "pending", result.status, now
        ):
            self._log(
                AuditEvent(
                    type=f"approval.{'granted' if result.status == 'approved' else 'denied'}",
                    tenant=request.tenant,
                    actor=actor,
                    resource=f"approval:{request.id}",
                    decision=result.status,
                    details={"approvers": list(result.counted), "policy_version": policy.version},
                )
            )
        return result

    # -- enforcement -------------------------------------------------------------------------------

    def require(
        self,
        actor: str,
        op: str,
        tenant: str,
        params: Mapping[str, Any],
        *,
        facts: Mapping[str, Any],
        approval: str | None,
    ) -> Grant | None:
        """Check that an operation may run; returns the grant to consume, or None when no rule applies.

        Raises:
            ApprovalRequiredError: a rule applies and no approved request was named.
            ApprovalInvalidError: the named request is for another operation, another
                requester or other parameters, or is denied, expired or executed.
        """
        policy = self.policy()
        rule = None if policy is None else policy.rule_for(op, tenant, facts)
        if rule is None:
            if str(facts.get(HOLD_FACT)) == "true":
                raise ApprovalRequiredError(
                    f"{op}: the model is held by containment and no approval policy can approve it; "
                    "an operator must review the alert and lift the hold"
                )
            if op in ALWAYS_GATED:
                raise ApprovalRequiredError(f"{op} is refused unless an approval policy rule covers it")
            return None
        if approval is None:
            raise ApprovalRequiredError(
                f"{op} needs approval ({rule.describe()}): run it again with --approval new to open a request "
                '(API: "approval": "new"), have approvers sign it (weightvault approval sign), '
                "then run it with --approval <request id>"
            )
        request, status = self.request(approval)
        mismatch = None
        if request.op != op or request.tenant != tenant:
            mismatch = "the approved request is for another operation or tenant"
        elif request.requester != actor:
            mismatch = "the approved request belongs to another requester"
        elif request.params_digest != params_digest(params):
            mismatch = "the parameters differ from the approved request"
        elif status != "approved":
            mismatch = f"the request is {status}"
        if mismatch is None:
            result = evaluate(policy, request, self._approvals(request.id), facts, self._now())  # type: ignore[arg-type]
            if result.status != "approved":
                mismatch = f"the request no longer has the approvals it needs ({result.status}: {rule.describe()})"
        if mismatch is not None:
            self._invalid(actor, request, mismatch)
            raise ApprovalInvalidError(mismatch)
        return Grant(request, result.counted)

    def consume(self, grant: Grant) -> None:
        """Single use: approved → executed by compare-and-swap. Call inside the operation's intent.

        Raises:
            ConflictError: another execution won.
        """
        if not self.store.approvals.set_status(grant.request.id, "approved", "executed", self._now()):
            raise ConflictError("this approval was already used")
