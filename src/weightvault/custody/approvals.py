"""Multi-party approval: the approval policy, requests bound to exact parameters, signed approvals.

The approval policy (one per broker, versioned) names the approvers with their
Ed25519 keys, groups of approvers, and rules::

    {"approvers": {"alice": {"signing": b64, "hpke": b64, "principals": ["alice-ops"]}, ...},
     "groups": {"security": ["alice", "bob"], "ml-leads": ["carol", "dave"]},
     "rules": [
       {"op": "key.release", "tenants": ["*"], "when": {"model.tags.tier": "high-value"},
        "require": [{"group": "security", "count": 1}, {"group": "ml-leads", "count": 1}],
        "ttl_seconds": 3600},
       {"op": "approval.policy.change", "require": [{"group": "security", "count": 2}]}]}

A rule matches an operation by ``op``, tenant glob and ``when`` facts (all must
be equal); the first match applies. A release of a model held by containment carries
the fact ``containment.hold = "true"``: a rule may name it, and when none matches, the
policy's ``approval.policy.change`` rule applies to the release. Every policy must have a rule for
``approval.policy.change``, so the policy can change only through approval.

A request fixes everything about the operation::

    request_digest = SHA-256(JCS({"purpose": "weightvault/v1 approval-request", "broker", "id", "op",
                                  "tenant", "params", "requester", "policy_version", "nonce",
                                  "not_before", "expires_at"}))

and an approval is an Ed25519 signature by an approver's registered key over::

    "weightvault/v1 approval\\n" request_digest "\\n" decision "\\n" expires_at "\\n" approver "\\n"

Approvals count when: the signature verifies under the approver's key in the
policy *in force when counted*; the approver is not the requester (nor one of
the principals the policy lists as the same person); approvers are distinct;
the approval and the request are unexpired; and each approver fills at most
one required slot (so one person in two groups cannot satisfy two factors).
A valid ``deny`` from any eligible approver denies the request.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from weightvault.custody.person import PersonPublic, check_person_id
from weightvault.encoding import canonical_json
from weightvault.errors import ConfigError, InvalidRequestError

__all__ = [
    "DECISIONS",
    "HOLD_FACT",
    "POLICY_CHANGE_OP",
    "RESTORE_OP",
    "ApprovalPolicy",
    "ApprovalRequest",
    "Evaluation",
    "Rule",
    "SignedApproval",
    "approval_message",
    "evaluate",
]

POLICY_CHANGE_OP: Final = "approval.policy.change"
#: Restoring a backup behind a checkpoint already seen (docs/operations.md): without a rule of
#: its own, it needs what changing the approval policy needs.
RESTORE_OP: Final = "broker.restore"
#: The fact a release carries while its model is held by containment (docs/sentinel.md).
HOLD_FACT: Final = "containment.hold"
DECISIONS: Final = ("approve", "deny")
_APPROVAL: Final = b"weightvault/v1 approval"
_MAX_TTL: Final = 7 * 86400
_DEFAULT_TTL: Final = 3600
_OPS: Final = frozenset(
    {
        "key.release",
        "key.export",
        "key.rotate",
        "policy.change",
        "device.enrol",
        "custody.rekey",
        "limits.change",
        POLICY_CHANGE_OP,
        RESTORE_OP,
    }
)


@dataclass(frozen=True, slots=True)
class Factor:
    group: str
    count: int


@dataclass(frozen=True, slots=True)
class Rule:
    op: str
    tenants: tuple[str, ...]
    when: Mapping[str, str]
    require: tuple[Factor, ...]
    ttl_seconds: int

    def matches(self, op: str, tenant: str, facts: Mapping[str, Any]) -> bool:
        if op != self.op or not any(fnmatch.fnmatchcase(tenant, t) for t in self.tenants):
            return False
        return all(str(facts.get(k)) == v for k, v in self.when.items())

    @property
    def total(self) -> int:
        return sum(f.count for f in self.require)

    def describe(self) -> str:
        return " and ".join(f"{f.count} of {f.group}" for f in self.require)


@dataclass(frozen=True, slots=True)
class Approver:
    person: PersonPublic
    principals: frozenset[str]


@dataclass(frozen=True)
class ApprovalPolicy:
    """One parsed, validated version of the approval policy."""

    version: int
    approvers: Mapping[str, Approver]
    groups: Mapping[str, frozenset[str]]
    rules: tuple[Rule, ...]
    document: Mapping[str, Any]

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(canonical_json(dict(self.document))).hexdigest()

    @classmethod
    def parse(cls, document: Mapping[str, Any], version: int) -> ApprovalPolicy:
        """Validate a policy document.

        Raises:
            InvalidRequestError: unknown fields or operations, groups naming unknown
                approvers, factors that no group can satisfy, or no rule for
                ``approval.policy.change``.
        """
        if set(document) - {"approvers", "groups", "rules", "description"}:
            raise InvalidRequestError("an approval policy has approvers, groups, rules (and a description)")
        approvers: dict[str, Approver] = {}
        raw_approvers = document.get("approvers")
        if not isinstance(raw_approvers, Mapping) or not raw_approvers:
            raise InvalidRequestError("approvers must name at least one approver")
        for approver_id, entry in raw_approvers.items():
            if not isinstance(entry, Mapping) or set(entry) - {
                "signing",
                "hpke",
                "principals",
                "id",
                "kind",
                "version",
            }:
                raise InvalidRequestError(f"approver {approver_id}: {{signing, hpke, principals}}")
            try:
                fields = {
                    "id": check_person_id(approver_id),
                    "signing": entry.get("signing"),
                    "hpke": entry.get("hpke"),
                }
                person = PersonPublic.from_json(fields)
            except ConfigError as exc:
                raise InvalidRequestError(f"approver {approver_id}: {exc}") from exc
            principals = entry.get("principals", [])
            if not isinstance(principals, list) or not all(isinstance(p, str) for p in principals):
                raise InvalidRequestError(f"approver {approver_id}: principals is a list of principal ids")
            approvers[approver_id] = Approver(person, frozenset([approver_id, *principals]))
        keys = [a.person.signing for a in approvers.values()]
        if len(set(keys)) != len(keys):
            raise InvalidRequestError("two approvers share a signing key")
        groups: dict[str, frozenset[str]] = {}
        raw_groups = document.get("groups")
        if not isinstance(raw_groups, Mapping):
            raise InvalidRequestError("groups maps group names to approver ids")
        for name, members in raw_groups.items():
            if not isinstance(members, list) or not members or not all(m in approvers for m in members):
                raise InvalidRequestError(f"group {name} must list known approvers")
            groups[name] = frozenset(members)
        raw_rules = document.get("rules")
        if not isinstance(raw_rules, list) or not raw_rules:
            raise InvalidRequestError("rules must be a non-empty list")
        rules = tuple(_parse_rule(r, groups) for r in raw_rules)
        if not any(r.op == POLICY_CHANGE_OP for r in rules):
            raise InvalidRequestError(
                f"the policy needs a rule for {POLICY_CHANGE_OP}, so that it changes only by approval"
            )
        return cls(version, approvers, groups, rules, dict(document))

    def rule_for(self, op: str, tenant: str, facts: Mapping[str, Any]) -> Rule | None:
        """The first rule that matches; for a release of a model held by containment with no rule of its
        own, the rule for changing this policy (which every policy has, and which is its strictest by intent)."""
        rule = next((r for r in self.rules if r.matches(op, tenant, facts)), None)
        held_release = op == "key.release" and str(facts.get(HOLD_FACT)) == "true"
        if rule is None and (held_release or op == RESTORE_OP):
            strict = next((r for r in self.rules if r.op == POLICY_CHANGE_OP), None)
            if strict is not None:
                return Rule(op, ("*",), {}, strict.require, strict.ttl_seconds)
        return rule


def _parse_rule(raw: object, groups: Mapping[str, frozenset[str]]) -> Rule:
    if not isinstance(raw, Mapping) or set(raw) - {"op", "tenants", "when", "require", "ttl_seconds"}:
        raise InvalidRequestError("a rule has op, tenants, when, require and ttl_seconds")
    op = raw.get("op")
    if op not in _OPS:
        raise InvalidRequestError(f"unknown operation {op!r}; known: {', '.join(sorted(_OPS))}")
    tenants = raw.get("tenants", ["*"])
    when = raw.get("when", {})
    if not isinstance(tenants, list) or not tenants or not all(isinstance(t, str) for t in tenants):
        raise InvalidRequestError("tenants is a non-empty list of glob patterns")
    if not isinstance(when, Mapping) or not all(isinstance(v, str) for v in when.values()):
        raise InvalidRequestError("when maps fact names to string values")
    require = raw.get("require")
    if not isinstance(require, list) or not require:
        raise InvalidRequestError(f"rule {op}: require lists at least one {{group, count}}")
    factors = []
    for f in require:
        if not isinstance(f, Mapping) or f.get("group") not in groups or not isinstance(f.get("count"), int):
            raise InvalidRequestError(f"rule {op}: each factor names a known group and a count")
        if not 1 <= f["count"] <= len(groups[f["group"]]):
            raise InvalidRequestError(f"rule {op}: group {f['group']} cannot supply {f['count']} approvals")
        factors.append(Factor(f["group"], f["count"]))
    ttl = raw.get("ttl_seconds", _DEFAULT_TTL)
    if not isinstance(ttl, int) or not 60 <= ttl <= _MAX_TTL:
        raise InvalidRequestError("ttl_seconds is between 60 and 604800")
    return Rule(str(op), tuple(tenants), dict(when), tuple(factors), ttl)


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    id: str
    broker: str
    op: str
    tenant: str
    params: Mapping[str, Any]
    requester: str
    policy_version: int
    nonce: str
    not_before: int
    expires_at: int

    @property
    def digest(self) -> str:
        """SHA-256 over the canonical JSON of every field (as :meth:`to_json` lists them) and the purpose."""
        return hashlib.sha256(
            canonical_json({"purpose": "weightvault/v1 approval-request", **self.to_json()})
        ).hexdigest()

    @property
    def params_digest(self) -> str:
        return params_digest(self.params)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "broker": self.broker,
            "op": self.op,
            "tenant": self.tenant,
            "params": dict(self.params),
            "requester": self.requester,
            "policy_version": self.policy_version,
            "nonce": self.nonce,
            "not_before": self.not_before,
            "expires_at": self.expires_at,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ApprovalRequest:
        try:
            return cls(
                str(doc["id"]),
                str(doc["broker"]),
                str(doc["op"]),
                str(doc["tenant"]),
                dict(doc["params"]),
                str(doc["requester"]),
                int(doc["policy_version"]),
                str(doc["nonce"]),
                int(doc["not_before"]),
                int(doc["expires_at"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidRequestError("malformed approval request") from exc

    def summary(self) -> str:
        """What an approver reads before signing: every parameter, and the hashes they sign."""
        lines = [
            f"operation:   {self.op}",
            f"tenant:      {self.tenant}",
            f"requested by {self.requester} (approval policy v{self.policy_version})",
        ]
        for key, value in sorted(self.params.items()):
            text = value if isinstance(value, str) else canonical_json(value).decode()
            lines.append(f"  {key}: {text if len(text) <= 100 else text[:97] + '...'}")
        lines.append(f"parameters hash: {self.params_digest}")
        lines.append(f"request digest:  {self.digest}")
        return "\n".join(lines)


def params_digest(params: Mapping[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(canonical_json(dict(params))).hexdigest()


def approval_message(request_digest: str, decision: str, expires_at: int, approver: str) -> bytes:
    if decision not in DECISIONS:
        raise ValueError("decision is approve or deny")
    parts = [_APPROVAL, request_digest.encode(), decision.encode(), str(expires_at).encode(), approver.encode(), b""]
    return b"\n".join(parts)


@dataclass(frozen=True, slots=True)
class SignedApproval:
    approver: str
    decision: str
    expires_at: int
    signature: bytes


@dataclass(frozen=True, slots=True)
class Evaluation:
    status: str  # "pending" | "approved" | "denied"
    counted: tuple[str, ...]
    problems: tuple[str, ...]
    needed: str


def approval_problem(  # noqa: PLR0911 - one return per check, in order
    policy: ApprovalPolicy, request: ApprovalRequest, approval: SignedApproval, rule: Rule, now: int
) -> str | None:
    """Why ``approval`` does not count under ``policy`` (None when it counts)."""
    approver = policy.approvers.get(approval.approver)
    if approver is None:
        return f"{approval.approver} is not an approver in policy v{policy.version}"
    message = approval_message(request.digest, approval.decision, approval.expires_at, approval.approver)
    if approval.decision not in DECISIONS or not approver.person.verify(approval.signature, message):
        return f"the approval of {approval.approver} is not signed by their registered key over this request"
    if request.requester in approver.principals:
        return f"{approval.approver} requested this operation and cannot approve it"
    if not any(approval.approver in policy.groups[f.group] for f in rule.require):
        return f"{approval.approver} is not in a group this rule requires"
    if approval.expires_at <= now:
        return f"the approval of {approval.approver} expired"
    if approval.expires_at > request.expires_at + _MAX_TTL:
        return f"the approval of {approval.approver} outlives its request by too much"
    return None


def _assign(rule: Rule, members: Mapping[str, frozenset[str]], approvers: Sequence[str]) -> int:
    """Maximum number of required slots filled by distinct approvers (bipartite matching)."""
    slots = [f.group for f in rule.require for _ in range(f.count)]
    owner: dict[int, str] = {}

    def augment(approver: str, seen: set[int]) -> bool:
        for index, group in enumerate(slots):
            if index in seen or approver not in members[group]:
                continue
            seen.add(index)
            if index not in owner or augment(owner[index], seen):
                owner[index] = approver
                return True
        return False

    for approver in approvers:
        augment(approver, set())
    return len(owner)


def evaluate(
    policy: ApprovalPolicy,
    request: ApprovalRequest,
    approvals: Sequence[SignedApproval],
    facts: Mapping[str, Any],
    now: int,
) -> Evaluation:
    """The request's status under the policy in force now."""
    rule = policy.rule_for(request.op, request.tenant, facts)
    if rule is None:
        return Evaluation("approved", (), (), "no approval required")
    problems = []
    counted: list[str] = []
    for approval in approvals:
        problem = approval_problem(policy, request, approval, rule, now)
        if problem is not None:
            problems.append(problem)
            continue
        if approval.decision == "deny":
            return Evaluation("denied", (approval.approver,), tuple(problems), rule.describe())
        if approval.approver not in counted:
            counted.append(approval.approver)
    if request.expires_at <= now:
        return Evaluation("expired", tuple(counted), tuple(problems), rule.describe())
    filled = _assign(rule, policy.groups, counted)
    status = "approved" if filled >= rule.total else "pending"
    return Evaluation(status, tuple(counted), tuple(problems), rule.describe())
