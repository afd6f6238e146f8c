"""Each tenant's catalogue: release policies (versioned), reference sets, and models.

A model's file key is stored wrapped under the tenant's newest KEK; a publisher
sends it HPKE-sealed to the broker's registration key, bound to the tenant, name
and version (:func:`weightvault.broker.protocol.registration_info`). Every change
runs under its write-ahead intent; a policy change may also need approvals.

A model may come with its OpenSSF model signature (``model.sig``) and its manifest
(``weightvault-model.json``). The broker then checks, before it stores anything, that
the signature verifies under one of ``[models] signers``, that it lists the manifest
with the manifest's SHA-256, that the manifest's MAC verifies under the model's file
key, and that the files registered are exactly the manifest's sealed files (id, header
MAC, path). The chain signer -> manifest -> header MACs is what a loader checks against
the file key at release, so a publisher cannot register unsigned weights under a
signature of other files. The signer's name becomes the claim ``model.signer``. With
``[models] require_signature`` an unsigned model is refused.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from weightvault.attestation.policy import ReleasePolicy
from weightvault.auditlog.events import AuditEvent, digest_json
from weightvault.broker.approvals import ApprovalService
from weightvault.broker.decisions import parse_resource
from weightvault.broker.keyring import Keyring
from weightvault.broker.names import check_name
from weightvault.broker.protocol import registration_info
from weightvault.broker.recording import AuditRecorder
from weightvault.broker.storage import BrokerStore, ModelRow, PolicyRow
from weightvault.crypto.keywrap import InvalidTag, hpke_open
from weightvault.custody.approvals import HOLD_FACT
from weightvault.errors import ConflictError, InvalidRequestError, ManifestError, ModelSignatureError, NotFoundError
from weightvault.format.keys import FileKey
from weightvault.format.manifest import MANIFEST_NAME, ModelManifest
from weightvault.format.recipients import HPKEIdentity

__all__ = ["CatalogueService"]

_MAX_REFSET_ITEMS = 10_000
_MAX_REFSET_ITEM_CHARS = 256


class CatalogueService:
    def __init__(
        self,
        store: BrokerStore,
        recorder: AuditRecorder,
        now: Callable[[], int],
        *,
        approvals: ApprovalService,
        keyring: Keyring,
        registration_key: HPKEIdentity,
        signers: Mapping[str, Path] | None = None,
        require_signature: bool = False,
    ) -> None:
        """``signers``: name -> EC public key file of those whose model signatures are checked."""
        self._signers = dict(signers or {})
        self._require_signature = require_signature
        self._store = store
        self._recorder = recorder
        self._approvals = approvals
        self._keyring = keyring
        self.registration_key = registration_key
        self._now = now

    # -- reads ------------------------------------------------------------------------------------

    def model(self, tenant: str, name: str, version: str) -> ModelRow:
        row = self._store.catalogue.model(tenant, name, version)
        if row is None:
            raise NotFoundError("no such model")
        return row

    def models(self, tenant: str) -> list[ModelRow]:
        return self._store.catalogue.models(tenant)

    def policies(self, tenant: str) -> list[PolicyRow]:
        return self._store.catalogue.policies(tenant)

    def refsets(self, tenant: str) -> dict[str, frozenset[str]]:
        return self._store.catalogue.refsets(tenant)

    def facts(self, tenant: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """Facts approval rules may test: the tags of the model an operation names, and whether
        containment holds it (:data:`~weightvault.custody.approvals.HOLD_FACT`)."""
        resource = params.get("resource")
        target = parse_resource(resource) if isinstance(resource, str) else None
        if target is None:
            return {}
        model = self._store.catalogue.model(tenant, target[1], target[2])
        if model is None:
            return {}
        facts: dict[str, Any] = {f"model.tags.{k}": v for k, v in model.tags.items()}
        if self._store.holds.active("model", f"{tenant}/models/{target[1]}") is not None:
            facts[HOLD_FACT] = "true"
        return facts

    # -- changes ----------------------------------------------------------------------------------

    def put_policy(
        self, actor: str, tenant: str, name: str, document: Mapping[str, Any], *, approval: str | None
    ) -> int:
        """Store a new version of a release policy; returns the version.

        Raises:
            ConflictError: the policy is immutable.
            PolicyViolationError: the document is invalid, or covers another tenant's resources.
        """
        check_name(name, "policy name")
        if not self._store.tenants.exists(tenant):
            raise NotFoundError("no such tenant")
        current = self._store.catalogue.latest_policy(tenant, name)
        version = 1 if current is None else current.version + 1
        policy = ReleasePolicy.parse(tenant, name, version, document)
        resource = f"{tenant}/policies/{name}"
        if current is not None and current.immutable:
            self._recorder.append(
                AuditEvent(
                    type="policy.change.fail",
                    tenant=tenant,
                    actor=actor,
                    resource=resource,
                    decision="deny",
                    reasons=("immutable",),
                    policy_version=current.version,
                )
            )
            raise ConflictError(f"policy {name} is immutable")
        params = {"tenant": tenant, "name": name, "document_digest": policy.digest}
        grant = self._approvals.gate(actor, "policy.change", tenant, params, approval=approval)
        intent = AuditEvent(
            type="policy.change.intent",
            tenant=tenant,
            actor=actor,
            resource=resource,
            policy_version=version,
            details={"old_digest": current.digest if current is not None else "none", "new_digest": policy.digest},
        )
        row = PolicyRow(tenant, name, version, dict(document), policy.digest, policy.immutable)
        with self._approvals.execute(grant, actor, resource), self._recorder.write_ahead(intent):
            self._store.catalogue.add_policy(row, actor, self._now())
        return version

    def put_refset(self, actor: str, tenant: str, name: str, items: Sequence[str]) -> None:
        """Replace a named set of approved values (for example PCR digests)."""
        check_name(name, "reference set name")
        values: list[object] = list(items)  # typed, but arrives from JSON
        if len(values) > _MAX_REFSET_ITEMS or not all(
            isinstance(i, str) and len(i) <= _MAX_REFSET_ITEM_CHARS for i in values
        ):
            raise InvalidRequestError(
                f"reference values are at most {_MAX_REFSET_ITEMS} strings of "
                f"at most {_MAX_REFSET_ITEM_CHARS} characters"
            )
        old = self._store.catalogue.refsets(tenant).get(name)
        intent = AuditEvent(
            type="policy.change.intent",
            tenant=tenant,
            actor=actor,
            resource=f"{tenant}/refsets/{name}",
            details={"old_digest": digest_json(sorted(old or [])), "new_digest": digest_json(sorted(set(items)))},
        )
        with self._recorder.write_ahead(intent):
            self._store.catalogue.put_refset(tenant, name, items, self._now())

    def register_model(
        self,
        actor: str,
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
        """Store a model's file key wrapped under the tenant's newest KEK; returns its resource name.

        Raises:
            ModelSignatureError: the signature does not verify under any configured signer, does
                not cover this manifest, or the manifest not these files (or none was given and
                one is required).
        """
        check_name(name, "model name", 128)
        check_name(version, "model version")
        check_name(policy, "policy name")
        tags = dict(tags or {})
        pairs: list[tuple[object, object]] = list(tags.items())  # typed, but arrives from JSON
        if len(pairs) > 16 or not all(
            isinstance(k, str) and isinstance(v, str) and 0 < len(k) <= 64 and len(v) <= 128 for k, v in pairs
        ):
            raise InvalidRequestError("tags: at most 16, names of at most 64 characters, values of at most 128")
        if not self._store.tenants.exists(tenant):
            raise NotFoundError("no such tenant")
        for f in files:
            if set(f) - {"file_id", "header_mac", "path"} or len(f.get("file_id", "")) != 64:
                raise InvalidRequestError("files are {file_id, header_mac, path}")
        resource = f"{tenant}/models/{name}@{version}"
        if self._store.catalogue.model(tenant, name, version) is not None:
            raise ConflictError(f"model {name}@{version} exists")
        signed = self._check_signature(signature, manifest, file_key, files)
        kek_version, wrapped = self._keyring.wrap_for_model(tenant, name, version, file_key)
        # A model may have thousands of files: the event names them by digest, so it stays small.
        file_ids = sorted(f["file_id"] for f in files)
        intent = AuditEvent(
            type="model.register.intent",
            tenant=tenant,
            actor=actor,
            resource=resource,
            details={
                "policy": policy,
                "kek_version": kek_version,
                "file_count": len(file_ids),
                "files_digest": digest_json(file_ids),
                "tags_digest": digest_json(dict(tags or {})),
                # Tags are how a decoy (honeypot=true) or a tier is told apart by the sentinel;
                # few and short by validation, so they are recorded whole.
                "tags": dict(tags or {}),
                **(
                    {}
                    if signed is None
                    else {"signer": signed[0], "signature_sha256": signed[1][0], "manifest_sha256": signed[1][1]}
                ),
            },
        )
        row = ModelRow(
            tenant,
            name,
            version,
            policy,
            kek_version,
            wrapped,
            [dict(f) for f in files],
            dict(tags or {}),
            signer=None if signed is None else signed[0],
            signature=None if signed is None else signed[1],
        )
        with self._recorder.write_ahead(intent):
            self._store.catalogue.add_model(row, self._now())
        return resource

    def _check_signature(
        self,
        signature: bytes | None,
        manifest: bytes | None,
        file_key: FileKey,
        files: Sequence[Mapping[str, str]],
    ) -> tuple[str, tuple[str, str]] | None:
        """(signer, (signature SHA-256, manifest SHA-256)) of a model whose signature checks out
        (see the module docstring), None for an unsigned model where none is required."""
        if signature is None and manifest is None:
            if self._require_signature:
                raise ModelSignatureError(
                    "this broker registers only signed models: publish with --sign-key (OpenSSF model signing)"
                )
            return None
        if signature is None or manifest is None:
            raise InvalidRequestError("a model signature comes with the manifest it covers (both, or neither)")
        if not self._signers:
            raise ModelSignatureError("this broker has no [models] signers to check model signatures against")
        from weightvault.sealing.signatures import signed_files

        listed: dict[str, tuple[str, str]] | None = None
        signer = ""
        refusals = []
        for name, key in sorted(self._signers.items()):
            try:
                listed = signed_files(signature, key)
            except ModelSignatureError as exc:
                refusals.append(f"{name}: {exc}")
                continue
            signer = name
            break
        if listed is None:
            why = "; ".join(refusals)
            raise ModelSignatureError(f"the model signature verifies under no configured signer ({why})")
        manifest_sha256 = hashlib.sha256(manifest).hexdigest()
        algorithm, digest = listed.get(MANIFEST_NAME, ("", ""))
        if algorithm != "sha256" or not hmac.compare_digest(digest, manifest_sha256):
            raise ModelSignatureError(f"the signature of {signer} does not cover this {MANIFEST_NAME}")
        try:
            parsed = ModelManifest.from_bytes(manifest)
            parsed.verify(file_key.manifest_mac_key())
        except ManifestError as exc:
            what = f"the signed {MANIFEST_NAME} does not verify under the model's key"
            raise ModelSignatureError(f"{what} ({exc})") from exc
        sealed = sorted((e.file_id or "", e.header_mac or "", e.path) for e in parsed.sealed())
        registered = sorted((f.get("file_id", ""), f.get("header_mac", ""), f.get("path", "")) for f in files)
        if sealed != registered:
            raise ModelSignatureError(f"the files registered are not the sealed files of the signed {MANIFEST_NAME}")
        return signer, (hashlib.sha256(signature).hexdigest(), manifest_sha256)

    def register_sealed_model(
        self,
        actor: str,
        tenant: str,
        name: str,
        version: str,
        *,
        policy: str,
        kem: str,
        sealed_key: bytes,
        files: Sequence[Mapping[str, str]],
        tags: Mapping[str, str] | None = None,
        signature: bytes | None = None,
        manifest: bytes | None = None,
    ) -> str:
        """Register a model whose file key the publisher sealed to the broker's registration key."""
        if kem != self.registration_key.kem.value:
            raise InvalidRequestError(f"the registration key uses {self.registration_key.kem.value}")
        try:
            raw = hpke_open(
                self.registration_key.kem,
                self.registration_key.reveal(),
                sealed_key,
                registration_info(tenant, name, version),
            )
            file_key = FileKey(raw)
        except (InvalidTag, ValueError) as exc:
            raise InvalidRequestError("the sealed file key does not open for this tenant, model and version") from exc
        try:
            return self.register_model(
                actor,
                tenant,
                name,
                version,
                policy=policy,
                file_key=file_key,
                files=files,
                tags=tags,
                signature=signature,
                manifest=manifest,
            )
        finally:
            file_key.wipe()
