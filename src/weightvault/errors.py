"""The one error tree of weightvault.

Every failure that weightvault detects in untrusted input, in key access, or in
its own configuration raises a subclass of :class:`WeightVaultError`. Caller
misuse (a key of the wrong length, an argument of the wrong type) raises
``ValueError`` or ``TypeError`` instead, so that "the data is bad" and "the
program is wrong" never share an ``except`` clause.

::

    WeightVaultError
    ├─ FormatError                 untrusted bytes are malformed or fail authentication
    │  ├─ HeaderError              preamble, recipients region, header or limits are malformed
    │  │  └─ UnsupportedError      a version, suite, flag, dtype or critical field we do not know
    │  ├─ HeaderAuthError          the header MAC or a per-tensor key commitment does not verify
    │  ├─ PayloadError             a chunk tag fails, data is truncated, extended or has non-zero padding
    │  ├─ ManifestError            a sealed model directory does not match its authenticated manifest
    │  ├─ BackupError              a broker backup is malformed, fails its signature or encryption, or is not ours
    │  └─ ModelSignatureError      an OpenSSF model signature does not verify (key, files, or the signature itself)
    ├─ KeyAccessError              the caller cannot obtain the right key
    │  ├─ NoMatchingRecipientError no identity opens any recipient stanza of the file
    │  ├─ KeyMismatchError         a key was supplied but it is not this file's key (key commitment)
    │  └─ ReleaseDeniedError       the key broker refused to release the key (carries reasons)
    ├─ AttestationError            evidence could not be verified
    │  ├─ EvidenceError
    │  │  └─ EnrolmentError        a TPM's EK certificate or AK is refused at enrolment (reason shown)
    │  ├─ QuoteError
    │  └─ PolicyViolationError
    ├─ AuditLogError               the tamper-evident log or a proof does not verify
    │  ├─ InclusionProofError
    │  ├─ ConsistencyError
    │  ├─ CheckpointError
    │  └─ RollbackError            a restore would take the log back behind a checkpoint already seen
    ├─ RequestError                a service refused a request for a reason other than the above
    │  ├─ AuthenticationError      no or an invalid credential
    │  │  ├─ TokenExpiredError     the right API token, past its expiry
    │  │  └─ SessionEndedError     a console session unknown, expired or signed out
    │  ├─ PermissionDeniedError    the credential may not do this (role, tenant)
    │  │  ├─ CSRFError             a console change without its CSRF token
    │  │  └─ ContainedError        a containment hold (sentinel or operator) stops this principal, key or device
    │  ├─ NotFoundError            no such resource in the caller's tenant
    │  ├─ ConflictError            a state conflict (immutable policy, existing resource)
    │  ├─ ChallengeUsedError       a challenge was already consumed
    │  ├─ ChallengeExpiredError    a challenge expired
    │  ├─ InvalidRequestError      a well-formed request with invalid content
    │  ├─ RateLimitedError         too many requests from one principal
    │  ├─ ServerError              the service failed (HTTP 500): a bug or its misconfiguration; not retryable
    │  └─ ApprovalError            a multi-party approval rule refused the operation
    │     ├─ ApprovalRequiredError the operation needs approvals it does not have (yet)
    │     └─ ApprovalInvalidError  an approval is forged, replayed, expired or not allowed
    ├─ CustodyError                a custody ceremony refused a share or a step
    │  ├─ ShareError               a share is corrupted, of another set or ceremony, or unsigned
    │  ├─ CeremonyError            the ceremony is closed, expired or cancelled, or a signature fails
    │  └─ SealedError              the broker is sealed: its root key is not available
    ├─ UnavailableError            the service cannot serve now: the only retryable branch
    │  ├─ TransportError           it could not be reached or timed out
    │  └─ ServiceUnavailableError  it answered that it cannot serve now (HTTP 503)
    │     ├─ AuditUnavailableError its audit log could not record the action, so nothing was done
    │     └─ StorageUnavailableError its database could not be read or written, so nothing was done
    ├─ IsolationError              the sandbox cannot isolate here (no privileges or tools); it never runs unisolated
    └─ ConfigError                 local configuration or key files are unusable
       ├─ EgressPolicyError        a sandbox egress rule is a wildcard, a range, a name, or malformed
       └─ RuleError                a sentinel rule file or configuration does not parse

Two branches never overlap: "the data or the evidence is bad" (FormatError,
AttestationError, AuditLogError, RequestError...) is never retried, while
UnavailableError is the one thing worth retrying. In particular a broker whose
audit log is down answers AuditUnavailableError, never an AuditLogError (which
means a log or proof failed verification: tampering).

Authentication failures of one kind are reported as one opaque error: the
message never says which byte or which check failed beyond what the caller
needs to act, so that no error becomes an oracle. Each error offers
:meth:`WeightVaultError.diagnostics` with remediation text for people; only the
CLI prints it.

This module imports nothing from weightvault.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ApprovalError",
    "ApprovalInvalidError",
    "ApprovalRequiredError",
    "AttestationError",
    "AuditLogError",
    "AuditUnavailableError",
    "AuthenticationError",
    "BackupError",
    "CSRFError",
    "CeremonyError",
    "ChallengeExpiredError",
    "ChallengeUsedError",
    "CheckpointError",
    "ConfigError",
    "ConflictError",
    "ConsistencyError",
    "CustodyError",
    "EgressPolicyError",
    "EnrolmentError",
    "EvidenceError",
    "FormatError",
    "HeaderAuthError",
    "HeaderError",
    "InclusionProofError",
    "InvalidRequestError",
    "IsolationError",
    "KeyAccessError",
    "KeyMismatchError",
    "ManifestError",
    "ModelSignatureError",
    "NoMatchingRecipientError",
    "NotFoundError",
    "PayloadError",
    "PermissionDeniedError",
    "PolicyViolationError",
    "QuoteError",
    "RateLimitedError",
    "ReleaseDeniedError",
    "RequestError",
    "RollbackError",
    "SealedError",
    "ServerError",
    "ServiceUnavailableError",
    "SessionEndedError",
    "ShareError",
    "StorageUnavailableError",
    "TokenExpiredError",
    "TransportError",
    "UnavailableError",
    "UnsupportedError",
    "WeightVaultError",
]


class WeightVaultError(Exception):
    """Base class of every error weightvault raises on bad input or refused access."""

    #: Short remediation text for people; subclasses override it.
    remedy: str = ""

    def diagnostics(self) -> str:
        """Return the message followed by remediation text, for people to read."""
        text = str(self)
        if self.remedy:
            text = f"{text}\n  hint: {self.remedy}"
        return text


class FormatError(WeightVaultError):
    """Untrusted bytes are malformed or fail authentication."""

    remedy = "the file is damaged or was tampered with; obtain a fresh copy from its publisher"


class HeaderError(FormatError):
    """The preamble, recipients region or header is malformed or exceeds a limit."""


class UnsupportedError(HeaderError):
    """The input uses a version, suite, flag, dtype or critical field this release does not know."""

    remedy = "upgrade weightvault, or re-seal the model with options this release supports"


class HeaderAuthError(FormatError):
    """The header MAC or a per-tensor key commitment does not verify."""


class PayloadError(FormatError):
    """A chunk fails authentication, or the data area is truncated, extended or has non-zero padding."""


class ManifestError(FormatError):
    """A sealed model directory does not match its authenticated manifest."""


class BackupError(FormatError):
    """A broker backup is malformed, fails its signature or its encryption, or belongs to another broker."""

    remedy = "use a backup this broker wrote, with its keys/audit-log.key.vkey and root key; never edit one"


class ModelSignatureError(FormatError):
    """An OpenSSF model signature (model_signing) does not verify: another key, other files, a file
    added, removed or changed after signing, or a damaged signature."""

    remedy = "verify against the signer's public key; re-sign only a model you have checked"


class KeyAccessError(WeightVaultError):
    """The caller cannot obtain the right key for a sealed file."""


class NoMatchingRecipientError(KeyAccessError):
    """No supplied identity opens any recipient stanza of the file."""

    remedy = "pass the key, identity or passphrase the file was sealed to (see 'weightvault inspect')"


class KeyMismatchError(KeyAccessError):
    """A key was supplied but it is not this file's key: the key commitment does not match."""

    remedy = "the key belongs to another file or model; use the key this file was sealed with"


