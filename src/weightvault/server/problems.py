"""RFC 7807 problem details: one table from error class to HTTP status and stable code.

Callers see a coarse title and code; the audit log holds the full reasons.
"""

from __future__ import annotations

from typing import Final

from starlette.responses import JSONResponse

from weightvault import errors as e

__all__ = ["PROBLEMS", "problem", "problem_for"]

PROBLEM_BASE: Final = "https://weightvault.dev/problems/"

#: error class -> (HTTP status, stable code, title). The most specific class wins.
PROBLEMS: Final[dict[type[Exception], tuple[int, str, str]]] = {
    e.WeightVaultError: (400, "bad_request", "The request was refused"),
    e.AuthenticationError: (401, "unauthenticated", "Authentication required"),
    e.PermissionDeniedError: (403, "forbidden", "Not allowed"),
    e.NotFoundError: (404, "not_found", "Not found"),
    e.ConflictError: (409, "conflict", "Conflict with the current state"),
    e.ChallengeUsedError: (409, "challenge_used", "Challenge already used"),
    e.ChallengeExpiredError: (410, "challenge_expired", "Challenge expired"),
    e.InvalidRequestError: (422, "invalid_request", "Invalid request"),
    e.RateLimitedError: (429, "rate_limited", "Too many requests"),
    e.AttestationError: (401, "attestation_failed", "Attestation failed"),
    e.EnrolmentError: (422, "enrolment_refused", "Enrolment refused"),
    e.PolicyViolationError: (422, "invalid_policy", "Invalid policy"),
    e.ReleaseDeniedError: (403, "release_denied", "Key release denied"),
    e.KeyAccessError: (403, "key_unavailable", "Key unavailable"),
    e.AuditLogError: (503, "audit_unavailable", "The audit log could not record the action"),
    e.ConfigError: (500, "configuration", "Server configuration error"),
    e.ApprovalRequiredError: (403, "approval_required", "This operation needs approvals"),
    e.ApprovalInvalidError: (403, "approval_invalid", "Approval refused"),
    e.ShareError: (422, "share_rejected", "Share rejected"),
    e.CeremonyError: (409, "ceremony_refused", "Ceremony refused"),
    e.SealedError: (503, "sealed", "The broker is sealed"),
}


def problem(status: int, code: str, title: str, detail: str | None = None, **extra: object) -> JSONResponse:
    body: dict[str, object] = {"type": PROBLEM_BASE + code, "title": title, "status": status, "code": code}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


def problem_for(error: e.WeightVaultError) -> JSONResponse:
    """The problem response of an error; details are coarse by design."""
    for cls in type(error).__mro__:
        if cls in PROBLEMS:
            status, code, title = PROBLEMS[cls]
            break
    else:  # pragma: no cover - WeightVaultError is always in the table
        status, code, title = PROBLEMS[e.WeightVaultError]
    detail = None
    if isinstance(
        error,
        e.InvalidRequestError
        | e.PolicyViolationError
        | e.NotFoundError
        | e.ConflictError
        | e.ApprovalError
        | e.CustodyError
        | e.EnrolmentError,
    ):
        detail = str(error)
    extra: dict[str, object] = {}
    if isinstance(error, e.ReleaseDeniedError):
        extra["reasons"] = list(error.reasons)
        extra["codes"] = list(error.codes)
    if isinstance(error, e.ApprovalRequiredError) and error.request is not None:
        extra["approval_request"] = error.request
    return problem(status, code, title, detail, **extra)
