"""The key broker client: challenge, attest, release, and the admin API.

Keys received from the broker exist only in memory: the release payload is
HPKE-sealed to an ephemeral key generated for one session and dropped with it.
:class:`BrokerIdentity` plugs the broker into the sealed format as an
:class:`~weightvault.format.recipients.Identity`, so every loader can open a
published model with ``keys=BrokerIdentity(client, attester)``.
"""

from __future__ import annotations

import base64
import hmac
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import httpx

from weightvault import errors as e
from weightvault.attestation.interfaces import report_data
from weightvault.attestation.unsafe import sample_evidence
from weightvault.broker.protocol import ReleasePayload, error_for, export_info, registration_info, release_info
from weightvault.crypto.keywrap import HPKEKem, InvalidTag, hpke_generate, hpke_open, hpke_seal
from weightvault.custody.approvals import ApprovalRequest, approval_message
from weightvault.custody.ceremony import CeremonyTerms, cancel_message, prepare_submission
from weightvault.custody.person import PersonKey
from weightvault.encoding import parse_json
from weightvault.format.keys import FileKey, TensorKeys
from weightvault.format.manifest import ModelManifest
from weightvault.format.recipients import HPKEIdentity, Stanza

__all__ = [
    "BROKER_STANZA",
    "Attester",
    "BrokerClient",
    "BrokerIdentity",
    "BrokerRecipient",
    "ReleasedKeys",
    "SampleAttester",
    "Session",
    "TokenAttester",
    "registration_files",
]

BROKER_STANZA: Final = "broker"


class Attester(Protocol):
    """Produces evidence that commits to ``report_data``."""

    def evidence(self, report_data: bytes, challenge: Mapping[str, Any]) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class SampleAttester:
    """insecure-sample evidence: for tests and demos, accepted only by brokers that enable it."""

    device_id: str | None = None
    claims: Mapping[str, str | int | bool] = field(default_factory=dict)

    def evidence(self, report_data: bytes, challenge: Mapping[str, Any]) -> dict[str, Any]:
        return sample_evidence(report_data, self.claims, self.device_id)


@dataclass(frozen=True, slots=True)
class TokenAttester:
    """An attestation-token ("passport") obtained from an external verifier for the report data."""

    fetch: Callable[[bytes], str]

    def evidence(self, report_data: bytes, challenge: Mapping[str, Any]) -> dict[str, Any]:
        return {"type": "attestation-token", "token": self.fetch(report_data)}


@dataclass
class Session:
    """One attested session: the result token and the ephemeral key released keys are sealed to."""

    token: str
    jti: str
    expires_at: int
    kem: HPKEKem
    _private: bytearray = field(repr=False)
    device_id: str | None = None

    def open(self, sealed: bytes, info: bytes) -> bytes:
        try:
            return hpke_open(self.kem, bytes(self._private), sealed, info)
        except InvalidTag as exc:
            raise e.KeyAccessError("the release payload does not open with this session's key") from exc

    def close(self) -> None:
        for i in range(len(self._private)):
            self._private[i] = 0


@dataclass
class ReleasedKeys:
    """Keys the broker released: the model's file key, or partial grants per file."""

    resource: str
    jti: str
    file_key: FileKey | None = None
    grants: dict[str, TensorKeys] = field(default_factory=dict)

    def wipe(self) -> None:
        if self.file_key is not None:
            self.file_key.wipe()
        for grant in self.grants.values():
            grant.wipe()


