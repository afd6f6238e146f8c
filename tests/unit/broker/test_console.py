"""The web console's sessions, CSRF defences, headers and scoping, through the real app in this process.

The browser flows (and the proof checked by the browser's own WebCrypto) are in
tests/e2e/test_console.py; here every refusal is pinned down with a fake clock.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tests.unit.broker.conftest import OPEN_POLICY, OPERATOR, Clock, InProcess, start_in_process
from tests.witnessed_log import LOG_KEY, witness
from weightvault.auditlog import AuditLog, InProcessWitness, WitnessPolicy
from weightvault.auditlog.checkpoint import Checkpoint
from weightvault.auditlog.log import LogConfig
from weightvault.auditlog.note import Note
from weightvault.broker.service import Principal, Role
from weightvault.errors import ContainedError, PermissionDeniedError, SessionEndedError, TransportError
from weightvault.server.console import CONTENT_SECURITY_POLICY

ORIGIN = "http://broker"


def _browser(env: InProcess) -> TestClient:
    return TestClient(env.app_client.app, base_url=ORIGIN, follow_redirects=False)


def _sign_in(env: InProcess, who: str) -> tuple[TestClient, str]:
    """A signed-in browser and the CSRF token its pages carry."""
    browser = _browser(env)
    answer = browser.post("/console/login", data={"token": env.tokens[who]}, headers={"origin": ORIGIN})
    assert 303 == answer.status_code, answer.text
    page = browser.get("/console/")
    assert 200 == page.status_code
    match = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text)
    assert match is not None
    return browser, match.group(1)


def test_sign_in_sets_a_strict_http_only_cookie_and_the_pages_carry_a_strict_csp(in_process: InProcess) -> None:
    browser = _browser(in_process)
    answer = browser.post("/console/login", data={"token": in_process.tokens["acme-admin"]}, headers={"origin": ORIGIN})
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/console" in cookie
    assert in_process.tokens["acme-admin"] not in cookie
    page = browser.get("/console/t/acme/models")
    assert 200 == page.status_code
    assert CONTENT_SECURITY_POLICY == page.headers["content-security-policy"]
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY
    assert "no-store" == page.headers["cache-control"]
    assert "DENY" == page.headers["x-frame-options"]
    assert "<script>" not in page.text  # the only script is /console/static/console.js
    assert 'src="/console/static/console.js"' in page.text
    static = browser.get("/console/static/console.js")
    assert 200 == static.status_code
    assert CONTENT_SECURITY_POLICY == static.headers["content-security-policy"]


def test_sign_in_is_audited_and_a_bad_token_is_refused_and_audited(in_process: InProcess) -> None:
    start = in_process.audit.size
    _sign_in(in_process, "acme-auditor")
    signin = in_process.last(start, "console.signin")
    assert ("acme-auditor", "acme") == (signin.actor, signin.tenant)
    answer = _browser(in_process).post(
        "/console/login", data={"token": in_process.tokens["acme-auditor"] + "x"}, headers={"origin": ORIGIN}
    )
    assert 401 == answer.status_code
    assert "not accepted" in answer.text
    assert "set-cookie" not in answer.headers
    failed = in_process.last(start, "auth.fail")
    assert ("acme-auditor", "/console/login") == (failed.actor, failed.resource)


def test_machines_have_no_console(in_process: InProcess) -> None:
    answer = _browser(in_process).post(
        "/console/login", data={"token": in_process.tokens["acme-workload"]}, headers={"origin": ORIGIN}
    )
    assert 403 == answer.status_code
    assert "set-cookie" not in answer.headers


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "http://evil.example"},
        {"sec-fetch-site": "cross-site"},
        {"origin": "null", "sec-fetch-site": "cross-site"},
    ],
)
def test_a_sign_in_from_another_site_is_refused(in_process: InProcess, headers: dict[str, str]) -> None:
    answer = _browser(in_process).post(
        "/console/login", data={"token": in_process.tokens["acme-admin"]}, headers=headers
    )
    assert 403 == answer.status_code
    assert "csrf_failed" in answer.text
    assert "set-cookie" not in answer.headers


def test_no_session_gives_a_clear_page_or_problem_never_a_trace(in_process: InProcess) -> None:
    browser = _browser(in_process)
    assert "/console/login" == browser.get("/console/").headers["location"]
    page = browser.get("/console/t/acme/releases")
    assert 401 == page.status_code
    assert "text/html" in page.headers["content-type"]
    assert "not signed in" in page.text
    assert "Traceback" not in page.text
    api = browser.get("/console/api/t/acme/proof/0")
    assert 401 == api.status_code
    assert "application/problem+json" == api.headers["content-type"]
    assert "session_ended" == api.json()["code"]
    browser.cookies.set("wv_console", "forged", path="/console")
    assert 401 == browser.get("/console/t/acme/models").status_code


def test_an_expired_session_ends(in_process: InProcess) -> None:
    browser, _ = _sign_in(in_process, "acme-admin")
    in_process.clock.now += in_process.broker.config.console_session_seconds
    page = browser.get("/console/t/acme/models")
    assert 401 == page.status_code
    assert "expired" in page.text


def test_sign_out_needs_the_csrf_token_and_a_replayed_cookie_is_refused(in_process: InProcess) -> None:
    browser, csrf = _sign_in(in_process, "acme-admin")
    cookie = browser.cookies.get("wv_console")
    assert cookie
    missing = browser.post("/console/logout", data={}, headers={"origin": ORIGIN})
    assert 403 == missing.status_code
    assert "csrf_failed" in missing.text
    wrong = browser.post("/console/logout", data={"csrf": "0" * 64}, headers={"origin": ORIGIN})
    assert 403 == wrong.status_code
    other_site = browser.post("/console/logout", data={"csrf": csrf}, headers={"origin": "http://evil.example"})
    assert 403 == other_site.status_code
    assert 200 == browser.get("/console/t/acme/models").status_code  # none of those signed out
    start = in_process.audit.size
    out = browser.post("/console/logout", data={"csrf": csrf}, headers={"origin": ORIGIN})
    assert 303 == out.status_code
    assert "/console/login?m=signed-out" == out.headers["location"]
    assert "console.signout" == in_process.last(start, "console.signout").type
    replay = _browser(in_process)
    replay.cookies.set("wv_console", cookie, path="/console")
    page = replay.get("/console/t/acme/models")
    assert 401 == page.status_code
    assert "signed out" in page.text


def test_rotating_or_disabling_the_token_ends_its_sessions(in_process: InProcess) -> None:
    browser, _ = _sign_in(in_process, "acme-auditor")
    in_process.broker.disable_principal(OPERATOR, "acme-auditor")
    assert 401 == browser.get("/console/t/acme/devices").status_code


def test_each_tenant_page_applies_the_api_scoping(in_process: InProcess) -> None:
    browser, _ = _sign_in(in_process, "acme-auditor")
    for view in ("models", "devices", "policies", "releases", "approvals", "alerts", "audit"):
        assert 200 == browser.get(f"/console/t/acme/{view}").status_code, view
        page = browser.get(f"/console/t/globex/{view}")
        assert 403 == page.status_code, view
        assert "Not allowed" in page.text
    assert 403 == browser.get("/console/t/acme/principals").status_code  # auditors do not list principals
    assert 403 == browser.get("/console/api/t/globex/proof/0").status_code
    operator, _ = _sign_in(in_process, "operator")
    assert 200 == operator.get("/console/t/globex/principals").status_code
    assert 404 == operator.get("/console/t/nowhere/models").status_code


def test_the_proof_endpoint_serves_only_the_tenants_entries(in_process: InProcess) -> None:
    browser, _ = _sign_in(in_process, "acme-auditor")
    acme = [i for i, e in in_process.audit.events(tenant="acme")]
    globex = [i for i, e in in_process.audit.events(tenant="globex")]
    assert acme
    assert globex
    own = browser.get(f"/console/api/t/acme/proof/{acme[-1]}")
    assert 200 == own.status_code
    assert {"index", "entry", "proof", "checkpoint", "log_vkey"} == set(own.json())
    # Another tenant's entry under this tenant's URL: not found, not shown.
    assert 404 == browser.get(f"/console/api/t/acme/proof/{globex[-1]}").status_code
    assert 404 == browser.get("/console/api/t/acme/proof/99999999").status_code


def test_sessions_unit(in_process: InProcess) -> None:
    console = in_process.broker.console
    session = console.sign_in(in_process.tokens["acme-admin"])
    assert session.secret not in repr(session)
    assert Principal("acme-admin", "acme", Role.TENANT_ADMIN) == console.principal(session.secret)
    with pytest.raises(PermissionDeniedError):
        console.sign_in(in_process.tokens["acme-publisher"])
    in_process.broker.hold(OPERATOR, "principal", "acme-admin", alert_index=None, rule="manual")
    with pytest.raises(ContainedError):
        console.principal(session.secret)
    with pytest.raises(SessionEndedError):
        console.principal("x" * 65)


def test_pending_approvals_show_the_command_that_signs_them(in_process: InProcess) -> None:
    from weightvault.custody.person import PersonKey
    from weightvault.errors import ApprovalRequiredError

    people = {name: PersonKey.generate(name) for name in ("alice", "bob")}
    approvers = {
        n: {k: v for k, v in k_.public.to_json().items() if k in ("signing", "hpke")} for n, k_ in people.items()
    }
    in_process.broker.put_approval_policy(
        OPERATOR,
        {
            "approvers": approvers,
            "groups": {"security": ["alice", "bob"]},
            "rules": [
                {"op": "policy.change", "tenants": ["acme"], "require": [{"group": "security", "count": 1}]},
                {"op": "approval.policy.change", "require": [{"group": "security", "count": 2}]},
            ],
        },
    )
    admin = Principal("acme-admin", "acme", Role.TENANT_ADMIN)
    with pytest.raises(ApprovalRequiredError) as info:
        in_process.broker.put_policy(
            admin, "acme", "open", {**OPEN_POLICY, "resources": ["acme/models/small*"]}, approval="new"
        )
    request_id = str(dict(info.value.request or {})["id"])
    browser, _ = _sign_in(in_process, "acme-admin")
    page = browser.get("/console/t/acme/approvals")
    assert 200 == page.status_code
    assert f"weightvault approval sign {request_id} --key YOUR-KEY.json" in page.text
    assert "policy.change" in page.text
    other, _ = _sign_in(in_process, "globex-admin")
    assert request_id not in other.get("/console/t/globex/approvals").text


def test_operators_see_the_broker_wide_events(in_process: InProcess) -> None:
    operator, _ = _sign_in(in_process, "operator")
    page = operator.get("/console/t/-/audit")
    assert 200 == page.status_code
    assert "principal:operator" in page.text  # the bootstrap operator's creation, a broker-wide event
    auditor, _ = _sign_in(in_process, "acme-auditor")
    assert 403 == auditor.get("/console/t/-/audit").status_code


def test_an_oversized_or_malformed_sign_in_is_refused_without_a_cookie(in_process: InProcess) -> None:
    browser = _browser(in_process)
    big = browser.post("/console/login", data={"token": "x" * 20_000}, headers={"origin": ORIGIN})
    assert 400 == big.status_code
    assert "set-cookie" not in big.headers
    many = browser.post(
        "/console/login",
        content="&".join(f"f{i}=1" for i in range(50)).encode(),
        headers={"origin": ORIGIN, "content-type": "application/x-www-form-urlencoded"},
    )
    assert 401 == many.status_code
    assert "set-cookie" not in many.headers
    json_body = browser.post(
        "/console/login", json={"token": in_process.tokens["acme-admin"]}, headers={"origin": ORIGIN}
    )
    assert 400 == json_body.status_code


def test_views_never_carry_key_material() -> None:
    from weightvault.broker.service import ModelRow, PrincipalRow
    from weightvault.server.console import views

    wrapped = bytes(range(48))
    row = ModelRow("acme", "m", "1", "open", 3, wrapped, [{"path": "a.wvlt"}], {"tier": "gold"})
    shown = views.model_view(row)
    text = repr(shown)
    assert wrapped.hex() not in text
    assert "wrapped" not in text
    principal = views.principal_view(PrincipalRow("p", "acme", "auditor", b"\x01" * 32, False, 1_800_000_000))
    assert "token" not in repr(principal)
    assert (b"\x01" * 32).hex() not in repr(principal)
    assert principal["expires"] == "2027-01-15 08:00:00"
    assert views.principal_view(PrincipalRow("q", None, "operator", b"\x02" * 32, False))["expires"] == "never"


def test_guessing_tokens_at_the_sign_in_is_slowed_with_a_clear_page(in_process: InProcess) -> None:
    browser = _browser(in_process)
    answers = [
        browser.post("/console/login", data={"token": f"wv1_acme-admin.guess{i}"}, headers={"origin": ORIGIN})
        for i in range(25)
    ]
    assert {401} == {a.status_code for a in answers[:20]}  # the burst of 20 failures per address
    assert 429 == answers[-1].status_code
    assert "Too many requests" in answers[-1].text
    assert "Traceback" not in answers[-1].text


class _Unpluggable(InProcessWitness):
    """A witness in this process that can be cut off, as a network partition would."""

    down = False

    def add_checkpoint(self, old_size: int, proof: Sequence[bytes], note: Note) -> list[str]:
        if self.down:
            raise TransportError(f"witness {self.name} unreachable")
        return super().add_checkpoint(old_size, proof, note)


def test_an_entry_newer_than_the_published_checkpoint_is_not_yet_provable(tmp_path: Path, clock: Clock) -> None:
    """With witnesses, proofs are against the last cosigned checkpoint; while the witnesses are
    away, the newest entries get a clear 409 (shown by the console as pending), not a 503."""
    cosigner = _Unpluggable(witness(tmp_path, 1))
    audit = AuditLog(
        tmp_path / "audit.db",
        LOG_KEY,
        witnesses=[cosigner],
        policy=WitnessPolicy.threshold([cosigner.witness.signer.verifier], 1),
        clock=clock,
        config=LogConfig(batch_delay_s=0),
    )
    with start_in_process(tmp_path, clock, audit) as env:
        browser, _ = _sign_in(env, "acme-auditor")
        published = audit.publish_now()
        covered = Checkpoint.from_text(published.text).size
        cosigner.down = True
        env.broker.create_principal(OPERATOR, "acme-late", "acme", "auditor")
        env.last(covered, "principal.change.intent")
        newest = max(i for i, e in audit.events(tenant="acme"))
        assert newest >= covered
        pending = browser.get(f"/console/api/t/acme/proof/{newest}")
        assert 409 == pending.status_code
        detail = pending.json()["detail"]
        assert f"entry {newest} is not yet in a published checkpoint (it covers {covered} entries)" in detail
        older = max(i for i, e in audit.events(tenant="acme") if i < covered)
        proven = browser.get(f"/console/api/t/acme/proof/{older}")
        assert 200 == proven.status_code
        assert proven.json()["checkpoint"] == published.to_text()  # the cosigned checkpoint, not the head's