class ReleaseDeniedError(KeyAccessError):
    """The key broker refused to release a key.

    Attributes:
        reasons: the coarse reason the broker reveals: ``device`` or ``policy``.
        codes: stable reason codes (``device_revoked``, ``conditions_not_met``, ...,
            docs/protocol.md) that say what kind of check failed, never the policy's contents.
    """

    def __init__(self, message: str, reasons: Sequence[str] = (), codes: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.reasons: tuple[str, ...] = tuple(reasons)
        self.codes: tuple[str, ...] = tuple(codes)


class AttestationError(WeightVaultError):
    """Attestation evidence could not be verified."""


class EvidenceError(AttestationError):
    """Evidence is malformed, stale, or not bound to the expected challenge."""


class QuoteError(AttestationError):
    """A TPM quote fails one of its structural, signature or freshness checks."""


class EnrolmentError(EvidenceError):
    """A device was refused at enrolment: its EK certificate does not chain to a configured root,
    the EK does not match it, or the AK is not a restricted signing key.

    Unlike a refused quote, the reason is shown to the caller: enrolment is an operator's
    own action, and the fix (configure the vendor's CA, an intermediate) depends on it.
    """

    remedy = "configure the TPM vendor's EK CA (broker init --tpm-roots, --tpm-intermediates) and enrol again"


class PolicyViolationError(AttestationError):
    """Verified claims do not satisfy the release policy."""


class AuditLogError(WeightVaultError):
    """The tamper-evident log, a checkpoint or a proof does not verify."""


class InclusionProofError(AuditLogError):
    """An inclusion proof does not lead to the expected root."""


class ConsistencyError(AuditLogError):
    """A consistency proof does not show that one tree is a prefix of another."""


class CheckpointError(AuditLogError):
    """A signed checkpoint is malformed, unsigned by a trusted key, or stale."""


class ReportError(AuditLogError):
    """A compliance report is malformed, or what it states differs from what its cited, proven
    evidence shows (an edited status, a witness that did not cosign, an event that is not the
    one logged)."""


class RollbackError(AuditLogError):
    """Restoring a backup would take the audit log back behind a checkpoint already seen (by this
    broker's log, a witness or a given checkpoint): revocations and policy changes after it would
    silently come undone."""

    remedy = "restore a backup at least as new as the newest checkpoint; docs/operations.md (backups)"


class RequestError(WeightVaultError):
    """A service refused a request for a reason other than bad data or keys."""


class AuthenticationError(RequestError):
    """No credential, or an invalid or disabled one."""

    remedy = "pass a valid API token (WEIGHTVAULT_TOKEN or --token)"


class TokenExpiredError(AuthenticationError):
    """The right API token, past its expiry: only a rotation gives the principal a working one."""

    remedy = "ask an operator or your tenant admin for a new token (weightvault admin principal ID --rotate)"


class SessionEndedError(AuthenticationError):
    """A web console session that is unknown, expired or signed out (docs/console.md)."""

    remedy = "sign in to the console again with your API token"


class PermissionDeniedError(RequestError):
    """The credential is valid but may not perform this action (role or tenant)."""


class CSRFError(PermissionDeniedError):
    """A console change without the session's CSRF token, or from another site."""

    remedy = "reload the console page and try again"


class ContainedError(PermissionDeniedError):
    """A containment hold stops this principal, API key or device until an operator lifts it."""

    remedy = "an operator reviews the alert and lifts the hold: weightvault sentinel holds, then sentinel lift ID"


class NotFoundError(RequestError):
    """No such resource in the caller's tenant."""


class ConflictError(RequestError):
    """The request conflicts with the resource's state (an immutable policy, an existing name)."""


class ChallengeUsedError(ConflictError):
    """The challenge was already consumed; request a new one."""


class ChallengeExpiredError(RequestError):
    """The challenge expired; request a new one."""


class InvalidRequestError(RequestError):
    """The request is well-formed but its content is invalid."""


class RateLimitedError(RequestError):
    """Too many requests from one principal; retry later."""


class ApprovalError(RequestError):
    """A multi-party approval rule refused the operation."""


class ApprovalRequiredError(ApprovalError):
    """The operation needs approvals it does not have yet (the message says how to request them).

    ``request`` carries the approval request the broker opened, when the caller asked for one.
    """

    def __init__(self, message: str, request: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.request = request


class ApprovalInvalidError(ApprovalError):
    """An approval is forged, replayed, expired, by the requester, or by someone outside the group."""


class CustodyError(WeightVaultError):
    """A custody ceremony refused a share or a step."""


class ShareError(CustodyError):
    """A share is corrupted, belongs to another share set or ceremony, or its signature fails."""


class CeremonyError(CustodyError):
    """The ceremony is closed, expired or cancelled, or a custodian signature does not verify."""


class SealedError(CustodyError):
    """The broker is sealed: its root key is not available until custodians unseal it."""

    remedy = "an operator runs 'weightvault custody open unseal'; custodians run 'weightvault custody submit'"


class ServerError(RequestError):
    """The service failed (HTTP 500, an unknown 5xx): a bug or a misconfiguration that retrying will not fix."""

    remedy = "the service's operator has the details in its log"


class UnavailableError(WeightVaultError):
    """The service cannot serve now; the request may succeed later. The only retryable branch."""

    remedy = "retry later; if it persists, check that the service is running and healthy"


class TransportError(UnavailableError):
    """A remote service could not be reached or timed out."""

    remedy = "check that the service is running and reachable, then retry"


class ServiceUnavailableError(UnavailableError):
    """The service answered that it cannot serve now (HTTP 503)."""


class AuditUnavailableError(ServiceUnavailableError):
    """The broker's audit log could not record the action, so the broker did nothing (write-ahead rule)."""

    remedy = "retry later; the broker's operator sees the cause at GET /v1/health/ready"


class StorageUnavailableError(ServiceUnavailableError):
    """The broker's database could not be read or written (down, failing over, full or read-only);
    the transaction rolled back whole, so nothing was done."""

    remedy = "retry later; the broker's operator sees the cause at GET /v1/health/ready"


class ConfigError(WeightVaultError):
    """Local configuration, a key file or an option is unusable."""


class EgressPolicyError(ConfigError):
    """A sandbox egress rule is refused: a wildcard, a range, a name, or malformed."""

    remedy = "allow one IP address and one port per rule (IP:PORT); the broker needs no rule"


class RuleError(ConfigError):
    """A sentinel rule file or sentinel configuration does not parse or names something unknown."""

    remedy = "see docs/sentinel.md for the rule format; 'weightvault sentinel rules --check FILE' explains"


class IsolationError(WeightVaultError):
    """The sandbox cannot isolate the command here (privileges or tools are missing); it never runs unisolated
    unless told to with --unsafe-no-isolation."""

    remedy = (
        "run 'weightvault sandbox' as root on Linux with bubblewrap, nftables and iproute2 installed; "
        "--unsafe-no-isolation runs the command without any isolation"
    )
