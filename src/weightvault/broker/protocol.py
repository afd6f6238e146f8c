"""The broker protocol, in one place for the server and the client.

* HPKE ``info`` strings binding each sealed payload to its context. Each is a fixed
  label, a NUL, and the canonical JSON (RFC 8785) of the context, so a payload sealed
  for one tenant, model, version or token does not open for another.
* The release payload, built by the broker and parsed by the client::

      {"v": 1, "tenant", "resource", "jti", "file_key": b64}                                (whole model)
      {"v": 1, "tenant", "resource", "jti", "grants": [{"file_id", "header_secret", "tensors": {i: b64}}]}

  HPKE-sealed (base mode, HKDF-SHA256, AES-256-GCM) to the ephemeral key inside the
  result token, with ``release_info``. The parser checks that the payload names the
  tenant, resource and session the client asked for.
* Error codes: one table from error class to HTTP status and stable code for the
  server, and from code to error class for the client. Codes are documented in
  docs/protocol.md and never reused.

This module is pure: no I/O, no HTTP types.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from weightvault import errors as e
from weightvault.encoding import canonical_json, parse_json_object
from weightvault.format.keys import FileKey, TensorKeys

__all__ = [
    "CLIENT_ERRORS",
    "RELEASE_PAYLOAD_VERSION",
    "SERVER_ERRORS",
    "ErrorCode",
    "ReleasePayload",
    "error_for",
    "export_info",
    "problem_of",
    "registration_info",
    "release_info",
]

RELEASE_PAYLOAD_VERSION: Final = 1


def registration_info(tenant: str, name: str, version: str) -> bytes:
    """HPKE info binding a publisher's sealed file key to the model it registers."""
    return b"weightvault/v1 register\x00" + canonical_json({"tenant": tenant, "name": name, "version": version})


def export_info(tenant: str, resource: str) -> bytes:
    """HPKE info binding an exported file key to its tenant and model."""
    return b"weightvault/v1 export\x00" + canonical_json({"tenant": tenant, "resource": resource})


def release_info(tenant: str, resource: str, jti: str) -> bytes:
    """HPKE info binding a released payload to its tenant, model and token."""
    return b"weightvault/v1 release\x00" + canonical_json({"tenant": tenant, "resource": resource, "jti": jti})


@dataclass
class ReleasePayload:
    """The keys of one release: the whole model's file key, or partial grants per file id (hex)."""

    tenant: str
    resource: str
    jti: str
    file_key: FileKey | None = None
    grants: dict[str, TensorKeys] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """Canonical JSON. The caller seals it and wipes the keys."""
        doc: dict[str, Any] = {
            "v": RELEASE_PAYLOAD_VERSION,
            "tenant": self.tenant,
            "resource": self.resource,
            "jti": self.jti,
        }
        if self.file_key is not None:
            doc["file_key"] = base64.b64encode(self.file_key.reveal()).decode()
        else:
            doc["grants"] = [
                {
                    "file_id": file_id,
                    "header_secret": base64.b64encode(grant.header_secret()).decode(),
                    "tensors": {
                        str(i): base64.b64encode(grant.tensor_secret(i) or b"").decode() for i in grant.indices
                    },
                }
                for file_id, grant in sorted(self.grants.items())
            ]
        out: bytes = canonical_json(doc)
        return out

    @classmethod
    def from_bytes(cls, plaintext: bytes, *, tenant: str, resource: str, jti: str) -> ReleasePayload:
        """Parse an opened payload and check it is the one asked for.

        Raises:
            KeyAccessError: malformed, another version, or bound to another tenant, resource or session.
        """
        try:
            doc = parse_json_object(plaintext, "the release payload", e.KeyAccessError)
            if doc.get("v") != RELEASE_PAYLOAD_VERSION:
                raise e.KeyAccessError("the release payload has an unknown version")
            if (doc.get("tenant"), doc.get("resource"), doc.get("jti")) != (tenant, resource, jti):
                raise e.KeyAccessError("the release payload is bound to another tenant, resource or session")
            payload = cls(tenant, resource, jti)
            if "file_key" in doc:
                payload.file_key = FileKey(base64.b64decode(doc["file_key"], validate=True))
            for grant in doc.get("grants", []):
                payload.grants[str(grant["file_id"])] = TensorKeys(
                    bytes.fromhex(grant["file_id"]),
                    base64.b64decode(grant["header_secret"], validate=True),
                    {int(i): base64.b64decode(s, validate=True) for i, s in grant["tensors"].items()},
                )
        except (ValueError, TypeError, KeyError, AttributeError, binascii.Error) as exc:
            raise e.KeyAccessError("the release payload is malformed") from exc
        if payload.file_key is None and not payload.grants:
            raise e.KeyAccessError("the release payload holds no key")
        return payload

    def wipe(self) -> None:
        if self.file_key is not None:
            self.file_key.wipe()
        for grant in self.grants.values():
            grant.wipe()


