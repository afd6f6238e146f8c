"""Assembling a running broker from its configuration directory (the server entry point).

This is the only server module that reads files: the TOML configuration, key
files and JWKS files. Everything it builds is passed to constructors.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weightvault.attestation.interfaces import Verifier
from weightvault.attestation.registry import VerifierRegistry
from weightvault.auditlog.events import SensitiveHasher
from weightvault.auditlog.log import AuditLog, LogConfig
from weightvault.auditlog.note import NoteSigner, NoteVerifier
from weightvault.auditlog.policy import WitnessPolicy
from weightvault.auditlog.witness import HTTPWitness
from weightvault.broker.keystore import RootKey
from weightvault.broker.service import BrokerSettings, KeyBroker
from weightvault.broker.storage import BrokerStore
from weightvault.broker.tokens import TokenSigner
from weightvault.crypto.signing import Ed25519Signer
from weightvault.errors import AuditLogError, ConfigError
from weightvault.format.recipients import HPKEIdentity
from weightvault.sealing.keyfiles import read_key_file, read_private_file, read_secret_file
from weightvault.server.broker_app import ServerLimits, create_broker_app

__all__ = ["BrokerRuntime", "load_broker"]


@dataclass
class BrokerRuntime:
    """Everything a running broker holds; ``close`` releases it."""

    broker: KeyBroker
    audit: AuditLog
    config: dict[str, Any]
    base: Path
    limits: ServerLimits

    def app(self) -> Any:
        return create_broker_app(self.broker, self.audit, self.limits)

    def close(self) -> None:
        self.audit.close()
        self.broker.store.engine.dispose()


def _path(base: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else base / p


def _storage_url(base: Path, url: str) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        return prefix + str(base / url[len(prefix) :])
    return url


def _verifier_factories(base: Path, section: dict[str, Any]) -> dict[str, Callable[[], Verifier]]:
    from weightvault.attestation.token import AttestationTokenVerifier, TokenIssuer
    from weightvault.attestation.unsafe import UnsafeSampleVerifier

    factories: dict[str, Callable[[], Verifier]] = {"insecure-sample": UnsafeSampleVerifier}
    issuers = section.get("attestation_token", [])
    if issuers:
        factories["attestation-token"] = lambda: AttestationTokenVerifier(
            [TokenIssuer.from_config(i, base) for i in issuers]
        )
    tpm = section.get("tpm")
    if tpm is not None:
        from weightvault.attestation.tpm.verifier import TPMVerifier

        factories["tpm"] = lambda: TPMVerifier.from_config(tpm, base)
    return factories


def load_broker(config_path: Path, *, clock: Callable[[], float] | None = None) -> BrokerRuntime:
    """Read ``broker.toml`` and everything it points to; build the broker.

    Raises:
        ConfigError: a missing or malformed setting or key file.
    """
    import time

    config_path = Path(config_path)
    base = config_path.parent
    try:
        config = tomllib.loads(config_path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{config_path}: {exc}") from None
    try:
        broker_cfg = config["broker"]
        storage_cfg = config["storage"]
        keys_cfg = config["keys"]
        verifiers_cfg = config.get("verifiers", {})
        audit_cfg = config.get("audit", {})
    except KeyError as exc:
        raise ConfigError(f"{config_path}: missing section {exc}") from None
    now = clock or time.time
    # root = "custody": the root key is split among custodians and the broker starts sealed.
    root = None
    if keys_cfg["root"] != "custody":
        root = RootKey(read_secret_file(_path(base, keys_cfg["root"]), "weightvault.root-key"))
    token_seed = read_secret_file(_path(base, keys_cfg["token_signing"]), "weightvault.signing-key")
    registration = read_key_file(_path(base, keys_cfg["registration"]))
    if not isinstance(registration, HPKEIdentity):
        raise ConfigError("keys.registration must be an HPKE private key")
    log_signer_path = _path(base, keys_cfg["audit_log"])
    log_signer_text = read_private_file(log_signer_path, "signing key").decode("utf-8", "replace")
    try:
        log_signer = NoteSigner.from_skey(log_signer_text)
    except AuditLogError as exc:
        raise ConfigError(f"{log_signer_path}: {exc}") from None
    hash_key = read_secret_file(_path(base, keys_cfg["audit_hash"]), "weightvault.hash-key")
    witnesses = []
    verifiers = []
    for w in audit_cfg.get("witnesses", []):
        witnesses.append(HTTPWitness(w["name"], w["url"]))
        verifiers.append(NoteVerifier.from_vkey(w["vkey"]))
    quorum = int(audit_cfg.get("quorum", 0))
    policy = WitnessPolicy.threshold(verifiers, quorum) if verifiers else WitnessPolicy({}, {}, "none")
    audit = AuditLog(
        _path(base, storage_cfg["audit_db"]),
        log_signer,
        witnesses=witnesses,
        policy=policy,
        clock=now,
        config=LogConfig(batch_delay_s=float(audit_cfg.get("batch_delay_s", 0.0))),
    )
    try:
        store = BrokerStore(_storage_url(base, storage_cfg["url"]))
        store.migrate(int(now()))
        registry = VerifierRegistry.build(
            verifiers_cfg.get("allow", []),
            _verifier_factories(base, verifiers_cfg),
            insecure_sample_enabled=bool(verifiers_cfg.get("insecure_sample_enabled", False)),
        )
        rotation = config.get("rotation", {})
        settings = BrokerSettings(
            broker_id=str(broker_cfg.get("id", "weightvault-broker")),
            challenge_ttl_seconds=int(broker_cfg.get("challenge_ttl_seconds", 60)),
            token_ttl_seconds=int(broker_cfg.get("token_ttl_seconds", 300)),
            kek_max_age_seconds=int(float(rotation.get("kek_max_age_days", 0)) * 86400),
            token_key_max_age_seconds=int(float(rotation.get("token_key_max_age_days", 0)) * 86400),
        )
        signer = TokenSigner(settings.broker_id, Ed25519Signer(token_seed), settings.token_ttl_seconds)
        broker = KeyBroker(
            store,
            root,
            signer,
            registry,
            audit,
            hasher=SensitiveHasher(hash_key, f"{settings.broker_id}/audit-hash"),
            registration_key=registration,
            settings=settings,
            clock=now,
        )
        limits = ServerLimits(
            max_body_bytes=int(broker_cfg.get("max_body_bytes", 256 << 10)),
            rate_per_second=float(broker_cfg.get("rate_per_second", 200)),
            burst=int(broker_cfg.get("burst", 400)),
            rotation_check_seconds=float(rotation.get("check_seconds", 60)),
        )
    except BaseException:
        audit.close()
        raise
    return BrokerRuntime(broker, audit, config, base, limits)
