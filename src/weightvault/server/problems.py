"""RFC 7807 problem details: the protocol's error table (weightvault.broker.protocol) as HTTP answers.

Callers see a coarse title and code; the audit log holds the full reasons.
"""

from __future__ import annotations

from typing import Final

from starlette.responses import JSONResponse

from weightvault import errors as e
from weightvault.broker.protocol import ErrorCode, problem_of

__all__ = ["PROBLEM_BASE", "openai_problem", "problem", "problem_for"]

PROBLEM_BASE: Final = "https://weightvault.dev/problems/"


def problem(status: int, code: ErrorCode, title: str, detail: str | None = None, **extra: object) -> JSONResponse:
    body: dict[str, object] = {"type": PROBLEM_BASE + code.value, "title": title, "status": status, "code": code.value}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


def problem_for(error: e.WeightVaultError) -> JSONResponse:
    """The problem answer of an error; details only where they describe the caller's own request."""
    code, status, title, detail = problem_of(error)
    extra: dict[str, object] = {}
    if isinstance(error, e.ReleaseDeniedError):
        extra["reasons"] = list(error.reasons)
        extra["codes"] = list(error.codes)
    if isinstance(error, e.ApprovalRequiredError) and error.request is not None:
        extra["approval_request"] = error.request
    return problem(status, code, title, detail, **extra)


class OpenAIRefusalError(Exception):
    """A refusal of the OpenAI-compatible servers, answered by :func:`openai_problem`."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers or {}


def openai_problem(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error of the OpenAI-compatible servers (``serve``, ``gateway``): RFC 7807 fields plus OpenAI's
    ``{"error": {message, type, code}}``, so that OpenAI's clients raise their usual exceptions."""
    kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}.get(
        status, "server_error" if status >= 500 else "invalid_request_error"
    )
    body = {
        "type": PROBLEM_BASE + code,
        "title": code.replace("_", " "),
        "status": status,
        "detail": detail,
        "code": code,
        "error": {"message": detail, "type": kind, "code": code},
    }
    return JSONResponse(body, status_code=status, media_type="application/problem+json", headers=headers)