class ErrorCode(enum.StrEnum):
    """Every ``code`` of a problem+json answer."""

    BAD_REQUEST = "bad_request"
    INVALID_JSON = "invalid_json"
    UNAUTHENTICATED = "unauthenticated"
    TOKEN_EXPIRED = "token_expired"  # noqa: S105 - an error code, not a secret
    SESSION_ENDED = "session_ended"
    CSRF_FAILED = "csrf_failed"
    ATTESTATION_FAILED = "attestation_failed"
    FORBIDDEN = "forbidden"
    CONTAINED = "contained"
    RELEASE_DENIED = "release_denied"
    KEY_UNAVAILABLE = "key_unavailable"
    APPROVAL_REQUIRED = "approval_required"
    APPROVAL_INVALID = "approval_invalid"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    CONFLICT = "conflict"
    CHALLENGE_USED = "challenge_used"
    CEREMONY_REFUSED = "ceremony_refused"
    CHALLENGE_EXPIRED = "challenge_expired"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    INVALID_REQUEST = "invalid_request"
    INVALID_POLICY = "invalid_policy"
    ENROLMENT_REFUSED = "enrolment_refused"
    SHARE_REJECTED = "share_rejected"
    MODEL_SIGNATURE_INVALID = "model_signature_invalid"
    RATE_LIMITED = "rate_limited"
    INTERNAL_ERROR = "internal_error"
    CONFIGURATION = "configuration"
    AUDIT_UNAVAILABLE = "audit_unavailable"
    SEALED = "sealed"
    SERVICE_UNAVAILABLE = "service_unavailable"
    STORAGE_UNAVAILABLE = "storage_unavailable"


#: Server side: error class -> (code, HTTP status, title). The most specific class in an
#: error's MRO wins. Titles are coarse by design; details go to the audit log.
SERVER_ERRORS: Final[Mapping[type[e.WeightVaultError], tuple[ErrorCode, int, str]]] = {
    e.WeightVaultError: (ErrorCode.BAD_REQUEST, 400, "The request was refused"),
    e.AuthenticationError: (ErrorCode.UNAUTHENTICATED, 401, "Authentication required"),
    e.TokenExpiredError: (ErrorCode.TOKEN_EXPIRED, 401, "The API token has expired: ask for a new one"),
    e.SessionEndedError: (ErrorCode.SESSION_ENDED, 401, "Your console session has ended: sign in again"),
    e.PermissionDeniedError: (ErrorCode.FORBIDDEN, 403, "Not allowed"),
    e.CSRFError: (ErrorCode.CSRF_FAILED, 403, "The form's CSRF token is missing or wrong: reload the page"),
    e.ContainedError: (ErrorCode.CONTAINED, 403, "Held by containment: an operator must lift the hold"),
    e.NotFoundError: (ErrorCode.NOT_FOUND, 404, "Not found"),
    e.ConflictError: (ErrorCode.CONFLICT, 409, "Conflict with the current state"),
    e.ChallengeUsedError: (ErrorCode.CHALLENGE_USED, 409, "Challenge already used"),
    e.ChallengeExpiredError: (ErrorCode.CHALLENGE_EXPIRED, 410, "Challenge expired"),
    e.InvalidRequestError: (ErrorCode.INVALID_REQUEST, 422, "Invalid request"),
    e.RateLimitedError: (ErrorCode.RATE_LIMITED, 429, "Too many requests"),
    e.AttestationError: (ErrorCode.ATTESTATION_FAILED, 401, "Attestation failed"),
    e.EnrolmentError: (ErrorCode.ENROLMENT_REFUSED, 422, "Enrolment refused"),
    e.PolicyViolationError: (ErrorCode.INVALID_POLICY, 422, "Invalid policy"),
    e.ReleaseDeniedError: (ErrorCode.RELEASE_DENIED, 403, "Key release denied"),
    e.KeyAccessError: (ErrorCode.KEY_UNAVAILABLE, 403, "Key unavailable"),
    # The broker raises AuditLogError when its own log cannot append: for the caller
    # that is an outage (retry), not evidence of tampering.
    e.AuditLogError: (ErrorCode.AUDIT_UNAVAILABLE, 503, "The audit log could not record the action"),
    e.ConfigError: (ErrorCode.CONFIGURATION, 500, "Server configuration error"),
    e.ApprovalRequiredError: (ErrorCode.APPROVAL_REQUIRED, 403, "This operation needs approvals"),
    e.ApprovalInvalidError: (ErrorCode.APPROVAL_INVALID, 403, "Approval refused"),
    e.ShareError: (ErrorCode.SHARE_REJECTED, 422, "Share rejected"),
    e.ModelSignatureError: (ErrorCode.MODEL_SIGNATURE_INVALID, 422, "Model signature refused"),
    e.CeremonyError: (ErrorCode.CEREMONY_REFUSED, 409, "Ceremony refused"),
    e.SealedError: (ErrorCode.SEALED, 503, "The broker is sealed"),
    e.UnavailableError: (ErrorCode.SERVICE_UNAVAILABLE, 503, "The service cannot serve now"),
    e.StorageUnavailableError: (ErrorCode.STORAGE_UNAVAILABLE, 503, "The broker's database is unavailable"),
}

