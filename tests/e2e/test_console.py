"""The web console in a real browser: Debian's headless Chromium, driven by Playwright, against a broker process.

Flows of the issue: sign in, browse every view, check an event's proof in the browser,
follow a release from its decision to the events that refer to it, sign out; an auditor
of one tenant cannot reach another's pages, even by URL; a tampered proof answer is shown
as failed; markup planted in an event field is shown as text and never runs.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.broker_fixture import Broker, _policy, running_broker
from tests.e2e.browser import chromium
from weightvault.client.broker import SampleAttester
from weightvault.errors import NotFoundError, ReleaseDeniedError

pytestmark = pytest.mark.e2e

#: Planted in the resource of a (refused) release: an attribute and a tag that would run if unescaped.
PLANTED = 'acme/models/<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>@1'
VIEWS = {
    "models": "Models",
    "devices": "Devices",
    "policies": "Release policies",
    "principals": "Principals",
    "releases": "Releases",
    "approvals": "Approval requests",
    "alerts": "Sentinel alerts",
    "audit": "Audit log",
}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    import numpy as np
    from safetensors.numpy import save_file

    tmp = tmp_path_factory.mktemp("console")
    plain = tmp / "small.safetensors"
    save_file({"w": np.arange(64, dtype=np.float32)}, str(plain))
    with running_broker(tmp, plain) as running:
        op = running.client("operator")
        op.add_device("gpu-box-1", "insecure-sample", ["acme"])
        wl = running.client("acme-wl")
        session, _ = wl.attest(SampleAttester(device_id="gpu-box-1"))
        wl.release(session, "acme/models/small@1")
        with pytest.raises((ReleaseDeniedError, NotFoundError)):
            wl.release(session, PLANTED)
        # A second version of the policy: the policies view shows the history and the diff.
        running.client("acme-admin").put_policy("acme", "open", _policy("acme", verifiers=["insecure-sample"]))
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on(
        "console",
        lambda m: errors.append(m.text) if m.type == "error" and "401" not in m.text and "403" not in m.text else None,
    )
    pg.errors = errors
    yield pg
    context.close()


def _sign_in(page: Any, broker: Broker, who: str) -> None:
    page.goto(f"{broker.url}/console/")
    assert page.url.endswith("/console/login")
    page.fill("#token", broker.tokens[who])
    page.click("#signin")
    page.wait_for_url(f"{broker.url}/console/")


def _verified(page: Any) -> str:
    # A selector, not a JavaScript predicate: the console's CSP forbids eval, Playwright's too.
    page.wait_for_selector("#proof[data-result]")
    return str(page.inner_text("#proof-status"))


def test_sign_in_browse_every_view_verify_a_proof_follow_a_release_and_sign_out(page: Any, broker: Broker) -> None:
    _sign_in(page, broker, "acme-admin")
    assert "acme-admin" in page.inner_text("#who")
    page.click("text=acme")
    for view, heading in VIEWS.items():
        page.goto(f"{broker.url}/console/t/acme/{view}")
        assert heading in page.inner_text("h1"), view
        assert "Traceback" not in page.content()
    page.goto(f"{broker.url}/console/t/acme/models")
    assert "small" in page.inner_text("#models")
    page.goto(f"{broker.url}/console/t/acme/devices")
    assert "gpu-box-1" in page.inner_text("#devices")
    assert "attest.pass" in page.inner_text("#devices")  # its last attestation, linked to the event
    page.goto(f"{broker.url}/console/t/acme/policies")
    assert "version 2 (in force)" in page.inner_text("main")
    assert "Changes from version 1" in page.inner_text("main")
    assert '-    "attestation-token"' in page.inner_text("pre.diff")
    # The release: from the timeline to its decision, verified in the browser, to its key.release events.
    page.goto(f"{broker.url}/console/t/acme/releases?decision=allow&resource=small")
    page.click("#releases a >> nth=0")
    assert "policy.decision" == page.inner_text("#event-type")
    status = _verified(page)
    assert status.startswith("Verified"), status
    assert "pinned in this browser now" in page.inner_text("#proof-facts")
    assert '"decision": "allow"' in page.inner_text("#proof-entry")
    referring = page.inner_text("#referring")
    assert "key.release.intent" in referring
    page.click("#referring a >> text=key.release.intent")
    assert "key.release.intent" == page.inner_text("#event-type")
    assert _verified(page).startswith("Verified")
    assert "(pinned)" in page.inner_text("#proof-facts")  # the key pinned on the first check
    # Audit search by type, actor and resource.
    page.goto(f"{broker.url}/console/t/acme/audit?type=attest.&actor=acme-wl&resource=")
    rows = page.inner_text("#events")
    assert "attest.pass" in rows
    assert "policy.decision" not in rows
    assert [] == page.errors
    # Sign out; the same browser is then signed out everywhere.
    page.goto(f"{broker.url}/console/")
    page.click("#signout")
    page.wait_for_url(f"{broker.url}/console/login?m=signed-out")
    assert "signed out" in page.inner_text("#message")
    answer = page.goto(f"{broker.url}/console/t/acme/models")
    assert 401 == answer.status
    assert "sign in" in page.inner_text("main").lower()


def test_an_auditor_of_one_tenant_cannot_reach_anothers_pages(page: Any, broker: Broker) -> None:
    _sign_in(page, broker, "acme-aud")
    assert ["acme"] == page.locator("#tenants a").all_inner_texts()
    for view in VIEWS:
        answer = page.goto(f"{broker.url}/console/t/globex/{view}")
        assert 403 == answer.status, view
        assert "Not allowed" in page.inner_text("#error-title")
    answer = page.goto(f"{broker.url}/console/api/t/globex/proof/1")
    assert 403 == answer.status
    assert "forbidden" == json.loads(page.inner_text("body"))["code"]
    globex = [i for i, e in broker.events() if e.tenant == "globex"]
    answer = page.goto(f"{broker.url}/console/t/acme/audit/{globex[-1]}")
    assert 404 == answer.status  # another tenant's entry under this tenant's URL
    assert "globex" not in page.inner_text("main")


def _tamper(page: Any, change: Any) -> None:
    def handle(route: Any) -> None:
        response = route.fetch()
        doc = response.json()
        change(doc)
        route.fulfill(response=response, body=json.dumps(doc), content_type="application/json")

    page.route("**/console/api/t/acme/proof/*", handle)


def _flip_entry(doc: dict[str, Any]) -> None:
    entry = base64.b64decode(doc["entry"]).replace(b'"allow"', b'"deny"')
    doc["entry"] = base64.b64encode(entry).decode()


def _flip_proof(doc: dict[str, Any]) -> None:
    first = bytearray(base64.b64decode(doc["proof"][0]))
    first[0] ^= 1
    doc["proof"][0] = base64.b64encode(bytes(first)).decode()


def _flip_root(doc: dict[str, Any]) -> None:
    lines = doc["checkpoint"].split("\n")
    root = bytearray(base64.b64decode(lines[2]))
    root[0] ^= 1
    lines[2] = base64.b64encode(bytes(root)).decode()
    doc["checkpoint"] = "\n".join(lines)


def _other_key(doc: dict[str, Any]) -> None:
    name, kid, blob = doc["log_vkey"].split("+", 2)
    raw = bytearray(base64.b64decode(blob))
    raw[-1] ^= 1
    doc["log_vkey"] = f"{name}+{kid}+{base64.b64encode(bytes(raw)).decode()}"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (_flip_entry, "does not lead to the checkpoint's root"),
        (_flip_proof, "does not lead to the checkpoint's root"),
        (_flip_root, "signature does not verify"),
        (_other_key, "differs from the one pinned"),
    ],
)
def test_a_tampered_proof_answer_is_shown_as_failed(page: Any, broker: Broker, change: Any, reason: str) -> None:
    _sign_in(page, broker, "acme-aud")
    decision = max(
        i for i, e in broker.events() if e.tenant == "acme" and e.type == "policy.decision" and e.decision == "allow"
    )
    page.goto(f"{broker.url}/console/t/acme/audit/{decision}")
    assert _verified(page).startswith("Verified")  # pins the real key
    _tamper(page, change)
    page.click("#verify")
    page.wait_for_selector("#proof[data-result]")
    assert reason in page.inner_text("#proof-status")
    assert "failed" == page.get_attribute("#proof", "data-result")


def test_planted_markup_is_shown_as_text_and_never_runs(page: Any, broker: Broker) -> None:
    _sign_in(page, broker, "acme-admin")
    page.goto(f"{broker.url}/console/t/acme/releases?decision=deny")
    assert PLANTED in page.inner_text("#releases")
    assert page.evaluate("window.__pwned") is None
    assert 0 == page.locator("#releases img").count()
    page.click("#releases a >> nth=0")
    assert PLANTED == page.inner_text("#event-resource")
    assert _verified(page).startswith("Verified")  # the proven entry and the page agree
    assert json.dumps(PLANTED) in page.inner_text("#proof-entry")
    assert page.evaluate("window.__pwned") is None


def test_an_entry_not_yet_cosigned_is_shown_as_pending_never_as_verified(page: Any, broker: Broker) -> None:
    """The broker's 409 for an entry newer than the published checkpoint (the answer of
    tests/unit/broker/test_console.py) is shown as pending; whoever sends it proves nothing."""
    _sign_in(page, broker, "acme-aud")
    newest = max(i for i, e in broker.events() if e.tenant == "acme")
    detail = f"entry {newest} is not yet in a published checkpoint (it covers {newest} entries); retry later"
    problem = {"type": "x", "title": "conflict", "status": 409, "code": "conflict", "detail": detail}
    page.route(
        "**/console/api/t/acme/proof/*",
        lambda route: route.fulfill(status=409, body=json.dumps(problem), content_type="application/problem+json"),
    )
    page.goto(f"{broker.url}/console/t/acme/audit/{newest}")
    page.wait_for_selector("#proof[data-result]")
    assert "pending" == page.get_attribute("#proof", "data-result")
    assert f"Not yet provable: {detail}" == page.inner_text("#proof-status")