class BrokerClient:
    """HTTP client of the key broker.

    ``transport`` replaces httpx's network transport; ``http`` replaces the whole
    httpx client (tests pass Starlette's in-process TestClient, with the token header set).
    """

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        verify: bool | str = True,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        if http is not None:
            self._http = http
            return
        if isinstance(verify, str):
            import ssl

            verify = ssl.create_default_context(cafile=verify)  # type: ignore[assignment]
        self._http = httpx.Client(
            base_url=self.url,
            # No token: custodians reach the custody endpoints with their signatures alone.
            headers={"authorization": f"Bearer {token}"} if token else {},
            verify=verify,
            timeout=timeout_s,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> BrokerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, params: Mapping[str, str] | None = None
    ) -> Any:
        """Send a request; map problem+json answers to weightvault errors."""
        try:
            reply = self._http.request(method, path, json=body, params=params)
        except httpx.HTTPError as exc:
            raise e.TransportError(f"broker {self.url} unreachable: {type(exc).__name__}") from exc
        if reply.status_code < 400:
            # A broker (or whatever answers in its place) is not trusted to send well-formed JSON.
            return parse_json(reply.content, f"broker {self.url} answered {path} with", e.ServerError)
        try:
            problem = parse_json(reply.content, "problem", e.ServerError)
        except e.ServerError:
            problem = {}
        if not isinstance(problem, dict):
            problem = {}
        code = str(problem.get("code", ""))
        detail = str(problem.get("detail") or problem.get("title") or f"HTTP {reply.status_code}")
        raise error_for(reply.status_code, code, detail, problem)

    # -- the protocol -------------------------------------------------------------

    def challenge(self, device_id: str | None = None) -> dict[str, Any]:
        return dict(self.request("POST", "/v1/challenges", {"device_id": device_id} if device_id else {}))

    def attest(
        self,
        attester: Attester,
        *,
        kem: HPKEKem = HPKEKem.MLKEM768_X25519,
        device_id: str | None = None,
        release: str | None = None,
        tensors: Mapping[str, Sequence[int]] | None = None,
        approval: str | None = None,
    ) -> tuple[Session, ReleasedKeys | None]:
        """Run challenge and attest; with ``release`` the keys come back in the same call (one-shot)."""
        ch = self.challenge(device_id)
        private, public = hpke_generate(kem)
        nonce = base64.b64decode(ch["nonce"])
        rd = report_data(ch["challenge_id"], nonce, ch["tenant"], kem.value, public)
        body: dict[str, Any] = {
            "challenge_id": ch["challenge_id"],
            "hpke": {"kem": kem.value, "public": base64.b64encode(public).decode()},
            "evidence": attester.evidence(rd, ch),
        }
        if release is not None:
            body["release"] = {
                "resource": release,
                **({"tensors": {k: list(v) for k, v in tensors.items()}} if tensors else {}),
                **({"approval": approval} if approval else {}),
            }
        answer = self.request("POST", "/v1/attest", body)
        session = Session(
            answer["token"], answer["jti"], answer["expires_at"], kem, bytearray(private), answer.get("device_id")
        )
        released = None
        if release is not None:
            released = self._open_release(session, ch["tenant"], answer["release"], release)
        return session, released

    def release(
        self,
        session: Session,
        resource: str,
        tensors: Mapping[str, Sequence[int]] | None = None,
        approval: str | None = None,
    ) -> ReleasedKeys:
        """Release a model's keys; ``approval`` names an approved request ("new" opens one)."""
        body: dict[str, Any] = {"token": session.token, "resource": resource}
        if approval:
            body["approval"] = approval
        if tensors:
            body["tensors"] = {k: list(v) for k, v in tensors.items()}
        answer = self.request("POST", "/v1/release", body)
        tenant = resource.partition("/")[0]
        return self._open_release(session, tenant, answer, resource)

    def _open_release(self, session: Session, tenant: str, answer: Mapping[str, Any], resource: str) -> ReleasedKeys:
        if answer.get("resource") != resource or answer.get("jti") != session.jti:
            raise e.KeyAccessError("the broker answered for another resource or session")
        plaintext = session.open(base64.b64decode(answer["sealed"]), release_info(tenant, resource, session.jti))
        payload = ReleasePayload.from_bytes(plaintext, tenant=tenant, resource=resource, jti=session.jti)
        return ReleasedKeys(resource, session.jti, payload.file_key, payload.grants)

    # -- admin -----------------------------------------------------------------------

    def create_tenant(self, tenant: str) -> None:
        self.request("POST", "/v1/tenants", {"id": tenant})

    def create_principal(
        self, principal_id: str, role: str, tenant: str | None = None, *, expires_in: int | None = None
    ) -> str:
        """A new principal's API token (shown once); ``expires_in`` seconds shortens the role's
        maximum token age (``[principals] token_max_age_days``)."""
        body = {"id": principal_id, "role": role, "tenant": tenant}
        return str(self.request("POST", "/v1/principals", body | self._expiry(expires_in))["token"])

    @staticmethod
    def _expiry(expires_in: int | None) -> dict[str, int]:
        return {} if expires_in is None else {"expires_in": expires_in}

    def disable_principal(self, principal_id: str) -> None:
        self.request("POST", f"/v1/principals/{principal_id}/disable", {})

    def whoami(self) -> dict[str, Any]:
        """The caller: ``id``, ``tenant``, ``role``, and ``expires_at`` (Unix seconds, or None) of its token."""
        return dict(self.request("GET", "/v1/whoami"))

    def rotate_principal_token(self, principal_id: str, *, expires_in: int | None = None) -> str:
        """A new API token for the principal (shown once); its old token stops working at once. The
        new one expires as :meth:`create_principal` says."""
        return str(self.request("POST", f"/v1/principals/{principal_id}/token", self._expiry(expires_in))["token"])

    def add_device(
        self,
        device_id: str,
        kind: str,
        tenants: Sequence[str],
        identity: Mapping[str, Any] | None = None,
        approval: str | None = None,
    ) -> None:
        body = {"id": device_id, "kind": kind, "tenants": list(tenants), "identity": dict(identity or {})}
        self.request("POST", "/v1/devices", {**body, **({"approval": approval} if approval else {})})

    def enrol_tpm_device(
        self, attester: Any, device_id: str, tenants: Sequence[str], approval: str | None = None
    ) -> None:
        """Enrol the TPM behind ``attester`` (a TPMAttester): send EK and AK, activate the credential."""
        answer = self.request(
            "POST",
            "/v1/devices/enroll",
            {
                "id": device_id,
                "tenants": list(tenants),
                "ek_cert": base64.b64encode(attester.ek_certificate()).decode(),
                "ek_public": base64.b64encode(attester.ek_public()).decode(),
                "ak_public": base64.b64encode(attester.ak_public()).decode(),
                **({"approval": approval} if approval else {}),
            },
        )
        secret = attester.activate(
            base64.b64decode(answer["credential_blob"]), base64.b64decode(answer["encrypted_secret"])
        )
        self.request("POST", f"/v1/devices/{device_id}/credential", {"secret": base64.b64encode(secret).decode()})

    def device_action(self, device_id: str, action: str, body: Mapping[str, Any] | None = None) -> Any:
        return self.request("PUT" if action == "tenants" else "POST", f"/v1/devices/{device_id}/{action}", body or {})

    def put_policy(self, tenant: str, name: str, document: Mapping[str, Any], approval: str | None = None) -> int:
        body: dict[str, Any] = {"document": dict(document), **({"approval": approval} if approval else {})}
        return int(self.request("PUT", f"/v1/tenants/{tenant}/policies/{name}", body)["version"])

    def put_refset(self, tenant: str, name: str, items: Sequence[str]) -> None:
        self.request("PUT", f"/v1/tenants/{tenant}/refsets/{name}", {"items": list(items)})

    def registration_key(self) -> tuple[HPKEKem, bytes]:
        key = self.request("GET", "/v1/keys")["registration"]
        return HPKEKem(key["kem"]), base64.b64decode(key["public"])

    def register_model(
        self,
        tenant: str,
        name: str,
        version: str,
        *,
        policy: str,
        file_key: FileKey,
        files: Sequence[Mapping[str, str]],
        tags: Mapping[str, str] | None = None,
        signature: bytes | None = None,
        manifest: bytes | None = None,
    ) -> str:
        """Register a model; the file key travels HPKE-sealed to the broker's registration key. With
        ``signature`` (an OpenSSF model.sig) and ``manifest`` (the weightvault-model.json it covers),
        the broker checks who signed it."""
        kem, public = self.registration_key()
        sealed = hpke_seal(kem, public, file_key.reveal(), registration_info(tenant, name, version))
        body = {
            "name": name,
            "version": version,
            "policy": policy,
            "kem": kem.value,
            "sealed_key": base64.b64encode(sealed).decode(),
            "files": [dict(f) for f in files],
            "tags": dict(tags or {}),
        }
        if signature is not None and manifest is not None:
            body["signature"] = base64.b64encode(signature).decode()
            body["manifest"] = base64.b64encode(manifest).decode()
        return str(self.request("POST", f"/v1/tenants/{tenant}/models", body)["resource"])

    # -- approvals -------------------------------------------------------------------------

    def approval(self, request_id: str) -> dict[str, Any]:
        """A request with its summary, status and approvals."""
        return dict(self.request("GET", f"/v1/approvals/{request_id}"))

    def approvals(self, status: str | None = None) -> list[dict[str, Any]]:
        params = {"status": status} if status else None
        return list(self.request("GET", "/v1/approvals", params=params)["requests"])

    def sign_approval(self, request_id: str, key: PersonKey, *, deny: bool = False, ttl: int = 3600) -> dict[str, Any]:
        """Sign a request with an approver's key after checking its digest locally, and submit it.

        The digest is recomputed here from the request's fields, so a broker that
        shows one request and stores another cannot collect a signature for it.
        """
        doc = self.approval(request_id)
        request = ApprovalRequest.from_json(doc["request"])
        if not hmac.compare_digest(request.digest, str(doc["digest"])):
            raise e.ApprovalInvalidError("the broker's digest does not match the request it shows")
        decision = "deny" if deny else "approve"
        expires_at = min(int(time.time()) + ttl, request.expires_at)
        signature = key.sign(approval_message(request.digest, decision, expires_at, key.id))
        body = {"decision": decision, "expires_at": expires_at, "signature": base64.b64encode(signature).decode()}
        return dict(self.request("POST", f"/v1/approvals/{request_id}/sign", body))

    def put_approval_policy(self, document: Mapping[str, Any], approval: str | None = None) -> int:
        body: dict[str, Any] = {"document": dict(document), **({"approval": approval} if approval else {})}
        return int(self.request("PUT", "/v1/approval-policy", body)["version"])

    # -- custody ---------------------------------------------------------------------------

    def custody_status(self) -> dict[str, Any]:
        return dict(self.request("GET", "/v1/custody"))

    def open_ceremony(
        self,
        kind: str,
        *,
        ttl: int = 900,
        params: Mapping[str, Any] | None = None,
        share_set: str | None = None,
        approval: str | None = None,
    ) -> CeremonyTerms:
        body: dict[str, Any] = {"kind": kind, "ttl_seconds": ttl, "params": dict(params or {})}
        if share_set:
            body["set"] = share_set
        if approval:
            body["approval"] = approval
        return CeremonyTerms.from_json(self.request("POST", "/v1/custody/ceremonies", body))

    def ceremony(self, ceremony_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/v1/custody/ceremonies/{ceremony_id}"))

    def submit_share(self, ceremony_id: str, key: PersonKey, share: bytes) -> dict[str, Any]:
        """Encrypt ``share`` to the ceremony and sign the submission (terms checked against the id first)."""
        terms = CeremonyTerms.from_json(self.ceremony(ceremony_id))
        if terms.id != ceremony_id:
            raise e.CeremonyError("the broker returned the terms of another ceremony")
        sealed, signature = prepare_submission(key, terms, share)
        body = {
            "custodian": key.id,
            "sealed": base64.b64encode(sealed).decode(),
            "signature": base64.b64encode(signature).decode(),
        }
        return dict(self.request("POST", f"/v1/custody/ceremonies/{ceremony_id}/shares", body))

    def cancel_ceremony(self, ceremony_id: str, key: PersonKey) -> None:
        signature = key.sign(cancel_message(ceremony_id, key.id))
        body = {"custodian": key.id, "signature": base64.b64encode(signature).decode()}
        self.request("POST", f"/v1/custody/ceremonies/{ceremony_id}/cancel", body)

    def delivered_share(self, set_id: str, custodian: str) -> bytes:
        return base64.b64decode(self.request("GET", f"/v1/custody/sets/{set_id}/shares/{custodian}")["sealed"])

    def seal(self) -> None:
        self.request("POST", "/v1/custody/seal", {})

    # -- rotation and export ------------------------------------------------------------------

    def rotate_kek(self, tenant: str, approval: str | None = None) -> int:
        body = {"approval": approval} if approval else {}
        return int(self.request("POST", f"/v1/tenants/{tenant}/kek/rotate", body)["version"])

    def rewrap(self, tenant: str) -> list[str]:
        return list(self.request("POST", f"/v1/tenants/{tenant}/kek/rewrap", {})["rewrapped"])

    def retire_kek(self, tenant: str, version: int) -> None:
        self.request("POST", f"/v1/tenants/{tenant}/kek/retire", {"version": version})

    def rotate_token_key(self, approval: str | None = None) -> str:
        body = {"approval": approval} if approval else {}
        return str(self.request("POST", "/v1/keys/token/rotate", body)["kid"])

    def export_key(
        self, tenant: str, name: str, version: str, recipient: HPKEIdentity, approval: str | None = None
    ) -> FileKey:
        """Export a model's file key sealed to ``recipient`` (needs an approved ``key.export`` request)."""
        body: dict[str, Any] = {
            "hpke": {"kem": recipient.kem.value, "public": base64.b64encode(recipient.recipient.public).decode()},
            **({"approval": approval} if approval else {}),
        }
        answer = self.request("POST", f"/v1/tenants/{tenant}/models/{name}/{version}/export", body)
        resource = f"{tenant}/models/{name}@{version}"
        try:
            raw = hpke_open(
                recipient.kem, recipient.reveal(), base64.b64decode(answer["sealed"]), export_info(tenant, resource)
            )
        except InvalidTag as exc:
            raise e.KeyAccessError("the exported key does not open for this recipient and model") from exc
        return FileKey(raw)

    def audit_events(
        self, tenant: str, since_ms: int | None = None, until_ms: int | None = None
    ) -> list[dict[str, Any]]:
        params = {k: str(v) for k, v in (("since_ms", since_ms), ("until_ms", until_ms)) if v is not None}
        return list(self.request("GET", f"/v1/tenants/{tenant}/audit", params=params)["events"])

    # -- detection and containment (docs/sentinel.md) --------------------------------------------

    def post_alert(self, alert: Mapping[str, Any]) -> int:
        """Record a sentinel's alert as ``sentinel.alert``; returns its log index."""
        return int(self.request("POST", "/v1/sentinel/alerts", dict(alert))["index"])

    def sentinel_alerts(self, tenant: str | None = None, since_index: int = 0) -> list[dict[str, Any]]:
        params = {"since_index": str(since_index), **({"tenant": tenant} if tenant else {})}
        return list(self.request("GET", "/v1/sentinel/alerts", params=params)["alerts"])

    def hold(self, kind: str, target: str, *, rule: str, alert_index: int | None = None) -> str:
        """Place a containment hold; returns its id (the active one's, if the target is held already)."""
        body = {"kind": kind, "target": target, "rule": rule, "alert_index": alert_index}
        return str(self.request("POST", "/v1/containment/holds", body)["id"])

    def holds(self, tenant: str | None = None, *, include_lifted: bool = False) -> list[dict[str, Any]]:
        params = {**({"tenant": tenant} if tenant else {}), **({"all": "1"} if include_lifted else {})}
        return list(self.request("GET", "/v1/containment/holds", params=params)["holds"])

    def lift(self, hold_id: str) -> None:
        self.request("POST", f"/v1/containment/holds/{hold_id}/lift", {})


def registration_files(manifest: ModelManifest) -> list[dict[str, str]]:
    """``register_model``'s ``files`` for a sealed model directory: each sealed file's id, header MAC and path."""
    return [{"file_id": f.file_id or "", "header_mac": f.header_mac or "", "path": f.path} for f in manifest.sealed()]


class BrokerRecipient:
    """The broker stanza written at publish time: it names the broker and the model, and wraps nothing."""

    def __init__(self, url: str, resource: str) -> None:
        self.url = url
        self.resource = resource

    def wrap(self, file_key: FileKey, context: bytes) -> Stanza:
        return Stanza(BROKER_STANZA, {"url": self.url, "resource": self.resource})


class BrokerIdentity:
    """Opens ``broker`` stanzas by attesting to the broker and having it release the model's key."""

    def __init__(
        self,
        client: BrokerClient,
        attester: Attester,
        *,
        kem: HPKEKem = HPKEKem.MLKEM768_X25519,
        device_id: str | None = None,
        approval: str | None = None,
    ) -> None:
        self.client = client
        self.attester = attester
        self.kem = kem
        self.device_id = device_id
        self.approval = approval
        self._cache: dict[str, ReleasedKeys] = {}

    def keys_for(self, resource: str) -> ReleasedKeys:
        """Attest and release once per resource; later files of the same model reuse the keys."""
        if resource not in self._cache:
            session, released = self.client.attest(
                self.attester, kem=self.kem, device_id=self.device_id, release=resource, approval=self.approval
            )
            session.close()
            assert released is not None
            self._cache[resource] = released
        return self._cache[resource]

    @property
    def resources(self) -> list[str]:
        """The broker resources (``tenant/models/name@version``) released to this identity so far."""
        return list(self._cache)

    def unwrap(self, stanza: Stanza, context: bytes) -> FileKey | None:
        if stanza.type != BROKER_STANZA:
            return None
        resource = stanza.fields.get("resource")
        if not isinstance(resource, str):
            return None
        return self.keys_for(resource).file_key

    def wipe(self) -> None:
        for keys in self._cache.values():
            keys.wipe()
        self._cache.clear()
