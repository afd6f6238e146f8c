"""Assembling a running broker from its configuration directory (the server entry point).

This is the only server module that reads files: the TOML configuration, key
files and JWKS files. Everything it builds is passed to constructors.
"""

from __future__ import annotations

import re
import socket
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
from weightvault.auditlog.replica import ReplicatedAuditLog
from weightvault.auditlog.witness import HTTPWitness
from weightvault.broker.config import BrokerConfig
from weightvault.broker.keystore import RootKey
from weightvault.broker.service import KeyBroker, libpq_conninfo, open_broker
from weightvault.broker.tokens import TokenSigner
from weightvault.crypto.kdf import hkdf_expand, hkdf_extract
from weightvault.crypto.signing import Ed25519Signer
from weightvault.errors import AuditLogError, ConfigError
from weightvault.files import read_private_file
from weightvault.format.recipients import HPKEIdentity
from weightvault.sealing.keyfiles import read_key_file, read_secret_file
from weightvault.server.broker_app import ServerLimits, create_broker_app

__all__ = ["BrokerRuntime", "load_broker"]

_REPLICA_NAME = re.compile(r"[A-Za-z0-9._:-]{1,64}")


@dataclass
class BrokerRuntime:
    """Everything a running broker holds; ``close`` releases it."""

    broker: KeyBroker
    audit: AuditLog | ReplicatedAuditLog
    config: BrokerConfig
    limits: ServerLimits
    log_vkey: str | None = None

    @property
    def base(self) -> Path:
        return self.config.base

    def app(self) -> Any:
        return create_broker_app(self.broker, self.limits, log_vkey=self.log_vkey)

    def close(self) -> None:
        self.audit.close()
        self.broker.close()


def _verifier_factories(config: BrokerConfig) -> dict[str, Callable[[], Verifier]]:
    from weightvault.attestation.token import AttestationTokenVerifier, TokenIssuer
    from weightvault.attestation.unsafe import UnsafeSampleVerifier

    factories: dict[str, Callable[[], Verifier]] = {"insecure-sample": UnsafeSampleVerifier}
    issuers = config.attestation_token
    if issuers:
        factories["attestation-token"] = lambda: AttestationTokenVerifier(
            [TokenIssuer.from_config(i, config.base) for i in issuers]
        )
    tpm = config.tpm
    if tpm is not None:
        from weightvault.attestation.tpm.verifier import TPMVerifier

        factories["tpm"] = lambda: TPMVerifier.from_config(tpm, config.base)
    sev_snp = config.sev_snp
    if sev_snp is not None:
        from weightvault.attestation.snp.verifier import SNPVerifier

        factories["sev-snp"] = lambda: SNPVerifier.from_config(sev_snp, config.base)
    tdx = config.tdx
    if tdx is not None:
        from weightvault.attestation.tdx.verifier import TDXVerifier

        factories["tdx"] = lambda: TDXVerifier.from_config(tdx, config.base)
    nvidia_gpu = config.nvidia_gpu
    if nvidia_gpu is not None:
        from weightvault.attestation.nvidia.verifier import NvidiaGpuVerifier

        factories["nvidia-gpu"] = lambda: NvidiaGpuVerifier.from_config(nvidia_gpu, config.base)
    return factories


def read_config(config_path: Path) -> BrokerConfig:
    """Read ``broker.toml`` (the only place its text is read) and validate it.

    Raises:
        ConfigError: unreadable, not TOML, or a setting that is not allowed.
    """
    config_path = Path(config_path)
    try:
        doc = tomllib.loads(config_path.read_text())
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8, not TOML, an integer of too many digits
        raise ConfigError(f"{config_path}: {exc}") from exc
    return BrokerConfig.from_mapping(doc, config_path)


def _audit_hash_subkey(config: BrokerConfig, salt: bytes, info: bytes) -> bytes | None:
    """A subkey of ``keys/audit-hash.key`` (HKDF with ``salt`` and ``info``), or None when the file
    is absent (brokers initialised before it existed)."""
    path = config.path(config.keys.audit_hash)
    if not path.exists():
        return None
    return hkdf_expand(hkdf_extract(salt, read_secret_file(path, "weightvault.hash-key")), info)


def _client_hasher(config: BrokerConfig) -> SensitiveHasher | None:
    """Keyed hashes of client addresses (None without the audit hash key: no client hash is recorded)."""
    subkey = _audit_hash_subkey(config, b"weightvault client address v1", b"client")
    return None if subkey is None else SensitiveHasher(subkey, Path(config.keys.audit_hash).stem)


def _handoff_key(config: BrokerConfig) -> bytes:
    """The replicas' shared key that tags hand-offs (every replica holds the same keys directory;
    the database alone cannot forge a hand-off)."""
    key = _audit_hash_subkey(config, b"weightvault audit hand-off v1", b"hand-off")
    if key is None:
        raise ConfigError(
            f"{config.path(config.keys.audit_hash)}: replicas need the audit hash key (broker init writes it)"
        )
    return key


def load_broker(
    config_path: Path, *, clock: Callable[[], float] | None = None, replica: str | None = None
) -> BrokerRuntime:
    """Read ``broker.toml`` and everything it points to; build the broker.

    ``replica`` names this process among the replicas of a broker whose log is in the database
    (``[audit] storage = "database"``); its watermark file is ``<audit_db>.<replica>.watermark``.

    Raises:
        ConfigError: a missing or malformed setting or key file.
    """
    import time

    config = read_config(Path(config_path))
    now = clock or time.time
    keys = config.keys
    # root = "custody": the root key is split among custodians and the broker starts sealed.
    root = None
    if keys.root != "custody":
        root = RootKey(read_secret_file(config.path(keys.root), "weightvault.root-key"))
    token_seed = read_secret_file(config.path(keys.token_signing), "weightvault.signing-key")
    registration = read_key_file(config.path(keys.registration))
    if not isinstance(registration, HPKEIdentity):
        raise ConfigError("keys.registration must be an HPKE private key")
    log_signer_path = config.path(keys.audit_log)
    log_signer_text = read_private_file(log_signer_path, "signing key").decode("utf-8", "replace")
    try:
        log_signer = NoteSigner.from_skey(log_signer_text)
    except AuditLogError as exc:
        raise ConfigError(f"{log_signer_path}: {exc}") from exc
    witnesses = []
    verifiers = []
    for w in config.audit.witnesses:
        witnesses.append(HTTPWitness(w.name, w.url))
        try:
            verifiers.append(NoteVerifier.from_vkey(w.vkey))
        except AuditLogError as exc:
            raise ConfigError(f"witness {w.name}: {exc}") from exc
    policy = WitnessPolicy.threshold(verifiers, config.audit.quorum) if verifiers else WitnessPolicy({}, {}, "none")
    log_config = LogConfig(batch_delay_s=config.audit.batch_delay_s)
    audit: AuditLog | ReplicatedAuditLog
    if config.audit.storage == "database":
        from weightvault.auditlog.pgstorage import PostgresLogStorage

        name = replica or f"{socket.gethostname()}:{config.port}"
        if not _REPLICA_NAME.fullmatch(name):
            raise ConfigError("a replica name is 1 to 64 letters, digits and . _ : -")
        watermark = config.path(config.audit_db).with_name(f"{Path(config.audit_db).name}.{name}.watermark")
        watermark.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        audit = ReplicatedAuditLog(
            PostgresLogStorage(libpq_conninfo(config.database_url), log_signer.name),
            log_signer,
            replica=name,
            watermark_path=watermark,
            handoff_key=_handoff_key(config),
            witnesses=witnesses,
            policy=policy,
            clock=now,
            config=log_config,
            lease_ttl_s=config.audit.lease_ttl_s,
        )
    else:
        audit = AuditLog(
            config.path(config.audit_db), log_signer, witnesses=witnesses, policy=policy, clock=now, config=log_config
        )
    try:
        registry = VerifierRegistry.build(
            config.allow,
            _verifier_factories(config),
            insecure_sample_enabled=config.insecure_sample_enabled,
        )
        signer = TokenSigner(config.broker_id, Ed25519Signer(token_seed), config.token_ttl_seconds)
        broker = open_broker(
            config.database_url,
            root,
            signer,
            registry,
            audit,
            registration_key=registration,
            config=config,
            clock=now,
            reader=audit,
            hasher=_client_hasher(config),
        )
        limits = ServerLimits(
            max_body_bytes=config.max_body_bytes,
            rate_per_second=config.rate_per_second,
            burst=config.burst,
            rotation_check_seconds=config.rotation_check_seconds,
        )
    except BaseException:
        audit.close()
        raise
    return BrokerRuntime(broker, audit, config, limits, log_signer.verifier.vkey())
