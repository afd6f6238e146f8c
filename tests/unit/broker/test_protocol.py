"""The protocol module: one release payload codec for both sides, and one error table."""

from __future__ import annotations

from typing import cast

import pytest

from weightvault import errors as e
from weightvault.broker.protocol import CLIENT_ERRORS, SERVER_ERRORS, ErrorCode, ReleasePayload, error_for, problem_of
from weightvault.format.keys import FileKey


def test_the_payload_round_trips_whole_and_partial() -> None:
    """What the broker builds, the client parses to the same keys."""
    fk = FileKey.generate()
    whole = ReleasePayload("acme", "acme/models/m@1", "j", file_key=fk)
    parsed = ReleasePayload.from_bytes(whole.to_bytes(), tenant="acme", resource="acme/models/m@1", jti="j")
    assert fk == parsed.file_key
    file_id = bytes(range(32))
    partial = ReleasePayload("acme", "acme/models/m@1", "j", grants={file_id.hex(): fk.tensor_keys(file_id, [0, 3])})
    opened = ReleasePayload.from_bytes(partial.to_bytes(), tenant="acme", resource="acme/models/m@1", jti="j")
    grant = opened.grants[file_id.hex()]
    assert (0, 3) == tuple(sorted(grant.indices))
    assert fk.tensor_keys(file_id, [3]).tensor_secret(3) == grant.tensor_secret(3)


@pytest.mark.parametrize(
    "ask",
    [
        {"tenant": "globex", "resource": "acme/models/m@1", "jti": "j"},
        {"tenant": "acme", "resource": "acme/models/other@1", "jti": "j"},
        {"tenant": "acme", "resource": "acme/models/m@1", "jti": "another-session"},
    ],
)
def test_a_payload_for_another_context_is_refused(ask: dict[str, str]) -> None:
    payload = ReleasePayload("acme", "acme/models/m@1", "j", file_key=FileKey.generate()).to_bytes()
    with pytest.raises(e.KeyAccessError, match="another"):
        ReleasePayload.from_bytes(payload, **ask)


@pytest.mark.parametrize(
    "junk", [b"", b"[]", b'{"v": 2}', b'{"v": 1, "tenant": "acme"}', b"\xff", b"[" * 5000, b'{"v": 1, "v": 1}']
)
def test_malformed_payloads_are_key_access_errors(junk: bytes) -> None:
    with pytest.raises(e.KeyAccessError):
        ReleasePayload.from_bytes(junk, tenant="acme", resource="acme/models/m@1", jti="j")


def test_every_code_maps_both_ways() -> None:
    """Each code the server can send is known to the client; the server's table uses only known codes."""
    assert set(ErrorCode) == set(CLIENT_ERRORS)
    assert {code for code, _, _ in SERVER_ERRORS.values()} <= set(ErrorCode)


def test_outages_are_retryable_and_nothing_else_is() -> None:
    """audit_unavailable and unknown 502/503/504 are UnavailableError; an unknown 500 is a ServerError."""
    assert isinstance(error_for(503, "audit_unavailable", "x", {}), e.AuditUnavailableError)
    assert isinstance(error_for(503, "something_new", "x", {}), e.ServiceUnavailableError)
    assert isinstance(error_for(504, "", "x", {}), e.UnavailableError)
    server = error_for(500, "", "x", {})
    assert isinstance(server, e.ServerError)
    assert not isinstance(server, e.UnavailableError)
    assert not isinstance(error_for(503, "audit_unavailable", "x", {}), e.AuditLogError)  # an outage is not tampering
    assert isinstance(error_for(418, "teapot", "x", {}), e.RequestError)


def test_release_denials_carry_their_codes_and_details_stay_coarse() -> None:
    """The client shows the reason codes; the server shows a detail only for the caller's own request."""
    denied = error_for(
        403, "release_denied", "Key release denied", {"reasons": ["policy"], "codes": ["conditions_not_met"]}
    )
    assert isinstance(denied, e.ReleaseDeniedError)
    assert (("policy",), ("conditions_not_met",)) == (denied.reasons, denied.codes)
    assert "conditions_not_met" in str(denied)
    assert problem_of(e.EvidenceError("report data mismatch"))[3] is None
    assert problem_of(e.InvalidRequestError("bad name"))[3] == "bad name"
    assert (ErrorCode.AUDIT_UNAVAILABLE, 503) == problem_of(e.AuditLogError("disk full"))[:2]


@pytest.mark.parametrize(
    ("status", "body"),
    [(200, b"[" * 5000), (200, b"<html>not json</html>"), (200, b'{"a": 1, "a": 2}'), (500, b"[" * 5000)],
)
def test_a_broker_answering_garbage_is_a_clear_error(status: int, body: bytes) -> None:
    """Whatever answers in the broker's place is not trusted to send JSON, let alone shallow JSON:
    the client raises one of its errors, never a RecursionError or a JSON decoder's."""
    import httpx
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from weightvault.client.broker import BrokerClient

    async def lie(request: object) -> Response:
        return Response(body, status_code=status, media_type="application/json")

    app = Starlette(routes=[Route("/v1/challenges", lie, methods=["POST"])])
    with TestClient(app, base_url="http://broker") as http:
        client = BrokerClient("http://broker", "wv1_x.y", http=cast(httpx.Client, http))
        with pytest.raises(e.ServerError if status == 200 else e.WeightVaultError):
            client.challenge()
