"""Release policies: JSON rules over normalised claims, default deny.

::

    {"verifiers": ["tpm"],                    required: verifiers whose results may satisfy this policy
     "resources": ["acme/models/*"],          glob patterns under the policy's tenant
     "immutable": false,
     "rule": {"allOf": [
         {"claim": "device.status", "equals": "active"},
         {"claim": "tpm.pcr.sha256.7", "in": {"refset": "secureboot-2026"}},
         {"anyOf": [{"claim": "tpm.pcr.sha256.23", "equals": "9a…"}, {"claim": "token.dbgstat", "equals": "disabled"}]}
     ]}}

``verifiers`` is a list (a result resting on any one of them may satisfy the policy) or
``{"allOf": [...]}``: the result must rest on every one of them, which only composite
evidence does (``{"allOf": ["sev-snp", "nvidia-gpu"]}``: an SNP guest and its GPUs, bound
together; :mod:`weightvault.attestation.composite`). A composite result rests on the
composite verifier and on each of its parts.

Conditions: ``equals``, ``notEquals``, ``in`` (a list, or ``{"refset": name}``),
``contains``, ``less``, ``lessOrEquals``, ``greater``, ``greaterOrEquals``, ``exists``.
Combinators ``allOf`` and ``anyOf`` nest. A missing claim makes its condition false
(never an error that could fall through to allow); an empty combinator is invalid.
Evaluation returns the decision *and* every failed condition. A result from a
verifier the policy does not list never satisfies it, which is how the
``insecure-sample`` verifier is kept out of production policies.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from weightvault.attestation.interfaces import AttestationResult, ClaimValue
from weightvault.encoding import canonical_json
from weightvault.errors import PolicyViolationError

__all__ = ["PolicyDecision", "ReleasePolicy"]

_OPERATORS: Final = frozenset(
    {"equals", "notEquals", "in", "contains", "less", "lessOrEquals", "greater", "greaterOrEquals", "exists"}
)
_MAX_DEPTH: Final = 8
_MAX_NODES: Final = 256
_MAX_BYTES: Final = 64 << 10


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """The outcome of one evaluation.

    ``failed`` describes every failed condition (for the audit log); ``codes`` are
    the stable reason codes a refused workload may see, which name the kind of
    failure and never the policy's contents.
    """

    allowed: bool
    failed: tuple[str, ...]
    version: int
    digest: str
    codes: tuple[str, ...] = ()


def _describe(cond: Mapping[str, Any]) -> str:
    op = next(k for k in cond if k != "claim")
    value = cond[op]
    shown = json.dumps(value, sort_keys=True)[:80]
    return f"{cond['claim']} {op} {shown}"


@dataclass(frozen=True, slots=True)
class ReleasePolicy:
    """A validated policy document (one version of one named policy)."""

    tenant: str
    name: str
    version: int
    verifiers: tuple[str, ...]
    resources: tuple[str, ...]
    rule: Mapping[str, Any]
    immutable: bool = False
    document: Mapping[str, Any] = field(default_factory=dict)
    #: True for ``{"allOf": [...]}``: the result must rest on every listed verifier.
    all_verifiers: bool = False

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(canonical_json(dict(self.document))).hexdigest()

    @classmethod
    def parse(cls, tenant: str, name: str, version: int, document: Mapping[str, Any]) -> ReleasePolicy:
        """Validate a policy document.

        Raises:
            PolicyViolationError: a malformed document, an unknown operator, a resource
                outside the tenant, or no verifier listed.
        """
        if len(canonical_json(dict(document))) > _MAX_BYTES:
            raise PolicyViolationError("policy document too large")
        allowed_keys = {"verifiers", "resources", "rule", "immutable", "description"}
        unknown = set(document) - allowed_keys
        if unknown:
            raise PolicyViolationError(f"unknown policy fields {sorted(unknown)}")
        verifiers = document.get("verifiers")
        all_verifiers = isinstance(verifiers, dict)
        if isinstance(verifiers, dict):
            if set(verifiers) != {"allOf"}:
                raise PolicyViolationError('verifiers is a list, or {"allOf": [...]}')
            verifiers = verifiers["allOf"]
        if not isinstance(verifiers, list) or not verifiers or not all(isinstance(v, str) for v in verifiers):
            raise PolicyViolationError("policy must list the verifiers it accepts")
        if len(set(verifiers)) != len(verifiers):
            raise PolicyViolationError("policy lists a verifier twice")
        resources = document.get("resources")
        if not isinstance(resources, list) or not resources or not all(isinstance(r, str) for r in resources):
            raise PolicyViolationError("policy must list resource patterns")
        for pattern in resources:
            if not pattern.startswith(f"{tenant}/") or ".." in pattern.split("/"):
                raise PolicyViolationError(f"resource pattern {pattern[:80]!r} is outside tenant {tenant!r}")
        immutable = document.get("immutable", False)
        if not isinstance(immutable, bool):
            raise PolicyViolationError("immutable must be true or false")
        rule = document.get("rule")
        counter = [0]
        _validate(rule, 0, counter)
        return cls(
            tenant,
            name,
            version,
            tuple(verifiers),
            tuple(resources),
            rule,  # type: ignore[arg-type]
            immutable,
            dict(document),
            all_verifiers,
        )

    def covers(self, resource: str) -> bool:
        return any(fnmatch.fnmatchcase(resource, p) for p in self.resources)

    def evaluate(
        self,
        result: AttestationResult,
        resource: str,
        extra_claims: Mapping[str, ClaimValue],
        refsets: Mapping[str, frozenset[str]],
    ) -> PolicyDecision:
        """Evaluate against ``result``'s claims plus broker claims (device status, token age, ...)."""
        failed: list[str] = []
        codes: list[str] = []
        rests_on = result.verified_by
        if self.all_verifiers and not rests_on >= set(self.verifiers):
            missing = ", ".join(sorted(set(self.verifiers) - rests_on))
            failed.append(f"policy {self.name} requires evidence of every one of its verifiers; missing {missing}")
            codes.append("verifier_not_accepted")
        elif not self.all_verifiers and not rests_on & set(self.verifiers):
            failed.append(f"verifier {result.verifier} is not accepted by policy {self.name}")
            codes.append("verifier_not_accepted")
        if not self.covers(resource):
            failed.append(f"resource {resource} is not covered by policy {self.name}")
            codes.append("resource_not_covered")
        # Verifiers keep to their own namespaces (attestation.interfaces.check_result), so nothing is
        # shadowed here; were it ever, the broker's own claims win.
        claims: dict[str, ClaimValue] = {**result.claims, **extra_claims, "verifier": result.verifier}
        ok = _eval(self.rule, claims, refsets, failed)
        if not ok:
            codes.append("conditions_not_met")
        return PolicyDecision(ok and not codes, tuple(failed), self.version, self.digest, tuple(codes))