#: Client side: code -> the error raised. Bad data and refusals are never retryable;
#: only the UnavailableError branch is.
CLIENT_ERRORS: Final[Mapping[ErrorCode, type[e.WeightVaultError]]] = {
    ErrorCode.BAD_REQUEST: e.RequestError,
    ErrorCode.INVALID_JSON: e.InvalidRequestError,
    ErrorCode.UNAUTHENTICATED: e.AuthenticationError,
    ErrorCode.TOKEN_EXPIRED: e.TokenExpiredError,
    ErrorCode.ATTESTATION_FAILED: e.EvidenceError,
    ErrorCode.SESSION_ENDED: e.SessionEndedError,
    ErrorCode.FORBIDDEN: e.PermissionDeniedError,
    ErrorCode.CSRF_FAILED: e.CSRFError,
    ErrorCode.CONTAINED: e.ContainedError,
    ErrorCode.RELEASE_DENIED: e.ReleaseDeniedError,
    ErrorCode.KEY_UNAVAILABLE: e.KeyAccessError,
    ErrorCode.APPROVAL_REQUIRED: e.ApprovalRequiredError,
    ErrorCode.APPROVAL_INVALID: e.ApprovalInvalidError,
    ErrorCode.NOT_FOUND: e.NotFoundError,
    ErrorCode.METHOD_NOT_ALLOWED: e.InvalidRequestError,
    ErrorCode.CONFLICT: e.ConflictError,
    ErrorCode.CHALLENGE_USED: e.ChallengeUsedError,
    ErrorCode.CEREMONY_REFUSED: e.CeremonyError,
    ErrorCode.CHALLENGE_EXPIRED: e.ChallengeExpiredError,
    ErrorCode.PAYLOAD_TOO_LARGE: e.InvalidRequestError,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: e.InvalidRequestError,
    ErrorCode.INVALID_REQUEST: e.InvalidRequestError,
    ErrorCode.INVALID_POLICY: e.PolicyViolationError,
    ErrorCode.ENROLMENT_REFUSED: e.EnrolmentError,
    ErrorCode.SHARE_REJECTED: e.ShareError,
    ErrorCode.MODEL_SIGNATURE_INVALID: e.ModelSignatureError,
    ErrorCode.RATE_LIMITED: e.RateLimitedError,
    ErrorCode.INTERNAL_ERROR: e.ServerError,
    ErrorCode.CONFIGURATION: e.ServerError,
    ErrorCode.AUDIT_UNAVAILABLE: e.AuditUnavailableError,
    ErrorCode.SEALED: e.SealedError,
    ErrorCode.SERVICE_UNAVAILABLE: e.ServiceUnavailableError,
    ErrorCode.STORAGE_UNAVAILABLE: e.StorageUnavailableError,
}

#: Errors whose message the server may show: they describe the caller's own request,
#: never a secret or a verification detail that could become an oracle.
_SHOWN: Final = (
    e.InvalidRequestError,
    e.PolicyViolationError,
    e.NotFoundError,
    e.ConflictError,
    e.ApprovalError,
    e.CustodyError,
    e.EnrolmentError,
    e.ModelSignatureError,
)


def problem_of(error: e.WeightVaultError) -> tuple[ErrorCode, int, str, str | None]:
    """(code, status, title, detail or None) of an error, as the server answers it."""
    for cls in type(error).__mro__:
        if cls in SERVER_ERRORS:
            code, status, title = SERVER_ERRORS[cls]
            break
    else:  # pragma: no cover - WeightVaultError is always in the table
        code, status, title = SERVER_ERRORS[e.WeightVaultError]
    return code, status, title, str(error) if isinstance(error, _SHOWN) else None


def error_for(status: int, code: str, detail: str, extra: Mapping[str, Any]) -> e.WeightVaultError:
    """The error a client raises for a problem answer (``extra``: the answer's other fields).

    An unknown code maps by status: 502, 503 and 504 are an outage (retryable), any other
    5xx a server failure (not retryable), any 4xx a refused request.
    """
    try:
        cls = CLIENT_ERRORS[ErrorCode(code)]
    except ValueError:
        if status in (502, 503, 504):
            cls = e.ServiceUnavailableError
        elif status >= 500:
            cls = e.ServerError
        else:
            cls = e.RequestError
    if cls is e.ReleaseDeniedError:
        codes = [str(c) for c in _strings(extra.get("codes"))]
        shown = f"{detail}: {', '.join(codes)}" if codes else detail
        return e.ReleaseDeniedError(shown, _strings(extra.get("reasons")), codes)
    if cls is e.ApprovalRequiredError:
        request = extra.get("approval_request")
        return e.ApprovalRequiredError(detail, dict(request) if isinstance(request, Mapping) else None)
    return cls(detail)


def _strings(value: object) -> Sequence[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []
