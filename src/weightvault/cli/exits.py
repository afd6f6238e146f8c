"""Exit codes and one-line messages for every error class.

The most specific class in an error's MRO decides. Codes are stable: scripts
may rely on them, and ``tests/unit/cli`` checks the table.
"""

from __future__ import annotations

from typing import Final

from weightvault import errors as e

__all__ = ["EXIT_CODES", "EXIT_INTERNAL", "EXIT_OK", "EXIT_USAGE", "exit_code_for"]

EXIT_OK: Final = 0
EXIT_INTERNAL: Final = 1
EXIT_USAGE: Final = 2

#: error class -> (exit code, short label)
EXIT_CODES: Final[dict[type[e.WeightVaultError], tuple[int, str]]] = {
    e.WeightVaultError: (3, "error"),
    e.FormatError: (10, "invalid file"),
    e.HeaderError: (11, "malformed header"),
    e.UnsupportedError: (12, "unsupported"),
    e.HeaderAuthError: (13, "header authentication failed"),
    e.PayloadError: (14, "data authentication failed"),
    e.ManifestError: (15, "model manifest invalid"),
    e.BackupError: (16, "backup invalid"),
    e.ModelSignatureError: (17, "model signature invalid"),
    e.KeyAccessError: (20, "key unavailable"),
    e.NoMatchingRecipientError: (21, "no matching recipient"),
    e.KeyMismatchError: (22, "wrong key"),
    e.ReleaseDeniedError: (23, "key release denied"),
    e.AttestationError: (30, "attestation failed"),
    e.EvidenceError: (31, "evidence rejected"),
    e.QuoteError: (32, "TPM quote rejected"),
    e.PolicyViolationError: (33, "policy violation"),
    e.EnrolmentError: (34, "enrolment refused"),
    e.AuditLogError: (40, "audit log verification failed"),
    e.InclusionProofError: (41, "inclusion proof invalid"),
    e.ConsistencyError: (42, "consistency proof invalid"),
    e.CheckpointError: (43, "checkpoint invalid"),
    e.RollbackError: (44, "restore would roll back the log"),
    e.ReportError: (45, "compliance report invalid"),
    e.RequestError: (70, "request refused"),
    e.AuthenticationError: (71, "authentication failed"),
    e.PermissionDeniedError: (72, "permission denied"),
    e.ContainedError: (83, "contained"),
    e.SessionEndedError: (84, "console session ended"),
    e.TokenExpiredError: (91, "API token expired"),
    e.CSRFError: (89, "CSRF check failed"),
    e.NotFoundError: (73, "not found"),
    e.ConflictError: (74, "conflict"),
    e.ChallengeUsedError: (75, "challenge already used"),
    e.ChallengeExpiredError: (76, "challenge expired"),
    e.InvalidRequestError: (77, "invalid request"),
    e.RateLimitedError: (78, "rate limited"),
    e.ApprovalError: (80, "approval refused"),
    e.ApprovalRequiredError: (81, "approval required"),
    e.ApprovalInvalidError: (82, "approval invalid"),
    e.CustodyError: (85, "custody refused"),
    e.ShareError: (86, "share rejected"),
    e.CeremonyError: (87, "ceremony refused"),
    e.SealedError: (88, "broker sealed"),
    e.TransportError: (50, "service unreachable"),
    e.UnavailableError: (51, "unavailable"),
    e.ServiceUnavailableError: (52, "service unavailable"),
    e.AuditUnavailableError: (53, "audit log unavailable"),
    e.StorageUnavailableError: (54, "broker database unavailable"),
    e.ServerError: (79, "server error"),
    e.ConfigError: (60, "configuration error"),
    e.EgressPolicyError: (61, "egress rule refused"),
    e.RuleError: (62, "sentinel rules invalid"),
    e.IsolationError: (90, "isolation unavailable"),
}


def exit_code_for(error: e.WeightVaultError) -> tuple[int, str]:
    """The exit code and label of the most specific known class of ``error``."""
    for cls in type(error).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return EXIT_CODES[e.WeightVaultError]