def _validate(node: object, depth: int, counter: list[int]) -> None:
    counter[0] += 1
    if depth > _MAX_DEPTH or counter[0] > _MAX_NODES:
        raise PolicyViolationError("policy rule is too deep or too large")
    if not isinstance(node, dict):
        raise PolicyViolationError("each rule must be an object")
    if "allOf" in node or "anyOf" in node:
        if len(node) != 1:
            raise PolicyViolationError("a combinator object holds exactly one of allOf or anyOf")
        children = node.get("allOf", node.get("anyOf"))
        if not isinstance(children, list) or not children:
            raise PolicyViolationError("allOf and anyOf need a non-empty list")
        for child in children:
            _validate(child, depth + 1, counter)
        return
    if set(node) - {"claim"} == set() or "claim" not in node or not isinstance(node["claim"], str):
        raise PolicyViolationError("a condition needs a claim and one operator")
    ops = set(node) - {"claim"}
    if len(ops) != 1 or not ops <= _OPERATORS:
        raise PolicyViolationError(f"unknown or repeated operator in condition on {node['claim']!r}")
    op = ops.pop()
    value = node[op]
    if op == "in" and not (
        isinstance(value, list)
        or (isinstance(value, dict) and set(value) == {"refset"} and isinstance(value["refset"], str))
    ):
        raise PolicyViolationError("'in' takes a list or {\"refset\": name}")
    if op in ("less", "lessOrEquals", "greater", "greaterOrEquals") and (
        not isinstance(value, int) or isinstance(value, bool)
    ):
        raise PolicyViolationError(f"'{op}' compares with an integer")
    if op == "exists" and not isinstance(value, bool):
        raise PolicyViolationError("'exists' takes true or false")


def _eval(
    node: Mapping[str, Any], claims: Mapping[str, ClaimValue], refsets: Mapping[str, frozenset[str]], failed: list[str]
) -> bool:
    if "allOf" in node:
        results = [_eval(child, claims, refsets, failed) for child in node["allOf"]]
        return all(results)
    if "anyOf" in node:
        branch_failures: list[str] = []
        for child in node["anyOf"]:
            mine: list[str] = []
            if _eval(child, claims, refsets, mine):
                return True
            branch_failures.extend(mine)
        failed.append("none of: " + "; ".join(branch_failures) if branch_failures else "no alternative held")
        return False
    ok = _condition(node, claims, refsets)
    if not ok:
        failed.append(_describe(node))
    return ok


def _condition(  # noqa: PLR0911 - one return per operator reads as the table it is
    cond: Mapping[str, Any], claims: Mapping[str, ClaimValue], refsets: Mapping[str, frozenset[str]]
) -> bool:
    name = cond["claim"]
    op = next(k for k in cond if k != "claim")
    expected = cond[op]
    present = name in claims
    if op == "exists":
        return present is expected
    if not present:
        return False
    actual = claims[name]
    if op == "equals":
        return type(actual) is type(expected) and actual == expected
    if op == "notEquals":
        return not (type(actual) is type(expected) and actual == expected)
    if op == "in":
        allowed: Sequence[object] | frozenset[str]
        allowed = refsets.get(expected["refset"], frozenset()) if isinstance(expected, dict) else expected
        return isinstance(actual, str | int) and not isinstance(actual, bool) and actual in allowed
    if op == "contains":
        return isinstance(actual, list) and expected in actual
    if isinstance(actual, bool) or not isinstance(actual, int):
        return False
    results: dict[str, bool] = {
        "less": actual < expected,
        "lessOrEquals": actual <= expected,
        "greater": actual > expected,
        "greaterOrEquals": actual >= expected,
    }
    return results[op]
